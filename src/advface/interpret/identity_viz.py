"""What does the model think a person looks like? Gradient ascent on the input image.

Activation maximisation (Erhan et al. 2009; Simonyan et al. 2014) of one identity's score: a
softmax head's logit (or log-probability), or, for an embedding model, the similarity to the
centroid of that person's gallery embeddings. Unregularised ascent produces high-frequency
adversarial noise, so the priors of Yosinski et al. (2015) and Mahendran & Vedaldi (2015) are
applied, each switchable:

* **jitter**: the image is rolled by a random offset of up to ``jitter`` pixels before each
  forward pass, so a pattern must work at several positions (suppresses pixel-exact noise);
* **periodic Gaussian blur** every ``blur_every`` steps (removes high frequencies);
* **total variation** penalty ``tv_weight * TV(x)`` (piecewise-smooth images);
* **L2 decay**: after each step the image shrinks toward mid-grey,
  ``x <- 0.5 + (1 - l2_decay) (x - 0.5)`` (keeps only pixels the objective keeps pushing).

With ``prior_on="change"`` (meant for starting from a face) blur, total variation and decay act
on the *change* ``x - start`` instead of the image, so the start face is kept sharp and only
the edit toward the target identity is regularised (decay then pulls back toward the start).

Starting from noise shows the identity's prototype; starting from *another person's face* shows
which changes turn that face into the target (a large-budget, visible impersonation). Every
result is an image in [0, 1]; identical inputs and seed give identical outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from advface.attacks.base import eval_mode
from advface.errors import AdvfaceError
from advface.training.augment import gaussian_blur

Objective = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class VizConfig:
    """Optimisation settings and priors (0 turns a prior off)."""

    steps: int = 200
    lr: float = 0.05
    jitter: int = 4
    blur_every: int = 8
    blur_sigma: float = 0.5
    tv_weight: float = 0.002
    l2_decay: float = 0.0
    grad_clip: float | None = None
    prior_on: Literal["image", "change"] = "image"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise AdvfaceError(f"need steps >= 1 and lr > 0, got {self.steps}, {self.lr}",
                               fix="e.g. steps=200, lr=0.05")
        if self.jitter < 0 or self.blur_every < 0 or self.blur_sigma < 0:
            raise AdvfaceError("jitter, blur_every and blur_sigma must be >= 0",
                               fix="use 0 to switch a prior off")
        if self.prior_on not in ("image", "change"):
            raise AdvfaceError(f"unknown prior_on {self.prior_on!r}", fix="use image or change")
        if self.tv_weight < 0 or not 0 <= self.l2_decay < 1:
            raise AdvfaceError("need tv_weight >= 0 and 0 <= l2_decay < 1",
                               fix="e.g. tv_weight=0.05, l2_decay=0.01")


@dataclass
class VizResult:
    """Optimised images ``(N, 3, H, W)`` in [0, 1] and the objective per step ``(steps, N)``."""

    images: Tensor
    objective: Tensor
    start: Tensor = field(repr=False)

    @property
    def final_objective(self) -> Tensor:
        return self.objective[-1]


def identity_objective(
    scorer: nn.Module, identity: int | Tensor, kind: Literal["score", "log_softmax"] = "score"
) -> Objective:
    """Objective for a score module: the identity's raw score, or its log-probability.

    The raw logit can be raised by making *every* score large; ``log_softmax`` instead asks
    for this identity relative to all the others, which usually gives more specific images.
    """
    if kind not in ("score", "log_softmax"):
        raise AdvfaceError(f"unknown objective {kind!r}", fix="use 'score' or 'log_softmax'")

    def objective(x: Tensor) -> Tensor:
        scores = scorer(x)
        idx = torch.as_tensor(identity, dtype=torch.long, device=x.device).reshape(-1)
        idx = idx.expand(x.shape[0]) if idx.numel() == 1 else idx
        if kind == "log_softmax":
            scores = scores.log_softmax(dim=1)
        return scores.gather(1, idx[:, None])[:, 0]

    return objective


@torch.no_grad()
def centroid_of(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """Mean embedding ``(D,)`` of one person's images (L2-normalised for cosine models)."""
    with eval_mode(model):
        emb = torch.cat([model(images[i : i + batch_size])
                         for i in range(0, images.shape[0], batch_size)])
    c = emb.mean(dim=0)
    return F.normalize(c, dim=0) if getattr(model, "metric", "cosine") == "cosine" else c


