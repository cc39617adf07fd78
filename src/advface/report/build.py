"""Build the whole report of a run: figures/*.png, report.html and report.ipynb."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from advface.report.extras import image_id, image_names
from advface.report.figures import all_figures, png_bytes
from advface.report.html import read_images, write_html
from advface.report.load import Missing, RunData, load_run
from advface.report.notebook import write_notebook


@dataclass(frozen=True)
class ReportPaths:
    """Where the report went, and what it had to leave out (so the CLI can say so)."""

    out_dir: Path
    html: Path
    notebook: Path | None
    figures: dict[str, Path]
    undrawn: list[str] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    # Ready-made PNGs of the run shown as figures (interpret/*.png), copied to figures/:
    # name relative to the run directory -> the copy.
    images: dict[str, Path] = field(default_factory=dict)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None,
                 notebook: bool = True, run: RunData | None = None) -> ReportPaths:
    """Write RUN_DIR/report/ (or `out_dir`): figures, self-contained HTML, executed notebook.

    Figures are rendered once: the same PNG bytes go to figures/ and into the HTML. Stale
    figure files from an earlier build whose data has since gone are removed, so figures/
    never shows a plot the report no longer contains.
    """
    run_dir = Path(run_dir)
    run = run if run is not None else load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes | None] = {}
    paths: dict[str, Path] = {}
    for name, fig in all_figures(run).items():
        if fig is None:
            pngs[name] = None
            continue
        data = png_bytes(fig)
        pngs[name] = data
        paths[name] = fig_dir / f"{name}.png"
        paths[name].write_bytes(data)
    images = read_images(run, image_names(run))
    copies: dict[str, Path] = {}
    for name, data in images.items():
        if data is not None:
            copies[name] = fig_dir / f"{image_id(name)}.png"
            copies[name].write_bytes(data)
    keep = {p.name for p in (*paths.values(), *copies.values())}
    for stale in fig_dir.glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    html = write_html(run, out / "report.html", figures=pngs, images=images)
    undrawn = [name for name, data in pngs.items() if data is None]
    nb_path = write_notebook(run_dir, out / "report.ipynb", execute=True, run=run,
                             undrawn=undrawn) if notebook else None
    return ReportPaths(out_dir=out, html=html, notebook=nb_path, figures=paths,
                       undrawn=undrawn,
                       missing=list(run.missing), images=copies)
