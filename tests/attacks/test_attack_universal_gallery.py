"""Universal perturbations and gallery poisoning beat random noise of the same size."""

from __future__ import annotations

import pytest
import torch
from attack_models import TinyEmbed, TinyNet, grid_images
from torch import Tensor

from advface.attacks import (
    Budget,
    Dodging,
    GalleryPoisoning,
    Impersonation,
    UniversalPerturbation,
    quantize_within,
)
from advface.attacks.base import l2_norm, linf_norm, on_grid
from advface.attacks.gallery_poisoning import identity_scores, similarity
from advface.attacks.universal import quantize_delta
from advface.errors import AdvfaceError


def _random_like(shape: tuple[int, ...], budget: Budget, seed: int) -> Tensor:
    """Random perturbation using the whole budget: +-eps signs (L-inf), a sphere point (L2)."""
    g = torch.Generator().manual_seed(seed)
    if budget.norm == "linf":
        return (torch.randint(0, 2, shape, generator=g).float() * 2 - 1) * budget.eps
    r = torch.randn(shape, generator=g)
    return r / l2_norm(r).reshape(-1, *([1] * (len(shape) - 1))) * budget.eps


def _whole_levels(delta: Tensor) -> bool:
    levels = delta * 255
    return bool(((levels - levels.round()).abs() < 1e-4).all())


@pytest.mark.parametrize("budget", [Budget.from_8bit("linf", 2), Budget("l2", 0.3)])
def test_universal_beats_random_on_held_out(budget: Budget) -> None:
    model = TinyNet().eval()
    train, test = grid_images(48, seed=1), grid_images(48, seed=2)
    with torch.no_grad():
        y_train, y_test = model(train).argmax(1), model(test).argmax(1)
    uap = UniversalPerturbation(budget, epochs=5, batch_size=16)
    delta = uap.fit(model, train, Dodging(y_train), seed=0)
    assert delta.shape == (1, 3, 16, 16) and _whole_levels(delta)
    size = linf_norm(delta) if budget.norm == "linf" else l2_norm(delta)
    assert float(size) <= budget.eps + 1e-6
    held_out = uap.apply(model, test, Dodging(y_test), delta)
    assert on_grid(held_out.adv)
    with torch.no_grad():
        assert torch.equal(held_out.success, Dodging(y_test).success(model(held_out.adv)))
    goal = Dodging(y_test)
    noises = [_random_like((1, 3, 16, 16), budget, s) for s in range(5)]
    rates = [uap.apply(model, test, goal, noise).success_rate for noise in noises]
    assert held_out.success_rate > max(rates)
    assert held_out.success_rate >= 0.15


def test_universal_run_uses_one_perturbation(tiny_net: TinyNet, images: Tensor, labels) -> None:
    budget = Budget.from_8bit("linf", 2)
    result = UniversalPerturbation(budget, epochs=2).run(tiny_net, images, Dodging(labels), seed=0)
    delta = result.extras["delta"]
    assert torch.equal(delta[0], delta[-1])
    assert torch.equal(result.adv, quantize_within(images, images + delta[:1], budget))


def test_quantize_delta_l2_stays_in_budget() -> None:
    budget = Budget("l2", 0.1)
    d = _random_like((1, 3, 8, 8), budget, 0) * 1.3
    q = quantize_delta(d, budget)
    assert float(l2_norm(q)) <= budget.eps + 1e-7 and _whole_levels(q)


def _gallery_problem(metric: str) -> tuple[TinyEmbed, Tensor, Tensor, Tensor, Tensor]:
    embed = TinyEmbed(metric=metric).eval()
    gallery = grid_images(12, seed=3)
    gallery_labels = torch.arange(6).repeat_interleave(2)
    probes = grid_images(24, seed=9)
    with torch.no_grad():
        scores = identity_scores(
            similarity(embed(probes), embed(gallery), metric), gallery_labels, 6
        )
    return embed, gallery, gallery_labels, probes, scores.argmax(1)


