"""A container health probe: `python -m services.common.healthcheck HOST:PORT` exits 0 when the gRPC
server there reports SERVING on grpc.health.v1 (the overall "" entry, or `--service NAME`), and 1
otherwise; `python -m services.common.healthcheck http://HOST:PORT/healthz` does the same for an HTTP GET
answered 2xx (the gateway). Used by the images' HEALTHCHECK and compose; Kubernetes probes natively."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check_grpc(address: str, service: str = "", timeout: float = 3.0) -> str | None:
    """None when `address` reports SERVING for `service`, else what is wrong."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{address}: {exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_http(url: str, timeout: float = 3.0) -> str | None:
    """None when GET `url` answers 2xx, else what is wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return None if 200 <= resp.status < 300 else f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.healthcheck", description=__doc__)
    parser.add_argument("target", help="HOST:PORT of a gRPC server, or an http(s):// URL")
    parser.add_argument("--service", default="", help="gRPC service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before giving up")
    args = parser.parse_args(argv)
    if args.target.startswith(("http://", "https://")):
        problem = check_http(args.target, args.timeout)
    else:
        problem = check_grpc(args.target, args.service, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
