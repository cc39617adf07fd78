"""`advface report RUN_DIR`: the scientific report of a run (HTML, notebook, figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    run_dir: Annotated[Path, typer.Argument(help="run directory written by `advface run`")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="output directory [default: RUN_DIR/report]")] = None,
    notebook: Annotated[bool, typer.Option(
        "--notebook/--no-notebook", help="also write and execute report.ipynb")] = True,
) -> None:
    """Write report.html (self-contained), report.ipynb and figures/*.png from a run directory.

    Every number comes from the run directory; absent files or cells are listed in the
    report's "Missing results" section rather than failing the command.
    """
    from advface.report.build import build_report

    paths = build_report(run_dir, out, notebook=notebook)
    typer.echo(f"report: {paths.html}")
    if paths.notebook is not None:
        typer.echo(f"notebook: {paths.notebook}")
    typer.echo(f"figures: {len(paths.figures)} in {paths.out_dir / 'figures'}")
    if paths.missing or paths.undrawn:
        typer.echo(f"missing: {len(paths.missing)} results, {len(paths.undrawn)} figures "
                   "without data (listed in the report)", err=True)
