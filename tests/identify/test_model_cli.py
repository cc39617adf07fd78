"""`advface model align|identify|verify` on a tiny generated LFW with a toy model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from advface.cli.main import app
from advface.models import registry


@pytest.fixture
def toy_registered(monkeypatch, tiny_face):
    monkeypatch.setitem(registry.MODEL_LOADERS, "toy", lambda: tiny_face().eval())


def test_align_prints_counts_and_resumes(tiny_lfw_dir, tmp_path):
    runner = CliRunner()
    args = ["model", "align", "--data", str(tiny_lfw_dir), "--cache", str(tmp_path),
            "--upsample", "0", "--workers", "1", "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "fallback crops" in first.output and "time:" in first.output
    index = next((tmp_path / "chips").glob("*/index.jsonl"))
    n_lines = len(index.read_text().splitlines())
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and len(index.read_text().splitlines()) == n_lines
    assert first.output.splitlines()[1] == second.output.splitlines()[1]  # same chip counts


def test_identify_and_verify(tiny_lfw_dir, tmp_path, toy_registered):
    runner = CliRunner()
    common = ["--data", str(tiny_lfw_dir), "--cache", str(tmp_path), "--upsample", "0",
              "--workers", "1", "--model", "toy", "--no-progress"]
    out = tmp_path / "ident.json"
    res = runner.invoke(app, ["model", "identify", *common, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "random" in res.output and "nearest" in res.output and "centroid" in res.output
    saved = json.loads(out.read_text())
    assert set(saved["rank_k"]) == {"nearest", "centroid"} and saved["n_identities"] == 6
    # The CLI's numbers are the library's on the same split (not just well-formed JSON).
    from advface.align.chips import build_chips
    from advface.data.lfw import open_lfw
    from advface.data.splits import make_closed_set_split
    from advface.identify.evaluate import evaluate_identification

    lfw = open_lfw(tiny_lfw_dir, tmp_path)
    chips = build_chips(lfw.records, tmp_path, upsample=0, workers=1, progress=False)
    split = make_closed_set_split([r for r in lfw.records if r.key in chips], min_images=2,
                                  probes_per_person=1, seed=0)
    assert split.hash == saved["split_hash"]
    api = evaluate_identification(registry.load_face_model("toy"), chips, split,
                                  cache_dir=tmp_path, progress=False).to_dict()
    assert saved["rank_k"] == api["rank_k"] and saved["cmc"] == api["cmc"]
    res = runner.invoke(app, ["model", "verify", *common, "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    assert "accuracy:" in res.output and "AUC" in res.output and "TAR@FAR" in res.output
    assert 0.0 <= json.loads((tmp_path / "v.json").read_text())["mean_accuracy"] <= 1.0


def test_unknown_model_is_a_clean_error(tiny_lfw_dir, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "advface.cli.main", "model", "verify", "--data",
         str(tiny_lfw_dir), "--cache", str(tmp_path), "--model", "nope", "--upsample", "0",
         "--workers", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "unknown face model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_align_says_which_images_were_realigned(tmp_path):
    import shutil

    from advface.data.synthetic import make_tiny_lfw

    data = make_tiny_lfw(tmp_path / "data", n_people=2, images_per_person=(2, 2), size=96)
    args = ["model", "align", "--data", str(data), "--cache", str(tmp_path / "cache"),
            "--upsample", "0", "--workers", "1", "--no-progress"]
    runner = CliRunner()
    assert "re-aligned" not in runner.invoke(app, args).output
    first, second = sorted((data / "lfw-tiny").glob("*/*.jpg"))[:2]
    shutil.copyfile(second, first)  # another image under the first one's name
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "re-aligned 1 image(s)" in res.output and first.parent.name in res.output
