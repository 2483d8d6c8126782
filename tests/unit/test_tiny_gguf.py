"""Tests for tests.fakes.tiny_gguf: the file format always; loading and generating with llama.cpp when
llama-cpp-python is installed (those tests skip otherwise)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from tests.fakes.tiny_gguf import (
    BOS_ID,
    EOS_ID,
    FIRST_BYTE_ID,
    FIRST_NORMAL_ID,
    N_BLOCKS,
    N_EMBD,
    NORMAL_PIECES,
    SPACE,
    TOKENS,
    UNK_ID,
    VOCAB_SIZE,
    write_tiny_gguf,
)

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def _tensor(reader: gguf.GGUFReader, name: str) -> np.ndarray:
    for tensor in reader.tensors:
        if tensor.name == name:
            return np.asarray(tensor.data)
    raise AssertionError(f"no tensor {name}")


# ---------------------------------------------------------------------------------------------------
# The file (no llama.cpp needed)
# ---------------------------------------------------------------------------------------------------


def test_writes_a_gguf_file_readable_by_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tiny.gguf"
    assert write_tiny_gguf(path, n_ctx=1024) == path
    assert path.read_bytes()[:4] == b"GGUF"
    assert path.stat().st_size < 2 * 1024 * 1024

    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.name") == "tiny-llama-test"
    assert _field(reader, "llama.block_count") == N_BLOCKS
    assert _field(reader, "llama.embedding_length") == N_EMBD
    assert _field(reader, "llama.context_length") == 1024
    assert _field(reader, "llama.rope.dimension_count") == 16
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB_SIZE == len(TOKENS)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[FIRST_BYTE_ID] == "<0x00>" and tokens[FIRST_NORMAL_ID - 1] == "<0xFF>"
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert set(types[FIRST_BYTE_ID:FIRST_NORMAL_ID]) == {gguf.TokenType.BYTE}
    assert set(types[FIRST_NORMAL_ID:]) == {gguf.TokenType.NORMAL}
    assert len(_field(reader, "tokenizer.ggml.scores")) == VOCAB_SIZE
    assert _field(reader, "tokenizer.ggml.bos_token_id") == BOS_ID
    assert _field(reader, "tokenizer.ggml.eos_token_id") == EOS_ID
    assert _field(reader, "tokenizer.ggml.unknown_token_id") == UNK_ID
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True
    assert _field(reader, "tokenizer.ggml.add_eos_token") is False
    assert reader.get_field("tokenizer.chat_template") is None

    assert len(reader.tensors) == 3 + 9 * N_BLOCKS
    assert _tensor(reader, "token_embd.weight").shape == (VOCAB_SIZE, N_EMBD)
    assert _tensor(reader, "blk.1.ffn_down.weight").shape == (N_EMBD, 128)


def test_chat_template_is_written_when_given(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_tiny_gguf(tmp_path / "t.gguf", chat_template=TEMPLATE))
    assert _field(reader, "tokenizer.chat_template") == TEMPLATE


def test_output_rows_of_special_and_byte_tokens_are_zero(tmp_path: Path) -> None:
    output = _tensor(gguf.GGUFReader(write_tiny_gguf(tmp_path / "t.gguf")), "output.weight")
    assert not output[:FIRST_NORMAL_ID].any()
    assert np.all(np.abs(output[FIRST_NORMAL_ID:]).sum(axis=1) > 0)


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=7).read_bytes()
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=7).read_bytes()
    c = write_tiny_gguf(tmp_path / "c.gguf", seed=8).read_bytes()
    assert a == b
    assert a != c and len(a) == len(c)


def test_vocabulary_is_unique_and_every_word_piece_is_reachable_by_spm_merges() -> None:
    assert len(set(TOKENS)) == len(TOKENS)
    pieces = set(NORMAL_PIECES)
    assert 100 <= len(pieces) <= 300
    assert {SPACE, ".", ",", f"{SPACE}the", f"{SPACE}a", f"{SPACE}cat"} <= pieces
    assert set("abcdefghijklmnopqrstuvwxyz") <= pieces
    for piece in pieces:
        if piece.startswith(SPACE) and len(piece) > 1:
            # SPM only merges two symbols into an existing piece: every prefix must be a piece too.
            assert piece[:-1] in pieces, piece


# ---------------------------------------------------------------------------------------------------
# llama.cpp (skipped without llama-cpp-python)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def llm(tiny_model: Path) -> Iterator[Any]:
    llama_cpp = pytest.importorskip("llama_cpp")
    started = time.perf_counter()
    model = llama_cpp.Llama(model_path=str(tiny_model), n_ctx=256, verbose=False)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"loading the tiny model took {elapsed:.2f}s"
    yield model
    model.close()


def test_llama_loads_and_reports_the_model(llm: Any) -> None:
    assert llm.n_vocab() == VOCAB_SIZE
    assert llm.n_ctx() == 256
    assert llm.token_bos() == BOS_ID
    assert llm.token_eos() == EOS_ID
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.metadata["tokenizer.chat_template"] == TEMPLATE


def test_llama_greedy_completion_runs_to_max_tokens_deterministically(llm: Any) -> None:
    first = llm.create_completion("the cat", max_tokens=16, temperature=0)
    second = llm.create_completion("the cat", max_tokens=16, temperature=0)
    assert first["usage"]["completion_tokens"] == 16
    assert first["choices"][0]["finish_reason"] == "length"
    text = first["choices"][0]["text"]
    assert text and text == second["choices"][0]["text"]
    # Only normal pieces are generated: the text re-tokenizes without byte fallback.
    assert all(t >= FIRST_NORMAL_ID for t in llm.tokenize(text.encode(), add_bos=False))


def test_llama_tokenize_detokenize_round_trip(llm: Any) -> None:
    text = "the quick brown fox jumps over the lazy dog."
    tokens = llm.tokenize(text.encode())
    assert tokens[0] == BOS_ID
    # Every word is one piece and "." another: no byte fallback for plain English.
    assert len(tokens) == 1 + len(text.split()) + 1
    assert all(t >= FIRST_NORMAL_ID for t in tokens[1:])
    assert llm.detokenize(tokens[1:]).decode().strip() == text
    other = "Hello world, once upon a time."
    assert llm.detokenize(llm.tokenize(other.encode(), add_bos=False)).decode().strip() == other


def test_llama_chat_template_key_absent_when_not_given(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    plain = llama_cpp.Llama(model_path=str(write_tiny_gguf(tmp_path / "p.gguf")), n_ctx=256, verbose=False)
    try:
        assert "tokenizer.chat_template" not in plain.metadata
    finally:
        plain.close()
