"""The REST shapes of model management (model objects, states, downloads, imports, running models) and
the pure conversions between them and the services' protobuf messages."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.protocol.common import JsonObject, StrictBoolsModel
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.downloader.v1 import downloader_service_pb2 as downloader_pb
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb

STATE_NAMES = {
    model_pb2.MODEL_STATE_NOT_DOWNLOADED: "not-downloaded",
    model_pb2.MODEL_STATE_DOWNLOADING: "downloading",
    model_pb2.MODEL_STATE_STOPPED: "stopped",
    model_pb2.MODEL_STATE_RUNNING: "running",
}
STATE_VALUES = {name: value for value, name in STATE_NAMES.items()}
State = Literal["running", "stopped", "not-downloaded", "downloading"]
IMPORT_MODES = {
    "link": catalog_pb.IMPORT_MODE_LINK,
    "copy": catalog_pb.IMPORT_MODE_COPY,
    "symlink": catalog_pb.IMPORT_MODE_SYMLINK,
}


# --- response shapes (for the OpenAPI document; responses are serialised by the functions below) ------


class ModelOut(BaseModel):
    """The Jan Model Object as the API returns it (a superset of OpenAI's model object)."""

    id: str = Field(description="'<folder>/<file>': the json file's place under models/.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds: the json file's creation time.")
    owned_by: str
    name: str
    description: str
    state: State
    parameters: dict[str, Any]
    metadata: dict[str, Any] = Field(
        description="The json's metadata with `engine` (default llamacpp) and `capabilities`: what the model "
        "can do (completion, embedding, vision, tools, reasoning), the json's own array or else derived by "
        "the catalog."
    )


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
    first_id: str | None = Field(default=None, description="With limit or after: the page's first id.")
    last_id: str | None = Field(
        default=None, description="With limit or after: the `after` of the next page."
    )
    has_more: bool | None = Field(default=None, description="With limit or after: more models follow.")


class DeletedOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class StateOut(BaseModel):
    id: str
    object: Literal["model.state"] = "model.state"
    state: State
    reason: str = Field(description="Why the model is in this state (e.g. which binary is missing).")
    bytes_done: int
    bytes_total: int
    runner: str = Field(description="The runner hosting the model (the first replica's), when running.")
    runners: list[str] = Field(description="Every runner hosting a replica, when running.")
    replicas_wanted: int = Field(
        description="Replicas the model was started with (parameters.replicas or the start's); 0 when not "
        "started through this catalog. A reason says so when fewer run."
    )


class BinaryOut(BaseModel):
    name: str
    url: str
    size: int
    sha256: str
    present: bool
    external_path: str


class MetadataOut(BaseModel):
    id: str
    object: Literal["model.metadata"] = "model.metadata"
    source_url: str
    engine: str
    path: str
    metadata: dict[str, Any]
    binaries: list[BinaryOut]


class ProblemOut(BaseModel):
    path: str
    id: str
    reason: str


class ProblemListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ProblemOut]


class ImportOut(BaseModel):
    folder: str
    data: list[ModelOut]
    problems: list[ProblemOut]


Phase = Literal[
    "queued", "connecting", "downloading", "verifying", "storing", "done", "failed", "cancelled", "paused"
]
PHASE_NAMES: dict[int, str] = {
    value: name.removeprefix("PHASE_").lower()
    for name, value in downloader_pb.Phase.items()
    if value != downloader_pb.PHASE_UNSPECIFIED
}


class FileProgressOut(BaseModel):
    name: str
    url: str
    phase: Phase
    bytes_done: int
    bytes_total: int
    sha256: str
    error: str


class DownloadOut(BaseModel):
    """A model's download job."""

    object: Literal["model.download"] = "model.download"
    model_id: str
    phase: Phase
    bytes_done: int
    bytes_total: int = Field(description="0 while unknown.")
    bytes_per_second: float
    eta_seconds: float = Field(description="Negative while unknown.")
    files: list[FileProgressOut]
    error: str
    error_code: str
    created: int
    updated: int


class DownloadListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[DownloadOut]


class RepoImportOut(BaseModel):
    object: Literal["list"] = "list"
    folder: str
    data: list[ModelOut]


class SkippedOut(BaseModel):
    path: str
    reason: str


class DirectoryImportOut(BaseModel):
    """A local directory imported in place: every model of it, those new, and what was not imported."""

    object: Literal["list"] = "list"
    folder: str = Field(description="The first of `folders` ('' when none).")
    folders: list[str]
    data: list[ModelOut] = Field(description="Every model of the directory, new or imported before.")
    created: list[str] = Field(description="Ids of the models this import created.")
    skipped: list[SkippedOut]


