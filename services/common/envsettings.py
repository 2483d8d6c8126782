"""Typed settings read from the environment: how every process of Jan Models declares and reads its
configuration.

A settings class declares its fields as annotated class attributes, in the order `--print-settings` lists
them; a field's value is the class attribute (its default) or a `setting(...)` (a default plus the names
it is read from, bounds, a description, converters). Shared field types carry their bounds in
`Annotated[T, setting(...)]`. Building an instance reads each field from the keyword given, else the
first of its variables that is set (`<env_prefix><NAME>` unless the field names its own), else its
default; every value, the defaults too, is converted to the field's type and checked. All problems are
raised together as one `SettingsError`, each naming the variable and the value it was read from.

Types: str, int, float, bool, Path, `Secret`, `Literal[...]`, `list[T]` (a variable separates items with
',' or the path separator) and `T | None` (an empty variable is None).

Why not pydantic-settings: importing pydantic and pydantic-settings costs every process about 20 MB of
resident memory before it does anything (measured: 23 MB in a bare interpreter), and the catalog, the
downloader and a runner use pydantic for nothing else. The gateway validates request bodies with pydantic,
but reads its settings this way too: one mechanism, one set of messages.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, ClassVar, Literal, TypeVar, Union

T = TypeVar("T")
MISSING: Any = object()
TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


class Secret:
    """A secret value: shown as ********** by repr, str and `--print-settings`, never in logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Setting:
    """How a field is read and checked; in `Annotated` metadata, the bounds a shared type carries."""

    default: Any = MISSING
    default_factory: Callable[[], Any] | None = None
    env: tuple[str, ...] = ()  # the variables read, in order (default: <env_prefix><NAME>)
    description: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    before: Callable[[Any], Any] | None = None  # on the value as given or read, before conversion
    after: Callable[[Any], Any] | None = None  # on the converted value; raises ValueError to refuse it

    def merged(self, own: Setting) -> Setting:
        """This (a type's metadata) overridden by what a field sets itself."""
        changes = {
            f.name: getattr(own, f.name) for f in fields(own) if getattr(own, f.name) != _BLANK_VALUES[f.name]
        }
        return replace(self, **changes)


_BLANK_VALUES = {f.name: f.default for f in fields(Setting)}


def setting(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    env: tuple[str, ...] = (),
    description: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    before: Callable[[Any], Any] | None = None,
    after: Callable[[Any], Any] | None = None,
) -> Any:
    """A field's `Setting` (typed Any so that it can stand as the attribute's default)."""
    return Setting(
        default=default,
        default_factory=default_factory,
        env=tuple(env),
        description=description,
        ge=ge,
        gt=gt,
        le=le,
        min_length=min_length,
        max_length=max_length,
        pattern=pattern,
        before=before,
        after=after,
    )


@dataclass(frozen=True)
class Problem:
    variable: str  # the variable (or keyword) the bad value came from
    value: Any  # what it was given (None when the class hides inputs)
    message: str

    def __str__(self) -> str:
        shown = "" if self.value is MISSING else f"={self.value!r}"
        return f"{self.variable}{shown}: {self.message}"


