"""Ray runs of a tiny study: equal to the single-process runner, retried after a worker dies,
resumed after the driver dies. Local Ray only (2 CPUs, loopback, no dashboard)."""

from __future__ import annotations

import os
import sqlite3
import sys
import uuid
from pathlib import Path

import pytest
import ray  # a pinned dependency: a broken install must fail here, not skip
import torch

from advface.data.lfw import open_lfw
from advface.data.splits import make_closed_set_split
from advface.data.synthetic import make_tiny_lfw
from advface.errors import AdvfaceError
from advface.experiments.config import ExperimentConfig, load_experiment
from advface.experiments.distributed import ChunkTask, compute_chunk, run_distributed
from advface.experiments.runner import Runner, run_experiment
from advface.experiments.store import ROW_COLUMNS, ResultsStore
from advface.models.adhoc import AdHocArch, AdHocNet, save_adhoc

ATTACKS = """
  - {name: fgsm, eps_8bit: [2, 8], goals: [dodging, impersonation]}
  - {name: pgd, params: {steps: 2}, eps_8bit: [4], goals: [dodging], minimal_eps: true,
     models: [soft]}
  - {name: pgd-gallery, attack: pgd, params: {steps: 2}, eps_8bit: [4], surfaces: [gallery],
     goals: [dodging], models: [near], n_probes: 2}
  - {name: pgd-swept, attack: pgd, params: {steps: 2}, eps_8bit: [1, 2, 4], goals: [dodging],
     models: [soft], sweep: true}
"""
# Cells x probes: fgsm 2 models x 2 eps x 2 goals x 4; pgd 4 + pgd-mineps 4; gallery 2;
# swept pgd 3 eps x 4; transfer soft -> near 4 x 4.
N_ROWS = 2 * 2 * 2 * 4 + 4 + 4 + 2 + 3 * 4 + 4 * 4
# Runner chunks (batch_size 2) of the attack cells: fgsm 8 cells x 2, pgd 2, mineps 2, gallery 1,
# swept pgd 3 cells x 2 (run in 3 waves: each eps starts from the previous eps's images).
N_CHUNKS = 8 * 2 + 2 + 2 + 1 + 3 * 2


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray (2 CPUs, loopback, no dashboard) for the whole module."""
    # Test-module callables travel to workers by value (the tests dir is not importable there).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", object_store_memory=80 * 1024**2,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> ExperimentConfig:
    root = tmp_path_factory.mktemp("tinyray")
    data = make_tiny_lfw(root / "data", n_people=5, images_per_person=(3, 5), seed=1)
    cache = root / "cache"
    split = make_closed_set_split(open_lfw(data, cache).records, min_images=2,
                                  distractors=False, seed=0)
    torch.manual_seed(0)
    net = AdHocNet(AdHocArch(n_classes=len(split.identities), widths=(8, 16), blocks=(1, 1),
                             internal_size=32, embedding_dim=16), class_names=split.identities)
    ckpt = save_adhoc(net.eval(), root / "adhoc" / "model")
    path = root / "c.yaml"
    path.write_text(f"""
name: tinyray
seed: 0
data: {{data_dir: {data}, cache_dir: {cache}, min_images: 2, distractors: false}}
models:
  - {{name: soft, source: adhoc, checkpoint: {ckpt}, decision: softmax}}
  - {{name: near, source: adhoc, checkpoint: {ckpt}}}
n_probes: 4
batch_size: 2
verification: false
align_upsample: 0
attacks:
{ATTACKS}
transfer:
  - {{surrogate: soft, target: near, attack: fgsm}}
