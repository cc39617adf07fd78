"""Square attack (Andriushchenko et al. 2020): score-based black-box random search.

Only forward calls, under ``torch.no_grad``; each call costs one query per image in it. The
attack keeps a current perturbation per image and proposes a change confined to one random
square window, accepting it when the goal margin improves. The window side shrinks as the query
budget is spent (``p``, the fraction of pixels changed, halves at fixed fractions of the budget).

With ``init`` (a sweep's warm start) the search starts from that image instead of the random
initialisation below.

* L-inf: vertical-stripe initialisation with +-eps per column and channel; a proposal sets the
  window to a random +-eps per channel (re-drawn if it would not change anything).
* L2: initialisation with a grid of random-sign Gaussian bumps of norm eps; a proposal puts a
  fresh random-sign Gaussian bump in the window, gives the window at least its area share of the
  budget (more if it already had more) and rescales the whole perturbation back to norm eps, so
  mass moves into the window from elsewhere. This is a simplified form of the paper's
  two-window mass transfer.

Forward passes run in full precision (there is no backward pass for mixed precision to speed
up, and every query is a decision). Queries per image count every forward pass that included
the image (clean check, initial point, proposals) and never exceed ``max_queries``; an image
stops at its first success.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advface.attacks.base import Attack, BestTracker, Budget, Goal, l2_norm
from advface.errors import AdvfaceError

#: Fractions of the query budget at which the window area fraction p halves.
_P_HALVING = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


class Square(Attack):
    """Square attack; ``max_queries`` per image, ``p_init`` initial window area fraction."""

    name = "square"
    supports_init = True

    def __init__(
        self,
        budget: Budget,
        *,
        max_queries: int = 1000,
        p_init: float | None = None,
    ) -> None:
        super().__init__(budget)
        if max_queries < 1:
            raise AdvfaceError(f"max_queries must be >= 1, got {max_queries}", fix="e.g. 1000")
        if not math.isfinite(budget.eps):
            raise AdvfaceError("Square needs a finite eps", fix="give the budget a finite eps")
        self.max_queries = max_queries
        self.p_init = p_init if p_init is not None else (0.05 if budget.norm == "linf" else 0.1)
        if not 0 < self.p_init <= 1:  # NaN fails too
            raise AdvfaceError(f"p_init must be in (0, 1], got {self.p_init}", fix="e.g. 0.05")

    def _p(self, it: int) -> float:
        frac = it / self.max_queries
        return self.p_init / 2 ** sum(frac > t for t in _P_HALVING)

    @torch.no_grad()
    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        gen: torch.Generator,
        init: Tensor | None,
    ) -> tuple[BestTracker, dict[str, Tensor]]:
        n, _, h, w = images.shape
        dev = images.device
        tracker = BestTracker(images, goal, self.budget.norm)
        queries = torch.zeros(n, dtype=torch.long, device=dev)
        everyone = torch.arange(n, device=dev)

        scores = model(images)
        goal.check(scores)
        queries += 1
        succ = tracker.update(everyone, images, scores, exact=True)
        active = everyone[~succ]
        if self.max_queries < 2 or active.numel() == 0:
            return tracker, {"queries": queries}

        clean = images[active]
        if init is None:
            x = self.quantize(clean, clean + self._init_delta(clean, gen))
        else:
            x = self.quantize(clean, init[active].to(clean.dtype))
        scores = model(x)
        queries[active] += 1
        current = torch.zeros_like(images)
        current[active] = x - clean
        current_margin = torch.full((n,), -math.inf, device=dev)
        current_margin[active] = goal[active].margin(scores.float())
        succ = tracker.update(active, x, scores, exact=True)
        active = active[~succ]

        for it in range(self.max_queries - 2):
            active = active[queries[active] < self.max_queries]
            if active.numel() == 0:
                break
            clean = images[active]
            side = max(1, round(math.sqrt(self._p(it) * h * w)))
            side = min(side, max(h - 1, 1), max(w - 1, 1))
            mask, top, left = self._window(active.numel(), h, w, side, gen, dev)
            if self.budget.norm == "linf":
                proposal = self._propose_linf(current[active], mask, gen)
            else:
                proposal = self._propose_l2(current[active], mask, top, left, side, gen)
            x = self.quantize(clean, clean + proposal)
            scores = model(x)
            queries[active] += 1
            margin = goal[active].margin(scores.float())
            succ = tracker.update(active, x, scores, exact=True)
            improved = margin > current_margin[active]
            moved = active[improved]
            current[moved] = (x - clean)[improved]
            current_margin[moved] = margin[improved]
            active = active[~succ]
        return tracker, {"queries": queries}

    # -- proposals ---------------------------------------------------------------------------

    @staticmethod
    def _window(
        m: int, h: int, w: int, side: int, gen: torch.Generator, dev: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A random side x side window per image as a (m, 1, h, w) mask, and its corner."""
        top = torch.randint(0, h - side + 1, (m,), generator=gen, device=dev)
        left = torch.randint(0, w - side + 1, (m,), generator=gen, device=dev)
        rows = torch.arange(h, device=dev)[None, :]
        cols = torch.arange(w, device=dev)[None, :]
        in_r = (rows >= top[:, None]) & (rows < top[:, None] + side)
        in_c = (cols >= left[:, None]) & (cols < left[:, None] + side)
        return (in_r[:, None, :, None] & in_c[:, None, None, :]), top, left

    def _signs(self, shape: tuple[int, ...], gen: torch.Generator, dev: torch.device) -> Tensor:
        return torch.randint(0, 2, shape, generator=gen, device=dev).float() * 2 - 1

    def _init_delta(self, clean: Tensor, gen: torch.Generator) -> Tensor:
        m, c, h, w = clean.shape
        dev = clean.device
        if self.budget.norm == "linf":
            stripes = self._signs((m, c, 1, w), gen, dev) * self.budget.effective_eps
            return stripes.expand(m, c, h, w).to(clean.dtype)
        tile = max(1, min(h, w) // 5)
        r = (torch.arange(h, device=dev) % tile).float() - (tile - 1) / 2
        q = (torch.arange(w, device=dev) % tile).float() - (tile - 1) / 2
        bump = torch.exp(-(r[:, None] ** 2 + q[None, :] ** 2) / (2 * max(tile / 4, 0.5) ** 2))
        th, tw = -(-h // tile), -(-w // tile)
        signs = self._signs((m, c, th, tw), gen, dev)
        signs = signs.repeat_interleave(tile, 2).repeat_interleave(tile, 3)[:, :, :h, :w]
        delta = signs * bump
        return self._to_sphere(delta).to(clean.dtype)

    def _to_sphere(self, delta: Tensor) -> Tensor:
        return delta * _per_image(self.budget.eps / l2_norm(delta).clamp_min(1e-12), delta)

    def _propose_linf(self, current: Tensor, mask: Tensor, gen: torch.Generator) -> Tensor:
        m, c = current.shape[:2]
        e = self.budget.effective_eps
        values = self._signs((m, c, 1, 1), gen, current.device) * e
        proposal = torch.where(mask, values.to(current.dtype), current)
        unchanged = ((proposal - current).abs() * mask).flatten(1).amax(1) == 0
        if bool(unchanged.any()):
            flipped = torch.where(mask, -values.to(current.dtype), current)
            proposal = torch.where(_per_image(unchanged, proposal), flipped, proposal)
        return proposal

    def _propose_l2(
        self,
        current: Tensor,
        mask: Tensor,
        top: Tensor,
        left: Tensor,
        side: int,
        gen: torch.Generator,
    ) -> Tensor:
        m, c, h, w = current.shape
        dev = current.device
        rows = torch.arange(h, device=dev)[None, :].float() - (top[:, None] + (side - 1) / 2)
        cols = torch.arange(w, device=dev)[None, :].float() - (left[:, None] + (side - 1) / 2)
        sigma2 = 2 * max(side / 4, 0.5) ** 2
        bump = torch.exp(-(rows[:, :, None] ** 2 + cols[:, None, :] ** 2) / sigma2)[:, None]
        pattern = self._signs((m, c, 1, 1), gen, dev) * bump * mask
        inside = (current * mask).flatten(1).pow(2).sum(1)
        share = self.budget.eps**2 * side * side / (h * w)
        target = torch.maximum(inside, torch.full_like(inside, share))
        pattern = pattern * _per_image(target.sqrt() / l2_norm(pattern).clamp_min(1e-12), pattern)
        proposal = torch.where(mask, pattern.to(current.dtype), current)
        return self._to_sphere(proposal)
