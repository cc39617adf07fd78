"""Random noise of the same budget: the baseline every attack's success rate is read against.

L-inf: every value moves by +-eps (uniform random signs), the largest change the budget allows;
L2: a uniformly random direction scaled to norm eps. If noise this size already fools the
model, a gradient attack's success at that budget says little about the attack.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advface.attacks.base import Attack, BestTracker, Budget, Goal, project


class RandomNoise(Attack):
    """One random perturbation on the budget's boundary per image (``queries`` = 1)."""

    name = "noise"

    def __init__(self, budget: Budget, *, amp: bool = False) -> None:
        super().__init__(budget, amp=amp)

    def _attack(self, model: nn.Module, images: Tensor, goal: Goal, gen: torch.Generator,
                init: Tensor | None) -> tuple[BestTracker, dict[str, Tensor]]:
        eps = self.budget.effective_eps
        shape = images.shape
        if self.budget.norm == "linf":
            signs = torch.randint(0, 2, shape, generator=gen, device=images.device)
            delta = (signs.to(images.dtype) * 2 - 1) * eps
        else:
            d = torch.randn(shape, generator=gen, device=images.device, dtype=images.dtype)
            delta = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * eps
        cand = self.quantize(images, project(images, images + delta, self.budget))
        tracker = BestTracker(images, goal, self.budget.norm)
        with torch.no_grad():
            tracker.update(
                torch.arange(shape[0], device=images.device), cand, model(cand), exact=True
            )
        ones = torch.ones(shape[0], dtype=torch.long, device=images.device)
        return tracker, {"queries": ones}
