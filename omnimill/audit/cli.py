"""`omnimill audit ...`: look at samples, their neighbours and every label they carry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from omnimill.errors import UserError

audit_app = typer.Typer(help="Inspect samples, their neighbours and their labels.", no_args_is_help=True)
console = Console()


def _fail(message: str):
    from omnimill.cli import fail

    fail(message)


@audit_app.command("show")
def audit_show(
    store: Annotated[str, typer.Argument(help="Label store.")],
    key: Annotated[str, typer.Argument(help="Sample key (see the store's `keys` array).")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("sample.png"),
):
    """One sample with every label it carries, as a PNG panel."""
    from omnimill.audit.render import render_sample

    try:
        render_sample(store, key, out)
    except UserError as e:
        _fail(str(e))
    console.print(f"wrote {out}")


