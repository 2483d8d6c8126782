"""services/runner/metrics.py and services/downloader/metrics.py: the cores never import them; a
process's `__main__` wires a core in with `watch`, which feeds the counters from the core's hooks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from services.common.prometheus import REGISTRY
from services.common.storage import LocalStorage
from services.downloader import metrics as downloader_metrics
from services.downloader.core import Downloader
from services.downloader.settings import DownloaderSettings
from services.runner import metrics as runner_metrics
from services.runner.core import Runner
from services.runner.settings import RunnerSettings


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_the_cores_do_not_import_their_metrics() -> None:
    code = (
        "import sys, services.runner.core, services.downloader.core; "
        "print(sorted(m for m in sys.modules if m.endswith('.metrics')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "services.runner.metrics" not in out.stdout and "services.downloader.metrics" not in out.stdout


def test_a_watched_runner_feeds_the_runner_metrics(tmp_path: Path) -> None:
    settings = RunnerSettings(root=tmp_path, name="wired-runner", memory_budget_bytes=2**30)
    catalog: Any = None  # never called: nothing starts
    runner = Runner(settings, catalog, LocalStorage(tmp_path / "models"))
    runner.on_finished("m/unwatched", 3)
    assert sample("jan_runner_tokens_generated_total", {"model": "m/unwatched"}) == 0
    runner_metrics.watch(runner)
    runner.on_first_token("m/x", 0.2)
    runner.on_finished("m/x", 7)
    assert sample("jan_runner_tokens_generated_total", {"model": "m/x"}) == 7
    assert sample("jan_runner_time_to_first_token_seconds_count", {"model": "m/x"}) == 1
    assert sample("jan_runner_memory_budget_bytes", {"runner": "wired-runner"}) == 2**30


def test_a_watched_downloader_feeds_the_downloader_metrics(tmp_path: Path) -> None:
    catalog: Any = None
    downloader = Downloader(DownloaderSettings(root=tmp_path), LocalStorage(tmp_path / "models"), catalog)
    before = sample("jan_downloader_bytes_total")
    downloader.on_received(100)
    assert sample("jan_downloader_bytes_total") == before
    downloader_metrics.watch(downloader)
    ended = sample("jan_downloader_jobs_ended_total", {"result": "wired_test"})
    downloader.on_received(100)
    downloader.on_ended("wired_test")
    assert sample("jan_downloader_bytes_total") == before + 100
    assert sample("jan_downloader_jobs_ended_total", {"result": "wired_test"}) == ended + 1
