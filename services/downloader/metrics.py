"""The downloader's Prometheus metrics: bytes received and jobs ended by result (fed by the core's two
hooks), and, read from the jobs when scraped, how many are in each phase and their current speed. The
process's `__main__` wires a downloader in with `watch`; the core never imports this module."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from jan.downloader.v1 import downloader_service_pb2 as pb
from services.common.prometheus import REGISTRY, Counter, Family
from services.downloader.core import Downloader

BYTES = Counter("jan_downloader_bytes_total", "Bytes received from download sources.")
JOBS_ENDED = Counter(
    "jan_downloader_jobs_ended_total",
    "Download jobs that ended, by result (done or the error code).",
    ["result"],
)


def received(n: int) -> None:
    if n > 0:
        BYTES.inc(n)


def ended(result: str) -> None:
    JOBS_ENDED.labels(result).inc()


class _DownloaderCollector:
    def __init__(self) -> None:
        self.downloaders: weakref.WeakSet[Downloader] = weakref.WeakSet()

    def collect(self) -> Iterator[Family]:
        phases = Family("jan_downloader_jobs", "Download jobs by phase.", "gauge", ["phase"])
        speed = Family(
            "jan_downloader_bytes_per_second", "Current speed of a running download.", "gauge", ["model"]
        )
        counts: dict[str, int] = {}
        for downloader in list(self.downloaders):
            for job in list(downloader.jobs.values()):
                phase = pb.Phase.Name(job.phase).removeprefix("PHASE_").lower()  # type: ignore[arg-type]
                counts[phase] = counts.get(phase, 0) + 1
                if job.phase in (pb.PHASE_CONNECTING, pb.PHASE_DOWNLOADING):
                    speed.add([job.model_id], job.speed)
        for phase, n in sorted(counts.items()):
            phases.add([phase], n)
        yield from (phases, speed)


_COLLECTOR = _DownloaderCollector()
REGISTRY.register(_COLLECTOR)


def watch(downloader: Downloader) -> None:
    """Exposes `downloader`'s jobs in the process's metrics (for as long as it lives) and counts its bytes
    and ended jobs."""
    _COLLECTOR.downloaders.add(downloader)
    downloader.on_received = received
    downloader.on_ended = ended