class StorageOut(BaseModel):
    """What the binaries take, against what the models add up to."""

    object: Literal["storage"] = "storage"
    backend: Literal["local", "s3"]
    stored_bytes: int = Field(description="Bytes kept for the binaries, each content once.")
    contents: int = Field(description="Distinct contents stored.")
    binary_bytes: int = Field(description="Bytes of every folder's binaries, each counted.")
    binaries: int
    linked_bytes: int = Field(description="Of binary_bytes: links to the user's own files (in place).")
    model_bytes: int = Field(description="Sum of the models' sizes (a binary two models use counts twice).")
    models: int
    saved_bytes: int = Field(description="model_bytes not stored: shared contents and files used in place.")


# --- request shapes ---------------------------------------------------------------------------------------


class CreateModelIn(StrictBoolsModel):
    model_config = ConfigDict(extra="forbid")

    source_url: str = Field(description="An http(s) URL of a model file, or an absolute local file path.")
    id: str | None = Field(
        default=None, description="'<folder>/<file>'; derived from the file name if absent."
    )
    name: str | None = None
    description: str | None = None
    parameters: JsonObject = None
    metadata: JsonObject = None
    import_mode: Literal["link", "copy", "symlink"] = Field(
        default="link", description="Local files: hard link (else symbolic link), copy, or symbolic link."
    )


class RemoteImportIn(StrictBoolsModel):
    """Model objects of the api engine for a remote API's models (see docs/engines.md)."""

    model_config = ConfigDict(extra="forbid")

    importer: Literal["openai", "azure_openai"]
    base_url: str = Field(
        description="OpenAI-compatible: the API's base URL (https://api.openai.com/v1); Azure: the resource."
    )
    api_key: str = Field(default="", description='Plain text, "env:NAME" or "file:/path" (for runners).')
    folder: str | None = Field(default=None, description="Folder of the new objects (default: the host).")
    models: list[str] | None = Field(
        default=None, description="Remote model ids / Azure deployments; default: the remote's list (openai)."
    )
    api_version: str | None = Field(default=None, description="Azure's api-version.")


def remote_import_request(body: RemoteImportIn) -> catalog_pb.ImportRemoteModelsRequest:
    return catalog_pb.ImportRemoteModelsRequest(
        importer=body.importer,
        base_url=body.base_url,
        api_key=body.api_key,
        folder=body.folder or "",
        models=body.models or [],
        api_version=body.api_version or "",
    )


