"""Saliency of a run's own attacked probes: clean vs adversarial, and where the perturbation sits.

For each model of a run directory, a few probes that an attack really fooled (dodging, the
probe identified correctly when clean) are taken with their saved adversarial PNGs from the
results store. The models are rebuilt as the runner built them
(:mod:`advface.experiments.reload`), and the true identity's score is explained on the clean
and on the adversarial image by the vanilla gradient, SmoothGrad and Integrated Gradients.

Written into ``RUN_DIR/interpret/`` (docs/run_dir.md), per model and attack (a rerun with
the same model and attack replaces its files):

* ``saliency_<model>_<attack>.png`` — one row per probe: clean | adversarial | |diff|
  amplified (x10, more when a small budget would stay invisible) | for each method its
  overlay on the clean and on the adversarial image | the perturbation with the pixels
  outside the clean image's top-20% SmoothGrad saliency dimmed;
* ``saliency_<model>_<attack>.json`` — the cell used, the settings, per probe and method the
  share of perturbation energy on the most salient pixels (with enrichment = share /
  fraction, 1 for a perturbation spread regardless of saliency), its rank correlation with
  saliency, and how much the saliency map itself moves from the clean to the adversarial
  image.

The report (``advface report``) includes these files in its Interpretability section.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advface.errors import AdvfaceError, ConfigError

METHODS = ("vanilla", "smoothgrad", "ig")
METHOD_NAMES = {"vanilla": "vanilla gradient", "smoothgrad": "SmoothGrad",
                "ig": "Integrated Gradients"}
_SHORT = {"vanilla": "vanilla", "smoothgrad": "SmoothGrad", "ig": "IG"}


@dataclass(frozen=True)
class SaliencySettings:
    """How the maps are computed; cheap defaults (a few images in seconds on a CPU)."""

    n: int = 3
    attack: str = "pgd"
    eps255: float | None = None
    samples: int = 16
    noise: float = 0.15
    steps: int = 128  # 32 left a 23% completeness gap on dlib's max-over-gallery score; 128: ~7%
    baseline: str = "black"
    top_fraction: float = 0.2
    smooth: float = 1.5
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "attack": self.attack, "eps255": self.eps255,
                "smoothgrad_samples": self.samples, "smoothgrad_noise": self.noise,
                "ig_steps": self.steps, "ig_baseline": self.baseline,
                "top_fraction": self.top_fraction, "overlay_smooth_sigma": self.smooth,
                "seed": self.seed}


def safe_name(name: str) -> str:
    """A model name usable as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


# --------------------------------------------------------------------------- choosing probes


def _matches(cell: Any, model: str, attack: str) -> bool:
    """A finished white-box dodging cell on the probes (budgeted, or minimum-norm like cw)."""
    return (cell.model == model and cell.goal == "dodging" and cell.surface == "probe"
            and not cell.is_transfer and not cell.is_mineps and cell.status == "done")


def choose_cell(run: Any, model: str, attack: str, eps255: float | None, n: int
                ) -> tuple[Any, list[Any]] | str:
    """(cell, fooled rows) for ``model``, or a sentence saying why there is none.

    Cells named ``attack`` in the run's config are preferred, then cells whose algorithm is
    ``attack`` (e.g. ``pgd`` finds ``pgd-l2``); L-inf before other norms. With ``eps255`` that
    budget is used; without, the smallest budget at which ``n`` probes were fooled (else the
    budget that fooled most). Minimum-norm attacks (cw, deepfool) have one cell, no budget.
    Only genuine dodging counts: the probe was identified correctly when clean and is not on
    the saved adversarial image.
    """
    cells = [c for c in run.cells if _matches(c, model, attack) and c.attack == attack]
    if not cells:
        cells = [c for c in run.cells if _matches(c, model, attack) and c.kind == attack]
    if not cells:
        have = sorted({c.attack for c in run.cells if _matches(c, model, attack)})
        return (f"no finished {attack} dodging cell on {model}"
                + (f" (dodging attacks run: {', '.join(have)})" if have else ""))
    norms = {c.norm for c in cells}
    norm = "linf" if "linf" in norms else sorted(norms)[0]
    cells = sorted((c for c in cells if c.norm == norm), key=lambda c: c.eps or 0.0)

    def fooled(cell: Any) -> list[Any]:
        rows = [r for r in run.rows.get(cell.cell_id, [])
                if r.success and r.clean_pred is not None and r.clean_pred == r.true_label
                and run.clean_image_path(r.item_key) is not None
                and run.adv_image_path(cell, r) is not None]
        return sorted(rows, key=lambda r: r.item_key)

    if eps255 is not None:
        exact = [c for c in cells if c.eps255 is not None and abs(c.eps255 - eps255) < 1e-6]
        if not exact:
            budgets = ", ".join(f"{c.eps255:g}" for c in cells if c.eps255 is not None)
            return (f"{model} has no {attack} dodging cell at {eps255:g}/255 (budgets: "
                    + (budgets or "none, a minimum-norm attack") + ")")
        rows = fooled(exact[0])
        if not rows:
            return f"{attack} at {eps255:g}/255 fooled no correctly identified probe of {model}"
        return exact[0], rows[:n]
    found = [(c, fooled(c)) for c in cells]
    for cell, rows in found:
        if len(rows) >= n:
            return cell, rows[:n]
    best = max(found, key=lambda cr: (len(cr[1]), -(cr[0].eps or 0)))
    if not best[1]:
        return f"{attack} fooled no correctly identified probe of {model} at any budget"
    return best[0], best[1][:n]


