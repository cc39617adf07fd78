"""Budgets, goals, losses and the budget-safe quantiser."""

from __future__ import annotations

import math

import pytest
import torch
from attack_models import TinyNet, grid_images
from hypothesis import given, settings
from hypothesis import strategies as st

from advface.attacks.base import (
    Budget,
    Dodging,
    Impersonation,
    LinfBox,
    attack_loss,
    judge,
    l2_norm,
    linf_norm,
    on_grid,
    project,
    quantize_within,
    validate_images,
)
from advface.errors import AdvfaceError


def test_budget_from_8bit_units() -> None:
    b = Budget.from_8bit("linf", 2)
    assert b.eps == pytest.approx(2 / 255) and b.eps255 == pytest.approx(2)
    # A non-grid L-inf eps floors to whole grey levels; L2 stays as given.
    assert Budget.from_8bit("linf", 2.5).effective_eps == pytest.approx(2 / 255)
    assert Budget.from_8bit("linf", 3).effective_eps == pytest.approx(3 / 255)
    assert Budget.from_8bit("l2", 255).eps == pytest.approx(1.0)
    assert Budget.from_8bit("l2", 2.5).effective_eps == pytest.approx(2.5 / 255)
    assert Budget.from_8bit("l2", None) == Budget("l2", math.inf)  # unbounded: min-norm attacks
    with pytest.raises(AdvfaceError):
        Budget("l1", 0.1)  # type: ignore[arg-type]
    with pytest.raises(AdvfaceError):
        Budget("l2", -1.0)


def test_goals_success_and_margin() -> None:
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    dodge = Dodging(torch.tensor([0, 0]))
    assert dodge.success(scores).tolist() == [False, True]
    assert dodge.margin(scores).tolist() == [-2.0, 5.0]
    imp = Impersonation(torch.tensor([1, 2]))
    assert imp.success(scores).tolist() == [False, True]
    assert imp.margin(scores).tolist() == [-2.0, 3.0]
    assert imp[torch.tensor([1])].labels.tolist() == [2]
    with pytest.raises(AdvfaceError):
        Dodging(torch.tensor([0, 7])).check(scores)


@pytest.mark.parametrize("kind", ["margin", "ce"])
@pytest.mark.parametrize("goal_cls", [Dodging, Impersonation])
def test_attack_loss_gradcheck(kind: str, goal_cls: type) -> None:
    """Analytic input gradients of the attack losses match finite differences (float64)."""
    model = TinyNet(n_ids=5, width=4).double().eval()
    x = grid_images(2, size=8).double().requires_grad_(True)
    goal = goal_cls(torch.tensor([1, 3]))

    def f(inp: torch.Tensor) -> torch.Tensor:
        return attack_loss(model(inp), goal, kind, temperature=0.5)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


def test_ce_loss_direction() -> None:
    """Dodging ascends CE on the true label; Impersonation descends CE toward the target."""
    scores = torch.tensor([[2.0, 0.0, -1.0]])
    up = attack_loss(scores, Dodging(torch.tensor([0])), "ce")
    assert float(up) > 0
    toward = attack_loss(scores, Impersonation(torch.tensor([2])), "ce")
    assert float(toward) < 0
    capped = attack_loss(scores, Dodging(torch.tensor([2])), "margin", kappa=1.0)
    assert float(capped) == 1.0  # margin 3 capped at kappa


def _clean_and_adv(seed: int, n: int, size: int, spread: float) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255
    # Include pixels at 0 and 1 so the box matters.
    clean[:, 0, 0, 0] = 0.0
    clean[:, 1, 0, 0] = 1.0
    adv = clean + spread * torch.randn(clean.shape, generator=g)
    return clean, adv


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    norm=st.sampled_from(["linf", "l2"]),
    eps255=st.floats(0.0, 40.0),
    spread=st.floats(0.0, 0.2),
)
def test_quantize_within_budget(seed: int, norm: str, eps255: float, spread: float) -> None:
    """On the grid, in [0, 1], within budget after rounding, and idempotent."""
    budget = Budget.from_8bit(norm, eps255)  # type: ignore[arg-type]
    clean, adv = _clean_and_adv(seed, 3, 6, spread)
    q = quantize_within(clean, adv, budget)
    assert on_grid(q, tol=1e-4)
    assert float(q.min()) >= 0 and float(q.max()) <= 1
    size = linf_norm(q - clean) if norm == "linf" else l2_norm(q - clean)
    assert bool((size <= budget.eps + 1e-6).all())
    assert torch.equal(quantize_within(clean, q, budget), q)


def test_quantize_linf_floors_non_grid_eps() -> None:
    clean = torch.full((1, 3, 2, 2), 100 / 255)
    adv = clean + 2.5 / 255
    q = quantize_within(clean, adv, Budget.from_8bit("linf", 2.5))
    # Plain rounding would give +3 levels (over budget); the safe quantiser gives +2.
    assert torch.allclose(q * 255 - 100, torch.full_like(q, 2.0), atol=1e-4)


