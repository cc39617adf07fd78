"""The training data of the ad-hoc classifier: closed-set split, validation hold-out, preloading.

Protocol (the same split as the evaluation runs, so the trained model never sees a probe):
people with ``>= min_images`` LFW images are the classes; :func:`make_closed_set_split` holds out
``probes_per_person`` probes each; the model learns only from the *gallery* images, of which a
stratified ``val_fraction`` is held out for early stopping / model selection. The probes are
touched once, by the final evaluation.

All images (~3k for >= 20 images per person) are decoded once into one uint8 tensor and cached
on disk (safetensors, keyed by the image source, the key list and what each key's image is: its
chip's source hash, or the source file's size and mtime for center crops), so later runs skip
decoding and a data set that reuses the same keys with other images never gets stale pixels.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm

from advface.config import DataConfig
from advface.data.images import center_crop, load_rgb
from advface.data.lfw import open_lfw
from advface.data.records import ImageRecord, identity_of
from advface.data.splits import ClosedSetSplit, make_closed_set_split
from advface.errors import DataError
from advface.models.adhoc import atomic_save_tensors

IMAGE_SIZE = 150
PRELOAD_DIR = "adhoc-preload"


class TrainDataConfig(DataConfig):
    """:class:`advface.config.DataConfig` plus the image source and the validation hold-out.

    Defaults differ from the evaluation config where training needs it: ``min_images`` 20 (the
    62 people of the usual LFW closed-set benchmark) and no distractors (they are not classes).
    """

    source: Literal["center-crop", "chips"] = Field(
        "center-crop",
        description="center-crop: central 150x150 of each (deep-funneled) LFW image; chips: the "
        "dlib-aligned 150x150 chips of `advface model align` (what the pretrained model sees)",
    )
    min_images: int = Field(20, ge=2, description="people with fewer images are left out")
    distractors: bool = Field(False, description="ignored for training (not classes)")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=0.5,
        description="per-person fraction of gallery images held out for model selection",
    )


@dataclass
class PreparedData:
    """Everything the training loop and the evaluation need, in memory."""

    split: ClosedSetSplit
    identities: list[str]
    gallery_keys: list[str]
    gallery_images: torch.Tensor  # uint8 (G, 3, 150, 150)
    gallery_labels: torch.Tensor  # int64 (G,)
    probe_keys: list[str]
    probe_images: torch.Tensor
    probe_labels: torch.Tensor
    train_idx: torch.Tensor  # indices into the gallery arrays
    val_idx: torch.Tensor
    source_id: str

    @property
    def train_keys(self) -> list[str]:
        return [self.gallery_keys[i] for i in self.train_idx.tolist()]

    @property
    def val_keys(self) -> list[str]:
        return [self.gallery_keys[i] for i in self.val_idx.tolist()]


def stratified_holdout(
    keys: list[str], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split positions of ``keys`` into (train, val), ``round(fraction * n)`` val per identity.

    Each person keeps at least one training image and, when ``fraction > 0`` and they have at
    least two images, gives at least one to validation. Deterministic per (seed, identity).
    """
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(identity_of(key), []).append(i)
    train: list[int] = []
    val: list[int] = []
    for name in sorted(groups):
        idx = groups[name]
        n_val = 0
        if fraction > 0 and len(idx) >= 2:
            n_val = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        shuffled = list(idx)
        random.Random(f"advface:adhoc-val:{seed}:{name}").shuffle(shuffled)
        val += shuffled[:n_val]
        train += shuffled[n_val:]
    return sorted(train), sorted(val)


