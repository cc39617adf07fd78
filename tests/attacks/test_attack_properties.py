"""Invariants every attack must satisfy, checked on random models, inputs and budgets."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from attack_models import LocalGalleryScores, TinyEmbed, TinyNet, grid_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advface.attacks import Budget, Dodging, Impersonation, create
from advface.attacks.base import l2_norm, linf_norm, on_grid

#: Small settings so that one example takes milliseconds.
FAST: dict[str, dict[str, Any]] = {
    "fgsm": {"loss": "ce", "temperature": 0.5},
    "bim": {"steps": 3, "schedule": "cosine"},
    "pgd": {"steps": 3, "random_restarts": 1},
    "mifgsm": {"steps": 3, "input_diversity": 0.5, "ti_kernel": 3},
    "cw": {"steps": 5, "binary_search_steps": 2},
    "deepfool": {"steps": 4, "candidates": 3},
    "square": {"max_queries": 12},
    "universal": {"epochs": 2, "batch_size": 2},
    "noise": {},
}
CASES = [
    (name, norm)
    for name in FAST
    for norm in ("linf", "l2")
    if not (name == "cw" and norm == "linf")
]


def _model(kind: str, seed: int) -> torch.nn.Module:
    if kind == "logits":
        return TinyNet(n_ids=6, width=4, seed=seed).eval()
    embed = TinyEmbed(dim=8, metric="cosine" if seed % 2 else "euclidean", seed=seed)
    gallery = grid_images(12, size=8, seed=seed + 100)
    return LocalGalleryScores(embed, gallery, torch.arange(6).repeat(2), n_ids=6).eval()


@pytest.mark.parametrize(("name", "norm"), CASES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1000),
    eps255=st.floats(0.0, 12.0),
    kind=st.sampled_from(["logits", "gallery"]),
    targeted=st.booleans(),
    n=st.integers(1, 3),
)
def test_attack_invariants(
    name: str, norm: str, seed: int, eps255: float, kind: str, targeted: bool, n: int
) -> None:
    """Quantised, in the box, within budget, judged by the model, reproducible."""
    model = _model(kind, seed)
    images = grid_images(n, size=8, seed=seed)
    with torch.no_grad():
        pred = model(images).argmax(1)
    goal = Impersonation((pred + 1) % 6) if targeted else Dodging(pred)
    scale = 1.0 if norm == "linf" else 10.0  # L2 budgets are larger in 8-bit units
    budget = Budget.from_8bit(norm, eps255 * scale)  # type: ignore[arg-type]
    attack = create(name, budget, **FAST[name])

    result = attack.run(model, images, goal, seed=seed)
    adv = result.adv
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert on_grid(adv, tol=1e-4)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    size = linf_norm(adv - images) if norm == "linf" else l2_norm(adv - images)
    assert bool((size <= budget.eps + 1e-6).all()), (size, budget)
    assert torch.allclose(result.linf, linf_norm(adv - images))
    assert torch.allclose(result.l2, l2_norm(adv - images))
    with torch.no_grad():
        assert torch.equal(result.success, goal.success(model(adv)))
    counter = result.queries if name in ("square", "noise") else result.iterations
    assert counter is not None and counter.shape == (n,) and bool((counter >= 0).all())
    if attack.minimum_norm:
        assert result.min_eps is not None
        assert bool(torch.isfinite(result.min_eps).eq(result.success).all())

    again = attack.run(model, images, goal, seed=seed)
    assert torch.equal(again.adv, adv) and torch.equal(again.success, result.success)


def test_model_mode_restored_and_batch_norm_safe() -> None:
    """Attacks run the model in eval mode with frozen parameters and put it back as they
    found it."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(5),
    )
    images = grid_images(4, size=8)
    model(images)  # materialise the lazy layer
    model.train()
    model[0].bias.requires_grad_(False)  # a frozen parameter stays frozen, the others thaw
    seen: list[bool] = []
    model.register_forward_hook(
        lambda m, i, o: seen.append(any(p.requires_grad for p in m.parameters())))
    goal = Dodging(torch.zeros(4, dtype=torch.long))
    result = create("pgd", Budget.from_8bit("linf", 2), steps=2).run(model, images, goal, seed=0)
    assert model.training
    assert seen and not any(seen)  # no parameter gradients recorded during the attack
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]
    model.eval()
    with torch.no_grad():
        assert torch.equal(result.success, goal.success(model(result.adv)))


