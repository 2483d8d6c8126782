"""Importing a Hugging Face model repository: parse its URL, list its files, plan one model per GGUF quant.

This module only talks to the Hub's JSON API (the tree listing) and turns the listing into a plan; the
downloader service creates the model objects and fetches the binaries itself. Shapes, URLs and headers
follow huggingface_hub (`HfApi.list_repo_tree`, `hf_hub_url`, `utils/_pagination.py`,
`utils/_http.py:hf_raise_for_status`), so any Hub-compatible endpoint (HF_ENDPOINT, a mirror) works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

import aiohttp
import orjson
from yarl import URL

from services.common import gguf_plan
from services.common.gguf_plan import MAX_NAME_BYTES as MAX_NAME_BYTES
from services.common.gguf_plan import quantization_of as quantization_of
from services.common.gguf_plan import safe_name as safe_name

DEFAULT_REVISION = "main"
HF_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")

# A repo listing is JSON of ~200 bytes per file: these caps only stop a broken or hostile endpoint from
# making us buffer without end; real repositories are far below them.
MAX_PAGE_BYTES = 64 * 1024 * 1024
MAX_PAGES = 1000
MAX_FILES = 100_000

# huggingface_hub's REPO_ID_REGEX, per part, restricted to ASCII; '--' and '..' are refused separately.
_REPO_PART_RE = re.compile(r"^(?![.-])[A-Za-z0-9_.-]{1,96}(?<![.-])$")


# One file of a repository listing: path in the repo, size, LFS sha256 ("" if not an LFS file).
HubFile = gguf_plan.ListedFile


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


# ---------------------------------------------------------------------------------------------------------
# URLs


def _check_repo_part(part: str, what: str) -> str:
    if not _REPO_PART_RE.match(part) or "--" in part or ".." in part:
        raise ValueError(f"{what} {part!r} is not a valid Hugging Face name")
    return part


def parse_repo_url(url: str, endpoint: str = "") -> RepoRef:
    """A repository reference from a Hub URL or an "<org>/<repo>" id.

    Accepts https://huggingface.co/<org>/<repo> (also hf.co, www., without scheme), with /tree/<rev>[/dir],
    /blob/<rev>/<file> or /resolve/<rev>/<file> (only the repository and revision are kept), and the same
    URLs under `endpoint` (HF_ENDPOINT: a mirror of the Hub, maybe with a path). Datasets, spaces, other
    hosts and one-part legacy ids are refused with ValueError.
    """
    text = url.strip()
    if not text:
        raise ValueError("empty repository URL")
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(f"{url!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ValueError(f"{url!r} is not a Hugging Face URL")
        host = (parts.hostname or "").lower()
        path = parts.path
        if host not in HF_HOSTS or parts.port not in (None, 80, 443):
            path = _under_endpoint(parts, endpoint, url)
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


def _under_endpoint(parts: SplitResult, endpoint: str, url: str) -> str:
    """The path of `parts` below the endpoint's own (a mirror's URL); ValueError when it is elsewhere."""
    base = urlsplit(endpoint) if endpoint else None
    if (
        base is None
        or (parts.hostname or "").lower() != (base.hostname or "").lower()
        or parts.port != base.port
        or parts.scheme.lower() != base.scheme.lower()
    ):
        raise ValueError(f"{url!r} is not a Hugging Face URL (nor one of HF_ENDPOINT {endpoint or 'unset'})")
    prefix = base.path.rstrip("/")
    if prefix and not (parts.path == prefix or parts.path.startswith(prefix + "/")):
        raise ValueError(f"{url!r} is not under HF_ENDPOINT {endpoint}")
    return parts.path[len(prefix) :]


def resolve_url(endpoint: str, ref: RepoRef, path: str) -> str:
    """<endpoint>/<org>/<repo>/resolve/<rev>/<path>, as huggingface_hub's hf_hub_url builds it: the revision
    is quoted whole (a '/' in "refs/pr/1" becomes %2F), the path segment by segment."""
    return gguf_plan.hub_file_url(endpoint, ref.org, ref.repo, ref.revision, path)


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


def plan_models(endpoint: str, ref: RepoRef, files: list[HubFile]) -> list[gguf_plan.ModelPlan]:
    """One ModelPlan per GGUF model in the listing, sorted by stem (see gguf_plan.plan_models), each binary
    with its resolve URL on the Hub.

    Split GGUF files become one model with their parts in order (skipped unless every part is listed);
    mmproj (vision projector) files are attached to every model rather than being models; other files
    are ignored. Stems and binary names are safe file names, unique within the repository's folder.
    """
    return gguf_plan.plan_models(
        files, title=gguf_plan.repo_title(ref.repo), url=lambda path: resolve_url(endpoint, ref, path)
    )
