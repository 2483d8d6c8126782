"""Benchmark: downloading one large file through the real downloader, against curl on the same server.

A loopback HTTP server (`tests.fakes.hub.FakeHub`: Range support, generated content) serves one file
(`--size-mib`, 2 GiB by default) from a process of its own, so that it shares no GIL with the measuring
code. In the same run, alternating (curl, ours c=1, curl, ours c=4, ... `--runs` times), it measures:

  - curl (the baseline): `curl -sS -o <tmp>/curl.bin <url>`, wall time. For context only (not in the
    baseline), right after it: `fsync` of curl's file (curl leaves the bytes in the page cache; the
    downloader makes them durable before it reports `done`) and `sha256sum` of it (curl verifies nothing;
    the downloader always computes the sha256 while the bytes arrive).
  - ours: the real catalog, downloader and gateway processes started as `make up` does (`cli.stack.Stack`
    on free ports, a fresh JAN_ROOT per run) with the model object `models/big/big.json` =
    {"source_url": url}. Once GET /v1/models/big/big answers: the wall time from
    `POST /v1/models/big/big/download` until the job's phase is `done`, polling
    `GET /v1/models/big/big/download` (Accept: application/json) every 20 ms. Once per connection count
    (`JAN_DOWNLOADER_CONNECTIONS`, `--connections`, default 1 and 4). Also recorded: the downloader's
    peak RSS (VmHWM of its process) and that the final file's sha256 (read back here, with hashlib, timed
    for context) and the job's both equal the server's.

Where the downloader's time goes, without a profiler: a sampling thread reads every 10 ms what each thread
of the downloader process is doing (/proc/<pid>/task/<tid>/syscall: runnable, or the system call it is
blocked in: fsync, pwrite, futex = waiting for the GIL or for work, epoll = the event loop idle) and, from
/proc/.../schedstat, each thread's CPU time and time spent runnable but waiting for a CPU. The threads
reported: "loop" (the main thread: asyncio event loop, gRPC), "conns" (the connection threads of
services/downloader/httpconn.py + fetch.py: recv_into + pwrite, summed; Python 3.11 does not name OS
threads, so they are recognised as the threads that wrote the file's bytes, /proc/.../io wchar) and
"hasher" (the sha256 thread of services/downloader/sink.py: the busiest of the other threads). CPU
seconds of the server process, the catalog, the gateway and curl are printed too.

`--rate-mbps R` paces every connection of the server to R MB/s, like a CDN that limits each connection
(Hugging Face's does): the link, not the CPU, is then what both contenders wait for.

Every run writes the whole file and removes it right after (no 2 GiB file is left behind). Medians over
`--runs` runs are printed with MB/s (MB = 10^6 bytes), the ratio ours/curl of MB/s (target >= 0.95) and
the downloader's peak RSS (target < 150 MB).

Usage: python bench/download/bench_download.py [--size-mib 2048] [--runs 3] [--connections 1,4]
           [--rate-mbps 0] [--env JAN_DOWNLOADER_CHUNK_BYTES=4194304 ...] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

from cli.stack import SERVICES, Stack, free_port

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tests.fakes is not an installed package
    sys.path.insert(0, str(REPO))

MiB = 1024 * 1024
ROUTE = "/files/big.gguf"
SEED = 42
MODEL_ID = "big/big"
POLL_S = 0.02
SAMPLE_S = 0.01
CLK_TCK = os.sysconf("SC_CLK_TCK")
# System call numbers a blocked thread of the downloader is seen in (x86_64; elsewhere shown as numbers).
SYSCALLS = (
    {
        "0": "read",
        "1": "write",
        "7": "poll",
        "17": "pread",
        "18": "pwrite",
        "45": "recv",
        "74": "fsync",
        "75": "fsync",
        "202": "futex",
        "232": "epoll",
        "281": "epoll",
    }
    if platform.machine() == "x86_64"
    else {}
)


# --------------------------------------------------------------------------------------------------------
# The server, in a process of its own


def _serve_hub(size: int, conn: Connection, rate_mbps: float = 0.0) -> None:
    from tests.fakes.hub import FakeHub, Faults

    with FakeHub() as hub:
        hub.add_file(ROUTE, (size, SEED))
        if rate_mbps:
            hub.faults[ROUTE] = Faults(rate_bytes_per_s=rate_mbps * 1e6)
        conn.send((hub.url + ROUTE, hub.sha256_of_file(ROUTE)))
        conn.recv()  # anything: stop


# --------------------------------------------------------------------------------------------------------
# /proc


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a whole process (its ended threads included)."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = line[line.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15: utime, stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ThreadCounters:
    cpu_ns: int = 0  # on a CPU
    wait_ns: int = 0  # runnable, waiting for a CPU
    wchar: int = 0  # bytes passed to write-like system calls


@dataclass
class ThreadProfile:
    cpu_s: float = 0.0
    cpu_wait_s: float = 0.0
    states: dict[str, float] = field(default_factory=dict)  # wall seconds seen in each state


@dataclass
class Profile:
    process_cpu_s: float
    loop: ThreadProfile
    conns: ThreadProfile  # the connection threads (they write the file's bytes), summed
    hasher: ThreadProfile


class Sampler(threading.Thread):
    """A poor man's profiler of one process: every SAMPLE_S, the state of each of its threads ("running" =
    runnable, else the system call it is blocked in); every few samples, their schedstat and io counters
    (kept after a thread ends, as last seen)."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.pid = pid
        self.tasks = Path(f"/proc/{pid}/task")
        self.halt = threading.Event()
        self.states: dict[int, Counter[str]] = defaultdict(Counter)
        self.samples = 0
        self.elapsed = 0.0
        self.counters: dict[int, ThreadCounters] = {}
        self._read_counters()
        self.base = dict(self.counters)
        self.base_cpu = process_cpu(pid)

    def _tids(self) -> list[str]:
        try:
            return os.listdir(self.tasks)
        except OSError:
            return []

    def _read_counters(self) -> None:
        for tid in self._tids():
            try:
                run_ns, wait_ns = (int(x) for x in (self.tasks / tid / "schedstat").read_text().split()[:2])
                io = dict(line.split(": ", 1) for line in (self.tasks / tid / "io").read_text().splitlines())
                self.counters[int(tid)] = ThreadCounters(run_ns, wait_ns, int(io["wchar"]))
            except (OSError, KeyError, ValueError):
                continue

    def run(self) -> None:
        started = time.perf_counter()
        while not self.halt.wait(SAMPLE_S):
            for tid in self._tids():
                try:
                    call = (self.tasks / tid / "syscall").read_text().split(maxsplit=1)[0]
                except (OSError, IndexError):
                    continue
                self.states[int(tid)]["running" if call == "running" else SYSCALLS.get(call, call)] += 1
            self.samples += 1
            if self.samples % 5 == 0:
                self._read_counters()
        self._read_counters()
        self.elapsed = time.perf_counter() - started

    def finish(self, size: int) -> Profile:
        self.halt.set()
        self.join()
        cpu = process_cpu(self.pid) - self.base_cpu
        zero = ThreadCounters()

        def delta(tid: int) -> ThreadCounters:
            a, b = self.base.get(tid, zero), self.counters.get(tid, zero)
            return ThreadCounters(b.cpu_ns - a.cpu_ns, b.wait_ns - a.wait_ns, b.wchar - a.wchar)

        def profile(tids: list[int]) -> ThreadProfile:
            per_sample = self.elapsed / max(self.samples, 1)
            states: Counter[str] = Counter()
            for tid in tids:
                states.update(self.states[tid])
            return ThreadProfile(
                sum(delta(t).cpu_ns for t in tids) / 1e9,
                sum(delta(t).wait_ns for t in tids) / 1e9,
                {name: n * per_sample for name, n in states.most_common()},
            )

        others = [tid for tid in self.counters if tid != self.pid]
        conns = [tid for tid in others if delta(tid).wchar >= MiB]
        rest = [tid for tid in others if tid not in conns]
        hasher = max(rest, key=lambda tid: delta(tid).cpu_ns, default=None)
        return Profile(cpu, profile([self.pid]), profile(conns), profile([hasher] if hasher else []))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# The two contenders


