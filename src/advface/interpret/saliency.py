"""Gradient saliency for identity decisions: vanilla gradient, SmoothGrad, Integrated Gradients.

All three explain one identity's score ``f_c(x)`` of a *score module* (images -> per-identity
scores, see docs/architecture.md), batched, with the model in eval mode so one image's map never
depends on the others in its batch.

* **Vanilla gradient** (Simonyan et al. 2014): ``d f_c / d x``. Cheap, noisy.
* **SmoothGrad** (Smilkov et al. 2017): the gradient averaged over ``samples`` copies of the
  image with Gaussian noise of std ``noise`` (in [0, 1] pixel units, i.e. a fraction of the
  value range; 0.1-0.2 is their recommendation). Seeded.
* **Integrated Gradients** (Sundararajan et al. 2017): ``(x - x') * mean_a grad f_c(x' +
  a (x - x'))`` over a quadrature of ``a`` in [0, 1]. Its *completeness* property — attributions
  sum to ``f_c(x) - f_c(x')`` — holds up to the quadrature error, which is what the tests check
  and :func:`completeness_gap` measures. Baseline: black, or a strongly blurred copy of the image
  (keeps colours, removes the detail a face is recognised by).

Then :func:`heatmap` reduces attributions to one value per pixel, :func:`overlay` paints that on
the image, :func:`perturbation_saliency` measures whether an adversarial perturbation sits on the
pixels the model relies on, and :func:`comparison_figure` shows clean vs adversarial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from advface.attacks.base import eval_mode
from advface.errors import AdvfaceError
from advface.interpret.scoring import resolve_targets
from advface.training.augment import gaussian_blur

Target = Tensor | int | Sequence[int] | None
Baseline = Literal["black", "blur"] | Tensor
Quadrature = Literal["riemann_left", "riemann_right", "riemann_middle", "trapezoid"]
Reduce = Literal["max-abs", "sum-abs", "l2", "sum"]


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise AdvfaceError(
            f"expected float images (N, C, H, W), got {getattr(images, 'shape', type(images))}",
            fix="stack the images into one float tensor in [0, 1]",
        )
    return images.detach()


def _target_gradient(scorer: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of ``sum_i f_{target_i}(x_i)`` w.r.t. ``x`` and the selected scores."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        scores = scorer(x)
        if scores.ndim != 2 or scores.shape[0] != x.shape[0]:
            raise AdvfaceError(
                f"the model returned shape {tuple(scores.shape)} for {x.shape[0]} images",
                fix="pass a score module images -> (N, n_identities), e.g. as_scorer(model)",
            )
        selected = scores.gather(1, target[:, None])[:, 0]
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad.detach(), selected.detach()


def _batches(n: int, batch_size: int) -> list[slice]:
    if batch_size < 1:
        raise AdvfaceError(f"batch_size must be >= 1, got {batch_size}", fix="use e.g. 32")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def vanilla_gradient(
    scorer: nn.Module, images: Tensor, target: Target = None, *, batch_size: int = 32
) -> Tensor:
    """``d f_c / d x`` per image, shape like ``images``; ``target`` None = the decision."""
    images = _check_images(images)
    with eval_mode(scorer):
        t = resolve_targets(scorer, images, target)
        out = torch.empty_like(images)
        for sl in _batches(images.shape[0], batch_size):
            out[sl] = _target_gradient(scorer, images[sl], t[sl])[0]
    return out


def smoothgrad(
    scorer: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    samples: int = 25,
    noise: float = 0.15,
    squared: bool = False,
    seed: int = 0,
    batch_size: int = 32,
) -> Tensor:
    """Mean gradient over ``samples`` noisy copies (std ``noise``); identical per ``seed``.

    The target is fixed from the clean image, so every sample explains the same identity.
    ``squared`` averages squared gradients (SmoothGrad-Squared), a variant that shows magnitude
    only. Noise is drawn for the whole batch at once per sample, so a given image's map does
    not depend on ``batch_size``.
    """
    images = _check_images(images)
    if samples < 1 or noise < 0:
        raise AdvfaceError(
            f"need samples >= 1 and noise >= 0, got {samples}, {noise}",
            fix="e.g. samples=25, noise=0.15",
        )
    gen = torch.Generator(device=images.device).manual_seed(int(seed))
    with eval_mode(scorer):
        t = resolve_targets(scorer, images, target)
        total = torch.zeros_like(images)
        for _ in range(samples):
            eps = torch.randn(images.shape, generator=gen, device=images.device)
            noisy = images + noise * eps.to(images.dtype)
            for sl in _batches(images.shape[0], batch_size):
                g = _target_gradient(scorer, noisy[sl], t[sl])[0]
                total[sl] += g * g if squared else g
    return total / samples


def make_baseline(images: Tensor, kind: Baseline = "black", blur_sigma: float = 8.0) -> Tensor:
    """The IG reference image(s): black, a Gaussian blur of each image, or a given tensor."""
    images = _check_images(images)
    if isinstance(kind, Tensor):
        base = kind.to(images.device, images.dtype)
        if base.ndim == 3:
            base = base[None]
        try:
            return base.expand_as(images).clone()
        except RuntimeError:
            raise AdvfaceError(
                f"baseline shape {tuple(kind.shape)} does not fit images {tuple(images.shape)}",
                fix="give one baseline image (C, H, W) or one per image (N, C, H, W)",
            ) from None
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "blur":
        if blur_sigma <= 0:
            raise AdvfaceError(f"blur_sigma must be > 0, got {blur_sigma}", fix="e.g. 8")
        # Reflect padding needs the kernel radius below the image side.
        sigma = min(blur_sigma, (min(images.shape[-2:]) - 1) / 3.0)
        return gaussian_blur(images, torch.full((images.shape[0],), sigma))
    raise AdvfaceError(f"unknown baseline {kind!r}", fix="use 'black', 'blur' or a tensor")


def quadrature(steps: int, method: Quadrature = "trapezoid") -> tuple[Tensor, Tensor]:
    """Points ``a_k`` in [0, 1] and weights ``w_k`` (sum 1) approximating ``int_0^1 g(a) da``."""
    if steps < 1:
        raise AdvfaceError(f"steps must be >= 1, got {steps}", fix="use e.g. 64")
    k = torch.arange(steps, dtype=torch.float64)
    if method == "riemann_left":
        return k / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "riemann_right":
        return (k + 1) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "riemann_middle":
        return (k + 0.5) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "trapezoid":
        a = torch.arange(steps + 1, dtype=torch.float64) / steps
        w = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64)
        w[0] = w[-1] = 0.5 / steps
        return a, w
    raise AdvfaceError(
        f"unknown quadrature {method!r}",
        fix="use riemann_left, riemann_right, riemann_middle or trapezoid",
    )


def integrated_gradients(
    scorer: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    baseline: Baseline = "black",
    steps: int = 64,
    method: Quadrature = "trapezoid",
    blur_sigma: float = 8.0,
    batch_size: int = 32,
) -> Tensor:
    """Integrated Gradients attributions, shape like ``images``.

    Cost: ``steps`` (+1 for trapezoid) gradient evaluations per image. The target is the
    decision on the image itself (not on the baseline) unless given.
    """
    images = _check_images(images)
    base = make_baseline(images, baseline, blur_sigma)
    alphas, weights = quadrature(steps, method)
    with eval_mode(scorer):
        t = resolve_targets(scorer, images, target)
        total = torch.zeros_like(images, dtype=torch.float64)
        diff = images - base
        for a, w in zip(alphas.tolist(), weights.tolist(), strict=True):
            point = base + a * diff
            for sl in _batches(images.shape[0], batch_size):
                g = _target_gradient(scorer, point[sl], t[sl])[0]
                total[sl] += w * g.double()
    return (diff.double() * total).to(images.dtype)


def completeness_gap(
    scorer: nn.Module,
    images: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    baseline: Baseline = "black",
    blur_sigma: float = 8.0,
) -> Tensor:
    """Per image ``sum(attributions) - (f_c(x) - f_c(x'))``: IG's quadrature error (0 = exact)."""
    images = _check_images(images)
    base = make_baseline(images, baseline, blur_sigma)
    with eval_mode(scorer), torch.no_grad():
        t = resolve_targets(scorer, images, target)
        fx = scorer(images).gather(1, t[:, None])[:, 0]
        fb = scorer(base).gather(1, t[:, None])[:, 0]
    return attributions.flatten(1).sum(1) - (fx - fb)


# --------------------------------------------------------------------------- maps and overlays


def heatmap(attributions: Tensor, reduce: Reduce = "max-abs", clip_percentile: float = 99.0,
            smooth: float = 0.0) -> Tensor:
    """Attributions ``(N, C, H, W)`` -> per-pixel importance ``(N, H, W)`` in [0, 1].

    Channels are reduced (max of absolute values, as Simonyan et al.; or sum of absolute
    values, L2 norm, signed sum clipped at 0), then each map is divided by its
    ``clip_percentile`` percentile and clipped, so a handful of extreme pixels does not make the
    rest of the map invisible (Smilkov et al.'s visualisation). ``smooth`` > 0 blurs the map
    with a Gaussian of that sigma (pixels) first: models that area-pool their input by a
    non-integer factor (the ad-hoc model: 150 -> 64 px) have gradients on a regular grid of
    pixels shared by two pooling windows, an aliasing pattern that smoothing removes.
    """
    if attributions.ndim == 3:
        attributions = attributions[:, None]
    if attributions.ndim != 4:
        raise AdvfaceError(
            f"expected attributions (N, C, H, W), got {tuple(attributions.shape)}",
            fix="pass the output of vanilla_gradient/smoothgrad/integrated_gradients",
        )
    a = attributions.detach().float()
    if reduce == "max-abs":
        m = a.abs().amax(dim=1)
    elif reduce == "sum-abs":
        m = a.abs().sum(dim=1)
    elif reduce == "l2":
        m = a.pow(2).sum(dim=1).sqrt()
    elif reduce == "sum":
        m = a.sum(dim=1).clamp_min(0.0)
    else:
        raise AdvfaceError(f"unknown reduce {reduce!r}", fix="use max-abs, sum-abs, l2 or sum")
    if not 0 < clip_percentile <= 100:
        raise AdvfaceError(f"clip_percentile must be in (0, 100], got {clip_percentile}",
                           fix="e.g. 99")
    if smooth > 0:
        sigma = min(smooth, (min(m.shape[-2:]) - 1) / 3.0)
        m = gaussian_blur(m[:, None], torch.full((m.shape[0],), sigma))[:, 0]
    flat = m.flatten(1)
    scale = torch.quantile(flat, clip_percentile / 100.0, dim=1).clamp_min(1e-12)
    return (m / scale[:, None, None]).clamp(0.0, 1.0)


def _image_hwc_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, Tensor):
        t = image.detach().cpu().float()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise AdvfaceError(f"expected one image (3, H, W), got {tuple(t.shape)}",
                               fix="pass images[i], not the whole batch")
        return (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise AdvfaceError(f"expected a uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}",
                           fix="pass a float tensor (3, H, W) in [0, 1] or a uint8 RGB array")
    return arr


def overlay(
    image: Tensor | np.ndarray,
    saliency: Tensor | np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "inferno",
) -> np.ndarray:
    """Heat-map overlay as uint8 RGB ``(H, W, 3)``: ``(1 - alpha*s) * image + alpha*s * colour``.

    ``saliency`` is ``(H, W)`` (normalised to [0, 1] here if it is not already); the colour of
    each pixel is ``cmap(s)`` and its opacity grows with ``s``, so unimportant pixels show the
    face unchanged.
    """
    from matplotlib import colormaps

    img = _image_hwc_uint8(image).astype(np.float64) / 255.0
    s = saliency.detach().cpu().float().numpy() if isinstance(saliency, Tensor) else np.asarray(
        saliency, dtype=np.float64)
    s = np.squeeze(s)
    if s.shape != img.shape[:2]:
        raise AdvfaceError(f"saliency {s.shape} does not match the image {img.shape[:2]}",
                           fix="reduce attributions with heatmap() and pass one map (H, W)")
    s = np.nan_to_num(s.astype(np.float64))
    lo, hi = float(s.min()), float(s.max())
    if lo < 0.0 or hi > 1.0:
        s = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    colour = colormaps[cmap](s)[..., :3]
    weight = (alpha * s)[..., None]
    out = (1.0 - weight) * img + weight * colour
    return (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# ----------------------------------------------------------------- perturbation vs saliency


@dataclass
class PerturbationSaliency:
    """Where an adversarial perturbation lies relative to a saliency map, per image.

    ``pearson``/``spearman``: correlation over pixels between the perturbation energy
    ``sum_c delta^2`` and the saliency. ``energy_in_top[f]``: share of the perturbation energy
    on the ``f`` most salient fraction of pixels; ``enrichment[f] = energy_in_top[f] / f`` is 1
    for a perturbation spread regardless of saliency and > 1 when it concentrates on salient
    pixels. NaN for an image whose perturbation (or saliency) is constant, e.g. zero.
    """

    pearson: Tensor
    spearman: Tensor
    energy_in_top: dict[float, Tensor]

    @property
    def enrichment(self) -> dict[float, Tensor]:
        return {f: v / f for f, v in self.energy_in_top.items()}

    def summary(self) -> dict[str, float]:
        """Means over images (NaNs ignored), JSON-ready."""

        def mean(t: Tensor) -> float:
            ok = ~torch.isnan(t)
            return float(t[ok].mean()) if bool(ok.any()) else math.nan

        out = {"pearson": mean(self.pearson), "spearman": mean(self.spearman)}
        for f, v in self.energy_in_top.items():
            out[f"energy_in_top_{f:g}"] = mean(v)
            out[f"enrichment_top_{f:g}"] = mean(v / f)
        return out


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise correlation; NaN where a row is constant (up to float rounding)."""
    a, b = a.double(), b.double()
    ca = a - a.mean(dim=1, keepdim=True)
    cb = b - b.mean(dim=1, keepdim=True)
    na, nb = ca.norm(dim=1), cb.norm(dim=1)
    constant = (na <= 1e-9 * a.norm(dim=1)) | (nb <= 1e-9 * b.norm(dim=1)) | (na * nb == 0)
    r = (ca * cb).sum(dim=1) / (na * nb).clamp_min(1e-300)
    return torch.where(constant, torch.full_like(r, math.nan), r).float()


def _ranks(x: Tensor) -> Tensor:
    """Average ranks per row (ties share their mean rank), as Spearman's rho needs."""
    order = x.argsort(dim=1, stable=True)
    ranks = torch.empty_like(x)
    for i in range(x.shape[0]):
        _, inverse, counts = torch.unique_consecutive(
            x[i, order[i]], return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).to(x.dtype)
        ranks[i, order[i]] = (ends - (counts.to(x.dtype) + 1) / 2)[inverse]  # 0-based mean
    return ranks


def perturbation_saliency(
    clean: Tensor,
    adv: Tensor,
    saliency: Tensor,
    top_fractions: Sequence[float] = (0.01, 0.05, 0.1, 0.2),
) -> PerturbationSaliency:
    """Does the perturbation ``adv - clean`` concentrate on salient pixels?

    ``saliency``: per-pixel maps ``(N, H, W)`` or attributions ``(N, C, H, W)`` (reduced with
    ``max-abs``). Typically the clean image's map for its true identity.
    """
    if clean.shape != adv.shape or clean.ndim != 4:
        raise AdvfaceError(f"clean {tuple(clean.shape)} and adv {tuple(adv.shape)} must be the "
                           f"same (N, C, H, W) shape", fix="pass matching batches")
    s = saliency.detach().float()
    if s.ndim == 4:
        s = s.abs().amax(dim=1)
    if s.shape != (clean.shape[0], *clean.shape[-2:]):
        raise AdvfaceError(f"saliency {tuple(saliency.shape)} does not match images "
                           f"{tuple(clean.shape)}", fix="one (H, W) map per image")
    energy = (adv.detach().float() - clean.detach().float()).pow(2).sum(dim=1).flatten(1)
    s = s.flatten(1)
    n_pix = s.shape[1]
    total = energy.sum(dim=1)
    order = s.argsort(dim=1, descending=True, stable=True)
    cum = energy.gather(1, order).cumsum(dim=1)
    shares: dict[float, Tensor] = {}
    for f in top_fractions:
        if not 0 < f <= 1:
            raise AdvfaceError(f"top fraction must be in (0, 1], got {f}", fix="e.g. 0.1")
        k = max(1, round(f * n_pix))
        share = cum[:, k - 1] / total
        shares[float(f)] = torch.where(total > 0, share, torch.full_like(share, math.nan))
    return PerturbationSaliency(
        pearson=_pearson(energy, s),
        spearman=_pearson(_ranks(energy), _ranks(s)),
        energy_in_top=shares,
    )


# --------------------------------------------------------------------------- figure


def comparison_figure(
    clean: Tensor,
    adv: Tensor,
    saliency_clean: Tensor,
    saliency_adv: Tensor,
    *,
    titles: Sequence[str] | None = None,
    path: str | Path | None = None,
    amplify: float | None = None,
):
    """Clean vs adversarial side by side, one row per image (matplotlib, Agg; no display).

    Columns: clean image, its saliency overlay, adversarial image, its saliency overlay, the
    perturbation amplified to be visible (``amplify`` defaults to 0.5 / max|delta|). Saliency
    arguments are ``(N, H, W)`` maps or attributions (reduced with :func:`heatmap`). Returns the
    ``Figure``; with ``path`` it is also saved (PNG/PDF/SVG by suffix).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def as_map(s: Tensor) -> Tensor:
        return heatmap(s) if s.ndim == 4 else s

    n = clean.shape[0]
    if adv.shape != clean.shape:
        raise AdvfaceError("clean and adv batches differ in shape", fix="pass matching batches")
    sc, sa = as_map(saliency_clean), as_map(saliency_adv)
    fig = Figure(figsize=(11.0, 2.3 * n), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 5, squeeze=False)
    heads = ["clean", "clean saliency", "adversarial", "adversarial saliency", "perturbation"]
    for i in range(n):
        delta = (adv[i] - clean[i]).detach().cpu().float()
        gain = amplify if amplify is not None else 0.5 / max(float(delta.abs().max()), 1e-12)
        panels = [
            _image_hwc_uint8(clean[i]),
            overlay(clean[i], sc[i]),
            _image_hwc_uint8(adv[i]),
            overlay(adv[i], sa[i]),
            _image_hwc_uint8((0.5 + gain * delta).clamp(0, 1)),
        ]
        for j, (ax, panel) in enumerate(zip(axes[i], panels, strict=True)):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=9)
        if titles is not None:
            axes[i][0].set_ylabel(titles[i], fontsize=8)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
