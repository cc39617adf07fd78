"""Training loop of the ad-hoc classifier: config, epochs, checkpoints, exact resume, time budget.

Why it is built this way:

* **Closed-set protocol** (see :mod:`advface.training.data`): learn from gallery images only,
  select the model on a stratified validation hold-out of the gallery, touch the probes once.
* **Speed on 2 CPU cores**: images are decoded once and area-pooled once to the network's
  internal resolution (the model does exactly this pooling in ``forward``, so feeding pooled
  images is numerically the same function); augmentation then runs at that small size.
* **Exact resume**: after every epoch the full state (model, optimiser, step, RNG, history, best
  score) is written atomically; each epoch's sampling and augmentation draw from a generator
  seeded by ``(seed, epoch)``, and the learning rate is a pure function of the step, so an
  interrupted run resumed with ``resume=True`` produces the same weights as an uninterrupted one
  (on the same machine and thread count).
* **Time budget**: an epoch that would end past the budget is not started (or is abandoned);
  the best model so far is always on disk.

Output directory::

    config.yaml           the resolved config
    split.json            the closed-set split (advface.data.splits format)
    train_split.json      gallery keys used for training and for validation
    history.json/.csv     per epoch: loss, train_acc, val_acc, val_balanced_acc, lr, seconds
    state.json + state-epochNNNN.safetensors   resumable training state (latest epoch)
    model.safetensors + model.json             best model by balanced validation accuracy
    eval.json             probe evaluation of the best model (softmax head and gallery NN)
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm

from advface.config import ConfigPath, StrictModel, load_yaml, to_yaml
from advface.errors import CheckpointError, ConfigError, DataError
from advface.models.adhoc import (
    AdHocArch,
    AdHocNet,
    atomic_save_tensors,
    atomic_write_bytes,
    count_parameters,
    load_adhoc,
    load_state_checked,
    save_adhoc,
)
from advface.training.augment import AugmentConfig, augment
from advface.training.data import PreparedData, TrainDataConfig, prepare_data
from advface.training.evaluate import as_float, evaluate_model, format_table, gallery_scores
from advface.training.losses import ClassificationLoss, contrastive_loss, sample_pairs

STATE_FORMAT = "advface-adhoc-train-state"
STATE_VERSION = 1


# --------------------------------------------------------------------------- config


class ModelConfig(StrictModel):
    """Architecture of :class:`AdHocNet` (the head follows from the loss)."""

    widths: list[int] = Field([32, 64, 128], min_length=1, description="channels per stage")
    blocks: list[int] = Field([1, 2, 2], min_length=1, description="residual blocks per stage")
    internal_size: int = Field(64, ge=16, le=150, description="resolution the trunk sees")
    embedding_dim: int = Field(128, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="before the embedding layer")


class LossConfig(StrictModel):
    """Which loss, and its hyper-parameters."""

    kind: Literal["softmax", "cosface", "arcface", "contrastive"] = "cosface"
    scale: float = Field(30.0, gt=0, description="cosface/arcface logit scale s")
    margin: float = Field(0.35, ge=0, lt=1.5, description="cosface (cos) / arcface (radians)")
    easy_margin: bool = Field(False, description="arcface: margin only where cos > 0")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    contrastive_margin: float = Field(1.0, gt=0, le=2.0, description="on unit embeddings")
    pairs_per_batch: int = Field(512, ge=1)
    positive_fraction: float = Field(0.5, ge=0, le=1)

    @property
    def head(self) -> str:
        return "none" if self.kind == "contrastive" else self.kind


class TrainConfig(StrictModel):
    """Everything a training run depends on (stored as config.yaml in the output folder)."""

    data: TrainDataConfig = Field(default_factory=TrainDataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(128, ge=2)
    optimiser: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum / adamw beta1")
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.2, ge=0, lt=1, description="share of steps warming up")
    sampling: Literal["natural", "sqrt", "balanced", "pk"] = Field(
        "sqrt",
        description="natural: each image once per epoch; sqrt/balanced: draw images with class "
        "probability proportional to sqrt(n_class)/uniform (George_W_Bush has 530 images); "
        "pk: batches of batch_size/pk_images people with pk_images images each (siamese)",
    )
    pk_images: int = Field(4, ge=2, description="images per person in a 'pk' batch")
    samples_per_epoch: int | None = Field(None, ge=2, description="default: training images")
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without "
                                 "validation improvement (null: never)")
    seed: int = Field(0, ge=0, description="training seed (the split has data.seed)")
    time_budget_minutes: float | None = Field(20.0, gt=0, description="training time cap")
    threads: int = Field(2, ge=1, description="torch CPU threads")
    eval_batch_size: int = Field(256, ge=1)
    out_dir: ConfigPath | None = Field(None, description="output folder (or --out)")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if len(self.model.widths) != len(self.model.blocks):
            raise ValueError("model.widths and model.blocks must have the same length")
        if self.sampling == "pk" and self.batch_size % self.pk_images:
            raise ValueError("with sampling 'pk', batch_size must be a multiple of pk_images")
        if self.model.internal_size % 2 ** len(self.model.widths):
            raise ValueError(f"model.internal_size must be divisible by "
                             f"{2 ** len(self.model.widths)} (each stage halves it)")
        return self

    def identity_hash(self) -> str:
        """Hash of what determines the weights (not where files live or the time budget)."""
        d = self.model_dump(mode="json")
        for key in ("out_dir", "time_budget_minutes", "threads", "eval_batch_size"):
            d.pop(key)
        d["data"].pop("data_dir")
        d["data"].pop("cache_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def load_train_config(path: str | Path) -> TrainConfig:
    """YAML -> :class:`TrainConfig`; problems are a ConfigError naming file, line and key."""
    return load_yaml(path, TrainConfig)


# --------------------------------------------------------------------------- schedule, sampling


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at optimiser step ``step`` (0-based): a pure function, so resume is exact.

    onecycle: cosine warm-up from lr/25 to lr over ``warmup_fraction`` of the steps, then cosine
    decay to lr/1e4 (Smith's one-cycle without momentum cycling). cosine: linear warm-up from 0,
    cosine decay to 0. constant: lr.
    """
    if cfg.schedule == "constant":
        return cfg.lr
    warm = int(cfg.warmup_fraction * total_steps)
    if cfg.schedule == "onecycle":
        start, end = cfg.lr / 25.0, cfg.lr / 1e4
        if step < warm:
            return start + (cfg.lr - start) * (1 - math.cos(math.pi * step / warm)) / 2
        t = (step - warm) / max(1, total_steps - warm)
        return end + (cfg.lr - end) * (1 + math.cos(math.pi * min(t, 1.0))) / 2
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total_steps - warm)
    return cfg.lr * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def epoch_order(
    labels: torch.Tensor, cfg: TrainConfig, n_samples: int, g: torch.Generator
) -> torch.Tensor:
    """Indices (into ``labels``) drawn for one epoch according to ``cfg.sampling``."""
    n = labels.numel()
    if cfg.sampling == "pk":
        return _pk_order(labels, cfg.batch_size, cfg.pk_images, n_samples, g)
    if cfg.sampling == "natural" and n_samples == n:
        return torch.randperm(n, generator=g)
    if cfg.sampling == "natural":
        return torch.randint(n, (n_samples,), generator=g)
    counts = torch.bincount(labels).to(torch.float64)
    power = 0.5 if cfg.sampling == "sqrt" else 0.0
    weights = counts[labels] ** (power - 1.0)  # class mass ~ n_c ** power
    return torch.multinomial(weights, n_samples, replacement=True, generator=g)


