"""Whether a model fits a runner's memory budget: the one rule, which the runner loads by and answers
EstimateModels with (the gateway only picks the best answer among runners; the page only shows it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as pb
from services.runner.engines.base import MemoryBasis

Fit = Literal["fits", "tight", "wont_fit"]

_FITS = {"fits": pb.FIT_FITS, "tight": pb.FIT_TIGHT, "wont_fit": pb.FIT_WONT_FIT}
_BASES = {"header": pb.MEMORY_BASIS_HEADER, "size": pb.MEMORY_BASIS_SIZE, "remote": pb.MEMORY_BASIS_REMOTE}


def fit(need: int, budget: int, used: int) -> Fit:
    """fits: it loads beside the `used` bytes; tight: within the budget once idle models are unloaded
    (a load unloads them first); wont_fit: more than the whole budget (a load is refused)."""
    if need > budget:
        return "wont_fit"
    if used + need > budget:
        return "tight"
    return "fits"


def declared_bytes(model: model_pb2.Model) -> int:
    """The size of a model's binaries as its object tells (metadata.size, as the page's Size column,
    else the sizes of all its binaries); 0 when unknown."""
    metadata = orjson.loads(model.metadata_json or "{}")
    size = metadata.get("size") if isinstance(metadata, dict) else None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    if model.binaries and all(b.size > 0 for b in model.binaries):
        return sum(b.size for b in model.binaries)
    return 0


@dataclass(frozen=True)
class ModelFit:
    """A model's memory estimate on this runner and its fit; no fit (and an `error`) when unknown."""

    model_id: str
    memory_bytes: int = 0
    fit: Fit | None = None
    basis: MemoryBasis | None = None
    error: str = ""
    loaded: bool = False

    def to_pb(self) -> pb.ModelEstimate:
        return pb.ModelEstimate(
            model_id=self.model_id,
            memory_bytes=self.memory_bytes,
            fit=_FITS[self.fit] if self.fit else pb.FIT_UNSPECIFIED,
            basis=_BASES[self.basis] if self.basis else pb.MEMORY_BASIS_UNSPECIFIED,
            error=self.error,
            loaded=self.loaded,
        )
