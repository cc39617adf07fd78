"""Reproducible splits: closed-set identification (gallery/probes) and person-disjoint splits.

A split is a pure function of (records, parameters, seed): inputs are sorted and every person
draws from its own ``random.Random`` seeded by ``(seed, identity)``, so the same data and seed
give the same split on any machine, and adding one person does not reshuffle everyone else.
Saved splits carry a SHA-256 of their canonical JSON, checked on load, so results can always be
traced to the exact gallery and probes they were computed on.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from advface.data._atomic import atomic_open
from advface.data.records import ImageRecord, identity_of
from advface.errors import ConfigError, DataError

SPLIT_VERSION = 1


def _canonical_hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _group(records: Iterable[ImageRecord]) -> dict[str, list[str]]:
    """identity -> sorted keys; duplicate keys are an error (they would leak probes)."""
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for rec in records:
        if rec.key in seen:
            raise DataError(f"image key {rec.key!r} appears twice in the records",
                            path=rec.path, fix="remove the duplicate image")
        seen.add(rec.key)
        if identity_of(rec.key) != rec.identity:
            raise ValueError(f"record {rec.key!r} has identity {rec.identity!r}, but keys must "
                             "start with their identity's folder")
        groups.setdefault(rec.identity, []).append(rec.key)
    return {name: sorted(keys) for name, keys in sorted(groups.items())}


def _rng(seed: int, identity: str, purpose: str) -> random.Random:
    # A str seed is hashed with SHA-512 by random.Random: stable across runs and platforms.
    return random.Random(f"advface:{purpose}:{seed}:{identity}")


def _write_atomic(path: Path, obj: dict[str, Any]) -> Path:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
    return Path(path)


class _HashedSplit:
    """Shared save/load/hash for split dataclasses: subclasses name their list fields."""

    FORMAT: ClassVar[str]
    LIST_FIELDS: ClassVar[tuple[str, ...]]
    params: dict[str, Any]
    hash: str

    def _payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"params": self.params}
        for name in self.LIST_FIELDS:
            body[name] = list(getattr(self, name))
        return body

    def compute_hash(self) -> str:
        """SHA-256 of the canonical JSON of params and all lists."""
        return _canonical_hash(self._payload())

    def save(self, path: str | Path) -> Path:
        """Write JSON with format, version, hash, params, stats and lists (atomically)."""
        doc = {"format": self.FORMAT, "version": SPLIT_VERSION, "hash": self.hash,
               "stats": self.stats(), **self._payload()}
        return _write_atomic(Path(path), doc)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a saved split, recompute its hash and check its invariants."""
        path = Path(path)
        fix = "regenerate it with `advface data split --out ...`"
        if not path.is_file():
            raise DataError("split file not found", path=path, fix=fix)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"split file is not valid JSON ({err})", path=path, fix=fix) from err
        if not isinstance(doc, dict) or doc.get("format") != cls.FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise DataError(f"not a {cls.FORMAT} file (format: {got!r})", path=path, fix=fix)
        if doc.get("version") != SPLIT_VERSION:
            raise DataError(f"unsupported split version {doc.get('version')!r} "
                            f"(this advface reads version {SPLIT_VERSION})", path=path, fix=fix)
        kwargs: dict[str, Any] = {}
        for name in cls.LIST_FIELDS:
            value = doc.get(name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(f"field {name!r} is missing or not a list of strings",
                                path=path, fix=fix)
            kwargs[name] = value
        if not isinstance(doc.get("params"), dict) or not isinstance(doc.get("hash"), str):
            raise DataError("fields 'params'/'hash' are missing or malformed", path=path, fix=fix)
        split = cls(params=doc["params"], hash="", **kwargs)
        split.hash = split.compute_hash()
        if split.hash != doc["hash"]:
            raise DataError(
                f"split hash mismatch: file says {doc['hash'][:12]}..., content hashes to "
                f"{split.hash[:12]}... (the file was edited or corrupted)", path=path, fix=fix,
            )
        try:
            split.check()
        except ValueError as err:
            raise DataError(f"split is inconsistent: {err}", path=path, fix=fix) from err
        return split

    def check(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


def _count_stats(counts: list[int]) -> dict[str, float | int]:
    if not counts:
        return {"min": 0, "median": 0, "max": 0}
    median = statistics.median(counts)
    return {"min": min(counts), "median": int(median) if median == int(median) else median,
            "max": max(counts)}


@dataclass
class ClosedSetSplit(_HashedSplit):
    """Closed-set identification: every probe's identity has >= 1 image in the gallery.

    ``identities`` are the enrolled people (sorted); ``probes`` are held-out images of them;
    ``gallery`` holds their remaining images plus ``distractors`` (images of people with fewer
    than ``min_images`` images, who can never be a probe's answer) when enabled. Lists are sorted.
    """

    identities: list[str]
    gallery: list[str]
    probes: list[str]
    distractors: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    hash: str = ""

    FORMAT: ClassVar[str] = "advface-closed-set-split"
    LIST_FIELDS: ClassVar[tuple[str, ...]] = ("identities", "gallery", "probes", "distractors")

    def identity_index(self) -> dict[str, int]:
        """identity name -> label (its position in ``identities``)."""
        return {name: i for i, name in enumerate(self.identities)}

    def probe_labels(self) -> list[int]:
        """Label (index into ``identities``) of each probe, in ``probes`` order."""
        index = self.identity_index()
        return [index[identity_of(k)] for k in self.probes]

    def gallery_labels(self) -> list[int]:
        """Label of each gallery image, in ``gallery`` order; distractors get -1."""
        index = self.identity_index()
        return [index.get(identity_of(k), -1) for k in self.gallery]

    def check(self) -> None:
        """Raise ValueError unless the split is closed-set, disjoint and consistent."""
        ids = set(self.identities)
        if len(ids) != len(self.identities):
            raise ValueError("duplicate identities")
        for name in ("gallery", "probes", "distractors"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"duplicate keys in {name}")
        gallery, probes, distractors = set(self.gallery), set(self.probes), set(self.distractors)
        if gallery & probes:
            raise ValueError(f"{len(gallery & probes)} image(s) are both probe and gallery")
        if not distractors <= gallery:
            raise ValueError("distractors must be part of the gallery")
        if any(identity_of(k) in ids for k in distractors):
            raise ValueError("a distractor belongs to an enrolled identity")
        if any(identity_of(k) not in ids for k in probes):
            raise ValueError("a probe belongs to a person who is not an enrolled identity")
        enrolled = {identity_of(k) for k in gallery - distractors}
        if enrolled - ids:
            raise ValueError("a gallery image is neither enrolled nor a distractor")
        if ids - enrolled:
            raise ValueError(f"{len(ids - enrolled)} identities have no gallery image")

    def stats(self) -> dict[str, Any]:
        """Sizes of the split and images per enrolled person (min/median/max)."""
        counts: dict[str, int] = dict.fromkeys(self.identities, 0)
        distractors = set(self.distractors)
        for k in self.probes:
            counts[identity_of(k)] += 1
        for k in self.gallery:
            if k not in distractors:
                counts[identity_of(k)] += 1
        return {
            "people": len(self.identities),
            "gallery": len(self.gallery),
            "gallery_enrolled": len(self.gallery) - len(self.distractors),
            "probes": len(self.probes),
            "distractors": len(self.distractors),
            "distractor_people": len({identity_of(k) for k in self.distractors}),
            "images_per_person": _count_stats(sorted(counts.values())),
            "hash": self.hash,
        }


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}",
                          fix=f"set {name} to an integer >= {minimum}")
    return value


