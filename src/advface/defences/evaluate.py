"""Honest evaluation of a defence: clean accuracy, naive and adaptive robust accuracy side by side.

Following Carlini et al. (2019, "On evaluating adversarial robustness") and Athalye et al.
(2018), a defence is only as good as the strongest attack that *knows* it. Reporting the naive
number alone is how gradient-masking defences looked robust; reporting both shows the gap:

* **naive-transfer**: PGD on the undefended model, the adversarial images then passed through
  the defence (the attacker ignores the defence exists);
* **naive-direct**: PGD on the defended model differentiating it as implemented (zero gradient
  through JPEG/bit-depth), one random draw per step for randomised transforms, few steps;
* **adaptive**: PGD with BPDA (straight-through gradient) through non-differentiable transforms,
  EOT over the randomness, more steps and random restarts.

Every adversarial image, whatever model it was crafted on, is judged on the *real* defended
model (for a randomised defence: with fresh seeded draws, averaged over ``eval_draws``). An
image counts as robust only if it is identified correctly both clean and attacked, so robust
accuracy never exceeds clean accuracy. ``worst_case`` is per image the minimum over all attacks
at that budget, the number to quote.

Works for a plain model too (e.g. an adversarially trained one): then "naive" is a short PGD and
"adaptive" a long PGD with restarts, and there is no transfer attack unless an ``undefended``
surrogate is given.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

from advface.attacks.base import Budget, Dodging, LossKind, eval_mode
from advface.attacks.pgd import PGD
from advface.defences.transforms import EOT, Defended, GradientMode
from advface.errors import AdvfaceError
from advface.metrics.attack import wilson_interval


@dataclass(frozen=True)
class AttackPlan:
    """One attack of the evaluation: what it attacks, with which gradient, how hard."""

    name: str
    kind: Literal["naive", "adaptive"]
    target: Literal["undefended", "defended"] = "defended"
    gradient: GradientMode = "exact"
    eot: int = 1
    steps: int = 10
    restarts: int = 0
    loss: LossKind = "margin"
    early_stop: bool = True


def default_attacks(
    defended: nn.Module,
    *,
    has_undefended: bool,
    naive_steps: int = 10,
    adaptive_steps: int = 50,
    adaptive_restarts: int = 2,
    eot_samples: int = 10,
) -> list[AttackPlan]:
    """The standard plan: transfer (when a surrogate exists), naive direct, adaptive."""
    plans: list[AttackPlan] = []
    if has_undefended:
        plans.append(AttackPlan("naive-transfer", "naive", "undefended", steps=naive_steps))
    plans.append(AttackPlan("naive-direct", "naive", "defended", "exact", steps=naive_steps))
    randomized = bool(getattr(defended, "randomized", False))
    plans.append(AttackPlan(
        "adaptive", "adaptive", "defended",
        "bpda" if isinstance(defended, Defended) else "exact",
        eot=eot_samples if randomized else 1,
        steps=adaptive_steps, restarts=adaptive_restarts,
        # Against a random defence keep improving the margin instead of stopping at the first
        # (possibly lucky) success on the attacker's estimate.
        early_stop=not randomized,
    ))
    return plans


@dataclass
class DefenceEvaluation:
    """Results; ``rows`` has one entry per (eps, attack), ``worst_case`` one per eps."""

    defence: str
    n_images: int
    clean_accuracy: float
    undefended_clean_accuracy: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    worst_case: dict[str, float] = field(default_factory=dict)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    eval_draws: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def robust(self, attack: str, eps255: float) -> float:
        for row in self.rows:
            if row["attack"] == attack and row["eps255"] == eps255:
                return float(row["robust_accuracy"])
        raise KeyError((attack, eps255))

    def table(self) -> str:
        """Plain-text table for the terminal and the issue report."""
        names = [a["name"] for a in self.attacks]
        eps = sorted({row["eps255"] for row in self.rows})
        head = f"{'eps/255':>8} " + " ".join(f"{n:>15}" for n in [*names, "worst-case"])
        lines = [f"defence: {self.defence}   n={self.n_images}   clean accuracy "
                 f"{self.clean_accuracy:.3f}" + (
                     f" (undefended {self.undefended_clean_accuracy:.3f})"
                     if self.undefended_clean_accuracy is not None else ""), head]
        for e in eps:
            cells = [f"{self.robust(n, e):15.3f}" for n in names]
            cells.append(f"{self.worst_case[f'{e:g}']:15.3f}")
            lines.append(f"{e:8g} " + " ".join(cells))
        return "\n".join(lines)


def _reseed(module: nn.Module, seed: int) -> None:
    if hasattr(module, "reseed"):
        module.reseed(seed)


@contextmanager
def _random_state_kept(*modules: nn.Module | None) -> Iterator[None]:
    """Put back the seed and generators of every reseedable module on exit (also on error).

    Evaluation reseeds the defence (:func:`_reseed`) to make its draws repeatable; afterwards
    the caller's random transforms must go on with the stream they were configured with.
    Saved are each submodule's ``seed`` attribute and its :class:`torch.Generator` attributes
    (the objects themselves, which ``reseed`` may replace, and their states).
    """
    saved: list[tuple[nn.Module, str, Any, Tensor | None]] = []
    for module in modules:
        if module is None or not hasattr(module, "reseed"):
            continue
        for m in module.modules():
            for name, value in list(vars(m).items()):
                if isinstance(value, torch.Generator):
                    saved.append((m, name, value, value.get_state()))
                elif name == "seed":
                    saved.append((m, name, value, None))
    try:
        yield
    finally:
        for m, name, value, state in reversed(saved):
            if state is not None:
                value.set_state(state)
            setattr(m, name, value)


@torch.no_grad()
def correct_fraction(
    model: nn.Module, images: Tensor, labels: Tensor, *, seed: int = 0, draws: int = 1,
    batch_size: int = 64,
) -> Tensor:
    """Per image, the fraction of ``draws`` seeded evaluations that decide the true label.

    Deterministic models give 0/1. The random stream restarts from ``seed`` for every call,
    so the clean and the attacked batch see the same draws per image position.
    """
    total = torch.zeros(images.shape[0], dtype=torch.float64)
    with eval_mode(model), _random_state_kept(model):
        for d in range(draws):
            _reseed(model, seed + d)
            for i in range(0, images.shape[0], batch_size):
                pred = model(images[i : i + batch_size]).argmax(dim=1).cpu()
                total[i : i + batch_size] += (pred == labels[i : i + batch_size].cpu()).double()
    return total / draws


def _attack_model(plan: AttackPlan, defended: nn.Module, undefended: nn.Module | None
                  ) -> nn.Module:
    if plan.target == "undefended":
        if undefended is None:
            raise AdvfaceError(f"attack {plan.name!r} needs the undefended model",
                               fix="pass undefended=... or drop the transfer attack")
        return undefended
    model = defended
    if isinstance(defended, Defended):
        model = defended.with_gradient(plan.gradient)
    return EOT(model, plan.eot) if plan.eot > 1 else model


def evaluate_defence(
    defended: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps_8bit: Sequence[float] = (2, 4, 8),
    attacks: Sequence[AttackPlan] | None = None,
    undefended: nn.Module | None = None,
    seed: int = 0,
    batch_size: int = 32,
    eval_draws: int = 1,
    progress: bool = False,
) -> DefenceEvaluation:
    """Clean, naive and adaptive robust accuracy (L-inf, dodging) of ``defended``.

    ``defended`` is any score module; a :class:`Defended` gets BPDA in the adaptive attack and
    its undefended ``scorer`` is the default transfer surrogate. ``images`` are on the 8-bit
    grid; ``labels`` are identity indices.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise AdvfaceError(f"{images.shape[0]} images for {labels.shape[0]} labels",
                           fix="pass one label per image (and at least one image)")
    if undefended is None and isinstance(defended, Defended):
        undefended = defended.scorer
    plans = list(attacks) if attacks is not None else default_attacks(
        defended, has_undefended=undefended is not None)
    describe = defended.describe() if isinstance(defended, Defended) else type(defended).__name__
    n = images.shape[0]
    # Seeded for the evaluation; the caller's transforms get their own streams back.
    with _random_state_kept(defended, undefended):
        clean_ok = correct_fraction(defended, images, labels, seed=seed, draws=eval_draws,
                                    batch_size=batch_size)
        und_acc = None
        if undefended is not None:
            und_acc = float(correct_fraction(undefended, images, labels,
                                             batch_size=batch_size).mean())
        result = DefenceEvaluation(
            defence=describe, n_images=n, clean_accuracy=float(clean_ok.mean()),
            undefended_clean_accuracy=und_acc, attacks=[asdict(p) for p in plans], seed=seed,
            eval_draws=eval_draws)
        bar = tqdm(total=len(eps_8bit) * len(plans), desc="defence eval", disable=not progress,
                   leave=False)
        for e in eps_8bit:
            budget = Budget.from_8bit("linf", float(e))
            per_attack = []
            for p_i, plan in enumerate(plans):
                started = time.monotonic()
                model = _attack_model(plan, defended, undefended)
                attack = PGD(budget, steps=plan.steps, random_restarts=plan.restarts,
                             loss=plan.loss, early_stop=plan.early_stop)
                advs = []
                for b, i in enumerate(range(0, n, batch_size)):
                    x, y = images[i : i + batch_size], labels[i : i + batch_size]
                    _reseed(model, seed + 7919 * b + 104729 * p_i)
                    advs.append(attack.run(model, x, Dodging(y), seed=seed + b).adv)
                adv = torch.cat(advs)
                adv_ok = correct_fraction(defended, adv, labels, seed=seed, draws=eval_draws,
                                          batch_size=batch_size)
                robust = torch.minimum(adv_ok, clean_ok)
                per_attack.append(robust)
                k = round(float(robust.sum()))
                lo, hi = wilson_interval(k, n)
                result.rows.append({
                    "eps255": float(e), "attack": plan.name, "kind": plan.kind,
                    "robust_accuracy": float(robust.mean()), "ci95": [lo, hi],
                    "seconds": round(time.monotonic() - started, 2),
                })
                bar.update(1)
            result.worst_case[f"{float(e):g}"] = float(torch.stack(per_attack).amin(0).mean())
        bar.close()
    return result