def test_quantize_l2_fixes_rounding_overshoot() -> None:
    """Every component 0.6 levels: rounding to 1 would exceed the budget; fix flips some."""
    clean = torch.full((1, 3, 4, 4), 100 / 255)
    d = 0.6 / 255
    adv = clean + d
    budget = Budget("l2", float(l2_norm(adv - clean)))
    naive = torch.round(adv * 255) / 255
    assert float(l2_norm(naive - clean)) > budget.eps  # the problem exists
    q = quantize_within(clean, adv, budget)
    assert float(l2_norm(q - clean)) <= budget.eps + 1e-7
    levels = (q - clean) * 255
    # Kept as many +1 steps as fit: floor(48 * 0.36) = 17 components.
    assert int(levels.round().sum()) == math.floor(48 * 0.36)


def test_quantize_l2_keeps_nearest_when_within_budget() -> None:
    clean, adv = _clean_and_adv(3, 2, 5, 0.01)
    budget = Budget("l2", 10.0)
    nearest = torch.round(adv.clamp(0, 1) * 255) / 255
    assert torch.equal(quantize_within(clean, adv, budget), nearest)


def test_project_stays_in_ball_and_box() -> None:
    clean, adv = _clean_and_adv(1, 4, 5, 0.5)
    for budget in (Budget("linf", 0.03), Budget("l2", 0.4)):
        p = project(clean, adv, budget)
        assert float(p.min()) >= 0 and float(p.max()) <= 1
        size = linf_norm(p - clean) if budget.norm == "linf" else l2_norm(p - clean)
        assert bool((size <= budget.eps + 1e-6).all())


def test_validate_images_rejects_off_grid() -> None:
    with pytest.raises(AdvfaceError, match="8-bit"):
        validate_images(torch.full((1, 3, 4, 4), 0.5 / 255))
    with pytest.raises(AdvfaceError):
        validate_images(torch.zeros(3, 4, 4))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    eps255=st.one_of(st.floats(0.0, 40.0), st.just(math.inf)),
    spread=st.floats(0.0, 0.3),
)
def test_linf_box_image_equals_safe_quantiser(seed: int, eps255: float, spread: float) -> None:
    """PGD's grey-level iterate: projecting then rounding gives the safe quantiser's image,
    i.e. round to whole grey levels first, then clamp to floor(eps*255) levels and the box."""
    budget = Budget.from_8bit("linf", eps255)
    clean, adv = _clean_and_adv(seed, 3, 6, spread)
    box = LinfBox(clean, budget)
    x255 = box.levels(adv)
    assert torch.equal(box.levels(x255 / 255), x255)  # projecting twice changes nothing
    img = box.image(x255)
    c255 = (clean * 255).round()
    e = math.floor(budget.eps * 255 + 1e-6) if math.isfinite(eps255) else 255
    rounded = (project(clean, adv, budget) * 255).clamp(0, 255).round()
    reference = torch.minimum(torch.maximum(rounded, c255 - e), c255 + e) / 255
    assert torch.equal(img, reference)
    assert torch.equal(img, quantize_within(clean, project(clean, adv, budget), budget))
    assert torch.equal(quantize_within(clean, img, budget), img)
    assert bool((linf_norm(img - clean) <= budget.effective_eps + 1e-6).all())
    sub = box.select(torch.tensor([True, False, True]))
    assert torch.equal(sub.image(sub.levels(adv[[0, 2]])), img[[0, 2]])


def test_judge_reuses_only_exact_decisions() -> None:
    """Known decisions skip the model only for rows judged exactly and left unchanged by
    quantisation; every other row is run through the model."""
    model = TinyNet(n_ids=4, width=4, seed=1).eval()
    clean = grid_images(4, size=8, seed=2)
    budget = Budget.from_8bit("linf", 4)
    adv = quantize_within(clean, clean + 3 / 255, budget)
    adv[3] = clean[3] + 2.5 / 255  # off the grid: quantisation changes it
    rows: list[int] = []
    model.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    with torch.no_grad():
        truth = model(quantize_within(clean, adv, budget)).argmax(1)
    rows.clear()
    goal = Dodging(truth)  # the model's own decisions: nothing fooled
    judged = torch.tensor([True, False, True, True])
    claimed = torch.tensor([True, True, False, True])  # what an attack said it saw
    res = judge(model, clean, goal, adv, budget, known=(judged, claimed))
    assert rows == [2]  # row 1 (not judged) and row 3 (changed by rounding)
    assert res.success.tolist() == [True, False, False, False]
    rows.clear()
    assert not bool(judge(model, clean, goal, adv, budget).success.any()) and rows == [4]


class _BatchNormScores(torch.nn.Module):
    """Scores through batch norm: in training mode a forward moves its running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def test_judge_decides_in_eval_mode_and_leaves_the_model_as_it_was() -> None:
    """Called directly on a model in training mode, judge takes the deployed (eval) decision,
    moves no batch-norm statistics and gives the model back in training mode."""
    model = _BatchNormScores().train()
    x = grid_images(4, size=8)
    stats = model.bn.running_mean.clone()
    res = judge(model, x, Dodging(torch.arange(4)), x, Budget.from_8bit("linf", 8))
    assert torch.equal(model.bn.running_mean, stats) and model.training
    with torch.no_grad():
        deployed = model.eval()(x).argmax(1)
    assert torch.equal(res.success, deployed != torch.arange(4))