def make_closed_set_split(
    records: Iterable[ImageRecord],
    *,
    min_images: int = 2,
    probes_per_person: int = 1,
    probe_fraction: float | None = None,
    distractors: bool = True,
    seed: int = 0,
) -> ClosedSetSplit:
    """Split records into gallery and probes for closed-set identification.

    People with ``>= min_images`` images are enrolled. Each gives ``probes_per_person`` probes,
    or ``round(probe_fraction * n)`` when ``probe_fraction`` is set; either way at least 1 and at
    most ``n - 1`` so that one image always stays in the gallery. People below ``min_images``
    become distractors (gallery only) when ``distractors`` is true, else they are left out.
    """
    min_images = _check_int("min_images", min_images, 2)
    probes_per_person = _check_int("probes_per_person", probes_per_person, 1)
    seed = _check_int("seed", seed, 0)
    if probe_fraction is not None and not (
        isinstance(probe_fraction, int | float) and not isinstance(probe_fraction, bool)
        and 0.0 < float(probe_fraction) < 1.0
    ):
        raise ConfigError(f"probe_fraction must be between 0 and 1 (exclusive), got "
                          f"{probe_fraction!r}", fix="use e.g. 0.5, or leave it unset")
    groups = _group(records)
    identities = [name for name, keys in groups.items() if len(keys) >= min_images]
    if not identities:
        raise DataError(
            f"no person has at least {min_images} images, so there is nothing to identify",
            fix="lower min_images or add more images per person",
        )
    probes: list[str] = []
    gallery: list[str] = []
    for name in identities:
        keys = groups[name]
        if probe_fraction is not None:
            k = round(float(probe_fraction) * len(keys))
        else:
            k = probes_per_person
        k = max(1, min(k, len(keys) - 1))
        chosen = set(_rng(seed, name, "probes").sample(keys, k))
        probes += [key for key in keys if key in chosen]
        gallery += [key for key in keys if key not in chosen]
    enrolled = set(identities)
    extra = sorted(k for name, keys in groups.items() if name not in enrolled for k in keys)
    distractor_keys = extra if distractors else []
    params = {
        "kind": "closed-set",
        "min_images": min_images,
        "probes_per_person": probes_per_person,
        "probe_fraction": None if probe_fraction is None else float(probe_fraction),
        "distractors": bool(distractors),
        "seed": seed,
    }
    split = ClosedSetSplit(
        identities=identities,
        gallery=sorted(gallery + distractor_keys),
        probes=sorted(probes),
        distractors=distractor_keys,
        params=params,
    )
    split.hash = split.compute_hash()
    split.check()
    return split


