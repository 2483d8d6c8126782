"""The Jan Model Object: parsing and validating a json file, its binaries, and its protobuf form.

This is the only module that reads model json files. A file becomes a `ModelObject` (the raw dict is
kept whole, so unknown properties survive a rewrite); `to_pb` gives the message services exchange.
"""

from __future__ import annotations

import ctypes
import getpass
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from jan.model.v1 import model_pb2
from services.common.capabilities import HeaderTraits, derive_capabilities
from services.common.engine_names import DEFAULT_ENGINE, ENGINES, REMOTE_ENGINES
from services.common.filesafety import check_name, sanitize_name
from services.common.gguf_plan import is_projector, quantization_of
from services.common.storage.base import SHA256_RE

# Files in a model folder that are model binaries (anything else, e.g. README.md, is left alone).
BINARY_SUFFIXES = (".gguf", ".ggml", ".bin", ".safetensors", ".onnx", ".engine", ".plan", ".proj")
HF_HOSTS = ("huggingface.co", "hf.co", "www.huggingface.co")

_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})$")


class ModelFileError(Exception):
    """A json file that is not a valid model object; str() is the reason shown to users."""


def split_id(model_id: str) -> tuple[str, str]:
    """'<folder>/<file>' -> (folder, file stem); ValueError for anything that could leave the root."""
    parts = model_id.split("/")
    if len(parts) != 2:
        raise ValueError(f"model id {model_id!r} must look like '<folder>/<file>'")
    folder, stem = parts
    check_name(folder, "folder")
    check_name(stem, "file name")
    if stem.endswith(".json"):
        raise ValueError(f"model id {model_id!r} names the file without '.json'")
    return folder, stem


def quant_tag(name: str) -> str:
    """The quantization tag in a file or model name ('' when none), upper-case."""
    stem = name
    for suffix in (*BINARY_SUFFIXES, ".json"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return quantization_of(_SPLIT_RE.sub("", stem))


def binary_stem(name: str) -> str:
    """File name without its extension and without a split suffix (-00001-of-00003)."""
    stem, _ = os.path.splitext(name)
    return _SPLIT_RE.sub("", stem)


def is_binary_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(BINARY_SUFFIXES)


def hf_resolve_url(url: str) -> str:
    """Hugging Face 'blob/' page URLs point at an HTML page; 'resolve/' serves the file."""
    parts = urlsplit(url)
    if parts.hostname in HF_HOSTS and "/blob/" in parts.path:
        return url.replace("/blob/", "/resolve/", 1)
    return url


def hf_author(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname in HF_HOSTS:
        segments = [s for s in parts.path.split("/") if s]
        if segments and segments[0] not in ("api", "datasets", "spaces"):
            return segments[0]
    return ""


def is_remote_url(source_url: str) -> bool:
    return urlsplit(source_url).scheme.lower() in ("http", "https")


def file_name_from_url(url: str) -> str:
    """The last path segment of a URL, decoded and made safe to use as a file name."""
    return sanitize_name(unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]))


@dataclass(frozen=True)
class BinarySpec:
    """One file the model needs, as declared (or discovered); presence is decided by the catalog."""

    name: str
    url: str = ""
    sha256: str = ""
    size: int = 0
    # An absolute path used in place (a local source_url outside the model folder).
    external_path: str = ""


@dataclass
class ModelObject:
    """A parsed model json file. `data` is the file's object, unknown properties included."""

    folder: str
    stem: str
    path: Path
    data: dict[str, Any]
    file_created: int
    # Binaries declared by metadata.binaries or source_url; None = discover them in the folder.
    declared: list[BinarySpec] | None = field(default=None)
    # A local source_url naming a directory other than the model's folder.
    external_dir: Path | None = None

    @property
    def id(self) -> str:
        return f"{self.folder}/{self.stem}"

    @property
    def source_url(self) -> str:
        return self.data.get("source_url") or "./"

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.data.get("metadata") or {})

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.data.get("parameters") or {})

    @property
    def engine(self) -> str:
        return self.metadata.get("engine") or DEFAULT_ENGINE

    @property
    def quantization(self) -> str:
        q = self.metadata.get("quantization")
        return q.upper() if isinstance(q, str) and q else quant_tag(self.stem)

    @property
    def own_capabilities(self) -> list[str] | None:
        """The object's own `metadata.capabilities` (validated as strings), None when it names none."""
        own = self.metadata.get("capabilities")
        return list(own) if isinstance(own, list) else None

    @property
    def created(self) -> int:
        created = self.data.get("created")
        return created if isinstance(created, int) and not isinstance(created, bool) else self.file_created

    @property
    def owned_by(self) -> str:
        owner = self.data.get("owned_by")
        if isinstance(owner, str) and owner:
            return owner
        return hf_author(self.source_url) or _current_user()


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"


