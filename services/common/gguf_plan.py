"""Planning model objects from a listing of GGUF files: which files make one model (split parts, vision
projectors), its quantization, and safe, unique stems, file names and display names.

One implementation for every importer: a Hugging Face repository listed over the Hub's API, a snapshot
in a local Hugging Face cache, and a plain folder of GGUF files. It only looks at paths and sizes.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from services.common.filesafety import MAX_NAME_BYTES, sanitize_name

_SPLIT_RE = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})$")
# Quantization tag: a whole token, i.e. preceded and followed by '.', '-', '_' or the string's ends.
# `(?<![^._-])` reads "not preceded by a non-delimiter", which also holds at the start of the string.
_QUANT_RE = re.compile(
    r"(?<![^._-])(I?Q[1-8](?:_K|_[0-9]|_[A-Z]{1,3})*|BF16|F16|F32)(?![^._-])",
    re.IGNORECASE,
)
# Suffixes TheBloke/bartowski/unsloth-style repos add to the model's name; dropped in display names.
_REPO_FORMAT_SUFFIX = re.compile(r"[-_.]gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class ListedFile:
    """One file of a listing: a repository's tree or a folder on disk."""

    path: str  # relative posix path, e.g. "Q4_K_M/model-00001-of-00002.gguf"
    size: int
    sha256: str  # "" when unknown (not an LFS file, or a local file not hashed)


@dataclass(frozen=True)
class BinaryPlan:
    """One file of a planned model."""

    name: str  # safe, unique file name in the model folder
    path: str  # the listed file it comes from
    url: str  # where it can be fetched; "" when the caller gave no URL rule
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelPlan:
    """One model object to create: a GGUF quantization (all parts of a split file) plus projector files."""

    stem: str  # json file name without .json, e.g. "zephyr-7b-beta.Q4_K_M"
    name: str  # display name
    quantization: str  # "Q4_K_M", "IQ3_XXS", "F16" ... upper-case; "" if none
    size: int  # total bytes of its binaries
    binaries: list[BinaryPlan]


@dataclass
class Candidate:
    """A model found in a listing: one GGUF file, or every part of a split one, in order."""

    directory: str
    base: str  # file stem without .gguf and split suffix
    quantization: str  # from the base name, else from a folder name; a caller may fill it in otherwise
    quant_in_base: bool
    parts: list[ListedFile]

    @property
    def family(self) -> str:
        """The base name without its quantization tag ("Llama-3.2-1B-Instruct-Q4_K_M" -> "Llama-3.2-1B-
        Instruct"): what the quantizations of one model have in common."""
        if not self.quant_in_base:
            return self.base
        return strip_quantization(self.base) or self.base


@dataclass(frozen=True)
class IncompleteSplit:
    """The parts found of a split GGUF that lacks some (or has parts beyond its declared count)."""

    directory: str
    base: str
    total: int
    parts: list[ListedFile]
    missing: list[int]  # 1-based part numbers not listed


# ---------------------------------------------------------------------------------------------------------
# Names


def quantization_of(name: str) -> str:
    """The last quantization token in a name (Q4_K_M, IQ3_XXS, F16 ...), upper-case; "" when none."""
    tags = _QUANT_RE.findall(name)
    return tags[-1].upper() if tags else ""


def strip_quantization(name: str) -> str:
    """The name without its quantization tokens and the separators they leave behind ("" if nothing is
    left)."""
    stripped = _QUANT_RE.sub("", name)
    return re.sub(r"[._-]{2,}", "-", stripped).strip("._-")


def repo_title(repo: str) -> str:
    """A repository's name without the "-GGUF" suffix that GGUF repositories add to the model's name."""
    return _REPO_FORMAT_SUFFIX.sub("", repo) or repo


def safe_name(name: str) -> str:
    """A file name that cannot leave its folder (filesafety.sanitize_name), keeping its extension."""
    return sanitize_name(name, keep_extension=True) or "file"


def unique_names(names: Sequence[str], *, keep_extension: bool) -> list[str]:
    """The names made unique (case-insensitively, for case-insensitive file systems) by numbering later
    duplicates, before the extension when there is one to keep ("x.gguf", "x-2.gguf")."""
    taken: set[str] = set()
    result: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate.lower() in taken:
            root, dot, ext = name.rpartition(".") if keep_extension else (name, "", "")
            if not (dot and root):
                root, dot, ext = name, "", ""
            suffix = f"-{n}{dot}{ext}"
            candidate = root[: MAX_NAME_BYTES - len(suffix)] + suffix
            n += 1
        taken.add(candidate.lower())
        result.append(candidate)
    return result


def hub_file_url(endpoint: str, org: str, repo: str, revision: str, path: str) -> str:
    """<endpoint>/<org>/<repo>/resolve/<rev>/<path>, as huggingface_hub's hf_hub_url builds it: the revision
    is quoted whole (a '/' in "refs/pr/1" becomes %2F), the path segment by segment. A legacy repository
    without an organization ("gpt2") has no <org>/ part."""
    repo_path = "/".join(quote(part, safe="") for part in (org, repo) if part)
    quoted_path = "/".join(quote(segment, safe="") for segment in path.split("/"))
    return f"{endpoint.rstrip('/')}/{repo_path}/resolve/{quote(revision, safe='')}/{quoted_path}"


def is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def is_projector(path: str) -> bool:
    """A projector file (llava's "mmproj", or a `.proj` file): one of a model's binaries that is not its
    weights but reads images (or sound) for them. The one rule: importers attach projectors to models, the
    catalog gives them to every object of a folder, a runner loads them as the projector."""
    name = posixpath.basename(path).lower()
    return "mmproj" in name or name.endswith(".proj")


