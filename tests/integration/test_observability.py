"""Metrics and request ids: the real gateway app in front of real catalog and downloader gRPC servers,
and one real stack of processes for the services' own /metrics ports and the JSON log format."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from cli.stack import Stack, free_port
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.logs import JsonFormatter, request_id
from services.common.prometheus import REGISTRY
from services.common.storage import StorageSettings, make_storage
from services.downloader.settings import DownloaderSettings
from tests.harness import (
    eventually,
    process_stack,
    serving_catalog,
    serving_downloader,
    serving_gateway,
    wait_for,
)

CATALOG = "jan.catalog.v1.CatalogService"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Env:
    http: httpx.AsyncClient
    root: Path


async def make_env(tmp_path: Path, **gateway: object) -> AsyncIterator[Env]:
    root = tmp_path / "jan"
    storage = make_storage(StorageSettings(), root)
    catalog = Catalog(
        CatalogSettings(root=root, port=0, seed_models_dir=None, allow_private_networks=False),
        storage=storage,
    )
    async with serving_catalog(catalog) as cat_address:
        dl_settings = DownloaderSettings(
            root=root, port=0, catalog_address=cat_address, allow_private_networks=False, retries=0
        )
        async with (
            serving_downloader(dl_settings, storage) as (_, dl_address),
            serving_gateway(
                timeout=30, catalog_address=cat_address, downloader_address=dl_address, **gateway
            ) as gw,
        ):
            yield Env(gw.http, root)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in make_env(tmp_path):
        yield e


async def test_gateway_metrics_count_by_route_template_and_status(env: Env) -> None:
    route = "/v1/models/{folder}/{file}"
    before = sample("jan_http_requests_total", method="GET", route=route, status="404")
    errors = sample("jan_errors_total", component="gateway", code="model_not_found")
    unmatched = sample("jan_http_requests_total", method="GET", route="<unmatched>", status="404")
    for i in range(3):
        assert (await env.http.get(f"/v1/models/nope/m{i}")).status_code == 404
    assert (await env.http.get("/v1/no/such/route/at/all")).status_code == 404
    resp = await env.http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    # The template, never the raw path: ids do not become label values.
    assert f'jan_http_requests_total{{method="GET",route="{route}",status="404"}}' in text
    assert "nope/m1" not in text
    assert sample("jan_http_requests_total", method="GET", route=route, status="404") == before + 3
    assert sample("jan_errors_total", component="gateway", code="model_not_found") == errors + 3
    assert sample("jan_http_requests_total", method="GET", route="<unmatched>", status="404") == unmatched + 1
    assert sample("jan_http_request_duration_seconds_count", method="GET", route=route) >= 3
    assert "/metrics" not in (await env.http.get("/openapi.json")).json()["paths"]


async def test_grpc_calls_are_counted_by_method_and_code_with_error_codes(env: Env) -> None:
    ok = sample("jan_grpc_server_handled_total", service=CATALOG, method="ListModels", code="OK")
    missing = sample("jan_grpc_server_handled_total", service=CATALOG, method="GetModel", code="NOT_FOUND")
    coded = sample("jan_errors_total", component="catalog", code="model_not_found")
    await env.http.get("/v1/models")
    await env.http.get("/v1/models/nope/m")
    # A service counts a call when its handler ends; a refusal's status may reach the client first
    # (grpc.aio's abort sends it, then raises through the interceptors): the count follows at once.
    await eventually(
        lambda: (
            sample("jan_grpc_server_handled_total", service=CATALOG, method="ListModels", code="OK") == ok + 1
            and sample("jan_grpc_server_handled_total", service=CATALOG, method="GetModel", code="NOT_FOUND")
            == missing + 1
            and sample("jan_errors_total", component="catalog", code="model_not_found") == coded + 1
        ),
        timeout=5,
        what="the catalog's counts",
    )
    assert sample("jan_grpc_server_handling_seconds_count", service=CATALOG, method="ListModels") >= 1


async def test_downloader_refusals_are_counted_by_code(env: Env) -> None:
    refused = sample("jan_errors_total", component="downloader", code="unsafe_source_url")
    path = env.root / "models" / "hand" / "m.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps({"source_url": "http://127.0.0.1:9/m.gguf"}))
    resp = await env.http.post("/v1/models/hand/m/download")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "unsafe_source_url"
    await eventually(  # counted when the handler ends, maybe just after the client has the refusal
        lambda: sample("jan_errors_total", component="downloader", code="unsafe_source_url") == refused + 1,
        timeout=5,
        what="the downloader's count",
    )


class Capture(logging.Handler):
    """Keeps (message, request id in force when it was logged)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), request_id.get()))


