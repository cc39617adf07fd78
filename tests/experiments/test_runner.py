"""End-to-end runs of a tiny study on generated data, including a real SIGKILL and resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advface.data.lfw import open_lfw
from advface.data.splits import make_closed_set_split
from advface.data.synthetic import make_tiny_lfw
from advface.errors import AdvfaceError, CheckpointError, ConfigError
from advface.experiments.config import load_experiment
from advface.experiments.runner import key_png, run_experiment
from advface.experiments.store import ResultsStore
from advface.models.adhoc import AdHocArch, AdHocNet, save_adhoc

ROW_COLS = ("item_key", "clean_pred", "adv_pred", "true_label", "target_label", "success",
            "linf", "l2", "l0", "ssim", "psnr", "queries", "iterations", "min_eps", "adv_path")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LFW-shaped data set, its chips cache, and an (untrained) ad-hoc checkpoint."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_tiny_lfw(root / "data", n_people=5, images_per_person=(3, 5), seed=1)
    cache = root / "cache"
    lfw = open_lfw(data, cache)
    split = make_closed_set_split(lfw.records, min_images=2, distractors=False, seed=0)
    torch.manual_seed(0)
    net = AdHocNet(AdHocArch(n_classes=len(split.identities), widths=(8, 16), blocks=(1, 1),
                             internal_size=32, embedding_dim=16), class_names=split.identities)
    ckpt = save_adhoc(net.eval(), root / "adhoc" / "model")
    return {"data": data, "cache": cache, "ckpt": ckpt, "root": root}


def write_config(path: Path, tiny: dict[str, Path], *, attacks: str) -> Path:
    path.write_text(f"""
name: tiny
seed: 0
data: {{data_dir: {tiny['data']}, cache_dir: {tiny['cache']}, min_images: 2,
        distractors: false}}
models:
  - {{name: dlib, source: dlib}}
  - {{name: adhoc, source: adhoc, checkpoint: {tiny['ckpt']}, decision: softmax}}
n_probes: 4
batch_size: 2
verification: false
align_upsample: 0
attacks:
{attacks}
transfer:
  - {{surrogate: adhoc, target: dlib, attack: fgsm}}
""")
    return path


FAST_ATTACKS = """
  - {name: fgsm, eps_8bit: [2, 8], goals: [dodging, impersonation]}
  - {name: pgd, params: {steps: 3}, eps_8bit: [4], goals: [dodging], minimal_eps: true}
