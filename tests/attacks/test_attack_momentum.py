"""MI-FGSM and the transfer tricks, monotonicity in the attack budget, and MI-FGSM against
torchattacks' reference implementation."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from attack_models import BumpyNet, TinyNet, grid_images, own_labels
from torch import Tensor, nn

from advface.attacks import (
    BIM,
    MIFGSM,
    PGD,
    Budget,
    Dodging,
    Goal,
    Impersonation,
    Square,
    quantize_within,
)
from advface.attacks.diversity import InputDiversity, TranslationInvariance


def _goals(model: nn.Module, x: Tensor) -> list[Goal]:
    y = own_labels(model, x)
    return [Dodging(y), Impersonation((y + 3) % 10)]


BUDGETS = [Budget.from_8bit("linf", 2), Budget("l2", 0.2)]


@pytest.mark.parametrize("budget", BUDGETS, ids=str)
@pytest.mark.parametrize("early_stop", [True, False])
def test_mifgsm_without_momentum_is_bim(budget: Budget, early_stop: bool) -> None:
    """MI-FGSM's only difference from BIM is the momentum term: with momentum 0 and the same
    step size, steps and early stopping it must return exactly BIM's images; with momentum 1
    the accumulated direction must actually change the walk (else momentum is ignored)."""
    model = BumpyNet(k=60.0).eval()
    x = grid_images(16, seed=1)
    step = budget.eps / 4
    for goal in _goals(model, x):
        bim = BIM(budget, steps=6, step_size=step, early_stop=early_stop).run(
            model, x, goal, seed=0)
        mi0 = MIFGSM(budget, steps=6, step_size=step, momentum=0.0,
                     early_stop=early_stop).run(model, x, goal, seed=0)
        mi1 = MIFGSM(budget, steps=6, step_size=step, momentum=1.0,
                     early_stop=early_stop).run(model, x, goal, seed=0)
        assert torch.equal(mi0.adv, bim.adv)
        assert torch.equal(mi0.success, bim.success)
        assert torch.equal(mi0.iterations, bim.iterations)
        differs = (mi1.adv != bim.adv).flatten(1).any(1)
        assert bool(differs.any()), (type(goal).__name__, budget)


def test_translation_invariance_kernel_is_an_average() -> None:
    """TI smooths the gradient with a normalised Gaussian: the kernel sums to one, so a
    constant gradient stays the same constant away from the zero-padded border, and the
    smoothing is per channel (no mixing of colour channels)."""
    ti = TranslationInvariance(5)
    assert ti.kernel.shape == (5, 5)
    assert float(ti.kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool((ti.kernel > 0).all())
    torch.testing.assert_close(ti.kernel, ti.kernel.T)  # isotropic
    assert int(ti.kernel.argmax()) == 12  # peak at the centre
    grad = torch.tensor([0.7, -1.3, 2.0]).reshape(1, 3, 1, 1).expand(2, 3, 12, 12).contiguous()
    out = ti(grad)
    assert out.shape == grad.shape
    pad = 5 // 2
    torch.testing.assert_close(out[..., pad:-pad, pad:-pad], grad[..., pad:-pad, pad:-pad])
    # At the corner only part of the kernel overlaps the image: smaller than the interior.
    assert bool((out[..., 0, 0].abs() < grad[..., 0, 0].abs() - 0.1).all())
    # A single spike spreads as the kernel itself, in its own channel only.
    spike = torch.zeros(1, 3, 9, 9)
    spike[0, 1, 4, 4] = 1.0
    spread = ti(spike)
    torch.testing.assert_close(spread[0, 1, 2:7, 2:7], ti.kernel.flip(0, 1))
    assert float(spread[0, 0].abs().sum()) == 0.0 and float(spread[0, 2].abs().sum()) == 0.0


def test_input_diversity_off_is_the_identity_and_sizes_are_kept() -> None:
    """DI with probability 0 must hand the image through unchanged (it is 'off'); switched on
    it must still return the model's input size, or the model would see a wrong shape."""
    x = grid_images(3, size=16, seed=4)
    gen = torch.Generator().manual_seed(0)
    off = InputDiversity(prob=0.0)
    for _ in range(5):
        out = off(x, gen)
        assert out.shape == x.shape and torch.equal(out, x)
    on = InputDiversity(prob=1.0, scale=0.5)
    changed = 0
    for _ in range(10):
        out = on(x, gen)
        assert out.shape == x.shape
        changed += int(not torch.equal(out, x))
    assert changed > 0  # prob 1 really transforms (else the size check above is vacuous)


