"""What every `jan` command shares: the `Session` each command gets through the typer context (`_session`),
the `handle_errors` decorator that turns a CliError into one red `error: ...` line and exit status 1,
`make_console` (stdout and stderr consoles that do not wrap in a pipe), `ModelIdArgument` (the ID argument
of every command that names one model) and the formatting helpers used by several command groups
(`human_size`, `state_text`, `print_json`, `_meta`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from cli.client import CliError, JanClient, JSONObject

P = ParamSpec("P")
R = TypeVar("R")

# Width used when the output is not a terminal (a pipe, a file) and COLUMNS is not set, so that lines
# are not wrapped at rich's default of 80 columns.
PIPE_WIDTH = 200

STATE_STYLES = {"running": "green", "stopped": "", "not-downloaded": "dim", "downloading": "yellow"}

ModelIdArgument = Annotated[str, typer.Argument(metavar="ID", help="Model id, '<folder>/<file>'.")]


def make_console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


@dataclass
class Session:
    """What every command gets through ctx.obj: the gateway client and the two consoles."""

    client: JanClient
    out: Console
    err: Console


def _session(ctx: typer.Context) -> Session:
    session = ctx.find_object(Session)
    if session is None:  # pragma: no cover - the callback always runs first
        raise CliError("internal error: no session")
    return session


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turns CliError into one red `error: ...` line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CliError as exc:
            make_console(stderr=True).print(Text(f"error: {exc.message}", style="bold red"), soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


# --- helpers ----------------------------------------------------------------------------------------------


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def print_json(data: Any) -> None:
    """Raw JSON on stdout, for scripts (no colours, no wrapping)."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _meta(model: JSONObject, key: str) -> str:
    metadata = model.get("metadata")
    value = metadata.get(key) if isinstance(metadata, dict) else None
    return "" if value is None else str(value)
