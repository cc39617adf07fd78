"""The one way every module names an image: its relative path inside the data set.

Keys are POSIX paths ``Identity_Name/Identity_Name_0001.jpg`` so that splits, caches and results
written on one machine still match the images on another (absolute paths would not).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class ImageRecord:
    """One image: ``key`` (relative POSIX path), ``identity`` (its folder), ``path`` on disk."""

    key: str
    identity: str
    path: Path


def lfw_key(name: str, number: int) -> str:
    """Key of the ``number``-th (1-based) LFW image of ``name``, as protocol files refer to it."""
    return f"{name}/{name}_{number:04d}.jpg"


def identity_of(key: str) -> str:
    """Identity of a key: its folder, i.e. everything before the first ``/``."""
    return key.split("/", 1)[0]
