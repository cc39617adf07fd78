"""DeepFool (Moosavi-Dezfooli et al. 2016), multi-class, L2 and L-inf, on score modules.

At each step the scores are linearised around the current image and the image is moved to the
nearest linearised decision boundary; the accumulated step is scaled by ``1 + overshoot``. It
finds small (not minimal) perturbations quickly and is a standard minimum-norm baseline.

* Dodging: the boundaries are those between the true identity and each of the ``candidates``
  highest other identities; the closest one (distance ``|f_k| / ||w_k||_*``, dual norm) wins.
* Impersonation: the boundary between the target and the current strongest other identity.

The linearisation and the success test use the budget-safe quantised image, and the loop for
an image only ends when that quantised image is fooled (or ``steps`` run out), so rounding
cannot silently undo a success. With a finite budget the accumulated step is projected into the
ball; ``min_eps`` reports the norm of the successful image (``inf`` when none). A step that
leaves the quantised image unchanged (a fraction of a grey level, absorbed by rounding) doubles
that image's overshoot (at least 0.01), so the loop cannot stall just short of the next level.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advface.attacks.base import Attack, BestTracker, Budget, Goal, project
from advface.errors import AdvfaceError


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


class DeepFool(Attack):
    """Multi-class DeepFool; ``overshoot`` scales the accumulated step past the boundary."""

    name = "deepfool"
    minimum_norm = True

    def __init__(
        self,
        budget: Budget | None = None,
        *,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
        amp: bool | str = False,
    ) -> None:
        super().__init__(budget if budget is not None else Budget("l2", math.inf), amp=amp)
        if steps < 1 or not 0 <= overshoot < math.inf or candidates < 1:
            raise AdvfaceError(
                "DeepFool needs steps>=1, overshoot>=0 (finite), candidates>=1, got "
                f"{steps}, {overshoot}, {candidates}",
                fix="e.g. steps=50, overshoot=0.02, candidates=10",
            )
        self.steps = steps
        self.overshoot = overshoot
        self.candidates = candidates

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
        tracker = BestTracker(images, goal, self.budget.norm, prefer="norm")
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        idx = torch.arange(n, device=dev)
        r_total = torch.zeros_like(images)
        x = images.clone()
        # Per-image overshoot: doubled whenever a step leaves the saved (8-bit) image as it was.
        # Near the boundary the steps are fractions of a grey level that rounding absorbs, and
        # the same step would repeat at the same image until ``steps`` ran out.
        extra = torch.full((n,), self.overshoot, device=dev, dtype=images.dtype)
        last_q = images.clone()
        for t in range(self.steps + 1):
            clean = images[idx]
            q = self.quantize(clean, x)
            if t > 0:
                stalled = (q == last_q[idx]).flatten(1).all(1)
                extra[idx[stalled]] = (2 * extra[idx[stalled]]).clamp_min(0.01)
            last_q[idx] = q
            with torch.enable_grad():
                q = q.detach().requires_grad_(True)
                scores = self.scores(model, q).float()
                if t == 0:
                    goal.check(scores)
                if self.amp_active():
                    with torch.no_grad():
                        full = model(q.detach())
                else:
                    full = scores.detach()
                succ = tracker.update(idx, q.detach(), full, exact=True)
                keep = ~succ
                if t == self.steps or not bool(keep.any()):
                    break
                step = self._boundary_step(q, scores, goal[idx], keep)
            idx = idx[keep]
            iterations[idx] += 1
            r_total[idx] += step
            scale = _per_image(1 + extra[idx], r_total)
            x = project(images[idx], images[idx] + scale * r_total[idx], self.budget)
        return tracker, {"iterations": iterations}

    def _boundary_step(self, q: Tensor, scores: Tensor, goal: Goal, keep: Tensor) -> Tensor:
        """Step to the nearest linearised boundary for the images still to be fooled."""
        rows = torch.arange(scores.shape[0], device=scores.device)
        labels = goal.labels
        others = scores.detach().clone()
        others[rows, labels] = -math.inf
        k = min(self.candidates if not goal.targeted else 1, scores.shape[1] - 1)
        cand = others.topk(k, dim=1).indices  # (n, k)

        def grad_of(cols: Tensor, retain: bool) -> Tensor:
            sel = scores.gather(1, cols[:, None]).sum()
            (g,) = torch.autograd.grad(sel, q, retain_graph=retain)
            return g

        g_ref = grad_of(labels, True)
        f_ref = scores.gather(1, labels[:, None])[:, 0].detach()
        best_dist = torch.full((q.shape[0],), math.inf, device=q.device)
        best_f = torch.zeros_like(best_dist)
        best_w = torch.zeros_like(q)
        for j in range(k):
            cols = cand[:, j]
            g_k = grad_of(cols, j < k - 1)
            f_k = scores.gather(1, cols[:, None])[:, 0].detach()
            if goal.targeted:
                w = g_ref - g_k  # raise the target above the strongest other
                f = (f_k - f_ref).abs()
            else:
                w = g_k - g_ref  # raise another identity above the true one
                f = (f_ref - f_k).abs()
            dual = self._dual_norm(w)
            dist = f / dual.clamp_min(1e-12)
            better = dist < best_dist
            best_dist = torch.where(better, dist, best_dist)
            best_f = torch.where(better, f, best_f)
            best_w = torch.where(_per_image(better, w), w, best_w)
        dual = self._dual_norm(best_w).clamp_min(1e-12)
        f = best_f + 1e-4
        if self.budget.norm == "l2":
            step = best_w * _per_image(f / dual**2, best_w)
        else:
            step = best_w.sign() * _per_image(f / dual, best_w)
        return step[keep]

    def _dual_norm(self, w: Tensor) -> Tensor:
        flat = w.reshape(w.shape[0], -1)
        return flat.norm(dim=1) if self.budget.norm == "l2" else flat.abs().sum(dim=1)
