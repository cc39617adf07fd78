"""The experiment config: what one `advface run` computes (data, models, attacks, transfer).

Strict (unknown keys are errors with a suggestion), so a typo never silently drops a cell.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from advface.config import ConfigPath, DataConfig, StrictModel, load_yaml, parse_config

#: Names become file names in the run directory (models/<name>.json, clean/<name>.json):
#: no path separators or NUL, and no leading "." (so not "." or ".."); anything else goes.
Name = Annotated[str, StringConstraints(pattern=r"^[^/\\\x00.][^/\\\x00]*$")]

Goal = Literal["dodging", "impersonation"]
Surface = Literal["probe", "gallery"]
Norm = Literal["linf", "l2"]


class ModelSpec(StrictModel):
    """One classifier C: where its weights come from and how it decides an identity."""

    name: Name = Field(description="label used in results and the report (no / or \\, no "
                       "leading '.')")
    source: Literal["dlib", "adhoc", "onnx"] = Field(description="which loader builds the model")
    checkpoint: ConfigPath | None = Field(
        None, description="adhoc: checkpoint dir/file; onnx: the .onnx file; dlib: a .dat "
        "descriptor file in dlib's format (default: the one face_recognition_models installs)")
    train_config: ConfigPath | None = Field(
        None, description="adhoc: training config used when the checkpoint does not exist yet")
    decision: Literal["gallery-nearest", "gallery-centroid", "softmax"] = Field(
        "gallery-nearest", description="identity decision: nearest gallery image, identity "
        "centroid, or the softmax head (adhoc only)")
    input_size: int | None = Field(None, ge=1, description="onnx: square input size "
                                   "(default: the one the graph declares)")
    metric: Literal["cosine", "euclidean"] | None = Field(None, description="onnx: metric")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.source == "onnx" and self.checkpoint is None:
            raise ValueError("an onnx model needs 'checkpoint: path/to/model.onnx'")
        if self.source == "adhoc" and self.checkpoint is None and self.train_config is None:
            raise ValueError("an adhoc model needs 'checkpoint' or 'train_config'")
        if self.decision == "softmax" and self.source != "adhoc":
            raise ValueError("decision 'softmax' needs a model with a softmax head (adhoc)")
        # A setting the source's loader does not read would be recorded as if it had been used.
        unused = [k for k, only in (("input_size", "onnx"), ("metric", "onnx"),
                                    ("train_config", "adhoc"))
                  if getattr(self, k) is not None and self.source != only]
        if unused:
            raise ValueError(f"model {self.name!r} ({self.source}) does not use "
                             f"{', '.join(unused)}: remove it (only {self.source} models' own "
                             "settings apply)")
        return self


class AttackSpec(StrictModel):
    """One attack swept over epsilons, goals and surfaces, on some or all models."""

    name: Name = Field(description="label of the attack in results (default: the attack)")
    attack: str | None = Field(None, description="registry name (fgsm, bim, pgd, mifgsm, cw, "
                               "deepfool, square, universal); default: name")
    params: dict[str, Any] = Field(default_factory=dict, description="attack hyper-parameters")
    norm: Norm = "linf"
    eps_8bit: list[float] | None = Field(
        None, description="budgets in 8-bit units (2 = 2/255); omit for minimum-norm attacks "
        "(cw, deepfool)")
    goals: list[Goal] = Field(default_factory=lambda: ["dodging"], min_length=1)
    surfaces: list[Surface] = Field(default_factory=lambda: ["probe"], min_length=1)
    models: list[str] | None = Field(None, min_length=1, description="model names; default all")
    n_probes: int | None = Field(None, ge=1, description="fewer probes for costly attacks")
    minimal_eps: bool = Field(False, description="also search each probe's minimal fooling eps "
                              "over eps_8bit")
    sweep: bool | None = Field(
        None, description="probe cells walk eps_8bit upwards as one sweep: a probe fooled at "
        "the previous eps keeps that adversarial (it lies inside the larger ball), the others "
        "are attacked again warm-started from it; success is then monotone in eps, and a "
        "probe fooled at a smaller eps costs nothing at the larger ones (the main job's PGD "
        "grid: 25% fewer steps; benchmarks/runner_sweep.py). Gallery cells are not affected. "
        "Default (unset): on for an attack with two or more budgets that no transfer uses, so "
        "a larger budget never reports fewer fooled probes than a smaller one; false runs "
        "every eps on its own")

    @field_validator("eps_8bit")
    @classmethod
    def _check_eps(cls, eps: list[float] | None) -> list[float] | None:
        if eps is None:
            return eps
        if not eps:
            raise ValueError("eps_8bit is empty: give budgets such as [2, 4, 8], or leave "
                             "the key out for a minimum-norm attack (cw, deepfool)")
        bad = [e for e in eps if not (0 <= e < float("inf"))]
        if bad:
            raise ValueError(f"eps_8bit values must be finite and >= 0, got {bad}")
        return eps

    @model_validator(mode="after")
    def _check_linf_range(self) -> AttackSpec:
        over = [e for e in self.eps_8bit or [] if self.norm == "linf" and e > 255]
        if over:
            raise ValueError(f"attack {self.name!r}: an L-inf budget above 255 grey levels "
                             f"bounds nothing, got {over}; 8-bit units: 8 means 8/255")
        return self

    @model_validator(mode="after")
    def _check_attack(self) -> AttackSpec:
        """Everything the attack's cells will need, checked when the config is read: a typo
        must not surface as an error only when its cell runs, after hours of earlier cells."""
        from advface.attacks.base import Budget
        from advface.attacks.registry import attack_class, create
        from advface.errors import AdvfaceError
        from advface.experiments.poisoning import poisoning_attack

        largest = max(self.eps_8bit) if self.eps_8bit else None
        try:
            cls = attack_class(self.registry_name)
            if "probe" in self.surfaces:
                if largest is None and not cls.minimum_norm:
                    raise ValueError(
                        f"attack {self.name!r} ({self.registry_name}) needs eps_8bit: without "
                        "it the attack would run unbounded; only minimum-norm attacks (cw, "
                        "deepfool) run without a budget")
                create(self.registry_name, Budget.from_8bit(self.norm, largest), **self.params)
            if "gallery" in self.surfaces:
                poisoning_attack(self, largest)
        except AdvfaceError as err:
            hint = f" ({err.fix})" if err.fix else ""
            raise ValueError(f"attack {self.name!r}: {err.message}{hint}") from None
        return self

    @model_validator(mode="after")
    def _check_sweep(self) -> AttackSpec:
        if self.sweep:
            eps = self.eps_8bit or []
            if not eps:
                raise ValueError(f"attack {self.name!r}: 'sweep: true' needs eps_8bit "
                                 "(a minimum-norm attack has no eps grid to sweep)")
            if any(b <= a for a, b in itertools.pairwise(eps)):
                raise ValueError(f"attack {self.name!r}: 'sweep: true' needs eps_8bit strictly "
                                 f"increasing, got {eps}; sort it")
        return self

    @property
    def registry_name(self) -> str:
        return self.attack or self.name

    def cell_params(self, surface: str) -> dict[str, Any]:
        """What identifies this attack's cells on ``surface`` in the store: a swept probe cell
        is another cell than an unswept one (gallery cells are never swept)."""
        params = self.base_params
        if self.sweep and surface == "probe":
            params["sweep"] = True
        return params

    @property
    def base_params(self) -> dict[str, Any]:
        """The attack and its hyper-parameters: the cell params of the unswept attack."""
        return {"attack": self.registry_name, **self.params}

    @property
    def mineps_params(self) -> dict[str, Any]:
        """The cell params of this attack's minimal-eps search over its eps grid."""
        return {**self.base_params, "grid_8bit": sorted(self.eps_8bit or [])}


