"""Re-open the classifiers of a finished run exactly as the runner built them.

Work done on a run after the fact (saliency of its probes and adversarial images) must explain
the same decision the attacks faced: the model of each ``ModelSpec`` in the run's config.yaml,
and the same decision module over the run's own gallery (split.json, identity order of
run.json). Nothing in the run directory is written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from advface.config import DataConfig
from advface.errors import AdvfaceError, CheckpointError, ConfigError, DataError
from advface.experiments.config import ModelSpec
from advface.experiments.models import (
    LoadedModel,
    build_scorer,
    fingerprint,
    load_model,
    same_model,
)


class RunConfig(BaseModel):
    """What re-opening a run needs from its config.yaml: data, models, chip and batch settings.

    Only these keys are validated. The attack and transfer sections describe work already
    done, and a rule added to them since (a new check on transfer attacks, say) must not make
    a finished run unreadable.
    """

    model_config = ConfigDict(extra="ignore")

    data: DataConfig = Field(default_factory=DataConfig)
    models: list[ModelSpec]
    batch_size: int = Field(32, ge=1)
    align_upsample: int = Field(1, ge=0, le=2)


@dataclass
class RunModels:
    """The run's config, identity order and re-built models (name -> LoadedModel).

    ``fingerprint_matches[name]`` is False when the weights differ from the ones the run
    recorded in models/<name>.json (the checkpoint was retrained since), None when the run
    recorded none.
    """

    cfg: RunConfig
    identity_names: list[str]
    models: dict[str, LoadedModel] = field(default_factory=dict)
    fingerprint_matches: dict[str, bool | None] = field(default_factory=dict)


def load_run_config(run_dir: Path) -> RunConfig:
    """config.yaml of a run directory (paths in it are absolute, as the runner saved them)."""
    from advface.config import load_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError("the run directory has no config.yaml", path=path,
                          fix="pass a directory written by `advface run`")
    return load_yaml(path, RunConfig)


def _recorded_images_hash(run_dir: Path) -> str | None:
    """The images hash run.json recorded (None for runs from before it)."""
    try:
        return json.loads((run_dir / "run.json").read_text()).get("images_hash")
    except (OSError, ValueError):
        return None


def _identity_names(run_dir: Path, gallery: list[str]) -> list[str]:
    path = run_dir / "run.json"
    names: list[str] = []
    if path.is_file():
        try:
            names = [str(n) for n in json.loads(path.read_text()).get("identity_names") or []]
        except (OSError, json.JSONDecodeError) as err:
            raise AdvfaceError(f"unreadable run.json ({err})", path=path,
                               fix="restore the run.json the run wrote") from err
    # The runner's rule when run.json predates identity_names: gallery identities, sorted.
    return names or sorted({k.split("/", 1)[0] for k in gallery})


def load_run_models(run_dir: str | Path, names: list[str] | None = None, *,
                    data_dir: Path | None = None, cache_dir: Path | None = None,
                    device: str = "cpu", progress: bool = False) -> RunModels:
    """Load the named models of a run (default: all) with their decision modules.

    Softmax decisions need nothing but the checkpoint; gallery decisions embed the run's
    gallery chips, which needs the data set (``data_dir``/``cache_dir`` override the run's
    config; the chips and embeddings come from the cache when the run computed them).
    An ad-hoc checkpoint that no longer exists is an error: it is never retrained here.
    """
    from advface.data.splits import ClosedSetSplit

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    updates = {k: v for k, v in (("data_dir", data_dir), ("cache_dir", cache_dir))
               if v is not None}
    if updates:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
    specs = {m.name: m for m in cfg.models}
    wanted = list(names) if names else list(specs)
    unknown = [n for n in wanted if n not in specs]
    if unknown:
        raise ConfigError(f"the run has no model {unknown[0]!r}", path=run_dir / "config.yaml",
                          fix=f"use one of: {', '.join(specs)}")
    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise DataError("the run directory has no split.json", path=split_path,
                        fix="pass a directory written by `advface run`")
    split = ClosedSetSplit.load(split_path)
    gallery_keys = sorted(split.gallery)
    identity_names = _identity_names(run_dir, gallery_keys)
    index = {n: i for i, n in enumerate(identity_names)}
    out = RunModels(cfg=cfg, identity_names=identity_names)

    chips = None
    labels = None
    if any(specs[n].decision != "softmax" for n in wanted):
        from advface.align.chips import build_chips
        from advface.data.lfw import open_lfw

        lfw = open_lfw(cfg.data.resolved_data_dir(), cfg.data.resolved_cache_dir())
        by_key = lfw.by_key
        needed = sorted(set(gallery_keys) | set(split.probes))  # what images_hash covers
        absent = [k for k in needed if k not in by_key]
        if absent:
            raise DataError(f"{len(absent)} images of the run are not in the data set "
                            f"(e.g. {absent[:3]})", path=cfg.data.resolved_data_dir(),
                            fix="pass --data with the LFW copy the run used")
        chips = build_chips([by_key[k] for k in needed], cfg.data.resolved_cache_dir(),
                            upsample=cfg.align_upsample, progress=progress)
        missing = [k for k in needed if k not in chips]
        if missing:
            raise chips.missing_error(missing, lfw.image_root, what="images of the run")
        # Other pixels under the same names would make the gallery decide other identities
        # than the run's rows say.
        chips.ensure_images_of_run(needed, _recorded_images_hash(run_dir),
                                   path=run_dir / "run.json",
                                   fix="pass --data with the data set the run used")
        labels = torch.tensor([index[k.split("/", 1)[0]] for k in gallery_keys])

    for name in wanted:
        spec = specs[name]
        try:
            model = load_model(spec, train_fn=None).to(device)
        except CheckpointError as err:
            raise CheckpointError(f"model {name!r} of the run cannot be loaded: {err.message}",
                                  path=err.path, fix=err.fix or "restore its checkpoint") from err
        fp = fingerprint(model)
        scorer = build_scorer(spec, model, identity_names, gallery_keys, labels, chips,
                              batch_size=cfg.batch_size,
                              cache_dir=cfg.data.resolved_cache_dir(), progress=progress)
        out.models[name] = LoadedModel(spec=spec, model=model, scorer=scorer, fingerprint=fp)
        recorded = None
        info_path = run_dir / "models" / f"{name}.json"
        if info_path.is_file():
            try:
                recorded = json.loads(info_path.read_text()).get("fingerprint")
            except (OSError, json.JSONDecodeError):
                recorded = None
        out.fingerprint_matches[name] = (None if recorded is None
                                         else same_model(model, recorded, fp))
    return out
