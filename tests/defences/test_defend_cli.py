"""`advface defend ...` commands on a tiny generated LFW run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from defence_models import train_dict
from typer.testing import CliRunner

from advface.cli.defend import app
from advface.errors import AdvfaceError

runner = CliRunner()


def test_evaluate_writes_naive_and_adaptive_numbers(standard_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    res = runner.invoke(app, [
        "evaluate", "--checkpoint", str(standard_run), "--defence", "none", "--defence",
        "bit-depth", "--bits", "4", "--eps", "8", "--naive-steps", "2", "--steps", "3",
        "--restarts", "0", "--threads", "1", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())["results"]
    assert set(doc) == {"none", "bit-depth"}
    names = {row["attack"] for row in doc["bit-depth"]["rows"]}
    assert names == {"naive-transfer", "naive-direct", "adaptive"}
    assert doc["none"]["n_images"] == 3  # one probe per person
    assert "worst-case" in res.output
    # A rerun with the same settings reuses the finished defences instead of recomputing.
    again = runner.invoke(app, [
        "evaluate", "--checkpoint", str(standard_run), "--defence", "bit-depth", "--bits", "4",
        "--eps", "8", "--naive-steps", "2", "--steps", "3", "--restarts", "0", "--threads",
        "1", "--quiet", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert f"(from {out})" in again.output
    assert json.loads(out.read_text())["results"]["bit-depth"] == doc["bit-depth"]


def test_detect_reports_an_auc(standard_run: Path) -> None:
    res = runner.invoke(app, ["detect", "--checkpoint", str(standard_run), "--eps", "16",
                              "--steps", "5", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "threshold" in res.output
    assert "AUC" in res.output or "fooled no probe" in res.output


def test_advtrain_from_a_config_file(tiny_lfw: Path, tmp_path: Path) -> None:
    cfg = {"train": train_dict(tiny_lfw, tmp_path / "unused", epochs=1),
           "adversarial": {"attack": "fgsm-rs", "eps_8bit": 4, "val_steps": 2},
           "evaluation": {"eps_8bit": [4], "naive_steps": 1, "steps": 2, "restarts": 0}}
    path = tmp_path / "adv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    study = _run_dir(tmp_path)
    res = runner.invoke(app, ["advtrain", "--config", str(path), "--out", str(out),
                              "--quiet", "--run", str(study)])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and (out / "robust_eval.json").is_file()
    robust = json.loads((out / "robust_eval.json").read_text())
    assert [r["eps255"] for r in robust["rows"]] == [4.0, 4.0]
    (advtrain_file,) = (study / "defences").glob("advtrain_run-*.json")
    filed = json.loads(advtrain_file.read_text())
    assert filed["kind"] == "advtrain" and filed["adversarial"]["attack"] == "fgsm-rs"
    assert filed["results"]["adversarial-training"] == robust
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adversarial"]["attack"] == "fgsm-rs"
    assert "worst-case" in res.output
    # Filing other evaluation settings over that result is refused before any training.
    cfg["evaluation"]["eps_8bit"] = [8]
    path.write_text(yaml.safe_dump(cfg))
    before = advtrain_file.read_text()
    again = runner.invoke(app, ["advtrain", "--config", str(path), "--out", str(out),
                                "--resume", "--quiet", "--run", str(study)])
    assert isinstance(again.exception, AdvfaceError), again.output
    assert "other settings" in str(again.exception) and advtrain_file.name in str(again.exception)
    assert advtrain_file.read_text() == before


def test_an_output_under_a_file_is_refused_before_the_work(standard_run: Path,
                                                           tmp_path: Path) -> None:
    """Otherwise the evaluation runs to the end and its results are lost when written."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(standard_run), "--eps", "8",
                              "--out", str(blocker / "eval.json")])
    assert isinstance(res.exception, AdvfaceError)
    assert "which is a file" in str(res.exception) and "afile" in str(res.exception)
    assert "naive" not in res.output  # refused before any attack ran


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path)])
    assert res.exit_code != 0
    assert "not a training run folder" in str(res.exception)


def _run_dir(tmp_path: Path) -> Path:
    """The least a run directory has: run.json (the report reads the rest tolerantly)."""
    run = tmp_path / "study"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "done", "models": []}))
    return run


