"""services/common/prometheus.py: what it writes is what prometheus_client writes for the same metrics (both
read back with prometheus_client's own parser), the process's metrics carry the names Prometheus's client
libraries use, bad names and uses are refused, and the endpoint answers like one."""

from __future__ import annotations

import asyncio
import platform
import socket
import threading
from collections.abc import Callable

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common import prometheus as ours
from services.common.metrics import start_metrics_server

Parsed = dict[str, tuple[str, str, set[tuple[str, tuple[tuple[str, str], ...], float]]]]


def parse(text: str) -> Parsed:
    """family name -> (type, help, samples); `_created` samples left out (prometheus_client's alone, which
    the text format's parser reads as a family of their own)."""
    out: Parsed = {}
    for family in text_string_to_metric_families(text):
        samples = {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        }
        if samples:
            out[family.name] = (family.type, family.documentation, samples)
    return out


def both(build: Callable[[object, object], None]) -> tuple[str, str]:
    """Runs `build(module, registry)` against prometheus_client and against ours: both outputs."""
    theirs_registry = prometheus_client.CollectorRegistry()
    build(prometheus_client, theirs_registry)
    our_registry = ours.Registry()
    build(ours, our_registry)
    return prometheus_client.generate_latest(theirs_registry).decode(), our_registry.exposition().decode()


def test_counters_gauges_and_histograms_read_back_as_prometheus_clients_do() -> None:
    def build(m: object, registry: object) -> None:
        c = m.Counter("jan_things_total", "Things done,\nby kind.", ["kind", "code"], registry=registry)  # type: ignore[attr-defined]
        c.labels("a", "ok").inc()
        c.labels("a", "ok").inc(2.5)
        c.labels('q"uo\\te\nd', "x").inc()
        plain = m.Counter("jan_plain_total", "No labels.", registry=registry)  # type: ignore[attr-defined]
        plain.inc(7)
        g = m.Gauge("jan_level", "A level.", registry=registry)  # type: ignore[attr-defined]
        g.inc(5)
        g.dec(2)
        g2 = m.Gauge("jan_levels", "Levels.", ["model"], registry=registry)  # type: ignore[attr-defined]
        g2.labels("m1").set(1e20)
        g2.labels("m2").set(-0.25)
        h = m.Histogram(  # type: ignore[attr-defined]
            "jan_seconds", "Durations.", ["route"], registry=registry, buckets=(0.01, 0.1, 1, 10)
        )
        for v in (0.001, 0.01, 0.05, 0.1, 3, 99):  # on a bound counts in that bucket (le is <=)
            h.labels("/x").observe(v)
        h.labels("/y")  # a series made and never observed: all zeros
        h2 = m.Histogram("jan_default_seconds", "Default buckets.", registry=registry)  # type: ignore[attr-defined]
        h2.observe(0.3)

    theirs, mine = both(build)
    assert parse(mine) == parse(theirs)
    assert parse(mine)["jan_seconds"][0] == "histogram" and len(parse(mine)["jan_seconds"][2]) == 2 * (5 + 2)
    # Line for line too (what a grep of a scrape sees), but for the `_created` series.
    assert mine.splitlines() == [line for line in theirs.splitlines() if "_created" not in line]


def test_a_collectors_families_read_back_as_prometheus_clients_gauge_families() -> None:
    from prometheus_client.core import GaugeMetricFamily

    class Theirs:
        def collect(self) -> object:
            f = GaugeMetricFamily("jan_jobs", "Jobs by phase.", labels=["phase"])
            f.add_metric(["queued"], 3)
            f.add_metric(["running"], 1)
            yield f

    class Mine:
        def collect(self) -> object:
            f = ours.Family("jan_jobs", "Jobs by phase.", "gauge", ["phase"])
            f.add(["queued"], 3)
            f.add(["running"], 1)
            yield f

    theirs_registry = prometheus_client.CollectorRegistry()
    theirs_registry.register(Theirs())  # type: ignore[arg-type]
    mine = ours.Registry()
    mine.register(Mine())  # type: ignore[arg-type]
    assert parse(mine.exposition().decode()) == parse(
        prometheus_client.generate_latest(theirs_registry).decode()
    )
    assert mine.get_sample_value("jan_jobs", {"phase": "queued"}) == 3
    assert mine.get_sample_value("jan_jobs", {"phase": "nope"}) is None


