"""Benchmark: GET /v1/models with 10,000 model objects on disk, and how fast a hand edit shows up.

Starts the real catalog and gateway processes (as `make up` does) on free ports over a generated
JAN_ROOT, then measures:
  - start-up (index build) and the first (cold) GET /v1/models,
  - warm GET /v1/models p50/p95 over many requests,
  - the baseline in the same run: a stateless listing that reads and parses every json file and
    serialises the list, in-process (what a catalog without an index pays per request),
  - hand-edit visibility: from rewriting a json file to (a) the WatchModels event, (b) the new name in
    GET /v1/models.

Usage: python bench/catalog/bench_catalog.py [--models 10000] [--requests 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from grpc import aio

from cli.stack import SERVICES, Stack, free_port
from jan.catalog.v1 import catalog_service_pb2 as pb
from jan.catalog.v1 import catalog_service_pb2_grpc as pb_grpc


def make_root(root: Path, count: int) -> None:
    models = root / "models"
    for i in range(count):
        folder = models / f"model-{i:05d}"
        folder.mkdir(parents=True)
        quant = ("Q4_K_M", "Q5_K_S", "Q8_0")[i % 3]
        obj = {
            "source_url": f"https://huggingface.co/org{i % 50}/m-{i}-GGUF/resolve/main/m-{i}.{quant}.gguf",
            "name": f"Model {i} {quant}",
            "description": "A generated model object for the catalog benchmark.",
            "parameters": {"ctx_len": 4096, "temperature": 0.7, "top_p": 0.95, "max_tokens": 2048},
            "metadata": {"engine": "llamacpp", "quantization": quant, "size": "7B"},
        }
        (folder / f"model-{i:05d}-{quant}.json").write_text(json.dumps(obj, indent=2))


def baseline_list(models: Path) -> bytes:
    """Stateless listing: read + parse every file and serialise the OpenAI list (no index, no RPC)."""
    data = []
    for folder in sorted(os.scandir(models), key=lambda e: e.name):
        for entry in os.scandir(folder.path):
            if entry.name.endswith(".json"):
                with open(entry.path, "rb") as f:
                    obj = json.loads(f.read())
                data.append(
                    {
                        "id": f"{folder.name}/{entry.name[:-5]}",
                        "object": "model",
                        "created": int(entry.stat().st_mtime),
                        "owned_by": "org",
                        "name": obj.get("name"),
                        "description": obj.get("description", ""),
                        "state": "not-downloaded",
                        "parameters": obj.get("parameters", {}),
                        "metadata": obj.get("metadata", {}),
                    }
                )
    return json.dumps({"object": "list", "data": data}).encode()


def curl_seconds(url: str) -> float:
    out = subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", "-w", "%{time_total}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def edit_latency(stack: Stack, models: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds from a hand edit to the Watch event, and to GET /v1/models showing it."""
    watch_s: list[float] = []
    list_s: list[float] = []
    target = sorted(models.glob("model-00042/*.json"))[0]
    model_id = f"model-00042/{target.stem}"
    async with aio.insecure_channel(f"127.0.0.1:{stack.ports['catalog']}") as channel:
        stub = pb_grpc.CatalogServiceStub(channel)
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            for r in range(rounds):
                call = stub.WatchModels(pb.WatchModelsRequest())
                await asyncio.sleep(0.2)  # let the stream register
                obj = json.loads(target.read_text())
                obj["name"] = f"edited {r}"
                started = time.perf_counter()
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_text(json.dumps(obj))
                os.replace(tmp, target)  # what editors do: write aside, rename over
                async for event in call:
                    if event.id == model_id and event.model.name == f"edited {r}":
                        watch_s.append(time.perf_counter() - started)
                        break
                call.cancel()
                while True:
                    body = (await http.get("/v1/models")).json()
                    if next(m for m in body["data"] if m["id"] == model_id)["name"] == f"edited {r}":
                        list_s.append(time.perf_counter() - started)
                        break
    return watch_s, list_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="jan-bench-") as tmp:
        root = Path(tmp) / "root"
        t0 = time.perf_counter()
        make_root(root, args.models)
        print(f"generated {args.models} model objects in {time.perf_counter() - t0:.1f} s")

        base = []
        for _ in range(5):
            t = time.perf_counter()
            body = baseline_list(root / "models")
            base.append(time.perf_counter() - t)
        base_p50 = statistics.median(base)
        print(
            f"baseline (stateless read+parse+serialise, in-process): p50 {base_p50 * 1000:.1f} ms,"
            f" {len(body) / 1e6:.1f} MB"
        )

        stack = Stack(root=root, ports={name: free_port() for name in SERVICES})
        t = time.perf_counter()
        stack.start(
            extra_env={"JAN_CATALOG_SEED_MODELS_DIR": "", "JAN_CATALOG_WATCH_DEBOUNCE_MS": "30"}, timeout=300
        )
        ready_s = time.perf_counter() - t
        try:
            with httpx.Client(base_url=stack.url, timeout=60) as http:
                t = time.perf_counter()
                resp = http.get("/v1/models")
                cold_s = time.perf_counter() - t
                count = len(resp.json()["data"])
                assert count == args.models, count
                warm = []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    resp = http.get("/v1/models")
                    resp.raise_for_status()
                    warm.append(time.perf_counter() - t)
            # curl as the client too: httpx's own parsing of a 4 MB body is part of the numbers above.
            curl = [curl_seconds(f"{stack.url}/v1/models") for _ in range(args.requests)]
            watch_s, list_s = asyncio.run(edit_latency(stack, root / "models", args.edits))
        finally:
            stack.stop()

    ms = 1000
    p50, p95 = statistics.median(warm), pct(warm, 0.95)
    c50, c95 = statistics.median(curl), pct(curl, 0.95)
    print(f"start-up to ready (index of {count} objects): {ready_s:.2f} s")
    print(f"cold GET /v1/models (first request): {cold_s * ms:.1f} ms")
    print(f"warm GET /v1/models (httpx): p50 {p50 * ms:.1f} ms, p95 {p95 * ms:.1f} ms, {len(warm)} requests")
    print(f"warm GET /v1/models (curl):  p50 {c50 * ms:.1f} ms, p95 {c95 * ms:.1f} ms")
    print(f"ratio warm p50 (curl) / baseline p50: {c50 / base_p50:.2f}x  (<1: faster than re-reading)")
    w50, l50 = statistics.median(watch_s), statistics.median(list_s)
    print(f"hand edit -> WatchModels event: p50 {w50 * ms:.0f} ms, max {max(watch_s) * ms:.0f} ms")
    print(f"hand edit -> in GET /v1/models: p50 {l50 * ms:.0f} ms, max {max(list_s) * ms:.0f} ms")
    # Issue 18's targets: warm under 20 ms at 10,000 objects and under 100 ms at 50,000 (between, the
    # bound in proportion); a hand edit in the list within 150 ms at 10,000.
    bound = 0.020 if count <= 10_000 else 0.020 + 0.080 * min(1.0, (count - 10_000) / 40_000)
    print(f"target warm p50 (curl) < {bound * ms:.0f} ms at {count}: {'met' if c50 < bound else 'NOT met'}")
    if count <= 10_000:
        print(f"target hand edit in the list p50 < 150 ms: {'met' if l50 < 0.150 else 'NOT met'}")


if __name__ == "__main__":
    main()
