"""The built report: every figure present, numbers equal to the store's, gaps listed."""

from __future__ import annotations

import base64
import html
import re
import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from advface.cli.report import report as report_command
from advface.report.build import ReportPaths, build_report
from advface.report.figures import (
    fig_adversarial_grid,
    figure_builders,
    grid_series,
    impersonation_choice,
)
from advface.report.fixtures import cell_spec, make_fake_run
from advface.report.load import load_run
from advface.report.tables import table_missing
from advface.report.text import build_sections, figure_caption

EXPECTED_FIGURES = {
    "training_curves", "cmc", "verification_roc", "robustness_linf", "adversarial_grid",
    "visibility_linf", "transfer_matrix", "min_eps", "impersonation_examples",
}


def pct(x: float) -> str:
    """Formatted independently of advface.report, as the report promises to print rates."""
    return f"{100 * x:.1f}%"


def store_cells(run_dir: Path) -> list[dict]:
    """Cells with their rows, read with plain sqlite3 (not through advface.report)."""
    con = sqlite3.connect(run_dir / "results.sqlite")
    con.row_factory = sqlite3.Row
    cells = [dict(r) for r in con.execute("SELECT * FROM cells")]
    rows = defaultdict(list)
    for r in con.execute('SELECT * FROM "rows"'):
        rows[r["cell_id"]].append(dict(r))
    con.close()
    for c in cells:
        c["rows"] = rows[c["cell_id"]]
    return cells


def attempted(c: dict) -> list[dict]:
    """The rows a success rate is over, written out independently of advface: dodging, the
    probes identified correctly before the attack; impersonation, those not already named as
    the target."""
    if c["goal"] == "impersonation":
        return [r for r in c["rows"] if r["clean_pred"] != r["target_label"]]
    return [r for r in c["rows"] if r["clean_pred"] == r["true_label"]]


def over(c: dict, model: str) -> str:
    k, n = len(attempted(c)), len(c["rows"])
    if c["goal"] == "impersonation":
        return f"{n} probes" if k == n else (f"the {k} probes {model} did not already name as "
                                             f"the target (of {n})")
    return f"the {k} probes {model} identified correctly" + (f" (of {n})" if k != n else "")


def report_text(run_dir: Path) -> str:
    return "\n".join(p for s in build_sections(load_run(run_dir)) for p in s.paragraphs())


# ---- building --------------------------------------------------------------------------------
def test_build_writes_html_and_every_figure(built: ReportPaths, fake_run: Path) -> None:
    assert built.html == fake_run / "report" / "report.html"
    assert built.notebook is None
    assert set(built.figures) == EXPECTED_FIGURES == set(figure_builders(load_run(fake_run)))
    assert built.undrawn == []
    for name, path in built.figures.items():
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200, name


