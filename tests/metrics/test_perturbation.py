"""Perturbation size and visibility metrics against hand values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from advface.metrics.perturbation import perturbation_metrics, perturbation_norms, psnr, ssim


def _quantised_pair(n: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth 'face-like' image plus an 8-bit perturbation of at most 8 levels."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(6 * xx + 3 * yy)
    clean = (base + 0.1 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)
    clean = torch.round(clean * 255) / 255
    delta = torch.randint(-8, 9, (n, 3, h, w), generator=g) / 255
    adv = torch.round((clean + delta).clamp(0, 1) * 255) / 255
    return clean, adv


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        np.moveaxis(a, 0, -1).astype(np.float64),
        np.moveaxis(b, 0, -1).astype(np.float64),
        channel_axis=-1,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )


def test_norms_hand_computed() -> None:
    clean = torch.zeros(2, 3, 4, 4)
    adv = clean.clone()
    adv[0, 0, 1, 1] = 2 / 255
    adv[0, 2, 3, 0] = -5 / 255  # values outside [0, 1] still measure the difference
    out = perturbation_norms(clean, adv)
    np.testing.assert_array_equal(out["l0"], [2, 0])
    np.testing.assert_allclose(out["l0_fraction"], [2 / 48, 0])
    np.testing.assert_allclose(out["linf_8bit"], [5, 0], atol=1e-9)
    np.testing.assert_allclose(out["linf"], [5 / 255, 0])
    np.testing.assert_allclose(out["l2_8bit"], [math.sqrt(4 + 25), 0], atol=1e-9)
    np.testing.assert_allclose(out["l2"], [math.sqrt(29) / 255, 0])
    assert all(v.dtype == np.float64 and v.shape == (2,) for v in out.values())


def test_l0_ignores_round_off_but_counts_one_level() -> None:
    clean, _ = _quantised_pair(1, 12, 12, seed=0)
    roundtrip = (clean.double() * 255 / 255 * 3 / 3).float() + 1e-8
    assert perturbation_norms(clean, roundtrip)["l0"][0] == 0
    one_level = clean.clone()
    one_level[0, 1, 5, 5] = clean[0, 1, 5, 5] + (1 / 255 if clean[0, 1, 5, 5] < 0.5 else -1 / 255)
    assert perturbation_norms(clean, one_level)["l0"][0] == 1


def test_norms_accept_numpy_and_match_numpy_reference() -> None:
    clean, adv = _quantised_pair(3, 16, 20, seed=1)
    out = perturbation_norms(clean.numpy(), adv.numpy())
    d = (adv.double() - clean.double()).numpy().reshape(3, -1)
    np.testing.assert_allclose(out["l2"], np.linalg.norm(d, axis=1))
    np.testing.assert_allclose(out["linf"], np.abs(d).max(axis=1))
    np.testing.assert_array_equal(out["l0"], (d != 0).sum(axis=1))


def test_psnr_matches_skimage_and_is_inf_for_identical() -> None:
    clean, adv = _quantised_pair(3, 20, 24, seed=2)
    adv[2] = clean[2]
    got = psnr(clean, adv)
    for i in range(2):
        ref = peak_signal_noise_ratio(
            clean[i].double().numpy(), adv[i].double().numpy(), data_range=1
        )
        assert got[i] == pytest.approx(ref, abs=1e-9)
    assert got[2] == math.inf


def test_psnr_hand_computed() -> None:
    clean = torch.zeros(1, 3, 2, 2)
    adv = torch.full((1, 3, 2, 2), 0.1)  # mse = 0.01 -> 20 dB
    assert psnr(clean, adv)[0] == pytest.approx(20.0)


@pytest.mark.parametrize(("h", "w"), [(150, 150), (11, 11), (23, 37)])
def test_ssim_matches_skimage(h: int, w: int) -> None:
    clean, adv = _quantised_pair(3, h, w, seed=h + w)
    got = ssim(clean, adv)
    ref = [_sk_ssim(clean[i].numpy(), adv[i].numpy()) for i in range(3)]
    np.testing.assert_allclose(got, ref, atol=1e-10)
    np.testing.assert_allclose(ssim(clean, adv, chunk=2), got, atol=1e-14)
    assert np.all(got < 1.0)


def test_ssim_on_unrelated_images_matches_skimage() -> None:
    g = torch.Generator().manual_seed(9)
    a = torch.rand(2, 3, 32, 32, generator=g)
    b = torch.rand(2, 3, 32, 32, generator=g)
    ref = [_sk_ssim(a[i].numpy(), b[i].numpy()) for i in range(2)]
    np.testing.assert_allclose(ssim(a, b), ref, atol=1e-10)
    assert max(ref) < 0.1


def test_ssim_identical_is_one_and_numpy_input_works() -> None:
    clean, _ = _quantised_pair(2, 16, 16, seed=4)
    np.testing.assert_allclose(ssim(clean.numpy(), clean.numpy()), [1.0, 1.0], atol=1e-12)


def test_perturbation_metrics_bundles_everything() -> None:
    clean, adv = _quantised_pair(2, 16, 16, seed=5)
    out = perturbation_metrics(clean, adv)
    assert {"l0", "l0_fraction", "l2", "linf", "l2_8bit", "linf_8bit", "psnr", "ssim"} <= set(out)
    np.testing.assert_allclose(out["ssim"], ssim(clean, adv))


def test_input_errors() -> None:
    a = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="shapes differ"):
        perturbation_norms(a, torch.zeros(1, 3, 16, 15))
    with pytest.raises(ValueError, match="empty"):
        psnr(torch.zeros(0, 3, 16, 16), torch.zeros(0, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ssim(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="divide 8-bit images by 255"):
        psnr(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), a)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))
