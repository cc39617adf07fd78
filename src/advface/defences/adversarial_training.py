"""Adversarial training of the ad-hoc classifier: PGD (Madry et al. 2018) and fast FGSM-RS
(Wong, Rice & Kolter 2020).

Adversarial training replaces each training batch by adversarial examples crafted against the
current model, i.e. it minimises the worst-case loss within the budget instead of the average
loss. Two inner maximisations:

* ``pgd``: uniform random start in the L-inf ball, ``steps`` signed-gradient steps of size
  ``step_size`` (default ``2.5 * eps / steps``), projection after each step;
* ``fgsm-rs``: uniform random start, *one* signed step of ``1.25 * eps`` (Wong et al.'s
  choice), projection. About as robust as PGD training at the cost of two passes per batch;
  the random start is what avoids the "catastrophic overfitting" of plain FGSM training, and
  robust validation with real PGD (``val_steps``) is what detects it if it still happens.

Reuse of the standard pipeline (:mod:`advface.training.train`): same config (as the ``train``
section), same closed-set split and validation hold-out, same model, optimiser, learning-rate
schedule, sampling, augmentation, checkpoints, exact resume and probe evaluation. The only
change is in the batch step, plus model selection on *robust* validation accuracy (Rice et al.
2020 show robust accuracy peaks early and then overfits).

Resolution: like standard training, batches are at the model's internal resolution (64 px,
the area-pooled 150 px image; ``forward`` does exactly that pooling). Area pooling maps a
150 px perturbation with L-inf norm eps to one with norm <= eps, so the ball used here contains
every perturbation a 150 px attacker can make: training is against a (slightly) stronger
adversary than the one evaluated, never a weaker one.

Output folder: the standard layout (config.yaml with ``train`` and ``adversarial`` sections,
split.json, history.json/.csv with robust validation columns, resumable state, best model,
eval.json) plus ``robust_eval.json`` — clean and robust probe accuracy at ``evaluation.eps_8bit``
by :func:`advface.defences.evaluate.evaluate_defence` at 150 px, quantised, with PGD restarts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from pydantic import Field
from tqdm import tqdm

from advface.config import ConfigPath, StrictModel, load_yaml, to_yaml
from advface.errors import CheckpointError, ConfigError
from advface.models.adhoc import (
    AdHocNet,
    atomic_write_bytes,
    count_parameters,
    load_adhoc,
    save_adhoc,
)
from advface.training.augment import augment
from advface.training.data import PreparedData, TrainDataConfig
from advface.training.evaluate import format_table
from advface.training.losses import ClassificationLoss
from advface.training.train import (
    TrainConfig,
    TrainResult,
    _load_state,
    _save_state,
    build_model,
    build_optimiser,
    epoch_order,
    evaluate_prepared,
    keeps_caller_torch_state,
    lr_at,
    pool_images,
    prepare_run_data,
    validation_accuracy,
    with_absolute_paths,
)

if TYPE_CHECKING:
    from advface.defences.evaluate import DefenceEvaluation

AdvAttack = Literal["pgd", "fgsm-rs"]


class AdversarialConfig(StrictModel):
    """The inner maximisation and how the robust model is selected."""

    attack: AdvAttack = Field("pgd", description="pgd (Madry) or fgsm-rs (Wong et al.)")
    eps_8bit: float = Field(4.0, gt=0, le=64, description="L-inf budget in grey levels")
    steps: int = Field(5, ge=1, le=100, description="PGD steps (fgsm-rs always uses 1)")
    step_size_8bit: float | None = Field(
        None, gt=0, description="default: pgd 2.5*eps/steps, fgsm-rs 1.25*eps")
    eps_warmup_epochs: float = Field(
        0.0, ge=0, description="ramp eps linearly from 0 over this many epochs (stabilises "
        "training from scratch)")
    clean_weight: float = Field(
        0.0, ge=0, le=1, description="loss = (1-w) * adversarial + w * clean (0: pure Madry)")
    val_steps: int = Field(
        5, ge=0, description="PGD steps for robust validation accuracy, which selects the best "
        "epoch (0: select on clean validation accuracy)")
    init_checkpoint: ConfigPath | None = Field(
        None, description="start from this standard model (same split and classes): "
        "adversarial fine-tuning, much cheaper than training from scratch")

    def step_size(self) -> float:
        """Inner step size in [0, 1] units."""
        if self.step_size_8bit is not None:
            return self.step_size_8bit / 255.0
        eps = self.eps_8bit / 255.0
        return 1.25 * eps if self.attack == "fgsm-rs" else 2.5 * eps / self.steps

    def n_steps(self) -> int:
        return 1 if self.attack == "fgsm-rs" else self.steps


class RobustEvalConfig(StrictModel):
    """Probe evaluation after training (150 px, quantised, adaptive PGD)."""

    eps_8bit: list[float] = Field([2.0, 4.0, 8.0], description="empty: skip")
    naive_steps: int = Field(10, ge=1)
    steps: int = Field(50, ge=1, description="adaptive PGD steps")
    restarts: int = Field(2, ge=0, description="adaptive PGD random restarts")
    batch_size: int = Field(32, ge=1)


class AdvTrainConfig(StrictModel):
    """``train``: a standard :class:`TrainConfig`; ``adversarial``: the inner attack."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    evaluation: RobustEvalConfig = Field(default_factory=RobustEvalConfig)

    def identity_hash(self) -> str:
        """Hash of what determines the weights (resume refuses a different one)."""
        adv = self.adversarial.model_dump(mode="json")
        init = adv.pop("init_checkpoint")
        adv["init"] = _file_digest(Path(init)) if init else None
        doc = {"train": self.train.identity_hash(), "adversarial": adv}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    weights = path / "model.safetensors" if path.is_dir() else path
    try:
        return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    except OSError as err:
        # Hashing the name instead would make a resume look like "another config".
        raise CheckpointError(f"cannot read the init_checkpoint ({err.strerror or err})",
                              path=weights, fix="set adversarial.init_checkpoint to a trained "
                              "model (the run's identity includes its weights)") from err


