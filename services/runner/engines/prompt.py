"""Chat prompts and stop strings, the same for every engine that renders prompts itself (llama.cpp,
Triton/TensorRT-LLM): one precedence of the ways a model object can say how its chats become prompts
(`resolve_format`). Stop strings are applied while streaming: text that might be the start of a stop
string is held back until it is not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common.chat_template import prompt_source
from services.common.errors import InvalidArgument

# Named prompt formats of llama-cpp-python usable as `parameters.chat_format`.
CHAT_FORMATS = ("chatml", "gemma", "llama-2", "llama-3", "mistral-instruct", "zephyr", "alpaca", "qwen")

# Renders chat messages (with extra template variables such as `tools`) into (the prompt, stop strings,
# whether the prompt already holds its special tokens as text: a Jinja template writes BOS itself).
Render = Callable[[list[dict[str, Any]], dict[str, Any]], tuple[str, list[str], bool]]


def spec_prompt(parameters: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[str, list[str]]:
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


@dataclass(frozen=True)
class PromptFormat:
    """How one model's chats become prompts."""

    name: str  # for logs and effective parameters
    render: Render
    # The Jinja template in use (its tool format is read from it), or None for the other ways.
    template: str | None = None


def resolve_format(
    parameters: dict[str, Any],
    *,
    gguf_template: str | None = None,
    architecture: str = "",
    bos_token: str = "",
    eos_token: str = "",
) -> PromptFormat:
    """The one precedence every engine follows, first match wins:
    1. the model object's spec prompt fields (`pre_prompt`, `user_prompt`, `ai_prompt`);
    2. `parameters.chat_template`, a Jinja template (as in a tokenizer config);
    3. `parameters.chat_format`, one of llama-cpp-python's named formats (CHAT_FORMATS);
    4. the GGUF's own `tokenizer.chat_template`;
    5. by architecture: Gemma -> "gemma", anything else -> "chatml" (llama-cpp-python's own silent
       fallback, "llama-2", makes Gemma-style models stop at once or babble)."""
    source = prompt_source(parameters)
    if source == "prompt_fields":

        def render_spec(messages: list[dict[str, Any]], extra: dict[str, Any]) -> tuple[str, list[str], bool]:
            return (*spec_prompt(parameters, messages), False)

        return PromptFormat("model object prompt fields", render_spec)
    template = parameters.get("chat_template")
    if template is not None and not isinstance(template, str):
        raise InvalidArgument("chat_template must be a Jinja template string", param="chat_template")
    if source == "chat_template":
        assert isinstance(template, str)
        bos = str(parameters.get("bos_token") or bos_token)
        eos = str(parameters.get("eos_token") or eos_token)
        return PromptFormat("chat_template", _jinja(template, bos, eos), template)
    if source == "chat_format":
        return _named(str(parameters.get("chat_format")))
    if gguf_template:
        return PromptFormat("gguf chat template", _jinja(gguf_template, bos_token, eos_token), gguf_template)
    return _named("gemma" if architecture.startswith("gemma") else "chatml")


def _jinja(template: str, bos_token: str, eos_token: str) -> Render:
    from llama_cpp import llama_chat_format as fmt

    jinja = fmt.Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)

    def render(messages: list[dict[str, Any]], extra: dict[str, Any]) -> tuple[str, list[str], bool]:
        result = jinja(messages=messages, **extra)  # type: ignore[arg-type]
        return result.prompt, stop_list(result.stop), True

    return render


def _named(name: str) -> PromptFormat:
    from llama_cpp import llama_chat_format as fmt

    if name not in CHAT_FORMATS:
        raise InvalidArgument(f"chat_format must be one of {', '.join(CHAT_FORMATS)}", param="chat_format")
    function = getattr(
        fmt, "format_" + name.replace("-", "_").replace("llama_2", "llama2").replace("llama_3", "llama3")
    )

    def render(messages: list[dict[str, Any]], extra: dict[str, Any]) -> tuple[str, list[str], bool]:
        result = function(messages=messages)  # the named formats know no tools: the tool plan is generic
        return result.prompt, stop_list(result.stop), False

    return PromptFormat(name, render)


def stop_list(stop: Any) -> list[str]:
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


def find_stop(text: str, stops: list[str] | tuple[str, ...]) -> tuple[int, str] | None:
    """Where the first stop string starts in `text`, and which one it is (of two that start there, the
    shorter: it was complete first), or None."""
    found = [(text.find(s), len(s), s) for s in stops if s and s in text]
    if not found:
        return None
    at, _, stop = min(found)
    return at, stop


def reported_stop(matched: str, configured: list[str] | tuple[str, ...]) -> str:
    """The stop string an answer reports as having ended it (GenerateResponse.stop_sequence): the one that
    cut it when it is one of Sampling.stop (the request's, else the model object's). A chat template's own
    stop strings mark the model's end of turn, as its end-of-generation token does: not reported."""
    return matched if matched and matched in configured else ""


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
    """Cuts a stream of text pieces at the first stop string; `feed` returns what may be emitted now, and
    `matched` is the stop string that cut it ("" while none has)."""

    def __init__(self, stops: list[str] | tuple[str, ...]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0
        self.matched = ""

    @property
    def stopped(self) -> bool:
        return bool(self.matched)

    def feed(self, piece: str) -> str:
        self.text += piece
        found = find_stop(self.text, self.stops)
        if found is not None:
            cut, self.matched = found
            self.text = self.text[:cut]
            return self.flush()
        end = len(self.text) - partial_stop(self.text, self.stops)
        out = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def flush(self) -> str:
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out
