"""Embeddings of aligned chips, computed in batches and cached on disk per model and chipset.

Every evaluation, attack and report needs the clean embeddings of all gallery and probe images;
on two CPU cores that is about a minute per model for LFW, so they are cached in
``cache_dir/embeddings/<model_fingerprint>/<source_id>__<preprocessing>.safetensors``. The model
fingerprint hashes the weights themselves (not a name or a path), so a retrained or different
model never picks up stale embeddings; rows of chips are keyed by the record key *and* the chip's
source hash (:meth:`ChipIndex.content_id`), so a key re-aligned from another image (a data set
reusing LFW's names, say) is recomputed, never served stale. The cache grows incrementally
(only missing keys are computed) and is rewritten atomically every few batches, so an
interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from advface.align.chips import ChipIndex
from advface.errors import DataError
from advface.models.modes import eval_mode

SAVE_EVERY_BATCHES = 20


def declared_identities(model: nn.Module) -> list[str]:
    """What modules say about themselves beyond their tensors (``cache_identity``).

    A forward pass can depend on more than the weights: an ONNX graph's operations (the state
    dict holds only its weights) or a channel order. Such a module names it in
    ``cache_identity`` so that two models computing different things never share a hash.
    """
    return [f"{name}={ident}" for name, m in model.named_modules()
            if (ident := getattr(m, "cache_identity", None)) is not None]


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the class name, the declared interface, the modules' declared identities and
    every state-dict tensor's bytes."""
    h = hashlib.sha256()
    cls = type(model)
    h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    for attr in ("input_size", "embedding_dim", "metric"):
        h.update(f"|{attr}={getattr(model, attr, None)!r}".encode())
    for ident in declared_identities(model):
        h.update(f"|{ident}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"|{name}:{t.dtype}:{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def prepare_input(images: torch.Tensor, input_size: int | None) -> torch.Tensor:
    """Resize ``(N, 3, H, W)`` images to the model's square input size (differentiably).

    Bilinear with antialiasing, so a 150->112 or 150->64 resize is a proper low-pass, not
    aliasing that an attack could exploit. Images already at the size pass through untouched.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
    if input_size is None or tuple(images.shape[-2:]) == (input_size, input_size):
        return images
    return F.interpolate(
        images, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False
    )


def preprocessing_id(image_size: int, input_size: int | None) -> str:
    """Names the preprocessing between stored images and the model, for the cache key."""
    if input_size is None or input_size == image_size:
        return f"native{image_size}"
    return f"bilinear-aa-{image_size}to{input_size}"


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


class _EmbeddingCache:
    """One safetensors file: an ``(M, D)`` matrix plus its row keys in the metadata."""

    def __init__(self, path: Path | None, meta: dict[str, str]):
        self.path = path
        self.meta = meta
        self.rows: dict[str, torch.Tensor] = {}
        if path is not None and path.is_file():
            self._read(path)

    def _read(self, path: Path) -> None:
        try:
            with safe_open(str(path), framework="pt") as fh:
                keys = json.loads((fh.metadata() or {}).get("keys", "[]"))
            matrix = load_file(str(path))["embeddings"]
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError, ValueError):
            return  # unreadable cache: recompute rather than trust it
        if matrix.ndim != 2 or matrix.shape[0] != len(keys):
            return
        self.rows = {k: matrix[i] for i, k in enumerate(keys)}

    def save(self) -> None:
        if self.path is None or not self.rows:
            return
        keys = sorted(self.rows)
        matrix = torch.stack([self.rows[k] for k in keys]).contiguous()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".emb.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            save_file({"embeddings": matrix}, tmp, metadata={**self.meta, "keys": json.dumps(keys)})
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def embed(
    model: nn.Module,
    images_or_chipindex: torch.Tensor | ChipIndex,
    keys: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Embeddings ``(N, D)`` (float32, CPU) of ``keys`` from a chip index, or of an image tensor.

    With a :class:`ChipIndex`, ``keys`` selects the chips (default: all, sorted) and rows come
    back in that order; with a tensor ``(N, 3, H, W)`` every image is embedded (``keys``, if
    given, must have ``N`` entries and names the rows in the cache). Runs under
    ``torch.no_grad()`` (not inference mode, whose tensors a model that builds state lazily
    would keep and then fail to attack) with the model in eval mode (each module's own mode is
    restored afterwards).
    ``cache_dir`` enables the on-disk cache described in the module docstring.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    input_size = getattr(model, "input_size", None)
    if isinstance(images_or_chipindex, ChipIndex):
        chips = images_or_chipindex
        keys = list(chips.keys if keys is None else keys)
        source_id = f"chips-{chips.chipset_id}"
        image_size = chips.params.size
        tensor = None
    elif isinstance(images_or_chipindex, torch.Tensor):
        chips = None
        tensor = images_or_chipindex
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(tensor.shape)}")
        if keys is None:
            keys = [str(i) for i in range(tensor.shape[0])]
        keys = list(keys)
        if len(keys) != tensor.shape[0]:
            raise ValueError(f"{len(keys)} keys for {tensor.shape[0]} images")
        digest = hashlib.sha256(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
        digest.update(json.dumps(keys).encode())
        source_id = f"tensor-{digest.hexdigest()[:16]}"
        image_size = int(tensor.shape[-1])
    else:
        raise TypeError(f"expected a ChipIndex or an image tensor, got {type(images_or_chipindex)}")
    if len(set(keys)) != len(keys):
        raise ValueError("keys contain duplicates")

    prep = preprocessing_id(image_size, input_size)
    fingerprint = model_fingerprint(model)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "embeddings" / fingerprint / f"{source_id}__{prep}.safetensors"
    cache = _EmbeddingCache(
        path,
        {
            "model_class": type(model).__qualname__,
            "model_fingerprint": fingerprint,
            "source_id": source_id,
            "preprocessing": prep,
        },
    )
    position = {k: i for i, k in enumerate(keys)}
    # Rows of chips are stored under the key plus what the chip was made from, so a key whose
    # image changed (re-aligned from another source) is recomputed, never served stale.
    row = ({k: f"{k}#{chips.content_id(k)}" for k in keys} if chips is not None
           else {k: k for k in keys})
    todo = [k for k in keys if row[k] not in cache.rows]
    if todo:
        device = _model_device(model)
        with eval_mode(model):  # each sub-module gets its own mode back
            bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc="embed", unit="img",
                       disable=not progress, dynamic_ncols=True)
            try:
                with torch.no_grad():
                    for b, start in enumerate(range(0, len(todo), batch_size)):
                        batch_keys = todo[start : start + batch_size]
                        if chips is not None:
                            x = chips.load(batch_keys)
                        else:
                            assert tensor is not None
                            x = tensor[[position[k] for k in batch_keys]]
                        x = prepare_input(x.to(device, torch.float32), input_size)
                        out = model(x).detach().to("cpu", torch.float32)
                        if out.ndim != 2 or out.shape[0] != len(batch_keys):
                            raise DataError(
                                f"model returned shape {tuple(out.shape)} for {len(batch_keys)} "
                                "images; expected (N, D) embeddings",
                                fix="pass an embedding model (forward -> (N, D))",
                            )
                        for k, emb in zip(batch_keys, out, strict=True):
                            cache.rows[row[k]] = emb.clone()
                        bar.update(len(batch_keys))
                        if (b + 1) % SAVE_EVERY_BATCHES == 0:
                            cache.save()
            finally:
                bar.close()
                cache.save()
    if not keys:
        return torch.empty(0, int(getattr(model, "embedding_dim", 0)))
    return torch.stack([cache.rows[row[k]] for k in keys])
