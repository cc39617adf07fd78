"""Shared test fixtures."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from advface.paths import default_data_dir
from needs_data import skip_without_lfw

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0001.jpg")


def pytest_configure(config) -> None:
    # Two cores on CI: keep torch from oversubscribing when pytest runs.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def lfw_bits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The first 40 JPEGs of LFW (4 people with 4+ images, singles): a gallery folder without
    two held-out photos of enrolled people, and those photos."""
    archive = next((d / "lfw-deepfunneled.tgz" for d in (default_data_dir(),
                    REPO.parent / "shared" / "data" / "lfw")
                    if (d / "lfw-deepfunneled.tgz").is_file()), None)
    if archive is None:
        skip_without_lfw("LFW archive not found (set ADVFACE_DATA)")
    root = tmp_path_factory.mktemp("photos")
    n = 0
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            key = "/".join(member.name.split("/")[-2:])
            dest = root / ("photos" if key in HELD_OUT else "gallery") / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            handle = tar.extractfile(member)
            assert handle is not None
            dest.write_bytes(handle.read())
            n += 1
            if n == 40:
                break
    return {"gallery": root / "gallery", "photos": root / "photos", "cache": root / "cache",
            "root": root, "held_out": HELD_OUT}
