"""Tests for services.runner.engines.tools: format detection, validation, the messages and tools each chat
template renders (through llama-cpp-python's Jinja2ChatFormatter and named formats, with templates in each
model family's format), the grammars (run in llama.cpp's grammar sampler), and the streaming parser under
every split of its input."""

from __future__ import annotations

import ctypes
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
import pytest
from llama_cpp import llama_chat_format as chat_format
from llama_cpp._logger import set_verbose
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import json_schema_to_gbnf

from services.common.errors import InvalidArgument
from services.runner.engines.base import (
    Constraint,
    GenerateRequest,
    Tool,
    ToolCallDelta,
    ToolChoice,
)
from services.runner.engines.tools import (
    NAMED_FORMATS_WITHOUT_SYSTEM,
    ToolCallParser,
    ToolEvent,
    ToolFormat,
    ToolGrammar,
    detect_format,
    gbnf_literal,
    generic_messages,
    plan_tools,
    rename_gbnf_rule,
    template_messages,
    tool_grammar,
    validate_tools,
)
from tests.fakes.chat_templates import GEMMA3_IT, LLAMA31_INSTRUCT, MISTRAL_NEMO_INSTRUCT, QWEN25_INSTRUCT
from tests.fakes.tiny_gguf import write_tiny_gguf

WEATHER = Tool(
    "get_weather",
    "The current weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Tool("get_time")  # no parameters
TOOLS = (WEATHER, TIME)

# A whole tool loop as an OpenAI client sends it: arguments are JSON text, ids are OpenAI's.
LOOP: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris, and the time?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_w1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "call_t2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_w1", "content": '{"temperature": 21}'},
    {"role": "tool", "tool_call_id": "call_t2", "content": "12:00"},
    {"role": "assistant", "content": "21 degrees at noon."},
    {"role": "user", "content": "And in Zürich?"},
]


def request(
    messages: list[dict[str, Any]] | None = None,
    *,
    tools: tuple[Tool, ...] = TOOLS,
    choice: ToolChoice | None = None,
    parallel: bool = True,
    constraint: Constraint | None = None,
) -> GenerateRequest:
    return GenerateRequest(
        messages=LOOP if messages is None else messages,
        prompt=None,
        tools=tools,
        tool_choice=choice or ToolChoice(),
        parallel_tool_calls=parallel,
        constraint=constraint,
    )


def render(template: str, req: GenerateRequest, *, bos: str = "<s>", eos: str = "</s>") -> str:
    """The prompt as the engine renders it: the plan's messages, tools and variables into the template."""
    plan = plan_tools(req, detect_format(template))
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    return formatter(messages=plan.messages, tools=plan.tools, **plan.template_kwargs).prompt  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Formats and validation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN25_INSTRUCT, "hermes"),
        (LLAMA31_INSTRUCT, "llama3"),
        (MISTRAL_NEMO_INSTRUCT, "mistral"),
        (GEMMA3_IT, "generic"),
        (None, "generic"),
        ("", "generic"),
        # Writes calls but never shows the tools to the model: the generic format describes them.
        ("{% for m in messages %}{{ m.content }}<tool_call>{% endfor %}", "generic"),
        # Llama 3 (not 3.1): the header tokens without tools.
        ("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}", "generic"),
        # Takes tools, but in a format of its own (e.g. Functionary): the generic format.
        ("{% if tools %}>>>all{{ tools | tojson }}{% endif %}", "generic"),
    ],
)
def test_detect_format(template: str | None, expected: ToolFormat) -> None:
    assert detect_format(template) == expected


def test_valid_tools_pass() -> None:
    validate_tools(TOOLS, ToolChoice("function", "get_time"))
    validate_tools((), ToolChoice("auto"))
    validate_tools((), ToolChoice("none"))
    validate_tools((Tool("a-B_9" * 12 + "abcd"),), ToolChoice("required"))  # 64 characters


