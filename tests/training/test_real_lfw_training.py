"""A short real-LFW training run: the from-scratch model must beat chance clearly (slow)."""

from __future__ import annotations

import pytest

from advface.config import parse_config
from advface.paths import default_data_dir
from advface.training.train import TrainConfig, train


@pytest.mark.slow
def test_short_training_on_real_lfw_beats_chance(tmp_path) -> None:
    data_dir = default_data_dir()
    if not data_dir.exists():
        pytest.skip(f"real LFW not found at {data_dir} (set $ADVFACE_DATA)")
    cfg = parse_config({
        "data": {"data_dir": str(data_dir), "source": "center-crop", "min_images": 20},
        "loss": {"kind": "softmax", "label_smoothing": 0.1},
        "epochs": 4, "threads": 2, "time_budget_minutes": 10, "out_dir": str(tmp_path / "run"),
    }, TrainConfig)
    result = train(cfg, progress=False)
    ev = result.evaluation
    assert ev is not None and ev["n_identities"] == 62
    chance = ev["random"]["rank_k"]["5"]
    assert ev["softmax"]["rank_k"]["5"] > 3 * chance
    assert ev["gallery_nn"]["rank_k"]["5"] > 3 * chance
