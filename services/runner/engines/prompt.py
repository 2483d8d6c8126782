"""Chat prompts and stop strings for engines that take text (Triton/TensorRT-LLM), without a GGUF at hand.

A chat becomes one prompt string by, in order: the model object's spec prompt fields (`pre_prompt`,
`user_prompt`, `ai_prompt`); `parameters.chat_template` (a Jinja template, as in a tokenizer config);
`parameters.chat_format` (one of llama-cpp-python's named formats); else ChatML. Stop strings are
applied while streaming: text that might be the start of a stop string is held back until it is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.errors import InvalidArgument

# Named prompt formats of llama-cpp-python usable as `parameters.chat_format`.
CHAT_FORMATS = ("chatml", "gemma", "llama-2", "llama-3", "mistral-instruct", "zephyr", "alpaca", "qwen")

Render = Callable[[list[dict[str, str]]], tuple[str, list[str]]]


def spec_prompt(parameters: dict[str, Any], messages: list[dict[str, str]]) -> tuple[str, list[str]]:
    """The Jan spec's prompt fields: pre_prompt, then user_prompt/ai_prompt before each turn."""
    pre, user, ai = (str(parameters.get(k) or "") for k in ("pre_prompt", "user_prompt", "ai_prompt"))
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    parts = [pre + (("\n" if pre else "") + system if system else "")]
    for m in messages:
        if m["role"] == "user":
            parts.append(f"{user}{m['content']}")
        elif m["role"] == "assistant":
            parts.append(f"{ai}{m['content']}")
    prompt = "\n".join(p for p in parts if p) + ("\n" if parts[-1] else "") + ai
    return prompt, [s for s in (user.strip(),) if s]


def formatter(parameters: dict[str, Any]) -> tuple[str, Render]:
    """(a name for logs and effective parameters, the function turning messages into a prompt)."""
    from llama_cpp import llama_chat_format as fmt

    if any(parameters.get(k) for k in ("pre_prompt", "user_prompt", "ai_prompt")):
        return "model object prompt fields", lambda messages: spec_prompt(parameters, messages)
    template = parameters.get("chat_template")
    if template:
        if not isinstance(template, str):
            raise InvalidArgument("chat_template must be a Jinja template string", param="chat_template")
        jinja = fmt.Jinja2ChatFormatter(
            template=template,
            eos_token=str(parameters.get("eos_token") or ""),
            bos_token=str(parameters.get("bos_token") or ""),
        )

        def render_template(messages: list[dict[str, str]]) -> tuple[str, list[str]]:
            result = jinja(messages=messages)  # type: ignore[arg-type]
            return result.prompt, stop_list(result.stop)

        return "chat_template", render_template
    name = str(parameters.get("chat_format") or "chatml")
    if name not in CHAT_FORMATS:
        raise InvalidArgument(f"chat_format must be one of {', '.join(CHAT_FORMATS)}", param="chat_format")
    function = getattr(
        fmt, "format_" + name.replace("-", "_").replace("llama_2", "llama2").replace("llama_3", "llama3")
    )

    def render_named(messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        result = function(messages=messages)
        return result.prompt, stop_list(result.stop)

    return name, render_named


def stop_list(stop: Any) -> list[str]:
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


def find_stop(text: str, stops: list[str] | tuple[str, ...]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


def partial_stop(text: str, stops: list[str] | tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string (held back)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                longest = max(longest, n)
                break
    return longest


class StopFilter:
    """Cuts a stream of text pieces at the first stop string; `feed` returns what may be emitted now."""

    def __init__(self, stops: list[str] | tuple[str, ...]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.text += piece
        cut = find_stop(self.text, self.stops)
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
            return self.flush()
        end = len(self.text) - partial_stop(self.text, self.stops)
        out = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def flush(self) -> str:
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out
