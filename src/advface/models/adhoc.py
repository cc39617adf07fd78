"""AdHocNet: a small residual CNN trained from scratch on LFW (the "ad-hoc classifier C").

Why this shape: it must train to a useful closed-set identifier in ~20 minutes on two CPU cores,
and it must accept exactly the 150x150 images the pretrained dlib model consumes, so that
transfer attacks can move images between the two models. It therefore takes ``(N, 3, 150, 150)``
in ``[0, 1]`` and down-samples *inside* ``forward`` (area averaging, differentiable, so attack
gradients flow back to the 150x150 pixels) to a small internal resolution (64 px by default)
before a batch-normalised residual trunk.

The trunk ends in a global depthwise convolution (GDC, as in MobileFaceNet) rather than global
average pooling: a face is aligned, so *where* a feature appears carries identity information
that average pooling would throw away, while a full flatten+linear layer would need far more
parameters than ~3k training images can support.

Heads: ``softmax`` (a linear layer on the raw embedding), ``cosface``/``arcface`` (cosine
similarity to one learned unit vector per identity, scaled by ``scale``; the margin is applied
only by the training loss, so inference logits are ``scale * cos``) and ``none`` (an embedding
network trained with a siamese contrastive loss: no ``logits``, identified by gallery nearest
neighbour). ``forward`` always returns the L2-normalised embedding and ``metric`` is ``"cosine"``.

Checkpoints are safetensors plus a JSON sidecar (architecture, class names, loss, training
metadata, SHA-256 of the weights); :func:`load_adhoc` never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from advface.errors import CheckpointError

FORMAT = "advface-adhoc"
FORMAT_VERSION = 1
HEADS = ("softmax", "cosface", "arcface", "none")
MARGIN_HEADS = ("cosface", "arcface")
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class AdHocArch:
    """Every hyper-parameter needed to rebuild the network; stored in the checkpoint sidecar."""

    n_classes: int
    head: str = "cosface"
    widths: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (1, 2, 2)
    internal_size: int = 64
    embedding_dim: int = 128
    scale: float = 30.0
    dropout: float = 0.0
    input_size: int = 150

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError("widths and blocks must be non-empty and of equal length")
        if any(w < 1 for w in self.widths) or any(b < 1 for b in self.blocks):
            raise ValueError("every width and block count must be >= 1")
        if self.head != "none" and self.n_classes < 2:
            raise ValueError(f"a classification head needs >= 2 classes, got {self.n_classes}")
        reduction = 2 ** len(self.widths)
        if self.internal_size % reduction:
            raise ValueError(
                f"internal_size {self.internal_size} must be divisible by 2**len(widths) = "
                f"{reduction} (each stage halves the resolution)"
            )
        if self.embedding_dim < 2 or self.scale <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("embedding_dim >= 2, scale > 0 and 0 <= dropout < 1 are required")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AdHocArch:
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        d["blocks"] = tuple(d["blocks"])
        return cls(**d)


class PointwiseConv(nn.Conv2d):
    """1x1 convolution whose stride is applied by subsampling first.

    Same function and parameters as ``nn.Conv2d(cin, cout, 1, stride)`` (a 1x1 kernel with no
    padding only reads every ``stride``-th pixel), but it never reaches oneDNN's strided 1x1
    backward kernel, which corrupts the heap on channels_last input with few (4) input channels
    on torch 2.13 CPU (seen on AMD EPYC: "corrupted double-linked list" in ``loss.backward``).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sy, sx = self.stride
        if sy > 1 or sx > 1:
            x = x[:, :, ::sy, ::sx]
        return F.conv2d(x, self.weight, self.bias)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN; a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                PointwiseConv(cin, cout, stride), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CosineHead(nn.Module):
    """Cosine similarity between the embedding and one learned unit vector per class."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


class AdHocNet(nn.Module):
    """Small residual face CNN: 150x150 images in [0, 1] -> L2-normalised embeddings.

    ``logits(x)`` gives per-class scores (``scale * cos`` for margin heads, the linear layer's
    output for ``softmax``); a model with ``head == "none"`` has no ``logits`` attribute at all
    (``hasattr(model, "logits")`` is False), so code that picks the softmax decision when
    available falls back to gallery nearest neighbour.
    """

    metric = "cosine"

    def __init__(self, arch: AdHocArch, class_names: Sequence[str] | None = None):
        super().__init__()
        names = list(class_names) if class_names is not None else []
        if arch.head != "none" and len(names) != arch.n_classes:
            raise ValueError(f"expected {arch.n_classes} class names, got {len(names)}")
        if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            # a decision is reported by name: two classes with one name, or a number, would
            # make it ambiguous
            raise ValueError("class names must be distinct strings")
        self.arch = arch
        self.class_names: list[str] = names
        self.input_size: int = arch.input_size
        self.embedding_dim: int = arch.embedding_dim
        self.metadata: dict[str, Any] = {}

        w0 = arch.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        cin = w0
        for width, n_blocks in zip(arch.widths, arch.blocks, strict=True):
            for i in range(n_blocks):
                layers.append(BasicBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.trunk = nn.Sequential(*layers)
        side = arch.internal_size // 2 ** len(arch.widths)
        # Global depthwise conv: one learned spatial weighting per channel (keeps "where").
        self.gdc = nn.Sequential(nn.Conv2d(cin, cin, side, groups=cin, bias=False),
                                 nn.BatchNorm2d(cin))
        self.dropout = nn.Dropout(arch.dropout)
        self.fc = nn.Linear(cin, arch.embedding_dim, bias=False)
        self.bn_emb = nn.BatchNorm1d(arch.embedding_dim)
        self.head: nn.Module | None
        if arch.head == "softmax":
            self.head = nn.Linear(arch.embedding_dim, arch.n_classes)
        elif arch.head in MARGIN_HEADS:
            self.head = CosineHead(arch.embedding_dim, arch.n_classes)
        else:
            self.head = None

    @property
    def n_classes(self) -> int:
        return self.arch.n_classes if self.head is not None else 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) embedding; the training losses use it with the head."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(x.shape)}")
        size = self.arch.internal_size
        if x.shape[-2:] != (size, size):
            # Area averaging: anti-aliased and differentiable, gradients reach every pixel.
            x = F.adaptive_avg_pool2d(x, size)
        x = (x - 0.5) / 0.5
        x = self.trunk(self.stem(x))
        x = self.gdc(x).flatten(1)
        return self.bn_emb(self.fc(self.dropout(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1)

    def head_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """What the training loss consumes: logits (softmax head) or cosines (margin heads)."""
        if self.head is None:
            raise RuntimeError("this AdHocNet has no classification head (head='none')")
        return self.head(features)

    def scores_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Inference logits from raw features: linear output, or ``scale * cos`` (no margin)."""
        out = self.head_outputs(features)
        return out * self.arch.scale if self.arch.head in MARGIN_HEADS else out

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores_from_features(self.features(x))

    @property
    def logits(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``logits(x) -> (N, n_classes)``; absent (AttributeError) for ``head == "none"``."""
        if self.head is None:
            raise AttributeError("AdHocNet with head='none' (siamese) has no logits")
        return self._logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- checkpoints


def _paths(path: str | Path) -> tuple[Path, Path]:
    """A directory means ``dir/model.safetensors``; the sidecar is the same name with ``.json``
    (either file of the pair may be given)."""
    p = Path(path)
    if p.is_dir() or p.suffix == "":
        p = p / WEIGHTS_NAME
    elif p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    return p, p.with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename so that an interrupted write never leaves a half file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors ``save_file`` to a temporary name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_adhoc(
    model: AdHocNet,
    path: str | Path,
    *,
    loss: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Save weights (safetensors) and a JSON sidecar; returns the weights path.

    ``loss`` and ``training`` (hyper-parameters, history summary, data split hash...) default to
    what is in ``model.metadata``, so a loaded model saves back unchanged.
    """
    weights, sidecar = _paths(path)
    atomic_save_tensors(model.state_dict(), weights)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.arch.to_json(),
        "class_names": list(model.class_names),
        "input_size": model.input_size,
        "embedding_dim": model.embedding_dim,
        "metric": model.metric,
        "n_params": count_parameters(model),
        "loss": loss if loss is not None else model.metadata.get("loss"),
        "training": training if training is not None else model.metadata.get("training"),
        "weights_file": weights.name,
        "weights_sha256": _sha256(weights),
    }
    atomic_write_bytes(sidecar, json.dumps(meta, indent=2).encode())
    return weights


