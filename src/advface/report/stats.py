"""Numbers the report derives from the results store, computed once and in one place.

Figures, tables and texts all take their numbers from here so that a figure and the sentence
describing it can never disagree. Everything is a plain function of `RunData`.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from advface.metrics.attack import counts_toward_success, wilson_interval
from advface.report.load import Cell, Row, RunData, finite

RANKS = (1, 5, 10, 20)


@dataclass(frozen=True)
class CellSummary:
    """Aggregates of one cell's rows. Rates are fractions in [0, 1]; None when undefined."""

    cell: Cell
    n: int
    clean_acc: float | None  # rank-1 on the attacked items before the attack
    robust_acc: float | None  # rank-1 on the adversarial images (adv_pred == true_label)
    # Attack success rate (the store's `success`, judged on the PNG) over the n_attempted
    # items the attack had to change: dodging, probes identified correctly before the attack;
    # impersonation, probes not already named as the target (counts_toward_success).
    asr: float | None
    n_success: int
    n_attempted: int
    ssim: float | None  # mean over items with a finite value
    psnr: float | None  # mean over items with a finite value (identical images have inf)
    linf: float | None  # mean, 8-bit units
    l2: float | None  # mean, 8-bit units
    queries: float | None  # median
    iterations: float | None  # mean
    fooled: float | None  # mineps: fraction of the n_attempted items with a finite min eps
    min_eps255_median: float | None  # mineps: median over those fooled, 8-bit units

    @property
    def asr_ci(self) -> tuple[float, float] | None:
        """Wilson 95% interval of the success rate: cells are small, so say how unsure."""
        if self.asr is None or self.n_attempted == 0:
            return None
        return wilson_interval(self.n_success, self.n_attempted)


def _mean_bool(values: Iterable[bool | None]) -> tuple[float | None, int, int]:
    vals = [bool(v) for v in values if v is not None]
    if not vals:
        return None, 0, 0
    return sum(vals) / len(vals), sum(vals), len(vals)


def _mean(values: list[float | None]) -> float | None:
    vals = finite(values)
    return sum(vals) / len(vals) if vals else None


def attempted_rows(cell: Cell, rows: list[Row]) -> list[Row]:
    """The rows a cell's success rate is over: the items its attack had to change
    (:func:`advface.metrics.attack.counts_toward_success`)."""
    return [r for r in rows if counts_toward_success(cell.goal, r.clean_pred, r.true_label,
                                                     r.target_label)]


def summarize_cell(cell: Cell, rows: list[Row]) -> CellSummary:
    """Aggregate one cell; labels missing from a row exclude that row from accuracy only."""
    clean_acc, _, _ = _mean_bool(
        None if r.clean_pred is None or r.true_label is None else r.clean_pred == r.true_label
        for r in rows)
    robust_acc, _, _ = _mean_bool(
        None if r.adv_pred is None or r.true_label is None else r.adv_pred == r.true_label
        for r in rows)
    attempted = attempted_rows(cell, rows)
    asr, n_success, n_attempted = _mean_bool(r.success for r in attempted)
    queries = finite([r.queries for r in rows])
    fooled = median = None
    if cell.is_mineps and attempted:
        fin = finite([r.min_eps for r in attempted])
        fooled = len(fin) / len(attempted)
        median = statistics.median(fin) if fin else None  # min_eps is stored in 8-bit units
    return CellSummary(
        cell=cell, n=len(rows), clean_acc=clean_acc, robust_acc=robust_acc, asr=asr,
        n_success=n_success, n_attempted=n_attempted, ssim=_mean([r.ssim for r in rows]),
        psnr=_mean([r.psnr for r in rows]), linf=_mean([r.linf for r in rows]),
        l2=_mean([r.l2 for r in rows]),
        queries=statistics.median(queries) if queries else None,
        iterations=_mean([r.iterations for r in rows]), fooled=fooled,
        min_eps255_median=median,
    )


def cell_order(run: RunData, cell: Cell) -> tuple:
    """Report order: model as configured, then attack, norm, goal, surface, eps.

    Store order is by hashed cell id, i.e. arbitrary; texts and tables must not depend on it.
    """
    models = run.model_names
    return (models.index(cell.model) if cell.model in models else len(models), cell.attack,
            cell.norm, cell.goal, cell.surface, cell.eps is None, cell.eps or 0.0,
            cell.surrogate or "")


def summaries(run: RunData) -> list[CellSummary]:
    """One summary per cell that has rows (cells without rows are 'missing', not zero)."""
    out = []
    for cell in sorted(run.cells, key=lambda c: cell_order(run, c)):
        rows = run.rows.get(cell.cell_id, [])
        if rows:
            out.append(summarize_cell(cell, rows))
    return out


# ---- baselines ------------------------------------------------------------------------------
def random_rank(run: RunData, model: str, k: int = 1) -> float | None:
    """Chance rank-k of a model: clean/<model>.json's random_rank_k, else min(k, C)/C."""
    clean = run.clean.get(model, {})
    value = (clean.get("random_rank_k") or {}).get(str(k))
    if value is not None:
        return float(value)
    n = clean.get("n_identities") or run.n_identities
    return min(k, int(n)) / int(n) if n else None


def random_hit(run: RunData) -> float | None:
    """Chance that a random guess names one given identity (the impersonation baseline)."""
    n = run.n_identities
    return 1.0 / n if n else None


def baseline_for(run: RunData, s: CellSummary) -> float | None:
    """Chance level of a cell's success rate: 1/C for impersonation, 1 - 1/C for dodging."""
    hit = random_hit(run)
    if hit is None:
        return None
    return hit if s.cell.goal == "impersonation" else 1.0 - hit


