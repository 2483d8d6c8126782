"""Benchmark: many concurrent clients against the real stack, with the tiny GGUF model.

The real catalog, downloader, runner and gateway processes (`cli.stack.Stack` on free ports, a fresh
JAN_ROOT, defaults otherwise: 4 slots per model, JAN_RUNNER_MAX_QUEUE=64) serve the tiny llama model of
tests/fakes/tiny_gguf.py (~0.6 MB, hundreds of tokens/s), started before measuring. For each concurrency
in `--clients` (default 50, 100, 200), all clients start together (one asyncio task each, one HTTP
connection each), and each sends `--rounds` requests back to back:

  - `GET /v1/models` (a catalog of `--models` objects): latency of the whole answer;
  - `POST /v1/chat/completions` with `stream: true`, `--max-tokens` greedy tokens: time to the first
    content event (TTFT) and to `data: [DONE]`.

Every answer is classified by HTTP status and error `code`; a stream counts as ok only when it ends with
`[DONE]` and holds no error event. Only 429 `queue_full` (more than slots + queue waiting) and 503 are
documented overload answers; anything else is reported as an error. Latencies are over ok answers:
p50 / p95 / p99 (nearest rank), in ms. Prints one markdown table (for docs/benchmarks.md) and the
machine (CPU model, cores, load average before the run).

Usage: python bench/load/bench_load.py [--clients 50,100,200] [--rounds 3] [--max-tokens 32]
           [--models 200]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from cli.stack import SERVICES, Stack, free_port

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tests.fakes is not an installed package
    sys.path.insert(0, str(REPO))
from tests.fakes.tiny_gguf import write_tiny_gguf  # noqa: E402

MODEL = "tiny/chat"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DOCUMENTED_OVERLOAD = {(429, "queue_full"), (503, "queue_timeout"), (503, "runner_unavailable")}


@dataclass
class Result:
    """Outcomes of one scenario: status/code counts and latencies (s) of the ok answers."""

    outcomes: Counter[str] = field(default_factory=Counter)
    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    wall: float = 0.0

    @property
    def unexpected(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k != "200" and not k.startswith(("429 ", "503 ")))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _code(resp_body: bytes) -> str:
    try:
        return str(orjson.loads(resp_body)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "?"


async def list_models(http: httpx.AsyncClient, result: Result) -> None:
    started = time.perf_counter()
    resp = await http.get("/v1/models")
    if resp.status_code == 200:
        result.latency.append(time.perf_counter() - started)
        result.outcomes["200"] += 1
    else:
        result.outcomes[f"{resp.status_code} {_code(resp.content)}"] += 1


async def stream_chat(http: httpx.AsyncClient, result: Result, max_tokens: int) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "the cat sat on the mat"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            result.outcomes[f"{resp.status_code} {_code(await resp.aread())}"] += 1
            return
        done, error = False, None
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = orjson.loads(line[6:])
            if "error" in event:
                error = event["error"].get("code") or "error"
            elif first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
    if error or not done:
        result.outcomes[f"stream-error {error or 'no [DONE]'}"] += 1
        return
    result.outcomes["200"] += 1
    result.latency.append(time.perf_counter() - started)
    if first is not None:
        result.ttft.append(first)


async def run_clients(url: str, clients: int, rounds: int, one) -> Result:  # type: ignore[no-untyped-def]
    """`clients` concurrent clients, each with its own connection, each calling `one` `rounds` times."""
    result = Result()
    gate = asyncio.Event()

    async def client() -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, trust_env=False) as http:
            await gate.wait()
            for _ in range(rounds):
                await one(http, result)

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(0.2)  # every client is set up before the gate opens
    started = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    result.wall = time.perf_counter() - started
    return result


def start_stack(root: Path, models: int) -> Stack:
    folder = root / "models" / "tiny"
    write_tiny_gguf(folder / "chat.gguf", chat_template=TEMPLATE, n_ctx=512)
    (folder / "chat.json").write_bytes(orjson.dumps({"parameters": {"ctx_len": 512, "temperature": 0}}))
    for i in range(models - 1):  # a catalog of some size for the listing (json only: not-downloaded)
        extra = root / "models" / f"m{i:04d}"
        extra.mkdir(parents=True)
        (extra / "m.json").write_bytes(orjson.dumps({"source_url": f"https://example.com/m{i}.gguf"}))
    stack = Stack(root=root, ports={name: free_port() for name in SERVICES})
    stack.start(extra_env={"JAN_CATALOG_SEED_MODELS_DIR": "", "JAN_RUNNER_THREADS": "1"})
    resp = httpx.post(f"{stack.url}/v1/models/{MODEL}/start", json={"keep_alive": -1}, timeout=60)
    resp.raise_for_status()
    return stack


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, load average {load} before the run"


def row(name: str, clients: int, r: Result, with_ttft: bool) -> str:
    ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
    other = ", ".join(f"{k}: {n}" for k, n in sorted(r.outcomes.items()) if k != "200") or "-"
    ttft = (
        f"{ms(percentile(r.ttft, 50))} / {ms(percentile(r.ttft, 95))} / {ms(percentile(r.ttft, 99))}"
        if with_ttft
        else "-"
    )
    lat = (
        f"{ms(percentile(r.latency, 50))} / {ms(percentile(r.latency, 95))} / {ms(percentile(r.latency, 99))}"
    )
    rate = r.outcomes["200"] / r.wall if r.wall else 0.0
    return f"| {name} | {clients} | {r.outcomes['200']} | {other} | {lat} | {ttft} | {rate:.0f} |"


async def main_async(args: argparse.Namespace) -> int:
    print(machine())
    with tempfile.TemporaryDirectory(prefix="jan-load-") as tmp:
        stack = start_stack(Path(tmp) / "jan", args.models)
        try:
            print(
                "\n| scenario | clients | ok | other answers | latency p50 / p95 / p99 ms "
                "| TTFT p50 / p95 / p99 ms | ok/s |"
            )
            print("|---|---:|---:|---|---|---|---:|")
            failures = 0
            for clients in args.clients:
                r = await run_clients(stack.url, clients, args.rounds, list_models)
                print(row(f"GET /v1/models ({args.models} models)", clients, r, False), flush=True)
                failures += r.unexpected
            for clients in args.clients:
                r = await run_clients(
                    stack.url, clients, args.rounds, lambda h, res: stream_chat(h, res, args.max_tokens)
                )
                print(row(f"streamed chat, {args.max_tokens} tokens", clients, r, True), flush=True)
                failures += r.unexpected
        finally:
            stack.stop()
    print(f"\nanswers outside 200 / 429 queue_full / 503: {failures}")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[50, 100, 200])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--models", type=int, default=200)
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