def test_every_figure_is_embedded_in_the_html(built: ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    for name, path in built.figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{data}" in page, name
        assert f'id="fig-{name}"' in page
    assert page.count("<figure") == len(built.figures)
    assert "not drawn" not in page


def test_html_is_self_contained(built: ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert not re.search(r"https?://", page)
    for src in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert src.startswith(("data:", "#")), src


def test_sections_in_order(built: ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert titles == ["Abstract", "Introduction", "Data and protocol", "The classifiers C",
                      "The adversary A", "Results", "Interpretability", "Defences",
                      "Discussion", "Conclusion", "Missing results"]
    assert "Nothing is missing" in page


# ---- numbers ---------------------------------------------------------------------------------
def test_dodging_numbers_equal_the_store(fake_run: Path, built: ReportPaths) -> None:
    text = report_text(fake_run)
    page = html.unescape(built.html.read_text(encoding="utf-8"))
    names = {"fgsm": "FGSM", "pgd": "PGD", "square": "Square"}
    series = defaultdict(list)
    for c in store_cells(fake_run):
        if c["attack"] in names and c["goal"] == "dodging" and c["surface"] == "probe":
            series[(c["model"], c["attack"])].append(c)
    assert len(series) == 6
    for (model, attack), cells in series.items():
        cells.sort(key=lambda c: c["eps"])
        rows0 = cells[0]["rows"]
        clean = sum(r["clean_pred"] == r["true_label"] for r in rows0) / len(rows0)
        steps = [f"{pct(sum(r['adv_pred'] == r['true_label'] for r in c['rows']) / len(c['rows']))}"
                 f" at {round(c['eps'] * 255)}/255" for c in cells]
        joined = ", ".join(steps[:-1]) + " and " + steps[-1]
        last = attempted(cells[-1])
        asr = sum(r["success"] for r in last) / len(last)
        expected = (f"{names[attack]} lowers rank-1 of {model} from {pct(clean)} (clean, same "
                    f"{len(rows0)} probes) to {joined} (random 12.5%); at "
                    f"{round(cells[-1]['eps'] * 255)}/255 it fools {pct(asr)} of "
                    f"{over(cells[-1], model)}")
        assert expected in text
        assert expected in page


def test_impersonation_transfer_and_mineps_numbers(fake_run: Path) -> None:
    text = report_text(fake_run)
    cells = store_cells(fake_run)
    for c in cells:
        rows = attempted(c)
        rate = sum(r["success"] for r in rows) / len(rows)
        if c["attack"] == "pgd" and c["goal"] == "impersonation" and c["surface"] == "probe":
            assert f"{pct(rate)} at {round(c['eps'] * 255)}/255" in text
        if c["attack"] == "transfer":
            src = re.search(r'"surrogate":"(\w+)"', c["params_json"]).group(1)
            assert (f"PGD images crafted at 8/255 on {src} fool {c['model']} (dodging) on "
                    f"{pct(rate)} of {over(c, c['model'])}") in text
        if c["attack"].endswith("-mineps"):
            fooled = sorted(r["min_eps"] for r in rows if r["min_eps"] != float("inf"))
            mid = len(fooled) // 2
            median = fooled[mid] if len(fooled) % 2 else (fooled[mid - 1] + fooled[mid]) / 2
            assert (f"on {c['model']} ({c['goal']}, L∞): {pct(len(fooled) / len(rows))} of "
                    f"{over(c, c['model'])} are fooled within 16/255; the median minimal ε "
                    f"of those is {median:g}/255") in text


def test_clean_numbers_carry_their_random_baseline(fake_run: Path) -> None:
    import json

    text = report_text(fake_run)
    for model in ("dlib_resnet", "adhoc_cnn"):
        clean = json.loads((fake_run / "clean" / f"{model}.json").read_text())
        r1, rand = clean["rank_k"]["1"], clean["random_rank_k"]["1"]
        assert f"{model} rank-1 {pct(r1)} (random {pct(rand)})" in text
        mp, rmp = (clean["classification"]["macro_precision"],
                   clean["random_classification"]["macro_precision"])
        assert f"macro precision {pct(mp)} (random {pct(rmp)})" in text
    # Every sentence that states a rank-1 also states the random baseline.
    for sentence in re.split(r"(?<=\.)\s", text):
        if re.search(r"rank-1 (of \w+ )?(from )?\d", sentence):
            assert "random" in sentence, sentence


def test_text_changes_with_the_data(tmp_path: Path, fake_run: Path) -> None:
    """Another seed gives other numbers: nothing in the text is a constant."""
    other = make_fake_run(tmp_path / "other", seed=3)
    a, b = report_text(fake_run), report_text(other)
    results_a = a[a.index("lowers rank-1"):]
    results_b = b[b.index("lowers rank-1"):]
    assert results_a != results_b


def test_the_text_names_the_data_set_of_the_run(fresh_run: Path) -> None:
    """Runs on users' own folders are not called LFW; runs without the record are LFW runs."""
    import json

    assert "identification on LFW for" in report_text(fresh_run)
    info_path = fresh_run / "run.json"
    info = json.loads(info_path.read_text())
    for name in ("verification/dlib_resnet.json", "verification/adhoc_cnn.json"):
        (fresh_run / name).unlink(missing_ok=True)
    info["data"] = {"image_root": "/data/office_staff", "name": "office_staff", "lfw": False}
    info_path.write_text(json.dumps(info))
    text = report_text(fresh_run)
    assert "identification on the data set “office_staff” for" in text
    assert "on LFW" not in text
    assert "Images: the data set “office_staff”, read from /data/office_staff" in text
    assert "which the data set “office_staff” does not have, so it was not measured" in text


# ---- gaps ------------------------------------------------------------------------------------
def test_missing_results_are_listed_via_the_cli(tmp_path: Path) -> None:
    """`advface report RUN_DIR --out ... --no-notebook` on a run with gaps lists them all."""
    gone = cell_spec("adhoc_cnn", "pgd", 8, "impersonation")
    pending = cell_spec("dlib_resnet", "fgsm", 2, "dodging")
    run_dir = make_fake_run(tmp_path / "run", missing=[
        gone, f"pending:{pending}", "verification/adhoc_cnn.json", "models/adhoc_cnn.json"])
    app = typer.Typer()
    app.command()(report_command)
    app.command("other")(lambda: None)  # subcommand mode, as in advface's main app
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out),
                                      "--no-notebook"])
    assert result.exit_code == 0, result.output
    assert "missing: 4 results, 1 figures without data" in result.output
    assert not (out / "report.ipynb").exists()
    page = html.unescape((out / "report.html").read_text(encoding="utf-8"))
    missing = page[page.index('<section id="missing">'):]
    assert gone in missing
    assert "fgsm linf 2/255 dodging (probe) on dlib_resnet" in missing
    assert "status 'pending'" in missing
    assert "verification/adhoc_cnn.json" in missing and "models/adhoc_cnn.json" in missing
    # Only adhoc_cnn had a training history: without its model file there is no curve.
    assert "training_curves" in missing
    assert "Figure “training_curves” was not drawn" in page
    assert "Nothing is missing" not in page
    drawn = {p.stem for p in (out / "figures").glob("*.png")}
    assert drawn == EXPECTED_FIGURES - {"training_curves"}


