"""Plain-text summary tables of a run directory (what `advface results` prints).

Every identification number is printed beside its random baseline, and every success rate with
its Wilson 95% interval, so no number is read without its scale.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from advface.errors import DataError
from advface.experiments.store import ResultsStore


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (readable in a terminal, pastes into notes and issues)."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells]
    return "\n".join([line, sep, *body])


_FIX = "restore the file (advface writes it atomically: it was damaged afterwards)"


def _json(path: Path) -> Any:
    """A run file's JSON; a damaged one is an error naming it, not a traceback."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read this run file ({err})", path=path, fix=_FIX) from None


@contextmanager
def _names(path: Path) -> Iterator[None]:
    """A run file lacking a value the table needs: an error naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"this run file lacks or garbles {err}", path=path, fix=_FIX) from None


def clean_table(run_dir: Path) -> str:
    rows = []
    for path in sorted((run_dir / "clean").glob("*.json")):
        c = _json(path)
        with _names(path):
            rk, rr = c["rank_k"], c["random_rank_k"]
            cl, rc = c["classification"], c["random_classification"]
            rows.append([path.stem, c["n_probes"], c["n_identities"],
                         f"{rk['1']:.3f} ({rr['1']:.3f})", f"{rk['5']:.3f} ({rr['5']:.3f})",
                         f"{rk['10']:.3f} ({rr['10']:.3f})", f"{rk['20']:.3f} ({rr['20']:.3f})",
                         f"{cl['macro_precision']:.3f} ({rc['macro_precision']:.3f})",
                         f"{cl['macro_recall']:.3f} ({rc['macro_recall']:.3f})",
                         f"{cl['weighted_precision']:.3f} ({rc['weighted_precision']:.3f})",
                         f"{cl['weighted_recall']:.3f} ({rc['weighted_recall']:.3f})"])
    if not rows:
        return "(no clean evaluation yet)"
    return table(["model", "probes", "ids", "rank-1 (rand)", "rank-5", "rank-10", "rank-20",
                  "macro P", "macro R", "weighted P", "weighted R"], rows)


def verification_table(run_dir: Path) -> str:
    rows = []
    for path in sorted((run_dir / "verification").glob("*.json")):
        v = _json(path)
        with _names(path):
            tar = v.get("tar_at_far", {})
            rows.append([path.stem, f"{v['mean_accuracy']:.4f} ± {v['std_accuracy']:.4f}",
                         v.get("auc"), v.get("eer"), tar.get("0.001"), tar.get("0.01"), 0.5])
    if not rows:
        return "(no verification results)"
    return table(["model", "10-fold acc", "AUC", "EER", "TAR@FAR1e-3", "TAR@FAR1e-2",
                  "random acc"], rows)


def attack_rows(store: ResultsStore, n_ids: int | None) -> list[list[Any]]:
    rows = []
    order = sorted(store.summary(), key=lambda s: (s["model"], s["surface"], s["attack"],
                                                   s["goal"], s["norm"] or "",
                                                   -1.0 if s["eps"] is None else s["eps"]))
    for s in order:
        eps = s["eps"]
        sr = s["success_rate"]
        ci = (f"{sr:.3f} [{s['success_ci_low']:.2f},{s['success_ci_high']:.2f}]"
              if sr is not None else "-")
        rows.append([s["model"], s["attack"], s["goal"], s["surface"], s["norm"],
                     "-" if eps is None else f"{eps * 255:g}", s["n"], s["n_attempted"],
                     s["status"], s["clean_accuracy"], s["robust_accuracy"],
                     None if not n_ids else 1.0 / n_ids, ci, s.get("median_linf"),
                     s.get("median_l2"), s.get("mean_ssim"), s.get("median_psnr")])
    return rows


def _identity_count(info: dict[str, Any], path: Path) -> int | None:
    """Number of identities from run.json, for the random baseline 1/C; a garbled list would
    give a wrong baseline silently (a string's length is not a class count)."""
    names = info.get("identity_names")
    if names is None:
        return None
    if not isinstance(names, list):
        raise DataError(f"run.json identity_names is a {type(names).__name__}, not a list of "
                        "names", path=path, fix=_FIX)
    return len(names) or None


def _split_stats(info: dict[str, Any], path: Path) -> dict[str, Any]:
    """run.json split_stats (name -> count); anything but a mapping is a damaged file."""
    stats = info.get("split_stats")
    if stats is None:
        return {}
    if not isinstance(stats, dict):
        raise DataError(f"run.json split_stats is a {type(stats).__name__}, not a mapping",
                        path=path, fix=_FIX)
    return stats


def format_summary(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    info = _json(info_path) if info_path.is_file() else {}
    if not isinstance(info, dict):
        raise DataError("run.json is not a JSON object", path=info_path, fix=_FIX)
    n_ids = _identity_count(info, info_path)
    parts = [f"# run {run_dir} (status: {info.get('status', '?')}, "
             f"wall {info.get('wall_seconds', '?')} s)"]
    stats = _split_stats(info, info_path)
    if stats:
        parts.append("split: " + ", ".join(f"{k}={v}" for k, v in stats.items()
                                           if not isinstance(v, dict)))
    parts += ["", "## Clean closed-set identification (random baseline in brackets)",
              clean_table(run_dir), "", "## LFW pairs verification", verification_table(run_dir)]
    db = run_dir / "results.sqlite"
    if db.is_file():
        with ResultsStore(db, read_only=True) as store:
            rows = attack_rows(store, n_ids)
        parts += ["", "## Attack cells (norms in 8-bit units; robust acc beside random 1/C)",
                  table(["model", "attack", "goal", "surface", "norm", "eps", "n",
                         "attempted", "status", "clean acc", "robust acc", "random",
                         "success [95% CI]",
                         "med Linf", "med L2", "mean SSIM", "med PSNR"], rows)
                  if rows else "(no attack cells)"]
    return "\n".join(parts)
