"""Projected gradient descent (Madry et al. 2018), L-inf and L2: the iterative engine.

FGSM, BIM and MI-FGSM are this engine with fixed settings (see their files), which is what
makes comparisons between them fair: same loss, same quantisation, same bookkeeping.

Design choices:

* **Gradient at the saved image.** Each step evaluates the model on the budget-safe quantised
  iterate and takes the gradient there (a straight-through estimate of rounding), while the
  continuous iterate accumulates the steps. So every evaluated candidate is exactly an image
  that could be written to disk, the success bookkeeping costs no extra forward pass, and
  steps smaller than one grey level still add up.
* **Keep the best per image** across steps and restarts (:class:`BestTracker`); with
  ``early_stop`` an image leaves the batch at its first success.
* **Restarts**: a zero start (from the clean image, or from ``init`` when warm-started) plus
  ``random_restarts`` uniform random starts. The zero start makes PGD's result a superset of
  BIM's with the same steps and step size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from advface.attacks.base import (
    Attack,
    BestTracker,
    Budget,
    Goal,
    LinfBox,
    LossKind,
    attack_loss,
    check_step_and_loss,
    l2_norm,
    project,
    quantize_within,
)
from advface.attacks.diversity import InputDiversity, TranslationInvariance
from advface.errors import AdvfaceError

Schedule = Literal["constant", "cosine"]


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def random_start(clean: Tensor, budget: Budget, gen: torch.Generator) -> Tensor:
    """A uniformly random point in the budget ball around ``clean`` (clipped to the box)."""
    if budget.norm == "linf":
        e = budget.effective_eps
        if not math.isfinite(e):
            e = 1.0
        noise = torch.rand(clean.shape, generator=gen, device=clean.device) * 2 - 1
        return project(clean, clean + e * noise.to(clean.dtype), budget)
    e = budget.eps if math.isfinite(budget.eps) else 1.0
    direction = torch.randn(clean.shape, generator=gen, device=clean.device).to(clean.dtype)
    direction = direction / _per_image(l2_norm(direction).clamp_min(1e-12), direction)
    radius = torch.rand(clean.shape[0], generator=gen, device=clean.device).to(clean.dtype)
    return project(clean, clean + direction * _per_image(radius * e, direction), budget)


def steepest_step(grad: Tensor, norm: str) -> Tensor:
    """Unit steepest-ascent direction for the norm: sign for L-inf, normalised for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_image(l2_norm(grad).clamp_min(1e-12), grad)


class _LinfIterate:
    """PGD's continuous L-inf iterate, kept in grey levels inside a :class:`LinfBox`.

    Why its own class: projecting and rounding are then one clamp and one rounding per step,
    with no copy of the clean images (see :class:`LinfBox`); the saved image is the same one
    :func:`quantize_within` would give.
    """

    def __init__(self, clean: Tensor, start: Tensor, budget: Budget) -> None:
        self.box = LinfBox(clean, budget)
        self.x255 = self.box.levels(start)

    def image(self) -> Tensor:
        return self.box.image(self.x255)

    def select(self, keep: Tensor) -> _LinfIterate:
        it = _LinfIterate.__new__(_LinfIterate)
        it.box, it.x255 = self.box.select(keep), self.x255[keep]
        return it

    def step(self, direction: Tensor, alpha: float) -> None:
        self.box.clamp_(self.x255.add_(direction, alpha=alpha * 255.0))


class _L2Iterate:
    """PGD's continuous L2 iterate in ``[0, 1]`` units: projection onto the ball and the box,
    budget-safe rounding (:func:`quantize_within`) for the image that is evaluated."""

    def __init__(self, clean: Tensor, start: Tensor, budget: Budget) -> None:
        self.clean, self.x, self.budget = clean, start, budget

    def image(self) -> Tensor:
        return quantize_within(self.clean, self.x, self.budget)

    def select(self, keep: Tensor) -> _L2Iterate:
        return _L2Iterate(self.clean[keep], self.x[keep], self.budget)

    def step(self, direction: Tensor, alpha: float) -> None:
        self.x = project(self.clean, self.x + alpha * direction, self.budget)