# --- parsing ---------------------------------------------------------------------------------------------

_OPTIONAL_STRINGS = ("name", "description", "source_url", "owned_by", "object")


def parse_model(folder: str, stem: str, path: Path, raw: bytes, models_dir: Path) -> ModelObject:
    """Validates one json file's bytes; raises ModelFileError with a reason naming the bad property."""
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise ModelFileError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"must be a JSON object, not {_json_type(data)}")
    for key in _OPTIONAL_STRINGS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ModelFileError(f"'{key}' must be a string, not {_json_type(value)}")
    if data.get("object") not in (None, "model"):
        raise ModelFileError(f"'object' must be \"model\", not {data['object']!r}")
    created = data.get("created")
    if created is not None and (not isinstance(created, int) or isinstance(created, bool) or created < 0):
        raise ModelFileError("'created' must be a non-negative integer (Unix seconds)")
    for key in ("parameters", "metadata", "settings"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise ModelFileError(f"'{key}' must be an object, not {_json_type(value)}")
    metadata = data.get("metadata") or {}
    engine = metadata.get("engine")
    if engine is not None and engine not in ENGINES:
        raise ModelFileError(f"'metadata.engine' must be one of {', '.join(ENGINES)}, not {engine!r}")
    quant = metadata.get("quantization")
    if quant is not None and not isinstance(quant, str):
        raise ModelFileError("'metadata.quantization' must be a string")
    sha = metadata.get("sha256")
    if sha is not None and not (isinstance(sha, str) and SHA256_RE.match(sha.lower())):
        raise ModelFileError("'metadata.sha256' must be 64 hexadecimal digits")
    capabilities = metadata.get("capabilities")
    if capabilities is not None and not (
        isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities)
    ):
        raise ModelFileError("'metadata.capabilities' must be an array of strings")

    obj = ModelObject(folder=folder, stem=stem, path=path, data=data, file_created=file_birth_time(path))
    folder_dir = path.parent
    if obj.engine in REMOTE_ENGINES:
        obj.declared = []
    elif "binaries" in metadata:
        obj.declared = _parse_binaries(metadata["binaries"])
    else:
        _binaries_from_source(obj, folder_dir, models_dir, sha)
    return obj


def _parse_binaries(value: Any) -> list[BinarySpec]:
    if not isinstance(value, list):
        raise ModelFileError("'metadata.binaries' must be an array")
    specs: list[BinarySpec] = []
    for i, item in enumerate(value):
        where = f"'metadata.binaries[{i}]'"
        if isinstance(item, str):
            item = {"url": item} if is_remote_url(item) else {"name": item}
        if not isinstance(item, dict):
            raise ModelFileError(f"{where} must be a string or an object")
        url = item.get("url") or ""
        if not isinstance(url, str) or (url and not is_remote_url(url)):
            raise ModelFileError(f"{where}.url must be an http(s) URL")
        name = item.get("name") or (file_name_from_url(url) if url else "")
        if not isinstance(name, str) or not name:
            raise ModelFileError(f"{where} needs a 'name' or a 'url'")
        try:
            check_name(name, "binary name")
        except ValueError as exc:
            raise ModelFileError(f"{where}: {exc}") from None
        sha = item.get("sha256") or ""
        if not isinstance(sha, str) or (sha and not SHA256_RE.match(sha.lower())):
            raise ModelFileError(f"{where}.sha256 must be 64 hexadecimal digits")
        size = item.get("size") or 0
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ModelFileError(f"{where}.size must be a non-negative integer (bytes)")
        specs.append(
            BinarySpec(name=name, url=hf_resolve_url(url) if url else "", sha256=sha.lower(), size=size)
        )
    return specs


