"""`advface run`: compute every (model, attack, eps, goal, surface) cell of a study exactly once.

Finished work is durable: each batch of rows is one SQLite transaction and its adversarial PNGs
are written before the rows that point at them, so a run killed at any instant (even SIGKILL)
resumes where it stopped, with nothing lost or counted twice. Batches are fixed chunks of the
full, sorted probe list and each batch's seed derives from (cell, chunk), so a resumed run gives
the same rows as an uninterrupted one. Success is judged on the re-read PNG, i.e. on the image an
attacker could really submit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from advface import __version__
from advface.config import to_yaml
from advface.data.images import load_png, save_png
from advface.data.records import identity_of
from advface.data.splits import ClosedSetSplit, make_closed_set_split
from advface.errors import AdvfaceError, CheckpointError, ConfigError, DataError
from advface.experiments.config import AttackSpec, ExperimentConfig, ModelSpec
from advface.experiments.models import (
    LoadedModel,
    build_scorer,
    fingerprint,
    load_model,
    same_model,
    training_finished,
)
from advface.experiments.store import ResultsStore, cell_id
from advface.metrics.identification import identification_metrics, random_baseline_for
from advface.metrics.perturbation import perturbation_metrics

ProgressFn = Callable[[str], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write: a crash never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _seed_for(*parts: object) -> int:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _chunks(items: Sequence[str], size: int) -> Iterator[tuple[int, list[str]]]:
    for i in range(0, len(items), size):
        yield i // size, list(items[i : i + size])


def key_png(key: str) -> str:
    """Record key -> relative PNG path (keeps the identity folder)."""
    return str(Path(key).with_suffix(".png"))


@dataclass
class RunState:
    """Everything the cells share: config, split, identities, chips, models, store."""

    cfg: ExperimentConfig
    run_dir: Path
    store: ResultsStore
    split: ClosedSetSplit
    identity_names: list[str]
    probe_keys: list[str]
    chips: Any
    models: dict[str, LoadedModel] = field(default_factory=dict)
    lfw: Any = None

    def label(self, key: str) -> int:
        """Label of an image key: index of its identity in ``identity_names``."""
        return self._index[identity_of(key)]

    def identity_label(self, name: str) -> int:
        return self._index[name]

    def __post_init__(self) -> None:
        self._index = {n: i for i, n in enumerate(self.identity_names)}


class Runner:
    """Runs an ExperimentConfig into a run directory (see docs/run_dir.md)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, *, progress: bool = True,
                 log: ProgressFn | None = None,
                 train_fn: Callable[..., Path] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.log = log or (lambda msg: print(msg, flush=True))
        self.train_fn = train_fn
        check_device_available(cfg.device)
        self.state: RunState | None = None
        # Decisions already taken in this process, keyed by ([cell,] model, chunk keys): the
        # same model on the same batch gives the same answer, so every cell after the first
        # skips the clean forward pass, and a swept cell the one on the previous eps's images.
        self._clean_preds: dict[tuple[str, tuple[str, ...]], Tensor] = {}
        self._adv_success: dict[tuple[str, str, tuple[str, ...]], Tensor] = {}

    # ------------------------------------------------------------------ setup

    def _check_config_matches(self, fresh: bool) -> None:
        """Refuse to resume a run dir made by a different config: results would mix. A
        ``fresh`` one (no result yet, see _nothing_computed) is started again instead."""
        saved = self.run_dir / "config.yaml"
        text = to_yaml(self.cfg)
        differs = saved.is_file() and saved.read_text() != text
        if differs and fresh:
            for name in ("config.yaml", "run.json", "split.json", "results.sqlite",
                         "results.sqlite-wal", "results.sqlite-shm"):
                (self.run_dir / name).unlink(missing_ok=True)
            self.log(f"{self.run_dir} holds no result of its earlier start: starting it again "
                     "with this config")
        elif differs:
            raise AdvfaceError(
                "this run directory was made by a different config; resuming would mix results",
                path=saved, fix="use a new --out directory, or run with the config saved there",
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not saved.is_file():
            tmp = saved.with_suffix(".yaml.tmp")
            tmp.write_text(text)
            os.replace(tmp, saved)

    def _nothing_computed(self) -> bool:
        """True while the run directory holds no result, only the records a start-up writes:
        a first start that failed on a fixable mistake (a data_dir typo, a missing checkpoint,
        an unreadable image) must not lock the directory against the corrected config."""
        for sub in ("clean", "models", "verification", "images", "interpret", "defences"):
            folder = self.run_dir / sub
            if folder.is_dir() and any(folder.iterdir()):
                return False
        db = self.run_dir / "results.sqlite"
        if not db.exists():
            return True
        try:
            with ResultsStore(db, read_only=True) as store:
                return not store.cells()  # a row always belongs to a cell
        except AdvfaceError:
            return False  # not readable as a results store: leave it to the store's error

    def _read_run_json(self) -> dict[str, Any]:
        path = self.run_dir / "run.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read the run's record ({err})", path=path,
                            fix="restore the file, or start the study again in a new --out "
                            "(what it records, such as the images' hash, guards the resume)"
                            ) from None

    def _run_json(self, **updates: Any) -> dict[str, Any]:
        info = self._read_run_json()
        info.update(updates)
        _write_json(self.run_dir / "run.json", info)
        return info

    def setup(self) -> RunState:
        from advface.align.chips import build_chips
        from advface.data.lfw import open_lfw

        cfg = self.cfg
        fresh = self._nothing_computed()  # setup below writes records, never results
        self._check_config_matches(fresh)
        torch.manual_seed(cfg.seed)
        before = self._read_run_json()
        software = {"advface_version": __version__, "torch_version": torch.__version__}
        earlier = {k: before[k] for k in software if k in before and before[k] != software[k]}
        history: dict[str, Any] = {}
        if earlier:  # a resume by other software: say so, and keep what each part ran with
            self.log(f"resuming a run started with {earlier}; now {software}")
            history["earlier_software"] = [*(before.get("earlier_software") or []),
                                           {k: before.get(k) for k in software}]
        info = self._run_json(
            **software, **history, seed=cfg.seed,
            machine={"cpu": platform.processor() or platform.machine(),
                     "cores": os.cpu_count(), "gpu": torch.cuda.is_available()},
            config_hash=hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16],
            status="running",
        )
        if "started_at" not in info:
            self._run_json(started_at=_now())
        self._t0 = time.monotonic()
        self._wall_before = float(info.get("wall_seconds", 0.0))

        lfw = open_lfw(cfg.data.resolved_data_dir(), cfg.data.resolved_cache_dir())
        split_path = self.run_dir / "split.json"
        split = make_closed_set_split(lfw.records, **cfg.data.split_kwargs())
        if split_path.is_file():
            saved = ClosedSetSplit.load(split_path)
            if saved.hash != split.hash and fresh:
                split.save(split_path)  # the data set was corrected before any result
                self.log(f"{split_path}: the data set changed before any result; split renewed")
            elif saved.hash != split.hash:
                raise DataError("the data set changed since this run started (split differs)",
                                path=split_path, fix="use a new --out directory")
        else:
            split.save(split_path)
        identity_names = sorted({identity_of(k) for k in split.gallery})
        probes = sorted(split.probes)
        if cfg.n_probes is not None and cfg.n_probes < len(probes):
            probes = sorted(random.Random(cfg.seed).sample(probes, cfg.n_probes))
        by_key = lfw.by_key
        needed = sorted(set(split.gallery) | set(split.probes))
        self.log(f"aligning {len(needed)} images (cached after the first run)")
        chips = build_chips([by_key[k] for k in needed], cfg.data.resolved_cache_dir(),
                            upsample=cfg.align_upsample, progress=self.progress)
        missing = [k for k in needed if k not in chips]
        if missing:
            raise chips.missing_error(missing, lfw.image_root)
        if note := chips.replaced_note():
            self.log(note)
        images_hash = chips.ensure_images_of_run(
            needed, None if fresh else info.get("images_hash"),
            path=self.run_dir / "run.json",
            why=": resuming would mix results of two data sets",
            fix="use a new --out directory, or point the config's data_dir at the data set "
            "this run started with")
        stats = split.stats()
        root = Path(lfw.image_root)
        self._run_json(split_hash=split.hash, images_hash=images_hash,
                       data={"image_root": str(root), "name": root.name,
                             "lfw": root.name.lower().startswith("lfw")},
                       identity_names=identity_names,
                       models=[m.name for m in cfg.models], split_stats=stats,
                       n_probes_attacked=len(probes),
                       chip_fallbacks=int(sum(1 for k in needed
                                              if chips.methods.get(k) == "fallback")))
        self.state = RunState(cfg=cfg, run_dir=self.run_dir,
                              store=ResultsStore(self.run_dir / "results.sqlite"), split=split,
                              identity_names=identity_names, probe_keys=probes, chips=chips,
                              lfw=lfw)
        return self.state

    def load_models(self) -> None:
        st = self._require_state()
        gallery_keys = sorted(st.split.gallery)
        labels = torch.tensor([st.label(k) for k in gallery_keys])
        for spec in self.cfg.models:
            train_fn = None
            if self.train_fn is not None:
                train_fn = lambda s, f=self.train_fn: f(s, self.cfg.data)  # noqa: E731
            model = load_model(spec, train_fn=train_fn).to(self.cfg.device)
            if (spec.source == "adhoc" and spec.checkpoint is not None
                    and not training_finished(Path(spec.checkpoint))):
                # Without a train_config the run cannot finish it; say so rather than study
                # a half-trained model unawares.
                self.log(f"note: model {spec.name!r} comes from a training run that has not "
                         f"finished ({spec.checkpoint}); resume it with `advface train adhoc "
                         "--resume` for the trained model")
            fp = fingerprint(model)
            self._check_same_weights(spec, model, fp)
            scorer = build_scorer(spec, model, st.identity_names, gallery_keys, labels,
                                  st.chips, batch_size=self.cfg.batch_size,
                                  cache_dir=self.cfg.data.resolved_cache_dir(),
                                  progress=self.progress)
            st.models[spec.name] = LoadedModel(spec=spec, model=model, scorer=scorer,
                                               fingerprint=fp)
            self._write_model_json(spec, model, fp)

    def _check_same_weights(self, spec: ModelSpec, model: torch.nn.Module, fp: str) -> None:
        """Refuse to resume with other weights: one cell would hold two models' rows."""
        info = self.run_dir / "models" / f"{spec.name}.json"
        try:
            recorded = json.loads(info.read_text(encoding="utf-8")).get("fingerprint")
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError) as err:
            raise CheckpointError(f"cannot read the run's record of model {spec.name!r} "
                                  f"({err})", path=info,
                                  fix="use a new --out directory") from err
        if recorded is not None and not same_model(model, recorded, fp):
            raise CheckpointError(
                f"model {spec.name!r} has other weights (fingerprint {fp}) than the ones this "
                f"run started with ({recorded}); resuming would mix two models' results",
                path=spec.checkpoint or info,
                fix="restore the checkpoint the run started with, or use a new --out directory")

    def _write_model_json(self, spec: ModelSpec, model: torch.nn.Module, fp: str) -> None:
        history = None
        hist_path = getattr(model, "history_path", None)
        if spec.checkpoint is not None:
            ckpt = Path(spec.checkpoint)
            for cand in (ckpt / "history.json", ckpt.parent / "history.json"):
                if cand.is_file():
                    hist_path = cand
                    break
        if hist_path is not None and Path(hist_path).is_file():
            history = json.loads(Path(hist_path).read_text())
            if isinstance(history, dict) and "epochs" in history:
                history = history["epochs"]
        _write_json(self.run_dir / "models" / f"{spec.name}.json", {
            "name": spec.name, "kind": {"dlib": "pretrained"}.get(spec.source, spec.source),
            "description": (type(model).__doc__ or "").strip().splitlines()[0]
            if type(model).__doc__ else type(model).__name__,
            "fingerprint": fp, "input_size": int(getattr(model, "input_size", 0)),
            "embedding_dim": int(getattr(model, "embedding_dim", 0)),
            "metric": getattr(model, "metric", None),
            "n_params": int(sum(p.numel() for p in model.parameters())),
            "decision": spec.decision, "training_history": history,
        })

    def _require_state(self) -> RunState:
        if self.state is None:
            raise RuntimeError("call setup() first")
        return self.state

    # ------------------------------------------------------------------ helpers

    def _images(self, keys: Sequence[str]) -> Tensor:
        return self._require_state().chips.load(list(keys)).to(self.cfg.device)

    @torch.no_grad()
    def _scores(self, scorer: torch.nn.Module, keys: Sequence[str]) -> Tensor:
        out = []
        for _, chunk in _chunks(list(keys), self.cfg.batch_size):
            out.append(scorer(self._images(chunk)).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def _target_for(self, key: str) -> int:
        """Impersonation target: a fixed, seeded choice among the other enrolled identities."""
        st = self._require_state()
        enrolled = [st.identity_label(n) for n in st.split.identities]
        true = st.label(key)
        choices = [c for c in enrolled if c != true]
        return random.Random(_seed_for(self.cfg.seed, "target", key)).choice(choices)

    # ------------------------------------------------------------------ clean evaluation

    def clean_eval(self) -> None:
        st = self._require_state()
        probes = sorted(st.split.probes)
        labels = np.array([st.label(k) for k in probes])
        for name, lm in st.models.items():
            path = self.run_dir / "clean" / f"{name}.json"
            if path.is_file():
                continue
            self.log(f"clean identification: {name} on {len(probes)} probes")
            scores = self._scores(lm.scorer, probes).numpy()
            real = identification_metrics(scores, labels)
            rand = random_baseline_for(scores, labels, seed=self.cfg.seed)
            _write_json(path, {
                "n_probes": len(probes), "n_identities": len(st.identity_names),
                "n_gallery": len(st.split.gallery),
                "rank_k": {str(k): v for k, v in real["rank_k"].items()},
                "random_rank_k": {str(k): v for k, v in rand["rank_k"].items()},
                "cmc": real["cmc"], "random_cmc": rand.get("cmc"),
                "classification": real["classification"],
                "random_classification": rand["classification"],
            })

    def verification(self) -> None:
        from advface.align.chips import build_chips
        from advface.identify.embeddings import embed
        from advface.identify.verification import verify_lfw_pairs

        st = self._require_state()
        if not self.cfg.verification:
            return
        try:
            pairs = st.lfw.pairs()
        except AdvfaceError as err:
            self.log(f"verification skipped: {err}\n  (a data set without LFW's pairs "
                     "protocol: set `verification: false` in the config)")
            return
        keys = sorted({p.key_a for p in pairs} | {p.key_b for p in pairs})
        by_key = st.lfw.by_key
        chips = build_chips([by_key[k] for k in keys], self.cfg.data.resolved_cache_dir(),
                            upsample=self.cfg.align_upsample, progress=self.progress)
        for name, lm in st.models.items():
            path = self.run_dir / "verification" / f"{name}.json"
            if path.is_file():
                continue
            self.log(f"LFW pairs verification (10-fold): {name}")
            emb = embed(lm.model, chips, keys, batch_size=self.cfg.batch_size,
                        cache_dir=self.cfg.data.resolved_cache_dir(), progress=self.progress)
            by = {k: emb[i] for i, k in enumerate(keys)}
            res = verify_lfw_pairs(by, pairs, lm.model.metric)
            _write_json(path, res)

    # ------------------------------------------------------------------ attack cells

    def _save_clean(self, keys: Sequence[str], images: Tensor) -> None:
        root = self.run_dir / "images" / "clean"
        for k, img in zip(keys, images, strict=True):
            p = root / key_png(k)
            if not p.is_file():
                save_png(p, img.cpu())

    def _evaluate_adv(self, cid: str, lm: LoadedModel, keys: list[str], clean: Tensor,
                      adv: Tensor, goal_name: str, targets: list[int] | None,
                      extra_cols: dict[str, Sequence[Any]] | None = None,
                      save: bool = True) -> list[dict[str, Any]]:
        """Save adv PNGs, re-read them, judge success on what was saved, build rows."""
        st = self._require_state()
        rel_paths = []
        reread = []
        for k, img in zip(keys, adv, strict=True):
            rel = Path("images") / "adv" / cid / key_png(k)
            if save:
                save_png(self.run_dir / rel, img.cpu())
            reread.append(load_png(self.run_dir / rel))
            rel_paths.append(str(rel))
        x_adv = torch.stack(reread).to(clean.device)
        memo = (lm.spec.name, tuple(keys))
        with torch.no_grad():
            if memo not in self._clean_preds:
                self._clean_preds[memo] = lm.scorer(clean).float().argmax(1).cpu()
            s_adv = lm.scorer(x_adv).float()
        clean_pred = self._clean_preds[memo]
        adv_pred = s_adv.argmax(1).cpu()
        true = torch.tensor([st.label(k) for k in keys])
        if goal_name == "impersonation":
            assert targets is not None
            success = adv_pred == torch.tensor(targets)
        else:
            success = adv_pred != true
        # Keyed by model too: transfer evaluates a source cell's images on the target model.
        self._adv_success[(cid, lm.spec.name, tuple(keys))] = success
        pm = perturbation_metrics(clean.cpu(), x_adv.cpu())
        rows = []
        for i, k in enumerate(keys):
            row = {
                "item_key": k, "clean_pred": int(clean_pred[i]), "adv_pred": int(adv_pred[i]),
                "true_label": int(true[i]),
                "target_label": None if targets is None else int(targets[i]),
                "success": bool(success[i]), "linf": float(pm["linf_8bit"][i]),
                "l2": float(pm["l2_8bit"][i]), "l0": float(pm["l0"][i]),
                "ssim": float(pm["ssim"][i]), "psnr": float(pm["psnr"][i]),
                "adv_path": rel_paths[i],
            }
            for col, vals in (extra_cols or {}).items():
                v = vals[i]
                row[col] = None if v is None else (float(v) if col == "min_eps" else int(v))
            rows.append(row)
        return rows

    def _attack_obj(self, spec: AttackSpec, eps255: float | None):
        from advface.attacks.base import Budget
        from advface.attacks.registry import create

        return create(spec.registry_name, Budget.from_8bit(spec.norm, eps255), **spec.params)

    def _goal_obj(self, goal_name: str, keys: list[str]):
        from advface.attacks.base import Dodging, Impersonation

        st = self._require_state()
        if goal_name == "impersonation":
            targets = [self._target_for(k) for k in keys]
            return Impersonation(torch.tensor(targets, device=self.cfg.device)), targets
        labels = torch.tensor([st.label(k) for k in keys], device=self.cfg.device)
        return Dodging(labels), None

    def _probe_keys_for(self, spec: AttackSpec) -> list[str]:
        st = self._require_state()
        keys = st.probe_keys
        if spec.n_probes is not None and spec.n_probes < len(keys):
            # Seeded by the run and the count only: attacks with equal n_probes see the same
            # probes, so their numbers (C&W vs DeepFool L2, say) compare like with like.
            keys = sorted(random.Random(_seed_for(self.cfg.seed, "probes", spec.n_probes)).sample(
                keys, spec.n_probes))
        return keys

    def _cells(self) -> list[tuple[AttackSpec, str, float | None, str, str]]:
        cells = []
        for spec in self.cfg.attacks:
            epss: list[float | None] = list(spec.eps_8bit) if spec.eps_8bit else [None]
            decisions = {m.name: m.decision for m in self.cfg.models}
            for model in spec.models or [m.name for m in self.cfg.models]:
                for surface in spec.surfaces:
                    if surface == "gallery" and decisions[model] == "softmax":
                        continue  # a softmax head has no gallery to poison
                    for goal in spec.goals:
                        for eps in epss:
                            cells.append((spec, model, eps, goal, surface))
        return cells

    def run_attacks(self) -> None:
        st = self._require_state()
        cells = self._cells()
        for n, (spec, model_name, eps255, goal, surface) in enumerate(cells, 1):
            lm = st.models[model_name]
            eps = None if eps255 is None else eps255 / 255.0
            cid = st.store.add_cell(model_name, spec.name,
                                    spec.cell_params(surface), eps,
                                    spec.norm, goal, surface)
            if not st.store.is_done(cid):
                label = (f"[{n}/{len(cells)}] {spec.name} {model_name} {goal} {surface} "
                         f"eps={'min-norm' if eps255 is None else f'{eps255:g}/255'}")
                if surface == "probe":
                    self._run_probe_cell(cid, spec, lm, eps255, goal, label)
                else:
                    self._run_gallery_cell(cid, spec, lm, eps255, goal, label)
                st.store.mark_done(cid)
            # Whether or not the largest eps's cell was done before: the search is a cell of
            # its own, which an interruption can leave half-done (it skips when done).
            if spec.minimal_eps and surface == "probe" and eps255 == max(spec.eps_8bit or [0]):
                self._run_mineps_cell(spec, lm, goal)

    def _run_probe_cell(self, cid: str, spec: AttackSpec, lm: LoadedModel,
                        eps255: float | None, goal: str, label: str) -> None:
        st = self._require_state()
        keys = self._probe_keys_for(spec)
        done = st.store.done_items(cid)
        attack = self._attack_obj(spec, eps255)
        previous = self._swept_from(spec, lm.spec.name, eps255, goal)
        seed_cell = cid
        if spec.sweep and eps255 is not None:
            # A swept cell draws the seeds of the same attack unswept, so the sweep's smallest
            # eps gives exactly the plain attack's rows.
            seed_cell = cell_id(lm.spec.name, spec.name, spec.base_params, eps255 / 255.0,
                                spec.norm, goal, "probe")
        chunks = list(_chunks(keys, self.cfg.batch_size))
        todo = [(i, c) for i, c in chunks if not set(c) <= done]
        bar = tqdm(todo, desc=label, disable=not self.progress, unit="batch")
        for i, chunk in bar:
            clean = self._images(chunk)
            self._save_clean(chunk, clean)
            goal_obj, targets = self._goal_obj(goal, chunk)
            seed = _seed_for(seed_cell, i)
            extra: dict[str, Sequence[Any]] = {}
            if previous is None:
                res = attack.run(lm.scorer, clean, goal_obj, seed=seed)
                adv = res.adv
                if res.iterations is not None:
                    extra["iterations"] = res.iterations.tolist()
                if res.queries is not None:
                    extra["queries"] = res.queries.tolist()
            else:
                adv, extra["iterations"], extra["queries"] = self._sweep_chunk(
                    attack, lm, previous, chunk, clean, goal_obj, seed)
            rows = self._evaluate_adv(cid, lm, chunk, clean, adv, goal, targets, extra)
            st.store.put_rows(cid, rows)

    def _swept_from(self, spec: AttackSpec, model: str, eps255: float | None,
                    goal: str) -> tuple[str, float] | None:
        """For a swept attack (``sweep: true``): the cell id and eps of the probe cell one step
        down the grid, whose saved adversarials this cell starts from; None for the smallest
        eps and for attacks that are not swept."""
        if not spec.sweep or eps255 is None:
            return None
        smaller = [e for e in spec.eps_8bit or [] if e < eps255]
        if not smaller:
            return None
        prev = max(smaller)
        return cell_id(model, spec.name, spec.cell_params("probe"), prev / 255.0, spec.norm, goal,
                       "probe"), prev

    def _sweep_chunk(self, attack: Any, lm: LoadedModel, previous: tuple[str, float],
                     keys: list[str], clean: Tensor, goal: Any, seed: int
                     ) -> tuple[Tensor, list[int | None], list[int | None]]:
        """One chunk of a swept cell: probes the previous eps's saved adversarial already
        fools keep it (it lies inside this larger ball); the others are attacked again,
        warm-started from it when the attack supports ``init``. Counters (iterations, queries)
        are this cell's work only: 0 for a carried probe, None where the attack counts none."""
        from advface.attacks.base import norm_of

        prev_cid, prev_eps = previous
        prev = []
        for k in keys:
            path = self.run_dir / "images" / "adv" / prev_cid / key_png(k)
            if not path.is_file():
                raise AdvfaceError(
                    f"swept cell needs the adversarial of {k} at eps {prev_eps:g}/255, but "
                    f"{path} is missing",
                    fix="the smaller-eps cell must be computed first: rerun the same command "
                    "(it resumes in order), or delete the run directory to start over")
            prev.append(load_png(path))
        start = torch.stack(prev).to(clean.device)
        budget = attack.budget.with_eps(prev_eps / 255.0)
        size = float(norm_of(start - clean, budget.norm).amax()) * 255.0
        if size > budget.effective_eps * 255.0 * (1 + 1e-5):  # float error, not a grey level
            raise AdvfaceError(
                f"the saved adversarials in {self.run_dir / 'images' / 'adv' / prev_cid} differ "
                f"from their clean probes by {size:g}/255 ({attack.budget.norm}), more than that "
                f"cell's eps {prev_eps:g}/255: they are not this run's images",
                fix="delete that folder and its cell (or the run directory) and rerun")
        carried = self._adv_success.get((prev_cid, lm.spec.name, tuple(keys)))
        if carried is None:  # computed by another process (Ray) or before a resume
            with torch.no_grad():
                carried = goal.success(lm.scorer(start).float()).cpu()
        adv = start.clone()
        # A carried probe cost nothing here: 0, whatever the attack counts.
        iterations: list[int | None] = [0] * len(keys)
        queries: list[int | None] = [0] * len(keys)
        todo = (~carried).nonzero()[:, 0]
        if todo.numel():
            init = start[todo] if attack.supports_init else None
            res = attack.run(lm.scorer, clean[todo], goal[todo.to(clean.device)], seed=seed,
                             init=init)
            adv[todo] = res.adv
            for counts, got in ((iterations, res.iterations), (queries, res.queries)):
                for j, i in enumerate(todo.tolist()):
                    counts[i] = None if got is None else int(got[j])
        return adv, iterations, queries

    def _run_mineps_cell(self, spec: AttackSpec, lm: LoadedModel, goal: str) -> None:
        from advface.attacks.sweep import minimal_eps

        st = self._require_state()
        grid = sorted(spec.eps_8bit or [])
        cid = st.store.add_cell(lm.spec.name, f"{spec.name}-mineps",
                                spec.mineps_params, None, spec.norm, goal, "probe")
        if st.store.is_done(cid):
            return
        keys = self._probe_keys_for(spec)
        done = st.store.done_items(cid)
        todo = [(i, c) for i, c in _chunks(keys, self.cfg.batch_size) if not set(c) <= done]
        for i, chunk in tqdm(todo, desc=f"{spec.name}-mineps {lm.spec.name} {goal}",
                             disable=not self.progress, unit="batch"):
            clean = self._images(chunk)
            goal_obj, targets = self._goal_obj(goal, chunk)
            factory = lambda budget: self._attack_obj(spec, budget.eps * 255.0)  # noqa: E731
            res = minimal_eps(factory, lm.scorer, clean, goal_obj,
                              [g / 255.0 for g in grid], norm=spec.norm,
                              seed=_seed_for(cid, i))
            mins = [None if not math.isfinite(float(v)) else float(v) * 255.0
                    for v in res.min_eps]
            rows = self._evaluate_adv(cid, lm, chunk, clean, res.adv, goal, targets,
                                      {"min_eps": [math.inf if m is None else m
                                                   for m in mins]})
            st.store.put_rows(cid, rows)
        st.store.mark_done(cid)

    def _run_gallery_cell(self, cid: str, spec: AttackSpec, lm: LoadedModel,
                          eps255: float | None, goal: str, label: str) -> None:
        from advface.experiments.poisoning import run_gallery_cell

        run_gallery_cell(self, cid, spec, lm, eps255, goal, label)

    # ------------------------------------------------------------------ transfer

    def run_transfer(self) -> None:
        st = self._require_state()
        specs = {a.name: a for a in self.cfg.attacks}
        for t in self.cfg.transfer:
            spec = specs[t.attack]
            src, dst = st.models[t.surrogate], st.models[t.target]
            epss: list[float | None] = list(spec.eps_8bit) if spec.eps_8bit else [None]
            for goal in spec.goals:
                for eps255 in epss:
                    eps = None if eps255 is None else eps255 / 255.0
                    src_cid = st.store.add_cell(t.surrogate, spec.name,
                                                spec.cell_params("probe"),
                                                eps, spec.norm, goal, "probe")
                    if not st.store.is_done(src_cid):
                        self._run_probe_cell(src_cid, spec, src, eps255, goal,
                                             f"{spec.name} on surrogate {t.surrogate}")
                        st.store.mark_done(src_cid)
                    params = {"surrogate": t.surrogate, "base_attack": spec.name,
                              "source_cell": src_cid, **spec.params}
                    cid = st.store.add_cell(t.target, "transfer", params, eps, spec.norm, goal,
                                            "probe")
                    if st.store.is_done(cid):
                        continue
                    rows = {r["item_key"]: r for r in st.store.rows(src_cid)}
                    keys = sorted(rows)
                    for _, chunk in _chunks(keys, self.cfg.batch_size):
                        clean = self._images(chunk)
                        adv = torch.stack([load_png(self.run_dir / rows[k]["adv_path"])
                                           for k in chunk])
                        targets = ([rows[k]["target_label"] for k in chunk]
                                   if goal == "impersonation" else None)
                        out = self._evaluate_adv(src_cid, dst, chunk, clean, adv, goal,
                                                 targets, save=False)
                        st.store.put_rows(cid, out)
                    st.store.mark_done(cid)

    # ------------------------------------------------------------------ all

    def run(self) -> Path:
        self.setup()
        self.load_models()
        self.clean_eval()
        self.verification()
        self.run_attacks()
        self.run_transfer()
        st = self._require_state()
        wall = self._wall_before + (time.monotonic() - self._t0)
        self._run_json(status="done", finished_at=_now(), wall_seconds=round(wall, 1),
                       missing_cells=[c["cell_id"] for c in st.store.cells()
                                      if c["status"] != "done"])
        st.store.close()
        return self.run_dir


def check_device_available(device: str, *, path: Path | None = None) -> None:
    """The config says a device this machine has (checked before anything runs; ``path``:
    the config file, named in the error when known)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            have = f"{count} CUDA device(s)" if count else "no CUDA (this torch build or machine)"
            raise ConfigError(f"device {device!r} is not available here: {have}", path=path,
                              fix="set device: cpu in the config (or a cuda:N this machine has)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available here", path=path,
                          fix="set device: cpu in the config")


def run_experiment(cfg: ExperimentConfig, run_dir: Path, **kwargs: Any) -> Path:
    """Run (or resume) a study into ``run_dir``; returns the run dir."""
    return Runner(cfg, run_dir, **kwargs).run()
