"""What a model's chat template says about it: whether it takes tool definitions, whether it knows thinking
blocks (and by which markers), and which of a model object's ways of prompting is the one in use.

Plain text checks, no Jinja, shared by the catalog (a model's capabilities) and the runner (tool formats,
thinking text, the prompt precedence), so both answer these questions alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

# Thinking blocks' (opening, closing) markers: `<think>` (DeepSeek-R1 and its distills, Qwen3, QwQ, Phi-4
# reasoning ...), `<thinking>`, Command A reasoning's `<|START_THINKING|>`, Magistral's `[THINK]`, Seed-OSS's
# `<seed:think>`.
THINKING_MARKERS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
    ("[THINK]", "[/THINK]"),
    ("<seed:think>", "</seed:think>"),
)

# The model object's own prompt fields (the Jan spec's), which come before any template.
PROMPT_FIELDS = ("pre_prompt", "user_prompt", "ai_prompt")

PromptSource = Literal["prompt_fields", "chat_template", "chat_format", "gguf"]

_TOOLS = re.compile(r"\btools\b")


def takes_tools(template: str | None) -> bool:
    """Whether a Jinja chat template renders the `tools` variable: a template that does not never shows the
    model the tools' definitions, whatever else it can write."""
    return bool(template) and _TOOLS.search(template or "") is not None


def knows_thinking(template: str | None) -> bool:
    """Whether a chat template knows a thinking block: it names a marker's opening (many end the prompt
    inside the block) or its closing (some only cut earlier turns' thinking out at it)."""
    if not template:
        return False
    return any(opening in template or closing in template for opening, closing in THINKING_MARKERS)


def prompt_source(parameters: Mapping[str, Any]) -> PromptSource:
    """Which way of a model object decides how its chats become prompts, first match wins: its prompt
    fields, `parameters.chat_template` (a Jinja template), `parameters.chat_format` (a named format), else
    the GGUF (its `tokenizer.chat_template`, or a named format chosen by its architecture)."""
    if any(parameters.get(k) for k in PROMPT_FIELDS):
        return "prompt_fields"
    if parameters.get("chat_template"):
        return "chat_template"
    if parameters.get("chat_format"):
        return "chat_format"
    return "gguf"
