"""`python -m services.controlplane`, local mode's one process for the catalog and the downloader: each
serves on its own ports with its own settings, a stop signal stops the downloader first, and either one
failing to start ends the process with its message (the supervisor then brings both back)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.stack import free_port
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.downloader.v1 import downloader_service_pb2 as downloader_pb
from tests.harness import wait_for


def env(root: Path, **more: str) -> dict[str, str]:
    catalog = free_port()
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("JAN_")},
        "JAN_ROOT": str(root),
        "JAN_CATALOG_PORT": str(catalog),
        "JAN_CATALOG_ADDRESS": f"127.0.0.1:{catalog}",
        "JAN_DOWNLOADER_PORT": str(free_port()),
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        **more,
    }


def start(environ: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.controlplane"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def serving(port: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def refused(port: str, method: str, request: object) -> None:
    """Calls `method` (a unary path) with request id `t-1`, expecting NOT_FOUND."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString())
        try:
            call(request, metadata=[("x-request-id", "t-1")], timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError(f"{method} answered")


def test_both_serve_each_line_names_its_service_and_a_signal_stops_the_downloader_first(
    tmp_path: Path,
) -> None:
    environ = env(tmp_path)
    proc = start(environ)
    try:
        wait_for(lambda: serving(environ["JAN_CATALOG_PORT"]) and serving(environ["JAN_DOWNLOADER_PORT"]))
        # Lines written while serving a call (gRPC's task for it inherits the service's context).
        refused(
            environ["JAN_CATALOG_PORT"],
            "/jan.catalog.v1.CatalogService/GetModel",
            catalog_pb.GetModelRequest(id="no/pe"),
        )
        refused(
            environ["JAN_DOWNLOADER_PORT"],
            "/jan.downloader.v1.DownloaderService/GetDownload",
            downloader_pb.GetDownloadRequest(model_id="no/pe"),
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    stops = [line.split("stopping ")[1] for line in out.splitlines() if "stopping " in line]
    assert stops == ["jan.downloader.v1.DownloaderService", "jan.catalog.v1.CatalogService"], out
    lines = out.splitlines()
    for name, rpc in (("catalog", "GetModel NOT_FOUND"), ("downloader", "GetDownload NOT_FOUND")):
        tag = f" INFO [{name}] services."
        assert any(tag in line and f"stopping jan.{name}.v1." in line for line in lines), out
        written = [line for line in lines if rpc in line]
        assert written and all(tag in line and line.endswith("[request_id=t-1]") for line in written), out


def test_a_downloader_that_cannot_listen_ends_the_process_with_the_catalog(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environ = env(tmp_path, JAN_DOWNLOADER_PORT=str(port))
        proc = start(environ)
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 1, out
    assert f"cannot listen on 127.0.0.1:{port}: the address is in use" in out
    assert not serving(environ["JAN_CATALOG_PORT"])


def test_each_service_reads_its_own_settings(tmp_path: Path) -> None:
    environ = env(tmp_path, JAN_CATALOG_LOG_LEVEL="WARNING", JAN_DOWNLOADER_CONNECTIONS="7")
    out = subprocess.run(
        [sys.executable, "-m", "services.controlplane", "--print-settings"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    decoder, printed, at = json.JSONDecoder(), [], 0
    while (at := out.find("{", at)) != -1:
        settings, at = decoder.raw_decode(out, at)
        printed.append(settings)
    catalog, downloader = printed[0], printed[1]
    assert catalog["port"] == int(environ["JAN_CATALOG_PORT"]) and catalog["log_level"] == "WARNING"
    assert downloader["port"] == int(environ["JAN_DOWNLOADER_PORT"]) and downloader["connections"] == 7
    assert downloader["log_level"] == "INFO"