@dataclass
class CurlRun:
    seconds: float
    fsync_s: float
    sha256sum_s: float
    curl_cpu: float
    server_cpu: float


@dataclass
class OursRun:
    seconds: float
    rss_mb: float
    sha_ok: bool
    hashlib_s: float  # sha256 of the final file here (context: the hashing work the downloader does)
    profile: Profile
    cpu: dict[str, float]  # CPU seconds of the server, catalog and gateway processes
    transfer_s: float  # POST until the job was first seen storing (or done): the transfer and its hash


def run_curl(url: str, sha: str, size: int, tmp: Path, server_pid: int) -> CurlRun:
    out = tmp / "curl.bin"
    try:
        cpu0, server0 = children_cpu(), process_cpu(server_pid)
        t = time.perf_counter()
        subprocess.run(["curl", "-sS", "-o", str(out), url], check=True)
        seconds = time.perf_counter() - t
        curl_cpu, server_cpu = children_cpu() - cpu0, process_cpu(server_pid) - server0
        assert out.stat().st_size == size, f"curl wrote {out.stat().st_size} bytes, not {size}"
        t = time.perf_counter()
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_s = time.perf_counter() - t
        t = time.perf_counter()
        digest = subprocess.run(["sha256sum", str(out)], check=True, capture_output=True, text=True)
        sha256sum_s = time.perf_counter() - t
        assert digest.stdout.split()[0] == sha, "curl's file has another sha256 than the server's"
    finally:
        out.unlink(missing_ok=True)
    return CurlRun(seconds, fsync_s, sha256sum_s, curl_cpu, server_cpu)


