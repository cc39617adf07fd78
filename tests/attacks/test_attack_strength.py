"""Attack strength: against torchattacks, between our own attacks, and minimum-norm quality."""

from __future__ import annotations

import math

import pytest
import torch
import torchattacks  # a pinned test dependency: a broken install must fail here, not skip
from attack_models import BumpyNet, TinyNet, grid_images, own_labels
from torch import Tensor, nn

from advface.attacks import (
    BIM,
    FGSM,
    PGD,
    Budget,
    CarliniWagnerL2,
    DeepFool,
    Dodging,
    Impersonation,
    Square,
    minimal_eps,
    quantize_within,
    transfer,
)
from advface.errors import AdvfaceError


@pytest.mark.parametrize(("model", "eps255"), [(TinyNet(), 1), (BumpyNet(k=60.0), 1)])
def test_pgd_fools_at_least_as_many_as_torchattacks(model: nn.Module, eps255: int) -> None:
    """Same model, inputs, eps, step size, steps and one random start; ours after quantising."""
    model.eval()
    x = grid_images(64)
    y = own_labels(model, x)
    budget = Budget.from_8bit("linf", eps255)
    alpha = budget.eps / 4
    for seed in range(2):
        torch.manual_seed(seed)
        theirs = torchattacks.PGD(model, eps=budget.eps, alpha=alpha, steps=10)(x, y)
        theirs = quantize_within(x, theirs, budget)
        with torch.no_grad():
            n_theirs = int((model(theirs).argmax(1) != y).sum())
        ours = PGD(budget, steps=10, step_size=alpha, zero_start=False, random_restarts=1)
        n_ours = int(ours.run(model, x, Dodging(y), seed=seed).success.sum())
        assert n_ours >= n_theirs, (seed, n_ours, n_theirs)


CONFIGS = [("linf", 2 / 255), ("linf", 4 / 255), ("l2", 0.2), ("l2", 0.4)]


def test_pgd_superset_of_bim_and_bim_beats_fgsm() -> None:
    """PGD's zero-start run is BIM, so its successes contain BIM's; BIM >= FGSM in count."""
    model = BumpyNet(k=150.0).eval()
    x = grid_images(64, seed=2)
    goal = Dodging(own_labels(model, x))
    strict = 0
    for norm, eps in CONFIGS:
        budget = Budget(norm, eps)  # type: ignore[arg-type]
        fgsm = FGSM(budget).run(model, x, goal, seed=0).success
        bim = BIM(budget, steps=10).run(model, x, goal, seed=0).success
        pgd = PGD(budget, steps=10, random_restarts=1).run(model, x, goal, seed=0).success
        assert bool((pgd | ~bim).all()), (norm, eps)  # bim => pgd, per image
        assert int(pgd.sum()) >= int(bim.sum()) >= int(fgsm.sum()), (norm, eps)
        strict += int(bim.sum()) > int(fgsm.sum())
    assert strict >= 1  # the model is non-linear enough for the comparison to mean something


def test_impersonation_is_harder_than_dodging(tiny_net: TinyNet, images: Tensor) -> None:
    y = own_labels(tiny_net, images)
    budget = Budget.from_8bit("linf", 2)
    dodge = PGD(budget).run(tiny_net, images, Dodging(y), seed=0)
    imp = PGD(budget).run(tiny_net, images, Impersonation((y + 3) % 10), seed=0)
    with torch.no_grad():
        assert bool((tiny_net(imp.adv).argmax(1)[imp.success] == ((y + 3) % 10)[imp.success]).all())
    assert imp.success_rate <= dodge.success_rate


def test_min_norm_attacks_beat_pgd_minimal_eps() -> None:
    """C&W and DeepFool find smaller L2 perturbations than PGD's per-image minimal eps."""
    model = TinyNet().eval()
    x = grid_images(16)
    goal = Dodging(own_labels(model, x))
    unbounded = Budget("l2", math.inf)
    cw = CarliniWagnerL2(unbounded, steps=50, binary_search_steps=5).run(model, x, goal, seed=0)
    df = DeepFool(unbounded).run(model, x, goal, seed=0)
    grid = [e / 100 for e in range(51)]
    pgd = minimal_eps(lambda b: PGD(b, steps=10), model, x, goal, grid, norm="l2", seed=0)
    assert bool(cw.success.all()) and bool(df.success.all())
    assert bool(torch.isfinite(pgd.min_eps).all())
    pgd_mean = float(pgd.min_eps.mean())
    assert float(cw.l2.mean()) < pgd_mean
    assert float(df.l2.mean()) < 1.02 * pgd_mean
    assert cw.min_eps is not None and torch.allclose(cw.min_eps, cw.l2)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_does_not_stall_a_fraction_of_a_grey_level_short(norm: str) -> None:
    """Unbounded, DeepFool fools every image PGD fools at 8/255, within its default steps.

    Steps of a thousandth of a grey level used to repeat at the same rounded image until the
    steps ran out (this batch: one L-inf image never fooled at 50 steps, fooled at 206).
    """
    model = TinyNet().eval()
    x = grid_images(64, seed=5)
    goal = Dodging(own_labels(model, x))
    pgd = PGD(Budget.from_8bit("linf", 8), steps=20).run(model, x, goal, seed=0)
    df = DeepFool(Budget(norm, math.inf)).run(model, x, goal, seed=0)  # type: ignore[arg-type]
    assert bool(pgd.success.all()) and bool(df.success.all())
    assert int(df.iterations.max()) < 25


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_stops_just_past_the_boundary(norm: str) -> None:
    """Every image is fooled after the overshoot, and a slightly smaller step would not be.

    L2: 80% of the perturbation (unquantised, so rounding noise does not blur the test) fools
    at most a quarter of the images. L-inf: one grey level less fools at most a quarter.
    """
    model = TinyNet().eval()
    x = grid_images(16, seed=4)
    goal = Dodging(own_labels(model, x))
    budget = Budget(norm, math.inf)  # type: ignore[arg-type]
    result = DeepFool(budget, overshoot=0.02).run(model, x, goal, seed=0)
    assert bool(result.success.all())
    delta = result.adv - x
    if norm == "l2":
        smaller = x + 0.8 * delta
    else:
        level = ((result.linf * 255).round() - 1).clamp_min(0) / 255
        level = level[:, None, None, None]
        smaller = x + torch.maximum(torch.minimum(delta, level), -level)
    with torch.no_grad():
        fooled_early = goal.success(model(smaller))
    assert float(fooled_early.float().mean()) <= 0.25


