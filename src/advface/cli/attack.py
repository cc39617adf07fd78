"""`advface attack ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="attack commands", no_args_is_help=True)
