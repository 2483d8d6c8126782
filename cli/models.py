"""`jan models ...`: the `models_app` command group (list, show, rm, import, export, import-archive) and its
helpers: the byte progress bar of uploads and exports (`transfer_progress`) and the upload of a local
file the gateway cannot read itself (`_upload_model`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

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

from cli.client import CliError, JSONObject, ProgressFn
from cli.common import (
    ModelIdArgument,
    Session,
    _meta,
    _session,
    handle_errors,
    human_size,
    print_json,
    state_text,
)
from cli.upload import ModelArchive


class StateName(StrEnum):
    running = "running"
    stopped = "stopped"
    not_downloaded = "not-downloaded"
    downloading = "downloading"


class ImportMode(StrEnum):
    link = "link"
    copy = "copy"
    symlink = "symlink"


models_app = typer.Typer(help="List, inspect, import, export and delete models.", no_args_is_help=True)


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
        for column in ("ID", "NAME", "STATE", "ENGINE", "QUANT", "CAPABILITIES", "OWNER"):
            table.add_column(column, no_wrap=column in ("ID", "STATE"))
        for m in models:
            table.add_row(
                str(m.get("id", "")),
                str(m.get("name", "")),
                state_text(str(m.get("state", ""))),
                _meta(m, "engine"),
                _meta(m, "quantization"),
                _capabilities(m),
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
    model_id: ModelIdArgument,
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
    fields.add_row("Capabilities", _capabilities(model))
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


def _capabilities(model: JSONObject) -> str:
    """`metadata.capabilities` as the tables show them: comma-separated, "-" when there are none."""
    metadata = model.get("metadata")
    value = metadata.get("capabilities") if isinstance(metadata, dict) else None
    return ",".join(str(c) for c in value) if isinstance(value, list) and value else "-"


@models_app.command("rm")
@handle_errors
def remove_model(
    ctx: typer.Context,
    model_id: ModelIdArgument,
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
            help="A local model file or directory, or an http(s) URL (a file, or a Hugging Face repository).",
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
    """Add a model from a local file or a URL; a directory imports every GGUF model in it in place (a
    Hugging Face cache too), a Hugging Face repository URL every quantization."""
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
    if model.get("object") == "list":
        _print_imported(s, model)
        return
    line = Text(f"created {model.get('id', '')} (")
    line.append_text(state_text(str(model.get("state", ""))))
    line.append(")")
    s.out.print(line)


def _print_imported(s: Session, reply: JSONObject) -> None:
    """A directory or repository import: each model (new ones marked), then what was skipped and why."""
    created = set(reply.get("created") or [])
    models = reply.get("data") or []
    for model in models:
        line = Text("+ " if model.get("id") in created else "  ", style="green")
        line.append(str(model.get("id", "")))
        line.append(
            f"  {_meta(model, 'quantization') or '-'}  {human_size(_model_size(model))}  ", style="dim"
        )
        line.append_text(state_text(str(model.get("state", ""))))
        s.out.print(line)
    for skipped in reply.get("skipped") or []:
        s.err.print(Text(f"skipped {skipped.get('path', '')}: {skipped.get('reason', '')}", style="yellow"))
    if "created" in reply:
        folders = ", ".join(reply.get("folders") or []) or "no folder"
        s.out.print(f"{len(created)} new, {len(models) - len(created)} imported before, in {folders}")


def _model_size(model: JSONObject) -> int:
    size = (model.get("metadata") or {}).get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


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
