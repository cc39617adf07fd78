"""The report's tables, as plain data (`Table`) rendered to HTML by the report and notebook.

Every identification number has its random-guesser value either in the same cell or in a
"random guess" row of the same table, so "good" and "chance" can be told apart at a glance.
"""

from __future__ import annotations

import html
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from advface.report import stats as S
from advface.report.load import RunData, fmt_eps, split_subsets

CLASSIFICATION = (
    ("accuracy", "accuracy"), ("macro_precision", "macro P"), ("macro_recall", "macro R"),
    ("weighted_precision", "weighted P"), ("weighted_recall", "weighted R"),
)


def pct(x: float | None, digits: int = 1) -> str:
    """A rate as a percentage string; the one formatter every report number goes through."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def eps_text(eps255: float | None) -> str:
    return "—" if eps255 is None else fmt_eps(eps255)


@dataclass
class Table:
    """A titled grid of already formatted strings, with a note saying how to read it."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    emphasis: set[int] = field(default_factory=set)  # row indices drawn in grey (baselines)

    def to_html(self) -> str:
        """An HTML table; values are escaped, so identity names cannot inject markup."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for i, row in enumerate(self.rows):
            cls = ' class="baseline"' if i in self.emphasis else ""
            body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(v)}</td>" for v in row)
                        + "</tr>")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (f'<div class="table-wrap" id="table-{html.escape(self.key)}">'
                f"<table><caption>{html.escape(self.title)}</caption><thead><tr>{head}</tr>"
                f"</thead><tbody>{''.join(body)}</tbody></table>{note}</div>")

    def _repr_html_(self) -> str:  # Jupyter shows tables as HTML
        return self.to_html()


# ---- builders ---------------------------------------------------------------------------------
def table_models(run: RunData) -> Table | None:
    if not run.models:
        return None
    rows = []
    for m in run.model_names:
        info = run.models.get(m)
        if info is None:
            continue
        hist = info.get("training_history") or []
        n_params = info.get("n_params")
        rows.append([
            m, str(info.get("kind", "?")), str(info.get("description", "")),
            str(info.get("input_size", "?")), str(info.get("embedding_dim", "?")),
            str(info.get("metric", "?")), str(info.get("decision", "?")),
            f"{n_params:,}" if isinstance(n_params, int) else "?",
            str(len(hist)) if hist else "— (not trained here)",
        ])
    return Table("models", "The classifiers", ["model", "kind", "description", "input",
                 "embedding", "metric", "decision", "parameters", "epochs"], rows)


def table_split(run: RunData) -> Table | None:
    subsets = split_subsets(run.split)
    if not subsets:
        return None
    rows = []
    for name, keys in subsets.items():
        per_id = Counter(k.split("/", 1)[0] for k in keys)
        counts = sorted(per_id.values())
        rows.append([name, str(len(keys)), str(len(per_id)), str(counts[0]),
                     f"{statistics.median(counts):g}", str(counts[-1])])
    return Table("split", "Closed-set split (split.json)", ["subset", "images", "identities",
                 "min / identity", "median / identity", "max / identity"], rows)


def table_classifiers(run: RunData) -> Table | None:
    """Accuracy, rank-k and precision/recall per model, with random-guess rows."""
    models = [m for m in run.model_names if m in run.clean]
    if not models:
        return None
    cols = ["model", "probes", *[f"rank-{k}" for k in S.RANKS],
            *[label for _, label in CLASSIFICATION]]
    rows: list[list[str]] = []
    baselines: list[tuple[str, list[str]]] = []
    for m in models:
        c = run.clean[m]
        rk = c.get("rank_k") or {}
        cl = c.get("classification") or {}
        rows.append([m, str(c.get("n_probes", "?")), *[pct(rk.get(str(k))) for k in S.RANKS],
                     *[pct(cl.get(key)) for key, _ in CLASSIFICATION]])
        rrk = c.get("random_rank_k") or {}
        rcl = c.get("random_classification") or {}
        base = [str(c.get("n_probes", "?")),
                *[pct(rrk.get(str(k), S.random_rank(run, m, k))) for k in S.RANKS],
                *[pct(rcl.get(key)) for key, _ in CLASSIFICATION]]
        baselines.append((m, base))
    emphasis = set()
    if all(b == baselines[0][1] for _, b in baselines):
        emphasis.add(len(rows))
        rows.append(["random guess", *baselines[0][1]])
    else:
        for m, b in baselines:
            emphasis.add(len(rows))
            rows.append([f"random guess ({m}'s probes)", *b])
    return Table("classifiers", "Clean closed-set identification", cols, rows,
                 note="Grey rows: a guesser that picks an identity uniformly at random on the "
                      "same probes (exact or simulated, from clean/<model>.json). P/R = "
                      "precision/recall over identities.", emphasis=emphasis)


def _far_keys(run: RunData, models: list[str]) -> list[str]:
    keys: set[str] = set()
    for m in models:
        keys |= set((run.verification[m].get("tar_at_far") or {}).keys())
    def as_float(k: str) -> float:
        try:
            return float(k)
        except ValueError:
            return math.inf
    return sorted(keys, key=as_float)


def table_verification(run: RunData) -> Table | None:
    """10-fold accuracy, AUC, EER and TAR at each FAR the run measured, with chance."""
    models = [m for m in run.model_names if m in run.verification]
    if not models:
        return None
    fars = _far_keys(run, models)
    rows = []
    for m in models:
        v = run.verification[m]
        tar = v.get("tar_at_far") or {}
        acc = pct(v.get("mean_accuracy"))
        if v.get("std_accuracy") is not None:
            acc += f" ± {pct(v['std_accuracy'])}"
        rows.append([m, acc, num(v.get("auc")), pct(v.get("eer")),
                     *[pct(tar.get(f)) for f in fars]])
    chance = []
    for f in fars:
        try:
            chance.append(pct(float(f)))
        except ValueError:
            chance.append("n/a")
    rows.append(["random guess", "50.0%", "0.500", "50.0%", *chance])
    far_cols = []
    for f in fars:
        try:
            far_cols.append(f"TAR @ FAR {pct(float(f), 1)}")
        except ValueError:
            far_cols.append(f"TAR @ FAR {f}")
    return Table("verification", "LFW pair verification (10 folds)",
                 ["model", "accuracy ± std", "AUC", "EER", *far_cols],
                 rows, note="A random scorer accepts genuine and impostor pairs alike: TAR "
                 "equals FAR, AUC 0.5, EER 50%.", emphasis={len(rows) - 1})


def table_attacks(run: RunData) -> Table | None:
    """Every budgeted white-box cell: clean vs robust rank-1, success with its 95% interval."""
    sums = S.whitebox(S.summaries(run))
    if not sums:
        return None
    order = {m: i for i, m in enumerate(run.model_names)}
    sums.sort(key=lambda s: (order.get(s.cell.model, 99), s.cell.goal, s.cell.surface,
                             s.cell.attack, s.cell.norm, s.cell.eps or 0))
    hit = S.random_hit(run)
    rows = []
    for s in sums:
        ci = s.asr_ci
        asr = pct(s.asr) + (f" [{pct(ci[0], 0)}–{pct(ci[1], 0)}]" if ci else "")
        rows.append([s.cell.model, s.cell.attack, s.cell.norm, eps_text(s.cell.eps255),
                     s.cell.goal, s.cell.surface, str(s.n), str(s.n_attempted),
                     pct(s.clean_acc), pct(s.robust_acc), asr, num(s.ssim), num(s.psnr, 1),
                     num(s.linf, 2), num(s.l2, 1),
                     num(s.queries, 0) if s.queries is not None else "—"])
    note = ("clean/robust: rank-1 accuracy of the attacked items before/after the attack "
            f"(random guess {pct(hit)}); success: the store's success flag, judged on the saved "
            "PNG, over the attempted items (the ones the attack had to change: dodging, probes "
            "identified correctly before the attack; impersonation, probes not already named as "
            "the target), with a Wilson 95% interval; chance success is 1 − 1/C for dodging and "
            "1/C for impersonation. SSIM, PSNR (dB), L∞ and L2 (8-bit units) are means over items; "
            "queries is the median.")
    return Table("attacks", "White-box and query attacks, per cell",
                 ["model", "attack", "norm", "ε", "goal", "surface", "n", "attempted", "clean",
                  "robust", "success [95% CI]", "SSIM", "PSNR", "L∞", "L2", "queries"],
                 rows, note=note)


def table_transfer(run: RunData) -> Table | None:
    sums = S.summaries(run)
    mats = S.transfer_matrices(run, sums)
    rows = []
    for m in mats:
        for (a, b), s in m.rate.items():
            if a == b:
                continue
            wb_target = m.rate.get((b, b))
            wb_sur = m.rate.get((a, a))
            rows.append([a, b, m.base_attack, m.norm, eps_text(m.eps * 255 if m.eps else None),
                         m.goal, str(s.n), str(s.n_attempted), pct(s.asr), pct(s.robust_acc),
                         pct(wb_sur.asr) if wb_sur else "not run",
                         pct(wb_target.asr) if wb_target else "not run"])
    if not rows:
        return None
    return Table("transfer", "Transfer (black-box) attacks",
                 ["surrogate", "target", "attack", "norm", "ε", "goal", "n", "attempted",
                  "transfer success", "target rank-1 after", "white-box success on surrogate",
                  "white-box success on target"], rows,
                 note=f"Success rates over the attempted items (dodging: probes the target "
                 f"identified correctly before the attack). Random-guess rank-1: "
                 f"{pct(S.random_hit(run))}.")


def table_mineps(run: RunData) -> Table | None:
    mins = S.mineps_summaries(S.summaries(run))
    if not mins:
        return None
    rows = []
    for s in mins:
        vals = sorted(r.min_eps for r in S.attempted_rows(s.cell, run.rows[s.cell.cell_id])
                      if r.min_eps is not None and math.isfinite(r.min_eps))
        quart = (statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1
                 else vals * 3)
        rows.append([s.cell.model, s.cell.base_attack, s.cell.norm, s.cell.goal, str(s.n),
                     str(s.n_attempted), eps_text(s.cell.max_eps255), pct(s.fooled),
                     eps_text(s.min_eps255_median) if s.min_eps255_median is not None else "—",
                     eps_text(quart[0]) if quart else "—", eps_text(quart[2]) if quart else "—"])
    return Table("mineps", "Minimal ε per item (search up to the largest ε)",
                 ["model", "attack", "norm", "goal", "n", "attempted", "largest ε",
                  "fooled within it", "median minimal ε", "25th pct.", "75th pct."], rows,
                 note="Fooled: of the attempted items (dodging: probes identified correctly "
                 "before the attack). Medians and quartiles are over the fooled ones.")


def table_other(run: RunData) -> Table | None:
    sums = S.other_summaries(S.summaries(run))
    if not sums:
        return None
    rows = [[s.cell.model, s.cell.attack, s.cell.norm, s.cell.goal, s.cell.surface, str(s.n),
             str(s.n_attempted), pct(s.clean_acc), pct(s.robust_acc), pct(s.asr),
             num(s.l2, 1), num(s.linf, 2), num(s.ssim)] for s in sums]
    return Table("unbounded", "Minimum-norm attacks (no fixed budget)",
                 ["model", "attack", "norm", "goal", "surface", "n", "attempted", "clean",
                  "robust", "success", "mean L2", "mean L∞", "SSIM"], rows,
                 note=f"Random-guess rank-1: {pct(S.random_hit(run))}.")


def table_missing(run: RunData, undrawn: list[str] | None = None) -> Table | None:
    rows = [[m.kind, m.what, m.detail] for m in run.missing]
    rows += [["image", p, "unreadable, skipped"] for p in run.unreadable_images]
    rows += [["figure", name, "not drawn: the run has no data for it"] for name in undrawn or []]
    if not rows:
        return None
    return Table("missing", "Files, cells, images and figures the report could not use",
                 ["kind", "what", "detail"], rows)


def all_tables(run: RunData, undrawn: list[str] | None = None) -> dict[str, Table | None]:
    """Every table of the report, keyed as the texts refer to them."""
    from advface.report.extras import table_defences, table_detector, table_saliency

    return {
        "saliency": table_saliency(run), "defences": table_defences(run),
        "detector": table_detector(run),
        "split": table_split(run), "models": table_models(run),
        "classifiers": table_classifiers(run), "verification": table_verification(run),
        "attacks": table_attacks(run), "transfer": table_transfer(run),
        "mineps": table_mineps(run), "unbounded": table_other(run),
        "missing": table_missing(run, undrawn),
    }
