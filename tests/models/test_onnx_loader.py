"""ONNX loader: round trips through torch.onnx.export, preprocessing, opset handling, refusals."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from advface.errors import CheckpointError
from advface.models.dlib_resnet import load_dlib_resnet
from advface.models.onnx_loader import (
    OnnxFaceModel,
    import_onnx2torch_convert,
    load_onnx_model,
    relabel_to_opset,
)


class SmallNet(nn.Module):
    """A tiny embedder with the layers face CNNs use (conv, BN, pooling, linear, L2-norm)."""

    def __init__(self, size: int = 32, fixed_batch: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * (size // 4) ** 2, 16)
        self.fixed_batch = fixed_batch
        with torch.no_grad():  # non-trivial BN statistics
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        h = h.reshape(1, -1) if self.fixed_batch else h.flatten(1)
        return nn.functional.normalize(self.fc(h), dim=1)


def export(
    model: nn.Module,
    path: Path,
    size: int,
    *,
    dynamic: bool = True,
    dynamo: bool = False,
    opset: int | None = None,
) -> Path:
    x = torch.rand(2 if dynamic else 1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation/tracer chatter
        if dynamo:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: torch.export.Dim("n")},),
            )
        else:
            kwargs: dict = {"dynamic_axes": {"x": {0: "n"}, "y": {0: "n"}}} if dynamic else {}
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                opset_version=opset,
                **kwargs,
            )
    return path


def test_small_cnn_round_trip(tmp_path: Path) -> None:
    net = SmallNet().eval()
    wrapped = load_onnx_model(export(net, tmp_path / "small.onnx", 32, opset=17), input_size=32)
    assert isinstance(wrapped, OnnxFaceModel)
    assert (wrapped.input_size, wrapped.embedding_dim, wrapped.metric) == (32, 16, "cosine")
    assert not wrapped.batch_one_only and not wrapped.training
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # in onnx2torch
def test_dlib_round_trip_and_gradients(tmp_path: Path) -> None:
    dlib_net = load_dlib_resnet()
    # The exporter's default opset (newer than onnx2torch knows): exercises relabel_to_opset.
    path = export(dlib_net, tmp_path / "dlib.onnx", 150)
    assert onnx.load(str(path), load_external_data=False).opset_import[0].version > 17
    wrapped = load_onnx_model(path, input_size=150, metric="euclidean")
    assert wrapped.embedding_dim == 128
    x = torch.rand(3, 3, 150, 150)
    with torch.no_grad():
        diff = (wrapped(x) - dlib_net(x)).abs().max().item()
    assert diff < 1e-5, diff
    x.requires_grad_(True)
    wrapped(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dynamo_export_opset18_plus(tmp_path: Path) -> None:
    net = SmallNet().eval()
    path = export(net, tmp_path / "dynamo.onnx", 32, dynamo=True)
    wrapped = load_onnx_model(path, input_size=32)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x), rtol=0, atol=1e-5)


def test_preprocessing_inside_wrapper(tmp_path: Path) -> None:
    net = SmallNet().eval()
    path = export(net, tmp_path / "small.onnx", 32, opset=17)
    wrapped = load_onnx_model(
        path, input_size=32, mean=(0.5, 0.4, 0.3), std=0.25, channel_order="BGR"
    )
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net(((x - mean) / 0.25).flip(1))
        torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-5)


def test_fixed_batch_export_runs_image_by_image(tmp_path: Path) -> None:
    net = SmallNet(fixed_batch=True).eval()
    wrapped = load_onnx_model(
        export(net, tmp_path / "b1.onnx", 32, dynamic=False, opset=17), input_size=32
    )
    assert wrapped.batch_one_only
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        want = torch.cat([net(x[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-5)


def test_wrong_input_size_refused(tmp_path: Path) -> None:
    path = export(SmallNet().eval(), tmp_path / "small.onnx", 32, opset=17)
    with pytest.raises(CheckpointError, match="input_size"):
        load_onnx_model(path, input_size=48)


def test_missing_and_malformed_files_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_onnx_model(tmp_path / "absent.onnx", input_size=32)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a valid ONNX model") as info:
        load_onnx_model(garbage, input_size=32)
    assert info.value.path == garbage
    good = export(SmallNet().eval(), tmp_path / "small.onnx", 32, opset=17).read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError):
        load_onnx_model(truncated, input_size=32)


def test_unsupported_operator_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Shrink", ["x"], ["s"]),
            helper.make_node("GlobalAveragePool", ["s"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        "shrink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    path = tmp_path / "shrink.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(CheckpointError, match="Shrink"):
        load_onnx_model(path, input_size=8)


def test_relabel_refuses_what_it_cannot_express() -> None:
    def model(node: onnx.NodeProto, opset: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            [node],
            "g",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
                helper.make_tensor_value_info("axes", TensorProto.INT64, [1]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    # ReduceMean-18 with run-time axes has no opset-17 form.
    assert (
        relabel_to_opset(model(helper.make_node("ReduceMean", ["x", "axes"], ["y"]), 18), 17)
        is None
    )
    # Pad-19 "wrap" mode did not exist before.
    wrap = helper.make_node("Pad", ["x", "axes"], ["y"], mode="wrap")
    assert relabel_to_opset(model(wrap, 19), 17) is None
    # Constant axes: moved into the attribute.
    const = helper.make_tensor("axes_c", TensorProto.INT64, [2], [2, 3])
    m = model(helper.make_node("ReduceMean", ["x", "axes_c"], ["y"]), 18)
    m.graph.initializer.append(const)
    out = relabel_to_opset(m, 17)
    assert out is not None and out.opset_import[0].version == 17
    node = out.graph.node[0]
    assert list(node.input) == ["x"] and helper.get_attribute_value(node.attribute[0]) == [2, 3]


def test_torchvision_stand_in_is_temporary() -> None:
    import_onnx2torch_convert()
    assert "torchvision" not in sys.modules
    from onnx2torch.node_converters import nms, roialign

    with pytest.raises(NotImplementedError, match="NonMaxSuppression/RoiAlign not supported"):
        nms.torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    with pytest.raises(NotImplementedError, match="not supported"):
        roialign.roi_align(torch.zeros(1, 1, 2, 2), torch.zeros(1, 5), 1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="metric"):
        load_onnx_model("x.onnx", input_size=112, metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std"):
        load_onnx_model("x.onnx", input_size=112, std=0)
    with pytest.raises(ValueError, match="three"):
        load_onnx_model("x.onnx", input_size=112, mean=(0.5, 0.5))


def test_input_size_defaults_to_the_one_the_graph_declares(tmp_path: Path) -> None:
    from advface.models.registry import load_face_model

    path = export(SmallNet().eval(), tmp_path / "small.onnx", 32, opset=17)
    assert load_face_model(path).input_size == 32  # `--model small.onnx` on the CLI
    free = tmp_path / "free.onnx"
    proto = onnx.load(str(path))
    for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "side"
    onnx.save(proto, str(free))
    with pytest.raises(CheckpointError, match="does not declare a square") as err:
        load_onnx_model(free)
    assert "free.onnx" in str(err.value) and "input_size" in str(err.value)
    assert load_onnx_model(free, input_size=32).input_size == 32


class _TanhNet(SmallNet):
    """SmallNet's very weights behind another activation: same state dict, other function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.tanh(self.bn(self.conv(x))), 2)
        return nn.functional.normalize(self.fc(h.flatten(1)), dim=1)


