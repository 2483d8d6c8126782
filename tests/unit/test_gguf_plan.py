"""Tests for the shared GGUF pieces in services.common: the bounded header reader (gguf) on real and on
hostile files, and the planner (gguf_plan) where the Hub's tests (test_hf.py) do not reach."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import gguf
import pytest

from services.common import gguf as header_reader
from services.common.gguf import gguf_facts, quantization_name, read_gguf_header
from services.common.gguf_plan import ListedFile, find_candidates, hub_file_url, is_projector, plan_models
from tests.fakes.tiny_gguf import write_header_gguf

# ---------------------------------------------------------------------------------------------------------
# Header reader


def _write(path: Path, *, tensors: int = 1, file_type: gguf.LlamaFileType | None = None) -> Path:
    return write_header_gguf(
        path,
        name="Tiny",
        file_type=file_type,
        tensors=tensors,
        context_length=512,
        chat_template="{{ messages }}",
    )


def _fixed(*, magic: bytes = b"GGUF", version: int = 3, tensors: int = 1, keys: int = 1) -> bytes:
    return struct.pack("<4sIQQ", magic, version, tensors, keys)


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


def _string_kv(name: str, value: str) -> bytes:
    return _key(name) + struct.pack("<IQ", 8, len(value)) + value.encode()


def test_reads_what_the_gguf_package_wrote(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.gguf", tensors=3, file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)
    header = read_gguf_header(path)
    assert (header.version, header.tensor_count, header.complete) == (3, 3, True)
    assert header.facts == {
        "general.architecture": "llama",
        "general.name": "Tiny",
        "general.file_type": 15,
        "llama.context_length": 512,
        "tokenizer.chat_template": "{{ messages }}",
    }  # the arrays (tokens, scores) are skipped
    assert gguf_facts(path) == header.facts
    assert read_gguf_header(_write(tmp_path / "vocab.gguf", tensors=0)).tensor_count == 0


def test_stops_at_the_wanted_keys_and_at_the_byte_budget(tmp_path: Path) -> None:
    # Garbage after the wanted key is never reached.
    path = tmp_path / "x.gguf"
    path.write_bytes(_fixed(keys=2) + _string_kv("general.name", "N") + _key("bad") + struct.pack("<I", 99))
    header = read_gguf_header(path, wanted={"general.name"})
    assert (header.facts, header.complete) == ({"general.name": "N"}, False)
    with pytest.raises(ValueError, match="unknown metadata value type 99"):
        read_gguf_header(path)
    big = _fixed(keys=2) + _string_kv("general.name", "N") + _string_kv("long", "x" * 10_000)
    path.write_bytes(big)
    header = read_gguf_header(path, max_bytes=1000)
    assert (header.facts, header.complete) == ({"general.name": "N"}, False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGUF\x03\x00", "too short"),
        (b"GGML" + b"\x00" * 40, "bad magic"),
        (_fixed(version=1), "unsupported GGUF version 1"),
        (_fixed(version=3 << 24), "unsupported GGUF version"),  # a big-endian file
        (_fixed(tensors=1 << 40), "declares 1099511627776 tensors"),
        (_fixed(keys=1 << 62), "metadata keys"),
        (_fixed(keys=3) + _string_kv("a", "b"), "truncated"),
        (_fixed() + struct.pack("<Q", 1 << 60), "a metadata key of"),
        (_fixed() + _key("k") + struct.pack("<IQ", 8, 1 << 60), "truncated"),
        (_fixed() + _key("k") + struct.pack("<IIQ", 9, 4, 1 << 40), "an array of"),
        (_fixed() + _key("k") + struct.pack("<IIQ", 9, 8, 1 << 20) + struct.pack("<Q", 1 << 50), "truncated"),
        (_fixed() + _key("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5, "nested more than"),
        (_fixed() + _key("k") + struct.pack("<IIQ", 9, 77, 1), "unknown array item type 77"),
    ],
)
def test_refuses_garbage_quickly(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        read_gguf_header(path)
    assert time.perf_counter() - start < 0.5


def test_long_string_values_are_skipped_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(header_reader, "MAX_STRING_BYTES", 4)
    path = tmp_path / "s.gguf"
    path.write_bytes(_fixed(keys=2) + _string_kv("long", "x" * 10) + _string_kv("short", "ok"))
    assert read_gguf_header(path).facts == {"short": "ok"}


@pytest.mark.parametrize(
    ("file_type", "name"),
    [(15, "Q4_K_M"), (7, "Q8_0"), (1, "F16"), (0, "F32"), (32, "BF16"), (23, "IQ3_XXS"), (1024, "")],
)
def test_quantization_name(file_type: int, name: str) -> None:
    assert quantization_name(file_type) == name


@pytest.mark.parametrize("value", [999, -1, "15", 15.0, True, None])
def test_quantization_name_of_nonsense_is_empty(value: object) -> None:
    assert quantization_name(value) == ""


# ---------------------------------------------------------------------------------------------------------
# Planner


def test_plan_keeps_listed_paths_and_needs_no_url() -> None:
    files = [ListedFile("a/m-Q4_0.gguf", 5, ""), ListedFile("b/m-Q4_0.gguf", 7, "")]
    models = plan_models(files, title="M")
    assert [(m.stem, m.name) for m in models] == [("a-m-Q4_0", "M Q4_0"), ("b-m-Q4_0", "M Q4_0")]
    assert [(b.name, b.path, b.url) for m in models for b in m.binaries] == [
        ("a-m-Q4_0.gguf", "a/m-Q4_0.gguf", ""),
        ("b-m-Q4_0.gguf", "b/m-Q4_0.gguf", ""),
    ]


def test_find_candidates_reports_incomplete_splits() -> None:
    files = [
        ListedFile("x-00001-of-00004.gguf", 1, ""),
        ListedFile("x-00003-of-00004.gguf", 1, ""),
        ListedFile("y-00001-of-00001.gguf", 1, ""),
        ListedFile("y-00002-of-00001.gguf", 1, ""),  # beyond its declared count
        ListedFile("z-Q8_0.gguf", 1, ""),
    ]
    candidates, incomplete = find_candidates(files)
    assert [(c.base, c.family, c.quantization) for c in candidates] == [("z-Q8_0", "z", "Q8_0")]
    assert [(s.base, s.total, s.missing, [p.path for p in s.parts]) for s in incomplete] == [
        ("x", 4, [2, 4], ["x-00001-of-00004.gguf", "x-00003-of-00004.gguf"]),
        ("y", 1, [], ["y-00001-of-00001.gguf", "y-00002-of-00001.gguf"]),
    ]


def test_hub_file_url_of_a_legacy_repository_without_organization() -> None:
    assert (
        hub_file_url("https://hf.co/", "", "gpt2", "main", "a b.gguf")
        == "https://hf.co/gpt2/resolve/main/a%20b.gguf"
    )


@pytest.mark.parametrize(
    ("path", "projector"),
    [
        ("mmproj-model-f16.gguf", True),
        ("Q4_K_M/MMPROJ-F16.gguf", True),
        ("llava-v1.5.proj", True),
        ("mmproj/model-Q4_K_M.gguf", False),  # only the file's own name counts
        ("llava-Q4_K_M.gguf", False),
        ("projector-notes.txt", False),
    ],
)
def test_is_projector_the_one_rule(path: str, projector: bool) -> None:
    assert is_projector(path) is projector
