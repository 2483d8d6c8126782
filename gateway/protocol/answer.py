"""The runner's answer in no dialect: each choice's text, reasoning, tool calls, log-probabilities and
finish, and the usage summed over the choices. Every dialect renders its responses from these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jan.runner.v1 import runner_service_pb2 as runner_pb


@dataclass
class ToolCall:
    """One call the model made, its arguments a JSON text."""

    id: str
    name: str
    arguments: str = ""


@dataclass
class Choice:
    """One choice's output gathered from the runner's messages (non-streaming answers)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, ToolCall] = field(default_factory=dict)
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: runner_pb.FinishReason.ValueType = runner_pb.FINISH_REASON_UNSPECIFIED
    stop_sequence: str = ""  # which of the request's stop strings ended it, if one did

    def add(self, reply: runner_pb.GenerateResponse) -> None:
        self.text.append(reply.text)
        if reply.reasoning:
            self.reasoning.append(reply.reasoning)
        for d in reply.tool_calls:
            self.calls.setdefault(d.index, ToolCall(d.id, d.name)).arguments += d.arguments
        self.logprobs.extend(reply.logprobs)
        if reply.finish_reason:
            self.finish_reason = reply.finish_reason
            self.stop_sequence = reply.stop_sequence

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def thinking(self) -> str:
        return "".join(self.reasoning)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [self.calls[i] for i in sorted(self.calls)]


@dataclass
class Usage:
    """The usage of an answer, summed over its choices from each choice's last message."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    choices: int = 0

    def count(self, reply: runner_pb.GenerateResponse) -> None:
        if not reply.finish_reason:
            return
        # Every choice reads the same prompt once: it counts once, as OpenAI counts it.
        self.prompt_tokens = reply.usage.prompt_tokens
        self.cached_tokens = max(self.cached_tokens, reply.usage.cached_tokens)
        self.completion_tokens += reply.usage.completion_tokens
        self.choices += 1


@dataclass
class Gathered:
    """Every choice of a non-streamed answer, and its usage."""

    choices: dict[int, Choice] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)

    def add(self, reply: runner_pb.GenerateResponse) -> None:
        self.choices.setdefault(reply.index, Choice()).add(reply)
        self.usage.count(reply)

    @property
    def first(self) -> Choice:
        return self.choices[min(self.choices)]
