"""The `api` engine: a model served by a remote OpenAI-compatible API or an Azure OpenAI resource.

Nothing is loaded locally: "loading" resolves the key, checks the address against the URL rules and
(OpenAI-style remotes) that the remote accepts the key; generation forwards the request and streams the
remote's deltas back, with its usage and finish reason. The remote's failures become the runner's
errors (see `remote_error`): a rejected key or an unknown remote model is a bad gateway (502), a rate
limit stays 429, a remote that fails, cannot be reached or is too slow is 503/504.

What is forwarded: the sampling fields the request or the model object set (`Sampling.given`: top_k,
min_p and repeat_penalty too, which llama-server and vLLM honour and OpenAI refuses with a 400),
`response_format`, `tools`/`tool_choice`/`parallel_tool_calls`, `logprobs`/`top_logprobs`, `n` and
`logit_bias`; a GBNF grammar is refused (OpenAI's API has none). What comes back, per choice: text,
thinking (`reasoning_content` or `reasoning`; put back between <think> and </think> when reasoning is
inline), tool-call pieces, log-probs and the finish reason. Each choice ends with its own final delta;
all of them carry the prompt's token counts, and the remote's completion count goes whole on the last
one (0 on the others), so their sum is the remote's. A remote that answers without what it was asked
for (fewer choices than `n`, text without log-probs, no call where tool_choice requires one) is an
InvalidArgument naming the field, not an answer that pretends. Stop strings: the first 4 are sent (OpenAI's
limit) and all are applied here too; which one ended a choice (Delta.stop_sequence) is known only when it
was cut here, since a remote that applied one itself says "stop" and not which.

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
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from services.common import netsafety
from services.common.api_source import ApiSource, parse_api_source
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    JanError,
    ResourceExhausted,
    Unavailable,
)
from services.runner.engines.base import (
    Constraint,
    Delta,
    Engine,
    GenerateRequest,
    LoadSpec,
    MemoryEstimate,
    TokenLogprob,
    ToolCallDelta,
    ToolChoice,
    TopLogprob,
)
from services.runner.engines.prompt import StopFilter, reported_stop
from services.runner.engines.tools import tools_for_template, validate_tools
from services.runner.settings import RunnerSettings

log = logging.getLogger(__name__)

KEY_NAMES = ("API-KEY", "api_key", "api-key")
DEFAULT_SLOTS = 8  # requests forwarded at once; the remote does the real scheduling
OPENAI_STOP_LIMIT = 4  # OpenAI refuses more stop strings; the rest are applied here
# Sampling fields and the request keys they are sent as. repeat_penalty goes under llama-server's name and
# vLLM's (each ignores the other's); OpenAI itself refuses all three non-OpenAI fields with a 400.
SAMPLING_FIELDS: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "top_k": ("top_k",),
    "min_p": ("min_p",),
    "presence_penalty": ("presence_penalty",),
    "frequency_penalty": ("frequency_penalty",),
    "repeat_penalty": ("repeat_penalty", "repetition_penalty"),
}
# The remote's finish reasons as the runner's ("content_filter" has no name of its own there).
FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls"}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Target(ApiSource):
    """Where a model object's requests go, and how they are addressed there."""

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
    return Target(**asdict(parse_api_source(source_url, parameters)))


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
    from services.common.safehttp import safe_session  # DNS-pinning, address rules at connect time

    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.api_connect_timeout_s, sock_read=settings.api_read_timeout_s
    )
    return safe_session(settings.allow_private_networks, timeout=timeout)


