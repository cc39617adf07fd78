"""Train the ad-hoc model a run needs when its checkpoint does not exist yet.

The model must learn from the same split the experiment attacks (same people, same held-out
probes), otherwise the probes would have been seen in training: that is checked, not assumed.
"""

from __future__ import annotations

from pathlib import Path

from advface.config import DataConfig
from advface.errors import ConfigError
from advface.experiments.config import ModelSpec

_SPLIT_KEYS = ("min_images", "probes_per_person", "probe_fraction", "seed")


def train_from_spec(spec: ModelSpec, data: DataConfig) -> Path:
    """Train (or resume training) ``spec``'s ad-hoc model into ``spec.checkpoint``."""
    from advface.training.train import load_train_config, train

    assert spec.train_config is not None
    cfg = load_train_config(spec.train_config)
    ours = data.split_kwargs()
    theirs = cfg.data.split_kwargs()
    diff = {k: (ours[k], theirs[k]) for k in _SPLIT_KEYS if ours[k] != theirs[k]}
    if diff:
        raise ConfigError(
            f"the training config's split differs from the experiment's: {diff} "
            "(experiment, training)", path=spec.train_config,
            fix="use the same data.min_images/probes_per_person/probe_fraction/seed in both, so "
            "that no attacked probe was a training image")
    updates: dict = {"data": cfg.data.model_copy(update={"data_dir": data.data_dir,
                                                           "cache_dir": data.cache_dir})}
    if spec.checkpoint is not None:
        updates["out_dir"] = Path(spec.checkpoint)
    cfg = cfg.model_copy(update=updates)
    result = train(cfg, resume=True)
    return result.model_path
