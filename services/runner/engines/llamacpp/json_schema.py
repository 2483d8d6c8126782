"""JSON schema → GBNF: the grammar that lets llama.cpp's sampler write only documents a schema accepts.

`schema_to_gbnf` serves OpenAI's `response_format: {"type": "json_schema"}`. Each keyword is either
enforced exactly by the grammar or refused with an InvalidArgument that names the keyword and its JSON
pointer. The grammar may be narrower than the schema (properties in a fixed order, bounded numbers
without exponents, ...), never wider. Whitespace between tokens is at most one space (`space ::= | " "`):
enough for a model that likes `{ "a": 1 }`, and no room to pad a document with endless newlines.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NoReturn
from urllib.parse import unquote

from services.common.errors import InvalidArgument

# llama.cpp expands `x{m,n}` into copies and nested rules and caps a count at about 2000.
_MAX_REPEAT = 2000
# Deeper schemas are refused before Python's own recursion limit could turn them into a crash.
_MAX_DEPTH = 64
# Integers (and the bounds of numbers) keep to 16 digits.
_MAX_DIGITS = 16
_INT_CAP = 10**_MAX_DIGITS - 1
# A number with a fraction keeps to 15 digits in all: then distinct decimals stay distinct as doubles,
# so a validator that parses floats agrees with the grammar at every bound, exclusive ones included.
_DECIMAL_DIGITS = 15

_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_DEFS = frozenset({"$defs", "definitions"})
_OBJECT_KEYWORDS = frozenset({"properties", "required", "additionalProperties"})
_ARRAY_KEYWORDS = frozenset(
    {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"}
)
_STRING_KEYWORDS = frozenset({"minLength", "maxLength", "pattern", "format"})
_NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_STRUCTURE = frozenset({"type", "enum", "const", "$ref", "allOf", "anyOf", "oneOf", "discriminator"})
_KEYWORDS = (
    _ANNOTATIONS
    | _DEFS
    | _STRUCTURE
    | _OBJECT_KEYWORDS
    | _ARRAY_KEYWORDS
    | _STRING_KEYWORDS
    | _NUMBER_KEYWORDS
)
_FORMATS = frozenset({"date", "time", "date-time", "uuid", *(f"uuid{v}" for v in range(1, 9))})

# Grammar pieces every schema may share, by name: (body, the pieces it uses).
_BUILTINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "space": ('| " "', ()),
    "value": (
        "object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "object": ('"{" space ( member ( "," space member )* )? "}"', ("space", "member")),
    "member": ('string space ":" space value space', ("string", "space", "value")),
    "array": ('"[" space ( value space ( "," space value space )* )? "]"', ("space", "value")),
    "string": (r'"\"" char* "\""', ("char",)),
    # Escapes that decode to a surrogate are left out: a lone one is not text, and a pair would count as
    # two characters here but one for minLength.
    "char": (r'raw-char | "\\" ( ["\\/bfnrt] | "u" hex4 )', ("raw-char", "hex4")),
    "raw-char": (r"[ !#-\x5b\x5d-\ud7ff\ue000-\U0010ffff]", ()),
    "hex4": ("[0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}", ()),
    # Exponents keep to two digits so that no number overflows to infinity.
    "number": (
        '"-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )?',
        (),
    ),
    "integer": ('"0" | "-"? [1-9] [0-9]{0,15}', ()),
    "boolean": ('"true" | "false"', ()),
    "null": ('"null"', ()),
    "date": (
        'year "-" ( month31 "-" day31 | month30 "-" day30 | "02-" day28 ) | leap-year "-02-29"',
        ("year", "leap-year", "month31", "month30", "day28", "day30", "day31"),
    ),
    # Year 0000 does not exist in the proleptic Gregorian calendar that validators use.
    "year": ('[1-9] [0-9]{3} | "0" [1-9] [0-9]{2} | "00" [1-9] [0-9] | "000" [1-9]', ()),
    # Divisible by 4 and not by 100, or divisible by 400.
    "leap-year": ('[0-9]{2} leap-mod | leap-mod "00"', ("leap-mod",)),
    "leap-mod": ('"0" [48] | [2468] [048] | [13579] [26]', ()),
    "month31": ('"0" [13578] | "1" [02]', ()),
    "month30": ('"0" [469] | "11"', ()),
    "day28": ('"0" [1-9] | "1" [0-9] | "2" [0-8]', ()),
    "day30": ('day28 | "29" | "30"', ("day28",)),
    "day31": ('day30 | "31"', ("day30",)),
    # No leap second and at most microseconds: what every validator and datetime library accepts.
    "time": (
        'hour ":" minute ":" minute ( "." [0-9]{1,6} )? ( "Z" | [+-] hour ":" minute )',
        ("hour", "minute"),
    ),
    "hour": ('[01] [0-9] | "2" [0-3]', ()),
    "minute": ("[0-5] [0-9]", ()),
    "date-time": ('date "T" time', ("date", "time")),
    "hex": ("[0-9a-fA-F]", ()),
    "uuid": ('hex{8} "-" hex{4} "-" hex{4} "-" hex{4} "-" hex{12}', ("hex",)),
}

# ---------------------------------------------------------------------------------------------------
# Sets of code points, as sorted disjoint inclusive ranges
# ---------------------------------------------------------------------------------------------------

_Ranges = tuple[tuple[int, int], ...]
_MAX_CODE_POINT = 0x10FFFF


def _union(*sets: Iterable[tuple[int, int]]) -> _Ranges:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for s in sets for r in s):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _minus(a: _Ranges, b: _Ranges) -> _Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in a:
        for blo, bhi in b:
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = bhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return tuple(out)


def _points(chars: Iterable[str]) -> _Ranges:
    return _union((ord(c), ord(c)) for c in chars)


# Characters a JSON string may hold unescaped (surrogates are no text at all).
_RAW = _minus(((0x20, _MAX_CODE_POINT),), _union(_points('"\\'), ((0xD800, 0xDFFF),)))
_ASCII_RAW = _minus(_RAW, ((0x7F, _MAX_CODE_POINT),))
_DIGIT: _Ranges = ((0x30, 0x39),)
_WORD = _union(_DIGIT, _points("_"), ((0x41, 0x5A), (0x61, 0x7A)))
_SPACE = _union(((0x09, 0x0D),), _points(" "))
# Python's `.` stops at \n only, ECMA 262's at \r, U+2028 and U+2029 too: the grammar stops at all, and
# like every class defined by exclusion it writes no escapes (so no `"`, `\` or control characters).
_DOT = _minus(_RAW, _points("\u2028\u2029"))


def _class_char(cp: int) -> str:
    if cp < 0x80 and chr(cp).isalnum():
        return chr(cp)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def _char_class(ranges: _Ranges) -> str:
    """Always a positive class: llama.cpp checks a half-written UTF-8 character against a negated class
    by its whole block, so `[^é]` would also refuse `è`."""
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _literal(chr(ranges[0][0]))
    parts = []
    for lo, hi in ranges:
        parts.append(_class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}")
    return "[" + "".join(parts) + "]"


def _literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isascii() and ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(_class_char(ord(ch)))
    return '"' + "".join(out) + '"'


def _json_text(value: Any) -> str:
    """`value` as compact JSON, non-ASCII raw except lone surrogates, which only an escape can write."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m[0]):04x}", text)


