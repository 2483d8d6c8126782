"""Runners and placement: who is alive (heartbeats), which runners host which model, and the replicas a
started model wants. Depends on the index (a model's object and its runtime report), never the reverse.

A model runs on as many runners as it was started with (`parameters.replicas`, default 1, or the start's
override), each replica on a distinct live runner. The catalog keeps that number while the model is in
use: a replica lost by failure (its runner died, restarted, or evicted it to make room) is handed to a
runner with room in that runner's next heartbeat answer (an Assignment), which loads it. A replica that
its runner released on purpose (idle past its keep-alive, or unloaded on request) is not replaced; when
the last replica is released, the model is stopped and what it was started with forgotten. An explicit
stop forgets it too (ReleaseModel). What a start records lives in memory: a restarted catalog knows the
running replicas from the heartbeats, and the next start records again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.model.v1 import model_pb2
from services.catalog.model import Runtime
from services.common.engine_names import REMOTE_ENGINES
from services.common.errors import FailedPrecondition, InvalidArgument, JanError, Unavailable

log = logging.getLogger(__name__)

MAX_REPLICAS = 64
# How long a replica handed out (to a gateway loading it, or in a heartbeat answer) counts as on its way
# before another runner may be asked: longer than any load of a model that fits a runner.
PENDING_S = 300.0


@dataclass
class ReplicaSet:
    """What a start recorded: how many replicas, and what each loads with."""

    wanted: int
    overrides_json: str
    keep_alive_s: float
    engine: str
    size: int
    # runner name -> monotonic deadline: loads handed out and not yet in that runner's heartbeat.
    pending: dict[str, float] = field(default_factory=dict)
    # Runners that released their replica on purpose since the start: not replaced.
    released: set[str] = field(default_factory=set)


@dataclass
class Placed:
    """Where a model runs and where more of it goes (PlaceModel's answer)."""

    runner: catalog_pb.Runner
    loaded: bool
    replicas: list[catalog_pb.Runner]
    targets: list[catalog_pb.Runner]
    wanted: int
    overrides_json: str = ""
    keep_alive_s: float = 0.0


GetModel = Callable[[str], Awaitable[model_pb2.Model]]
SetRuntime = Callable[[str, Runtime], Awaitable[model_pb2.Model]]


def replicas_of(model: model_pb2.Model, requested: int = 0) -> int:
    """The replicas wanted: the request's when it names some, else the object's parameters.replicas."""
    if requested:
        if not 1 <= requested <= MAX_REPLICAS:
            raise InvalidArgument(
                f"replicas must be between 1 and {MAX_REPLICAS} (got {requested})", param="replicas"
            )
        return requested
    value = orjson.loads(model.parameters_json or "{}").get("replicas", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        raise FailedPrecondition(
            f"{model.path}: parameters.replicas must be a whole number from 1 to {MAX_REPLICAS} "
            f"(got {orjson.dumps(value).decode()})",
            code="invalid_model_file",
            param="parameters.replicas",
        )
    return value


def model_size(model: model_pb2.Model) -> int:
    """Bytes a runner needs free at least to take a replica (its binaries; 0 for a remote engine)."""
    if model.engine in REMOTE_ENGINES:
        return 0
    return sum(b.size for b in model.binaries)


class Placement:
    def __init__(self, ttl_s: float, get_model: GetModel, set_runtime: SetRuntime) -> None:
        self.ttl_s = ttl_s
        self._get_model = get_model
        self._set_runtime = set_runtime
        self._runners: dict[str, catalog_pb.Runner] = {}
        self._sets: dict[str, ReplicaSet] = {}
        # model id -> (the runners hosting it, replicas wanted, reason), as last published in its runtime.
        self._published: dict[str, tuple[tuple[str, ...], int, str]] = {}

    # --- runners ------------------------------------------------------------------------------------------

    def live(self) -> list[catalog_pb.Runner]:
        cutoff = time.time() - self.ttl_s
        return sorted((r for r in self._runners.values() if r.last_seen >= cutoff), key=lambda r: r.name)

    async def register(self, runner: catalog_pb.Runner) -> tuple[float, list[catalog_pb.Assignment]]:
        """A runner's heartbeat: remembers it, updates where its models run, and answers with the replicas
        it should load."""
        if not runner.name or not runner.address:
            raise InvalidArgument("a runner needs a name and an address", param="runner")
        previous = self._runners.get(runner.name)
        stored = catalog_pb.Runner()
        stored.CopyFrom(runner)
        stored.last_seen = time.time()
        del stored.released_model_ids[:]
        self._runners[runner.name] = stored
        for model_id in runner.released_model_ids:
            replica_set = self._sets.get(model_id)
            if replica_set is not None:
                replica_set.released.add(runner.name)
        now = time.monotonic()
        for model_id in runner.model_ids:
            replica_set = self._sets.get(model_id)
            if replica_set is not None:
                replica_set.pending.pop(runner.name, None)
                replica_set.released.discard(runner.name)
        touched = set(runner.model_ids) | set(previous.model_ids if previous else ())
        touched |= set(runner.released_model_ids)
        for model_id in sorted(touched):
            await self._publish(model_id)
        assignments = [] if runner.draining else self._assign(stored, now)
        return self.ttl_s / 4, assignments

    def _assign(self, runner: catalog_pb.Runner, now: float) -> list[catalog_pb.Assignment]:
        """Replicas this runner should load: of models short of theirs, those it has room and the engine
        for (one heartbeat may hand out several, within its free memory)."""
        free = runner.memory_budget_bytes - runner.memory_used_bytes
        out = []
        live = {r.name for r in self.live() if not r.draining}
        for model_id, replica_set in sorted(self._sets.items()):
            if model_id in runner.model_ids or runner.name in replica_set.pending:
                continue
            if runner.engines and replica_set.engine not in runner.engines:
                continue
            if self._missing(model_id, replica_set, live, now) <= 0 or replica_set.size > free:
                continue
            replica_set.pending[runner.name] = now + PENDING_S
            free -= replica_set.size
            log.info("replica of %s handed to runner %s", model_id, runner.name)
            out.append(
                catalog_pb.Assignment(
                    model_id=model_id,
                    overrides_json=replica_set.overrides_json,
                    keep_alive_s=replica_set.keep_alive_s,
                )
            )
        return out

    def _missing(self, model_id: str, replica_set: ReplicaSet, live: set[str], now: float) -> int:
        hosts = {r.name for r in self._runners.values() if r.name in live and model_id in r.model_ids}
        for name, deadline in list(replica_set.pending.items()):
            if deadline < now or name not in live:
                del replica_set.pending[name]
        on_the_way = set(replica_set.pending) - hosts
        released = (replica_set.released & live) - hosts
        return replica_set.wanted - len(hosts) - len(on_the_way) - len(released)

    def hosts(self, model_id: str) -> tuple[str, ...]:
        """Live runners hosting the model (draining ones included: they still serve what they have)."""
        return tuple(r.name for r in self.live() if model_id in r.model_ids)

    async def _publish(self, model_id: str) -> None:
        """Tells the index where the model runs now, when that (or what it wants) changed."""
        hosts = self.hosts(model_id)
        replica_set = self._sets.get(model_id)
        if not hosts and replica_set is not None and replica_set.released:
            # The last replica was released on purpose (idle, or asked): the model is stopped.
            self._sets.pop(model_id, None)
            replica_set = None
        wanted = replica_set.wanted if replica_set is not None else 0
        reason = ""
        if hosts and wanted > len(hosts):
            reason = f"{len(hosts)} of {wanted} replicas running"
            if not self._could_take(model_id):
                reason += ": no other live runner has the engine and room for one"
        before = self._published.get(model_id)
        if before == (hosts, wanted, reason) or (before is None and not hosts):
            return
        if hosts:
            self._published[model_id] = (hosts, wanted, reason)
            runtime = Runtime(
                state=model_pb2.MODEL_STATE_RUNNING,
                runner=hosts[0],
                runners=hosts,
                replicas_wanted=wanted,
                reason=reason,
            )
        else:
            self._published.pop(model_id, None)
            dead = [name for name in (before[0] if before else ()) if name not in self._runners]
            runtime = (
                Runtime(reason=f"the runner stopped reporting ({', '.join(dead)})") if dead else Runtime()
            )
        with contextlib.suppress(JanError):  # a model deleted meanwhile
            await self._set_runtime(model_id, runtime)

    def _could_take(self, model_id: str) -> bool:
        replica_set = self._sets.get(model_id)
        if replica_set is None:
            return False
        return any(
            not r.draining
            and model_id not in r.model_ids
            and (not r.engines or replica_set.engine in r.engines)
            and r.memory_budget_bytes - r.memory_used_bytes >= replica_set.size
            for r in self.live()
        )

    async def expire(self) -> None:
        """Runners whose heartbeats stopped are dead: their replicas are gone (and replaced where a runner
        has room), and they are forgotten."""
        cutoff = time.time() - self.ttl_s
        dead = [r for r in self._runners.values() if r.last_seen < cutoff]
        for runner in dead:
            del self._runners[runner.name]
            log.warning("runner %s stopped calling: its models there are gone", runner.name)
        for model_id in sorted({m for r in dead for m in r.model_ids}):
            await self._publish(model_id)

    # --- placement ----------------------------------------------------------------------------------------

    async def place(
        self,
        model_id: str,
        *,
        start: bool = False,
        replicas: int = 0,
        overrides_json: str = "",
        keep_alive_s: float = 0.0,
        avoid: frozenset[str] = frozenset(),
    ) -> Placed:
        """`avoid`: runners the caller could not reach, left out as if gone (the heartbeats will tell)."""
        model = await self._get_model(model_id)
        live = [r for r in self.live() if r.name not in avoid]
        able = [r for r in live if not r.draining and (not r.engines or model.engine in r.engines)]
        if not able:
            why = " (none has registered with the catalog)" if not live else ""
            if live and all(r.draining for r in live):
                why = " (every runner is shutting down)"
            raise Unavailable(f"no runner is available for {model.engine} models{why}", code="no_runner")
        now = time.monotonic()
        replica_set = self._sets.get(model_id)
        if start:
            wanted = replicas_of(model, replicas)
            pending = replica_set.pending if replica_set is not None else {}
            replica_set = ReplicaSet(
                wanted, overrides_json, keep_alive_s, model.engine, model_size(model), pending
            )
            self._sets[model_id] = replica_set
        elif replica_set is not None:
            wanted = replica_set.wanted
        else:
            wanted = replicas_of(model, replicas)
        hosting = [r for r in able if model_id in r.model_ids]
        targets: list[catalog_pb.Runner] = []
        if len(hosting) < wanted:
            names = {r.name for r in able}
            on_the_way = {n for n, d in (replica_set.pending if replica_set else {}).items() if d >= now}
            on_the_way &= names
            # Runners already loading it first (a load in flight is joined, not repeated), then the
            # others by free memory.
            others = sorted(
                (r for r in able if model_id not in r.model_ids),
                key=lambda r: (
                    r.name not in on_the_way,
                    -(r.memory_budget_bytes - r.memory_used_bytes),
                    r.name,
                ),
            )
            targets = others[: wanted - len(hosting)]
            if start and replica_set is not None:
                for r in targets:
                    replica_set.pending[r.name] = now + PENDING_S
        if start:
            await self._publish(model_id)
        runner = hosting[0] if hosting else targets[0]
        return Placed(
            runner=runner,
            loaded=bool(hosting),
            replicas=hosting,
            targets=targets,
            wanted=wanted,
            overrides_json=replica_set.overrides_json if replica_set else "",
            keep_alive_s=replica_set.keep_alive_s if replica_set else 0.0,
        )

    def release(self, model_id: str) -> None:
        """An explicit stop: what the model was started with is forgotten; nothing is replaced."""
        self._sets.pop(model_id, None)

    def forget(self, model_id: str) -> None:
        """The model was deleted."""
        self._sets.pop(model_id, None)
        self._published.pop(model_id, None)