def centroid_objective(model: nn.Module, centroid: Tensor) -> Objective:
    """Similarity of the embedding to an identity centroid: cosine, or minus the Euclidean
    distance for ``metric == "euclidean"`` models (dlib), matching how they identify."""
    metric = getattr(model, "metric", "cosine")
    c = centroid.detach().reshape(1, -1)

    def objective(x: Tensor) -> Tensor:
        emb = model(x)
        if metric == "euclidean":
            return -(emb - c.to(emb)).norm(dim=1)
        return F.cosine_similarity(emb, c.to(emb), dim=1)

    return objective


def noise_start(n: int, size: int | tuple[int, int], *, seed: int = 0, std: float = 0.1
                ) -> Tensor:
    """Mid-grey images with Gaussian noise of std ``std``, clipped to [0, 1] (seeded)."""
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(int(seed))
    return (0.5 + std * torch.randn(n, 3, h, w, generator=g)).clamp(0.0, 1.0)


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation per image: sum of absolute neighbour differences.

    A sum (not a mean) so that its gradient per pixel is O(1) whatever the image size, which
    keeps ``tv_weight`` comparable across 64 px and 150 px inputs.
    """
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


def visualise_identity(
    objective: Objective,
    init: Tensor,
    config: VizConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
    model: nn.Module | None = None,
) -> VizResult:
    """Maximise ``objective`` (per-image values, higher = more like the identity) from ``init``.

    Adam on the pixels, projected to [0, 1] after every step. ``model`` (the network inside the
    objective) is put in eval mode for the run when given, so batch norm uses its running
    statistics and images do not interact. Each image is optimised independently: the loss is
    a sum of per-image terms.
    """
    cfg = config or VizConfig()
    if init.ndim != 4 or init.shape[1] != 3:
        raise AdvfaceError(f"init must be images (N, 3, H, W), got {tuple(init.shape)}",
                           fix="use noise_start(n, size) or a batch of face images")
    gen = torch.Generator().manual_seed(int(seed))
    x = init.detach().clone().float().clamp(0.0, 1.0).requires_grad_(True)
    # Blur and TV act on x - anchor; decay pulls toward decay_to (grey, or the start image).
    if cfg.prior_on == "change":
        anchor = init.detach().float().clamp(0.0, 1.0)
        decay_to = anchor
    else:
        anchor = torch.zeros_like(x.detach())
        decay_to = torch.full_like(anchor, 0.5)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    history = []
    ctx = eval_mode(model) if model is not None else contextlib.nullcontext()
    with ctx, torch.enable_grad():
        for step in tqdm(range(cfg.steps), desc="identity", disable=not progress, leave=False):
            inp = x
            if cfg.jitter > 0:
                dy, dx = (torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=gen)
                          .tolist())
                inp = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            obj = objective(inp)
            loss = -obj.sum()
            if cfg.tv_weight > 0:
                loss = loss + cfg.tv_weight * total_variation(x - anchor).sum()
            # The gradient of the pixels only: backward() would also add into the .grad of the
            # network's parameters, the caller's model, and leak into its next optimiser step.
            (x.grad,) = torch.autograd.grad(loss, x)
            if cfg.grad_clip is not None and x.grad is not None:
                x.grad.clamp_(-cfg.grad_clip, cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                if cfg.l2_decay > 0:
                    x.sub_(decay_to).mul_(1.0 - cfg.l2_decay).add_(decay_to)
                if cfg.blur_every and cfg.blur_sigma > 0 and (step + 1) % cfg.blur_every == 0:
                    sigma = torch.full((x.shape[0],), cfg.blur_sigma)
                    x.copy_(anchor + gaussian_blur(x - anchor, sigma))
                x.clamp_(0.0, 1.0)
            history.append(obj.detach().float())
        with torch.no_grad():
            final = objective(x.detach()).float()
    history.append(final)
    return VizResult(images=x.detach(), objective=torch.stack(history), start=init.detach())
