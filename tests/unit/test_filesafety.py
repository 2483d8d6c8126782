"""services/common/filesafety.py: the one name rule of the catalog and the storage backends, names made
from outside text, and atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.catalog.model import split_id
from services.common.filesafety import (
    MAX_NAME_BYTES,
    check_name,
    fsync_dir,
    is_valid_name,
    remove_written,
    sanitize_name,
    write_atomic,
)
from services.common.storage import LocalStorage


@pytest.mark.parametrize(
    "bad",
    ["", ".", "..", ".hidden", "a/b", "a\\b", "a\x00b", "x\n", "del\x7f", "\udcff.gguf", "é" * 101],
)
def test_names_that_could_escape_or_not_be_carried_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="folder"):
        check_name(bad, "folder")
    assert not is_valid_name(bad)


@pytest.mark.parametrize("good", ["a", "Llama-3.1 8B", "x.Q4_K_M.gguf", "é" * 100, "a" * MAX_NAME_BYTES])
def test_ordinary_names_pass_unchanged(good: str) -> None:
    assert check_name(good, "name") == good
    assert is_valid_name(good)


def test_the_catalog_and_the_storage_backends_apply_the_same_rule(tmp_path: Path) -> None:
    # DEL was refused by storage and accepted by the catalog before they shared one rule.
    storage = LocalStorage(tmp_path / "models")
    with pytest.raises(ValueError):
        storage.partial_path("f", "del\x7f")
    with pytest.raises(ValueError):
        split_id("f/del\x7f")


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("meta-llama/Llama-3", {}, "meta-llama_Llama-3"),
        ("..%2F..%2Fevil name.gguf", {}, "_2F.._2Fevil_name.gguf"),
        ("/model/.", {"tidy": True}, "model"),
        ("...", {}, ""),
        ("_" * 5 + "a" * 300, {"tidy": True}, "a" * MAX_NAME_BYTES),
        ("a" * 300 + ".gguf", {"keep_extension": True}, "a" * (MAX_NAME_BYTES - 5) + ".gguf"),
        ("a" * 300 + ".gguf", {}, "a" * MAX_NAME_BYTES),
    ],
)
def test_outside_text_becomes_an_accepted_name(text: str, kwargs: dict[str, bool], expected: str) -> None:
    name = sanitize_name(text, **kwargs)
    assert name == expected
    if name:
        check_name(name, "name")


def test_write_atomic_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    path.write_bytes(b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["links.json"]


def test_remove_written_takes_the_temp_files_a_killed_writer_left(tmp_path: Path) -> None:
    # kill -9 between mkstemp and the rename leaves `.<name>.<random>.tmp` beside the file
    path = tmp_path / ".m.gguf.part.json"
    write_atomic(path, b"{}")
    (tmp_path / "..m.gguf.part.json.ab12cd.tmp").write_bytes(b"{")
    (tmp_path / ".other.json.ab12cd.tmp").write_bytes(b"{")  # another file's: kept
    remove_written(path)
    assert os.listdir(tmp_path) == [".other.json.ab12cd.tmp"]


def test_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["links.json"]


def test_fsync_dir_of_a_missing_directory_is_no_error(tmp_path: Path) -> None:
    fsync_dir(tmp_path / "gone")
    fsync_dir(tmp_path)
