"""Export of model folders as tar.gz streams and safe import of user-supplied archives.

A model folder is flat: ``model.json`` plus the binaries it names. Exporting streams a gzip-compressed
tar of it without temp files, so large GGUF folders can be sent as an HTTP response body. Importing
treats the archive as hostile: every member is validated before anything is written, only regular files
land in the destination (flattened, never outside it), and sizes are enforced on the bytes actually
produced rather than on what the headers claim.
"""

import bz2
import gzip
import io
import logging
import lzma
import os
import re
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20
# tarfile reads a whole pax / GNU long-name header in one read() of its declared size; a compressed
# archive can declare gigabytes there, so any single read above this is refused. Member data is read
# in _COPY_CHUNK pieces and never comes close.
_MAX_SINGLE_READ = 16 << 20
# Headers and padding make the decompressed tar stream slightly larger than the sum of file sizes;
# this is the allowance per member on top of max_total_bytes for the stream-level check.
_STREAM_OVERHEAD_PER_MEMBER = 4096
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
# macOS Finder adds resource forks under this folder; they are metadata, never model files.
_MACOS_METADATA_DIR = "__MACOSX"


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ArchiveError(Exception):
    """The archive is unsafe or malformed; str(e) is a clear reason for the user."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Resource limits for extract_archive; all are enforced on bytes actually produced."""

    max_total_bytes: int = 512 * 1024**3
    max_members: int = 10_000
    max_ratio: float = 200.0
    # Small archives may legitimately compress very well (JSON, zero padding), so the ratio is only
    # enforced once this many bytes have been extracted.
    ratio_floor_bytes: int = 64 * 1024**2


_DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class Extracted:
    """Result of extract_archive."""

    top_folder: str | None
    files: list[str]


# ---------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------


Member = tuple[str, int, Callable[[], Iterator[bytes]]]  # name, size, its content in chunks


def iter_export(
    folder: Path,
    *,
    arcname: str,
    follow_symlink: Callable[[Path], bool],
    chunk_size: int = 1 << 20,
    extra: Sequence[Member] = (),
) -> Iterator[bytes]:
    """Streams a gzip-compressed tar of `folder` in chunks, members named `<arcname>/<file>`, then the
    `extra` members (files kept elsewhere: binaries in a bucket), each exactly as long as it says.

    Only regular files directly inside `folder` are included; names starting with "." (partial
    downloads, temp files) and subdirectories are skipped. A symlink is exported as a regular file with
    its target's content only when `follow_symlink(path)` is True, otherwise it is skipped with a
    warning. Chunks are about `chunk_size` bytes; memory use stays around two chunks whatever the file
    sizes. If a file shrinks while it is being read the generator raises OSError, truncating the stream.
    """
    _check_arcname(arcname)
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    # wbits=31 selects the gzip container, so the output is a regular .tar.gz.
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    pending = bytearray()
    for piece in _iter_tar(folder, arcname, follow_symlink, chunk_size, extra):
        pending += compressor.compress(piece)
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    pending += compressor.flush()
    if pending:
        yield bytes(pending)


def _check_arcname(arcname: str) -> None:
    if (
        not arcname
        or arcname in (".", "..")
        or arcname.startswith(".")
        or any(c in arcname for c in "/\\\x00")
        or any(ord(c) < 0x20 or c == "\x7f" for c in arcname)
    ):
        raise ValueError(f"invalid archive folder name {arcname!r}")


def _iter_tar(
    folder: Path,
    arcname: str,
    follow_symlink: Callable[[Path], bool],
    chunk_size: int,
    extra: Sequence[Member] = (),
) -> Iterator[bytes]:
    """Yields the raw (uncompressed) tar stream piece by piece.

    tarfile.addfile copies a whole member in one call, which would force the full file through the
    output buffer before the caller sees a byte; writing the framing ourselves with the public
    TarInfo.tobuf keeps every piece bounded by chunk_size.
    """
    written = 0
    top = tarfile.TarInfo(arcname)
    top.type = tarfile.DIRTYPE
    top.mode = 0o755
    top.mtime = int(folder.stat().st_mtime)
    header = _tar_header(top)
    written += len(header)
    yield header

    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        path = folder / name
        src = _open_for_export(path, follow_symlink)
        if src is None:
            continue
        with src:
            st = os.fstat(src.fileno())
            info = tarfile.TarInfo(f"{arcname}/{name}")
            info.size = st.st_size
            info.mtime = int(st.st_mtime)
            info.mode = 0o644
            header = _tar_header(info)
            written += len(header)
            yield header
            remaining = st.st_size
            while remaining:
                data = src.read(min(chunk_size, remaining))
                if not data:
                    raise OSError(f"{path} shrank while it was being exported")
                remaining -= len(data)
                yield data
            written += st.st_size
            padding = -st.st_size % tarfile.BLOCKSIZE
            if padding:
                written += padding
                yield bytes(padding)

    for name, size, content in extra:
        info = tarfile.TarInfo(f"{arcname}/{name}")
        info.size, info.mode, info.mtime = size, 0o644, int(time.time())
        header = _tar_header(info)
        written += len(header)
        yield header
        remaining = size
        for data in content():
            if len(data) > remaining:
                raise OSError(f"{name} is longer than the {size} bytes announced")
            remaining -= len(data)
            yield data
        if remaining:
            raise OSError(f"{name} ended {remaining} bytes short")
        written += size
        padding = -size % tarfile.BLOCKSIZE
        if padding:
            written += padding
            yield bytes(padding)

    # End-of-archive marker (two zero blocks), padded to a full record as tar(1) does.
    end = 2 * tarfile.BLOCKSIZE
    end += -(written + end) % tarfile.RECORDSIZE
    yield bytes(end)


