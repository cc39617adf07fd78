"""Bring your own face model: an ONNX export wrapped to follow advface's model conventions.

The converted graph receives RGB images in [0, 1] at `input_size`; optional mean/std
normalisation (and an RGB->BGR swap for models trained on OpenCV images) happens inside the
wrapper so gradients flow from the pixels, exactly as for the built-in models.

Conversion uses onnx2torch. It imports torchvision at import time, only for the
NonMaxSuppression and RoiAlign converters, and torchvision is not allowed in this project
(it pins a different torch build). Re-implementing ~60 ONNX ops would be far more code to keep
correct than the problem warrants, so while onnx2torch is imported we register a minimal
stand-in `torchvision` whose `ops.nms` / `ops.roi_align` / `ops.box_convert` raise a clear
NotImplementedError. Face embedding networks never use those two ops; detectors do, and they are
not face models in the sense of this toolkit. The stand-in is removed from `sys.modules` right
after the import, so nothing else can pick it up by accident.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
from torch import nn

from advface.data.download import sha256_file
from advface.errors import CheckpointError

_IMPORT_LOCK = threading.Lock()
_UNSUPPORTED = "ONNX NonMaxSuppression/RoiAlign not supported (advface does not ship torchvision)"
Metric = Literal["cosine", "euclidean"]
SUPPORTED_OPSET = 17  # newest default-domain opset onnx2torch 1.5.15 converts throughout


def _unsupported(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise NotImplementedError(_UNSUPPORTED)


def _stand_in_torchvision() -> dict[str, types.ModuleType]:
    """Just enough of `torchvision` for onnx2torch's imports to succeed."""
    root = types.ModuleType("torchvision", "advface stand-in: torchvision is not available")
    ops = types.ModuleType("torchvision.ops", "advface stand-in: raises NotImplementedError")
    for name in ("nms", "roi_align", "box_convert"):
        setattr(ops, name, _unsupported)
    root.ops = ops  # type: ignore[attr-defined]
    root.__path__ = []  # type: ignore[attr-defined]  # mark as a package for `from x.y import`
    return {"torchvision": root, "torchvision.ops": ops}


def import_onnx2torch_convert() -> Callable[..., nn.Module]:
    """`onnx2torch.convert`, imported with the torchvision stand-in in place only meanwhile."""
    with _IMPORT_LOCK:
        if "onnx2torch" in sys.modules:
            return sys.modules["onnx2torch"].convert  # type: ignore[no-any-return]
        stand_ins = {k: v for k, v in _stand_in_torchvision().items() if k not in sys.modules}
        sys.modules.update(stand_ins)
        try:
            module = importlib.import_module("onnx2torch")
        except ImportError as exc:
            raise CheckpointError(
                f"cannot import onnx2torch: {exc}",
                fix="pip install --no-deps onnx2torch==1.5.15 (see scripts/setup.sh)",
            ) from exc
        finally:
            for name, stand_in in stand_ins.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]
        return module.convert  # type: ignore[no-any-return]


def _channel_vector(value: float | Sequence[float] | None, name: str) -> torch.Tensor | None:
    if value is None:
        return None
    values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{name} must be one number or three (R, G, B), got {value!r}")
    if name == "std" and any(v <= 0 for v in values):
        raise ValueError(f"std must be positive, got {value!r}")
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


