"""Pure conversions between the internal messages and the OpenAI-style REST shapes."""

from __future__ import annotations

import base64
import re
import struct
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

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
    metadata: dict[str, Any]


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


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
    runner: str


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


# --- request shapes ---------------------------------------------------------------------------------------


def _encodable(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON object the services can take: orjson (which writes it on) refuses integers beyond 64 bits
    and nesting deeper than 255, which Python's parser accepts; refused here, that is a 422, not a 500."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"not a storable JSON object: {exc}") from None
    return value


JsonObject = Annotated[dict[str, Any] | None, AfterValidator(_encodable)]


class StrictBoolsModel(BaseModel):
    """A request body where `true`/`false` count only for boolean fields: pydantic would otherwise take
    `"temperature": true` as 1.0, which the OpenAPI document (and OpenAI) call invalid."""

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and not _accepts_bool(field.annotation):
                    raise ValueError(f"{name}: a boolean is not valid here")
        return data


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_accepts_bool(arg) for arg in get_args(annotation))


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


def model_list_json(models: list[model_pb2.Model]) -> bytes:
    # model_dict inlined: this runs for every model of GET /v1/models (10,000 in bench/catalog).
    names, fragment, parameters = STATE_NAMES, orjson.Fragment, parameters_fragment
    data = [
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
    return orjson.dumps({"object": "list", "data": data})


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


def is_hf_repo_url(url: str) -> bool:
    """https://huggingface.co/<org>/<repo> (or .../tree/<rev>): a whole repository, not one file."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in ("huggingface.co", "hf.co"):
        return False
    segments = [s for s in parts.path.split("/") if s]
    return len(segments) == 2 or (len(segments) >= 3 and segments[2] == "tree")


def problem_dict(p: model_pb2.Problem) -> dict[str, Any]:
    return {"path": p.path, "id": p.id, "reason": p.reason}


# --- inference (OpenAI chat/completions/embeddings) --------------------------------------------------------


def parse_keep_alive(value: float | str | None) -> float:
    """Ollama-style keep_alive: seconds, or "5m" / "1h" / "30s"; negative = forever; None = unchanged (0)."""
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        return float(value) if value != 0 else 1e-3  # 0 means: unload right after this request
    text = value.strip().lower()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].lstrip("-").replace(".", "", 1).isdigit():
            seconds = float(text[: -len(unit)]) * units[unit]
            return seconds if seconds != 0 else 1e-3
    try:
        return parse_keep_alive(float(text))
    except ValueError:
        raise ValueError(f'keep_alive {value!r} is not a duration (e.g. 300, "5m", "1h", -1)') from None


class SamplingIn(StrictBoolsModel):
    """Sampling fields shared by chat and completions; unset ones come from the model's parameters."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="The model id, '<folder>/<file>'.")
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    min_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repeat_penalty: float | None = Field(default=None, ge=0, le=10)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is supported.")
    stream_options: dict[str, Any] | None = None
    keep_alive: float | str | None = Field(default=None, description="How long the model stays loaded after.")

    def sampling(self) -> runner_pb.Sampling:
        s = runner_pb.Sampling()
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        ):
            value = getattr(self, name)
            if value is not None:
                setattr(s, name, value)
        if self.repeat_penalty is not None:
            s.repeat_penalty = self.repeat_penalty
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            s.max_tokens = max_tokens
        if self.stop:
            s.stop.extend([self.stop] if isinstance(self.stop, str) else self.stop)
        return s

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = [p.get("text", "") for p in self.content if p.get("type") == "text"]
        if len(parts) != len(self.content):
            raise ValueError("only text content parts are supported")
        return "".join(parts)


class ChatCompletionIn(SamplingIn):
    messages: list[ChatMessageIn] = Field(min_length=1)


class CompletionIn(SamplingIn):
    prompt: str | list[str]
    echo: bool = False


class EmbeddingIn(StrictBoolsModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    keep_alive: float | str | None = None


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoiceOut(BaseModel):
    index: int
    message: dict[str, Any]
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoiceOut]
    usage: UsageOut


class CompletionChoiceOut(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionOut(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoiceOut]
    usage: UsageOut


class EmbeddingDataOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingDataOut]
    model: str
    usage: dict[str, int]


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


class RunningListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunningOut]


FINISH_NAMES = {runner_pb.FINISH_REASON_STOP: "stop", runner_pb.FINISH_REASON_LENGTH: "length"}


def chat_request(body: ChatCompletionIn) -> runner_pb.GenerateRequest:
    messages = []
    for m in body.messages:
        role = "system" if m.role == "developer" else m.role
        messages.append(runner_pb.ChatMessage(role=role, content=m.text()))
    return runner_pb.GenerateRequest(
        model_id=body.model,
        chat=runner_pb.ChatMessages(messages=messages),
        sampling=body.sampling(),
        keep_alive_s=parse_keep_alive(body.keep_alive),
    )


def completion_request(body: CompletionIn) -> runner_pb.GenerateRequest:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ValueError("one prompt per request")
        prompt = prompt[0]
    return runner_pb.GenerateRequest(
        model_id=body.model,
        text=prompt,
        sampling=body.sampling(),
        keep_alive_s=parse_keep_alive(body.keep_alive),
    )


def usage_dict(usage: runner_pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def chat_completion(
    cid: str, created: int, model: str, text: str, last: runner_pb.GenerateResponse
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": FINISH_NAMES.get(last.finish_reason, "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_dict(last.usage),
    }


def chat_chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def text_completion(
    cid: str, created: int, model: str, text: str, last: runner_pb.GenerateResponse
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "finish_reason": FINISH_NAMES.get(last.finish_reason, "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_dict(last.usage),
    }


def text_chunk(cid: str, created: int, model: str, text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def embedding_list(model: str, reply: runner_pb.EmbedResponse, encoding: str) -> dict[str, Any]:
    data = []
    for i, e in enumerate(reply.embeddings):
        values: list[float] | str = list(e.values)
        if encoding == "base64":
            values = base64.b64encode(struct.pack(f"<{len(e.values)}f", *e.values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": values})
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
