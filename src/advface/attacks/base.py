"""The one interface every attack implements, and what they all share.

An attack sees only a *score module*: images ``(N, 3, H, W)`` RGB in ``[0, 1]`` -> per-identity
scores ``(N, C)``, decision = ``argmax`` (see docs/architecture.md). It returns an
:class:`AttackResult` whose ``adv`` is what would be written to disk: every value a multiple of
1/255, inside ``[0, 1]`` and inside the budget *after* that rounding, and whose ``success`` is
the model's actual decision on that very tensor (never read off a loss).

Why quantisation needs care: rounding to the 8-bit grid can leave the budget. For L-inf with an
eps that is not a multiple of 1/255 (say 2.5/255) a pixel at +2.5 rounds to +3; for L2 rounding
every pixel to nearest can grow the norm. :func:`quantize_within` therefore rounds to nearest and
then moves just enough components one step toward the clean image to get back inside.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advface.errors import AdvfaceError
from advface.models.modes import eval_mode

Norm = Literal["linf", "l2"]
LossKind = Literal["margin", "ce"]

#: Tolerance used when snapping an eps to the 8-bit grid (absorbs float error in k/255*255).
_GRID_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """A perturbation budget ``||adv - clean||_norm <= eps`` with eps in ``[0, 1]`` pixel units.

    ``eps`` may be ``math.inf`` (unconstrained: the box ``[0, 1]`` is the only limit), which is
    what minimum-norm attacks (C&W, DeepFool) use when one wants their raw minimal norm.
    """

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise AdvfaceError(f"unknown norm {self.norm!r}", fix="use norm 'linf' or 'l2'")
        if not (self.eps >= 0):  # also rejects NaN
            raise AdvfaceError(f"eps must be >= 0, got {self.eps}", fix="give a non-negative eps")

    @classmethod
    def from_8bit(cls, norm: Norm, eps255: float | None) -> Budget:
        """Budget with eps given in 8-bit pixel units; ``None`` is unbounded (``inf``: what
        minimum-norm attacks run with when no eps is given).

        L-inf: ``eps255=2`` allows every pixel to move by at most 2 grey levels, i.e. eps = 2/255.
        L2: ``eps255`` is the Euclidean norm, per image over all 3*H*W values, of the
        perturbation measured with pixels in 0..255, i.e. of ``255 * (adv - clean)``; dividing
        by 255 gives the same norm in ``[0, 1]`` units, which is what ``eps`` stores. Example:
        ``from_8bit("l2", 255)`` allows changing one pixel channel from black to white, or 9
        channels by 85 grey levels each.
        """
        return cls(norm, math.inf if eps255 is None else float(eps255) / 255.0)

    @property
    def eps255(self) -> float:
        """eps in 8-bit pixel units (the inverse of :meth:`from_8bit`)."""
        return self.eps * 255.0

    @property
    def effective_eps(self) -> float:
        """The largest eps a quantised image can actually use.

        For L-inf a quantised perturbation is a whole number of grey levels, so eps is floored
        to the grid (2.5/255 -> 2/255). For L2 any eps is reachable up to rounding, so it is
        returned unchanged.
        """
        if self.norm == "linf" and math.isfinite(self.eps):
            return math.floor(self.eps * 255.0 + _GRID_TOL) / 255.0
        return self.eps

    def with_eps(self, eps: float) -> Budget:
        """Same norm, another eps (sweeps build one budget per grid point this way)."""
        return Budget(self.norm, eps)

    def __str__(self) -> str:
        return f"{self.norm} eps={self.eps255:g}/255"


# --------------------------------------------------------------------------------------------
# Goals
# --------------------------------------------------------------------------------------------


class Goal(ABC):
    """What counts as success for each image; holds one label per image.

    Subclasses define :meth:`margin`, a score difference that is positive exactly when the
    decision already achieves the goal (up to ties), and :meth:`success`, the argmax test.
    """

    targeted: ClassVar[bool]

    def __init__(self, labels: Tensor) -> None:
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16):
            raise AdvfaceError(
                f"{type(self).__name__} needs a 1-D integer tensor, got shape "
                f"{tuple(labels.shape)} dtype {labels.dtype}",
                fix="pass one integer identity index per image",
            )
        self.labels = labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, idx: Tensor | slice) -> Goal:
        """The same goal restricted to some images (used by per-image early stopping)."""
        return type(self)(self.labels[idx])

    def to(self, device: torch.device | str) -> Goal:
        return type(self)(self.labels.to(device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)})"

    def check(self, scores: Tensor) -> None:
        """Raise a clear error when labels do not index the score columns."""
        if scores.ndim != 2 or scores.shape[0] != len(self):
            raise AdvfaceError(
                f"score module returned shape {tuple(scores.shape)} for {len(self)} labels",
                fix="the model must map (N,3,H,W) images to (N, n_identities) scores",
            )
        if len(self) and (self.labels.min() < 0 or self.labels.max() >= scores.shape[1]):
            raise AdvfaceError(
                f"label out of range for {scores.shape[1]} identities",
                fix="labels/targets must be identity indices in 0..n_identities-1",
            )

    @abstractmethod
    def success(self, scores: Tensor) -> Tensor:
        """BoolTensor (N,): does the decision (argmax) achieve the goal?"""

    @abstractmethod
    def margin(self, scores: Tensor) -> Tensor:
        """(N,) margin to maximise; > 0 means the goal is met by a clear argmax."""


def _best_other(scores: Tensor, labels: Tensor) -> Tensor:
    """Highest score among the columns other than ``labels`` (per row)."""
    return scores.scatter(1, labels[:, None], -math.inf).max(dim=1).values


class Dodging(Goal):
    """Untargeted: success iff the decision is not the true identity ``labels``."""

    targeted = False

    def success(self, scores: Tensor) -> Tensor:
        return scores.argmax(dim=1) != self.labels

    def margin(self, scores: Tensor) -> Tensor:
        true = scores.gather(1, self.labels[:, None])[:, 0]
        return _best_other(scores, self.labels) - true


class Impersonation(Goal):
    """Targeted: success iff the decision is the target identity ``labels`` (the targets)."""

    targeted = True

    @property
    def targets(self) -> Tensor:
        return self.labels

    def success(self, scores: Tensor) -> Tensor:
        return scores.argmax(dim=1) == self.labels

    def margin(self, scores: Tensor) -> Tensor:
        target = scores.gather(1, self.labels[:, None])[:, 0]
        return target - _best_other(scores, self.labels)


def attack_loss(
    scores: Tensor,
    goal: Goal,
    kind: LossKind = "margin",
    *,
    temperature: float = 1.0,
    kappa: float = math.inf,
) -> Tensor:
    """Per-image objective to *maximise* for the goal.

    ``"margin"`` (default, Carlini-Wagner style) is the goal's score margin, optionally capped at
    ``kappa`` so images already past the boundary by ``kappa`` stop pulling the gradient. It is
    scale-free in the sense that the argmax and the sign of the margin do not depend on how
    scores are scaled, which matters because gallery scores are similarities (cosine in [-1, 1]
    or negative distances), not logits.

    ``"ce"`` is cross-entropy on ``scores / temperature``: ascended on the true label for
    Dodging, descended toward the target for Impersonation. With similarities a temperature
    around 0.05-0.1 makes the softmax sharp enough to give useful gradients; with logits use 1.
    """
    if kind == "margin":
        m = goal.margin(scores)
        return m.clamp(max=kappa) if math.isfinite(kappa) else m
    if kind == "ce":
        ce = F.cross_entropy(scores / temperature, goal.labels, reduction="none")
        return -ce if goal.targeted else ce
    raise AdvfaceError(f"unknown loss {kind!r}", fix="use loss 'margin' or 'ce'")


def check_step_and_loss(step_size: float | None, temperature: float, kappa: float,
                        momentum: float = 0.0) -> None:
    """Refuse settings under which a gradient attack quietly finds less than it should: a
    step that is negative, zero or NaN walks nowhere (or away), a temperature <= 0 breaks the
    softmax, a kappa < 0 stops the margin before the decision boundary, a negative momentum
    undoes earlier steps; the model would then look more robust than it is."""
    bad = []
    if step_size is not None and not (0 < step_size < math.inf):
        bad.append(f"step_size must be a positive finite number, got {step_size}")
    if not (0 < temperature < math.inf):
        bad.append(f"temperature must be a positive finite number, got {temperature}")
    if not kappa >= 0:  # inf (no cap) allowed; NaN fails the comparison
        bad.append(f"kappa must be >= 0 (inf: no cap), got {kappa}")
    if not (0 <= momentum < math.inf):
        bad.append(f"momentum must be a finite number >= 0, got {momentum}")
    if bad:
        raise AdvfaceError("; ".join(bad), fix="leave these unset for the defaults (step_size: "
                           "2.5*eps/steps, temperature 1, kappa inf, momentum 0 or 1)")


# --------------------------------------------------------------------------------------------
# Norms, projection, quantisation
# --------------------------------------------------------------------------------------------


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], int(x[0].numel()) if x.shape[0] else 0)


def linf_norm(delta: Tensor) -> Tensor:
    """Per-image L-inf norm of a perturbation batch."""
    if delta.shape[0] == 0 or delta[0].numel() == 0:
        return delta.new_zeros(delta.shape[0])
    return _flat(delta).abs().amax(dim=1)


def l2_norm(delta: Tensor) -> Tensor:
    """Per-image L2 norm of a perturbation batch."""
    return _flat(delta).norm(dim=1)


def norm_of(delta: Tensor, norm: Norm) -> Tensor:
    return linf_norm(delta) if norm == "linf" else l2_norm(delta)


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def project(clean: Tensor, adv: Tensor, budget: Budget) -> Tensor:
    """Bring ``adv`` into the budget ball around ``clean`` and into ``[0, 1]`` (continuous).

    L2 is scaled onto the ball first and clipped to the box after; clipping only moves values
    toward the clean image, so the result stays inside the ball (it is not the exact Euclidean
    projection onto the intersection, which no attack here needs).
    """
    delta = adv - clean
    if budget.norm == "linf":
        e = budget.effective_eps
        if math.isfinite(e):
            delta = delta.clamp(-e, e)
    elif math.isfinite(budget.eps):
        n = l2_norm(delta)
        factor = torch.where(n > budget.eps, budget.eps / n.clamp_min(1e-20), torch.ones_like(n))
        delta = delta * _per_image(factor, delta)
    return (clean + delta).clamp(0.0, 1.0)


def to_grid(x: Tensor) -> Tensor:
    """Round to the nearest multiple of 1/255 inside ``[0, 1]`` (no budget involved)."""
    return (x * 255.0).round().clamp(0.0, 255.0) / 255.0


def on_grid(x: Tensor, tol: float = 1e-3) -> bool:
    """True when every value is (within float error) a multiple of 1/255 inside [0, 1]."""
    v = x.detach() * 255.0
    return bool(((v - v.round()).abs() <= tol).all() and (x >= 0).all() and (x <= 1).all())


def fit_l2_rounding(d_cont: Tensor, d_int: Tensor, bound255: float) -> Tensor:
    """Move rounded L2 perturbations back inside the ball (all in 8-bit units, float64).

    Components rounded *away* from zero are candidates; flipping one to the other grid
    neighbour (one step toward zero) lowers the squared norm by ``2|d| - 1``. Flip those with
    the largest rounding excess first until the norm fits. Flipping every candidate gives a
    vector no longer than ``d_cont`` component-wise, so a solution always exists once
    ``d_cont`` itself is inside the ball.
    """
    n = d_int.shape[0]
    flat_i = d_int.reshape(n, -1)
    sumsq = (flat_i * flat_i).sum(dim=1)
    limit = bound255 * bound255
    bad = sumsq > limit
    if not bool(bad.any()):
        return d_int
    flat_c = d_cont.reshape(n, -1)[bad]
    fi = flat_i[bad]
    excess = fi.abs() - flat_c.abs()
    cand = (excess > 0) & (fi != 0)
    prio = torch.where(cand, excess, torch.full_like(excess, -math.inf))
    order = prio.argsort(dim=1, descending=True)
    gains = torch.where(cand, 2.0 * fi.abs() - 1.0, torch.zeros_like(fi)).gather(1, order)
    cum = gains.cumsum(dim=1)
    need = (sumsq[bad] - limit)[:, None]
    count = torch.searchsorted(cum.contiguous(), need.contiguous(), right=False)[:, 0] + 1
    count = torch.minimum(count, cand.sum(dim=1))
    rank_ok = torch.arange(fi.shape[1], device=fi.device)[None, :] < count[:, None]
    flip = torch.zeros_like(cand).scatter(1, order, rank_ok)
    fi = fi - torch.where(flip, fi.sign(), torch.zeros_like(fi))
    flat_i = flat_i.clone()
    flat_i[bad] = fi
    return flat_i.reshape(d_int.shape)


def quantize_within(clean: Tensor, adv: Tensor, budget: Budget) -> Tensor:
    """Budget-safe rounding of ``adv`` to the 8-bit grid.

    Precondition: ``clean`` is on the grid (see :func:`on_grid`); attacks check it. The result
    is on the grid, in ``[0, 1]``, and within ``budget`` of ``clean`` after rounding:

    * L-inf: per pixel, round the perturbation to whole grey levels and clamp to
      ``floor(eps * 255)`` levels (so eps = 2.5/255 allows 2 levels, never 3).
    * L2: project onto the ball, round to nearest, then flip the components whose rounding
      overshot the most one level toward the clean image until the norm fits again.

    It is idempotent: an already quantised, in-budget image is returned unchanged.
    """
    dtype = adv.dtype
    if budget.norm == "linf":
        # Whole grey levels in [0, 255] are exact in float32: no need for float64 here.
        # Rounding commutes with clamping to whole-level bounds, so this is "round, then clamp
        # to the budget and the box" done the way PGD's iterate does it (:class:`LinfBox`).
        work = torch.promote_types(dtype, torch.float32)
        box = LinfBox(clean.to(work), budget)
        return box.image(box.levels(adv.to(work))).to(dtype)
    c255 = (clean.double() * 255.0).round()
    d = (project(clean, adv, budget).double() * 255.0) - c255
    d = torch.minimum(torch.maximum(d, -c255), 255.0 - c255)
    d_int = d.round()
    if math.isfinite(budget.eps):
        d_int = fit_l2_rounding(d, d_int, budget.eps * 255.0)
    return ((c255 + d_int) / 255.0).to(dtype)


class LinfBox:
    """The L-inf budget around clean images intersected with ``[0, 1]``, in grey levels.

    Why: an iterative attack projects and rounds at every step. With the per-pixel bounds
    computed once as whole grey levels (``lo = max(c - e, 0)``, ``hi = min(c + e, 255)``, ``c``
    the clean level, ``e = floor(eps * 255)``), projecting an iterate kept in grey-level units is
    one clamp and its saved image one rounding: no per-step copy of the clean batch. Rounding a
    value inside ``[lo, hi]`` stays inside, so :meth:`image` is exactly what
    :func:`quantize_within` would return for it.
    """

    def __init__(self, clean: Tensor, budget: Budget) -> None:
        if budget.norm != "linf":
            raise AdvfaceError(f"LinfBox needs an L-inf budget, got {budget}", fix="use norm linf")
        c255 = (clean.detach() * 255.0).round()
        e = budget.effective_eps * 255.0 if math.isfinite(budget.eps) else 255.0
        e = float(round(e))
        self.lo = (c255 - e).clamp_(min=0.0)
        self.hi = (c255 + e).clamp_(max=255.0)

    def select(self, keep: Tensor) -> LinfBox:
        """The bounds of a subset of images (early stopping shrinks the batch)."""
        box = LinfBox.__new__(LinfBox)
        box.lo, box.hi = self.lo[keep], self.hi[keep]
        return box

    def levels(self, x: Tensor) -> Tensor:
        """``x`` (in ``[0, 1]`` units) as grey levels projected into the box (a new tensor)."""
        return self.clamp_((x.detach() * 255.0).nan_to_num_(0.0))

    def clamp_(self, x255: Tensor) -> Tensor:
        """Project grey-level iterates into the box, in place."""
        return x255.clamp_(min=self.lo, max=self.hi)

    def image(self, x255: Tensor) -> Tensor:
        """The 8-bit image of grey-level iterates: in budget, on the grid, in ``[0, 1]``."""
        return x255.round().div_(255.0)


# --------------------------------------------------------------------------------------------
# Results and bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    """Outcome of an attack on a batch, one entry per image.

    ``adv`` is quantised to k/255, in [0, 1] and within budget after quantisation; ``success``
    is the model's decision on ``adv``; ``linf``/``l2`` are perturbation norms in [0, 1] units.
    ``iterations`` counts gradient evaluations, ``queries`` forward-only model calls (score-based
    attacks); ``min_eps`` is the smallest eps (budget norm) at which the image was fooled, or
    ``inf``, when the attack or sweep determines it. ``extras`` holds attack-specific tensors.
    """

    adv: Tensor
    success: Tensor
    linf: Tensor
    l2: Tensor
    budget: Budget
    iterations: Tensor | None = None
    queries: Tensor | None = None
    min_eps: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def success_rate(self) -> float:
        """Fraction of images for which the goal was achieved (0 for an empty batch)."""
        return float(self.success.float().mean()) if len(self) else 0.0

    def select(self, idx: Tensor) -> AttackResult:
        """The results of a subset of images (index or boolean mask)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return AttackResult(
            adv=self.adv[idx],
            success=self.success[idx],
            linf=self.linf[idx],
            l2=self.l2[idx],
            budget=self.budget,
            iterations=pick(self.iterations),
            queries=pick(self.queries),
            min_eps=pick(self.min_eps),
            extras={k: v[idx] for k, v in self.extras.items()},
        )