@dataclass
class PersonSplit(_HashedSplit):
    """Person-disjoint train/val/test (people and their image keys), e.g. to train a face model
    on people that an evaluation never sees."""

    train: list[str]
    val: list[str]
    test: list[str]
    train_keys: list[str]
    val_keys: list[str]
    test_keys: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    hash: str = ""

    FORMAT: ClassVar[str] = "advface-person-split"
    LIST_FIELDS: ClassVar[tuple[str, ...]] = (
        "train", "val", "test", "train_keys", "val_keys", "test_keys",
    )
    PARTS: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    def people(self, part: str) -> list[str]:
        """Sorted people of ``part`` (``train``, ``val`` or ``test``)."""
        if part not in self.PARTS:
            raise ValueError(f"part must be one of {self.PARTS}, got {part!r}")
        return getattr(self, part)

    def keys(self, part: str) -> list[str]:
        """Sorted image keys of ``part``."""
        self.people(part)
        return getattr(self, f"{part}_keys")

    def labels(self, part: str) -> list[int]:
        """Label of each key of ``part``: index of its person within that part's people."""
        index = {name: i for i, name in enumerate(self.people(part))}
        return [index[identity_of(k)] for k in self.keys(part)]

    def check(self) -> None:
        """Raise ValueError unless parts are person-disjoint and keys match their people."""
        seen: set[str] = set()
        for part in self.PARTS:
            people = set(self.people(part))
            if len(people) != len(self.people(part)) or people & seen:
                raise ValueError(f"people of {part!r} are duplicated or shared with another part")
            seen |= people
            if any(identity_of(k) not in people for k in self.keys(part)):
                raise ValueError(f"a key of {part!r} belongs to a person outside that part")
            if len(set(self.keys(part))) != len(self.keys(part)):
                raise ValueError(f"duplicate keys in {part!r}")

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.PARTS:
            out[part] = {"people": len(self.people(part)), "images": len(self.keys(part))}
        out["hash"] = self.hash
        return out


def make_person_split(
    records: Iterable[ImageRecord],
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    min_images: int = 1,
) -> PersonSplit:
    """Assign each person with ``>= min_images`` images to train, val or test.

    People are sorted, shuffled with ``random.Random(seed)`` and cut at ``round`` of the
    cumulative fractions, so part sizes differ from the exact fractions by at most one person.
    """
    min_images = _check_int("min_images", min_images, 1)
    seed = _check_int("seed", seed, 0)
    try:
        fracs = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        fracs = ()
    if len(fracs) != 3 or any(f < 0 for f in fracs) or not math.isclose(sum(fracs), 1.0,
                                                                          abs_tol=1e-6):
        raise ConfigError(f"fractions must be three non-negative numbers summing to 1, got "
                          f"{fractions!r}", fix="use e.g. (0.6, 0.2, 0.2)")
    groups = _group(records)
    people = [name for name, keys in groups.items() if len(keys) >= min_images]
    if not people:
        raise DataError(f"no person has at least {min_images} images",
                        fix="lower min_images or add more images")
    order = list(people)
    random.Random(f"advface:person-split:{seed}").shuffle(order)
    n = len(order)
    cut1 = round(fracs[0] * n)
    cut2 = round((fracs[0] + fracs[1]) * n)
    parts = [sorted(order[:cut1]), sorted(order[cut1:cut2]), sorted(order[cut2:])]
    keys = [sorted(k for name in part for k in groups[name]) for part in parts]
    split = PersonSplit(
        train=parts[0], val=parts[1], test=parts[2],
        train_keys=keys[0], val_keys=keys[1], test_keys=keys[2],
        params={"kind": "person", "fractions": list(fracs), "min_images": min_images,
                "seed": seed},
    )
    split.hash = split.compute_hash()
    split.check()
    return split
