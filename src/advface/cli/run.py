"""`advface run CONFIG` and `advface results RUN_DIR`: the main job and its summary tables."""

from __future__ import annotations

from pathlib import Path

import typer

from advface.errors import AdvfaceError


def run(
    config: Path = typer.Argument(..., help="experiment config (YAML), e.g. "
                                  "configs/lfw_default.yaml"),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="run directory (default runs/<name>, "
                                    "runs/<name>-quick with --quick)"),
    quick: bool = typer.Option(False, "--quick", help="apply the config's quick: preset (minutes)"),
    data: Path | None = typer.Option(None, "--data", help="override data.data_dir"),
    cache: Path | None = typer.Option(None, "--cache", help="override data.cache_dir"),
    report: bool = typer.Option(True, "--report/--no-report", help="write the report at the end"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    ray: bool = typer.Option(False, "--ray", help="spread the attack grid over Ray workers "
                             "(local Ray unless --ray-address)"),
    ray_address: str | None = typer.Option(None, "--ray-address",
                                           help="address of an existing Ray cluster"),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Ray workers (default: cores)"),
) -> None:
    """Run (or resume) a study: every cell is computed once; rerun after a crash to resume."""
    from advface.experiments.config import load_experiment
    from advface.experiments.runner import check_device_available, run_experiment
    from advface.experiments.training import train_from_spec

    cfg = load_experiment(config, quick=quick)
    check_device_available(cfg.device, path=config)  # named with its file, before anything
    if data is not None or cache is not None:
        upd = {}
        if data is not None:
            upd["data_dir"] = data
        if cache is not None:
            upd["cache_dir"] = cache
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=upd)})
    run_dir = out or Path("runs") / (cfg.name + ("-quick" if quick else ""))
    if ray or ray_address:
        from advface.experiments.distributed import run_distributed

        run_distributed(cfg, run_dir, ray_address=ray_address, num_workers=workers,
                        progress=progress)
    else:
        run_experiment(cfg, run_dir, progress=progress, train_fn=train_from_spec)
    typer.echo(f"run finished: {run_dir}")
    results(run_dir, csv=None, parquet=None)
    if cfg.interpret:
        interpret_run(run_dir, data=data, cache=cache)
    if report:
        from advface.report.build import build_report

        paths = build_report(run_dir)
        typer.echo(f"report: {paths.html}")


def interpret_run(run_dir: Path, *, data: Path | None, cache: Path | None) -> None:
    """The config's `interpret: true`: saliency figures for the report, with the defaults of
    `advface interpret run-figures`. A run whose attacks fooled nothing to explain still gets
    its report; the reason is printed."""
    from advface.interpret.run_figures import run_saliency

    try:
        run_saliency(run_dir, data_dir=data, cache_dir=cache, log=typer.echo)
    except AdvfaceError as err:
        typer.echo(f"interpret figures skipped: {err}", err=True)


def results(
    run_dir: Path = typer.Argument(..., help="a run directory written by advface run"),
    csv: Path | None = typer.Option(None, "--csv", help="export every row to this CSV file"),
    parquet: Path | None = typer.Option(None, "--parquet", help="export rows to Parquet"),
) -> None:
    """Print the summary tables of a run (clean identification and every attack cell)."""
    from advface.experiments.store import ResultsStore
    from advface.experiments.summary import format_summary

    db = Path(run_dir) / "results.sqlite"
    if not db.is_file():
        raise AdvfaceError("no results store in this directory", path=db,
                           fix="give the directory written by `advface run`")
    typer.echo(format_summary(Path(run_dir)))
    with ResultsStore(db, read_only=True) as store:
        if csv is not None:
            n = store.export_csv(csv)
            typer.echo(f"wrote {n} rows to {csv}")
        if parquet is not None:
            n = store.export_parquet(parquet)
            typer.echo(f"wrote {n} rows to {parquet}")
