"""Losses against values computed by hand, and the pair sampler's guarantees."""

from __future__ import annotations

import math

import pytest
import torch

from advface.training.losses import (
    ClassificationLoss,
    arcface_logits,
    contrastive_loss,
    cosface_logits,
    sample_pairs,
    softmax_cross_entropy,
)


def test_softmax_cross_entropy_hand_value() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    # -log(e^2 / (e^2 + 2))
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert softmax_cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(expected)
    # label smoothing 0.3 over 3 classes: target (0.8, 0.1, 0.1)
    logp = [2 - math.log(math.exp(2) + 2), -math.log(math.exp(2) + 2)]
    smoothed = -(0.8 * logp[0] + 0.2 * logp[1])
    got = softmax_cross_entropy(logits, torch.tensor([0]), label_smoothing=0.3).item()
    assert got == pytest.approx(smoothed)


def test_softmax_cross_entropy_is_stable_for_huge_logits() -> None:
    loss = softmax_cross_entropy(torch.tensor([[1000.0, -1000.0]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(2000.0)


def test_cosface_hand_value() -> None:
    cos = torch.tensor([[0.8, 0.6]])
    logits = cosface_logits(cos, torch.tensor([0]), scale=10.0, margin=0.2)
    assert logits.tolist()[0] == pytest.approx([6.0, 6.0])
    loss = ClassificationLoss("cosface", scale=10.0, margin=0.2)(cos, torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(2.0))  # two equal logits


def test_arcface_hand_value() -> None:
    theta = math.radians(60)
    cos = torch.tensor([[math.cos(theta), 0.1]])
    logits = arcface_logits(cos, torch.tensor([0]), scale=2.0, margin=0.5)
    assert logits[0, 0].item() == pytest.approx(2.0 * math.cos(theta + 0.5), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(0.2, abs=1e-6)  # other classes: s * cos
    loss = ClassificationLoss("arcface", scale=2.0, margin=0.5)(cos, torch.tensor([0]))
    a, b = 2.0 * math.cos(theta + 0.5), 0.2
    assert loss.item() == pytest.approx(-a + math.log(math.exp(a) + math.exp(b)), abs=1e-5)


def test_arcface_beyond_pi_minus_m_uses_linear_fallback_and_easy_margin() -> None:
    m = 0.5
    theta = math.pi - 0.2  # theta + m > pi: cos(theta + m) would increase again
    c = math.cos(theta)
    cos = torch.tensor([[c, 0.0]])
    hard = arcface_logits(cos, torch.tensor([0]), scale=1.0, margin=m)
    assert hard[0, 0].item() == pytest.approx(c - m * math.sin(m), abs=1e-5)
    easy = arcface_logits(cos, torch.tensor([0]), scale=1.0, margin=m, easy_margin=True)
    assert easy[0, 0].item() == pytest.approx(c, abs=1e-5)  # cos < 0: no margin
    pos = arcface_logits(torch.tensor([[0.5, 0.0]]), torch.tensor([0]), 1.0, m,
                         easy_margin=True)
    assert pos[0, 0].item() == pytest.approx(math.cos(math.acos(0.5) + m), abs=1e-5)


def test_arcface_gradient_is_finite_at_cos_one() -> None:
    cos = torch.tensor([[1.0, -1.0]], requires_grad=True)
    ClassificationLoss("arcface", 30.0, 0.5)(cos, torch.tensor([0])).backward()
    assert torch.isfinite(cos.grad).all()


def test_arcface_pushes_a_wrong_class_at_cos_one_and_pulls_a_target_at_minus_one() -> None:
    """The worst confusions still get a gradient (as CosFace gives them)."""
    for values in ([1.0, 0.2, 1.0], [-1.0, 0.2, -1.0]):
        cos = torch.tensor([values], requires_grad=True)
        ClassificationLoss("arcface", 30.0, 0.5)(cos, torch.tensor([0])).backward()
        grad = cos.grad[0]
        assert torch.isfinite(grad).all()
        assert grad[0] < -1.0  # raise the target
        if values[2] == 1.0:
            assert grad[2] > 1.0  # lower the wrong class sitting on the sample


def test_contrastive_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [0.3, 0.4], [3.0, 4.0]])  # distances 5, 0.5, 5
    same = torch.tensor([1, 0, 0])
    # positive: d^2 = 25; negative at 0.5 with margin 1: (1 - 0.5)^2 = 0.25; negative at 5: 0
    got = contrastive_loss(a, b, same, margin=1.0).item()
    assert got == pytest.approx((25.0 + 0.25 + 0.0) / 3, abs=1e-5)


def test_contrastive_gradient_finite_for_identical_embeddings() -> None:
    a = torch.ones(2, 4, requires_grad=True)
    contrastive_loss(a, a.detach().clone(), torch.tensor([0, 1])).backward()
    assert torch.isfinite(a.grad).all()


def test_sample_pairs_guarantees_and_determinism() -> None:
    labels = torch.tensor([3, 1, 3, 2, 1, 3, 0, 2, 3])
    a, b, same = sample_pairs(labels, 400, 0.25, torch.Generator().manual_seed(1))
    assert a.shape == b.shape == same.shape == (400,)
    assert torch.equal(same, labels[a] == labels[b])
    assert int(same.sum()) == 100  # exactly the requested positives
    assert not bool((a == b).any())
    # label 0 occurs once: it can be a negative anchor but never in a positive pair
    assert not bool((labels[a[same]] == 0).any())
    a2, b2, _ = sample_pairs(labels, 400, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_sample_pairs_all_negative_when_no_label_repeats() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    _, _, same = sample_pairs(labels, 50, 0.5, torch.Generator().manual_seed(0))
    assert not bool(same.any())
