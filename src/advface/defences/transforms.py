"""Input-transformation defences, and the gradients an honest attacker uses against them.

A defended identity decision is ``scorer(T(x))`` for a transformation ``T`` applied before the
model: JPEG re-compression (Dziugaite et al. 2016; Das et al. 2017), bit-depth reduction
(Xu et al. 2018), median filtering, and random resizing and padding (Xie et al. 2018).
:class:`Defended` wraps a score module with such transforms and is itself a score module, so
every attack in :mod:`advface.attacks` runs on it unchanged.

Why the gradient mode matters (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a
false sense of security"): JPEG and bit-depth reduction are piecewise constant or not
differentiable at all, so the gradient an attack obtains by differentiating the defended model
*as implemented* is zero, and gradient attacks stall. That is gradient masking, not robustness.

* ``gradient="exact"`` gives what autograd gives through the implementation: zero for
  :class:`JPEG` (computed outside torch by Pillow) and :class:`BitDepth` (rounding), the true
  gradient for the differentiable transforms. This is the *naive* attacker.
* ``gradient="bpda"`` is Backward Pass Differentiable Approximation with the identity: the
  forward pass applies the real transform, the backward pass treats it as ``T(x) ~ x``
  (straight-through), which is a good approximation exactly because these transforms are
  designed to keep images nearly unchanged. Differentiable transforms keep their true gradient.

Randomised transforms (:class:`RandomResizePad`) are attacked with Expectation over
Transformation: :class:`EOT` averages the scores over several independent draws, so the
gradient of the attack loss is (close to) the expected gradient over the randomness. Every
random draw comes from the transform's own seeded generator (:meth:`InputTransform.reseed`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from advface.errors import AdvfaceError

GradientMode = Literal["exact", "bpda"]


class InputTransform(nn.Module):
    """An image-to-image transform ``(N, 3, H, W) -> (N, 3, H, W)`` in [0, 1].

    ``differentiable`` says whether autograd through :meth:`forward` gives a useful gradient;
    ``randomized`` whether it draws random numbers (then :meth:`reseed` makes it repeatable).
    """

    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False

    def reseed(self, seed: int) -> None:
        """Restart the random stream (no-op for deterministic transforms)."""

    def extra_repr(self) -> str:
        return ""


class BitDepth(InputTransform):
    """Reduce each channel to ``bits`` bits: ``round(x * (2^b - 1)) / (2^b - 1)``.

    The rounding is torch's, so autograd sees a staircase whose gradient is zero everywhere.
    """

    differentiable = False

    def __init__(self, bits: int = 4):
        super().__init__()
        if not 1 <= bits <= 8:
            raise AdvfaceError(f"bits must be in 1..8, got {bits}", fix="e.g. bits=4")
        self.bits = int(bits)

    def forward(self, x: Tensor) -> Tensor:
        levels = float(2**self.bits - 1)
        return torch.round(x.clamp(0.0, 1.0) * levels) / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class JPEG(InputTransform):
    """Re-encode each image as JPEG at ``quality`` with Pillow and decode it again.

    The image is rounded to 8 bits first (JPEG stores bytes). The result is computed outside
    torch, so it carries no autograd graph at all.
    """

    differentiable = False

    def __init__(self, quality: int = 75):
        super().__init__()
        if not 1 <= quality <= 95:
            raise AdvfaceError(f"JPEG quality must be in 1..95, got {quality}", fix="e.g. 75")
        self.quality = int(quality)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        arr = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)
        arr = arr.permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty_like(arr)
        for i in range(arr.shape[0]):
            buf = io.BytesIO()
            Image.fromarray(arr[i], mode="RGB").save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            with Image.open(buf) as im:
                out[i] = np.asarray(im.convert("RGB"))
        t = torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)
        return t / 255.0

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class MedianFilter(InputTransform):
    """Per-channel median over a ``size x size`` window (Xu et al.'s "local smoothing").

    Even sizes are allowed (2x2 is Xu et al.'s choice for small images); the window then
    reaches one pixel further right/down. Borders are reflect-padded. Autograd passes the
    gradient to the median element of each window, so the exact gradient is informative.
    """

    def __init__(self, size: int = 2):
        super().__init__()
        if size < 2:
            raise AdvfaceError(f"median window must be >= 2, got {size}", fix="e.g. 2 or 3")
        self.size = int(size)

    def forward(self, x: Tensor) -> Tensor:
        k = self.size
        n, c, h, w = x.shape
        before, after = (k - 1) // 2, k // 2
        padded = F.pad(x, (before, after, before, after), mode="reflect")
        patches = F.unfold(padded, kernel_size=k)  # (N, C*k*k, H*W)
        patches = patches.reshape(n, c, k * k, h * w)
        return patches.median(dim=2).values.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class RandomResizePad(InputTransform):
    """Xie et al. (2018): shrink to a random side, place at a random offset, pad with zeros.

    Each image independently gets a side ``r`` drawn uniformly from the integers in
    ``[ceil(min_scale * H), H]`` and a random offset; the output keeps the input size (the
    face models here take a fixed size), which is Xie et al.'s resize-then-pad with the final
    size equal to the input's. Implemented as one batched affine resampling, so it is
    differentiable: only its randomness needs special care (EOT).
    """

    randomized = True

    def __init__(self, min_scale: float = 0.85, *, mode: str = "bilinear", seed: int = 0):
        super().__init__()
        if not 0.1 <= min_scale <= 1.0:
            raise AdvfaceError(f"min_scale must be in [0.1, 1], got {min_scale}", fix="e.g. 0.85")
        if mode not in ("bilinear", "nearest"):
            raise AdvfaceError(f"unknown mode {mode!r}", fix="use 'bilinear' or 'nearest'")
        self.min_scale = float(min_scale)
        self.mode = mode
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        lo = max(1, int(np.ceil(self.min_scale * min(h, w) - 1e-9)))
        side = torch.randint(lo, min(h, w) + 1, (n,), generator=self._gen).double()
        oy = torch.floor(torch.rand(n, generator=self._gen, dtype=torch.float64) * (h - side + 1))
        ox = torch.floor(torch.rand(n, generator=self._gen, dtype=torch.float64) * (w - side + 1))
        # Output pixel edge coordinate p (pixels) reads input coordinate (p - off) * H / side;
        # in normalised [-1, 1] coordinates that is the affine map below (align_corners=False).
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = w / side
        theta[:, 0, 2] = (w - 2 * ox) / side - 1
        theta[:, 1, 1] = h / side
        theta[:, 1, 2] = (h - 2 * oy) / side - 1
        grid = F.affine_grid(theta.to(x.device, x.dtype), [n, x.shape[1], h, w],
                             align_corners=False)
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="zeros", align_corners=False)

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}, mode={self.mode}, seed={self.seed}"


def _through(transform: InputTransform, x: Tensor, mode: GradientMode) -> Tensor:
    """Apply ``transform`` with the requested backward pass (see the module docstring)."""
    y = transform(x)
    if transform.differentiable:
        return y
    if mode == "bpda":
        # Forward: y. Backward: identity (straight-through).
        return x + (y - x).detach()
    if not y.requires_grad and x.requires_grad:
        # Keep the graph connected so autograd returns the (true, zero) gradient, not an error.
        return y.detach() + 0.0 * x
    return y


class Defended(nn.Module):
    """A score module behind input transforms: ``forward(x) = scorer(T_k(...T_1(x)))``.

    ``gradient`` picks the backward pass through non-differentiable transforms ("exact" =
    what autograd gives, zero; "bpda" = straight-through). :meth:`with_gradient` returns a view
    of the same defence with another mode, sharing the model and the transforms (and thus
    their random streams).
    """

    def __init__(
        self,
        scorer: nn.Module,
        transforms: InputTransform | Sequence[InputTransform],
        *,
        gradient: GradientMode = "exact",
    ):
        super().__init__()
        if gradient not in ("exact", "bpda"):
            raise AdvfaceError(f"unknown gradient mode {gradient!r}", fix="use 'exact' or 'bpda'")
        ts = [transforms] if isinstance(transforms, InputTransform) else list(transforms)
        if not ts or not all(isinstance(t, InputTransform) for t in ts):
            raise AdvfaceError("Defended needs one or more InputTransform objects",
                               fix="e.g. Defended(scorer, JPEG(75))")
        self.scorer = scorer
        self.transforms = nn.ModuleList(ts)
        self.gradient: GradientMode = gradient
        for name in ("class_names", "input_size", "identity_names"):
            if hasattr(scorer, name):
                setattr(self, name, getattr(scorer, name))

    @property
    def randomized(self) -> bool:
        return any(t.randomized for t in self.transforms)

    @property
    def masks_gradients(self) -> bool:
        """True when some transform's exact gradient is useless (non-differentiable)."""
        return any(not t.differentiable for t in self.transforms)

    def reseed(self, seed: int) -> None:
        for i, t in enumerate(self.transforms):
            t.reseed(seed * 1009 + i)

    def preprocess(self, x: Tensor) -> Tensor:
        for t in self.transforms:
            x = _through(t, x, self.gradient)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.scorer(self.preprocess(x))

    def with_gradient(self, gradient: GradientMode) -> Defended:
        return Defended(self.scorer, list(self.transforms), gradient=gradient)

    def describe(self) -> str:
        return " -> ".join(f"{type(t).__name__}({t.extra_repr()})" for t in self.transforms)


class EOT(nn.Module):
    """Expectation over Transformation: scores averaged over ``samples`` random draws.

    Differentiating the attack loss of the averaged scores gives the expected score gradient
    (Athalye et al. 2018, sec. 4.2); for a margin loss this is the expected loss gradient
    whenever the runner-up identity is the same across draws. The argmax of the average is the
    decision of a defence that votes over ``samples`` draws — the attacker's estimate, not the
    defence itself, which is why :func:`advface.defences.evaluate.evaluate_defence` re-judges
    every adversarial image on the real (single-draw) defence.
    """

    def __init__(self, module: nn.Module, samples: int = 10):
        super().__init__()
        if samples < 1:
            raise AdvfaceError(f"EOT needs samples >= 1, got {samples}", fix="e.g. samples=10")
        self.module = module
        self.samples = int(samples)

    def reseed(self, seed: int) -> None:
        if hasattr(self.module, "reseed"):
            self.module.reseed(seed)

    def forward(self, x: Tensor) -> Tensor:
        total = self.module(x)
        for _ in range(self.samples - 1):
            total = total + self.module(x)
        return total / self.samples


def build_transform(name: str, **params: float | int | str) -> InputTransform:
    """Transform by name, for configs and the CLI: jpeg, bit-depth, median, resize-pad."""
    table: dict[str, type[InputTransform]] = {
        "jpeg": JPEG, "bit-depth": BitDepth, "median": MedianFilter, "resize-pad": RandomResizePad,
    }
    key = name.lower().replace("_", "-")
    if key not in table:
        raise AdvfaceError(f"unknown input transform {name!r}",
                           fix=f"use one of: {', '.join(sorted(table))}")
    try:
        return table[key](**params)  # type: ignore[arg-type]
    except TypeError as err:
        raise AdvfaceError(f"bad parameters for transform {name!r}: {err}",
                           fix="jpeg: quality; bit-depth: bits; median: size; "
                           "resize-pad: min_scale, mode, seed") from err