class BestTracker:
    """Keeps, per image, the best quantised candidate an attack has evaluated so far.

    ``prefer="margin"`` (fixed-budget attacks): a success beats a failure, then the larger goal
    margin wins. ``prefer="norm"`` (minimum-norm attacks): a success beats a failure, a smaller
    perturbation beats a larger one among successes, the larger margin among failures. Attacks
    feed every candidate they evaluate, so they can never report worse than something they saw.

    ``judged`` marks images whose kept candidate came with ``exact=True``: its scores are the
    model's full-precision decision on exactly that tensor, so :func:`judge` need not run the
    model on it again (one forward pass per batch saved; see :meth:`Attack.run`).
    """

    def __init__(self, clean: Tensor, goal: Goal, norm: Norm, prefer: str = "margin") -> None:
        n = clean.shape[0]
        self.clean = clean
        self.goal = goal
        self.norm = norm
        self.prefer = prefer
        self.adv = clean.clone()
        self.success = torch.zeros(n, dtype=torch.bool, device=clean.device)
        self.margin = torch.full((n,), -math.inf, device=clean.device)
        self.size = torch.full((n,), math.inf, device=clean.device)
        self.judged = torch.zeros(n, dtype=torch.bool, device=clean.device)
        #: ``idx`` meaning "all images, in order"; passing this very tensor skips the indexing
        #: (the common case of attacks without early stopping, where it costs the most).
        self.everyone = torch.arange(n, device=clean.device)

    def update(
        self,
        idx: Tensor,
        cand: Tensor,
        scores: Tensor,
        *,
        exact: bool = False,
        margin: Tensor | None = None,
    ) -> Tensor:
        """Offer candidates for images ``idx``; returns their success mask (BoolTensor).

        ``exact=True`` promises that ``scores`` are ``model(cand)`` in eval mode and full
        precision, ``cand`` already quantised within the budget (what :func:`judge` would
        evaluate); only then may the final judgement reuse them. ``margin``: the goal's margin
        of these scores when the caller already computed it.
        """
        every_row = idx is self.everyone

        def rows(t: Tensor) -> Tensor:
            return t if every_row else t[idx]

        goal = self.goal if every_row else self.goal[idx]
        scores = scores.detach().float()
        succ = goal.success(scores)
        marg = goal.margin(scores) if margin is None else margin.detach().float()
        bs, bm = rows(self.success), rows(self.margin)
        size = None
        if self.prefer == "norm":
            size = norm_of(cand.detach() - rows(self.clean), self.norm).float()
            better = (succ & ~bs) | (succ & bs & (size < rows(self.size))) | (
                ~succ & ~bs & (marg > bm))
        else:
            better = (succ & ~bs) | ((succ == bs) & (marg > bm))
        if bool(better.any()):
            every = bool(better.all())
            j = idx if every else idx[better]
            src = cand.detach() if every else cand.detach()[better]
            if every and every_row:  # everything improved: plain copies, no scatter
                self.adv.copy_(src)
                self.success.copy_(succ)
                self.margin.copy_(marg)
                self.judged.fill_(exact)
            else:
                self.adv.index_copy_(0, j, src.to(self.adv.dtype))
                self.success[j] = succ if every else succ[better]
                self.margin[j] = marg if every else marg[better]
                self.judged[j] = exact
            if size is not None:
                self.size[j] = size if every else size[better]
        return succ


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Run with the model's parameters not requiring gradients, restoring them afterwards.

    Attacks differentiate with respect to the input only; parameters that require gradients
    make every forward record autograd state for them (measured ~2% of a PGD step on the dlib
    and ad-hoc models here).
    """
    thawed = [p for p in model.parameters() if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A local generator (never the global RNG); ``seed=None`` draws a fresh seed."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


# --------------------------------------------------------------------------------------------
# The attack interface
# --------------------------------------------------------------------------------------------


class Attack(ABC):
    """Base class: ``Attack(budget, **hyper).run(model, images, goal, seed=...)``.

    Subclasses implement :meth:`_attack`, returning a :class:`BestTracker` plus per-image
    counters; :meth:`run` validates inputs, switches the model to eval mode, and builds the
    :class:`AttackResult` by re-judging the tracked, quantised images with the model in full
    precision, so ``success`` is always the real decision on the returned ``adv``.
    """

    name: ClassVar[str] = "attack"
    #: Norms the attack implements.
    norms: ClassVar[tuple[Norm, ...]] = ("linf", "l2")
    #: Whether ``run(init=...)`` is used as a starting point (sweeps warm-start with it).
    supports_init: ClassVar[bool] = False
    #: Attack reports a per-image minimal perturbation in ``min_eps``.
    minimum_norm: ClassVar[bool] = False

    #: Whether the attack scales its loss for fp16 autocast (``amp="fp16"``); others refuse it.
    fp16_ok: ClassVar[bool] = False

    def __init__(
        self, budget: Budget, *, amp: bool | str = False, compile: bool | str = False
    ) -> None:
        if not isinstance(budget, Budget):
            raise AdvfaceError(
                f"{type(self).__name__} needs a Budget, got {type(budget).__name__}",
                fix="pass Budget('linf', 8/255) or Budget.from_8bit('linf', 8)",
            )
        if budget.norm not in self.norms:
            raise AdvfaceError(
                f"attack {self.name!r} does not support norm {budget.norm!r}",
                fix=f"use one of {', '.join(self.norms)}",
            )
        self.budget = budget
        self.amp = _amp_kind(amp)
        if self.amp == "fp16" and not self.fp16_ok:
            raise AdvfaceError(
                f"attack {self.name!r} does not support amp='fp16': fp16 gradients need the "
                "loss scaling that only the PGD family (FGSM, BIM, PGD, MI-FGSM) implements",
                fix="use amp='bf16' (fp32's range, no scaling needed) or amp=False",
            )
        self.compile = _compile_backend(compile)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.budget})"

    # -- helpers for subclasses ---------------------------------------------------------------

    def amp_active(self) -> bool:
        """Whether gradient passes run under autocast (only when asked for, on any device)."""
        return self.amp is not None

    @property
    def loss_scale(self) -> float:
        """Factor on the loss before backward: fp16's small range would flush gradients to 0."""
        return FP16_LOSS_SCALE if self.amp == "fp16" else 1.0

    def scores(self, model: nn.Module, x: Tensor) -> Tensor:
        """Forward pass for gradients: autocast in ``amp``'s dtype when asked for.

        Works on any device torch autocasts (CUDA; CPUs, where it pays off only with bf16/fp16
        units such as AMX). Decisions that feed the best-so-far bookkeeping are always taken in
        full precision (attacks re-evaluate when amp is on), so rounding cannot fake a success.
        """
        if self.amp_active():
            with torch.autocast(x.device.type, dtype=_AMP_DTYPES[self.amp]):
                return model(x).float()
        return model(x)

    def quantize(self, clean: Tensor, adv: Tensor) -> Tensor:
        return quantize_within(clean, adv, self.budget)

    def compiled(self, model: nn.Module) -> nn.Module:
        """``model`` behind ``torch.compile`` when the attack was built with ``compile``.

        The wrapper shares the model's parameters and mode. It is cached for the few most
        recently used models (:data:`_COMPILED`), across attack objects, so an experiment that
        builds one attack per eps and batch compiles each model once.
        """
        if self.compile is None:
            return model
        key = (id(model), self.compile)
        hit = _COMPILED.pop(key, None)
        wrapped = hit[1] if hit is not None and hit[0] is model else torch.compile(
            model, backend=self.compile)
        _COMPILED[key] = (model, wrapped)
        while len(_COMPILED) > _COMPILED_KEEP:
            _COMPILED.popitem(last=False)
        return wrapped

    # -- the public entry point ---------------------------------------------------------------

    def run(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        *,
        seed: int | None = None,
        init: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``images`` (on the 8-bit grid) toward ``goal``; deterministic given ``seed``.

        ``init`` is an optional starting point (e.g. the adversarial found at a smaller eps);
        attacks with ``supports_init`` start from its projection into the budget, others
        ignore it.
        """
        images = validate_images(images)
        if len(goal) != images.shape[0]:
            raise AdvfaceError(
                f"{len(goal)} labels for {images.shape[0]} images",
                fix="give one label (Dodging) or target (Impersonation) per image",
            )
        goal = goal.to(images.device)
        if init is not None and init.shape != images.shape:
            raise AdvfaceError(
                f"init has shape {tuple(init.shape)}, images {tuple(images.shape)}",
                fix="init must be a batch of the same shape as the images",
            )
        gen = make_generator(seed, images.device)
        with eval_mode(model), frozen_parameters(model):
            model = self.compiled(model)
            if images.shape[0] == 0:
                tracker = BestTracker(images, goal, self.budget.norm)
                counts: dict[str, Tensor] = {}
            else:
                tracker, counts = self._attack(model, images, goal, gen, init)
            iterations = counts.pop("iterations", None)
            queries = counts.pop("queries", None)
            return self.finalize(
                model,
                images,
                goal,
                tracker.adv,
                iterations=iterations,
                queries=queries,
                extras=counts,
                known=(tracker.judged, tracker.success),
            )

    @abstractmethod
    def _attack(
        self,
        model: nn.Module,
        images: Tensor,
        goal: Goal,
        gen: torch.Generator,
        init: Tensor | None,
    ) -> tuple[BestTracker, dict[str, Tensor]]:
        """Do the work; return the tracker and per-image tensors.

        The dict holds ``iterations`` and/or ``queries``; any other key goes to
        ``AttackResult.extras``.
        """

    def finalize(
        self,
        model: nn.Module,
        clean: Tensor,
        goal: Goal,
        adv: Tensor,
        *,
        iterations: Tensor | None = None,
        queries: Tensor | None = None,
        extras: dict[str, Tensor] | None = None,
        known: tuple[Tensor, Tensor] | None = None,
    ) -> AttackResult:
        """Quantise within budget, judge on the model in full precision, measure norms."""
        return judge(
            model,
            clean,
            goal,
            adv,
            self.budget,
            iterations=iterations,
            queries=queries,
            extras=extras,
            minimum_norm=self.minimum_norm,
            known=known,
        )


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Static loss scale for fp16 gradient passes (a margin loss is O(1), so 2^12 keeps input
#: gradients out of fp16's subnormals without overflowing; an overflowing step is redone in fp32).
FP16_LOSS_SCALE = 2.0**12


def _amp_kind(amp: bool | str) -> str | None:
    """``amp`` as "bf16", "fp16" or None (off); True means bf16, which needs no loss scaling."""
    if amp is False or amp is None:
        return None
    kind = "bf16" if amp is True else str(amp).lower()
    if kind not in _AMP_DTYPES:
        raise AdvfaceError(f"unknown amp {amp!r}", fix="use amp=True/'bf16', 'fp16' or False")
    return kind


#: Compiled wrappers of recently attacked models, oldest first: (id, backend) -> (model,
#: wrapper). The model is held so its id cannot be reused by another object while cached.
_COMPILED: OrderedDict[tuple[int, str], tuple[nn.Module, nn.Module]] = OrderedDict()
_COMPILED_KEEP = 4


def _compile_backend(compile: bool | str) -> str | None:
    """``compile`` as a torch.compile backend name (None = off); unknown names fail early."""
    if compile is False or compile is None:
        return None
    backend = "inductor" if compile is True else str(compile)
    known = set(torch.compiler.list_backends(exclude_tags=()))
    if backend not in known:
        raise AdvfaceError(
            f"unknown torch.compile backend {backend!r}",
            fix=f"use compile=True (inductor) or one of {', '.join(sorted(known))}",
        )
    return backend


def validate_images(images: Tensor) -> Tensor:
    """Check the image convention (N,3,H,W) float in [0,1] on the 8-bit grid."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise AdvfaceError(
            f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}",
            fix="stack the images into one float tensor (N, 3, H, W)",
        )
    if not images.is_floating_point():
        raise AdvfaceError(
            f"images must be float in [0, 1], got {images.dtype}",
            fix="convert with images.float() / 255",
        )
    if images.numel() and not on_grid(images):
        raise AdvfaceError(
            "images are not 8-bit (values must be multiples of 1/255 inside [0, 1]); budgets "
            "are measured from the saved image, so the clean input must be one",
            fix="quantise them first: advface.attacks.base.to_grid(images)",
        )
    return to_grid(images.detach())