class PGD(Attack):
    """Projected gradient ascent on the goal loss with restarts, keeping the best per image.

    Hyper-parameters:
        steps: gradient steps per start.
        step_size: step length in [0, 1] units (L-inf: per pixel; L2: Euclidean); default
            ``2.5 * eps / steps`` (Madry et al.), at least one grey level for L-inf.
        random_restarts: number of uniformly random starts after the zero start.
        zero_start: run once from the clean image first (a given ``init`` is always run
            first, whatever this says).
        loss / temperature / kappa: see :func:`advface.attacks.base.attack_loss`.
        momentum: MI-FGSM decay factor mu (0 = plain PGD).
        input_diversity: DI probability (0 = off); diversity_scale: smallest shrink factor.
        ti_kernel: TI Gaussian kernel size (0 = off); ti_sigma: its std (default size/6).
        schedule: ``"constant"`` or ``"cosine"`` (step decays to ~0 by the last step).
        early_stop: drop an image from the batch as soon as it is fooled.
        amp: autocast for gradient passes, ``True``/``"bf16"`` or ``"fp16"`` (loss-scaled; a
            step whose scaled gradient overflows is redone in fp32 and counted in
            ``extras["fp32_steps"]``); decisions are always re-taken in fp32.
        compile: run the model through ``torch.compile`` (True: inductor; or a backend name).
    """

    name = "pgd"
    supports_init = True
    fp16_ok = True

    def __init__(
        self,
        budget: Budget,
        *,
        steps: int = 10,
        step_size: float | None = None,
        random_restarts: int = 1,
        zero_start: bool = True,
        loss: LossKind = "margin",
        temperature: float = 1.0,
        kappa: float = math.inf,
        momentum: float = 0.0,
        input_diversity: float = 0.0,
        diversity_scale: float = 0.9,
        ti_kernel: int = 0,
        ti_sigma: float | None = None,
        schedule: Schedule = "constant",
        early_stop: bool = True,
        amp: bool | str = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__(budget, amp=amp, compile=compile)
        if steps < 0 or random_restarts < 0:
            raise AdvfaceError(
                f"steps and random_restarts must be >= 0, got {steps}, {random_restarts}",
                fix="e.g. steps=10, random_restarts=1",
            )
        if not zero_start and random_restarts == 0:
            raise AdvfaceError(
                "PGD with zero_start=False needs random_restarts >= 1",
                fix="set zero_start=True or random_restarts>=1",
            )
        if loss not in ("margin", "ce"):
            raise AdvfaceError(f"unknown loss {loss!r}", fix="use loss 'margin' or 'ce'")
        check_step_and_loss(step_size, temperature, kappa, momentum)
        if not 0 <= input_diversity <= 1 or ti_kernel < 0:  # 0 switches them off; NaN refused
            raise AdvfaceError(
                f"input_diversity must be in [0, 1] and ti_kernel >= 0, got {input_diversity}, "
                f"{ti_kernel}", fix="0 switches either off; e.g. input_diversity=0.5, ti_kernel=7")
        if schedule not in ("constant", "cosine"):
            raise AdvfaceError(f"unknown schedule {schedule!r}", fix="use 'constant' or 'cosine'")
        self.steps = steps
        self.step_size = step_size if step_size is not None else self._default_step(steps)
        self.random_restarts = random_restarts
        self.zero_start = zero_start
        self.loss = loss
        self.temperature = temperature
        self.kappa = kappa
        self.momentum = momentum
        self.diversity = (
            InputDiversity(input_diversity, diversity_scale) if input_diversity > 0 else None
        )
        self.translation = TranslationInvariance(ti_kernel, ti_sigma) if ti_kernel > 0 else None
        self.schedule = schedule
        self.early_stop = early_stop

    def _default_step(self, steps: int) -> float:
        e = self.budget.effective_eps
        if not math.isfinite(e):
            e = 1.0 if self.budget.norm == "linf" else 10.0
        alpha = 2.5 * e / max(steps, 1)
        if self.budget.norm == "linf" and e > 0:
            alpha = max(alpha, 1.0 / 255.0)
        return alpha

    def _alpha(self, t: int) -> float:
        if self.schedule == "cosine" and self.steps > 1:
            return self.step_size * 0.5 * (1.0 + math.cos(math.pi * t / self.steps))
        return self.step_size

    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        gen: torch.Generator,
        init: Tensor | None,
    ) -> tuple[BestTracker, dict[str, Tensor]]:
        n = images.shape[0]
        tracker = BestTracker(images, goal, self.budget.norm)
        iterations = torch.zeros(n, dtype=torch.long, device=images.device)
        fp32_steps = torch.zeros_like(iterations)
        everyone = tracker.everyone
        # A given ``init`` (a sweep's warm start) is always a start, zero_start or not.
        first = self.zero_start or init is not None
        starts = ["zero"] * int(first) + ["random"] * self.random_restarts
        clean_is_candidate = not self.zero_start or init is not None
        if clean_is_candidate and self.early_stop:
            # The clean image itself is always a candidate: an image the model already gets
            # wrong (Dodging) is a success at zero cost and is never attacked.
            with torch.no_grad():
                tracker.update(everyone, images, model(images), exact=True)
        for start in starts:
            idx = everyone[~tracker.success] if self.early_stop else everyone
            if idx.numel() == 0:
                break
            clean = images[idx]
            if start == "zero" and init is None:
                x = clean
            elif start == "zero":
                x = project(clean, init[idx].to(clean.dtype), self.budget)
            else:
                x = random_start(clean, self.budget, gen)
            self._descend(model, images, goal, gen, tracker, (iterations, fp32_steps), idx, x)
        if clean_is_candidate and not self.early_stop:
            # Without early stopping every image is attacked anyway, so the clean candidate is
            # only offered where no candidate succeeded: one forward pass saved per batch
            # when the attack fools everything, the same result otherwise.
            rest = everyone[~tracker.success]
            if rest.numel():
                with torch.no_grad():
                    tracker.update(rest, images[rest], model(images[rest]), exact=True)
        counts = {"iterations": iterations}
        if self.amp == "fp16":
            counts["fp32_steps"] = fp32_steps
        return tracker, counts

    def _descend(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        gen: torch.Generator,
        tracker: BestTracker,
        counters: tuple[Tensor, Tensor],
        idx: Tensor,
        x: Tensor,
    ) -> None:
        """One run from start ``x`` for images ``idx``; updates the tracker and the per-image
        counters (gradient steps, fp16 steps redone in fp32) in place."""
        iterations, fp32_steps = counters
        it = _LinfIterate(images[idx], x, self.budget) if self.budget.norm == "linf" else \
            _L2Iterate(images[idx], x, self.budget)
        velocity = torch.zeros_like(x) if self.momentum else None
        sub = goal if idx is tracker.everyone else goal[idx]
        for t in range(self.steps + 1):
            q = it.image()
            if t == self.steps:
                with torch.no_grad():
                    tracker.update(idx, q, model(q), exact=True)
                break
            grad, scores, margin = self._gradient(model, q, sub, gen, check=t == 0)
            if self.amp == "fp16" and not bool(torch.isfinite(grad).all()):
                # The scaled fp16 backward overflowed: this step is redone in fp32.
                grad, scores, margin = self._gradient(model, q, sub, gen, autocast=False)
                fp32_steps[idx] += 1
            succ = tracker.update(idx, q, scores, exact=True, margin=margin)
            if idx is tracker.everyone:
                iterations += 1
            else:
                iterations[idx] += 1
            if self.early_stop and bool(succ.any()):
                keep = ~succ
                idx, grad = idx[keep], grad[keep]
                sub = goal[idx]
                it = it.select(keep)
                if velocity is not None:
                    velocity = velocity[keep]
                if idx.numel() == 0:
                    break
            if self.translation is not None:
                grad = self.translation(grad)
            if velocity is not None:
                l1 = grad.abs().reshape(grad.shape[0], -1).mean(dim=1).clamp_min(1e-12)
                velocity = self.momentum * velocity + grad / _per_image(l1, grad)
                grad = velocity
            it.step(steepest_step(grad, self.budget.norm), self._alpha(t))

    def _gradient(
        self, model: nn.Module, q: Tensor, goal: Goal, gen: torch.Generator,
        autocast: bool = True, check: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Loss gradient at the quantised images, the scores *of those images* and, when the
        loss is the plain margin of those scores, that margin (the tracker reuses it)."""
        amp = autocast and self.amp_active()
        with torch.enable_grad():
            q = q.detach().requires_grad_(True)
            inp = self.diversity(q, gen) if self.diversity is not None else q
            scores = self.scores(model, inp) if amp else model(inp)
            if check:  # same model and goal at every step: checking once is enough
                goal.check(scores)
            per_image = attack_loss(
                scores.float(), goal, self.loss, temperature=self.temperature, kappa=self.kappa
            )
            scale = self.loss_scale if amp else 1.0
            loss = per_image.sum() * scale if scale != 1.0 else per_image.sum()
            (grad,) = torch.autograd.grad(loss, q)
            if scale != 1.0:
                grad = grad / scale
        if self.diversity is not None or amp:
            with torch.no_grad():
                scores = model(q.detach()).float()
            margin = None
        else:
            plain = self.loss == "margin" and not math.isfinite(self.kappa)
            margin = per_image.detach() if plain else None
        return grad.detach(), scores.detach(), margin
