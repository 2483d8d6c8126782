"""What the engine reads from a GGUF file's header without loading the model (the memory estimate)."""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import Any

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def gguf_facts(path: Path) -> dict[str, Any]:
    """The scalar header values of a GGUF file (arrays such as the vocabulary are skipped), read
    without loading the model: the memory estimate needs a few of them before deciding to load."""
    facts: dict[str, Any] = {}
    with open(path, "rb") as f:
        magic, _version, _tensors, count = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")

        def string() -> bytes:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n)

        def skip(kind: int) -> None:
            if kind == 8:
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, os.SEEK_CUR)
            elif kind == 9:
                item, n = struct.unpack("<IQ", f.read(12))
                if item in _SCALARS:
                    f.seek(n * struct.calcsize(_SCALARS[item]), os.SEEK_CUR)
                else:
                    for _ in range(n):
                        skip(item)
            else:
                f.seek(struct.calcsize(_SCALARS[kind]), os.SEEK_CUR)

        for _ in range(count):
            key = string().decode(errors="replace")
            (kind,) = struct.unpack("<I", f.read(4))
            if kind in _SCALARS:
                fmt = _SCALARS[kind]
                (facts[key],) = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
            elif kind == 8:
                facts[key] = string().decode(errors="replace")
            else:
                skip(kind)
    return facts


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
