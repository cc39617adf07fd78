"""`advface attack ...` commands: discover the attacks and their hyper-parameters.

Running attacks on real models happens through experiment configs (``advface`` experiment
commands); these commands tell a config author which names and keys exist.
"""

from __future__ import annotations

import inspect

import typer

from advface.attacks import registry

app = typer.Typer(help="List the attacks and their hyper-parameters (for experiment configs).",
                  no_args_is_help=True)


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.splitlines()[0] if doc else ""


@app.command("list")
def list_attacks() -> None:
    """List the registered attacks, their norms and a one-line description."""
    for name in registry.available():
        cls = registry.attack_class(name)
        norms = ",".join(cls.norms)
        typer.echo(f"{name:<10} {norms:<8} {_summary(cls)}")


@app.command("show")
def show(name: str = typer.Argument(..., help="attack name, see `advface attack list`")) -> None:
    """Show an attack's hyper-parameters with their defaults and its documentation."""
    cls = registry.attack_class(name)
    typer.echo(f"{name}: {cls.__module__}.{cls.__name__}  (norms: {', '.join(cls.norms)})")
    typer.echo("hyper-parameters:")
    for key, default in registry.hyperparameters(name).items():
        shown = "(required)" if default is inspect.Parameter.empty else repr(default)
        typer.echo(f"  {key} = {shown}")
    doc = inspect.getdoc(cls)
    if doc:
        typer.echo("")
        typer.echo(doc)
