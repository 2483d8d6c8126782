"""Property-based fuzzing of the gateway from its own OpenAPI document (schemathesis 4).

The services are the real ones: the catalog, the downloader and a runner (llama.cpp with the tiny GGUF of
tests/fakes/tiny_gguf.py) as gRPC servers, and the gateway app served by uvicorn on a loopback port, all
in one background thread with its own event loop (schemathesis calls with the blocking `requests`
library, so the servers cannot share the test's thread). schemathesis loads `/openapi.json` from that
server and sends each generated case over real HTTP.

Every answer must hold: no 500 (nor any 5xx other than the documented availability codes, which a
healthy stack never gives here), every 4xx/5xx in the one error shape `{"error": {"message", "type",
"param", "code"}}`, status codes, content types and bodies as the document declares them.

Choices that keep the run meaningful and bounded (~30 s on 2 cores; MAX_EXAMPLES per operation,
derandomized so CI runs the same cases every time):
- Two models: `tiny/chat` (the inference target) and `scratch/victim`. Generated path parameters, the
  `model` of inference bodies and the `source_url` of creations are replaced by real ones in about half
  of the cases, so the happy paths (a real answer, a real stream, a real import) are fuzzed too, not only
  404s; `test_the_fuzzing_reached_the_happy_paths` checks that they were. Destructive operations (DELETE,
  PATCH) are steered to `scratch/victim` only, never to `tiny/chat`, so deleting or breaking the only
  runnable model cannot turn the rest of the run into 404s.
- `POST /v1/models/remote` is excluded: it exists to call a remote API, which a test must not reach;
  `GET /v1/events` too: an endless stream.
- Streams end: `GET .../download` as Server-Sent Events lasts as long as a job, and the only jobs here
  (of models whose binaries are present) end at once; the tiny model's context (512 tokens a slot)
  bounds any generated `max_tokens`.
- The whole process is fenced to loopback (name resolution and connects to anything else fail), so a
  generated `source_url` can never make the catalog or downloader send a packet off the machine.
- Answers that are right although the document cannot say so are not failures: 400 for a schema-valid
  string that breaks the id rules, 422 for JSON the services cannot store, and an "invalid" `engine`
  or `id` query value accepted (a query string can only carry strings, which both take all of); see
  `_known_false_alarms` and the positive-data settings below.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import orjson
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response

from gateway.app import create_app
from gateway.errors import Dialect
from gateway.settings import GatewaySettings
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.storage import StorageSettings, make_storage
from services.downloader.settings import DownloaderSettings
from services.runner.settings import RunnerSettings
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import (
    CHAT_TEMPLATE,
    listening_gateway,
    serving_catalog,
    serving_downloader,
    serving_runner,
)

pytest.importorskip("llama_cpp")

MODEL = "tiny/chat"
VICTIM = "scratch/victim"
# A GGUF file under JAN_IMPORT_ALLOWED_DIRS (the module's services fixture writes it there).
SOURCE_FILE = str(Path(tempfile.gettempdir()) / f"jan-fuzz-imports-{os.getpid()}" / "import-me.gguf")
MAX_EXAMPLES = 100
# 5xx a healthy stack may still give by design (never 500): none of them should appear in this run, but
# they are documented, so they are reported as such rather than as crashes.
DOCUMENTED_5XX_CODES = {"engine_unavailable", "embeddings_unsupported", "hf_repo_import_unavailable"}
ERROR_KEYS = {"message", "type", "param", "code"}
# The other dialects' bodies, steered like OpenAI's: the real model (the victim for what deletes), a
# request that can be answered; Ollama's `options` left out there, since a generated `num_ctx` reloads
# the model with that context for the requests after it (as docs/api.md says).
HELLO = [{"role": "user", "content": "Hello"}]
DIALECT_BODIES: dict[str, dict[str, Any]] = {
    "/v1/responses": {"model": MODEL, "input": "Hello"},
    "/v1/messages": {"model": MODEL, "max_tokens": 8, "messages": HELLO},
    "/v1/messages/count_tokens": {"model": MODEL, "messages": HELLO},
    "/api/chat": {"model": MODEL, "messages": HELLO, "options": {}},
    "/api/generate": {"model": MODEL, "prompt": "Hello", "options": {}},
    "/api/embed": {"model": MODEL, "input": "Hello", "options": {}},
    "/api/embeddings": {"model": MODEL, "prompt": "Hello", "options": {}},
    "/api/show": {"model": MODEL},
    "/api/pull": {"model": MODEL},
    "/api/delete": {"model": VICTIM},
    "/api/copy": {"source": VICTIM, "destination": "scratch/copy"},
}


def _loopback(host: Any) -> bool:
    if host in ("localhost", "127.0.0.1", "::1", b"127.0.0.1"):
        return True
    try:
        return ipaddress.ip_address(host if isinstance(host, str) else host.decode()).is_loopback
    except (ValueError, AttributeError):
        return False


@pytest.fixture(scope="module")
def loopback_only() -> Iterator[None]:
    """Name resolution and TCP connects of this process work for loopback only."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: off-loopback names are fenced in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise ConnectionRefusedError(f"{address[0]}: off-loopback connects are fenced in this test")
        return real_connect(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setattr(socket.socket, "connect", connect)
        yield


class Services:
    """Catalog, downloader, runner and gateway (uvicorn) in one background thread's event loop."""

    def __init__(self, root: Path, imports: Path) -> None:
        self.root, self.imports = root, imports
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-services", daemon=True)

    def __enter__(self) -> Services:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None or not self.url:
            raise RuntimeError(f"the services did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        root = self.root
        storage = make_storage(StorageSettings(), root)
        catalog = Catalog(
            CatalogSettings(
                root=root,
                port=0,
                seed_models_dir=None,
                import_allowed_dirs=[self.imports],
                watch_debounce_ms=10,
            ),
            storage=storage,
        )
        async with serving_catalog(catalog) as cat_address:
            dl_settings = DownloaderSettings(
                root=root, port=0, catalog_address=cat_address, reserve_bytes=0, retries=0
            )
            rn_settings = RunnerSettings(
                root=root, name="fuzz", port=0, catalog_address=cat_address, threads=1
            )
            async with (
                serving_downloader(dl_settings, storage) as (_, dl_address),
                serving_runner(rn_settings, storage),
            ):
                await self._serve_gateway(cat_address, dl_address)

    async def _serve_gateway(self, cat_address: str, dl_address: str) -> None:
        assert self._stop is not None
        async with listening_gateway(
            catalog_address=cat_address, downloader_address=dl_address, max_body_bytes=1 << 20
        ) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, loopback_only: None) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("janroot")
    imports = Path(SOURCE_FILE).parent
    write_tiny_gguf(Path(SOURCE_FILE))
    params = {"ctx_len": 512, "max_tokens": 16}
    for model_id in (MODEL, VICTIM):
        folder, file = model_id.split("/")
        write_tiny_gguf(root / "models" / folder / f"{file}.gguf", chat_template=CHAT_TEMPLATE)
        (root / "models" / folder / f"{file}.json").write_bytes(orjson.dumps({"parameters": params}))
    try:
        with Services(root, imports) as s:
            yield s
    finally:
        shutil.rmtree(imports, ignore_errors=True)


def _steer_path(context: Any, strategy: st.SearchStrategy) -> st.SearchStrategy:
    """About half of the path parameters name a real model (the victim for destructive methods)."""
    operation = context.operation
    if operation is None or "{folder}" not in operation.path:
        return strategy
    target = VICTIM if operation.method.upper() in ("DELETE", "PATCH") else MODEL
    folder, file = target.split("/")
    real = {"folder": folder, "file": file} if "{file}" in operation.path else {"folder": folder}
    return st.one_of(strategy.map(lambda p: {**p, **real}), strategy)


def _steer_body(context: Any, strategy: st.SearchStrategy) -> st.SearchStrategy:
    """About half of the inference bodies name the real model; about half of the creations a real file."""
    operation = context.operation
    if operation is None:
        return strategy
    if operation.path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        real = {"model": MODEL}
        # Most generated values of the many optional fields (tools, response_format, logit_bias ...) are
        # refused with a precise 400; a third of the bodies keep only the plain ones, to reach a 200 too.
        plain = {"model", "prompt", "input", "max_tokens", "temperature", "stream", "seed"}
        if operation.path == "/v1/chat/completions":
            real = {**real, "messages": [{"role": "user", "content": "Hello"}]}
        return st.one_of(
            strategy.map(lambda b: {**b, "model": MODEL} if isinstance(b, dict) else b),
            strategy.map(
                lambda b: {**{k: v for k, v in b.items() if k in plain}, **real} if isinstance(b, dict) else b
            ),
            strategy,
        )
    elif operation.path == "/v1/models" and operation.method.upper() == "POST":
        real = {"source_url": SOURCE_FILE}
    elif operation.path in DIALECT_BODIES:
        real = DIALECT_BODIES[operation.path]
        plain = {"model", "input", "messages", "prompt", "max_tokens", "stream", "temperature", "system"}
        return st.one_of(
            strategy.map(lambda b: {**b, **real} if isinstance(b, dict) else b),
            strategy.map(
                lambda b: {**{k: v for k, v in b.items() if k in plain}, **real} if isinstance(b, dict) else b
            ),
            strategy,
        )
    else:
        return strategy
    return st.one_of(strategy.map(lambda b: {**b, **real} if isinstance(b, dict) else b), strategy)


def error_shape(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx/5xx answer is in its route's dialect: `{"error": {"message", "type", "param", "code"}}`
    (OpenAI's and Jan's routes), `{"error": "<message>"}` (Ollama's), `{"type": "error", "error": {"type",
    "message"}}` (Anthropic's); no 500, and a 5xx only with a documented code."""
    if response.status_code < 400:
        return None
    body = response.json()
    dialect = Dialect.of_path(case.operation.path)
    if dialect is Dialect.OLLAMA:
        assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), body
        assert body["error"] and response.status_code < 500, f"{response.status_code}: {body}"
        return True
    if dialect is Dialect.ANTHROPIC:
        assert isinstance(body, dict) and set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body
        assert response.status_code < 500, f"{response.status_code}: {body}"
        return True
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {response.text[:300]}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ERROR_KEYS, f"not the error shape: {response.text[:300]}"
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if response.status_code >= 500:
        assert error["code"] in DOCUMENTED_5XX_CODES, f"{response.status_code}: {response.text[:300]}"
    return True


# The document depends on no service, so it is built here, at collection, and gives one test per
# operation; the test below checks that the running gateway serves the same document.
DOCUMENT = create_app(GatewaySettings()).openapi()
# /v1/events is a stream that never ends by itself (tests/browser and the integration tests read it).
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/v1/models/remote").exclude(path="/v1/events")
schema.config.generation.update(max_examples=MAX_EXAMPLES)
# The document does not spell out the id rules (no control characters, '/', '\\' or leading '.' in a
# name; `model` is '<folder>/<file>'; `keep_alive` a duration): a schema-valid value may get 400 with a
# precise code, which is the right answer, so 400 counts as accepting "valid" data.
schema.config.checks.positive_data_acceptance.expected_statuses = [
    *schema.config.checks.positive_data_acceptance.expected_statuses,
    "400",
]
schema.hook("before_generate_path_parameters")(_steer_path)
schema.hook("before_generate_body")(_steer_body)
# Archive imports take raw bytes: generated bytes are sent as they are (and refused as archives).
schemathesis.serializer.alias(
    ["application/gzip", "application/x-tar", "application/zip"], "application/octet-stream"
)
# (operation, status) of every answer, to show below that the happy paths were reached too.
SEEN: collections.Counter[tuple[str, int]] = collections.Counter()


@schema.hook("filter_failure")
def _known_false_alarms(context: Any, failure: Any, case: schemathesis.Case, response: Response) -> bool:
    """JSON Schema cannot say "integers within 64 bits, nesting within 255" for a free-form object: the
    gateway refuses such values with 422 `invalid_request`, which is right although the document allows
    them (this was a 500 before the gateway checked them)."""
    if response.status_code == 422 and b"not a storable JSON object" in response.content:
        return False
    # `engine` (GET /v1/models) and `id` (GET /v1/models/fit) take any strings, and a query string holds
    # nothing but strings: whatever "invalid" value the negative mode makes for them arrives as a valid one.
    return not (
        failure.title == "Schema-violating request accepted"
        and any(f"parameter `{name}` in query" in failure.message for name in ("engine", "id"))
    )


@schema.hook("after_call")
def _count(context: Any, case: schemathesis.Case, response: Response) -> None:
    SEEN[(case.operation.label, response.status_code)] += 1


def test_the_fuzzed_document_is_the_served_one(services: Services) -> None:
    served = httpx.get(f"{services.url}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == DOCUMENT


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
    database=None,  # the same cases on every machine: nothing replayed from earlier runs
)
def test_the_gateway_answers_every_generated_request_within_its_contract(
    case: schemathesis.Case, services: Services
) -> None:
    case.call_and_validate(base_url=services.url, additional_checks=[error_shape], timeout=60)


def test_the_fuzzing_reached_the_happy_paths() -> None:
    """Guards the steering above: without it every inference case would be a 404."""
    if not SEEN:
        pytest.skip("the fuzz tests did not run (deselected)")
    ok = {label for (label, status), n in SEEN.items() if 200 <= status < 300}
    for label in (
        "POST /v1/models",
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/embeddings",
        "POST /v1/models/{folder}/{file}/start",
        "GET /v1/models/{folder}/{file}",
        "GET /v1/folders/{folder}/export",
        "POST /v1/responses",
        "POST /v1/messages",
        "POST /api/chat",
        "POST /api/generate",
    ):
        assert label in ok, f"{label}: no 2xx among {sorted(k for k in SEEN if k[0] == label)}"


# --- what the fuzzing found, kept as plain regression tests -------------------------------------------------


def test_405_lists_every_method_of_the_path_in_allow(services: Services) -> None:
    # Was: `Allow: POST` only (the first route matched), and the error handler dropped the header anyway.
    for path, allowed in [
        ("/v1/models/a/b/download", "DELETE, GET, POST"),
        ("/v1/models/a/b", "DELETE, GET, PATCH"),
        ("/v1/models", "GET, POST"),
    ]:
        resp = httpx.request("OPTIONS", services.url + path, timeout=10)
        assert resp.status_code == 405 and resp.headers["allow"] == allowed, (path, resp.headers)
        assert resp.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/models", {"source_url": SOURCE_FILE, "id": "big/int", "parameters": {"n": 2**64}}),
        ("POST", "/v1/models", {"source_url": SOURCE_FILE, "id": "big/int", "metadata": {"n": -(2**70)}}),
        ("PATCH", f"/v1/models/{VICTIM}", {"parameters": {"ctx_len": 10**30}}),
        ("POST", f"/v1/models/{MODEL}/start", {"parameters": {"ctx_len": 2**64}}),
        (
            "PATCH",
            f"/v1/models/{VICTIM}",
            {"metadata": functools.reduce(lambda v, _: {"k": v}, range(300), {})},
        ),
    ],
    ids=["create-parameters", "create-metadata", "patch", "start-overrides", "deep-nesting"],
)
def test_json_the_services_cannot_store_is_422_not_500(
    services: Services, method: str, path: str, body: dict
) -> None:
    # Was: 500, orjson refusing to write what Python's JSON parser had accepted.
    resp = httpx.request(method, services.url + path, content=json.dumps(body), timeout=10)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_request"


def test_a_stream_is_documented_as_server_sent_events() -> None:
    # Was: only application/json documented, while `stream: true` answers text/event-stream.
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "text/event-stream" in DOCUMENT["paths"][path]["post"]["responses"]["200"]["content"]
