"""Adversary A: attacks on identity score modules (see docs/architecture.md).

Every attack maps ``(model, images, goal)`` to an :class:`AttackResult` whose adversarial
images are 8-bit, in ``[0, 1]`` and within budget, and whose success flags are the model's real
decisions on them. Build attacks directly (``PGD(Budget.from_8bit("linf", 8), steps=20)``) or by
name (:func:`advface.attacks.registry.create`).
"""

from advface.attacks.base import (
    Attack,
    AttackResult,
    Budget,
    Dodging,
    Goal,
    Impersonation,
    attack_loss,
    project,
    quantize_within,
    to_grid,
)
from advface.attacks.bim import BIM
from advface.attacks.cw import CarliniWagnerL2
from advface.attacks.deepfool import DeepFool
from advface.attacks.fgsm import FGSM
from advface.attacks.gallery_poisoning import GalleryPoisoning, PoisoningResult
from advface.attacks.mifgsm import MIFGSM
from advface.attacks.pgd import PGD
from advface.attacks.registry import available, create, factory, from_config
from advface.attacks.square import Square
from advface.attacks.sweep import MinimalEps, eps_grid_8bit, minimal_eps, robust_accuracy, sweep
from advface.attacks.transfer import TransferAttack, transfer
from advface.attacks.universal import UniversalPerturbation

__all__ = [
    "BIM",
    "FGSM",
    "MIFGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "Budget",
    "CarliniWagnerL2",
    "DeepFool",
    "Dodging",
    "GalleryPoisoning",
    "Goal",
    "Impersonation",
    "MinimalEps",
    "PoisoningResult",
    "Square",
    "TransferAttack",
    "UniversalPerturbation",
    "attack_loss",
    "available",
    "create",
    "eps_grid_8bit",
    "factory",
    "from_config",
    "minimal_eps",
    "project",
    "quantize_within",
    "robust_accuracy",
    "sweep",
    "to_grid",
    "transfer",
]