@pytest.mark.parametrize("name", sorted(FAST))
def test_each_modules_own_mode_is_restored(name: str) -> None:
    """A wrapper in training mode (a fresh ``nn.Module`` is) around a backbone its owner put in
    eval mode comes back with each module in its own mode, and the backbone decides as before.
    Restoring the root's flag (``train(was)`` is recursive) switched the backbone's batch norm
    and dropout to training mode: every later decision of the caller's model changed."""
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Dropout(0.5), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    images = grid_images(6, size=8, seed=3)
    backbone(images * 3)  # materialise the lazy layer; running stats move away from the start
    backbone.eval()
    wrapper = torch.nn.Sequential(backbone)
    assert wrapper.training and not backbone.training
    modes = [m.training for m in wrapper.modules()]
    with torch.no_grad():
        clean = backbone(images)
    goal = Dodging(clean.argmax(1))
    budget = Budget.from_8bit("l2" if name == "cw" else "linf", 4)
    create(name, budget, **FAST[name]).run(wrapper, images, goal, seed=0)
    assert [m.training for m in wrapper.modules()] == modes
    with torch.no_grad():
        assert torch.equal(backbone(images), clean)


def test_already_fooled_images_cost_nothing(tiny_net: TinyNet, images: torch.Tensor) -> None:
    """An image the model already gets wrong is a zero-perturbation success."""
    with torch.no_grad():
        wrong = (tiny_net(images).argmax(1) + 1) % 10
    goal = Dodging(wrong)
    for name in ("pgd", "bim", "mifgsm", "square"):
        result = create(name, Budget.from_8bit("linf", 4)).run(tiny_net, images, goal, seed=0)
        assert bool(result.success.all())
        assert float(result.linf.max()) == 0.0


def test_zero_budget_changes_nothing(tiny_net: TinyNet, images: torch.Tensor, labels) -> None:
    hyper: dict[str, dict[str, int]] = {"deepfool": {"steps": 3}, "square": {"max_queries": 9}}
    for name in ("fgsm", "pgd", "deepfool", "square"):
        attack = create(name, Budget("linf", 0.0), **hyper.get(name, {}))
        result = attack.run(tiny_net, images, Dodging(labels), seed=1)
        assert torch.equal(result.adv, images)
        assert not bool(result.success.any())


def test_empty_batch(tiny_net: TinyNet) -> None:
    images = torch.zeros(0, 3, 16, 16)
    result = create("pgd", Budget.from_8bit("linf", 2)).run(
        tiny_net, images, Dodging(torch.zeros(0, dtype=torch.long)), seed=0
    )
    assert result.adv.shape == images.shape and result.success.numel() == 0


def test_unbounded_budget_for_minimum_norm_attacks(tiny_net: TinyNet, images, labels) -> None:
    for name in ("cw", "deepfool"):
        attack = create(name, Budget("l2", math.inf), steps=20)
        result = attack.run(tiny_net, images[:4], Dodging(labels[:4]), seed=0)
        assert on_grid(result.adv)
        assert result.min_eps is not None


def test_global_rng_untouched(tiny_net: TinyNet, images: torch.Tensor, labels) -> None:
    """Randomness comes from a local generator only, so callers' RNG streams are unaffected."""
    state = torch.get_rng_state()
    for name, hyper in (("pgd", {"steps": 2}), ("square", {"max_queries": 5})):
        create(name, Budget.from_8bit("linf", 2), **hyper).run(
            tiny_net, images, Dodging(labels), seed=4
        )
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("name", "norm"), [("cw", "l2"), ("deepfool", "l2"),
                                            ("deepfool", "linf")])
def test_minimum_norm_attacks_fool_everything_and_report_the_measured_norm(
    name: str, norm: str, tiny_net: TinyNet, images: torch.Tensor, labels
) -> None:
    """Unbounded, C&W and DeepFool must fool every image of a toy model, and ``min_eps`` (what
    sweeps and reports read as "the minimal perturbation") must be the norm of the returned
    image's perturbation, not the size of a continuous iterate before rounding."""
    hyper: dict[str, dict[str, int]] = {"cw": {"steps": 20, "binary_search_steps": 3},
                                        "deepfool": {"steps": 20}}
    x, goal = images[:6], Dodging(labels[:6])
    result = create(name, Budget(norm, math.inf), **hyper[name]).run(  # type: ignore[arg-type]
        tiny_net, x, goal, seed=0)
    assert bool(result.success.all()), result.success
    with torch.no_grad():
        assert bool(goal.success(tiny_net(result.adv)).all())  # judged independently
    assert on_grid(result.adv)
    measured = l2_norm(result.adv - x) if norm == "l2" else linf_norm(result.adv - x)
    assert result.min_eps is not None
    torch.testing.assert_close(result.min_eps, measured, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.l2, l2_norm(result.adv - x), rtol=0, atol=1e-6)
    torch.testing.assert_close(result.linf, linf_norm(result.adv - x), rtol=0, atol=1e-6)
    # Every image started correctly classified, so fooling it took a non-zero perturbation.
    assert bool((result.min_eps > 0).all())