class UpdateModelIn(StrictBoolsModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str | None = None
    parameters: JsonObject = Field(default=None, description="JSON merge patch (null deletes).")
    metadata: JsonObject = Field(default=None, description="JSON merge patch (null deletes).")


def create_request(body: CreateModelIn) -> catalog_pb.CreateModelRequest:
    req = catalog_pb.CreateModelRequest(
        id=body.id or "",
        source_url=body.source_url,
        parameters_json=orjson.dumps(body.parameters).decode() if body.parameters is not None else "",
        metadata_json=orjson.dumps(body.metadata).decode() if body.metadata is not None else "",
        import_mode=IMPORT_MODES[body.import_mode],  # type: ignore[arg-type]
    )
    if body.name is not None:
        req.name = body.name
    if body.description is not None:
        req.description = body.description
    return req


def update_request(model_id: str, body: UpdateModelIn) -> catalog_pb.UpdateModelRequest:
    fields = body.model_fields_set
    req = catalog_pb.UpdateModelRequest(
        id=model_id,
        parameters_patch_json=orjson.dumps(body.parameters).decode() if "parameters" in fields else "",
        metadata_patch_json=orjson.dumps(body.metadata).decode() if "metadata" in fields else "",
    )
    if body.name is not None:
        req.name = body.name
    if body.description is not None:
        req.description = body.description
    return req


# --- responses --------------------------------------------------------------------------------------------

# Parameters holding credentials (an api model's "API-KEY" ...): never shown, only whether one is set.
# "env:NAME" / "file:/path" references name where the secret lives and are shown as they are.
SECRET_PARAMETER = re.compile(
    r"api[-_]?key|secret|password|passwd|access[-_]?token|auth[-_]?token|authorization|^token$", re.IGNORECASE
)
_MAYBE_SECRET = re.compile(
    r'"[^"]*(?:api[-_]?key|secret|passw|access[-_]?token|auth[-_]?token|authorization|token)"\s*:',
    re.IGNORECASE,
)
MASK = "****"


def _masked(value: Any) -> Any:
    if isinstance(value, str) and value and not value.startswith(("env:", "file:")):
        return MASK
    return value if isinstance(value, str | type(None)) else MASK


def parameters_fragment(parameters_json: str) -> orjson.Fragment:
    """The parameters as they are, unless they hold a credential: then with it masked. The text is parsed
    only when a key name looks like one, so listing 10,000 models stays a copy of bytes."""
    text = parameters_json or "{}"
    if not _MAYBE_SECRET.search(text):
        return orjson.Fragment(text)
    params = orjson.loads(text)
    if not isinstance(params, dict):
        return orjson.Fragment(text)
    masked = {k: _masked(v) if SECRET_PARAMETER.search(k) else v for k, v in params.items()}
    return orjson.Fragment(orjson.dumps(masked))


def model_dict(m: model_pb2.Model) -> dict[str, Any]:
    # parameters/metadata arrive as JSON text and are embedded as they are (no parse/serialise round trip).
    return {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "name": m.name,
        "description": m.description,
        "state": STATE_NAMES.get(m.state, "not-downloaded"),
        "parameters": parameters_fragment(m.parameters_json),
        "metadata": orjson.Fragment(m.metadata_json or "{}"),
    }


def model_json(m: model_pb2.Model) -> bytes:
    return orjson.dumps(model_dict(m))


def model_list_entries(models: list[model_pb2.Model]) -> list[dict[str, Any]]:
    """model_dict of each model (inlined: this runs for every model of the catalog when it changes)."""
    names, fragment, parameters = STATE_NAMES, orjson.Fragment, parameters_fragment
    return [
        {
            "id": m.id,
            "object": "model",
            "created": m.created,
            "owned_by": m.owned_by,
            "name": m.name,
            "description": m.description,
            "state": names.get(m.state, "not-downloaded"),
            "parameters": parameters(m.parameters_json),
            "metadata": fragment(m.metadata_json or "{}"),
        }
        for m in models
    ]


def state_dict(m: model_pb2.Model) -> dict[str, Any]:
    d = m.state_detail
    return {
        "id": m.id,
        "object": "model.state",
        "state": STATE_NAMES.get(m.state, "not-downloaded"),
        "reason": d.reason,
        "bytes_done": d.bytes_done,
        "bytes_total": d.bytes_total,
        "runner": d.runner,
        "runners": list(d.runners),
        "replicas_wanted": d.replicas_wanted,
    }


def metadata_dict(m: model_pb2.Model) -> dict[str, Any]:
    return {
        "id": m.id,
        "object": "model.metadata",
        "source_url": m.source_url,
        "engine": m.engine,
        "path": m.path,
        "metadata": orjson.Fragment(m.metadata_json or "{}"),
        "binaries": [
            {
                "name": b.name,
                "url": b.url,
                "size": b.size,
                "sha256": b.sha256,
                "present": b.present,
                "external_path": b.external_path,
            }
            for b in m.binaries
        ],
    }


def job_dict(job: downloader_pb.Job) -> dict[str, Any]:
    return {
        "object": "model.download",
        "model_id": job.model_id,
        "phase": PHASE_NAMES.get(job.phase, "queued"),
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "bytes_per_second": round(job.bytes_per_second, 1),
        "eta_seconds": round(job.eta_seconds, 1),
        "files": [
            {
                "name": f.name,
                "url": f.url,
                "phase": PHASE_NAMES.get(f.phase, "queued"),
                "bytes_done": f.bytes_done,
                "bytes_total": f.bytes_total,
                "sha256": f.sha256,
                "error": f.error,
            }
            for f in job.files
        ],
        "error": job.error,
        "error_code": job.error_code,
        "created": job.created,
        "updated": job.updated,
    }


def directory_import_json(d: catalog_pb.ImportedDirectory) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "folder": d.folders[0] if d.folders else "",
            "folders": list(d.folders),
            "data": [model_dict(m) for m in d.models],
            "created": list(d.created_ids),
            "skipped": [{"path": s.path, "reason": s.reason} for s in d.skipped],
        }
    )


def storage_json(u: catalog_pb.GetStorageUsageResponse) -> bytes:
    return orjson.dumps(
        {
            "object": "storage",
            "backend": u.backend,
            "stored_bytes": u.stored_bytes,
            "contents": u.contents,
            "binary_bytes": u.binary_bytes,
            "binaries": u.binaries,
            "linked_bytes": u.linked_bytes,
            "model_bytes": u.model_bytes,
            "models": u.models,
            "saved_bytes": max(0, u.model_bytes - u.stored_bytes),
        }
    )