class ApiEngine(Engine):
    name = "api"
    # Not "grammar": OpenAI's API has no GBNF.
    features = frozenset({"constraint", "tools", "logprobs", "n", "logit_bias"})

    def __init__(self, spec: LoadSpec, settings: RunnerSettings) -> None:
        super().__init__(spec)
        self.settings = settings
        self.target = parse_target(spec.source_url, spec.parameters)
        self.n_parallel = max(1, int(spec.parameters.get("n_parallel") or DEFAULT_SLOTS))
        self._slots = asyncio.Semaphore(self.n_parallel)
        self._key = ""
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def estimate(cls, spec: LoadSpec) -> MemoryEstimate:
        return MemoryEstimate(0, "remote")  # the model lives on the remote

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
        allow_private = self.settings.allow_private_networks
        await asyncio.to_thread(netsafety.require_safe_url, self.target.base, allow_private=allow_private)
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
        chat = request.messages is not None
        if chat:
            operation = "chat/completions"
            body["messages"] = request.messages
        else:
            operation = "completions"
            body["prompt"] = request.prompt or ""
        # Only what the request or the model object set: a default sent as if asked for would override the
        # remote's own default, and a field the remote does not know should fail only when it was asked for.
        for name, keys in SAMPLING_FIELDS.items():
            if name in s.given:
                body.update(dict.fromkeys(keys, getattr(s, name)))
        if s.max_tokens > 0:
            body["max_tokens"] = s.max_tokens
        if s.stop:
            body["stop"] = list(s.stop[:OPENAI_STOP_LIMIT])
        if s.seed is not None:
            body["seed"] = s.seed
        if request.constraint is not None:
            body["response_format"] = response_format(request.constraint)
        if request.tools or request.tool_choice.mode in ("required", "function"):
            if not chat:
                raise InvalidArgument("tools need chat messages, not a prompt", param="tools")
            validate_tools(request.tools, request.tool_choice)
            body["tools"] = tools_for_template(request.tools)
            body["tool_choice"] = tool_choice(request.tool_choice)
            body["parallel_tool_calls"] = request.parallel_tool_calls
        elif not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
        if request.logprobs or request.top_logprobs:
            if chat:
                # top_logprobs goes even when 0: llama_cpp.server returns no log-probs at all without it.
                body.update(logprobs=True, top_logprobs=request.top_logprobs)
            else:
                body["logprobs"] = request.top_logprobs  # the legacy API: how many alternatives
        if request.n > 1:
            body["n"] = request.n
        if request.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in request.logit_bias.items()}
        return operation, body

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Delta, None]:
        operation, body = self._body(request)
        chat = operation == "chat/completions"
        choices: dict[int, ChoiceStream] = {}
        usage: dict[str, Any] = {}
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
                    if isinstance(event.get("usage"), dict):
                        usage = event["usage"]
                    for raw in event.get("choices") or []:
                        if not isinstance(raw, dict):
                            continue
                        index = int(raw.get("index") or 0)
                        if index not in choices:
                            choices[index] = ChoiceStream(index, request, chat)
                        delta = choices[index].feed(raw)
                        if delta is not None:
                            yield delta
                    if stopped_here(choices, request.n):
                        break  # the remote would go on generating what nobody reads
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
        if not choices:
            choices[0] = ChoiceStream(0, request, chat)
        self._check_honoured(request, choices)
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        counted = usage.get("completion_tokens")
        last = max(choices)
        for index in sorted(choices):
            choice = choices[index]
            # The remote counts its tokens for all choices together: the whole count goes on the last
            # choice's final delta (0 on the others), so that the sum over the choices is the remote's.
            # Without a count (a stream cut here, a remote without usage), each choice counts its pieces.
            completion = (int(counted) if index == last else 0) if counted is not None else choice.pieces
            yield choice.final(prompt_tokens, completion, cached)

    def _check_honoured(self, request: GenerateRequest, choices: dict[int, ChoiceStream]) -> None:
        """A remote that ignored a field it was sent must not pass for one that honoured it (llama_cpp.server
        ignores `n`, and `tools` unless tool_choice names a function)."""

        def refuse(param: str, what: str) -> None:
            raise InvalidArgument(
                f"the remote API ({self.target.base}) {what}: it does not support {param}",
                code="remote_ignored_parameter",
                param=param,
            )

        if len(choices) < request.n:
            refuse("n", f"answered {len(choices)} of the {request.n} choices asked for")
        if (request.logprobs or request.top_logprobs) and any(
            c.texts and not c.logprobs for c in choices.values()
        ):
            refuse("logprobs", "sent text without its log-probabilities")
        mode = request.tool_choice.mode
        # A choice cut by max_tokens before it wrote anything cannot tell.
        if mode in ("required", "function") and any(
            not c.calls and (c.texts or c.finish != "length") for c in choices.values()
        ):
            refuse("tool_choice", f"answered without the tool call that tool_choice {mode!r} asks for")

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


def response_format(constraint: Constraint) -> dict[str, Any]:
    """OpenAI's `response_format` of a constraint (a GBNF grammar has none: the core refuses it first)."""
    if constraint.kind == "json_object":
        return {"type": "json_object"}
    if constraint.kind == "json_schema":
        # The runner's constraint keeps no schema name: OpenAI requires one, any name will do.
        schema = {"name": "response", "schema": constraint.schema or {}, "strict": True}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidArgument(
        "a GBNF grammar is not part of the OpenAI API that remote models speak: use response_format",
        code="unsupported_parameter",
        param="grammar",
    )


def tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def token_logprobs(raw: Any, chat: bool, top: int) -> list[TokenLogprob]:
    """The log-probs of a remote choice: chat's `logprobs.content` items, or the legacy completions object
    (parallel lists `tokens`, `token_logprobs`, `top_logprobs` of {token: logprob})."""
    if not isinstance(raw, dict):
        return []
    if chat:
        return [
            TokenLogprob(
                token=str(item.get("token") or ""),
                bytes=_bytes(item),
                logprob=_float(item.get("logprob")),
                top=tuple(
                    TopLogprob(
                        token=str(t.get("token") or ""), bytes=_bytes(t), logprob=_float(t.get("logprob"))
                    )
                    for t in (item.get("top_logprobs") or [])[:top]
                    if isinstance(t, dict)
                ),
            )
            for item in raw.get("content") or []
            if isinstance(item, dict)
        ]
    tokens, values, tops = (raw.get(k) or [] for k in ("tokens", "token_logprobs", "top_logprobs"))
    out = []
    for i, token in enumerate(tokens):
        alternatives = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        # Remotes add the sampled token to the alternatives (up to logprobs + 1): the best `top` remain.
        best = sorted(alternatives.items(), key=lambda kv: -_float(kv[1]))[:top]
        out.append(
            TokenLogprob(
                token=str(token),
                bytes=str(token).encode(),
                logprob=_float(values[i] if i < len(values) else None),
                top=tuple(
                    TopLogprob(token=str(t), bytes=str(t).encode(), logprob=_float(v)) for t, v in best
                ),
            )
        )
    return out


