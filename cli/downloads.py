"""`jan pull` and `jan downloads ...`: the `pull` command (registered on the app by cli/main.py) and the
`downloads_app` command group (list, pause, resume, cancel), with their helpers: the formatting of
download jobs, the URL helpers of `jan pull` (`is_url`, `is_hf_repo_url`, `derived_model_id`, the pick of
a repository's quantization) and the progress display and following of a download job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated
from urllib.parse import unquote, urlsplit

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

from cli.client import CliError, JanClient, JSONObject
from cli.common import ModelIdArgument, Session, _meta, _session, handle_errors, human_size, print_json
from services.common.filesafety import sanitize_name

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

downloads_app = typer.Typer(help="List, pause, resume and cancel model downloads.", no_args_is_help=True)


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
    file_name = sanitize_name(unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]))
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


def _act_on_job(
    ctx: typer.Context,
    model_id: str,
    action: str,
    wanted: tuple[str, ...],
    call: Callable[[JanClient, str], JSONObject],
) -> None:
    """`jan downloads <action> ID`: the client's `call`, then '<action>ed ID (phase, X of Y)' when the job
    is now in one of the wanted phases, else why not."""
    s = _session(ctx)
    job = call(s.client, model_id)
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
def pause_download(ctx: typer.Context, model_id: ModelIdArgument) -> None:
    """Pause a download, keeping the bytes fetched so far (`jan pull ID` resumes it)."""
    _act_on_job(ctx, model_id, "pause", ("paused",), JanClient.pause_download)


@downloads_app.command("resume")
@handle_errors
def resume_download(ctx: typer.Context, model_id: ModelIdArgument) -> None:
    """Resume a paused download in the background (`jan pull ID` resumes it and shows its progress)."""
    _act_on_job(ctx, model_id, "resume", (*ACTIVE_PHASES, "done"), JanClient.resume_download)


@downloads_app.command("cancel")
@handle_errors
def cancel_download(ctx: typer.Context, model_id: ModelIdArgument) -> None:
    """Cancel a download and delete its partial files."""
    _act_on_job(ctx, model_id, "cancel", ("cancelled",), JanClient.cancel_download)
