"""Turn a ModelSpec into a face model and an identity-score module over the run's gallery.

Every decision is a score module (images -> per-identity scores, argmax = decision), so the
attacks (ours or a peer library's) see one kind of object whatever the classifier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from advface.errors import CheckpointError
from advface.experiments.config import ModelSpec
from advface.models.softmax_scorer import SoftmaxScorer


def fingerprint(model: nn.Module, *, legacy: bool = False) -> str:
    """Hash of the weights, class name and declared identities (an ONNX graph's operations):
    guards a resumed run, names the model in the report. ``legacy``: without the declared
    identities, as runs recorded it before they were added."""
    from advface.identify.embeddings import declared_identities

    h = hashlib.sha256(type(model).__name__.encode())
    for ident in [] if legacy else declared_identities(model):
        h.update(ident.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(spec: ModelSpec, *, train_fn=None) -> nn.Module:
    """Build the face model of ``spec`` (training the ad-hoc one first if it has no checkpoint)."""
    if spec.source == "dlib":
        from advface.models.registry import load_face_model

        model = load_face_model(spec.checkpoint if spec.checkpoint is not None else "dlib")
    elif spec.source == "onnx":
        from advface.models.onnx_loader import load_onnx_model

        kwargs = {}
        if spec.input_size is not None:
            kwargs["input_size"] = spec.input_size
        if spec.metric is not None:
            kwargs["metric"] = spec.metric
        model = load_onnx_model(spec.checkpoint, **kwargs)
    else:
        from advface.models.adhoc import load_adhoc

        ckpt = spec.checkpoint
        unfinished = ckpt is None or not training_finished(Path(ckpt))
        if unfinished and spec.train_config is not None:
            if train_fn is None:
                raise CheckpointError("ad-hoc checkpoint not (fully) trained and training is "
                                      "disabled", path=ckpt,
                                      fix="run (or resume) advface train adhoc first")
            ckpt = train_fn(spec)  # resumes an interrupted training run
        elif ckpt is None or not Path(ckpt).exists():
            raise CheckpointError("ad-hoc checkpoint not found", path=ckpt,
                                  fix="train it first (advface train adhoc) or give "
                                  "'train_config' so the run trains it")
        model = load_adhoc(ckpt)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def same_model(model: nn.Module, recorded: str, current: str) -> bool:
    """Whether ``model`` (fingerprint ``current``) is the one a run recorded; the legacy form
    is hashed only when the current one differs."""
    return recorded == current or recorded == fingerprint(model, legacy=True)


def training_finished(ckpt: Path) -> bool:
    """Whether ``ckpt`` holds a finished model, not a training run stopped mid-way.

    A training run writes its best model after every improving epoch, so the model file
    existing says nothing: a run killed at epoch 1 of 50 has one. Only the final save records
    why training stopped. A model with no training state beside it is taken as given.
    """
    run = ckpt if ckpt.is_dir() else ckpt.parent
    if not ckpt.exists():
        return False
    if not (run / "state.json").is_file():
        return True
    try:
        meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
        reason = meta["training"].get("stop_reason")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return reason is not None and reason != "interrupted"


@dataclass
class LoadedModel:
    """A face model with its decision module over the run's gallery."""

    spec: ModelSpec
    model: nn.Module
    scorer: nn.Module
    fingerprint: str


def build_scorer(spec: ModelSpec, model: nn.Module, identity_names: list[str],
                 gallery_keys: Sequence[str] = (), gallery_labels: Tensor | None = None,
                 chips: Any = None, *, batch_size: int = 32, cache_dir: Path | None = None,
                 progress: bool = False) -> nn.Module:
    """The decision module of ``spec`` over the run's gallery, in eval mode.

    One function for the runner and for everything that later re-opens a run (saliency of a
    run's probes): both must score identities exactly the same way. ``softmax`` needs no
    gallery; the gallery decisions embed ``gallery_keys`` from ``chips`` (cached on disk).
    """
    if spec.decision == "softmax":
        scorer: nn.Module = SoftmaxScorer(model, identity_names)
    else:
        from advface.identify.embeddings import embed
        from advface.identify.gallery import Gallery, GalleryScorer

        if chips is None or gallery_labels is None:
            raise CheckpointError(f"model {spec.name!r} decides over a gallery, but no gallery "
                                  "images were given", fix="pass the run's gallery chips")
        emb = embed(model, chips, list(gallery_keys), batch_size=batch_size,
                    cache_dir=cache_dir, progress=progress)
        gallery = Gallery(emb, gallery_labels, identity_names, model.metric)
        mode = "centroid" if spec.decision == "gallery-centroid" else "nearest"
        scorer = GalleryScorer(model, gallery, mode=mode)
    return scorer.eval()