class _QueryCounter(nn.Module):
    """Counts the images the model sees and checks that it is never asked for gradients."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen = 0

    def forward(self, x: Tensor) -> Tensor:
        assert not torch.is_grad_enabled()
        self.seen += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_counts_queries_and_respects_budget(norm: str) -> None:
    model = _QueryCounter(TinyNet().eval())
    x = grid_images(16, seed=3)
    goal = Dodging(own_labels(model, x))
    budget = Budget.from_8bit("linf", 4) if norm == "linf" else Budget("l2", 0.4)
    model.seen = 0
    result = Square(budget, max_queries=300).run(model, x, goal, seed=0)
    assert result.queries is not None
    assert int(result.queries.max()) <= 300
    # Every forward the attack made is a counted query, and there are no others: the final
    # judgement reuses the full-precision decisions taken on the returned images.
    assert model.seen == int(result.queries.sum())
    # Fooled images stopped early; the others used the whole budget.
    assert bool((result.queries[~result.success] == 300).all())
    assert result.success_rate >= 0.6


def test_transfer_judges_on_target() -> None:
    surrogate, target = TinyNet(seed=0).eval(), TinyNet(seed=7).eval()
    x = grid_images(16, seed=5)
    y = own_labels(target, x)
    goal = Dodging(y)
    inner = PGD(Budget.from_8bit("linf", 4), early_stop=False)
    result = transfer(inner, surrogate, target, x, goal, seed=3)
    direct = inner.run(surrogate, x, goal, seed=3)
    assert torch.equal(result.adv, direct.adv)
    assert torch.equal(result.extras["surrogate_success"], direct.success)
    with torch.no_grad():
        assert torch.equal(result.success, goal.success(target(result.adv)))


def test_transfer_takes_an_fp16_inner_attack_and_judges_in_full_precision() -> None:
    surrogate, target = TinyNet(seed=0).eval(), TinyNet(seed=7).eval()
    x = grid_images(8, seed=5)
    goal = Dodging(own_labels(target, x))
    inner = PGD(Budget.from_8bit("linf", 4), steps=3, amp="fp16")
    result = transfer(inner, surrogate, target, x, goal, seed=3)
    assert torch.equal(result.adv, inner.run(surrogate, x, goal, seed=3).adv)
    with torch.no_grad():
        assert torch.equal(result.success, goal.success(target(result.adv)))


class _OnlyCleanIsWrong(nn.Module):
    """Predicts class 0 at exactly the clean image and class 1 anywhere measurably away."""

    def __init__(self, clean: Tensor) -> None:
        super().__init__()
        self.register_buffer("clean", clean)

    def forward(self, x: Tensor) -> Tensor:
        away = (x - self.clean[: x.shape[0]]).abs().flatten(1).sum(1)
        return torch.stack([1.0 - 1000.0 * away, torch.zeros_like(away)], dim=1)


@pytest.mark.parametrize("early_stop", [True, False])
def test_clean_image_stays_a_candidate_with_or_without_early_stop(early_stop: bool) -> None:
    """A random-start PGD whose every candidate fails still reports the clean image when the
    model already gets it wrong (dodging at zero cost), and counts forwards as documented."""
    clean = grid_images(2, size=8, seed=3)
    model = _OnlyCleanIsWrong(clean)
    calls: list[int] = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    attack = PGD(Budget.from_8bit("linf", 8), steps=0, random_restarts=1, zero_start=False,
                 early_stop=early_stop)
    res = attack.run(model, clean, Dodging(torch.ones(2, dtype=torch.long)), seed=0)
    assert bool(res.success.all()) and torch.equal(res.adv, clean)
    # early stop: clean (2), nothing left to attack; without: the random start (2), then clean
    # only where it failed (2). The final judgement reuses these exact full-precision decisions.
    assert sum(calls) == (2 if early_stop else 4)


def test_compiled_model_gives_the_same_attack() -> None:
    """``compile=`` runs the model through torch.compile (aot_eager: traced forward and
    backward graphs, no C++ compiler needed) with the same adversarials and decisions, and
    compiles once per model; an unknown backend is refused when the attack is built."""
    model = TinyNet(n_ids=5, width=4, seed=2).eval()
    images = grid_images(4, size=8, seed=5)
    with torch.no_grad():
        goal = Dodging(model(images).argmax(1))
    plain = PGD(Budget.from_8bit("linf", 4), steps=4, early_stop=False)
    compiled = PGD(Budget.from_8bit("linf", 4), steps=4, early_stop=False, compile="aot_eager")
    a = plain.run(model, images, goal, seed=1)
    b = compiled.run(model, images, goal, seed=1)
    assert torch.allclose(a.adv, b.adv, atol=1.5 / 255) and torch.equal(a.success, b.success)
    again = PGD(Budget.from_8bit("linf", 2), compile="aot_eager")  # another eps, same model
    assert compiled.compiled(model) is again.compiled(model) is not model
    assert plain.compiled(model) is model
    with pytest.raises(AdvfaceError, match="backend"):
        PGD(Budget.from_8bit("linf", 4), compile="no-such-backend")


class _DtypeSpy(nn.Module):
    """TinyNet whose head records the dtype it computes in (autocast shows up there)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet(n_ids=5, width=4, seed=4)
        self.seen: list[torch.dtype] = []
        self.net.head.register_forward_hook(lambda m, i, o: self.seen.append(o.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_gradients_in_low_precision_decisions_in_fp32(amp: str) -> None:
    """``amp`` runs gradient passes under autocast (here on the CPU), still fools the model,
    and every decision behind ``success`` is the fp32 judgement of the returned image."""
    model = _DtypeSpy().eval()
    images = grid_images(6, size=8, seed=7)
    goal = Dodging(own_labels(model, images))
    model.seen.clear()
    budget = Budget.from_8bit("linf", 8)
    low = PGD(budget, steps=5, amp=amp).run(model, images, goal, seed=0)
    want = torch.bfloat16 if amp == "bf16" else torch.float16
    assert want in model.seen and torch.float32 in model.seen
    with torch.no_grad():
        assert torch.equal(low.success, goal.success(model(low.adv)))
    full = PGD(budget, steps=5).run(model, images, goal, seed=0)
    assert low.success_rate >= full.success_rate - 1 / 6 and low.success_rate > 0
    assert (amp == "fp16") == ("fp32_steps" in low.extras)


def test_fp16_refused_where_the_loss_is_not_scaled() -> None:
    with pytest.raises(AdvfaceError, match="fp16"):
        CarliniWagnerL2(amp="fp16")
    with pytest.raises(AdvfaceError, match="amp"):
        PGD(Budget.from_8bit("linf", 4), amp="fp8")
    assert DeepFool(amp="bf16").amp == "bf16" and PGD(Budget.from_8bit("linf", 4), amp=True).amp \
        == "bf16"


class _Loud(nn.Module):
    """Scores scaled by 1e4: the loss-scaled fp16 backward overflows (4096 * 1e4 > 65504)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet(n_ids=4, width=4, seed=6)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * 1e4


def test_fp16_overflow_redoes_the_step_in_fp32() -> None:
    """A step whose scaled fp16 gradient is not finite is recomputed in fp32 and counted; the
    attack then moves as the fp32 attack does."""
    model = _Loud().eval()
    images = grid_images(3, size=8, seed=8)
    goal = Dodging(own_labels(model, images))
    budget = Budget.from_8bit("linf", 6)
    low = PGD(budget, steps=3, amp="fp16", early_stop=False).run(model, images, goal, seed=0)
    assert bool((low.extras["fp32_steps"] == low.iterations).all())
    assert int(low.iterations.sum()) > 0
    full = PGD(budget, steps=3, early_stop=False).run(model, images, goal, seed=0)
    assert torch.equal(low.adv, full.adv) and torch.equal(low.success, full.success)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_channels_last_inputs_stay_channels_last(norm: str) -> None:
    """The GPU path's channels_last layout survives the engine: every batch the model sees and
    the returned images keep the caller's memory format (no silent NCHW copies)."""
    model = TinyNet(n_ids=5, width=8, seed=1).eval()
    layouts: list[bool] = []
    model.conv1.register_forward_pre_hook(
        lambda m, i: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    x = grid_images(4, size=16, seed=2).contiguous(memory_format=torch.channels_last)
    goal = Dodging(own_labels(model, x))
    layouts.clear()
    budget = Budget.from_8bit(norm, 3 if norm == "linf" else 100)  # type: ignore[arg-type]
    res = PGD(budget, steps=4).run(model, x, goal, seed=0)
    assert layouts and all(layouts)
    assert res.adv.is_contiguous(memory_format=torch.channels_last)