def test_unreadable_images_are_skipped_and_listed(fresh_run: Path) -> None:
    run = load_run(fresh_run)
    cell = grid_series(run)[0][3][-1]  # the largest-eps cell of the first grid row
    broken = []
    for row in run.rows[cell.cell_id]:
        (fresh_run / row.adv_path).write_bytes(b"not a png")
        broken.append(row.adv_path)
    assert fig_adversarial_grid(run) is not None  # drawn anyway, with a gap
    assert set(run.unreadable_images) & set(broken)
    table = table_missing(run)
    assert table is not None
    assert any(r[2] == "unreadable, skipped" and r[1] in broken for r in table.rows)
    section = build_sections(run)[-1]
    assert "1 unreadable image" in section.paragraphs()[0] or \
        "unreadable images" in section.paragraphs()[0]


def test_caption_says_when_the_target_has_no_image(fresh_run: Path) -> None:
    run_dir = fresh_run
    run = load_run(run_dir)
    target = run.identity_name(impersonation_choice(run)[0][1].target_label)
    shutil.rmtree(run_dir / "images" / "clean" / target)
    run = load_run(run_dir)
    caption = figure_caption(run, "impersonation_examples")
    assert f"no image of {target}" in caption
    assert "only the probe and the adversarial image are shown" in caption


def test_empty_run_still_reports(tmp_path: Path) -> None:
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: empty\n")  # a run stopped right at its start
    paths = build_report(run_dir, notebook=False)
    page = paths.html.read_text(encoding="utf-8")
    assert paths.figures == {}
    for name in ("run.json", "results.sqlite", "split.json"):
        assert name in page
    assert "The run holds no attack results to conclude from." in page




