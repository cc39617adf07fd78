"""`advface train ...`: train the ad-hoc classifier from scratch on LFW and evaluate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from advface.cli.options import positive_minutes

app = typer.Typer(help="Train the ad-hoc face classifier from scratch and evaluate it.",
                  no_args_is_help=True)

DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="LFW folder (archive or extracted tree inside) or archive path "
    "(default: the config's data.data_dir, else $ADVFACE_DATA or ../shared/data/lfw)")]
CacheOpt = Annotated[Path | None, typer.Option(
    "--cache", help="cache folder (extracted archive, aligned chips, preloaded images; "
    "default: $ADVFACE_CACHE or ~/.cache/advface)")]


@app.command("adhoc")
def adhoc(
    config: Annotated[Path, typer.Option("--config", "-c", help="training YAML, e.g. "
                                         "configs/train_adhoc.yaml")],
    resume: Annotated[bool, typer.Option(
        "--resume", help="continue the run in --out from its last finished epoch")] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="output folder (default: the config's out_dir, else runs/<config name>)",
    )] = None,
    time_budget: Annotated[float | None, typer.Option(
        "--time-budget", callback=positive_minutes,
        help="override time_budget_minutes (cumulative over resumes)")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="torch CPU threads (default: the config's, 2)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Train AdHocNet on the gallery images of LFW people with >= min_images images.

    Writes the best model (model.safetensors + model.json), history.json/.csv, a resumable
    state after every epoch and eval.json (rank-k and precision/recall on the probes).
    """
    from advface.training.evaluate import format_table
    from advface.training.train import load_train_config, train

    cfg = load_train_config(config)
    data_updates = {k: v for k, v in (("data_dir", data), ("cache_dir", cache)) if v is not None}
    if data_updates:
        cfg.data = cfg.data.model_copy(update=data_updates)
    if out is not None:
        cfg.out_dir = out
    elif cfg.out_dir is None:
        cfg.out_dir = Path("runs") / config.stem
    if time_budget is not None:
        cfg.time_budget_minutes = time_budget
    if threads is not None:
        cfg.threads = threads
    result = train(cfg, resume=resume, progress=not quiet)
    typer.echo(f"stopped: {result.stop_reason} after {result.epochs_completed} epoch(s); best "
               f"epoch {result.best_epoch} (balanced val acc {result.best_val_balanced_acc:.3f})")
    typer.echo(f"model: {result.model_path}")
    if result.evaluation is not None and quiet:
        typer.echo(format_table(result.evaluation))


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", help="output folder of `advface train adhoc`")],
    data: DataOpt = None,
    cache: CacheOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    compare: Annotated[list[str] | None, typer.Option(
        "--compare", help="also evaluate this pretrained model (e.g. dlib) on the same gallery "
        "and probes; repeat for several")] = None,
) -> None:
    """Evaluate a trained model on the probes of its split, beside a random guesser.

    Both decisions (softmax head, gallery nearest neighbour): rank-1/5/10/20, accuracy and
    macro/weighted precision, recall and F1.
    """
    from advface.training.evaluate import format_table
    from advface.training.train import evaluate_run

    result = evaluate_run(checkpoint, data_dir=data, cache_dir=cache, compare=compare or ())
    typer.echo(json.dumps(result, indent=2) if as_json else format_table(result))