def test_run_files_results_for_the_report(standard_run: Path, tmp_path: Path) -> None:
    """--run writes RUN_DIR/defences/<command>_<checkpoint>.json; --out keeps working beside
    it; the report's Defences section reads them."""
    from advface.report.build import build_report

    run = _run_dir(tmp_path)
    out = tmp_path / "eval.json"
    res = runner.invoke(app, [
        "evaluate", "--checkpoint", str(standard_run), "--defence", "none", "--defence",
        "jpeg", "--eps", "8", "--naive-steps", "2", "--steps", "3", "--restarts", "0",
        "--eot", "2", "--threads", "1", "--quiet", "--out", str(out), "--run", str(run)])
    assert res.exit_code == 0, res.output
    (filed,) = (run / "defences").glob(f"evaluate_{standard_run.name}-*.json")
    doc = json.loads(filed.read_text())
    assert doc == json.loads(out.read_text())
    assert doc["kind"] == "evaluate" and set(doc["results"]) == {"none", "jpeg"}
    assert doc["n_identities"] == 3
    res = runner.invoke(app, ["detect", "--checkpoint", str(standard_run), "--eps", "16",
                              "--steps", "5", "--threads", "1", "--run", str(run)])
    assert res.exit_code == 0, res.output
    (det_file,) = (run / "defences").glob(f"detect_{standard_run.name}-*.json")
    det = json.loads(det_file.read_text())
    assert det["kind"] == "detect" and det["settings"]["eps"] == [16.0]
    for r in det["results"].values():
        assert len(r["roc"]["fpr"]) == len(r["roc"]["tpr"]) >= 2
    paths = build_report(run, notebook=False)
    page = paths.html.read_text(encoding="utf-8")
    jpeg = doc["results"]["jpeg"]
    worst = jpeg["worst_case"]["8"]
    assert f"JPEG compression (quality 75) on {standard_run.name}" in page
    assert f"worst case {100 * worst:.1f}%" in page
    assert "Feature-squeezing detector" in page


def test_run_must_be_a_run_directory(standard_run: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["detect", "--checkpoint", str(standard_run), "--run",
                              str(tmp_path / "typo")])
    assert res.exit_code != 0
    assert "not a run directory" in str(res.exception)
    assert not (tmp_path / "typo").exists()


def test_filing_never_drops_earlier_results(standard_run: Path, tmp_path: Path) -> None:
    """Two checkpoints whose folders share a name get two files; other settings against an
    existing file are refused (not silently replacing it); a defence spelled bit_depth is
    bit-depth with its --bits."""
    import shutil

    run = _run_dir(tmp_path)
    twin = tmp_path / "elsewhere" / standard_run.name
    shutil.copytree(standard_run, twin)
    fast = ["--eps", "8", "--naive-steps", "1", "--steps", "1", "--restarts", "0", "--eot", "1",
            "--threads", "1", "--quiet", "--n-probes", "2", "--run", str(run)]
    for ckpt, name in ((standard_run, "jpeg"), (twin, "bit_depth")):
        res = runner.invoke(app, ["evaluate", "--checkpoint", str(ckpt), "--defence", name,
                                  "--bits", "2", *fast])
        assert res.exit_code == 0, res.output
    files = sorted((run / "defences").glob("evaluate_*.json"))
    assert len(files) == 2
    docs = [json.loads(f.read_text()) for f in files]
    assert sorted(k for d in docs for k in d["results"]) == ["bit-depth", "jpeg"]
    bit = next(d for d in docs if "bit-depth" in d["results"])
    assert bit["results"]["bit-depth"]["params"] == {"bits": 2}
    other = [*fast[:-2], "--run", str(run)]
    other[other.index("--steps") + 1] = "2"
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(standard_run), "--defence",
                              "median", *other])
    assert res.exit_code != 0 and "other settings" in str(res.exception)
    assert [json.loads(f.read_text()) for f in files] == docs


@pytest.mark.parametrize("args", [["--steps", "0"], ["--naive-steps", "0"], ["--eval-draws", "0"],
                                  ["--batch-size", "0"], ["--threads", "0"], ["--n-probes", "-2"],
                                  ["--eps", "inf"], ["--eps", "nan"], ["--defence", "jpg"]])
def test_evaluate_refuses_options_that_cannot_work(standard_run: Path, tmp_path: Path,
                                                   args: list[str]) -> None:
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(standard_run), *args,
                              "--out", str(tmp_path / "o.json")])
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, (SystemExit, AdvfaceError))
    assert not (tmp_path / "o.json").exists()


def test_an_output_folder_is_refused_before_the_work(standard_run: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["detect", "--checkpoint", str(standard_run), "--out",
                              str(tmp_path)])
    assert res.exit_code != 0 and "folder, not a file" in str(res.exception)


def test_detect_at_a_fooling_eps_reports_a_valid_auc(standard_run: Path, tmp_path: Path) -> None:
    """At eps 16/255 with 20 PGD steps the standard model is surely fooled, so there must be
    adversarial positives and a real ROC AUC: a number in [0, 1], the same on screen as in
    the JSON (not the "fooled no probe" escape the smoke test above allows)."""
    import math
    import re

    out = tmp_path / "detect.json"
    res = runner.invoke(app, ["detect", "--checkpoint", str(standard_run), "--eps", "16",
                              "--steps", "20", "--threads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fooled no probe" not in res.output
    shown = re.search(r"eps 16/255: AUC (\S+)", res.output)
    assert shown is not None, res.output
    doc = json.loads(out.read_text())
    assert doc["kind"] == "detect" and set(doc["results"]) == {"16"}
    row = doc["results"]["16"]
    assert row["n_adversarial"] > 0
    assert 0 < row["n_adversarial"] <= row["n_attempted"] <= doc["n_clean_probes"]
    auc = row["auc"]
    assert isinstance(auc, float) and math.isfinite(auc) and 0.0 <= auc <= 1.0
    assert float(shown.group(1)) == pytest.approx(auc, abs=5e-4)
    assert 0.0 < row["attack_success_rate"] <= 1.0
