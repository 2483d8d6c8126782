"""`jan`: the command line of Jan Models, a client of the gateway's REST API.

    jan models list [--state S]... [--engine E]... [--json]
    jan models show ID [--json]
    jan models rm ID [-y]
    jan models import PATH_OR_URL [--id ID] [--name NAME] [--mode link|copy|symlink]  (a directory: in place)
    jan models export FOLDER [-o FILE]
    jan models import-archive FILE [--folder NAME]
    jan pull ID_OR_URL [--quant Q] [--id ID]
    jan downloads list [--json]
    jan downloads pause|resume|cancel ID
    jan run ID [PROMPT] [--system TEXT] [--temperature T] [--max-tokens N] [--keep-alive DUR]
    jan ps [--json]
    jan stop ID
    jan storage [--json]

The gateway is found at --url (JAN_URL, default http://127.0.0.1:1337). Expected failures print one red
line `error: ...` on stderr and exit with status 1; `jan pull` interrupted by Ctrl-C pauses the download
and exits with status 130 (running it again resumes). `jan run` chats with a model: interactively on a
terminal, else one answer to the PROMPT argument and/or the standard input (`echo hi | jan run ID`).

This module builds the typer `app` (the entry point `cli.main:app`) with its global options (`main`)
and registers the commands: the `models` group (cli/models.py), `pull` and the `downloads` group
(cli/downloads.py), `run`, `ps` and `stop` (cli/running.py), `storage` (cli/storage.py); what they
share is in cli/common.py.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from cli.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, CliError, JanClient
from cli.common import Session, make_console
from cli.downloads import downloads_app, pull
from cli.models import models_app
from cli.running import list_running, run, stop
from cli.storage import storage

app = typer.Typer(
    name="jan",
    help="Manage the models of a Jan Models gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(models_app, name="models")
app.add_typer(downloads_app, name="downloads")


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


# The top-level commands, in the order `jan --help` lists them.
app.command("pull")(pull)
app.command("run")(run)
app.command("ps")(list_running)
app.command("stop")(stop)
app.command("storage")(storage)


if __name__ == "__main__":
    app()
