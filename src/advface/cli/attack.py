"""`advface attack ...` commands: discover the attacks and their hyper-parameters, and attack
a few photos against a gallery folder (``photos``).

Studies (many probes, eps grids, both models, a report) run through experiment configs
(``advface run``); ``list``/``show`` tell a config author which names and keys exist.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from advface.attacks import registry

app = typer.Typer(help="List the attacks and their hyper-parameters; attack a few photos.",
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


def _parse_params(items: list[str]) -> dict[str, Any]:
    import yaml

    from advface.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r} is not KEY=VALUE", fix="e.g. --param steps=20")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command("photos")
def photos(
    photo: Annotated[list[Path], typer.Argument(help="face photos (or aligned chips with "
                                                "--aligned) to attack")],
    out: Annotated[Path, typer.Option("--out", help="folder for the chips, the x10 "
                                      "differences, panel.png and summary.json")],
    gallery: Annotated[Path | None, typer.Option(
        "--gallery", help="folder of identity/image sub-folders: the enrolled people (default: "
        "all of LFW, $ADVFACE_DATA or ../shared/data/lfw)")] = None,
    model: Annotated[str, typer.Option("--model", help="registered model name (dlib) or a "
                                       "model file (.onnx, .dat, ad-hoc .safetensors)")] = "dlib",
    attack: Annotated[str, typer.Option("--attack", help="see `advface attack list`")] = "pgd",
    norm: Annotated[str, typer.Option("--norm", help="linf or l2")] = "linf",
    eps: Annotated[float, typer.Option(
        "--eps", min=0.0, help="budget in 8-bit units (L-inf grey levels, or L2 norm x255); "
        "cw/deepfool cap their minimal perturbation at it unless --no-budget")] = 8.0,
    goal: Annotated[str, typer.Option("--goal", help="dodging or impersonation")] = "dodging",
    identity: Annotated[str | None, typer.Option(
        "--identity", help="dodging: the photos' true identity (default: the model's "
        "decision on each clean photo)")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="impersonation: the gallery identity to be taken for")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="attack hyper-parameter KEY=VALUE, repeatable (`advface attack show "
        "NAME`)")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="photos attacked at once (memory)")] = 16,
    aligned: Annotated[bool, typer.Option(
        "--aligned", help="the photos already are 150x150 dlib chips")] = False,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="cache for chips and embeddings (default: $ADVFACE_CACHE or "
        "~/.cache/advface)")] = None,
    no_budget: Annotated[bool, typer.Option(
        "--no-budget", help="minimum-norm attacks (cw, deepfool) without an eps cap")] = False,
    min_eps: Annotated[bool, typer.Option(
        "--min-eps", help="by how little: binary-search each photo's smallest fooling budget "
        "up to --eps (whole grey levels for linf, eighths of --eps for l2)")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Attack a few photos against a gallery folder: can they be changed invisibly so the model
    no longer recognises them (dodging) or takes them for --target (impersonation)?"""
    from advface.experiments.photos import attack_photos

    outcomes = attack_photos(
        photo, gallery, out, model=model, attack=attack, norm=norm,
        eps_8bit=None if no_budget else eps, goal=goal, identity=identity, target=target,
        params=_parse_params(param or []), seed=seed, cache_dir=cache, aligned=aligned,
        search_min_eps=min_eps, batch_size=batch_size, progress=progress,
        log=lambda message: typer.echo(message, err=True))
    for o in outcomes:
        verdict = "FOOLED" if o.success else "not fooled"
        if not o.attempted:  # nothing to change: not counted as fooled
            verdict = ("already not recognised" if o.goal == "dodging"
                       else "already taken for the target")
        elif min_eps:
            verdict += (f" from eps {o.min_eps_8bit:g}/255" if o.min_eps_8bit is not None
                        else f" up to eps {eps:g}/255")
        typer.echo(f"{o.photo}: {o.clean_top[0][0]} -> {o.adv_top[0][0]}  {verdict} "
                   f"({o.goal} {o.label}); L-inf {o.linf_8bit:.2f}/255, L2 {o.l2_8bit:.1f}/255, "
                   f"SSIM {o.ssim:.4f}, PSNR {o.psnr:.1f} dB")
    tried = [o for o in outcomes if o.attempted]
    n = sum(o.success for o in tried)
    rest = len(outcomes) - len(tried)
    note = f" ({rest} needed no change)" if rest else ""
    typer.echo(f"{n}/{len(tried)} fooled{note}; files in {out} (panel.png, summary.json)")
