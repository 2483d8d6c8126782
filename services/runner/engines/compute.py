"""The one thread of a runner process that runs llama.cpp's compute.

Why one: the llama-cpp-python wheel is built with OpenMP, and every OS thread that calls into ggml's
compute owns an OpenMP team for as long as it lives. Once the teams of a process hold more threads than
there are CPUs, libgomp stops spinning at its barriers and every decode gets much slower (measured:
42 → 27 tokens/s on 2 cores after one embedding request served by a second long-lived thread). So every
decode of every loaded model — generation steps, prompt chunks, embeddings — runs here, one at a time,
and models take turns step by step. Loading a model's weights runs no compute and happens elsewhere.

Work comes in two kinds:
- jobs: one-off calls (create a context, free a model), run before the next step;
- workers: objects with `has_work()` and `step()`, one per loaded model; `step()` does one bounded
  unit of work (one batched decode) so that no model holds the thread for long.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Worker(Protocol):
    def has_work(self) -> bool: ...

    def step(self) -> None: ...


class ComputeThread:
    def __init__(self, name: str = "llama-compute") -> None:
        self._name = name
        self._cv = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._workers: list[Worker] = []
        self._next = 0
        self._thread: threading.Thread | None = None

    # --- called from any thread ---------------------------------------------------------------------------

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cv:
            self._start()
            self._jobs.append((fn, future))
            self._cv.notify()
        return future

    def attach(self, worker: Worker) -> None:
        with self._cv:
            self._start()
            self._workers.append(worker)
            self._cv.notify()

    def detach(self, worker: Worker) -> None:
        """Call it from a job (on this thread) so that no step of the worker is running meanwhile."""
        with self._cv:
            if worker in self._workers:
                self._workers.remove(worker)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    @property
    def lock(self) -> threading.Condition:
        """Held while work is queued: a worker changes what `has_work` reads under it, then `wake`s."""
        return self._cv

    # --- the thread ---------------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not any(w.has_work() for w in self._workers):
                    self._cv.wait()
                jobs = list(self._jobs)
                self._jobs.clear()
            for fn, future in jobs:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)
            with self._cv:  # after the jobs: one of them may have detached a worker
                busy = [w for w in self._workers if w.has_work()]
            if busy:
                # Round-robin: one step of one model, then the next model with work.
                self._next = (self._next + 1) % len(busy)
                worker = busy[self._next]
                try:
                    worker.step()
                except Exception:  # a worker fails its own requests; this keeps the thread alive
                    log.exception("a compute step failed")


_shared: ComputeThread | None = None
_shared_lock = threading.Lock()


def shared() -> ComputeThread:
    """The process's compute thread (started on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ComputeThread()
        return _shared
