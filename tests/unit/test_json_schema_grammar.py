"""Tests for services.runner.engines.llamacpp.json_schema: the grammars run in llama.cpp's own grammar
sampler (the tiny GGUF's 256 byte tokens feed a document one byte at a time), and what they accept is
compared with what pydantic and jsonschema validate."""

from __future__ import annotations

import ctypes
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import jsonschema
import llama_cpp
import pytest
from llama_cpp._logger import set_verbose
from pydantic import UUID4, BaseModel, Field, ValidationError, conint, constr

from services.common.errors import InvalidArgument
from services.runner.engines.llamacpp.json_schema import JSON_OBJECT_GBNF, schema_to_gbnf
from tests.fakes.tiny_gguf import write_tiny_gguf

# ---------------------------------------------------------------------------------------------------
# The harness: llama.cpp's grammar sampler over byte tokens
# ---------------------------------------------------------------------------------------------------


class Vocab:
    """The tiny model's vocabulary: a token for each byte, and EOS."""

    def __init__(self, path: Path) -> None:
        set_verbose(False)
        self.model = llama_cpp.llama_model_load_from_file(
            str(path).encode(), llama_cpp.llama_model_default_params()
        )
        assert self.model, "llama.cpp could not load the tiny GGUF"
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.byte_token: dict[int, int] = {}
        for token in range(llama_cpp.llama_vocab_n_tokens(self.vocab)):
            text = llama_cpp.llama_vocab_get_text(self.vocab, token)
            if re.fullmatch(rb"<0x[0-9A-F]{2}>", text):
                self.byte_token[int(text[3:5], 16)] = token
        assert len(self.byte_token) == 256
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def close(self) -> None:
        llama_cpp.llama_model_free(self.model)


class Grammar:
    """One grammar in llama.cpp's grammar sampler."""

    def __init__(self, vocab: Vocab, gbnf: str) -> None:
        self.vocab = vocab
        self.gbnf = gbnf
        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab.vocab, gbnf.encode(), b"root")
        assert self.sampler, f"llama.cpp cannot parse the grammar:\n{gbnf}"

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.sampler)

    def _allowed(self, sampler: Any, tokens: list[int]) -> list[bool]:
        """Which of `tokens` the grammar allows next (the sampler sets the others' logits to -inf)."""
        data = (llama_cpp.llama_token_data * len(tokens))()
        for i, token in enumerate(tokens):
            data[i].id, data[i].logit, data[i].p = token, 0.0, 0.0
        candidates = llama_cpp.llama_token_data_array(data=data, size=len(tokens), selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return [not math.isinf(data[i].logit) for i in range(len(tokens))]

    def accepts(self, text: str) -> bool:
        """Whether the grammar lets the UTF-8 bytes of `text` through, then allows EOS."""
        sampler = llama_cpp.llama_sampler_clone(self.sampler)
        try:
            for byte in text.encode():
                token = self.vocab.byte_token[byte]
                if not self._allowed(sampler, [token])[0]:
                    return False
                llama_cpp.llama_sampler_accept(sampler, token)
            return self._allowed(sampler, [self.vocab.eos])[0]
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def sample(self, rng: random.Random, max_bytes: int = 4000) -> str | None:
        """A random document the grammar allows, drawn byte by byte among printable ASCII (closing quotes
        and brackets weigh more, so that documents end); None if it did not end within max_bytes."""
        printable = list(range(0x20, 0x7F))
        tokens = [self.vocab.byte_token[b] for b in printable] + [self.vocab.eos]
        weights = {ord('"'): 6.0, ord("}"): 6.0, ord("]"): 6.0, ord("{"): 0.3, ord("["): 0.3}
        sampler = llama_cpp.llama_sampler_clone(self.sampler)
        out = bytearray()
        try:
            while len(out) < max_bytes:
                allowed = self._allowed(sampler, tokens)
                if allowed[-1]:
                    return out.decode()
                choices = [b for b, ok in zip(printable, allowed, strict=False) if ok]
                if not choices:
                    return None
                byte = rng.choices(choices, [weights.get(b, 1.0) for b in choices])[0]
                llama_cpp.llama_sampler_accept(sampler, self.vocab.byte_token[byte])
                out.append(byte)
            return None
        finally:
            llama_cpp.llama_sampler_free(sampler)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vocab]:
    v = Vocab(write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))
    yield v
    v.close()


@pytest.fixture
def compile_schema(vocab: Vocab) -> Iterator[Callable[[dict[str, Any]], Grammar]]:
    made: list[Grammar] = []

    def make(schema: dict[str, Any]) -> Grammar:
        made.append(Grammar(vocab, schema_to_gbnf(schema)))
        return made[-1]

    yield make
    for g in made:
        g.close()


