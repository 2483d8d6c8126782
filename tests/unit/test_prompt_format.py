"""One precedence of the ways a model object says how its chats become prompts, for every engine."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.runner.engines.prompt import StopFilter, find_stop, reported_stop, resolve_format

HI = [{"role": "user", "content": "hi"}]
TEMPLATE = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"


@pytest.mark.parametrize(
    ("parameters", "gguf", "arch", "name"),
    [
        (
            {"user_prompt": "U: ", "ai_prompt": "A: ", "chat_format": "chatml"},
            TEMPLATE,
            "gemma3",
            "model object prompt fields",
        ),
        ({"chat_template": TEMPLATE, "chat_format": "chatml"}, "{{ 'gguf' }}", "llama", "chat_template"),
        ({"chat_format": "zephyr"}, TEMPLATE, "llama", "zephyr"),
        ({}, TEMPLATE, "llama", "gguf chat template"),
        ({}, None, "gemma3", "gemma"),
        ({}, None, "llama", "chatml"),
    ],
)
def test_first_match_wins(parameters: dict, gguf: str | None, arch: str, name: str) -> None:
    chosen = resolve_format(parameters, gguf_template=gguf, architecture=arch)
    assert chosen.name == name
    prompt, _, _ = chosen.render(HI, {})
    assert "hi" in prompt


def test_the_template_in_use_is_known_for_tools_and_a_bad_one_is_refused() -> None:
    assert resolve_format({}, gguf_template=TEMPLATE).template == TEMPLATE
    assert resolve_format({"chat_format": "chatml"}, gguf_template=TEMPLATE).template is None
    with pytest.raises(InvalidArgument):
        resolve_format({"chat_format": "nonsense"})
    with pytest.raises(InvalidArgument):
        resolve_format({"chat_template": 5})


def test_which_stop_string_cut_the_text_and_which_is_reported() -> None:
    assert find_stop("a cat sat", ["sat", "cat"]) == (2, "cat")  # the first in the text
    assert find_stop("a cat sat", ["cat sat", "ca"]) == (2, "ca")  # of two there, the one complete first
    assert find_stop("a cat", ["dog", ""]) is None
    f = StopFilter(["<|im_end|>", "sat"])
    assert f.feed("a cat s") == "a cat " and not f.stopped
    assert f.feed("at down") == "" and f.matched == "sat"
    configured = ("sat",)  # Sampling.stop; "<|im_end|>" is the chat template's end of turn
    assert reported_stop("sat", configured) == "sat"
    assert reported_stop("<|im_end|>", configured) == ""
    assert reported_stop("", configured) == ""
