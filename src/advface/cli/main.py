"""Entry point of the `advface` command: registers the command groups, turns user errors into
one clear message and exit code 2 instead of a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from advface import __version__
from advface.cli import attack as attack_cli
from advface.cli import data as data_cli
from advface.cli import defend as defend_cli
from advface.cli import interpret as interpret_cli
from advface.cli import model as model_cli
from advface.cli import run as run_cli
from advface.cli import train as train_cli
from advface.errors import AdvfaceError

app = typer.Typer(
    name="advface",
    help="Adversarial robustness evaluation of closed-set face identification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(model_cli.app, name="model")
app.add_typer(train_cli.app, name="train")
app.add_typer(attack_cli.app, name="attack")
app.add_typer(interpret_cli.app, name="interpret")
app.add_typer(defend_cli.app, name="defend")
app.command("run")(run_cli.run)
app.command("results")(run_cli.results)


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="run directory written by advface run"),
    out: Path | None = typer.Option(None, "--out", help="report dir (default RUN_DIR/report)"),
    notebook: bool = typer.Option(True, "--notebook/--no-notebook",
                                  help="also write an executed .ipynb"),
) -> None:
    """Write the scientific report (self-contained HTML and an executed notebook) of a run."""
    from advface.cli.report import report

    report(run_dir, out=out, notebook=notebook)


@app.command()
def version() -> None:
    """Print the advface version."""
    typer.echo(__version__)


def main() -> None:
    """Run the CLI; an AdvfaceError becomes a message on stderr and exit status 2."""
    try:
        app()
    except AdvfaceError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        # A path the user chose that cannot be written or read: their fix, not a bug.
        typer.echo(f"error: {err.strerror}\n  file: {err.filename}\n  fix: choose a path "
                   "where a file or folder can be written (no file in the way of a folder, "
                   "no folder in the way of a file, write permission)", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
