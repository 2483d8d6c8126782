"""`jan`: the command line of Jan Models, a client of the gateway's REST API.

    jan models list [--state S]... [--engine E]... [--json]
    jan models show ID [--json]
    jan models rm ID [-y]
    jan models import PATH_OR_URL [--id ID] [--name NAME] [--mode link|copy|symlink]
    jan models export FOLDER [-o FILE]
    jan models import-archive FILE [--folder NAME]
    jan pull ID_OR_URL [--quant Q] [--id ID]
    jan downloads list [--json]
    jan downloads pause|resume|cancel ID
    jan run ID [PROMPT] [--system TEXT] [--temperature T] [--max-tokens N] [--keep-alive DUR]
    jan ps [--json]
    jan stop ID

The gateway is found at --url (JAN_URL, default http://127.0.0.1:1337). Expected failures print one red
line `error: ...` on stderr and exit with status 1; `jan pull` interrupted by Ctrl-C pauses the download
and exits with status 130 (running it again resumes). `jan run` chats with a model: interactively on a
terminal, else one answer to the PROMPT argument and/or the standard input (`echo hi | jan run ID`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

import typer
from rich.console import Console
from rich.json import JSON
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from cli.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, CliError, JanClient, JSONObject, ProgressFn
from cli.upload import ModelArchive

P = ParamSpec("P")
R = TypeVar("R")

# Width used when the output is not a terminal (a pipe, a file) and COLUMNS is not set, so that lines
# are not wrapped at rich's default of 80 columns.
PIPE_WIDTH = 200

STATE_STYLES = {"running": "green", "stopped": "", "not-downloaded": "dim", "downloading": "yellow"}
PHASE_STYLES = {
    "queued": "dim",
    "connecting": "yellow",
    "downloading": "yellow",
    "verifying": "cyan",
    "storing": "cyan",
    "done": "green",
    "failed": "red",
    "cancelled": "dim red",
    "paused": "magenta",
}
# Phases of a download job that is still under way (the others: done, failed, cancelled, paused).
ACTIVE_PHASES = ("queued", "connecting", "downloading", "verifying", "storing")
# The quantization `jan pull` takes from a repository when --quant is not given (or not there).
DEFAULT_QUANT = "Q4_K_M"
PAST_TENSE = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}
# How often `jan pull` follows a progress stream again after it ended early without progress.
MAX_STREAM_RETRIES = 5
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


class StateName(StrEnum):
    running = "running"
    stopped = "stopped"
    not_downloaded = "not-downloaded"
    downloading = "downloading"


class ImportMode(StrEnum):
    link = "link"
    copy = "copy"
    symlink = "symlink"


app = typer.Typer(
    name="jan",
    help="Manage the models of a Jan Models gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
models_app = typer.Typer(help="List, inspect, import, export and delete models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
downloads_app = typer.Typer(help="List, pause, resume and cancel model downloads.", no_args_is_help=True)
app.add_typer(downloads_app, name="downloads")


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


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option("--url", envvar="JAN_URL", help="Base URL of the gateway.", show_default=True)
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="JAN_API_KEY",
            help="API key, sent as 'Authorization: Bearer <key>'.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", envvar="JAN_TIMEOUT", min=0.1, help="Request timeout in seconds.")
    ] = DEFAULT_TIMEOUT_S,
) -> None:
    """Jan Models command line: talks to the gateway's OpenAI-style REST API."""
    err = make_console(stderr=True)
    try:
        client = JanClient(url, api_key=api_key or None, timeout=timeout)
    except CliError as exc:
        err.print(Text(f"error: {exc.message}", style="bold red"), soft_wrap=True)
        raise typer.Exit(1) from None
    ctx.call_on_close(client.close)
    ctx.obj = Session(client=client, out=make_console(), err=err)


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


@contextmanager
def transfer_progress(console: Console, description: str, after: str | None = None) -> Iterator[ProgressFn]:
    """A progress bar in bytes on a terminal (a spinner while the size is unknown); nothing otherwise.

    Yields the callback to give the client; `after` replaces the description once all bytes are done.
    """
    if not console.is_terminal:
        yield lambda done, total: None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)

        def advance(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)
            if after and total is not None and done >= total:
                progress.update(task, description=after)

        yield advance


