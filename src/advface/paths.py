"""Where data and caches live, so every command agrees without repeating options."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "ADVFACE_DATA"
CACHE_ENV = "ADVFACE_CACHE"


def default_data_dir() -> Path:
    """LFW directory: $ADVFACE_DATA, else ../shared/data/lfw beside the working directory."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path("../shared/data/lfw")


def default_cache_dir() -> Path:
    """Cache for extracted archives, chips and embeddings: $ADVFACE_CACHE, else ~/.cache/advface."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "advface"