def load_adhoc(path: str | Path) -> AdHocNet:
    """Rebuild an :class:`AdHocNet` from :func:`save_adhoc` output, in eval mode.

    Refuses (``CheckpointError``) a missing file or sidecar, a sidecar of another format, weights
    whose SHA-256 differs from the sidecar (truncated or altered), unreadable safetensors, and
    tensors whose names or shapes do not match the architecture.
    """
    weights, sidecar = _paths(path)
    if not sidecar.is_file():
        raise CheckpointError(
            "ad-hoc model sidecar (JSON) not found", path=sidecar,
            fix="pass the directory or .safetensors file written by `advface train adhoc`",
        )
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"unreadable model sidecar ({err})", path=sidecar,
                              fix="re-save or retrain the model") from err
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != FORMAT:
        raise CheckpointError(
            f"not an advface ad-hoc model sidecar (format={fmt!r})",
            path=sidecar, fix="load it with the loader of its own model type",
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"unsupported ad-hoc model format version {meta.get('format_version')!r}",
            path=sidecar, fix=f"this advface reads version {FORMAT_VERSION}; retrain the model",
        )
    if not weights.is_file():
        raise CheckpointError("ad-hoc model weights not found", path=weights,
                              fix="copy the .safetensors file next to its .json sidecar")
    if _sha256(weights) != meta.get("weights_sha256"):
        raise CheckpointError(
            "model weights do not match the checksum in their sidecar (corrupt or replaced)",
            path=weights, fix="re-copy the checkpoint or retrain the model",
        )
    try:
        arch = AdHocArch.from_json(meta["architecture"])
        model = AdHocNet(arch, meta.get("class_names") or [])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"invalid architecture in sidecar ({err})", path=sidecar,
                              fix="retrain the model with this advface version") from err
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"unreadable safetensors file ({err})", path=weights,
                              fix="re-copy the checkpoint or retrain the model") from err
    load_state_checked(model, state, weights)
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(
        torch.isfinite(v).all()))
    if bad:  # a diverged training run saved: every score would be NaN, and fail much later
        raise CheckpointError(f"the weights hold NaN or infinite values (e.g. {bad[:3]})",
                              path=weights, fix="retrain the model (training diverged: lower "
                              "the learning rate), or load an earlier checkpoint")
    model.metadata = {"loss": meta.get("loss"), "training": meta.get("training")}
    return model.eval()


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict`` that turns a name/shape mismatch into a CheckpointError."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or extra or wrong:
        raise CheckpointError(
            f"weights do not match the architecture (missing {missing[:3]}, unexpected "
            f"{extra[:3]}, wrong shape {wrong[:3]})",
            path=path, fix="the sidecar and weights belong to different models; retrain",
        )
    model.load_state_dict(state)

