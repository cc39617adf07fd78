"""AdHocNet: conventions (shapes, [0,1] 150px input, normalised embedding), heads, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from advface.errors import CheckpointError
from advface.models.adhoc import AdHocArch, AdHocNet, load_adhoc, save_adhoc

NAMES = ["Ann", "Bob", "Cid"]


def tiny(head: str = "cosface", **kw) -> AdHocNet:
    torch.manual_seed(0)
    arch = AdHocArch(n_classes=3, head=head, widths=(4, 8), blocks=(1, 1), internal_size=16,
                     embedding_dim=8, scale=16.0, **kw)
    return AdHocNet(arch, NAMES if head != "none" else []).eval()


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 150, 150, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("head", ["softmax", "cosface", "arcface"])
def test_shapes_attributes_and_normalised_embedding(head: str) -> None:
    m = tiny(head)
    x = images(3)
    emb = m(x)
    assert emb.shape == (3, 8) and m.embedding_dim == 8 and m.input_size == 150
    assert m.metric == "cosine" and m.class_names == NAMES
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert m.logits(x).shape == (3, 3)


def test_margin_head_inference_logits_are_scale_times_cosine() -> None:
    m = tiny("cosface")
    x = images()
    w = F.normalize(m.head.weight, dim=1)
    assert torch.allclose(m.logits(x), 16.0 * m(x) @ w.T, atol=1e-5)


def test_siamese_model_has_no_logits() -> None:
    m = tiny("none")
    assert not hasattr(m, "logits")
    assert m(images()).shape == (2, 8)


def test_pooled_input_gives_the_same_function() -> None:
    m = tiny()
    x = images()
    assert torch.allclose(m(x), m(F.adaptive_avg_pool2d(x, 16)), atol=1e-6)


def test_gradient_reaches_the_pixels() -> None:
    m = tiny()
    x = images().requires_grad_(True)
    m.logits(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_save_load_round_trip_gives_identical_outputs(tmp_path) -> None:
    m = tiny("arcface", dropout=0.1)
    x = images()
    path = save_adhoc(m, tmp_path / "m.safetensors", loss={"kind": "arcface"},
                      training={"epochs": 3})
    loaded = load_adhoc(path)
    assert not loaded.training
    assert loaded.arch == m.arch and loaded.class_names == NAMES
    assert loaded.metadata == {"loss": {"kind": "arcface"}, "training": {"epochs": 3}}
    assert torch.equal(loaded(x), m(x)) and torch.equal(loaded.logits(x), m.logits(x))
    # a directory means dir/model.safetensors
    save_adhoc(loaded, tmp_path / "run")
    assert torch.equal(load_adhoc(tmp_path / "run").logits(x), m.logits(x))
    assert torch.equal(load_adhoc(tmp_path / "m.json")(x), m(x))  # the sidecar path works too
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["input_size"] == 150 and sidecar["class_names"] == NAMES


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path) -> None:
    path = save_adhoc(tiny(), tmp_path / "m.safetensors")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        load_adhoc(path)
    path.write_bytes(good)
    sidecar = tmp_path / "m.json"
    meta = json.loads(sidecar.read_text())
    meta["architecture"]["embedding_dim"] = 16  # weights no longer fit
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        load_adhoc(path)
    sidecar.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_adhoc(path)
    sidecar.unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_adhoc(path)
    with pytest.raises(CheckpointError):
        load_adhoc(tmp_path / "missing")


def test_unreadable_safetensors_with_matching_checksum_is_refused(tmp_path) -> None:
    import hashlib

    path = save_adhoc(tiny(), tmp_path / "m.safetensors")
    path.write_bytes(b"\x00" * 64)  # garbage, with a sidecar that vouches for it
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_adhoc(path)


def test_diverged_weights_and_ambiguous_class_names_are_refused(tmp_path) -> None:
    """A checkpoint saved after training diverged (NaN weights) is refused when loaded, not
    when its first score fails to rank; class names must name the classes unambiguously."""
    net = tiny()
    with torch.no_grad():
        next(net.parameters())[0].fill_(float("nan"))
    path = save_adhoc(net, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_adhoc(path)
    good = save_adhoc(tiny(), tmp_path / "m.safetensors")
    sidecar = tmp_path / "m.json"
    meta = json.loads(sidecar.read_text())
    for names in (["Ann", "Ann", "Cid"], [1, 2, 3]):
        meta["class_names"] = names
        sidecar.write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="distinct strings"):
            load_adhoc(good)


def test_pointwise_conv_is_a_strided_1x1_conv() -> None:
    """The shortcut's subsample-then-1x1 conv equals nn.Conv2d(k=1, stride) on odd and even
    sizes, with the same parameter names (old checkpoints load), in either memory format."""
    from torch import nn

    from advface.models.adhoc import PointwiseConv

    torch.manual_seed(0)
    for stride in (1, 2):
        ref = nn.Conv2d(4, 8, 1, stride, bias=False)
        ours = PointwiseConv(4, 8, stride)
        ours.load_state_dict(ref.state_dict())
        for size in (15, 16):
            x = torch.rand(3, 4, size, size)
            assert torch.allclose(ours(x), ref(x), atol=1e-6)
            xc = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
            ours(xc).sum().backward()
            assert xc.grad is not None and torch.isfinite(xc.grad).all()
