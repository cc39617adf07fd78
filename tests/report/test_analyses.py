"""Interpretability and Defences sections: included when RUN_DIR/interpret/ and
RUN_DIR/defences/ hold results, one sentence naming the command when they do not."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from advface.errors import AdvfaceError
from advface.report.build import ReportPaths, build_report
from advface.report.extras import NOT_RUN_DEFENCES, NOT_RUN_INTERPRET
from advface.report.figures import figure_builders
from advface.report.fixtures import add_fake_analyses, make_fake_run
from advface.report.load import load_run
from advface.report.notebook import write_notebook


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def fmt(eps: float) -> str:
    return f"{eps:g}/255"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("analysed") / "run", seed=0, analyses=True)


@pytest.fixture(scope="module")
def built_analysed(analysed: Path) -> ReportPaths:
    return build_report(analysed, notebook=False)


def page_of(paths: ReportPaths) -> str:
    return html.unescape(paths.html.read_text(encoding="utf-8"))


def section(page: str, key: str) -> str:
    start = page.index(f'<section id="{key}">')
    return page[start:page.index("</section>", start)]


def test_sections_sit_between_results_and_discussion(built_analysed: ReportPaths) -> None:
    titles = re.findall(r"<h2>(.*?)</h2>", built_analysed.html.read_text(encoding="utf-8"))
    assert titles == ["Abstract", "Introduction", "Data and protocol", "The classifiers C",
                      "The adversary A", "Results", "Interpretability", "Defences",
                      "Discussion", "Conclusion", "Missing results"]


def test_absent_analyses_are_one_sentence_each(built: ReportPaths) -> None:
    """The plain fake run (no interpret/, no defences/): the command is named, no error, and
    nothing is counted as missing."""
    page = page_of(built)
    assert section(page, "interpretability").count("<p>") == 1
    assert NOT_RUN_INTERPRET in section(page, "interpretability")
    assert NOT_RUN_DEFENCES in section(page, "defences")
    assert "advface interpret run-figures RUN_DIR" in page
    assert "--run RUN_DIR" in page
    for key in ("saliency", "defences", "detector"):
        assert f'id="table-{key}"' not in page
    assert "Nothing is missing" in page


def test_saliency_figures_are_embedded_and_copied(analysed: Path,
                                                  built_analysed: ReportPaths) -> None:
    page = built_analysed.html.read_text(encoding="utf-8")
    assert set(built_analysed.images) == {"interpret/saliency_dlib_resnet_pgd.png",
                                          "interpret/saliency_adhoc_cnn_pgd.png"}
    for name, copy in built_analysed.images.items():
        data = (analysed / name).read_bytes()
        assert copy.read_bytes() == data and copy.parent == built_analysed.out_dir / "figures"
        assert f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}" in page
    # Every figure and image is numbered once; the detector ROC is a drawn figure.
    assert "detector_roc" in built_analysed.figures
    n = len(built_analysed.figures) + len(built_analysed.images)
    assert page.count("<figure") == n
    assert f"<b>Figure {n}.</b>" in page and f"<b>Figure {n + 1}.</b>" not in page
    assert "not drawn" not in page and "could not be read" not in page
    assert not re.search(r"https?://", page)
    for src in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert src.startswith(("data:", "#")), src


def test_saliency_numbers_come_from_the_files(analysed: Path,
                                              built_analysed: ReportPaths) -> None:
    text = section(page_of(built_analysed), "interpretability")
    for model in ("dlib_resnet", "adhoc_cnn"):
        doc = json.loads((analysed / "interpret" / f"saliency_{model}_pgd.json").read_text())
        s = doc["summary"]
        assert (f"vanilla gradient {pct(s['vanilla']['energy_in_top'])}, SmoothGrad "
                f"{pct(s['smoothgrad']['energy_in_top'])} and Integrated Gradients "
                f"{pct(s['ig']['energy_in_top'])}") in text
        assert f"SmoothGrad {s['smoothgrad']['enrichment']:.2f}×" in text
        assert f"SmoothGrad r = {s['smoothgrad']['map_correlation']:.2f}" in text
        assert (f"{model}: 3 probes fooled by pgd (dodging) at 2/255; the true identity's mean "
                f"score falls from {doc['mean_true_score_clean']:.3f}") in text
    assert 'id="table-saliency"' in text


def test_defence_numbers_naive_and_adaptive(analysed: Path,
                                            built_analysed: ReportPaths) -> None:
    text = section(page_of(built_analysed), "defences")
    doc = json.loads((analysed / "defences" / "evaluate_adhoc_model.json").read_text())
    adv = json.loads((analysed / "defences" / "advtrain_advtrain_fgsm.json").read_text())
    gaps = []
    for res in [*doc["results"].values(), adv["results"]["adversarial-training"]]:
        assert f"clean accuracy {pct(res['clean_accuracy'])}" in text
        for e in sorted({r["eps255"] for r in res["rows"]}):
            rows = [r for r in res["rows"] if r["eps255"] == e]
            naive = min(r["robust_accuracy"] for r in rows if r["kind"] == "naive")
            adaptive = min(r["robust_accuracy"] for r in rows if r["kind"] == "adaptive")
            worst = res["worst_case"][f"{e:g}"]
            assert (f"at {fmt(e)} naive {pct(naive)}, adaptive {pct(adaptive)}, worst case "
                    f"{pct(worst)}") in text
            gaps.append(naive - adaptive)
            for r in rows:  # the table lists every attack's number
                assert f"<td>{pct(r['robust_accuracy'])}</td>" in text
    res = adv["results"]["adversarial-training"]
    assert (f"adversarial training (fgsm-rs at 8/255) on advtrain_fgsm (24 probes, random guess "
            f"12.5%): clean accuracy {pct(res['clean_accuracy'])}") in text
    assert f"overstatement by the naive attacks is {100 * max(gaps):.1f} points" in text
    assert 'id="table-defences"' in text


def test_detector_auc_and_roc(analysed: Path, built_analysed: ReportPaths) -> None:
    text = section(page_of(built_analysed), "defences")
    doc = json.loads((analysed / "defences" / "detect_adhoc_model.json").read_text())
    for e, res in doc["results"].items():
        assert (f"At {e}/255, PGD-20 fooled {pct(res['attack_success_rate'])} of the 24 probes; "
                f"of the {res['n_adversarial']} successful adversarial examples the detector "
                f"flags {pct(res['tpr_at_threshold'])} at a false-positive rate of "
                f"{pct(res['fpr_at_threshold'])}") in text
        assert f"ROC AUC {res['auc']:.3f}" in text
    assert "At 2/255 the attack fooled no probe" in text
    assert "not robustness" in text
    assert 'id="table-detector"' in text and 'id="fig-detector_roc"' in text


def test_missing_saliency_png_is_listed(tmp_path: Path, fake_run: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(fake_run, run_dir, ignore=shutil.ignore_patterns("report"))
    add_fake_analyses(run_dir, defences=False)
    (run_dir / "interpret" / "saliency_adhoc_cnn_pgd.png").unlink()
    (run_dir / "interpret" / "saliency_dlib_resnet_pgd.png").write_bytes(b"not a png")
    paths = build_report(run_dir, notebook=False)
    page = page_of(paths)
    assert "could not be read from the run directory" in page
    missing = section(page, "missing")
    assert "interpret/saliency_adhoc_cnn_pgd.png" in missing
    assert "interpret/saliency_dlib_resnet_pgd.png" in missing and "unreadable" in missing
    assert paths.images == {}
    # Defences were not filed: that section still says how to add them.
    assert NOT_RUN_DEFENCES in section(page, "defences")


def test_corrupt_defence_file_names_itself(tmp_path: Path, fake_run: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(fake_run, run_dir, ignore=shutil.ignore_patterns("report"))
    (run_dir / "defences").mkdir()
    (run_dir / "defences" / "evaluate_x.json").write_text("{not json")
    with pytest.raises(AdvfaceError, match=r"evaluate_x\.json"):
        load_run(run_dir)


def test_notebook_shows_the_analyses(analysed: Path, tmp_path: Path) -> None:
    path = write_notebook(analysed, tmp_path / "nb" / "report.ipynb", execute=True)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == len(figure_builders(load_run(analysed))) + 2
    source = "\n".join(c.source for c in code)
    assert "show_image(run, 'interpret/saliency_dlib_resnet_pgd.png')" in source
    html_out = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert "Feature-squeezing detector" in html_out and "table-defences" in html_out
