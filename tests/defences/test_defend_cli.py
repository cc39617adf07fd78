"""`advface defend ...` commands on a tiny generated LFW run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from defence_models import train_dict
from typer.testing import CliRunner

from advface.cli.defend import app

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
    res = runner.invoke(app, ["advtrain", "--config", str(path), "--out", str(out),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and (out / "robust_eval.json").is_file()
    robust = json.loads((out / "robust_eval.json").read_text())
    assert [r["eps255"] for r in robust["rows"]] == [4.0, 4.0]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adversarial"]["attack"] == "fgsm-rs"
    assert "worst-case" in res.output


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path)])
    assert res.exit_code != 0
    assert "not a training run folder" in str(res.exception)
