"""Adversarial training on a tiny generated LFW: more robust than standard training, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from defence_models import train_dict
from safetensors.torch import load_file

from advface.config import parse_config
from advface.defences import adversarial_training
from advface.defences.adversarial_training import (
    AdvTrainConfig,
    adv_train,
    load_advtrain_config,
    perturb_batch,
)
from advface.defences.evaluate import AttackPlan, evaluate_defence
from advface.errors import CheckpointError, ConfigError
from advface.interpret.scoring import LogitScorer
from advface.models.adhoc import AdHocArch, AdHocNet, load_adhoc
from advface.training.data import prepare_data
from advface.training.losses import ClassificationLoss
from advface.training.train import TrainConfig


def adv_config(tiny_lfw: Path, out: Path, attack: str = "pgd", **train_over) -> AdvTrainConfig:
    return parse_config({
        "train": train_dict(tiny_lfw, out, **train_over),
        "adversarial": {"attack": attack, "eps_8bit": 8, "steps": 3, "val_steps": 3},
        "evaluation": {"eps_8bit": []},
    }, AdvTrainConfig)


def pgd_robust_accuracy(run: Path, tiny_lfw: Path, eps: float = 8.0) -> tuple[float, float]:
    """(clean, PGD-10 robust) accuracy on the gallery images at 150 px, quantised."""
    data = prepare_data(parse_config(train_dict(tiny_lfw, run), TrainConfig).data)
    x = data.gallery_images.float() / 255
    scorer = LogitScorer(load_adhoc(run))
    res = evaluate_defence(scorer, x, data.gallery_labels, eps_8bit=(eps,),
                           attacks=[AttackPlan("pgd", "adaptive", steps=10)])
    return res.clean_accuracy, res.robust("pgd", eps)


@pytest.mark.parametrize("attack", ["pgd", "fgsm-rs"])
def test_adversarial_training_beats_standard_training_under_pgd(
        tiny_lfw: Path, tmp_path: Path, standard_run: Path, attack: str) -> None:
    result = adv_train(adv_config(tiny_lfw, tmp_path / "adv", attack), progress=False,
                       evaluate=False)
    assert result.epochs_completed == 6
    hist = result.history
    assert {"val_robust_acc", "val_robust_balanced_acc", "eps255"} <= set(hist[-1])
    assert hist[-1]["val_robust_balanced_acc"] <= hist[-1]["val_balanced_acc"] + 1e-9
    std_clean, std_robust = pgd_robust_accuracy(standard_run, tiny_lfw)
    adv_clean, adv_robust = pgd_robust_accuracy(tmp_path / "adv", tiny_lfw)
    assert std_clean >= 0.8 and adv_clean >= 0.8
    assert adv_robust >= std_robust + 0.2, (std_robust, adv_robust)


def test_resume_after_interruption_equals_an_uninterrupted_run(tiny_lfw: Path,
                                                                tmp_path: Path) -> None:
    over = {"epochs": 2}
    adv_train(adv_config(tiny_lfw, tmp_path / "full", "fgsm-rs", **over), progress=False,
              evaluate=False)
    part = adv_train(adv_config(tiny_lfw, tmp_path / "part", "fgsm-rs", **over),
                     progress=False, stop_after_epochs=1)
    assert part.stop_reason == "interrupted"
    with pytest.raises(ConfigError, match="already holds"):
        adv_train(adv_config(tiny_lfw, tmp_path / "part", "fgsm-rs", **over), progress=False)
    changed = adv_config(tiny_lfw, tmp_path / "part", "pgd", **over)
    with pytest.raises(ConfigError, match="differs"):
        adv_train(changed, resume=True, progress=False)
    adv_train(adv_config(tiny_lfw, tmp_path / "part", "fgsm-rs", **over), resume=True,
              progress=False, evaluate=False)
    a = load_file(tmp_path / "full" / "state-epoch0002.safetensors")
    b = load_file(tmp_path / "part" / "state-epoch0002.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    hist = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2]


def test_perturb_batch_stays_in_budget_and_raises_the_loss() -> None:
    torch.manual_seed(0)
    model = AdHocNet(AdHocArch(n_classes=3, head="softmax", widths=(4,), blocks=(1,),
                               internal_size=8, embedding_dim=4), ["a", "b", "c"]).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss_fn = ClassificationLoss("softmax")
    eps = 8 / 255
    xa = perturb_batch(model, x, y, loss_fn, eps=eps, step_size=2 / 255, steps=5,
                       generator=torch.Generator().manual_seed(1))
    assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        before = loss_fn(model.head_outputs(model.features(x)), y)
        after = loss_fn(model.head_outputs(model.features(xa)), y)
    assert after > before
    again = perturb_batch(model, x, y, loss_fn, eps=eps, step_size=2 / 255, steps=5,
                          generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(xa, again)


def test_contrastive_models_are_refused(tiny_lfw: Path, tmp_path: Path) -> None:
    cfg = adv_config(tiny_lfw, tmp_path / "c", loss={"kind": "contrastive"})
    with pytest.raises(ConfigError, match="classification head"):
        adv_train(cfg, progress=False)


def _init_config(tiny_lfw: Path, out: Path | str, init: Path | str, **data_over
                 ) -> AdvTrainConfig:
    td = train_dict(tiny_lfw, out, epochs=2)
    td["data"].update(data_over)
    return parse_config({"train": td, "adversarial": {"attack": "fgsm-rs", "eps_8bit": 4,
                                                      "val_steps": 0,
                                                      "init_checkpoint": str(init)},
                         "evaluation": {"eps_8bit": []}}, AdvTrainConfig)


def test_init_checkpoint_must_come_from_the_same_split_and_hold_out(
        tiny_lfw: Path, tmp_path: Path, standard_run: Path) -> None:
    # Same people, another split: the standard model trained on some of this run's probes.
    with pytest.raises(CheckpointError, match="another split"):
        adv_train(_init_config(tiny_lfw, tmp_path / "seed1", standard_run, seed=1),
                  progress=False, evaluate=False)
    with pytest.raises(CheckpointError, match="validation"):
        adv_train(_init_config(tiny_lfw, tmp_path / "val", standard_run, val_fraction=0.3),
                  progress=False, evaluate=False)
    done = adv_train(_init_config(tiny_lfw, tmp_path / "ok", standard_run), progress=False,
                     evaluate=False)
    assert done.epochs_completed == 2


def test_a_run_started_with_relative_paths_resumes_from_another_folder(
        tiny_lfw: Path, tmp_path: Path, standard_run: Path, monkeypatch) -> None:
    monkeypatch.chdir(standard_run.parent)
    cfg = _init_config(tiny_lfw, Path("..") / tmp_path.name / "rel", standard_run.name)
    part = adv_train(cfg, progress=False, stop_after_epochs=1)
    assert part.stop_reason == "interrupted"
    saved = load_advtrain_config(tmp_path / "rel" / "config.yaml")
    assert Path(saved.adversarial.init_checkpoint) == standard_run.resolve()
    assert Path(saved.train.data.data_dir).is_absolute()
    monkeypatch.chdir(tmp_path)
    resumed = adv_train(saved, resume=True, progress=False, evaluate=False)
    assert resumed.epochs_completed == 2
    # A missing init checkpoint is named, not hashed by its path into "another config".
    gone = _init_config(tiny_lfw, tmp_path / "gone", tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="nowhere"):
        adv_train(gone, progress=False)
    with pytest.raises(CheckpointError, match="cannot read the init_checkpoint"):
        gone.identity_hash()


def test_fine_tuning_may_start_from_an_adversarially_trained_model(tmp_path: Path) -> None:
    """Its recorded config is an advtrain one (train.data, not data): read either shape."""
    from types import SimpleNamespace

    from advface.defences.adversarial_training import _init_from
    from advface.models.adhoc import save_adhoc
    from advface.training.data import TrainDataConfig

    arch = AdHocArch(n_classes=3, head="softmax", widths=(4,), blocks=(1,), internal_size=8,
                     embedding_dim=4)
    torch.manual_seed(0)
    src = AdHocNet(arch, ["a", "b", "c"])
    src.metadata["training"] = {"split_hash": "H", "config": {
        "train": {"data": {"val_fraction": 0.1, "seed": 0}}, "adversarial": {}}}
    path = save_adhoc(src, tmp_path / "adv")
    fresh = AdHocNet(arch, ["a", "b", "c"])
    data = SimpleNamespace(split=SimpleNamespace(hash="H"))
    _init_from(fresh, path, data, TrainDataConfig(val_fraction=0.1, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 src.state_dict().values(), strict=True))
    with pytest.raises(CheckpointError, match="validation"):
        _init_from(fresh, path, data, TrainDataConfig(val_fraction=0.2, seed=0))


@pytest.mark.parametrize("fails", [False, True])
def test_adv_train_gives_the_caller_its_threads_and_random_stream_back(
        tiny_lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool) -> None:
    """The caller's thread count and global stream come back, also when training raises."""
    torch.set_num_threads(3)  # the autouse fixture restores the session's count
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    if fails:
        def fail(*args: object, **kwargs: object) -> torch.Tensor:
            raise RuntimeError("after the threads and the seed were set")

        monkeypatch.setattr(adversarial_training, "pool_images", fail)
    cfg = adv_config(tiny_lfw, tmp_path / "adv", epochs=1)
    if fails:
        with pytest.raises(RuntimeError, match="after the threads"):
            adv_train(cfg, progress=False, evaluate=False)
    else:
        assert adv_train(cfg, progress=False, evaluate=False).epochs_completed == 1
    assert torch.get_num_threads() == 3
    assert torch.equal(torch.rand(4), expected)
