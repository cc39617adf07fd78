"""Transfer (black-box) attacks: craft on a surrogate score module, judge on the target.

The adversary has white-box access to a surrogate (e.g. the ad-hoc CNN) and wants to fool the
target (e.g. dlib) without touching it. Both take the same images (the same 150x150 chips), so
the surrogate's quantised adversarials are fed to the target unchanged.

For transfer, early stopping on the surrogate is usually counter-productive (a barely-fooling
image rarely transfers): build the inner attack with ``early_stop=False`` (and possibly a
confidence cap ``kappa``), and consider momentum / input diversity / TI (MI-FGSM, DI, TI).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advface.attacks.base import Attack, AttackResult, BestTracker, Goal
from advface.errors import AdvfaceError


def check_same_input_size(images: Tensor, *models: nn.Module) -> None:
    """Every model must consume the images as they are (no silent resizing between them)."""
    h, w = images.shape[-2:]
    for model in models:
        size = getattr(model, "input_size", None)
        if size is not None and (int(size) != h or int(size) != w):
            raise AdvfaceError(
                f"{type(model).__name__} expects {size}x{size} inputs, images are {h}x{w}",
                fix="transfer needs surrogate and target that take the same image size",
            )


class TransferAttack(Attack):
    """Run ``inner`` on ``surrogate``; :meth:`run`'s ``model`` is the target that is judged.

    The result's ``success`` is the target's decision; ``extras["surrogate_success"]`` is the
    surrogate's, so the transfer rate is target success among surrogate successes. The inner
    attack gets the same seed, so its adversarials equal a direct run on the surrogate.
    """

    name = "transfer"

    def __init__(self, inner: Attack, surrogate: nn.Module) -> None:
        # The inner attack does the gradient work (and checks its own amp); this one only
        # judges the target, always in full precision. ``amp`` is recorded for provenance.
        super().__init__(inner.budget)
        self.amp = inner.amp
        self.inner = inner
        self.surrogate = surrogate
        self.supports_init = inner.supports_init  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"TransferAttack({self.inner!r} on {type(self.surrogate).__name__})"

    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        gen: torch.Generator,
        init: Tensor | None,
    ) -> tuple[BestTracker, dict[str, Tensor]]:
        check_same_input_size(images, self.surrogate, model)
        crafted = self.inner.run(self.surrogate, images, goal, seed=gen.initial_seed(), init=init)
        tracker = BestTracker(images, goal, self.budget.norm)
        tracker.adv = crafted.adv
        out: dict[str, Tensor] = {"surrogate_success": crafted.success}
        if crafted.iterations is not None:
            out["iterations"] = crafted.iterations
        if crafted.queries is not None:
            out["queries"] = crafted.queries
        return tracker, out


def transfer(
    attack: Attack,
    surrogate: nn.Module,
    target: nn.Module,
    images: Tensor,
    goal: Goal,
    *,
    seed: int | None = None,
) -> AttackResult:
    """Craft with ``attack`` on ``surrogate`` and judge the same adversarials on ``target``."""
    return TransferAttack(attack, surrogate).run(target, images, goal, seed=seed)