# --------------------------------------------------------------------------- numbers


def _flat_map(attr: Tensor) -> Tensor:
    """Per-pixel importance (max |attribution| over channels), flattened: (N, H*W)."""
    return attr.detach().abs().amax(dim=1).flatten(1).double()


def _corr(a: Tensor, b: Tensor) -> list[float]:
    ca = a - a.mean(dim=1, keepdim=True)
    cb = b - b.mean(dim=1, keepdim=True)
    den = ca.norm(dim=1) * cb.norm(dim=1)
    r = (ca * cb).sum(dim=1) / den.clamp_min(1e-300)
    return [float(v) if d > 0 else math.nan for v, d in zip(r, den, strict=True)]


def _top_mask(flat: Tensor, fraction: float) -> Tensor:
    k = max(1, round(fraction * flat.shape[1]))
    idx = flat.argsort(dim=1, descending=True, stable=True)[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _mean(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(ok)) if ok else None


def attributions(scorer: nn.Module, images: Tensor, targets: Tensor, s: SaliencySettings
                 ) -> dict[str, Tensor]:
    """The three methods' attributions of ``targets``' scores, shape like ``images``."""
    from advface.interpret.saliency import integrated_gradients, smoothgrad, vanilla_gradient

    return {
        "vanilla": vanilla_gradient(scorer, images, targets),
        "smoothgrad": smoothgrad(scorer, images, targets, samples=s.samples, noise=s.noise,
                                 seed=s.seed),
        "ig": integrated_gradients(scorer, images, targets,
                                   baseline=s.baseline,  # type: ignore[arg-type]
                                   steps=s.steps),
    }


def concentration(clean: Tensor, adv: Tensor, attr_clean: Tensor, attr_adv: Tensor,
                  fraction: float) -> list[dict[str, float | None]]:
    """Per image: where the perturbation lies on the clean image's map, and map stability."""
    from advface.interpret.saliency import perturbation_saliency

    ps = perturbation_saliency(clean, adv, attr_clean, top_fractions=(fraction,))
    share = ps.energy_in_top[fraction]
    mc, ma = _flat_map(attr_clean), _flat_map(attr_adv)
    top_c, top_a = _top_mask(mc, fraction), _top_mask(ma, fraction)
    overlap = (top_c & top_a).sum(1).double() / top_c.sum(1).double()
    corr = _corr(mc, ma)
    out = []
    for i in range(clean.shape[0]):
        sh = float(share[i])
        out.append({
            "energy_in_top": _num(sh), "enrichment": _num(sh / fraction),
            "spearman": _num(float(ps.spearman[i])), "pearson": _num(float(ps.pearson[i])),
            "map_correlation": _num(corr[i]), "top_overlap": _num(float(overlap[i])),
        })
    return out


# --------------------------------------------------------------------------- figure


def _u8(img: Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _short(name: str, n: int = 16) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def diff_gain(clean: Tensor, adv: Tensor) -> int:
    """Amplification of adv - clean for display, shown signed around mid-grey: at least x10
    (as the report's adversarial grid), more when that stays too faint (small budgets) but never
    so much that the largest change saturates; one gain per figure so its rows compare."""
    max_diff = float((adv - clean).abs().amax()) * 255.0
    return max(10, math.floor(127.0 / max_diff)) if max_diff > 0 else 10


def saliency_figure(clean: Tensor, adv: Tensor, attrs: dict[str, Tensor], labels: list[str],
                    shares: list[float | None], fraction: float, smooth: float, title: str):
    """The per-model figure (a matplotlib Figure, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from advface.interpret.saliency import heatmap, overlay

    n = clean.shape[0]
    gain = diff_gain(clean, adv)
    heads = ["clean", "adversarial", f"diff ×{gain} (grey: 0)"]
    for m in METHODS:
        heads += [f"{_SHORT[m]} (clean)", f"{_SHORT[m]} (adv.)"]
    heads.append(f"|diff| on top-{fraction:.0%}\nSmoothGrad pixels")
    fig = Figure(figsize=(1.3 * len(heads), 1.45 * n + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, len(heads), squeeze=False)
    maps = {m: heatmap(a, smooth=smooth) for m, a in attrs.items()}
    top = _top_mask(_flat_map(attrs["smoothgrad"][:n]), fraction).reshape(
        n, *clean.shape[-2:])
    for i in range(n):
        c, a = _u8(clean[i]), _u8(adv[i])
        delta = a.astype(np.int16) - c.astype(np.int16)
        diff = np.clip(np.abs(delta) * 2 * gain, 0, 255)
        dim = 0.2 + 0.8 * top[i].numpy()[..., None]
        panels = [c, a, np.clip(128 + delta * gain, 0, 255).astype(np.uint8)]
        for m in METHODS:
            panels += [overlay(clean[i], maps[m][i]), overlay(adv[i], maps[m][n + i])]
        panels.append((diff * dim).round().astype(np.uint8))
        for j, (ax, panel) in enumerate(zip(axes[i], panels, strict=True)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=7)
        axes[i][0].set_ylabel(labels[i], fontsize=7)
        share = shares[i]
        axes[i][-1].set_xlabel("n/a" if share is None else f"{share:.0%} of energy",
                               fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- per model


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def model_saliency(run: Any, name: str, scorer: nn.Module, cell: Any, rows: list[Any],
                   s: SaliencySettings, out_dir: Path, extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Compute, draw and write one model's saliency files; returns the JSON document."""
    import io

    from advface.data.images import load_png
    from advface.interpret.saliency import completeness_gap
    from advface.report.load import fmt_eps

    started = time.monotonic()
    clean = torch.stack([load_png(run.clean_image_path(r.item_key)) for r in rows])
    adv = torch.stack([load_png(run.adv_image_path(cell, r)) for r in rows])
    if clean.shape != adv.shape:
        raise AdvfaceError(f"clean and adversarial images of {name} differ in size "
                           f"({tuple(clean.shape)} vs {tuple(adv.shape)})",
                           path=run.run_dir / "images",
                           fix="the run directory is inconsistent; rerun the cell")
    n = clean.shape[0]
    true = torch.tensor([int(r.true_label) for r in rows])
    images = torch.cat([clean, adv])
    targets = torch.cat([true, true])
    with torch.no_grad():
        scores = scorer(images).float()
    preds = scores.argmax(1)
    true_scores = scores.gather(1, targets[:, None])[:, 0]
    attrs = attributions(scorer, images, targets, s)
    gap = completeness_gap(scorer, images, attrs["ig"], targets, baseline=s.baseline)  # type: ignore[arg-type]
    with torch.no_grad():
        from advface.interpret.saliency import make_baseline

        base_scores = scorer(make_baseline(images, s.baseline)).float()  # type: ignore[arg-type]
    span = (true_scores - base_scores.gather(1, targets[:, None])[:, 0]).abs()
    rel_gap = (gap.abs() / span.clamp_min(1e-12)).tolist()

    per_method = {m: concentration(clean, adv, a[:n], a[n:], s.top_fraction)
                  for m, a in attrs.items()}
    items = []
    for i, r in enumerate(rows):
        items.append({
            "key": r.item_key, "true": run.identity_name(r.true_label),
            "adv_pred": run.identity_name(int(preds[n + i])),
            "clean_pred": run.identity_name(int(preds[i])),
            "stored_adv_pred": run.identity_name(r.adv_pred),
            "decision_matches_run": bool(int(preds[n + i]) == r.adv_pred
                                         and int(preds[i]) == r.clean_pred),
            "true_score_clean": float(true_scores[i]), "true_score_adv": float(true_scores[n + i]),
            "linf": r.linf, "l2": r.l2,
            "ig_completeness_rel_gap": {"clean": _num(rel_gap[i]), "adv": _num(rel_gap[n + i])},
            "methods": {m: per_method[m][i] for m in METHODS},
        })
    summary = {m: {k: _mean([it["methods"][m][k] for it in items])
                   for k in ("energy_in_top", "enrichment", "spearman", "pearson",
                             "map_correlation", "top_overlap")} for m in METHODS}
    stem = f"saliency_{safe_name(name)}_{safe_name(cell.attack)}"
    labels = [f"{_short(it['true'])}\n→ {_short(it['adv_pred'])}" for it in items]
    budget = "" if cell.eps255 is None else f" {fmt_eps(cell.eps255)}"
    title = (f"{name}: {cell.attack}{budget} ({cell.norm}) dodging — saliency of the true "
             "identity's score on the clean and the adversarial image")
    fig = saliency_figure(clean, adv, attrs, labels,
                          [it["methods"]["smoothgrad"]["energy_in_top"] for it in items],
                          s.top_fraction, s.smooth, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _atomic_write(out_dir / f"{stem}.png", buf.getvalue())
    from advface import __version__

    doc = {
        "kind": "saliency", "model": name, "figure": f"{stem}.png",
        "cell": {"cell_id": cell.cell_id, "attack": cell.attack, "algorithm": cell.kind,
                 "eps255": cell.eps255, "norm": cell.norm, "goal": cell.goal,
                 "surface": cell.surface},
        "settings": s.to_json(), "n_items": n, "diff_gain": diff_gain(clean, adv),
        "image_size": list(clean.shape[-2:]),
        "items": items, "summary": summary,
        "mean_true_score_clean": _mean([it["true_score_clean"] for it in items]),
        "mean_true_score_adv": _mean([it["true_score_adv"] for it in items]),
        "all_decisions_match_run": all(it["decision_matches_run"] for it in items),
        "seconds": round(time.monotonic() - started, 2), "advface_version": __version__,
        **(extra or {}),
    }
    _atomic_write(out_dir / f"{stem}.json", (json.dumps(doc, indent=2) + "\n").encode())
    return doc


def run_saliency(run_dir: str | Path, models: list[str] | None = None,
                 settings: SaliencySettings | None = None, *, data_dir: Path | None = None,
                 cache_dir: Path | None = None, progress: bool = False,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Write RUN_DIR/interpret/saliency_<model>_<attack>.{png,json} per model (default: all).

    A model without a fooled probe for the chosen attack is skipped with a message; no model
    at all is an error (nothing would be written).
    """
    from advface.experiments.reload import load_run_config, load_run_models
    from advface.report.load import load_run

    s = settings or SaliencySettings()
    if s.n < 1 or not 0 < s.top_fraction <= 1:
        raise AdvfaceError(f"bad settings n={s.n}, top fraction={s.top_fraction}",
                           fix="use n >= 1 and a top fraction in (0, 1]")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    cfg = load_run_config(run_dir)
    names = list(models) if models else [m.name for m in cfg.models]
    known = [m.name for m in cfg.models]
    unknown = [n for n in names if n not in known]
    if unknown:  # not "no fooled probe": the name is wrong
        raise ConfigError(f"the run has no model {unknown[0]!r}",
                          path=Path(run_dir) / "config.yaml", fix=f"use one of: {', '.join(known)}")
    chosen: dict[str, tuple[Any, list[Any]]] = {}
    for name in names:
        pick = choose_cell(run, name, s.attack, s.eps255, s.n)
        if isinstance(pick, str):
            log(f"{name}: skipped, {pick}")
        else:
            chosen[name] = pick
    if not chosen:
        raise AdvfaceError("no model has a fooled probe to explain",
                           path=run_dir / "results.sqlite",
                           fix="pick another --attack/--eps (see `advface results RUN_DIR`)")
    loaded = load_run_models(run_dir, list(chosen), data_dir=data_dir, cache_dir=cache_dir,
                             progress=progress)
    out_dir = run_dir / "interpret"
    docs = []
    for name, (cell, rows) in chosen.items():
        lm = loaded.models[name]
        match = loaded.fingerprint_matches.get(name)
        if match is False:
            log(f"{name}: warning, the weights differ from the run's (models/{name}.json "
                "fingerprint); the maps explain the current checkpoint")
        doc = model_saliency(run, name, lm.scorer, cell, rows, s, out_dir,
                             extra={"fingerprint": lm.fingerprint,
                                    "fingerprint_matches_run": match})
        if not doc["all_decisions_match_run"]:
            log(f"{name}: warning, the rebuilt model does not reproduce every stored decision")
        sg = doc["summary"]["smoothgrad"]
        share = sg["energy_in_top"]
        budget = "" if cell.eps255 is None else f" {cell.eps255:g}/255"
        log(f"{name}: {doc['n_items']} probes of {cell.attack}{budget}; "
            f"SmoothGrad top-{s.top_fraction:.0%} pixels hold "
            + ("n/a" if share is None else f"{share:.1%}")
            + f" of the perturbation energy; {doc['seconds']:.1f}s -> "
            f"{out_dir / doc['figure']}")
        docs.append(doc)
    return docs
