"""Importing a Hugging Face model repository: parse its URL, list its files, plan one model per GGUF quant.

This module only talks to the Hub's JSON API (the tree listing) and turns the listing into a plan; the
downloader service creates the model objects and fetches the binaries itself. Shapes, URLs and headers
follow huggingface_hub (`HfApi.list_repo_tree`, `hf_hub_url`, `utils/_pagination.py`,
`utils/_http.py:hf_raise_for_status`), so any Hub-compatible endpoint (HF_ENDPOINT, a mirror) works.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import orjson
from yarl import URL

DEFAULT_REVISION = "main"
HF_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")

# A repo listing is JSON of ~200 bytes per file: these caps only stop a broken or hostile endpoint from
# making us buffer without end; real repositories are far below them.
MAX_PAGE_BYTES = 64 * 1024 * 1024
MAX_PAGES = 1000
MAX_FILES = 100_000
# Same bound as the catalog's check_name: names must fit a file system entry with room to spare.
MAX_NAME_BYTES = 200

# huggingface_hub's REPO_ID_REGEX, per part, restricted to ASCII; '--' and '..' are refused separately.
_REPO_PART_RE = re.compile(r"^(?![.-])[A-Za-z0-9_.-]{1,96}(?<![.-])$")
_SPLIT_RE = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})$")
# Quantization tag: a whole token, i.e. preceded and followed by '.', '-', '_' or the string's ends.
# `(?<![^._-])` reads "not preceded by a non-delimiter", which also holds at the start of the string.
_QUANT_RE = re.compile(
    r"(?<![^._-])(I?Q[1-8](?:_K|_[0-9]|_[A-Z]{1,3})*|BF16|F16|F32)(?![^._-])",
    re.IGNORECASE,
)
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+\-]")
# Suffixes TheBloke/bartowski/unsloth-style repos add to the model's name; dropped in display names.
_REPO_FORMAT_SUFFIX = re.compile(r"[-_.]gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class HubFile:
    """One file of a repository listing."""

    path: str  # path in the repo, e.g. "Q4_K_M/model-00001-of-00002.gguf"
    size: int
    sha256: str  # LFS sha256 ("" if not an LFS file)


@dataclass(frozen=True)
class RepoRef:
    """A model repository at a revision (branch, tag or commit)."""

    org: str
    repo: str
    revision: str = DEFAULT_REVISION

    @property
    def repo_id(self) -> str:
        return f"{self.org}/{self.repo}"


class HubError(Exception):
    """The Hub refused or failed a request. `code` is stable (hf_repo_not_found, hf_revision_not_found,
    hf_gated, hf_error); `status` is the HTTP status when there was one."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class PlannedBinary:
    """One file to download into the model folder."""

    name: str  # safe, unique file name in the model folder
    url: str  # resolve URL on the Hub
    sha256: str  # "" when the Hub gives none (non-LFS file)
    size: int


@dataclass(frozen=True)
class PlannedModel:
    """One model object to create: a GGUF quantization (all parts of a split file) plus projector files."""

    stem: str  # json file name without .json, e.g. "zephyr-7b-beta.Q4_K_M"
    name: str  # display name
    quantization: str  # "Q4_K_M", "IQ3_XXS", "F16" ... upper-case; "" if none
    size: int  # total bytes of its binaries
    binaries: list[PlannedBinary]


# ---------------------------------------------------------------------------------------------------------
# URLs


def _check_repo_part(part: str, what: str) -> str:
    if not _REPO_PART_RE.match(part) or "--" in part or ".." in part:
        raise ValueError(f"{what} {part!r} is not a valid Hugging Face name")
    return part


