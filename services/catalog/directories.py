"""Directories imported in place: a local directory planned (services/catalog/local_scan.py) into folders
of GGUF models, each made into model objects whose binaries are symbolic links to the user's files, so not
a byte is copied.

`DirectoryImporter` is the catalog's door (the request checked, the plan made, each folder placed under its
lock, the index refreshed); `place_folder` is the synchronous disk work (run it in a worker thread). A
re-import adds only what is new: an object that exists is kept as the user may have edited it, and a link
already pointing at the same file is reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jan.model.v1 import model_pb2
from services.catalog.files import LinkRegistry
from services.catalog.index import Index
from services.catalog.local_scan import (
    DirectoryPlan,
    LocalBinary,
    LocalFolder,
    LocalModel,
    Skipped,
    plan_directory,
)
from services.catalog.model import ModelFileError, dump_json, parse_model
from services.catalog.sources import Sources
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.filesafety import check_name

log = logging.getLogger(__name__)


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


class DirectoryImporter:
    def __init__(self, models_dir: Path, index: Index, sources: Sources, links: LinkRegistry) -> None:
        self.models_dir = models_dir
        self.index = index
        self.sources = sources
        self.links = links

    async def import_directory(
        self,
        directory: Path,
        folder: str = "",
        *,
        parameters: dict[str, Any] | None = None,
        refused: list[str] | None = None,
    ) -> DirectoryImport:
        """Every GGUF model in a local directory (recursively; a Hugging Face cache is recognised),
        imported in place: links to the user's files, one folder per model family or repository, one
        object per quantization. `folder` puts them all into that folder (one family only); `parameters`
        go into every new object. `refused`: fields of the request that only make sense for one file."""
        _refuse_fields(refused or [], folder)
        plan = await self._plan(directory)
        if folder:
            _check_single_folder(folder, plan, directory)
        result = DirectoryImport(folders=[], models=[], created_ids=[], skipped=list(plan.skipped))
        for planned in plan.folders:
            await self._place(folder or planned.folder, planned, parameters or {}, result)
        if result.created_ids:
            log.info("imported %d models in place from %s", len(result.created_ids), directory)
        return result

    async def _plan(self, directory: Path) -> DirectoryPlan:
        try:
            return await asyncio.to_thread(plan_directory, directory, self.sources.roots())
        except ValueError as exc:
            raise InvalidArgument(str(exc), code="source_not_found", param="source_url") from None

    async def _place(
        self, name: str, planned: LocalFolder, parameters: dict[str, Any], result: DirectoryImport
    ) -> None:
        async with self.index.lock(name):
            placed = await asyncio.to_thread(
                place_folder, self.models_dir, name, planned, self.links, parameters
            )
        index = await self.index.refresh_folder(name)
        result.skipped.extend(placed.skipped)
        result.created_ids.extend(f"{name}/{stem}" for stem in placed.created)
        entries = index.entries if index else {}
        models = [entries[s].pb for s in [*placed.created, *placed.existing] if s in entries]
        if models:
            result.folders.append(name)
            result.models.extend(sorted(models, key=lambda m: m.id))


def _refuse_fields(refused: list[str], folder: str) -> None:
    if refused:
        param = refused[0]
        what = "copies" if param == "import_mode" else f"takes no {param}"
        raise InvalidArgument(
            f"a directory is imported in place, one object per model: it {what} "
            f"({param} is for a single file)",
            code="not_for_directories",
            param=param,
        )
    if "/" in folder:
        raise InvalidArgument(
            "a directory's id is a folder name only: its objects are named after their files", param="id"
        )


def _check_single_folder(folder: str, plan: DirectoryPlan, directory: Path) -> None:
    """All of a directory goes into one named folder only when it holds one model family."""
    try:
        check_name(folder, "folder")
    except ValueError as exc:
        raise InvalidArgument(str(exc), code="invalid_folder", param="id") from None
    if len(plan.folders) > 1:
        names = ", ".join(f.folder for f in plan.folders)
        raise InvalidArgument(
            f"{directory} holds {len(plan.folders)} model families ({names}): import it without an "
            "id to get one folder each",
            code="several_families",
            param="id",
        )
