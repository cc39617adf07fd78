"""Training data preloading: a cache shared by data sets with the same names never serves
another data set's pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advface.config import parse_config
from advface.data.synthetic import make_tiny_lfw
from advface.errors import DataError
from advface.training.data import TrainDataConfig, prepare_data


def _cfg(data: Path, cache: Path, source: str) -> TrainDataConfig:
    return parse_config({"data_dir": str(data), "cache_dir": str(cache), "min_images": 3,
                         "val_fraction": 0.0, "source": source}, TrainDataConfig)


@pytest.mark.parametrize("source", ["center-crop", "chips"])
def test_same_keys_other_images_are_not_served_from_the_preload_cache(tmp_path: Path,
                                                                       source: str) -> None:
    sets = [make_tiny_lfw(tmp_path / f"set{s}", n_people=3, images_per_person=(4, 4), size=160,
                          seed=s) for s in (0, 1)]
    shared = tmp_path / "cache"
    got = []
    for data in (*sets, sets[0]):
        if source == "chips":
            from advface.align.chips import build_chips
            from advface.data.lfw import open_lfw

            build_chips(open_lfw(data, shared).records, shared, workers=1, progress=False)
        got.append(prepare_data(_cfg(data, shared, source)))
    assert got[0].gallery_keys == got[1].gallery_keys
    assert not torch.equal(got[0].gallery_images, got[1].gallery_images)
    assert torch.equal(got[0].gallery_images, got[2].gallery_images)
    alone = prepare_data(_cfg(sets[1], tmp_path / "alone", source)) if source == "center-crop" \
        else None
    if alone is not None:
        assert torch.equal(alone.gallery_images, got[1].gallery_images)


def test_chips_of_another_data_set_are_refused_with_the_fix(tmp_path: Path) -> None:
    from advface.align.chips import build_chips
    from advface.data.lfw import open_lfw

    sets = [make_tiny_lfw(tmp_path / f"set{s}", n_people=3, images_per_person=(4, 4), size=160,
                          seed=s) for s in (0, 1)]
    shared = tmp_path / "cache"
    build_chips(open_lfw(sets[0], shared).records, shared, workers=1, progress=False)
    with pytest.raises(DataError, match="another image") as err:
        prepare_data(_cfg(sets[1], shared, "chips"))  # set 1 was never aligned
    assert "advface model align" in str(err.value) and "set1" in str(err.value)