"""


def table_rows(run_dir: Path) -> dict[tuple[str, str], tuple]:
    with ResultsStore(run_dir / "results.sqlite") as store:
        cells = {c["cell_id"]: c for c in store.cells()}
        out = {}
        for r in store.rows():
            c = cells[r["cell_id"]]
            out[(c["model"] + "/" + c["attack"] + f"/{c['eps']}/{c['goal']}", r["item_key"])] = (
                tuple(r[k] for k in ROW_COLS))
        return out


def test_tiny_run_end_to_end(tmp_path: Path, tiny: dict[str, Path]) -> None:
    cfg = load_experiment(write_config(tmp_path / "c.yaml", tiny, attacks=FAST_ATTACKS))
    run_dir = run_experiment(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "done" and info["missing_cells"] == []
    assert info["data"]["lfw"] is True and info["data"]["name"] == "lfw-tiny"
    for model in ("dlib", "adhoc"):
        clean = json.loads((run_dir / "clean" / f"{model}.json").read_text())
        assert clean["n_identities"] == len(info["identity_names"])
        assert abs(clean["random_rank_k"]["1"] - 1 / clean["n_identities"]) < 1e-9
        assert (run_dir / "models" / f"{model}.json").is_file()
    rows = table_rows(run_dir)
    # 2 models x (fgsm 2 eps x 2 goals + pgd 1 + pgd-mineps 1) x 4 probes
    # + transfer adhoc->dlib: fgsm's 2 eps x 2 goals x 4 probes
    assert len(rows) == 2 * (4 + 1 + 1) * 4 + 4 * 4
    from advface.data.images import load_png

    for (cell, key), row in rows.items():
        r = dict(zip(ROW_COLS, row, strict=True))
        eps255 = float(cell.split("/")[2]) * 255 if cell.split("/")[2] != "None" else None
        if eps255 is not None:
            assert r["linf"] <= eps255 + 1e-3, (cell, key, r["linf"])  # float32 k/255
        adv = load_png(run_dir / r["adv_path"])
        assert adv.shape == (3, 150, 150)
        if "impersonation" in cell:
            assert r["success"] == (r["adv_pred"] == r["target_label"])
            assert r["target_label"] != r["true_label"]
        else:
            assert r["success"] == (r["adv_pred"] != r["true_label"])
    # Judged again here, independently of the runner: each saved PNG against its saved clean
    # probe (the budget on what is on disk) and through the run's models rebuilt from the run
    # directory (the recorded decision is the saved file's).
    from advface.experiments.reload import load_run_models

    loaded = load_run_models(run_dir, progress=False)
    names = info["identity_names"]
    for (cell, key), row in rows.items():
        r = dict(zip(ROW_COLS, row, strict=True))
        model, _attack, eps, _goal = cell.split("/")
        adv = load_png(run_dir / r["adv_path"])
        clean = load_png(run_dir / "images" / "clean" / key_png(key))
        if eps != "None":
            assert float((adv - clean).abs().amax()) * 255 <= float(eps) * 255 + 1e-3
        with torch.no_grad():
            scores = loaded.models[model].scorer(adv[None])
        assert int(scores.argmax()) == r["adv_pred"], (cell, key, names[r["adv_pred"]])
    # a rerun of a finished run computes nothing new and changes nothing; a rerun by other
    # software (here: a run.json saying an older advface) is said and recorded, not hidden
    before = rows
    info["advface_version"] = "0.0.0-older"
    (run_dir / "run.json").write_text(json.dumps(info))
    said: list[str] = []
    run_experiment(cfg, run_dir, progress=False, log=said.append)
    assert table_rows(run_dir) == before
    again = json.loads((run_dir / "run.json").read_text())
    assert again["earlier_software"][-1]["advface_version"] == "0.0.0-older"
    assert again["advface_version"] != "0.0.0-older"
    assert any("0.0.0-older" in line for line in said)


def test_resume_refuses_other_config(tmp_path: Path, tiny: dict[str, Path]) -> None:
    cfg = load_experiment(write_config(tmp_path / "c.yaml", tiny, attacks=FAST_ATTACKS))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: something-else\n")
    (run_dir / "clean").mkdir()
    (run_dir / "clean" / "dlib.json").write_text("{}")  # a result of that other config
    with pytest.raises(AdvfaceError, match="different config"):
        run_experiment(cfg, run_dir, progress=False, log=lambda m: None)


def test_a_start_that_failed_before_any_result_does_not_lock_its_directory(
        tmp_path: Path, tiny: dict[str, Path]) -> None:
    """A data_dir typo fails the first start after its records are written; rerunning in the
    same directory with the error's fix (the corrected config) must work, not be refused as
    'a different config'. Once a result exists, a different config is refused again."""
    good = write_config(tmp_path / "good.yaml", tiny, attacks=FAST_ATTACKS)
    typo = tmp_path / "typo.yaml"
    typo.write_text(good.read_text().replace(str(tiny["data"]), str(tiny["data"]) + "-typo"))
    run_dir = tmp_path / "run"
    with pytest.raises(AdvfaceError, match="not found"):
        run_experiment(load_experiment(typo), run_dir, progress=False, log=lambda m: None)
    assert (run_dir / "config.yaml").is_file()  # the records of the failed start
    said: list[str] = []
    run_experiment(load_experiment(good), run_dir, progress=False, log=said.append)
    assert any("no result of its earlier start" in line for line in said)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    with pytest.raises(AdvfaceError, match="different config"):
        run_experiment(load_experiment(typo), run_dir, progress=False, log=lambda m: None)


def test_config_errors_name_the_problem(tmp_path: Path, tiny: dict[str, Path]) -> None:
    bad = write_config(tmp_path / "bad.yaml", tiny, attacks="  - {name: fgsm, epss: [1]}")
    with pytest.raises(ConfigError) as err:
        load_experiment(bad)
    assert "epss" in str(err.value) and "bad.yaml" in str(err.value)


def test_transfer_source_must_use_its_whole_budget(tmp_path: Path, tiny: dict[str, Path]) -> None:
    """Early-stopped examples sit at the surrogate's boundary and measure nothing about transfer."""
    path = write_config(tmp_path / "t.yaml", tiny, attacks="  - {name: fgsm, eps_8bit: [4]}")
    text = path.read_text().replace("attack: fgsm}", "attack: pgd}")
    path.write_text(text.replace("  - {name: fgsm, eps_8bit: [4]}",
                                 "  - {name: pgd, eps_8bit: [4]}"))
    with pytest.raises(ConfigError, match="early_stop: false"):
        load_experiment(path)
    path.write_text(path.read_text().replace("{name: pgd, eps_8bit: [4]}",
                                             "{name: pgd, eps_8bit: [4], "
                                             "params: {early_stop: false}}"))
    assert load_experiment(path).attacks[0].params == {"early_stop": False}
    # nor a swept attack: it keeps images made for a smaller eps
    path.write_text(path.read_text().replace("params: {early_stop: false}}",
                                             "params: {early_stop: false}, sweep: true}"))
    with pytest.raises(ConfigError, match="is swept"):
        load_experiment(path)


