"""Image I/O with one convention: float32 RGB tensors in [0, 1], saved losslessly as 8-bit PNG.

Attacks produce perturbations of a few 1/255 steps, so a lossy or silently "repaired" image would
change results: decoding is strict (truncated files are errors, never half-grey images) and
saving is lossless PNG of exactly the quantised values (see :func:`quantize`).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from advface.data._atomic import atomic_open
from advface.errors import ConfigError, DataError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


def _decode(path: Path) -> Image.Image:
    """Open and fully decode, refusing truncated data even if another library relaxed Pillow."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return ImageOps.exif_transpose(im)  # a decoded copy, upright
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if im.mode.startswith("I;16"):
            # The mode fixes the range: a pixel's value must not depend on the brightest pixel.
            arr = arr / 257.0
        elif im.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        elif peak > 255.0:
            arr = arr / 257.0  # 32-bit "I" has no fixed range; values above 8 bits read as 16
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to a uint8 ``(H, W, 3)`` RGB array, applying EXIF orientation.

    Grayscale, CMYK, palette and 16-bit images are converted; alpha is flattened onto white.
    A missing, corrupt or truncated file raises :class:`DataError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            "image file not found", path=path, fix="check the path or rescan the data folder"
        )
    if path.stat().st_size == 0:  # say so plainly: PIL only says it cannot identify the file
        raise DataError("empty file (0 bytes)", path=path,
                        fix="the copy or download was interrupted: copy it again, or delete it")
    try:
        im = _decode(path)
        rgb = _to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise DataError(
            f"cannot decode image ({err})",
            path=path,
            fix="the file is corrupt or truncated: re-download or re-extract it, or delete it",
        ) from err
    arr = np.array(rgb, dtype=np.uint8)  # writable copy
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(
            f"decoded image has unusable shape {arr.shape}",
            path=path,
            fix="replace the file with a normal RGB/grayscale image",
        )
    return np.ascontiguousarray(arr)


def to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [0, 1]; a list or ``(N, H, W, 3)`` array
    -> ``(N, 3, H, W)``."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = images
    elif isinstance(images, np.ndarray):
        batch = None
    else:
        arrays = list(images)
        if not arrays:
            raise ValueError("to_tensor got an empty list of images")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"images in a batch must share one shape, got {sorted(shapes)}")
        for a in arrays:
            _check_uint8_hwc(a)
        batch = np.stack(arrays)
    if batch is None:
        _check_uint8_hwc(images)  # type: ignore[arg-type]
        t = torch.from_numpy(np.require(images, requirements=['C', 'W'])).permute(2, 0, 1)
    else:
        _check_uint8_hwc(batch[0] if len(batch) else np.zeros((1, 1, 3), np.uint8))
        t = torch.from_numpy(np.require(batch, requirements=['C', 'W'])).permute(0, 3, 1, 2)
    return t.to(torch.float32).div_(255.0).contiguous()


def _check_uint8_hwc(arr: np.ndarray) -> None:
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float ``(3, H, W)``/``(N, 3, H, W)`` in [0, 1] -> uint8 ``(H, W, 3)``/``(N, H, W, 3)``,
    clamped and rounded (not truncated)."""
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"expected a (3, H, W) or (N, 3, H, W) tensor, got {tuple(t.shape)}")
    arr = torch.round(t.detach().to("cpu", torch.float32).clamp(0.0, 1.0) * 255.0)
    arr = arr.to(torch.uint8)
    arr = arr.permute(1, 2, 0) if t.ndim == 3 else arr.permute(0, 2, 3, 1)
    return np.ascontiguousarray(arr.numpy())


def signed_difference(clean: np.ndarray, adv: np.ndarray, gain: int = 10) -> np.ndarray:
    """``adv - clean`` of two uint8 images amplified ``gain`` times around mid-grey (128 =
    unchanged), as uint8: at 1-2/255 the sign pattern shows where and how an image moved,
    where an amplified magnitude on black would still look black."""
    _check_uint8_hwc(clean)
    _check_uint8_hwc(adv)
    diff = 128 + gain * (adv.astype(np.int16) - clean.astype(np.int16))
    return np.clip(diff, 0, 255).astype(np.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Snap to what an 8-bit PNG would store: ``round(clamp(x, 0, 1) * 255) / 255``, same dtype."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def save_png(path: str | Path, img: torch.Tensor | np.ndarray) -> Path:
    """Write a ``(3, H, W)`` float tensor or ``(H, W, 3)`` uint8 array as lossless 8-bit PNG.

    Written to a temporary file then renamed, so an interrupted run never leaves a half PNG that
    a resumed run would trust. zlib level 1: a run writes one PNG per probe and cell, and level
    1 encodes a 150x150 chip ~4x faster than PIL's default 6 for ~12% more bytes (same pixels).
    """
    path = Path(path)
    if isinstance(img, torch.Tensor):
        if img.ndim != 3:
            raise ValueError(f"save_png saves one image (3, H, W), got {tuple(img.shape)}")
        arr = to_uint8(img)
    else:
        arr = np.asarray(img)
        _check_uint8_hwc(arr)
    with atomic_open(path, "wb") as fh:
        Image.fromarray(arr, mode="RGB").save(fh, format="PNG", compress_level=1)
    return path


def load_png(path: str | Path) -> torch.Tensor:
    """Read an image (normally a PNG written by :func:`save_png`) as a ``(3, H, W)`` tensor."""
    return to_tensor(load_rgb(path))


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        h, w = size
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def center_crop(
    arr: np.ndarray | torch.Tensor, size: int | tuple[int, int]
) -> np.ndarray | torch.Tensor:
    """Central ``size`` region: numpy arrays are ``(H, W[, C])``, tensors ``(..., H, W)``.

    Offsets round down, so the 150x150 centre of a 250x250 image is rows/cols 50..199.
    Returns a view (no copy).
    """
    h, w = _size_hw(size)
    if isinstance(arr, torch.Tensor):
        height, width = arr.shape[-2], arr.shape[-1]
    else:
        height, width = arr.shape[0], arr.shape[1]
    if h > height or w > width:
        raise ValueError(f"cannot crop {h}x{w} from a {height}x{width} image")
    top, left = (height - h) // 2, (width - w) // 2
    if isinstance(arr, torch.Tensor):
        return arr[..., top : top + h, left : left + w]
    return arr[top : top + h, left : left + w]


def resize(
    arr: np.ndarray, size: int | tuple[int, int], method: str = "bilinear"
) -> np.ndarray:
    """Resize a uint8 ``(H, W, 3)`` array with Pillow (``bilinear`` is antialiased when shrinking;
    ``area`` is box filtering, the usual choice for downscaling)."""
    h, w = _size_hw(size)
    if method not in _RESAMPLE:
        raise ValueError(f"unknown resize method {method!r}; choose one of {sorted(_RESAMPLE)}")
    _check_uint8_hwc(arr)
    if arr.shape[:2] == (h, w):
        return arr.copy()
    out = Image.fromarray(np.ascontiguousarray(arr), mode="RGB").resize(
        (w, h), resample=_RESAMPLE[method]
    )
    return np.array(out, dtype=np.uint8)


@dataclass(frozen=True)
class Preset:
    """A named crop-then-resize, so configs refer to preprocessing by name, not by numbers."""

    name: str
    crop: int | None
    size: int | None
    method: str
    description: str

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        out = center_crop(arr, self.crop) if self.crop is not None else arr
        if self.size is not None:
            out = resize(np.ascontiguousarray(out), self.size, self.method)
        return np.ascontiguousarray(out)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("lfw-full", None, None, "area",
               "the whole 250x250 LFW image, unchanged"),
        Preset("lfw-center-150", 150, None, "area",
               "central 150x150 region of a 250x250 (deep-funneled) LFW image: the face and a "
               "little context, at native resolution (dlib's chip size, without alignment)"),
        Preset("lfw-resize-150", None, 150, "area",
               "the whole 250x250 image box-filtered down to 150x150"),
        Preset("lfw-center-112", 150, 112, "area",
               "central 150x150 region box-filtered to 112x112 (common CNN input size)"),
        Preset("lfw-center-64", 150, 64, "area",
               "central 150x150 region box-filtered to 64x64 (small CNNs trained on CPU)"),
    )
}


def get_preset(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Look a preset up by name; an unknown name is a config error with the closest suggestion."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown image preset {name!r}",
            fix=f"{hint}valid presets: {', '.join(PRESETS)}",
        ) from None
