"""Writing model objects: create (resolve the source, derive the id, build the object, write it with its
binary), update (a merge patch of the json file) and delete (the json and the binaries only it uses).
Each write holds its folder's lock and refreshes the index before it answers."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jan.model.v1 import model_pb2
from services.catalog import importers
from services.catalog.binaries import Binaries
from services.catalog.files import Entry, FolderIndex, merge_patch, read_json_nofollow
from services.catalog.index import Index, entry_of, split_model_id
from services.catalog.model import (
    ModelFileError,
    dump_json,
    file_name_from_url,
    hf_author,
    hf_resolve_url,
    is_remote_url,
    parse_model,
    quant_tag,
)
from services.catalog.sources import Sources
from services.common.engine_names import REMOTE_ENGINES
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from services.common.filesafety import check_name, write_atomic

IMPORT_MODES = ("link", "copy", "symlink")


@dataclass(frozen=True)
class Source:
    """Where a new object's model comes from, once resolved."""

    url: str  # the object's source_url
    file_name: str  # its binary's name (or the remote model's), which names the object when no id is given
    local: Path | None = None  # the user's file to put into the folder


class Authoring:
    def __init__(self, models_dir: Path, index: Index, sources: Sources, binaries: Binaries) -> None:
        self.models_dir = models_dir
        self.index = index
        self.sources = sources
        self.binaries = binaries

    # --- create -------------------------------------------------------------------------------------------

    async def create(
        self,
        *,
        source_url: str,
        model_id: str = "",
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        import_mode: str = "link",
        owned_by: str | None = None,
    ) -> model_pb2.Model:
        source_url = _checked_request(source_url, import_mode)
        metadata = dict(metadata or {})
        source = await self._resolve(source_url, metadata, parameters or {})
        folder, stem = derive_id(model_id, source.file_name, remote=metadata.get("engine") in REMOTE_ENGINES)
        data = build_object(
            source,
            name=name,
            description=description,
            owned_by=owned_by,
            parameters=parameters,
            metadata=metadata,
        )
        raw = self._valid_raw(folder, stem, data)
        async with self.index.lock(folder):
            await asyncio.to_thread(self._write_new, folder, stem, raw, source, import_mode)
        index = await self.index.refresh_folder(folder)
        return entry_of(index, folder, stem).pb

    async def _resolve(self, source_url: str, metadata: dict[str, Any], parameters: dict[str, Any]) -> Source:
        """What a new object's source_url names, checked: a remote engine's address, a URL to download
        from, a binary already in its folder, or a local file."""
        engine = metadata.get("engine")
        if engine in REMOTE_ENGINES:
            # Runs elsewhere (a remote API, a Triton server): nothing to fetch or place; the runner checks
            # the address against the URL rules when it connects.
            return Source(source_url, importers.remote_model_name(source_url, engine, parameters))
        if is_remote_url(source_url):
            return await self._download_source(source_url, metadata)
        if source_url == "./" and metadata.get("binaries"):
            # A second object over binaries already in its folder (Ollama's copy): nothing to import;
            # delete keeps the binaries another object of the folder still uses.
            first = metadata["binaries"][0]
            return Source("./", first if isinstance(first, str) else str(first.get("name", "")))
        local = self.sources.local_file(source_url)
        return Source("./", local.name, local)

    async def _download_source(self, source_url: str, metadata: dict[str, Any]) -> Source:
        await self.sources.check_url(source_url)
        url = hf_resolve_url(source_url)
        file_name = file_name_from_url(url)
        if hf_author(url) and "/resolve/" not in url and "binaries" not in metadata:
            raise Unimplemented(
                "importing a whole Hugging Face repository needs the downloader service; "
                "give the URL of one file (…/resolve/main/<file>.gguf)",
                code="hf_repo_import_unavailable",
                param="source_url",
            )
        if not file_name:
            raise InvalidArgument("source_url names no file", param="source_url")
        return Source(url, file_name)

    def _valid_raw(self, folder: str, stem: str, data: dict[str, Any]) -> bytes:
        raw = dump_json(data)
        try:
            parse_model(folder, stem, self.models_dir / folder / f"{stem}.json", raw, self.models_dir)
        except ModelFileError as exc:
            raise InvalidArgument(f"the model object would be invalid: {exc}") from None
        return raw

    def _write_new(self, folder: str, stem: str, raw: bytes, source: Source, mode: str) -> None:
        json_path = self.models_dir / folder / f"{stem}.json"
        if source.local is not None and self.binaries.storage is not None:
            self._write_stored(json_path, raw, source.local, source.file_name)
        else:
            self._write_files(json_path, raw, source.local, source.file_name, mode)

    def _write_files(
        self, json_path: Path, raw: bytes, local: Path | None, file_name: str, mode: str
    ) -> None:
        folder_dir = json_path.parent
        if folder_dir.is_symlink():
            raise FailedPrecondition(f"models/{folder_dir.name} is a symbolic link", code="invalid_folder")
        folder_dir.mkdir(parents=True, exist_ok=True)
        _refuse_existing(json_path)
        placed = local is not None and self.binaries.place_local(folder_dir, file_name, local, mode)
        try:
            _write_exclusive(json_path, raw)
        except BaseException:
            if placed:
                self.binaries.unplace(folder_dir, file_name)
            raise

    def _write_stored(self, json_path: Path, raw: bytes, local: Path, file_name: str) -> None:
        """A local import when binaries live in a bucket: the file goes into the bucket (the folder keeps
        the json only), then the json is written."""
        folder = json_path.parent.name
        _refuse_existing(json_path)
        self.binaries.upload_new(folder, file_name, local)
        try:
            self._write_files(json_path, raw, None, file_name, "copy")
        except BaseException:
            self.binaries.drop_upload(folder, file_name)
            raise

    # --- update -------------------------------------------------------------------------------------------

    async def update(
        self,
        model_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters_patch: Any = None,
        metadata_patch: Any = None,
    ) -> model_pb2.Model:
        folder, stem = split_model_id(model_id)
        for label, patch in (("parameters", parameters_patch), ("metadata", metadata_patch)):
            if patch is not None and not isinstance(patch, dict):
                raise InvalidArgument(f"{label} must be a JSON object (a merge patch)", param=label)
        async with self.index.lock(folder):
            await asyncio.to_thread(
                self._update_file, folder, stem, name, description, parameters_patch, metadata_patch
            )
        index = await self.index.refresh_folder(folder)
        return entry_of(index, folder, stem).pb

    def _update_file(
        self, folder: str, stem: str, name: str | None, description: str | None, params: Any, meta: Any
    ) -> None:
        path = self.models_dir / folder / f"{stem}.json"
        data = self._read_object(folder, stem, path)
        if name is not None:
            data["name"] = name
        if description is not None:
            data["description"] = description
        if params is not None:
            data["parameters"] = merge_patch(data.get("parameters") or {}, params)
        if meta is not None:
            data["metadata"] = merge_patch(data.get("metadata") or {}, meta)
        new_raw = dump_json(data)
        try:
            parse_model(folder, stem, path, new_raw, self.models_dir)
        except ModelFileError as exc:
            raise InvalidArgument(f"the change would make the model invalid: {exc}") from None
        write_atomic(path, new_raw)

    def _read_object(self, folder: str, stem: str, path: Path) -> dict[str, Any]:
        """The object's properties as the file has them, unknown ones included."""
        try:
            obj = parse_model(folder, stem, path, read_json_nofollow(path), self.models_dir)
        except FileNotFoundError:
            raise NotFound(f"model {folder}/{stem} not found", code="model_not_found", param="id") from None
        except (ModelFileError, OSError) as exc:
            raise FailedPrecondition(
                f"models/{folder}/{stem}.json is not a valid model object: {exc}", code="invalid_model_file"
            ) from None
        data = dict(obj.data)
        # The rewrite makes a new file, so keep its original creation time as a property.
        data.setdefault("created", obj.created)
        return data

    # --- delete -------------------------------------------------------------------------------------------

    async def delete(self, model_id: str) -> list[str]:
        folder, stem = split_model_id(model_id)
        await self.index.refresh_folder(folder)
        async with self.index.lock(folder):
            owned = self._owned(folder, stem)
            removed = await asyncio.to_thread(self._delete_files, folder, stem, owned)
        await self.index.refresh_folder(folder)
        return removed

    def _owned(self, folder: str, stem: str) -> list[str]:
        """The binaries the object uses alone (deleted with it); NotFound when there is no such object."""
        index = self.index.folder(folder)
        entry = index.entries.get(stem) if index else None
        invalid = index is not None and f"{stem}.json" in index.problems
        if entry is None and not invalid:
            raise NotFound(f"model {folder}/{stem} not found", code="model_not_found", param="id")
        return owned_binaries(index, entry) if index is not None and entry is not None else []

    def _delete_files(self, folder: str, stem: str, binaries: list[str]) -> list[str]:
        folder_dir = self.models_dir / folder
        (folder_dir / f"{stem}.json").unlink(missing_ok=True)
        removed = [f"models/{folder}/{stem}.json"]
        for name in binaries:
            removed += self.binaries.remove(folder_dir, name)
        if not [n for n in os.listdir(folder_dir) if not n.startswith(".")]:
            shutil.rmtree(folder_dir, ignore_errors=True)
        return removed