def schema_valid(schema: dict[str, Any], doc: str) -> bool:
    """jsonschema's verdict (the draft `$schema` names, else 2020-12), formats included."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return bool(cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(json.loads(doc)))


# ---------------------------------------------------------------------------------------------------
# Keywords: valid documents accepted, invalid ones rejected, and jsonschema agrees on each
# ---------------------------------------------------------------------------------------------------

CASES: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    ("object", {"type": "object"}, ["{}", '{"a":[1,{"b":null}]}', '{ "x" : "y" }'], ["[]", '"{}"', "1"]),
    ("array", {"type": "array"}, ["[]", '[1,"a",[true]]'], ["{}", "null"]),
    ("string", {"type": "string"}, ['""', '"h\\u00e9llo \\"x\\" \\n"', '"é😀"'], ["1", "null", '"a\\x"']),
    ("integer", {"type": "integer"}, ["0", "-17", "1234567890123456"], ["1.5", '"1"', "01", "+1"]),
    ("number", {"type": "number"}, ["0", "-1.5", "2e10", "3.25E-7"], ['"1"', "1.", ".5", "-"]),
    ("boolean", {"type": "boolean"}, ["true", "false"], ["1", '"true"', "True"]),
    ("null", {"type": "null"}, ["null"], ["0", '""', "None"]),
    ("type list", {"type": ["string", "null"], "maxLength": 2}, ['"ab"', "null"], ['"abc"', "1"]),
    (
        "required and properties",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
            "required": ["a"],
        },
        ['{"a":1}', '{"a":1,"b":"x"}', '{"a":1,"c":true}', '{"a":1,"b":"x","c":false}'],
        ['{"b":"x"}', "{}", '{"a":"1"}', '{"a":1,"b":2}'],
    ),
    (
        "additionalProperties false",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        ['{"a":1}', "{}"],
        ['{"a":1,"b":2}', '{"b":2}'],
    ),
    (
        "additionalProperties true",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True},
        ['{"a":1,"b":[2]}', '{"ab":null}', '{"":1}', '{"b":{"a":"x"}}'],
        ['{"a":"x"}', '{"a":1,"a":"x"}'],
    ),
    (
        "additionalProperties schema",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "additionalProperties": {"type": "string"},
        },
        ['{"a":1,"x":"y"}', '{"x":"y","z":"w"}', '{"aa":"y"}'],
        ['{"x":1}', '{"a":1,"x":null}', '{"a":1,"a":"y"}'],
    ),
    (
        "dict of integers",
        {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
        ["{}", '{"x":1,"y":0}', '{"\\u00e9":2}'],
        ['{"x":-1}', '{"x":"1"}'],
    ),
    ("enum", {"enum": ["red", "green", 3, None]}, ['"red"', '"green"', "3", "null"], ['"blue"', "4", '"3"']),
    ("enum and type", {"type": "string", "enum": ["a", 1]}, ['"a"'], ["1", '"b"']),
    ("const", {"const": {"k": [1, "x"]}}, ['{"k":[1,"x"]}'], ['{"k":[1]}', '{"k":[1,"y"]}']),
    ("const string", {"const": 'say "hi"'}, ['"say \\"hi\\""'], ['"say hi"']),
    ("items", {"type": "array", "items": {"type": "integer"}}, ["[]", "[1]", "[1,2,3]"], ['["a"]', "[1,]"]),
    (
        "minItems and maxItems",
        {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3},
        ["[true]", "[true,false,true]"],
        ["[]", "[true,true,true,true]"],
    ),
    (
        "prefixItems",
        {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "string"}],
            "minItems": 2,
            "maxItems": 2,
        },
        ['[1,"a"]'],
        ["[1]", '[1,"a",2]', '["a",1]'],
    ),
    (
        "prefixItems then items",
        {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}, "minItems": 1},
        ['["a"]', '["a",1,2]'],
        ["[]", '["a","b"]', "[1]"],
    ),
    (
        "prefixItems without items",
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}]},
        ["[]", "[1]", "[1,2]", '[1,2,"x"]'],
        ['["x"]'],
    ),
    (
        "items false",
        {"type": "array", "prefixItems": [{"type": "integer"}], "items": False},
        ["[]", "[1]"],
        ["[1,2]"],
    ),
    (
        "tuple in old drafts",
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "array",
            "items": [{"type": "integer"}],
            "additionalItems": {"type": "string"},
        },
        ["[1]", '[1,"a","b"]'],
        ["[1,2]"],
    ),
    (
        "minLength and maxLength",
        {"type": "string", "minLength": 2, "maxLength": 4},
        ['"ab"', '"abcd"', '"é😀"', '"\\n\\u0041"'],
        ['"a"', '"abcde"', '""'],
    ),
    ("pattern", {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"}, ['"AB-123"'], ['"ab-123"', '"AB-1234"']),
    (
        "format date",
        {"type": "string", "format": "date"},
        ['"2024-01-31"', '"2024-02-29"', '"2000-02-29"', '"1999-12-31"', '"0001-01-01"'],
        [
            '"2024-13-01"',
            '"2024-02-30"',
            '"2023-02-29"',
            '"1900-02-29"',
            '"2024-04-31"',
            '"0000-01-01"',
            '"24-1-1"',
        ],
    ),
    (
        "format time",
        {"type": "string", "format": "time"},
        ['"12:34:56Z"', '"23:59:59.123+05:30"', '"00:00:00-01:00"'],
        ['"24:00:00Z"', '"12:60:00Z"', '"12:34:56+24:00"'],
    ),
    (
        "format date-time",
        {"type": "string", "format": "date-time"},
        ['"2024-02-29T12:00:00Z"', '"1999-12-31T23:59:59.999-08:00"'],
        ['"2024-02-30T12:00:00Z"', '"2024-02-29 12:00:00Z"'],
    ),
    (
        "format uuid",
        {"type": "string", "format": "uuid"},
        ['"123e4567-e89b-12d3-a456-426614174000"', '"00000000-0000-0000-0000-000000000000"'],
        ['"123e4567e89b12d3a456426614174000"', '"123e4567-e89b-12d3-a456-42661417400g"'],
    ),
    (
        "integer bounds",
        {"type": "integer", "minimum": 1, "maximum": 100},
        ["1", "50", "100"],
        ["0", "101", "-1", "1000"],
    ),
    (
        "integer exclusive bounds",
        {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 3},
        ["-2", "0", "2"],
        ["-3", "3"],
    ),
    (
        "number bounds",
        {"type": "number", "minimum": 0, "maximum": 1},
        ["0", "0.5", "1", "1.0", "0.25"],
        ["-0.1", "1.01", "2"],
    ),
    (
        "anyOf",
        {"anyOf": [{"type": "integer", "maximum": 5}, {"type": "string", "maxLength": 1}]},
        ["5", '"a"'],
        ["6", '"ab"', "null"],
    ),
    (
        "oneOf with a tag",
        {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"k": {"const": "a"}, "x": {"type": "integer"}},
                    "required": ["k"],
                },
                {
                    "type": "object",
                    "properties": {"k": {"const": "b"}, "y": {"type": "string"}},
                    "required": ["k"],
                },
            ]
        },
        ['{"k":"a","x":1}', '{"k":"b","y":"s"}'],
        ['{"k":"a","x":"s"}', '{"k":"c"}'],
    ),
    (
        "allOf of one",
        {
            "allOf": [{"$ref": "#/$defs/N"}],
            "description": "d",
            "$defs": {"N": {"type": "integer", "minimum": 3}},
        },
        ["3"],
        ["2"],
    ),
    (
        "allOf merged",
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "string"}}, "required": ["b"]},
            ]
        },
        ['{"a":1,"b":"x"}'],
        ['{"a":1}', '{"b":"x"}'],
    ),
    (
        "allOf requiring an undeclared property",
        {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"required": ["b"]}]},
        ['{"b":[1]}', '{"b":null,"a":1}'],
        ['{"a":1}', "{}"],
    ),
    (
        "a property named *",
        {
            "type": "object",
            "properties": {"*": {"type": "integer"}},
            "additionalProperties": {"type": "null"},
        },
        ['{"*":1}', '{"*":1,"x":null}', '{"x":null}'],
        ['{"*":null}', '{"x":1}'],
    ),
    (
        "awkward property names",
        {
            "type": "object",
            "properties": {
                'q"uote': {"type": "integer"},
                "a b": {"type": "boolean"},
                "root": {"type": "null"},
                "string": {"$ref": "#/$defs/value"},
                "é": {"type": "integer"},
            },
            "required": ['q"uote', "root"],
            "additionalProperties": {"type": "string"},
            "$defs": {"value": {"type": "integer"}},
        },
        [
            '{"q\\"uote":1,"root":null}',
            '{"q\\"uote":1,"root":null,"a b":true,"string":2,"é":3,"é2":"x","q":"y"}',
        ],
        ['{"q\\"uote":1}', '{"q\\"uote":1,"root":null,"é":"x"}', '{"q\\"uote":1,"root":null,"a b":"x"}'],
    ),
    (
        "$ref and $defs",
        {
            "$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
            "type": "array",
            "items": {"$ref": "#/$defs/P"},
        },
        ['[{"x":1},{"x":2}]'],
        ['[{"y":1}]'],
    ),
    (
        "definitions",
        {"definitions": {"S": {"type": "string", "maxLength": 1}}, "$ref": "#/definitions/S"},
        ['"a"'],
        ['"ab"'],
    ),
    (
        "recursion",
        {
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "v": {"type": "integer"},
                        "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                    },
                    "required": ["v", "next"],
                }
            },
            "$ref": "#/$defs/Node",
        },
        ['{"v":1,"next":null}', '{"v":1,"next":{"v":2,"next":{"v":3,"next":null}}}'],
        ['{"v":1}', '{"v":1,"next":{"v":2}}'],
    ),
    (
        "recursion to the root",
        {"type": "array", "items": {"$ref": "#"}, "maxItems": 2},
        ["[]", "[[],[[]]]"],
        ["[[],[],[]]", "[1]"],
    ),
    (
        "annotations",
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://example.com/s",
            "$comment": "c",
            "title": "T",
            "description": "D",
            "type": "object",
            "properties": {
                "a": {"type": "integer", "default": 1, "examples": [2], "deprecated": True, "readOnly": True},
                "b": {"type": "string", "writeOnly": True, "title": "B"},
            },
            "required": ["a"],
        },
        ['{"a":1}', '{"a":1,"b":"x"}'],
        ['{"b":"x"}'],
    ),
    ("no type, properties", {"properties": {"a": {"type": "integer"}}}, ['{"a":1}', "{}"], ['{"a":"x"}']),
    ("empty schema", {}, ["1", '"x"', "[null]", '{"a":{}}'], []),
]


@pytest.mark.parametrize(("schema", "valid", "invalid"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_keyword_accepts_valid_and_rejects_invalid(
    compile_schema: Callable[[dict[str, Any]], Grammar],
    schema: dict[str, Any],
    valid: list[str],
    invalid: list[str],
) -> None:
    grammar = compile_schema(schema)
    for doc in valid:
        assert schema_valid(schema, doc), f"test data: {doc} should be valid"
        assert grammar.accepts(doc), f"rejected valid {doc}\n{grammar.gbnf}"
    for doc in invalid:
        assert not grammar.accepts(doc), f"accepted invalid {doc}\n{grammar.gbnf}"
        try:
            assert not schema_valid(schema, doc), f"test data: {doc} should be invalid"
        except json.JSONDecodeError:
            pass  # not JSON at all


@pytest.mark.parametrize(("schema", "valid", "invalid"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_random_documents_of_the_grammar_validate(
    compile_schema: Callable[[dict[str, Any]], Grammar],
    schema: dict[str, Any],
    valid: list[str],
    invalid: list[str],
) -> None:
    grammar = compile_schema(schema)
    rng = random.Random(1)
    docs = [d for d in (grammar.sample(rng) for _ in range(8)) if d is not None]
    assert len(docs) >= 4, "the random walk should end most of the time"
    for doc in docs:
        assert schema_valid(schema, doc), f"the grammar produced an invalid document: {doc}"


def test_whitespace_is_one_optional_space(compile_schema: Callable[[dict[str, Any]], Grammar]) -> None:
    grammar = compile_schema(
        {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}
    )
    assert grammar.accepts('{"a":[1,2]}')
    assert grammar.accepts('{ "a" : [ 1, 2 ] }')
    assert not grammar.accepts('{  "a":[1]}')
    assert not grammar.accepts('{\n"a":[1]}')
    assert not grammar.accepts('{"a":[1] }\n')


def test_json_object_grammar_accepts_objects_only(vocab: Vocab) -> None:
    grammar = Grammar(vocab, JSON_OBJECT_GBNF)
    try:
        for doc in ("{}", '{"a":1}', '{"a":{"b":[1,2.5e3,null,true,"x"]}}', '{ "k" : "v" }'):
            assert grammar.accepts(doc), doc
        for doc in ("[]", '"x"', "1", "null", '{"a":}', "{", '{"a":1}{}'):
            assert not grammar.accepts(doc), doc
    finally:
        grammar.close()


# ---------------------------------------------------------------------------------------------------
# What the grammar narrows (valid documents it never produces)
# ---------------------------------------------------------------------------------------------------


def test_properties_come_required_first_in_schema_order(
    compile_schema: Callable[[dict[str, Any]], Grammar],
) -> None:
    schema = {
        "type": "object",
        "properties": {"o": {"type": "integer"}, "a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["b", "a"],
    }
    grammar = compile_schema(schema)
    assert grammar.accepts('{"a":1,"b":2,"o":3}')
    assert not grammar.accepts('{"b":2,"a":1}')  # valid, but not in schema order
    assert not grammar.accepts('{"o":3,"a":1,"b":2}')  # valid, but the optional one comes last


def test_undeclared_properties_only_when_additional_properties_asks(
    compile_schema: Callable[[dict[str, Any]], Grammar],
) -> None:
    grammar = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert schema_valid({"properties": {"a": {"type": "integer"}}}, '{"a":1,"b":2}')
    assert not grammar.accepts('{"a":1,"b":2}')


def test_long_limits_generate_at_most_2000(compile_schema: Callable[[dict[str, Any]], Grammar]) -> None:
    grammar = compile_schema({"type": "string", "maxLength": 5000})
    assert grammar.accepts('"' + "a" * 2000 + '"')
    assert not grammar.accepts('"' + "a" * 2001 + '"')  # valid, but llama.cpp cannot count further
    items = compile_schema({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 9000})
    assert items.accepts("[" + ",".join(["1"] * 2000) + "]")
    assert not items.accepts("[1]")


# ---------------------------------------------------------------------------------------------------
# Integers and numbers against their bounds, exhaustively near the edges
# ---------------------------------------------------------------------------------------------------

INTEGER_BOUNDS: list[dict[str, Any]] = [
    {"minimum": 0, "maximum": 100},
    {"minimum": 1, "maximum": 5},
    {"minimum": -5, "maximum": 5},
    {"minimum": -100, "maximum": -7},
    {"minimum": 13, "maximum": 1013},
    {"minimum": 99, "maximum": 1000},
    {"minimum": 0, "maximum": 0},
    {"minimum": 7},
    {"minimum": -42},
    {"maximum": 42},
    {"maximum": -3},
    {"exclusiveMinimum": 9, "exclusiveMaximum": 101},
    {"minimum": 1.5, "exclusiveMaximum": 20.5},
    {"minimum": 10, "exclusiveMinimum": 10, "maximum": 20, "exclusiveMaximum": 30},
]


@pytest.mark.parametrize("bounds", INTEGER_BOUNDS, ids=[json.dumps(b) for b in INTEGER_BOUNDS])
def test_integer_bounds_exactly(
    compile_schema: Callable[[dict[str, Any]], Grammar], bounds: dict[str, Any]
) -> None:
    schema = {"type": "integer", **bounds}
    grammar = compile_schema(schema)
    numbers = [*range(-1050, 1051), 9999, 10000, -9999, -10000, 10**15, 10**16 - 1, -(10**16 - 1)]
    for n in numbers:
        expected = (
            n >= bounds.get("minimum", -math.inf)
            and n > bounds.get("exclusiveMinimum", -math.inf)
            and n <= bounds.get("maximum", math.inf)
            and n < bounds.get("exclusiveMaximum", math.inf)
        )
        assert grammar.accepts(str(n)) == expected, f"{n}\n{grammar.gbnf}"
    for n in (-1, 0, 20, 1000):
        assert grammar.accepts(str(n)) == schema_valid(schema, str(n))
    assert not grammar.accepts("-0")
    assert not grammar.accepts("007")


NUMBER_BOUNDS: list[dict[str, Any]] = [
    {"minimum": 0, "maximum": 1},
    {"exclusiveMinimum": 0, "maximum": 1},
    {"minimum": 0, "exclusiveMaximum": 1},
    {"exclusiveMinimum": 0},
    {"minimum": -1, "exclusiveMaximum": 1},
    {"maximum": 0},
    {"exclusiveMaximum": -1},
    {"minimum": 5, "maximum": 5},
    {"exclusiveMinimum": -2, "exclusiveMaximum": -1},
    {"minimum": -10, "maximum": 250},
]
DECIMALS = (
    "0 0.0 0.00 0.5 0.50 0.05 0.00000000000001 0.99999999999999 1 1.0 1.000 1.5 2 5 5.0 5.000001 4.999999 "
    "10 99.99 250 250.0 250.01 251 -0.5 -0.05 -1 -1.0 -1.5 -1.0001 -1.9999 -2 -2.0 -2.5 -10 -10.0 -10.5 "
    "123456789012345 12345678901234.5"
).split()


@pytest.mark.parametrize("bounds", NUMBER_BOUNDS, ids=[json.dumps(b) for b in NUMBER_BOUNDS])
def test_number_bounds_exactly(
    compile_schema: Callable[[dict[str, Any]], Grammar], bounds: dict[str, Any]
) -> None:
    schema = {"type": "number", **bounds}
    grammar = compile_schema(schema)
    for text in DECIMALS:
        value = Decimal(text)
        expected = (
            value >= bounds.get("minimum", -math.inf)
            and value > bounds.get("exclusiveMinimum", -math.inf)
            and value <= bounds.get("maximum", math.inf)
            and value < bounds.get("exclusiveMaximum", math.inf)
        )
        assert grammar.accepts(text) == expected, f"{text}\n{grammar.gbnf}"
        assert schema_valid(schema, text) == expected, text  # floats keep the order at 15 digits
    for narrowed in ("-0", "1e0", "0.1234567890123456"):  # valid in range, but never produced
        assert not grammar.accepts(narrowed)


# ---------------------------------------------------------------------------------------------------
# Patterns: the grammar agrees with Python's re.search on the decoded string
# ---------------------------------------------------------------------------------------------------

PATTERNS: list[tuple[str, list[str]]] = [
    ("^\\d{3}-\\d{4}$", ["555-1234", "5551234", "555-12345", "55a-1234"]),
    ("^(cat|dog)s?$", ["cat", "dogs", "cats", "cow", "catss", "dog"]),
    ("ab+c", ["abc", "xabbbcx", "ac", "abx"]),
    ("^a|b$", ["ax", "xb", "xa", "bx", "a", "b"]),
    ("^\\w+@\\w+\\.com$", ["me@x.com", "me@xcom", "m e@x.com", "a_1@b2.com"]),
    ("^.{2,4}$", ["ab", "abcd", "a", "abcde", "é😀"]),
    ("^[a-z\\-_]+$", ["a-b_c", "a b", "-", "A"]),
    ("^[^0-9]+$", ["abc", "a1", "é"]),
    ("^\\S+\\s\\S+$", ["a b", "ab", "a  b", "a\tb"]),
    ('^say "[a-z]+"$', ['say "hi"', "say hi", 'say "Hi"']),
    ("^[\\\\/]+$", ["\\", "/\\/", "a"]),
    ("^\\u00e9+$", ["é", "éé", "e"]),
    ("^(?:ab){2}$", ["abab", "ab", "ababab"]),
    ("^a+?b*?$", ["a", "aabb", "b"]),
    ("^x\\.y\\*z$", ["x.y*z", "xay*z", "x.yyz"]),
    ("^[\\t\\n]?$", ["", "\t", "\n", " "]),
    ("^$", ["", "a"]),
    ("^(a|b|)c{0,3}$", ["", "ac", "ccc", "bcccc", "abc"]),
]


@pytest.mark.parametrize(("pattern", "strings"), PATTERNS, ids=[p for p, _ in PATTERNS])
def test_pattern_agrees_with_re(
    compile_schema: Callable[[dict[str, Any]], Grammar], pattern: str, strings: list[str]
) -> None:
    grammar = compile_schema({"type": "string", "pattern": pattern})
    for s in strings:
        assert grammar.accepts(json.dumps(s, ensure_ascii=False)) == bool(re.search(pattern, s)), (
            s,
            grammar.gbnf,
        )
    rng = random.Random(2)
    # Short walks: an unanchored pattern's walk wanders until it types a match by chance.
    for doc in filter(None, (grammar.sample(rng, max_bytes=200) for _ in range(6))):
        assert re.search(pattern, json.loads(doc)), doc


def test_pattern_class_escapes_are_ascii(compile_schema: Callable[[dict[str, Any]], Grammar]) -> None:
    # \d and \w mean more in Python and Rust than in ECMA 262: the grammar keeps to what all agree on.
    assert not compile_schema({"type": "string", "pattern": "^\\d$"}).accepts('"٣"')
    assert not compile_schema({"type": "string", "pattern": "^\\D$"}).accepts('"٣"')
    assert not compile_schema({"type": "string", "pattern": "^.$"}).accepts('"\\""')  # `.` writes no escape


# ---------------------------------------------------------------------------------------------------
# pydantic v2 models: the grammar agrees with model_validate_json
# ---------------------------------------------------------------------------------------------------


class Address(BaseModel):
    street: str = Field(min_length=1, max_length=40)
    zip: str = Field(pattern=r"^\d{5}$")
    country: Literal["US", "CA"] = "US"


class Person(BaseModel):
    name: str
    age: Annotated[int, Field(ge=0, le=130)]
    address: Address
    rating: conint(ge=1, le=5)  # type: ignore[valid-type]
    tags: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=3)
    born: date
    id: UUID
    code: constr(pattern=r"^[A-Z]{2}-\d{3}$")  # type: ignore[valid-type]
    score: float = Field(ge=0, le=1)
    email: str | None = None
    previous: list[Address] = Field(default_factory=list, max_length=2)


class Tree(BaseModel):
    value: int
    children: list[Tree] = []


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Event(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")
    at: datetime
    alarm: time | None
    ticket: UUID4
    size: tuple[int, str]
    mood: Literal["happy", "sad"] | None = None


ADDRESS = {"street": "1 Main St", "zip": "12345"}
PERSON = {
    "name": "Ann",
    "age": 30,
    "address": ADDRESS,
    "rating": 5,
    "tags": [1, 2],
    "born": "1990-02-28",
    "id": "123e4567-e89b-12d3-a456-426614174000",
    "code": "AB-123",
    "score": 0.5,
    "email": None,
    "previous": [{**ADDRESS, "country": "CA"}],
}
EVENT = {
    "pet": {"kind": "cat", "lives": 9},
    "at": "2024-02-29T08:30:00Z",
    "alarm": "07:00:00+01:00",
    "ticket": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
    "size": [3, "L"],
    "mood": "happy",
}


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`base` with some keys replaced (order kept) or, for the value ..., removed."""
    return {k: changes.get(k, v) for k, v in base.items() if changes.get(k, v) is not ...}


