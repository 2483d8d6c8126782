"""The gateway's choice among a model's replicas (gateway/routing.py): fewest outstanding requests, a
conversation back to the replica holding its prefix unless that one is overloaded, unreachable replicas
passed over, and the prefix keys read from chats and text prompts."""

from __future__ import annotations

import pytest

from gateway.clients import RunnerClient
from gateway.routing import KEYS_PER_REQUEST, TEXT_BLOCK, Replica, Router, prefix_keys
from jan.runner.v1 import runner_service_pb2 as runner_pb

MODEL = "m/m"


@pytest.fixture
async def replicas() -> list[Replica]:
    # Clients are made without connecting (a channel connects on its first call, never made here); in a
    # running event loop, as the gateway makes them.
    return [
        Replica(name, RunnerClient(f"127.0.0.1:{port}", 1, 1))
        for name, port in (("a", 1), ("b", 2), ("c", 3))
    ]


def chat(*turns: tuple[str, str]) -> runner_pb.GenerateRequest:
    messages = [runner_pb.ChatMessage(role=role, content=content) for role, content in turns]
    return runner_pb.GenerateRequest(model_id=MODEL, chat=runner_pb.ChatMessages(messages=messages))


SYSTEM = ("system", "You are terse.")


async def test_fewest_outstanding_wins_and_ties_take_turns(replicas: list[Replica]) -> None:
    router = Router("least_loaded")
    picked = [router.choose(replicas).name for _ in range(6)]
    assert sorted(picked[:3]) == ["a", "b", "c"] and picked[3:] == picked[:3]  # in turn, when idle
    router.begin(MODEL, replicas[0])
    router.begin(MODEL, replicas[1])
    assert router.choose(replicas).name == "c"
    router.begin(MODEL, replicas[2])
    router.begin(MODEL, replicas[2])
    assert router.choose(replicas).name in {"a", "b"}
    for replica in (replicas[0], replicas[1], replicas[2], replicas[2]):
        router.end(MODEL, replica)
    assert all(router.outstanding(r.name) == 0 for r in replicas)


async def test_a_conversation_goes_back_to_the_replica_holding_its_prefix(replicas: list[Replica]) -> None:
    router = Router("affinity")
    first = chat(SYSTEM, ("user", "hello"))
    holder = router.choose(replicas, prefix_keys(first))
    router.served(holder, prefix_keys(first))
    # Other conversations in between take the others (least outstanding, in turn).
    for i in range(5):
        other = chat(SYSTEM, ("user", f"other {i}"))
        router.served(router.choose(replicas, prefix_keys(other)), prefix_keys(other))
    turn2 = chat(SYSTEM, ("user", "hello"), ("assistant", "hi"), ("user", "how are you?"))
    for _ in range(3):
        assert router.choose(replicas, prefix_keys(turn2)) is holder


async def test_an_overloaded_holder_gives_the_conversation_to_another(replicas: list[Replica]) -> None:
    router = Router("affinity", load_factor=1.25, floor=0)
    first = chat(("user", "hello"))
    holder = replicas[0]
    router.served(holder, prefix_keys(first))
    turn2 = chat(("user", "hello"), ("assistant", "hi"), ("user", "more"))
    # One request already there: a second would exceed 1.25 x its fair share of 2 over 3, rounded up (1).
    router.begin(MODEL, holder)
    assert router.choose(replicas, prefix_keys(turn2)) is not holder
    for r in replicas[1:]:
        router.begin(MODEL, r)
        router.begin(MODEL, r)
    # The others hold 2 each: the holder is within its bound (1.25 x 6 / 3 = 3) again.
    assert router.choose(replicas, prefix_keys(turn2)) is holder


async def test_below_the_floor_a_holder_is_never_overloaded(replicas: list[Replica]) -> None:
    router = Router("affinity", floor=4)
    keys = prefix_keys(chat(("user", "hello")))
    router.served(replicas[0], keys)
    for _ in range(3):
        router.begin(MODEL, replicas[0])
    assert router.choose(replicas, keys) is replicas[0]  # 3 + 1 within 4 slots
    router.begin(MODEL, replicas[0])
    assert router.choose(replicas, keys) is not replicas[0]


async def test_least_loaded_mode_ignores_prefixes(replicas: list[Replica]) -> None:
    router = Router("least_loaded")
    keys = prefix_keys(chat(("user", "hello")))
    router.served(replicas[2], keys)
    assert [router.choose(replicas, keys).name for _ in range(3)].count("c") == 1


async def test_an_unreachable_replica_is_passed_over_while_others_can_serve(replicas: list[Replica]) -> None:
    router = Router("affinity", suspect_s=60)
    keys = prefix_keys(chat(("user", "hello")))
    router.served(replicas[0], keys)
    router.suspect(replicas[0])
    assert all(router.choose(replicas, keys).name != "a" for _ in range(6))
    assert router.choose(replicas[:1], keys).name == "a"  # the only one left: tried anyway


def test_prefix_keys_skip_a_shared_system_prompt_and_keep_the_longest() -> None:
    assert prefix_keys(chat(SYSTEM)) == []
    one = prefix_keys(chat(SYSTEM, ("user", "a")))
    two = prefix_keys(chat(SYSTEM, ("user", "a"), ("assistant", "b"), ("user", "c")))
    assert len(one) == 1 and two[0] == one[0] and len(two) == 3
    assert prefix_keys(chat(SYSTEM, ("user", "b"))) != one  # another conversation, another key
    other_model = chat(SYSTEM, ("user", "a"))
    other_model.model_id = "n/n"
    assert prefix_keys(other_model) != one
    long = chat(*[("user", str(i)) for i in range(40)])
    assert len(prefix_keys(long)) == KEYS_PER_REQUEST


def test_prefix_keys_of_a_text_prompt_are_per_block() -> None:
    short = runner_pb.GenerateRequest(model_id=MODEL, text="x" * (TEXT_BLOCK - 1))
    assert prefix_keys(short) == []
    base = "y" * (2 * TEXT_BLOCK)
    keys = prefix_keys(runner_pb.GenerateRequest(model_id=MODEL, text=base))
    longer = prefix_keys(runner_pb.GenerateRequest(model_id=MODEL, text=base + "z" * TEXT_BLOCK))
    assert len(keys) == 2 and longer[:2] == keys


def test_prefix_keys_tell_conversations_apart_by_their_images() -> None:
    def with_image(data: bytes) -> runner_pb.GenerateRequest:
        request = chat(SYSTEM, ("user", ""))
        user = request.chat.messages[1]
        user.parts.add(text="what is this?")
        user.parts.add(image=runner_pb.Image(data=data, media_type="image/png"))
        return request

    cat, dog = with_image(b"cat" * 10_000), with_image(b"dog" * 10_000)
    assert prefix_keys(cat) == prefix_keys(with_image(b"cat" * 10_000)) != prefix_keys(dog)
    assert prefix_keys(cat) != prefix_keys(chat(SYSTEM, ("user", "what is this?")))


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="affinity, least_loaded"):
        Router("random")