def _checked_request(source_url: str, import_mode: str) -> str:
    source_url = source_url.strip()
    if not source_url:
        raise InvalidArgument(
            "source_url is required: an http(s) URL or a local file path", param="source_url"
        )
    if import_mode not in IMPORT_MODES:
        raise InvalidArgument(f"import_mode must be one of {', '.join(IMPORT_MODES)}", param="import_mode")
    return source_url


def derive_id(model_id: str, file_name: str, *, remote: bool) -> tuple[str, str]:
    """The new object's (folder, stem): the id given, else both named after its file."""
    if model_id:
        return split_model_id(model_id)
    # A remote model's name is kept whole: "gpt-3.5-turbo" has no extension.
    stem = (file_name if remote else os.path.splitext(file_name)[0]).lstrip(".") or "model"
    try:
        check_name(stem, "folder")
    except ValueError as exc:
        raise InvalidArgument(f"cannot derive an id from {file_name!r}: {exc}", param="id") from None
    return stem, stem


def build_object(
    source: Source,
    *,
    name: str | None,
    description: str | None,
    owned_by: str | None,
    parameters: dict[str, Any] | None,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """The json properties of a new object."""
    metadata = dict(metadata)
    if source.local is not None:
        metadata.setdefault("binaries", [source.file_name])
    tag = quant_tag(source.file_name)
    if tag:
        metadata.setdefault("quantization", tag)
    data: dict[str, Any] = {"source_url": source.url}
    if name is not None:
        data["name"] = name
    if description is not None:
        data["description"] = description
    if owned_by:
        data["owned_by"] = owned_by
    data["created"] = int(time.time())
    if parameters:
        data["parameters"] = parameters
    if metadata:
        data["metadata"] = metadata
    return data


def owned_binaries(index: FolderIndex, entry: Entry) -> list[str]:
    """The binaries of `entry` that no other object of its folder uses (a user's file outside the models
    folder is never the catalog's to delete)."""
    shared = {
        b.spec.name
        for other in index.entries.values()
        if other is not entry
        for b in other.binaries
        if not b.spec.external_path
    }
    return [b.spec.name for b in entry.binaries if not b.spec.external_path and b.spec.name not in shared]


def _refuse_existing(json_path: Path) -> None:
    if json_path.exists() or json_path.is_symlink():
        raise AlreadyExists(
            f"model {json_path.parent.name}/{json_path.stem} already exists", code="model_exists"
        )


def _write_exclusive(path: Path, raw: bytes) -> None:
    with open(path, "xb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