def test_a_probe_already_misidentified_is_not_counted_as_fooled() -> None:
    """Noise that changes no decision succeeds on 0%, not on the clean error rate; an
    impersonation probe already named as the target is not counted either."""
    from advface.metrics.attack import wilson_interval
    from advface.report.load import Cell, Row
    from advface.report.stats import summarize_cell

    def row(key: str, clean: int, adv: int, true: int, target: int | None, ok: bool) -> Row:
        return Row(key, clean, adv, true, target, ok, 1.0, 1.0, None, 1.0, 40.0, None, None,
                   None, None)

    noise = Cell("c", "m", "noise", {"attack": "noise"}, 4 / 255, "linf", "dodging", "probe",
                 "done")
    # Three probes identified correctly and left so; one wrong before and after.
    rows = [row(k, 1, 1, 1, None, False) for k in "abc"] + [row("d", 2, 2, 1, None, True)]
    s = summarize_cell(noise, rows)
    assert (s.n, s.n_attempted, s.n_success, s.asr) == (4, 3, 0, 0.0)
    assert s.robust_acc == 0.75 and s.asr_ci == pytest.approx(wilson_interval(0, 3))
    imp = Cell("i", "m", "pgd", {"attack": "pgd"}, 4 / 255, "linf", "impersonation", "probe",
               "done")
    rows = [row("a", 1, 5, 1, 5, True), row("b", 1, 1, 1, 5, False),
            row("c", 5, 5, 2, 5, True)]  # c: the model already named the target
    s = summarize_cell(imp, rows)
    assert (s.n_attempted, s.n_success) == (2, 1) and s.asr == 0.5


def test_visibility_text_covers_the_cells_of_its_figure(fake_run: Path) -> None:
    """The figure draws the dodging cells; the sentences beside it must be about the same."""
    from advface.report import stats as S

    text = report_text(fake_run)
    sums = [s for s in S.whitebox(S.summaries(load_run(fake_run))) if s.cell.norm == "linf"
            and s.cell.surface == "probe" and s.ssim is not None and s.psnr is not None]
    assert {s.cell.goal for s in sums} == {"dodging", "impersonation"}
    dodging = [s for s in sums if s.cell.goal == "dodging"]
    worst = min(dodging, key=lambda s: s.ssim)
    assert f"({worst.cell.goal}): mean SSIM {worst.ssim:.3f}" in text
    assert "Measured visibility of the saved adversarial images (dodging)" in text
    for eps in sorted({s.cell.eps255 for s in dodging}):
        at = [s.ssim for s in dodging if s.cell.eps255 == eps]
        lo, hi = min(at), max(at)
        rng = f"{lo:.3f}" if f"{lo:.3f}" == f"{hi:.3f}" else f"{lo:.3f}–{hi:.3f}"
        assert f"/255: mean SSIM {rng}, mean PSNR" in text, eps


def test_a_larger_eps_fooling_fewer_is_reported_not_hidden() -> None:
    """A stronger attack never reports a weaker result unremarked: where a larger budget
    fooled fewer of the same probes (per-eps runs, gallery cells), Results says where."""
    from advface.report.load import Cell, Row
    from advface.report.stats import summarize_cell
    from advface.report.text import _monotonicity_sentence

    def cell(eps255: int) -> Cell:
        return Cell(f"c{eps255}", "m", "bim", {"attack": "bim"}, eps255 / 255, "linf",
                    "dodging", "probe", "done")

    def rows(fooled: int) -> list[Row]:
        return [Row(k, 1, 2 if i < fooled else 1, 1, None, i < fooled, 1.0, 1.0, None, 1.0,
                    40.0, None, None, None, None) for i, k in enumerate("abcd")]

    rising = [summarize_cell(cell(e), rows(f)) for e, f in ((2, 1), (4, 3), (8, 3))]
    assert "no larger ε fooled fewer" in (_monotonicity_sentence(rising) or "")
    falling = [summarize_cell(cell(e), rows(f)) for e, f in ((2, 1), (4, 3), (8, 2))]
    said = _monotonicity_sentence(falling) or ""
    assert "fooled fewer items than a smaller one in 1 place" in said
    assert "3 of 4 at 4/255 but 2 at 8/255" in said
    assert _monotonicity_sentence(rising[:1]) is None  # one budget: nothing to compare
