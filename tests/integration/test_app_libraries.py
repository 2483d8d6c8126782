"""Structured outputs and tools as app libraries use them, unmodified, against the real gateway and
runner (llama.cpp, a tiny GGUF written by the tests): LangChain's `with_structured_output` and
`bind_tools`, and instructor (tools mode and JSON-schema mode)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from tests.harness import TINY_CHAT, TOOLS_CTX, Stack, write_tiny_chat_model

pytest.importorskip("llama_cpp")
instructor = pytest.importorskip("instructor")
langchain_openai = pytest.importorskip("langchain_openai")

MODEL = TINY_CHAT


@pytest.fixture
def stack_models() -> Callable[[Path], None]:
    # Room for a whole structured answer (the model's default is 12 tokens).
    return lambda root: write_tiny_chat_model(root, n_ctx=TOOLS_CTX, max_tokens=300)


class Ticket(BaseModel):
    """A support ticket."""

    # Bounded strings: a model of random weights may otherwise write one string until max_tokens.
    title: Annotated[str, Field(max_length=12)]
    priority: Literal["low", "high"]
    estimate_hours: Annotated[int, Field(ge=1, le=40)]


def chat_model(stack: Stack) -> object:
    return langchain_openai.ChatOpenAI(
        model=MODEL, base_url="http://gw/v1", api_key="x", http_async_client=stack.http, max_retries=0
    )


async def test_langchain_with_structured_output_and_bind_tools(stack: Stack) -> None:
    llm = chat_model(stack)
    ticket = await llm.with_structured_output(Ticket, method="json_schema").ainvoke("The printer is on fire")  # type: ignore[attr-defined]
    assert isinstance(ticket, Ticket) and 1 <= ticket.estimate_hours <= 40

    # One call: with parallel calls allowed a model of random weights may go on calling until max_tokens.
    bound = llm.bind_tools([Ticket], tool_choice="any", parallel_tool_calls=False)  # type: ignore[attr-defined]
    message = await bound.ainvoke("The printer is on fire")
    assert message.tool_calls and message.tool_calls[0]["name"] == "Ticket"
    assert Ticket.model_validate(message.tool_calls[0]["args"])


async def test_instructor_in_tools_and_json_schema_modes(stack: Stack) -> None:
    import openai

    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="x", http_client=stack.http, max_retries=0)
    for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
        client = instructor.from_openai(sdk, mode=mode)
        ticket = await client.chat.completions.create(
            model=MODEL,
            response_model=Ticket,
            messages=[{"role": "user", "content": "The printer is on fire"}],
            max_retries=0,
            **({"parallel_tool_calls": False} if mode == instructor.Mode.TOOLS else {}),
        )
        assert isinstance(ticket, Ticket) and ticket.priority in ("low", "high")
