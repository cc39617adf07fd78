"""dlib .dat parser: encodings, the packaged file's structure, and refusal of anything else."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from advface.errors import CheckpointError
from advface.models import dlib_format
from advface.models.dlib_format import (
    AddPrevRecord,
    AffineRecord,
    ConvRecord,
    FcRecord,
    PoolRecord,
    ReluRecord,
    _Reader,
    dlib_model_path,
    read_dlib_network,
)


def reader(raw: bytes) -> _Reader:
    return _Reader(raw, Path("test.dat"))


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    return dlib_model_path().read_bytes()


@pytest.fixture(scope="module")
def network() -> dlib_format.DlibNetwork:
    return read_dlib_network()


# ---------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"\x01\x00", 0),
        (b"\x01\x96", 150),
        (b"\x81\x1c", -28),
        (b"\x02\x80\x12", 0x1280),
        (b"\x08" + (2**63 - 1).to_bytes(8, "little"), 2**63 - 1),
    ],
)
def test_integer_encoding(raw: bytes, value: int) -> None:
    r = reader(raw)
    assert r.integer() == value
    assert r.pos == len(raw)


@pytest.mark.parametrize("raw", [b"\x09" + bytes(9), b"\x11\x00", b"\x02\x01"])
def test_integer_encoding_rejects_bad_control_or_truncation(raw: bytes) -> None:
    with pytest.raises(CheckpointError):
        reader(raw).integer()


def test_unsigned_refuses_negative() -> None:
    with pytest.raises(CheckpointError, match="negative"):
        reader(b"\x81\x01").integer(signed=False)


def test_float_encoding_is_mantissa_then_exponent() -> None:
    # The loss margin as written in the file: mantissa 0xa3d70a, exponent -28.
    assert reader(b"\x03\x0a\xd7\xa3\x81\x1c").floating() == pytest.approx(0.04, rel=1e-7)
    assert reader(b"\x01\x03\x81\x01").floating() == 1.5
    assert reader(b"\x81\x05\x01\x00").floating() == -5.0
    assert reader(b"\x01\x01\x02\x00\x7d").floating() == math.inf  # exponent 32000
    assert reader(b"\x01\x01\x02\x01\x7d").floating() == -math.inf
    assert math.isnan(reader(b"\x01\x01\x02\x02\x7d").floating())


def test_old_ascii_float_format_refused() -> None:
    with pytest.raises(CheckpointError, match="ASCII"):
        reader(b"1.5 ").floating()


def test_bool_string_and_tensor_encodings() -> None:
    assert reader(b"1").boolean() is True
    assert reader(b"0").boolean() is False
    with pytest.raises(CheckpointError):
        reader(b"x").boolean()
    assert reader(b"\x01\x05relu_").string() == "relu_"
    empty = b"\x01\x02" + b"\x01\x00" * 4
    dims, values = reader(empty).tensor()
    assert dims == (0, 0, 0, 0) and values.size == 0
    raw = b"\x01\x02\x01\x02\x01\x01\x01\x01\x01\x01" + np.array([1.5, -2.0], "<f4").tobytes()
    dims, values = reader(raw).tensor()
    assert dims == (2, 1, 1, 1)
    np.testing.assert_array_equal(values, [1.5, -2.0])


# ---------------------------------------------------------------------------- the real file


def test_packaged_file_structure(network: dlib_format.DlibNetwork) -> None:
    layers = network.layers
    assert len(layers) == 108
    counts: dict[type, int] = {}
    for layer in layers:
        counts[type(layer)] = counts.get(type(layer), 0) + 1
    assert counts == {
        ConvRecord: 29,
        AffineRecord: 29,
        ReluRecord: 29,
        AddPrevRecord: 14,
        PoolRecord: 6,
        FcRecord: 1,
    }
    n_params = sum(
        layer.weight.size + layer.bias.size
        if isinstance(layer, ConvRecord)
        else layer.gamma.size + layer.beta.size
        if isinstance(layer, AffineRecord)
        else layer.weight.size
        if isinstance(layer, FcRecord)
        else 0
        for layer in layers
    )
    assert n_params == 5_614_592
    assert network.loss.name == "loss_metric_2"
    assert network.loss.distance_threshold == pytest.approx(0.6, abs=1e-6)
    assert network.loss.margin == pytest.approx(0.04, abs=1e-6)
    np.testing.assert_allclose(network.input.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)
    assert (network.input.rows, network.input.cols) == (150, 150)

    stem = layers[0]
    assert isinstance(stem, ConvRecord)
    assert stem.weight.shape == (32, 3, 7, 7) and stem.stride == (2, 2) and stem.padding == (0, 0)
    assert isinstance(layers[3], PoolRecord) and layers[3].kind == "max"
    head_pool, fc = layers[-2], layers[-1]
    assert isinstance(head_pool, PoolRecord) and head_pool.window == (0, 0)
    assert isinstance(fc, FcRecord) and fc.weight.shape == (128, 256)
    strides = [layer.stride for layer in layers if isinstance(layer, ConvRecord)]
    assert strides.count((2, 2)) == 5  # stem + 4 down blocks
    assert all(np.isfinite(layer.weight).all() for layer in layers if isinstance(layer, ConvRecord))


def test_fc_weight_is_transposed_from_in_out_storage(
    dat_bytes: bytes, network: dlib_format.DlibNetwork
) -> None:
    # fc_2 stores (256 inputs, 128 outputs) row-major; the record is nn.Linear's (out, in).
    name = dat_bytes.rfind(b"fc_2")
    # name, num_outputs (01 80), num_inputs (02 00 01), tensor version, 4 dims (256,128,1,1)
    header = b"\x01\x80\x02\x00\x01" + b"\x01\x02" + b"\x02\x00\x01\x01\x80\x01\x01\x01\x01"
    start = name + 4 + len(header)
    assert dat_bytes[name + 4 : start] == header
    stored = np.frombuffer(dat_bytes[start : start + 256 * 128 * 4], "<f4").reshape(256, 128)
    fc = network.layers[-1]
    assert isinstance(fc, FcRecord)
    np.testing.assert_array_equal(fc.weight, stored.T)


# ---------------------------------------------------------------------------- refusals


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("keep", [0.5, 0.999, -1])
def test_truncated_file_refused(tmp_path: Path, dat_bytes: bytes, keep: float) -> None:
    cut = len(dat_bytes) - 1 if keep == -1 else int(len(dat_bytes) * keep)
    path = write(tmp_path, "truncated.dat", dat_bytes[:cut])
    with pytest.raises(CheckpointError, match="ends early") as info:
        read_dlib_network(path)
    assert info.value.path == path
    assert "face_recognition_models==0.3.0" in (info.value.fix or "")


def test_trailing_bytes_refused(tmp_path: Path, dat_bytes: bytes) -> None:
    path = write(tmp_path, "longer.dat", dat_bytes + b"\x00")
    with pytest.raises(CheckpointError, match="1 unexpected bytes"):
        read_dlib_network(path)


def test_random_file_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write(tmp_path, "random.dat", rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        read_dlib_network(path)
    assert info.value.path == path


def test_other_dlib_network_refused(tmp_path: Path) -> None:
    # A real dlib file of another kind (the landmark model is not a DNN at all; the MMOD
    # detector has a different loss): both must be refused, not half-read.
    models = dlib_model_path().parent
    for name in ("mmod_human_face_detector.dat", "shape_predictor_5_face_landmarks.dat"):
        with pytest.raises(CheckpointError):
            read_dlib_network(models / name)


def test_wrong_loss_name_refused(tmp_path: Path, dat_bytes: bytes) -> None:
    data = dat_bytes.replace(b"loss_metric_2", b"loss_mmod_xx2", 1)
    with pytest.raises(CheckpointError, match="loss_metric_2"):
        read_dlib_network(write(tmp_path, "loss.dat", data))


def test_wrong_layer_name_refused(tmp_path: Path, dat_bytes: bytes) -> None:
    data = dat_bytes.replace(b"con_4", b"con_5", 1)
    with pytest.raises(CheckpointError, match="'con_4'"):
        read_dlib_network(write(tmp_path, "name.dat", data))


def test_wrong_filter_count_refused(tmp_path: Path, dat_bytes: bytes) -> None:
    # The stem conv: params tensor (4736, 1, 1, 1), its floats, then num_filters = 32 (01 20).
    start = dat_bytes.find(b"con_4") + 5
    header = b"\x01\x02" + b"\x02\x80\x12" + b"\x01\x01" * 3
    assert dat_bytes[start : start + len(header)] == header
    filters_at = start + len(header) + 4736 * 4
    assert dat_bytes[filters_at : filters_at + 2] == b"\x01\x20"
    data = bytearray(dat_bytes)
    data[filters_at + 1] = 0x21
    with pytest.raises(CheckpointError, match="expected"):
        read_dlib_network(write(tmp_path, "filters.dat", bytes(data)))


def test_default_file_checksum_enforced(
    tmp_path: Path, dat_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(dat_bytes)
    data[len(data) // 2] ^= 0x01  # one weight bit: structurally still valid
    path = write(tmp_path, dlib_format.DLIB_MODEL_FILENAME, bytes(data))
    read_dlib_network(path)  # an explicit path is only checked structurally
    monkeypatch.setattr(dlib_format, "dlib_model_path", lambda: path)
    with pytest.raises(CheckpointError, match="sha256"):
        read_dlib_network()


def test_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="not found") as info:
        read_dlib_network(tmp_path / "nope.dat")
    assert info.value.path == tmp_path / "nope.dat"
    monkeypatch.setattr(dlib_format.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(CheckpointError, match="face_recognition_models"):
        dlib_model_path()