# --- commands ---------------------------------------------------------------------------------------------


@models_app.command("list")
@handle_errors
def list_models(
    ctx: typer.Context,
    state: Annotated[
        list[StateName] | None, typer.Option("--state", help="Only models in this state (repeatable).")
    ] = None,
    engine: Annotated[
        list[str] | None, typer.Option("--engine", help="Only models run by this engine (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's JSON.")] = False,
) -> None:
    """List the models, and the model files that are not valid."""
    s = _session(ctx)
    raw = s.client.list_models_raw([st.value for st in state or []], engine or [])
    if as_json:
        print_json(raw)
        return
    models: list[JSONObject] = raw.get("data", [])
    if models:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("ID", "NAME", "STATE", "ENGINE", "QUANT", "OWNER"):
            table.add_column(column, no_wrap=column in ("ID", "STATE"))
        for m in models:
            table.add_row(
                str(m.get("id", "")),
                str(m.get("name", "")),
                state_text(str(m.get("state", ""))),
                _meta(m, "engine"),
                _meta(m, "quantization"),
                str(m.get("owned_by", "")),
            )
        s.out.print(table)
    else:
        s.out.print("no models" + (" match the filters" if state or engine else ""))
    try:
        problems = s.client.list_problems()
    except CliError as exc:
        s.err.print(Text(f"warning: could not list invalid model files: {exc.message}", style="yellow"))
        return
    if problems:
        s.out.print()
        n = len(problems)
        s.out.print(Text(f"{n} invalid model file{'s' if n != 1 else ''}:", style="bold red"))
        for p in problems:
            s.out.print(Text(f"  {p.get('path', '')}: {p.get('reason', '')}", style="red"), soft_wrap=True)


@models_app.command("show")
@handle_errors
def show_model(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id, '<folder>/<file>'.")],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print JSON: the model object plus 'state_detail' and the metadata route's "
            "source_url, engine, path and binaries.",
        ),
    ] = False,
) -> None:
    """Show one model: its fields, state, files and parameters."""
    s = _session(ctx)
    model = s.client.get_model(model_id)
    state = s.client.get_state(model_id)
    meta = s.client.get_metadata(model_id)
    if as_json:
        detail = {k: v for k, v in state.items() if k not in ("id", "object", "state")}
        files = {k: meta.get(k) for k in ("source_url", "engine", "path", "binaries")}
        print_json({**model, "state_detail": detail, **files})
        return

    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("ID", str(model.get("id", "")))
    fields.add_row("Name", str(model.get("name", "")))
    if model.get("description"):
        fields.add_row("Description", str(model["description"]))
    fields.add_row("Owner", str(model.get("owned_by", "")))
    created = model.get("created")
    if isinstance(created, int) and created > 0:
        fields.add_row(
            "Created", datetime.fromtimestamp(created).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        )
    state_line = state_text(str(state.get("state", model.get("state", ""))))
    if state.get("reason"):
        state_line.append(f"  ({state['reason']})", style="dim")
    fields.add_row("State", state_line)
    done, total = int(state.get("bytes_done") or 0), int(state.get("bytes_total") or 0)
    if state.get("state") == "downloading" and total:
        fields.add_row("Progress", f"{human_size(done)} / {human_size(total)} ({100 * done // total}%)")
    if state.get("runner"):
        fields.add_row("Runner", str(state["runner"]))
    fields.add_row("Engine", str(meta.get("engine", "")))
    fields.add_row("Source", str(meta.get("source_url", "")))
    fields.add_row("Path", str(meta.get("path", "")))
    s.out.print(fields)

    binaries: list[JSONObject] = meta.get("binaries") or []
    if binaries:
        s.out.print()
        table = Table(title="Binaries", title_justify="left", title_style="bold", box=None, pad_edge=False)
        table.add_column("NAME", no_wrap=True)
        table.add_column("SIZE", justify="right")
        table.add_column("PRESENT", justify="center")
        table.add_column("URL / EXTERNAL PATH")
        for b in binaries:
            size = int(b.get("size") or 0)
            present = bool(b.get("present"))
            table.add_row(
                str(b.get("name", "")),
                human_size(size) if size or present else "-",
                Text("✓", style="green") if present else Text("✗", style="red"),
                str(b.get("external_path") or b.get("url") or ""),
            )
        s.out.print(table)

    for label in ("parameters", "metadata"):
        s.out.print()
        s.out.print(Text(label.capitalize(), style="bold"))
        s.out.print(JSON.from_data(model.get(label) or {}, indent=2, highlight=s.out.is_terminal))