def parse_repo_url(url: str) -> RepoRef:
    """A repository reference from a Hub URL or an "<org>/<repo>" id.

    Accepts https://huggingface.co/<org>/<repo> (also hf.co, www., without scheme), with /tree/<rev>[/dir],
    /blob/<rev>/<file> or /resolve/<rev>/<file> (only the repository and revision are kept). Datasets,
    spaces, other hosts and one-part legacy ids are refused with ValueError.
    """
    text = url.strip()
    if not text:
        raise ValueError("empty repository URL")
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(f"{url!r} is not an http(s) URL")
        host = (parts.hostname or "").lower()
        if host not in HF_HOSTS or parts.port not in (None, 80, 443) or parts.username or parts.password:
            raise ValueError(f"{url!r} is not a Hugging Face URL")
        path = parts.path
    else:
        # Bare "huggingface.co/org/repo" (no scheme) or a repo id "org/repo".
        head, _, rest = text.partition("/")
        if head.lower() in HF_HOSTS:
            path = rest
        else:
            path = text
        path = urlsplit("//x/" + path).path  # drop any ?query or #fragment the same way as for URLs
    # Split before decoding, so an encoded '/' (revision "refs%2Fpr%2F1") stays inside its segment.
    segments = [unquote(s) for s in path.split("/") if s]
    if len(segments) < 2:
        raise ValueError(f"{url!r} does not name a repository as <org>/<repo>")
    if segments[0] in ("datasets", "spaces", "api", "buckets", "models"):
        raise ValueError(f"{url!r} is not a model repository")
    org = _check_repo_part(segments[0], "organization")
    repo = _check_repo_part(segments[1], "repository")
    if repo.lower().endswith(".git"):
        raise ValueError(f"repository {repo!r} must not end with '.git'")
    rest_segments = segments[2:]
    if not rest_segments:
        return RepoRef(org, repo)
    kind = rest_segments[0]
    if kind == "tree" and len(rest_segments) >= 2:
        revision = rest_segments[1]
    elif kind in ("blob", "resolve") and len(rest_segments) >= 3:
        revision = rest_segments[1]
    else:
        raise ValueError(f"{url!r} is not a repository, tree or file URL")
    if not revision or any(ord(c) < 32 for c in revision) or revision in (".", ".."):
        raise ValueError(f"{url!r} has an invalid revision")
    return RepoRef(org, repo, revision)


def _repo_base(endpoint: str, ref: RepoRef) -> str:
    return f"{endpoint.rstrip('/')}/{quote(ref.org, safe='')}/{quote(ref.repo, safe='')}"


def resolve_url(endpoint: str, ref: RepoRef, path: str) -> str:
    """<endpoint>/<org>/<repo>/resolve/<rev>/<path>, as huggingface_hub's hf_hub_url builds it: the revision
    is quoted whole (a '/' in "refs/pr/1" becomes %2F), the path segment by segment."""
    quoted_path = "/".join(quote(segment, safe="") for segment in path.split("/"))
    return f"{_repo_base(endpoint, ref)}/resolve/{quote(ref.revision, safe='')}/{quoted_path}"


def tree_url(endpoint: str, ref: RepoRef) -> str:
    """The first page of the recursive tree listing (HfApi.list_repo_tree(recursive=True))."""
    base = f"{endpoint.rstrip('/')}/api/models/{quote(ref.org, safe='')}/{quote(ref.repo, safe='')}"
    return f"{base}/tree/{quote(ref.revision, safe='')}?recursive=true&expand=false"


# ---------------------------------------------------------------------------------------------------------
# Listing


def _error_from_response(status: int, headers: Any, body: bytes, ref: RepoRef) -> HubError:
    """Maps an error answer like huggingface_hub's hf_raise_for_status: X-Error-Code first, status next."""
    error_code = headers.get("X-Error-Code", "")
    detail = headers.get("X-Error-Message", "")
    if not detail:
        try:
            data = orjson.loads(body[:65536])
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                detail = data["error"]
        except orjson.JSONDecodeError:
            pass
    suffix = f" ({detail})" if detail else ""
    if error_code == "RevisionNotFound":
        return HubError(
            "hf_revision_not_found",
            f"revision {ref.revision!r} not found in {ref.repo_id}{suffix}",
            status=status,
        )
    if error_code == "GatedRepo":
        return HubError(
            "hf_gated",
            f"{ref.repo_id} is gated: accept its conditions on the Hub and set HF_TOKEN{suffix}",
            status=status,
        )
    # The Hub answers 401 + RepoNotFound for private and missing repos alike when unauthenticated.
    if error_code == "RepoNotFound" or status == 404:
        return HubError(
            "hf_repo_not_found",
            f"repository {ref.repo_id} not found (if it is private, set HF_TOKEN){suffix}",
            status=status,
        )
    if status in (401, 403):
        return HubError(
            "hf_gated",
            f"access to {ref.repo_id} denied (HTTP {status}): it may be gated or private; set HF_TOKEN to a "
            f"token with access{suffix}",
            status=status,
        )
    return HubError("hf_error", f"the Hub answered HTTP {status} for {ref.repo_id}{suffix}", status=status)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(1024 * 1024):
        body += chunk
        if len(body) > limit:
            raise HubError("hf_error", f"the Hub's answer is larger than {limit} bytes")
    return bytes(body)


