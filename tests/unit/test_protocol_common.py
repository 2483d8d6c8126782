"""What every dialect shares (gateway/protocol/common.py, answer.py): durations, strict booleans, storable
JSON, and the runner's answer gathered per choice with the usage counted once per prompt."""

from __future__ import annotations

import pydantic
import pytest

from gateway.protocol.answer import Gathered
from gateway.protocol.common import (
    JsonObject,
    StrictBoolsModel,
    Unsupported,
    keep_alive_seconds,
    parse_keep_alive,
)
from jan.runner.v1 import runner_service_pb2 as runner_pb


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 0.0),
        (300, 300.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("30s", 30.0),
        ("250ms", 0.25),
        ("-1", -1.0),
        ("12", 12.0),
    ],
)
def test_keep_alive_durations(value: float | str | None, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


def test_keep_alive_zero_means_unload_right_after_and_nonsense_is_refused_by_name() -> None:
    assert parse_keep_alive(0) == parse_keep_alive("0m") == 1e-3
    with pytest.raises(Unsupported) as err:
        keep_alive_seconds("soon")
    assert err.value.param == "keep_alive" and "not a duration" in str(err.value)


class Body(StrictBoolsModel):
    temperature: float | None = None
    stream: bool = False
    extra: JsonObject = None


def test_booleans_count_only_for_boolean_fields() -> None:
    assert Body.model_validate({"temperature": 1, "stream": True}).temperature == 1.0
    with pytest.raises(pydantic.ValidationError, match="temperature: a boolean is not valid here"):
        Body.model_validate({"temperature": True})


def test_a_json_object_the_services_cannot_store_is_refused() -> None:
    assert Body.model_validate({"extra": {"n": 2**63 - 1}}).extra == {"n": 2**63 - 1}
    with pytest.raises(pydantic.ValidationError, match="not a storable JSON object"):
        Body.model_validate({"extra": {"n": 2**64}})


def test_gathered_choices_and_usage_counted_from_each_choices_last_message() -> None:
    gathered = Gathered()
    call = runner_pb.ToolCallDelta(index=0, id="c1", name="f", arguments='{"a":')
    for reply in (
        runner_pb.GenerateResponse(index=1, text="B"),
        runner_pb.GenerateResponse(index=0, text="A", reasoning="hm", tool_calls=[call]),
        runner_pb.GenerateResponse(index=0, tool_calls=[runner_pb.ToolCallDelta(index=0, arguments=" 1}")]),
        runner_pb.GenerateResponse(
            index=0,
            finish_reason=runner_pb.FINISH_REASON_STOP,
            stop_sequence="END",
            usage=runner_pb.Usage(prompt_tokens=8, completion_tokens=3, cached_tokens=2),
        ),
        runner_pb.GenerateResponse(
            index=1,
            finish_reason=runner_pb.FINISH_REASON_LENGTH,
            usage=runner_pb.Usage(prompt_tokens=8, completion_tokens=5, cached_tokens=6),
        ),
    ):
        gathered.add(reply)
    first = gathered.first
    assert (first.content, first.thinking, first.stop_sequence) == ("A", "hm", "END")
    assert [(c.id, c.name, c.arguments) for c in first.tool_calls] == [("c1", "f", '{"a": 1}')]
    assert gathered.choices[1].finish_reason == runner_pb.FINISH_REASON_LENGTH
    usage = gathered.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.choices) == (8, 8, 6, 2)
