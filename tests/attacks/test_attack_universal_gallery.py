"""Universal perturbations and gallery poisoning beat random noise of the same size."""

from __future__ import annotations

import pytest
import torch
from attack_models import TinyEmbed, TinyNet, grid_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("targeted", [False, True])
def test_gallery_poisoning_gradient_is_autograd_of_the_objective(
    metric: str, targeted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack gets its input gradient in two stages (w.r.t. the embeddings, then pushed
    through the network chunk by chunk); every gradient it steps along must equal plain
    autograd of the documented objective, the summed goal margin capped at kappa over the
    soft per-identity maximum, taken directly w.r.t. the poisoned gallery images."""
    import advface.attacks.gallery_poisoning as gp
    from advface.attacks.gallery_poisoning import smooth_identity_scores

    embed, gallery, labels, probes, pred = _gallery_problem(metric)
    goal = Impersonation((pred + 1) % 6) if targeted else Dodging(pred)
    seen: list[tuple[Tensor, Tensor]] = []
    real = gp._input_grad

    def spy(embedder, x, emb_grad, batch_size):
        grad = real(embedder, x, emb_grad, batch_size)
        seen.append((x.detach().clone(), grad.detach().clone()))
        return grad

    monkeypatch.setattr(gp, "_input_grad", spy)
    attack = GalleryPoisoning(Budget.from_8bit("linf", 4), steps=3, batch_size=2)
    result = attack.run(embed, gallery, labels, probes, goal, seed=0)
    assert seen and result.iterations == len(seen)

    ref = TinyEmbed(metric=metric).double().eval()  # same weights (same seed), float64
    pidx = result.poisoned.nonzero()[:, 0]
    with torch.no_grad():
        probe_emb = ref(probes.double())
    for q, grad in seen:
        x = q.double().requires_grad_(True)
        full = gallery.double().index_put((pidx,), x)
        sim = similarity(probe_emb, ref(full), metric)
        scores = smooth_identity_scores(sim, labels, 6, attack.smooth)
        objective = goal.margin(scores).clamp(max=attack.kappa).sum()
        (want,) = torch.autograd.grad(objective, x)
        scale = float(want.abs().max())
        assert scale > 0  # some probe still pulls: the comparison is not 0 == 0
        torch.testing.assert_close(grad.double(), want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("budget", [Budget.from_8bit("linf", 2), Budget("l2", 0.3)], ids=str)
@pytest.mark.parametrize("targeted", [False, True])
def test_universal_success_is_judged_and_never_below_no_perturbation(
    budget: Budget, targeted: bool
) -> None:
    """``success`` of a universal run must be the model's own decision on the returned images,
    and since the zero perturbation is the starting candidate and the best epoch is kept, the
    run must never fool fewer images than leaving them alone. Half the images already meet
    the goal unperturbed, so a perturbation that trades them away would show."""
    model = TinyNet().eval()
    x = grid_images(32, seed=6)
    with torch.no_grad():
        own = model(x).argmax(1)
    even = torch.arange(32) % 2 == 0
    if targeted:
        goal = Impersonation(torch.where(even, (own + 2) % 10, own))
    else:
        goal = Dodging(torch.where(even, own, (own + 1) % 10))
    result = UniversalPerturbation(budget, epochs=3, batch_size=8).run(model, x, goal, seed=0)
    with torch.no_grad():
        judged = goal.success(model(result.adv))
        unperturbed = goal.success(model(x))
    assert int(unperturbed.sum()) == 16
    assert torch.equal(result.success, judged)
    assert int(result.success.sum()) >= int(unperturbed.sum())
    size = linf_norm(result.adv - x) if budget.norm == "linf" else l2_norm(result.adv - x)
    assert bool((size <= budget.eps + 1e-6).all()) and on_grid(result.adv)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1000),
    eps255=st.floats(0.0, 10.0),
    metric=st.sampled_from(["cosine", "euclidean"]),
    targeted=st.booleans(),
)
def test_gallery_poisoning_stays_in_budget_and_on_the_grid(
    norm: str, random_start: bool, seed: int, eps255: float, metric: str, targeted: bool
) -> None:
    """Poisoned enrolment images are what would be saved: per image within eps as measured on
    the returned gallery (also for an eps off the 8-bit grid and after a random start), on the
    8-bit grid, with the reported norms the measured ones and untouched images unchanged."""
    embed = TinyEmbed(dim=8, metric=metric, seed=seed).eval()
    gallery = grid_images(6, size=8, seed=seed)
    labels = torch.arange(3).repeat_interleave(2)
    probes = grid_images(4, size=8, seed=seed + 1)
    with torch.no_grad():
        pred = identity_scores(similarity(embed(probes), embed(gallery), metric), labels, 3)
    pred = pred.argmax(1)
    goal = Impersonation((pred + 1) % 3) if targeted else Dodging(pred)
    scale = 1.0 if norm == "linf" else 20.0  # L2 budgets are larger in 8-bit units
    budget = Budget.from_8bit(norm, eps255 * scale)  # type: ignore[arg-type]
    attack = GalleryPoisoning(budget, steps=3, random_start=random_start, batch_size=4)
    result = attack.run(embed, gallery, labels, probes, goal, seed=seed)
    out = result.gallery
    assert out.shape == gallery.shape and on_grid(out, tol=1e-4)
    delta = out - gallery
    size = linf_norm(delta) if norm == "linf" else l2_norm(delta)
    assert bool((size <= budget.eps + 1e-6).all()), (size, budget)
    if norm == "linf":  # whole grey levels only: eps 2.5/255 allows 2 levels, never 3
        assert bool((size <= budget.effective_eps + 1e-6).all())
    torch.testing.assert_close(result.linf, linf_norm(delta), rtol=0, atol=1e-7)
    torch.testing.assert_close(result.l2, l2_norm(delta), rtol=0, atol=1e-7)
    assert torch.equal(out[~result.poisoned], gallery[~result.poisoned])
    if random_start and norm == "linf" and budget.effective_eps >= 1 / 255:
        # The clean gallery is no candidate after a random start: the budget was used.
        assert bool((size[result.poisoned] > 0).all())
