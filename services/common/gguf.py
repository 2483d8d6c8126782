"""Reading a GGUF file's header (its scalar metadata and tensor count) without loading the model.

The reader is bounded: it reads at most `max_bytes` into the file, refuses absurd declared counts and
lengths, and raises ValueError for anything that is not a well-formed GGUF header (bad magic, truncated,
unknown value types), so a garbage or hostile file costs a few reads, never gigabytes or an endless loop.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# Real files have tens of keys, hundreds to a few thousand tensors, vocabularies of a few hundred
# thousand entries: the caps are far above that and far below what would make a garbage count costly.
MAX_KEYS = 65_536
MAX_TENSORS = 1 << 20
MAX_ARRAY_ITEMS = 1 << 24
MAX_KEY_BYTES = 65_535  # the GGUF specification's own bound
MAX_STRING_BYTES = 16 * 1024 * 1024  # longer string values are skipped, not kept
MAX_ARRAY_DEPTH = 4
# How far into the file a whole header may reach (vocabulary and merges included).
MAX_HEADER_BYTES = 256 * 1024 * 1024
# Enough for the general.* keys, which writers put before the tokenizer's arrays.
PLANNING_HEADER_BYTES = 256 * 1024

_STRING, _ARRAY = 8, 9
_SCALARS = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FIXED = struct.Struct("<4sIQQ")  # magic, version, tensor count, key/value count
_CHUNK = 16 * 1024
_SKIPPED = object()  # what _value returns for values that are not kept


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF header says. `facts` holds scalar and string values (arrays such as the vocabulary
    are skipped); `complete` is False when reading stopped early (every wanted key found, or the byte
    budget reached)."""

    version: int
    tensor_count: int
    facts: dict[str, Any]
    complete: bool


class _Stop(Exception):
    """Reading reached the caller's byte budget."""


class _Cursor:
    """Sequential reads over a file through one buffer, never past `limit` bytes into it."""

    def __init__(self, f: IO[bytes], size: int, limit: int) -> None:
        self._f, self._size, self._limit = f, size, limit
        self._buf = b""
        self._pos = 0  # in _buf
        self._base = 0  # file offset of _buf[0]

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def _reach(self, n: int) -> None:
        end = self.offset + n
        if end > self._size:
            raise ValueError(f"truncated: the header runs past the end of the file ({self._size} bytes)")
        if end > self._limit:
            raise _Stop

    def take(self, n: int) -> bytes:
        self._reach(n)
        if self._pos + n > len(self._buf):
            rest = self._buf[self._pos :]
            self._f.seek(self._base + len(self._buf))
            more = self._f.read(max(n - len(rest), _CHUNK))
            self._base, self._buf, self._pos = self.offset, rest + more, 0
            if len(self._buf) < n:
                raise ValueError("truncated: the file ended inside its header")
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def skip(self, n: int) -> None:
        self._reach(n)
        if self._pos + n <= len(self._buf):
            self._pos += n
        else:
            self._base, self._buf, self._pos = self.offset + n, b"", 0

    def skip_strings(self, count: int) -> None:
        """Skips `count` strings (length-prefixed), the common case inside the buffer without a call each:
        a vocabulary holds hundreds of thousands."""
        buf, pos, end_of_buf = self._buf, self._pos, len(self._buf)
        budget = self._limit - self._base
        for _ in range(count):
            if pos + 8 <= end_of_buf:
                end = pos + 8 + _U64.unpack_from(buf, pos)[0]
                if end <= end_of_buf and end <= budget:
                    pos = end
                    continue
            self._pos = pos
            self.skip(self.u64())
            buf, pos, end_of_buf = self._buf, self._pos, len(self._buf)
            budget = self._limit - self._base
        self._pos = pos

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])