def _pk_order(labels: torch.Tensor, batch_size: int, k: int, n_samples: int,
              g: torch.Generator) -> torch.Tensor:
    """P x K batches: P distinct people (all people reshuffled per batch) with K images each,
    drawn with replacement, so every batch holds same-person pairs for a pair loss."""
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    n_classes, p = counts.numel(), batch_size // k
    batches = []
    for _ in range(max(1, n_samples // batch_size)):
        if p <= n_classes:
            cls = torch.randperm(n_classes, generator=g)[:p]
        else:
            cls = torch.randint(n_classes, (p,), generator=g)
        r = (torch.rand(p, k, generator=g) * counts[cls, None]).long()
        r = torch.minimum(r, counts[cls, None] - 1)
        batches.append(order[starts[cls, None] + r].flatten())
    return torch.cat(batches)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


# --------------------------------------------------------------------------- state I/O


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2).encode())


def prepare_run_data(data_cfg: TrainDataConfig, out: Path, resuming: bool) -> PreparedData:
    """The run's data: a fresh run draws the split and writes it; a resumed run reads its own.

    Resuming must never redraw the split from the data as it is now: with one image gone or
    another copy of the data, a person's probe could be redrawn from images the model has
    already trained on, and its evaluation would test on training data.
    """
    from advface.data.splits import ClosedSetSplit

    if not resuming:
        data = prepare_data(data_cfg)
        data.split.save(out / "split.json")
        _write_json(out / "train_split.json", {"source": data.source_id,
                                               "train": data.train_keys, "val": data.val_keys})
        return data
    data = prepare_data(data_cfg, ClosedSetSplit.load(out / "split.json"))
    held = out / "train_split.json"
    try:
        saved = json.loads(held.read_text(encoding="utf-8"))
        same = saved["train"] == data.train_keys and saved["val"] == data.val_keys
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot read the run's training/validation hold-out ({err})",
                        path=held, fix="start the run again in a new --out") from err
    if not same:
        raise DataError("the training/validation hold-out differs from the one this run "
                        "started with", path=held,
                        fix="resume with the data section the run was started with, or start "
                        "a new --out")
    return data


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    _write_json(out / "history.json", history)
    buf = io.StringIO()
    fields = ["epoch", "loss", "train_acc", "val_acc", "val_balanced_acc", "lr", "seconds",
              "elapsed"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "history.csv", buf.getvalue().encode())


