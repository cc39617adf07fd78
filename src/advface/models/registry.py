"""One entry point from a model name or file to a face model (`load_face_model`).

Why a registry: the CLI, experiments and tests name models by string ("dlib", a path to a user's
.onnx). Loaders are referenced as "module:function" strings and imported on first use, so
importing the registry stays cheap (no onnx/onnx2torch import unless an ONNX model is asked
for) and model modules can import the registry without cycles. Adding a model is one line in
`MODEL_LOADERS` (or one `register_model` call).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from advface.errors import CheckpointError

Loader = Callable[..., nn.Module]

# name -> loader (a callable, or "module:function" imported lazily).
MODEL_LOADERS: dict[str, Loader | str] = {
    "dlib": "advface.models.dlib_resnet:load_dlib_resnet",
    "dlib-flip": "advface.models.flip_average:load_dlib_flip",
    "dlib-jitter": "advface.models.jitter_average:load_dlib_jitter",
}

# file suffix -> loader taking the path as first argument.
SUFFIX_LOADERS: dict[str, Loader | str] = {
    ".onnx": "advface.models.onnx_loader:load_onnx_model",
    ".dat": "advface.models.dlib_resnet:load_dlib_resnet",
    ".safetensors": "advface.models.adhoc:load_adhoc",  # an ad-hoc checkpoint (+ JSON sidecar)
}


def register_model(name: str, loader: Loader | str, *, replace: bool = False) -> None:
    """Make `load_face_model(name, **kw)` call `loader(**kw)`."""
    if name in MODEL_LOADERS and not replace:
        raise ValueError(f"model name {name!r} is already registered")
    MODEL_LOADERS[name] = loader


def available_models() -> list[str]:
    """Registered model names, sorted (for CLI help and error messages)."""
    return sorted(MODEL_LOADERS)


def _resolve(loader: Loader | str) -> Loader:
    if callable(loader):
        return loader
    module_name, _, attr = loader.partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def load_face_model(name_or_path: str | Path, **kwargs: Any) -> nn.Module:
    """A face model by registered name, or by file (suffix picks the loader, path passed first).

    Keyword arguments go to the loader, e.g. `load_face_model("arcface.onnx", input_size=112)`.
    """
    key = str(name_or_path)
    if isinstance(name_or_path, str) and key in MODEL_LOADERS:
        return _resolve(MODEL_LOADERS[key])(**kwargs)
    path = Path(name_or_path)
    suffix = path.suffix.lower()
    if suffix in SUFFIX_LOADERS:
        return _resolve(SUFFIX_LOADERS[suffix])(path, **kwargs)
    known = ", ".join(available_models())
    kinds = ", ".join(sorted(SUFFIX_LOADERS))
    raise CheckpointError(
        f"unknown face model {key!r}: not a registered name ({known}) "
        f"and not a file of a known kind ({kinds})",
        path=path if path.suffix else None,
        fix=f"use one of: {known}, or the path of a {kinds} file",
    )


__all__ = [
    "MODEL_LOADERS",
    "SUFFIX_LOADERS",
    "available_models",
    "load_face_model",
    "register_model",
]