SLOW_ATTACKS = """
  - {name: fgsm, eps_8bit: [1, 2, 4, 8], goals: [dodging, impersonation]}
  - {name: pgd, params: {steps: 5}, eps_8bit: [2, 8], goals: [dodging, impersonation],
     sweep: true}
"""


def _count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path: Path,
                                                          tiny: dict[str, Path]) -> None:
    cfg_path = write_config(tmp_path / "c.yaml", tiny, attacks=SLOW_ATTACKS)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "advface.cli.main", "run", str(cfg_path), "--out", str(killed),
           "--no-report", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = killed / "results.sqlite"
    deadline = time.monotonic() + 300
    while _count_rows(db) < 6:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run wrote no rows in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_at_kill = _count_rows(db)
    total = 2 * (4 * 2 + 2 * 2) * 4 + 8 * 4
    assert 0 < n_at_kill < total, "kill landed before or after the run; no resume was tested"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = run_experiment(load_experiment(cfg_path), tmp_path / "fresh", progress=False,
                           log=lambda m: None)
    resumed_rows, fresh_rows = table_rows(killed), table_rows(fresh)
    assert len(resumed_rows) == total
    assert resumed_rows == fresh_rows
    for (_, _), row in resumed_rows.items():
        path = dict(zip(ROW_COLS, row, strict=True))["adv_path"]
        assert (killed / path).read_bytes() == (fresh / path).read_bytes()


