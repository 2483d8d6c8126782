"""Benchmark: downloading one large file through the real downloader, against what users run instead.

A fake Hugging Face Hub (`tests.fakes.hub.FakeHub`, in a process of its own so that it shares no GIL with
the measuring code) serves one repository file, `bench/big-GGUF/big.gguf` (`--size-mib`, 512 MiB by
default, generated content) the way the real Hub does: `GET /bench/big-GGUF/resolve/main/big.gguf`
answers 302 with X-Repo-Commit, X-Linked-Etag (the sha256), X-Linked-Size, to an absolute URL on another
host name (`localhost`, the CDN) which serves the bytes with ranges. Every contender fetches that resolve
URL. Two links, in the same run against the same server (`--links`):

  - unpaced: loopback, as fast as the CPUs go;
  - paced: the CDN paces every connection to `--rate-mib-s` (40 MiB/s by default), as Hugging Face's
    does: the link, not the CPU, is then what the contenders wait for.

For each link, `--runs` times, alternating (the order rotates from run to run):

  - curl + sha256sum: `curl -sS -L -o FILE URL` then `sha256sum FILE`, timed together (what a user
    who verifies a download runs), from the start of curl to the end of sha256sum; the digest is checked.
  - hf_hub_download: `huggingface_hub.hf_hub_download(repo_id, filename)` in a subprocess of its own
    (HF_ENDPOINT = the fake Hub, HF_HUB_DISABLE_XET=1 for plain HTTP, a fresh HF_HOME per run), timed
    inside that process around the call (its interpreter start and imports excluded). It verifies no
    digest; the file's sha256 is checked here afterwards, untimed.
  - ours: the real catalog, downloader, runner and gateway processes started as `make up` does
    (`cli.stack.Stack` on free ports, a fresh JAN_ROOT per run) with the model object
    `models/big/big.json` = {"source_url": <resolve URL>}. Once GET /v1/models/big/big answers: the wall
    time from `POST /v1/models/big/big/download` until the job's phase is `done`, polling
    `GET /v1/models/big/big/download` (Accept: application/json) every 20 ms. The downloader computes the
    sha256 while the bytes arrive, checks it against X-Linked-Etag and makes the file durable (fsync)
    before `done`. Once per connection count (`JAN_DOWNLOADER_CONNECTIONS`, `--connections`); the
    headline is the default count of DownloaderSettings (what `make up` runs). Also recorded: the
    downloader's peak RSS (VmHWM) and that the final file's sha256 (read back here) and the job's equal
    the server's.
  - re-download of stored bytes (with the headline connection count, right after ours): a second model
    object `models/copy/big.json` declares the same file with its digest (`metadata.binaries` =
    [{"name", "url", "sha256", "size"}]); timed from its POST .../download to `done`, with the bytes the
    fake Hub sent meanwhile (its `bytes_sent` counter) and whether the result shares the first file's
    inode. Target: < 1 s whatever the size, 0 bytes sent (a content already stored is linked, not
    downloaded). Until the downloader has that rule, this is a full download and is reported as one.

Where the downloader's time goes, without a profiler: a sampling thread reads every 10 ms what each thread
of the downloader process is doing (/proc/<pid>/task/<tid>/syscall: runnable, or the system call it is
blocked in: fsync, pwrite, futex = waiting for the GIL or for work, epoll = the event loop idle) and, from
/proc/.../schedstat, each thread's CPU time and time spent runnable but waiting for a CPU. The threads
reported: "loop" (the main thread: asyncio event loop, gRPC), "conns" (the connection threads of
services/downloader/httpconn.py + fetch.py: recv_into + pwrite, summed; Python 3.11 does not name OS
threads, so they are recognised as the threads that wrote the file's bytes, /proc/.../io wchar) and
"hasher" (the sha256 thread of services/downloader/sink.py: the busiest of the other threads).

Every run writes the whole file and removes it right after. Medians over `--runs` runs are printed with
MB/s (MB = 10^6 bytes) and the ratios ours/peer of MB/s (targets: >= 1.0 against both peers on both
links) and the downloader's peak RSS (target < 150 MB).

Usage: python bench/download/bench_download.py [--size-mib 512] [--runs 3] [--links unpaced,paced]
           [--rate-mib-s 40] [--connections 4,1] [--env JAN_DOWNLOADER_CHUNK_BYTES=4194304 ...] [--tmp DIR]
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
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from cli.stack import SERVICES, Stack, free_port
from services.downloader.settings import DownloaderSettings

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tests.fakes is not an installed package
    sys.path.insert(0, str(REPO))

MiB = 1024 * 1024
REPO_ID = "bench/big-GGUF"
FILE = "big.gguf"
SEED = 42
MODEL_ID = "big/big"
COPY_ID = "copy/big"
POLL_S = 0.02
SAMPLE_S = 0.01
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_CONNECTIONS: int = DownloaderSettings.default("connections")
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
# The peer, run in a process of its own: prints the seconds hf_hub_download took and the file's path.
HF_SCRIPT = """
import json, sys, time
from huggingface_hub import hf_hub_download
t = time.perf_counter()
path = hf_hub_download(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "path": path}))
"""


# --------------------------------------------------------------------------------------------------------
# The server, in a process of its own, driven through a pipe


def _serve_hub(size: int, conn: Connection) -> None:
    from tests.fakes.hub import FakeHub, Faults

    key = f"{REPO_ID}/{FILE}"
    with FakeHub(cdn_host="localhost") as hub:
        hub.add_repo(REPO_ID, {FILE: (size, SEED)})
        conn.send((hub.url, hub.sha256_of(REPO_ID, FILE)))
        while True:
            command, arg = conn.recv()
            if command == "pace":  # bytes/s per connection; 0: none
                if arg:
                    hub.faults[key] = Faults(rate_bytes_per_s=arg)
                else:
                    hub.faults.pop(key, None)
                conn.send(None)
            elif command == "reset":
                hub.reset_counters()
                conn.send(None)
            elif command == "sent":
                conn.send(hub.bytes_sent)
            else:
                return


class Server:
    """The fake Hub's process and the pipe that drives it (from the main thread only)."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_hub, args=(size, child), name="bench-server", daemon=True)
        self._proc.start()
        self.endpoint, self.sha256 = self._pipe.recv()
        assert self._proc.pid is not None
        self.pid: int = self._proc.pid
        self.url = f"{self.endpoint}/{REPO_ID}/resolve/main/{FILE}"

    def _call(self, command: str, arg: Any = None) -> Any:
        self._pipe.send((command, arg))
        return self._pipe.recv()

    def pace(self, bytes_per_s: float) -> None:
        self._call("pace", bytes_per_s)

    def reset_counters(self) -> None:
        self._call("reset")

    def bytes_sent(self) -> int:
        return int(self._call("sent"))

    def stop(self) -> None:
        if self._proc.is_alive():
            self._pipe.send(("stop", None))
            self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.terminate()


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
# The contenders


