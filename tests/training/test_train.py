"""Training loop on a tiny generated LFW: learns, checkpoints, resumes exactly, refuses damage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file
from typer.testing import CliRunner

from advface.config import parse_config
from advface.data.synthetic import make_tiny_lfw
from advface.errors import CheckpointError, ConfigError
from advface.models.adhoc import load_adhoc
from advface.training import train as train_module
from advface.training.train import TrainConfig, epoch_order, lr_at, pool_images, train


@pytest.fixture(scope="module")
def tiny_lfw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lfw")
    return make_tiny_lfw(root, n_people=4, images_per_person=(8, 10), size=160, seed=0)


def config(tiny_lfw: Path, out: Path, **over) -> TrainConfig:
    d = {
        "data": {"data_dir": str(tiny_lfw), "cache_dir": str(tiny_lfw / "cache"),
                 "min_images": 5, "val_fraction": 0.25},
        "model": {"widths": [4, 8], "blocks": [1, 1], "internal_size": 16,
                  "embedding_dim": 8},
        "loss": {"kind": "cosface", "scale": 8.0, "margin": 0.1},
        "augment": {"enabled": False},
        "epochs": 3, "batch_size": 8, "lr": 0.05, "sampling": "natural",
        "threads": 1, "time_budget_minutes": None, "out_dir": str(out),
    }
    for key, value in over.items():
        if isinstance(value, dict):
            d[key] = {**d.get(key, {}), **value}
        else:
            d[key] = value
    return parse_config(d, TrainConfig)


def test_training_reduces_the_loss_and_writes_the_run(tiny_lfw: Path, tmp_path: Path) -> None:
    cfg = config(tiny_lfw, tmp_path / "run", epochs=6, loss={"kind": "softmax"})
    result = train(cfg, progress=False)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    for name in ("config.yaml", "split.json", "train_split.json", "history.json",
                 "history.csv", "state.json", "model.safetensors", "model.json", "eval.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert len(list((tmp_path / "run").glob("state-epoch*.safetensors"))) == 1
    ev = result.evaluation
    assert ev is not None and ev["n_identities"] == 4 and ev["softmax"] is not None
    assert set(ev["gallery_nn"]["rank_k"]) == {"1", "5", "10", "20"}
    model = load_adhoc(tmp_path / "run")
    assert model.metadata["training"]["epoch"] == result.best_epoch
    assert len(model.metadata["training"]["history"]) == 6
    # probes never leak into training or validation
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    used = json.loads((tmp_path / "run" / "train_split.json").read_text())
    assert not set(split["probes"]) & (set(used["train"]) | set(used["val"]))


def test_resume_after_interruption_equals_an_uninterrupted_run(
        tiny_lfw: Path, tmp_path: Path) -> None:
    over = {"augment": {"enabled": True}, "model": {"dropout": 0.2}, "sampling": "sqrt"}
    full = train(config(tiny_lfw, tmp_path / "full", **over), progress=False, evaluate=False)
    part = train(config(tiny_lfw, tmp_path / "part", **over), progress=False,
                 stop_after_epochs=1)
    assert part.stop_reason == "interrupted" and part.epochs_completed == 1
    state = json.loads((tmp_path / "part" / "state.json").read_text())
    assert state["epoch"] == 1
    resumed = train(config(tiny_lfw, tmp_path / "part", **over), resume=True, progress=False,
                    evaluate=False)
    assert resumed.epochs_completed == 3
    a = load_file(tmp_path / "full" / "state-epoch0003.safetensors")
    b = load_file(tmp_path / "part" / "state-epoch0003.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = ("seconds", "elapsed")
    assert [{k: v for k, v in r.items() if k not in strip} for r in full.history] == \
           [{k: v for k, v in r.items() if k not in strip} for r in resumed.history]


def test_cli_resume_continues_from_the_saved_epoch(tiny_lfw: Path, tmp_path: Path) -> None:
    """`advface train adhoc --resume` (the command the README gives) continues an interrupted
    run from its last finished epoch instead of starting again; without --resume an existing
    run is refused."""
    from advface.cli.main import app

    cfg = config(tiny_lfw, tmp_path / "unused", epochs=2)
    d = cfg.model_dump(mode="json")
    d.pop("out_dir")
    yaml_path = tmp_path / "cfg.yaml"
    yaml_path.write_text(json.dumps(d))
    out = tmp_path / "cli"
    part = train(config(tiny_lfw, out, epochs=2), progress=False, stop_after_epochs=1)
    assert part.epochs_completed == 1
    first = json.loads((out / "history.json").read_text())
    assert len(first) == 1
    runner = CliRunner()
    args = ["train", "adhoc", "--config", str(yaml_path), "--out", str(out), "--quiet"]
    refused = runner.invoke(app, args)
    assert refused.exception is not None and "resume" in str(refused.exception)
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "state.json").read_text())["epoch"] == 2
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and history[0] == first[0]  # epoch 1 kept as it was, not redone


def test_existing_run_needs_resume_and_the_same_config(tiny_lfw: Path, tmp_path: Path) -> None:
    train(config(tiny_lfw, tmp_path / "run"), progress=False, stop_after_epochs=1)
    with pytest.raises(ConfigError, match="already holds"):
        train(config(tiny_lfw, tmp_path / "run"), progress=False)
    with pytest.raises(ConfigError, match="differs"):
        train(config(tiny_lfw, tmp_path / "run", lr=0.01), resume=True, progress=False)


def test_corrupt_training_state_is_refused(tiny_lfw: Path, tmp_path: Path) -> None:
    train(config(tiny_lfw, tmp_path / "run"), progress=False, stop_after_epochs=1)
    tensors = next((tmp_path / "run").glob("state-epoch*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checksum"):
        train(config(tiny_lfw, tmp_path / "run"), resume=True, progress=False)
    (tmp_path / "run" / "state.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable"):
        train(config(tiny_lfw, tmp_path / "run"), resume=True, progress=False)


def test_siamese_contrastive_training_runs_and_has_no_softmax(
        tiny_lfw: Path, tmp_path: Path) -> None:
    cfg = config(tiny_lfw, tmp_path / "siam", epochs=2,
                 loss={"kind": "contrastive", "pairs_per_batch": 32}, sampling="balanced")
    result = train(cfg, progress=False)
    assert result.evaluation["softmax"] is None
    assert result.evaluation["gallery_nn"]["rank_k"]["1"] >= 0.0
    assert not hasattr(load_adhoc(tmp_path / "siam"), "logits")


def test_time_budget_stops_cleanly_and_keeps_the_best(
    tiny_lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake clock that advances one second per reading: the budget runs out after a few
    # epochs whatever the machine's load (a real 30 ms budget failed on a busy machine).
    import types

    import advface.training.train as train_module

    ticks = iter(range(10**6))
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
    cfg = config(tiny_lfw, tmp_path / "run", epochs=50, time_budget_minutes=0.25)
    result = train(cfg, progress=False, evaluate=False)
    assert result.stop_reason == "time budget"
    assert 1 <= result.epochs_completed < 50
    assert load_adhoc(result.model_path).metadata["training"]["epoch"] == result.best_epoch


def test_schedule_and_sampling_are_pure_functions(tiny_lfw: Path, tmp_path: Path) -> None:
    cfg = config(tiny_lfw, tmp_path, lr=0.1, schedule="onecycle", warmup_fraction=0.25)
    lrs = [lr_at(cfg, s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < 0.001 and lrs == [lr_at(cfg, s, 100) for s in range(100)]
    labels = torch.tensor([0] * 90 + [1] * 10)
    bal = config(tiny_lfw, tmp_path, sampling="balanced")
    drawn = epoch_order(labels, bal, 4000, torch.Generator().manual_seed(0))
    share = float((labels[drawn] == 1).float().mean())
    assert 0.45 < share < 0.55  # classes equally likely despite 9:1 images
    pk = config(tiny_lfw, tmp_path, sampling="pk", batch_size=8, pk_images=4)
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 5)
    drawn = labels[epoch_order(labels, pk, 40, torch.Generator().manual_seed(0))].view(-1, 2, 4)
    assert drawn.shape == (5, 2, 4)
    assert bool((drawn == drawn[:, :, :1]).all())  # each group of K is one person
    assert bool((drawn[:, 0, 0] != drawn[:, 1, 0]).all())  # P distinct people per batch


def test_cli_train_and_eval(tiny_lfw: Path, tmp_path: Path) -> None:
    from advface.cli.main import app

    yaml_path = tmp_path / "cfg.yaml"
    cfg = config(tiny_lfw, tmp_path / "unused", epochs=1)
    d = cfg.model_dump(mode="json")
    d.pop("out_dir")
    yaml_path.write_text(json.dumps(d))  # JSON is valid YAML
    runner = CliRunner()
    res = runner.invoke(app, ["train", "adhoc", "--config", str(yaml_path), "--out",
                              str(tmp_path / "cli"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "rank-1" in res.output and (tmp_path / "cli" / "model.json").is_file()
    res = runner.invoke(app, ["train", "eval", "--checkpoint", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "gallery NN" in res.output and "random" in res.output
    saved = json.loads((tmp_path / "cli" / "eval.json").read_text())
    assert f"{saved['gallery_nn']['rank_k']['1']:.3f}" in res.output


@pytest.mark.parametrize("name", ["train_adhoc.yaml", "train_adhoc_min10.yaml",
                                  "train_siamese.yaml"])
def test_shipped_presets_are_valid(name: str) -> None:
    from advface.training.train import load_train_config

    path = Path(__file__).resolve().parents[2] / "configs" / name
    cfg = load_train_config(path)
    assert cfg.time_budget_minutes is not None and cfg.time_budget_minutes <= 20
    assert cfg.data.probes_per_person == 1 and cfg.data.seed == 0
    assert (cfg.loss.kind == "contrastive") == (name == "train_siamese.yaml")


def test_resume_keeps_the_runs_own_split_whatever_the_data_now_holds(
        tiny_lfw: Path, tmp_path: Path) -> None:
    import shutil

    from advface.errors import DataError

    train(config(tiny_lfw, tmp_path / "run"), progress=False, stop_after_epochs=1)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    # Another copy of the data (data_dir may change on resume) lacking one probe: redrawing
    # the split would make a training image that person's probe. It is refused instead.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_lfw, copy, ignore=shutil.ignore_patterns("cache"))
    probe = split["probes"][0]
    next(copy.rglob(Path(probe).name)).unlink()
    with pytest.raises(DataError, match="not in the data set"):
        train(config(copy, tmp_path / "run"), resume=True, progress=False)
    assert json.loads((tmp_path / "run" / "split.json").read_text()) == split
    # The held-out validation images are checked too.
    held = tmp_path / "run" / "train_split.json"
    doc = json.loads(held.read_text())
    doc["val"], doc["train"] = doc["train"][:1], doc["val"] + doc["train"][1:]
    held.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="hold-out differs"):
        train(config(tiny_lfw, tmp_path / "run"), resume=True, progress=False)


def test_a_run_that_stopped_early_stays_stopped_on_resume(tiny_lfw: Path, tmp_path: Path
                                                          ) -> None:
    over = {"epochs": 40, "patience": 1, "lr": 0.5}
    first = train(config(tiny_lfw, tmp_path / "run", **over), progress=False, evaluate=False)
    assert first.stop_reason == "early stopping" and first.epochs_completed < 40
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    again = train(config(tiny_lfw, tmp_path / "run", **over), resume=True, progress=False,
                  evaluate=False)
    assert again.stop_reason == "early stopping"
    assert again.epochs_completed == first.epochs_completed
    before, after = load(weights), load_file(tmp_path / "run" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.fixture
def caller_torch_state() -> Iterator[tuple[int, torch.Tensor]]:
    """A caller on 3 threads with a seeded stream: (threads, its next 4 draws), restored after."""
    before = torch.get_num_threads()
    state = torch.get_rng_state()
    torch.set_num_threads(3)
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    yield 3, expected
    torch.set_num_threads(before)
    torch.set_rng_state(state)


def test_train_gives_the_caller_its_threads_and_random_stream_back(
        tiny_lfw: Path, tmp_path: Path, caller_torch_state: tuple[int, torch.Tensor]) -> None:
    """`advface run` trains in-process, then attacks: on the caller's threads and stream."""
    threads, expected = caller_torch_state
    result = train(config(tiny_lfw, tmp_path / "run", epochs=1), progress=False, evaluate=False)
    assert result.epochs_completed == 1
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(4), expected)


def test_train_gives_the_caller_state_back_when_it_fails(
        tiny_lfw: Path, tmp_path: Path, caller_torch_state: tuple[int, torch.Tensor],
        monkeypatch: pytest.MonkeyPatch) -> None:
    threads, expected = caller_torch_state

    def fail(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("after the threads and the seed were set")

    monkeypatch.setattr(train_module, "pool_images", fail)
    with pytest.raises(RuntimeError, match="after the threads"):
        train(config(tiny_lfw, tmp_path / "run"), progress=False, evaluate=False)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("size", [8, 4])
def test_pool_images_leaves_a_float_input_alone(size: int) -> None:
    """On a float32 input ``.to(float32)`` is the caller's tensor: no in-place division."""
    images = (torch.arange(2 * 3 * 8 * 8) % 256).to(torch.float32).reshape(2, 3, 8, 8)
    before = images.clone()
    out = pool_images(images, size, chunk=1)
    assert torch.equal(images, before)
    assert out.shape == (2, 3, size, size)
    assert torch.equal(out, pool_images(before.to(torch.uint8), size))