MODEL_DOCS: list[tuple[type[BaseModel], list[Any]]] = [
    (
        Person,
        [
            PERSON,
            changed(PERSON, email="a@b.c", previous=[]),
            changed(PERSON, age=130, rating=1, tags=[1, 2, 3], score=1, born="2000-02-29"),
            changed(PERSON, email=...),
            changed(PERSON, age=131),
            changed(PERSON, age=-1),
            changed(PERSON, rating=0),
            changed(PERSON, tags=[]),
            changed(PERSON, tags=[1, 2, 3, 4]),
            changed(PERSON, tags=[0]),
            changed(PERSON, born="2023-02-29"),
            changed(PERSON, born="2024-13-01"),
            changed(PERSON, id="not-a-uuid"),
            changed(PERSON, code="ab-123"),
            changed(PERSON, score=1.5),
            changed(PERSON, score=-0.01),
            changed(PERSON, name=...),
            changed(PERSON, address={"street": "", "zip": "12345"}),
            changed(PERSON, address={"street": "x" * 41, "zip": "12345"}),
            changed(PERSON, address={"street": "x", "zip": "1234"}),
            changed(PERSON, address={"street": "x", "zip": "12345", "country": "MX"}),
            changed(PERSON, previous=[ADDRESS, ADDRESS, ADDRESS]),
            changed(PERSON, email=3),
        ],
    ),
    (
        Tree,
        [
            {"value": 1},
            {
                "value": 1,
                "children": [{"value": 2}, {"value": 3, "children": [{"value": 4, "children": []}]}],
            },
            {"value": 1, "children": [{"children": []}]},
            {"value": 1.5},
            {"value": 1, "children": [1]},
        ],
    ),
    (
        Event,
        [
            EVENT,
            changed(EVENT, pet={"kind": "dog", "good": True}, alarm=None, mood=...),
            changed(EVENT, pet={"kind": "cat", "lives": 10}),
            changed(EVENT, pet={"kind": "dog", "lives": 3}),
            changed(EVENT, pet={"kind": "cow"}),
            changed(EVENT, at="2024-02-30T08:30:00Z"),
            changed(EVENT, alarm="25:00:00Z"),
            changed(EVENT, alarm=...),
            changed(EVENT, ticket="1b4e28ba-2fa1-11d2-883f-0016d3cca427"),  # version 1, not 4
            changed(EVENT, size=[3]),
            changed(EVENT, size=[3, "L", 4]),
            changed(EVENT, mood="angry"),
        ],
    ),
]


