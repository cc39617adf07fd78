"""The report notebook: executed with nbclient on a kernel running this interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from advface.report.figures import figure_builders
from advface.report.load import load_run
from advface.report.notebook import _kernel_manager, write_notebook
from advface.report.text import build_sections


def test_kernel_runs_this_interpreter(tmp_path: Path) -> None:
    km = _kernel_manager(tmp_path)
    assert km.kernel_spec.argv[0] == sys.executable
    assert km.kernel_spec.env["MPLBACKEND"] == "Agg"


def test_notebook_executes_and_draws_every_figure(fake_run: Path, tmp_path: Path) -> None:
    path = write_notebook(fake_run, tmp_path / "nb" / "report.ipynb", execute=True)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a cell did not run"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    run = load_run(fake_run)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == len(figure_builders(run))
    # The prose is recomputed in the kernel and equals what the HTML report says.
    html_out = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    abstract = build_sections(run)[0].paragraphs()
    assert abstract[2] in html_out.replace("&#x27;", "'")
    # The run directory is referenced relative to the notebook (relocatable).
    assert "Path('../../" in code[0].source or "Path('..'" in code[0].source


def test_unexecuted_notebook_has_a_cell_per_figure(fake_run: Path, tmp_path: Path) -> None:
    path = write_notebook(fake_run, tmp_path / "report.ipynb", execute=False)
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells)
    for name in figure_builders(load_run(fake_run)):
        assert f"{name!r}, undrawn, run)" in source


def test_the_abstract_counts_figures_without_data_as_the_html_does(fake_run: Path,
                                                                    tmp_path: Path) -> None:
    """The abstract and Discussion come before any figure: they get the build's list."""
    from advface.report.text import missing_count

    path = write_notebook(fake_run, tmp_path / "report.ipynb", execute=False,
                          undrawn=["min_eps"])
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    assert "undrawn: list[str] = ['min_eps']" in source
    for key in ("abstract", "discussion", "missing"):
        assert f"show_section(run, {key!r}, undrawn)" in source
    run = load_run(fake_run)
    assert missing_count(run, ["min_eps"]) == missing_count(run, []) + 1
