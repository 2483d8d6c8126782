"""Planning the in-place import of a local directory: which model folders and objects its GGUF files make
(plain folders, or repositories of a Hugging Face hub cache), and which files are skipped and why.

Pure and synchronous: it reads directory listings and GGUF headers (a few KB; the whole header only for a
file whose name lacks the quantization), never tensor data, and creates nothing. The catalog applies the
plan (links and json files).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.gguf import PLANNING_HEADER_BYTES, quantization_name, read_gguf_header
from services.common.gguf_plan import (
    Candidate,
    ListedFile,
    ModelPlan,
    find_candidates,
    hub_file_url,
    is_gguf,
    is_projector,
    plan_candidates,
    quantization_of,
    repo_title,
    safe_name,
    strip_quantization,
    unique_names,
)

HUB_URL = "https://huggingface.co"
# Other model formats: reported, because a user pointing at them expects them to be imported.
OTHER_MODEL_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".onnx")
# Downloads in progress (huggingface_hub's *.incomplete and *.lock, browsers' *.part): not files yet.
PARTIAL_SUFFIXES = (".incomplete", ".part", ".lock")
_FACTS = ("general.architecture", "general.name", "general.file_type")
# A whole header, vocabulary and merges included: real ones are a few MB to a few tens of MB.
_WHOLE_HEADER_BYTES = 64 * 1024 * 1024
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
# A hub cache entry: "models--<org>--<repo>" (or "models--<repo>" for legacy ids), datasets--, spaces--.
_HUB_ENTRY = re.compile(r"(models|datasets|spaces)--(.+)")


@dataclass(frozen=True)
class LocalBinary:
    """One file of a planned model, used in place."""

    name: str  # the file name to use inside the model folder (safe, unique in the folder)
    path: Path  # the real file (fully resolved, no symlinks left)
    size: int
    sha256: str = ""  # known without hashing (a HF cache blob named by its sha256), else ""
    url: str = ""  # where it can be fetched again (HF cache: the resolve URL), else ""


@dataclass(frozen=True)
class LocalModel:
    """One model object to create."""

    stem: str
    name: str
    quantization: str
    size: int
    binaries: list[LocalBinary]
    architecture: str = ""  # general.architecture of the (first) model file, "" unknown


@dataclass(frozen=True)
class LocalFolder:
    """One model folder to create, with its models."""

    folder: str  # model folder name (safe: [A-Za-z0-9._+-], no leading dot, <= 200 bytes)
    owned_by: str  # HF cache: the org; plain folders: ""
    source_url: str  # HF cache: the repository's Hub URL; plain folders: ""
    models: list[LocalModel]


@dataclass(frozen=True)
class Skipped:
    """A file or directory left out of the plan."""

    path: str  # the file or directory, as given/found (absolute)
    reason: str  # one clear sentence


@dataclass(frozen=True)
class DirectoryPlan:
    folders: list[LocalFolder]
    skipped: list[Skipped]


@dataclass(frozen=True)
class _Found:
    """A regular file found by a walk."""

    rel: str  # posix path relative to the walk's top
    shown: Path  # as found (absolute, links not resolved)
    real: Path  # fully resolved
    size: int
    sha256: str


@dataclass(frozen=True)
class _Gguf:
    """A GGUF file whose header reads, with what the planner needs from it."""

    found: _Found
    tensors: int
    facts: dict[str, Any]
    complete: bool  # the whole header was read (else it stopped at the planning budget)

    def text(self, key: str) -> str:
        value = self.facts.get(key)
        return value.strip() if isinstance(value, str) else ""


@dataclass(frozen=True)
class _Draft:
    """A folder before its name is made unique among the plan's folders."""

    name: str
    order: str
    owned_by: str
    source_url: str
    models: list[LocalModel]


