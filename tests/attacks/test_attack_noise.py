"""The random-noise baseline: uses its whole budget, and is no stronger than PGD."""

from __future__ import annotations

import torch
from attack_models import TinyNet, grid_images

from advface.attacks.base import Budget, Dodging, l2_norm, linf_norm
from advface.attacks.registry import create


def test_noise_uses_the_budget_and_is_seeded() -> None:
    images = grid_images(8, size=8, seed=3)
    model = TinyNet(n_ids=6, width=4, seed=3).eval()
    goal = Dodging(model(images).argmax(1))
    res = create("noise", Budget.from_8bit("linf", 4)).run(model, images, goal, seed=1)
    # away from the box edges every value moved by exactly 4 grey levels, fooled or not
    inner = (images > 5 / 255) & (images < 250 / 255)
    moved = ((res.adv - images).abs() * 255).round()
    assert bool(inner.any()) and bool((moved[inner] == 4).all())
    assert bool((linf_norm(res.adv - images) <= 4 / 255 + 1e-6).all())
    again = create("noise", Budget.from_8bit("linf", 4)).run(model, images, goal, seed=1)
    assert torch.equal(again.adv, res.adv)


def test_noise_no_stronger_than_pgd_on_average() -> None:
    images = grid_images(32, size=8, seed=5)
    model = TinyNet(n_ids=6, width=4, seed=5).eval()
    goal = Dodging(model(images).argmax(1))
    budget = Budget.from_8bit("l2", 60)
    noise = create("noise", budget).run(model, images, goal, seed=0)
    pgd = create("pgd", budget, steps=10).run(model, images, goal, seed=0)
    assert bool((l2_norm(noise.adv - images) <= budget.eps + 1e-6).all())
    assert int(pgd.success.sum()) >= int(noise.success.sum())
    assert int(pgd.success.sum()) > 0