def _bytes(item: dict[str, Any]) -> bytes:
    raw = item.get("bytes")
    if isinstance(raw, list):
        with contextlib.suppress(TypeError, ValueError):
            return bytes(raw)
    return str(item.get("token") or "").encode()


def _float(value: Any) -> float:
    # None is the first prompt token's log-prob with `echo`, which is never asked for here.
    return float(value) if value is not None else 0.0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


class ChoiceStream:
    """One choice of a remote's answer: its local stop strings, thinking put back into the text when
    reasoning is inline, tool-call pieces, and log-probs held until the text they belong to is sent (text
    held back by a stop string would otherwise leave them on a delta without text)."""

    def __init__(self, index: int, request: GenerateRequest, chat: bool) -> None:
        self.index = index
        self.chat = chat
        self.inline = request.reasoning == "inline"
        self.top = request.top_logprobs
        self.configured = request.sampling.stop
        self.stops = StopFilter(self.configured)
        self.thinking = False  # inside an inline <think> block
        self.calls: set[int] = set()  # tool calls whose first piece (id, name) was sent
        self.pending: list[TokenLogprob] = []
        self.pieces = 0  # remote deltas that carried output: the token count when the remote gives none
        self.texts = 0  # of which carried text
        self.logprobs = 0
        self.finish: str | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    def feed(self, raw: dict[str, Any]) -> Delta | None:
        """The delta of one remote choice event, or None when there is nothing to send yet."""
        if self.done:
            return None
        logprobs = token_logprobs(raw.get("logprobs"), self.chat, self.top)
        self.pending += logprobs
        self.logprobs += len(logprobs)
        if self.chat:
            part = raw.get("delta") or raw.get("message") or {}
            # A refusal (structured outputs) is the only answer there is: it is shown, not dropped.
            content = _str(part.get("content")) + _str(part.get("refusal"))
            thought = _str(part.get("reasoning_content")) or _str(part.get("reasoning"))
            calls = self._calls(part.get("tool_calls"))
        else:
            content, thought, calls = _str(raw.get("text")), "", ()
        text = ""
        if thought and self.inline:
            text, thought = ("" if self.thinking else THINK_OPEN) + thought, ""
            self.thinking = True
        if content:
            text += THINK_CLOSE if self.thinking else ""
            text += content
            self.thinking = False
            self.texts += 1
        if text or thought or calls:
            self.pieces += 1
        out = self.stops.feed(text) if text else ""
        if self.stops.stopped:
            self.finish = "stop"
        elif raw.get("finish_reason"):
            self.finish = FINISH.get(str(raw["finish_reason"]), "stop")
        if not (out or thought or calls):
            return None
        sent: tuple[TokenLogprob, ...] = ()
        if out:
            sent, self.pending = tuple(self.pending), []
        return Delta(text=out, index=self.index, reasoning=thought, tool_calls=calls, logprobs=sent)

    def _calls(self, raw: Any) -> tuple[ToolCallDelta, ...]:
        if not isinstance(raw, list):
            return ()
        out = []
        for position, call in enumerate(raw):
            if not isinstance(call, dict):
                continue
            given = call.get("index")
            index = given if isinstance(given, int) else position  # a whole message's calls have no index
            function = call.get("function") or {}
            arguments = function.get("arguments") or ""
            if not isinstance(arguments, str):  # some remotes send the object itself
                arguments = orjson.dumps(arguments).decode()
            if index in self.calls:
                # Later pieces carry arguments only (llama_cpp.server repeats the id and name in each).
                if arguments:
                    out.append(ToolCallDelta(index=index, arguments=arguments))
                continue
            self.calls.add(index)
            call_id = str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}")  # the tool's answer refers to it
            out.append(ToolCallDelta(index, call_id, str(function.get("name") or ""), arguments))
        return tuple(out)

    def final(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Delta:
        text = self.stops.feed(THINK_CLOSE) if self.thinking and not self.stops.stopped else ""
        finish = self.finish or "stop"
        return Delta(
            text=text + self.stops.flush(),
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=cached_tokens,
            index=self.index,
            logprobs=tuple(self.pending),
            # Only what was cut here: a remote that applied a stop string itself says "stop" and not which.
            stop_sequence=reported_stop(self.stops.matched, self.configured) if finish == "stop" else "",
        )


def stopped_here(choices: dict[int, ChoiceStream], n: int) -> bool:
    """Every choice is over and one of them was cut here by a stop string (beyond OpenAI's 4, the remote
    was not sent): the remote may still be generating it."""
    return (
        len(choices) >= n
        and all(c.done for c in choices.values())
        and any(c.stops.stopped for c in choices.values())
    )
