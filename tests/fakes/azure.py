"""A loopback fake of an Azure OpenAI resource: real sockets, real HTTP, Azure's URL shapes and header.

`FakeAzure` runs an aiohttp server in a background thread (its own event loop) on 127.0.0.1 and a free
port. It answers only `/openai/deployments/{name}/{chat/completions|completions|embeddings}` with an
`api-version` query and the `api-key` header (401 otherwise, 404 for an unknown deployment, in Azure's
error shape), in OpenAI's response shapes: streamed chunks with a final usage chunk, or one answer.
The text is generated here: the words of `WORDS` in turn, one per token, up to `max_tokens`.

Deployments with special names inject failures: `throttled` answers 429 with `Retry-After`, `broken`
answers 500, `slow` waits `slow_s` before answering, `cut` breaks a stream after two tokens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

import orjson
from aiohttp import web

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


class FakeAzure:
    def __init__(
        self,
        *,
        key: str = "azure-test-key",
        deployments: tuple[str, ...] = ("gpt-4o-mini",),
        slow_s: float = 5,
    ) -> None:
        self.key = key
        self.deployments = set(deployments) | {"throttled", "broken", "slow", "cut"}
        self.slow_s = slow_s
        self.url = ""  # "http://127.0.0.1:PORT" once started
        self.requests: list[tuple[str, str, str]] = []  # (path, api-version, deployment)
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
        chat = operation == "chat/completions"
        if chat:
            prompt = " ".join(str(m.get("content") or "") for m in body.get("messages", []))
        else:
            prompt = str(body.get("prompt") or "")
        max_tokens = int(body.get("max_tokens") or 16)
        words = [(" " if i else "") + WORDS[i % len(WORDS)] for i in range(max_tokens)]
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(words),
            "total_tokens": len(prompt.split()) + len(words),
        }
        cid, created = f"chatcmpl-fake{time.monotonic_ns()}", int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            text = "".join(words)
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                if chat
                else {"index": 0, "text": text, "finish_reason": "length"}
            )
            return web.json_response(
                {
                    "id": cid,
                    "object": kind,
                    "created": created,
                    "model": name,
                    "choices": [choice],
                    "usage": usage,
                },
                dumps=lambda o: orjson.dumps(o).decode(),
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"

        async def send(choices: list[dict[str, object]], extra: dict[str, object] | None = None) -> None:
            event = {"id": cid, "object": kind, "created": created, "model": name, "choices": choices}
            await resp.write(b"data: " + orjson.dumps({**event, **(extra or {})}) + b"\n\n")

        for i, word in enumerate(words):
            if name == "cut" and i == 2:
                assert request.transport is not None
                request.transport.close()
                return resp
            part = {"delta": {"content": word}} if chat else {"text": word}
            await send([{"index": 0, **part, "finish_reason": None}])
        last = {"delta": {}} if chat else {"text": ""}
        await send([{"index": 0, **last, "finish_reason": "length"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], {"usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        return resp