def _random_gallery_rate(embed, gallery, labels, probes, goal, budget, poisoned, seed) -> float:
    noise = _random_like(tuple(gallery.shape), budget, seed)
    noisy = torch.where(poisoned[:, None, None, None], gallery + noise, gallery)
    noisy = quantize_within(gallery, noisy, budget)
    with torch.no_grad():
        sim = similarity(embed(probes), embed(noisy), embed.metric)
        return float(goal.success(identity_scores(sim, labels, 6)).float().mean())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("targeted", [False, True])
def test_gallery_poisoning_beats_random(metric: str, targeted: bool) -> None:
    embed, gallery, labels, probes, pred = _gallery_problem(metric)
    goal = Impersonation((pred + 1) % 6) if targeted else Dodging(pred)
    budget = Budget.from_8bit("linf", 4)
    result = GalleryPoisoning(budget, steps=20).run(embed, gallery, labels, probes, goal, seed=0)
    # Only the identities the goal names were touched, within budget, 8-bit.
    expected = torch.isin(labels, goal.labels.unique())
    assert torch.equal(result.poisoned, expected)
    assert torch.equal(result.gallery[~expected], gallery[~expected])
    assert bool((result.linf <= budget.eps + 1e-6).all()) and on_grid(result.gallery)
    # Success is the re-identification of the clean probes against the poisoned gallery.
    with torch.no_grad():
        sim = similarity(embed(probes), embed(result.gallery), metric)
    assert torch.equal(result.success, goal.success(identity_scores(sim, labels, 6)))
    assert not bool(result.clean_success.any())
    random_rates = [
        _random_gallery_rate(embed, gallery, labels, probes, goal, budget, expected, s)
        for s in range(3)
    ]
    assert result.success_rate > max(random_rates) + 0.1


def test_gallery_poisoning_needs_metric() -> None:
    embed = torch.nn.Flatten()
    with pytest.raises(AdvfaceError, match="metric"):
        GalleryPoisoning(Budget.from_8bit("linf", 2)).run(
            embed, grid_images(2), torch.tensor([0, 1]), grid_images(1), Dodging(torch.tensor([0]))
        )


def test_gallery_poisoning_chunked_gradient_matches_one_batch() -> None:
    """Chunking the forward/backward (bounded memory) must not change the attack at all."""
    embed, gallery, labels, probes, pred = _gallery_problem("cosine")
    goal = Dodging(pred)
    budget = Budget.from_8bit("linf", 4)
    whole = GalleryPoisoning(budget, steps=5, batch_size=10_000).run(
        embed, gallery, labels, probes, goal, seed=0)
    chunked = GalleryPoisoning(budget, steps=5, batch_size=2).run(
        embed, gallery, labels, probes, goal, seed=0)
    assert torch.allclose(whole.gallery, chunked.gallery, atol=1.5 / 255)
    assert (whole.gallery - chunked.gallery).abs().gt(0.5 / 255).float().mean() < 0.01
    assert torch.equal(whole.success, chunked.success)
    with pytest.raises(AdvfaceError, match="batch_size"):
        GalleryPoisoning(budget, batch_size=0)


def test_smooth_identity_scores_bound_the_hard_maximum() -> None:
    from advface.attacks.gallery_poisoning import smooth_identity_scores

    g = torch.Generator().manual_seed(0)
    sim = torch.rand(4, 9, generator=g) * 2 - 1
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    hard = identity_scores(sim, labels, 4)  # identity 3 has no image
    soft = smooth_identity_scores(sim, labels, 4, 0.05)
    counts = torch.bincount(labels, minlength=4).float()
    assert torch.isinf(soft[:, 3]).all() and torch.isinf(hard[:, 3]).all()
    fin = torch.isfinite(hard)
    assert bool((soft[fin] >= hard[fin] - 1e-6).all())
    bound = hard + 0.05 * torch.log(counts.clamp_min(1))[None, :]
    assert bool((soft[fin] <= bound[fin] + 1e-6).all())
    # every image of an identity receives gradient, not only the nearest
    sim.requires_grad_(True)
    smooth_identity_scores(sim, labels, 4, 0.05)[:, 2].sum().backward()
    assert bool((sim.grad[:, 5:] > 0).all()) and bool((sim.grad[:, :5] == 0).all())
