"""`advface interpret run-figures RUN_DIR` (and `interpret: true`) on a tiny generated run.

The run is made by `advface run` itself on a tiny LFW look-alike with untrained ad-hoc models
(one deciding by its softmax head, one by the nearest gallery image) and dlib, as in
tests/experiments/test_runner.py; saliency settings are cut down so the whole module takes
seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from advface.cli.interpret import app as interpret_app
from advface.cli.main import app as main_app
from advface.data.lfw import open_lfw
from advface.data.splits import make_closed_set_split
from advface.data.synthetic import make_tiny_lfw
from advface.experiments.store import ResultsStore
from advface.interpret.run_figures import choose_cell
from advface.models.adhoc import AdHocArch, AdHocNet, save_adhoc
from advface.report.build import build_report
from advface.report.load import load_run
from advface.report.text import build_sections

runner = CliRunner()
FAST = ["--n", "2", "--samples", "3", "--steps", "6"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Many tiny ops on shared cores: one thread avoids contention (as tests/defences)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(_one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run made with `advface run` and `interpret: true` in its config."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_tiny_lfw(root / "data", n_people=5, images_per_person=(3, 5), seed=1)
    cache = root / "cache"
    split = make_closed_set_split(open_lfw(data, cache).records, min_images=2,
                                  distractors=False, seed=0)
    torch.manual_seed(0)
    net = AdHocNet(AdHocArch(n_classes=len(split.identities), widths=(8, 16), blocks=(1, 1),
                             internal_size=32, embedding_dim=16), class_names=split.identities)
    ckpt = save_adhoc(net.eval(), root / "adhoc" / "model")
    cfg = root / "tiny.yaml"
    cfg.write_text(f"""
name: tiny
seed: 0
data: {{data_dir: {data}, cache_dir: {cache}, min_images: 2, distractors: false}}
models:
  - {{name: dlib, source: dlib}}
  - {{name: soft, source: adhoc, checkpoint: {ckpt}, decision: softmax}}
  - {{name: gal, source: adhoc, checkpoint: {ckpt}}}
n_probes: null
batch_size: 5
verification: false
align_upsample: 0
interpret: true
attacks:
  - {{name: pgd, params: {{steps: 5}}, eps_8bit: [4, 16], goals: [dodging]}}
  - {{name: fgsm, eps_8bit: [4], goals: [dodging]}}
  - {{name: deepfool, norm: l2, goals: [dodging], models: [gal]}}