ATTACKS = [PGD, BIM, MIFGSM]
MODELS = [("bumpy", lambda: BumpyNet(k=60.0)), ("tiny", lambda: TinyNet())]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__)
@pytest.mark.parametrize(("model_name", "make_model"), MODELS, ids=[m[0] for m in MODELS])
def test_more_steps_never_fool_fewer(attack: type[PGD], model_name: str, make_model) -> None:
    """With 20 steps an iterative attack fools at least as many images as with 5 (default step
    sizes, which shrink with the step count), and with a fixed step size every image fooled
    with 5 steps is fooled with 20: the first 5 steps are the same walk and the best
    candidate is kept. On the non-linear BumpyNet the extra steps must pay off somewhere."""
    model = make_model().eval()
    x = grid_images(32, seed=0)
    strict = 0
    for goal in _goals(model, x):
        for budget in BUDGETS:
            few = attack(budget, steps=5).run(model, x, goal, seed=0).success
            many = attack(budget, steps=20).run(model, x, goal, seed=0).success
            assert int(many.sum()) >= int(few.sum()), (type(goal).__name__, budget)
            strict += int(many.sum()) > int(few.sum())
            step = budget.eps / 4
            few = attack(budget, steps=5, step_size=step).run(model, x, goal, seed=0).success
            many = attack(budget, steps=20, step_size=step).run(model, x, goal, seed=0).success
            assert bool((many | ~few).all()), (type(goal).__name__, budget)  # few => many
    if model_name == "bumpy":
        assert strict >= 1


@pytest.mark.parametrize(("model_name", "make_model"), MODELS, ids=[m[0] for m in MODELS])
def test_more_random_restarts_fool_a_superset(model_name: str, make_model) -> None:
    """PGD with two random restarts runs the one-restart attack first (same seed, same draws)
    and only adds a start, so every image it fooled stays fooled."""
    model = make_model().eval()
    x = grid_images(32, seed=0)
    for goal in _goals(model, x):
        for budget in BUDGETS:
            one = PGD(budget, steps=5, random_restarts=1).run(model, x, goal, seed=0).success
            two = PGD(budget, steps=5, random_restarts=2).run(model, x, goal, seed=0).success
            assert bool((two | ~one).all()), (type(goal).__name__, budget)  # one => two


@pytest.mark.parametrize(("model_name", "make_model"), MODELS, ids=[m[0] for m in MODELS])
def test_square_with_more_queries_fools_at_least_as_many(model_name: str, make_model) -> None:
    """A larger query budget for the score-based Square attack must not fool fewer images
    (and on these models it fools strictly more, so the comparison means something)."""
    model = make_model().eval()
    x = grid_images(32, seed=0)
    goal = Dodging(own_labels(model, x))
    for budget in (Budget.from_8bit("linf", 2), Budget("l2", 0.4)):
        few = int(Square(budget, max_queries=50).run(model, x, goal, seed=0).success.sum())
        many = int(Square(budget, max_queries=200).run(model, x, goal, seed=0).success.sum())
        assert many >= few, budget
        assert many > few, budget


@pytest.mark.parametrize(("model", "eps255"), [(TinyNet(), 1), (TinyNet(), 2),
                                               (BumpyNet(k=60.0), 1)])
def test_mifgsm_fools_at_least_as_many_as_torchattacks(model: nn.Module, eps255: int) -> None:
    """A peer reference for MI-FGSM: same model, images, eps, step size, steps and decay 1.0;
    torchattacks' images are quantised like ours before judging. Ours keeps the best iterate
    per image, so it must not fool fewer."""
    model.eval()
    x = grid_images(64)
    y = own_labels(model, x)
    budget = Budget.from_8bit("linf", eps255)
    steps = 10
    alpha = budget.eps / steps
    theirs = torchattacks.MIFGSM(model, eps=budget.eps, alpha=alpha, steps=steps, decay=1.0)(x, y)
    theirs = quantize_within(x, theirs, budget)
    with torch.no_grad():
        n_theirs = int((model(theirs).argmax(1) != y).sum())
    ours = MIFGSM(budget, steps=steps, step_size=alpha, momentum=1.0, early_stop=False)
    n_ours = int(ours.run(model, x, Dodging(y), seed=0).success.sum())
    assert 0 < n_theirs < x.shape[0]  # not trivial for either side: something left to find
    assert n_ours >= n_theirs, (n_ours, n_theirs)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_mifgsm_at_zero_eps_changes_nothing(norm: str) -> None:
    """eps 0 is the clean point of every robustness curve: MI-FGSM must build there like the
    other iterative attacks and return the clean images, fooling nothing."""
    model = TinyNet(n_ids=5, width=4, seed=2).eval()
    x = grid_images(4, size=8, seed=5)
    goal = Dodging(own_labels(model, x))
    result = MIFGSM(Budget(norm, 0.0), steps=3).run(model, x, goal, seed=0)  # type: ignore[arg-type]
    assert torch.equal(result.adv, x)
    assert not bool(result.success.any())