def _binary_names(paths: list[str]) -> dict[str, str]:
    """Folder file name for each listed path: its basename, or, where basenames clash, the whole path
    with '/' turned into '-' ("Q4_K_M-model-00001-of-00002.gguf")."""
    ordered = sorted(paths)
    bases = [safe_name(posixpath.basename(path)) for path in ordered]
    counts: dict[str, int] = defaultdict(int)
    for base in bases:
        counts[base.lower()] += 1
    wanted = [
        safe_name(path.replace("/", "-")) if counts[base.lower()] > 1 else base
        for path, base in zip(ordered, bases, strict=True)
    ]
    return dict(zip(ordered, unique_names(wanted, keep_extension=True), strict=True))


# ---------------------------------------------------------------------------------------------------------
# Planning


def find_candidates(files: Sequence[ListedFile]) -> tuple[list[Candidate], list[IncompleteSplit]]:
    """The models among GGUF files (projectors excluded by the caller), ordered by first file path, and
    the split files that cannot be used because parts are missing."""
    singles: list[Candidate] = []
    splits: dict[tuple[str, str, int], dict[int, ListedFile]] = defaultdict(dict)
    for f in files:
        directory, basename = posixpath.split(f.path)
        stem = basename[: -len(".gguf")] if is_gguf(basename) else basename
        match = _SPLIT_RE.match(stem)
        if match:
            splits[(directory, match["base"], int(match["total"]))][int(match["index"])] = f
        else:
            singles.append(Candidate(directory, stem, "", False, [f]))
    incomplete: list[IncompleteSplit] = []
    for (directory, base, total), parts in splits.items():
        # A split model is usable only whole: every index 1..total, nothing else.
        if total < 1 or sorted(parts) != list(range(1, total + 1)):
            missing = [i for i in range(1, total + 1) if i not in parts]
            found = [parts[i] for i in sorted(parts)]
            incomplete.append(IncompleteSplit(directory, base, total, found, missing))
            continue
        singles.append(Candidate(directory, base, "", False, [parts[i] for i in range(1, total + 1)]))
    for c in singles:
        c.quantization = quantization_of(c.base)
        c.quant_in_base = bool(c.quantization)
        if not c.quantization:
            # Per-quant subfolders ("Q4_K_M/model-00001-of-00002.gguf"): the tag is in the folder name.
            for segment in reversed(c.directory.split("/") if c.directory else []):
                c.quantization = quantization_of(segment)
                if c.quantization:
                    break
    # A stable order (by first file path) keeps stem numbering the same from one import to the next.
    singles.sort(key=lambda c: c.parts[0].path)
    incomplete.sort(key=lambda s: s.parts[0].path)
    return singles, incomplete


def plan_candidates(
    candidates: Sequence[Candidate],
    projectors: Sequence[ListedFile],
    *,
    title: str,
    url: Callable[[str], str] | None = None,
    attaches: Callable[[Candidate, ListedFile], bool] | None = None,
) -> list[ModelPlan]:
    """One ModelPlan per candidate, all in one model folder, sorted by stem.

    Each model gets the projectors that `attaches` accepts for it (all of them by default). Stems and
    binary names are safe file names, unique within the folder. `title` names the models in display
    names ("<title> <quant>") when they are quantizations of one model; `url` gives each binary's URL
    from its listed path (none when not given).
    """
    if not candidates:
        return []
    names = _binary_names([p.path for c in candidates for p in c.parts] + [f.path for f in projectors])

    # Stems: the file's base name, prefixed by its folder where it lacks the quant tag that the folder
    # carries, or where two models would share a stem (same base name in two folders).
    def folder_prefixed(c: Candidate) -> str:
        return f"{c.directory.replace('/', '-')}-{c.base}" if c.directory else c.base

    base_counts: dict[str, int] = defaultdict(int)
    for c in candidates:
        base_counts[safe_name(c.base).lower()] += 1
    stems = unique_names(
        [
            safe_name(
                folder_prefixed(c)
                if base_counts[safe_name(c.base).lower()] > 1 or not c.quant_in_base
                else c.base
            )
            for c in candidates
        ],
        keep_extension=False,
    )

    def binary(f: ListedFile) -> BinaryPlan:
        return BinaryPlan(names[f.path], f.path, url(f.path) if url else "", f.sha256, f.size)

    # Display names: "<title> <quant>" when the folder holds one model in several quants (the usual
    # case); "<file base> <quant>" when it holds several different models.
    families = {c.family.lower() for c in candidates}
    models: list[ModelPlan] = []
    for c, stem in zip(candidates, stems, strict=True):
        binaries = [binary(p) for p in c.parts]
        binaries.extend(binary(f) for f in projectors if attaches is None or attaches(c, f))
        if not c.quantization:
            display = stem
        elif len(families) == 1:
            display = f"{title} {c.quantization}"
        else:
            display = f"{c.family} {c.quantization}"
        models.append(
            ModelPlan(
                stem=stem,
                name=display,
                quantization=c.quantization,
                size=sum(b.size for b in binaries),
                binaries=binaries,
            )
        )
    models.sort(key=lambda m: m.stem)
    return models


def plan_models(
    files: Sequence[ListedFile], *, title: str, url: Callable[[str], str] | None = None
) -> list[ModelPlan]:
    """One ModelPlan per GGUF model in the listing, all in one folder (a repository's), sorted by stem.

    Split GGUF files become one model with their parts in order (left out unless every part is listed);
    mmproj (vision projector) files are attached to every model rather than being models; other files
    are ignored.
    """
    ggufs = sorted((f for f in files if is_gguf(f.path)), key=lambda f: f.path)
    projectors = [f for f in ggufs if is_projector(f.path)]
    candidates, _ = find_candidates([f for f in ggufs if not is_projector(f.path)])
    return plan_candidates(candidates, projectors, title=title, url=url)
