"""Scan any folder laid out as ``identity/image`` (LFW or a user's own data) into records.

Anything that is not a usable image is *listed* as a :class:`Problem` with a fix, never dropped
silently: a user must be able to see why a person or image is missing from the evaluation.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from advface.data.records import ImageRecord
from advface.errors import DataError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class Problem:
    """Something skipped while scanning: where, why, and what the user can do about it."""

    path: Path
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} (fix: {self.fix})"


@dataclass
class FolderScan:
    """Result of scanning a folder: usable records (sorted by key) and what was skipped."""

    root: Path
    records: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def identities(self) -> list[str]:
        """Sorted names of the people that have at least one usable image."""
        return sorted({r.identity for r in self.records})


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def is_known_file(name: str, known_files: Collection[str]) -> bool:
    """Whether ``name`` matches one of the (case-insensitive, shell-style) patterns."""
    lower = name.lower()
    return any(fnmatch.fnmatchcase(lower, pattern.lower()) for pattern in known_files)


def scan_identity_folder(root: str | Path, verify: bool = False,
                         known_files: Collection[str] = ()) -> FolderScan:
    """List every ``root/identity/image`` file as an :class:`ImageRecord`.

    Empty identity folders, non-image files, loose files, nested folders and (with ``verify``,
    which decodes each image) unreadable images become problems. Loose files matching
    ``known_files`` (shell-style patterns, e.g. LFW's protocol files kept next to the person
    folders) belong there and are no problem. Raises :class:`DataError` when ``root`` is
    missing or holds no usable image at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            "image folder not found",
            path=root,
            fix="pass a folder containing one sub-folder per person with their images inside",
        )
    scan = FolderScan(root=root)
    with os.scandir(root) as it:
        top = sorted(it, key=lambda e: e.name)
    for entry in top:
        path = Path(entry.path)
        if not entry.is_dir():
            if is_known_file(entry.name, known_files):
                continue
            scan.problems.append(Problem(
                path, "file outside any identity folder, ignored",
                "move it into a folder named after the person, or remove it",
            ))
            continue
        identity = entry.name
        with os.scandir(entry.path) as it:
            children = sorted(it, key=lambda e: e.name)
        n_images = 0
        for child in children:
            child_path = Path(child.path)
            if child.is_dir():
                scan.problems.append(Problem(
                    child_path, "nested folder inside an identity folder, ignored",
                    "keep exactly one level: <root>/<identity>/<image>",
                ))
            elif not _is_image_name(child.name):
                scan.problems.append(Problem(
                    child_path, "not an image file (unknown extension), ignored",
                    f"remove it, or rename it with one of {', '.join(sorted(IMAGE_SUFFIXES))}",
                ))
            else:
                scan.records.append(
                    ImageRecord(key=f"{identity}/{child.name}", identity=identity, path=child_path)
                )
                n_images += 1
        if n_images == 0:
            scan.problems.append(Problem(
                path, "identity folder without any image, person ignored",
                "add this person's images or delete the empty folder",
            ))
    if verify and scan.records:
        scan.records, bad = _verify(scan.records)
        scan.problems.extend(bad)
        for identity in sorted({p.path.parent.name for p in bad} - set(scan.identities())):
            scan.problems.append(Problem(
                root / identity, "no readable image left, person ignored",
                "replace the unreadable images listed above",
            ))
    if not scan.records:
        raise DataError(
            "no images found in identity sub-folders",
            path=root,
            fix="the folder must look like <root>/<Person_Name>/<image>.jpg; if the person "
            "folders are one level deeper, point to that folder instead",
        )
    scan.records.sort(key=lambda r: r.key)
    scan.problems.sort(key=lambda p: str(p.path))
    return scan


def _verify(records: list[ImageRecord]) -> tuple[list[ImageRecord], list[Problem]]:
    """Decode every image; keep readable ones, list the rest."""
    from advface.data.images import load_rgb  # torch only when verifying

    good: list[ImageRecord] = []
    bad: list[Problem] = []
    for rec in tqdm(records, desc="verifying images", unit="img", leave=False,
                    disable=len(records) < 500):
        try:
            load_rgb(rec.path)
        except DataError as err:
            bad.append(Problem(rec.path, f"unreadable image: {err.message}",
                               "re-download or re-extract the data set, or delete the file"))
        else:
            good.append(rec)
    return good, bad