def test_models_that_compute_different_things_never_share_a_fingerprint(tmp_path: Path) -> None:
    """The embedding cache and a run's resume guard are keyed by these fingerprints."""
    from advface.experiments.models import fingerprint
    from advface.identify.embeddings import model_fingerprint

    relu = export(SmallNet().eval(), tmp_path / "relu.onnx", 32, opset=17)
    tanh = export(_TanhNet().eval(), tmp_path / "tanh.onnx", 32, opset=17)
    models = [load_onnx_model(relu), load_onnx_model(relu, channel_order="BGR"),
              load_onnx_model(tanh)]
    assert models[0].state_dict().keys() == models[2].state_dict().keys()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        outs = [m(x) for m in models]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    assert len({model_fingerprint(m) for m in models}) == 3
    assert len({fingerprint(m) for m in models}) == 3
    assert model_fingerprint(load_onnx_model(relu)) == model_fingerprint(models[0])


def test_runs_recorded_before_declared_identities_still_resume(tmp_path: Path) -> None:
    from advface.experiments.models import fingerprint, same_model

    relu = export(SmallNet().eval(), tmp_path / "relu.onnx", 32, opset=17)
    model = load_onnx_model(relu)
    assert fingerprint(model) != fingerprint(model, legacy=True)
    current = fingerprint(model)
    assert same_model(model, current, current)
    assert same_model(model, fingerprint(model, legacy=True), current)
    bgr = load_onnx_model(relu, channel_order="BGR")
    assert not same_model(bgr, current, fingerprint(bgr))


@pytest.mark.parametrize("preprocess", [False, True])
def test_input_gradient_matches_the_source_network(tmp_path: Path, preprocess: bool) -> None:
    """Attacks on an ONNX model step along the converted graph's input gradient, so it must
    be the source network's gradient (including through the wrapper's normalisation and
    channel flip), not merely non-zero."""
    net = SmallNet().eval()
    path = export(net, tmp_path / "small.onnx", 32, opset=17)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    if preprocess:
        wrapped = load_onnx_model(path, input_size=32, mean=(0.5, 0.4, 0.3), std=0.25,
                                  channel_order="BGR")

        def source(x: torch.Tensor) -> torch.Tensor:
            return net(((x - mean) / 0.25).flip(1))
    else:
        wrapped = load_onnx_model(path, input_size=32)
        source = net
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 32, 32, generator=g)
    weights = torch.randn(3, 16, generator=g)  # a generic scalar objective of the embeddings
    grads = []
    for model in (wrapped, source):
        xi = x.clone().requires_grad_(True)
        (model(xi) * weights).sum().backward()
        assert xi.grad is not None
        grads.append(xi.grad)
    onnx_grad, torch_grad = grads
    scale = float(torch_grad.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(onnx_grad, torch_grad, rtol=1e-4, atol=1e-5 * scale)
