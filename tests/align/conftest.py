"""Fixtures for alignment tests: a few real LFW JPEGs streamed from the archive, and a tiny
generated LFW (cartoon faces the HOG detector does not find, i.e. the fallback path)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from advface.data.records import ImageRecord
from advface.data.synthetic import make_tiny_lfw
from advface.paths import default_data_dir
from needs_data import skip_without_lfw

ARCHIVE = "lfw-deepfunneled.tgz"
REPO = Path(__file__).resolve().parents[2]


def lfw_archive() -> Path | None:
    for folder in (default_data_dir(), REPO.parent / "shared" / "data" / "lfw"):
        if (folder / ARCHIVE).is_file():
            return folder / ARCHIVE
    return None


def extract_first_jpegs(archive: Path, dest: Path, n: int) -> list[ImageRecord]:
    """Write the first ``n`` JPEGs of the archive under ``dest`` (streamed: fast)."""
    records = []
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            key = "/".join(member.name.split("/")[-2:])
            handle = tar.extractfile(member)
            assert handle is not None
            path = dest / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(handle.read())
            records.append(ImageRecord(key, key.split("/")[0], path))
            if len(records) >= n:
                break
    return records


@pytest.fixture(scope="session")
def real_records(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRecord]:
    """Eight real LFW images (the first ones in the archive), or skip without LFW."""
    archive = lfw_archive()
    if archive is None:
        skip_without_lfw(f"{ARCHIVE} not found under {default_data_dir()} (set ADVFACE_DATA)")
    return extract_first_jpegs(archive, tmp_path_factory.mktemp("lfw-real"), 8)


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRecord]:
    root = make_tiny_lfw(tmp_path_factory.mktemp("tiny"), n_people=3, images_per_person=(1, 2))
    tree = root / "lfw-tiny"
    return [
        ImageRecord(p.relative_to(tree).as_posix(), p.parent.name, p)
        for p in sorted(tree.glob("*/*.jpg"))
    ]