# --------------------------------------------------------------------------- training runs


def load_run(run_dir: str | Path, *, data_dir: Path | None = None,
             cache_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, prepared data) of a finished `advface train adhoc` or `defend advtrain` run.

    The data is the run's own split (split.json), so the probes are exactly the images the
    model never trained on; ``data_dir``/``cache_dir`` override where the images are read.
    """
    import yaml

    from advface.config import load_yaml
    from advface.data.splits import ClosedSetSplit
    from advface.errors import CheckpointError, ConfigError
    from advface.models.adhoc import load_adhoc
    from advface.training.data import prepare_data
    from advface.training.train import TrainConfig

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file() or not (run / "split.json").is_file():
        raise CheckpointError(
            "not a training run folder (config.yaml and split.json are missing)", path=run,
            fix="pass the --out folder of `advface train adhoc` or `advface defend advtrain`")
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"unreadable run config ({err})", path=cfg_path,
                          fix="re-run the training") from err
    if isinstance(raw, dict) and "adversarial" in raw:
        from advface.defences.adversarial_training import AdvTrainConfig

        cfg = load_yaml(cfg_path, AdvTrainConfig).train
    else:
        cfg = load_yaml(cfg_path, TrainConfig)
    updates = {k: v for k, v in (("data_dir", data_dir), ("cache_dir", cache_dir))
               if v is not None}
    if updates:
        cfg.data = cfg.data.model_copy(update=updates)
    model = load_adhoc(run / "model.safetensors")
    data = prepare_data(cfg.data, ClosedSetSplit.load(run / "split.json"))
    if list(model.class_names) != list(data.identities):
        raise CheckpointError("the model's classes differ from the run's split identities",
                              path=run, fix="evaluate the model with the split it was trained on")
    return model, data
