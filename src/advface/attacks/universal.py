"""Universal adversarial perturbation: one image-agnostic perturbation for a whole set.

Instead of DeepFool-based aggregation (Moosavi-Dezfooli et al. 2017) the perturbation is
trained by mini-batch projected gradient ascent on the mean goal loss (the SGD-style variant
of Shafahi et al. 2020): shuffle the training images, take a signed (L-inf) or normalised (L2)
step on the batch gradient w.r.t. the shared perturbation, project onto the budget ball. The
margin loss can be capped at ``kappa`` (score units) so images already fooled by that much stop
pulling the batch gradient; uncapped was as good or better on our small checks, so it is the
default. After each epoch the perturbation is quantised and scored on the training set; the best
epoch is kept.

What is reported is the *fooling rate on held-out images*: :meth:`fit` on one set,
:meth:`apply` on another. :meth:`run` (the common interface) fits and applies on the same
images, which measures the white-box universal rate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advface.attacks.base import (
    Attack,
    AttackResult,
    BestTracker,
    Budget,
    Goal,
    LossKind,
    attack_loss,
    check_step_and_loss,
    eval_mode,
    fit_l2_rounding,
    judge,
    l2_norm,
    make_generator,
    quantize_within,
    validate_images,
)
from advface.attacks.pgd import steepest_step
from advface.errors import AdvfaceError


def project_delta(delta: Tensor, budget: Budget) -> Tensor:
    """Project a free-standing perturbation onto the budget ball (no box: images differ)."""
    if budget.norm == "linf":
        e = budget.effective_eps
        return delta.clamp(-e, e)
    n = l2_norm(delta)
    factor = torch.where(n > budget.eps, budget.eps / n.clamp_min(1e-20), torch.ones_like(n))
    return delta * factor.reshape(-1, *([1] * (delta.ndim - 1)))


def quantize_delta(delta: Tensor, budget: Budget) -> Tensor:
    """Put a free-standing perturbation on the 8-bit grid, within the budget.

    Same rules as :func:`~advface.attacks.base.quantize_within` without a box: added to any
    8-bit image and clipped to [0, 1], the result is on the grid and still within budget
    (clipping only moves values toward the clean image).
    """
    d = project_delta(delta, budget).double() * 255.0
    d_int = d.round()
    if budget.norm == "linf":
        e = math.floor(budget.eps * 255.0 + 1e-6)
        d_int = d_int.clamp(-e, e)
    else:
        d_int = fit_l2_rounding(d, d_int, budget.eps * 255.0)
    return (d_int / 255.0).to(delta.dtype)


class UniversalPerturbation(Attack):
    """A single perturbation shared by all images, trained with mini-batch PGD.

    Hyper-parameters: ``epochs`` passes over the training images, ``batch_size``,
    ``step_size`` (default eps/10, at least one grey level for L-inf), ``loss`` /
    ``temperature`` / ``kappa`` as in :func:`~advface.attacks.base.attack_loss`.
    """

    name = "universal"
    supports_init = True

    def __init__(
        self,
        budget: Budget,
        *,
        epochs: int = 10,
        batch_size: int = 32,
        step_size: float | None = None,
        loss: LossKind = "margin",
        temperature: float = 1.0,
        kappa: float = math.inf,
        amp: bool = False,
    ) -> None:
        super().__init__(budget, amp=amp)
        if epochs < 1 or batch_size < 1:
            raise AdvfaceError(
                f"universal needs epochs>=1 and batch_size>=1, got {epochs}, {batch_size}",
                fix="e.g. epochs=10, batch_size=32",
            )
        if not math.isfinite(budget.eps):
            raise AdvfaceError(
                "a universal perturbation needs a finite eps", fix="give a finite eps"
            )
        check_step_and_loss(step_size, temperature, kappa)
        self.epochs = epochs
        self.batch_size = batch_size
        e = budget.effective_eps
        default = e / 10
        if budget.norm == "linf" and e > 0:
            default = max(default, 1.0 / 255.0)
        self.step_size = step_size if step_size is not None else default
        self.loss = loss
        self.temperature = temperature
        self.kappa = kappa

    # -- public API ---------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        *,
        seed: int | None = None,
        init: Tensor | None = None,
    ) -> Tensor:
        """Train the perturbation on ``images``; returns it as ``(1, 3, H, W)``, quantised."""
        images = validate_images(images)
        goal = goal.to(images.device)
        gen = make_generator(seed, images.device)
        with eval_mode(model):
            return self._fit(model, images, goal, gen, init)

    def apply(self, model: nn.Module, images: Tensor, goal: Goal, delta: Tensor) -> AttackResult:
        """Add the fixed perturbation to (held-out) images and judge the model's decisions."""
        images = validate_images(images)
        goal = goal.to(images.device)
        with eval_mode(model):
            result = judge(model, images, goal, images + delta.to(images), self.budget)
        result.iterations = torch.full(
            (images.shape[0],), self.epochs, dtype=torch.long, device=images.device
        )
        return result

    # -- the common interface -----------------------------------------------------------------

    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        gen: torch.Generator,
        init: Tensor | None,
    ) -> tuple[BestTracker, dict[str, Tensor]]:
        start = None if init is None else (init - images).mean(dim=0, keepdim=True)
        delta = self._fit(model, images, goal, gen, start)
        tracker = BestTracker(images, goal, self.budget.norm)
        tracker.adv = quantize_within(images, images + delta, self.budget)
        n = images.shape[0]
        return tracker, {
            "iterations": torch.full((n,), self.epochs, dtype=torch.long, device=images.device),
            "delta": delta.expand(n, -1, -1, -1),
        }

    # -- training -----------------------------------------------------------------------------

    def _fit(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        gen: torch.Generator,
        init: Tensor | None,
    ) -> Tensor:
        n = images.shape[0]
        zero = torch.zeros_like(images[:1])
        delta = zero if init is None else self._project(init.to(images))
        best = quantize_delta(delta, self.budget)
        best_rate = self._rate(model, images, goal, best) if n else 0.0
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen, device=images.device)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                x, sub = images[idx], goal[idx]
                with torch.enable_grad():
                    d = delta.detach().requires_grad_(True)
                    q = quantize_within(x, x + d.detach(), self.budget)
                    adv = q + (d - d.detach())  # straight-through: evaluate the saved image
                    scores = self.scores(model, adv).float()
                    loss = attack_loss(
                        scores, sub, self.loss, temperature=self.temperature, kappa=self.kappa
                    ).mean()
                    (grad,) = torch.autograd.grad(loss, d)
                step = self.step_size * steepest_step(grad, self.budget.norm)
                delta = self._project(delta + step)
            candidate = quantize_delta(delta, self.budget)
            rate = self._rate(model, images, goal, candidate)
            if rate > best_rate:
                best, best_rate = candidate, rate
        return best

    def _project(self, delta: Tensor) -> Tensor:
        return project_delta(delta, self.budget)

    @torch.no_grad()
    def _rate(self, model: nn.Module, images: Tensor, goal: Goal, delta: Tensor) -> float:
        hits = 0
        for start in range(0, images.shape[0], max(self.batch_size, 64)):
            x = images[start : start + max(self.batch_size, 64)]
            adv = quantize_within(x, x + delta, self.budget)
            hits += int(goal[slice(start, start + x.shape[0])].success(model(adv)).sum())
        return hits / max(images.shape[0], 1)
