"""Disk side of the catalog: scanning a model folder, placing files, the registry of links the catalog
made, and seeding the shipped models. Everything here is synchronous (run it in a worker thread).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from jan.model.v1 import model_pb2
from services.catalog.headers import HeaderCache
from services.catalog.model import (
    BinarySpec,
    BinaryState,
    ModelFileError,
    ModelObject,
    Runtime,
    assign_binaries,
    is_binary_name,
    parse_model,
    to_pb,
)
from services.common.capabilities import HeaderTraits
from services.common.filesafety import check_name, write_atomic

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1024 * 1024


@dataclass
class Entry:
    """One valid model object in the index, with its derived binaries and cached protobuf."""

    obj: ModelObject
    sig: tuple[int, int, int]
    binaries: list[BinaryState]
    pb: model_pb2.Model
    # What each binary's GGUF header says (None where not read), for the derived capabilities.
    traits: tuple[HeaderTraits | None, ...] = ()


@dataclass
class FolderIndex:
    """What one model folder holds: valid objects by file stem, problems by file name."""

    sigs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: dict[str, model_pb2.Problem] = field(default_factory=dict)


def _sig(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_json_nofollow(path: Path) -> bytes:
    """Reads a model json without following a symbolic link and refusing oversized files."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError("not a regular file")
        if st.st_size > MAX_JSON_BYTES:
            raise ModelFileError(f"larger than {MAX_JSON_BYTES // 1024} KiB: not a model object")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_JSON_BYTES + 1)
    finally:
        os.close(fd)


def scan_folder(
    root: Path,
    folder: str,
    previous: FolderIndex | None,
    runtime: dict[str, Runtime],
    stored: dict[str, int] | None = None,
    headers: HeaderCache | None = None,
) -> FolderIndex | None:
    """Indexes models/<folder>, re-parsing only json files whose (mtime, size, inode) changed.

    Returns None when the folder no longer exists. Symbolic links are never followed out of the models
    root: a linked folder or json file is reported as a problem instead. `stored` (name -> size) is the
    folder's content in a bucket when binaries live in object storage. `headers` reads the GGUF headers
    of the binaries present here (each file once per version) for the derived capabilities.
    """
    models_dir = root / "models"
    folder_dir = models_dir / folder
    rel_folder = f"models/{folder}"
    try:
        st = folder_dir.lstat()
    except FileNotFoundError:
        return None
    index = FolderIndex()
    if stat.S_ISLNK(st.st_mode):
        index.problems[""] = model_pb2.Problem(
            path=rel_folder, id=f"{folder}/", reason="a symbolic link: model folders must be real folders"
        )
        return index
    if not stat.S_ISDIR(st.st_mode):
        return None
    try:
        check_name(folder, "folder")
    except ValueError as exc:
        index.problems[""] = model_pb2.Problem(path=rel_folder, id=f"{folder}/", reason=str(exc))
        return index
    try:
        names = os.listdir(folder_dir)
    except FileNotFoundError:
        return None
    except OSError as exc:
        index.problems[""] = model_pb2.Problem(path=rel_folder, id=f"{folder}/", reason=f"unreadable: {exc}")
        return index

    objects: dict[str, tuple[ModelObject, tuple[int, int, int]]] = {}
    binary_files: dict[str, int] = {}
    for name in names:
        if name.startswith("."):
            continue
        path = folder_dir / name
        if not name.endswith(".json"):
            if is_binary_name(name):
                try:
                    st = path.stat()
                except OSError:  # a dangling link: not present
                    continue
                if stat.S_ISREG(st.st_mode):
                    binary_files[name] = st.st_size
            continue
        stem = name[:-5]
        model_id = f"{folder}/{stem}"
        try:
            lst = path.lstat()
            if stat.S_ISLNK(lst.st_mode):
                raise ModelFileError("a symbolic link: model files must be real files")
            if not stat.S_ISREG(lst.st_mode):
                continue
            check_name(stem, "file name")
            sig = _sig(lst)
            index.sigs[name] = sig
            old = previous.entries.get(stem) if previous else None
            if old is not None and old.sig == sig:
                objects[stem] = (old.obj, sig)
                continue
            old_problem = previous.problems.get(name) if previous else None
            if old_problem is not None and previous and previous.sigs.get(name) == sig:
                index.problems[name] = old_problem
                continue
            raw = read_json_nofollow(path)
            objects[stem] = (parse_model(folder, stem, path, raw, models_dir), sig)
        except (ModelFileError, ValueError) as exc:
            index.problems[name] = model_pb2.Problem(
                path=f"{rel_folder}/{name}", id=model_id, reason=str(exc)
            )
        except FileNotFoundError:
            continue
        except OSError as exc:
            index.problems[name] = model_pb2.Problem(
                path=f"{rel_folder}/{name}", id=model_id, reason=f"unreadable: {exc.strerror}"
            )
    for problem in index.problems.values():
        if previous is None or previous.problems.get(problem.path.rsplit("/", 1)[-1]) != problem:
            log.warning("invalid model file %s: %s", problem.path, problem.reason)

    if stored is not None:
        # Binaries live in a bucket: what the bucket holds decides, not the folder.
        binary_files = {n: size for n, size in stored.items() if is_binary_name(n)}
    discovered = assign_binaries(list(binary_files), [o for o, _ in objects.values()])
    for stem, (obj, sig) in objects.items():
        binaries = _binary_states(obj, discovered.get(stem, []), binary_files)
        traits = _header_traits(obj, binaries, folder_dir, headers)
        rt = runtime.get(obj.id, Runtime())
        old = previous.entries.get(stem) if previous else None
        if old is not None and old.obj is obj and old.binaries == binaries and old.traits == traits:
            pb = old.pb
        else:
            pb = to_pb(obj, binaries, rt, root, traits)
        index.entries[stem] = Entry(obj=obj, sig=sig, binaries=binaries, pb=pb, traits=traits)
    return index


