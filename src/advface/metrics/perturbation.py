"""How big and how visible a perturbation is: per-image L0/L2/L-inf norms, PSNR and SSIM.

Images are ``(N, 3, H, W)`` in ``[0, 1]`` (torch tensors or numpy arrays); results are float64
numpy arrays of length ``N``, one value per image, ready for the results store. Norms are given
both in ``[0, 1]`` units (what attack budgets use) and in 8-bit units (x255, what the literature
quotes: "eps = 8/255" is an L-inf of 8). SSIM is computed in torch on the whole batch and
reproduces scikit-image's Wang et al. settings exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# Absolute tolerance for "this value changed" in L0. Far below one 8-bit step (1/255 ~ 0.0039),
# so it only absorbs float round-off (e.g. x * 255 / 255), never a real one-level change.
L0_ATOL = 1e-6

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scikit-image's value: radius int(3.5 * 1.5 + 0.5) = 5, an 11-tap window
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_pair(clean: Any, adv: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as float64 tensors of identical (N, C, H, W) shape on the same device."""
    a = clean if isinstance(clean, torch.Tensor) else torch.as_tensor(np.asarray(clean))
    b = adv if isinstance(adv, torch.Tensor) else torch.as_tensor(np.asarray(adv))
    for name, x in (("clean", a), ("adv", b)):
        if not x.is_floating_point():
            raise ValueError(
                f"{name} has dtype {x.dtype}; expected float images in [0, 1] "
                "(divide 8-bit images by 255 first)"
            )
    a = a.detach().to(torch.float64)
    b = b.detach().to(device=a.device, dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"clean and adv shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W); got {tuple(a.shape)}")
    if a.shape[0] == 0:
        raise ValueError("no images: the batch is empty")
    if a[0].numel() == 0:
        raise ValueError(f"images have no pixels: shape {tuple(a.shape)}")
    return a, b


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def perturbation_norms(clean: Any, adv: Any, atol: float = L0_ATOL) -> dict[str, np.ndarray]:
    """Per-image norms of ``adv - clean`` over all pixel-channel values.

    Keys: ``l0`` = number of changed values (pixel-channels, ``|delta| > atol``; a pixel whose
    three channels all change counts 3), ``l0_fraction`` = that count / (C*H*W), ``l2`` and
    ``linf`` in ``[0, 1]`` units, ``l2_8bit`` and ``linf_8bit`` = the same x255.
    """
    a, b = _as_pair(clean, adv)
    d = (b - a).flatten(1)
    l0 = (d.abs() > atol).sum(dim=1).to(torch.float64)
    l2 = d.norm(p=2, dim=1)
    linf = d.abs().amax(dim=1)
    return {
        "l0": _to_numpy(l0),
        "l0_fraction": _to_numpy(l0 / d.shape[1]),
        "l2": _to_numpy(l2),
        "linf": _to_numpy(linf),
        "l2_8bit": _to_numpy(l2 * 255.0),
        "linf_8bit": _to_numpy(linf * 255.0),
    }


def psnr(clean: Any, adv: Any) -> np.ndarray:
    """Per-image peak signal-to-noise ratio in dB with data range 1; ``inf`` for identical images.

    Same as ``skimage.metrics.peak_signal_noise_ratio(clean, adv, data_range=1)`` per image.
    """
    a, b = _as_pair(clean, adv)
    mse = (b - a).pow(2).flatten(1).mean(dim=1)
    out = torch.full_like(mse, math.inf)
    nz = mse > 0
    out[nz] = 10.0 * torch.log10(1.0 / mse[nz])
    return _to_numpy(out)


def _gaussian_kernel(sigma: float, truncate: float, dtype: torch.dtype) -> torch.Tensor:
    """1-D Gaussian taps as scipy.ndimage builds them (radius ``int(truncate*sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _band_matrix(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """``(n - win + 1, n)`` matrix whose rows are the kernel at every valid offset.

    Blurring as ``B_h @ x @ B_w.T`` is a separable "valid" convolution done by BLAS; on CPU in
    float64 it is several times faster than ``conv2d``, which has no fast float64 path.
    """
    win = kernel.numel()
    m = torch.zeros(n - win + 1, n, dtype=kernel.dtype, device=kernel.device)
    rows = torch.arange(n - win + 1, device=kernel.device)
    for j in range(win):
        m[rows, rows + j] = kernel[j]
    return m


def ssim(clean: Any, adv: Any, data_range: float = 1.0, chunk: int = 32) -> np.ndarray:
    """Per-image mean SSIM (Wang et al. 2004), averaged over channels.

    Reproduces ``skimage.metrics.structural_similarity(x, y, channel_axis=-1, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: an 11-tap Gaussian window,
    population covariances, K1=0.01, K2=0.03, and the mean taken after cropping the 5-pixel
    border. Because of that crop, only windows fully inside the image count, so a "valid"
    separable blur gives exactly scikit-image's numbers whatever its padding mode. Computed in
    float64 for agreement to ~1e-10 with the reference, ``chunk`` images at a time to bound
    memory (a chunk of 32 150x150 images needs ~100 MB). Images must be at least 11x11.
    """
    a, b = _as_pair(clean, adv)
    h, w = a.shape[-2:]
    k = _gaussian_kernel(SSIM_SIGMA, SSIM_TRUNCATE, a.dtype).to(a.device)
    win = k.numel()
    if h < win or w < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels; got {h}x{w}")
    band_h = _band_matrix(k, h)
    band_w_t = _band_matrix(k, w).T

    def blur(x: torch.Tensor) -> torch.Tensor:
        return band_h @ x @ band_w_t

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    out = []
    for x, y in zip(a.split(chunk), b.split(chunk), strict=True):
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x * mu_x
        var_y = blur(y * y) - mu_y * mu_y
        cov = blur(x * y) - mu_x * mu_y
        num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        out.append((num / den).flatten(1).mean(dim=1))
    return _to_numpy(torch.cat(out))


def perturbation_metrics(clean: Any, adv: Any) -> dict[str, np.ndarray]:
    """Norms, PSNR and SSIM in one dict: what the runner writes for every attacked image."""
    out = perturbation_norms(clean, adv)
    out["psnr"] = psnr(clean, adv)
    out["ssim"] = ssim(clean, adv)
    return out
