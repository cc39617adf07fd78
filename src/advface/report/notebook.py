"""The report as a Jupyter notebook that recomputes everything from the run directory.

The notebook's cells call advface.report themselves (load the run, draw each figure, build each
table and section text), so a reader can change a figure or dig into the rows from there. It is
executed with nbclient on a kernel that runs *this* interpreter (sys.executable): the kernel
spec is written to a temporary directory and handed to the kernel manager explicitly, so neither
a user's globally registered `python3` kernel nor the PATH can pick another Python.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from advface.errors import AdvfaceError
from advface.report.figures import figure_builders
from advface.report.load import RunData, load_run
from advface.report.text import build_sections

KERNEL_NAME = "advface-report"

# How each figure is drawn in a notebook cell; names match figures.figure_builders.
_FIGURE_CALLS = {
    "training_curves": "F.fig_training_curves(run)",
    "cmc": "F.fig_cmc(run)",
    "verification_roc": "F.fig_verification_roc(run)",
    "adversarial_grid": "F.fig_adversarial_grid(run)",
    "transfer_matrix": "F.fig_transfer(run)",
    "min_eps": "F.fig_min_eps(run)",
    "impersonation_examples": "F.fig_impersonation(run)",
    "detector_roc": "X.fig_detector_roc(run)",
}


def figure_call(name: str) -> str:
    """The Python expression that draws figure `name` (robustness_<norm>, visibility_<norm>)."""
    if name in _FIGURE_CALLS:
        return _FIGURE_CALLS[name]
    for prefix, func in (("robustness_", "fig_robustness"), ("visibility_", "fig_visibility")):
        if name.startswith(prefix):
            return f"F.{func}(run, {name[len(prefix):]!r})"
    raise KeyError(f"no notebook call for figure {name!r}")


# ---- helpers the notebook's cells call ------------------------------------------------------
def show_figure(fig: Any, name: str, undrawn: list[str] | None = None,
                run: RunData | None = None) -> None:
    """Display a figure as PNG with its caption, or say that the run has no data for it."""
    import html

    from IPython.display import HTML, Image, display

    from advface.report.figures import png_bytes
    from advface.report.text import figure_caption

    if fig is None:
        if undrawn is not None and name not in undrawn:
            undrawn.append(name)
        display(HTML(f"<p><i>Figure “{html.escape(name)}” not drawn: the run holds no data "
                     "for it.</i></p>"))
        return
    display(Image(data=png_bytes(fig), format="png"))
    if run is not None:
        display(HTML(f"<p><small>{html.escape(figure_caption(run, name))}</small></p>"))


def show_image(run: RunData, name: str) -> None:
    """Display a ready-made PNG of the run directory (an interpret figure) with its caption."""
    import html

    from IPython.display import HTML, Image, display

    from advface.report.extras import image_caption

    path = run.run_dir / name
    if not path.is_file():
        display(HTML(f"<p><i>Image “{html.escape(name)}” is not in the run directory.</i></p>"))
        return
    display(Image(filename=str(path), format="png"))
    display(HTML(f"<p><small>{html.escape(image_caption(run, name))}</small></p>"))


def show_section(run: RunData, key: str, undrawn: list[str] | None = None) -> None:
    """Display one section's prose and tables exactly as the HTML report renders them."""
    from IPython.display import HTML, display

    from advface.report.html import section_html
    from advface.report.tables import all_tables

    sections = build_sections(run, undrawn or [])
    section = next(s for s in sections if s.key == key)
    tables = all_tables(run, undrawn or [])
    display(HTML(section_html(section, {}, tables, {}, {}, with_figures=False,
                                 with_title=False)))


