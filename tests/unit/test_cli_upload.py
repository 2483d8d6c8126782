"""The archive the CLI builds while it sends a model file (cli/upload.py): a valid tar of the json and
the file, exactly as long as announced."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import orjson

from cli.upload import ModelArchive


def test_the_archive_holds_the_json_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "m-Q4_K_M.gguf"
    file.write_bytes(bytes(range(256)) * 4099 + b"tail")  # not a multiple of the tar block size
    archive = ModelArchive(file, "m", "q4", {"name": "M"})
    seen: list[tuple[int, int]] = []
    data = b"".join(archive.chunks(lambda done, total: seen.append((done, total))))
    assert len(data) == archive.length and seen[-1] == (archive.length, archive.length)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert members["m/m-Q4_K_M.gguf"] == file.read_bytes()
    assert orjson.loads(members["m/q4.json"]) == {"name": "M", "metadata": {"binaries": ["m-Q4_K_M.gguf"]}}


def test_a_long_file_name_survives(tmp_path: Path) -> None:
    file = tmp_path / ("x" * 150 + ".gguf")
    file.write_bytes(b"abc")
    data = b"".join(ModelArchive(file, "f", "s", {}).chunks())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["f/s.json", f"f/{file.name}"]
