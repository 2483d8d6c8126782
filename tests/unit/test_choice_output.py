"""One choice's text split into reasoning, content and tool calls while it streams (output.py)."""

from __future__ import annotations

import json

from services.runner.engines.base import Delta
from services.runner.engines.output import ChoiceOutput
from services.runner.engines.reasoning import ReasoningSplitter
from services.runner.engines.tools import ToolCallParser

TEXT = (
    "<think>\nThe user wants the weather.\n</think>\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
)


def run(
    output: ChoiceOutput, text: str, size: int, finish: str = "stop"
) -> tuple[str, str, dict, str | None]:
    reasoning, content, calls, last = "", "", {}, None
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    for i, piece in enumerate(pieces):
        final = i == len(pieces) - 1
        delta = output.apply(Delta(text=piece, finish_reason=finish if final else None))
        reasoning += delta.reasoning
        content += delta.text
        for call in delta.tool_calls:
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += call.name
            entry["arguments"] += call.arguments
        last = delta.finish_reason
    return reasoning, content, calls, last


def test_thinking_then_a_native_call_at_any_piece_size() -> None:
    for size in (1, 2, 7, 1000):
        output = ChoiceOutput(ReasoningSplitter(), ToolCallParser("hermes"))
        reasoning, content, calls, finish = run(output, TEXT, size)
        assert reasoning.strip() == "The user wants the weather."
        assert content == "" and finish == "tool_calls"
        assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Oslo"}


def test_a_cut_answer_stays_length_and_plain_text_passes_through() -> None:
    output = ChoiceOutput(ReasoningSplitter(), ToolCallParser("hermes"))
    assert run(output, TEXT[:-20], 5, finish="length")[3] == "length"
    output = ChoiceOutput(None, None)
    assert run(output, "<think>kept inline</think>hello", 3) == (
        "",
        "<think>kept inline</think>hello",
        {},
        "stop",
    )