""")
    out = root / "run"
    res = runner.invoke(main_app, ["run", str(cfg), "--out", str(out), "--no-report",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def test_interpret_true_makes_figures_after_the_run(tiny_run: Path) -> None:
    """`interpret: true` ran the command at the end of `advface run`, for every model."""
    folder = tiny_run / "interpret"
    for model in ("dlib", "soft", "gal"):
        doc = json.loads((folder / f"saliency_{model}_pgd.json").read_text())
        assert doc["model"] == model and doc["cell"]["attack"] == "pgd"
        assert (folder / doc["figure"]).is_file()
    # The switch is post-processing: it is not part of the stored config (nor its hash).
    assert "interpret" not in (tiny_run / "config.yaml").read_text()


def test_run_figures_explains_fooled_probes(tiny_run: Path, tmp_path: Path) -> None:
    res = runner.invoke(interpret_app, ["run-figures", str(tiny_run), "--model", "dlib",
                                        "--model", "gal", "--eps", "16", *FAST])
    assert res.exit_code == 0, res.output
    assert "dlib: 2 probes of pgd 16/255" in res.output
    run = load_run(tiny_run)
    for model in ("dlib", "gal"):
        doc = json.loads((tiny_run / "interpret" / f"saliency_{model}_pgd.json").read_text())
        assert doc["cell"]["eps255"] == pytest.approx(16)
        assert doc["settings"]["smoothgrad_samples"] == 3 and doc["settings"]["ig_steps"] == 6
        cell = run.cell(doc["cell"]["cell_id"])
        stored = {r.item_key: r for r in run.rows[cell.cell_id]}
        assert doc["n_items"] == len(doc["items"]) == 2
        for item in doc["items"]:
            row = stored[item["key"]]
            # Genuine dodging only: right when clean, fooled on the saved PNG.
            assert row.success and row.clean_pred == row.true_label
            assert item["true"] == run.identity_name(row.true_label)
            # The rebuilt model reproduces the run's decisions (same gallery, same identities).
            assert item["decision_matches_run"] and item["adv_pred"] != item["true"]
            for m in ("vanilla", "smoothgrad", "ig"):
                share = item["methods"][m]["energy_in_top"]
                assert 0.0 <= share <= 1.0
                assert item["methods"][m]["enrichment"] == pytest.approx(share / 0.2)
        for m, summary in doc["summary"].items():
            values = [i["methods"][m]["map_correlation"] for i in doc["items"]]
            assert summary["map_correlation"] == pytest.approx(sum(values) / len(values))
        assert doc["fingerprint_matches_run"] is True
        with Image.open(tiny_run / "interpret" / doc["figure"]) as im:
            assert im.format == "PNG" and im.width > 1000 and im.height > 200


def test_default_budget_is_the_smallest_that_fooled_n(tiny_run: Path) -> None:
    run = load_run(tiny_run)
    cell, rows = choose_cell(run, "dlib", "pgd", None, 2)
    assert cell.eps255 == pytest.approx(4) and len(rows) == 2
    assert [r.item_key for r in rows] == sorted(r.item_key for r in rows)
    assert "budgets: 4, 16" in choose_cell(run, "dlib", "pgd", 8.0, 2)
    assert "dodging attacks run: fgsm, pgd" in choose_cell(run, "dlib", "cw", None, 2)


def test_nothing_to_explain_is_a_clear_error(tiny_run: Path) -> None:
    res = runner.invoke(interpret_app, ["run-figures", str(tiny_run), "--attack", "cw", *FAST])
    assert res.exit_code != 0
    assert "no model has a fooled probe" in str(res.exception)
    assert "skipped, no finished cw dodging cell on dlib" in res.output
    res = runner.invoke(interpret_app, ["run-figures", str(tiny_run), "--model", "nosuch",
                                        *FAST])
    assert res.exit_code != 0 and "the run has no model 'nosuch'" in str(res.exception)


def test_minimum_norm_attack_beside_pgd(tiny_run: Path) -> None:
    """A second attack on the same model gets its own files; no budget to choose."""
    res = runner.invoke(interpret_app, ["run-figures", str(tiny_run), "--model", "gal",
                                        "--attack", "deepfool", *FAST])
    assert res.exit_code == 0, res.output
    doc = json.loads((tiny_run / "interpret" / "saliency_gal_deepfool.json").read_text())
    assert doc["cell"]["eps255"] is None and doc["cell"]["norm"] == "l2"
    assert (tiny_run / "interpret" / "saliency_gal_pgd.json").is_file()
    text = "\n".join(p for s in build_sections(load_run(tiny_run)) if s.key == "interpretability"
                     for p in s.paragraphs())
    assert "fooled by deepfool (dodging) without a fixed budget (minimum-norm, l2)" in text
    assert "fooled by pgd (dodging) at 4/255" in text


def test_report_includes_the_figures(tiny_run: Path, tmp_path: Path) -> None:
    paths = build_report(tiny_run, tmp_path / "report", notebook=False)
    page = paths.html.read_text(encoding="utf-8")
    assert '<section id="interpretability">' in page
    for model in ("dlib", "soft", "gal"):
        assert f"interpret/saliency_{model}_pgd.png" in paths.images
        assert f'id="fig-interpret-saliency_{model}_pgd"' in page
    doc = json.loads((tiny_run / "interpret" / "saliency_dlib_pgd.json").read_text())
    share = doc["summary"]["smoothgrad"]["energy_in_top"]
    assert math.isfinite(share) and f"SmoothGrad {100 * share:.1f}%" in page
    with ResultsStore(tiny_run / "results.sqlite") as store:
        assert any(c["attack"] == "pgd" for c in store.cells())


def test_default_config_switches_interpret_on_without_touching_its_hash() -> None:
    from advface.config import to_yaml
    from advface.experiments.config import load_experiment

    path = Path(__file__).resolve().parents[2] / "configs" / "lfw_default.yaml"
    cfg = load_experiment(path)
    assert cfg.interpret is True and load_experiment(path, quick=True).interpret is True
    # Left out of config.yaml: run directories made before the switch still resume.
    assert "interpret" not in to_yaml(cfg)


def test_run_identity_visualises_every_model(tiny_run: Path, tmp_path: Path) -> None:
    """Softmax and gallery models alike: files, decisions re-checkable, report section."""
    from advface.experiments.reload import load_run_models
    from advface.interpret.identity_viz import VizConfig
    from advface.interpret.run_identity import IdentitySettings, model_identity

    res = runner.invoke(interpret_app, ["run-identity", str(tiny_run), "--n", "3",
                                        "--steps", "25"])
    assert res.exit_code == 0, res.output
    run = load_run(tiny_run)
    loaded = load_run_models(tiny_run, ["soft", "gal"])
    docs = {}
    for model in ("dlib", "soft", "gal"):
        doc = json.loads((tiny_run / "interpret" / f"identity_{model}.json").read_text())
        docs[model] = doc
        assert doc["kind"] == "identity" and doc["n_items"] == 3
        assert doc["settings"]["steps"] == 25
        names = [i["identity"] for i in doc["items"]]
        assert len(set(names)) == 3
        for item in doc["items"]:
            # always another person's face as the start, and the ascent raised the objective
            assert item["start_identity"] != item["identity"]
            assert item["objective_face"][1] > item["objective_face"][0]
            assert item["objective_noise"][1] > item["objective_noise"][0]
            assert item["change_linf255"] > 0
        with Image.open(tiny_run / "interpret" / doc["figure"]) as im:
            assert im.format == "PNG" and im.width > 500
    # every model shows the same people (chosen from the run, not the model)
    assert len({tuple(i["identity"] for i in d["items"]) for d in docs.values()}) == 1
    assert "centroid" in docs["gal"]["objective"] and "logit" in docs["soft"]["objective"]
    # deterministic: the same settings and seed give the same objective values
    again = model_identity(run, "gal", loaded.models["gal"].scorer, loaded.models["gal"].model,
                           IdentitySettings(n=3, viz=VizConfig(steps=25)), tmp_path)
    assert [v for i in again["items"] for v in i["objective_face"]] == pytest.approx(
        [v for i in docs["gal"]["items"] for v in i["objective_face"]], abs=1e-5)
    paths = build_report(tiny_run, tmp_path / "report", notebook=False)
    page = paths.html.read_text(encoding="utf-8")
    for model in ("dlib", "soft", "gal"):
        assert f"interpret/identity_{model}.png" in paths.images
        assert f'id="fig-interpret-identity_{model}"' in page
    assert "Identity visualisation asks what each classifier" in page


def test_gallery_objective_is_the_centroid_similarity(tiny_run: Path) -> None:
    from advface.experiments.reload import load_run_models
    from advface.identify.embeddings import prepare_input
    from advface.interpret.run_identity import objectives

    lm = load_run_models(tiny_run, ["gal"]).models["gal"]
    targets = torch.tensor([0, 2])
    noise_obj, face_obj, what = objectives(lm.scorer, lm.model, targets)
    assert "centroid" in what
    x = torch.rand(2, 3, 150, 150, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = lm.model(prepare_input(x, lm.scorer.input_size))
        c = lm.scorer.gallery.centroids[targets]
        expected = (-(emb - c).norm(dim=1) if lm.scorer.gallery.metric == "euclidean"
                    else torch.nn.functional.cosine_similarity(emb, c, dim=1))
        assert torch.allclose(noise_obj(x), expected, atol=1e-5)
        assert torch.allclose(face_obj(x), expected, atol=1e-5)
    with pytest.raises(Exception, match="at least 2 identities"):
        from advface.interpret.run_identity import IdentitySettings

        IdentitySettings(n=1)


def test_run_identity_through_the_softmax_head(tiny_run: Path) -> None:
    """A model the run compared by gallery can still be visualised through its softmax head."""
    res = runner.invoke(interpret_app, ["run-identity", str(tiny_run), "--n", "2",
                                        "--steps", "10", "--head", "softmax"])
    assert res.exit_code == 0, res.output
    assert "dlib: skipped, no softmax head" in res.output
    doc = json.loads((tiny_run / "interpret" / "identity_gal-softmax.json").read_text())
    assert doc["model"] == "gal-softmax" and "logit" in doc["objective"]
    for item in doc["items"]:  # the face start optimises the log-probability: <= 0
        assert all(v <= 0 for v in item["objective_face"])
    bad = runner.invoke(interpret_app, ["run-identity", str(tiny_run), "--head", "arcface"])
    assert bad.exit_code != 0 and "unknown head" in str(bad.exception)