def _binaries_from_source(obj: ModelObject, folder_dir: Path, models_dir: Path, sha: str | None) -> None:
    source = obj.source_url
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        url = hf_resolve_url(source)
        name = file_name_from_url(url)
        # A bare Hugging Face repo URL lists no file: the importer expands it into objects.
        obj.declared = [BinarySpec(name=name, url=url, sha256=(sha or "").lower())] if name else []
        return
    if scheme == "file":
        source = unquote(urlsplit(source).path)
    elif scheme and len(scheme) > 1:
        raise ModelFileError(f"'source_url' scheme {scheme!r} is not supported (use http(s) or a path)")
    expanded = Path(os.path.expanduser(source))
    relative = not expanded.is_absolute()
    target = Path(os.path.normpath(folder_dir / expanded))
    if relative and not _inside(target, models_dir):
        raise ModelFileError("'source_url' is a relative path that leaves the models folder")
    if target == folder_dir:
        obj.declared = None
    elif target.is_dir():
        obj.declared = None
        obj.external_dir = target
    else:
        obj.declared = [BinarySpec(name=target.name, external_path=str(target), sha256=(sha or "").lower())]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# --- binaries of a folder ---------------------------------------------------------------------------------


def assign_binaries(files: list[str], models: list[ModelObject]) -> dict[str, list[str]]:
    """Which discovered binary files belong to which discovering model (keyed by stem).

    Several objects may share a folder (one per quantization). A file goes to the object whose file name it
    carries, else to the objects with its quantization tag, else to the object whose name is the longest
    prefix match; mmproj/projector files belong to every object. With one object, it gets every file.
    """
    discovering = [m for m in models if m.declared is None and m.external_dir is None]
    claimed = {b.name for m in models if m.declared for b in m.declared}
    result: dict[str, list[str]] = {m.stem: [] for m in discovering}
    # A file named as an object stays that object's when another object declares it too (a copy of the
    # object, Ollama's `copy`, shares its file).
    for name in sorted(f for f in files if f in claimed and is_binary_name(f)):
        for m in discovering:
            if m.stem.lower() == binary_stem(name).lower():
                result[m.stem].append(name)
    candidates = sorted(f for f in files if is_binary_name(f) and f not in claimed)
    if len(discovering) == 1:
        result[discovering[0].stem] = sorted(result[discovering[0].stem] + candidates)
        return result
    for name in candidates:
        owners = _owners(name, discovering)
        for m in owners:
            result[m.stem].append(name)
    return result


def _owners(name: str, models: list[ModelObject]) -> list[ModelObject]:
    if is_projector(name):
        return models
    stem = binary_stem(name).lower()
    exact = [m for m in models if m.stem.lower() == stem]
    if exact:
        return exact
    tag = quant_tag(name)
    if tag:
        tagged = [m for m in models if m.quantization == tag]
        if tagged:
            return tagged
    best = max(models, key=lambda m: _common_prefix(m.stem.lower(), stem), default=None)
    if best is not None and _common_prefix(best.stem.lower(), stem) >= 3 and not (tag and best.quantization):
        return [best]
    return []


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# --- protobuf ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinaryState:
    spec: BinarySpec
    present: bool
    size_on_disk: int


@dataclass(frozen=True)
class Runtime:
    """Facts reported by other services about a model (empty until a downloader or runner reports)."""

    state: int = model_pb2.MODEL_STATE_UNSPECIFIED
    reason: str = ""
    runner: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    # Every runner hosting a replica (runner is the first), and the replicas the model was started with.
    runners: tuple[str, ...] = ()
    replicas_wanted: int = 0


def derive_state(obj: ModelObject, binaries: list[BinaryState], runtime: Runtime) -> int:
    """running / downloading come from reports; otherwise binaries decide stopped vs not-downloaded."""
    if runtime.state in (model_pb2.MODEL_STATE_RUNNING, model_pb2.MODEL_STATE_DOWNLOADING):
        return runtime.state
    if obj.engine in REMOTE_ENGINES:
        return model_pb2.MODEL_STATE_STOPPED
    if binaries and all(b.present for b in binaries):
        return model_pb2.MODEL_STATE_STOPPED
    return model_pb2.MODEL_STATE_NOT_DOWNLOADED