def _tar_header(info: tarfile.TarInfo) -> bytes:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX falls back to extended headers for long or non-ASCII names instead of failing.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _open_for_export(path: Path, follow_symlink: Callable[[Path], bool]) -> BinaryIO | None:
    """Opens a folder entry for export, or returns None when it must be skipped."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # removed since listing (e.g. a finished temp file renamed away)
    # O_NONBLOCK keeps a FIFO swapped in after the checks from hanging the export; it has no effect on
    # regular files.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if stat.S_ISLNK(st.st_mode):
        if not follow_symlink(path):
            logger.warning("not exporting %s: symlink not created by the catalog", path)
            return None
        try:
            st = os.stat(path)
        except OSError:
            logger.warning("not exporting %s: dangling symlink", path)
            return None
        if not stat.S_ISREG(st.st_mode):
            logger.warning("not exporting %s: symlink target is not a regular file", path)
            return None
    elif stat.S_ISREG(st.st_mode):
        # The entry was a regular file when listed; refuse to be redirected if it became a link since.
        flags |= getattr(os, "O_NOFOLLOW", 0)
    else:
        if not stat.S_ISDIR(st.st_mode):
            logger.warning("not exporting %s: not a regular file", path)
        return None
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    # Re-check on the open descriptor: the path may have changed between lstat and open.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        logger.warning("not exporting %s: changed while exporting", path)
        return None
    return open(fd, "rb")


# ---------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------


def extract_archive(archive: Path, dest: Path, *, limits: ArchiveLimits = _DEFAULT_LIMITS) -> Extracted:
    """Extracts a tar (plain/gz/bz2/xz) or zip archive safely into the existing empty directory dest.

    Files are written flat into dest (a single top folder `X/` is stripped and reported as
    top_folder). Raises ArchiveError for anything unsafe or malformed; dest is then left empty. Raises
    ValueError when dest is not an existing empty directory.
    """
    if not dest.is_dir():
        raise ValueError(f"destination {dest} is not a directory")
    if any(dest.iterdir()):
        raise ValueError(f"destination {dest} is not empty")
    archive_size = max(1, archive.stat().st_size)
    writer = _Writer(dest, limits, archive_size)
    try:
        # Tar first: tarfile checks a header checksum at offset 0, whereas zipfile.is_zipfile looks
        # for a zip trailer anywhere in the last 64 KiB and would also match a tar ending in a zip.
        if not _extract_tar(archive, writer, limits, archive_size):
            if not zipfile.is_zipfile(archive):
                raise ArchiveError("not a tar or zip archive")
            _extract_zip(archive, writer, limits)
    except BaseException:
        writer.remove_written()
        raise
    return Extracted(top_folder=writer.top_folder, files=list(writer.files))


class _Budget:
    """Running byte count checked against the size and compression-ratio limits."""

    def __init__(self, limits: ArchiveLimits, archive_size: int, max_total: int) -> None:
        self._limits = limits
        self._archive_size = archive_size
        self._max_total = max_total
        self.used = 0

    def add(self, n: int) -> None:
        used = self.used + n
        if used > self._max_total:
            raise ArchiveError(
                f"archive expands to more than {self._limits.max_total_bytes} bytes, the import limit"
            )
        if used > self._limits.ratio_floor_bytes and used > self._limits.max_ratio * self._archive_size:
            raise ArchiveError(
                f"archive expands more than {self._limits.max_ratio:g} times its size"
                " (looks like a decompression bomb)"
            )
        self.used = used


# Exceptions that decompressors and archive readers raise on damaged or truncated input.
_CORRUPT_DATA_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError)


class _Writer:
    """Validates member names against the allowed layouts and writes files into dest."""

    def __init__(self, dest: Path, limits: ArchiveLimits, archive_size: int) -> None:
        self._dest = dest
        self._budget = _Budget(limits, archive_size, limits.max_total_bytes)
        self._created: list[Path] = []
        self._seen: set[str] = set()
        self._root_files = False
        self.top_folder: str | None = None
        self.files: list[str] = []

    def admit(self, raw_name: str, is_dir: bool) -> str | None:
        """Returns the file name to write in dest, or None when the member is not written."""
        parts = _split_member_name(raw_name)
        if not parts:
            if is_dir:
                return None  # the archive root itself, e.g. "./"
            raise ArchiveError(f"archive member {_show(raw_name)} has no file name")
        if parts[0] == _MACOS_METADATA_DIR or any(p.startswith(".") for p in parts):
            return None
        if is_dir:
            if len(parts) > 1:
                raise ArchiveError(f"archive contains a subfolder {_show(raw_name)}; model folders are flat")
            self._note_top_folder(parts[0])
            return None
        if len(parts) > 2:
            raise ArchiveError(f"archive member {_show(raw_name)} is nested too deep; model folders are flat")
        if len(parts) == 2:
            self._note_top_folder(parts[0])
        else:
            if self.top_folder is not None:
                raise ArchiveError("archive mixes files at its root with files in a folder")
            self._root_files = True
        name = parts[-1]
        if name in self._seen:
            raise ArchiveError(f"archive contains {_show(name)} more than once")
        self._seen.add(name)
        return name

    def _note_top_folder(self, folder: str) -> None:
        if self._root_files:
            raise ArchiveError("archive mixes files at its root with files in a folder")
        if self.top_folder is None:
            self.top_folder = folder
        elif self.top_folder != folder:
            raise ArchiveError(
                f"archive has more than one top-level folder ({_show(self.top_folder)}, {_show(folder)})"
            )

    def write(self, name: str, src: _Readable) -> None:
        path = self._dest / name
        try:
            # "x" (O_CREAT|O_EXCL) never follows an existing entry, links included.
            out = open(path, "xb", opener=_create_0644)
        except FileExistsError:
            # Only reachable on case-insensitive file systems ("A.bin" vs "a.bin").
            raise ArchiveError(f"archive contains {_show(name)} more than once") from None
        except OSError as e:
            raise ArchiveError(f"cannot create {_show(name)}: {e.strerror}") from e
        self._created.append(path)
        with out:
            while True:
                try:
                    chunk = src.read(_COPY_CHUNK)
                except ArchiveError:
                    raise
                except (*_CORRUPT_DATA_ERRORS, NotImplementedError) as e:
                    raise ArchiveError(f"archive member {_show(name)} is corrupt: {e}") from e
                if not chunk:
                    break
                # Checked before writing so the limit is never exceeded on disk.
                self._budget.add(len(chunk))
                out.write(chunk)
        self.files.append(name)

    def remove_written(self) -> None:
        for path in reversed(self._created):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                logger.warning("could not remove %s after a failed import", path, exc_info=True)
        self._created.clear()
        self.files.clear()


def _create_0644(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)


def _split_member_name(raw: str) -> list[str]:
    """Validates an archive member name and returns its path components ("." and empty dropped)."""
    if "\x00" in raw:
        raise ArchiveError(f"archive member name {_show(raw)} contains a NUL byte")
    if any(ord(c) < 0x20 or c == "\x7f" for c in raw):
        raise ArchiveError(f"archive member name {_show(raw)} contains a control character")
    if "\\" in raw:
        raise ArchiveError(f"archive member name {_show(raw)} contains a backslash")
    if raw.startswith("/"):
        raise ArchiveError(f"archive member {_show(raw)} has an absolute path")
    if _DRIVE_LETTER.match(raw):
        raise ArchiveError(f"archive member {_show(raw)} has a drive letter")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {_show(raw)} points outside the archive")
    return parts


def _show(name: str) -> str:
    return repr(name if len(name) <= 200 else name[:200] + "...")


def _check_member_count(count: int, limits: ArchiveLimits) -> None:
    if count > limits.max_members:
        raise ArchiveError(f"archive has more than {limits.max_members} members")


class _MeteredStream:
    """Read-only view of a (decompressed) tar stream for tarfile.

    Counts every byte that comes out of the decompressor, including headers and skipped members, so a
    bomb hidden in a member that is never written is still caught; refuses oversized single reads (see
    _MAX_SINGLE_READ); and turns decompressor failures into ArchiveError.
    """

    def __init__(self, inner: _Readable, budget: _Budget) -> None:
        self._inner = inner
        self._budget = budget
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_SINGLE_READ:
            raise ArchiveError("archive contains an oversized header")
        try:
            data = self._inner.read(size)
        except _CORRUPT_DATA_ERRORS as e:
            raise ArchiveError(f"archive is corrupt or truncated: {e}") from e
        self._pos += len(data)
        self._budget.add(len(data))
        return data

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("archive stream is read-only")

    def close(self) -> None:
        pass  # the underlying files are closed by extract_archive's with-block

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._pos + offset
        else:
            raise ArchiveError("archive reader tried to seek from the end")
        # tarfile only moves forward when members are read in order; going back would mean
        # decompressing again, which the byte count could not see.
        if target < self._pos:
            raise ArchiveError("archive reader tried to seek backwards")
        # Skipping is done by reading so skipped bytes are counted too.
        while self._pos < target:
            if not self.read(min(_COPY_CHUNK, target - self._pos)):
                break
        return self._pos


def _open_decompressed(raw: BinaryIO) -> io.BufferedIOBase | BinaryIO:
    magic = raw.read(len(_XZ_MAGIC))
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(_BZIP2_MAGIC):
        return bz2.BZ2File(raw)
    if magic.startswith(_XZ_MAGIC):
        return lzma.LZMAFile(raw)
    return raw


def _extract_tar(archive: Path, writer: _Writer, limits: ArchiveLimits, archive_size: int) -> bool:
    """Extracts a tar archive; returns False (having written nothing) when it is not a tar.

    This doubles as tarfile.is_tarfile: that function parses the first header without any of the
    guards here, and a first pax header can declare gigabytes.
    """
    stream_limit = limits.max_total_bytes + _STREAM_OVERHEAD_PER_MEMBER * (limits.max_members + 1)
    budget = _Budget(limits, archive_size, stream_limit)
    with open(archive, "rb") as raw, _open_decompressed(raw) as decompressed:
        stream = _MeteredStream(decompressed, budget)
        try:
            tar = tarfile.open(fileobj=stream, mode="r:")
        except tarfile.TarError:
            return False
        with tar:
            count = 0
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as e:
                    raise ArchiveError(f"tar archive is corrupt: {e}") from e
                if member is None:
                    break
                count += 1
                _check_member_count(count, limits)
                _check_tar_member_type(member)
                name = writer.admit(member.name, member.isdir())
                if name is None:
                    continue
                src = tar.extractfile(member)
                if src is None:  # unreachable for regular files; keeps the type checker honest
                    raise ArchiveError(f"cannot read archive member {_show(member.name)}")
                with src:
                    writer.write(name, src)
    return True


def _check_tar_member_type(member: tarfile.TarInfo) -> None:
    if member.issym() or member.islnk():
        raise ArchiveError(f"archive member {_show(member.name)} is a link; links are not allowed")
    if member.ischr() or member.isblk():
        raise ArchiveError(f"archive member {_show(member.name)} is a device file")
    if member.isfifo():
        raise ArchiveError(f"archive member {_show(member.name)} is a named pipe")
    if not (member.isreg() or member.isdir()):
        raise ArchiveError(f"archive member {_show(member.name)} has an unsupported type {member.type!r}")
    # A negative size (base-256 size field) moves tarfile's offset backwards and can make it loop.
    if member.size < 0:
        raise ArchiveError(f"archive member {_show(member.name)} has a negative size")


def _extract_zip(archive: Path, writer: _Writer, limits: ArchiveLimits) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (*_CORRUPT_DATA_ERRORS, ValueError, NotImplementedError) as e:
        raise ArchiveError(f"zip archive is corrupt: {e}") from e
    with zf:
        infos = zf.infolist()
        _check_member_count(len(infos), limits)
        for info in infos:
            # orig_filename is the name as stored; zipfile's `filename` silently cuts it at a NUL.
            raw_name = info.orig_filename
            is_dir = _check_zip_member_type(info, raw_name)
            name = writer.admit(raw_name, is_dir)
            if name is None:
                continue
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {_show(raw_name)} is encrypted")
            try:
                src = zf.open(info)
            except (*_CORRUPT_DATA_ERRORS, NotImplementedError, RuntimeError) as e:
                raise ArchiveError(f"cannot read archive member {_show(raw_name)}: {e}") from e
            with src:
                writer.write(name, src)


def _check_zip_member_type(info: zipfile.ZipInfo, raw_name: str) -> bool:
    """Refuses non-regular zip members; returns whether the member is a directory."""
    # Unix zips keep st_mode in the high 16 bits; a link there is extracted as a link by unzip(1).
    mode = info.external_attr >> 16
    file_type = stat.S_IFMT(mode)
    if file_type == 0 or stat.S_ISREG(mode):
        return raw_name.endswith("/")
    if stat.S_ISDIR(mode):
        return True
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"archive member {_show(raw_name)} is a link; links are not allowed")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise ArchiveError(f"archive member {_show(raw_name)} is a device file")
    if stat.S_ISFIFO(mode):
        raise ArchiveError(f"archive member {_show(raw_name)} is a named pipe")
    raise ArchiveError(f"archive member {_show(raw_name)} has an unsupported type")
