"""What a model can do (services/common/capabilities.py) and what its chat template says
(services/common/chat_template.py): the rule over parameters, binary names and header traits, and the
template checks, which must answer as the runner's own tool format, thinking markers and prompt precedence
do while serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.capabilities import HeaderTraits, derive_capabilities
from services.common.chat_template import THINKING_MARKERS, knows_thinking, prompt_source, takes_tools
from services.common.gguf import read_gguf_header
from services.runner.engines import reasoning
from services.runner.engines.prompt import resolve_format
from services.runner.engines.tools import detect_format
from tests.fakes import chat_templates
from tests.fakes.projector import write_projector
from tests.fakes.tiny_gguf import N_EMBD, write_tiny_gguf

PLAIN = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
TOOLS = "{% if tools %}{{ tools | tojson }}{% endif %}" + PLAIN
THINKING = PLAIN + "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
CLOSING_ONLY = "{% set content = message.content.split('</think>')[-1] %}" + PLAIN
LLAMA = HeaderTraits(architecture="llama")


def caps(parameters: dict[str, Any] | None = None, *binaries: tuple[str, HeaderTraits | None]) -> list[str]:
    return derive_capabilities(parameters or {}, list(binaries))


def header(template: str | None = None, **facts: Any) -> HeaderTraits:
    return HeaderTraits.of(
        {
            "general.architecture": "llama",
            **({"tokenizer.chat_template": template} if template else {}),
            **facts,
        }
    )


# --- the rule ---------------------------------------------------------------------------------------------


def test_a_model_known_by_nothing_but_its_object_completes_text() -> None:
    assert caps() == ["completion"]
    assert caps({}, ("m.gguf", None)) == ["completion"]  # not downloaded: its header is not read yet


def test_a_projector_among_the_binaries_is_vision_before_anything_is_read() -> None:
    assert caps({}, ("m.gguf", None), ("mmproj-m-f16.gguf", None)) == ["completion", "vision"]
    assert caps({}, ("m.gguf", None), ("llava.proj", None)) == ["completion", "vision"]


def test_the_projector_header_decides_once_read() -> None:
    audio_only = HeaderTraits(architecture="clip", vision_encoder=False)
    assert caps({}, ("m.gguf", LLAMA), ("mmproj-audio.gguf", audio_only)) == ["completion"]
    # A projector under another name is still one when its header says so (the GGUF is multimodal).
    seeing = HeaderTraits(architecture="clip", vision_encoder=True)
    assert caps({}, ("m.gguf", LLAMA), ("vision-tower.gguf", seeing)) == ["completion", "vision"]


def test_tools_and_reasoning_come_from_the_gguf_template() -> None:
    assert caps({}, ("m.gguf", header(TOOLS))) == ["completion", "tools"]
    assert caps({}, ("m.gguf", header(THINKING))) == ["completion", "reasoning"]
    assert caps({}, ("m.gguf", header(CLOSING_ONLY))) == ["completion", "reasoning"]
    assert caps({}, ("m.gguf", header(PLAIN))) == ["completion"]
    # A split's later parts carry no metadata: the part with an architecture speaks for the model.
    assert caps({}, ("m-00001-of-00002.gguf", header(TOOLS)), ("m-00002-of-00002.gguf", HeaderTraits())) == [
        "completion",
        "tools",
    ]


def test_the_template_in_use_is_the_one_that_counts() -> None:
    gguf = ("m.gguf", header(PLAIN))
    assert caps({"chat_template": TOOLS + THINKING}, gguf) == ["completion", "tools", "reasoning"]
    assert caps({"chat_template": TOOLS}) == ["completion", "tools"]  # known before any download
    # A named format or the object's prompt fields come before the GGUF's template, and take no tools.
    assert caps({"chat_format": "chatml"}, ("m.gguf", header(TOOLS))) == ["completion"]
    assert caps({"user_prompt": "U: "}, ("m.gguf", header(TOOLS))) == ["completion"]
    assert caps({"chat_template": 5}, gguf) == ["completion"]  # not a template: the runner refuses it


@pytest.mark.parametrize(
    ("parameters", "traits", "expected"),
    [
        ({"embedding": True}, LLAMA, ["completion", "embedding"]),
        ({"embedding": "true", "embedding_only": "yes"}, LLAMA, ["embedding"]),
        ({"embedding": "false"}, LLAMA, ["completion"]),
        ({}, HeaderTraits(architecture="nomic-bert"), ["embedding"]),
        ({}, HeaderTraits.of({"general.architecture": "qwen3", "qwen3.pooling_type": 3}), ["embedding"]),
        ({}, HeaderTraits.of({"general.architecture": "qwen3", "qwen3.pooling_type": 4}), []),  # a reranker
        ({}, HeaderTraits.of({"general.architecture": "qwen3", "qwen3.pooling_type": 0}), ["completion"]),
    ],
)
def test_embedding_models(parameters: dict[str, Any], traits: HeaderTraits, expected: list[str]) -> None:
    assert caps(parameters, ("m.gguf", traits)) == expected


def test_an_embedding_only_model_does_not_claim_what_only_generation_uses() -> None:
    bert = HeaderTraits(architecture="bert", tools=True, thinking=True)
    assert caps({}, ("e.gguf", bert), ("mmproj-e.gguf", None)) == ["embedding"]


def test_header_traits_of_real_files(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "m.gguf", chat_template=chat_templates.QWEN25_INSTRUCT)
    projector = write_projector(tmp_path / "mmproj.gguf", N_EMBD)
    assert HeaderTraits.of(read_gguf_header(model).facts) == HeaderTraits(architecture="llama", tools=True)
    assert HeaderTraits.of(read_gguf_header(projector).facts) == HeaderTraits(
        architecture="clip", vision_encoder=True
    )


# --- the template checks answer as the runner does ---------------------------------------------------------


TEMPLATES = [
    PLAIN,
    TOOLS,
    THINKING,
    CLOSING_ONLY,
    "{{ toolset }} {{ my_tools }}",  # not the word `tools`
    chat_templates.QWEN25_INSTRUCT,
    chat_templates.LLAMA31_INSTRUCT,
    chat_templates.MISTRAL_NEMO_INSTRUCT,
    chat_templates.GEMMA3_IT,
]


@pytest.mark.parametrize("template", TEMPLATES)
def test_takes_tools_is_where_the_runner_leaves_the_generic_format(template: str) -> None:
    if not takes_tools(template):
        assert detect_format(template) == "generic"
    assert takes_tools(template) == (template in (TOOLS, *TEMPLATES[5:8]))


def test_the_thinking_markers_are_the_runners() -> None:
    assert THINKING_MARKERS == reasoning.MARKERS
    for opening, closing in THINKING_MARKERS:
        assert knows_thinking(f"x {opening} y") and knows_thinking(f"x {closing} y")
    assert not knows_thinking(PLAIN) and not knows_thinking(None)


@pytest.mark.parametrize(
    ("parameters", "source", "runner_name"),
    [
        ({"pre_prompt": "P", "chat_template": PLAIN}, "prompt_fields", "model object prompt fields"),
        ({"chat_template": PLAIN, "chat_format": "zephyr"}, "chat_template", "chat_template"),
        ({"chat_template": "", "chat_format": "zephyr"}, "chat_format", "zephyr"),
        ({"ai_prompt": "", "chat_format": "chatml"}, "chat_format", "chatml"),
        ({}, "gguf", "gguf chat template"),
    ],
)
def test_prompt_source_is_the_runners_precedence(
    parameters: dict[str, Any], source: str, runner_name: str
) -> None:
    assert prompt_source(parameters) == source
    assert resolve_format(parameters, gguf_template=PLAIN).name == runner_name
