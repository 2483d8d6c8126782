"""services/common/envsettings.py: how every process reads its settings from the environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import pytest

from services.common.envsettings import Secret, Settings, SettingsError, setting

Small = Annotated[int, setting(ge=1, le=10, description="A small number.")]


class Example(Settings):
    env_prefix = "JAN_EX_"

    count: Small = 2
    ratio: float = setting(0.5, gt=0, description="A ratio.")
    on: bool = False
    name: str = setting("abc", min_length=2, max_length=5, pattern="^[a-z]+$")
    mode: Literal["a", "b"] = "a"
    dirs: list[Path] = setting(default_factory=list, env=("JAN_EX_DIRS", "JAN_DIRS"))
    where: Path | None = None
    token: Secret = setting(Secret(""), env=("JAN_EX_TOKEN", "OTHER_TOKEN"))
    shout: str = setting("x", after=str.upper)

    def check(self) -> None:
        if self.mode == "b" and not self.on:
            raise ValueError("mode 'b' needs on")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JAN_EX_COUNT", "JAN_EX_DIRS", "JAN_DIRS", "JAN_EX_TOKEN", "OTHER_TOKEN", "JAN_EX_ON"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_converted_and_checked_too() -> None:
    ex = Example()
    assert (ex.count, ex.ratio, ex.on, ex.name, ex.mode, ex.dirs, ex.where) == (
        2,
        0.5,
        False,
        "abc",
        "a",
        [],
        None,
    )
    assert ex.shout == "X"  # `after` runs on the default as on any value


def test_a_keyword_wins_over_the_environment_which_wins_over_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JAN_EX_COUNT", "7")
    assert Example().count == 7
    assert Example(count=3).count == 3


def test_variables_are_read_in_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAN_DIRS", "/b")
    assert Example().dirs == [Path("/b")]
    monkeypatch.setenv("JAN_EX_DIRS", "/a, /c:/d")  # ',' or the path separator
    assert Example().dirs == [Path("/a"), Path("/c"), Path("/d")]


@pytest.mark.parametrize(
    ("text", "value"), [("1", True), ("yes", True), ("On", True), ("0", False), ("off", False)]
)
def test_booleans_take_the_usual_words(monkeypatch: pytest.MonkeyPatch, text: str, value: bool) -> None:
    monkeypatch.setenv("JAN_EX_ON", text)
    assert Example().on is value


def test_an_empty_variable_is_none_for_an_optional_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAN_EX_WHERE", "")
    assert Example().where is None
    monkeypatch.setenv("JAN_EX_WHERE", "/x")
    assert Example().where == Path("/x")


def test_every_bad_value_is_reported_at_once_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAN_EX_COUNT", "11")
    monkeypatch.setenv("JAN_EX_ON", "maybe")
    with pytest.raises(SettingsError) as info:
        Example(name="AB", mode="c", ratio=0)
    shown = [str(p) for p in info.value.problems]
    assert shown == [
        "JAN_EX_COUNT='11': Input should be less than or equal to 10",
        "ratio=0: Input should be greater than 0",
        "JAN_EX_ON='maybe': Input should be a valid boolean",
        "name='AB': String should match pattern '^[a-z]+$'",
        "mode='c': Input should be 'a' or 'b'",
    ]


def test_a_check_across_fields_runs_once_every_field_is_read() -> None:
    with pytest.raises(SettingsError, match="mode 'b' needs on"):
        Example(mode="b")
    assert Example(mode="b", on=True).mode == "b"


def test_a_secret_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTHER_TOKEN", "s3cr3t")
    ex = Example()
    assert ex.token.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(ex) and "s3cr3t" not in ex.to_json()
    assert json.loads(ex.to_json())["token"] == "**********"
    with pytest.raises(SettingsError) as info:
        Example(token=12)  # type: ignore[arg-type]
    assert str(info.value.problems[0]) == "token: Input should be a valid string"


def test_an_unknown_keyword_is_refused_not_ignored() -> None:
    with pytest.raises(TypeError, match="no setting colour"):
        Example(colour="red")


def test_fields_keep_their_order_and_defaults_are_readable() -> None:
    assert list(Example.settings_fields())[:3] == ["count", "ratio", "on"]
    assert Example.default("count") == 2
    assert Example.settings_fields()["count"].spec.description == "A small number."


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("services.catalog.__main__", ["pydantic", "aiohttp", "prometheus_client", "http.server"]),
        ("services.downloader.__main__", ["pydantic", "aiohttp", "prometheus_client", "http.server"]),
        ("services.controlplane.__main__", ["pydantic", "aiohttp", "prometheus_client", "http.server"]),
        (
            "services.runner.__main__",
            ["pydantic", "aiohttp", "llama_cpp", "prometheus_client", "http.server"],
        ),
        ("gateway.__main__", ["prometheus_client", "http.server"]),
    ],
)
def test_a_service_starts_without_the_libraries_it_does_not_need_yet(module: str, absent: list[str]) -> None:
    # Each costs every process ~10-20 MB of resident memory at start (docs/benchmarks.md, idle stack).
    code = f"import sys, {module}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