@models_app.command("rm")
@handle_errors
def remove_model(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id, '<folder>/<file>'.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model: its json file and the binaries only it uses (never an imported original)."""
    s = _session(ctx)
    if not yes:
        typer.confirm(f"Delete model {model_id} and the files it owns?", abort=True)
    reply = s.client.delete_model(model_id)
    s.out.print(f"deleted {reply.get('id', model_id)}")


@models_app.command("import")
@handle_errors
def import_model(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="PATH_OR_URL",
            help="A local model file, or the http(s) URL of one (e.g. on Hugging Face).",
        ),
    ],
    model_id: Annotated[
        str | None, typer.Option("--id", help="Id '<folder>/<file>' (default: from the file name).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    description: Annotated[str | None, typer.Option("--description", help="Description.")] = None,
    mode: Annotated[
        ImportMode | None,
        typer.Option(
            "--mode",
            help="Local files: link (hard link, else symbolic link; the default), copy or symlink.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Add a model from a local file or a URL."""
    s = _session(ctx)
    source = source.strip()
    if not source:
        raise CliError("PATH_OR_URL is empty")
    local: Path | None = None
    if source.lower().startswith(("http://", "https://")):
        source_url = source
    else:
        local = Path(source[len("file://") :] if source.startswith("file://") else source).expanduser()
        source_url = str(local.resolve())
    try:
        model = s.client.create_model(
            source_url,
            model_id=model_id,
            name=name,
            description=description,
            import_mode=mode.value if mode else None,
        )
    except CliError as exc:
        if local is None or exc.code not in UNREADABLE_BY_SERVER or not local.is_file():
            raise
        # The gateway runs elsewhere (a container, a cluster) and cannot read this path: send the file.
        s.err.print(f"the server cannot read {local} ({exc.message}): uploading it")
        model = _upload_model(s, local.resolve(), model_id, name, description)
    line = Text(f"created {model.get('id', '')} (")
    line.append_text(state_text(str(model.get("state", ""))))
    line.append(")")
    s.out.print(line)


# What the server answers for a local path it cannot read (not on its file system, or outside the
# directories it may import from): the CLI then uploads the file instead.
UNREADABLE_BY_SERVER = frozenset({"source_not_found", "import_path_not_allowed"})


def _upload_model(
    s: Session, file: Path, model_id: str | None, name: str | None, description: str | None
) -> JSONObject:
    folder, _, stem = (model_id or "").partition("/")
    if not folder:
        stem = file.stem.lstrip(".") or "model"
        folder = stem
    elif not stem:
        raise CliError("--id must be '<folder>/<file>'")
    if any(str(m.get("id", "")).startswith(f"{folder}/") for m in s.client.list_models()):
        # The server takes an archive into a new folder only: say so before sending gigabytes.
        raise CliError(f"model folder {folder} already exists on the server: choose another with --id")
    fields: dict[str, object] = {}
    if name is not None:
        fields["name"] = name
    if description is not None:
        fields["description"] = description
    archive = ModelArchive(file, folder, stem, fields)
    with transfer_progress(s.err, f"uploading {file.name}", after="importing") as advance:
        reply = s.client.upload_model(archive, folder, advance)
    wanted = f"{folder}/{stem}"
    for m in reply.get("data", []):
        if m.get("id") == wanted:
            return dict(m)
    problems = "; ".join(f"{p.get('path', '')}: {p.get('reason', '')}" for p in reply.get("problems", []))
    raise CliError(f"the upload did not give model {wanted}" + (f" ({problems})" if problems else ""))


@models_app.command("export")
@handle_errors
def export_folder(
    ctx: typer.Context,
    folder: Annotated[str, typer.Argument(help="Model folder (the part of an id before the '/').")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Archive to write (default: FOLDER.tar.gz here).", dir_okay=False
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing file.")] = False,
) -> None:
    """Save a model folder (json files and binaries) as a .tar.gz archive."""
    s = _session(ctx)
    dest = (output or Path(f"{folder}.tar.gz")).expanduser()
    if dest.exists() and not force:
        raise CliError(f"{dest} already exists (use --force to overwrite it)")
    partial = dest.with_name(f".{dest.name}.part")
    written = 0
    try:
        with partial.open("wb") as out, transfer_progress(s.err, f"exporting {folder}") as advance:
            written = s.client.export_folder(folder, out, advance)
        partial.replace(dest)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CliError(f"cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    s.out.print(f"exported {folder} to {dest} ({human_size(written)})")


@models_app.command("import-archive")
@handle_errors
def import_archive(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A .tar.gz, .tar or .zip of a model folder.")],
    folder: Annotated[
        str | None,
        typer.Option("--folder", help="Name of the new folder (default: the archive's top folder)."),
    ] = None,
) -> None:
    """Add a model folder from an archive (as made by `jan models export`)."""
    s = _session(ctx)
    path = file.expanduser()
    if not path.is_file():
        raise CliError(f"{path} is not a file")
    with transfer_progress(s.err, f"uploading {path.name}", after="importing") as advance:
        reply = s.client.import_folder(path, folder or None, advance)
    models: list[JSONObject] = reply.get("data", [])
    s.out.print(
        f"imported folder {reply.get('folder', '')}: {len(models)} model{'s' if len(models) != 1 else ''}"
    )
    for m in models:
        line = Text(f"  {m.get('id', '')} (")
        line.append_text(state_text(str(m.get("state", ""))))
        line.append(")")
        s.out.print(line)
    for p in reply.get("problems", []):
        s.out.print(
            Text(f"  invalid: {p.get('path', '')}: {p.get('reason', '')}", style="red"), soft_wrap=True
        )


# --- downloads --------------------------------------------------------------------------------------------


def phase_text(phase: str) -> Text:
    return Text(phase, style=PHASE_STYLES.get(phase, ""))


def human_duration(seconds: float) -> str:
    if seconds < 0:
        return "-:--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _job_bytes(job: JSONObject) -> tuple[int, int]:
    """(bytes done, bytes total) of a job; total is 0 while unknown."""
    return int(job.get("bytes_done") or 0), int(job.get("bytes_total") or 0)


def _job_amount(job: JSONObject) -> str:
    """'X of Y' (or just 'X' while the size is unknown)."""
    done, total = _job_bytes(job)
    return f"{human_size(done)} of {human_size(total)}" if total else human_size(done)


def _job_files(job: JSONObject) -> str:
    """'n/m files' for a job of several files, else ''."""
    files: list[JSONObject] = job.get("files") or []
    if len(files) < 2:
        return ""
    done = sum(1 for f in files if f.get("phase") == "done")
    return f"{done}/{len(files)} files"


def _job_speed(job: JSONObject) -> str:
    speed = float(job.get("bytes_per_second") or 0)
    return f"{human_size(int(speed))}/s" if speed > 0 and job.get("phase") in ACTIVE_PHASES else ""


def _job_error(job: JSONObject) -> str:
    error, code = str(job.get("error") or ""), str(job.get("error_code") or "")
    if error and code and code != error:
        return f"{error} ({code})"
    return error or code


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def is_hf_repo_url(url: str) -> bool:
    """https://huggingface.co/<org>/<repo> (or .../tree/<rev>), as the gateway tells it from a file URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in ("huggingface.co", "hf.co"):
        return False
    segments = [seg for seg in parts.path.split("/") if seg]
    return len(segments) == 2 or (len(segments) >= 3 and segments[2] == "tree")


def derived_model_id(url: str) -> str:
    """The id the catalog gives a model created from a file URL without an id: '<stem>/<stem>'."""
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    file_name = re.sub(r"[^A-Za-z0-9._+\-]", "_", segment).lstrip(".")[:200]
    stem = os.path.splitext(file_name)[0].lstrip(".") or "model"
    return f"{stem}/{stem}"


def _resolve_url(url: str) -> str:
    """Hugging Face 'blob/' page URLs are stored as their 'resolve/' file URL by the catalog."""
    parts = urlsplit(url)
    if parts.hostname in ("huggingface.co", "www.huggingface.co", "hf.co") and "/blob/" in parts.path:
        return url.replace("/blob/", "/resolve/", 1)
    return url


def _pick_quant(s: Session, models: list[JSONObject], quant: str | None) -> str:
    """The id of the model to download among a repository's quantizations, saying which and why."""
    if not models:
        raise CliError("the repository gave no model to download")

    def quant_of(m: JSONObject) -> str:
        return _meta(m, "quantization")

    wanted = (quant or "").strip()
    picked = None
    if wanted:
        picked = next((m for m in models if quant_of(m).lower() == wanted.lower()), None)
        if picked is None:
            s.err.print(Text(f"warning: no {wanted} quantization in the repository", style="yellow"))
    if picked is None:
        picked = next((m for m in models if quant_of(m).upper() == DEFAULT_QUANT), models[0])
    picked_id = str(picked.get("id", ""))
    s.out.print(
        f"picked {picked_id}" + (f" ({quant_of(picked)})" if quant_of(picked) else ""), soft_wrap=True
    )
    others = [quant_of(m) or str(m.get("id", "")) for m in models if m is not picked]
    if others:
        s.out.print(f"  also available (--quant): {', '.join(others)}", soft_wrap=True)
    return picked_id


def _existing_repo_models(s: Session, url: str, model_id: str | None) -> list[JSONObject]:
    """The models an earlier import of the repository made: its folder's models owned by its org."""
    segments = [seg for seg in urlsplit(url).path.split("/") if seg]
    org, repo = segments[0], segments[1]
    folder = model_id.split("/", 1)[0] if model_id else repo
    return [
        m
        for m in s.client.list_models()
        if str(m.get("id", "")).startswith(folder + "/") and m.get("owned_by") == org
    ]


def _existing_file_model(s: Session, url: str, model_id: str | None, exc: CliError) -> str:
    """The id of the model a file URL was already added as (the creation answered 409)."""
    if model_id:
        s.out.print(f"{model_id} already exists", soft_wrap=True)
        return model_id
    candidate = derived_model_id(url)
    try:
        source = str(s.client.get_metadata(candidate).get("source_url", ""))
    except CliError:
        source = ""
    if source != _resolve_url(url):
        raise CliError(f"{exc.message}; name the model to download with --id") from None
    s.out.print(f"{candidate} already exists", soft_wrap=True)
    return candidate


def _model_for_url(s: Session, url: str, quant: str | None, model_id: str | None) -> str:
    """Adds the URL as a model (a repository: one per quantization, then picks one); returns its id."""
    repo = is_hf_repo_url(url)
    if quant and not repo:
        s.err.print(Text("warning: --quant only applies to a Hugging Face repository URL", style="yellow"))
    try:
        created = s.client.create_model(url, model_id=model_id)
    except CliError as exc:
        if exc.status != 409:
            raise
        if not repo:
            return _existing_file_model(s, url, model_id, exc)
        existing = _existing_repo_models(s, url, model_id)
        if not existing:
            raise CliError(f"{exc.message}; give the repository's models another folder with --id") from None
        s.out.print(f"the repository was already added ({len(existing)} models)", soft_wrap=True)
        return _pick_quant(s, existing, quant)
    if created.get("object") == "list":
        models: list[JSONObject] = created.get("data") or []
        n = len(models)
        s.out.print(f"added {n} model{'s' if n != 1 else ''} in folder {created.get('folder', '')}")
        return _pick_quant(s, models, quant)
    s.out.print(f"created {created.get('id', '')}", soft_wrap=True)
    return str(created.get("id", ""))


@contextmanager
def download_progress(console: Console, model_id: str) -> Iterator[Callable[[JSONObject], None]]:
    """Shows a job's states: a progress bar on a terminal, one line per phase otherwise.

    Yields the function to call with each state of the job.
    """
    if not console.is_terminal:
        last: list[str] = []

        def report(job: JSONObject) -> None:
            phase = str(job.get("phase", ""))
            if last != [phase]:
                last[:] = [phase]
                files = _job_files(job)
                console.print(f"{model_id}: {phase} ({_job_amount(job)}{', ' + files if files else ''})")

        yield report
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TextColumn("{task.fields[files]}"),
        TextColumn("{task.fields[speed]}", style="progress.data.speed"),
        TextColumn("ETA {task.fields[eta]}", style="progress.remaining"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(model_id, total=None, files="", speed="", eta=human_duration(-1))

        def update(job: JSONObject) -> None:
            done, total = _job_bytes(job)
            phase = str(job.get("phase", ""))
            progress.update(
                task,
                description=f"{model_id} [{PHASE_STYLES.get(phase) or 'default'}]{phase}[/]",
                completed=done,
                total=total or None,
                files=_job_files(job),
                speed=_job_speed(job),
                eta=human_duration(float(job.get("eta_seconds", -1))),
            )

        yield update


def follow_download(
    s: Session, model_id: str, job: JSONObject, show: Callable[[JSONObject], None]
) -> JSONObject:
    """Follows the job's progress stream until the job ends or is paused; returns its last state.

    A stream that ends early (the gateway restarted, a deadline) is followed again while the job runs.
    """
    show(job)
    tries = 0
    while True:
        before = _job_bytes(job)[0]
        broke: CliError | None = None
        try:
            for job in s.client.watch_download(model_id):
                show(job)
        except CliError as exc:
            if exc.status is not None:  # an HTTP error before the stream began (no such job...)
                raise
            broke = exc
        if job.get("phase") not in ACTIVE_PHASES:
            return job
        job = s.client.get_download(model_id)
        show(job)
        if job.get("phase") not in ACTIVE_PHASES:
            return job
        tries = 0 if _job_bytes(job)[0] > before else tries + 1
        if tries > MAX_STREAM_RETRIES:
            raise broke or CliError(f"the progress stream of {model_id} keeps ending while the job runs")
        time.sleep(min(0.5 * tries, 2.0))


def _size_of_model(s: Session, model_id: str) -> int:
    try:
        binaries: list[JSONObject] = s.client.get_metadata(model_id).get("binaries") or []
    except CliError:
        return 0
    return sum(int(b.get("size") or 0) for b in binaries)


def _interrupted(s: Session, model_id: str) -> None:
    """Ctrl-C during `jan pull`: pauses the download (kept on disk for a later run), exits with 130."""
    try:
        job = s.client.pause_download(model_id)
    except CliError as exc:
        s.err.print(Text(f"interrupted; the download could not be paused: {exc.message}", style="red"))
        raise typer.Exit(130) from None
    phase = str(job.get("phase", ""))
    if phase == "paused":
        s.err.print(
            Text(f"paused at {_job_amount(job)} — run the same command again to resume", style="yellow"),
            soft_wrap=True,
        )
    else:
        line = Text("interrupted; the download of " + model_id + " is ")
        line.append_text(phase_text(phase))
        s.err.print(line)
    raise typer.Exit(130)


@app.command("pull")
@handle_errors
def pull(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="ID_OR_URL",
            help="A model id '<folder>/<file>', the http(s) URL of a model file, or a Hugging Face "
            "repository URL (https://huggingface.co/<org>/<repo>).",
        ),
    ],
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant", help=f"Repository URL: the quantization to download (default: {DEFAULT_QUANT})."
        ),
    ] = None,
    model_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="URL: id '<folder>/<file>' of the model to create (a repository: its folder), or of the "
            "model the URL was already added as.",
        ),
    ] = None,
) -> None:
    """Download a model's files with progress (adding a URL as a model first).

    Ctrl-C pauses the download; the same command resumes it.
    """
    s = _session(ctx)
    source = source.strip()
    if not source:
        raise CliError("ID_OR_URL is empty")
    if is_url(source):
        target = _model_for_url(s, source, quant, model_id)
    else:
        if quant or model_id:
            raise CliError("--quant and --id only apply to a URL")
        target = source
    # A model whose binaries are all there needs no download (the job answered is an old one, or empty).
    already = s.client.get_state(target).get("state") in ("stopped", "running")
    job = s.client.start_download(target)
    try:
        if already:
            job = follow_download(s, target, job, lambda job: None)
        else:
            with download_progress(s.err, target) as show:
                job = follow_download(s, target, job, show)
    except KeyboardInterrupt:
        _interrupted(s, target)
    phase = str(job.get("phase", ""))
    if phase == "done":
        if already:
            size = _size_of_model(s, target)
            s.out.print(
                Text(
                    f"✓ {target} is already downloaded" + (f" ({human_size(size)})" if size else ""), "green"
                )
            )
        else:
            size = _job_bytes(job)[1] or _job_bytes(job)[0]
            s.out.print(Text(f"✓ {target} downloaded ({human_size(size)})", style="green"))
        return
    if phase == "failed":
        raise CliError(f"the download of {target} failed: {_job_error(job) or 'unknown error'}")
    if phase == "cancelled":
        raise CliError(f"the download of {target} was cancelled")
    if phase == "paused":
        raise CliError(
            f"the download of {target} was paused at {_job_amount(job)} (by another client); "
            "run the same command again to resume"
        )
    raise CliError(f"the download of {target} stopped in phase {phase!r}")  # pragma: no cover