class SettingsError(ValueError):
    """Every bad value of one settings class, each naming where it was read from."""

    def __init__(self, cls: type, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(f"invalid {cls.__name__}:\n  " + "\n  ".join(map(str, problems)))


@dataclass(frozen=True)
class Field:
    name: str
    type: Any
    spec: Setting

    @property
    def secret(self) -> bool:
        return self.type is Secret or Secret in typing.get_args(self.type)

    def variables(self, prefix: str) -> tuple[str, ...]:
        return self.spec.env or (f"{prefix}{self.name.upper()}",)

    def default(self) -> Any:
        if self.spec.default_factory is not None:
            return self.spec.default_factory()
        if self.spec.default is MISSING:
            raise TypeError(f"the setting {self.name} has no default")
        return self.spec.default


class Settings:
    """Base of a settings class (see the module's docstring). Unknown variables are ignored."""

    env_prefix: ClassVar[str] = ""
    _fields_cache: ClassVar[dict[type, dict[str, Field]]] = {}

    def __init__(self, **given: Any) -> None:
        known = self.settings_fields()
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {', '.join(unknown)}")
        problems: list[Problem] = []
        for name, field in known.items():
            source, value = name, MISSING
            if name in given:
                value = given[name]
            else:
                for variable in field.variables(self.env_prefix):
                    if variable in os.environ:
                        source, value = variable, os.environ[variable]
                        break
            if value is MISSING:
                value = field.default()
            try:
                converted = _check(field, value)
            except (ValueError, TypeError) as exc:
                shown = MISSING if field.secret else value  # a secret's value is never shown
                problems.append(Problem(source, shown, str(exc)))
                continue
            setattr(self, name, converted)
        if not problems:
            try:
                self.check()
            except ValueError as exc:
                problems.append(Problem(type(self).__name__, MISSING, str(exc)))
        if problems:
            raise SettingsError(type(self), problems)

    def check(self) -> None:
        """Checks across fields, once every field is read; raise ValueError to refuse the settings."""

    @classmethod
    def settings_fields(cls) -> dict[str, Field]:
        """The fields in declaration order, base classes first."""
        cached = Settings._fields_cache.get(cls)
        if cached is not None:
            return cached
        hints = typing.get_type_hints(cls, include_extras=True)
        result: dict[str, Field] = {}
        for klass in reversed(cls.__mro__):
            for name in inspect.get_annotations(klass):
                hint = hints[name]
                if typing.get_origin(hint) is ClassVar or name.startswith("_"):
                    continue
                result[name] = _field(name, hint, cls.__dict__.get(name, getattr(cls, name, MISSING)))
        Settings._fields_cache[cls] = result
        return result

    @classmethod
    def default(cls, name: str) -> Any:
        """A field's default value, as converted."""
        return _check(cls.settings_fields()[name], cls.settings_fields()[name].default())

    def dump(self) -> dict[str, Any]:
        """The values as JSON types, secrets masked."""
        return {name: _plain(getattr(self, name)) for name in self.settings_fields()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.dump(), indent=indent)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.settings_fields())
        return f"{type(self).__name__}({shown})"


def _field(name: str, hint: Any, attribute: Any) -> Field:
    spec = Setting()
    if typing.get_origin(hint) is typing.Annotated:
        base, *extras = typing.get_args(hint)
        for extra in extras:
            if isinstance(extra, Setting):
                spec = spec.merged(extra)
        hint = base  # Annotated flattens: an alias of an alias lists the inner metadata first
    if isinstance(attribute, Setting):
        spec = spec.merged(attribute)
    elif attribute is not MISSING:
        spec = replace(spec, default=attribute)
    return Field(name, hint, spec)


def _check(field: Field, value: Any) -> Any:
    spec = field.spec
    if spec.before is not None:
        value = spec.before(value)
    value = _convert(field.type, value)
    if value is None:
        return None
    _bounds(spec, value)
    return spec.after(value) if spec.after is not None else value


def _convert(kind: Any, value: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, UnionType):
        others = [a for a in args if a is not NoneType]
        if value is None or value == "":
            if NoneType in args:
                return None
        if len(others) != 1:
            raise TypeError(f"unsupported setting type {kind!r}")
        return _convert(others[0], value)
    if origin is Literal:
        if value in args:
            return value
        choices = " or ".join(repr(a) for a in args)
        raise ValueError(f"Input should be {choices}")
    if origin is list:
        if isinstance(value, str):
            value = split_list(value)
        if not isinstance(value, list | tuple):
            raise ValueError("Input should be a valid list")
        return [_convert(args[0], item) for item in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
            return value.strip().lower() in TRUE
        raise ValueError("Input should be a valid boolean")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("Input should be a valid integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError("Input should be a valid integer")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError("Input should be a valid number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("Input should be a valid string")
    if kind is Path:
        if isinstance(value, str | os.PathLike):
            return Path(value)
        raise ValueError("Input should be a valid path")
    if kind is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        raise ValueError("Input should be a valid string")
    raise TypeError(f"unsupported setting type {kind!r}")


def _bounds(spec: Setting, value: Any) -> None:
    if spec.ge is not None and value < spec.ge:
        raise ValueError(f"Input should be greater than or equal to {_number(spec.ge)}")
    if spec.gt is not None and value <= spec.gt:
        raise ValueError(f"Input should be greater than {_number(spec.gt)}")
    if spec.le is not None and value > spec.le:
        raise ValueError(f"Input should be less than or equal to {_number(spec.le)}")
    if isinstance(value, str):
        if spec.min_length is not None and len(value) < spec.min_length:
            raise ValueError(f"String should have at least {spec.min_length} characters")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise ValueError(f"String should have at most {spec.max_length} characters")
        if spec.pattern is not None and not re.search(spec.pattern, value):
            raise ValueError(f"String should match pattern '{spec.pattern}'")


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def split_list(value: object) -> object:
    """A list given in one variable: items separated by ',' or the path separator, blanks dropped."""
    if isinstance(value, str):
        return [p.strip() for chunk in value.split(",") for p in chunk.split(os.pathsep) if p.strip()]
    return value