def pydantic_valid(model: type[BaseModel], doc: str) -> bool:
    try:
        model.model_validate_json(doc)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("model", "docs"), MODEL_DOCS, ids=[m.__name__ for m, _ in MODEL_DOCS])
def test_pydantic_models_agree(
    compile_schema: Callable[[dict[str, Any]], Grammar], model: type[BaseModel], docs: list[Any]
) -> None:
    schema = model.model_json_schema()
    grammar = compile_schema(schema)
    verdicts = []
    for data in docs:
        doc = json.dumps(data, separators=(",", ":"))
        assert grammar.accepts(doc) == pydantic_valid(model, doc), f"{doc}\n{grammar.gbnf}"
        verdicts.append(pydantic_valid(model, doc))
    assert True in verdicts and False in verdicts


@pytest.mark.parametrize("model", [Person, Tree, Event], ids=lambda m: m.__name__)
def test_random_documents_of_pydantic_grammars_validate(
    compile_schema: Callable[[dict[str, Any]], Grammar], model: type[BaseModel]
) -> None:
    schema = model.model_json_schema()
    grammar = compile_schema(schema)
    rng = random.Random(3)
    docs = [d for d in (grammar.sample(rng) for _ in range(6)) if d is not None]
    assert len(docs) >= 3
    for doc in docs:
        assert pydantic_valid(model, doc), doc
        assert schema_valid(schema, doc), doc


