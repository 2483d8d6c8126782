"""What the engine reads from a GGUF file's header without loading the model (the memory estimate)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from services.common.gguf import gguf_facts


def kv_bytes_per_token(facts: dict[str, Any]) -> int:
    arch = facts.get("general.architecture", "llama")
    layers = int(facts.get(f"{arch}.block_count", 32))
    embd = int(facts.get(f"{arch}.embedding_length", 4096))
    heads = int(facts.get(f"{arch}.attention.head_count", 32)) or 1
    heads_kv = int(facts.get(f"{arch}.attention.head_count_kv", heads)) or heads
    key_len = int(facts.get(f"{arch}.attention.key_length", embd // heads))
    value_len = int(facts.get(f"{arch}.attention.value_length", embd // heads))
    return layers * heads_kv * (key_len + value_len) * 2  # f16 K and V


def kv_bytes_per_token_of(path: Path) -> int:
    """kv_bytes_per_token of a GGUF file, its header read once while the file is unchanged (the memory
    estimate of a thousand models must not read a thousand headers every time it is asked)."""
    st = path.stat()
    return _kv_bytes_per_token_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _kv_bytes_per_token_cached(path: str, size: int, mtime_ns: int) -> int:
    return kv_bytes_per_token(gguf_facts(Path(path)))
