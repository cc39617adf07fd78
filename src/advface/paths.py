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


def check_output(path: Path | None, *, folder: bool, option: str) -> None:
    """Before any work: an output that cannot be written (a folder where a file is due, a file
    where a folder is due, a file in the way of its parent folders) would otherwise fail only
    when the results are ready to be written, losing them."""
    if path is None:
        return
    from advface.errors import ConfigError

    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} names a file, not a folder", path=path,
                          fix=f"pass a folder for {option} (it is created when missing)")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} names a folder, not a file", path=path,
                          fix=f"pass a file name for {option}, such as results.json")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} lies under {parent}, which is a file", path=path,
                                  fix=f"pass a {option} path whose parent folders are folders")
            break


def default_cache_dir() -> Path:
    """Cache for extracted archives, chips and embeddings: $ADVFACE_CACHE, else ~/.cache/advface."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "advface"