# ---------------------------------------------------------------------------------------------------
# Refusals: what the grammar cannot enforce is an InvalidArgument naming the keyword and where it is
# ---------------------------------------------------------------------------------------------------

REFUSED: list[tuple[Any, str, str]] = [
    (
        {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}},
        '"multipleOf"',
        "#/properties/n",
    ),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, '"uniqueItems"', "#"),
    ({"not": {"type": "string"}}, '"not"', "#"),
    ({"if": {"type": "string"}, "then": {"minLength": 1}}, '"if"', "#"),
    ({"type": "object", "patternProperties": {"^a": {}}}, '"patternProperties"', "#"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, '"dependentRequired"', "#"),
    ({"type": "array", "contains": {"type": "integer"}}, '"contains"', "#"),
    ({"type": "object", "minProperties": 1}, '"minProperties"', "#"),
    ({"type": "object", "maxProperties": 1}, '"maxProperties"', "#"),
    ({"type": "object", "propertyNames": {"maxLength": 3}}, '"propertyNames"', "#"),
    ({"type": "object", "unevaluatedProperties": False}, '"unevaluatedProperties"', "#"),
    ({"type": "string", "nullable": True}, '"nullable"', "#"),
    ({"type": "string", "x-custom": 1}, '"x-custom"', "#"),
    (
        {"$defs": {"A": {"type": "string", "format": "email"}}, "$ref": "#/$defs/A"},
        '"format": "email"',
        "#/$defs/A",
    ),
    ({"type": "integer", "format": "int32"}, '"format": "int32"', "#"),
    ({"type": "number", "minimum": 0.5}, '"minimum"', "#"),
    ({"type": "number", "maximum": 1e20}, '"maximum"', "#"),
    ({"$ref": "https://example.com/schema.json"}, '"$ref"', "#"),
    ({"$ref": "other.json#/$defs/A"}, '"$ref"', "#"),
    ({"items": {"$ref": "#/$defs/Missing"}, "type": "array"}, '"$ref"', "#/items"),
    ({"$ref": "#anchor"}, '"$ref"', "#"),
    ({"type": "decimal"}, '"type"', "#"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, '"oneOf"', "#"),
    ({"oneOf": [{"type": "object"}, {"type": "object", "properties": {"a": {"const": 1}}}]}, '"oneOf"', "#"),
    ({"type": "object", "anyOf": [{"required": ["a"]}]}, '"type" beside "anyOf"', "#"),
    ({"enum": ["a", "bb"], "maxLength": 1}, '"maxLength" beside "enum"', "#"),
    ({"type": "string", "pattern": "^(?=a)a$"}, '"pattern"', "#"),
    ({"type": "string", "pattern": "^(a)\\1$"}, '"pattern"', "#"),
    ({"type": "string", "pattern": "\\bword\\b"}, '"pattern"', "#"),
    ({"type": "string", "pattern": "^(a*)*$"}, '"pattern"', "#"),
    ({"type": "string", "pattern": "[[:alpha:]]"}, '"pattern"', "#"),
    ({"type": "string", "pattern": "ab\\"}, '"pattern"', "#"),
    (
        {
            "allOf": [{"$ref": "#/$defs/A", "minimum": 1}, {"type": "object"}],
            "$defs": {"A": {"type": "object"}},
        },
        '"minimum" beside "$ref"',
        "#/allOf/0",
    ),
    ({"type": "integer", "minimum": 10**20}, "more than 16 digits", "#"),
    ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 5}, '"maxLength" beside "pattern"', "#"),
    ({"type": "string", "format": "date", "minLength": 11}, '"minLength" beside "format"', "#"),
    ({"type": "string", "minLength": 2001}, '"minLength"', "#"),
    ({"type": "array", "minItems": 2001}, '"minItems"', "#"),
    (
        {"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}, "$ref": "#/$defs/A"},
        '"$ref"',
        "#/$defs/A/anyOf/0",
    ),
    ({"type": "object", "required": ["b"], "additionalProperties": False}, '"required"', "#"),
    ({"properties": {"a": {"$id": "x", "type": "string"}}}, '"$id"', "#/properties/a"),
    ({"allOf": [{"type": "integer"}, {"minimum": 1}]}, '"allOf"', "#/allOf/0"),
    ({"enum": []}, '"enum"', "#"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "bounds", "#"),
    ({"type": "string", "discriminator": {"propertyName": "k"}}, '"discriminator"', "#"),
    ({"type": "integer", "exclusiveMinimum": True}, '"exclusiveMinimum"', "#"),
    (
        {"type": "array", "prefixItems": [{"type": "integer"}], "items": False, "minItems": 2},
        '"minItems"',
        "#",
    ),
]


