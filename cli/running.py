"""`jan run`, `jan ps` and `jan stop`: the commands about running models (registered on the app by
cli/main.py), with their helpers: the --keep-alive parsing, the idle-time formatting of `jan ps`, and the
chat of `jan run` (the request body, the streamed `Answer` and its stats, the loading of the model, the
interactive prompt loop).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from cli.client import CliError, JSONObject
from cli.common import ModelIdArgument, Session, _session, handle_errors, human_size, print_json

# `jan run`: what the prompt loop shows, and its commands.
PROMPT = ">>> "
CONTINUATION_PROMPT = "... "
MULTILINE_QUOTES = '"""'
# Tokens come in bursts: the speed from the first token on is only measured over at least this long.
MIN_RATE_SPAN_S = 0.5
RUN_HELP = (
    "/bye (or Ctrl-D) ends the chat, /clear forgets the conversation so far, /? shows this help.\n"
    'A message of several lines starts and ends with """. Ctrl-C stops an answer.'
)


# --- running models ---------------------------------------------------------------------------------------


def keep_alive_value(text: str | None) -> float | str | None:
    """--keep-alive as the gateway takes it: seconds as a number (-1 = forever), else the duration text
    ("5m", "1h"), which the gateway checks."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        raise CliError("--keep-alive is empty")
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        raise CliError(f"--keep-alive {text!r} is not a duration (e.g. 300, 5m, 1h, -1)")
    return int(value) if value.is_integer() else value


def short_duration(seconds: int) -> str:
    """'12s', '4m 12s', '2h 5m', '3d 4h'."""
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def until_text(running: JSONObject, now: float) -> str:
    """When a loaded model unloads if it stays idle: 'in 4m 12s', 'never', or 'busy' while it works."""
    expires = float(running.get("expires_at") or 0)
    if expires <= 0:
        return "busy" if int(running.get("active") or 0) else "never"
    left = int(expires - now + 0.5)
    return f"in {short_duration(left)}" if left > 0 else "now"


@dataclass
class Answer:
    """One streamed answer: its text, why it ended, the usage the gateway sent, and its timing."""

    text: str = ""
    finish: str | None = None
    usage: JSONObject | None = None
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    ended: float | None = None

    def stats(self) -> str:
        """'16 tokens · 92.4 tok/s · 0.21 s'.

        The rate is the generation speed (from the first token on, the prompt's processing left out) when
        the answer took long enough for that to be measured; else the whole request's.
        """
        ended = self.ended or time.monotonic()
        parts: list[str] = []
        tokens = int((self.usage or {}).get("completion_tokens") or 0)
        if self.usage is not None:
            parts.append(f"{tokens} token{'s' if tokens != 1 else ''}")
            generating = ended - self.first_token if self.first_token is not None else 0.0
            if tokens > 1 and generating >= MIN_RATE_SPAN_S:
                parts.append(f"{(tokens - 1) / generating:.1f} tok/s")
            elif tokens and ended > self.started:
                parts.append(f"{tokens / (ended - self.started):.1f} tok/s")
        parts.append(f"{ended - self.started:.2f} s")
        if self.finish == "length":
            parts.append("cut at the token limit")
        return " · ".join(parts)


def chat_body(
    model_id: str,
    messages: list[JSONObject],
    temperature: float | None,
    max_tokens: int | None,
    keep_alive: float | str | None,
) -> JSONObject:
    body: JSONObject = {
        "model": model_id,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    optional = {"temperature": temperature, "max_tokens": max_tokens, "keep_alive": keep_alive}
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def stream_answer(s: Session, body: JSONObject) -> Answer:
    """Streams the answer to stdout as it comes; Ctrl-C stops it (closing the stream cancels the
    generation on the server) and returns it with `interrupted` set. Other failures raise CliError."""
    answer = Answer()
    chunks = s.client.chat_stream(body)
    pieces: list[str] = []
    try:
        for chunk in chunks:
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                answer.usage = usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    if answer.first_token is None:
                        answer.first_token = time.monotonic()
                    pieces.append(content)
                    typer.echo(content, nl=False)
                answer.finish = choice.get("finish_reason") or answer.finish
    except KeyboardInterrupt:
        answer.interrupted = True
    finally:
        chunks.close()
        answer.ended = time.monotonic()
        answer.text = "".join(pieces)
        if answer.text and not answer.text.endswith("\n"):
            typer.echo()
    return answer


def load_model(s: Session, model_id: str, keep_alive: float | str | None) -> None:
    """POST start, with a spinner on a terminal; Ctrl-C while it loads exits with status 130."""
    try:
        if s.err.is_terminal:
            with s.err.status(f"loading {model_id}…"):
                s.client.start_model(model_id, keep_alive=keep_alive)
        else:
            s.client.start_model(model_id, keep_alive=keep_alive)
    except KeyboardInterrupt:
        s.err.print(Text("interrupted", style="yellow"))
        raise typer.Exit(130) from None


def read_message() -> tuple[str, bool]:
    """One message from the terminal: a line, or the lines between two \"\"\" ; and whether it was typed
    as one line (only those can be commands). Raises EOFError (Ctrl-D) and KeyboardInterrupt (Ctrl-C)."""
    line = input(PROMPT)
    stripped = line.strip()
    if not stripped.startswith(MULTILINE_QUOTES):
        return line, True
    rest = stripped[len(MULTILINE_QUOTES) :]
    if rest.endswith(MULTILINE_QUOTES):
        return rest[: -len(MULTILINE_QUOTES)], False
    lines = [rest] if rest else []
    while True:
        line = input(CONTINUATION_PROMPT)
        if line.rstrip().endswith(MULTILINE_QUOTES):
            lines.append(line.rstrip()[: -len(MULTILINE_QUOTES)])
            return "\n".join(lines), False
        lines.append(line)


def chat_loop(s: Session, model_id: str, system: str | None, options: dict[str, Any]) -> None:
    """The interactive chat: a prompt, the answer streamed, the conversation kept, until /bye or EOF."""
    if sys.stdout.isatty():  # input() edits lines with readline only when both ends are a terminal
        try:
            import readline  # noqa: F401  - line editing and history for input()
        except ImportError:  # pragma: no cover - not on every platform
            pass

    def fresh() -> list[JSONObject]:
        return [{"role": "system", "content": system}] if system else []

    history = fresh()
    s.err.print(Text(f"chatting with {model_id} — /? for help, /bye or Ctrl-D to exit", style="dim"))
    while True:
        try:
            text, single_line = read_message()
        except EOFError:
            typer.echo()
            return
        except KeyboardInterrupt:
            typer.echo()
            s.err.print(Text("Use Ctrl-D or /bye to exit.", style="dim"))
            continue
        if not text.strip():
            continue
        if single_line and text.strip().startswith("/"):
            command = text.split()[0].lower()
            if command in ("/bye", "/exit", "/quit"):
                return
            if command == "/clear":
                history = fresh()
                s.err.print(Text("cleared the conversation", style="dim"))
            elif command in ("/?", "/help"):
                s.err.print(Text(RUN_HELP, style="dim"), soft_wrap=True)
            else:
                s.err.print(Text(f"unknown command {command}; /? for help", style="yellow"))
            continue
        history.append({"role": "user", "content": text})
        try:
            answer = stream_answer(s, chat_body(model_id, history, **options))
        except CliError as exc:
            history.pop()
            s.err.print(Text(f"error: {exc.message}", style="bold red"), soft_wrap=True)
            continue
        if answer.interrupted:
            history.pop()  # the exchange is dropped: the next message follows the previous answer
            s.err.print(Text("(answer stopped)", style="dim"))
            continue
        history.append({"role": "assistant", "content": answer.text})
        s.err.print(Text(answer.stats(), style="dim"))


@handle_errors
def run(
    ctx: typer.Context,
    model_id: ModelIdArgument,
    prompt: Annotated[
        str | None,
        typer.Argument(
            metavar="PROMPT",
            help="Send this message, print the answer and exit (after the standard input when it is "
            "not a terminal).",
            show_default=False,
        ),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    temperature: Annotated[
        float | None,
        typer.Option("--temperature", min=0, max=5, help="Sampling temperature (default: the model's)."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", min=1, help="Longest answer, in tokens (default: the model's)."),
    ] = None,
    keep_alive: Annotated[
        str | None,
        typer.Option(
            "--keep-alive",
            metavar="DUR",
            help="How long the model stays loaded once idle: seconds, 5m, 1h, or -1 for ever "
            "(default: the runner's).",
        ),
    ] = None,
) -> None:
    """Chat with a model, loading it first.

    On a terminal: a prompt loop that keeps the conversation; Ctrl-C stops an answer, /bye ends.

    With a PROMPT, or a standard input that is not a terminal: one answer on stdout, then exit.
    """
    s = _session(ctx)
    alive = keep_alive_value(keep_alive)
    message: str | None = None
    if prompt is not None or not sys.stdin.isatty():
        piped = "" if sys.stdin.isatty() else sys.stdin.read()
        message = "\n\n".join(part for part in (piped.strip(), (prompt or "").strip()) if part)
        if not message:
            raise CliError("nothing to send: the prompt and the standard input are empty")
    load_model(s, model_id, alive)
    options: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "keep_alive": alive}
    if message is None:
        chat_loop(s, model_id, system, options)
        return
    messages: list[JSONObject] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": message})
    answer = stream_answer(s, chat_body(model_id, messages, **options))
    if answer.interrupted:
        s.err.print(Text("interrupted", style="yellow"))
        raise typer.Exit(130)
    s.err.print(Text(answer.stats(), style="dim"))


@handle_errors
def list_running(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's JSON.")] = False,
) -> None:
    """List the running models: where, their memory, their requests, and when they unload if idle."""
    s = _session(ctx)
    running = s.client.list_running()
    if as_json:
        print_json({"object": "list", "data": running})
        return
    if not running:
        s.out.print("no model is running")
        return
    now = time.time()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("MODEL", "RUNNER", "ENGINE", "MEMORY", "ACTIVE/QUEUED", "UNTIL"):
        table.add_column(column, no_wrap=True, justify="right" if column == "MEMORY" else "left")
    for r in running:
        memory = int(r.get("memory_bytes") or 0)
        table.add_row(
            str(r.get("model_id", "")),
            str(r.get("runner", "")),
            str(r.get("engine", "")),
            human_size(memory) if memory else "-",
            f"{int(r.get('active') or 0)}/{int(r.get('queued') or 0)}",
            until_text(r, now),
        )
    s.out.print(table)


@handle_errors
def stop(
    ctx: typer.Context,
    model_id: ModelIdArgument,
) -> None:
    """Unload a running model (its files stay; `jan run ID` loads it again)."""
    s = _session(ctx)
    was_running = any(r.get("model_id") == model_id.strip() for r in s.client.list_running())
    model = s.client.stop_model(model_id)
    target = str(model.get("id") or model_id)
    s.out.print(f"stopped {target}" if was_running else f"{target} was not running")
