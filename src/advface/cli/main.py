"""Entry point of the `advface` command: registers the command groups, turns user errors into
one clear message and exit code 2 instead of a traceback."""

from __future__ import annotations

import sys

import typer

from advface import __version__
from advface.cli import attack as attack_cli
from advface.cli import data as data_cli
from advface.cli import model as model_cli
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


if __name__ == "__main__":
    main()
