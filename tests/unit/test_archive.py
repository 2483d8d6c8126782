"""Tests for services.catalog.archive: export stream format and refusal of hostile archives.

Every malicious archive is built by hand in tmp_path and extracted for real; after each refusal the
destination must be empty and a sibling directory untouched.
"""

import io
import os
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.catalog.archive import (
    ArchiveError,
    ArchiveLimits,
    Extracted,
    extract_archive,
    iter_export,
)

# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """tmp_path laid out as dest/ (empty) next to sibling/ (must never change)."""

    root: Path
    dest: Path
    sibling: Path

    def snapshot(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()
        }


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    dest = tmp_path / "dest"
    dest.mkdir()
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "keep.txt").write_bytes(b"untouched")
    return Workspace(tmp_path, dest, sibling)


@dataclass
class Member:
    """One archive member, described independently of the archive format."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file | dir | symlink | hardlink | fifo | chardev
    target: str = ""
    pax: dict[str, str] | None = None


def write_tar(path: Path, members: list[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mode = 0o644
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chardev": tarfile.CHRTYPE,
            }[m.kind]
            info.linkname = m.target
            if m.pax:
                info.pax_headers = m.pax
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return path


def write_zip(path: Path, members: list[Member]) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name" is what some tests want
        for m in members:
            info = zipfile.ZipInfo(m.name)
            info.create_system = 3  # Unix, so the high bits of external_attr are st_mode
            file_type = {
                "file": stat.S_IFREG,
                "dir": stat.S_IFDIR,
                "symlink": stat.S_IFLNK,
                "fifo": stat.S_IFIFO,
                "chardev": stat.S_IFCHR,
            }[m.kind]
            info.external_attr = (file_type | 0o644) << 16
            zf.writestr(info, m.target.encode() if m.kind == "symlink" else m.data)
    return path


Builder = Callable[[Path, list[Member]], Path]
BUILDERS: dict[str, Builder] = {
    "tar.gz": lambda p, ms: write_tar(p, ms, "w:gz"),
    "zip": write_zip,
}


def assert_refused(ws: Workspace, archive: Path, match: str, limits: ArchiveLimits | None = None) -> None:
    before = ws.snapshot()
    with pytest.raises(ArchiveError, match=match):
        if limits is None:
            extract_archive(archive, ws.dest)
        else:
            extract_archive(archive, ws.dest, limits=limits)
    assert list(ws.dest.iterdir()) == [], "dest must be left empty after a refusal"
    assert ws.snapshot() == before, "nothing may be written outside dest"


def read_tar_gz(chunks: Iterator[bytes]) -> dict[str, tarfile.TarInfo | bytes]:
    blob = b"".join(chunks)
    out: dict[str, tarfile.TarInfo | bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for info in tar:
            out[info.name] = info
            if info.isfile():
                src = tar.extractfile(info)
                assert src is not None
                out[info.name + "#data"] = src.read()
    return out


# ---------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text('{"id": "tiny"}')
    (folder / "tiny.gguf").write_bytes(os.urandom(300_000))
    (folder / ".tiny.gguf.part").write_bytes(b"partial download")
    (folder / "sub").mkdir()
    (folder / "sub" / "nested.bin").write_bytes(b"nested")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "weights.bin").write_bytes(b"shared weights")
    (shared / "secret.txt").write_bytes(b"not for export")
    (folder / "weights.bin").symlink_to(shared / "weights.bin")
    (folder / "secret.txt").symlink_to(shared / "secret.txt")
    return folder


def only_weights(path: Path) -> bool:
    return path.name == "weights.bin"


def test_export_members_and_metadata(model_folder: Path) -> None:
    members = read_tar_gz(iter_export(model_folder, arcname="tiny", follow_symlink=only_weights))
    names = sorted(k for k in members if not k.endswith("#data"))
    assert names == ["tiny", "tiny/model.json", "tiny/tiny.gguf", "tiny/weights.bin"]
    assert members["tiny/model.json#data"] == b'{"id": "tiny"}'
    assert members["tiny/tiny.gguf#data"] == (model_folder / "tiny.gguf").read_bytes()
    assert members["tiny/weights.bin#data"] == b"shared weights"
    for name in ("tiny/model.json", "tiny/tiny.gguf", "tiny/weights.bin"):
        info = members[name]
        assert isinstance(info, tarfile.TarInfo)
        assert info.isfile(), "followed symlinks are exported as regular files"
        assert info.mode == 0o644
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
    gguf = members["tiny/tiny.gguf"]
    assert isinstance(gguf, tarfile.TarInfo)
    assert gguf.mtime == int((model_folder / "tiny.gguf").stat().st_mtime)


def test_export_is_streamed_in_bounded_chunks(model_folder: Path) -> None:
    chunks = list(iter_export(model_folder, arcname="tiny", follow_symlink=only_weights, chunk_size=4096))
    assert len(chunks) > 10
    # The compressor may emit a bit more than one input chunk at once, but never a whole file.
    assert max(len(c) for c in chunks[:-1]) < 2 * 4096 + 65536


def test_export_skips_unfollowed_symlink_with_warning(
    model_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[Path] = []

    def follow(path: Path) -> bool:
        asked.append(path)
        return only_weights(path)

    with caplog.at_level("WARNING", logger="services.catalog.archive"):
        members = read_tar_gz(iter_export(model_folder, arcname="tiny", follow_symlink=follow))
    assert "tiny/secret.txt" not in members
    assert sorted(p.name for p in asked) == ["secret.txt", "weights.bin"]
    assert any("secret.txt" in r.getMessage() for r in caplog.records)


def test_export_skips_fifo_without_blocking(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    os.mkfifo(folder / "pipe")
    (folder / "to_pipe").symlink_to(folder / "pipe")
    members = read_tar_gz(iter_export(folder, arcname="m", follow_symlink=lambda _: True))
    assert sorted(k for k in members if not k.endswith("#data")) == ["m", "m/model.json"]


def test_export_of_long_and_unicode_names(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    long_name = "é" * 60 + ".gguf"
    (folder / long_name).write_bytes(b"x")
    members = read_tar_gz(iter_export(folder, arcname="m", follow_symlink=lambda _: False))
    assert members[f"m/{long_name}#data"] == b"x"


@pytest.mark.parametrize("arcname", ["", ".", "..", ".hidden", "a/b", "a\\b", "a\x00b", "a\nb"])
def test_export_rejects_bad_arcname(model_folder: Path, arcname: str) -> None:
    with pytest.raises(ValueError):
        next(iter_export(model_folder, arcname=arcname, follow_symlink=only_weights))


def test_round_trip(model_folder: Path, ws: Workspace) -> None:
    archive = ws.root / "export.tar.gz"
    with archive.open("wb") as out:
        for chunk in iter_export(model_folder, arcname="tiny", follow_symlink=only_weights):
            out.write(chunk)
    result = extract_archive(archive, ws.dest)
    assert result == Extracted(top_folder="tiny", files=["model.json", "tiny.gguf", "weights.bin"])
    assert sorted(p.name for p in ws.dest.iterdir()) == ["model.json", "tiny.gguf", "weights.bin"]
    for name in ("model.json", "tiny.gguf"):
        assert (ws.dest / name).read_bytes() == (model_folder / name).read_bytes()
    weights = ws.dest / "weights.bin"
    assert not weights.is_symlink()
    assert weights.read_bytes() == b"shared weights"
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------
# Extraction: accepted archives
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_formats_detected_by_content(ws: Workspace, mode: str) -> None:
    # A misleading name: the format must come from the bytes.
    archive = write_tar(
        ws.root / "upload.zip", [Member("model.json", b"{}"), Member("a.gguf", b"GGUF")], mode
    )
    result = extract_archive(archive, ws.dest)
    assert result == Extracted(top_folder=None, files=["model.json", "a.gguf"])
    assert (ws.dest / "a.gguf").read_bytes() == b"GGUF"


def test_zip_with_top_folder_and_hidden_entries(ws: Workspace) -> None:
    archive = write_zip(
        ws.root / "upload.tar",
        [
            Member("tiny/", kind="dir"),
            Member("tiny/model.json", b"{}"),
            Member("tiny/.DS_Store", b"junk"),
            Member("tiny/._model.json", b"apple double"),
            Member("__MACOSX/tiny/._model.json", b"resource fork"),
            Member("tiny/w.gguf", b"GGUF"),
        ],
    )
    result = extract_archive(archive, ws.dest)
    assert result == Extracted(top_folder="tiny", files=["model.json", "w.gguf"])
    assert sorted(p.name for p in ws.dest.iterdir()) == ["model.json", "w.gguf"]


def test_dot_slash_prefix_is_root_layout(ws: Workspace) -> None:
    # What `tar -C folder -czf x.tgz .` produces.
    archive = write_tar(ws.root / "a.tgz", [Member("./", kind="dir"), Member("./model.json", b"{}")])
    assert extract_archive(archive, ws.dest) == Extracted(top_folder=None, files=["model.json"])


def test_small_highly_compressible_archive_is_below_ratio_floor(ws: Workspace) -> None:
    archive = write_zip(ws.root / "zeros.zip", [Member("zeros.bin", bytes(8 << 20))])
    assert extract_archive(archive, ws.dest).files == ["zeros.bin"]


def test_dest_must_be_an_empty_directory(ws: Workspace) -> None:
    archive = write_zip(ws.root / "a.zip", [Member("model.json", b"{}")])
    (ws.dest / "existing").write_bytes(b"")
    with pytest.raises(ValueError):
        extract_archive(archive, ws.dest)
    with pytest.raises(ValueError):
        extract_archive(archive, ws.root / "missing")


# ---------------------------------------------------------------------------------------------------
# Extraction: refusals, for both formats
# ---------------------------------------------------------------------------------------------------

REFUSALS: list[tuple[str, list[Member], str]] = [
    ("parent traversal", [Member("model.json", b"{}"), Member("../evil", b"x")], "outside"),
    ("traversal inside a folder", [Member("tiny/../../evil", b"x")], "outside"),
    ("backslash", [Member("..\\evil", b"x")], "backslash"),
    ("drive letter", [Member("C:/evil", b"x")], "drive letter"),
    ("drive relative", [Member("C:evil", b"x")], "drive letter"),
    ("control character", [Member("a\nb", b"x")], "control character"),
    ("symlink", [Member("model.json", b"{}"), Member("link", kind="symlink", target="/etc/passwd")], "link"),
    ("fifo", [Member("pipe", kind="fifo")], "named pipe"),
    ("device", [Member("tty", kind="chardev")], "device"),
    ("two top folders", [Member("a/model.json", b"{}"), Member("b/w.gguf", b"x")], "more than one top-level"),
    (
        "two top folders via dirs",
        [Member("a/", kind="dir"), Member("b/", kind="dir")],
        "more than one top-level",
    ),
    ("nested file", [Member("tiny/sub/w.gguf", b"x")], "nested too deep"),
    ("nested directory", [Member("tiny/", kind="dir"), Member("tiny/sub/", kind="dir")], "subfolder"),
    ("root file then folder", [Member("model.json", b"{}"), Member("tiny/w.gguf", b"x")], "mixes"),
    ("folder then root file", [Member("tiny/w.gguf", b"x"), Member("model.json", b"{}")], "mixes"),
    ("duplicate name", [Member("model.json", b"{}"), Member("model.json", b"{evil}")], "more than once"),
    (
        "duplicate across spellings",
        [Member("tiny/model.json", b"{}"), Member("tiny//model.json", b"")],
        "more than once",
    ),
]


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
@pytest.mark.parametrize(
    ("members", "match"), [(m, r) for _, m, r in REFUSALS], ids=[i for i, _, _ in REFUSALS]
)
def test_refusals(ws: Workspace, fmt: str, members: list[Member], match: str) -> None:
    archive = BUILDERS[fmt](ws.root / f"evil.{fmt}", members)
    assert_refused(ws, archive, match)
    assert not (ws.root / "evil").exists()


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_absolute_path_refused(ws: Workspace, fmt: str) -> None:
    # An absolute path inside tmp_path, so even a broken extractor could not touch the real system.
    target = ws.root / "absolute_evil"
    archive = BUILDERS[fmt](ws.root / f"evil.{fmt}", [Member("model.json", b"{}"), Member(str(target), b"x")])
    assert_refused(ws, archive, "absolute path")
    assert not target.exists()


def test_tar_file_named_like_the_root_refused(ws: Workspace) -> None:
    # Only tar can say this: zip marks every name ending in "/" as a directory.
    archive = write_tar(ws.root / "evil.tgz", [Member("./", b"x")])
    assert_refused(ws, archive, "no file name")


@pytest.mark.parametrize("name", ["neg.bin", ".hidden"])
def test_tar_negative_size_refused(ws: Workspace, name: str) -> None:
    # GNU base-256 sizes can be negative; tarfile would then step back to an earlier header forever.
    good = tarfile.TarInfo("model.json")
    good.size = 2
    bad = tarfile.TarInfo(name)
    bad.size = -tarfile.BLOCKSIZE
    blob = good.tobuf(tarfile.GNU_FORMAT) + b"{}".ljust(tarfile.BLOCKSIZE, b"\0")
    blob += bad.tobuf(tarfile.GNU_FORMAT) + bytes(4 * tarfile.BLOCKSIZE)
    archive = ws.root / "negative.tar"
    archive.write_bytes(blob)
    assert_refused(ws, archive, "negative size")


def test_tar_hardlink_refused(ws: Workspace) -> None:
    archive = write_tar(
        ws.root / "evil.tgz",
        [Member("model.json", b"{}"), Member("hard", kind="hardlink", target="model.json")],
    )
    assert_refused(ws, archive, "link")


def test_tar_hardlink_to_outside_refused(ws: Workspace) -> None:
    target = ws.sibling / "keep.txt"
    archive = write_tar(ws.root / "evil.tgz", [Member("hard", kind="hardlink", target=str(target))])
    assert_refused(ws, archive, "link")
    assert target.read_bytes() == b"untouched"


def test_tar_nul_in_pax_name_refused(ws: Workspace) -> None:
    archive = write_tar(ws.root / "evil.tgz", [Member("model.json", b"{}", pax={"path": "a\x00/../../evil"})])
    assert_refused(ws, archive, "NUL")


def test_zip_nul_in_name_refused(ws: Workspace) -> None:
    # zipfile cuts names at a NUL when reading; the stored name is what other tools may use.
    archive = write_zip(ws.root / "evil.zip", [Member("evilXX.json", b"{}")])
    blob = archive.read_bytes().replace(b"evilXX", b"evil\x00/")
    archive.write_bytes(blob)
    assert_refused(ws, archive, "NUL")


def test_zip_encrypted_member_refused(ws: Workspace) -> None:
    # zipfile cannot write encrypted members, so set the "encrypted" flag bit in both headers.
    archive = write_zip(ws.root / "enc.zip", [Member("model.json", b"ciphertext")])
    blob = bytearray(archive.read_bytes())
    local = blob.index(b"PK\x03\x04")
    central = blob.index(b"PK\x01\x02")
    blob[local + 6] |= 0x1
    blob[central + 8] |= 0x1
    archive.write_bytes(bytes(blob))
    assert_refused(ws, archive, "encrypted")


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_too_many_members_refused(ws: Workspace, fmt: str) -> None:
    members = [Member(f"f{i}.bin", b"x") for i in range(6)]
    archive = BUILDERS[fmt](ws.root / f"many.{fmt}", members)
    assert_refused(ws, archive, "more than 5 members", ArchiveLimits(max_members=5))
    assert extract_archive(archive, ws.dest, limits=ArchiveLimits(max_members=6)).files == [
        m.name for m in members
    ]


def test_failure_after_files_were_written_cleans_dest(ws: Workspace) -> None:
    members = [Member("model.json", b"{}"), Member("a.gguf", bytes(1000)), Member("../evil", b"x")]
    archive = write_tar(ws.root / "late.tar", members, "w")
    assert_refused(ws, archive, "outside")


# ---------------------------------------------------------------------------------------------------
# Extraction: size and ratio limits on actual bytes
# ---------------------------------------------------------------------------------------------------


def write_zero_zip(path: Path, size: int, name: str = "zeros.bin") -> Path:
    """A zip bomb: `size` zero bytes, compressed, written in chunks to keep memory flat."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, zf.open(name, "w") as out:
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(chunk)
    return path


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 MiB of zeros in a zip of a few hundred KiB, built once for the bomb tests."""
    archive = write_zero_zip(tmp_path_factory.mktemp("bomb") / "bomb.zip", 200 << 20)
    assert archive.stat().st_size < 1 << 20
    return archive


def test_zip_bomb_refused_by_total_limit(ws: Workspace, zip_bomb: Path) -> None:
    assert_refused(ws, zip_bomb, "more than", ArchiveLimits(max_total_bytes=5 << 20))


def test_zip_bomb_refused_by_ratio(ws: Workspace, zip_bomb: Path) -> None:
    assert_refused(ws, zip_bomb, "decompression bomb", ArchiveLimits(ratio_floor_bytes=2 << 20))


def test_zip_bomb_refused_by_default_ratio(ws: Workspace, zip_bomb: Path) -> None:
    # The real defaults: refused once 64 MiB have been extracted, long before all 200 MiB.
    assert_refused(ws, zip_bomb, "decompression bomb")


def test_zip_lying_about_size_refused(ws: Workspace) -> None:
    # Headers claim 16 bytes while the compressed stream holds 4 MiB: never trust declared sizes.
    archive = write_zero_zip(ws.root / "liar.zip", 4 << 20)
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[0]
    blob = bytearray(archive.read_bytes())
    true_size = info.file_size.to_bytes(4, "little")
    assert blob.count(true_size) >= 2  # local header and central directory
    archive.write_bytes(bytes(blob).replace(true_size, (16).to_bytes(4, "little")))
    assert_refused(ws, archive, "corrupt", ArchiveLimits(max_total_bytes=1 << 20))


def test_tar_gz_bomb_refused(ws: Workspace) -> None:
    archive = ws.root / "bomb.tgz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 100 << 20
        tar.addfile(info, _Zeros(info.size))
    assert_refused(ws, archive, "more than", ArchiveLimits(max_total_bytes=5 << 20))


def test_tar_bomb_in_skipped_hidden_member_is_counted(ws: Workspace) -> None:
    archive = ws.root / "hidden_bomb.tgz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(".hidden")
        info.size = 100 << 20
        tar.addfile(info, _Zeros(info.size))
    assert_refused(ws, archive, "more than", ArchiveLimits(max_total_bytes=5 << 20))


def test_tar_oversized_pax_header_refused(ws: Workspace) -> None:
    # tarfile would read the whole declared header into memory in one call.
    archive = write_tar(ws.root / "pax.tgz", [Member("model.json", b"{}", pax={"comment": "a" * (20 << 20)})])
    assert archive.stat().st_size < 1 << 20
    assert_refused(ws, archive, "oversized header")


class _Zeros(io.RawIOBase):
    """Readable stream of n zero bytes, so bombs are built without holding them in memory."""

    def __init__(self, n: int) -> None:
        self._left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        buffer[:n] = bytes(n)
        self._left -= n
        return n


# ---------------------------------------------------------------------------------------------------
# Extraction: malformed input
# ---------------------------------------------------------------------------------------------------


def test_random_bytes_refused(ws: Workspace) -> None:
    archive = ws.root / "noise.bin"
    archive.write_bytes(os.urandom(4096))
    assert_refused(ws, archive, "not a tar or zip")


def test_truncated_tar_gz_refused(ws: Workspace) -> None:
    archive = write_tar(
        ws.root / "a.tgz", [Member("model.json", b"{}"), Member("w.gguf", os.urandom(200_000))]
    )
    archive.write_bytes(archive.read_bytes()[:100_000])
    assert_refused(ws, archive, "corrupt|truncated")


def test_corrupt_zip_member_refused(ws: Workspace) -> None:
    payload = os.urandom(50_000)
    archive = ws.root / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("model.json", b"{}")
        zf.writestr("w.gguf", payload)
    blob = archive.read_bytes()
    archive.write_bytes(blob.replace(payload[1000:1010], bytes(10)))
    assert_refused(ws, archive, "corrupt")
