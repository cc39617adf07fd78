"""Image I/O: strict decoding, mode conversion, tensor conventions, lossless PNG, presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFile

from advface.data import images as im
from advface.errors import ConfigError, DataError


def _rgb(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_rgb_jpeg_is_uint8_hwc(tmp_path: Path) -> None:
    p = tmp_path / "a.jpg"
    Image.fromarray(_rgb(40, 50)).save(p, quality=95)
    arr = im.load_rgb(p)
    assert arr.dtype == np.uint8 and arr.shape == (40, 50, 3)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "I;16"])
def test_load_rgb_converts_modes(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(_rgb(16, 16))
    if mode == "I;16":
        src = Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))
        expected_value = 255
    else:
        src = base.convert(mode)
        expected_value = None
    p = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    src.save(p)
    arr = im.load_rgb(p)
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    if expected_value is not None:
        assert (arr == expected_value).all()
    if mode == "L":
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_a_16_bit_pixel_reads_the_same_whatever_the_brightest_pixel(tmp_path: Path) -> None:
    dark = np.full((4, 4), 200, dtype=np.uint16)  # 200 of 65535: near black, not grey 200
    lit = dark.copy()
    lit[0, 0] = 65535
    for name, arr in (("dark", dark), ("lit", lit)):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    a, b = im.load_rgb(tmp_path / "dark.png"), im.load_rgb(tmp_path / "lit.png")
    assert (a == 1).all() and (b[1:, 1:] == 1).all() and (b[0, 0] == 255).all()


def test_alpha_is_flattened_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 2:, 3] = 255
    p = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(p)
    arr = im.load_rgb(p)
    assert (arr[:, :2] == 255).all()  # transparent -> white
    assert (arr[:, 2:] == [255, 0, 0]).all()


def _truncated_jpeg(tmp_path: Path) -> Path:
    p = tmp_path / "Person" / "Person_0001.jpg"
    p.parent.mkdir()
    Image.fromarray(_rgb(64, 64)).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def test_truncated_jpeg_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    p = _truncated_jpeg(tmp_path)
    with pytest.raises(DataError) as info:
        im.load_rgb(p)
    assert info.value.path == p and info.value.fix
    assert str(p) in str(info.value)


def test_truncated_jpeg_refused_even_if_pillow_was_relaxed(tmp_path: Path) -> None:
    p = _truncated_jpeg(tmp_path)
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(DataError):
            im.load_rgb(p)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00\x01not a jpeg" * 10)
    with pytest.raises(DataError, match="cannot decode"):
        im.load_rgb(junk)
    with pytest.raises(DataError, match="not found"):
        im.load_rgb(tmp_path / "nope.jpg")


def test_to_tensor_single_and_batch() -> None:
    a, b = _rgb(seed=1), _rgb(seed=2)
    t = im.to_tensor(a)
    assert t.shape == (3, 20, 30) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert torch.equal(t[1], torch.from_numpy(a[..., 1]).float() / 255)
    batch = im.to_tensor([a, b])
    assert batch.shape == (2, 3, 20, 30)
    assert torch.equal(batch[1], im.to_tensor(b))
    assert torch.equal(im.to_tensor(np.stack([a, b])), batch)


def test_to_tensor_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        im.to_tensor(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        im.to_tensor([_rgb(10, 10), _rgb(12, 10)])
    with pytest.raises(ValueError):
        im.to_tensor(np.zeros((4, 4), dtype=np.uint8))


def test_to_uint8_rounds_and_clamps() -> None:
    t = torch.tensor([0.4 / 255, 0.6 / 255, 1.5, -0.2, 127.5 / 255 + 1e-4])
    t = t.view(1, 1, 5).expand(3, 1, 5)
    out = im.to_uint8(t)
    assert out.shape == (1, 5, 3)
    assert out[0, :, 0].tolist() == [0, 1, 255, 0, 128]
    assert im.to_uint8(t.unsqueeze(0)).shape == (1, 1, 5, 3)


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(3))))
def test_uint8_tensor_round_trip(arr: np.ndarray) -> None:
    assert np.array_equal(im.to_uint8(im.to_tensor(arr)), arr)


def test_quantize_snaps_to_255_levels_and_keeps_dtype() -> None:
    x = torch.linspace(-0.5, 1.5, 1001, dtype=torch.float64)
    q = im.quantize(x)
    assert q.dtype == torch.float64
    assert float(q.min()) == 0.0 and float(q.max()) == 1.0
    levels = q * 255
    assert torch.allclose(levels, levels.round(), atol=1e-9)
    assert torch.equal(im.quantize(q), q)
    assert float((q - x.clamp(0, 1)).abs().max()) <= 0.5 / 255 + 1e-12


def test_png_round_trip_is_lossless(tmp_path: Path) -> None:
    t = im.quantize(torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0)))
    p = im.save_png(tmp_path / "sub" / "x.png", t)
    back = im.load_png(p)
    assert torch.equal(back, t)
    arr = _rgb(9, 11)
    im.save_png(tmp_path / "y.png", arr)
    assert np.array_equal(im.load_rgb(tmp_path / "y.png"), arr)
    assert sorted(f.name for f in tmp_path.rglob("*") if f.is_file()) == ["x.png", "y.png"]
    with pytest.raises(ValueError):
        im.save_png(tmp_path / "z.png", t.unsqueeze(0))


def test_center_crop_takes_the_middle() -> None:
    arr = np.zeros((250, 250, 3), dtype=np.uint8)
    arr[50:200, 50:200] = 7
    out = im.center_crop(arr, 150)
    assert out.shape == (150, 150, 3) and (out == 7).all()
    t = torch.zeros(2, 3, 250, 250)
    t[..., 50:200, 50:200] = 1
    assert bool((im.center_crop(t, 150) == 1).all())
    assert im.center_crop(arr, (100, 60)).shape == (100, 60, 3)
    with pytest.raises(ValueError):
        im.center_crop(arr, 251)


def test_resize_methods() -> None:
    flat = np.full((250, 250, 3), 90, dtype=np.uint8)
    assert (im.resize(flat, 150, "area") == 90).all()
    out = im.resize(_rgb(40, 40), (20, 10), "bilinear")
    assert out.shape == (20, 10, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        im.resize(flat, 10, "cubic-ish")


def test_presets() -> None:
    arr = _rgb(250, 250)
    assert np.array_equal(im.PRESETS["lfw-center-150"](arr), im.center_crop(arr, 150))
    assert im.PRESETS["lfw-center-112"](arr).shape == (112, 112, 3)
    assert im.PRESETS["lfw-resize-150"](arr).shape == (150, 150, 3)
    assert np.array_equal(im.PRESETS["lfw-full"](arr), arr)
    assert all(p.description for p in im.PRESETS.values())
    with pytest.raises(ConfigError, match="lfw-center-150"):
        im.get_preset("lfw-centre-150")


def test_signed_difference_around_mid_grey() -> None:
    from advface.data.images import signed_difference

    clean = np.full((2, 2, 3), 100, np.uint8)
    adv = clean.copy()
    adv[0, 0, 0], adv[0, 1, 1], adv[1, 0, 2] = 102, 99, 255
    got = signed_difference(clean, adv)
    assert got.dtype == np.uint8 and got[1, 1].tolist() == [128, 128, 128]
    assert got[0, 0, 0] == 148 and got[0, 1, 1] == 118 and got[1, 0, 2] == 255  # clipped
    with pytest.raises(TypeError, match="uint8"):
        signed_difference(clean.astype(np.float32), adv)