class OnnxFaceModel(nn.Module):
    """A converted ONNX graph behind the advface face-model interface.

    forward: (N, 3, input_size, input_size) RGB in [0, 1] -> (N, embedding_dim).
    """

    def __init__(
        self,
        graph: nn.Module,
        *,
        input_size: int,
        embedding_dim: int,
        metric: Metric,
        mean: torch.Tensor | None,
        std: torch.Tensor | None,
        channel_order: Literal["RGB", "BGR"],
        batch_one_only: bool,
        source: Path | None = None,
    ):
        super().__init__()
        self.graph = graph
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        self.metric = metric
        self.channel_order = channel_order
        self.batch_one_only = batch_one_only
        self.source = source
        self.register_buffer("mean", mean if mean is not None else torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", std if std is not None else torch.ones(1, 3, 1, 1))
        # The state dict holds the graph's weights, not its operations, nor the channel order:
        # both change the embeddings, so both enter every fingerprint (embedding cache, runs).
        graph_id = sha256_file(source)[:16] if source is not None else "no-file"
        self.cache_identity = f"onnx:{graph_id}|{channel_order}"

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise [0, 1] RGB into what the exported graph expects."""
        x = (x - self.mean) / self.std
        return x.flip(1) if self.channel_order == "BGR" else x

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.graph(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return out.reshape(out.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got shape {tuple(x.shape)}")
        x = self.preprocess(x)
        if self.batch_one_only and x.shape[0] != 1:
            # The export fixed the batch size to 1: no way around running images one by one.
            return torch.cat([self._run(x[i : i + 1]) for i in range(x.shape[0])])
        return self._run(x)


def _load_proto(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise CheckpointError(
            "ONNX model file not found", path=path, fix="check the path of the .onnx file"
        )
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError, ...
        raise CheckpointError(
            f"not a valid ONNX model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            path=path,
            fix="re-export the model with torch.onnx.export (or check the download)",
        ) from None
    if len(proto.graph.output) < 1:
        raise CheckpointError("ONNX model has no outputs", path=path, fix="re-export the model")
    return proto


def declared_input_size(proto: Any, path: Path) -> int:
    """The side of the square NCHW input the graph declares (static height == width)."""
    initialisers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initialisers]
    dims = []
    if inputs:
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[1] == 3 and dims[2] and dims[2] == dims[3]:
        return int(dims[2])
    raise CheckpointError(
        f"the ONNX graph does not declare a square NCHW input size (input shape {dims})",
        path=path, fix="give the size it was exported with: input_size in the config's "
        "model entry, or load_onnx_model(path, input_size=112)")


def _default_opset(proto: Any) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


# Operators whose versions after 17 only added element types (bfloat16 in opset 22 for the
# layers; float8/int4/float4 for the tensor plumbing), per the ONNX operator changelog.
_TYPE_ONLY_CHANGES = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "MaxPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "InstanceNormalization",
        "LpNormalization",
        "Dropout",
        "Elu",
        "Selu",
        "HardSigmoid",
        "HardSwish",
        "Softplus",
        "Constant",
        "ConstantOfShape",
        "Reshape",
        "Shape",
        "Size",
        "Identity",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Equal",
    }
)
_REDUCE_OPS = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
    }
)


def _constants(model: Any) -> dict[str, Any]:
    """Initializers and Constant-node outputs by name, as numpy arrays."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _drop_attribute(node: Any, name: str) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


def tidy_for_onnx2torch(proto: Any) -> Any:
    """A copy of `proto` rewritten into equivalent forms onnx2torch 1.5.15 accepts.

    - Trailing empty optional inputs ("") mean "absent" in ONNX, but onnx2torch looks them up
      as constants and fails (e.g. `Clip(x, min, "")` that torch writes for F.normalize).
    - Reshape `allowzero=1` only matters when the target shape contains a 0; with a constant
      shape without zeros (what exporters write) it is dropped.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    constants = _constants(model)
    for node in model.graph.node:
        while node.input and node.input[-1] == "":
            del node.input[-1]
        if node.op_type == "Reshape" and any(
            a.name == "allowzero" and a.i == 1 for a in node.attribute
        ):
            shape = constants.get(node.input[1]) if len(node.input) > 1 else None
            if shape is not None and not (shape == 0).any():
                _drop_attribute(node, "allowzero")
    return model


def relabel_to_opset(proto: Any, target: int) -> Any | None:
    """A copy of `proto` declared at opset `target`, or None if some node cannot be expressed there.

    onnx's own version converter has no down-adapter for several ops that exporters emit at
    opset 18+ (e.g. Pad-18/19), although for typical use the older form means the same thing.
    Nodes whose operator did not change between `target` and the model's opset are kept, as are
    those whose later versions only added element types; Pad (without `axes` input or "wrap"
    mode), AveragePool (without dilations), Cast (dropping the float8-only `saturate`) and the
    Reduce ops (constant `axes` input moved back to the attribute) are rewritten; anything else
    returns None.
    """
    import onnx
    from onnx import defs, helper

    opset = _default_opset(proto)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    constants = _constants(model)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            since = defs.get_schema(node.op_type, max_inclusive_version=opset).since_version
        except defs.SchemaError:
            return None
        if since <= target:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in _TYPE_ONLY_CHANGES:
            continue
        if node.op_type == "Cast":  # `saturate` (19) only concerns float8 targets
            _drop_attribute(node, "saturate")
            continue
        if node.op_type == "Pad":
            mode = attrs.get("mode", b"constant")
            if len(node.input) > 3 or mode not in (b"constant", b"reflect", b"edge"):
                return None
        elif node.op_type == "AveragePool":
            if any(d != 1 for d in attrs.get("dilations", [])):
                return None
            _drop_attribute(node, "dilations")
        elif node.op_type in _REDUCE_OPS:
            if attrs.get("noop_with_empty_axes", 0):
                return None
            if len(node.input) > 1 and node.input[1]:
                if node.input[1] not in constants:
                    return None  # axes computed at run time: no attribute form
                axes = [int(a) for a in constants[node.input[1]].reshape(-1)]
                del node.input[1:]
                node.attribute.append(helper.make_attribute("axes", axes))
            _drop_attribute(node, "noop_with_empty_axes")
        else:
            return None
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    return model


def _convert(proto: Any, path: Path) -> nn.Module:
    """onnx2torch conversion; a newer opset is first brought down to one it knows.

    onnx2torch 1.5.15 has converters up to about opset 17 (e.g. no Constant-19, ReduceMean-18),
    while current exporters write 18 and later. `relabel_to_opset` handles the operators
    embedding networks use; onnx's version converter is the fallback for anything else.
    """
    import onnx.version_converter

    convert = import_onnx2torch_convert()
    proto = tidy_for_onnx2torch(proto)
    try:
        return convert(proto)
    except NotImplementedError as exc:
        first_error: Exception = exc
    except Exception as exc:
        raise CheckpointError(
            f"ONNX model could not be converted: {type(exc).__name__}: {exc}",
            path=path,
            fix="re-export the model with torch.onnx.export",
        ) from None
    opset = _default_opset(proto)
    if opset > SUPPORTED_OPSET:
        try:
            downgraded = relabel_to_opset(proto, SUPPORTED_OPSET)
            if downgraded is None:  # an op we cannot relabel: let onnx try its adapters
                downgraded = onnx.version_converter.convert_version(proto, SUPPORTED_OPSET)
            return convert(downgraded)
        except Exception as exc:  # report both: the original op and why down-conversion failed
            first_error = NotImplementedError(f"{first_error}; at opset {SUPPORTED_OPSET}: {exc}")
    raise CheckpointError(
        f"ONNX model (opset {opset}) uses an operation advface cannot convert: {first_error}",
        path=path,
        fix=f"export a plain embedding network (no detection post-processing), "
        f"with opset_version={SUPPORTED_OPSET}",
    ) from None


def _probe(graph: nn.Module, input_size: int, path: Path) -> tuple[int, bool]:
    """Run the graph once to learn the embedding size and whether it accepts batches > 1."""

    def run(n: int) -> torch.Tensor:
        with torch.no_grad():
            out = graph(torch.full((n, 3, input_size, input_size), 0.5))
        if isinstance(out, list | tuple):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != n:
            raise ValueError(f"output {getattr(out, 'shape', type(out))} is not (N, D)")
        return out.reshape(n, -1)

    try:
        return run(2).shape[1], False
    except Exception:  # fixed-batch exports fail in many ways: retry with batch 1
        pass
    try:
        return run(1).shape[1], True
    except Exception as exc:
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise CheckpointError(
            f"ONNX model does not map (N, 3, {input_size}, {input_size}) images to (N, D) "
            f"embeddings: {type(exc).__name__}: {detail}",
            path=path,
            fix="pass the input_size the model was exported with; the graph must take NCHW input",
        ) from None


def load_onnx_model(
    path: str | Path,
    *,
    input_size: int | None = None,
    metric: Metric = "cosine",
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    channel_order: Literal["RGB", "BGR"] = "RGB",
) -> OnnxFaceModel:
    """Load an ONNX face embedder as an advface model (eval mode, on CPU).

    `mean`/`std` are in [0, 1] pixel units, applied as `(x - mean) / std` before the graph:
    an export expecting `(pixel - 127.5) / 127.5` (InsightFace ArcFace) takes mean=0.5, std=0.5.
    `channel_order="BGR"` swaps channels after normalisation for models trained on BGR input.
    `input_size` defaults to the square input the graph declares (an error names the file
    when it declares none, e.g. a dynamic-size export).
    """
    if input_size is not None and input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    mean_t, std_t = _channel_vector(mean, "mean"), _channel_vector(std, "std")
    file = Path(path)
    proto = _load_proto(file)
    if input_size is None:
        input_size = declared_input_size(proto, file)
    graph = _convert(proto, file)
    graph.eval()
    embedding_dim, batch_one_only = _probe(graph, input_size, file)
    model = OnnxFaceModel(
        graph,
        input_size=input_size,
        embedding_dim=embedding_dim,
        metric=metric,
        mean=mean_t,
        std=std_t,
        channel_order=channel_order,
        batch_one_only=batch_one_only,
        source=file,
    )
    return model.eval()


__all__ = ["OnnxFaceModel", "import_onnx2torch_convert", "load_onnx_model"]