class TransferSpec(StrictModel):
    """Adversarial images crafted on a surrogate model, evaluated on a target model."""

    surrogate: str
    target: str
    attack: str = Field(description="name of an AttackSpec whose cells are crafted on the "
                        "surrogate; its saved images are re-used")


class ExperimentConfig(StrictModel):
    """A whole study. `advface run CONFIG` computes every cell once and resumes after a crash."""

    name: Name
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    models: list[ModelSpec] = Field(min_length=1)
    attacks: list[AttackSpec] = Field(default_factory=list)
    transfer: list[TransferSpec] = Field(default_factory=list)
    n_probes: int | None = Field(100, ge=1, description="probes attacked (random, seeded); "
                                 "null = all")
    batch_size: int = Field(32, ge=1)
    verification: bool = Field(True, description="LFW pairs 10-fold verification per model")
    align_upsample: int = Field(1, ge=0, le=2)
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps")
    # Post-processing only (no cell depends on it), so it is left out of config.yaml and the
    # config hash: switching it never makes a run directory refuse to resume.
    interpret: bool = Field(
        False, exclude=True, description="after the run, `advface run` writes saliency "
        "figures of a few fooled probes per model into RUN_DIR/interpret/ (as `advface "
        "interpret run-figures RUN_DIR`), which the report includes")
    quick: dict[str, Any] | None = Field(
        None, description="overrides applied by `advface run --quick` (same keys as the top "
        "level; attacks may be listed by name to keep only those)")

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        import torch

        try:
            torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{device!r} is not a torch device ({err}); use cpu, cuda, "
                             "cuda:0, ...") from None
        return device

    @model_validator(mode="after")
    def _check_names(self) -> ExperimentConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        attack_names = [a.name for a in self.attacks]
        if len(set(attack_names)) != len(attack_names):
            raise ValueError(f"attack names must be unique, got {attack_names}")
        for a in self.attacks:
            for m in a.models or []:
                if m not in names:
                    raise ValueError(f"attack {a.name!r} names unknown model {m!r}; "
                                     f"models are {names}")
        for t in self.transfer:
            for m in (t.surrogate, t.target):
                if m not in names:
                    raise ValueError(f"transfer names unknown model {m!r}; models are {names}")
            if t.attack not in attack_names:
                raise ValueError(f"transfer names unknown attack {t.attack!r}; "
                                 f"attacks are {attack_names}")
            _check_transfer_source(next(a for a in self.attacks if a.name == t.attack))
        return self

    @model_validator(mode="after")
    def _default_sweep(self) -> ExperimentConfig:
        """An unset ``sweep`` becomes true where a grid can be swept: a larger budget then
        never reports fewer fooled probes than a smaller one on the same probes (separate
        per-eps runs can: a step size that grows with eps overshoots). Transfer sources stay
        unswept (their images must use the whole budget). Resolved here, so config.yaml
        records what ran."""
        sources = {t.attack for t in self.transfer}
        for a in self.attacks:
            if a.sweep is None:
                grid = sorted(set(a.eps_8bit or []))
                a.sweep = len(grid) >= 2 and a.name not in sources and "probe" in a.surfaces
                if a.sweep:
                    a.eps_8bit = grid  # a sweep walks upwards; the order is not a result
        return self