def read_gguf_header(
    path: Path, *, wanted: Collection[str] | None = None, max_bytes: int = MAX_HEADER_BYTES
) -> GGUFHeader:
    """The header of the GGUF file at `path`, read no further than `max_bytes` into the file and, when
    `wanted` names keys, no further than the last of them. ValueError when the file is not a readable
    GGUF header; OSError when it cannot be opened."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        cursor = _Cursor(f, size, max(max_bytes, _FIXED.size))
        if size < _FIXED.size:
            raise ValueError(f"truncated: {size} bytes is too short for a GGUF header")
        magic, version, tensor_count, key_count = _FIXED.unpack(cursor.take(_FIXED.size))
        if magic != GGUF_MAGIC:
            raise ValueError(f"bad magic {magic!r} (expected {GGUF_MAGIC!r})")
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported GGUF version {version} (only versions 2 and 3 are read)")
        if tensor_count > MAX_TENSORS:
            raise ValueError(f"declares {tensor_count} tensors (more than {MAX_TENSORS})")
        if key_count > MAX_KEYS:
            raise ValueError(f"declares {key_count} metadata keys (more than {MAX_KEYS})")
        facts: dict[str, Any] = {}
        missing = set(wanted) if wanted is not None else None
        complete = True
        try:
            for _ in range(key_count):
                if missing is not None and not missing:
                    complete = False
                    break
                key = _key(cursor)
                kind = cursor.u32()
                value = _value(cursor, kind)
                if value is not _SKIPPED:
                    facts[key] = value
                if missing is not None:
                    missing.discard(key)
        except _Stop:
            complete = False
        return GGUFHeader(version=version, tensor_count=tensor_count, facts=facts, complete=complete)


def _key(cursor: _Cursor) -> str:
    n = cursor.u64()
    if n > MAX_KEY_BYTES:
        raise ValueError(f"a metadata key of {n} bytes (more than {MAX_KEY_BYTES})")
    return cursor.take(n).decode(errors="replace")


def _value(cursor: _Cursor, kind: int) -> Any:
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        return scalar.unpack(cursor.take(scalar.size))[0]
    if kind == _STRING:
        n = cursor.u64()
        if n > MAX_STRING_BYTES:
            cursor.skip(n)
            return _SKIPPED
        return cursor.take(n).decode(errors="replace")
    if kind == _ARRAY:
        _skip_array(cursor, depth=1)
        return _SKIPPED
    raise ValueError(f"unknown metadata value type {kind}")


def _skip_array(cursor: _Cursor, depth: int) -> None:
    if depth > MAX_ARRAY_DEPTH:
        raise ValueError(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
    item = cursor.u32()
    count = cursor.u64()
    if count > MAX_ARRAY_ITEMS:
        raise ValueError(f"an array of {count} items (more than {MAX_ARRAY_ITEMS})")
    scalar = _SCALARS.get(item)
    if scalar is not None:
        cursor.skip(count * scalar.size)
    elif item == _STRING:
        cursor.skip_strings(count)
    elif item == _ARRAY:
        for _ in range(count):
            _skip_array(cursor, depth + 1)
    else:
        raise ValueError(f"unknown array item type {item}")


def gguf_facts(path: Path) -> dict[str, Any]:
    """The scalar and string header values of a GGUF file (arrays such as the vocabulary are skipped),
    read without loading the model: the memory estimate needs a few of them before deciding to load."""
    header = read_gguf_header(path)
    if not header.complete:
        raise ValueError(f"{path.name}: the header is larger than {MAX_HEADER_BYTES} bytes")
    return header.facts


def quantization_name(file_type: Any) -> str:
    """The quantization a `general.file_type` value stands for ("Q4_K_M", "F16", "BF16" ...), named as
    llama.cpp's llama_ftype (gguf.LlamaFileType) without its MOSTLY_/ALL_ prefix; "" when unknown."""
    if isinstance(file_type, bool) or not isinstance(file_type, int):
        return ""
    return _file_type_names().get(file_type, "")


@functools.cache
def _file_type_names() -> dict[int, str]:
    # Imported on first use: the gguf package pulls in numpy, which most users of this module never need.
    from gguf import LlamaFileType

    names: dict[int, str] = {}
    for member in LlamaFileType:
        name = member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        if name != "GUESSED":
            names[int(member.value)] = name
    return names
