"""The `api` engine: a model served by a remote OpenAI-compatible API or an Azure OpenAI resource.

Nothing is loaded locally: "loading" resolves the key, checks the address against the URL rules and
(OpenAI-style remotes) that the remote accepts the key; generation forwards the request and streams the
remote's deltas back, with its usage and finish reason. The remote's failures become the runner's
errors (see `remote_error`): a rejected key or an unknown remote model is a bad gateway (502), a rate
limit stays 429, a remote that fails, cannot be reached or is too slow is 503/504.

Model objects:
- OpenAI-compatible: `source_url` `<base>/models/<remote-model-id>` (`https://api.openai.com/v1/models/gpt-4o-mini`),
  key in `parameters["API-KEY"]` (sent as `Authorization: Bearer`).
- Azure OpenAI: `parameters["DEPLOYMENT-NAME"]` and `parameters["api-version"]` (or a host
  `*.openai.azure.com`, or a source_url with `/openai/deployments/<name>`); requests go to
  `<resource>/openai/deployments/<name>/chat/completions?api-version=…` with the `api-key` header.

A key may be plain text, `env:NAME` or `file:/path` (RunnerSettings.secret): it never leaves this module
except in the request headers, and `effective_parameters` masks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import orjson

from services.common import netsafety
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    JanError,
    ResourceExhausted,
    Unavailable,
)
from services.runner.engines.base import Delta, Engine, GenerateRequest, LoadSpec
from services.runner.engines.prompt import StopFilter
from services.runner.settings import RunnerSettings

log = logging.getLogger(__name__)

KEY_NAMES = ("API-KEY", "api_key", "api-key")
AZURE_DEFAULT_API_VERSION = "2024-10-21"
DEFAULT_SLOTS = 8  # requests forwarded at once; the remote does the real scheduling
OPENAI_STOP_LIMIT = 4  # OpenAI refuses more stop strings; the rest are applied here


@dataclass(frozen=True)
class Target:
    """Where a model object's requests go."""

    kind: str  # "openai" | "azure"
    base: str  # OpenAI: ".../v1"; Azure: "https://<resource>.openai.azure.com"
    model: str  # the remote model id, or the Azure deployment name
    api_version: str = ""

    def url(self, operation: str) -> str:
        """operation: "chat/completions", "completions", "embeddings" or "models"."""
        if self.kind == "azure":
            if operation == "models":
                return f"{self.base}/openai/models?api-version={quote(self.api_version)}"
            deployment, version = quote(self.model, safe=""), quote(self.api_version)
            return f"{self.base}/openai/deployments/{deployment}/{operation}?api-version={version}"
        return f"{self.base}/{operation}"

    def headers(self, key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if key:
            if self.kind == "azure":
                headers["api-key"] = key
            else:
                headers["Authorization"] = f"Bearer {key}"
        return headers


def api_key_parameter(parameters: dict[str, Any]) -> str:
    for name in KEY_NAMES:
        value = parameters.get(name)
        if value:
            return str(value)
    return ""


def parse_target(source_url: str, parameters: dict[str, Any]) -> Target:
    """The remote of an `api` model object; InvalidArgument when the object does not say enough."""
    parts = urlsplit(source_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            "an api model's source_url must be the remote's http(s) URL "
            "(<base>/models/<model-id>, or an Azure OpenAI resource)",
            code="invalid_source_url",
            param="source_url",
        )
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    deployment = str(parameters.get("DEPLOYMENT-NAME") or parameters.get("deployment_name") or "")
    azure = (
        bool(deployment)
        or parts.hostname.endswith(".openai.azure.com")
        or "/openai/deployments/" in path
        or "api-version" in parameters
    )
    if azure:
        if not deployment and "/openai/deployments/" in path:
            deployment = path.split("/openai/deployments/", 1)[1].split("/", 1)[0]
        if not deployment:
            deployment = path.rsplit("/", 1)[-1]
        if not deployment:
            raise InvalidArgument(
                "an Azure OpenAI model needs parameters.DEPLOYMENT-NAME", param="DEPLOYMENT-NAME"
            )
        version = str(
            parameters.get("api-version")
            or parameters.get("api_version")
            or (parse_qs(parts.query).get("api-version") or [AZURE_DEFAULT_API_VERSION])[0]
        )
        return Target("azure", origin, deployment, version)
    if "/models/" not in path + "/":
        model = str(parameters.get("model") or "")
        if not model:
            raise InvalidArgument(
                "an api model's source_url must name the remote model: <base>/models/<model-id>",
                code="invalid_source_url",
                param="source_url",
            )
        return Target("openai", origin + path, model)
    at = path.find("/models/")
    base, model = path[:at], path[at + len("/models/") :]
    if not model:
        raise InvalidArgument(
            "the source_url names no remote model after /models/",
            code="invalid_source_url",
            param="source_url",
        )
    return Target("openai", origin + base, str(parameters.get("model") or model))


def remote_error(status: int, body: bytes, target: Target, retry_after: str | None = None) -> JanError:
    """The runner's error for a remote's HTTP error (the message never repeats the key)."""
    where = f"the remote API ({target.base})"
    detail = ""
    with contextlib.suppress(Exception):
        parsed = orjson.loads(body)
        err = parsed.get("error", parsed) if isinstance(parsed, dict) else {}
        detail = str(err.get("message") or err.get("detail") or "") if isinstance(err, dict) else str(err)
    detail = detail[:300]
    if status in (401, 403):
        # The remote's own text may echo part of the key: it is not passed on.
        return FailedPrecondition(
            f"{where} rejected the key (HTTP {status}): check parameters.API-KEY",
            code="remote_auth_failed",
        )
    if status == 404:
        return FailedPrecondition(
            f"{where} does not know the model {target.model!r} (HTTP 404){': ' + detail if detail else ''}",
            code="remote_model_not_found",
        )
    if status == 429:
        wait = f"; retry after {retry_after} s" if retry_after else ""
        return ResourceExhausted(
            f"{where} is rate limiting requests (HTTP 429){wait}{': ' + detail if detail else ''}",
            code="remote_rate_limited",
        )
    if status in (400, 413, 422):
        return InvalidArgument(
            f"{where} refused the request (HTTP {status}){': ' + detail if detail else ''}",
            code="remote_invalid_request",
        )
    if status >= 500:
        return Unavailable(
            f"{where} failed (HTTP {status}){': ' + detail if detail else ''}", code="remote_unavailable"
        )
    return FailedPrecondition(
        f"{where} answered HTTP {status}{': ' + detail if detail else ''}", code="remote_error"
    )


def make_session(settings: RunnerSettings) -> aiohttp.ClientSession:
    """An HTTP session that connects only to addresses the URL rules allow, checked at connect time."""
    from services.common.safehttp import SafeResolver  # DNS-pinning, address rules at connect time

    connector = aiohttp.TCPConnector(
        resolver=SafeResolver(settings.allow_private_networks), ttl_dns_cache=0, use_dns_cache=False
    )
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.api_connect_timeout_s, sock_read=settings.api_read_timeout_s
    )
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)


