"""The tiny LFW generator other tests rely on: deterministic, LFW-shaped, optionally broken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from advface.data.images import load_rgb
from advface.data.protocols import read_names, read_pairs
from advface.data.synthetic import make_tiny_lfw
from advface.errors import DataError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic(tmp_path: Path) -> None:
    a = _files(make_tiny_lfw(tmp_path / "a", seed=3, archive=True))
    b = _files(make_tiny_lfw(tmp_path / "b", seed=3, archive=True))
    c = _files(make_tiny_lfw(tmp_path / "c", seed=4, archive=True))
    assert a == b and a != c


def test_layout_and_counts(tiny_root: Path) -> None:
    names = read_names(tiny_root / "lfw-names.txt")
    counts = list(names.values())
    assert counts[0] == 4 and counts[-1] == 1 and all(1 <= c <= 4 for c in counts)
    for name, n in names.items():
        files = sorted(p.name for p in (tiny_root / "lfw-tiny" / name).iterdir())
        assert files == [f"{name}_{i:04d}.jpg" for i in range(1, n + 1)]
    img = load_rgb(tiny_root / "lfw-tiny" / next(iter(names)) / f"{next(iter(names))}_0001.jpg")
    assert img.shape == (250, 250, 3) and img.std() > 10  # not a blank image
    assert all(p.same == (p.key_a.split("/")[0] == p.key_b.split("/")[0])
               for p in read_pairs(tiny_root / "pairs.txt"))


def test_same_person_images_differ_but_resemble(tiny_root: Path) -> None:
    tree = tiny_root / "lfw-tiny"
    a1 = load_rgb(tree / "Ada_Quill/Ada_Quill_0001.jpg").astype(float)
    a2 = load_rgb(tree / "Ada_Quill/Ada_Quill_0002.jpg").astype(float)
    b1 = load_rgb(tree / "Bruno_Rowe/Bruno_Rowe_0001.jpg").astype(float)
    assert np.abs(a1 - a2).mean() > 0
    face = (slice(75, 175), slice(75, 175))
    assert np.abs(a1[face] - a2[face]).mean() < np.abs(a1[face] - b1[face]).mean()


def test_broken_has_truncated_jpeg_and_clean_pairs(tmp_path: Path) -> None:
    root = make_tiny_lfw(tmp_path, broken=True, size=64)
    bad = root / "lfw-tiny/Ada_Quill/Ada_Quill_0005.jpg"
    with pytest.raises(DataError):
        load_rgb(bad)
    used = {k for p in read_pairs(root / "pairs.txt") for k in (p.key_a, p.key_b)}
    assert "Ada_Quill/Ada_Quill_0005.jpg" not in used
    assert (root / "lfw-tiny/Empty_Person").is_dir()
    assert load_rgb(root / "lfw-tiny/Ada_Quill/Ada_Quill_0001.jpg").shape == (64, 64, 3)


def test_archive_mode_and_bad_arguments(tmp_path: Path) -> None:
    root = make_tiny_lfw(tmp_path, archive=True, n_people=2, images_per_person=(2, 2))
    assert (root / "lfw-tiny.tgz").is_file() and not (root / "lfw-tiny").exists()
    assert "lfw-tiny.tgz" in (root / "SHA256SUMS").read_text()
    single = make_tiny_lfw(tmp_path / "one", n_people=1, images_per_person=(1, 1))
    assert (single / "pairs.txt").read_text() == "2\t0\n"
    with pytest.raises(ValueError):
        make_tiny_lfw(tmp_path / "x", images_per_person=(3, 2))
