"""Model registry: names and file suffixes pick the right loader; unknown ones are refused."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from advface.errors import CheckpointError
from advface.models import registry
from advface.models.dlib_format import dlib_model_path
from advface.models.dlib_resnet import DlibResNet
from advface.models.onnx_loader import OnnxFaceModel
from advface.models.registry import available_models, load_face_model, register_model


def test_dlib_by_name_and_by_file() -> None:
    by_name = load_face_model("dlib")
    by_file = load_face_model(dlib_model_path())
    assert isinstance(by_name, DlibResNet) and isinstance(by_file, DlibResNet)
    x = torch.rand(1, 3, 150, 150)
    with torch.no_grad():
        torch.testing.assert_close(by_name(x), by_file(x))
    assert "dlib" in available_models()


def test_onnx_by_suffix(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    path = tmp_path / "user_model.ONNX"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.rand(1, 3, 16, 16),),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
            opset_version=17,
        )
    model = load_face_model(path, input_size=16, metric="euclidean")
    assert isinstance(model, OnnxFaceModel)
    assert (model.embedding_dim, model.metric) == (4, "euclidean")


def test_registering_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "MODEL_LOADERS", dict(registry.MODEL_LOADERS))
    register_model("tiny", lambda width=2: nn.Linear(3, width))
    model = load_face_model("tiny", width=5)
    assert isinstance(model, nn.Linear) and model.out_features == 5
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny", nn.Identity)
    register_model("tiny", "torch.nn:Identity", replace=True)  # lazy "module:attr" form
    assert isinstance(load_face_model("tiny"), nn.Identity)


def test_unknown_model_refused() -> None:
    with pytest.raises(CheckpointError, match="unknown face model 'resnet9000'") as info:
        load_face_model("resnet9000")
    assert "dlib" in (info.value.fix or "")
    with pytest.raises(CheckpointError, match=r"\.onnx"):
        load_face_model("weights.pt")


def test_registry_loads_an_adhoc_checkpoint_by_path(tmp_path) -> None:
    import torch

    from advface.models.adhoc import AdHocArch, AdHocNet, save_adhoc
    from advface.models.registry import load_face_model

    torch.manual_seed(0)
    net = AdHocNet(AdHocArch(n_classes=3, widths=(8,), blocks=(1,), internal_size=16,
                             embedding_dim=8), class_names=["a", "b", "c"]).eval()
    weights = save_adhoc(net, tmp_path / "m")
    loaded = load_face_model(weights)
    x = torch.rand(2, 3, 150, 150)
    assert torch.equal(loaded(x), net(x))
