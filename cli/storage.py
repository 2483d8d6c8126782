"""`jan storage`: what the model binaries take, each content once, against the sum of the models' sizes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.common import _session, handle_errors, human_size, print_json


@handle_errors
def storage(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")] = False,
) -> None:
    """Show the bytes stored for the models (identical files stored once, files used in place not at
    all) against what the models add up to."""
    s = _session(ctx)
    usage = s.client.storage()
    if as_json:
        print_json(usage)
        return

    def n(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    table.add_row("Models", human_size(n("model_bytes")), f"{n('models')} models")
    table.add_row(
        "Stored", human_size(n("stored_bytes")), f"{n('contents')} files, {usage.get('backend', '')}"
    )
    table.add_row("Used in place", human_size(n("linked_bytes")), "the user's own files, linked")
    table.add_row("Saved", human_size(n("saved_bytes")), "not stored twice, or not stored at all")
    s.out.print(table)