def _check_transfer_source(spec: AttackSpec) -> None:
    """Transfer needs examples that use their whole budget.

    An attack that stops at the surrogate's decision boundary (early stopping, on by default)
    hands over examples barely past it, which measure the surrogate, not transferability: on
    LFW such examples moved from 0% to a real transfer rate once crafted to full budget.
    """
    from advface.attacks.registry import hyperparameters

    if spec.sweep:
        raise ValueError(f"transfer attack {spec.name!r} is swept: its cells keep images made "
                         "for a smaller eps, which never used the whole budget; remove "
                         "`sweep: true` from it (or transfer another attack)")
    if "early_stop" in hyperparameters(spec.registry_name) and spec.params.get(
            "early_stop", True):
        raise ValueError(f"transfer attack {spec.name!r} stops early at the surrogate's "
                         "decision boundary; set `early_stop: false` in its params so the "
                         "examples use the whole budget")


def load_experiment(path: str | Path, *, quick: bool = False) -> ExperimentConfig:
    """Load an experiment config; with ``quick`` apply its ``quick:`` overrides."""
    path = Path(path).resolve()  # absolute base: relative paths resolve once, the same way
    cfg = load_yaml(path, ExperimentConfig)
    if not cfg.quick:
        return cfg
    fast = _apply_quick(cfg, path)  # always: a typo in quick: is named without --quick too
    return fast if quick else cfg


def _apply_quick(cfg: ExperimentConfig, path: Path) -> ExperimentConfig:
    """``cfg`` with its ``quick:`` overrides applied (checked like the config itself)."""
    assert cfg.quick is not None
    data = cfg.model_dump(mode="python", exclude={"quick"})
    data["interpret"] = cfg.interpret  # excluded from dumps, kept unless quick: overrides it
    overrides = dict(cfg.quick)
    _check_quick_names(overrides, [a.name for a in cfg.attacks], path)
    keep = overrides.pop("attacks", None)
    if keep is not None:
        data["attacks"] = [a for a in data["attacks"] if a["name"] in keep]
    attack_params = overrides.pop("attack_overrides", {}) or {}
    for a in data["attacks"]:
        a.update(attack_params.get(a["name"], {}))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    if keep is not None:
        names = {a["name"] for a in data["attacks"]}
        data["transfer"] = [t for t in data["transfer"] if t["attack"] in names]
    return parse_config(data, ExperimentConfig, path=path)


def _check_quick_names(quick: dict[str, Any], names: list[str], path: Path) -> None:
    """``quick.attacks`` and ``quick.attack_overrides`` name attacks of the config: a typo
    there would silently drop a cell or an override."""
    import difflib

    from advface.errors import ConfigError

    def unknown(name: Any, where: str) -> ConfigError:
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ConfigError(f"quick.{where} names unknown attack {name!r}{hint}", path=path,
                           fix=f"the config's attacks are {', '.join(names)}")

    keep = quick.get("attacks")
    if keep is not None:
        if not isinstance(keep, list):
            raise ConfigError(f"quick.attacks must be a list of attack names, got {keep!r}",
                              path=path, fix="e.g. quick: {attacks: [fgsm, pgd]}")
        for name in keep:
            if name not in names:
                raise unknown(name, "attacks")
    overrides = quick.get("attack_overrides")
    if overrides is not None:
        if not isinstance(overrides, dict) or not all(
                isinstance(v, dict) for v in overrides.values()):
            raise ConfigError("quick.attack_overrides must map attack names to the keys they "
                              f"change, got {overrides!r}", path=path,
                              fix="e.g. quick: {attack_overrides: {pgd: {eps_8bit: [2, 8]}}}")
        for name in overrides:
            if name not in names:
                raise unknown(name, "attack_overrides")
