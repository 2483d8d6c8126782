"""Prometheus metrics kept in this process and written in the text exposition format (version 0.0.4) that
Prometheus, prometheus-adapter and KEDA scrape: counters, gauges and histograms with labels; families a
collector reads from live state when scraped; the process's own `process_*` and `python_*` metrics; and
`serve_metrics`, the `/metrics` endpoint of a gRPC service, served on its event loop.

Not `prometheus_client`: importing it brings `http.server`, `wsgiref` and `email`, and its endpoint is a
thread of its own: 2.0-2.7 MB resident in each process of an idle stack (docs/benchmarks.md). What is
written here is checked line for line against prometheus_client's output, and read back with its parser,
in tests/unit/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import math
import os
import platform
import re
import resource
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INF = math.inf

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
KINDS = ("counter", "gauge", "histogram", "untyped")


def _check_name(name: str) -> str:
    if not _METRIC_NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    return name


def _check_labels(names: Sequence[str]) -> tuple[str, ...]:
    for label in names:
        if not _LABEL_NAME.match(label) or label.startswith("__") or label == "le":
            raise ValueError(f"invalid label name {label!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated label name in {list(names)}")
    return tuple(names)


class Family:
    """One metric family as it is written: name, type, help and its samples. A collector makes these when
    scraped (`Family("jan_runner_models_loaded", "...", "gauge", ["runner"]).add(["r1"], 2)`)."""

    __slots__ = ("documentation", "kind", "labelnames", "name", "samples")

    def __init__(self, name: str, documentation: str, kind: str, labelnames: Sequence[str] = ()) -> None:
        if kind not in KINDS:
            raise ValueError(f"invalid metric type {kind!r}: one of {', '.join(KINDS)}")
        self.name = _check_name(name)
        self.documentation = documentation
        self.kind = kind
        self.labelnames = _check_labels(labelnames)
        # (sample name, label pairs, value): a histogram's samples are name_bucket, name_count, name_sum.
        self.samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = []

    def add(
        self, values: Sequence[str], value: float, *, suffix: str = "", extra: Sequence[tuple[str, str]] = ()
    ) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(values)}")
        self.samples.append((self.name + suffix, (*zip(self.labelnames, values, strict=True), *extra), value))


class Collector(Protocol):
    def collect(self) -> Iterable[Family]: ...


class Registry:
    """What one `/metrics` answer holds: every metric and collector registered here, in that order."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def register(self, collector: Collector, name: str | None = None) -> None:
        """`name`: a metric's, refused when taken (two metrics of one name would be one series twice)."""
        with self._lock:
            if name is not None:
                if name in self._names:
                    raise ValueError(f"metric {name!r} is registered already")
                self._names.add(name)
            self._collectors.append(collector)

    def collect(self) -> Iterator[Family]:
        with self._lock:
            collectors = list(self._collectors)
        for collector in collectors:
            yield from collector.collect()

    def exposition(self) -> bytes:
        """Every family in the text format."""
        return "".join(_family_text(family) for family in self.collect()).encode()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample (`jan_errors_total`, {"component": "gateway", "code": "..."}); None when
        there is none. For tests and tools: a scrape reads `exposition()`."""
        wanted = sorted((labels or {}).items())
        for family in self.collect():
            for sample_name, pairs, value in family.samples:
                if sample_name == name and sorted(pairs) == wanted:
                    return value
        return None


REGISTRY = Registry()


def _number(value: float) -> str:
    if value == INF:
        return "+Inf"
    if value == -INF:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _family_text(family: Family) -> str:
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {family.name} {doc}\n# TYPE {family.name} {family.kind}\n"]
    for name, pairs, value in family.samples:
        if pairs:
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(pairs))  # by name, as others do
            lines.append(f"{name}{{{labels}}} {_number(value)}\n")
        else:
            lines.append(f"{name} {_number(value)}\n")
    return "".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Metrics this process updates


class _Value:
    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._lock = threading.Lock()

    def _add(self, amount: float) -> None:
        with self._lock:
            self.value += amount


class _CounterValue(_Value):
    """One series' count: only goes up."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up: inc({amount})")
        self._add(amount)


