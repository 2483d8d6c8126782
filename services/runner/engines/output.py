"""One choice's generated text turned into the answer's parts while it streams: thinking text
(reasoning.py), content, and tool calls (tools.py). Engine-independent: it sees only Deltas."""

from __future__ import annotations

import dataclasses

from services.runner.engines.base import Delta, ToolCallDelta
from services.runner.engines.reasoning import ReasoningSplitter
from services.runner.engines.tools import ToolCallParser


class ChoiceOutput:
    def __init__(self, reasoning: ReasoningSplitter | None, tools: ToolCallParser | None) -> None:
        self._reasoning = reasoning
        self._tools = tools

    def apply(self, delta: Delta) -> Delta:
        """`delta` with its text split into reasoning, content and tool calls; a choice that ends having
        called tools finishes with "tool_calls" (unless it was cut by max_tokens: "length")."""
        if self._reasoning is None and self._tools is None:
            return delta
        final = delta.finish_reason is not None
        reasoning, content = delta.text, ""
        if self._reasoning is not None:
            reasoning, content = self._reasoning.feed(delta.text)
            if final:
                more_reasoning, more_content = self._reasoning.flush()
                reasoning, content = reasoning + more_reasoning, content + more_content
        else:
            reasoning, content = "", delta.text
        calls: list[ToolCallDelta] = []
        finish = delta.finish_reason
        if self._tools is not None:
            events = self._tools.feed(content) + (self._tools.finish() if final else [])
            content = "".join(e for e in events if isinstance(e, str))
            calls = [e for e in events if isinstance(e, ToolCallDelta)]
            if final and self._tools.called and finish == "stop":
                finish = "tool_calls"
        return dataclasses.replace(
            delta, text=content, reasoning=reasoning, tool_calls=tuple(calls), finish_reason=finish
        )