@pytest.mark.parametrize(
    ("tools", "fragment"),
    [
        ((Tool("get weather"),), "letters, digits"),
        ((Tool(""),), "letters, digits"),
        ((Tool("x" * 65),), "letters, digits"),
        ((Tool("météo"),), "letters, digits"),
        ((Tool("f"), Tool("f")), "defined twice"),
        ((Tool("f", parameters={"type": "string"}),), '"type": "object"'),
        ((Tool("f", parameters={"properties": {"a": {}}}),), '"type": "object"'),
        ((Tool("f", parameters=["a"]),), '"type": "object"'),  # type: ignore[arg-type]
    ],
)
def test_bad_tool_definitions_are_refused(tools: tuple[Tool, ...], fragment: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_tools(tools, ToolChoice())
    assert caught.value.param == "tools"
    assert fragment in caught.value.message


def test_a_choice_naming_an_unknown_function_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_tools(TOOLS, ToolChoice("function", "get_wether"))
    assert (caught.value.code, caught.value.param) == ("unknown_tool", "tool_choice")
    assert "get_wether" in caught.value.message


@pytest.mark.parametrize("mode", ["required", "function"])
def test_a_forcing_choice_needs_tools(mode: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_tools((), ToolChoice(mode, "f"))
    assert caught.value.param == "tool_choice"


def test_plan_validates_the_tools() -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_tools(request(choice=ToolChoice("function", "nope")), "hermes")
    assert caught.value.code == "unknown_tool"


# ---------------------------------------------------------------------------------------------------
# Messages and tools rendered by each family's template
# ---------------------------------------------------------------------------------------------------


def test_qwen_renders_the_tools_and_the_whole_loop() -> None:
    prompt = render(QWEN25_INSTRUCT, request())
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    tools_block = prompt[prompt.index("\n<tools>\n") + 9 : prompt.index("\n</tools>\n")]
    listed = [json.loads(line) for line in tools_block.splitlines()]
    assert [t["function"]["name"] for t in listed] == ["get_weather", "get_time"]
    assert listed[0]["function"]["parameters"] == WEATHER.parameters
    assert listed[1]["function"] == {"name": "get_time", "parameters": {"type": "object", "properties": {}}}
    # The calls as the model writes them: arguments an object, not OpenAI's JSON string.
    assert (
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>\n'
    ) in prompt
    assert (
        "<|im_start|>user\n<tool_response>\n"
        '{"temperature": 21}\n</tool_response>\n<tool_response>\n12:00\n</tool_response><|im_end|>\n'
    ) in prompt
    assert prompt.endswith(
        "<|im_start|>assistant\n21 degrees at noon.<|im_end|>\n"
        "<|im_start|>user\nAnd in Zürich?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen_would_quote_openai_arguments_without_the_preparation() -> None:
    """Why template_messages exists: the template writes `arguments | tojson`."""
    formatter = Jinja2ChatFormatter(template=QWEN25_INSTRUCT, eos_token="", bos_token="")
    raw = formatter(messages=LOOP, tools=None).prompt  # type: ignore[arg-type]
    assert '"arguments": "{\\"city\\": \\"Paris\\"}"' in raw
    prepared = formatter(messages=template_messages(LOOP, "hermes"), tools=None).prompt  # type: ignore[arg-type]
    assert '"arguments": {"city": "Paris"}' in prepared


def test_llama31_renders_tools_in_the_system_message_and_one_call_a_turn() -> None:
    prompt = render(LLAMA31_INSTRUCT, request())
    system = prompt[: prompt.index("<|eot_id|>")]
    assert "Environment: ipython" in system
    assert '{"name": <function name>, "parameters": <object of argument values>}' in system
    assert '"name": "get_weather"' in system and '"name": "get_time"' in system
    assert system.endswith("Be brief.")
    # The user's first message stays as it was (tools_in_user_message is off, as in llama-server).
    assert "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris, and the time?<|eot_id|>" in prompt
    # Two parallel calls: two assistant turns, since the template refuses more than one call in a message.
    assert (
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_time", "parameters": {}}<|eot_id|>'
    ) in prompt
    assert prompt.count("<|start_header_id|>ipython<|end_header_id|>") == 2
    assert "temperature" in prompt and "12:00" in prompt
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama31_refuses_parallel_calls_without_the_preparation() -> None:
    formatter = Jinja2ChatFormatter(template=LLAMA31_INSTRUCT, eos_token="", bos_token="")
    with pytest.raises(ValueError, match="one tool call per assistant message"):
        formatter(messages=LOOP, tools=None)  # type: ignore[arg-type]


def test_mistral_nemo_renders_tools_calls_and_results_with_matching_ids() -> None:
    prompt = render(MISTRAL_NEMO_INSTRUCT, request())
    match = re.search(r"\[TOOL_CALLS\](\[.*?\])</s>", prompt)
    assert match is not None
    calls = json.loads(match.group(1))
    assert [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert all(re.fullmatch(r"[a-zA-Z0-9]{9}", c["id"]) for c in calls)
    assert calls[0]["id"] != calls[1]["id"]
    results = re.findall(r'\[TOOL_RESULTS\]\{"content": (.*?), "call_id": "(\w+)"\}\[/TOOL_RESULTS\]', prompt)
    assert results == [('{"temperature": 21}', calls[0]["id"]), ("12:00", calls[1]["id"])]
    tools = re.search(r"\[AVAILABLE_TOOLS\](.*)\[/AVAILABLE_TOOLS\]", prompt)
    assert tools is not None
    assert [t["function"]["name"] for t in json.loads(tools.group(1))] == ["get_weather", "get_time"]
    assert prompt.endswith("[INST]Be brief.\n\nAnd in Zürich?[/INST]")


def test_mistral_nemo_refuses_openai_ids_without_the_preparation() -> None:
    formatter = Jinja2ChatFormatter(template=MISTRAL_NEMO_INSTRUCT, eos_token="</s>", bos_token="<s>")
    with pytest.raises(ValueError, match="exactly 9 letters or digits"):
        formatter(messages=template_messages(LOOP, "hermes"), tools=None)  # type: ignore[arg-type]


def test_gemma3_gets_the_generic_format_and_keeps_alternating_roles() -> None:
    prompt = render(GEMMA3_IT, request())
    first_turn = prompt[: prompt.index("<end_of_turn>")]
    assert first_turn.startswith("<s><start_of_turn>user\nBe brief.\n\nYou can call the following tools")
    assert '"name": "get_weather"' in first_turn and '"name": "get_time"' in first_turn
    assert '{"response": "<your answer>"}' in first_turn
    assert first_turn.endswith("Weather in Paris, and the time?")
    # The calls as the JSON the model must answer with, the results as one user turn.
    assert (
        '<start_of_turn>model\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {}}]}<end_of_turn>\n'
        '<start_of_turn>user\nTool result (get_weather, call_w1): {"temperature": 21}\n\n'
        "Tool result (get_time, call_t2): 12:00<end_of_turn>\n"
    ) in prompt
    assert prompt.endswith("<start_of_turn>user\nAnd in Zürich?<end_of_turn>\n<start_of_turn>model\n")


def test_gemma3_refuses_the_raw_loop() -> None:
    """Why generic_messages merges the results: two tool messages in a row break the alternation."""
    formatter = Jinja2ChatFormatter(template=GEMMA3_IT, eos_token="", bos_token="")
    unmerged = [{**m, "role": "user"} if m["role"] == "tool" else m for m in generic_messages(LOOP[:4])]
    unmerged.append({"role": "user", "content": "x"})
    with pytest.raises(ValueError, match="alternate"):
        formatter(messages=unmerged)  # type: ignore[arg-type]


def test_generic_messages_merge_a_user_message_after_tool_results() -> None:
    messages = [*LOOP[:4], {"role": "user", "content": "Also, hurry."}]
    out = generic_messages(messages)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[-1]["content"] == 'Tool result (get_weather, call_w1): {"temperature": 21}\n\nAlso, hurry.'


def test_generic_messages_use_the_tool_messages_own_name_and_text_parts() -> None:
    out = generic_messages([{"role": "tool", "tool_call_id": "c9", "name": "lookup", "content": "42"}])
    assert out == [{"role": "user", "content": "Tool result (lookup, c9): 42"}]
    parts = [{"type": "text", "text": "4"}, {"type": "text", "text": "2"}]
    out = generic_messages([{"role": "tool", "tool_call_id": "c9", "name": "lookup", "content": parts}])
    assert out == [{"role": "user", "content": "Tool result (lookup, c9): 42"}]


def test_generic_instructions_without_a_system_message_open_the_chat() -> None:
    out = generic_messages([{"role": "user", "content": "hi"}], "INSTRUCTIONS")
    assert out == [{"role": "system", "content": "INSTRUCTIONS"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama-3", "zephyr", "gemma", "mistral-instruct"])
def test_named_formats_render_the_generic_format(name: str) -> None:
    """Named formats know nothing of tools: the generic messages carry all of it, in roles they render."""
    function = getattr(chat_format, "format_" + name.replace("-", "_").replace("llama_3", "llama3"))
    plan = plan_tools(request(), "generic", system_role=name not in NAMED_FORMATS_WITHOUT_SYSTEM)
    prompt = function(messages=plan.messages).prompt
    assert "You can call the following tools" in prompt
    assert '"name": "get_weather"' in prompt
    assert '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "Tool result (get_time, call_t2): 12:00" in prompt
    assert "And in Zürich?" in prompt


def test_gemma_named_format_drops_system_instructions() -> None:
    """Why NAMED_FORMATS_WITHOUT_SYSTEM exists."""
    plan = plan_tools(request(), "generic", system_role=True)
    assert "You can call the following tools" not in chat_format.format_gemma(messages=plan.messages).prompt


# ---------------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral", "generic"])
def test_choice_none_renders_no_tools_and_reads_plain_content(fmt: ToolFormat) -> None:
    plan = plan_tools(request(choice=ToolChoice("none")), fmt)
    assert (plan.tools, plan.grammar, plan.parse, plan.template_kwargs) == (None, None, False, {})
    assert "You can call" not in json.dumps(plan.messages)
    # The earlier calls still render, in the format's own shape.
    if fmt == "generic":
        assert plan.messages[2]["content"].startswith('{"tool_calls": [')
    else:
        assert plan.messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


def test_a_chat_without_tools_still_prepares_earlier_calls() -> None:
    plan = plan_tools(request(tools=()), "llama3")
    assert (plan.tools, plan.grammar, plan.parse) == (None, None, False)
    assert [len(m.get("tool_calls", [])) for m in plan.messages if m["role"] == "assistant"] == [1, 1, 0]


def test_a_prompt_request_has_nothing_to_plan_unless_it_has_tools() -> None:
    plain = GenerateRequest(messages=None, prompt="hi")
    assert plan_tools(plain, "hermes").parse is False
    with pytest.raises(InvalidArgument) as caught:
        plan_tools(GenerateRequest(messages=None, prompt="hi", tools=TOOLS), "hermes")
    assert caught.value.param == "tools"


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral"])
def test_auto_with_a_native_format_is_free_and_parsed(fmt: ToolFormat) -> None:
    plan = plan_tools(request(), fmt)
    assert plan.grammar is None and plan.parse and plan.format == fmt
    assert plan.tools is not None and [t["function"]["name"] for t in plan.tools] == [
        "get_weather",
        "get_time",
    ]
    assert plan.template_kwargs == ({"tools_in_user_message": False} if fmt == "llama3" else {})


@pytest.mark.parametrize("parallel", [True, False])
def test_required_with_hermes(parallel: bool) -> None:
    grammar = plan_tools(request(choice=ToolChoice("required"), parallel=parallel), "hermes").grammar
    assert grammar is not None
    assert (grammar.prefix, grammar.separator, grammar.suffix) == (
        "<tool_call>\n",
        "\n</tool_call>\n<tool_call>\n",
        "\n</tool_call>",
    )
    assert grammar.multiple is parallel
    assert [alt["properties"]["name"]["const"] for alt in grammar.schema["anyOf"]] == [
        "get_weather",
        "get_time",
    ]
    assert grammar.schema["anyOf"][0]["properties"]["arguments"] == WEATHER.parameters


def test_a_named_function_constrains_to_that_function() -> None:
    grammar = plan_tools(request(choice=ToolChoice("function", "get_time")), "mistral").grammar
    assert grammar is not None
    assert (grammar.prefix, grammar.separator, grammar.suffix) == ("[TOOL_CALLS][", ", ", "]")
    assert grammar.schema == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "const": "get_time"},
            "arguments": {"type": "object", "properties": {}},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def test_llama3_calls_have_parameters_and_come_one_at_a_time() -> None:
    grammar = plan_tools(request(choice=ToolChoice("required"), parallel=True), "llama3").grammar
    assert grammar is not None
    assert not grammar.multiple and not grammar.prefix and not grammar.suffix
    assert all(set(alt["properties"]) == {"name", "parameters"} for alt in grammar.schema["anyOf"])


def test_generic_auto_allows_calls_or_a_response() -> None:
    plan = plan_tools(request(), "generic")
    assert plan.parse and plan.tools is None and plan.grammar is not None
    calls, response = plan.grammar.schema["anyOf"]
    assert calls["properties"]["tool_calls"]["minItems"] == 1
    assert "maxItems" not in calls["properties"]["tool_calls"]
    assert response["properties"] == {"response": {"type": "string"}}
    assert "You can call the following tools" in plan.messages[0]["content"]


@pytest.mark.parametrize(
    ("choice", "parallel"), [(ToolChoice("required"), False), (ToolChoice("function", "get_time"), True)]
)
def test_generic_forced_calls(choice: ToolChoice, parallel: bool) -> None:
    grammar = plan_tools(request(choice=choice, parallel=parallel), "generic").grammar
    assert grammar is not None and "anyOf" not in grammar.schema
    calls = grammar.schema["properties"]["tool_calls"]
    assert calls["minItems"] == 1
    assert calls.get("maxItems") == (None if parallel else 1)
    names = [alt["properties"]["name"]["const"] for alt in calls["items"].get("anyOf", [calls["items"]])]
    assert names == (["get_weather", "get_time"] if choice.mode == "required" else ["get_time"])


def test_a_response_format_with_tools_takes_the_generic_format() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    plan = plan_tools(request(constraint=Constraint("json_schema", schema=schema)), "hermes")
    assert plan.format == "generic" and plan.tools is None and plan.grammar is not None
    assert plan.grammar.schema["anyOf"][1]["properties"]["response"] == schema
    json_object = plan_tools(request(constraint=Constraint("json_object")), "llama3").grammar
    assert json_object is not None
    assert json_object.schema["anyOf"][1]["properties"]["response"] == {"type": "object"}


def test_a_response_format_without_tool_use_is_left_to_the_engine() -> None:
    plan = plan_tools(request(choice=ToolChoice("none"), constraint=Constraint("json_object")), "hermes")
    assert plan.format == "hermes" and plan.grammar is None


def test_a_grammar_with_tools_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_tools(request(constraint=Constraint("grammar", grammar='root ::= "x"')), "hermes")
    assert caught.value.param == "grammar"


# ---------------------------------------------------------------------------------------------------
# Grammars, run in llama.cpp's grammar sampler over the tiny GGUF's byte tokens
# ---------------------------------------------------------------------------------------------------


class ByteGrammar:
    """A GBNF grammar in llama.cpp's sampler, fed one byte token at a time."""

    def __init__(self, vocab: Any, byte_token: dict[int, int], gbnf: str) -> None:
        self.vocab, self.byte_token = vocab, byte_token
        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        assert self.sampler, f"llama.cpp cannot parse the grammar:\n{gbnf}"

    def _allowed(self, sampler: Any, token: int) -> bool:
        data = (llama_cpp.llama_token_data * 1)()
        data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
        candidates = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return not math.isinf(data[0].logit)

    def accepts(self, text: str) -> bool:
        """Whether the grammar lets the bytes of `text` through and then allows EOS."""
        sampler = llama_cpp.llama_sampler_clone(self.sampler)
        try:
            for byte in text.encode():
                if not self._allowed(sampler, self.byte_token[byte]):
                    return False
                llama_cpp.llama_sampler_accept(sampler, self.byte_token[byte])
            return self._allowed(sampler, llama_cpp.llama_vocab_eos(self.vocab))
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.sampler)


@pytest.fixture(scope="module")
def grammar_of(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    set_verbose(False)
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    assert model
    vocab = llama_cpp.llama_model_get_vocab(model)
    byte_token = {}
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        text = llama_cpp.llama_vocab_get_text(vocab, token)
        if re.fullmatch(rb"<0x[0-9A-F]{2}>", text):
            byte_token[int(text[3:5], 16)] = token
    made: list[ByteGrammar] = []

    def make(gbnf: str) -> ByteGrammar:
        made.append(ByteGrammar(vocab, byte_token, gbnf))
        return made[-1]

    yield make
    for grammar in made:
        grammar.close()
    llama_cpp.llama_model_free(model)


def whole_grammar(fmt: ToolFormat, choice: ToolChoice, parallel: bool = True) -> str:
    grammar = tool_grammar(fmt, TOOLS, choice, parallel)
    assert grammar is not None
    # llama.cpp's own converter (as llama-cpp-python ships it): ToolGrammar works with any converter whose
    # start rule is `root`.
    return grammar.gbnf(json_schema_to_gbnf(json.dumps(grammar.schema)))


W = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
T = '{"name": "get_time", "arguments": {}}'

# (format, choice, parallel, outputs the grammar allows, outputs it refuses)
GRAMMAR_CASES: list[tuple[ToolFormat, ToolChoice, bool, list[str], list[str]]] = [
    (
        "hermes",
        ToolChoice("required"),
        True,
        [
            f"<tool_call>\n{W}\n</tool_call>",
            f"<tool_call>\n{T}\n</tool_call>\n<tool_call>\n{W}\n</tool_call>",
        ],
        [
            W,
            f"<tool_call>\n{W}\n</tool_call>\n",
            "Sure.",
            '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>',
        ],
    ),
    (
        "hermes",
        ToolChoice("function", "get_weather"),
        False,
        [f"<tool_call>\n{W}\n</tool_call>"],
        [
            f"<tool_call>\n{T}\n</tool_call>",
            f"<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{W}\n</tool_call>",
        ],
    ),
    (
        "mistral",
        ToolChoice("required"),
        True,
        [f"[TOOL_CALLS][{W}]", f"[TOOL_CALLS][{W}, {T}]"],
        [f"[TOOL_CALLS]{W}", f"[TOOL_CALLS][{W}]x", "[TOOL_CALLS][]"],
    ),
    (
        "llama3",
        ToolChoice("required"),
        True,
        ['{"name": "get_weather", "parameters": {"city": "Paris"}}'],
        [W, '{"name": "get_time", "parameters": {}}{"name": "get_time", "parameters": {}}'],
    ),
    (
        "generic",
        ToolChoice("auto"),
        True,
        [f'{{"tool_calls": [{W}, {T}]}}', '{"response": "It is sunny."}'],
        [
            '{"tool_calls": []}',
            '{"response": 1}',
            "It is sunny.",
            f'{{"tool_calls": [{W}], "response": "x"}}',
        ],
    ),
    (
        "generic",
        ToolChoice("required"),
        False,
        [f'{{"tool_calls": [{T}]}}'],
        [f'{{"tool_calls": [{W}, {T}]}}', '{"response": "It is sunny."}'],
    ),
]


@pytest.mark.parametrize(("fmt", "choice", "parallel", "good", "bad"), GRAMMAR_CASES)
def test_the_whole_grammar_allows_exactly_the_calls(
    grammar_of: Any, fmt: ToolFormat, choice: ToolChoice, parallel: bool, good: list[str], bad: list[str]
) -> None:
    grammar = grammar_of(whole_grammar(fmt, choice, parallel))
    for text in good:
        assert grammar.accepts(text), text
    for text in bad:
        assert not grammar.accepts(text), text


@pytest.mark.parametrize(("fmt", "choice", "parallel", "good", "bad"), GRAMMAR_CASES)
def test_what_the_grammar_allows_the_parser_reads_as_calls(
    fmt: ToolFormat, choice: ToolChoice, parallel: bool, good: list[str], bad: list[str]
) -> None:
    for text in good:
        content, calls, parser = run(fmt, [text])
        if '"response"' in text:
            assert (content, calls) == ("It is sunny.", [])
            continue
        assert content == "" and parser.called and not parser.malformed
        expected = re.findall(r'"name": "(\w+)", "(?:arguments|parameters)": (\{[^{}]*\})', text)
        assert [(c.name, c.arguments) for c in calls] == expected


def test_gbnf_pieces() -> None:
    assert gbnf_literal('<a href="x">\n\t\\') == r'"<a href=\"x\">\n\t\\"'
    grammar = 'root ::= "root" [r-t] root-x root # root\nroot-x ::= "x" root\n'
    assert rename_gbnf_rule(grammar, "root", "call") == (
        'call ::= "root" [r-t] root-x call # root\nroot-x ::= "x" call\n'
    )
    # Nothing to wrap: the schema's grammar is the whole grammar.
    assert ToolGrammar({"type": "object"}).gbnf('root ::= "{}"') == 'root ::= "{}"'
    # The call rule's name does not clash with a rule the schema's grammar has.
    wrapped = ToolGrammar({}, prefix="<", suffix=">").gbnf('root ::= tool-call\ntool-call ::= "x"')
    assert wrapped == 'tool-call-x ::= tool-call\ntool-call ::= "x"\nroot ::= "<" tool-call-x ">"\n'


# ---------------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------------


@dataclass
class Call:
    id: str
    name: str
    arguments: str


def collect(events: Sequence[ToolEvent]) -> tuple[str, list[Call]]:
    """Content and calls from events, checking the deltas' shape: a call's first delta has its index (in
    order), a fresh id and its name, no arguments; later ones only arguments."""
    content: list[str] = []
    calls: list[Call] = []
    for event in events:
        if isinstance(event, str):
            assert event, "no empty content events"
            content.append(event)
            continue
        assert isinstance(event, ToolCallDelta)
        if event.id:
            assert event.index == len(calls) and event.name and not event.arguments
            assert re.fullmatch(r"call_[0-9a-f]{24}", event.id)
            calls.append(Call(event.id, event.name, ""))
        else:
            assert event.index == len(calls) - 1 and not event.name and event.arguments
            calls[-1].arguments += event.arguments
    assert len({c.id for c in calls}) == len(calls)
    return "".join(content), calls


def run(fmt: ToolFormat, pieces: Sequence[str]) -> tuple[str, list[Call], ToolCallParser]:
    parser = ToolCallParser(fmt)
    events: list[ToolEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    content, calls = collect(events)
    return content, calls, parser


def splits(text: str) -> Iterator[list[str]]:
    """The text in pieces of every size from 1 up, and in random pieces."""
    for size in range(1, len(text) + 1):
        yield [text[i : i + size] for i in range(0, len(text), size)]
    rng = random.Random(text)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


GW = "get_weather"
PARSER_CASES: list[tuple[str, ToolFormat, str, str, list[tuple[str, str]], bool]] = [
    # (name, format, output, content, calls as (name, arguments), malformed)
    ("hermes one call", "hermes", f"<tool_call>\n{W}\n</tool_call>", "", [(GW, '{"city": "Paris"}')], False),
    (
        "hermes content then parallel calls",
        "hermes",
        f"Let me check both.\n\n<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{T}\n</tool_call>",
        "Let me check both.",
        [(GW, '{"city": "Paris"}'), ("get_time", "{}")],
        False,
    ),
    (
        "hermes content after",
        "hermes",
        f"<tool_call>\n{T}\n</tool_call>\n\nDone.",
        "Done.",
        [("get_time", "{}")],
        False,
    ),
    (
        "hermes no call",
        "hermes",
        "It is <b>sunny</b>; see <tool> docs.\n",
        "It is <b>sunny</b>; see <tool> docs.\n",
        [],
        False,
    ),
    ("hermes stray marker", "hermes", "Use the <tool_call> tag.", "Use the <tool_call> tag.", [], False),
    ("hermes marker at the end", "hermes", "Hmm <tool_call>", "Hmm <tool_call>", [], False),
    ("hermes partial marker at the end", "hermes", "Hmm <tool_ca", "Hmm <tool_ca", [], False),
    (
        "hermes unicode",
        "hermes",
        "Météo 🌤 <tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Z\\u00fcrich", "note": "雪 ❄"}}\n</tool_call>',
        "Météo 🌤",
        [(GW, '{"city": "Z\\u00fcrich", "note": "雪 ❄"}')],
        False,
    ),
    (
        "hermes tricky arguments",
        "hermes",
        '<tool_call>{"name":"f","arguments":{"q":"a } ] { [ \\" <tool_call> </tool_call>","l":[1,{"x":null}],'
        '"ok":true,"n":-1.5e3}}</tool_call>',
        "",
        [("f", '{"q":"a } ] { [ \\" <tool_call> </tool_call>","l":[1,{"x":null}],"ok":true,"n":-1.5e3}')],
        False,
    ),
    (
        "hermes arguments before the name",
        "hermes",
        '<tool_call>\n{"arguments": {"a": 1}, "name": "f"}\n</tool_call>',
        "",
        [("f", '{"a": 1}')],
        False,
    ),
    (
        "hermes arguments as a JSON string",
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Z\\u00fcrich\\"}"}\n</tool_call>',
        "",
        [(GW, '{"city": "Zürich"}')],
        False,
    ),
    (
        "hermes no arguments",
        "hermes",
        '<tool_call>\n{"name": "get_time"}\n</tool_call>',
        "",
        [("get_time", "{}")],
        False,
    ),
    (
        "hermes extra keys",
        "hermes",
        f'<tool_call>\n{W[:-1]}, "id": "x"}}\n</tool_call>',
        "",
        [(GW, '{"city": "Paris"}')],
        False,
    ),
    ("hermes bare call", "hermes", f"{T}\n</tool_call>\nOK", "OK", [("get_time", "{}")], False),
    (
        "hermes JSON answer, then a call",
        "hermes",
        f'{{"answer": 1}} <tool_call>{T}</tool_call>',
        '{"answer": 1}',
        [("get_time", "{}")],
        False,
    ),
    ("hermes no closing tag", "hermes", f"<tool_call>\n{T}", "", [("get_time", "{}")], False),
    (
        "hermes broken arguments",
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>\nSorry.',
        "Sorry.",
        [(GW, '{"city": Paris}}')],
        True,
    ),
    (
        "hermes cut off in the arguments",
        "hermes",
        'OK.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
        "OK.",
        [(GW, '{"city": "Par')],
        True,
    ),
    (
        "hermes cut off in the header",
        "hermes",
        'OK. <tool_call>\n{"name": "get_w',
        'OK. <tool_call>\n{"name": "get_w',
        [],
        False,
    ),
    (
        "hermes not a call",
        "hermes",
        '<tool_call>\n{"name": get_weather}\n</tool_call> ok',
        '<tool_call>\n{"name": get_weather}\n</tool_call> ok',
        [],
        False,
    ),
    (
        "llama3 one call",
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [(GW, '{"city": "Paris"}')],
        False,
    ),
    (
        "llama3 python tag and type",
        "llama3",
        '\n<|python_tag|>{"type": "function", "name": "get_time", "parameters": {}}',
        "",
        [("get_time", "{}")],
        False,
    ),
    (
        "llama3 calls on lines, then content",
        "llama3",
        '{"name": "a", "parameters": {"x": [1, 2]}}\n{"name": "b", "parameters": {}}\nThat is all.',
        "That is all.",
        [("a", '{"x": [1, 2]}'), ("b", "{}")],
        False,
    ),
    (
        "llama3 text",
        "llama3",
        "The weather in Paris is sunny. {x}",
        "The weather in Paris is sunny. {x}",
        [],
        False,
    ),
    (
        "llama3 a JSON answer",
        "llama3",
        '{"city": "Paris", "temp": 21}',
        '{"city": "Paris", "temp": 21}',
        [],
        False,
    ),
    (
        "llama3 a name that is data",
        "llama3",
        '{"name": "Bob", "age": 3}',
        '{"name": "Bob", "age": 3}',
        [],
        False,
    ),
    ("llama3 partial tag", "llama3", "<|python_", "<|python_", [], False),
    (
        "llama3 unclosed object",
        "llama3",
        '{"name": "f", "parameters": {"a": "é"}',
        "",
        [("f", '{"a": "é"}')],
        False,
    ),
    ("llama3 cut off", "llama3", '{"name": "f", "parameters": {"a": [1,', "", [("f", '{"a": [1,')], True),
    (
        "mistral calls",
        "mistral",
        f'Sure.[TOOL_CALLS] [{W[:-1]}, "id": "a1b2c3d4e"}}, {T}]',
        "Sure.",
        [(GW, '{"city": "Paris"}'), ("get_time", "{}")],
        False,
    ),
    (
        "mistral no call",
        "mistral",
        "No [TOOLS] or [TOOL_CALL] here.",
        "No [TOOLS] or [TOOL_CALL] here.",
        [],
        False,
    ),
    ("mistral one object", "mistral", f"[TOOL_CALLS]{T}", "", [("get_time", "{}")], False),
    (
        "mistral name first",
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]abc123def[ARGS]{}',
        "",
        [(GW, '{"city": "Paris"}'), ("get_time", "{}")],
        False,
    ),
    (
        "mistral arguments before the name",
        "mistral",
        '[TOOL_CALLS][{"arguments": {"a": 1}, "name": "f", "id": "123456789"}]',
        "",
        [("f", '{"a": 1}')],
        False,
    ),
    ("mistral without its marker", "mistral", f" [{T}]", "", [("get_time", "{}")], False),
    ("mistral a list answer", "mistral", '[1, 2] or [{"a": 1}]', '[1, 2] or [{"a": 1}]', [], False),
    ("mistral garbage", "mistral", "[TOOL_CALLS] oops", "[TOOL_CALLS] oops", [], False),
    ("mistral garbage item", "mistral", "[TOOL_CALLS][1, 2]", "[TOOL_CALLS][1, 2]", [], False),
    (
        "generic calls",
        "generic",
        f'{{"tool_calls": [{W}, {T}]}}',
        "",
        [(GW, '{"city": "Paris"}'), ("get_time", "{}")],
        False,
    ),
    ("generic one call", "generic", f' {{ "tool_call" : {T} }} ', "", [("get_time", "{}")], False),
    (
        "generic response",
        "generic",
        '{"response": "Hello \\"world\\"\\nCaf\\u00e9 \\ud83d\\ude00 \\\\ \\/ \\t 日本"}',
        'Hello "world"\nCafé 😀 \\ / \t 日本',
        [],
        False,
    ),
    ("generic lone surrogate", "generic", '{"response": "a\\ud83d b\\ude00"}', "a\ufffd b\ufffd", [], False),
    ("generic structured response", "generic", '{"response": {"a": [1, 2]}}', '{"a": [1, 2]}', [], False),
    ("generic cut off response", "generic", '{"response": "Hel\\u00', "Hel", [], False),
    (
        "generic cut off call",
        "generic",
        '{"tool_calls": [{"name": "f", "arguments": {"a": "b',
        "",
        [("f", '{"a": "b')],
        True,
    ),
    ("generic not JSON", "generic", "Hello there", "Hello there", [], False),
    ("generic other JSON", "generic", '{"answer": 42}', '{"answer": 42}', [], False),
    ("generic empty list", "generic", '{"tool_calls": []}', "", [], False),
    ("nothing", "hermes", "", "", [], False),
]


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls", "malformed"),
    [case[1:] for case in PARSER_CASES],
    ids=[case[0] for case in PARSER_CASES],
)
def test_parser_under_every_split(
    fmt: ToolFormat, text: str, content: str, calls: list[tuple[str, str]], malformed: bool
) -> None:
    for pieces in splits(text) if text else [[]]:
        got_content, got_calls, parser = run(fmt, pieces)
        assert got_content == content, pieces
        assert [(c.name, c.arguments) for c in got_calls] == calls, pieces
        assert parser.called is bool(calls)
        assert parser.malformed is malformed, pieces


def test_arguments_stream_as_they_are_generated() -> None:
    text = '<tool_call>\n{"name": "write", "arguments": {"text": "' + "word " * 20 + '"}}\n</tool_call>'
    parser = ToolCallParser("hermes")
    seen: list[tuple[int, ToolEvent]] = []
    for i, char in enumerate(text):
        seen += [(i, e) for e in parser.feed(char)]
    args_at = [i for i, e in seen if isinstance(e, ToolCallDelta) and e.arguments]
    header_at = [i for i, e in seen if isinstance(e, ToolCallDelta) and e.name]
    # Announced once `"arguments":` is read, before the arguments' first character.
    assert header_at == [text.index('"arguments":') + len('"arguments":') - 1]
    assert len(args_at) > 100 and args_at[0] < text.index("word")  # a piece for each character
    assert not parser.finish()


def test_content_is_held_only_while_it_could_be_a_marker() -> None:
    parser = ToolCallParser("hermes")
    assert parser.feed("Hello") == ["Hello"]
    assert parser.feed(" <tool") == []
    assert parser.feed("box>") == [" <toolbox>"]
    assert parser.feed(" and ") == [" and"]
    assert parser.feed("<tool_call>\n") == []
    first = parser.feed('{"name": "f", "arguments": ')
    assert len(first) == 1 and isinstance(first[0], ToolCallDelta) and first[0].name == "f"
    assert parser.feed('{"a"') == [ToolCallDelta(index=0, arguments='{"a"')]


def test_llama3_text_is_not_held() -> None:
    parser = ToolCallParser("llama3")
    assert parser.feed("Sunny") == ["Sunny"]
    assert parser.feed(", 21 degrees") == [", 21 degrees"]


def test_generic_response_escapes_split_anywhere() -> None:
    parser = ToolCallParser("generic")
    out: list[ToolEvent] = []
    for char in '{"response": "\\u00e9\\n\\"\\ud83d\\ude00"}':
        out += parser.feed(char)
    assert "".join(e for e in out if isinstance(e, str)) == 'é\n"😀'
    assert not parser.finish() and not parser.called


def test_ids_are_fresh_and_unique() -> None:
    ids = iter(["call_a", "call_a", "call_b"])
    parser = ToolCallParser("hermes", new_id=lambda: next(ids))
    events = parser.feed(f"<tool_call>\n{T}\n</tool_call><tool_call>\n{T}\n</tool_call>") + parser.finish()
    assert [e.id for e in events if isinstance(e, ToolCallDelta) and e.id] == ["call_a", "call_b"]
    one = run("hermes", [f"<tool_call>\n{T}\n</tool_call>"])[1][0].id
    assert one != run("hermes", [f"<tool_call>\n{T}\n</tool_call>"])[1][0].id


def test_finish_alone_says_nothing() -> None:
    parser = ToolCallParser("generic")
    assert parser.finish() == []
    assert not parser.called and not parser.malformed


def test_template_messages_leave_plain_messages_alone() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    for fmt in ("hermes", "llama3", "mistral"):
        assert template_messages(messages, fmt) == messages  # type: ignore[arg-type]


def test_template_messages_keep_unparseable_arguments() -> None:
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{oops"}}],
        }
    ]
    call = template_messages(messages, "hermes")[0]["tool_calls"][0]
    assert call["function"] == {"name": "f", "arguments": "{oops"}
    assert template_messages(messages, "hermes")[0]["content"] == ""


FRAGMENTS = [
    "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "[ARGS]", "{", "}", "[", "]", ":", ",",
    '"name"', '"arguments"', '"parameters"', '"tool_calls"', '"response"', '"f"', '"x"', "1", "true", " ",
    "\n", "a", "é", "😀", "\\", '"', "\\u00e9", "\\ud83d", "<", "_", W, T, '{"name": "f", "arguments": ',
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral", "generic"])
def test_any_output_parses_the_same_under_every_split(fmt: ToolFormat) -> None:
    """Fuzz: outputs made of the formats' own pieces never raise, and what they yield does not depend on
    how the output was split into pieces."""

    def outcome(pieces: list[str]) -> tuple[str, list[tuple[str, str]], bool]:
        content, calls, parser = run(fmt, pieces)
        return content, [(c.name, c.arguments) for c in calls], parser.malformed

    rng = random.Random(fmt)
    for _ in range(400):
        text = "".join(rng.choices(FRAGMENTS, k=rng.randint(1, 30)))
        expected = outcome([text])
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 5)))
        random_pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert outcome(list(text)) == expected, text
        assert outcome(random_pieces) == expected, (text, random_pieces)