@torch.no_grad()
def judge(
    model: nn.Module,
    clean: Tensor,
    goal: Goal,
    adv: Tensor,
    budget: Budget,
    *,
    iterations: Tensor | None = None,
    queries: Tensor | None = None,
    extras: dict[str, Tensor] | None = None,
    minimum_norm: bool = False,
    known: tuple[Tensor, Tensor] | None = None,
) -> AttackResult:
    """Build an :class:`AttackResult` from candidate adversarials (quantised here).

    Used by every attack and by transfer evaluation: the decision is taken by ``model`` on the
    quantised images in full precision. ``known = (judged, success)`` gives decisions the
    attack already took with ``model`` in full precision on exactly these tensors
    (:attr:`BestTracker.judged`); those images are not evaluated again unless quantisation
    changed them. The model decides in eval mode, as in every attack.
    """
    quantized = quantize_within(clean, adv, budget)
    success = torch.zeros(adv.shape[0], dtype=torch.bool, device=adv.device)
    todo = torch.ones_like(success)
    if known is not None and adv.shape[0]:
        judged, decided = known
        unchanged = (quantized == adv).reshape(adv.shape[0], -1).all(dim=1)
        reuse = judged.to(success.device) & unchanged
        success = torch.where(reuse, decided.to(success.device), success)
        todo = ~reuse
    adv = quantized
    if bool(todo.any()):
        rows = todo.nonzero()[:, 0]
        every = rows.numel() == adv.shape[0]
        with eval_mode(model), torch.no_grad():  # a direct call must not move BN statistics
            scores = model(adv if every else adv[rows]).float()
        sub = goal if every else goal[rows]
        sub.check(scores)
        success[rows] = sub.success(scores)
    delta = adv - clean
    linf = linf_norm(delta)
    l2 = l2_norm(delta)
    min_eps = None
    if minimum_norm:
        size = linf if budget.norm == "linf" else l2
        min_eps = torch.where(success, size, torch.full_like(size, math.inf))
    return AttackResult(
        adv=adv,
        success=success,
        linf=linf,
        l2=l2,
        budget=budget,
        iterations=iterations,
        queries=queries,
        min_eps=min_eps,
        extras=dict(extras or {}),
    )
