"""A loopback fake of an Azure OpenAI resource: real sockets, real HTTP, Azure's URL shapes and header.

`FakeAzure` runs an aiohttp server in a background thread (its own event loop) on 127.0.0.1 and a free
port. It answers only `/openai/deployments/{name}/{chat/completions|completions|embeddings}` with an
`api-version` query and the `api-key` header (401 otherwise, 404 for an unknown deployment, in Azure's
error shape), in OpenAI's response shapes: streamed chunks (after Azure's prompt-filter event, with a
final usage chunk), or one answer. The text is generated here: the words of `WORDS` in turn, one per
token, up to `max_tokens`. The request's fields are honoured in OpenAI's wire shapes: `n` (choice i
starts i words further on, tokens interleaved), `response_format` (JSON valid for the schema, see
`instance`), `tools` (calls of the named tool, or of every tool unless `parallel_tool_calls` is false:
id, type and name first, then the arguments in pieces), `logprobs`/`top_logprobs` (chat and legacy
shapes, deterministic values), and usage with `prompt_tokens_details.cached_tokens` (the whole prompt
when the same prompt came before). `bodies` records every generation request's JSON body.

Deployments with special names: `thinker` streams `reasoning_content` before its answer, `unstreamed`
answers one JSON document even to a streaming request; and failures: `throttled` answers 429 with
`Retry-After`, `broken` answers 500, `slow` waits `slow_s` before answering, `cut` breaks a stream
after two tokens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
THOUGHT = ("Let", " me", " think")  # what the `thinker` deployment reasons before it answers


class FakeAzure:
    def __init__(
        self,
        *,
        key: str = "azure-test-key",
        deployments: tuple[str, ...] = ("gpt-4o-mini",),
        slow_s: float = 5,
    ) -> None:
        self.key = key
        self.deployments = set(deployments) | {"throttled", "broken", "slow", "cut", "thinker", "unstreamed"}
        self.slow_s = slow_s
        self.url = ""  # "http://127.0.0.1:PORT" once started
        self.requests: list[tuple[str, str, str]] = []  # (path, api-version, deployment)
        self.bodies: list[dict[str, Any]] = []  # the JSON bodies of chat/completions requests, in order
        self._prompts: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- life cycle ---------------------------------------------------------------------------------------

    def start(self) -> FakeAzure:
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._start_server())
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="FakeAzure", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Azure server did not start")
        return self

    async def _start_server(self) -> None:
        app = web.Application()
        app.router.add_post("/openai/deployments/{name}/{operation:.+}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)

        async def cancel_leftovers() -> None:
            # Handlers still sleeping ("slow") are cancelled and awaited, not abandoned.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_leftovers(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> FakeAzure:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- handlers -----------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
        body = orjson.dumps({"error": {"code": code, "message": message}})
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    async def _unknown(self, request: web.Request) -> web.Response:
        return self._error(404, "404", "Resource not found")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name, operation = request.match_info["name"], request.match_info["operation"]
        version = request.query.get("api-version", "")
        self.requests.append((request.path, version, name))
        if not version:
            return self._error(404, "404", "Resource not found")  # Azure's answer without api-version
        if request.headers.get("api-key") != self.key:
            return self._error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
                "a valid key for an active subscription and use a correct regional API endpoint.",
            )
        if name not in self.deployments:
            return self._error(
                404, "DeploymentNotFound", "The API deployment for this resource does not exist."
            )
        if name == "throttled":
            return self._error(429, "429", "Requests have exceeded the rate limit.", **{"Retry-After": "7"})
        if name == "broken":
            return self._error(500, "InternalServerError", "The server had an error.")
        if name == "slow":
            await asyncio.sleep(self.slow_s)
        body = orjson.loads(await request.read())
        if operation == "embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.5]}
                for i, t in enumerate(inputs)
            ]
            tokens = sum(len(t.split()) for t in inputs)
            return web.json_response(
                {
                    "object": "list",
                    "data": data,
                    "model": name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
                dumps=lambda o: orjson.dumps(o).decode(),
            )
        if operation not in ("chat/completions", "completions"):
            return self._error(404, "404", "Resource not found")
        self.bodies.append(body)
        return await self._generate(request, name, body, chat=operation == "chat/completions")

    # --- generation ---------------------------------------------------------------------------------------

    def _steps(self, name: str, body: dict[str, Any], choice: int, chat: bool) -> tuple[list[Step], str]:
        """What choice `choice` generates, one step a token, and its finish reason."""
        max_tokens = int(body.get("max_tokens") or 16)
        steps: list[Step] = []
        if chat and name == "thinker":
            steps += [Step(reasoning=w) for w in THOUGHT]
        tools = [t["function"] for t in body.get("tools") or []]
        choice_of_tool = body.get("tool_choice", "auto")
        fmt = body.get("response_format") or {}
        if chat and tools and choice_of_tool != "none":
            if isinstance(choice_of_tool, dict):
                tools = [t for t in tools if t["name"] == choice_of_tool["function"]["name"]]
            elif body.get("parallel_tool_calls") is False:
                tools = tools[:1]
            for k, tool in enumerate(tools):
                call_id = f"call_{len(self.bodies):04d}{choice}{k}"
                # OpenAI's shape: the first piece carries id, type and name with empty arguments, the later
                # pieces only arguments.
                steps.append(
                    Step(
                        call={
                            "index": k,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": tool["name"], "arguments": ""},
                        }
                    )
                )
                arguments = orjson.dumps(instance(tool.get("parameters") or {}, choice)).decode()
                steps += [Step(call={"index": k, "function": {"arguments": p}}) for p in chunks(arguments)]
            finish = "tool_calls"
        elif fmt.get("type") in ("json_object", "json_schema"):
            schema = (fmt.get("json_schema") or {}).get("schema") or {
                "type": "object",
                "properties": {"words": {"type": "string"}},
            }
            steps += [Step(content=p) for p in chunks(orjson.dumps(instance(schema, choice)).decode())]
            finish = "stop"
        else:
            # Every token a word: the text runs to max_tokens. Choice i starts i words further on.
            words = [(" " if i else "") + WORDS[(i + choice) % len(WORDS)] for i in range(max_tokens)]
            return steps + [Step(content=w) for w in words][: max_tokens - len(steps)], "length"
        if len(steps) > max_tokens:
            return steps[:max_tokens], "length"
        return steps, finish

    async def _generate(
        self, request: web.Request, name: str, body: dict[str, Any], *, chat: bool
    ) -> web.StreamResponse:
        if chat:
            prompt = " ".join(str(m.get("content") or "") for m in body.get("messages", []))
        else:
            prompt = str(body.get("prompt") or "")
        n = int(body.get("n") or 1)
        choices = [self._steps(name, body, i, chat) for i in range(n)]
        prompt_tokens = len(prompt.split())
        completion_tokens = sum(len(steps) for steps, _ in choices)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            # A prompt seen before is read from the cache, as Azure reports it.
            "prompt_tokens_details": {"cached_tokens": prompt_tokens if prompt in self._prompts else 0},
        }
        self._prompts.add(prompt)
        cid, created = f"chatcmpl-fake{time.monotonic_ns()}", int(time.time())
        logprobs = body.get("logprobs")
        want = (
            (int(body.get("top_logprobs") or 0) if logprobs else None)
            if chat
            else (int(logprobs) if logprobs is not None else None)
        )
        if not body.get("stream") or name == "unstreamed":
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": name,
                    "choices": [
                        whole(i, steps, finish, chat, want) for i, (steps, finish) in enumerate(choices)
                    ],
                    "usage": usage,
                },
                dumps=lambda o: orjson.dumps(o).decode(),
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"

        async def send(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
            event = {"id": cid, "object": kind, "created": created, "model": name, "choices": choices}
            await resp.write(b"data: " + orjson.dumps({**event, **(extra or {})}) + b"\n\n")

        # Azure's first event: the prompt's content filter results, no choices.
        await resp.write(
            b"data: "
            + orjson.dumps(
                {
                    "id": "",
                    "object": "",
                    "created": 0,
                    "model": "",
                    "choices": [],
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
                }
            )
            + b"\n\n"
        )
        for t in range(max(len(steps) for steps, _ in choices)):
            if name == "cut" and t == 2:
                assert request.transport is not None
                request.transport.close()
                return resp
            # The choices' tokens interleaved, as OpenAI sends them.
            await send(
                [piece(i, steps, t, chat, want) for i, (steps, _) in enumerate(choices) if t < len(steps)]
            )
        await send(
            [
                {
                    "index": i,
                    **({"delta": {}} if chat else {"text": ""}),
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i, (_, finish) in enumerate(choices)
            ]
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], {"usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        return resp


@dataclass(frozen=True)
class Step:
    """One generated token: text, thinking, or a piece of a tool call (a `tool_calls` entry)."""

    content: str = ""
    reasoning: str = ""
    call: dict[str, Any] | None = None


def chunks(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def instance(schema: dict[str, Any], choice: int = 0) -> Any:
    """A value valid for a (simple) JSON schema: what a constrained model would write."""
    if "enum" in schema:
        return schema["enum"][choice % len(schema["enum"])]
    kind = schema.get("type", "object")
    if kind == "object":
        return {k: instance(v, choice) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [instance(schema.get("items") or {"type": "string"}, choice)]
    return {"string": WORDS[choice % len(WORDS)], "integer": 7 + choice, "number": 1.5, "boolean": True}.get(
        kind
    )


def _logprob(t: int, choice: int) -> float:
    return -round(0.1 * (t + 1) + 0.01 * choice, 4)


def chat_logprobs(token: str, t: int, choice: int, top: int) -> dict[str, Any]:
    """OpenAI's `logprobs.content` item of a token: the token first among its alternatives."""
    lp = _logprob(t, choice)
    others = [token] + [w for w in WORDS if w != token.strip()]
    return {
        "token": token,
        "logprob": lp,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": o, "logprob": lp - k, "bytes": list(o.encode())} for k, o in enumerate(others[:top])
        ],
    }


