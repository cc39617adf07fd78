"""Epsilon sweeps in one pass, and per-image minimal epsilon.

Robust accuracy is usually wanted over a grid of budgets. Running the attack independently at
every eps wastes work and, with heuristic attacks, can even make robust accuracy go *up* with
eps. Two tools avoid both:

* :func:`sweep` walks the grid in increasing order. An image fooled at eps ``e`` keeps that
  adversarial for every larger eps (it lies inside every larger ball), so success is monotone
  in eps *by construction*. Only undecided images are attacked again, warm-started from their
  best adversarial at the previous eps (attacks with ``supports_init``), projected into the
  larger ball by the attack.
* :func:`minimal_eps` returns per image the smallest grid eps at which the attack fooled it
  (``inf`` if never), either by that same "grow" walk or by a batched binary search over the
  grid that only re-attacks images whose status is undecided (``log2(len(grid))`` rounds; it
  assumes success is monotone in eps, which is what it reports in any case: an adversarial
  found at ``e`` is valid at every eps >= ``e``). Robust accuracy at any grid eps follows:
  the fraction of images with ``min_eps > eps``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from advface.attacks.base import (
    Attack,
    AttackResult,
    Budget,
    Goal,
    Norm,
    validate_images,
)
from advface.errors import AdvfaceError

AttackFactory = Callable[[Budget], Attack]


def eps_grid_8bit(values255: Sequence[float]) -> list[float]:
    """Convert eps values in 8-bit units (e.g. ``[0, 1, 2, 4, 8]``) to ``[0, 1]`` units."""
    return [float(v) / 255.0 for v in values255]


def _check_grid(eps_grid: Sequence[float]) -> list[float]:
    grid = [float(e) for e in eps_grid]
    if not grid:
        raise AdvfaceError("empty eps grid", fix="give at least one eps")
    if any(not (e >= 0) or not math.isfinite(e) for e in grid):
        raise AdvfaceError(f"eps grid must be finite and >= 0, got {grid}", fix="fix the grid")
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise AdvfaceError(
            f"eps grid must be strictly increasing, got {grid}", fix="sort and deduplicate it"
        )
    return grid


def _merge(base: AttackResult, idx: Tensor, part: AttackResult, budget: Budget) -> AttackResult:
    """Rows of ``base`` (carried forward) with rows ``idx`` replaced by ``part``.

    Counters are cumulative: the work spent on an image at earlier eps is added. ``extras``
    (per-image tensors, e.g. transfer's ``surrogate_success``) come, per image, from the run
    that produced its current result; a key only the new run has is zero for carried rows.
    """
    counters: dict[str, Tensor | None] = {}
    for name in ("iterations", "queries"):
        prev, new = getattr(base, name), getattr(part, name)
        if new is None:
            counters[name] = prev
            continue
        total = torch.zeros_like(base.success, dtype=torch.long) if prev is None else prev.clone()
        total[idx] += new
        counters[name] = total
    return AttackResult(
        adv=base.adv.clone().index_put_((idx,), part.adv),
        success=base.success.clone().index_put_((idx,), part.success),
        linf=base.linf.clone().index_put_((idx,), part.linf),
        l2=base.l2.clone().index_put_((idx,), part.l2),
        budget=budget,
        iterations=counters["iterations"],
        queries=counters["queries"],
        extras=_merge_extras(base, idx, part),
    )


def _merge_extras(base: AttackResult, idx: Tensor, part: AttackResult) -> dict[str, Tensor]:
    n = base.success.shape[0]
    merged = {k: v.clone() for k, v in base.extras.items()}
    for key, new in part.extras.items():
        old = merged.get(key)
        if old is None or old.shape[1:] != new.shape[1:]:
            old = new.new_zeros((n, *new.shape[1:]))
        merged[key] = old.index_put_((idx,), new.to(old.dtype))
    return merged


def sweep(
    attack_factory: AttackFactory,
    model: nn.Module,
    images: Tensor,
    goal: Goal,
    eps_grid: Sequence[float],
    *,
    norm: Norm = "linf",
    seed: int | None = None,
    warm_start: bool = True,
) -> dict[float, AttackResult]:
    """Attack at every eps of an increasing grid, reusing work; returns ``{eps: result}``.

    ``attack_factory(Budget(norm, eps))`` builds the attack for one eps (e.g.
    ``lambda b: PGD(b, steps=20)``). Images fooled at a smaller eps are carried forward with
    their adversarial (success is non-decreasing in eps by construction); the others are
    attacked again, warm-started from their previous best when ``warm_start``. Each result's
    ``iterations``/``queries`` are cumulative over the sweep, and ``min_eps`` holds the first
    grid eps at which the image was fooled (``inf`` if not yet).
    """
    grid = _check_grid(eps_grid)
    images = validate_images(images)
    goal = goal.to(images.device)
    n = images.shape[0]
    # float64 so that min_eps values compare equal to the grid's Python floats.
    min_eps = torch.full((n,), math.inf, dtype=torch.float64, device=images.device)
    results: dict[float, AttackResult] = {}
    previous: AttackResult | None = None
    for eps in grid:
        budget = Budget(norm, eps)
        attack = attack_factory(budget)
        if previous is None:
            todo = torch.arange(n, device=images.device)
        else:
            todo = (~previous.success).nonzero()[:, 0]
        init = None
        if warm_start and previous is not None and attack.supports_init:
            init = previous.adv[todo]
        part = attack.run(model, images[todo], goal[todo], seed=seed, init=init)
        if previous is None:
            current = part
            current.budget = budget
        else:
            current = _merge(previous, todo, part, budget)
        min_eps = torch.where(current.success & ~torch.isfinite(min_eps), eps, min_eps)
        current.min_eps = min_eps.clone()
        results[eps] = current
        previous = current
    return results


@dataclass
class MinimalEps:
    """Per-image minimal eps on the grid (``inf``: not fooled at the largest eps), float64.

    ``adv`` is, per image, the adversarial found at ``min_eps`` (the clean image when never
    fooled); ``attacks`` counts attack runs per image (cost of the search).
    """

    eps_grid: list[float]
    min_eps: Tensor
    adv: Tensor
    attacks: Tensor
    norm: Norm

    def success_at(self, eps: float) -> Tensor:
        """Per-image: fooled at budget ``eps`` (an adversarial at min_eps <= eps exists)."""
        return self.min_eps <= eps + 1e-12

    def robust_accuracy(self) -> dict[float, float]:
        """Fraction of images *not* fooled, at every grid eps (non-increasing in eps)."""
        n = max(self.min_eps.shape[0], 1)
        return {e: float((~self.success_at(e)).sum()) / n for e in self.eps_grid}


def minimal_eps(
    attack_factory: AttackFactory,
    model: nn.Module,
    images: Tensor,
    goal: Goal,
    eps_grid: Sequence[float],
    *,
    norm: Norm = "linf",
    strategy: Literal["grow", "bisect"] = "bisect",
    seed: int | None = None,
    warm_start: bool = True,
) -> MinimalEps:
    """Smallest grid eps at which ``attack_factory(Budget(norm, eps))`` fools each image.

    ``"grow"`` is :func:`sweep` (one attack per grid point per undecided image, warm-started
    unless ``warm_start=False``); ``"bisect"`` is a batched binary search: each round attacks
    every undecided image once, at the middle of its bracket, grouping images that share the
    same eps into one batch (no warm start: brackets move both ways).
    """
    grid = _check_grid(eps_grid)
    images = validate_images(images)
    goal = goal.to(images.device)
    n = images.shape[0]
    dev = images.device
    if strategy == "grow":
        results = sweep(
            attack_factory, model, images, goal, grid, norm=norm, seed=seed, warm_start=warm_start
        )
        last = results[grid[-1]]
        assert last.min_eps is not None
        adv = images.clone()
        # The adversarial carried forward is the one found at min_eps.
        adv[last.success] = last.adv[last.success]
        attacks = torch.zeros(n, dtype=torch.long, device=dev)
        for e in grid:
            attacks += (last.min_eps >= e).long()
        return MinimalEps(grid, last.min_eps.clone(), adv, attacks, norm)
    if strategy != "bisect":
        raise AdvfaceError(f"unknown strategy {strategy!r}", fix="use 'grow' or 'bisect'")

    # Bracket per image: grid[lo] not fooled (lo = -1: unknown), grid[hi] fooled (hi = G: none).
    g = len(grid)
    lo = torch.full((n,), -1, dtype=torch.long, device=dev)
    hi = torch.full((n,), g, dtype=torch.long, device=dev)
    adv = images.clone()
    attacks = torch.zeros(n, dtype=torch.long, device=dev)
    while True:
        undecided = hi - lo > 1
        if not bool(undecided.any()):
            break
        mid = torch.where(undecided, (lo + hi) // 2, torch.full_like(lo, -1))
        for m in mid[undecided].unique().tolist():
            idx = (mid == m).nonzero()[:, 0]
            attack = attack_factory(Budget(norm, grid[m]))
            res = attack.run(model, images[idx], goal[idx], seed=seed)
            attacks[idx] += 1
            won = res.success
            hi[idx[won]] = m
            adv[idx[won]] = res.adv[won]
            lo[idx[~won]] = m
    values = torch.tensor([*grid, math.inf], dtype=torch.float64, device=dev)
    return MinimalEps(grid, values[hi], adv, attacks, norm)


def robust_accuracy(results: dict[float, AttackResult]) -> dict[float, float]:
    """Fraction of images not fooled per eps of a :func:`sweep` result."""
    return {e: 1.0 - r.success_rate for e, r in results.items()}