def _save_state(out: Path, model: AdHocNet, opt: torch.optim.Optimizer,
                meta: dict[str, Any]) -> None:
    """Tensors to ``state-epochNNNN.safetensors`` and the rest to ``state.json``, both atomic.

    The JSON (written last) names the tensor file and its SHA-256, so a crash at any moment
    leaves a consistent pair: the old one, or the new one.
    """
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt_state["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tensors["rng/torch"] = torch.get_rng_state()
    name = f"state-epoch{meta['epoch']:04d}.safetensors"
    atomic_save_tensors(tensors, out / name)
    digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
    previous = _read_state_json(out) if (out / "state.json").is_file() else None
    doc = {"format": STATE_FORMAT, "version": STATE_VERSION, **meta,
           "tensors_file": name, "tensors_sha256": digest,
           "optim_param_groups": opt_state["param_groups"], "optim_scalars": scalars}
    _write_json(out / "state.json", doc)
    if previous and previous.get("tensors_file") not in (None, name):
        (out / previous["tensors_file"]).unlink(missing_ok=True)


def _read_state_json(out: Path) -> dict[str, Any]:
    path = out / "state.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"unreadable training state ({err})", path=path,
                              fix="delete the output folder and train again") from err
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise CheckpointError("not an advface training state", path=path,
                              fix="point --out at a folder written by `advface train adhoc`")
    if doc.get("version") != STATE_VERSION:
        raise CheckpointError(f"unsupported training state version {doc.get('version')!r}",
                              path=path, fix="train again with this advface version")
    return doc


