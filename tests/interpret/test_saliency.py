"""Saliency: IG completeness, shapes, determinism, overlays, perturbation statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from interpret_models import LinearNet, SmoothNet, images

from advface.errors import AdvfaceError
from advface.interpret.saliency import (
    comparison_figure,
    completeness_gap,
    heatmap,
    integrated_gradients,
    make_baseline,
    overlay,
    perturbation_saliency,
    quadrature,
    smoothgrad,
    vanilla_gradient,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_integrated_gradients_completeness(baseline: str) -> None:
    model, x = SmoothNet().eval(), images()
    with torch.no_grad():
        fx = model(x)
        fb = model(make_baseline(x, baseline))
    target = (fx - fb).abs().argmax(1)  # the identity whose score changes most
    delta = (fx - fb).gather(1, target[:, None])[:, 0]
    fine = integrated_gradients(model, x, target, baseline=baseline, steps=64)
    gap = completeness_gap(model, x, fine, target, baseline=baseline)
    assert (gap.abs() <= 0.01 * delta.abs() + 1e-4).all(), (gap, delta)
    coarse = integrated_gradients(model, x, target, baseline=baseline, steps=1,
                                  method="riemann_left")
    coarse_gap = completeness_gap(model, x, coarse, target, baseline=baseline)
    assert coarse_gap.abs().mean() > 5 * gap.abs().mean()  # the check can fail


def test_integrated_gradients_is_exact_for_a_linear_model() -> None:
    model, x = LinearNet(size=8), images(3, 8)
    attr = integrated_gradients(model, x, 1, steps=2, method="riemann_middle")
    expected = x.flatten(1) * model.w[1].detach()
    torch.testing.assert_close(attr.flatten(1), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle",
                                    "trapezoid"])
def test_quadrature_weights_integrate_polynomials(method: str) -> None:
    a, w = quadrature(50, method)
    assert float(w.sum()) == pytest.approx(1.0)
    assert float((w * a).sum()) == pytest.approx(0.5, abs=0.011)


def test_shapes_default_target_and_vanilla_gradient() -> None:
    model, x = SmoothNet().eval(), images(5)
    g = vanilla_gradient(model, x, batch_size=2)
    assert g.shape == x.shape and torch.isfinite(g).all()
    decision = model(x).argmax(1)
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(model(xr).gather(1, decision[:, None]).sum(), xr)
    torch.testing.assert_close(g, ref)
    for attr in (smoothgrad(model, x, samples=3), integrated_gradients(model, x, steps=4)):
        assert attr.shape == x.shape
    m = heatmap(g)
    assert m.shape == (5, 16, 16) and m.min() >= 0 and m.max() <= 1
    assert torch.allclose(m.flatten(1).amax(1), torch.ones(5))
    smooth = heatmap(g, smooth=1.5)
    assert smooth.shape == m.shape
    def tv(t: torch.Tensor) -> float:
        return float((t[:, 1:] - t[:, :-1]).abs().sum() + (t[:, :, 1:] - t[:, :, :-1]).abs().sum())

    assert tv(smooth) < tv(m)


def test_smoothgrad_is_seeded_and_batch_independent() -> None:
    model, x = SmoothNet().eval(), images(4)
    a = smoothgrad(model, x, 2, samples=4, seed=7, batch_size=4)
    b = smoothgrad(model, x, 2, samples=4, seed=7, batch_size=1)
    c = smoothgrad(model, x, 2, samples=4, seed=8)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # Zero noise is the vanilla gradient.
    torch.testing.assert_close(smoothgrad(model, x, 2, samples=2, noise=0.0),
                               vanilla_gradient(model, x, 2))


def test_overlay_blends_only_where_salient() -> None:
    x = images(1, 8)[0]
    s = torch.zeros(8, 8)
    s[2, 3] = 1.0
    out = overlay(x, s, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    plain = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    changed = np.any(out != plain, axis=2)
    assert changed[2, 3] and changed.sum() == 1
    with pytest.raises(AdvfaceError):
        overlay(x, torch.zeros(4, 4))


def test_perturbation_saliency_statistics() -> None:
    clean = torch.full((2, 3, 10, 10), 0.5)
    sal = torch.arange(100.0).reshape(1, 10, 10).repeat(2, 1, 1)  # most salient at the end
    adv = clean.clone()
    adv[0, :, 9, :] += 0.1  # image 0: only the 10% most salient pixels are perturbed
    adv[1] += 0.25  # image 1: uniform perturbation
    res = perturbation_saliency(clean, adv, sal, top_fractions=(0.1, 0.5))
    assert float(res.energy_in_top[0.1][0]) == pytest.approx(1.0)
    assert float(res.enrichment[0.1][0]) == pytest.approx(10.0)
    assert float(res.energy_in_top[0.5][1]) == pytest.approx(0.5)
    assert float(res.pearson[0]) > 0.5 and float(res.spearman[0]) > 0.5
    assert torch.isnan(res.pearson[1])  # constant energy: correlation undefined
    summary = res.summary()
    assert summary["energy_in_top_0.1"] == pytest.approx((1.0 + 0.1) / 2)
    none = perturbation_saliency(clean, clean, sal)
    assert torch.isnan(none.energy_in_top[0.1]).all()


def test_comparison_figure_writes_a_png(tmp_path: Path) -> None:
    model, x = SmoothNet().eval(), images(2)
    adv = (x + 4 / 255).clamp(0, 1)
    fig = comparison_figure(x, adv, vanilla_gradient(model, x), vanilla_gradient(model, adv),
                            titles=["a", "b"], path=tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    assert len(fig.axes) == 10


def test_the_default_target_is_the_deployed_decision() -> None:
    """resolve_targets(target=None) on a model in training mode decides in eval mode, moves no
    batch-norm statistics and leaves the model in training mode."""
    from advface.interpret.scoring import resolve_targets

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = images(4)
    model(x)  # materialise the lazy layer (moves the statistics once)
    stats = model[1].running_mean.clone()
    got = resolve_targets(model, x, None)
    assert torch.equal(model[1].running_mean, stats) and model.training
    with torch.no_grad():
        assert torch.equal(got, model.eval()(x).argmax(1))