def _set_alternatives(ranges: _Ranges) -> list[str]:
    """What writes one character of `ranges` inside a JSON string: raw characters as a class, the others
    as the escape json.dumps writes for them."""
    parts = []
    raw = _minus(ranges, _minus(((0, _MAX_CODE_POINT),), _RAW))
    if raw:
        parts.append(_char_class(raw))
    for lo, hi in _minus(ranges, _RAW):
        parts.extend(_literal(json.dumps(chr(cp))[1:-1]) for cp in range(lo, hi + 1) if cp < 0xD800)
    return parts


def _group(alternatives: Iterable[str]) -> str:
    """Non-empty alternatives as one element of a sequence."""
    alts = list(dict.fromkeys(alternatives))
    return alts[0] if len(alts) == 1 else "( " + " | ".join(alts) + " )"


def _is_atom(expr: str) -> bool:
    return bool(re.fullmatch(r'[A-Za-z0-9-]+|"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]', expr))


def _quantifier(lo: int, hi: int | None) -> str:
    if (lo, hi) == (1, 1):
        return ""
    if hi is None:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    if (lo, hi) == (0, 1):
        return "?"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


# ---------------------------------------------------------------------------------------------------
# Patterns: a regex subset whose meaning Python, ECMA 262 and Rust agree on
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Set:
    ranges: _Ranges


@dataclass(frozen=True)
class _Seq:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Alt:
    branches: tuple[_Node, ...]


@dataclass(frozen=True)
class _Rep:
    item: _Node
    lo: int
    hi: int | None


_Node = _Set | _Seq | _Alt | _Rep


class _PatternError(Exception):
    """Why a pattern cannot become a grammar; the caller turns it into a refusal."""


def _nullable(node: _Node) -> bool:
    if isinstance(node, _Set):
        return False
    if isinstance(node, _Seq):
        return all(_nullable(n) for n in node.items)
    if isinstance(node, _Alt):
        return any(_nullable(n) for n in node.branches)
    return node.lo == 0 or _nullable(node.item)


class _RegexParser:
    """Parses a pattern into top-level alternatives, each with its `^`/`$` anchors and its body."""

    _SHORTHANDS: dict[str, _Ranges] = {
        # \d and \w are ASCII here: Python and Rust also match other scripts' digits and letters.
        "d": _DIGIT,
        "w": _WORD,
        "s": _SPACE,
        # The negations keep to printable ASCII for the same reason.
        "D": _minus(_ASCII_RAW, _DIGIT),
        "W": _minus(_ASCII_RAW, _WORD),
        "S": _minus(_ASCII_RAW, _SPACE),
    }
    _CONTROLS = {"t": 9, "n": 10, "v": 11, "f": 12, "r": 13}

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0
        self.groups = 0

    def _peek(self, offset: int = 0) -> str:
        j = self.i + offset
        return self.p[j] if j < len(self.p) else ""

    def parse(self) -> list[tuple[bool, bool, _Node]]:
        branches: list[tuple[bool, bool, _Node]] = []
        while True:
            start = self._peek() == "^"
            self.i += start
            items = self._sequence(top=True)
            end = self._peek() == "$"
            self.i += end
            branches.append((start, end, _Seq(items)))
            if self.i == len(self.p):
                return branches
            if self._peek() != "|":
                raise _PatternError(f"unexpected {self._peek()!r} at position {self.i}")
            self.i += 1

    def _sequence(self, top: bool) -> tuple[_Node, ...]:
        items = []
        while self.i < len(self.p) and self._peek() not in "|)" and not (top and self._peek() == "$"):
            items.append(self._quantified(self._atom()))
        return tuple(items)

    def _atom(self) -> _Node:
        c = self.p[self.i]
        self.i += 1
        if c == "(":
            return self._group()
        if c == "[":
            return _Set(self._class())
        if c == ".":
            return _Set(_DOT)
        if c == "\\":
            e = self._escape()
            return _Set(e if isinstance(e, tuple) else ((e, e),))
        if c in "^$":
            raise _PatternError("^ and $ are supported only at the start and end of the pattern")
        if c in "*+?{":
            raise _PatternError(f"{c!r} at position {self.i - 1} repeats nothing (escape it)")
        if c in "]}":
            raise _PatternError(f"a lone {c!r} means different things in different regex flavors (escape it)")
        if 0xD800 <= ord(c) <= 0xDFFF:
            raise _PatternError("surrogates are not supported")
        return _Set(((ord(c), ord(c)),))

    def _group(self) -> _Node:
        self.groups += 1
        if self.groups > 100:
            raise _PatternError("too many groups")
        if self._peek() == "?":
            named = re.match(r"\?P?<[A-Za-z_][A-Za-z0-9_]*>", self.p[self.i :])
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif named:
                self.i += named.end()
            else:
                raise _PatternError("lookarounds, inline flags and other (?...) groups are not supported")
        branches = [_Seq(self._sequence(top=False))]
        while self._peek() == "|":
            self.i += 1
            branches.append(_Seq(self._sequence(top=False)))
        if self._peek() != ")":
            raise _PatternError("a parenthesis is not closed")
        self.i += 1
        return _Alt(tuple(branches)) if len(branches) > 1 else branches[0]

    def _quantified(self, atom: _Node) -> _Node:
        c = self._peek()
        if c in ("*", "+", "?"):
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            self.i += 1
        elif c == "{":
            m = re.match(r"\{(\d+)(,(\d*))?\}", self.p[self.i :])
            if not m:
                raise _PatternError("a '{' that is not a repetition count must be escaped")
            lo = int(m[1])
            hi = lo if m[2] is None else (int(m[3]) if m[3] else None)
            self.i += m.end()
        else:
            return atom
        if self._peek() == "?":  # lazy: the same strings match
            self.i += 1
        elif self._peek() == "+":
            raise _PatternError("possessive quantifiers are not supported")
        if self._peek() and self._peek() in "*+?{":
            raise _PatternError("a repetition is repeated")
        if hi is not None and lo > hi:
            raise _PatternError(f"the repetition {{{lo},{hi}}} is reversed")
        if lo > _MAX_REPEAT:
            raise _PatternError(f"a repetition of more than {_MAX_REPEAT} cannot be counted")
        if (hi is None or hi > 1) and _nullable(atom):
            # Unbounded, `(a*)*` is a left-recursive rule, which llama.cpp rejects; bounded, every copy may
            # be skipped at every step, and llama.cpp's parse stacks multiply until it stalls.
            raise _PatternError("a part that can match the empty string is repeated")
        hi = None if hi is None else min(hi, _MAX_REPEAT)
        return atom if (lo, hi) == (1, 1) else _Rep(atom, lo, hi)

    def _escape(self) -> int | _Ranges:
        if self.i >= len(self.p):
            raise _PatternError("the pattern ends with a lone backslash")
        c = self.p[self.i]
        self.i += 1
        if c in self._SHORTHANDS:
            return self._SHORTHANDS[c]
        if c in self._CONTROLS:
            return self._CONTROLS[c]
        if c in "xu":
            width = 2 if c == "x" else 4
            digits = self.p[self.i : self.i + width]
            if not re.fullmatch(f"[0-9a-fA-F]{{{width}}}", digits):
                raise _PatternError(f"\\{c} needs {width} hex digits")
            self.i += width
            cp = int(digits, 16)
            if 0xD800 <= cp <= 0xDFFF:
                raise _PatternError("surrogate escapes are not supported")
            return cp
        if c.isdigit():
            raise _PatternError("backreferences and octal escapes are not supported")
        if c in "bB":
            raise _PatternError("word boundaries are not supported")
        if c.isascii() and c.isalnum():
            raise _PatternError(f"\\{c} is not supported")
        return ord(c)

    def _class(self) -> _Ranges:
        negated = self._peek() == "^"
        self.i += negated
        if self._peek() == "]":
            raise _PatternError("a class that starts with ']' means different things in different flavors")
        members: list[tuple[int, int]] = []
        shorthand = False
        while True:
            if self.i >= len(self.p):
                raise _PatternError("a character class is not closed")
            c = self.p[self.i]
            self.i += 1
            if c == "]":
                break
            if c == "[":
                raise _PatternError("nested classes and POSIX classes like [:alpha:] are not supported")
            if c in "&|~-" and self._peek() == c:
                raise _PatternError("set operations in a character class are not supported")
            start = self._escape() if c == "\\" else ord(c)
            if isinstance(start, tuple):
                members.extend(start)
                shorthand = True
                if self._peek() == "-" and self._peek(1) not in ("]", ""):
                    raise _PatternError("a range cannot start at a class escape")
                continue
            if self._peek() == "-" and self._peek(1) not in ("]", ""):
                self.i += 1
                d = self.p[self.i]
                self.i += 1
                if d == "[":
                    raise _PatternError("nested classes are not supported")
                end = self._escape() if d == "\\" else ord(d)
                if isinstance(end, tuple) or end < start:
                    raise _PatternError("a character range is malformed")
                members.append((start, end))
            else:
                members.append((start, start))
        chosen = _minus(_union(members), ((0xD800, 0xDFFF),))
        if negated:
            # A class defined by what it leaves out writes no escapes, and with \d, \w or \s inside it
            # keeps to ASCII, where the flavors agree on what those leave out.
            chosen = _minus(_ASCII_RAW if shorthand else _RAW, chosen)
        if not chosen:
            raise _PatternError("a character class matches no character")
        return chosen