def _load_state(out: Path, model: AdHocNet, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimiser and RNG from the latest state; returns the JSON metadata."""
    doc = _read_state_json(out)
    tpath = out / str(doc.get("tensors_file"))
    if not tpath.is_file():
        raise CheckpointError("training state tensors are missing", path=tpath,
                              fix="delete the output folder and train again")
    if hashlib.sha256(tpath.read_bytes()).hexdigest() != doc.get("tensors_sha256"):
        raise CheckpointError("training state tensors do not match their checksum (corrupt)",
                              path=tpath, fix="delete the output folder and train again")
    try:
        tensors = load_file(tpath)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"unreadable training state ({err})", path=tpath,
                              fix="delete the output folder and train again") from err
    load_state_checked(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
                       tpath)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, scalars in doc.get("optim_scalars", {}).items():
        state.setdefault(int(pid), {}).update(scalars)
    try:
        opt.load_state_dict({"state": state, "param_groups": doc["optim_param_groups"]})
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"optimiser state does not fit ({err})", path=tpath,
                              fix="resume with the config the run was started with") from err
    torch.set_rng_state(tensors["rng/torch"])
    return doc


# --------------------------------------------------------------------------- training


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Absolute paths, so the config.yaml saved in the run folder (whose relative paths would
    resolve against that folder) still points at the same data."""
    paths = {k: Path(v).expanduser().resolve()
             for k in ("data_dir", "cache_dir") if (v := getattr(cfg.data, k)) is not None}
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=paths),
                                  "out_dir": Path(cfg.out_dir).expanduser().resolve()})


@dataclass
class TrainResult:
    """What a run produced: where, how far it got, and how good the best model is."""

    out_dir: Path
    model_path: Path
    epochs_completed: int
    best_epoch: int
    best_val_balanced_acc: float
    stop_reason: str
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None


def build_model(cfg: TrainConfig, class_names: list[str]) -> AdHocNet:
    arch = AdHocArch(
        n_classes=len(class_names),
        head=cfg.loss.head,
        widths=tuple(cfg.model.widths),
        blocks=tuple(cfg.model.blocks),
        internal_size=cfg.model.internal_size,
        embedding_dim=cfg.model.embedding_dim,
        scale=cfg.loss.scale,
        dropout=cfg.model.dropout,
    )
    return AdHocNet(arch, class_names)


