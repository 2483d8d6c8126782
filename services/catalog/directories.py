"""Directories imported in place: a planned folder of GGUF models (services/catalog/local_scan.py) made
into model objects whose binaries are symbolic links to the user's files, so not a byte is copied.

Synchronous (run it in a worker thread, under the folder's lock). A re-import adds only what is new: an
object that exists is kept as the user may have edited it, and a link already pointing at the same file
is reused.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jan.model.v1 import model_pb2
from services.catalog.files import LinkRegistry
from services.catalog.local_scan import LocalBinary, LocalFolder, LocalModel, Skipped
from services.catalog.model import ModelFileError, dump_json, parse_model
from services.common.errors import FailedPrecondition


@dataclass
class Placed:
    """What placing one planned folder did."""

    created: list[str] = field(default_factory=list)  # stems of the objects written now
    existing: list[str] = field(default_factory=list)  # stems of objects that were there already
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class DirectoryImport:
    """What importing a directory gave: its folders, every model of it, those new, what was skipped."""

    folders: list[str]
    models: list[model_pb2.Model]
    created_ids: list[str]
    skipped: list[Skipped]


def object_data(planned: LocalFolder, model: LocalModel) -> dict[str, Any]:
    """The json object of one planned model: its binaries named (with what is known of them), the
    repository it can be fetched again from when it came from a Hugging Face cache."""
    binaries: list[dict[str, Any]] = []
    for b in model.binaries:
        entry: dict[str, Any] = {"name": b.name}
        if b.url:
            entry["url"] = b.url
        if b.sha256:
            # A content-named file (a Hugging Face cache blob) never changes: its size is a check. A user's
            # file may be replaced by a newer version (or be still copying in): it is taken as it is.
            entry["sha256"] = b.sha256
            entry["size"] = b.size
        binaries.append(entry)
    metadata: dict[str, Any] = {"engine": "llamacpp", "size": model.size, "binaries": binaries}
    if model.quantization:
        metadata["quantization"] = model.quantization
    if model.architecture:
        metadata["architecture"] = model.architecture
    data: dict[str, Any] = {
        "source_url": planned.source_url or "./",
        "name": model.name,
        "created": int(time.time()),
        "metadata": metadata,
    }
    if planned.owned_by:
        data["owned_by"] = planned.owned_by
    return data


def place_folder(
    models_dir: Path, folder: str, planned: LocalFolder, links: LinkRegistry, parameters: dict[str, Any]
) -> Placed:
    """Writes the planned models into models/<folder>: a link per binary, then the object (with
    `parameters`, when given)."""
    folder_dir = models_dir / folder
    if folder_dir.is_symlink():
        raise FailedPrecondition(f"models/{folder} is a symbolic link", code="invalid_folder")
    folder_dir.mkdir(parents=True, exist_ok=True)
    placed = Placed()
    with links.batch():
        for model in planned.models:
            _place_model(models_dir, folder, model, planned, links, parameters, placed)
    if not any(n for n in os.listdir(folder_dir) if not n.startswith(".")):
        with contextlib.suppress(OSError):
            folder_dir.rmdir()  # nothing was placed: leave no empty folder behind
    return placed


def _place_model(
    models_dir: Path,
    folder: str,
    model: LocalModel,
    planned: LocalFolder,
    links: LinkRegistry,
    parameters: dict[str, Any],
    placed: Placed,
) -> None:
    folder_dir = models_dir / folder
    json_path = folder_dir / f"{model.stem}.json"
    if json_path.exists() or json_path.is_symlink():
        placed.existing.append(model.stem)
        return
    data = object_data(planned, model)
    if parameters:
        data["parameters"] = parameters
    raw = dump_json(data)
    try:
        parse_model(folder, model.stem, json_path, raw, models_dir)
    except ModelFileError as exc:
        placed.skipped.append(Skipped(str(model.binaries[0].path), f"not a valid model object: {exc}"))
        return
    made, clash = _link_binaries(folder_dir, model, links)
    if clash:
        placed.skipped.append(Skipped(str(clash.path), f"models/{folder}/{clash.name} is another file"))
        _unlink(made, links)
        return
    try:
        with open(json_path, "xb") as f:
            f.write(raw)
    except FileExistsError:
        placed.existing.append(model.stem)
        _unlink(made, links)
        return
    except BaseException:
        _unlink(made, links)
        raise
    placed.created.append(model.stem)


def _link_binaries(
    folder_dir: Path, model: LocalModel, links: LinkRegistry
) -> tuple[list[Path], LocalBinary | None]:
    """Links each binary into the folder; returns the links made, and the binary whose name is taken by
    another file (then the caller undoes the links)."""
    made: list[Path] = []
    for b in model.binaries:
        dst = folder_dir / b.name
        if dst.exists() or dst.is_symlink():
            if dst.exists() and os.path.samefile(dst, b.path):
                continue  # linked before (a projector shared by quantizations, a re-import)
            return made, b
        os.symlink(b.path, dst)
        links.add(dst, b.path)
        made.append(dst)
    return made, None


def _unlink(paths: list[Path], links: LinkRegistry) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
        links.remove(path)