def _parse_entry(entry: Any) -> HubFile | None:
    """A file entry of the tree listing ({"type","oid","size","path","lfs":{"oid","size","pointerSize"}});
    None for folders."""
    if not isinstance(entry, dict):
        raise HubError("hf_error", "unexpected tree listing from the Hub (entry is not an object)")
    if entry.get("type") != "file":
        return None
    path, size, lfs = entry.get("path"), entry.get("size"), entry.get("lfs")
    if not isinstance(path, str) or not path or isinstance(size, bool) or not isinstance(size, int):
        raise HubError("hf_error", f"unexpected tree listing from the Hub (bad file entry {entry!r:.200})")
    sha256 = ""
    if isinstance(lfs, dict):
        oid = lfs.get("oid")
        if isinstance(oid, str) and re.fullmatch(r"[0-9a-fA-F]{64}", oid):
            sha256 = oid.lower()
        lfs_size = lfs.get("size")
        # For LFS files the listing's size is the content's; prefer the LFS record if both are given.
        if isinstance(lfs_size, int) and not isinstance(lfs_size, bool):
            size = lfs_size
    return HubFile(path=path, size=max(size, 0), sha256=sha256)


async def list_repo_files(
    session: aiohttp.ClientSession, endpoint: str, ref: RepoRef, token: str = ""
) -> list[HubFile]:
    """Every file of the repository at ref.revision, recursively, following the Link header's next pages.

    The token is only sent to the endpoint's own origin: a next-page link elsewhere is refused rather
    than followed without it, so a token can never leak to another host.
    """
    url = tree_url(endpoint, ref)
    origin = URL(url).origin()
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    files: list[HubFile] = []
    seen_pages: set[str] = set()
    for _ in range(MAX_PAGES):
        seen_pages.add(url)
        try:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                body = await _read_capped(resp, MAX_PAGE_BYTES)
                if resp.status != 200:
                    raise _error_from_response(resp.status, resp.headers, body, ref)
                next_link = resp.links.get("next")
                next_url = next_link.get("url") if next_link is not None else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HubError("hf_error", f"cannot list {ref.repo_id} on {endpoint}: {exc!r}") from exc
        try:
            entries = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HubError("hf_error", "the Hub's tree listing is not JSON") from exc
        if not isinstance(entries, list):
            raise HubError("hf_error", "unexpected tree listing from the Hub (not a list)")
        for entry in entries:
            hub_file = _parse_entry(entry)
            if hub_file is not None:
                files.append(hub_file)
        if len(files) > MAX_FILES:
            raise HubError("hf_error", f"{ref.repo_id} has more than {MAX_FILES} files")
        if next_url is None:
            return files
        # The Link target is absolute on the real Hub; join a relative one against the page's URL.
        following = URL(url).join(URL(str(next_url)))
        if following.origin() != origin:
            raise HubError("hf_error", f"the Hub's next-page link leaves {origin}: {following}")
        url = str(following)
        if url in seen_pages:
            raise HubError("hf_error", "the Hub's tree listing pagination loops")
    raise HubError("hf_error", f"{ref.repo_id}'s listing has more than {MAX_PAGES} pages")


# ---------------------------------------------------------------------------------------------------------
# Planning


def quantization_of(name: str) -> str:
    """The last quantization token in a name (Q4_K_M, IQ3_XXS, F16 ...), upper-case; "" when none."""
    tags = _QUANT_RE.findall(name)
    return tags[-1].upper() if tags else ""


def safe_name(name: str) -> str:
    """A file name that cannot leave its folder: [A-Za-z0-9._+-] only, no leading dot, at most 200 bytes
    (the rules the catalog applies to model folders)."""
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name).lstrip(".")
    if len(cleaned) > MAX_NAME_BYTES:
        root, dot, ext = cleaned.rpartition(".")
        if dot and 0 < len(ext) < 16:
            cleaned = root[: MAX_NAME_BYTES - len(ext) - 1] + "." + ext
        else:
            cleaned = cleaned[:MAX_NAME_BYTES]
    return cleaned or "file"


def _unique(names: list[str], *, keep_extension: bool) -> list[str]:
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


