"""Honest evaluation: a gradient-masking defence looks robust to the naive attack only."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advface.defences.evaluate import (
    AttackPlan,
    correct_fraction,
    default_attacks,
    evaluate_defence,
)
from advface.defences.transforms import JPEG, BitDepth, Defended, RandomResizePad


@pytest.mark.parametrize("transform", [BitDepth(4), JPEG(75)], ids=["bit-depth", "jpeg"])
def test_gradient_masking_defence_fails_under_the_adaptive_attack(problem, small_model,
                                                                   transform) -> None:
    x, y = problem[0][::3], problem[1][::3]
    defended = Defended(small_model, transform)
    plans = default_attacks(defended, has_undefended=True, naive_steps=5, adaptive_steps=20,
                            adaptive_restarts=0)
    res = evaluate_defence(defended, x, y, eps_8bit=(8,), attacks=plans, seed=0)
    assert res.clean_accuracy >= 0.9
    naive = res.robust("naive-direct", 8.0)
    adaptive = res.robust("adaptive", 8.0)
    # The naive attacker differentiates through the defence and gets a zero gradient ...
    assert naive >= 0.9
    # ... while BPDA (straight-through) breaks it: robustness was gradient masking.
    assert adaptive <= 0.2
    assert res.worst_case["8"] <= adaptive
    for row in res.rows:
        assert 0.0 <= row["robust_accuracy"] <= res.clean_accuracy
        lo, hi = row["ci95"]
        assert lo <= row["robust_accuracy"] <= hi
    assert "naive-transfer" in res.table() and "worst-case" in res.table()


def test_plans_adapt_to_the_defence(small_model) -> None:
    plain = default_attacks(small_model, has_undefended=False)
    assert [p.name for p in plain] == ["naive-direct", "adaptive"]
    assert plain[1].gradient == "exact" and plain[1].eot == 1
    rand = Defended(small_model, RandomResizePad(0.8))
    plans = {p.name: p for p in default_attacks(rand, has_undefended=True, eot_samples=6)}
    assert plans["adaptive"].eot == 6 and not plans["adaptive"].early_stop
    assert plans["naive-transfer"].target == "undefended"


def test_random_defence_evaluation_is_deterministic(problem, small_model) -> None:
    x, y = problem[0][::9], problem[1][::9]
    plans = [AttackPlan("adaptive", "adaptive", "defended", "bpda", eot=3, steps=3)]

    def run() -> tuple[float, float, float]:
        d = Defended(small_model, RandomResizePad(0.8, seed=5))
        res = evaluate_defence(d, x, y, eps_8bit=(4,), attacks=plans, seed=1, eval_draws=2)
        return res.clean_accuracy, res.robust("adaptive", 4.0), res.worst_case["4"]

    assert run() == run()


def test_plain_model_robust_accuracy_drops_with_eps(problem, small_model) -> None:
    x, y = problem[0][::6], problem[1][::6]
    plans = [AttackPlan("pgd", "adaptive", steps=10)]
    res = evaluate_defence(small_model, x, y, eps_8bit=(0, 2, 8), attacks=plans)
    accs = [res.robust("pgd", e) for e in (0.0, 2.0, 8.0)]
    assert accs[0] == pytest.approx(res.clean_accuracy)
    assert accs[0] >= accs[1] >= accs[2]
    assert accs[2] < accs[0]
    assert res.undefended_clean_accuracy is None  # no surrogate for a plain model


def test_evaluation_gives_the_defence_its_own_random_stream_back(problem, small_model) -> None:
    """Evaluation reseeds for repeatability; the user's transform keeps its seed and stream."""
    x, y = problem[0][::9], problem[1][::9]
    plans = [AttackPlan("adaptive", "adaptive", "defended", "bpda", eot=2, steps=2)]
    used = Defended(small_model, RandomResizePad(0.8, seed=5))
    twin = Defended(small_model, RandomResizePad(0.8, seed=5))
    assert torch.equal(used(x), twin(x))  # both mid-stream: the state, not just the seed
    evaluate_defence(used, x, y, eps_8bit=(4,), attacks=plans, seed=1, eval_draws=2)
    assert used.transforms[0].seed == 5
    assert torch.equal(used(x), twin(x))


def test_failed_evaluation_gives_the_defence_its_own_random_stream_back(problem) -> None:
    class Broken(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("scorer failed")

    x, y = problem
    used = RandomResizePad(0.8, seed=5)
    twin = RandomResizePad(0.8, seed=5)
    with pytest.raises(RuntimeError, match="scorer failed"):
        correct_fraction(Defended(Broken(), used), x, y, seed=1)
    assert used.seed == 5
    assert torch.equal(used(x), twin(x))
