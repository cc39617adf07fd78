"""Carlini-Wagner L2 (Carlini & Wagner 2017): a minimum-norm attack.

Minimises ``||x - clean||_2^2 + c * max(kappa - margin(x), 0)`` over ``x = (tanh(w) + 1) / 2``
(the tanh change of variables keeps ``x`` in the box without clipping) with Adam, and searches
``c`` per image by bisection: a success lowers ``c`` (a smaller perturbation may do), a failure
raises it (tenfold until a first success). The best successful image per image, smallest L2
first, is kept across all steps and all values of ``c``.

The objective is optimised on the continuous image (a straight-through gradient through the
rounding, as PGD uses, gave measurably larger perturbations here), and every iterate is judged
after budget-safe quantisation with an extra forward pass, so the tracked candidates are exactly
savable images. With a finite budget, candidates are projected into the ball before rounding;
``min_eps`` reports the L2 of the smallest successful image found (``inf`` when none).

The margin is in score units (logit or similarity differences), so a good ``initial_const``
depends on the model: the bisection fixes a bad start at the cost of some outer steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advface.attacks.base import Attack, BestTracker, Budget, Goal
from advface.errors import AdvfaceError


class CarliniWagnerL2(Attack):
    """C&W L2 with tanh-space Adam and a per-image binary search over the constant ``c``.

    Hyper-parameters: ``steps`` Adam steps per value of c, ``binary_search_steps`` values of c,
    ``initial_const`` first c, ``lr`` Adam learning rate (in tanh space), ``kappa`` confidence
    margin required by the hinge, ``abort_early`` stop a value of c when the total loss stalls.
    """

    name = "cw"
    norms = ("l2",)
    minimum_norm = True

    def __init__(
        self,
        budget: Budget | None = None,
        *,
        steps: int = 100,
        binary_search_steps: int = 6,
        initial_const: float = 1.0,
        lr: float = 0.01,
        kappa: float = 0.0,
        abort_early: bool = True,
        amp: bool | str = False,
    ) -> None:
        super().__init__(budget if budget is not None else Budget("l2", math.inf), amp=amp)
        if (steps < 1 or binary_search_steps < 1 or not 0 < initial_const < math.inf
                or not 0 < lr < math.inf or not 0 <= kappa < math.inf):
            raise AdvfaceError(
                "C&W needs steps>=1, binary_search_steps>=1, initial_const>0, lr>0 (finite) and "
                f"kappa>=0, got {steps}, {binary_search_steps}, {initial_const}, {lr}, {kappa}",
                fix="e.g. steps=100, binary_search_steps=6, initial_const=1.0, lr=0.01, kappa=0",
            )
        self.steps = steps
        self.binary_search_steps = binary_search_steps
        self.initial_const = initial_const
        self.lr = lr
        self.kappa = kappa
        self.abort_early = abort_early

    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        gen: torch.Generator,
        init: Tensor | None,
    ) -> tuple[BestTracker, dict[str, Tensor]]:
        n = images.shape[0]
        dev = images.device
        tracker = BestTracker(images, goal, "l2", prefer="norm")
        everyone = torch.arange(n, device=dev)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        with torch.no_grad():
            tracker.update(everyone, images, model(images), exact=True)
        w0 = torch.atanh((images * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        const = torch.full((n,), self.initial_const, device=dev)
        lo = torch.zeros(n, device=dev)
        hi = torch.full((n,), math.inf, device=dev)
        for _ in range(self.binary_search_steps):
            found = self._optimise(model, images, goal, w0, const, tracker, iterations)
            hi = torch.where(found, torch.minimum(hi, const), hi)
            lo = torch.where(found, lo, torch.maximum(lo, const))
            const = torch.where(torch.isfinite(hi), (lo + hi) / 2, const * 10)
        return tracker, {"iterations": iterations}

    def _optimise(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        w0: Tensor,
        const: Tensor,
        tracker: BestTracker,
        iterations: Tensor,
    ) -> Tensor:
        """Adam on tanh-space variables for one value of c per image; returns 'found' mask."""
        n = images.shape[0]
        everyone = torch.arange(n, device=images.device)
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        found = torch.zeros(n, dtype=torch.bool, device=images.device)
        check_every = max(self.steps // 10, 1)
        previous = math.inf
        for step in range(self.steps):
            with torch.enable_grad():
                x = (torch.tanh(w) + 1) / 2
                scores = self.scores(model, x)
                goal.check(scores)
                hinge = (self.kappa - goal.margin(scores.float())).clamp_min(0)
                dist = ((x - images) ** 2).flatten(1).sum(1)
                loss = (dist + const * hinge).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            with torch.no_grad():
                q = self.quantize(images, x.detach())
                found |= tracker.update(everyone, q, model(q), exact=True)
            opt.step()
            iterations += 1
            if self.abort_early and (step + 1) % check_every == 0:
                value = float(loss.detach())
                if value > previous * 0.9999:
                    break
                previous = value
        return found