def load_advtrain_config(path: str | Path) -> AdvTrainConfig:
    """YAML -> :class:`AdvTrainConfig` (errors name the file, line and key)."""
    return load_yaml(path, AdvTrainConfig)


# --------------------------------------------------------------------------- inner attack


class _Classifier(Protocol):
    """What the inner attack needs: raw features and the head's output on them."""

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def head_outputs(self, features: torch.Tensor) -> torch.Tensor: ...


def perturb_batch(
    model: _Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: ClassificationLoss,
    *,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Adversarial version of a training batch: random start, ``steps`` signed steps.

    Maximises the training loss itself (margin included for CosFace/ArcFace), as Madry et al.
    do. Only the input gradient is computed (``autograd.grad``), so no parameter gradient is
    accumulated; the model's mode is left as it is (train mode during training, like the
    reference implementations). Returns a detached tensor in [0, 1] within eps of ``x``.
    """
    if eps <= 0:
        return x.detach()
    x = x.detach()
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
    delta = ((x + eps * noise.to(x.device)).clamp(0, 1) - x)
    for _ in range(steps):
        delta.requires_grad_(True)
        inp = (x + delta).contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model.head_outputs(model.features(inp)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def robust_validation_accuracy(
    model: AdHocNet, data: PreparedData, small: torch.Tensor, adv: AdversarialConfig,
    batch_size: int, seed: int,
) -> tuple[float, float]:
    """(accuracy, balanced accuracy) of the validation images under PGD-``val_steps``.

    The attack uses cross-entropy on the *inference* logits (no margin) with the model in eval
    mode, i.e. it attacks the deployed decision. Seeded, so epochs are compared on equal terms.
    """
    if data.val_idx.numel() == 0 or adv.val_steps == 0:
        return float("nan"), float("nan")
    model.eval()
    xv, yv = small[data.val_idx], data.gallery_labels[data.val_idx]
    eps = adv.eps_8bit / 255.0
    alpha = max(2.5 * eps / adv.val_steps, 1.0 / 255.0)
    gen = torch.Generator().manual_seed(seed)
    inference = ClassificationLoss("softmax")
    scorer = _InferenceHead(model)
    hits = []
    for i in range(0, xv.shape[0], batch_size):
        x, y = xv[i : i + batch_size], yv[i : i + batch_size]
        xa = perturb_batch(scorer, x, y, inference, eps=eps, step_size=alpha,
                           steps=adv.val_steps, generator=gen)
        with torch.no_grad():
            hits.append((model.logits(xa).argmax(1) == y).float())
    hit = torch.cat(hits)
    per_class = torch.zeros(len(data.identities)).index_add_(0, yv, hit)
    counts = torch.bincount(yv, minlength=len(data.identities)).float()
    present = counts > 0
    return float(hit.mean()), float((per_class[present] / counts[present]).mean())


class _InferenceHead:
    """Adapter giving :func:`perturb_batch` the inference logits (``scale * cos``, no margin)."""

    def __init__(self, model: AdHocNet):
        self.model = model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def head_outputs(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.scores_from_features(feats)


# --------------------------------------------------------------------------- training loop


def _eps_at(adv: AdversarialConfig, epoch: int, batch: int, steps_per_epoch: int) -> float:
    eps = adv.eps_8bit / 255.0
    if adv.eps_warmup_epochs <= 0:
        return eps
    progress = (epoch + (batch + 1) / steps_per_epoch) / adv.eps_warmup_epochs
    return eps * min(1.0, progress)


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_bytes(out / "history.json", json.dumps(history, indent=2).encode())
    fields = ["epoch", "loss", "train_acc", "val_acc", "val_balanced_acc", "val_robust_acc",
              "val_robust_balanced_acc", "eps255", "lr", "seconds", "elapsed"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "history.csv", buf.getvalue().encode())


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2).encode())


def _init_from(model: AdHocNet, path: Path, data: PreparedData, data_cfg: TrainDataConfig
               ) -> None:
    """Start from a standard model, which must have been trained on this very split.

    Same classes are not enough: another split (another seed, probes_per_person, ...) of the
    same people puts this run's probes among the images the init model trained on.
    """
    src = load_adhoc(path)
    fix = ("fine-tune a model trained with the same data section (seed, min_images_per_person, "
           "probes_per_person, val_fraction, ...) as this config's train.data")
    if list(src.class_names) != list(model.class_names) or src.arch != model.arch:
        raise CheckpointError(
            "init_checkpoint does not match this training run (classes or architecture)",
            path=path, fix=fix)
    trained = src.metadata.get("training") or {}
    if trained.get("split_hash") != data.split.hash:
        raise CheckpointError(
            f"init_checkpoint was trained on another split (split hash "
            f"{trained.get('split_hash')!r}, this run's {data.split.hash!r}): this run's probes "
            "could be among its training images", path=path, fix=fix)
    # The training/validation hold-out is drawn from the gallery by (val_fraction, seed).
    # A standard model's config has `data`; an adversarially trained one's has `train.data`.
    config = trained.get("config") or {}
    theirs = config.get("data") or (config.get("train") or {}).get("data") or {}
    ours = {"val_fraction": data_cfg.val_fraction, "seed": data_cfg.seed}
    if {k: theirs.get(k) for k in ours} != ours:
        raise CheckpointError(
            f"init_checkpoint held out other validation images (its data val_fraction/seed "
            f"{theirs.get('val_fraction')!r}/{theirs.get('seed')!r}, this run's "
            f"{ours['val_fraction']!r}/{ours['seed']!r}): this run's validation images could be "
            "among its training images", path=path, fix=fix)
    model.load_state_dict(src.state_dict())


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Offset from the standard loop's per-epoch seed: a stream of its own for this loop.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_777_777)


@keeps_caller_torch_state
def adv_train(
    cfg: AdvTrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Adversarially train (or resume) an :class:`AdHocNet`; see the module docstring.

    ``stop_after_epochs`` ends this call after that many epochs, leaving a resumable state.
    ``evaluate`` writes eval.json (clean probes) and robust_eval.json (attacked probes).
    The caller's thread count and global RNG state are restored on return.
    """
    tc, adv = cfg.train, cfg.adversarial
    if tc.out_dir is None:
        raise ConfigError("no output folder given",
                          fix="set train.out_dir in the config or pass --out")
    if tc.loss.kind == "contrastive":
        raise ConfigError("adversarial training needs a classification head",
                          fix="set train.loss.kind to softmax, cosface or arcface")
    # Absolute paths: config.yaml in the run folder must point at the same data and model
    # when it is read back (resume, `defend evaluate --checkpoint`), wherever that happens.
    tc = with_absolute_paths(tc)
    if adv.init_checkpoint is not None:
        adv = adv.model_copy(
            update={"init_checkpoint": Path(adv.init_checkpoint).expanduser().resolve()})
    cfg = cfg.model_copy(update={"train": tc, "adversarial": adv})
    out = Path(tc.out_dir)
    torch.set_num_threads(tc.threads)
    state_exists = (out / "state.json").is_file()
    if state_exists and not resume:
        raise ConfigError("the output folder already holds a training run", path=out,
                          fix="pass --resume to continue it, or choose another --out")
    if resume and state_exists:
        saved = load_yaml(out / "config.yaml", AdvTrainConfig)
        if saved.identity_hash() != cfg.identity_hash():
            raise ConfigError(
                "the config differs from the one this run was started with",
                path=out / "config.yaml", fix="resume with that config, or start a new --out")
    out.mkdir(parents=True, exist_ok=True)

    data = prepare_run_data(tc.data, out, resume and state_exists)
    atomic_write_bytes(out / "config.yaml", to_yaml(cfg).encode())

    torch.default_generator.manual_seed(tc.seed)  # CPU only, as in train()
    model = build_model(tc, data.identities)
    if adv.init_checkpoint is not None and not (resume and state_exists):
        _init_from(model, Path(adv.init_checkpoint), data, tc.data)
    model = model.to(memory_format=torch.channels_last)
    opt = build_optimiser(tc, model)
    loss_fn = ClassificationLoss(tc.loss.kind, tc.loss.scale, tc.loss.margin,
                                 tc.loss.label_smoothing, tc.loss.easy_margin)
    small = pool_images(data.gallery_images, tc.model.internal_size)
    n_train = data.train_idx.numel()
    steps_per_epoch = max(1, (tc.samples_per_epoch or n_train) // tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    labels = data.gallery_labels[data.train_idx]

    epoch, step, elapsed = 0, 0, 0.0
    best_val, best_epoch, since_best = -1.0, 0, 0
    history: list[dict[str, Any]] = []
    if resume and state_exists:
        doc = _load_state(out, model, opt)
        epoch, step, elapsed = doc["epoch"], doc["step"], doc["elapsed_seconds"]
        best_val, best_epoch = doc["best_val_balanced_acc"], doc["best_epoch"]
        since_best, history = doc["epochs_since_best"], doc["history"]

    meta = {"config": cfg.model_dump(mode="json"), "config_hash": cfg.identity_hash(),
            "split_hash": data.split.hash, "source": data.source_id, "n_train": n_train,
            "n_val": int(data.val_idx.numel()), "n_params": count_parameters(model),
            "torch_version": torch.__version__, "adversarial": adv.model_dump(mode="json")}
    loss_meta = tc.loss.model_dump(mode="json")
    budget = tc.time_budget_minutes * 60.0 if tc.time_budget_minutes else None
    stop_reason, epochs_this_call = "epochs", 0
    select_robust = adv.val_steps > 0 and data.val_idx.numel() > 0
    if progress:
        tqdm.write(f"adversarial training ({adv.attack}, eps {adv.eps_8bit:g}/255, "
                   f"{adv.n_steps()} step(s)) of AdHocNet on {n_train} images of "
                   f"{len(data.identities)} people; {steps_per_epoch} steps/epoch")
    while epoch < tc.epochs:
        # Checked before an epoch, so that a resumed run which had stopped early stays stopped.
        if tc.patience is not None and since_best >= tc.patience:
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
        g = _epoch_generator(tc.seed, epoch)
        order = epoch_order(labels, tc, steps_per_epoch * tc.batch_size, g)
        model.train()
        tot_loss = tot_correct = 0.0
        finished = True
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{tc.epochs}",
                   unit="batch", leave=False, disable=not progress)
        for b in bar:
            if deadline is not None and time.monotonic() > deadline:
                finished = False
                break
            idx = order[b * tc.batch_size : (b + 1) * tc.batch_size]
            x = augment(small[data.train_idx[idx]], tc.augment, g)
            y = labels[idx]
            lr = lr_at(tc, step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            eps = _eps_at(adv, epoch, b, steps_per_epoch)
            xa = perturb_batch(model, x, y, loss_fn, eps=eps,
                               step_size=adv.step_size() * eps / (adv.eps_8bit / 255.0),
                               steps=adv.n_steps(), generator=g)
            out_adv = model.head_outputs(model.features(
                xa.contiguous(memory_format=torch.channels_last)))
            loss = loss_fn(out_adv, y)
            if adv.clean_weight > 0:
                out_clean = model.head_outputs(model.features(
                    x.contiguous(memory_format=torch.channels_last)))
                loss = (1 - adv.clean_weight) * loss + adv.clean_weight * loss_fn(out_clean, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ConfigError(f"training diverged (loss {value}) at epoch {epoch + 1}",
                                  fix="lower lr or eps, or add eps_warmup_epochs")
            tot_loss += value * y.numel()
            tot_correct += float((loss_fn.train_logits(out_adv, y).argmax(1) == y).sum())
            bar.set_postfix(loss=f"{value:.3f}", eps=f"{eps * 255:.1f}")
        bar.close()
        if not finished:
            stop_reason = "time budget"
            break
        val_plain, val_bal = validation_accuracy(model, data, small, tc.eval_batch_size)
        rob_plain, rob_bal = robust_validation_accuracy(
            model, data, small, adv, tc.eval_batch_size, seed=tc.seed)
        seconds = time.monotonic() - started
        elapsed += seconds
        epoch += 1
        epochs_this_call += 1
        n_seen = steps_per_epoch * tc.batch_size
        row = {"epoch": epoch, "loss": tot_loss / n_seen, "train_acc": tot_correct / n_seen,
               "val_acc": _num(val_plain), "val_balanced_acc": _num(val_bal),
               "val_robust_acc": _num(rob_plain), "val_robust_balanced_acc": _num(rob_bal),
               "eps255": round(_eps_at(adv, epoch - 1, steps_per_epoch - 1,
                                       steps_per_epoch) * 255, 4),
               "lr": lr_at(tc, step - 1, total_steps), "seconds": round(seconds, 3),
               "elapsed": round(elapsed, 3)}
        history.append(row)
        score = rob_bal if select_robust else val_bal
        # While eps still ramps up, robust accuracies of different epochs are not comparable:
        # the latest model is kept and selection starts once the full eps is reached.
        comparable = not math.isnan(score) and epoch >= adv.eps_warmup_epochs
        if not comparable or score >= best_val:
            if comparable and score > best_val:
                since_best = 0
            if comparable:
                best_val = score
            best_epoch = epoch
            save_adhoc(model, out / "model.safetensors", loss=loss_meta,
                       training={**meta, "epoch": epoch,
                                 "val_balanced_acc": row["val_balanced_acc"],
                                 "val_robust_balanced_acc": row["val_robust_balanced_acc"],
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
            tqdm.write(f"epoch {epoch:3d}  loss {row['loss']:.4f}  adv-train "
                       f"{row['train_acc']:.3f}  val {val_bal:.3f}  val-robust {rob_bal:.3f}  "
                       f"eps {row['eps255']:.2f}  {seconds:.1f}s")

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
        result.evaluation = evaluate_prepared(best, data, tc.eval_batch_size)
        _write_json(out / "eval.json", result.evaluation)
        if progress:
            tqdm.write(format_table(result.evaluation))
        if cfg.evaluation.eps_8bit:
            robust = robust_probe_evaluation(best, data, cfg.evaluation, seed=tc.seed,
                                             progress=progress)
            _write_json(out / "robust_eval.json", robust.to_json())
            result.evaluation["robust"] = robust.to_json()
            if progress:
                tqdm.write(robust.table())
    return result


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v


def robust_probe_evaluation(model: AdHocNet, data: PreparedData, ev: RobustEvalConfig, *,
                            seed: int = 0, progress: bool = False) -> DefenceEvaluation:
    """Clean, naive (PGD-``naive_steps``) and adaptive (PGD with restarts) probe accuracy."""
    from advface.defences.evaluate import default_attacks, evaluate_defence
    from advface.interpret.scoring import LogitScorer

    scorer = LogitScorer(model).eval()
    images = data.probe_images.to(torch.float32) / 255.0
    plans = default_attacks(scorer, has_undefended=False, naive_steps=ev.naive_steps,
                            adaptive_steps=ev.steps, adaptive_restarts=ev.restarts)
    return evaluate_defence(scorer, images, data.probe_labels, eps_8bit=ev.eps_8bit,
                            attacks=plans, seed=seed, batch_size=ev.batch_size,
                            progress=progress)