def build_optimiser(cfg: TrainConfig, model: AdHocNet) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only (not on BN parameters or biases)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimiser == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def pool_images(images: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """uint8 150x150 -> float [0, 1] at the model's internal size (same pooling as forward)."""
    out = []
    for i in range(0, images.shape[0], chunk):
        x = as_float(images[i : i + chunk])
        out.append(F.adaptive_avg_pool2d(x, size) if x.shape[-1] != size else x)
    return torch.cat(out) if out else torch.empty(0, 3, size, size)


@torch.inference_mode()
def validation_accuracy(
    model: AdHocNet, data: PreparedData, small: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(accuracy, balanced accuracy) on the validation images: the head's decision, or for a
    head-less model the nearest-neighbour decision against the training images (cosine).

    Balanced accuracy (mean per-person recall) is what selects the best epoch: the probes are
    one per person, so plain accuracy, dominated by George_W_Bush's 530 images, would favour
    a model that is good on the few frequent people only.
    """
    if data.val_idx.numel() == 0:
        return float("nan"), float("nan")
    model.eval()
    xv = small[data.val_idx]
    yv = data.gallery_labels[data.val_idx]

    def run(fn, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])

    if hasattr(model, "logits"):
        pred = run(model.logits, xv).argmax(1)
    else:
        train_emb = run(model, small[data.train_idx])
        scores = gallery_scores(run(model, xv), train_emb, data.gallery_labels[data.train_idx],
                                len(data.identities))
        pred = scores.argmax(1)
    hit = (pred == yv).float()
    per_class = torch.zeros(len(data.identities)).index_add_(0, yv, hit)
    counts = torch.bincount(yv, minlength=len(data.identities)).float()
    present = counts > 0
    return float(hit.mean()), float((per_class[present] / counts[present]).mean())


def _train_epoch(
    model: AdHocNet, opt: torch.optim.Optimizer, cfg: TrainConfig, data: PreparedData,
    small: torch.Tensor, epoch: int, step: int, total_steps: int, steps_per_epoch: int,
    loss_fn: ClassificationLoss | None, deadline: float | None, progress: bool,
) -> tuple[dict[str, float], int, bool]:
    """One epoch; returns (stats, new step, finished). ``finished`` is False past the deadline.

    ``train_acc`` is the margin-free head accuracy on the augmented batches; for the
    contrastive loss it is the share of sampled pairs on the right side of ``margin / 2``.
    """
    g = _epoch_generator(cfg.seed, epoch)
    labels = data.gallery_labels[data.train_idx]
    order = epoch_order(labels, cfg, steps_per_epoch * cfg.batch_size, g)
    model.train()
    total_loss, total_correct, total_seen = 0.0, 0.0, 0
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               leave=False, disable=not progress)
    for b in bar:
        if deadline is not None and time.monotonic() > deadline:
            bar.close()
            return {}, step, False
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        x = augment(small[data.train_idx[idx]], cfg.augment, g)
        y = labels[idx]
        lr = lr_at(cfg, step, total_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        feats = model.features(x.contiguous(memory_format=torch.channels_last))
        if loss_fn is not None:
            out = model.head_outputs(feats)
            loss = loss_fn(out, y)
            correct = float((out.argmax(1) == y).sum())
            seen = y.numel()
        else:
            emb = F.normalize(feats, dim=1)
            a, p, same = sample_pairs(y, cfg.loss.pairs_per_batch, cfg.loss.positive_fraction, g)
            loss = contrastive_loss(emb[a], emb[p], same, cfg.loss.contrastive_margin)
            d = (emb[a] - emb[p]).norm(dim=1)
            correct = float(((d < cfg.loss.contrastive_margin / 2) == same).sum())
            seen = same.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise ConfigError(f"training diverged (loss {loss_value}) at epoch {epoch + 1}",
                              fix="lower lr, or use a smaller margin/scale")
        total_loss += loss_value * y.numel()
        total_correct += correct
        total_seen += seen
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.4f}")
    bar.close()
    n = steps_per_epoch * cfg.batch_size
    return {"loss": total_loss / n, "train_acc": total_correct / max(1, total_seen),
            "lr": lr_at(cfg, step - 1, total_steps)}, step, True


_P = ParamSpec("_P")
_R = TypeVar("_R")


def keeps_caller_torch_state(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Give the caller back its torch thread count and global RNG state when ``fn`` ends.

    Training sets both for itself (``threads``, ``seed``); `advface run` trains a missing
    checkpoint in-process and then attacks, which must not inherit the training's thread count
    or a reseeded random stream. Restored on error too. CUDA streams are forked only when CUDA
    is already initialised: forking would initialise it, and training runs on the CPU.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        threads = torch.get_num_threads()
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        try:
            with torch.random.fork_rng(devices=cuda, device_type="cuda"):
                return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


@keeps_caller_torch_state
def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train (or resume) an :class:`AdHocNet` as ``cfg`` says; see the module docstring.

    ``stop_after_epochs`` ends this call after that many epochs *in this call*, leaving a
    resumable state, as an interruption would (used by tests and for chunked runs). The
    caller's thread count and global RNG state are restored on return.
    """
    if cfg.out_dir is None:
        raise ConfigError("no output folder given", fix="set out_dir in the config or pass --out")
    cfg = with_absolute_paths(cfg)
    out = Path(cfg.out_dir)
    torch.set_num_threads(cfg.threads)
    state_exists = (out / "state.json").is_file()
    if state_exists and not resume:
        raise ConfigError("the output folder already holds a training run", path=out,
                          fix="pass --resume to continue it, or choose another --out")
    if resume and state_exists:
        saved = load_yaml(out / "config.yaml", TrainConfig)
        if saved.identity_hash() != cfg.identity_hash():
            raise ConfigError(
                "the config differs from the one this run was started with (only out_dir, "
                "data paths, time_budget_minutes, threads and eval_batch_size may change)",
                path=out / "config.yaml", fix="resume with that config, or start a new --out",
            )
    out.mkdir(parents=True, exist_ok=True)

    data = prepare_run_data(cfg.data, out, resume and state_exists)
    atomic_write_bytes(out / "config.yaml", to_yaml(cfg).encode())

    # The CPU stream only (all training draws are on the CPU): torch.manual_seed would also
    # queue a seed for a not yet initialised CUDA, replacing the caller's, past the restore.
    torch.default_generator.manual_seed(cfg.seed)
    model = build_model(cfg, data.identities)
    # NHWC is ~1.5-2x faster for these convolutions on CPU (oneDNN); the values are the same.
    model = model.to(memory_format=torch.channels_last)
    opt = build_optimiser(cfg, model)
    loss_fn = None if cfg.loss.kind == "contrastive" else ClassificationLoss(
        cfg.loss.kind, cfg.loss.scale, cfg.loss.margin, cfg.loss.label_smoothing,
        cfg.loss.easy_margin)
    small = pool_images(data.gallery_images, cfg.model.internal_size)
    n_train = data.train_idx.numel()
    samples = cfg.samples_per_epoch or n_train
    steps_per_epoch = max(1, samples // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    epoch, step, elapsed = 0, 0, 0.0
    best_val, best_epoch, since_best = -1.0, 0, 0
    history: list[dict[str, Any]] = []
    if resume and state_exists:
        doc = _load_state(out, model, opt)
        epoch, step, elapsed = doc["epoch"], doc["step"], doc["elapsed_seconds"]
        best_val, best_epoch = doc["best_val_balanced_acc"], doc["best_epoch"]
        since_best, history = doc["epochs_since_best"], doc["history"]

    training_meta = {
        "config": cfg.model_dump(mode="json"), "config_hash": cfg.identity_hash(),
        "split_hash": data.split.hash, "source": data.source_id,
        "n_train": n_train, "n_val": int(data.val_idx.numel()),
        "n_params": count_parameters(model), "torch_version": torch.__version__,
    }
    loss_meta = cfg.loss.model_dump(mode="json")
    budget = cfg.time_budget_minutes * 60.0 if cfg.time_budget_minutes else None
    stop_reason = "epochs"
    epochs_this_call = 0
    if progress:
        tqdm.write(f"training AdHocNet ({count_parameters(model):,} params, loss "
                   f"{cfg.loss.kind}) on {n_train} images of {len(data.identities)} people, "
                   f"{len(data.val_keys)} for validation; {steps_per_epoch} steps/epoch")
    while epoch < cfg.epochs:
        # Checked before an epoch, so that a resumed run which had stopped early stays stopped.
        if cfg.patience is not None and since_best >= cfg.patience:
            stop_reason = "early stopping"
            break
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            stop_reason = "interrupted"
            break
        last = history[-1]["seconds"] if history else 0.0
        if budget is not None and elapsed + last > budget:
            stop_reason = "time budget"
            break
        started = time.monotonic()
        deadline = started + (budget - elapsed) if budget is not None else None
        stats, step_after, finished = _train_epoch(
            model, opt, cfg, data, small, epoch, step, total_steps, steps_per_epoch,
            loss_fn, deadline, progress)
        if not finished:
            stop_reason = "time budget"
            break
        step = step_after
        val_plain, val_acc = validation_accuracy(model, data, small, cfg.eval_batch_size)
        seconds = time.monotonic() - started
        elapsed += seconds
        epoch += 1
        epochs_this_call += 1
        has_val = not math.isnan(val_acc)
        row = {"epoch": epoch, **stats, "val_acc": val_plain if has_val else None,
               "val_balanced_acc": val_acc if has_val else None,
               "seconds": round(seconds, 3), "elapsed": round(elapsed, 3)}
        history.append(row)
        # Ties go to the later (longer-trained) epoch; without validation the last one wins.
        if not has_val or val_acc >= best_val:
            if not has_val or val_acc > best_val:
                since_best = 0
            best_val, best_epoch = (val_acc if has_val else best_val), epoch
            save_adhoc(model, out / "model.safetensors", loss=loss_meta,
                       training={**training_meta, "epoch": epoch,
                                 "val_balanced_acc": row["val_balanced_acc"],
                                 "history": history})
        else:
            since_best += 1
        _write_history(out, history)
        _save_state(out, model, opt, {
            "epoch": epoch, "step": step, "elapsed_seconds": elapsed,
            "best_val_balanced_acc": best_val, "best_epoch": best_epoch,
            "epochs_since_best": since_best, "history": history,
            "config_hash": cfg.identity_hash()})
        if progress:
            tqdm.write(f"epoch {epoch:3d}  loss {stats['loss']:.4f}  train "
                       f"{stats['train_acc']:.3f}  val {val_plain:.3f} (balanced {val_acc:.3f})  "
                       f"lr {stats['lr']:.4f}  "
                       f"{seconds:.1f}s")

    model_path = out / "model.safetensors"
    if best_epoch == 0:
        raise ConfigError("no epoch finished within the time budget", path=out,
                          fix="raise time_budget_minutes or make the model/epoch smaller")
    best = load_adhoc(model_path)
    best.metadata["training"]["history"] = history
    best.metadata["training"]["stop_reason"] = stop_reason
    save_adhoc(best, model_path)
    result = TrainResult(out, model_path, epoch, best_epoch, best_val, stop_reason, history)
    if evaluate and stop_reason != "interrupted":
        result.evaluation = evaluate_prepared(best, data, cfg.eval_batch_size)
        _write_json(out / "eval.json", result.evaluation)
        if progress:
            tqdm.write(format_table(result.evaluation))
    return result


def evaluate_prepared(model: AdHocNet, data: PreparedData, batch_size: int = 256
                      ) -> dict[str, Any]:
    """Probe evaluation against the whole enrolled gallery (training + validation images)."""
    return evaluate_model(model, data.gallery_images, data.gallery_labels, data.probe_images,
                          data.probe_labels, len(data.identities), batch_size)


def evaluate_run(out_dir: str | Path, data_dir: Path | None = None,
                 cache_dir: Path | None = None, compare: Sequence[str] = ()) -> dict[str, Any]:
    """Re-evaluate the best model of a finished run on its own split's probes.

    ``compare`` names registered embedding models (e.g. ``dlib``) evaluated by gallery nearest
    neighbour on the very same gallery and probe images, so the table is like for like.
    """
    from advface.data.splits import ClosedSetSplit

    out = Path(out_dir)
    if not (out / "model.json").is_file() or not (out / "split.json").is_file():
        raise CheckpointError("no trained ad-hoc model in this folder (model.json/split.json "
                              "missing)", path=out,
                              fix="pass the --out folder of a finished `advface train adhoc`")
    cfg = load_yaml(out / "config.yaml", TrainConfig)
    if data_dir is not None:
        cfg.data.data_dir = data_dir
    if cache_dir is not None:
        cfg.data.cache_dir = cache_dir
    model = load_adhoc(out / "model.safetensors")
    data = prepare_data(cfg.data, ClosedSetSplit.load(out / "split.json"))
    if list(model.class_names) != data.identities and model.class_names:
        raise CheckpointError("the model's classes differ from the split's identities",
                              path=out, fix="evaluate the model with the split it was trained on")
    result = evaluate_prepared(model, data, cfg.eval_batch_size)
    if compare:
        if cfg.data.source != "chips":
            raise ConfigError(f"comparing with {', '.join(compare)} needs the model trained on "
                              "aligned chips", fix="train with data.source: chips")
        from advface.models.registry import load_face_model

        result["compare"] = {}
        for name in compare:
            other = load_face_model(name).eval()
            result["compare"][name] = evaluate_model(
                other, data.gallery_images, data.gallery_labels, data.probe_images,
                data.probe_labels, len(data.identities), min(cfg.eval_batch_size, 32))
    return result
