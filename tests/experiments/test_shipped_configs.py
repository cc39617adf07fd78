"""Every experiment config shipped in configs/ loads (a typo there fails here, not mid-run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from advface.experiments.config import load_experiment

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*.yaml")
                     if "attacks" in (yaml.safe_load(p.read_text()) or {}))


def test_there_are_experiment_configs() -> None:
    assert {p.name for p in EXPERIMENTS} >= {"lfw_default.yaml", "lfw_defences.yaml"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_config_loads(path: Path) -> None:
    cfg = load_experiment(path)
    assert cfg.name == path.stem and cfg.models and cfg.attacks
    adhoc = [m for m in cfg.models if m.source == "adhoc"]
    for m in adhoc:  # checkpoints resolve next to the repository, as documented
        assert m.checkpoint is not None and "runs/models" in str(m.checkpoint)
