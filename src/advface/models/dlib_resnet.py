"""dlib's ResNet face descriptor (`dlib_face_recognition_resnet_model_v1`) as a PyTorch module.

Why a port: attacks need gradients of the descriptor w.r.t. the pixels, which dlib cannot give.
The module reproduces dlib's arithmetic (checked against `compute_face_descriptor` in
tests/models/test_dlib_reference.py), including its two quirks: input scaling
`(pixel - mean) / 256` and the down-sampling residual sum that zero-extends the smaller operand
(extra channels, extra bottom/right rows and columns) instead of using a projection.

Each dlib `affine_` (a frozen batch norm) is folded into the preceding convolution when loading:
mathematically identical, one op fewer per layer in forward and backward. On CPU, float32
activations run in channels_last layout (faster oneDNN convolutions); inputs and input
gradients keep the caller's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advface.errors import CheckpointError
from advface.models.dlib_format import (
    AddPrevRecord,
    AffineRecord,
    ConvRecord,
    DlibNetwork,
    FcRecord,
    LayerRecord,
    PoolRecord,
    ReluRecord,
    read_dlib_network,
)

# (in_channels, out_channels, stride) of the 14 residual blocks, input to output.
BLOCKS: tuple[tuple[int, int, int], ...] = (
    *((32, 32, 1),) * 3,  # level 4, 35x35
    (32, 64, 2),
    *((64, 64, 1),) * 3,  # level 3, 17x17
    (64, 128, 2),
    *((128, 128, 1),) * 2,  # level 2, 8x8
    (128, 256, 2),
    *((256, 256, 1),) * 2,  # level 1, 4x4 (block 3x3 + shortcut 4x4)
    (256, 256, 2),  # level 0, 2x2 (block 1x1 + shortcut 2x2)
)
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # overwritten by the file's exact float32 values


def zero_extended_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the output takes the larger size in every dimension; missing entries are 0.

    Zero-extension is at the end of each axis (extra channels last, extra rows at the bottom,
    extra columns at the right), matching dlib's `tt::add`.
    """
    if a.shape == b.shape:
        return a + b
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"batch sizes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    target = [max(sa, sb) for sa, sb in zip(a.shape[1:], b.shape[1:], strict=True)]

    def extend(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(target):
            return t
        # F.pad takes (left, right) pairs starting from the last axis.
        return F.pad(t, (0, target[2] - w, 0, target[1] - h, 0, target[0] - c))

    return extend(a) + extend(b)


class _ChannelsLast(torch.autograd.Function):
    """Switch to channels_last for the convs, hand the gradient back in the caller's layout.

    oneDNN's CPU convolutions run ~30-40% faster on channels_last input, but a gradient in that
    layout breaks caller code such as `grad.view(n, -1)` (used by L2 attacks), so the backward
    returns a standard contiguous tensor.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _wants_channels_last(x: torch.Tensor) -> bool:
    exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
    return x.device.type == "cpu" and x.dtype == torch.float32 and not exporting


class DlibBlock(nn.Module):
    """Residual block: conv-affine-relu-conv-affine (+ shortcut), relu.

    A stride-2 block has pad-0 first conv and an avg-pool 2x2 shortcut without projection;
    the sum is zero-extended (see `zero_extended_sum`).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.down = stride != 1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=0 if self.down else 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(zero_extended_sum(y, shortcut))


class DlibResNet(nn.Module):
    """128-D face descriptor of dlib; input RGB [0, 1] at 150x150, output NOT L2-normalised.

    Built with default-initialised weights; use `load_dlib_resnet` for dlib's trained ones.
    Two descriptors belong to the same person when their Euclidean distance is < `threshold`.
    """

    input_size: int = 150
    embedding_dim: int = 128
    metric: str = "euclidean"
    threshold: float = 0.6

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(DLIB_MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1)
        )
        self.stem = nn.Conv2d(3, 32, 7, 2, padding=0)
        self.blocks = nn.Sequential(*(DlibBlock(i, o, s) for i, o, s in BLOCKS))
        self.fc = nn.Linear(256, 128, bias=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """dlib's input_rgb_image_sized: (pixel_0_255 - mean) / 256 (not /255, not ImageNet)."""
        return (x * 255.0 - self.mean) / 256.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 150, 150) RGB in [0, 1] -> (N, 128) descriptors, as dlib computes them."""
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (150, 150):
            # dlib's input layer only takes 150x150 chips; other sizes would run but mean nothing.
            raise ValueError(
                f"expected (N, 3, 150, 150) RGB face chips, got shape {tuple(x.shape)}"
            )
        h = self.normalize(x)
        if _wants_channels_last(h):
            h = _ChannelsLast.apply(h)
        h = F.relu(self.stem(h))
        h = F.max_pool2d(h, 3, 2)
        h = self.blocks(h)
        return self.fc(h.mean(dim=(2, 3)))

    def load_network(self, network: DlibNetwork) -> None:
        """Copy weights from a parsed .dat, folding each affine into the conv before it."""
        layers = list(network.layers)
        convs = [self.stem] + [c for b in self.blocks for c in (b.conv1, b.conv2)]
        fused: list[tuple[np.ndarray, np.ndarray]] = []
        geometry: list[tuple[tuple[int, int], tuple[int, int]]] = []
        fc_weight: np.ndarray | None = None
        for index, layer in enumerate(layers):
            if isinstance(layer, ConvRecord):
                following = layers[index + 1] if index + 1 < len(layers) else None
                if not isinstance(following, AffineRecord):
                    raise CheckpointError(
                        f"conv layer {index} is not followed by an affine layer",
                        path=network.path,
                        fix="load the dlib_face_recognition_resnet_model_v1.dat "
                        "file through advface.models.dlib_format.read_dlib_network",
                    )
                fused.append(_fold_affine(layer, following))
                geometry.append((layer.stride, layer.padding))
            elif isinstance(layer, FcRecord):
                fc_weight = layer.weight
            elif not isinstance(layer, AffineRecord | PoolRecord | ReluRecord | AddPrevRecord):
                raise TypeError(f"unknown layer record {type(layer).__name__}")
        if len(fused) != len(convs) or fc_weight is None:
            raise CheckpointError(
                f"expected {len(convs)} conv layers and one fc, found {len(fused)}",
                path=network.path,
                fix="use dlib_face_recognition_resnet_model_v1.dat",
            )
        with torch.no_grad():
            for conv, (weight, bias), (stride, padding) in zip(convs, fused, geometry, strict=True):
                want = (tuple(conv.weight.shape), tuple(conv.stride), tuple(conv.padding))
                if (weight.shape, stride, padding) != want:
                    raise CheckpointError(
                        f"conv (shape, stride, padding) {(weight.shape, stride, padding)}, "
                        f"expected {want}",
                        path=network.path,
                        fix="use dlib_face_recognition_resnet_model_v1.dat",
                    )
                conv.weight.copy_(torch.from_numpy(weight))
                conv.bias.copy_(torch.from_numpy(bias))
            self.fc.weight.copy_(torch.from_numpy(fc_weight))
            self.mean.copy_(
                torch.tensor(network.input.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)
            )
        # Stored as float32 (0.6000000238...): round back to the value dlib was configured with.
        self.threshold = round(network.loss.distance_threshold, 6)


def _fold_affine(conv: ConvRecord, affine: AffineRecord) -> tuple[np.ndarray, np.ndarray]:
    """gamma * (W x + b) + beta == (gamma W) x + (gamma b + beta); computed in float64."""
    gamma = affine.gamma.astype(np.float64)
    weight = conv.weight.astype(np.float64) * gamma[:, None, None, None]
    bias = conv.bias.astype(np.float64) * gamma + affine.beta.astype(np.float64)
    return weight.astype(np.float32), bias.astype(np.float32)


def load_dlib_resnet(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    trainable: bool = False,
) -> DlibResNet:
    """dlib's trained descriptor in eval mode (default: the packaged, sha256-checked .dat).

    Input gradients stay enabled on purpose (attacks differentiate w.r.t. the pixels); wrap plain
    embedding in `torch.no_grad()`. The weights are frozen unless `trainable`, so an attack's
    `loss.backward()` neither spends time on nor accumulates weight gradients.
    """
    model = DlibResNet()
    model.load_network(read_dlib_network(path))
    model.requires_grad_(trainable)
    return model.to(device).eval()


__all__ = [
    "BLOCKS",
    "DlibBlock",
    "DlibResNet",
    "LayerRecord",
    "load_dlib_resnet",
    "zero_extended_sum",
]
