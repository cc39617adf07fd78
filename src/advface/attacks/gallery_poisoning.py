"""Threat surface "gallery": poison enrolment images so that *clean* probes are misidentified.

The adversary cannot touch the probe (e.g. a camera frame) but can alter, within a budget, the
gallery images of chosen identities before they are enrolled. Identification is rank-1 against
the gallery: per identity the best similarity over its gallery images (negative Euclidean
distance or cosine similarity, following the embedder's ``metric``), decision = argmax, as
everywhere in advface.

* Dodging (``Dodging(probe_labels)``): poison the probes' own identities so their gallery
  embeddings move away from their probes and another identity wins.
* Impersonation (``Impersonation(targets)``): poison the *targets'* gallery images so they move
  toward the impostors' probes, which are then identified as the target.

The gallery perturbation is optimised with PGD on the summed goal margin over all attacked
probes (capped at ``kappa`` so probes already misidentified stop pulling), evaluated on the
quantised poisoned gallery with a straight-through gradient; the step with the most successful
probes (ties: larger total margin) is kept. Success is judged by re-identifying the clean
probes against the final quantised gallery.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advface.attacks.base import (
    Budget,
    Goal,
    LossKind,
    attack_loss,
    check_step_and_loss,
    eval_mode,
    l2_norm,
    linf_norm,
    make_generator,
    project,
    quantize_within,
    validate_images,
)
from advface.attacks.pgd import random_start, steepest_step
from advface.errors import AdvfaceError


def similarity(probes: Tensor, gallery: Tensor, metric: str) -> Tensor:
    """(P, G) similarities: cosine, or negative Euclidean distance (higher = closer)."""
    if metric == "cosine":
        return F.normalize(probes, dim=1) @ F.normalize(gallery, dim=1).T
    if metric == "euclidean":
        diff = probes[:, None, :] - gallery[None, :, :]
        return -(diff.pow(2).sum(-1) + 1e-12).sqrt()
    raise AdvfaceError(
        f"unknown embedding metric {metric!r}",
        fix="the embedding model's `metric` attribute must be 'euclidean' or 'cosine'",
    )


def identity_scores(sim: Tensor, gallery_labels: Tensor, n_identities: int) -> Tensor:
    """(P, C) best similarity per identity; identities without gallery images get -inf."""
    out = sim.new_full((sim.shape[0], n_identities), -math.inf)
    index = gallery_labels[None, :].expand(sim.shape[0], -1)
    return out.scatter_reduce(1, index, sim, reduce="amax", include_self=True)


def smooth_identity_scores(
    sim: Tensor, gallery_labels: Tensor, n_identities: int, temperature: float
) -> Tensor:
    """(P, C) soft maximum ``t * logsumexp(sim / t)`` per identity (>= the hard maximum).

    Why: under the hard maximum only the nearest image of an identity gets a gradient, so
    poisoning an identity with many gallery images moves one image per step while the next one
    takes over; the soft maximum pushes every near image at once. Decisions still use
    :func:`identity_scores`.
    """
    hard = identity_scores(sim.detach(), gallery_labels, n_identities)
    shift = hard.clamp_min(-1e30)  # finite for identities without images
    index = gallery_labels[None, :].expand(sim.shape[0], -1)
    w = torch.exp((sim - shift.gather(1, index)) / temperature)
    total = sim.new_zeros((sim.shape[0], n_identities)).scatter_add(1, index, w)
    soft = shift + temperature * torch.log(total.clamp_min(1e-30))
    return torch.where(torch.isfinite(hard), soft, hard)


@dataclass
class PoisoningResult:
    """Outcome of gallery poisoning.

    ``gallery``: the poisoned gallery, quantised (untouched images equal the clean ones);
    ``poisoned``: which gallery images were allowed to change; ``success`` / ``predictions``:
    per probe, against the poisoned gallery; ``clean_success``: per probe, against the clean
    gallery (the baseline); ``linf`` / ``l2``: per gallery image perturbation norms.
    """

    gallery: Tensor
    poisoned: Tensor
    success: Tensor
    predictions: Tensor
    clean_success: Tensor
    linf: Tensor
    l2: Tensor
    budget: Budget
    iterations: int

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else 0.0


class GalleryPoisoning:
    """PGD on gallery images of chosen identities against fixed, clean probes.

    Hyper-parameters: ``steps``, ``step_size`` (default ``2.5 * eps / steps``, at least one grey
    level for L-inf), ``random_start``, ``loss`` / ``temperature`` / ``kappa`` (see
    :func:`~advface.attacks.base.attack_loss`; default margin capped at 0), ``batch_size``
    (images per forward/backward: the objective couples every poisoned image through the
    max-over-gallery scores, so its gradient is taken with respect to the embeddings first and
    pushed through the network chunk by chunk; memory stays bounded however many images an
    identity has), ``smooth`` (temperature of the soft maximum over an identity's images used
    by the objective, see :func:`smooth_identity_scores`; 0 optimises the hard maximum).
    """

    name = "gallery_poisoning"

    def __init__(
        self,
        budget: Budget,
        *,
        steps: int = 50,
        step_size: float | None = None,
        random_start: bool = False,
        loss: LossKind = "margin",
        temperature: float = 0.1,
        kappa: float = 0.0,
        batch_size: int = 32,
        smooth: float = 0.02,
    ) -> None:
        if not 0 <= smooth < math.inf:
            raise AdvfaceError(f"smooth must be >= 0, got {smooth}", fix="e.g. 0.02 (0: hard max)")
        check_step_and_loss(step_size, temperature, kappa)
        if batch_size < 1:
            raise AdvfaceError(f"batch_size must be >= 1, got {batch_size}", fix="e.g. 32")
        if steps < 0:
            raise AdvfaceError(f"steps must be >= 0, got {steps}", fix="e.g. steps=50")
        if not math.isfinite(budget.eps):
            raise AdvfaceError("gallery poisoning needs a finite eps", fix="give a finite eps")
        self.budget = budget
        self.steps = steps
        e = budget.effective_eps
        default = 2.5 * e / max(steps, 1)
        if budget.norm == "linf" and e > 0:
            default = max(default, 1.0 / 255.0)
        self.step_size = step_size if step_size is not None else default
        self.random_start = random_start
        self.loss = loss
        self.temperature = temperature
        self.kappa = kappa
        self.batch_size = batch_size
        self.smooth = smooth

    def run(
        self,
        embedder: nn.Module,
        gallery: Tensor,
        gallery_labels: Tensor,
        probes: Tensor,
        goal: Goal,
        *,
        poisoned_identities: Sequence[int] | Tensor | None = None,
        n_identities: int | None = None,
        seed: int | None = None,
    ) -> PoisoningResult:
        """Poison the gallery images whose label is in ``poisoned_identities``.

        ``goal`` has one entry per probe: true identity (Dodging) or wanted identity
        (Impersonation). By default the poisoned identities are those the goal names (the
        probes' own identities for Dodging, the targets for Impersonation).
        """
        metric = getattr(embedder, "metric", None)
        if metric not in ("euclidean", "cosine"):
            raise AdvfaceError(
                f"embedding model {type(embedder).__name__} has metric {metric!r}",
                fix="set its `metric` attribute to 'euclidean' or 'cosine'",
            )
        gallery = validate_images(gallery)
        probes = validate_images(probes)
        dev = gallery.device
        gallery_labels = torch.as_tensor(gallery_labels, device=dev).long()
        goal = goal.to(dev)
        if gallery_labels.shape != (gallery.shape[0],) or len(goal) != probes.shape[0]:
            raise AdvfaceError(
                "need one label per gallery image and one goal entry per probe",
                fix="check gallery_labels and the goal's labels",
            )
        if n_identities is None:
            n_identities = int(max(gallery_labels.max(), goal.labels.max())) + 1
        chosen = (
            goal.labels.unique()
            if poisoned_identities is None
            else torch.as_tensor(poisoned_identities, device=dev).long()
        )
        poisoned = torch.isin(gallery_labels, chosen)
        gen = make_generator(seed, dev)

        with eval_mode(embedder), torch.no_grad():
            probe_emb = _embed(embedder, probes, self.batch_size)
            gallery_emb = _embed(embedder, gallery, self.batch_size)
            clean_scores = identity_scores(
                similarity(probe_emb, gallery_emb, metric), gallery_labels, n_identities
            )
        goal.check(clean_scores)
        clean_success = goal.success(clean_scores)

        pidx = poisoned.nonzero()[:, 0]
        clean = gallery[pidx]
        x = random_start(clean, self.budget, gen) if self.random_start else clean.clone()
        best_adv = clean.clone()
        best_key = (-1, -math.inf)
        iterations = 0
        with eval_mode(embedder):
            for t in range(self.steps + 1):
                q = quantize_within(clean, x, self.budget)
                with torch.no_grad():
                    q_emb = _embed(embedder, q, self.batch_size)
                with torch.enable_grad():
                    q_emb.requires_grad_(True)
                    emb = gallery_emb.index_put((pidx,), q_emb)
                    sim = similarity(probe_emb, emb, metric)
                    scores = identity_scores(sim, gallery_labels, n_identities)
                    opt_scores = scores if self.smooth == 0 else smooth_identity_scores(
                        sim, gallery_labels, n_identities, self.smooth)
                    objective = attack_loss(
                        opt_scores, goal, self.loss, temperature=self.temperature,
                        kappa=self.kappa
                    )
                    total = objective.sum()
                succ = goal.success(scores.detach())
                margin = goal.margin(scores.detach()).clamp(-1e6, 1e6)
                key = (int(succ.sum()), float(margin.sum()))
                if key > best_key:
                    best_key, best_adv = key, q.detach().clone()
                if t == self.steps or bool(succ.all()) or pidx.numel() == 0:
                    break
                (emb_grad,) = torch.autograd.grad(total, q_emb)
                grad = _input_grad(embedder, q, emb_grad, self.batch_size)
                iterations += 1
                x = x + self.step_size * steepest_step(grad, self.budget.norm)
                x = project(clean, x, self.budget)

        out = gallery.clone()
        out[pidx] = best_adv
        with eval_mode(embedder), torch.no_grad():
            emb = gallery_emb.index_put((pidx,), _embed(embedder, best_adv, self.batch_size))
            sim = similarity(probe_emb, emb, metric)
            scores = identity_scores(sim, gallery_labels, n_identities)
        delta = out - gallery
        return PoisoningResult(
            gallery=out,
            poisoned=poisoned,
            success=goal.success(scores),
            predictions=scores.argmax(dim=1),
            clean_success=clean_success,
            linf=linf_norm(delta),
            l2=l2_norm(delta),
            budget=self.budget,
            iterations=iterations,
        )


def _embed(embedder: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Embeddings in chunks (no graph kept): bounded memory for any gallery size."""
    if x.shape[0] == 0:
        with torch.no_grad():
            return embedder(x[:1]).float()[:0]
    return torch.cat([embedder(x[s:s + batch_size]).float()
                      for s in range(0, x.shape[0], batch_size)])


def _input_grad(embedder: nn.Module, x: Tensor, emb_grad: Tensor, batch_size: int) -> Tensor:
    """Chain rule chunk by chunk: d(objective)/dx = J_emb(x)^T d(objective)/d(emb)."""
    grad = torch.zeros_like(x)
    for s in range(0, x.shape[0], batch_size):
        with torch.enable_grad():
            xs = x[s:s + batch_size].detach().requires_grad_(True)
            (g,) = torch.autograd.grad(embedder(xs).float(), xs,
                                       grad_outputs=emb_grad[s:s + batch_size])
        grad[s:s + batch_size] = g
    return grad