@downloads_app.command("list")
@handle_errors
def list_downloads(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's JSON.")] = False,
) -> None:
    """List the download jobs: running, paused, and those ended in the last hour."""
    s = _session(ctx)
    jobs = s.client.list_downloads()
    if as_json:
        print_json({"object": "list", "data": jobs})
        return
    if not jobs:
        s.out.print("no downloads")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("MODEL", "PHASE", "PROGRESS", "SIZE", "SPEED", "ERROR"):
        table.add_column(
            column,
            no_wrap=column != "ERROR",
            justify="right" if column in ("PROGRESS", "SIZE", "SPEED") else "left",
        )
    for job in jobs:
        done, total = _job_bytes(job)
        files = _job_files(job)
        progress = f"{100 * done // total}%" if total else (human_size(done) if done else "-")
        table.add_row(
            str(job.get("model_id", "")),
            phase_text(str(job.get("phase", ""))),
            progress + (f" ({files})" if files else ""),
            human_size(total) if total else "?",
            _job_speed(job),
            Text(_job_error(job), style="red") if job.get("phase") == "failed" else _job_error(job),
        )
    s.out.print(table)


def _job_line(s: Session, action: str, wanted: tuple[str, ...], job: JSONObject, model_id: str) -> None:
    """'<action>ed ID (phase, X of Y)' when the job is now in one of the wanted phases, else why not."""
    phase = str(job.get("phase", ""))
    model_id = str(job.get("model_id") or model_id)
    if phase in wanted:
        line = Text(f"{PAST_TENSE.get(action, action)} {model_id} (")
        line.append_text(phase_text(phase))
        line.append(f", {_job_amount(job)})")
    else:
        line = Text(f"{model_id} is ")
        line.append_text(phase_text(phase))
        line.append(f" ({_job_amount(job)}): nothing to {action}")
    s.out.print(line, soft_wrap=True)