class ApiEngine(Engine):
    name = "api"

    def __init__(self, spec: LoadSpec, settings: RunnerSettings) -> None:
        super().__init__(spec)
        self.settings = settings
        self.target = parse_target(spec.source_url, spec.parameters)
        self.n_parallel = max(1, int(spec.parameters.get("n_parallel") or DEFAULT_SLOTS))
        self._slots = asyncio.Semaphore(self.n_parallel)
        self._key = ""
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def estimate_memory(cls, spec: LoadSpec) -> int:
        return 0  # the model lives on the remote

    @property
    def slots(self) -> int:
        return self.n_parallel

    @property
    def effective_parameters(self) -> dict[str, Any]:
        params = {k: v for k, v in self.spec.parameters.items() if k not in KEY_NAMES}
        if api_key_parameter(self.spec.parameters):
            params["API-KEY"] = "****"
        return {**params, "n_parallel": self.n_parallel, "remote": self.target.kind}

    # --- life cycle ---------------------------------------------------------------------------------------

    async def load(self) -> None:
        try:
            self._key = self.settings.secret(api_key_parameter(self.spec.parameters))
        except ValueError as exc:
            raise FailedPrecondition(str(exc), code="invalid_api_key_reference", param="API-KEY") from None
        try:
            await asyncio.to_thread(
                netsafety.check_source_url,
                self.target.base,
                allow_private=self.settings.allow_private_networks,
            )
        except netsafety.UnsafeURLError as exc:
            raise InvalidArgument(str(exc), code="unsafe_source_url", param="source_url") from None
        self._session = make_session(self.settings)
        if self.target.kind == "openai":
            await self._check_key()

    async def _check_key(self) -> None:
        """Fails the start at once when the remote cannot be reached or refuses the key (a listing that
        the remote does not offer is no reason to refuse)."""
        assert self._session is not None
        async with self._request("GET", self.target.url("models"), None) as resp:
            if resp.status in (401, 403):
                raise remote_error(resp.status, await resp.read(), self.target)

    async def unload(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- requests -----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _request(self, method: str, url: str, body: dict[str, Any] | None) -> AsyncIterator[Any]:
        if self._session is None:
            raise FailedPrecondition(f"{self.spec.model_id} is not loaded", code="model_not_loaded")
        try:
            async with self._session.request(
                method,
                url,
                data=orjson.dumps(body) if body is not None else None,
                headers=self.target.headers(self._key),
                allow_redirects=False,  # a redirect would carry the key elsewhere
            ) as resp:
                yield resp
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise Unavailable(
                f"the remote API ({self.target.base}) did not answer in time", code="remote_timeout"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(
                f"cannot connect to the remote API ({self.target.base}): {exc.os_error or exc}",
                code="remote_unreachable",
            ) from None
        except aiohttp.ClientError as exc:
            raise Unavailable(
                f"the connection to the remote API ({self.target.base}) failed: {type(exc).__name__}",
                code="remote_unavailable",
            ) from None

    def _body(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        s = request.sampling
        body: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
        if self.target.kind == "openai":
            body["model"] = self.target.model
        if request.messages is not None:
            operation = "chat/completions"
            body["messages"] = request.messages
        else:
            operation = "completions"
            body["prompt"] = request.prompt or ""
        body["temperature"] = s.temperature
        body["top_p"] = s.top_p
        if s.max_tokens > 0:
            body["max_tokens"] = s.max_tokens
        if s.stop:
            body["stop"] = list(s.stop[:OPENAI_STOP_LIMIT])
        if s.seed is not None:
            body["seed"] = s.seed
        if s.presence_penalty:
            body["presence_penalty"] = s.presence_penalty
        if s.frequency_penalty:
            body["frequency_penalty"] = s.frequency_penalty
        return operation, body

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Delta, None]:
        operation, body = self._body(request)
        chat = operation == "chat/completions"
        stops = StopFilter(request.sampling.stop)
        finish = "stop"
        prompt_tokens = completion_tokens = pieces = 0
        async with self._slots, self._request("POST", self.target.url(operation), body) as resp:
            if resp.status != 200:
                raise remote_error(
                    resp.status, await resp.read(), self.target, resp.headers.get("Retry-After")
                )
            if not resp.content_type.startswith("text/event-stream"):
                # A remote that ignores "stream": one whole answer.
                events: AsyncIterator[dict[str, Any]] = _one(orjson.loads(await resp.read()))
            else:
                events = _sse_events(resp.content, self.target)
            try:
                async for event in events:
                    usage = event.get("usage")
                    if isinstance(usage, dict):
                        prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        completion_tokens = int(usage.get("completion_tokens") or 0)
                    for choice in event.get("choices") or []:
                        if chat:
                            part = (choice.get("delta") or choice.get("message") or {}).get("content") or ""
                        else:
                            part = choice.get("text") or ""
                        if part:
                            pieces += 1
                            out = stops.feed(part)
                            if out:
                                yield Delta(text=out)
                            if stops.stopped:
                                break
                        if choice.get("finish_reason"):
                            finish = "length" if choice["finish_reason"] == "length" else "stop"
                    if stops.stopped:
                        finish = "stop"
                        break
            except (TimeoutError, aiohttp.ServerTimeoutError):
                raise Unavailable(
                    f"the remote API ({self.target.base}) stopped sending in the middle of an answer",
                    code="remote_timeout",
                ) from None
            except aiohttp.ClientError as exc:
                raise Unavailable(
                    f"the remote API ({self.target.base}) broke the stream: {type(exc).__name__}",
                    code="remote_unavailable",
                ) from None
        yield Delta(
            text=stops.flush(),
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens or pieces,
        )

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        body: dict[str, Any] = {"input": inputs, "encoding_format": "float"}
        if self.target.kind == "openai":
            body["model"] = self.target.model
        async with self._slots, self._request("POST", self.target.url("embeddings"), body) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise remote_error(resp.status, raw, self.target, resp.headers.get("Retry-After"))
        try:
            reply = orjson.loads(raw)
            data = sorted(reply["data"], key=lambda d: d.get("index", 0))
            vectors = [[float(x) for x in d["embedding"]] for d in data]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise Unavailable(
                f"the remote API ({self.target.base}) answered embeddings in an unknown shape",
                code="remote_unavailable",
            ) from None
        if len(vectors) != len(inputs):
            raise Unavailable(
                f"the remote API returned {len(vectors)} embeddings for {len(inputs)} inputs",
                code="remote_unavailable",
            )
        tokens = int((reply.get("usage") or {}).get("prompt_tokens") or 0)
        return vectors, tokens


async def _one(event: Any) -> AsyncIterator[dict[str, Any]]:
    if isinstance(event, dict):
        yield event


async def _sse_events(content: aiohttp.StreamReader, target: Target) -> AsyncIterator[dict[str, Any]]:
    """The `data:` events of a Server-Sent Events stream, parsed; an error event raises."""
    data: list[bytes] = []
    async for raw in content:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip())
            continue
        if line or not data:
            continue  # comments, "event:"/"id:" fields, keep-alive blank lines
        payload, data = b"\n".join(data), []
        if payload == b"[DONE]":
            return
        event = _event(payload, target)
        if event is not None:
            yield event
    if data and data != [b"[DONE]"]:  # a last event without its blank line
        event = _event(b"\n".join(data), target)
        if event is not None:
            yield event


def _event(payload: bytes, target: Target) -> dict[str, Any] | None:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if isinstance(event, dict) and event.get("error"):
        err = event["error"]
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise Unavailable(
            f"the remote API ({target.base}) failed in the middle of an answer: {str(message)[:300]}",
            code="remote_unavailable",
        )
    return event if isinstance(event, dict) else None