""")
    return load_experiment(path)


def table(run_dir: Path) -> dict[tuple[str, str], tuple]:
    with ResultsStore(run_dir / "results.sqlite") as store:
        assert all(c["status"] == "done" for c in store.cells())
        return {(r["cell_id"], r["item_key"]): tuple(r[c] for c in ROW_COLUMNS)
                for r in store.rows()}


@pytest.fixture(scope="module")
def reference(cfg: ExperimentConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process run, with one torch thread like each Ray task gets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_experiment(cfg, tmp_path_factory.mktemp("ref") / "run", progress=False,
                              log=lambda m: None)
    finally:
        torch.set_num_threads(threads)


class Counting:
    """Task body that records each call (as a file, visible across worker processes)."""

    def __init__(self, calls: Path) -> None:
        self.calls = calls

    def __call__(self, runner: Runner, task: ChunkTask) -> list[dict]:
        (self.calls / f"{task.cell.cid}-{'_'.join(map(str, task.chunks))}-{uuid.uuid4().hex}"
         ).touch()
        return compute_chunk(runner, task)


class CrashOnce(Counting):
    """Computes its task (adversarial PNGs included), then kills its worker, the first time."""

    def __call__(self, runner: Runner, task: ChunkTask) -> list[dict]:
        rows = super().__call__(runner, task)
        try:
            fd = os.open(self.calls.parent / "crashed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return rows
        os.close(fd)
        os._exit(1)


def failing_task(runner: Runner, task: ChunkTask) -> list[dict]:
    raise AdvfaceError("this attack cannot run here", fix="none: the test wants this error")


def test_ray_run_equals_single_process_and_resumes(
        ray_local: None, cfg: ExperimentConfig, reference: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    run_dir = run_distributed(cfg, tmp_path / "run", num_workers=2, progress=False,
                              log=lambda m: None, chunk_fn=Counting(calls))
    ref, got = table(reference), table(run_dir)
    assert len(ref) == N_ROWS
    assert got == ref
    for row in got.values():
        adv = dict(zip(ROW_COLUMNS, row, strict=True))["adv_path"]
        if adv is not None:
            assert (run_dir / adv).read_bytes() == (reference / adv).read_bytes()
    # one task per runner chunk of every attack cell; transfer re-evaluation is the driver's
    assert len(list(calls.iterdir())) == N_CHUNKS

    # Simulate a driver killed mid-cell: one chunk of one cell missing, the cell still pending.
    with sqlite3.connect(run_dir / "results.sqlite") as conn:
        cid, key = conn.execute("SELECT r.cell_id, r.item_key FROM rows r JOIN cells c "
                                "USING (cell_id) WHERE c.attack = 'fgsm' "
                                "ORDER BY r.cell_id, r.item_key LIMIT 1").fetchone()
        conn.execute("DELETE FROM rows WHERE cell_id = ? AND item_key = ?", (cid, key))
        conn.execute("UPDATE cells SET status = 'pending' WHERE cell_id = ?", (cid,))
    for p in calls.iterdir():
        p.unlink()
    run_distributed(cfg, run_dir, num_workers=2, progress=False, log=lambda m: None,
                    chunk_fn=Counting(calls))
    assert [p.name.split("-")[:2] for p in calls.iterdir()] == [[cid, "0"]]
    assert table(run_dir) == ref
    # and a rerun of the finished run computes nothing and changes nothing
    run_distributed(cfg, run_dir, num_workers=2, progress=False, log=lambda m: None,
                    chunk_fn=Counting(calls))
    assert len(list(calls.iterdir())) == 1
    assert table(run_dir) == ref


def test_killed_worker_is_retried_without_loss_or_duplicates(
        ray_local: None, cfg: ExperimentConfig, reference: Path, tmp_path: Path) -> None:
    # Only the fgsm cells of one model: their rows must equal the reference's same cells.
    small = cfg.model_copy(update={"attacks": [a for a in cfg.attacks if a.name == "fgsm"],
                                   "models": [m for m in cfg.models if m.name == "soft"],
                                   "transfer": []})
    calls = tmp_path / "calls"
    calls.mkdir()
    run_dir = run_distributed(small, tmp_path / "run", num_workers=2, shard_size=4,
                              max_retries=2, progress=False, log=lambda m: None,
                              chunk_fn=CrashOnce(calls))
    assert (tmp_path / "crashed").is_file(), "no worker was killed: nothing was tested"
    n_tasks = 2 * 2  # 2 eps x 2 goals; shard_size 4 = both chunks of a cell in one task
    assert len(list(calls.iterdir())) == n_tasks + 1  # exactly one task ran twice
    with sqlite3.connect(run_dir / "results.sqlite") as conn:
        n, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT cell_id || '/' || item_key) FROM rows").fetchone()
    assert n == distinct == n_tasks * 4
    got = table(run_dir)
    ref = {k: v for k, v in table(reference).items() if k[0] in {c for c, _ in got}}
    assert got == ref


def test_task_errors_reach_the_caller_as_themselves(
        ray_local: None, cfg: ExperimentConfig, tmp_path: Path) -> None:
    small = cfg.model_copy(update={"attacks": [a for a in cfg.attacks if a.name == "fgsm"],
                                   "models": [m for m in cfg.models if m.name == "soft"],
                                   "transfer": []})
    with pytest.raises(AdvfaceError, match="cannot run here"):
        run_distributed(small, tmp_path / "run", num_workers=2, progress=False,
                        log=lambda m: None, chunk_fn=failing_task)
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        assert store.rows() == [] and all(c["status"] == "pending" for c in store.cells())


def test_worker_deaths_beyond_max_retries_say_how_to_resume(
        ray_local: None, cfg: ExperimentConfig, tmp_path: Path) -> None:
    small = cfg.model_copy(update={"attacks": [a for a in cfg.attacks if a.name == "fgsm"],
                                   "models": [m for m in cfg.models if m.name == "soft"],
                                   "transfer": []})
    calls = tmp_path / "calls"
    calls.mkdir()
    with pytest.raises(AdvfaceError, match="retried 0 times") as err:
        run_distributed(small, tmp_path / "run", num_workers=1, shard_size=4, max_retries=0,
                        progress=False, log=lambda m: None, chunk_fn=CrashOnce(calls))
    assert "resume" in str(err.value)