def start_stack(root: Path, env: dict[str, str], attempts: int = 2) -> Stack:
    """The stack as `make up` starts it, on free ports over a fresh root; one more try (new ports) if it
    does not come up (a free port can be taken by another process between the check and the bind)."""
    for attempt in range(1, attempts + 1):
        shutil.rmtree(root, ignore_errors=True)
        stack = Stack(root, ports={name: free_port() for name in SERVICES})
        try:
            stack.start(extra_env=env, timeout=120)
            return stack
        except RuntimeError as exc:
            logs = "\n".join(f"--- {name}.log\n{stack.log_tail(name, 15)}" for name in SERVICES)
            print(f"the stack did not start (attempt {attempt}): {exc}\n{logs}", flush=True)
            if attempt == attempts:
                shutil.rmtree(root, ignore_errors=True)
                raise
    raise AssertionError("unreachable")


def run_ours(
    url: str, sha: str, size: int, tmp: Path, server_pid: int, connections: int, extra_env: dict[str, str]
) -> OursRun:
    root = tmp / f"jan-c{connections}"
    env = {
        "JAN_ALLOW_PRIVATE_NETWORKS": "true",
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_DOWNLOADER_CONNECTIONS": str(connections),
        **extra_env,
    }
    stack = start_stack(root, env)
    try:
        model_json = root / "models" / "big" / "big.json"
        model_json.parent.mkdir(parents=True, exist_ok=True)
        model_json.write_text(json.dumps({"source_url": url}))
        pids = {
            "server": server_pid,
            "catalog": stack.procs["catalog"].pid,
            "gateway": stack.procs["gateway"].pid,
        }
        downloader = stack.procs["downloader"].pid
        with httpx.Client(base_url=stack.url, timeout=60) as http:
            deadline = time.monotonic() + 30
            while http.get(f"/v1/models/{MODEL_ID}").status_code != 200:
                assert time.monotonic() < deadline, "the catalog never listed the model"
                time.sleep(POLL_S)
            cpu0 = {name: process_cpu(pid) for name, pid in pids.items()}
            sampler = Sampler(downloader)
            sampler.start()
            t0 = time.perf_counter()
            resp = http.post(f"/v1/models/{MODEL_ID}/download")
            assert resp.status_code == 202, resp.text
            transfer_s = float("nan")
            while True:
                job = http.get(
                    f"/v1/models/{MODEL_ID}/download", headers={"accept": "application/json"}
                ).json()
                if job["phase"] in ("storing", "done") and transfer_s != transfer_s:
                    transfer_s = time.perf_counter() - t0
                if job["phase"] in ("done", "failed", "cancelled"):
                    break
                assert time.perf_counter() - t0 < 1800, f"download stuck: {job}"
                time.sleep(POLL_S)
            seconds = time.perf_counter() - t0
            profile = sampler.finish(size)
            cpu = {name: process_cpu(pid) - cpu0[name] for name, pid in pids.items()}
            assert job["phase"] == "done", f"download ended {job['phase']}: {job['error']}"
            rss = peak_rss_mb(downloader)
        binary = root / "models" / "big" / "big.gguf"
        t = time.perf_counter()
        digest = sha256_file(binary)
        hashlib_s = time.perf_counter() - t
        sha_ok = job["files"][0]["sha256"] == sha and binary.stat().st_size == size and digest == sha
        return OursRun(seconds, rss, sha_ok, hashlib_s, profile, cpu, transfer_s)
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# Report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def state_line(profiles: list[ThreadProfile]) -> str:
    """Median wall seconds per state, the largest first, with CPU time and waiting for a CPU."""
    names = Counter[str]()
    for p in profiles:
        names.update(p.states)
    parts = [
        f"{name} {med([p.states.get(name, 0.0) for p in profiles]):.2f}" for name, _ in names.most_common(5)
    ]
    cpu, wait = med([p.cpu_s for p in profiles]), med([p.cpu_wait_s for p in profiles])
    return f"CPU {cpu:.2f} s, waiting for a CPU {wait:.2f} s; seen (s): {', '.join(parts)}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=2048, help="size of the file (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant (medians are printed)")
    parser.add_argument(
        "--connections", default="1,4", help="JAN_DOWNLOADER_CONNECTIONS values to compare (comma-separated)"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the stack"
    )
    parser.add_argument(
        "--rate-mbps",
        type=float,
        default=0.0,
        help="pace each connection of the server to this many MB/s (a CDN's per-connection limit); 0: none",
    )
    parser.add_argument("--tmp", default=None, help="where the files are written (default: the system's tmp)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    conns = [int(c) for c in args.connections.split(",") if c.strip()]
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    if shutil.which("curl") is None or shutil.which("sha256sum") is None:
        raise SystemExit("curl and sha256sum are needed (apt-get install -y curl)")

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(
        target=_serve_hub, args=(size, child, args.rate_mbps), name="bench-server", daemon=True
    )
    t = time.perf_counter()
    server.start()
    curl_runs: list[CurlRun] = []
    ours: dict[int, list[OursRun]] = {c: [] for c in conns}
    try:
        url, sha = parent.recv()
        assert server.pid is not None
        print(
            f"server: {url} ({size / MiB:.0f} MiB, sha256 {sha[:16]}...,"
            f" up in {time.perf_counter() - t:.1f} s)"
        )
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"machine: {os.cpu_count()} CPUs, load average {load}; extra env for ours: {extra_env or 'none'};"
            f" server pace per connection: {f'{args.rate_mbps:g} MB/s' if args.rate_mbps else 'none'}"
        )
        with tempfile.TemporaryDirectory(prefix="jan-bench-dl-", dir=args.tmp) as tmp_name:
            tmp = Path(tmp_name)
            for r in range(args.runs):
                for c in conns:
                    cr = run_curl(url, sha, size, tmp, server.pid)
                    curl_runs.append(cr)
                    print(
                        f"run {r + 1} curl: {cr.seconds:.2f} s, {mbps(size, cr.seconds):.0f} MB/s"
                        f" (then fsync {cr.fsync_s:.2f} s, sha256sum {cr.sha256sum_s:.2f} s;"
                        f" CPU s: curl {cr.curl_cpu:.2f}, server {cr.server_cpu:.2f})",
                        flush=True,
                    )
                    o = run_ours(url, sha, size, tmp, server.pid, c, extra_env)
                    ours[c].append(o)
                    p = o.profile
                    print(
                        f"run {r + 1} ours c={c}: {o.seconds:.2f} s, {mbps(size, o.seconds):.0f} MB/s,"
                        f" peak RSS {o.rss_mb:.0f} MB, sha256 {'ok' if o.sha_ok else 'WRONG'}"
                        f" (hashlib re-read {o.hashlib_s:.2f} s); CPU s: downloader {p.process_cpu_s:.2f}"
                        f" (loop {p.loop.cpu_s:.2f}, conns {p.conns.cpu_s:.2f}, hasher {p.hasher.cpu_s:.2f}),"
                        f" server {o.cpu['server']:.2f}, catalog {o.cpu['catalog']:.2f},"
                        f" gateway {o.cpu['gateway']:.2f};"
                        f" loop in fsync {p.loop.states.get('fsync', 0):.2f} s",
                        flush=True,
                    )
    finally:
        if server.is_alive():
            parent.send("stop")
            server.join(timeout=30)
        if server.is_alive():
            server.terminate()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {load} (other work on this machine makes every number noisier)")
    curl_s = med([c.seconds for c in curl_runs])
    fsync_s = med([c.fsync_s for c in curl_runs])
    sum_s = med([c.sha256sum_s for c in curl_runs])
    print()
    print(
        f"Summary: {size / MiB:.0f} MiB over loopback, medians of {args.runs} runs"
        f" (curl: {len(curl_runs)} runs)"
    )
    header = (
        f"{'variant':<24} {'seconds':>7} {'MB/s':>6} {'ours/curl':>9} {'peak RSS':>9} {'sha256':>6}"
        f" {'CPU s':>6} {'loop':>5} {'conns':>6} {'hasher':>6} {'server':>6}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{'curl (baseline)':<24} {curl_s:>7.2f} {mbps(size, curl_s):>6.0f} {1:>9.2f} {'-':>9} {'ok':>6}"
        f" {med([c.curl_cpu for c in curl_runs]):>6.2f} {'-':>5} {'-':>6} {'-':>6}"
        f" {med([c.server_cpu for c in curl_runs]):>6.2f}"
    )
    print(
        f"{'curl + fsync (context)':<24} {curl_s + fsync_s:>7.2f} {mbps(size, curl_s + fsync_s):>6.0f}"
        f" {curl_s / (curl_s + fsync_s):>9.2f}"
    )
    verdicts = []
    for c, runs in ours.items():
        s = med([o.seconds for o in runs])
        rss = max(o.rss_mb for o in runs)
        ok = all(o.sha_ok for o in runs)
        ratio = curl_s / s
        print(
            f"{f'ours, {c} connection(s)':<24} {s:>7.2f} {mbps(size, s):>6.0f} {ratio:>9.2f}"
            f" {med([o.rss_mb for o in runs]):>6.0f} MB {'ok' if ok else 'WRONG':>6}"
            f" {med([o.profile.process_cpu_s for o in runs]):>6.2f}"
            f" {med([o.profile.loop.cpu_s for o in runs]):>5.2f}"
            f" {med([o.profile.conns.cpu_s for o in runs]):>6.2f}"
            f" {med([o.profile.hasher.cpu_s for o in runs]):>6.2f}"
            f" {med([o.cpu['server'] for o in runs]):>6.2f}"
        )
        verdicts.append(
            f"ours c={c}: ratio {ratio:.2f} ({'met' if ratio >= 0.95 else 'NOT met'}: >= 0.95),"
            f" max peak RSS {rss:.0f} MB ({'met' if rss < 150 else 'NOT met'}: < 150 MB),"
            f" sha256 {'verified' if ok else 'WRONG'} in every run"
        )
    print(
        "seconds: wall (curl: its run; ours: POST -> phase done); MB = 10^6 bytes; ours/curl: ratio of MB/s;"
        " CPU s: CPU seconds of curl / of the downloader process (loop: its event-loop thread, conns: its"
        " connection threads, hasher: its sha256 thread); server: of the HTTP server process"
    )
    hashlib_s = med([o.hashlib_s for runs in ours.values() for o in runs])
    print(
        f"context: sha256sum of curl's file {sum_s:.2f} s ({mbps(size, sum_s):.0f} MB/s);"
        f" sha256 with hashlib (page cache) {hashlib_s:.2f} s ({mbps(size, hashlib_s):.0f} MB/s);"
        f" fsync of curl's file {fsync_s:.2f} s"
    )
    print()
    print("Where the downloader's wall time goes (medians; states sampled every 10 ms from /proc):")
    for c, runs in ours.items():
        print(f"  c={c} loop thread:   {state_line([o.profile.loop for o in runs])}")
        print(f"  c={c} conn threads: {state_line([o.profile.conns for o in runs])}")
        print(f"  c={c} hasher:       {state_line([o.profile.hasher for o in runs])}")
        print(
            f"  c={c} from POST to phase storing (the transfer) {med([o.transfer_s for o in runs]):.2f} s,"
            f" then storing (fsync, rename, catalog) {med([o.seconds - o.transfer_s for o in runs]):.2f} s"
        )
    print(
        "  (running = on a CPU or waiting for one; futex = waiting for the GIL or for work; epoll = the event"
        " loop idle; fsync/pwrite/pread = blocked in that system call)"
    )
    print()
    for v in verdicts:
        print(v)


if __name__ == "__main__":
    main()