async def test_the_request_id_is_echoed_or_made_and_reaches_the_services_logs(env: Env) -> None:
    resp = await env.http.get("/v1/models", headers={"X-Request-Id": "client-id.42"})
    assert resp.headers["x-request-id"] == "client-id.42"
    made = (await env.http.get("/v1/models")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    for unsafe in ("has space", "x" * 129, 'quote"d', "semi;colon"):
        echoed = (await env.http.get("/v1/models", headers={"X-Request-Id": unsafe})).headers["x-request-id"]
        assert echoed != unsafe and re.fullmatch(r"[0-9a-f]{32}", echoed)
    assert (await env.http.get("/healthz", headers={"X-Request-Id": "probe-1"})).headers[
        "x-request-id"
    ] == "probe-1"

    # A call the downloader refuses is logged there under the request's id.
    capture = Capture()
    logger = logging.getLogger("services.common.metrics")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(capture)
    try:
        path = env.root / "models" / "hand" / "rid.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps({"source_url": "http://127.0.0.1:9/m.gguf"}))
        resp = await env.http.post("/v1/models/hand/rid/download", headers={"X-Request-Id": "pull-7"})
        assert resp.status_code == 400 and resp.headers["x-request-id"] == "pull-7"
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    assert [rid for message, rid in capture.lines if "unsafe_source_url" in message] == ["pull-7"]


def test_json_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, 'a "quoted"\nline %s', ("arg",), None)
    record.request_id = "r-1"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == 'a "quoted"\nline arg' and entry["request_id"] == "r-1"
    assert entry["level"] == "WARNING" and entry["time"].endswith("Z")


async def test_metrics_need_a_key_unless_public(tmp_path: Path) -> None:
    async for env in make_env(tmp_path / "a", api_keys="k-123456"):
        assert (await env.http.get("/metrics")).status_code == 401
        assert (
            await env.http.get("/metrics", headers={"Authorization": "Bearer k-123456"})
        ).status_code == 200
    async for env in make_env(tmp_path / "b", api_keys="k-123456", metrics_public=True):
        assert (await env.http.get("/metrics")).status_code == 200
        assert (await env.http.get("/v1/models")).status_code == 401


# --- real processes: each service's /metrics port, JSON logs --------------------------------------------


@pytest.fixture(scope="module")
def json_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    metrics = {"catalog": free_port(), "downloader": free_port()}
    env = {
        "JAN_LOG_FORMAT": "json",
        "JAN_CATALOG_METRICS_PORT": str(metrics["catalog"]),
        "JAN_DOWNLOADER_METRICS_PORT": str(metrics["downloader"]),
    }
    root = tmp_path_factory.mktemp("janroot")
    with process_stack(root, env, ("catalog", "downloader", "gateway")) as s:
        s.metrics = metrics  # type: ignore[attr-defined]
        yield s


@pytest.mark.e2e
def test_services_serve_metrics_and_write_json_lines(json_stack: Stack) -> None:
    with httpx.Client(trust_env=False, timeout=10) as http:
        assert (
            http.get(f"{json_stack.url}/v1/models/nope/m", headers={"X-Request-Id": "e2e-1"}).status_code
            == 404
        )
        catalog_metrics = f"http://127.0.0.1:{json_stack.metrics['catalog']}/metrics"  # type: ignore[attr-defined]
        counted = f'jan_grpc_server_handled_total{{code="NOT_FOUND",method="GetModel",service="{CATALOG}"}}'
        # Counted when the handler ends, which may be just after the gateway has the refusal.
        wait_for(lambda: counted in http.get(catalog_metrics).text, timeout=5, what=counted)
        downloader = http.get(f"http://127.0.0.1:{json_stack.metrics['downloader']}/metrics").text  # type: ignore[attr-defined]
        assert "jan_downloader_bytes_total" in downloader
    messages = set()
    for name in json_stack.names:  # the processes: the catalog and the downloader share one
        lines = [
            line
            for line in (json_stack.log_dir / f"{name}.log").read_text().splitlines()
            if line.startswith("{")
        ]
        assert lines, name
        for line in lines:
            record = json.loads(line)
            assert {"time", "level", "logger", "message"} <= set(record)
            messages.add((record.get("service"), record["message"].split(" on port ")[0]))
    # One process serves both: each line names the service it was written for.
    serving = {
        ("catalog", f"serving {CATALOG}"),
        ("downloader", "serving jan.downloader.v1.DownloaderService"),
    }
    assert serving <= messages