def piece(i: int, steps: list[Step], t: int, chat: bool, top: int | None) -> dict[str, Any]:
    """The streamed choice of step `t`."""
    step = steps[t]
    if not chat:
        lp = None
        if top is not None:
            # The legacy shape; like OpenAI, the sampled token is among the alternatives even with top 0.
            alternatives = {step.content: _logprob(t, i), " omega": -9.0}
            lp = {
                "tokens": [step.content],
                "token_logprobs": [_logprob(t, i)],
                "top_logprobs": [dict(list(alternatives.items())[: top + 1])],
                "text_offset": [sum(len(s.content) for s in steps[:t])],
            }
        return {"index": i, "text": step.content, "logprobs": lp, "finish_reason": None}
    delta: dict[str, Any] = {"role": "assistant"} if t == 0 else {}
    if step.content:
        delta["content"] = step.content
    if step.reasoning:
        delta["reasoning_content"] = step.reasoning
    if step.call is not None:
        delta["tool_calls"] = [step.call]
    logprobs = None
    if top is not None and step.content:
        logprobs = {"content": [chat_logprobs(step.content, t, i, top)], "refusal": None}
    return {
        "index": i,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": None,
        "content_filter_results": {},
    }


def whole(i: int, steps: list[Step], finish: str, chat: bool, top: int | None) -> dict[str, Any]:
    """The choice of a whole (not streamed) answer."""
    text = "".join(s.content for s in steps)
    if not chat:
        return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if any(s.reasoning for s in steps):
        message["reasoning_content"] = "".join(s.reasoning for s in steps)
    calls: dict[int, dict[str, Any]] = {}
    for s in steps:
        if s.call is not None:
            call = calls.setdefault(
                s.call["index"],
                {
                    "id": s.call.get("id"),
                    "type": "function",
                    "function": {"name": s.call["function"].get("name"), "arguments": ""},
                },
            )
            call["function"]["arguments"] += s.call["function"]["arguments"]
    if calls:
        message["tool_calls"] = [calls[k] for k in sorted(calls)]
    logprobs = None
    if top is not None:
        logprobs = {
            "content": [chat_logprobs(s.content, t, i, top) for t, s in enumerate(steps) if s.content],
            "refusal": None,
        }
    return {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