def clean_rank(run: RunData, model: str, k: int = 1) -> float | None:
    value = (run.clean.get(model, {}).get("rank_k") or {}).get(str(k))
    return None if value is None else float(value)


# ---- selections ------------------------------------------------------------------------------
def whitebox(sums: list[CellSummary]) -> list[CellSummary]:
    """Attacks with a budget run directly on the attacked model (no transfer, no mineps)."""
    return [s for s in sums if not s.cell.is_transfer and not s.cell.is_mineps
            and s.cell.eps is not None]


def shown_goal(sums: list[CellSummary]) -> str:
    """The one goal a per-goal figure (and the text beside it) shows: dodging when run."""
    goals = [s.cell.goal for s in sums]
    return "dodging" if "dodging" in goals or not goals else goals[0]


def eps_curve(sums: list[CellSummary], model: str, attack: str, norm: str, goal: str,
              surface: str = "probe") -> list[CellSummary]:
    """The cells of one (model, attack, norm, goal, surface) series, by increasing eps."""
    sel = [s for s in whitebox(sums) if s.cell.model == model and s.cell.attack == attack
           and s.cell.norm == norm and s.cell.goal == goal and s.cell.surface == surface]
    return sorted(sel, key=lambda s: s.cell.eps or 0.0)


def series_keys(sums: list[CellSummary]) -> list[tuple[str, str, str, str, str]]:
    """Distinct (model, attack, norm, goal, surface) series among the white-box cells."""
    seen: list[tuple[str, str, str, str, str]] = []
    for s in whitebox(sums):
        key = (s.cell.model, s.cell.attack, s.cell.norm, s.cell.goal, s.cell.surface)
        if key not in seen:
            seen.append(key)
    return seen


def falling_steps(sums: list[CellSummary]) -> list[tuple[CellSummary, CellSummary]]:
    """Neighbouring cells of a series where the larger eps fooled fewer of the same items
    than the smaller one: a stronger attack reporting a weaker result, which the report must
    say (runs sweep by default, so this comes from `sweep: false` or from gallery cells)."""
    out = []
    for key in series_keys(sums):
        curve = eps_curve(sums, *key)
        for small, large in itertools.pairwise(curve):
            if (small.n == large.n and small.n_attempted == large.n_attempted
                    and large.n_success < small.n_success):
                out.append((small, large))
    return out


def multi_eps_series(sums: list[CellSummary]) -> int:
    """How many series have two or more budgets (what falling_steps can check)."""
    return sum(1 for key in series_keys(sums) if len(eps_curve(sums, *key)) > 1)


def half_clean_eps(curve: list[CellSummary]) -> CellSummary | None:
    """First cell of a curve whose robust accuracy is at most half its clean accuracy."""
    for s in curve:
        if s.robust_acc is not None and s.clean_acc and s.robust_acc <= s.clean_acc / 2:
            return s
    return None


@dataclass(frozen=True)
class TransferMatrix:
    """Success rate of images crafted on a surrogate (rows) against a target (columns)."""

    base_attack: str
    norm: str
    eps: float | None
    goal: str
    models: list[str]
    rate: dict[tuple[str, str], CellSummary]  # (surrogate, target) -> summary; diag = white-box

    @property
    def n_transfer(self) -> int:
        return sum(1 for (a, b) in self.rate if a != b)


def transfer_matrices(run: RunData, sums: list[CellSummary]) -> list[TransferMatrix]:
    """One matrix per (base attack, norm, eps, goal) that has transfer cells.

    The diagonal holds the white-box cell of the same attack and budget when it exists, so the
    drop from white-box to transfer success can be read off one picture.
    """
    groups: dict[tuple[str, str, float | None, str], dict[tuple[str, str], CellSummary]] = {}
    for s in sums:
        c = s.cell
        if c.is_transfer and c.surrogate is not None and c.surface == "probe":
            key = (c.base_attack, c.norm, c.eps, c.goal)
            groups.setdefault(key, {})[(c.surrogate, c.model)] = s
    out = []
    for (attack, norm, eps, goal), rate in groups.items():
        models = [m for m in run.model_names if any(m in pair for pair in rate)]
        for m in models:
            for s in whitebox(sums):
                c = s.cell
                if (c.model == m and c.attack == attack and c.norm == norm and c.goal == goal
                        and c.surface == "probe" and c.eps is not None and eps is not None
                        and math.isclose(c.eps, eps, rel_tol=1e-6)):
                    rate[(m, m)] = s
        out.append(TransferMatrix(attack, norm, eps, goal, models, rate))
    return sorted(out, key=lambda t: (t.goal, t.base_attack, t.norm, t.eps or 0.0))


def mineps_summaries(sums: list[CellSummary]) -> list[CellSummary]:
    return [s for s in sums if s.cell.is_mineps]


def other_summaries(sums: list[CellSummary]) -> list[CellSummary]:
    """Cells that are neither budgeted white-box, transfer nor mineps (C&W, DeepFool, ...)."""
    return [s for s in sums if not s.cell.is_transfer and not s.cell.is_mineps
            and s.cell.eps is None]


def same_budget_pairs(sums: list[CellSummary], a: str, b: str
                      ) -> list[tuple[CellSummary, CellSummary]]:
    """White-box cells of models a and b with equal attack, norm, eps, goal and surface."""
    index = {(s.cell.attack, s.cell.norm, round((s.cell.eps or 0) * 255, 6), s.cell.goal,
              s.cell.surface): s for s in whitebox(sums) if s.cell.model == b}
    pairs = []
    for s in whitebox(sums):
        if s.cell.model != a:
            continue
        key = (s.cell.attack, s.cell.norm, round((s.cell.eps or 0) * 255, 6), s.cell.goal,
               s.cell.surface)
        if key in index:
            pairs.append((s, index[key]))
    return pairs