# ---- writing ---------------------------------------------------------------------------------
def build_notebook(run: RunData, run_dir_in_notebook: str,
                   undrawn: list[str] | None = None) -> nbformat.NotebookNode:
    """The notebook's cells; which figures go where is decided from the run, as in the HTML.

    ``undrawn``: the figures the run has no data for, when known (the HTML build drew them
    all): the abstract and Discussion, shown before any figure, count them as missing like
    the HTML does. Figures found empty while the notebook runs are added as they come.
    """
    names = list(figure_builders(run))
    sections = build_sections(run)
    referenced = {b.name for s in sections for b in s.blocks if b.kind == "figure"}
    results = next((s for s in sections if s.key == "results"), sections[-1])
    for name in names:
        if name not in referenced:
            results.figure(name)
    cells = [
        new_markdown_cell(
            f"# advface report: `{run.run_dir.resolve().name}`\n\n"
            "Every number, table and figure below is computed by `advface.report` from the run "
            "directory when the notebook runs. Re-run all cells after the run directory "
            "changes."),
        new_code_cell(
            "from pathlib import Path\n\n"
            "from advface.report import extras as X\n"
            "from advface.report import figures as F\n"
            "from advface.report import stats as S\n"
            "from advface.report.load import load_run\n"
            "from advface.report.notebook import show_figure, show_image, show_section\n\n"
            f"RUN_DIR = Path({run_dir_in_notebook!r})\n"
            "run = load_run(RUN_DIR)\n"
            f"undrawn: list[str] = {sorted(undrawn or [])!r}  # figures without data "
            "(Missing results)\n"
            "cells = S.summaries(run)  # one aggregate per attack cell, for your own analysis\n"
            "print(f'{len(run.cells)} cells, {len(run.model_names)} models, status {run.status}')"
        ),
    ]
    for section in sections:
        cells.append(new_markdown_cell(f"## {section.title}"))
        args = "run, " + repr(section.key) + ", undrawn"
        cells.append(new_code_cell(f"show_section({args})"))
        for block in section.blocks:
            if block.kind == "figure" and block.name in names:
                cells.append(new_code_cell(
                    f"show_figure({figure_call(block.name)}, {block.name!r}, undrawn, run)"))
            elif block.kind == "image":
                cells.append(new_code_cell(f"show_image(run, {block.name!r})"))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python (advface)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def _kernel_manager(spec_dir: Path) -> Any:
    """A KernelManager whose only kernel spec runs sys.executable with the package importable."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    import advface

    src = str(Path(advface.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    write_kernel_spec(spec_dir / KERNEL_NAME, overrides={
        "display_name": "Python (advface)",
        "env": {"PYTHONPATH": path, "MPLBACKEND": "Agg"},
    })
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir)])
    # IPC (Unix sockets in the temporary directory) rather than TCP: nothing listens on a
    # port, and the kernel does not warn about unencrypted TCP.
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm,
                       connection_file=str(spec_dir / "kernel.json"))
    if os.name == "posix":
        km.transport = "ipc"
        km.ip = str(spec_dir / "ipc")
    return km


def execute_notebook(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> None:
    """Run every cell in place; a failing cell raises AdvfaceError naming the cell."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    with tempfile.TemporaryDirectory(prefix="advface-kernel-") as tmp:
        km = _kernel_manager(Path(tmp))
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=KERNEL_NAME,
                                resources={"metadata": {"path": str(cwd)}})
        try:
            # cleanup_kc: shut the kernel down here, not at interpreter exit (we own km).
            client.execute(cleanup_kc=True)
        except (CellExecutionError, DeadKernelError, RuntimeError) as err:
            raise AdvfaceError(
                f"the report notebook failed to execute: {str(err)[-2000:]}",
                fix="rerun with --no-notebook to get the HTML report alone, and report the "
                    "failing cell as a bug",
            ) from err
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)


def write_notebook(run_dir: str | Path, path: str | Path, execute: bool = True,
                   run: RunData | None = None, undrawn: list[str] | None = None) -> Path:
    """Write RUN_DIR's report notebook at `path`, executed (outputs stored) unless told not to.

    The run directory is referenced relative to the notebook, so copying the run directory
    with its report elsewhere keeps the notebook working.
    """
    run_dir = Path(run_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run = run if run is not None else load_run(run_dir)
    try:
        rel = os.path.relpath(run_dir.resolve(), path.parent.resolve())
    except ValueError:  # another drive on Windows
        rel = str(run_dir.resolve())
    nb = build_notebook(run, rel, undrawn)
    if execute:
        execute_notebook(nb, path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)
    return path