def _binary_names(paths: list[str]) -> dict[str, str]:
    """Folder file name for each repo path: its basename, or, where basenames clash, the whole path with
    '/' turned into '-' ("Q4_K_M-model-00001-of-00002.gguf")."""
    ordered = sorted(paths)
    bases = [safe_name(posixpath.basename(path)) for path in ordered]
    counts: dict[str, int] = defaultdict(int)
    for base in bases:
        counts[base.lower()] += 1
    wanted = [
        safe_name(path.replace("/", "-")) if counts[base.lower()] > 1 else base
        for path, base in zip(ordered, bases, strict=True)
    ]
    return dict(zip(ordered, _unique(wanted, keep_extension=True), strict=True))


@dataclass
class _Candidate:
    directory: str
    base: str  # file stem without .gguf and split suffix
    quantization: str
    quant_in_base: bool
    parts: list[HubFile]


def _candidates(files: list[HubFile]) -> list[_Candidate]:
    singles: list[_Candidate] = []
    splits: dict[tuple[str, str, int], dict[int, HubFile]] = defaultdict(dict)
    for f in files:
        directory, basename = posixpath.split(f.path)
        stem = basename[: -len(".gguf")]
        match = _SPLIT_RE.match(stem)
        if match:
            splits[(directory, match["base"], int(match["total"]))][int(match["index"])] = f
        else:
            singles.append(_Candidate(directory, stem, "", False, [f]))
    for (directory, base, total), parts in splits.items():
        # A split model is usable only whole: every index 1..total, nothing else.
        if total < 1 or sorted(parts) != list(range(1, total + 1)):
            continue
        singles.append(_Candidate(directory, base, "", False, [parts[i] for i in range(1, total + 1)]))
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
    return singles


def plan_models(endpoint: str, ref: RepoRef, files: list[HubFile]) -> list[PlannedModel]:
    """One PlannedModel per GGUF model in the listing, sorted by stem.

    Split GGUF files become one model with their parts in order (skipped unless every part is listed);
    mmproj (vision projector) files are attached to every model rather than being models; other files
    are ignored. Stems and binary names are safe file names, unique within the repository's folder.
    """
    ggufs = sorted((f for f in files if f.path.lower().endswith(".gguf")), key=lambda f: f.path)
    projectors = [f for f in ggufs if "mmproj" in posixpath.basename(f.path).lower()]
    candidates = _candidates([f for f in ggufs if "mmproj" not in posixpath.basename(f.path).lower()])
    if not candidates:
        return []

    names = _binary_names([p.path for c in candidates for p in c.parts] + [f.path for f in projectors])

    # Stems: the file's base name, prefixed by its folder where it lacks the quant tag that the folder
    # carries, or where two models would share a stem (same base name in two folders).
    def folder_prefixed(c: _Candidate) -> str:
        return f"{c.directory.replace('/', '-')}-{c.base}" if c.directory else c.base

    base_counts: dict[str, int] = defaultdict(int)
    for c in candidates:
        base_counts[safe_name(c.base).lower()] += 1
    stems = _unique(
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

    # Display names: "<repo without -GGUF> <quant>" when the repo holds one model in several quants (the
    # usual case); "<file base> <quant>" when it holds several different models.
    def without_quant(c: _Candidate) -> str:
        if not c.quant_in_base:
            return c.base
        stripped = _QUANT_RE.sub("", c.base)
        return re.sub(r"[._-]{2,}", "-", stripped).strip("._-") or c.base

    families = {without_quant(c).lower() for c in candidates}
    repo_title = _REPO_FORMAT_SUFFIX.sub("", ref.repo) or ref.repo

    extras = [
        PlannedBinary(names[f.path], resolve_url(endpoint, ref, f.path), f.sha256, f.size) for f in projectors
    ]
    models: list[PlannedModel] = []
    for i, c in enumerate(candidates):
        binaries = [
            PlannedBinary(names[p.path], resolve_url(endpoint, ref, p.path), p.sha256, p.size)
            for p in c.parts
        ]
        binaries.extend(extras)
        if not c.quantization:
            display = stems[i]
        elif len(families) == 1:
            display = f"{repo_title} {c.quantization}"
        else:
            display = f"{without_quant(c)} {c.quantization}"
        models.append(
            PlannedModel(
                stem=stems[i],
                name=display,
                quantization=c.quantization,
                size=sum(b.size for b in binaries),
                binaries=binaries,
            )
        )
    models.sort(key=lambda m: m.stem)
    return models
