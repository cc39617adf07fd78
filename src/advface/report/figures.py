"""The report's figures, drawn with matplotlib (Agg) from a `RunData`.

Each `fig_*` function returns a Figure, or None when the run holds no data for it: the report
then says the figure is missing instead of showing an empty plot. Figures are built with
`matplotlib.figure.Figure` directly, not pyplot: no global backend switch, no figure registry to
leak, and the same code draws in a script, the CLI and a Jupyter kernel. Numbers come from
`advface.report.stats`, the same functions the texts use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError

from advface.data.images import signed_difference
from advface.report import stats as S
from advface.report.load import GOALS, Cell, Row, RunData, fmt_eps

_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_STYLES = ["-", "--", "-.", ":"]
_RANDOM_STYLE = {"color": "0.45", "linestyle": ":", "linewidth": 1.2}


def model_color(run: RunData, model: str) -> str:
    """One colour per model across every figure, so a reader learns it once."""
    idx = run.model_names.index(model) if model in run.model_names else len(run.model_names)
    return f"C{idx % 10}"


def _attack_style(attacks: list[str], attack: str) -> tuple[str, str]:
    i = attacks.index(attack) if attack in attacks else 0
    return _STYLES[i % len(_STYLES)], _MARKERS[i % len(_MARKERS)]


def _shared_legend(fig: Figure, axes: np.ndarray, ncols: int = 4) -> None:
    """One legend under all panels: series look the same in every panel, so say it once."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8,
                   frameon=False)


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float],
              squeeze: bool = True, **kw: object) -> tuple[Figure, Any]:
    """pyplot.subplots without pyplot: a detached Figure with constrained layout."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # a real renderer for text extents, without pyplot's global state
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kw)


def _pct_axis(ax: Axes) -> None:
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.grid(True, alpha=0.3)


def read_image(run: RunData, path: Path | None) -> np.ndarray | None:
    """An RGB uint8 array, or None; an undecodable file is recorded in run.unreadable_images."""
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError):
        rel = str(path.relative_to(run.run_dir)) if path.is_relative_to(run.run_dir) \
            else str(path)
        if rel not in run.unreadable_images:
            run.unreadable_images.append(rel)
        return None


# ---- classifiers ------------------------------------------------------------------------------
def expects_training(run: RunData) -> bool:
    """Whether the run should have training curves: a model trained here, or one whose model
    file is missing (so we cannot tell). A run of pretrained models only has none to miss."""
    for m in run.model_names:
        info = run.models.get(m)
        if info is None or info.get("kind") == "adhoc" or info.get("training_history"):
            return True
    return False


def fig_training_curves(run: RunData) -> Figure | None:
    """Loss and train/validation accuracy per epoch for every model that was trained here."""
    hist = {m: info["training_history"] for m, info in run.models.items()
            if isinstance(info.get("training_history"), list) and info["training_history"]}
    if not hist:
        return None
    fig, (ax_l, ax_a) = _subplots(1, 2, figsize=(10, 3.6))
    for model, h in hist.items():
        ep = [e.get("epoch", i + 1) for i, e in enumerate(h)]
        color = model_color(run, model)
        if any(e.get("loss") is not None for e in h):
            ax_l.plot(ep, [e.get("loss") for e in h], color=color, marker="o", ms=3, label=model)
        for key, style, name in (("train_acc", "-", "train"), ("val_acc", "--", "validation")):
            if any(e.get(key) is not None for e in h):
                ax_a.plot(ep, [e.get(key) for e in h], color=color, linestyle=style, marker="o",
                          ms=3, label=f"{model} {name}")
    ax_l.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax_l.grid(True, alpha=0.3)
    ax_l.legend(fontsize=8)
    _pct_axis(ax_a)
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax_a.legend(fontsize=8)
    return fig


def fig_cmc(run: RunData) -> Figure | None:
    """CMC (rank-k identification rate) per model with the random-ranking baseline."""
    curves = {m: c["cmc"] for m, c in run.clean.items() if c.get("cmc")}
    if not curves:
        return None
    fig, ax = _subplots(figsize=(7, 4))
    longest = 1
    for model, cmc in curves.items():
        k = np.arange(1, len(cmc) + 1)
        longest = max(longest, len(cmc))
        r1 = cmc[0]
        ax.plot(k, cmc, color=model_color(run, model), marker="o", ms=3,
                label=f"{model} (rank-1 {r1:.1%})")
    n = run.n_identities
    stored = next((c["random_cmc"] for c in run.clean.values() if c.get("random_cmc")), None)
    if stored:  # the runner's own baseline, when it wrote one
        ax.plot(np.arange(1, len(stored) + 1), stored, **_RANDOM_STYLE, label="random ranking")
    elif n:
        k = np.arange(1, longest + 1)
        ax.plot(k, np.minimum(k, n) / n, **_RANDOM_STYLE, label=f"random ranking (1/{n} per rank)")
    if longest > 20:
        ax.set_xscale("log")
    _pct_axis(ax)
    ax.set(xlabel="rank k", ylabel="identification rate (true identity in top k)",
           title="Cumulative match characteristic (clean probes)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def fig_verification_roc(run: RunData) -> Figure | None:
    """ROC of LFW pair verification per model, with the chance diagonal."""
    rocs = {m: v["roc"] for m, v in run.verification.items()
            if isinstance(v.get("roc"), dict) and v["roc"].get("fpr")}
    if not rocs:
        return None
    fig, ax = _subplots(figsize=(5.5, 4.5))
    for model, roc in rocs.items():
        v = run.verification[model]
        extra = []
        if v.get("auc") is not None:
            extra.append(f"AUC {v['auc']:.3f}")
        if v.get("eer") is not None:
            extra.append(f"EER {v['eer']:.1%}")
        ax.plot(roc["fpr"], roc["tpr"], color=model_color(run, model),
                label=f"{model} ({', '.join(extra)})" if extra else model)
    ax.plot([0, 1], [0, 1], **_RANDOM_STYLE, label="chance")
    ax.set(xlabel="false accept rate", ylabel="true accept rate", xlim=(0, 1), ylim=(0, 1.01),
           title="LFW pair verification (ROC)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


# ---- attacks ----------------------------------------------------------------------------------
def fig_robustness(run: RunData, norm: str = "linf") -> Figure | None:
    """Robust rank-1 and attack success rate against eps, one column per goal.

    Each line is one (model, attack[, surface]); robust accuracy starts at the clean accuracy of
    the same items (eps = 0) so the drop is visible; dotted lines are the random baselines.
    """
    sums = S.summaries(run)
    keys = [k for k in S.series_keys(sums) if k[2] == norm]
    if not keys:
        return None
    goals = [g for g in GOALS if any(k[3] == g for k in keys)]
    goals += sorted({k[3] for k in keys} - set(goals))
    attacks = sorted({k[1] for k in keys})
    surfaces = {k[4] for k in keys}
    fig, axes = _subplots(2, len(goals), figsize=(5.2 * len(goals) + 0.4, 7.8), squeeze=False)
    hit = S.random_hit(run)
    all_eps: set[float] = set()
    for col, goal in enumerate(goals):
        ax_r, ax_s = axes[0, col], axes[1, col]
        for model, attack, nrm, g, surface in keys:
            if g != goal:
                continue
            curve = S.eps_curve(sums, model, attack, nrm, g, surface)
            xs = [s.cell.eps255 for s in curve]
            all_eps.update(x for x in xs if x is not None)
            style, marker = _attack_style(attacks, attack)
            label = f"{model} · {attack}" + (f" · {surface}" if len(surfaces) > 1 else "")
            kw = {"color": model_color(run, model), "linestyle": style, "marker": marker,
                  "ms": 4, "label": label}
            if surface != "probe":
                kw["alpha"] = 0.6
            clean = curve[0].clean_acc if curve else None
            ax_r.plot(([0.0] if clean is not None else []) + xs,
                      ([clean] if clean is not None else []) + [s.robust_acc for s in curve], **kw)
            ax_s.plot(xs, [s.asr for s in curve], **kw)
        if hit is not None:
            chance = hit if goal == "impersonation" else 1 - hit
            for ax, level in ((ax_r, hit), (ax_s, chance)):
                ax.axhline(level, **_RANDOM_STYLE, label="random guess")
                ax.annotate(f"random {level:.1%}", (1.0, level), xycoords=("axes fraction",
                            "data"), xytext=(-2, 3), textcoords="offset points", ha="right",
                            fontsize=7, color="0.35")
        ax_r.set(title=f"{goal}: robust rank-1 accuracy", ylabel="rank-1 accuracy")
        ax_s.set(title=f"{goal}: attack success rate", ylabel="success rate",
                 xlabel=f"ε ({'L∞' if norm == 'linf' else norm.upper()}, 8-bit units: x/255)")
        for ax in (ax_r, ax_s):
            _pct_axis(ax)
    _shared_legend(fig, axes, ncols=min(4, len(keys) + 1))
    ticks = sorted(all_eps | {0.0})
    for ax in axes.ravel():
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
    return fig


def fig_visibility(run: RunData, norm: str = "linf") -> Figure | None:
    """Mean SSIM and PSNR of the saved adversarial images against eps (probe surface).

    PSNR is drawn with its floor for an L-inf budget, 20·log10(255/ε): an image below the
    dashed line would have broken its budget, one far above it uses less than the budget.
    """
    sums = [s for s in S.whitebox(S.summaries(run)) if s.cell.norm == norm
            and s.cell.surface == "probe"]
    if not any(s.ssim is not None or s.psnr is not None for s in sums):
        return None
    goal = S.shown_goal(sums)
    sums = [s for s in sums if s.cell.goal == goal]
    attacks = sorted({s.cell.attack for s in sums})
    fig, (ax_s, ax_p) = _subplots(1, 2, figsize=(10, 4.4))
    eps_all: set[float] = set()
    for model in run.model_names:
        for attack in attacks:
            curve = S.eps_curve(sums, model, attack, norm, goal)
            if not curve:
                continue
            style, marker = _attack_style(attacks, attack)
            xs = [s.cell.eps255 for s in curve]
            eps_all.update(x for x in xs if x is not None)
            kw = {"color": model_color(run, model), "linestyle": style, "marker": marker,
                  "ms": 4, "label": f"{model} · {attack}"}
            ax_s.plot(xs, [s.ssim for s in curve], **kw)
            ax_p.plot(xs, [s.psnr for s in curve], **kw)
    if norm == "linf" and eps_all:
        grid = np.linspace(min(eps_all), max(eps_all), 50)
        ax_p.plot(grid, 20 * np.log10(255 / grid), color="0.3", linestyle="--", linewidth=1,
                  label="lowest PSNR the L∞ budget allows")
    ticks = sorted(eps_all)
    for ax in (ax_s, ax_p):
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("ε (8-bit units: x/255)")
    ax_s.set(ylabel="mean SSIM (1 = identical)", title=f"Structural similarity ({goal})")
    ax_p.set(ylabel="mean PSNR (dB)", title=f"Peak signal-to-noise ratio ({goal})")
    _shared_legend(fig, np.array([ax_s, ax_p]))
    return fig


def grid_series(run: RunData) -> list[tuple[str, str, str, list[Cell]]]:
    """Per model, the white-box series shown in the image grid: (model, attack, goal, cells).

    PGD dodging on probes when present (the reference attack), else the series with most eps.
    """
    out = []
    sums = S.summaries(run)
    for model in run.model_names:
        best: tuple[int, int, tuple[str, str, str, str, str]] | None = None
        for key in S.series_keys(sums):
            if key[0] != model or key[4] != "probe":
                continue
            n = len(S.eps_curve(sums, *key))
            pref = int(key[1] == "pgd") + int(key[3] == "dodging") + int(key[2] == "linf")
            if best is None or (pref, n) > best[:2]:
                best = (pref, n, key)
        if best is not None:
            key = best[2]
            cells = [s.cell for s in S.eps_curve(sums, *key)]
            if len(cells) > 4:  # keep the grid readable: smallest, largest and two between
                idx = sorted({round(i * (len(cells) - 1) / 3) for i in range(4)})
                cells = [cells[i] for i in idx]
            out.append((model, key[1], key[3], cells))
    return out


def _row_index(run: RunData, cell: Cell) -> dict[str, Row]:
    return {r.item_key: r for r in run.rows.get(cell.cell_id, [])}


def _short(name: str, n: int = 14) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def fig_adversarial_grid(run: RunData, n_items: int = 2) -> Figure | None:
    """Original, adversarial and difference x10 (signed, mid-grey = unchanged) at several eps.

    Signed around grey rather than |difference| on black: at 1-2/255 a x10 magnitude is still
    nearly black, while the sign pattern around grey shows where and how the image moved.

    Items are those attacked at every eps of the series, preferring ones the attack fooled at
    the largest eps, one per identity, so the grid shows what a successful perturbation looks like.
    """
    plan = []  # (model, attack, goal, cells, [keys])
    for model, attack, goal, cells in grid_series(run):
        indices = [_row_index(run, c) for c in cells]
        common = [k for k in indices[0] if all(k in ix for ix in indices[1:])]
        last = indices[-1]
        first = indices[0]
        common.sort(key=lambda k: (first[k].clean_pred != first[k].true_label,
                                   not last[k].success, k))
        chosen, seen = [], set()
        for k in common:
            ident = k.split("/", 1)[0]
            if ident not in seen and run.clean_image_path(k) is not None:
                chosen.append(k)
                seen.add(ident)
            if len(chosen) == n_items:
                break
        if chosen:
            plan.append((model, attack, goal, cells, chosen))
    if not plan:
        return None
    n_cols = 1 + 2 * max(len(p[3]) for p in plan)
    n_rows = sum(len(p[4]) for p in plan)
    fig, axes = _subplots(n_rows, n_cols, figsize=(1.15 * n_cols + 0.6, 1.45 * n_rows + 0.5),
                             squeeze=False)
    r = 0
    for model, attack, _goal, cells, keys in plan:
        indices = [_row_index(run, c) for c in cells]
        for key in keys:
            clean = read_image(run, run.clean_image_path(key))
            ax = axes[r, 0]
            row0 = indices[0][key]
            if clean is not None:
                ax.imshow(clean, interpolation="nearest")
            clean_wrong = row0.clean_pred is not None and row0.clean_pred != row0.true_label
            ax.set_title(f"{_short(run.identity_name(row0.true_label))}\nclean → "
                         f"{_short(run.identity_name(row0.clean_pred))}", fontsize=7,
                         color="C3" if clean_wrong else "0.2")
            ax.set_ylabel(model, fontsize=8)
            for j, cell in enumerate(cells):
                row = indices[j][key]
                adv = read_image(run, run.adv_image_path(cell, row))
                a_ax, d_ax = axes[r, 1 + 2 * j], axes[r, 2 + 2 * j]
                if adv is not None:
                    a_ax.imshow(adv, interpolation="nearest")
                    if clean is not None and adv.shape == clean.shape:
                        d_ax.imshow(signed_difference(clean, adv), interpolation="nearest")
                else:
                    a_ax.text(0.5, 0.5, "image\nmissing", ha="center", va="center", fontsize=7)
                pred = run.identity_name(row.adv_pred)
                wrong = row.adv_pred != row.true_label
                a_ax.set_title(f"{attack} {fmt_eps(cell.eps255 or 0)}\n→ {_short(pred)}",
                               fontsize=7, color="C3" if wrong else "0.2")
                d_ax.set_title("Δ ×10 (grey: 0)", fontsize=7)
            r += 1
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images and not ax.texts and not ax.get_ylabel():
            ax.axis("off")
    fig.suptitle("Original, adversarial (predicted identity; red = misidentified) and "
                 "amplified difference", fontsize=9)
    return fig


def fig_transfer(run: RunData) -> Figure | None:
    """Success rate of images crafted on a surrogate (rows) against each target (columns)."""
    mats = S.transfer_matrices(run, S.summaries(run))[:4]
    if not mats:
        return None
    fig, axes = _subplots(1, len(mats), figsize=(4.6 * len(mats), 4.0), squeeze=False)
    for ax, m in zip(axes[0], mats, strict=False):
        n = len(m.models)
        grid = np.full((n, n), np.nan)
        for (a, b), s in m.rate.items():
            if s.asr is not None:
                grid[m.models.index(a), m.models.index(b)] = s.asr
        im = ax.imshow(grid, cmap="Reds", vmin=0, vmax=1)
        for i, a in enumerate(m.models):
            for j, b in enumerate(m.models):
                s = m.rate.get((a, b))
                if s is None or s.asr is None:
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=8, color="0.4")
                    continue
                kind = "white-box" if a == b else "transfer"
                ax.text(j, i, f"{s.asr:.0%}\n{kind}\nn={s.n_attempted}", ha="center", va="center",
                        fontsize=8, color="white" if s.asr > 0.6 else "black")
        ax.set_xticks(range(n), m.models, rotation=20, fontsize=8)
        ax.set_yticks(range(n), m.models, fontsize=8)
        ax.set_xlabel("target model (attacked)")
        ax.set_ylabel("surrogate model (gradients from)")
        eps = fmt_eps(m.eps * 255) if m.eps is not None else ""
        ax.set_title(f"{m.base_attack} {m.norm} {eps}, {m.goal}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, format=matplotlib.ticker.PercentFormatter(1.0))
    return fig


def fig_min_eps(run: RunData) -> Figure | None:
    """Histogram of the smallest eps that fooled each item, per minimal-eps cell."""
    mins = S.mineps_summaries(S.summaries(run))[:6]
    if not mins:
        return None
    fig, axes = _subplots(1, len(mins), figsize=(4.2 * len(mins), 3.4), squeeze=False,
                          sharey=True, sharex=True)
    for ax, s in zip(axes[0], mins, strict=False):
        # The items the attack had to change, as the success rates everywhere else.
        rows = S.attempted_rows(s.cell, run.rows.get(s.cell.cell_id, []))
        vals = [r.min_eps for r in rows if r.min_eps is not None and math.isfinite(r.min_eps)]
        never = sum(1 for r in rows if r.min_eps is None or not math.isfinite(r.min_eps))
        top = s.cell.max_eps255 or max(vals, default=1.0)
        bins = np.arange(0, math.ceil(top) + 2) - 0.5
        ax.hist(vals, bins=bins, color=model_color(run, s.cell.model), alpha=0.85,
                label="fooled at ε")
        x = bins[-1] + 1.5
        if never:
            ax.bar([x], [never], width=1.0, color="0.6", hatch="//", label="not fooled")
        ax.set_xlim(bins[0], x + 1)
        med = f"median {s.min_eps255_median:g}/255" if s.min_eps255_median is not None \
            else "never fooled"
        ax.set_title(f"{s.cell.base_attack} on {s.cell.model} ({s.cell.goal}, {s.cell.norm})"
                     f"\n{med}, fooled {s.fooled or 0:.0%} of {s.n_attempted} within "
                     f"{fmt_eps(top)}", fontsize=9)
        ax.set_xlabel("minimal ε (8-bit units)")
        ax.grid(True, alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("items")
    return fig


def impersonation_choice(run: RunData, per_model: int = 2) -> list[tuple[Cell, Row]]:
    """Successful impersonations to show: per model the smallest eps that succeeded."""
    out = []
    for model in run.model_names:
        cells = sorted((c for c in run.cells if c.model == model and c.goal == "impersonation"
                        and c.surface == "probe" and not c.is_transfer),
                       key=lambda c: (c.eps is None, c.eps or 0.0, c.attack))
        picked: list[tuple[Cell, Row]] = []
        for cell in cells:
            for row in run.rows.get(cell.cell_id, []):
                if row.success and row.target_label is not None and \
                        all(p[1].item_key != row.item_key for p in picked):
                    picked.append((cell, row))
                if len(picked) == per_model:
                    break
            if len(picked) == per_model:
                break
        out.extend(picked)
    return out


def fig_impersonation(run: RunData) -> Figure | None:
    """Probe, adversarial image, and an image of the target identity when the run has one."""
    picks = impersonation_choice(run)
    if not picks:
        return None
    fig, axes = _subplots(len(picks), 3, figsize=(6.0, 2.0 * len(picks) + 0.3),
                             squeeze=False)
    for (cell, row), ax_row in zip(picks, axes, strict=True):
        probe = read_image(run, run.clean_image_path(row.item_key))
        adv = read_image(run, run.adv_image_path(cell, row))
        target = run.identity_name(row.target_label)
        imgs = run.images_of_identity(target)
        ref = read_image(run, imgs[0][1]) if imgs else None
        for ax, img, title in (
            (ax_row[0], probe, f"probe: {_short(run.identity_name(row.true_label), 18)}\n"
                               f"({cell.model})"),
            (ax_row[1], adv, f"{cell.attack} {fmt_eps(cell.eps255 or 0)}\n"
                             f"→ {_short(run.identity_name(row.adv_pred), 18)}"),
            (ax_row[2], ref, f"target: {_short(target, 18)}\n"
                             f"({imgs[0][0]} image)" if imgs else f"target: {_short(target, 18)}"),
        ):
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "no image of this\nidentity in the run", ha="center",
                        va="center", fontsize=8)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


# ---- registry ---------------------------------------------------------------------------------
def figure_builders(run: RunData) -> dict[str, Callable[[], Figure | None]]:
    """Name -> zero-argument builder, in report order; names are the PNG file stems."""
    norms = sorted({c.norm for c in run.cells if not c.is_transfer and not c.is_mineps
                    and c.eps is not None}, key=lambda n: (n != "linf", n)) or ["linf"]
    builders: dict[str, Callable[[], Figure | None]] = {}
    if expects_training(run):
        builders["training_curves"] = lambda: fig_training_curves(run)
    builders["cmc"] = lambda: fig_cmc(run)
    if run.verification or run.config.get("verification", True) is not False:
        builders["verification_roc"] = lambda: fig_verification_roc(run)
    for norm in norms:
        builders[f"robustness_{norm}"] = lambda norm=norm: fig_robustness(run, norm)
    builders["adversarial_grid"] = lambda: fig_adversarial_grid(run)
    for norm in norms:
        builders[f"visibility_{norm}"] = lambda norm=norm: fig_visibility(run, norm)
    builders.update({
        "transfer_matrix": lambda: fig_transfer(run),
        "min_eps": lambda: fig_min_eps(run),
        "impersonation_examples": lambda: fig_impersonation(run),
    })
    from advface.report.extras import fig_detector_roc, has_detector_roc

    if has_detector_roc(run):  # only with `advface defend detect --run` results
        builders["detector_roc"] = lambda: fig_detector_roc(run)
    return builders


def all_figures(run: RunData) -> dict[str, Figure | None]:
    """Every figure of the report, drawn; None where the run lacks the data."""
    return {name: build() for name, build in figure_builders(run).items()}


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes (what both figures/*.png and the HTML embed)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig, dpi))
    return path