def capabilities_of(
    obj: ModelObject, binaries: list[BinaryState], traits: Sequence[HeaderTraits | None]
) -> list[str]:
    """`metadata.capabilities` as answered: the object's own when it names them (a hand edit wins), else
    derived from what is known now (`traits`: each binary's header traits, None where not read)."""
    own = obj.own_capabilities
    if own is not None:
        return own
    return derive_capabilities(
        obj.parameters, [(b.spec.name, t) for b, t in zip(binaries, traits, strict=True)]
    )


def to_pb(
    obj: ModelObject,
    binaries: list[BinaryState],
    runtime: Runtime,
    root: Path,
    traits: Sequence[HeaderTraits | None] = (),
) -> model_pb2.Model:
    """The model as services exchange it; `traits` (one per binary, or none at all) are what the binaries'
    GGUF headers say, for the derived `metadata.capabilities`."""
    metadata = obj.metadata
    metadata.setdefault("engine", DEFAULT_ENGINE)
    metadata["capabilities"] = capabilities_of(obj, binaries, traits or [None] * len(binaries))
    state = derive_state(obj, binaries, runtime)
    total = sum(b.spec.size or b.size_on_disk for b in binaries)
    done = sum(b.size_on_disk for b in binaries if b.present)
    if state == model_pb2.MODEL_STATE_DOWNLOADING:
        done, total = runtime.bytes_done, runtime.bytes_total
    reason = runtime.reason
    if not reason and state == model_pb2.MODEL_STATE_NOT_DOWNLOADED:
        missing = [b.spec.name for b in binaries if not b.present]
        reason = f"missing: {', '.join(missing)}" if missing else "no model binary found in the folder"
    description = obj.data.get("description")
    return model_pb2.Model(
        id=obj.id,
        object="model",
        name=obj.data.get("name") or obj.stem,
        description=description if isinstance(description, str) else "",
        source_url=obj.source_url,
        created=obj.created,
        owned_by=obj.owned_by,
        state=state,  # type: ignore[arg-type]
        state_detail=model_pb2.StateDetail(
            reason=reason,
            bytes_done=done,
            bytes_total=total,
            runner=runtime.runner,
            runners=runtime.runners or ([runtime.runner] if runtime.runner else []),
            replicas_wanted=runtime.replicas_wanted,
        ),
        engine=obj.engine,
        parameters_json=orjson.dumps(obj.parameters).decode(),
        metadata_json=orjson.dumps(metadata).decode(),
        binaries=[
            model_pb2.Binary(
                name=b.spec.name,
                url=b.spec.url,
                size=b.spec.size or b.size_on_disk,
                sha256=b.spec.sha256,
                present=b.present,
                external_path=b.spec.external_path,
            )
            for b in binaries
        ],
        path=str(obj.path.relative_to(root)),
    )


# --- files ------------------------------------------------------------------------------------------------


def dump_json(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("reserved", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        # The kernel writes its whole struct statx (256 bytes today); leave room for growth.
        ("spare", ctypes.c_uint64 * 48),
    ]


_STATX_BTIME = 0x800
_AT_FDCWD = -100
_statx: Any
try:
    _statx = ctypes.CDLL(None, use_errno=True).statx
except (AttributeError, OSError):  # not glibc >= 2.28 / not Linux
    _statx = None


def file_birth_time(path: Path) -> int:
    """The file's creation time (statx btime) where the filesystem keeps one, else its oldest timestamp."""
    if _statx is not None:
        buf = _Statx()
        if _statx(_AT_FDCWD, os.fsencode(path), 0, _STATX_BTIME, ctypes.byref(buf)) == 0:
            if buf.stx_mask & _STATX_BTIME and buf.stx_btime.tv_sec > 0:
                return int(buf.stx_btime.tv_sec)
    try:
        st = path.stat()
    except OSError:
        return 0
    return int(min(st.st_mtime, st.st_ctime))