class _GaugeValue(_Value):
    """One series' value: goes up and down."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        self._add(amount)

    def dec(self, amount: float = 1) -> None:
        self._add(-amount)

    def set(self, value: float) -> None:
        self.value = float(value)


class _HistogramValue:
    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative: made cumulative when written
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self._bounds, value)  # the first bound >= value: `le` is inclusive
        with self._lock:
            self.counts[i] += 1
            self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self.counts), self.sum


V = TypeVar("V", _CounterValue, _GaugeValue, _HistogramValue)


class _Metric(Generic[V]):
    """A named metric with label names; `labels(*values)` is its series for those values (made at first
    use, kept for the life of the process, as Prometheus expects of a counter)."""

    kind: ClassVar[str]

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), registry: Registry = REGISTRY
    ) -> None:
        self.name = _check_name(name)
        self.documentation = documentation
        self.labelnames = _check_labels(labelnames)
        self._series: dict[tuple[str, ...], V] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._series[()] = self._new()
        registry.register(self, name)

    def _new(self) -> V:
        raise NotImplementedError

    def labels(self, *values: str) -> V:
        series = self._series.get(values)
        if series is not None:
            return series
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"{self.name}: label values for {list(self.labelnames)} expected, got {values!r}"
            )
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"{self.name}: label values are strings, got {values!r}")
        with self._lock:
            return self._series.setdefault(values, self._new())

    def _only(self) -> V:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: use .labels(...)")
        return self._series[()]

    def _add(self, family: Family, values: tuple[str, ...], series: V) -> None:
        raise NotImplementedError

    def collect(self) -> Iterator[Family]:
        family = Family(self.name, self.documentation, self.kind, self.labelnames)
        with self._lock:
            series = list(self._series.items())
        for values, one in series:
            self._add(family, values, one)
        yield family


class Counter(_Metric[_CounterValue]):
    """A count that only goes up; its name ends in `_total`."""

    kind = "counter"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), registry: Registry = REGISTRY
    ) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name!r}")
        super().__init__(name, documentation, labelnames, registry)

    def _add(self, family: Family, values: tuple[str, ...], series: _CounterValue) -> None:
        family.add(values, series.value)

    def _new(self) -> _CounterValue:
        return _CounterValue()

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)


class Gauge(_Metric[_GaugeValue]):
    """A value that goes up and down."""

    kind = "gauge"

    def _add(self, family: Family, values: tuple[str, ...], series: _GaugeValue) -> None:
        family.add(values, series.value)

    def _new(self) -> _GaugeValue:
        return _GaugeValue()

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._only().dec(amount)

    def set(self, value: float) -> None:
        self._only().set(value)


DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


class Histogram(_Metric[_HistogramValue]):
    """Observations counted into buckets by upper bound (`le`, +Inf added), with their count and sum."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: Registry = REGISTRY,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(set(bounds)) or not bounds:
            raise ValueError(f"{name}: buckets must be increasing, got {list(buckets)}")
        self.bounds = tuple(bounds if bounds[-1] == INF else [*bounds, INF])
        self._les = [_number(b) for b in self.bounds]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> _HistogramValue:
        return _HistogramValue(self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def _add(self, family: Family, values: tuple[str, ...], series: _HistogramValue) -> None:
        counts, total = series.snapshot()
        cumulative = 0
        for le, n in zip(self._les, counts, strict=True):
            cumulative += n
            family.add(values, cumulative, suffix="_bucket", extra=(("le", le),))
        family.add(values, cumulative, suffix="_count")
        family.add(values, total, suffix="_sum")


# ---------------------------------------------------------------------------------------------------------
# The process's own metrics (the names and meanings of Prometheus's client libraries)


class ProcessCollector:
    """CPU time, memory, open files and start time of this process, read from /proc when scraped
    (nothing where there is no /proc)."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start: float | None = None

    def _start_time(self) -> float:
        if self._start is None:
            with open(f"{self._proc}/self/stat", "rb") as f:
                # Fields after the command name (which may hold spaces and parentheses): starttime is 22nd.
                fields = f.read().rpartition(b")")[2].split()
            with open(f"{self._proc}/stat", "rb") as f:
                boot = next(float(line.split()[1]) for line in f if line.startswith(b"btime "))
            self._start = boot + int(fields[19]) / self._ticks
        return self._start

    def collect(self) -> Iterator[Family]:
        try:
            with open(f"{self._proc}/self/statm", "rb") as f:
                virtual, resident = (int(x) * self._page for x in f.read().split()[:2])
            start = self._start_time()
            open_fds = len(os.listdir(f"{self._proc}/self/fd"))
        except OSError:
            return
        times = os.times()
        for name, doc, kind, value in (
            ("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter",
             times.user + times.system),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", virtual),
            ("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", resident),
            ("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge",
             start),
            ("process_open_fds", "Number of open file descriptors.", "gauge", open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", "gauge",
             resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        ):  # fmt: skip
            family = Family(name, doc, kind)
            family.add((), value)
            yield family


class PythonCollector:
    """The interpreter's version and its garbage collector's work, by generation."""

    def collect(self) -> Iterator[Family]:
        info = Family(
            "python_info", "Python platform information", "gauge",
            ["implementation", "major", "minor", "patchlevel", "version"],
        )  # fmt: skip
        major, minor, patch = platform.python_version_tuple()
        info.add([platform.python_implementation(), major, minor, patch, platform.python_version()], 1)
        yield info
        stats = gc.get_stats()
        for name, key, doc in (
            ("python_gc_objects_collected_total", "collected", "Objects collected during gc"),
            (
                "python_gc_objects_uncollectable_total",
                "uncollectable",
                "Uncollectable objects found during GC",
            ),
            ("python_gc_collections_total", "collections", "Number of times this generation was collected"),
        ):
            family = Family(name, doc, "counter", ["generation"])
            for generation, stat in enumerate(stats):
                family.add([str(generation)], stat[key])
            yield family


REGISTRY.register(ProcessCollector())
REGISTRY.register(PythonCollector())


# ---------------------------------------------------------------------------------------------------------
# The endpoint of a gRPC service

_HEAD_LIMIT = 16 * 1024
_READ_TIMEOUT_S = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _answer(
    status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False
) -> bytes:
    lines = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        + ("Allow: GET, HEAD\r\n" if status == 405 else "")
        + "\r\n"
    )
    return lines.encode() + (b"" if head else body)


async def _handle(registry: Registry, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            return
        parts = request.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            writer.write(_answer(400, b"bad request\n"))
        elif parts[0] not in (b"GET", b"HEAD"):
            writer.write(_answer(405, b"method not allowed\n"))
        elif parts[1].split(b"?", 1)[0] != b"/metrics":
            writer.write(_answer(404, b"not found: the metrics are at /metrics\n", head=parts[0] == b"HEAD"))
        else:
            writer.write(_answer(200, registry.exposition(), CONTENT_TYPE, head=parts[0] == b"HEAD"))
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_metrics(host: str, port: int, registry: Registry = REGISTRY) -> asyncio.Server:
    """Serves `registry` at http://host:port/metrics on the running event loop (GET and HEAD; one answer a
    connection). The metrics are read on the loop the service's state lives on."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(registry, reader, writer)

    return await asyncio.start_server(handle, host, port, limit=_HEAD_LIMIT)


def bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
