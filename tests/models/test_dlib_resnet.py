"""DlibResNet module: dlib's residual sum, shapes, precision, batching and input gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advface.models.dlib_format import AffineRecord, ConvRecord, read_dlib_network
from advface.models.dlib_resnet import (
    DlibResNet,
    _fold_affine,
    load_dlib_resnet,
    zero_extended_sum,
)


@pytest.fixture(scope="module")
def model() -> DlibResNet:
    return load_dlib_resnet()


def faces(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Smooth random images: closer to real photos than white noise, still deterministic."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 15, 15, generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(coarse, size=(150, 150), mode="bilinear")
    x = 0.8 * x + 0.2 * torch.rand(n, 3, 150, 150, generator=g, dtype=torch.float64)
    return x.clamp(0, 1).to(dtype)


def dlib_add_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's tt::add for differently sized tensors, written as its element loop."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape, strict=True)]
    out = np.zeros(shape)
    for idx in np.ndindex(*shape):
        va = a[idx] if all(i < s for i, s in zip(idx, a.shape, strict=True)) else 0.0
        vb = b[idx] if all(i < s for i, s in zip(idx, b.shape, strict=True)) else 0.0
        out[idx] = va + vb
    return out


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [
        ((2, 64, 17, 17), (2, 32, 17, 17)),  # level 3: extra channels
        ((1, 256, 3, 3), (1, 128, 4, 4)),  # level 1: block smaller spatially, shortcut fewer ch
        ((1, 256, 1, 1), (1, 256, 2, 2)),  # level 0: block 1x1, shortcut 2x2
        ((1, 4, 5, 5), (1, 4, 5, 5)),
    ],
)
def test_zero_extended_sum_matches_dlib_loop(shape_a: tuple, shape_b: tuple) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(shape_a, generator=g, dtype=torch.float64)
    b = torch.randn(shape_b, generator=g, dtype=torch.float64)
    got = zero_extended_sum(a, b)
    want = dlib_add_reference(a.numpy(), b.numpy())
    assert tuple(got.shape) == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(zero_extended_sum(b, a).numpy(), want, rtol=0, atol=1e-12)


def test_zero_extension_is_bottom_right() -> None:
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 1, 4, 4), 2.0)
    out = zero_extended_sum(a, b)[0]
    assert torch.all(out[0, :3, :3] == 3) and torch.all(out[0, 3, :] == 2)
    assert torch.all(out[0, :, 3] == 2)
    assert torch.all(out[1, :3, :3] == 1) and torch.all(out[1, 3, :] == 0)
    assert torch.all(out[1, :, 3] == 0)


def test_attributes_and_level_sizes(model: DlibResNet) -> None:
    assert (model.input_size, model.embedding_dim, model.metric) == (150, 128, "euclidean")
    assert model.threshold == 0.6
    assert not model.training
    # dlib's 5,614,592 minus the affine gamma/beta folded into the 29 convs (3552 channels).
    assert sum(p.numel() for p in model.parameters()) == 5_614_592 - 2 * 3552
    sizes: list[tuple[int, int, int]] = []
    hooks = [
        b.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[1:])))
        for b in model.blocks
    ]
    with torch.no_grad():
        out = model(faces(2, seed=1))
    for hook in hooks:
        hook.remove()
    assert out.shape == (2, 128)
    assert [s[1] for s in sizes] == [35] * 3 + [17] * 4 + [8] * 3 + [4] * 3 + [2]
    assert [s[0] for s in sizes] == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    norms = out.norm(dim=1)
    assert torch.all(norms > 0.3) and torch.all(norms < 3.0)  # not L2-normalised


def test_affine_folding_is_exact_on_a_conv() -> None:
    network = read_dlib_network()
    conv, affine = network.layers[0], network.layers[1]
    assert isinstance(conv, ConvRecord) and isinstance(affine, AffineRecord)
    x = torch.rand(1, 3, 20, 20, dtype=torch.float64)
    plain = torch.nn.functional.conv2d(
        x, torch.from_numpy(conv.weight).double(), torch.from_numpy(conv.bias).double(), stride=2
    )
    plain = plain * torch.from_numpy(affine.gamma).double().view(1, -1, 1, 1) + torch.from_numpy(
        affine.beta
    ).double().view(1, -1, 1, 1)
    w, b = _fold_affine(conv, affine)
    folded = torch.nn.functional.conv2d(
        x, torch.from_numpy(w).double(), torch.from_numpy(b).double(), stride=2
    )
    torch.testing.assert_close(folded, plain, rtol=1e-6, atol=1e-6)


def test_batch_equals_single_and_channels_last(model: DlibResNet) -> None:
    x = faces(3, seed=2)
    with torch.no_grad():
        batch = model(x)
        singles = torch.cat([model(x[i : i + 1]) for i in range(3)])
        cl = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)
    torch.testing.assert_close(cl, batch, rtol=0, atol=1e-5)


def test_float64_agrees_with_float32(model: DlibResNet) -> None:
    x = faces(2, seed=3, dtype=torch.float64)
    model64 = load_dlib_resnet().double()
    with torch.no_grad():
        out64 = model64(x)
        out32 = model(x.float())
    assert out64.dtype == torch.float64
    assert (out64 - out32.double()).abs().max().item() < 1e-5


def test_input_scaling_is_dlib_s() -> None:
    # (pixel - mean) / 256 with the file's float32 means, channel 0 = red.
    model = DlibResNet()
    x = torch.zeros(1, 3, 1, 1)
    x[0, 0] = 1.0
    z = model.normalize(x).flatten()
    assert z[0].item() == pytest.approx((255 - 122.782) / 256, abs=1e-6)
    assert z[1].item() == pytest.approx(-117.001 / 256, abs=1e-6)
    assert z[2].item() == pytest.approx(-104.298 / 256, abs=1e-6)


def test_rejects_wrong_layout(model: DlibResNet) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, 150, 150\)"):
        model(torch.rand(1, 150, 150, 3))
    with pytest.raises(ValueError, match="150, 150"):
        model(torch.rand(1, 3, 160, 160))


def test_input_gradient_matches_finite_differences() -> None:
    """Autograd vs central differences in float64, along random directions and coordinates."""
    model = load_dlib_resnet().double()
    g = torch.Generator().manual_seed(4)
    x = faces(1, seed=4, dtype=torch.float64).clamp(0.02, 0.98)
    weights = torch.randn(128, generator=g, dtype=torch.float64)

    def loss(inp: torch.Tensor) -> torch.Tensor:
        return (model(inp) @ weights).sum()

    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x_req), x_req)
    assert grad.abs().sum() > 0
    directions = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(3)]
    for flat_index in torch.randint(0, x.numel(), (3,), generator=g).tolist():
        e = torch.zeros(x.numel(), dtype=torch.float64)
        e[flat_index] = 1.0
        directions.append(e.view_as(x))
    h = 1e-6
    worst = 0.0
    with torch.no_grad():
        for v in directions:
            v = v / v.norm()
            numeric = (loss(x + h * v) - loss(x - h * v)).item() / (2 * h)
            analytic = (grad * v).sum().item()
            error = abs(numeric - analytic) / max(abs(analytic), 1e-3)
            worst = max(worst, error)
    assert worst < 1e-5, f"relative gradient error {worst:.2e}"


def test_gradients_not_disabled(model: DlibResNet) -> None:
    x = faces(1, seed=5).requires_grad_(True)
    model(x).norm().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Internally channels_last, but the caller's gradient is plain NCHW (attacks call .view).
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert grad.is_contiguous() and grad.view(1, -1).shape == (1, 3 * 150 * 150)
    # Weights are frozen by default: backward() leaves no weight gradients behind.
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    trainable = load_dlib_resnet(trainable=True)
    trainable(faces(1, seed=5)).norm().backward()
    assert trainable.stem.weight.grad is not None
