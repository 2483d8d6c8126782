"""The file-safety rules every service shares: which folder and file names may be used under JAN_ROOT or
a bucket prefix (and how outside text becomes one), and how a small file is replaced durably."""

from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path

# Longest folder or file name accepted: the hidden partial, its sidecars and their temp files (write_atomic)
# add up to 32 characters, and the result must stay under the 255-byte limit of common filesystems.
MAX_NAME_BYTES = 200
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+\-]")
# Extensions shorter than this survive when a name is cut to MAX_NAME_BYTES ("….gguf" stays a GGUF).
_MAX_KEPT_EXTENSION = 16


def check_name(value: str, what: str) -> str:
    """A folder or file name that is one non-hidden path component, in UTF-8, that fits a filesystem
    entry; ValueError naming `what` otherwise. Names end up in paths, bucket keys, JSON and protobuf."""
    if not isinstance(value, str) or not value or value.startswith("."):
        raise ValueError(f"{what} {value!r} must not be empty or start with '.'")
    if "/" in value or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} must not contain '/', '\\' or control characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a listing's undecodable bytes: no JSON or protobuf can carry them
        raise ValueError(f"{what} {value!r} is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{what} is longer than {MAX_NAME_BYTES} bytes")
    return value


def is_valid_name(value: str) -> bool:
    try:
        check_name(value, "name")
    except ValueError:
        return False
    return True


def sanitize_name(text: str, *, tidy: bool = False, keep_extension: bool = False) -> str:
    """`text` made into a name check_name accepts, or '' when nothing is left: [A-Za-z0-9._+-] only
    (anything else becomes '_'), no leading dot, at most MAX_NAME_BYTES. `tidy` also drops the '.' and
    '_' left at either end (names people read); `keep_extension` keeps a short extension when cutting."""
    cleaned = _UNSAFE_NAME_CHARS.sub("_", text)
    cleaned = cleaned.strip("._") if tidy else cleaned.lstrip(".")
    if len(cleaned) <= MAX_NAME_BYTES:  # ASCII only by now: characters are bytes
        return cleaned
    root, dot, ext = cleaned.rpartition(".")
    if keep_extension and dot and 0 < len(ext) < _MAX_KEPT_EXTENSION:
        return root[: MAX_NAME_BYTES - len(ext) - 1] + "." + ext
    return cleaned[:MAX_NAME_BYTES]


def fsync_dir(path: Path) -> None:
    """Makes a rename into `path` durable: it reaches the disk only with the directory entry itself."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a filesystem that will not open directories: nothing more can be done
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces `path` by `data` so that a crash leaves the old or the new content, never half of it: a
    hidden temp file beside it, fsynced, renamed over it, then the directory fsynced."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_written(path: Path) -> None:
    """Removes a file kept by `write_atomic`, and the hidden temp files beside it that a process killed
    between writing one and renaming it left behind (`.<name>.<random>.tmp`)."""
    path.unlink(missing_ok=True)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        leftover.unlink(missing_ok=True)
