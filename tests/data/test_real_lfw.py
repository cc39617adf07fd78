"""Real LFW (slow): counts, protocol files and the default closed-set split's numbers."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from advface.data.lfw import LFW, open_lfw
from advface.data.splits import ClosedSetSplit, make_closed_set_split, make_person_split
from advface.paths import CACHE_ENV, DATA_ENV, default_cache_dir, default_data_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _data_dir() -> Path:
    return default_data_dir() if os.environ.get(DATA_ENV) else REPO / ".." / "shared/data/lfw"


@pytest.fixture(scope="module")
def lfw(tmp_path_factory: pytest.TempPathFactory) -> LFW:
    data = _data_dir()
    if not data.exists():
        pytest.skip(f"real LFW not found at {data} (set ${DATA_ENV})")
    cache = default_cache_dir() if os.environ.get(CACHE_ENV) else tmp_path_factory.mktemp("c")
    return open_lfw(data, cache)


def test_counts_and_validation(lfw: LFW) -> None:
    assert len(lfw.identities()) == 5749 and len(lfw.records) == 13233
    report = lfw.validate()
    assert report.ok, "\n".join(report.lines()[:20])
    assert (report.expected_people, report.expected_images) == (5749, 13233)
    assert lfw.verify_checksums().ok


def test_protocol_files(lfw: LFW) -> None:
    pairs = lfw.pairs()
    assert len(pairs) == 6000
    assert Counter(p.fold for p in pairs) == dict.fromkeys(range(10), 600)
    assert Counter((p.fold, p.same) for p in pairs)[(3, True)] == 300
    assert len(lfw.dev_pairs("train")) == 2200 and len(lfw.dev_pairs("test")) == 1000
    people = lfw.people()
    assert len(people) == 10 and sum(len(f) for f in people) == 5749
    assert len(lfw.dev_people("train")) == 4038 and len(lfw.dev_people("test")) == 1711


def test_default_split_numbers_and_reproducibility(lfw: LFW, tmp_path: Path) -> None:
    a = make_closed_set_split(lfw.records)
    b = make_closed_set_split(list(reversed(lfw.records)))
    assert a.hash == b.hash
    stats = a.stats()
    assert stats["people"] == 1680 and stats["probes"] == 1680
    assert stats["distractors"] == 4069 and stats["gallery"] == 11553
    assert stats["images_per_person"]["max"] == 530  # George_W_Bush
    assert ClosedSetSplit.load(a.save(tmp_path / "split.json")).hash == a.hash
    person = make_person_split(lfw.records)
    assert len(person.train) + len(person.val) + len(person.test) == 5749
