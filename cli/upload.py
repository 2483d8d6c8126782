"""A model file sent to a gateway that cannot read it (it runs in a container, on a cluster): the file
and a model json travel as a tar archive, built while it is sent, through `POST /v1/folders/import`.
Nothing is written to the local disk; the archive's length is known in advance (Content-Length)."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

BLOCK = tarfile.BLOCKSIZE  # 512
CHUNK = 1024 * 1024


def _header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class ModelArchive:
    """`<folder>/<stem>.json` (binaries: [the file], plus any fields given) and `<folder>/<file name>`."""

    def __init__(self, file: Path, folder: str, stem: str, fields: dict[str, object]) -> None:
        self.file = file
        st = file.stat()
        self.size, self.mtime = st.st_size, st.st_mtime
        obj = {**fields, "metadata": {"binaries": [file.name]}}
        self.json = orjson.dumps(obj, option=orjson.OPT_INDENT_2)
        self.json_header = _header(f"{folder}/{stem}.json", len(self.json), self.mtime)
        self.file_header = _header(f"{folder}/{file.name}", self.size, self.mtime)

    @property
    def length(self) -> int:
        return (
            len(self.json_header)
            + len(self.json)
            + len(_padding(len(self.json)))
            + len(self.file_header)
            + self.size
            + len(_padding(self.size))
            + 2 * BLOCK
        )

    def chunks(self, progress: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
        total, sent = self.length, 0

        def step(data: bytes) -> bytes:
            nonlocal sent
            sent += len(data)
            if progress:
                progress(sent, total)
            return data

        yield step(self.json_header + self.json + _padding(len(self.json)) + self.file_header)
        left = self.size
        with self.file.open("rb") as f:
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"{self.file} got shorter while it was being sent")
                left -= len(chunk)
                yield step(chunk)
        yield step(_padding(self.size) + b"\0" * (2 * BLOCK))
