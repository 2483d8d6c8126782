"""Whole model folders in and out: a folder exported as a tar.gz stream (with its binaries, from the bucket
too), and an uploaded archive imported as a new folder (services/catalog/archive.py keeps both safe)."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jan.model.v1 import model_pb2
from services.catalog import archive
from services.catalog.binaries import Binaries, storage_errors
from services.catalog.files import LinkRegistry
from services.catalog.index import Index
from services.catalog.settings import CatalogSettings
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.filesafety import check_name


class Folders:
    def __init__(
        self, settings: CatalogSettings, index: Index, binaries: Binaries, links: LinkRegistry
    ) -> None:
        self.settings = settings
        self.models_dir = settings.models_dir
        self.index = index
        self.binaries = binaries
        self.links = links

    # --- export -------------------------------------------------------------------------------------------

    def export_folder(self, folder: str) -> Iterator[bytes]:
        path = self._folder_dir(folder)
        extra = self._bucket_members(folder, path)
        return archive.iter_export(path, arcname=folder, follow_symlink=self.links.is_ours, extra=extra)

    def _folder_dir(self, folder: str) -> Path:
        _check_folder(folder, param="folder", code="invalid_folder")
        path = self.models_dir / folder
        if path.is_symlink() or not path.is_dir():
            raise NotFound(f"model folder {folder} not found", code="folder_not_found", param="folder")
        return path

    def _bucket_members(self, folder: str, path: Path) -> list[archive.Member]:
        """Binaries in a bucket travel with the folder: the archive stays standalone."""
        storage = self.binaries.storage
        if storage is None:
            return []
        with storage_errors():
            stored = storage.list_folder(folder)
        here = set(os.listdir(path))
        return [
            (name, size, functools.partial(storage.iter_binary, folder, name))
            for name, size in sorted(stored.items())
            if name not in here
        ]

    # --- import -------------------------------------------------------------------------------------------

    def new_upload_file(self) -> Path:
        """A hidden temp file on the models filesystem to receive an uploaded archive."""
        tmp = self.settings.state_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".archive", dir=tmp)
        os.close(fd)
        return Path(name)

    async def import_archive(
        self, archive_path: Path, folder: str = ""
    ) -> tuple[str, list[model_pb2.Model], list[model_pb2.Problem]]:
        """The archive's folder, extracted into a hidden staging folder and renamed into place as `folder`
        (default: the archive's top folder); its models and problems."""
        if folder:
            _check_folder(folder, param="folder", code="invalid_folder")
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.models_dir))
        try:
            extracted = await self._extract(archive_path, staging)
            name = _target_name(folder, extracted)
            await self._move_in(name, staging)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        index = await self.index.refresh_folder(name)
        models = sorted((e.pb for e in index.entries.values()), key=lambda m: m.id) if index else []
        problems = list(index.problems.values()) if index else []
        return name, models, problems

    async def _extract(self, archive_path: Path, staging: Path) -> archive.Extracted:
        limits = archive.ArchiveLimits(max_total_bytes=self.settings.import_max_bytes)
        try:
            extracted = await asyncio.to_thread(archive.extract_archive, archive_path, staging, limits=limits)
        except archive.ArchiveError as exc:
            raise InvalidArgument(f"archive refused: {exc}", code="unsafe_archive") from None
        if not any(f.endswith(".json") for f in extracted.files):
            raise InvalidArgument("the archive holds no model json file", code="no_model_in_archive")
        return extracted

    async def _move_in(self, name: str, staging: Path) -> None:
        """The staged folder's binaries stored, then the folder renamed into place as `name`."""
        async with self.index.lock(name):
            target = self.models_dir / name
            if target.exists() or target.is_symlink():
                raise AlreadyExists(
                    f"model folder {name} already exists", code="folder_exists", param="folder"
                )
            await asyncio.to_thread(self.binaries.store_staged, name, staging)
            os.rename(staging, target)


def _target_name(folder: str, extracted: archive.Extracted) -> str:
    name = folder or extracted.top_folder or ""
    if not name:
        raise InvalidArgument("the archive has no top folder: name the folder to import into", param="folder")
    _check_folder(name, param="folder", prefix="archive top folder: ")
    return name


def _check_folder(name: str, *, param: str, code: str | None = None, prefix: str = "") -> None:
    try:
        check_name(name, "folder")
    except ValueError as exc:
        raise InvalidArgument(f"{prefix}{exc}", code=code, param=param) from None