def is_hf_repo_url(url: str, endpoint: str = "") -> bool:
    """https://huggingface.co/<org>/<repo> (or .../tree/<rev>), or the same on the host of `endpoint` (a
    Hub mirror, HF_ENDPOINT): a whole repository, not one file."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    path = parts.path
    mirror = urlsplit(endpoint) if endpoint else None
    if parts.hostname in ("huggingface.co", "hf.co", "www.huggingface.co"):
        pass
    elif mirror is not None and parts.hostname == mirror.hostname and parts.port == mirror.port:
        base = mirror.path.rstrip("/")
        if base and not (path == base or path.startswith(base + "/")):
            return False
        path = path[len(base) :]
    else:
        return False
    segments = [s for s in path.split("/") if s]
    if mirror is not None and segments and segments[-1].lower().endswith(".gguf"):
        return False  # a mirror may also serve plain files: <host>/files/model.gguf is one of them
    return len(segments) == 2 or (len(segments) >= 3 and segments[2] == "tree")


def problem_dict(p: model_pb2.Problem) -> dict[str, Any]:
    return {"path": p.path, "id": p.id, "reason": p.reason}


# --- running models ------------------------------------------------------------------------------------


class StartIn(StrictBoolsModel):
    model_config = ConfigDict(extra="forbid")

    parameters: JsonObject = Field(default=None, description="Run-parameter overrides (ctx_len ...).")
    keep_alive: float | str | None = None


class RunningOut(BaseModel):
    model_id: str
    runner: str
    engine: str
    memory_bytes: int
    expires_at: float = Field(description="Unix seconds when it unloads if idle; 0 = never or busy.")
    active: int
    queued: int
    parameters: dict[str, Any] = Field(description="The parameters it was loaded with (ctx_len, ...).")


class RunningListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunningOut]


# --- memory fit ----------------------------------------------------------------------------------------

FIT_NAMES = {runner_pb.FIT_FITS: "fits", runner_pb.FIT_TIGHT: "tight", runner_pb.FIT_WONT_FIT: "wont_fit"}
BASIS_NAMES = {
    runner_pb.MEMORY_BASIS_HEADER: "header",
    runner_pb.MEMORY_BASIS_SIZE: "size",
    runner_pb.MEMORY_BASIS_REMOTE: "remote",
}


class FitOut(BaseModel):
    id: str
    fit: Literal["fits", "tight", "wont_fit"] | None = Field(
        description="fits: loads beside the models loaded now (or is loaded); tight: within the runner's "
        "budget once idle models are unloaded (a start does that); wont_fit: more than the whole budget. "
        "null: no estimate (`reason` says why)."
    )
    estimate_bytes: int = Field(description="Memory it would take loaded (weights, KV cache, buffers).")
    budget_bytes: int = Field(description="The runner's memory budget.")
    free_bytes: int = Field(description="The runner's budget less what its loaded models use now.")
    runner: str = Field(description="The runner this answer comes from: where the model fits best.")
    basis: Literal["header", "size", "remote"] | None = Field(
        description="header: the binaries on the runner and their GGUF header; size: sizes only (not "
        "downloaded there: metadata.size or the binaries' sizes) with a 7B-class KV cache; remote: the "
        "model runs elsewhere (api, tensorrt)."
    )
    loaded: bool = Field(description="It is loaded on that runner.")
    reason: str | None = Field(default=None, description="Why there is no estimate.")


class FitListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[FitOut]
    reason: str | None = Field(default=None, description="Why `data` is empty when no runner answered.")


def fit_dict(reply: runner_pb.EstimateModelsResponse, e: runner_pb.ModelEstimate) -> dict[str, Any]:
    return {
        "id": e.model_id,
        "fit": FIT_NAMES.get(e.fit),
        "estimate_bytes": e.memory_bytes,
        "budget_bytes": reply.memory_budget_bytes,
        "free_bytes": max(0, reply.memory_budget_bytes - reply.memory_used_bytes),
        "runner": reply.runner,
        "basis": BASIS_NAMES.get(e.basis),
        "loaded": e.loaded,
        "reason": e.error or None,
    }


def fit_list_json(
    answers: list[tuple[runner_pb.EstimateModelsResponse, runner_pb.ModelEstimate]], reason: str | None
) -> bytes:
    data = sorted((fit_dict(reply, e) for reply, e in answers), key=lambda d: d["id"])
    return orjson.dumps({"object": "list", "data": data, "reason": reason})