def plan_directory(
    root: Path, allowed_dirs: Sequence[Path], *, hub_url: str = HUB_URL, max_files: int = 100_000
) -> DirectoryPlan:
    """What importing `root` in place creates: one folder per model family of plain GGUF files, one per
    repository of a Hugging Face hub cache (root being the cache, a repository, a snapshot or HF_HOME),
    and every file left out with its reason. Symbolic links are followed but never out of `allowed_dirs`
    and never round a loop. ValueError when `root` is not a readable directory."""
    root = Path(os.path.abspath(root))
    try:
        with os.scandir(root):
            pass
    except OSError as exc:
        raise ValueError(f"{root} is not a readable directory ({exc.strerror or exc})") from None
    return _Scanner(allowed_dirs, hub_url.rstrip("/"), max_files).plan(root)


class _Scanner:
    def __init__(self, allowed_dirs: Sequence[Path], hub_url: str, max_files: int) -> None:
        self.allowed = [Path(os.path.realpath(d)) for d in allowed_dirs]
        self.hub_url = hub_url
        self.max_files = max_files
        self.entries = 0
        self.stopped = False
        self.skipped: list[Skipped] = []
        self.drafts: list[_Draft] = []
        self.dirs_seen: set[tuple[int, int]] = set()
        self.files_seen: dict[tuple[int, int], Path] = {}

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append(Skipped(str(path), reason))

    def inside(self, real: Path) -> bool:
        return any(real.is_relative_to(d) for d in self.allowed)

    # --- the plan --------------------------------------------------------------------------------------

    def plan(self, root: Path) -> DirectoryPlan:
        real = Path(os.path.realpath(root))
        if not self._plan_hub_root(root, real):
            self._plan_plain(root, real)
        drafts = sorted(self.drafts, key=lambda d: (d.name.lower(), d.order))
        names = unique_names([d.name for d in drafts], keep_extension=False)
        folders = [
            LocalFolder(name, d.owned_by, d.source_url, d.models)
            for name, d in zip(names, drafts, strict=True)
        ]
        folders.sort(key=lambda f: f.folder.lower())
        self.skipped.sort(key=lambda s: (s.path, s.reason))
        return DirectoryPlan(folders, self.skipped)

    def _plan_hub_root(self, root: Path, real: Path) -> bool:
        """Plans `root` when it is a hub cache repository, its snapshots folder or one snapshot; False
        when it is none of those (a hub/ or HF_HOME folder is walked like any other: its repositories
        are recognised on the way)."""
        for path in (root, real):
            if path.parent.name == "snapshots" and _hub_repo(path.parent.parent):
                self._plan_repo(path.parent.parent, snapshot=path)
                return True
            if path.name == "snapshots" and _hub_repo(path.parent):
                self._plan_repo(path.parent)
                return True
            if _hub_repo(path):
                self._plan_repo(path)
                return True
        return False

    def _plan_plain(self, top: Path, real: Path) -> None:
        """Plain GGUF files under `top`: one folder per model family, one model per quantization."""
        ggufs: list[_Found] = []
        for f in self._walk(top, real, hub_aware=True):
            if is_gguf(f.rel):
                ggufs.append(f)
            elif f.rel.lower().endswith(OTHER_MODEL_SUFFIXES):
                self.skip(f.shown, "only GGUF files are imported from folders")
        readable = self._read_headers(ggufs)
        by_rel = {g.found.rel: g for g in readable}
        projectors = [g.found.rel for g in readable if is_projector(g.found.rel)]
        candidates = self._candidates([g for g in readable if not is_projector(g.found.rel)])
        attached = _attach(candidates, projectors)
        used = {rel for rels in attached.values() for rel in rels}
        for rel in projectors:
            if rel not in used:
                self.skip(by_rel[rel].found.shown, "a vision projector (mmproj) with no model beside it")
        groups: dict[str, list[Candidate]] = defaultdict(list)
        for c in candidates:
            groups[_family(c, top.name).lower()].append(c)
        for group in groups.values():
            family = _family(group[0], top.name)
            rels = sorted({rel for c in group for rel in attached[c.parts[0].path]})
            plans = plan_candidates(
                group,
                [_listed(by_rel[rel]) for rel in rels],
                title=family,
                attaches=lambda c, f: f.path in attached[c.parts[0].path],
            )
            models = [self._model(plan, by_rel, family=family) for plan in plans]
            self.drafts.append(_Draft(safe_name(family), group[0].parts[0].path, "", "", models))

    # --- hub cache -------------------------------------------------------------------------------------

    def _plan_repo(self, repo_dir: Path, snapshot: Path | None = None) -> None:
        """A hub cache repository, as a Hub import of it would plan it, from its current snapshot (or the
        one given); datasets and spaces are passed over."""
        kind, org, repo = _hub_name(repo_dir.name)
        if kind != "models" or self.stopped:
            return
        if not repo:
            self.skip(repo_dir, "not a Hugging Face cache repository (its name is not models--<org>--<repo>)")
            return
        repo_id = f"{org}/{repo}" if org else repo
        snapshot = snapshot or self._current_snapshot(repo_dir)
        if snapshot is None:
            self.skip(repo_dir, f"no downloaded snapshot in {repo_id}")
            return
        snapshot_real = Path(os.path.realpath(snapshot))
        if not self.inside(snapshot_real):
            self.skip(snapshot, "links outside the directories allowed for import")
            return
        skipped_before = len(self.skipped)
        ggufs = [f for f in self._walk(snapshot, snapshot_real, hub_aware=False) if is_gguf(f.rel)]
        if not ggufs:
            if len(self.skipped) == skipped_before:  # else the files' own reasons say why
                self.skip(repo_dir, f"no GGUF file in {repo_id}")
            return
        readable = self._read_headers(ggufs)
        by_rel = {g.found.rel: g for g in readable}
        projectors = [_listed(g) for g in readable if is_projector(g.found.rel)]
        candidates = self._candidates([g for g in readable if not is_projector(g.found.rel)])
        if not candidates:
            for p in projectors:
                self.skip(by_rel[p.path].found.shown, "a vision projector (mmproj) with no model beside it")
            return
        commit = snapshot.name
        plans = plan_candidates(
            candidates,
            projectors,
            title=repo_title(repo),
            url=lambda path: hub_file_url(self.hub_url, org, repo, commit, path),
        )
        models = [self._model(plan, by_rel) for plan in plans]
        source_url = f"{self.hub_url}/{repo_id}"
        self.drafts.append(_Draft(safe_name(repo), str(repo_dir), org, source_url, models))

    # --- files -----------------------------------------------------------------------------------------

    def _walk(self, top: Path, top_real: Path, *, hub_aware: bool) -> list[_Found]:
        """Regular files under `top`, depth first in name order, links followed within the allowed
        directories; hub cache repositories met on the way are planned (when `hub_aware`)."""
        found: list[_Found] = []
        stack = [(top, top_real, "")]
        while stack and not self.stopped:
            directory, real_dir, rel_dir = stack.pop()
            st = _stat(real_dir)
            if st is None:
                continue
            if (st.st_dev, st.st_ino) in self.dirs_seen:
                self.skip(
                    directory, "a directory already scanned through another path (a link loop or alias)"
                )
                continue
            self.dirs_seen.add((st.st_dev, st.st_ino))
            subdirs = []
            for entry in self._entries(directory):
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                shown = directory / entry.name
                located = self._locate(entry, shown, real_dir)
                if located is None:
                    continue
                real, st = located
                if stat.S_ISDIR(st.st_mode):
                    if not (hub_aware and self._hub_entry(shown, real)):
                        subdirs.append((shown, real, rel))
                elif stat.S_ISREG(st.st_mode):
                    first = self.files_seen.setdefault((st.st_dev, st.st_ino), shown)
                    if first != shown:
                        if is_gguf(entry.name):
                            self.skip(shown, f"the same file as {first}, which is planned instead")
                        continue
                    # A hub cache blob is named by its content's sha256 (LFS files; git files by sha1).
                    is_blob = real.parent.name == "blobs" and _SHA256_NAME.fullmatch(real.name)
                    found.append(_Found(rel, shown, real, st.st_size, real.name if is_blob else ""))
            stack.extend(reversed(subdirs))
        return found

    def _entries(self, directory: Path) -> list[os.DirEntry[str]]:
        """The directory's entries that count, in name order (hidden ones and partial downloads left
        out), stopping the scan at max_files."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skip(directory, f"cannot be read ({exc.strerror or exc})")
            return []
        kept = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name.lower().endswith(PARTIAL_SUFFIXES):
                continue
            self.entries += 1
            if self.entries > self.max_files:
                self.stopped = True
                self.skip(
                    directory, f"the scan stopped after {self.max_files} entries; the rest is not planned"
                )
                break
            kept.append(entry)
        return kept

    def _locate(
        self, entry: os.DirEntry[str], shown: Path, real_dir: Path
    ) -> tuple[Path, os.stat_result] | None:
        """The entry's resolved path and status, or None (with a Skipped where it says something)."""
        try:
            real = Path(os.path.realpath(shown, strict=True)) if entry.is_symlink() else real_dir / entry.name
            st = os.stat(real)
        except FileNotFoundError:
            if entry.is_symlink():
                self.skip(shown, "a dangling symbolic link")
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.skip(shown, "a symbolic link loop")
            else:
                self.skip(shown, f"cannot be read ({exc.strerror or exc})")
            return None
        if not self.inside(real):
            self.skip(shown, "links outside the directories allowed for import")
            return None
        return real, st

    def _hub_entry(self, shown: Path, real: Path) -> bool:
        """Plans a hub cache repository met by a walk; True when the directory was one (or a dataset or
        space, which are not models and are passed over)."""
        if not _hub_repo(real) and not _hub_repo(shown):
            return False
        self._plan_repo(shown)
        return True

    def _read_headers(self, files: list[_Found]) -> list[_Gguf]:
        readable: list[_Gguf] = []
        for f in files:
            try:
                header = read_gguf_header(f.real, wanted=_FACTS, max_bytes=PLANNING_HEADER_BYTES)
            except ValueError as exc:
                self.skip(f.shown, f"not a GGUF file: {exc}")
                continue
            except OSError as exc:
                self.skip(f.shown, f"cannot be read ({exc.strerror or exc})")
                continue
            readable.append(_Gguf(f, header.tensor_count, header.facts, header.complete))
        return readable

    def _candidates(self, ggufs: list[_Gguf]) -> list[Candidate]:
        """The models among readable GGUF files, their quantization taken from the header where the
        names carry none; incomplete split files and vocabulary-only files are skipped."""
        by_rel = {g.found.rel: g for g in ggufs}
        candidates, incomplete = find_candidates([_listed(g) for g in ggufs])
        for split in incomplete:
            reason = _incomplete_reason(split.missing, split.total)
            for part in split.parts:
                self.skip(by_rel[part.path].found.shown, reason)
        models: list[Candidate] = []
        for c in candidates:
            parts = [by_rel[p.path] for p in c.parts]
            # A split's first part may hold only metadata (gguf-split --no-tensor-first-split).
            if sum(p.tensors for p in parts) == 0:
                for p in parts:
                    self.skip(p.found.shown, "a vocabulary-only GGUF, not a model")
                continue
            if not c.quantization:
                c.quantization = _header_quantization(parts[0])
            models.append(c)
        return models

    def _current_snapshot(self, repo_dir: Path) -> Path | None:
        """The snapshot refs/main names, else the one modified last; None when there is none."""
        snapshots = repo_dir / "snapshots"
        try:
            with os.scandir(snapshots) as it:
                names = {
                    e.name: e.stat().st_mtime_ns for e in it if not e.name.startswith(".") and e.is_dir()
                }
        except OSError:
            return None
        if not names:
            return None
        ref = _read_ref(repo_dir / "refs" / "main", self.inside)
        if ref in names:
            return snapshots / ref
        return snapshots / max(names, key=lambda name: (names[name], name))

    def _model(self, plan: ModelPlan, by_rel: dict[str, _Gguf], *, family: str | None = None) -> LocalModel:
        """The LocalModel of a plan; `family` names a plain folder's model ("<general.name or family>
        <quant>"), a hub repository's keeps the Hub import's name."""
        first = by_rel[plan.binaries[0].path]
        name = plan.name
        if family is not None:
            name = f"{first.text('general.name') or family} {plan.quantization}".strip()
        binaries = [
            LocalBinary(b.name, by_rel[b.path].found.real, b.size, by_rel[b.path].found.sha256, b.url)
            for b in plan.binaries
        ]
        return LocalModel(
            stem=plan.stem,
            name=name,
            quantization=plan.quantization,
            size=plan.size,
            binaries=binaries,
            architecture=first.text("general.architecture"),
        )