# ---------------------------------------------------------------------------------------------------
# Integer ranges as digit strings
# ---------------------------------------------------------------------------------------------------


def _digit_class(lo: int, hi: int) -> str:
    return f'"{lo}"' if lo == hi else f"[{lo}-{hi}]"


def _digits(n: int) -> str:
    return f"[0-9]{_quantifier(n, n)}" if n else ""


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives for the digit strings from `lo` to `hi`, both of the same length."""
    merged = []
    for alt in _same_length_parts(lo, hi):
        tokens: list[str] = []
        for token in alt.split():
            if tokens and token[0] == tokens[-1][-1] == '"':  # two digit literals in a row
                tokens[-1] = tokens[-1][:-1] + token[1:]
            else:
                tokens.append(token)
        merged.append(" ".join(tokens))
    return merged


def _same_length_parts(lo: str, hi: str) -> list[str]:
    if lo == hi:
        return [f'"{lo}"'] if lo else [""]
    if lo[0] == hi[0]:
        return [f'"{lo[0]}" {rest}'.strip() for rest in _same_length_parts(lo[1:], hi[1:])]
    n = len(lo) - 1
    first, last = int(lo[0]), int(hi[0])
    alts = []
    if lo[1:] != "0" * n:
        alts += [f'"{lo[0]}" {rest}'.strip() for rest in _same_length_parts(lo[1:], "9" * n)]
        first += 1
    top = hi[1:] != "9" * n
    if first <= last - top:
        alts.append(f"{_digit_class(first, last - top)} {_digits(n)}".strip())
    if top:
        alts += [f'"{hi[0]}" {rest}'.strip() for rest in _same_length_parts("0" * n, hi[1:])]
    return alts


def _uint_by_length(lo: int, hi: int) -> list[tuple[int, list[str]]]:
    """The decimal forms (no leading zeros) of lo..hi, grouped by their number of digits."""
    out = []
    for length in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (length - 1) if length > 1 else 0)
        b = min(hi, 10**length - 1)
        if a <= b:
            out.append((length, _same_length(str(a), str(b))))
    return out


def _uint_range(lo: int, hi: int) -> list[str]:
    alts = []
    run: list[int] = []  # lengths whose every digit string is in range, merged into one alternative

    def flush() -> None:
        if run:
            tail = f" [0-9]{_quantifier(run[0] - 1, run[-1] - 1)}" if run[-1] > 1 else ""
            alts.append("[1-9]" + tail)
            run.clear()

    for length, forms in _uint_by_length(lo, hi):
        if forms == [f"[1-9] {_digits(length - 1)}".strip()]:
            run.append(length)
            continue
        flush()
        alts += forms
    flush()
    return alts


# ---------------------------------------------------------------------------------------------------
# The compiler
# ---------------------------------------------------------------------------------------------------


def _pointer(base: str, *segments: str | int) -> str:
    return base + "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in segments)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "unknown"


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


class _Rules:
    """The grammar's rules by name; identical bodies share one rule."""

    def __init__(self) -> None:
        self._bodies: dict[str, str] = {}
        self._by_body: dict[str, str] = {}
        self._taken = {"root", *_BUILTINS}

    def reserve(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9]+", "-", hint).strip("-")[:48].strip("-") or "r"
        if not base[0].isalpha():
            base = "r-" + base
        name, n = base, 1
        while name in self._taken:
            n += 1
            name = f"{base}-{n}"
        self._taken.add(name)
        return name

    def define(self, name: str, body: str) -> None:
        self._bodies[name] = body
        self._by_body.setdefault(body, name)

    def add(self, hint: str, body: str) -> str:
        if body not in self._by_body:
            self.define(self.reserve(hint), body)
        return self._by_body[body]

    def builtin(self, name: str) -> str:
        if name not in self._bodies:
            body, uses = _BUILTINS[name]
            self.define(name, body)
            for used in uses:
                self.builtin(used)
        return name

    def render(self) -> str:
        order = ["root", *(n for n in self._bodies if n != "root")]
        return "".join(f"{n} ::= {self._bodies[n]}\n" for n in order)


