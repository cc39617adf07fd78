"""Attack names -> classes, so experiment configs can say ``name: pgd`` plus hyper-parameters.

Unknown names and unknown or ill-typed hyper-parameters raise :class:`ConfigError` naming the
accepted ones, instead of a TypeError deep inside a run.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from typing import Any

from advface.attacks.base import Attack, Budget, Norm
from advface.attacks.bim import BIM
from advface.attacks.cw import CarliniWagnerL2
from advface.attacks.deepfool import DeepFool
from advface.attacks.fgsm import FGSM
from advface.attacks.mifgsm import MIFGSM
from advface.attacks.noise import RandomNoise
from advface.attacks.pgd import PGD
from advface.attacks.square import Square
from advface.attacks.sweep import AttackFactory
from advface.attacks.universal import UniversalPerturbation
from advface.errors import ConfigError

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "bim": BIM,
    "pgd": PGD,
    "mifgsm": MIFGSM,
    "cw": CarliniWagnerL2,
    "deepfool": DeepFool,
    "square": Square,
    "universal": UniversalPerturbation,
    "noise": RandomNoise,
}


def available() -> list[str]:
    """Registered attack names, sorted."""
    return sorted(ATTACKS)


def attack_class(name: str) -> type[Attack]:
    try:
        return ATTACKS[name.lower()]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), available(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown attack {name!r}{hint}", fix=f"use one of: {', '.join(available())}"
        ) from None


#: Alias used by the experiment runner.
get_attack = attack_class


def hyperparameters(name: str) -> dict[str, Any]:
    """Keyword hyper-parameters of an attack and their defaults (``inspect.Parameter.empty``
    when required)."""
    sig = inspect.signature(attack_class(name).__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def create(name: str, budget: Budget, **hyper: Any) -> Attack:
    """Build attack ``name`` for ``budget`` with the given hyper-parameters."""
    return build(attack_class(name), budget, label=name, **hyper)


def build(cls: type[Any], budget: Budget, *, label: str, **hyper: Any) -> Any:
    """Build ``cls`` (registered or not, e.g. gallery poisoning) with checked
    hyper-parameters: unknown names, wrong types and bad values are :class:`ConfigError`."""
    hyper = _checked(cls, label, hyper)
    try:
        return cls(budget, **hyper)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"bad hyper-parameters for attack {label!r}: {err}",
            fix="check the types and values in the attack's config",
        ) from err


def _checked(cls: type[Any], label: str, hyper: Mapping[str, Any]) -> dict[str, Any]:
    """``hyper`` with counts as ints; unknown names and wrong types are :class:`ConfigError`."""
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(hyper) - set(params))
    if unknown:
        raise ConfigError(
            f"attack {label!r} has no hyper-parameter(s) {', '.join(unknown)}",
            fix=f"accepted: {', '.join(sorted(params)) or '(none)'}",
        )
    return {k: _coerce(label, k, v, params[k].annotation) for k, v in hyper.items()}


def _coerce(name: str, key: str, value: Any, annotation: Any) -> Any:
    """A count given as ``10.0`` (YAML, JSON, a CLI ``k=v``) is the count 10; ``10.5``, or a
    string where a number or a flag belongs, is refused here, not by a TypeError in the run."""
    kind = str(annotation)
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"attack {name!r}: {key} must be a whole number, got {value!r}",
                              fix=f"give {key} as an integer")
    elif kind in ("float", "float | None"):
        if (value is None and kind == "float") or isinstance(value, bool) or not (
                value is None or isinstance(value, int | float)):
            raise ConfigError(f"attack {name!r}: {key} must be a number, got {value!r}",
                              fix=f"give {key} as a number")
    elif kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"attack {name!r}: {key} must be true or false, got {value!r}",
                          fix=f"set {key}: true or {key}: false")
    return value


def factory(name: str, **hyper: Any) -> AttackFactory:
    """A ``Budget -> Attack`` builder for sweeps (names and types checked once, now; values
    that depend on the budget when each attack is built)."""
    _checked(attack_class(name), name, hyper)

    def build(budget: Budget) -> Attack:
        return create(name, budget, **hyper)

    return build


def from_config(config: Mapping[str, Any]) -> Attack:
    """Build from a mapping like ``{"name": "pgd", "norm": "linf", "eps255": 8, "steps": 20}``.

    ``eps255`` is in 8-bit units (see :meth:`Budget.from_8bit`); ``eps`` in [0, 1] units is
    accepted instead. All other keys are hyper-parameters.
    """
    cfg = dict(config)
    try:
        name = str(cfg.pop("name"))
        norm: Norm = cfg.pop("norm")
    except KeyError as err:
        raise ConfigError(
            f"attack config is missing {err.args[0]!r}",
            fix="give at least name, norm and eps255 (or eps)",
        ) from None
    if "eps255" in cfg and "eps" in cfg:
        raise ConfigError("give eps255 or eps, not both", fix="keep one of them")
    if "eps255" not in cfg and "eps" not in cfg:
        raise ConfigError("attack config has no eps", fix="add eps255 (8-bit units) or eps")
    key = "eps255" if "eps255" in cfg else "eps"
    value = cfg.pop(key)
    try:
        # None: no bound (minimum-norm attacks such as C&W and DeepFool)
        eps = None if value is None else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"attack config: {key} must be a number, got {value!r}",
                          fix=f"e.g. {key}: {8 if key == 'eps255' else 0.03}") from None
    if key == "eps255":
        budget = Budget.from_8bit(norm, eps)
    else:
        budget = Budget(norm, math.inf if eps is None else eps)
    return create(name, budget, **cfg)
