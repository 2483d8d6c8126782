"""The runner's Prometheus metrics: tokens generated and time to first token per model (fed by the core's
two generation hooks), and, read from the loaded models when scraped, their memory, active and queued
requests. The process's `__main__` wires a runner in with `watch`; the core never imports this module."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from services.common.prometheus import REGISTRY, Counter, Family, Histogram
from services.runner.core import Runner

TOKENS = Counter(
    "jan_runner_tokens_generated_total", "Completion tokens of finished generations, by model.", ["model"]
)
FIRST_TOKEN_SECONDS = Histogram(
    "jan_runner_time_to_first_token_seconds",
    "From a generate request's arrival (queueing included) to its first text, by model.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)


def first_token(model_id: str, seconds: float) -> None:
    FIRST_TOKEN_SECONDS.labels(model_id).observe(seconds)


def finished(model_id: str, completion_tokens: int) -> None:
    if completion_tokens > 0:
        TOKENS.labels(model_id).inc(completion_tokens)


class _RunnerCollector:
    """Reads the runners of this process when scraped: no bookkeeping on the serving path."""

    def __init__(self) -> None:
        self.runners: weakref.WeakSet[Runner] = weakref.WeakSet()

    def collect(self) -> Iterator[Family]:
        loaded = Family("jan_runner_models_loaded", "Models loaded on the runner.", "gauge", ["runner"])
        budget = Family(
            "jan_runner_memory_budget_bytes", "Memory the runner's models may use.", "gauge", ["runner"]
        )
        used = Family(
            "jan_runner_memory_used_bytes", "Memory estimate of the loaded models.", "gauge", ["runner"]
        )
        memory = Family(
            "jan_runner_model_memory_bytes",
            "Memory estimate of one loaded model.",
            "gauge",
            ["runner", "model"],
        )
        active = Family(
            "jan_runner_model_active_requests",
            "Requests being served by a model.",
            "gauge",
            ["runner", "model"],
        )
        queued = Family(
            "jan_runner_model_queue_depth",
            "Requests waiting for a slot of a model.",
            "gauge",
            ["runner", "model"],
        )
        for runner in list(self.runners):
            name = runner.settings.name
            hosted = list(runner.loaded.values())
            loaded.add([name], len(hosted))
            budget.add([name], runner.settings.memory_budget_bytes)
            used.add([name], sum(h.engine.memory_bytes for h in hosted))
            for h in hosted:
                memory.add([name, h.model_id], h.engine.memory_bytes)
                running = min(h.active, h.engine.slots)
                active.add([name, h.model_id], running)
                queued.add([name, h.model_id], h.active - running)
        yield from (loaded, budget, used, memory, active, queued)


_COLLECTOR = _RunnerCollector()
REGISTRY.register(_COLLECTOR)


def watch(runner: Runner) -> None:
    """Exposes `runner`'s loaded models in the process's metrics (for as long as it lives) and counts its
    generations."""
    _COLLECTOR.runners.add(runner)
    runner.on_first_token = first_token
    runner.on_finished = finished