def test_attacks_with_equal_n_probes_share_probes(tmp_path: Path, tiny: dict[str, Path]) -> None:
    """Sub-sampled cells compare like with like: same n_probes, same probes, whatever the attack."""
    attacks = """
  - {name: fgsm, eps_8bit: [4], goals: [dodging], n_probes: 2, models: [adhoc]}
  - {name: fgsm-b, attack: fgsm, eps_8bit: [8], goals: [dodging], n_probes: 2, models: [adhoc]}
  - {name: fgsm-c, attack: fgsm, eps_8bit: [8], goals: [dodging], n_probes: 3, models: [adhoc]}
"""
    cfg = load_experiment(write_config(tmp_path / "c.yaml", tiny, attacks=attacks))
    cfg = cfg.model_copy(update={"transfer": []})
    run_dir = run_experiment(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    with ResultsStore(run_dir / "results.sqlite") as store:
        names = {c["cell_id"]: c["attack"] for c in store.cells()}
        keys: dict[str, set[str]] = {}
        for r in store.rows():
            keys.setdefault(names[r["cell_id"]], set()).add(r["item_key"])
    assert len(keys["fgsm"]) == 2 and keys["fgsm"] == keys["fgsm-b"]
    assert len(keys["fgsm-c"]) == 3


SWEPT = """
  - {name: pgd-swept, attack: pgd, params: {steps: 2}, eps_8bit: [1, 2, 4, 8],
     goals: [dodging], models: [adhoc], sweep: true}
  - {name: pgd, params: {steps: 2, random_restarts: 0}, eps_8bit: [1], goals: [dodging],
     models: [adhoc]}
  - {name: fgsm, eps_8bit: [2], models: [adhoc]}
  - {name: pgd-l2, attack: pgd, norm: l2, params: {steps: 2}, eps_8bit: [16, 64, 256],
     goals: [dodging], models: [adhoc], sweep: true}
"""


def _swept_rows(run_dir: Path, swept: bool = True) -> dict[float, dict[str, dict]]:
    with ResultsStore(run_dir / "results.sqlite") as store:
        cells = {c["cell_id"]: c for c in store.cells() if c["attack"] == "pgd-swept"
                 and json.loads(c["params_json"]).get("sweep", False) == swept}
        out: dict[float, dict[str, dict]] = {}
        for r in store.rows():
            if r["cell_id"] in cells:
                out.setdefault(round(cells[r["cell_id"]]["eps"] * 255), {})[r["item_key"]] = r
        return out


def test_swept_attack_carries_fooled_probes_up_the_grid(tmp_path: Path,
                                                        tiny: dict[str, Path]) -> None:
    from advface.data.images import load_png

    cfg = load_experiment(write_config(tmp_path / "c.yaml", tiny, attacks=SWEPT))
    cfg = cfg.model_copy(update={"transfer": []})
    run_dir = run_experiment(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    by_eps = _swept_rows(run_dir)
    grid = sorted(by_eps)
    assert grid == [1, 2, 4, 8] and all(len(v) == 4 for v in by_eps.values())
    carried = attacked_again = 0
    for small, large in itertools.pairwise(grid):
        for key, row in by_eps[large].items():
            before = by_eps[small][key]
            assert row["linf"] <= large + 1e-3
            assert row["success"] >= before["success"]  # monotone in eps by construction
            if before["success"]:
                carried += 1  # the same saved image, no new work
                assert row["iterations"] == 0
                assert torch.equal(load_png(run_dir / row["adv_path"]),
                                   load_png(run_dir / before["adv_path"]))
            else:
                attacked_again += 1
                assert row["iterations"] > 0
    assert carried and attacked_again, "the grid exercised only one path"
    with ResultsStore(run_dir / "results.sqlite") as store:  # L2: the same, in its own norm
        l2 = {c["cell_id"]: round(c["eps"] * 255) for c in store.cells() if c["attack"] == "pgd-l2"}
        l2_rows: dict[str, dict[int, dict]] = {}
        for r in store.rows():
            if r["cell_id"] in l2:
                l2_rows.setdefault(r["item_key"], {})[l2[r["cell_id"]]] = r
    for per_eps in l2_rows.values():
        assert sorted(per_eps) == [16, 64, 256]
        for small, large in itertools.pairwise(sorted(per_eps)):
            assert per_eps[large]["l2"] <= large + 1e-3
            assert per_eps[large]["success"] >= per_eps[small]["success"]
    with ResultsStore(run_dir / "results.sqlite") as store:  # a swept cell is its own cell
        ids = {c["attack"]: c["cell_id"] for c in store.cells() if c["eps"] * 255 < 1.5}
        params = {c["attack"]: json.loads(c["params_json"]) for c in store.cells()}
    assert ids["pgd-swept"] != ids["pgd"] and params["pgd-swept"]["sweep"] is True
    assert "sweep" not in params["pgd"]
    # The sweep's smallest eps is the plain attack (same seeds): equal rows, equal images.
    plain = cfg.model_copy(update={"attacks": [
        a.model_copy(update={"sweep": False, "eps_8bit": [1]}) if a.name == "pgd-swept" else a
        for a in cfg.attacks]})
    plain_dir = run_experiment(plain, tmp_path / "plain", progress=False, log=lambda m: None)
    for key, row in _swept_rows(plain_dir, swept=False)[1].items():
        mine = by_eps[1][key]
        assert {k: v for k, v in row.items() if k not in ("cell_id", "adv_path")} == \
            {k: v for k, v in mine.items() if k not in ("cell_id", "adv_path")}
        assert (plain_dir / row["adv_path"]).read_bytes() == \
            (run_dir / mine["adv_path"]).read_bytes()
    # The report says which attack was swept, in words.
    from advface.report import stats
    from advface.report.load import load_run
    from advface.report.text import section_adversary

    run = load_run(run_dir)
    said = section_adversary(run, stats.summaries(run)).paragraphs()
    swept = [line for line in said if "swept upwards over ε" in line]
    assert sorted(line.split(" ")[0].lower() for line in swept) == ["pgd-l2", "pgd-swept"]
    assert not any("sweep =" in line for line in said)

    # Resume inside the chain (a new process: nothing memoised, the carried probes are judged
    # again from the saved PNGs): the same rows.
    before = table_rows(run_dir)
    with sqlite3.connect(run_dir / "results.sqlite") as conn:
        for eps, drop in ((4, sorted(by_eps[4])[:2]), (8, sorted(by_eps[8]))):
            cid = conn.execute("SELECT cell_id FROM rows WHERE adv_path = ?",
                               (by_eps[eps][drop[0]]["adv_path"],)).fetchone()[0]
            conn.executemany("DELETE FROM rows WHERE cell_id = ? AND item_key = ?",
                             [(cid, k) for k in drop])
            conn.execute("UPDATE cells SET status = 'pending' WHERE cell_id = ?", (cid,))
    run_experiment(cfg, run_dir, progress=False, log=lambda m: None)
    assert table_rows(run_dir) == before

    # The previous eps's images are this cell's input: a missing one is named, with the fix.
    key = sorted(by_eps[2])[0]
    Path(run_dir / by_eps[1][key]["adv_path"]).unlink()
    with sqlite3.connect(run_dir / "results.sqlite") as conn:
        cid = conn.execute("SELECT cell_id FROM rows WHERE adv_path = ?",
                           (by_eps[2][key]["adv_path"],)).fetchone()[0]
        conn.execute("DELETE FROM rows WHERE cell_id = ?", (cid,))
        conn.execute("UPDATE cells SET status = 'pending' WHERE cell_id = ?", (cid,))
    with pytest.raises(AdvfaceError, match="missing") as err:
        run_experiment(cfg, run_dir, progress=False, log=lambda m: None)
    assert by_eps[1][key]["adv_path"] in str(err.value)
    # ... and one that is not within that eps of its probe is not taken as a starting point.
    from advface.data.images import save_png

    save_png(run_dir / by_eps[1][key]["adv_path"], torch.zeros(3, 150, 150))
    with pytest.raises(AdvfaceError, match="not this run's images"):
        run_experiment(cfg, run_dir, progress=False, log=lambda m: None)


@pytest.mark.parametrize(("eps", "match"), [("[]", "eps_8bit is empty"),
                                           ("null", "needs eps_8bit"), ("[4, 2]", "increasing")])
def test_sweep_config_errors(tmp_path: Path, tiny: dict[str, Path], eps: str, match: str) -> None:
    bad = write_config(tmp_path / "bad.yaml", tiny,
                       attacks=f"  - {{name: pgd, eps_8bit: {eps}, sweep: true}}")
    with pytest.raises(ConfigError, match=match):
        load_experiment(bad)


def test_sweep_defaults_on_for_a_grid_that_no_transfer_uses(tmp_path: Path,
                                                          tiny: dict[str, Path]) -> None:
    """Unset, ``sweep`` is resolved when the config is read (and recorded in config.yaml):
    on for two or more budgets, off for one budget, for a transfer source and for gallery-only
    attacks; an explicit value is kept; the grid is walked upwards whatever order it was
    written in."""
    cfg = load_experiment(write_config(tmp_path / "c.yaml", tiny, attacks="""
  - {name: pgd, eps_8bit: [8, 2, 4]}
  - {name: bim, eps_8bit: [4]}
  - {name: pgd-off, attack: pgd, eps_8bit: [2, 4], sweep: false}
  - {name: fgsm, eps_8bit: [2, 8]}
  - {name: pgd-gallery, attack: pgd, eps_8bit: [2, 4], surfaces: [gallery], n_probes: 2}"""))
    got = {a.name: (a.sweep, a.eps_8bit) for a in cfg.attacks}
    assert got == {"pgd": (True, [2, 4, 8]), "bim": (False, [4]), "pgd-off": (False, [2, 4]),
                   "fgsm": (False, [2, 8]),  # the transfer source of write_config
                   "pgd-gallery": (False, [2, 4])}
    from advface.config import to_yaml

    assert "sweep: true" in to_yaml(cfg)


def test_success_never_falls_as_eps_grows_by_default(tmp_path: Path,
                                                     tiny: dict[str, Path]) -> None:
    """The brief's rule, on a run with default settings: per probe, an attack with a larger
    budget never reports a weaker result than with a smaller one (unswept per-eps runs can:
    BIM's step grows with eps and overshoots)."""
    cfg = load_experiment(write_config(tmp_path / "c.yaml", tiny, attacks="""
  - {name: bim, params: {steps: 3}, eps_8bit: [1, 2, 4, 8], goals: [dodging, impersonation]}
  - {name: noise, eps_8bit: [1, 8], goals: [dodging]}
  - {name: fgsm, eps_8bit: [2], goals: [dodging]}"""))
    run_dir = run_experiment(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    with ResultsStore(run_dir / "results.sqlite") as store:
        cells = {c["cell_id"]: c for c in store.cells()}
        by_group: dict[tuple, dict[float, dict[str, int]]] = {}
        for r in store.rows():
            c = cells[r["cell_id"]]
            if c["eps"] is None or c["attack"] == "transfer":
                continue
            group = (c["model"], c["attack"], c["goal"])
            by_group.setdefault(group, {}).setdefault(c["eps"], {})[r["item_key"]] = r["success"]
    swept = [g for g in by_group if len(by_group[g]) > 1]
    assert len(swept) == 2 * 3  # 2 models x (bim dodging, bim impersonation, noise)
    for group in swept:
        grid = sorted(by_group[group])
        for small, large in itertools.pairwise(grid):
            for key, fooled in by_group[group][small].items():
                assert by_group[group][large][key] >= fooled, (group, small, large, key)


def test_cell_params_of_one_attack() -> None:
    """The params that identify an attack's cells in the store (their hash is the cell id, so
    a rename here would orphan every finished cell of an existing run)."""
    from advface.experiments.config import AttackSpec

    spec = AttackSpec(name="pgd-x", attack="pgd", params={"steps": 10}, eps_8bit=[8, 2, 4],
                      minimal_eps=True)
    assert spec.base_params == {"attack": "pgd", "steps": 10}
    assert spec.cell_params("probe") == spec.base_params
    assert spec.mineps_params == {"attack": "pgd", "steps": 10, "grid_8bit": [2, 4, 8]}
    swept = AttackSpec(name="pgd", eps_8bit=[2, 4], sweep=True)
    assert swept.cell_params("probe") == {"attack": "pgd", "sweep": True}
    assert swept.cell_params("gallery") == {"attack": "pgd"}


def test_resume_refuses_images_that_changed_under_the_same_names(tmp_path: Path,
                                                                 tiny: dict[str, Path]) -> None:
    """A run resumed on other pixels under the same file names (ADVFACE_DATA pointed at another
    copy of LFW, an image replaced in place) would mix two data sets' results: refused."""
    import shutil

    mine = {**tiny, "data": tmp_path / "data", "cache": tmp_path / "cache"}
    shutil.copytree(tiny["data"], mine["data"])
    cfg = load_experiment(write_config(tmp_path / "c.yaml", mine, attacks="""
  - {name: fgsm, eps_8bit: [4], goals: [dodging]}"""))
    run_dir = run_experiment(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    first = json.loads((run_dir / "run.json").read_text())["images_hash"]
    assert run_experiment(cfg, run_dir, progress=False, log=lambda m: None) == run_dir
    people = sorted(p for p in (mine["data"] / "lfw-tiny").iterdir() if p.is_dir())
    victim = sorted(people[0].glob("*.jpg"))[0]
    victim.write_bytes(sorted(people[1].glob("*.jpg"))[0].read_bytes())
    said: list[str] = []
    with pytest.raises(AdvfaceError,
                       match=r"not the images this run was made on.*resuming would mix") as err:
        run_experiment(cfg, run_dir, progress=False, log=said.append)
    assert "run.json" in str(err.value) and "new --out" in str(err.value)
    assert any(line.startswith("re-aligned 1 image") for line in said)
    # Reloading the run's models (interpret, defences) on those images is refused too.
    from advface.experiments.reload import load_run_models

    with pytest.raises(AdvfaceError, match="not the images this run was made on"):
        load_run_models(run_dir, ["dlib"], progress=False)
    fresh = run_experiment(cfg, tmp_path / "run2", progress=False, log=lambda m: None)
    assert json.loads((fresh / "run.json").read_text())["images_hash"] != first


def test_a_plain_identity_folder_runs_and_skips_verification_with_the_fix(
        tmp_path: Path, tiny: dict[str, Path]) -> None:
    """Users' own data: a folder of identity/image sub-folders, no LFW protocol files."""
    import shutil

    folder = tmp_path / "people"
    shutil.copytree(tiny["data"] / "lfw-tiny", folder)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"""
name: own
data: {{data_dir: {folder}, cache_dir: {tiny['cache']}, min_images: 2, distractors: false}}
models:
  - {{name: dlib, source: dlib}}
n_probes: 3
verification: true
align_upsample: 0
attacks:
  - {{name: fgsm, eps_8bit: [8], goals: [dodging]}}
""")
    said: list[str] = []
    run_dir = run_experiment(load_experiment(cfg_path), tmp_path / "run", progress=False,
                             log=said.append)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "done"
    assert info["data"] == {"image_root": str(folder), "name": "people", "lfw": False}
    skipped = [m for m in said if m.startswith("verification skipped")]
    assert len(skipped) == 1 and "pairs.txt" in skipped[0]
    assert "verification: false" in skipped[0]
    assert len(table_rows(run_dir)) == 3


def test_an_interrupted_minimal_eps_search_is_finished_on_resume(tmp_path: Path,
                                                                 tiny: dict[str, Path]) -> None:
    cfg = load_experiment(write_config(tmp_path / "c.yaml", tiny, attacks=FAST_ATTACKS))
    run_dir = run_experiment(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    before = table_rows(run_dir)
    # As an interruption inside the search leaves it: the largest eps's cell done, the
    # search's cell pending with some of its rows.
    with sqlite3.connect(run_dir / "results.sqlite") as conn:
        cells = [r[0] for r in conn.execute(
            "SELECT cell_id FROM cells WHERE attack = 'pgd-mineps'")]
        assert len(cells) == 2
        for cid in cells:
            conn.execute("UPDATE cells SET status = 'pending' WHERE cell_id = ?", (cid,))
            conn.execute('DELETE FROM "rows" WHERE cell_id = ? AND item_key IN (SELECT '
                         'item_key FROM "rows" WHERE cell_id = ? ORDER BY item_key LIMIT 2)',
                         (cid, cid))
    assert len(table_rows(run_dir)) == len(before) - 4
    run_experiment(cfg, run_dir, progress=False, log=lambda m: None)
    assert table_rows(run_dir) == before
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "done" and info["missing_cells"] == []


def test_resume_refuses_a_checkpoint_replaced_by_other_weights(tmp_path: Path,
                                                               tiny: dict[str, Path]) -> None:
    import shutil

    own = tmp_path / "adhoc"
    shutil.copytree(tiny["ckpt"].parent, own)
    path = write_config(tmp_path / "c.yaml", tiny, attacks="  - {name: fgsm, eps_8bit: [2]}")
    path.write_text(path.read_text().replace(str(tiny["ckpt"]), str(own / tiny["ckpt"].name)))
    cfg = load_experiment(path)
    run_dir = run_experiment(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    rows = table_rows(run_dir)
    torch.manual_seed(1)
    old = json.loads((own / "model.json").read_text())
    other = AdHocNet(AdHocArch(n_classes=len(old["class_names"]), widths=(8, 16), blocks=(1, 1),
                               internal_size=32, embedding_dim=16), class_names=old["class_names"])
    save_adhoc(other.eval(), own)
    with pytest.raises(CheckpointError, match="other weights"):
        run_experiment(cfg, run_dir, progress=False, log=lambda m: None)
    assert table_rows(run_dir) == rows


def test_an_unfinished_in_run_training_is_resumed_not_used(tmp_path: Path) -> None:
    from advface.config import parse_config
    from advface.experiments.config import ModelSpec
    from advface.experiments.models import load_model, training_finished
    from advface.training.train import TrainConfig, train

    data = make_tiny_lfw(tmp_path / "data", n_people=3, images_per_person=(6, 7), seed=2)
    cfg = parse_config({
        "data": {"data_dir": str(data), "cache_dir": str(tmp_path / "cache"), "min_images": 5,
                 "source": "center-crop"},
        "model": {"widths": [4, 8], "blocks": [1, 1], "internal_size": 16, "embedding_dim": 8},
        "augment": {"enabled": False}, "epochs": 3, "batch_size": 4, "threads": 1,
        "time_budget_minutes": None, "out_dir": str(tmp_path / "ckpt")}, TrainConfig)
    train(cfg, progress=False, stop_after_epochs=1)
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "model.safetensors").is_file() and not training_finished(ckpt)
    calls: list[str] = []

    def finish(spec: ModelSpec) -> Path:
        calls.append(spec.name)
        return train(cfg, resume=True, progress=False, evaluate=False).model_path

    spec = ModelSpec(name="adhoc", source="adhoc", checkpoint=ckpt,
                     train_config=tmp_path / "t.yaml")
    load_model(spec, train_fn=finish)
    assert calls == ["adhoc"] and training_finished(ckpt)
    load_model(spec, train_fn=finish)
    assert calls == ["adhoc"]  # finished: used as it is
    with pytest.raises(CheckpointError, match="not \\(fully\\) trained"):
        train(cfg.model_copy(update={"out_dir": tmp_path / "part"}), progress=False,
              stop_after_epochs=1)
        load_model(spec.model_copy(update={"checkpoint": tmp_path / "part"}))


def test_a_checkpoint_from_an_unfinished_training_run_is_named(tmp_path: Path,
                                                               tiny: dict[str, Path]) -> None:
    import shutil

    own = tmp_path / "adhoc"
    shutil.copytree(tiny["ckpt"].parent, own)
    (own / "state.json").write_text("{}")  # a training run's state, no recorded stop
    path = write_config(tmp_path / "c.yaml", tiny, attacks="  - {name: fgsm, eps_8bit: [2]}")
    path.write_text(path.read_text().replace(str(tiny["ckpt"]), str(own / tiny["ckpt"].name)))
    said: list[str] = []
    run_experiment(load_experiment(path), tmp_path / "run", progress=False, log=said.append)
    assert any("has not finished" in m and "'adhoc'" in m for m in said), said
    assert not any("has not finished" in m and "'dlib'" in m for m in said)