def _listed(g: _Gguf) -> ListedFile:
    return ListedFile(g.found.rel, g.found.size, g.found.sha256)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _header_quantization(g: _Gguf) -> str:
    """The quantization general.file_type names. llama.cpp's quantize writes that key last, after the
    vocabulary, so where the planning read stopped short of it the header is read once more, whole (still
    only the header: megabytes at most, never the tensors)."""
    file_type = g.facts.get("general.file_type")
    if file_type is None and not g.complete:
        try:
            header = read_gguf_header(
                g.found.real, wanted=("general.file_type",), max_bytes=_WHOLE_HEADER_BYTES
            )
        except (OSError, ValueError):
            return ""
        file_type = header.facts.get("general.file_type")
    return quantization_name(file_type)


def _hub_name(name: str) -> tuple[str, str, str]:
    """("models", org, repo) for "models--<org>--<repo>" ("" org for a legacy "models--<repo>"); repo is
    "" when the name is not a cache entry's."""
    match = _HUB_ENTRY.fullmatch(name)
    if not match:
        return "", "", ""
    parts = match[2].split("--")
    if len(parts) > 2 or not all(parts):
        return match[1], "", ""
    return (match[1], "", parts[0]) if len(parts) == 1 else (match[1], parts[0], parts[1])


def _hub_repo(path: Path) -> bool:
    """A hub cache entry: "models--…", "datasets--…" or "spaces--…" holding snapshots/."""
    if not _HUB_ENTRY.fullmatch(path.name):
        return False
    st = _stat(path / "snapshots")
    return st is not None and stat.S_ISDIR(st.st_mode)