@downloads_app.command("pause")
@handle_errors
def pause_download(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id, '<folder>/<file>'.")],
) -> None:
    """Pause a download, keeping the bytes fetched so far (`jan pull ID` resumes it)."""
    s = _session(ctx)
    _job_line(s, "pause", ("paused",), s.client.pause_download(model_id), model_id)


@downloads_app.command("resume")
@handle_errors
def resume_download(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id, '<folder>/<file>'.")],
) -> None:
    """Resume a paused download in the background (`jan pull ID` resumes it and shows its progress)."""
    s = _session(ctx)
    _job_line(s, "resume", (*ACTIVE_PHASES, "done"), s.client.resume_download(model_id), model_id)


@downloads_app.command("cancel")
@handle_errors
def cancel_download(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id, '<folder>/<file>'.")],
) -> None:
    """Cancel a download and delete its partial files."""
    s = _session(ctx)
    _job_line(s, "cancel", ("cancelled",), s.client.cancel_download(model_id), model_id)


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


@app.command("run")
@handle_errors
def run(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id, '<folder>/<file>'.")],
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


@app.command("ps")
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


@app.command("stop")
@handle_errors
def stop(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id, '<folder>/<file>'.")],
) -> None:
    """Unload a running model (its files stay; `jan run ID` loads it again)."""
    s = _session(ctx)
    was_running = any(r.get("model_id") == model_id.strip() for r in s.client.list_running())
    model = s.client.stop_model(model_id)
    target = str(model.get("id") or model_id)
    s.out.print(f"stopped {target}" if was_running else f"{target} was not running")


if __name__ == "__main__":
    app()