class _Compiler:
    def __init__(self, root: dict[str, Any], param: str) -> None:
        self.root = root
        self.param = param
        self.rules = _Rules()
        # Before 2020-12, `items` may be an array of schemas and `additionalItems` is what follows.
        self.old_draft = bool(re.search(r"draft-0\d|draft/2019-09", str(root.get("$schema", ""))))
        self._ref_names: dict[str, str] = {}
        # $ref targets entered since the grammar last wrote a bracket: meeting one again would be a rule
        # that calls itself before consuming anything, which matches nothing (llama.cpp rejects it).
        self._unguarded: set[str] = set()

    # -- errors --------------------------------------------------------------------------------------

    def _refuse(self, what: str, ptr: str, why: str = "") -> NoReturn:
        message = f"{what} at {ptr} is not supported in a JSON schema" + (f": {why}" if why else "")
        raise InvalidArgument(message, code="unsupported_schema", param=self.param)

    # -- entry ---------------------------------------------------------------------------------------

    def grammar(self) -> str:
        self._ref_names["#"] = "root"
        self._unguarded.add("#")
        self.rules.define("root", self._expr(self.root, "#", "root", 0))
        return self.rules.render()

    def _symbol(self, schema: Any, ptr: str, hint: str, depth: int) -> str:
        """One grammar symbol for `schema` (a rule, unless the expression is a single atom)."""
        expr = self._expr(schema, ptr, hint, depth)
        return expr if _is_atom(expr) else self.rules.add(hint, expr)

    def _inside(self, schema: Any, ptr: str, hint: str, depth: int) -> str:
        """The symbol of a value written inside brackets, where recursion is safe again."""
        saved, self._unguarded = self._unguarded, set()
        try:
            return self._symbol(schema, ptr, hint, depth + 1)
        finally:
            self._unguarded = saved

    def _expr(self, schema: Any, ptr: str, hint: str, depth: int) -> str:
        if depth > _MAX_DEPTH:
            raise InvalidArgument(
                f"the JSON schema at {ptr} is nested more than {_MAX_DEPTH} levels deep",
                code="unsupported_schema",
                param=self.param,
            )
        if schema is True:
            return self.rules.builtin("value")
        if schema is False:
            self._refuse("false", ptr, "no value can match it")
        if not isinstance(schema, dict):
            self._refuse(json.dumps(schema)[:40], ptr, "a schema must be an object or a boolean")
        self._check_keywords(schema, ptr)
        if "$ref" in schema:
            return self._ref(schema, ptr, depth)
        if "allOf" in schema:
            return self._all_of(schema, ptr, hint, depth)
        if "anyOf" in schema or "oneOf" in schema:
            return self._union(schema, ptr, hint, depth)
        if "enum" in schema or "const" in schema:
            return self._enum(schema, ptr)
        alternatives = [self._typed(t, schema, ptr, hint, depth) for t in self._types(schema, ptr)]
        return " | ".join(alternatives)

    def _check_keywords(self, schema: dict[str, Any], ptr: str) -> None:
        for key, value in schema.items():
            if key not in _KEYWORDS or key == ("prefixItems" if self.old_draft else "additionalItems"):
                self._refuse(json.dumps(key), ptr)
            if key == "$id" and ptr != "#":
                self._refuse('"$id"', ptr, "a nested $id changes what $ref means")
            if key == "discriminator" and "oneOf" not in schema and "anyOf" not in schema:
                self._refuse('"discriminator"', ptr, "it belongs beside oneOf or anyOf")
            if key == "format" and (not isinstance(value, str) or value not in _FORMATS):
                self._refuse(f'"format": {json.dumps(value)}', ptr)
            if key == "uniqueItems" and value is not False:
                self._refuse('"uniqueItems"', ptr)

    def _only(self, schema: dict[str, Any], ptr: str, keyword: str, allowed: Iterable[str]) -> None:
        for key in schema:
            if key not in _ANNOTATIONS and key not in _DEFS and key != keyword and key not in allowed:
                self._refuse(f'"{key}" beside "{keyword}"', ptr)

    # -- references ----------------------------------------------------------------------------------

    def _resolve(self, schema: dict[str, Any], ptr: str) -> tuple[str, Any]:
        """The pointer and the schema that a `$ref` names; only references inside this document."""
        self._only(schema, ptr, "$ref", ())
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            self._refuse('"$ref"', ptr, "only references inside the schema (#/...) are supported")
        fragment = unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            self._refuse('"$ref"', ptr, "anchors are not supported, only JSON pointers")
        node: Any = self.root
        for raw in fragment.split("/")[1:]:
            segment = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and segment in node:
                node = node[segment]
            elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
                node = node[int(segment)]
            else:
                self._refuse('"$ref"', ptr, f"{ref} names nothing in the schema")
        return "#" + fragment, node

    def _ref(self, schema: dict[str, Any], ptr: str, depth: int) -> str:
        target_ptr, target = self._resolve(schema, ptr)
        if target_ptr in self._unguarded:
            self._refuse('"$ref"', ptr, f"it reaches {target_ptr} again before any JSON is written")
        if target_ptr in self._ref_names:
            return self._ref_names[target_ptr]
        name = self.rules.reserve(target_ptr.rsplit("/", 1)[-1])
        self._ref_names[target_ptr] = name
        self._unguarded.add(target_ptr)
        try:
            self.rules.define(name, self._expr(target, target_ptr, name, depth + 1))
        finally:
            self._unguarded.discard(target_ptr)
        return name

    # -- combinators ---------------------------------------------------------------------------------

    def _union(self, schema: dict[str, Any], ptr: str, hint: str, depth: int) -> str:
        keyword = "anyOf" if "anyOf" in schema else "oneOf"
        self._only(schema, ptr, keyword, ("discriminator",))
        branches = schema[keyword]
        if not isinstance(branches, list) or not branches:
            self._refuse(f'"{keyword}"', ptr, "it must be a non-empty array of schemas")
        symbols = [
            self._symbol(b, _pointer(ptr, keyword, i), f"{hint}-{i}", depth + 1)
            for i, b in enumerate(branches)
            if b is not False
        ]
        if keyword == "oneOf":
            # The grammar writes one branch; that is exactly one match only if no document fits two.
            for i in range(len(branches)):
                for j in range(i + 1, len(branches)):
                    if not self._disjoint(branches[i], branches[j], 0):
                        self._refuse(
                            '"oneOf"',
                            ptr,
                            f"branches {i} and {j} may both match; only branches that exclude each other "
                            "(by type, value, or a required property's const) are supported",
                        )
        if not symbols:
            self._refuse(f'"{keyword}"', ptr, "no branch admits a value")
        return " | ".join(dict.fromkeys(symbols))

    def _follow(self, schema: Any) -> Any:
        for _ in range(32):
            if not (isinstance(schema, dict) and isinstance(schema.get("$ref"), str)):
                break
            fragment = unquote(schema["$ref"][1:])
            node: Any = self.root
            for raw in fragment.split("/")[1:]:
                segment = raw.replace("~1", "/").replace("~0", "~")
                node = node.get(segment) if isinstance(node, dict) else None
            schema = node
        return schema

    def _kinds(self, schema: dict[str, Any]) -> set[str]:
        """JSON types a schema may admit (integer folded into number); a superset is safe."""
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            return {"number" if t == "integer" else str(t) for t in types}
        values = self._values(schema)
        if values is not None:
            return {"number" if _json_kind(v) == "integer" else _json_kind(v) for v in values}
        return {"object", "array", "string", "number", "boolean", "null"}

    @staticmethod
    def _values(schema: dict[str, Any]) -> list[Any] | None:
        if "const" in schema:
            return [schema["const"]]
        return list(schema["enum"]) if isinstance(schema.get("enum"), list) else None

    def _disjoint(self, a: Any, b: Any, depth: int) -> bool:
        """Whether no document can match both schemas; False when unsure."""
        a, b = self._follow(a), self._follow(b)
        if a is False or b is False:
            return True
        if not isinstance(a, dict) or not isinstance(b, dict) or depth > 8:
            return False
        for x, y in ((a, b), (b, a)):
            for keyword in ("anyOf", "oneOf"):
                if isinstance(x.get(keyword), list):
                    return all(self._disjoint(branch, y, depth + 1) for branch in x[keyword])
        if not self._kinds(a) & self._kinds(b):
            return True
        va, vb = self._values(a), self._values(b)
        if va is not None and vb is not None and not any(_same_json(x, y) for x in va for y in vb):
            return True
        if self._kinds(a) == self._kinds(b) == {"object"}:
            pa, pb = a.get("properties") or {}, b.get("properties") or {}
            both = set(self._required(a, "#")) & set(self._required(b, "#"))
            return any(p in pa and p in pb and self._disjoint(pa[p], pb[p], depth + 1) for p in both)
        return False

    def _all_of(self, schema: dict[str, Any], ptr: str, hint: str, depth: int) -> str:
        branches = schema["allOf"]
        if not isinstance(branches, list) or not branches:
            self._refuse('"allOf"', ptr, "it must be a non-empty array of schemas")
        parts = [(b, _pointer(ptr, "allOf", i)) for i, b in enumerate(branches)]
        rest = {k: v for k, v in schema.items() if k != "allOf" and k not in _ANNOTATIONS and k not in _DEFS}
        if rest:
            parts.insert(0, (rest, ptr))
        if len(parts) == 1:
            return self._expr(parts[0][0], parts[0][1], hint, depth + 1)
        # Several branches: only objects can be intersected, by uniting their properties.
        merged = _Merged()
        for branch, branch_ptr in parts:
            self._merge(branch, branch_ptr, merged, depth + 1)
        return self._object_body(merged, None, ptr, ptr, hint, depth)

    def _merge(self, branch: Any, ptr: str, into: _Merged, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self._refuse('"allOf"', ptr, f"it is nested more than {_MAX_DEPTH} levels deep")
        if branch is True:
            return
        if not isinstance(branch, dict):
            self._refuse('"allOf"', ptr, "only object schemas can be combined")
        self._check_keywords(branch, ptr)
        if "$ref" in branch:
            target_ptr, target = self._resolve(branch, ptr)
            if target_ptr in self._unguarded:
                self._refuse('"$ref"', ptr, f"it reaches {target_ptr} again before any JSON is written")
            self._unguarded.add(target_ptr)
            try:
                self._merge(target, target_ptr, into, depth + 1)
            finally:
                self._unguarded.discard(target_ptr)
            return
        for key in branch:
            if key not in _OBJECT_KEYWORDS | _ANNOTATIONS | _DEFS | {"type", "allOf"}:
                self._refuse('"allOf"', ptr, f"only object schemas can be combined, not {key!r}")
        if branch.get("type", "object") not in ("object", ["object"]):
            self._refuse('"allOf"', ptr, "only object schemas can be combined")
        if branch.get("additionalProperties", True) not in (True, {}):
            self._refuse('"additionalProperties"', ptr, "it cannot be combined with allOf")
        for name, sub in self._properties(branch, ptr).items():
            if name in into.properties and into.properties[name][0] != sub:
                self._refuse('"allOf"', ptr, f"property {name!r} is declared twice")
            into.properties.setdefault(name, (sub, _pointer(ptr, "properties", name)))
        into.required.extend(self._required(branch, ptr))
        into.free = into.free and "properties" not in branch
        nested = branch.get("allOf", [])
        if not isinstance(nested, list):
            self._refuse('"allOf"', ptr, "it must be an array of schemas")
        for i, sub_branch in enumerate(nested):
            self._merge(sub_branch, _pointer(ptr, "allOf", i), into, depth + 1)

    def _enum(self, schema: dict[str, Any], ptr: str) -> str:
        keyword = "enum" if "enum" in schema else "const"
        self._only(schema, ptr, keyword, ("type", "enum", "const"))
        if "enum" in schema:
            if not isinstance(schema["enum"], list):
                self._refuse('"enum"', ptr, "it must be an array")
            values = list(schema["enum"])
            if "const" in schema:
                values = [v for v in values if _same_json(v, schema["const"])]
        else:
            values = [schema["const"]]
        if "type" in schema:
            types = self._types(schema, ptr)
            values = [
                v
                for v in values
                if _json_kind(v) in types or (_json_kind(v) == "integer" and "number" in types)
            ]
        literals = []
        for v in values:
            try:
                literals.append(_literal(_json_text(v)))
            except (ValueError, TypeError):
                self._refuse(f'"{keyword}"', ptr, f"{v!r} is not JSON")
        if not literals:
            self._refuse(f'"{keyword}"', ptr, "no value is left to choose")
        return " | ".join(dict.fromkeys(literals))

    # -- types ---------------------------------------------------------------------------------------

    def _types(self, schema: dict[str, Any], ptr: str) -> list[str]:
        declared = schema.get("type")
        if declared is None:
            # No type: what the keywords describe, or any value when they describe nothing.
            inferred = [
                t
                for t, words in (
                    ("object", _OBJECT_KEYWORDS),
                    ("array", _ARRAY_KEYWORDS),
                    ("string", _STRING_KEYWORDS),
                    ("number", _NUMBER_KEYWORDS),
                )
                if words & schema.keys()
            ]
            return inferred or ["any"]
        types = declared if isinstance(declared, list) else [declared]
        for t in types:
            if t not in _TYPES:
                self._refuse('"type"', ptr, f"{json.dumps(t)} is not a JSON type")
        if not types:
            self._refuse('"type"', ptr, "it lists no type")
        if "number" in types:
            types = [t for t in types if t != "integer"]
        return list(dict.fromkeys(types))

    def _typed(self, kind: str, schema: dict[str, Any], ptr: str, hint: str, depth: int) -> str:
        if kind == "object":
            return self._object(schema, ptr, hint, depth)
        if kind == "array":
            return self._array(schema, ptr, hint, depth)
        if kind == "string":
            return self._string(schema, ptr, hint)
        if kind in ("number", "integer"):
            return self._numeric(schema, ptr, integer=kind == "integer")
        return self.rules.builtin({"any": "value"}.get(kind, kind))

    def _count(self, schema: dict[str, Any], keyword: str, ptr: str) -> int | None:
        value = schema.get(keyword)
        if value is None:
            return None
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole or value < 0:
            self._refuse(f'"{keyword}"', ptr, "it must be a non-negative integer")
        if keyword.startswith("min") and value > _MAX_REPEAT:
            self._refuse(f'"{keyword}"', ptr, f"the grammar cannot count past {_MAX_REPEAT}")
        # A larger maximum is narrowed to what llama.cpp can count.
        return min(int(value), _MAX_REPEAT)

    def _optional(self, expr: str, hint: str) -> str:
        """`expr` or nothing. Only atoms are quantified: llama.cpp refuses a quantifier on a parenthesised
        group whose contents (rules made inside it included) pass its limit of about 2000."""
        return f"{expr}?" if _is_atom(expr) else f"{self.rules.add(hint, expr)}?"

    def _choice(self, alternatives: Iterable[str], hint: str) -> str:
        """Alternatives as one element of a sequence; an empty alternative makes the choice optional."""
        alts = list(dict.fromkeys(alternatives))
        nonempty = [a for a in alts if a]
        if not nonempty:
            return ""
        if len(nonempty) < len(alts):
            return self._optional(" | ".join(nonempty), hint)
        return _group(nonempty)

    def _repeat(self, atom: str, lo: int, hi: int | None) -> str:
        """`atom` repeated lo..hi times; a large count gets a rule of its own (see _optional)."""
        if max(lo, hi or 0) <= 100:
            return atom + _quantifier(lo, hi)
        return self.rules.add(f"{atom}-{lo}-{hi or 'more'}", atom + _quantifier(lo, hi))

    # -- strings -------------------------------------------------------------------------------------

    def _string(self, schema: dict[str, Any], ptr: str, hint: str) -> str:
        for leader in ("format", "pattern"):
            if leader in schema:
                for other in ("pattern", "minLength", "maxLength"):
                    if other != leader and other in schema:
                        self._refuse(f'"{other}" beside "{leader}"', ptr)
        quote = r'"\""'
        if "format" in schema:
            fmt = schema["format"]
            if fmt.startswith("uuid") and fmt != "uuid":
                # pydantic's UUID1..UUID8: that version digit and the RFC 4122 variant.
                h = self.rules.builtin("hex")
                body = f'{h}{{8}} "-" {h}{{4}} "-" "{fmt[4]}" {h}{{3}} "-" [89abAB] {h}{{3}} "-" {h}{{12}}'
                return f"{quote} {self.rules.add(fmt, body)} {quote}"
            return f"{quote} {self.rules.builtin(fmt)} {quote}"
        if "pattern" in schema:
            return self._pattern(schema["pattern"], ptr, hint)
        lo = self._count(schema, "minLength", ptr) or 0
        hi = self._count(schema, "maxLength", ptr)
        if hi is not None and lo > hi:
            self._refuse('"minLength"', ptr, 'it is more than "maxLength"')
        if lo == 0 and hi is None:
            return self.rules.builtin("string")
        return f"{quote} {self._repeat(self.rules.builtin('char'), lo, hi)} {quote}"

    def _pattern(self, pattern: Any, ptr: str, hint: str) -> str:
        if not isinstance(pattern, str):
            self._refuse('"pattern"', ptr, "it must be a string")
        try:
            branches = _RegexParser(pattern).parse()
        except _PatternError as e:
            self._refuse('"pattern"', ptr, f"{e} (in {pattern!r})")
        alternatives = []
        for start, end, body in branches:
            # An unanchored side may hold anything: re.search finds the match wherever it is.
            free = self.rules.builtin("char") + "*"
            parts = ["" if start else free, self._regex(body, f"{hint}-pattern"), "" if end else free]
            alternatives.append(" ".join(p for p in parts if p))
        return " ".join(p for p in (r'"\""', self._choice(alternatives, f"{hint}-pattern"), r'"\""') if p)

    def _regex(self, node: _Node, hint: str) -> str:
        """A sequence-safe GBNF expression for a pattern node ("" when it matches only the empty string)."""
        if isinstance(node, _Set):
            return _group(_set_alternatives(node.ranges))
        if isinstance(node, _Seq):
            return " ".join(p for p in (self._regex(n, hint) for n in node.items) if p)
        if isinstance(node, _Alt):
            return self._choice((self._regex(b, hint) for b in node.branches), hint)
        body = self._regex(node.item, hint)
        if not body:
            return ""
        # llama.cpp copies what it repeats, so anything longer than one atom becomes a rule first.
        atom = body if _is_atom(body) else self.rules.add(hint, body)
        return self._repeat(atom, node.lo, node.hi)

    # -- numbers -------------------------------------------------------------------------------------

    def _numeric(self, schema: dict[str, Any], ptr: str, *, integer: bool) -> str:
        lower: list[tuple[Fraction, bool, str]] = []
        upper: list[tuple[Fraction, bool, str]] = []
        for keyword in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            if keyword not in schema:
                continue
            value = schema[keyword]
            finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
            if isinstance(value, bool) or not finite:
                self._refuse(
                    f'"{keyword}"', ptr, "it must be a number (the draft-04 boolean form is not supported)"
                )
            bound = Fraction(value)
            if abs(bound) > _INT_CAP:
                self._refuse(
                    f'"{keyword}"', ptr, f"bounds of more than {_MAX_DIGITS} digits are not supported"
                )
            if not integer and bound.denominator != 1:
                self._refuse(f'"{keyword}"', ptr, "a number's bounds must be whole numbers")
            side = lower if keyword in ("minimum", "exclusiveMinimum") else upper
            side.append((bound, keyword.startswith("exclusive"), keyword))
        if not lower and not upper:
            return self.rules.builtin("integer" if integer else "number")
        named = " and ".join(f'"{k}"' for _, _, k in lower[:1] + upper[:1])
        if integer:
            lo = max((math.floor(b) + 1 if ex else math.ceil(b) for b, ex, _ in lower), default=-_INT_CAP)
            hi = min((math.ceil(b) - 1 if ex else math.floor(b) for b, ex, _ in upper), default=_INT_CAP)
            if lo > hi:
                self._refuse(named, ptr, "the bounds admit no integer")
            return " | ".join(self._integer_range(lo, hi))
        # The strictest bound on each side; at equal values the exclusive one is stricter.
        lo_b = max(lower, key=lambda t: (t[0], t[1]), default=None)
        hi_b = min(upper, key=lambda t: (t[0], not t[1]), default=None)
        alts = self._number_range(
            None if lo_b is None else int(lo_b[0]),
            bool(lo_b and lo_b[1]),
            None if hi_b is None else int(hi_b[0]),
            bool(hi_b and hi_b[1]),
        )
        if not alts:
            self._refuse(named, ptr, "the bounds admit no number")
        return " | ".join(alts)

    @staticmethod
    def _integer_range(lo: int, hi: int) -> list[str]:
        alts = _uint_range(max(lo, 0), hi) if hi >= 0 else []
        if lo < 0:
            alts.append('"-" ' + _group(_uint_range(max(-hi, 1), -lo)))
        return alts

    def _number_range(self, lo: int | None, lo_ex: bool, hi: int | None, hi_ex: bool) -> list[str]:
        """Decimals without exponent between integer bounds, as non-negative and negative parts."""
        alts = []
        p_lo, p_lo_ex = (lo, lo_ex) if lo is not None and lo >= 0 else (0, False)
        p_hi, p_hi_ex = (hi, hi_ex) if hi is not None else (_INT_CAP, False)
        if p_lo < p_hi or (p_lo == p_hi and not p_lo_ex and not p_hi_ex):
            alts += self._magnitudes(p_lo, p_lo_ex, p_hi, p_hi_ex)
        if lo is None or lo < 0:
            # Negative values by magnitude; "-0" is never written, so magnitudes stay above zero.
            m_lo, m_lo_ex = (-hi, hi_ex) if hi is not None and hi < 0 else (0, True)
            m_hi, m_hi_ex = (-lo, lo_ex) if lo is not None else (_INT_CAP, False)
            if m_lo < m_hi or (m_lo == m_hi and not m_lo_ex and not m_hi_ex):
                alts.append('"-" ' + _group(self._magnitudes(m_lo, m_lo_ex, m_hi, m_hi_ex)))
        return alts

    def _magnitudes(self, lo: int, lo_ex: bool, hi: int, hi_ex: bool) -> list[str]:
        """Non-negative decimals from lo to hi: the integer part settles the comparison except at a bound,
        where the fraction must be non-zero (above an exclusive lower bound) or zero (at the maximum)."""
        alts = []
        for length, forms in _uint_by_length(lo + lo_ex, hi - 1) if lo + lo_ex <= hi - 1 else []:
            room = _DECIMAL_DIGITS - length
            fraction = f' ( "." [0-9]{_quantifier(1, room)} )?' if room > 0 else ""
            alts.append(_group(forms) + fraction)
        if lo_ex and lo < hi and _DECIMAL_DIGITS > len(str(lo)):
            alts.append(f'"{lo}." {self._nonzero_fraction(_DECIMAL_DIGITS - len(str(lo)))}')
        if not hi_ex and (lo < hi or not lo_ex):
            room = _DECIMAL_DIGITS - len(str(hi))
            alts.append(f'"{hi}"' + (f' ( "." "0"{_quantifier(1, room)} )?' if room > 0 else ""))
        return alts

    def _nonzero_fraction(self, room: int) -> str:
        """A rule for 1..room digits that are not all zeros."""
        name = self.rules.add("nonzero-fraction-1", "[1-9]")
        for n in range(2, room + 1):
            name = self.rules.add(f"nonzero-fraction-{n}", f'[1-9] [0-9]{_quantifier(0, n - 1)} | "0" {name}')
        return name

    # -- objects -------------------------------------------------------------------------------------

    def _properties(self, schema: dict[str, Any], ptr: str) -> dict[str, Any]:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            self._refuse('"properties"', ptr, "it must be an object")
        return properties

    def _required(self, schema: dict[str, Any], ptr: str) -> list[str]:
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            self._refuse('"required"', ptr, "it must be an array of strings")
        return required

    def _object(self, schema: dict[str, Any], ptr: str, hint: str, depth: int) -> str:
        merged = _Merged()
        for name, sub in self._properties(schema, ptr).items():
            merged.properties[name] = (sub, _pointer(ptr, "properties", name))
        merged.required = self._required(schema, ptr)
        merged.free = "properties" not in schema
        additional = schema.get("additionalProperties")
        if additional is not None and not isinstance(additional, bool | dict):
            self._refuse('"additionalProperties"', ptr, "it must be a schema")
        return self._object_body(merged, additional, _pointer(ptr, "additionalProperties"), ptr, hint, depth)

    def _object_body(
        self, merged: _Merged, additional: Any, additional_ptr: str, ptr: str, hint: str, depth: int
    ) -> str:
        """Required properties in schema order, then the optional ones, then (if the schema asks for them,
        or declares no properties at all) undeclared ones."""
        required = list(dict.fromkeys(merged.required))
        extra_schema = True if additional in (None, {}) else additional
        for name in required:
            if merged.properties.get(name, (None,))[0] is False or (
                name not in merged.properties and additional is False
            ):
                self._refuse('"required"', ptr, f"{name!r} is required but not allowed")
        members = {n: s for n, s in merged.properties.items() if s[0] is not False}
        undeclared = {n: (extra_schema, additional_ptr) for n in required if n not in members}
        mandatory = [n for n in members if n in required] + list(undeclared)
        optional = [n for n in members if n not in required]
        space = self.rules.builtin("space")

        def member(name: str, sub: Any, sub_ptr: str) -> str:
            value = self._inside(sub, sub_ptr, f"{hint}-{name}", depth)
            key = _literal(_json_text(name))
            return self.rules.add(f"{hint}-{name}-kv", f'{key} {space} ":" {space} {value} {space}')

        kv = {n: member(n, *({**members, **undeclared}[n])) for n in mandatory + optional}
        extra = None
        if additional is True or isinstance(additional, dict) or (additional is None and merged.free):
            key = self._key_except([*members, *undeclared], hint)
            value = self._inside(extra_schema, additional_ptr, f"{hint}-value", depth)
            extra = self.rules.add(f"{hint}-extra-kv", f'{key} {space} ":" {space} {value} {space}')
        comma = f'"," {space}'
        tails = [f"( {comma} {kv[n]} )?" for n in optional] + ([f"( {comma} {extra} )*"] if extra else [])
        if mandatory:
            inner = " ".join([f" {comma} ".join(kv[n] for n in mandatory), *tails])
        else:
            # Nothing is required: the first property written may be any one, with no comma before it, and
            # rest[i] is what may follow it (a rule each, so that the grammar grows linearly).
            rest = [""] * (len(tails) + 1)
            for i in range(len(tails) - 1, -1, -1):
                rest[i] = self.rules.add(f"{hint}-rest", f"{tails[i]} {rest[i + 1]}".strip())
            firsts = [f"{kv[n]} {rest[i + 1]}".strip() for i, n in enumerate(optional)]
            firsts += [f"{extra} {rest[-2]}"] if extra else []
            inner = self._choice([*firsts, ""], f"{hint}-members")
        return " ".join(p for p in ('"{"', space, inner, '"}"') if p)

    def _key_except(self, names: list[str], hint: str) -> str:
        """A key that is none of `names`. Excluding names exactly is only simple over raw characters, so
        with names to exclude the key is written without escapes."""
        if not names:
            return self.rules.builtin("string")
        raw_char = self.rules.builtin("raw-char")
        # A trie over the names: each node is the set of name suffixes still possible.
        # Names that need an escape cannot be written anyway.
        root = frozenset(n for n in names if not _minus(_points(n), _RAW))
        rule_of = {root: self.rules.reserve(f"{hint}-key")}
        pending = [root]
        while pending:
            node = pending.pop()
            firsts = sorted({s[0] for s in node if s})
            others = _minus(_RAW, _points(firsts))
            alts = [f"{_char_class(others)} {raw_char}*"]
            for c in firsts:
                child = frozenset(s[1:] for s in node if s and s[0] == c)
                if child not in rule_of:
                    rule_of[child] = self.rules.reserve(f"{hint}-key")
                    pending.append(child)
                alts.append(f"{_literal(c)} {rule_of[child]}")
            # The key may end here unless the text so far is one of the names.
            self.rules.define(rule_of[node], ("" if "" in node else "| ") + " | ".join(alts))
        return rf'"\"" {rule_of[root]} "\""'

    # -- arrays --------------------------------------------------------------------------------------

    def _array(self, schema: dict[str, Any], ptr: str, hint: str, depth: int) -> str:
        items = schema.get("items", True)
        if self.old_draft and isinstance(items, list):
            prefix, rest, rest_ptr = (
                items,
                schema.get("additionalItems", True),
                _pointer(ptr, "additionalItems"),
            )
            prefix_key = "items"
        elif isinstance(items, list):
            self._refuse('"items"', ptr, "since draft 2020-12 an array of schemas is prefixItems")
        else:
            prefix, rest, rest_ptr = schema.get("prefixItems", []), items, _pointer(ptr, "items")
            prefix_key = "prefixItems"
        if not isinstance(prefix, list):
            self._refuse(f'"{prefix_key}"', ptr, "it must be an array of schemas")
        lo = self._count(schema, "minItems", ptr) or 0
        hi = self._count(schema, "maxItems", ptr)
        if rest is False:
            hi = len(prefix) if hi is None else min(hi, len(prefix))
        if hi is not None and lo > hi:
            self._refuse('"minItems"', ptr, f"no array of at least {lo} items can match")
        # A prefix item that admits nothing ends the array there.
        used = next((i for i, p in enumerate(prefix) if p is False), len(prefix))
        if used < len(prefix):
            hi = used if hi is None else min(hi, used)
            if lo > hi:
                self._refuse('"minItems"', ptr, f"no array of at least {lo} items can match")
        count = used if hi is None else min(used, hi)
        space = self.rules.builtin("space")
        symbols = [
            self._inside(p, _pointer(ptr, prefix_key, i), f"{hint}-{i}", depth)
            for i, p in enumerate(prefix[:count])
        ]
        rest_symbol = None
        if (hi is None or hi > count) and count == used:
            rest_symbol = self._inside(rest, rest_ptr, f"{hint}-item", depth)

        # What may follow the first i items, built from the last prefix item back to the first.
        after = ""
        if rest_symbol is not None and (hi is None or hi > max(count, 1)):
            next_item = self.rules.add(f"{hint}-next", f'"," {space} {rest_symbol} {space}')
            since = max(count, 1)
            after = self._repeat(next_item, max(0, lo - since), None if hi is None else hi - since)
        for i in range(count - 1, 0, -1):
            step = f'"," {space} {symbols[i]} {space} {after}'.strip()
            after = step if i < lo else self._optional(step, f"{hint}-after-{i}")
        first = symbols[0] if symbols else rest_symbol
        if first is None or hi == 0:
            return f'"[" {space} "]"'
        items_expr = f"{first} {space} {after}".strip()
        return f'"[" {space} {items_expr if lo > 0 else self._optional(items_expr, f"{hint}-items")} "]"'


@dataclass
class _Merged:
    """An object's properties (schema and pointer by name), its required names, and whether it declares
    no properties at all (then it is free-form: undeclared properties are written too)."""

    properties: dict[str, tuple[Any, str]] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)
    free: bool = True


def schema_to_gbnf(schema: dict[str, Any], *, param: str = "response_format") -> str:
    """A GBNF grammar (root rule `root`) for JSON documents that `schema` accepts; InvalidArgument with
    code "unsupported_schema" for a schema the grammar cannot enforce exactly."""
    if not isinstance(schema, dict):
        raise InvalidArgument("the JSON schema must be an object", code="unsupported_schema", param=param)
    try:
        return _Compiler(schema, param).grammar()
    except RecursionError:
        raise InvalidArgument(
            "the JSON schema is nested more than Python can follow", code="unsupported_schema", param=param
        ) from None


def _json_object_grammar() -> str:
    rules = _Rules()
    rules.define("root", rules.builtin("object"))
    return rules.render()


JSON_OBJECT_GBNF: str = _json_object_grammar()
