"""evaluate_model and its helpers leave the caller's model and tensors as they found them."""

from __future__ import annotations

import torch

from advface.training.evaluate import as_float, evaluate_model


class _Embed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean((2, 3))


def test_evaluate_model_gives_each_module_its_own_mode_back() -> None:
    """Evaluated in eval mode (no batch-norm statistics move); a training-mode model comes back
    in training mode, an eval-mode part of it stays in eval mode."""
    model = _Embed().train()
    model.bn.eval()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 3, 8, 8, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(6) % 3
    stats = model.bn.running_mean.clone()
    model.conv.train()
    evaluate_model(model, x, labels, x, labels, n_identities=3)
    assert model.training and model.conv.training and not model.bn.training
    model.train()
    model.bn.train()
    evaluate_model(model, x, labels, x, labels, n_identities=3)
    assert torch.equal(model.bn.running_mean, stats) and model.bn.training


def test_as_float_never_divides_the_callers_tensor() -> None:
    x = torch.full((1, 3, 2, 2), 255.0)
    assert torch.equal(as_float(x), torch.ones_like(x)) and torch.equal(x, torch.full_like(x, 255))
