"""Benchmark: downloading one large file through the real downloader, against curl on the same server.

A loopback HTTP server (`tests.fakes.hub.FakeHub`, with Range support and generated content) serves one
file (`--size-mib`, 2 GiB by default) from a process of its own, so that it shares no GIL with the
measuring code. In the same run, alternating, it measures:

  - curl (baseline): `curl -sS -o <tmp>/curl.bin <url>`, wall time. For context, and not counted in the
    baseline: `fsync` of curl's file right after it (curl leaves the bytes in the page cache, while the
    downloader makes them durable before it reports `done`) and `sha256sum` of it (curl verifies nothing,
    the downloader always computes the sha256 while bytes arrive).
  - ours: the real catalog, downloader and gateway processes started as `make up` does (`cli.stack.Stack`,
    free ports, a fresh JAN_ROOT per run), the model object `models/big/big.json` = {"source_url": url};
    once GET /v1/models/big/big answers, the wall time from `POST /v1/models/big/big/download` until the
    job's phase is `done`, polling `GET /v1/models/big/big/download` (Accept: application/json) every
    50 ms. Once per connection count (`JAN_DOWNLOADER_CONNECTIONS`, `--connections`, default 1 and 4).
    Also recorded: the downloader's peak RSS (VmHWM of its process), that the final file's sha256 (read
    back here) and the job's equal the server's, and where the time and CPU go: the job's timeline as the
    polls saw it (all bytes written -> done is the tail: the rest of the hash, fsync, commit, write-back)
    and the CPU seconds of the downloader's threads (event loop, the `fetch-io` writer thread that does
    pwrite + sha256, the rest), of the server, the catalog, the gateway and curl.

Every run writes the whole file and removes it right after (2 GiB files are never left behind). Medians over
`--runs` runs are printed with MB/s (MB = 10^6 bytes), the ratio ours/curl (target >= 0.95) and the
downloader's peak RSS (target < 150 MB).

Usage: python bench/download/bench_download.py [--size-mib 2048] [--runs 3] [--connections 1,4]
                                               [--env JAN_DOWNLOADER_CHUNK_BYTES=4194304 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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
POLL_S = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------------
# The server, in a process of its own


def _serve_hub(size: int, conn: Connection) -> None:
    from tests.fakes.hub import FakeHub

    with FakeHub() as hub:
        hub.add_file(ROUTE, (size, SEED))
        conn.send((hub.url + ROUTE, hub.sha256_of_file(ROUTE)))
        conn.recv()  # anything: stop


# --------------------------------------------------------------------------------------------------------
# CPU and memory from /proc


def _ticks(stat_line: str) -> tuple[str, float]:
    """(comm, user + system CPU seconds) from a /proc/.../stat line."""
    comm = stat_line[stat_line.index("(") + 1 : stat_line.rindex(")")]
    rest = stat_line[stat_line.rindex(")") + 2 :].split()
    return comm, (int(rest[11]) + int(rest[12])) / CLK_TCK  # fields 14 and 15: utime, stime


def process_cpu(pid: int) -> float:
    try:
        return _ticks(Path(f"/proc/{pid}/stat").read_text())[1]
    except OSError:
        return 0.0


@dataclass
class Snapshot:
    total: float  # CPU seconds of the whole process (threads that ended included)
    threads: dict[int, tuple[float, int]]  # tid -> (CPU seconds, wchar bytes), last seen values


class ThreadCPU:
    """Per-thread CPU of the downloader, sampled at every poll. Python 3.11 does not name OS threads, so the
    `fetch-io` writer thread is told by what it writes (/proc/.../io wchar: the file's pwrites)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last: dict[int, tuple[float, int]] = {}
        self.base = self.snap()

    def snap(self) -> Snapshot:
        try:
            tasks = list(Path(f"/proc/{self.pid}/task").iterdir())
        except OSError:
            tasks = []
        for task in tasks:
            try:
                cpu = _ticks((task / "stat").read_text())[1]
                io = dict(line.split(": ", 1) for line in (task / "io").read_text().splitlines())
                self.last[int(task.name)] = (cpu, int(io["wchar"]))
            except (OSError, KeyError, ValueError):
                continue
        return Snapshot(process_cpu(self.pid), dict(self.last))

    def writers(self, end: Snapshot, size: int) -> set[int]:
        return {
            tid
            for tid, (_, wchar) in end.threads.items()
            if tid != self.pid and wchar - self.base.threads.get(tid, (0.0, 0))[1] >= size // 2
        }

    def split(self, a: Snapshot, b: Snapshot, writers: set[int]) -> dict[str, float]:
        """CPU seconds between two snapshots: "loop" (the main thread: the asyncio event loop), "fetch-io"
        (the writer thread: pwrite + sha256), "other" (every other thread), "total"."""

        def cpu(snap: Snapshot, tid: int) -> float:
            return snap.threads.get(tid, (0.0, 0))[0]

        loop = cpu(b, self.pid) - cpu(a, self.pid)
        writer = sum(cpu(b, t) - cpu(a, t) for t in writers)
        total = b.total - a.total
        return {"total": total, "loop": loop, "fetch-io": writer, "other": total - loop - writer}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    hub_cpu: float


@dataclass
class OursRun:
    seconds: float
    rss_mb: float
    sha_ok: bool
    # Timeline as the polls saw it (seconds after the POST; nan when a phase was not seen).
    t_downloading: float
    t_all_bytes: float
    t_storing: float
    cpu_transfer: dict[str, float]  # downloader threads, POST -> all bytes written
    cpu_tail: dict[str, float]  # downloader threads, all bytes written -> done
    other_cpu: dict[str, float] = field(default_factory=dict)  # hub, catalog, gateway, whole run


def run_curl(url: str, sha: str, size: int, tmp: Path, hub_pid: int) -> CurlRun:
    out = tmp / "curl.bin"
    try:
        cpu0, hub0 = children_cpu(), process_cpu(hub_pid)
        t = time.perf_counter()
        subprocess.run(["curl", "-sS", "-o", str(out), url], check=True)
        seconds = time.perf_counter() - t
        curl_cpu, hub_cpu = children_cpu() - cpu0, process_cpu(hub_pid) - hub0
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
    return CurlRun(seconds, fsync_s, sha256sum_s, curl_cpu, hub_cpu)


def run_ours(
    url: str, sha: str, size: int, tmp: Path, hub_pid: int, connections: int, extra_env: dict[str, str]
) -> OursRun:
    root = tmp / f"jan-c{connections}"
    shutil.rmtree(root, ignore_errors=True)
    stack = Stack(root, ports={name: free_port() for name in SERVICES})
    env = {
        "JAN_ALLOW_PRIVATE_NETWORKS": "true",
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_DOWNLOADER_CONNECTIONS": str(connections),
        **extra_env,
    }
    stack.start(extra_env=env)
    try:
        model_json = root / "models" / "big" / "big.json"
        model_json.parent.mkdir(parents=True, exist_ok=True)
        model_json.write_text(json.dumps({"source_url": url}))
        pids = {name: stack.procs[name].pid for name in SERVICES}
        dl_pid = pids["downloader"]
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            deadline = time.monotonic() + 30
            while http.get(f"/v1/models/{MODEL_ID}").status_code != 200:
                assert time.monotonic() < deadline, "the catalog never listed the model"
                time.sleep(POLL_S)
            others0 = {name: process_cpu(pid) for name, pid in {**pids, "hub": hub_pid}.items()}
            threads = ThreadCPU(dl_pid)
            cpu_mid: Snapshot | None = None
            seen: dict[str, float] = {}
            t0 = time.perf_counter()
            resp = http.post(f"/v1/models/{MODEL_ID}/download")
            assert resp.status_code == 202, resp.text
            while True:
                job = http.get(
                    f"/v1/models/{MODEL_ID}/download", headers={"accept": "application/json"}
                ).json()
                now = time.perf_counter() - t0
                seen.setdefault(job["phase"], now)
                snap = threads.snap()
                if cpu_mid is None and job["bytes_done"] >= size:
                    cpu_mid = snap
                    seen.setdefault("all_bytes", now)
                if job["phase"] in ("done", "failed", "cancelled"):
                    break
                assert now < 1800, f"download stuck: {job}"
                time.sleep(POLL_S)
            seconds = time.perf_counter() - t0
            cpu_end = threads.snap()
            others = {
                name: process_cpu(pid) - others0[name] for name, pid in {**pids, "hub": hub_pid}.items()
            }
            assert job["phase"] == "done", f"download ended {job['phase']}: {job['error']}"
            rss = peak_rss_mb(dl_pid)
        if cpu_mid is None:
            cpu_mid = cpu_end
        writers = threads.writers(cpu_end, size)
        binary = root / "models" / "big" / "big.gguf"
        sha_ok = (
            job["files"][0]["sha256"] == sha and binary.stat().st_size == size and sha256_file(binary) == sha
        )
        nan = float("nan")
        return OursRun(
            seconds=seconds,
            rss_mb=rss,
            sha_ok=sha_ok,
            t_downloading=seen.get("downloading", nan),
            t_all_bytes=seen.get("all_bytes", nan),
            t_storing=seen.get("storing", nan),
            cpu_transfer=threads.split(threads.base, cpu_mid, writers),
            cpu_tail=threads.split(cpu_mid, cpu_end, writers),
            other_cpu=others,
        )
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# Report


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop nan
    return statistics.median(values) if values else float("nan")


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


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
    parser.add_argument("--tmp", default=None, help="where the files are written (default: the system's tmp)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    conns = [int(c) for c in args.connections.split(",") if c.strip()]
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    if shutil.which("curl") is None or shutil.which("sha256sum") is None:
        raise SystemExit("curl and sha256sum are needed (apt-get install -y curl)")

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    hub = ctx.Process(target=_serve_hub, args=(size, child), name="bench-hub", daemon=True)
    t = time.perf_counter()
    hub.start()
    curl_runs: list[CurlRun] = []
    ours: dict[int, list[OursRun]] = {c: [] for c in conns}
    try:
        url, sha = parent.recv()
        assert hub.pid is not None
        print(
            f"server: {url} ({size / MiB:.0f} MiB, sha256 {sha[:16]}...,"
            f" ready in {time.perf_counter() - t:.1f} s)"
        )
        print(f"machine: {os.cpu_count()} CPUs; extra env: {extra_env or 'none'}")
        with tempfile.TemporaryDirectory(prefix="jan-bench-dl-", dir=args.tmp) as tmp_name:
            tmp = Path(tmp_name)
            for r in range(args.runs):
                for c in conns:  # alternate: curl, ours c=..., curl, ours c=...
                    cr = run_curl(url, sha, size, tmp, hub.pid)
                    curl_runs.append(cr)
                    print(
                        f"run {r + 1} curl: {cr.seconds:.2f} s {mbps(size, cr.seconds):.0f} MB/s"
                        f" (fsync after it {cr.fsync_s:.2f} s, sha256sum {cr.sha256sum_s:.2f} s,"
                        f" CPU curl {cr.curl_cpu:.2f} s server {cr.hub_cpu:.2f} s)",
                        flush=True,
                    )
                    o = run_ours(url, sha, size, tmp, hub.pid, c, extra_env)
                    ours[c].append(o)
                    print(
                        f"run {r + 1} ours c={c}: {o.seconds:.2f} s {mbps(size, o.seconds):.0f} MB/s,"
                        f" all bytes at {o.t_all_bytes:.2f} s, peak RSS {o.rss_mb:.0f} MB,"
                        f" sha256 {'ok' if o.sha_ok else 'WRONG'};"
                        f" CPU transfer loop {o.cpu_transfer['loop']:.2f} s"
                        f" fetch-io {o.cpu_transfer['fetch-io']:.2f} s other {o.cpu_transfer['other']:.2f} s,"
                        f" tail loop {o.cpu_tail['loop']:.2f} s fetch-io {o.cpu_tail['fetch-io']:.2f} s;"
                        f" server {o.other_cpu['hub']:.2f} s catalog {o.other_cpu['catalog']:.2f} s"
                        f" gateway {o.other_cpu['gateway']:.2f} s",
                        flush=True,
                    )
    finally:
        if hub.is_alive():
            parent.send("stop")
            hub.join(timeout=30)
        if hub.is_alive():
            hub.terminate()

    curl_s = med([c.seconds for c in curl_runs])
    fsync_s = med([c.fsync_s for c in curl_runs])
    sum_s = med([c.sha256sum_s for c in curl_runs])
    curl_mbps = mbps(size, curl_s)
    print()
    print(
        f"Summary: {size / MiB:.0f} MiB over loopback, medians of {args.runs} runs (curl: {len(curl_runs)})"
    )
    header = (
        f"{'variant':<22} {'seconds':>8} {'MB/s':>7} {'ours/curl':>9} {'peak RSS':>9} {'sha256':>7}"
        f" {'all bytes':>9} {'tail':>6} {'CPU loop':>8} {'fetch-io':>8} {'other':>6} {'server':>6}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{'curl (baseline)':<22} {curl_s:>8.2f} {curl_mbps:>7.0f} {1:>9.2f} {'-':>9} {'ok':>7}"
        f" {'-':>9} {'-':>6} {med([c.curl_cpu for c in curl_runs]):>8.2f} {'-':>8} {'-':>6}"
        f" {med([c.hub_cpu for c in curl_runs]):>6.2f}"
    )
    print(
        f"{'curl + fsync (context)':<22} {curl_s + fsync_s:>8.2f} {mbps(size, curl_s + fsync_s):>7.0f}"
        f" {curl_s / (curl_s + fsync_s):>9.2f}"
    )
    verdicts = []
    for c, runs in ours.items():
        s = med([o.seconds for o in runs])
        rss = max(o.rss_mb for o in runs)
        all_bytes = med([o.t_all_bytes for o in runs])
        ok = all(o.sha_ok for o in runs)
        ratio = curl_s / s
        print(
            f"{f'ours, {c} connection(s)':<22} {s:>8.2f} {mbps(size, s):>7.0f} {ratio:>9.2f}"
            f" {med([o.rss_mb for o in runs]):>6.0f} MB {'ok' if ok else 'WRONG':>7}"
            f" {all_bytes:>9.2f} {s - all_bytes:>6.2f}"
            f" {med([o.cpu_transfer['loop'] + o.cpu_tail['loop'] for o in runs]):>8.2f}"
            f" {med([o.cpu_transfer['fetch-io'] + o.cpu_tail['fetch-io'] for o in runs]):>8.2f}"
            f" {med([o.cpu_transfer['other'] + o.cpu_tail['other'] for o in runs]):>6.2f}"
            f" {med([o.other_cpu['hub'] for o in runs]):>6.2f}"
        )
        verdicts.append(
            f"ours c={c}: ratio {ratio:.2f} ({'met' if ratio >= 0.95 else 'NOT met'} >= 0.95),"
            f" max peak RSS {rss:.0f} MB ({'met' if rss < 150 else 'NOT met'} < 150 MB),"
            f" sha256 {'verified' if ok else 'WRONG'}"
        )
    print(
        f"sha256sum of curl's file (context, not in the baseline): {sum_s:.2f} s"
        f" ({mbps(size, sum_s):.0f} MB/s);"
        f" fsync of curl's file: {fsync_s:.2f} s"
    )
    print(
        "columns: seconds = wall time (curl: its run; ours: POST -> phase done); MB = 10^6 bytes;"
        " ours/curl = MB/s ratio; all bytes = when the polls first saw every byte written (s after the"
        " POST); tail = all bytes -> done (rest of the hash, fsync, commit); CPU loop / fetch-io / other ="
        " CPU seconds of the downloader's event-loop thread / writer thread (pwrite + sha256) / other"
        " threads (curl row: curl's own CPU); server = CPU seconds of the HTTP server process"
    )
    for v in verdicts:
        print(v)


if __name__ == "__main__":
    main()