@dataclass
class PeerRun:
    seconds: float  # what the ratios use
    transfer_s: float  # of those, the transfer alone (curl: without sha256sum)
    parts: str  # where those seconds went, for the log
    cpu: float  # CPU seconds of the peer's processes
    server_cpu: float


@dataclass
class RelinkRun:
    seconds: float  # POST -> done
    bytes_sent: int  # by the fake Hub meanwhile
    shared_inode: bool  # the copy is a hard link of the first download
    sha_ok: bool


@dataclass
class OursRun:
    seconds: float
    rss_mb: float
    sha_ok: bool
    profile: Profile
    cpu: dict[str, float]  # CPU seconds of the server, catalog and gateway processes
    transfer_s: float  # POST until the job was first seen storing (or done): the transfer and its hash
    bytes_sent: int  # by the fake Hub during the download (the file's size, and the probe's byte)
    relink: RelinkRun | None


def run_curl(server: Server, size: int, tmp: Path) -> PeerRun:
    out = tmp / "curl.bin"
    try:
        cpu0, server0 = children_cpu(), process_cpu(server.pid)
        t = time.perf_counter()
        subprocess.run(["curl", "-sS", "-L", "-o", str(out), server.url], check=True)
        curl_s = time.perf_counter() - t
        digest = subprocess.run(["sha256sum", str(out)], check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        cpu, server_cpu = children_cpu() - cpu0, process_cpu(server.pid) - server0
        assert out.stat().st_size == size, f"curl wrote {out.stat().st_size} bytes, not {size}"
        assert digest.stdout.split()[0] == server.sha256, "curl's file has another sha256 than the server's"
    finally:
        out.unlink(missing_ok=True)
    parts = f"curl {curl_s:.2f} s + sha256sum {seconds - curl_s:.2f} s"
    return PeerRun(seconds, curl_s, parts, cpu, server_cpu)


def run_hf(server: Server, size: int, tmp: Path) -> PeerRun:
    home = tmp / "hf-home"
    shutil.rmtree(home, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # no real token, no real cache
    env.update(
        HF_ENDPOINT=server.endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1"
    )
    try:
        cpu0, server0 = children_cpu(), process_cpu(server.pid)
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", HF_SCRIPT, REPO_ID, FILE], env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - t
        cpu, server_cpu = children_cpu() - cpu0, process_cpu(server.pid) - server0
        assert done.returncode == 0, f"hf_hub_download failed:\n{done.stderr[-3000:]}"
        result = json.loads(done.stdout.strip().splitlines()[-1])
        path = Path(result["path"])
        assert path.stat().st_size == size, f"hf_hub_download wrote {path.stat().st_size} bytes, not {size}"
        assert sha256_file(path) == server.sha256, "hf_hub_download's file has another sha256"
    finally:
        shutil.rmtree(home, ignore_errors=True)
    seconds = float(result["seconds"])
    return PeerRun(seconds, seconds, f"the call {seconds:.2f} s (process {wall:.2f} s)", cpu, server_cpu)


def start_stack(root: Path, env: dict[str, str], attempts: int = 2) -> Stack:
    """The stack's services, on free ports over a fresh root, with the downloader in a process of its own
    (as compose runs it; `make up` runs it with the catalog), so that the CPU and memory measured are its
    own; one more try (new ports) if it does not come up (a free port can be taken by another process
    between the check and the bind)."""
    for attempt in range(1, attempts + 1):
        shutil.rmtree(root, ignore_errors=True)
        stack = Stack(root, ports={name: free_port() for name in SERVICES}, separate=True)
        try:
            stack.start(extra_env=env, timeout=120)
            return stack
        except RuntimeError as exc:
            logs = "\n".join(f"--- {name}.log\n{stack.log_tail(name, 15)}" for name in stack.names)
            print(f"the stack did not start (attempt {attempt}): {exc}\n{logs}", flush=True)
            if attempt == attempts:
                shutil.rmtree(root, ignore_errors=True)
                raise
    raise AssertionError("unreachable")


def download(http: httpx.Client, model_id: str, on_poll: Callable[[dict[str, Any], float], None]) -> float:
    """POST .../download, then polls the job until it ends; returns the seconds from the POST to the end."""
    t0 = time.perf_counter()
    resp = http.post(f"/v1/models/{model_id}/download")
    assert resp.status_code == 202, resp.text
    while True:
        job = http.get(f"/v1/models/{model_id}/download", headers={"accept": "application/json"}).json()
        on_poll(job, time.perf_counter() - t0)
        if job["phase"] in ("done", "failed", "cancelled"):
            seconds = time.perf_counter() - t0
            assert job["phase"] == "done", f"download of {model_id} ended {job['phase']}: {job['error']}"
            return seconds
        assert time.perf_counter() - t0 < 1800, f"download stuck: {job}"
        time.sleep(POLL_S)


def wait_listed(http: httpx.Client, model_id: str) -> None:
    deadline = time.monotonic() + 30
    while http.get(f"/v1/models/{model_id}").status_code != 200:
        assert time.monotonic() < deadline, f"the catalog never listed {model_id}"
        time.sleep(POLL_S)


def write_model(root: Path, model_id: str, obj: dict[str, Any]) -> None:
    path = root / "models" / f"{model_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def relink(http: httpx.Client, root: Path, server: Server, size: int) -> RelinkRun:
    """A second model object declaring the same file with its digest, downloaded: what it costs."""
    binary = {"name": FILE, "url": server.url, "sha256": server.sha256, "size": size}
    write_model(root, COPY_ID, {"source_url": server.url, "metadata": {"binaries": [binary]}})
    wait_listed(http, COPY_ID)
    server.reset_counters()
    seconds = download(http, COPY_ID, lambda job, t: None)
    sent = server.bytes_sent()
    first, copy = root / "models" / "big" / FILE, root / "models" / "copy" / FILE
    shared = first.stat().st_ino == copy.stat().st_ino
    sha_ok = copy.stat().st_size == size and sha256_file(copy) == server.sha256
    return RelinkRun(seconds, sent, shared, sha_ok)


def run_ours(
    server: Server, size: int, tmp: Path, connections: int, extra_env: dict[str, str], with_relink: bool
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
        write_model(root, MODEL_ID, {"source_url": server.url})
        pids = {
            "server": server.pid,
            "catalog": stack.procs["catalog"].pid,
            "gateway": stack.procs["gateway"].pid,
        }
        downloader = stack.procs["downloader"].pid
        with httpx.Client(base_url=stack.url, timeout=60) as http:
            wait_listed(http, MODEL_ID)
            cpu0 = {name: process_cpu(pid) for name, pid in pids.items()}
            server.reset_counters()
            sampler = Sampler(downloader)
            sampler.start()
            seen: dict[str, Any] = {"transfer_s": float("nan")}

            def on_poll(job: dict[str, Any], t: float) -> None:
                if job["phase"] in ("storing", "done") and seen["transfer_s"] != seen["transfer_s"]:
                    seen["transfer_s"] = t
                seen["job"] = job

            seconds = download(http, MODEL_ID, on_poll)
            profile = sampler.finish(size)
            sent = server.bytes_sent()
            cpu = {name: process_cpu(pid) - cpu0[name] for name, pid in pids.items()}
            binary = root / "models" / "big" / FILE
            sha_ok = (
                seen["job"]["files"][0]["sha256"] == server.sha256
                and binary.stat().st_size == size
                and sha256_file(binary) == server.sha256
            )
            relinked = relink(http, root, server, size) if with_relink else None
            rss = peak_rss_mb(downloader)
        return OursRun(seconds, rss, sha_ok, profile, cpu, seen["transfer_s"], sent, relinked)
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


@dataclass
class LinkResults:
    name: str
    pace: float  # bytes/s per connection; 0: none
    curl: list[PeerRun] = field(default_factory=list)
    hf: list[PeerRun] = field(default_factory=list)
    ours: dict[int, list[OursRun]] = field(default_factory=dict)


def describe_link(link: LinkResults) -> str:
    return f"{link.name} ({f'{link.pace / MiB:g} MiB/s per connection' if link.pace else 'loopback'})"


def report_link(link: LinkResults, size: int, headline: int) -> list[str]:
    """Prints the link's table; returns its verdicts."""
    curl_s = med([r.seconds for r in link.curl])
    hf_s = med([r.seconds for r in link.hf])
    print(f"\n{describe_link(link)}: {size / MiB:.0f} MiB, medians of {len(link.curl)} runs")
    header = (
        f"{'contender':<26} {'seconds':>7} {'MB/s':>6} {'ours/this':>9} {'peak RSS':>9} {'sha256':>8}"
        f" {'CPU s':>6} {'server':>6}"
    )
    print(header)
    print("-" * len(header))
    headline_s = med([o.seconds for o in link.ours[headline]])
    for label, peer in (("curl -L + sha256sum", link.curl), ("hf_hub_download", link.hf)):
        s = med([r.seconds for r in peer])
        print(
            f"{label:<26} {s:>7.2f} {mbps(size, s):>6.0f} {s / headline_s:>9.2f} {'-':>9} {'checked':>8}"
            f" {med([r.cpu for r in peer]):>6.2f} {med([r.server_cpu for r in peer]):>6.2f}"
        )
    alone = med([r.transfer_s for r in link.curl])
    print(
        f"{'(context) curl alone':<26} {alone:>7.2f} {mbps(size, alone):>6.0f} {alone / headline_s:>9.2f}"
        "    (no digest computed: not a peer)"
    )
    verdicts = []
    for c, runs in link.ours.items():
        s = med([o.seconds for o in runs])
        ok = all(o.sha_ok for o in runs)
        label = f"ours, {c} connection(s)" + (" *" if c == headline else "")
        print(
            f"{label:<26} {s:>7.2f} {mbps(size, s):>6.0f} {s / headline_s:>9.2f}"
            f" {med([o.rss_mb for o in runs]):>6.0f} MB {'verified' if ok else 'WRONG':>8}"
            f" {med([o.profile.process_cpu_s for o in runs]):>6.2f}"
            f" {med([o.cpu['server'] for o in runs]):>6.2f}"
        )
        rss = max(o.rss_mb for o in runs)
        to_hf, to_curl = hf_s / s, curl_s / s
        verdicts.append(
            f"{link.name}, ours c={c}{' (default)' if c == headline else ''}:"
            f" ours/hf_hub_download {to_hf:.2f} ({'met' if to_hf >= 1.0 else 'NOT met'}: >= 1.0),"
            f" ours/curl+sha256sum {to_curl:.2f} ({'met' if to_curl >= 1.0 else 'NOT met'}: >= 1.0),"
            f" max peak RSS {rss:.0f} MB ({'met' if rss < 150 else 'NOT met'}: < 150 MB),"
            f" sha256 {'verified' if ok else 'WRONG'} in every run"
        )
    print(
        f"(* the default, {headline} connections. ours/this: the default's MB/s over this row's. seconds:"
        " wall, curl from its start to sha256sum's end, hf_hub_download around the call in its process,"
        " ours POST -> phase done. CPU s: of the contender's processes (ours: the downloader only);"
        " server: of the fake Hub's process)"
    )
    print("Where the downloader's wall time goes (medians; states sampled every 10 ms from /proc):")
    for c, runs in link.ours.items():
        print(f"  c={c} loop thread:   {state_line([o.profile.loop for o in runs])}")
        print(f"  c={c} conn threads: {state_line([o.profile.conns for o in runs])}")
        print(f"  c={c} hasher:       {state_line([o.profile.hasher for o in runs])}")
        print(
            f"  c={c} from POST to phase storing (the transfer) {med([o.transfer_s for o in runs]):.2f} s,"
            f" then storing (fsync, rename, catalog) {med([o.seconds - o.transfer_s for o in runs]):.2f} s"
        )
    relinks = [o.relink for o in link.ours[headline] if o.relink is not None]
    if relinks:
        s = med([r.seconds for r in relinks])
        sent = max(r.bytes_sent for r in relinks)
        shared = all(r.shared_inode for r in relinks)
        ok = all(r.sha_ok for r in relinks)
        met = s < 1.0 and sent == 0
        print(
            f"re-download of stored bytes (a second model declaring the same sha256): {s:.2f} s"
            f" (runs: {', '.join(f'{r.seconds:.2f}' for r in relinks)}),"
            f" bytes sent by the Hub: at most {sent:,},"
            f" {'one inode shared with the first download' if shared else 'a file of its own'},"
            f" sha256 {'ok' if ok else 'WRONG'}"
        )
        verdicts.append(
            f"{link.name}, re-download of stored bytes: {s:.2f} s, {sent:,} bytes sent"
            f" ({'met' if met else 'NOT met'}: < 1 s and 0 bytes"
            f"{'' if sent == 0 else '; the bytes were downloaded again'})"
        )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512, help="size of the file (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each contender per link (medians)")
    parser.add_argument(
        "--links",
        default="unpaced,paced",
        help="links to measure, in this order: unpaced, paced (comma-separated)",
    )
    parser.add_argument(
        "--rate-mib-s", type=float, default=40.0, help="the paced link: MiB/s per connection (a CDN's limit)"
    )
    parser.add_argument(
        "--connections",
        default=f"{DEFAULT_CONNECTIONS},1",
        help="JAN_DOWNLOADER_CONNECTIONS values for ours (comma-separated; the default is the headline)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the stack"
    )
    parser.add_argument("--no-relink", action="store_true", help="skip the re-download of stored bytes")
    parser.add_argument("--tmp", default=None, help="where the files are written (default: the system's tmp)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    conns = [int(c) for c in args.connections.split(",") if c.strip()]
    headline = DEFAULT_CONNECTIONS if DEFAULT_CONNECTIONS in conns else conns[0]
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    paces = {"unpaced": 0.0, "paced": args.rate_mib_s * MiB}
    names = [n.strip() for n in args.links.split(",") if n.strip()]
    if unknown := [n for n in names if n not in paces]:
        raise SystemExit(f"unknown link(s) {unknown}: use unpaced, paced")
    if shutil.which("curl") is None or shutil.which("sha256sum") is None:
        raise SystemExit("curl and sha256sum are needed (apt-get install -y curl)")
    links = [LinkResults(n, paces[n], ours={c: [] for c in conns}) for n in names]

    t = time.perf_counter()
    server = Server(size)
    verdicts: list[str] = []
    try:
        print(
            f"server: {server.url} ({size / MiB:.0f} MiB, sha256 {server.sha256[:16]}...,"
            f" up in {time.perf_counter() - t:.1f} s); CDN on localhost"
        )
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"machine: {os.cpu_count()} CPUs, load average {load}; extra env for ours: {extra_env or 'none'}"
        )
        with tempfile.TemporaryDirectory(prefix="jan-bench-dl-", dir=args.tmp) as tmp_name:
            tmp = Path(tmp_name)
            for link in links:
                server.pace(link.pace)
                print(f"\n--- {describe_link(link)}", flush=True)
                for r in range(args.runs):
                    order = ["curl + sha256sum", "hf_hub_download", *(f"ours c={c}" for c in conns)]
                    shift = r % len(order)
                    for name in order[shift:] + order[:shift]:
                        if name.startswith("curl"):
                            link.curl.append(run_curl(server, size, tmp))
                        elif name.startswith("hf"):
                            link.hf.append(run_hf(server, size, tmp))
                        else:
                            c = int(name.split("=")[1])
                            relink_too = c == headline and not args.no_relink
                            link.ours[c].append(run_ours(server, size, tmp, c, extra_env, relink_too))
                        print(f"run {r + 1} {name}: {last_line(link, name, size)}", flush=True)
    finally:
        server.stop()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average at the end: {load} (other work on this machine makes every number noisier)")
    for link in links:
        verdicts += report_link(link, size, headline)
    print()
    for v in verdicts:
        print(v)


def last_line(link: LinkResults, name: str, size: int) -> str:
    """One run's result, as it comes."""
    if name.startswith("ours"):
        o = link.ours[int(name.split("=")[1])][-1]
        p = o.profile
        line = (
            f"{o.seconds:.2f} s, {mbps(size, o.seconds):.0f} MB/s, peak RSS {o.rss_mb:.0f} MB,"
            f" sha256 {'ok' if o.sha_ok else 'WRONG'}, {o.bytes_sent:,} bytes sent;"
            f" CPU s: downloader {p.process_cpu_s:.2f} (loop"
            f" {p.loop.cpu_s:.2f}, conns {p.conns.cpu_s:.2f}, hasher {p.hasher.cpu_s:.2f}),"
            f" server {o.cpu['server']:.2f}"
        )
        if o.relink is not None:
            line += (
                f"; re-download {o.relink.seconds:.2f} s, {o.relink.bytes_sent:,} bytes sent,"
                f" {'inode shared' if o.relink.shared_inode else 'own inode'}"
            )
        return line
    r = (link.curl if name.startswith("curl") else link.hf)[-1]
    return (
        f"{r.seconds:.2f} s, {mbps(size, r.seconds):.0f} MB/s ({r.parts}; CPU s {r.cpu:.2f},"
        f" server {r.server_cpu:.2f})"
    )


if __name__ == "__main__":
    main()
