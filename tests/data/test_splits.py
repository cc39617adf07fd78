"""Closed-set and person splits: determinism, invariants, save/load with hash checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advface.data.records import ImageRecord, identity_of, lfw_key
from advface.data.splits import (
    ClosedSetSplit,
    PersonSplit,
    make_closed_set_split,
    make_person_split,
)
from advface.errors import ConfigError, DataError


def records(counts: dict[str, int]) -> list[ImageRecord]:
    """Records without files: splits only look at keys and identities."""
    return [ImageRecord(lfw_key(n, i), n, Path("/nowhere") / lfw_key(n, i))
            for n, c in counts.items() for i in range(1, c + 1)]


COUNTS = {"Ann": 5, "Bob": 1, "Cid": 2, "Dee": 3, "Eve": 1, "Fay": 8, "Gus": 2}


def test_default_split_sizes_and_invariants() -> None:
    s = make_closed_set_split(records(COUNTS))
    assert s.identities == ["Ann", "Cid", "Dee", "Fay", "Gus"]
    assert len(s.probes) == 5 and sorted({identity_of(k) for k in s.probes}) == s.identities
    assert s.distractors == ["Bob/Bob_0001.jpg", "Eve/Eve_0001.jpg"]
    assert len(s.gallery) == sum(COUNTS.values()) - 5
    assert not set(s.gallery) & set(s.probes)
    assert s.gallery == sorted(s.gallery) and s.probes == sorted(s.probes)
    stats = s.stats()
    assert stats["people"] == 5 and stats["distractors"] == 2 and stats["gallery"] == 17
    assert stats["images_per_person"] == {"min": 2, "median": 3, "max": 8}
    assert stats["hash"] == s.hash and len(s.hash) == 64


def test_labels() -> None:
    s = make_closed_set_split(records(COUNTS))
    assert [s.identities[i] for i in s.probe_labels()] == [identity_of(k) for k in s.probes]
    labels = s.gallery_labels()
    for key, label in zip(s.gallery, labels, strict=True):
        if key in s.distractors:
            assert label == -1
        else:
            assert s.identities[label] == identity_of(key)


def test_deterministic_and_independent_of_input_order() -> None:
    recs = records(COUNTS)
    a = make_closed_set_split(recs, seed=3)
    shuffled = list(recs)
    random.Random(1).shuffle(shuffled)
    b = make_closed_set_split(shuffled, seed=3)
    assert a == b and a.hash == b.hash
    seeds = {make_closed_set_split(recs, seed=s).hash for s in range(6)}
    assert len(seeds) > 1  # the seed matters


def test_adding_a_person_keeps_everyone_elses_probes() -> None:
    a = make_closed_set_split(records(COUNTS), seed=7)
    b = make_closed_set_split(records({**COUNTS, "Hal": 4}), seed=7)
    assert set(a.probes) <= set(b.probes)
    assert a.hash != b.hash


def test_probe_counts_keep_one_gallery_image() -> None:
    s = make_closed_set_split(records(COUNTS), probes_per_person=3)
    per = {n: sum(identity_of(k) == n for k in s.probes) for n in s.identities}
    assert per == {"Ann": 3, "Cid": 1, "Dee": 2, "Fay": 3, "Gus": 1}
    f = make_closed_set_split(records(COUNTS), probe_fraction=0.5, min_images=3)
    per = {n: sum(identity_of(k) == n for k in f.probes) for n in f.identities}
    assert per == {"Ann": 2, "Dee": 2, "Fay": 4}  # round(2.5)=2, round(1.5)=2
    assert "Cid/Cid_0001.jpg" in f.distractors


def test_without_distractors() -> None:
    s = make_closed_set_split(records(COUNTS), distractors=False)
    assert s.distractors == [] and not any(k.startswith(("Bob/", "Eve/")) for k in s.gallery)
    assert s.gallery_labels().count(-1) == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"min_images": 1}, {"probes_per_person": 0}, {"probe_fraction": 1.0},
     {"probe_fraction": 0}, {"seed": -1}, {"min_images": True}],
)
def test_bad_parameters_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        make_closed_set_split(records(COUNTS), **kwargs)
    assert info.value.fix


def test_no_eligible_person_and_duplicate_keys() -> None:
    with pytest.raises(DataError, match="at least 9"):
        make_closed_set_split(records(COUNTS), min_images=9)
    recs = records({"Ann": 2})
    with pytest.raises(DataError, match="twice"):
        make_closed_set_split([*recs, recs[0]])


def test_save_load_round_trip(tmp_path: Path) -> None:
    s = make_closed_set_split(records(COUNTS), seed=2, probe_fraction=0.4)
    path = s.save(tmp_path / "out" / "split.json")
    doc = json.loads(path.read_text())
    assert doc["hash"] == s.hash and doc["params"]["seed"] == 2
    assert doc["params"]["probe_fraction"] == 0.4 and doc["stats"]["probes"] == len(s.probes)
    assert ClosedSetSplit.load(path) == s


def test_load_rejects_tampered_or_malformed(tmp_path: Path) -> None:
    s = make_closed_set_split(records(COUNTS))
    path = s.save(tmp_path / "split.json")
    doc = json.loads(path.read_text())
    doc["probes"] = doc["probes"][1:]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="hash mismatch") as info:
        ClosedSetSplit.load(path)
    assert info.value.path == path and "advface data split" in (info.value.fix or "")

    # A consistent hash over an inconsistent split (probe also in gallery) is refused too.
    bad = ClosedSetSplit(s.identities, [*s.gallery, s.probes[0]], s.probes, s.distractors,
                         s.params)
    bad.gallery.sort()
    bad.hash = bad.compute_hash()
    bad.save(path)
    with pytest.raises(DataError, match="both probe and gallery"):
        ClosedSetSplit.load(path)

    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        ClosedSetSplit.load(path)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="not a advface-closed-set-split"):
        ClosedSetSplit.load(path)
    p = make_person_split(records(COUNTS)).save(tmp_path / "p.json")
    with pytest.raises(DataError, match="format"):
        ClosedSetSplit.load(p)
    doc = json.loads(s.save(path).read_text())
    doc["gallery"] = "everything"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="'gallery'"):
        ClosedSetSplit.load(path)
    with pytest.raises(DataError, match="not found"):
        ClosedSetSplit.load(tmp_path / "none.json")


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 7), min_size=1, max_size=12),
    min_images=st.integers(2, 4),
    probes=st.integers(1, 4),
    fraction=st.one_of(st.none(), st.floats(0.05, 0.95)),
    distractors=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_property_closed_set_and_disjoint(
    counts: list[int], min_images: int, probes: int, fraction: float | None,
    distractors: bool, seed: int,
) -> None:
    people = {f"P{i:02d}": c for i, c in enumerate(counts)}
    recs = records(people)
    if max(counts) < min_images:
        with pytest.raises(DataError):
            make_closed_set_split(recs, min_images=min_images)
        return
    s = make_closed_set_split(recs, min_images=min_images, probes_per_person=probes,
                              probe_fraction=fraction, distractors=distractors, seed=seed)
    s.check()
    enrolled = set(s.identities)
    assert enrolled == {p for p, c in people.items() if c >= min_images}
    assert not set(s.gallery) & set(s.probes)
    for name in enrolled:  # closed set: every enrolled person has a probe and a gallery image
        assert any(identity_of(k) == name for k in s.probes)
        assert any(identity_of(k) == name for k in s.gallery)
    covered = set(s.gallery) | set(s.probes)
    expected = {r.key for r in recs if distractors or r.identity in enrolled}
    assert covered == expected
    others = {r.key for r in recs if r.identity not in enrolled}
    assert set(s.distractors) == (others if distractors else set())
    assert make_closed_set_split(recs, min_images=min_images, probes_per_person=probes,
                                 probe_fraction=fraction, distractors=distractors,
                                 seed=seed).hash == s.hash


def test_person_split() -> None:
    counts = {f"P{i:02d}": 1 + i % 4 for i in range(20)}
    s = make_person_split(records(counts), seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 4)
    assert not (set(s.train) & set(s.val)) and not (set(s.val) & set(s.test))
    assert set(s.train) | set(s.val) | set(s.test) == set(counts)
    assert len(s.keys("train")) == sum(counts[p] for p in s.train)
    assert [s.people("val")[i] for i in s.labels("val")] == [identity_of(k) for k in s.val_keys]
    assert s == make_person_split(records(counts), seed=1)
    assert s.hash != make_person_split(records(counts), seed=2).hash
    only2 = make_person_split(records(counts), min_images=3, fractions=(0.5, 0.0, 0.5))
    assert only2.val == [] and all(counts[p] >= 3 for p in only2.train + only2.test)
    with pytest.raises(ValueError):
        s.keys("holdout")


def test_person_split_save_load_and_errors(tmp_path: Path) -> None:
    s = make_person_split(records(COUNTS), fractions=(0.4, 0.3, 0.3), seed=5)
    path = s.save(tmp_path / "p.json")
    assert PersonSplit.load(path) == s
    doc = json.loads(path.read_text())
    doc["test"].append(doc["train"][0])
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="hash mismatch"):
        PersonSplit.load(path)
    for fractions in [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)]:
        with pytest.raises(ConfigError, match="fractions"):
            make_person_split(records(COUNTS), fractions=fractions)  # type: ignore[arg-type]
