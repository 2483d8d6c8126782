"""Servicer side of ListModels: each model's wire bytes as an element of `repeated Model models = 1`, made
once per change of the model and kept, so that a listing is a join of bytes."""

from __future__ import annotations

from jan.model.v1 import model_pb2
from services.catalog.changes import Change

# The key of field 1 with wire type 2 (length-delimited): `models` of ListModelsResponse.
_MODELS_KEY = b"\x0a"


class WireCache:
    def __init__(self) -> None:
        self._bytes: dict[str, tuple[model_pb2.Model, bytes]] = {}

    @property
    def size(self) -> int:
        """How many models' bytes are kept."""
        return len(self._bytes)

    def forget(self, change: Change) -> None:
        """A changed model's bytes are made again when it is next listed; a removed one's are freed."""
        self._bytes.pop(change.id, None)

    def encode(self, models: list[model_pb2.Model]) -> bytes:
        """The wire bytes of `repeated Model models = 1` for these models.

        Listing 10,000 models is dominated by copying messages into the response; parsing the cached
        bytes into it is several times cheaper (see bench/catalog).
        """
        parts = []
        for m in models:
            cached = self._bytes.get(m.id)
            # The index swaps in a new message on every change: the one cached must be this very one.
            if cached is None or cached[0] is not m:
                data = m.SerializeToString()
                cached = (m, _MODELS_KEY + _varint(len(data)) + data)
                self._bytes[m.id] = cached
            parts.append(cached[1])
        return b"".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