def _source(cfg: TrainDataConfig, records: dict[str, ImageRecord]):
    """(source id, loader of uint8 (N, 150, 150, 3) arrays for keys, content ids of keys)."""
    if cfg.source == "chips":
        # imports dlib: only when chips are used
        from advface.align.chips import ChipIndex, source_matches

        index = ChipIndex.open(cfg.resolved_cache_dir())
        if index.params.size != IMAGE_SIZE:
            raise DataError(f"chips are {index.params.size}px, the ad-hoc model needs "
                            f"{IMAGE_SIZE}px", path=index.root, fix="align with size 150")

        def chip_contents(keys: list[str]) -> list[str]:
            missing = [k for k in keys if k not in index]
            if missing:
                raise DataError(
                    f"{len(missing)} image(s) have no aligned chip, e.g. {missing[:3]}",
                    path=index.root,
                    fix="run `advface model align` on this data set first (or use "
                    "source: center-crop)",
                )
            for k in keys:
                if not source_matches(index.entries[k], records[k].path)[0]:
                    raise DataError(
                        f"the cached chip of {k!r} was made from another image than this file "
                        "(another data set with the same names, or the image changed)",
                        path=records[k].path,
                        fix="run `advface model align` on this data set (it re-aligns "
                        "changed images), or give each data set its own --cache",
                    )
            return [index.content_id(k) for k in keys]

        def load_chips(keys: list[str]) -> np.ndarray:
            # prepare_data has checked these keys with chip_contents (it keys the cache)
            out = np.empty((len(keys), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
            for i, k in enumerate(tqdm(keys, desc="loading chips", unit="img", leave=False)):
                out[i] = index.load_uint8([k])[0]
            return out

        return f"chips:{index.chipset_id}", load_chips, chip_contents

    def load_crops(keys: list[str]) -> np.ndarray:
        out = np.empty((len(keys), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        for i, k in enumerate(tqdm(keys, desc="decoding images", unit="img", leave=False)):
            out[i] = center_crop(load_rgb(records[k].path), IMAGE_SIZE)
        return out

    def crop_contents(keys: list[str]) -> list[str]:
        out = []
        for k in keys:
            try:
                st = records[k].path.stat()
            except OSError as err:
                raise DataError(f"cannot read {k!r}: {err}", path=records[k].path,
                                fix="restore the file or rescan the data set") from err
            out.append(f"{st.st_size}:{st.st_mtime_ns}")
        return out

    return "center-crop-150", load_crops, crop_contents


def preload(
    keys: list[str], source_id: str, loader, cache_dir: Path | None,
    contents: list[str] | None = None,
) -> torch.Tensor:
    """uint8 ``(N, 3, 150, 150)`` for ``keys``, from the on-disk cache when it is there.

    ``contents`` (one id per key of what its image is) joins the cache key, so the same keys
    with other images are a cache miss, not stale pixels."""
    digest = hashlib.sha256(json.dumps([source_id, keys, contents]).encode()).hexdigest()[:20]
    path = cache_dir / PRELOAD_DIR / f"{digest}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            images = load_file(path)["images"]
            if images.dtype == torch.uint8 and tuple(images.shape) == (
                    len(keys), 3, IMAGE_SIZE, IMAGE_SIZE):
                return images
        except (SafetensorError, OSError, KeyError, ValueError):
            pass  # a damaged cache is rebuilt below
    images = torch.from_numpy(loader(keys)).permute(0, 3, 1, 2).contiguous()
    if path is not None:
        atomic_save_tensors({"images": images}, path)
    return images


def prepare_data(cfg: TrainDataConfig, split: ClosedSetSplit | None = None) -> PreparedData:
    """Open LFW, make (or reuse) the closed-set split, hold out validation, preload images."""
    lfw = open_lfw(cfg.resolved_data_dir(), cfg.resolved_cache_dir())
    if split is None:
        kwargs = cfg.split_kwargs()
        kwargs["distractors"] = False
        split = make_closed_set_split(lfw.records, **kwargs)
    enrolled = set(split.identities)
    gallery_keys = [k for k in split.gallery if identity_of(k) in enrolled]
    probe_keys = list(split.probes)
    by_key = lfw.by_key
    missing = [k for k in gallery_keys + probe_keys if k not in by_key]
    if missing:
        raise DataError(f"{len(missing)} split image(s) are not in the data set, e.g. "
                        f"{missing[:3]}", path=lfw.image_root,
                        fix="use the data set the split was made from")
    source_id, loader, contents = _source(cfg, by_key)
    all_keys = gallery_keys + probe_keys
    images = preload(all_keys, source_id, loader, cfg.resolved_cache_dir(), contents(all_keys))
    index = split.identity_index()
    labels = torch.tensor([index[identity_of(k)] for k in all_keys], dtype=torch.int64)
    g = len(gallery_keys)
    train, val = stratified_holdout(gallery_keys, cfg.val_fraction, cfg.seed)
    return PreparedData(
        split=split,
        identities=list(split.identities),
        gallery_keys=gallery_keys,
        gallery_images=images[:g],
        gallery_labels=labels[:g],
        probe_keys=probe_keys,
        probe_images=images[g:],
        probe_labels=labels[g:],
        train_idx=torch.tensor(train, dtype=torch.int64),
        val_idx=torch.tensor(val, dtype=torch.int64),
        source_id=source_id,
    )