def test_the_process_and_python_metrics_have_the_client_libraries_names_and_true_values() -> None:
    theirs = prometheus_client.CollectorRegistry()
    prometheus_client.ProcessCollector(registry=theirs)
    prometheus_client.PlatformCollector(registry=theirs)
    prometheus_client.GCCollector(registry=theirs)
    mine = ours.Registry()
    mine.register(ours.ProcessCollector())
    mine.register(ours.PythonCollector())
    their_families = {
        f.name: f.type
        for f in text_string_to_metric_families(prometheus_client.generate_latest(theirs).decode())
    }
    my_families = {f.name: f.type for f in text_string_to_metric_families(mine.exposition().decode())}
    assert my_families == their_families

    def value(registry: object, name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
        assert got is not None, name
        return float(got)

    for name in ("process_start_time_seconds", "process_max_fds"):
        assert value(mine, name) == pytest.approx(value(theirs, name), abs=0.02)
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes"):
        assert value(mine, name) == pytest.approx(value(theirs, name), rel=0.1)
    assert value(mine, "process_cpu_seconds_total") > 0 and value(mine, "process_open_fds") >= 3
    major, minor, patch = platform.python_version_tuple()
    info = {"implementation": platform.python_implementation(), "version": platform.python_version()}
    assert value(mine, "python_info", major=major, minor=minor, patchlevel=patch, **info) == 1.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: ours.Counter("jan_count", "no _total", registry=r), "ends in _total"),
        (lambda r: ours.Gauge("jan-dash", "bad name", registry=r), "invalid metric name"),
        (lambda r: ours.Gauge("jan_g", "bad label", ["a-b"], registry=r), "invalid label name"),
        (lambda r: ours.Gauge("jan_g", "reserved", ["__x"], registry=r), "invalid label name"),
        (lambda r: ours.Histogram("jan_h", "le is the bucket's", ["le"], registry=r), "invalid label name"),
        (lambda r: ours.Gauge("jan_g", "twice", ["a", "a"], registry=r), "repeated label name"),
        (lambda r: ours.Histogram("jan_h", "order", registry=r, buckets=(1, 0.5)), "increasing"),
        (lambda r: ours.Family("jan_f", "kind", "summary"), "invalid metric type"),
    ],
)
def test_bad_names_and_shapes_are_refused(make: Callable[[ours.Registry], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(ours.Registry())


def test_bad_uses_are_refused() -> None:
    registry = ours.Registry()
    counter = ours.Counter("jan_c_total", "c", ["kind"], registry=registry)
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError, match=r"has labels \['kind'\]"):
        counter.inc()
    with pytest.raises(ValueError, match="label values"):
        counter.labels("a", "b")
    with pytest.raises(TypeError, match="strings"):
        counter.labels(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="registered already"):
        ours.Gauge("jan_c_total", "again", registry=registry)
    with pytest.raises(ValueError, match="1 label values expected"):
        ours.Family("jan_f", "f", "gauge", ["a"]).add([], 1)


def test_updates_from_many_threads_are_all_counted() -> None:
    registry = ours.Registry()
    counter = ours.Counter("jan_c_total", "c", ["kind"], registry=registry)
    histogram = ours.Histogram("jan_h", "h", registry=registry, buckets=(1,))

    def work() -> None:
        for _ in range(20_000):
            counter.labels("a").inc()
            histogram.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.get_sample_value("jan_c_total", {"kind": "a"}) == 80_000
    assert registry.get_sample_value("jan_h_bucket", {"le": "1.0"}) == 80_000
    assert registry.get_sample_value("jan_h_sum") == 40_000


async def ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_the_endpoint_serves_metrics_at_metrics_only() -> None:
    registry = ours.Registry()
    ours.Counter("jan_c_total", "c", registry=registry).inc()
    server = await ours.serve_metrics("127.0.0.1", 0, registry)
    port = ours.bound_port(server)
    try:
        got = await ask(port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: " + ours.CONTENT_TYPE.encode() in head
        assert parse(body.decode())["jan_c"][2] == {("jan_c_total", (), 1.0)}
        assert f"Content-Length: {len(body)}".encode() in head
        head_only = await ask(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")
        assert (await ask(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 Not Found")
        refused = await ask(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in refused
        assert (await ask(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert await ask(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000) == b""  # too long: dropped
    finally:
        server.close()
        await server.wait_closed()


async def test_the_services_metrics_server_is_off_at_0_and_names_a_taken_port() -> None:
    assert await start_metrics_server(0, "127.0.0.1") is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await start_metrics_server(port, "127.0.0.1")