def _read_ref(path: Path, inside: Callable[[Path], bool]) -> str:
    """A refs/ file's commit hash ("" when unreadable); only a regular file in the allowed directories
    is opened (a FIFO would block, a link could point anywhere)."""
    real = Path(os.path.realpath(path))
    st = _stat(real)
    if st is None or not stat.S_ISREG(st.st_mode) or not inside(real):
        return ""
    try:
        with open(real, "rb") as f:
            return f.read(256).decode(errors="replace").strip()
    except OSError:
        return ""


def _family(c: Candidate, top_name: str) -> str:
    """What a plain folder's model is grouped by: its file name without the quantization tag; for a
    per-quant subfolder ("Q4_K_M/model-00001-of-00002.gguf"), that folder's name without the tag, or
    where nothing is left, the folder above it (the scanned directory at the top), "-GGUF" dropped."""
    if c.quant_in_base:
        return c.family
    segments = c.directory.split("/") if c.directory else []
    for i in range(len(segments) - 1, -1, -1):
        if quantization_of(segments[i]):
            stripped = strip_quantization(segments[i])
            if stripped:
                return stripped
            above = segments[i - 1] if i > 0 else top_name
            return repo_title(above) if above else c.base
    return c.base


def _attach(candidates: list[Candidate], projectors: list[str]) -> dict[str, set[str]]:
    """The projectors of each model (keyed by its first file): those in its directory, and for a
    directory without models, the models in the directories below it."""
    attached: dict[str, set[str]] = {c.parts[0].path: set() for c in candidates}
    for rel in projectors:
        directory = posixpath.dirname(rel)
        beside = [c for c in candidates if c.directory == directory]
        below = [c for c in candidates if directory == "" or c.directory.startswith(directory + "/")]
        for c in beside or below:
            attached[c.parts[0].path].add(rel)
    return attached


def _incomplete_reason(missing: list[int], total: int) -> str:
    if not missing:
        return f"a split model whose parts do not match its declared count of {total}"
    if len(missing) == 1:
        return f"a split model with part {missing[0]} of {total} missing"
    if len(missing) <= 5:
        return f"a split model with parts {', '.join(map(str, missing))} of {total} missing"
    return f"a split model with {len(missing)} of its {total} parts missing (the first: {missing[0]})"
