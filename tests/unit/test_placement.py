"""Runners and placement (services/catalog/placement.py): replicas on distinct runners, the runtime the
index is told, replacements handed out in heartbeat answers, and what is never replaced. The index is a
dict of model objects here; the catalog's own tests cover the two together."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.model.v1 import model_pb2
from services.catalog.model import Runtime
from services.catalog.placement import MAX_REPLICAS, Placement, replicas_of
from services.common import errors

RUNNING = model_pb2.MODEL_STATE_RUNNING
GIB = 1 << 30


class Index:
    """What placement needs of the index: a model by id, and where its runtime reports go."""

    def __init__(self) -> None:
        self.models: dict[str, model_pb2.Model] = {}
        self.runtime: dict[str, Runtime] = {}

    def add(self, model_id: str, replicas: object = None, engine: str = "llamacpp", size: int = GIB) -> None:
        params = {} if replicas is None else {"replicas": replicas}
        self.models[model_id] = model_pb2.Model(
            id=model_id,
            engine=engine,
            path=f"models/{model_id}.json",
            parameters_json=orjson.dumps(params).decode(),
            binaries=[model_pb2.Binary(name="m.gguf", size=size)],
        )

    async def get(self, model_id: str) -> model_pb2.Model:
        if model_id not in self.models:
            raise errors.NotFound(f"model {model_id} not found", code="model_not_found")
        return self.models[model_id]

    async def report(self, model_id: str, runtime: Runtime) -> model_pb2.Model:
        self.runtime[model_id] = runtime
        return self.models[model_id]


def runner(name: str, free_gib: int = 8, models: tuple[str, ...] = (), **kw: object) -> catalog_pb.Runner:
    return catalog_pb.Runner(
        name=name,
        address=f"127.0.0.1:{1000 + sum(map(ord, name))}",
        memory_budget_bytes=free_gib * GIB,
        engines=["llamacpp"],
        model_ids=list(models),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def index() -> Index:
    index = Index()
    index.add("m/m", replicas=3)
    return index


@pytest.fixture
def placement(index: Index) -> Placement:
    return Placement(10.0, index.get, index.report)


async def test_replicas_go_to_distinct_runners_most_free_memory_first(placement: Placement) -> None:
    for name, free in (("a", 4), ("b", 16), ("c", 8), ("d", 2)):
        await placement.register(runner(name, free))
    placed = await placement.place("m/m", start=True)
    assert [r.name for r in placed.targets] == ["b", "c", "a"]
    assert placed.wanted == 3 and not placed.loaded and placed.replicas == []
    assert placed.runner.name == "b"
    # The start's override wins over the object's parameters.replicas.
    assert [r.name for r in (await placement.place("m/m", start=True, replicas=1)).targets] == ["b"]


async def test_running_replicas_are_the_runtime_and_a_shortfall_is_said(
    placement: Placement, index: Index
) -> None:
    await placement.register(runner("a"))
    await placement.register(runner("b"))
    placed = await placement.place("m/m", start=True)
    assert [r.name for r in placed.targets] == ["a", "b"]  # two runners for three replicas: as many as can be
    await placement.register(runner("a", models=("m/m",)))
    await placement.register(runner("b", models=("m/m",)))
    runtime = index.runtime["m/m"]
    assert runtime.state == RUNNING and runtime.runners == ("a", "b") and runtime.runner == "a"
    assert runtime.replicas_wanted == 3
    assert runtime.reason == "2 of 3 replicas running: no other live runner has the engine and room for one"
    placed = await placement.place("m/m")
    assert placed.loaded and [r.name for r in placed.replicas] == ["a", "b"] and placed.targets == []

    # A runner that joins gets the missing replica in its first heartbeat's answer.
    _, assignments = await placement.register(runner("c"))
    assert [a.model_id for a in assignments] == ["m/m"]
    _, again = await placement.register(runner("c"))
    assert again == []  # on its way: not handed out twice
    await placement.register(runner("c", models=("m/m",)))
    runtime = index.runtime["m/m"]
    assert runtime.runners == ("a", "b", "c") and runtime.reason == ""


async def test_assignments_carry_the_start_and_respect_room_engine_and_drain(
    placement: Placement, index: Index
) -> None:
    index.add("big/big", replicas=2, size=10 * GIB)
    await placement.register(runner("a", 16))
    await placement.place("big/big", start=True, overrides_json='{"ctx_len": 512}', keep_alive_s=60)
    await placement.register(runner("a", 16, models=("big/big",)))
    _, small = await placement.register(runner("small", 4))
    assert small == []  # no room for 10 GiB
    _, api_only = await placement.register(
        catalog_pb.Runner(name="api", address="127.0.0.1:9", memory_budget_bytes=64 * GIB, engines=["api"])
    )
    assert api_only == []  # cannot run llamacpp models
    _, draining = await placement.register(runner("roomy", 64, draining=True))
    assert draining == []
    _, assignments = await placement.register(runner("roomy", 64))
    assert [(a.model_id, a.overrides_json, a.keep_alive_s) for a in assignments] == [
        ("big/big", '{"ctx_len": 512}', 60.0)
    ]


async def test_a_dead_or_restarted_runners_replica_is_replaced(index: Index) -> None:
    placement = Placement(0.5, index.get, index.report)
    index.add("two/two", replicas=2)
    for name in ("a", "b"):
        await placement.register(runner(name))
    await placement.place("two/two", start=True)
    for name in ("a", "b"):
        await placement.register(runner(name, models=("two/two",)))
    # b restarts (same name, nothing loaded, nothing released on purpose): it gets its replica back.
    _, assignments = await placement.register(runner("b"))
    assert [a.model_id for a in assignments] == ["two/two"]
    assert index.runtime["two/two"].runners == ("a",)
    await placement.register(runner("b", models=("two/two",)))

    # b dies: its heartbeats stop; once they are stale it is forgotten and c, joining, takes the replica.
    await asyncio.sleep(0.6)
    await placement.register(runner("a", models=("two/two",)))
    await placement.expire()
    assert [r.name for r in placement.live()] == ["a"]
    assert index.runtime["two/two"].runners == ("a",)
    _, assignments = await placement.register(runner("c"))
    assert [a.model_id for a in assignments] == ["two/two"]


async def test_replicas_released_on_purpose_are_not_replaced(placement: Placement, index: Index) -> None:
    index.add("two/two", replicas=2)
    for name in ("a", "b"):
        await placement.register(runner(name))
    await placement.place("two/two", start=True)
    for name in ("a", "b"):
        await placement.register(runner(name, models=("two/two",)))
    # b's replica idled out: nobody is asked to load another.
    _, assignments = await placement.register(runner("b", released_model_ids=["two/two"]))
    assert assignments == []
    assert (await placement.register(runner("c")))[1] == []
    assert index.runtime["two/two"].runners == ("a",)
    # The last one too: the model is stopped, and what it was started with forgotten.
    await placement.register(runner("a", released_model_ids=["two/two"]))
    assert index.runtime["two/two"] == Runtime()
    assert (await placement.place("two/two")).wanted == 2  # the object's again
    assert (await placement.register(runner("d")))[1] == []


async def test_an_explicit_stop_places_no_replacement(placement: Placement, index: Index) -> None:
    await placement.register(runner("a"))
    await placement.place("m/m", start=True, replicas=2)
    await placement.register(runner("a", models=("m/m",)))
    placement.release("m/m")
    await placement.register(runner("a"))  # unloaded by the stop
    assert (await placement.register(runner("b")))[1] == []
    assert index.runtime["m/m"] == Runtime()


async def test_avoided_runners_are_left_out(placement: Placement) -> None:
    await placement.register(runner("a", models=("m/m",)))
    await placement.register(runner("b"))
    placed = await placement.place("m/m", avoid=frozenset({"a"}))
    assert placed.replicas == [] and placed.runner.name == "b"
    with pytest.raises(errors.Unavailable) as exc:
        await placement.place("m/m", avoid=frozenset({"a", "b"}))
    assert exc.value.code == "no_runner"


async def test_a_draining_runner_still_hosts_but_takes_nothing_new(
    placement: Placement, index: Index
) -> None:
    await placement.register(runner("a", models=("m/m",)))
    await placement.register(runner("a", models=("m/m",), draining=True))
    assert index.runtime["m/m"].runners == ("a",)  # still serving what it has
    with pytest.raises(errors.Unavailable, match="every runner is shutting down"):
        await placement.place("m/m")


@pytest.mark.parametrize("value", [0, -1, MAX_REPLICAS + 1, 1.5, "2", True, None])
def test_a_bad_replicas_parameter_is_refused_by_name(value: object, index: Index) -> None:
    index.add("bad/bad")
    model = index.models["bad/bad"]
    model.parameters_json = orjson.dumps({"replicas": value}).decode()
    with pytest.raises(errors.FailedPrecondition) as exc:
        replicas_of(model)
    assert exc.value.param == "parameters.replicas"
    assert replicas_of(model, 2) == 2  # a start's override is taken instead
    with pytest.raises(errors.InvalidArgument) as bad:
        replicas_of(model, MAX_REPLICAS + 1)
    assert bad.value.param == "replicas"


def test_replicas_default_to_one(index: Index) -> None:
    index.add("one/one")
    assert replicas_of(index.models["one/one"]) == 1
