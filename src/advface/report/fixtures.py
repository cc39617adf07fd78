"""A small but realistic fabricated run directory (docs/run_dir.md), for tests and demos.

The report, `advface results` and the runner's own tests all need a run directory that looks like
a real study but takes a second to make, not hours on LFW. `make_fake_run` writes one: two models
(a pretrained gallery-nearest model and an ad-hoc softmax CNN with a training history), FGSM/PGD
cells at 1, 2, 4, 8/255 for both goals, a black-box Square pair, a transfer pair, a
minimal-epsilon search, one gallery-surface cell, synthetic PNG faces with perturbations that
really are within their budget, and clean/verification JSON computed with advface.metrics. The
store and split are written with the real `ResultsStore` and `ClosedSetSplit`, cells follow the
runner's conventions (hashed ids, minimal-eps cells with eps NULL and min_eps in 8-bit units,
transfer rows pointing at the surrogate's images). The outcomes are drawn at random (seeded), so
the numbers mean nothing; only their shapes are real.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

IDENTITIES = (
    "Anna_Berg", "Boris_Chen", "Carla_Diaz", "David_Okafor",
    "Elena_Popova", "Farid_Haddad", "Grace_Kim", "Hugo_Lambert",
)
IMAGES_PER_IDENTITY = 5
N_GALLERY = 2  # first images of each identity; the rest are probes
IMAGE_SIZE = 48
EPS_255 = (1, 2, 4, 8)
GOALS = ("dodging", "impersonation")

MODELS: dict[str, dict[str, Any]] = {
    "dlib_resnet": {
        "kind": "pretrained", "description": "dlib ResNet-29 face descriptor ported to PyTorch",
        "input_size": 150, "embedding_dim": 128, "metric": "euclidean",
        "n_params": 5_585_088, "decision": "gallery-nearest",
        "skill": 3.2, "fragility": 0.45,
    },
    "adhoc_cnn": {
        "kind": "adhoc", "description": "ad-hoc CNN trained from scratch on the LFW training split",
        "input_size": 64, "embedding_dim": 128, "metric": "cosine",
        "n_params": 1_212_416, "decision": "softmax",
        "skill": 1.6, "fragility": 0.25,
    },
}
ATTACK_STRENGTH = {"fgsm": 0.6, "pgd": 1.0, "square": 0.5}



def _face(identity: int, variant: int, rng: np.random.Generator) -> np.ndarray:
    """A cartoon face (uint8 HxWx3) whose colours and shape identify the person."""
    s = IMAGE_SIZE
    hue = np.array([(identity * 73) % 200 + 30, (identity * 151) % 200 + 30,
                    (identity * 37) % 200 + 30])
    bg = tuple(int(v) for v in (hue * 0.5 + 90))
    im = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(im)
    dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
    skin = (int(200 - identity * 9), int(160 - identity * 6), int(130 - identity * 4))
    w = 15 + identity % 3
    d.ellipse((s / 2 - w + dx, 8 + dy, s / 2 + w + dx, s - 6 + dy), fill=skin)
    hair = tuple(int(v * 0.4) for v in hue)
    d.chord((s / 2 - w + dx, 6 + dy, s / 2 + w + dx, 30 + dy), 180, 360, fill=hair)
    for ex in (-7, 7):
        d.ellipse((s / 2 + ex - 2 + dx, 22 + dy, s / 2 + ex + 2 + dx, 26 + dy), fill=(30, 30, 40))
    d.arc((s / 2 - 6 + dx, 30 + dy, s / 2 + 6 + dx, 38 + dy + variant % 2), 20, 160,
          fill=(120, 40, 50), width=2)
    arr = np.asarray(im, dtype=np.float64)
    arr = arr * (0.9 + 0.04 * variant) + rng.normal(0, 3, arr.shape)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _png_rel(key: str) -> str:
    return str(Path(key).with_suffix(".png").as_posix())


def _perturb(clean: np.ndarray, eps255: float, attack: str, rng: np.random.Generator
             ) -> np.ndarray:
    """An 8-bit image within eps255 of `clean` in L-inf, as an attack would save it."""
    step = math.floor(eps255)
    if attack == "fgsm":
        delta = rng.choice([-step, step], size=clean.shape)
    elif attack == "square":
        delta = np.zeros(clean.shape)
        for _ in range(6):
            y, x = rng.integers(0, IMAGE_SIZE - 8, size=2)
            delta[y:y + 8, x:x + 8, :] = rng.choice([-step, step], size=(1, 1, 3))
    else:
        delta = rng.integers(-step, step + 1, size=clean.shape)
    return np.clip(clean.astype(np.int64) + delta, 0, 255).astype(np.uint8)


def _metrics(clean: np.ndarray, adv: np.ndarray) -> dict[str, float]:
    """Norms (8-bit units), SSIM and PSNR as the runner stores them (skimage's Wang et al.
    settings, the ones advface.metrics.perturbation reproduces), without importing torch."""
    from skimage.metrics import structural_similarity

    c = clean.astype(np.float64) / 255.0
    a = adv.astype(np.float64) / 255.0
    d = (a - c).ravel()
    mse = float(np.mean(d * d))
    return {
        "linf": float(np.abs(d).max() * 255.0), "l2": float(np.linalg.norm(d) * 255.0),
        "l0": float(np.count_nonzero(np.abs(d) > 1e-6)),
        "ssim": float(structural_similarity(c, a, data_range=1.0, channel_axis=2,
                                            gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False)),
        "psnr": math.inf if mse == 0 else float(10 * math.log10(1.0 / mse)),
    }


def _history(rng: np.random.Generator, epochs: int = 12) -> list[dict[str, float]]:
    out = []
    for e in range(1, epochs + 1):
        t = e / epochs
        out.append({
            "epoch": e,
            "loss": round(float(3.9 * math.exp(-2.2 * t) + 0.25 + rng.normal(0, 0.03)), 4),
            "train_acc": round(float(min(0.99, 0.15 + 0.8 * (1 - math.exp(-3 * t)))), 4),
            "val_acc": round(float(0.1 + 0.55 * (1 - math.exp(-3.5 * t)) + rng.normal(0, 0.01)),
                             4),
            "lr": round(0.05 * 0.5 * (1 + math.cos(math.pi * (e - 1) / epochs)), 6),
            "seconds": round(float(40 + rng.normal(0, 2)), 2),
        })
    return out


def _verification(skill: float, rng: np.random.Generator) -> dict[str, Any]:
    from advface.metrics import verification as V

    same = np.repeat([1, 0], 300)
    rng.shuffle(same)
    scores = rng.normal(0, 1, 600) + skill * same
    fpr, tpr, _ = V.roc(scores, same)
    if fpr.size > 500:
        keep = np.unique(np.linspace(0, fpr.size - 1, 500).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    mean, std, per_fold, _ = V.kfold_verification_accuracy(scores, same, 10)
    eer = V.eer(scores, same)
    return {
        "mean_accuracy": float(mean), "std_accuracy": float(std),
        "per_fold": [float(v) for v in per_fold], "auc": float(V.auc(scores, same)),
        "eer": float(eer[0]),
        "tar_at_far": {"0.001": float(V.tar_at_far(scores, same, 0.001)),
                       "0.01": float(V.tar_at_far(scores, same, 0.01))},
        "roc": {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]},
    }


def cell_spec(model: str, attack: str, eps255: float | None, goal: str,
              surface: str = "probe") -> str:
    """The readable name `make_fake_run(missing=...)` uses for a cell (ids are hashes)."""
    eps = "none" if eps255 is None else f"{eps255:g}"
    return f"{model}/{attack}/{eps}/{goal}/{surface}"


def make_fake_run(directory: str | Path, seed: int = 0, missing: Iterable[str] = (),
                  analyses: bool = False) -> Path:
    """Write a fabricated run directory at `directory` and return its path.

    `analyses` also files fabricated interpret/ and defences/ results (`add_fake_analyses`).

    `missing` fabricates gaps, each entry one of:
      * a path relative to the run dir (`verification/dlib_resnet.json`, `images/clean/X`):
        deleted after writing;
      * a cell name from `cell_spec` (`adhoc_cnn/pgd/8/impersonation/probe`): the cell is never
        stored, and run.json["missing_cells"] names it;
      * `pending:<cell name>`: the cell is registered but never finished (status "pending", no
        rows), and run.json["missing_cells"] lists its id, as the runner does;
      * `running`: run.json says the run is still running.
    An entry matching none of these raises ValueError, so a typo cannot pass a test silently.
    """
    from advface.metrics.identification import identification_metrics, random_baseline_for

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    missing = list(missing)
    names = sorted(IDENTITIES)
    n_id = len(names)

    # --- images and split ------------------------------------------------------------------
    keys: list[tuple[str, int, int]] = []  # (key, label, variant)
    for label, name in enumerate(names):
        for v in range(1, IMAGES_PER_IDENTITY + 1):
            keys.append((f"{name}/{name}_{v:04d}.jpg", label, v))
    gallery = [k for k in keys if k[2] <= N_GALLERY]
    probes = [k for k in keys if k[2] > N_GALLERY]
    clean_img: dict[str, np.ndarray] = {}
    for key, label, v in keys:
        clean_img[key] = _face(label, v, rng)
        _save(root / "images" / "clean" / _png_rel(key), clean_img[key])
    from advface.data.splits import ClosedSetSplit

    split = ClosedSetSplit(identities=names, gallery=sorted(k for k, _, _ in gallery),
                           probes=sorted(k for k, _, _ in probes), distractors=[],
                           params={"min_images": IMAGES_PER_IDENTITY,
                                   "probes_per_person": IMAGES_PER_IDENTITY - N_GALLERY,
                                   "seed": seed})
    split.hash = split.compute_hash()
    split.save(root / "split.json")
    (root / "config.yaml").write_text(
        f"seed: {seed}\nmodels: [{', '.join(MODELS)}]\nattacks:\n"
        "  - {name: fgsm, eps: [1, 2, 4, 8]}\n  - {name: pgd, eps: [1, 2, 4, 8], steps: 10}\n"
        "  - {name: square, eps: [4, 8], queries: 500}\n")

    # --- models, clean results, verification -------------------------------------------------
    probe_labels = np.array([label for _, label, _ in probes])
    clean_pred: dict[str, dict[str, int]] = {}
    for i, (model, spec) in enumerate(MODELS.items()):
        mrng = np.random.default_rng(seed * 1000 + i)
        scores = mrng.normal(0, 1, (len(probes), n_id))
        scores[np.arange(len(probes)), probe_labels] += spec["skill"]
        clean_pred[model] = {k: int(scores[j].argmax()) for j, (k, _, _) in enumerate(probes)}
        ident = identification_metrics(scores, probe_labels, max_rank=n_id)
        rand = random_baseline_for(scores, probe_labels, max_rank=n_id, seed=seed)
        clean = {
            "n_probes": len(probes), "n_identities": n_id, "n_gallery": len(gallery),
            "rank_k": {str(k): float(v) for k, v in ident["rank_k"].items()},
            "random_rank_k": {str(k): float(v) for k, v in rand["rank_k"].items()},
            "cmc": [float(v) for v in ident["cmc"]],
            "random_cmc": [float(v) for v in rand["cmc"]],
            "classification": {k: float(v) for k, v in ident["classification"].items()},
            "random_classification": {k: float(v) for k, v in rand["classification"].items()},
        }
        info = {k: v for k, v in spec.items() if k not in {"skill", "fragility"}}
        info.update(name=model, fingerprint=f"sha256:{mrng.bytes(8).hex()}",
                    training_history=_history(mrng) if spec["kind"] == "adhoc" else None)
        for sub, obj in (("models", info), ("clean", clean),
                         ("verification", _verification(spec["skill"], mrng))):
            (root / sub).mkdir(exist_ok=True)
            (root / sub / f"{model}.json").write_text(json.dumps(obj, indent=1))

    # --- cells (written through the real ResultsStore, as the runner does) -------------------
    from advface.experiments.store import ResultsStore

    attacked = probes[::2]  # 12 probes per cell
    plan: list[dict[str, Any]] = []
    for model in MODELS:
        for attack in ("fgsm", "pgd"):
            for eps in EPS_255:
                for goal in GOALS:
                    plan.append(dict(model=model, attack=attack, eps=eps, goal=goal,
                                     surface="probe", items=attacked))
        for eps in (4, 8):
            plan.append(dict(model=model, attack="square", eps=eps, goal="dodging",
                             surface="probe", items=attacked))
        # The runner's minimal-eps cells: eps NULL, the grid in params, min_eps in 8-bit units.
        plan.append(dict(model=model, attack="pgd-mineps", eps=None, goal="dodging",
                         surface="probe", items=attacked))
    models = list(MODELS)
    for surrogate, target in ((models[0], models[1]), (models[1], models[0])):
        plan.append(dict(model=target, attack="transfer", eps=8, goal="dodging", surface="probe",
                         items=attacked, surrogate=surrogate))
    plan.append(dict(model=models[0], attack="pgd", eps=4, goal="dodging", surface="gallery",
                     items=gallery[::2]))

    specs = {cell_spec(p["model"], p["attack"], p["eps"], p["goal"], p["surface"]) for p in plan}
    for entry in missing:
        name = entry.removeprefix("pending:")
        if entry != "running" and name not in specs and not (root / entry).exists():
            raise ValueError(f"make_fake_run: unknown missing entry {entry!r}; cells are named "
                             f"like {sorted(specs)[0]!r}")

    grid = [1, 2, 3, 4, 6, 8, 12, 16]
    missing_cells: list[str] = []
    src_paths: dict[tuple[str, str, str], str] = {}  # (model, goal, key) -> pgd 8/255 adv path
    store = ResultsStore(root / "results.sqlite")
    try:
        for p in plan:
            spec = cell_spec(p["model"], p["attack"], p["eps"], p["goal"], p["surface"])
            base = "pgd" if p["attack"] in ("transfer", "pgd-mineps") else p["attack"]
            params: dict[str, Any] = {} if p["attack"] == "transfer" else {"attack": base}
            if base == "pgd":
                params.update(steps=10, step_size=(p["eps"] or 16) / 4 / 255, random_start=True)
            elif base == "square":
                params.update(max_queries=500, p_init=0.05)
            if p["attack"] == "transfer":
                params.update(surrogate=p["surrogate"], base_attack=base)
            if p["attack"] == "pgd-mineps":
                params.update(grid_8bit=grid)
            eps01 = None if p["eps"] is None else p["eps"] / 255
            if spec in missing:  # never run: the runner lists registered-but-unfinished cells
                missing_cells.append(spec)
                continue
            cid = store.add_cell(p["model"], p["attack"], params, eps01, "linf", p["goal"],
                                 p["surface"], n_items=len(p["items"]))
            if f"pending:{spec}" in missing:
                missing_cells.append(cid)
                continue
            spec_m = MODELS[p["model"]]
            strength = ATTACK_STRENGTH.get(base, 1.0) * (0.35 if p["attack"] == "transfer"
                                                          else 1.0)
            strength *= 0.45 if p["goal"] == "impersonation" else 1.0
            rows = []
            for key, label, _ in p["items"]:
                cp = clean_pred[p["model"]].get(key, label)
                target_label = None
                if p["goal"] == "impersonation":
                    target_label = int((label + 1 + rng.integers(0, n_id - 1)) % n_id)
                min_eps: float | None = None
                if p["attack"] == "pgd-mineps":
                    min_eps = math.inf
                    if cp != label:
                        min_eps = 0.0
                    else:
                        for e in grid:
                            if rng.random() < 1 - math.exp(-spec_m["fragility"] * 0.6 * e):
                                min_eps = float(e)
                                break
                    success = math.isfinite(min_eps)
                    adv_eps = min_eps if success else grid[-1]
                else:
                    p_success = 1 - math.exp(-spec_m["fragility"] * strength * p["eps"])
                    success = bool(rng.random() < p_success)
                    adv_eps = p["eps"]
                    if p["goal"] == "dodging" and cp != label:
                        success = True
                if p["goal"] == "impersonation":
                    adv_pred = target_label if success else cp
                elif success:
                    adv_pred = cp if cp != label else int(
                        (label + 1 + rng.integers(0, n_id - 1)) % n_id)
                else:
                    adv_pred = label
                if p["attack"] == "transfer":  # the runner points at the surrogate's images
                    rel = src_paths[(p["surrogate"], p["goal"], key)]
                    adv = np.asarray(Image.open(root / rel).convert("RGB"))
                else:
                    adv = _perturb(clean_img[key], adv_eps, base, rng) if adv_eps >= 1 \
                        else clean_img[key].copy()
                    rel = f"images/adv/{cid}/{_png_rel(key)}"
                    _save(root / rel, adv)
                    if p["attack"] == "pgd" and p["eps"] == 8 and p["surface"] == "probe":
                        src_paths[(p["model"], p["goal"], key)] = rel
                m = _metrics(clean_img[key], adv)
                rows.append({
                    "item_key": key, "clean_pred": cp, "adv_pred": adv_pred, "true_label": label,
                    "target_label": target_label, "success": success, **m,
                    "queries": int(rng.integers(20, 500)) if base == "square" else None,
                    "iterations": {"fgsm": 1, "pgd": 10}.get(base),
                    "min_eps": min_eps, "adv_path": rel,
                })
            store.put_rows(cid, rows)
            store.mark_done(cid)
    finally:
        store.close()

    run = {
        "advface_version": "0.1.0", "torch_version": "2.13.0", "seed": seed,
        "machine": {"cpu": "fabricated", "cores": 2, "gpu": False},
        "config_hash": rng.bytes(8).hex(), "status": "running" if "running" in missing else "done",
        "started_at": "2026-01-01T10:00:00+00:00", "split_hash": split.hash,
        "identity_names": names, "models": list(MODELS), "split_stats": split.stats(),
        "n_probes_attacked": len(attacked), "finished_at": "2026-01-01T10:40:00+00:00",
        "wall_seconds": 2400.0, "missing_cells": missing_cells,
    }
    (root / "run.json").write_text(json.dumps(run, indent=1))

    if analyses:
        add_fake_analyses(root, seed=seed)
    for entry in missing:
        path = root / entry
        if entry == "running" or entry.removeprefix("pending:") in specs:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return root


# ---- optional analyses (docs/run_dir.md: interpret/ and defences/) ---------------------------
def _robust_eval(defence: str, rng: np.random.Generator, eps: list[float], n: int,
                 clean: float, attacks: list[tuple[str, str]], strength: float,
                 undefended: float | None) -> dict[str, Any]:
    """A DefenceEvaluation.to_json()-shaped result with seeded, internally consistent numbers:
    robust <= clean, adaptive <= naive-direct, worst case <= every attack."""
    from advface.metrics.attack import wilson_interval

    rows, worst = [], {}
    for e in eps:
        left = clean * math.exp(-strength * e)
        accs: dict[str, float] = {}
        for name, kind in attacks:
            factor = 1.0 if kind == "adaptive" else float(rng.uniform(1.2, 2.5))
            k = min(round(n * clean), round(n * min(clean, left * factor)))
            accs[name] = k / n
        if "adaptive" in accs and "naive-direct" in accs:
            accs["adaptive"] = min(accs["adaptive"], accs["naive-direct"])
        for name, kind in attacks:
            lo, hi = wilson_interval(round(accs[name] * n), n)
            rows.append({"eps255": float(e), "attack": name, "kind": kind,
                         "robust_accuracy": accs[name], "ci95": [lo, hi],
                         "seconds": round(float(rng.uniform(1, 30)), 2)})
        worst[f"{float(e):g}"] = max(0.0, min(accs.values()) - (1 / n if rng.random() < 0.3
                                                                 else 0.0))
    return {"defence": defence, "n_images": n, "clean_accuracy": clean,
            "undefended_clean_accuracy": undefended, "rows": rows, "worst_case": worst,
            "attacks": [{"name": a, "kind": k} for a, k in attacks], "seed": 0,
            "eval_draws": 1}


def add_fake_analyses(run_dir: str | Path, seed: int = 0, interpret: bool = True,
                      defences: bool = True) -> Path:
    """File fabricated results of `advface interpret run-figures` (interpret/saliency_*.json
    and .png, one per model, built from the run's own PNGs of a PGD 2/255 dodging cell) and of
    `advface defend evaluate|detect|advtrain --run` (defences/*.json), shaped as those commands
    write them. Numbers are seeded draws; only their shapes are real."""
    root = Path(run_dir)
    rng = np.random.default_rng(seed + 7)
    if interpret:
        import sqlite3

        con = sqlite3.connect(root / "results.sqlite")
        try:
            for model in MODELS:
                cid = con.execute(
                    "SELECT cell_id FROM cells WHERE model=? AND attack='pgd' AND goal='dodging'"
                    " AND surface='probe' ORDER BY eps LIMIT 1 OFFSET 1", (model,)).fetchone()[0]
                rows = con.execute(
                    'SELECT item_key, true_label, adv_pred, adv_path FROM "rows" WHERE cell_id=? '
                    "ORDER BY item_key LIMIT 3", (cid,)).fetchall()
                _fake_saliency(root, model, cid, rows, rng)
        finally:
            con.close()
    if defences:
        out = root / "defences"
        out.mkdir(exist_ok=True)
        eps = [2.0, 4.0, 8.0]
        n = 24
        clean = round(n * 0.75) / n
        results: dict[str, Any] = {
            "none": {**_robust_eval("LogitScorer", rng, eps, n, clean,
                                    [("naive-direct", "naive"), ("adaptive", "adaptive")],
                                    0.5, None), "params": {}}}
        for key, params, strength in (("jpeg", {"quality": 75}, 0.15),
                                      ("bit-depth", {"bits": 4}, 0.2)):
            c = round(n * (clean - float(rng.uniform(0.0, 0.1)))) / n
            results[key] = {**_robust_eval(
                f"{key}({params})", rng, eps, n, c,
                [("naive-transfer", "naive"), ("naive-direct", "naive"),
                 ("adaptive", "adaptive")], strength, clean), "params": params}
        settings = {"eps": eps, "naive_steps": 10, "steps": 50, "restarts": 2, "eot": 10,
                    "eval_draws": 1, "n_images": n, "seed": 0}
        (out / "evaluate_adhoc_model.json").write_text(json.dumps(
            {"kind": "evaluate", "checkpoint": "/elsewhere/runs/models/adhoc_model",
             "settings": settings, "n_identities": len(IDENTITIES), "results": results},
            indent=1))
        adv = _robust_eval("LogitScorer", rng, eps, n, round(n * 0.6) / n,
                           [("naive-direct", "naive"), ("adaptive", "adaptive")], 0.12, None)
        (out / "advtrain_advtrain_fgsm.json").write_text(json.dumps({
            "kind": "advtrain", "checkpoint": "/elsewhere/runs/defences/advtrain_fgsm",
            "n_identities": len(IDENTITIES),
            "adversarial": {"attack": "fgsm-rs", "eps_8bit": 8.0, "steps": 1},
            "evaluation_settings": {"eps_8bit": eps, "naive_steps": 10, "steps": 50,
                                    "restarts": 2, "batch_size": 32},
            "stop_reason": "time budget", "epochs": 6, "best_epoch": 5,
            "clean_evaluation": {}, "results": {"adversarial-training": adv}}, indent=1))
        from advface.metrics import verification as V

        det: dict[str, Any] = {}
        for e in (4.0, 8.0):
            n_adv = int(rng.integers(10, 18))
            scores = np.concatenate([rng.normal(0, 1, n), rng.normal(1.2 + e / 8, 1, n_adv)])
            is_adv = np.concatenate([np.zeros(n, bool), np.ones(n_adv, bool)])
            fpr, tpr, _ = V.roc(scores, is_adv)
            thr = float(np.sort(scores[:n])[-2])
            det[f"{e:g}"] = {
                "auc": float(V.auc(scores, is_adv)), "threshold": thr,
                "tpr_at_threshold": float((scores[n:] > thr).mean()),
                "fpr_at_threshold": float((scores[:n] > thr).mean()),
                "attack_success_rate": n_adv / n + 0.05, "n_adversarial": n_adv,
                "roc": {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}}
        (out / "detect_adhoc_model.json").write_text(json.dumps({
            "kind": "detect", "checkpoint": "/elsewhere/runs/models/adhoc_model",
            "fpr_target": 0.05, "threshold": det["4"]["threshold"],
            "settings": {"bits": 5, "median_size": 2, "steps": 20, "seed": 0,
                         "eps": [2.0, 4.0, 8.0]},
            "n_clean_probes": n, "n_validation": 40, "clean_accuracy": clean,
            "n_identities": len(IDENTITIES), "results": det}, indent=1))
    return root


def _fake_saliency(root: Path, model: str, cell_id: str, rows: list[tuple], rng:
                   np.random.Generator) -> None:
    """interpret/saliency_<model>_pgd.{png,json}; the PNG shows the run's own clean and
    adversarial images."""
    names = sorted(IDENTITIES)
    panels = []
    items = []
    methods = ("vanilla", "smoothgrad", "ig")
    for key, true, adv_pred, adv_path in rows:
        clean = np.asarray(Image.open(root / "images" / "clean" / _png_rel(key)).convert("RGB"))
        adv = np.asarray(Image.open(root / adv_path).convert("RGB"))
        diff = np.clip(np.abs(adv.astype(np.int16) - clean.astype(np.int16)) * 10, 0, 255)
        panels.append(np.concatenate([clean, adv, diff.astype(np.uint8)], axis=1))
        per = {}
        for m in methods:
            share = float(rng.uniform(0.18, 0.45))
            per[m] = {"energy_in_top": share, "enrichment": share / 0.2,
                      "spearman": float(rng.uniform(-0.1, 0.5)),
                      "pearson": float(rng.uniform(-0.1, 0.5)),
                      "map_correlation": float(rng.uniform(0.2, 0.9)),
                      "top_overlap": float(rng.uniform(0.3, 0.8))}
        items.append({"key": key, "true": names[true], "adv_pred": names[adv_pred],
                      "clean_pred": names[true], "stored_adv_pred": names[adv_pred],
                      "decision_matches_run": True,
                      "true_score_clean": float(rng.uniform(2, 6)),
                      "true_score_adv": float(rng.uniform(-2, 1)),
                      "ig_completeness_rel_gap": {"clean": float(rng.uniform(0, 0.1)),
                                                  "adv": float(rng.uniform(0, 0.1))},
                      "methods": per})
    stem = f"saliency_{model}_pgd"
    out = root / "interpret"
    _save(out / f"{stem}.png", np.concatenate(panels, axis=0))
    summary = {m: {k: float(np.mean([it["methods"][m][k] for it in items]))
                   for k in items[0]["methods"][m]} for m in methods}
    doc = {"kind": "saliency", "model": model, "figure": f"{stem}.png",
           "cell": {"cell_id": cell_id, "attack": "pgd", "algorithm": "pgd", "eps255": 2.0,
                    "norm": "linf", "goal": "dodging", "surface": "probe"},
           "settings": {"n": 3, "attack": "pgd", "eps255": None, "smoothgrad_samples": 16,
                        "smoothgrad_noise": 0.15, "ig_steps": 32, "ig_baseline": "black",
                        "top_fraction": 0.2, "overlay_smooth_sigma": 1.5, "seed": 0},
           "n_items": len(items), "diff_gain": 10, "image_size": [IMAGE_SIZE, IMAGE_SIZE],
           "items": items, "summary": summary,
           "mean_true_score_clean": float(np.mean([i["true_score_clean"] for i in items])),
           "mean_true_score_adv": float(np.mean([i["true_score_adv"] for i in items])),
           "all_decisions_match_run": True, "fingerprint": "fabricated",
           "fingerprint_matches_run": True, "seconds": 1.0, "advface_version": "0.1.0"}
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