@pytest.mark.parametrize(
    ("schema", "keyword", "where"), REFUSED, ids=[f"{i}-{r[1]}" for i, r in enumerate(REFUSED)]
)
def test_refused_schemas_say_what_and_where(schema: Any, keyword: str, where: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        schema_to_gbnf(schema, param="response_format.json_schema")
    assert caught.value.code == "unsupported_schema"
    assert caught.value.param == "response_format.json_schema"
    assert keyword in caught.value.message
    assert f"at {where} " in caught.value.message + " " or f"at {where}," in caught.value.message


@pytest.mark.parametrize("schema", [[], "string", None, 1, True])
def test_a_schema_that_is_not_an_object_is_refused(schema: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        schema_to_gbnf(schema)
    assert caught.value.param == "response_format"
    assert "must be an object" in caught.value.message


def test_the_message_names_keyword_and_pointer() -> None:
    with pytest.raises(InvalidArgument) as caught:
        schema_to_gbnf({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}})
    assert caught.value.message == '"multipleOf" at #/properties/n is not supported in a JSON schema'


def test_deep_schemas_are_refused_not_a_crash() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(150):
        schema = {"type": "array", "items": schema}
    with pytest.raises(InvalidArgument, match="nested more than"):
        schema_to_gbnf(schema)