def _header_traits(
    obj: ModelObject, binaries: list[BinaryState], folder_dir: Path, headers: HeaderCache | None
) -> tuple[HeaderTraits | None, ...]:
    """The header traits of each binary present on this disk (None for the others: missing, in a bucket);
    none read for an object that names its own capabilities."""
    if headers is None or obj.own_capabilities is not None:
        return (None,) * len(binaries)
    return tuple(
        headers.traits(b.spec.external_path or folder_dir / b.spec.name) if b.present else None
        for b in binaries
    )


def _binary_states(obj: ModelObject, discovered: list[str], files: dict[str, int]) -> list[BinaryState]:
    """`files`: the regular files (name -> size) the model folder holds in storage."""
    if obj.external_dir is not None:
        specs = [
            BinarySpec(name=n, external_path=str(obj.external_dir / n))
            for n in sorted(_listdir(obj.external_dir))
            if is_binary_name(n)
        ]
    elif obj.declared is None:
        specs = [BinarySpec(name=n) for n in discovered]
    else:
        specs = obj.declared
    states = []
    for spec in specs:
        size: int | None
        if spec.external_path:
            try:
                st = os.stat(spec.external_path)
                size = st.st_size if stat.S_ISREG(st.st_mode) else None
            except OSError:
                size = None
        else:
            size = files.get(spec.name)
        present = size is not None and (not spec.size or size == spec.size)
        states.append(BinaryState(spec=spec, present=present, size_on_disk=size or 0))
    return states


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def list_folders(models_dir: Path) -> list[str]:
    try:
        return [n for n in os.listdir(models_dir) if not n.startswith(".")]
    except FileNotFoundError:
        return []


# --- writing ----------------------------------------------------------------------------------------------


def place_file(src: Path, dst: Path, mode: str) -> str:
    """Puts `src` at `dst` by 'link' (hard link, else symbolic), 'symlink' or 'copy'; returns what it did."""
    if mode == "link":
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP):
                raise
            mode = "symlink"
    if mode == "symlink":
        os.symlink(src, dst)
        return "symlink"
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.link(tmp, dst)  # fails if dst appeared meanwhile, unlike rename
    finally:
        Path(tmp).unlink(missing_ok=True)
    return "copy"


class LinkRegistry:
    """Symbolic links the catalog itself created (an export follows only these)."""

    def __init__(self, path: Path, models_dir: Path) -> None:
        self.path = path
        self.models_dir = models_dir
        self._links: dict[str, str] = {}
        self._deferred = 0
        self._dirty = False
        try:
            loaded = orjson.loads(path.read_bytes())
            if isinstance(loaded, dict):
                self._links = {str(k): str(v) for k, v in loaded.items()}
        except (OSError, orjson.JSONDecodeError):
            pass

    def _key(self, link: Path) -> str:
        return str(link.relative_to(self.models_dir))

    def add(self, link: Path, target: Path) -> None:
        self._links[self._key(link)] = str(target)
        self._save()

    def remove(self, link: Path) -> None:
        if self._links.pop(self._key(link), None) is not None:
            self._save()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Saves once at the end, not after every change (an import of a thousand files)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred and self._dirty:
                self._save()

    def targets(self) -> dict[Path, Path]:
        """Every link the catalog made (absolute link path -> its target)."""
        return {self.models_dir / k: Path(v) for k, v in self._links.items()}

    def is_ours(self, link: Path) -> bool:
        try:
            expected = self._links.get(self._key(link))
            return expected is not None and os.readlink(link) == expected
        except (OSError, ValueError):
            return False

    def _save(self) -> None:
        if self._deferred:
            self._dirty = True
            return
        self._dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, orjson.dumps(self._links, option=orjson.OPT_INDENT_2))


def seed_models(seed_dir: Path, models_dir: Path, record: Path) -> list[str]:
    """Copies shipped model objects into the models folder once each: never overwriting a user's file,
    and never bringing back one the user deleted (the record remembers what was seeded)."""
    try:
        seeded: set[str] = set(orjson.loads(record.read_bytes()))
    except (OSError, orjson.JSONDecodeError, TypeError):
        seeded = set()
    added = []
    for src in sorted(seed_dir.glob("*/*.json")):
        key = f"{src.parent.name}/{src.name}"
        if key in seeded:
            continue
        seeded.add(key)
        dst = models_dir / key
        if dst.exists() or dst.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(dst, "xb") as f:
                f.write(src.read_bytes())
        except FileExistsError:
            continue
        added.append(key)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, orjson.dumps(sorted(seeded), option=orjson.OPT_INDENT_2))
    return added


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
