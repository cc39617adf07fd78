"""The report's prose, built from measured numbers only.

Each section is a list of blocks (paragraphs, figure and table references). A sentence is
written only when the data it states are present, comparisons are phrased with both numbers,
and every identification rate carries its random-guess baseline. Formatting goes through
`tables.pct` so that a test can recompute a number from the store and find it in the text.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

from advface.report import stats as S
from advface.report.figures import expects_training, impersonation_choice
from advface.report.load import GOALS, RunData, fmt_eps, split_subsets
from advface.report.stats import CellSummary
from advface.report.tables import num, pct

# name -> (display name, access, what it does). Only mechanics, no claims about results.
ATTACKS: dict[str, tuple[str, str, str]] = {
    "fgsm": ("FGSM", "white-box", "one step of size ε along the sign of the loss gradient"),
    "bim": ("BIM", "white-box", "repeated small gradient-sign steps, clipped to the ε-ball"),
    "pgd": ("PGD", "white-box",
            "projected gradient descent: repeated gradient steps projected back onto the ε-ball"),
    "mifgsm": ("MI-FGSM", "white-box", "iterated gradient-sign steps with a momentum term"),
    "mi-fgsm": ("MI-FGSM", "white-box", "iterated gradient-sign steps with a momentum term"),
    "mi_fgsm": ("MI-FGSM", "white-box", "iterated gradient-sign steps with a momentum term"),
    "cw": ("C&W", "white-box",
           "Carlini-Wagner: minimises the L2 size of the perturbation under a margin loss"),
    "deepfool": ("DeepFool", "white-box",
                 "steps to the nearest linearised decision boundary (minimal perturbation)"),
    "square": ("Square", "black-box",
               "random search over square patches using only the model's scores (queries)"),
    "transfer": ("transfer", "black-box",
                 "images crafted on a surrogate model are shown unchanged to another model"),
    "universal": ("universal", "white-box", "one perturbation shared by all probes"),
    "noise": ("random noise", "baseline",
              "random sign noise of size ε, using no information about the model"),
    "gallery_poisoning": ("gallery poisoning", "white-box",
                          "perturbs enrolled gallery images instead of the probes"),
}


def attack_name(attack: str) -> str:
    base = attack[: -len("-mineps")] if attack.endswith("-mineps") else attack
    name = ATTACKS.get(base.lower(), (base, "", ""))[0]
    return f"{name} (minimal-ε search)" if attack.endswith("-mineps") else name


@dataclass
class Block:
    """A paragraph (`p`), a bullet list (`list`), a figure, a table or an image reference."""

    kind: str
    text: str = ""
    name: str = ""
    items: list[str] = field(default_factory=list)


@dataclass
class Section:
    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def p(self, text: str) -> None:
        if text:
            self.blocks.append(Block("p", text=text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(Block("list", items=items))

    def figure(self, name: str) -> None:
        self.blocks.append(Block("figure", name=name))

    def table(self, name: str) -> None:
        self.blocks.append(Block("table", name=name))

    def image(self, name: str) -> None:
        """A ready-made PNG of the run directory (`name` relative to it), shown as a figure."""
        self.blocks.append(Block("image", name=name))

    def paragraphs(self) -> list[str]:
        """All prose of the section, list items included (for tests and plain-text export)."""
        out = []
        for b in self.blocks:
            out.extend([b.text] if b.kind == "p" else b.items if b.kind == "list" else [])
        return out


# ---- small phrase helpers -------------------------------------------------------------------
def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _rand(run: RunData, model: str | None = None, k: int = 1) -> str:
    value = S.random_rank(run, model, k) if model else S.random_hit(run)
    return f"random {pct(value)}"


def clean_phrase(run: RunData, model: str, k: int = 1) -> str | None:
    """`rank-1 96.2% (random 0.1%)` from clean/<model>.json, or None when absent."""
    value = S.clean_rank(run, model, k)
    if value is None:
        return None
    return f"rank-{k} {pct(value)} ({_rand(run, model, k)})"


def _main_norm(sums: list[CellSummary]) -> str | None:
    norms = Counter(s.cell.norm for s in S.whitebox(sums))
    if not norms:
        return None
    return "linf" if "linf" in norms else norms.most_common(1)[0][0]


def _norm_name(norm: str) -> str:
    return {"linf": "L∞", "l2": "L2", "l0": "L0"}.get(norm, norm)


def _ci(s: CellSummary) -> str:
    ci = s.asr_ci
    return f" [95% CI {pct(ci[0], 0)}–{pct(ci[1], 0)}]" if ci else ""


def _over(s: CellSummary) -> str:
    """The items a success rate is over (stats.CellSummary.n_attempted), said in words."""
    k, n, model = s.n_attempted, s.n, s.cell.model
    if s.cell.goal == "impersonation":
        return (f"{n} probes" if k == n else
                f"the {k} probes {model} did not already name as the target (of {n})")
    return f"the {k} probes {model} identified correctly" + (f" (of {n})" if k != n else "")


def headline(run: RunData, sums: list[CellSummary], model: str
             ) -> tuple[CellSummary, bool] | None:
    """The smallest budget at which the strongest dodging attack halves a model's rank-1.

    Returns (summary of that cell, True), or the strongest attack at the largest budget with
    False when no budget halves it. Only probe-surface white-box cells of the main norm count.
    """
    norm = _main_norm(sums)
    cells = [s for s in S.whitebox(sums) if s.cell.model == model and s.cell.norm == norm
             and s.cell.goal == "dodging" and s.cell.surface == "probe"
             and s.robust_acc is not None]
    if not cells:
        return None
    by_eps: dict[float, list[CellSummary]] = {}
    for s in cells:
        by_eps.setdefault(round(s.cell.eps255 or 0.0, 6), []).append(s)
    for eps in sorted(by_eps):
        best = min(by_eps[eps], key=lambda s: (s.robust_acc, s.cell.attack))
        if best.clean_acc and best.robust_acc is not None \
                and best.robust_acc <= best.clean_acc / 2:
            return best, True
    best = min(by_eps[max(by_eps)], key=lambda s: (s.robust_acc, s.cell.attack))
    return best, False


def headline_sentence(run: RunData, s: CellSummary, halved: bool) -> str:
    eps = fmt_eps(s.cell.eps255 or 0)
    name = attack_name(s.cell.attack)
    base = (f"from {pct(s.clean_acc)} to {pct(s.robust_acc)} on the {s.n} attacked probes "
            f"({_rand(run)})")
    if halved:
        return f"{name} at {eps} drops rank-1 of {s.cell.model} {base}"
    return (f"even at {eps}, the strongest attack ({name}) only lowers rank-1 of "
            f"{s.cell.model} {base}")


def _param_text(key: str, value: object) -> str:
    """Budget-like parameters in 8-bit units, as budgets are quoted everywhere else."""
    budget_like = key in {"step_size", "alpha", "eps_step"} or key.startswith("eps")
    if budget_like and isinstance(value, float) and 0 < value < 1:
        return f"{value * 255:.3g}/255"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _numeric_key(text: str) -> tuple[float, str]:
    """Sort `0.5/255` before `2/255` before `10/255` (by value, then text)."""
    try:
        return float(text.split("/")[0]), text
    except ValueError:
        return math.inf, text


def _transfer_sentences(run: RunData, sums: list[CellSummary],
                        headline_only: bool = False) -> list[str]:
    """One sentence per transfer cell; `headline_only`: only the largest budget of the first
    goal (dodging when run), so an abstract states the setting without listing every cell."""
    return [text for _, text in _transfer_cells(run, sums, headline_only)]


def _transfer_cells(run: RunData, sums: list[CellSummary], headline_only: bool = False
                    ) -> list[tuple[CellSummary, str]]:
    """Each transfer cell's summary with its sentence (see :func:`_transfer_sentences`)."""
    mats = S.transfer_matrices(run, sums)
    if headline_only and mats:
        goal = "dodging" if any(m.goal == "dodging" for m in mats) else mats[0].goal
        mats = [m for m in mats if m.goal == goal]
        top = max((m.eps or 0.0) for m in mats)
        mats = [m for m in mats if (m.eps or 0.0) == top]
    out = []
    for m in mats:
        eps = fmt_eps(m.eps * 255) if m.eps is not None else "no budget"
        for (a, b), s in m.rate.items():
            if a == b:
                continue
            wb = m.rate.get((b, b))
            ref = (f"; white-box {attack_name(m.base_attack)} on {b} at the same budget: "
                   f"{pct(wb.asr)}") if wb else ""
            out.append((s, f"{attack_name(m.base_attack)} images crafted at {eps} on {a} fool "
                           f"{b} ({m.goal}) on {pct(s.asr)} of {_over(s)}{_ci(s)}, leaving it a "
                           f"rank-1 of {pct(s.robust_acc)} ({_rand(run)}){ref}"))
    return out


def _strongest_transfer(run: RunData, sums: list[CellSummary]) -> str | None:
    """The transfer sentence of the cell with the highest success rate (the first of equals)."""
    rated = [(s.asr, text) for s, text in _transfer_cells(run, sums) if s.asr is not None]
    return max(rated, key=lambda item: item[0])[1] if rated else None


def _cells_count(run: RunData) -> str:
    done = sum(1 for c in run.cells if c.status == "done" and run.rows.get(c.cell_id))
    return f"{done} attack cells with results"


# ---- sections --------------------------------------------------------------------------------
def section_abstract(run: RunData, sums: list[CellSummary], undrawn: list[str]) -> Section:
    sec = Section("abstract", "Abstract")
    n = run.n_identities
    names = [m for m in run.model_names]
    first = (f"We measure how far adversarial images degrade closed-set face identification "
             f"on {run.data_name} for {len(names)} model{'s' if len(names) != 1 else ''} "
             f"({_join(names)})")
    if n:
        first += f" over {n} identities"
    sec.p(first + ".")
    clean = [f"{m} {c}" for m in names if (c := clean_phrase(run, m))]
    if clean:
        sec.p(f"On clean probes: {_join(clean)}.")
    heads = []
    for m in names:
        h = headline(run, sums, m)
        if h:
            heads.append(headline_sentence(run, *h))
    if heads:
        main = _main_norm(sums)
        norm = _norm_name(main or "linf")
        k = sum(1 for s in S.whitebox(sums) if s.cell.goal == "dodging"
                and s.cell.surface == "probe" and s.cell.norm == main
                and s.cell.status == "done")  # counted as _cells_count counts
        sec.p(f"Under dodging attacks on probes with an {norm} budget ({k} of the "
              f"{_cells_count(run)}): " + "; ".join(heads) + ".")
    trans = _transfer_sentences(run, sums, headline_only=True)
    if trans:
        sec.p("In the black-box transfer setting, " + "; ".join(trans) + ".")
    comp = _robustness_comparisons(run, sums)
    if comp:
        sec.p(comp[0])
    n_missing = missing_count(run, undrawn)
    if n_missing:
        sec.p(f"{n_missing} expected result{'s are' if n_missing != 1 else ' is'} missing; see "
              "the section Missing results.")
    return sec


def section_introduction(run: RunData, sums: list[CellSummary]) -> Section:
    sec = Section("introduction", "Introduction")
    sec.p("Closed-set identification answers “who, among the enrolled identities, is this?”: "
          "a probe image is compared with a gallery of enrolled images (or scored by a "
          "classifier head) and the best-scoring identity is returned. Rank-1 accuracy is the "
          "fraction of probes whose true identity comes first; rank-k counts a probe as "
          "identified when the true identity is among the k best.")
    sec.p("An adversary adds a small perturbation to an image. White-box attacks use the "
          "model's gradients; black-box attacks see only its outputs (score queries) or "
          "craft the image on a surrogate model and transfer it. Dodging succeeds when the "
          "probe is no longer identified as its true identity; impersonation succeeds when it "
          "is identified as a chosen target identity. The probe surface perturbs the query "
          "image; the gallery surface perturbs enrolled images.")
    used = sorted({"transfer" if s.cell.is_transfer else s.cell.kind.lower() for s in sums})
    kinds: dict[str, list[str]] = {}
    for a in used:
        access = ATTACKS.get(a, (a, "other", ""))[1] or "other"
        kinds.setdefault(access, []).append(attack_name(a))
    parts = [f"{k} attacks ({', '.join(v)})" for k, v in
             sorted(kinds.items(), key=lambda kv: kv[0] != "white-box")]
    goals = sorted({s.cell.goal for s in sums})
    surfaces = sorted({s.cell.surface for s in sums})
    if parts:
        sec.p(f"This run contains {_join(parts)}, for the goal"
              f"{'s' if len(goals) != 1 else ''} {_join(goals)} on the "
              f"{_join(surfaces)} surface{'s' if len(surfaces) != 1 else ''}.")
    return sec


def section_data(run: RunData, sums: list[CellSummary]) -> Section:
    sec = Section("data", "Data and protocol")
    n = run.n_identities
    subsets = split_subsets(run.split)
    data = run.run.get("data")
    if isinstance(data, dict) and data.get("image_root"):
        which = f"LFW ({data.get('name')})" if run.data_name == "LFW" else run.data_name
        sec.p(f"Images: {which}, read from {data['image_root']} (run.json data).")
    if run.config.get("verification", True) is False:
        sec.p("LFW pair verification was switched off in config.yaml (verification: false).")
    elif not run.verification and run.data_name != "LFW":
        sec.p(f"Pair verification needs LFW's pairs protocol (pairs.txt), which "
              f"{run.data_name} does not have, so it was not measured.")
    if n:
        sec.p(f"The closed set has {n} identities (run.json identity_names); a uniformly "
              f"random guess is right with probability 1/{n} = {pct(1 / n)}, the baseline "
              "printed beside every identification rate below.")
    if subsets:
        items = []
        for name, keys in subsets.items():
            per = Counter(k.split("/", 1)[0] for k in keys)
            counts = sorted(per.values())
            spread = f"{counts[0]}" if counts[0] == counts[-1] else \
                f"{counts[0]}–{counts[-1]}"
            items.append(f"{name}: {len(keys)} images of {len(per)} identities "
                         f"({spread} per identity)")
        sec.p("The split (split.json) defines:")
        sec.bullets(items)
        sec.table("split")
    for m in run.model_names:
        c = run.clean.get(m)
        if c:
            sec.p(f"Clean identification of {m} was measured on {c.get('n_probes', '?')} "
                  f"probes against {c.get('n_gallery', '?')} gallery images.")
            break
    if sums:
        ns = sorted({s.n for s in sums})
        rng = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        sec.p(f"Each attack cell attacks {rng} items. An attack's success is judged on the "
              "adversarial image as saved (8-bit PNG, re-read), so quantisation cannot "
              "inflate it.")
    facts = []
    r = run.run
    for key, label in (("seed", "seed"), ("split_hash", "split hash"),
                       ("config_hash", "config hash"), ("advface_version", "advface"),
                       ("torch_version", "torch"), ("started_at", "started"),
                       ("finished_at", "finished")):
        if r.get(key) is not None:
            facts.append(f"{label} {r[key]}")
    if isinstance(r.get("wall_seconds"), int | float):
        facts.append(f"wall time {r['wall_seconds'] / 60:.1f} min")
    mach = r.get("machine")
    if isinstance(mach, dict):
        facts.append("machine " + ", ".join(f"{k} {v}" for k, v in mach.items()
                                            if v is not None))
    if facts:
        sec.p(f"Run status: {run.status}; " + "; ".join(facts) + ".")
    return sec


def _training_sentence(model: str, hist: list[dict]) -> str | None:
    last = hist[-1]
    parts = [f"{model} was trained here for {len(hist)} epochs"]
    if last.get("train_acc") is not None and last.get("val_acc") is not None:
        gap = last["train_acc"] - last["val_acc"]
        parts.append(f"its final training accuracy is {pct(last['train_acc'])} and validation "
                     f"accuracy {pct(last['val_acc'])}, a gap of {100 * gap:.1f} points")
    vals = [(e.get("val_acc"), e.get("epoch", i + 1)) for i, e in enumerate(hist)
            if e.get("val_acc") is not None]
    if vals:
        best, ep = max(vals, key=lambda v: v[0])
        parts.append(f"the best validation accuracy, {pct(best)}, came at epoch {ep}")
    if last.get("loss") is not None and hist[0].get("loss") is not None:
        parts.append(f"the training loss fell from {num(hist[0]['loss'], 3)} to "
                     f"{num(last['loss'], 3)}")
    return "; ".join(parts) + "."


def _metric_text(metric: object) -> str:
    if metric == "euclidean":
        return "Euclidean distance"
    if metric == "cosine":
        return "cosine similarity"
    return str(metric or "an unstated metric")


def section_classifiers(run: RunData, sums: list[CellSummary]) -> Section:
    sec = Section("classifiers", "The classifiers C")
    for m in run.model_names:
        info = run.models.get(m)
        if not info:
            continue
        n_params = info.get("n_params")
        desc = info.get("description") or ""
        sec.p(f"{m} ({info.get('kind', '?')}{': ' + desc if desc else ''}) takes "
              f"{info.get('input_size', '?')}-pixel images to {info.get('embedding_dim', '?')}"
              f"-dimensional embeddings compared by {_metric_text(info.get('metric'))}; its "
              f"decision is {info.get('decision', '?')}"
              + (f"; {n_params:,} parameters." if isinstance(n_params, int) else "."))
    sec.table("models")
    for m in run.model_names:
        hist = (run.models.get(m) or {}).get("training_history")
        if isinstance(hist, list) and hist:
            sec.p(_training_sentence(m, hist) or "")
        elif (run.models.get(m) or {}).get("kind") == "adhoc":
            sec.p(f"{m} is an ad-hoc model, but its model file records no training history.")
    if expects_training(run):
        sec.figure("training_curves")
    models = [m for m in run.model_names if m in run.clean]
    if models:
        for k in S.RANKS:
            parts = [f"{m} {pct(S.clean_rank(run, m, k))} ({_rand(run, m, k)})" for m in models
                     if S.clean_rank(run, m, k) is not None]
            if parts and k in (1, 5):
                sec.p(f"Clean rank-{k}: {_join(parts)}.")
        for a, b in combinations(models, 2):
            ra, rb = S.clean_rank(run, a, 1), S.clean_rank(run, b, 1)
            if ra is not None and rb is not None and ra != rb:
                hi, lo = (a, b) if ra > rb else (b, a)
                sec.p(f"{hi}'s clean rank-1 is {100 * abs(ra - rb):.1f} points above {lo}'s "
                      f"({pct(max(ra, rb))} vs {pct(min(ra, rb))}; {_rand(run, a)}).")
        for m in models:
            cl = run.clean[m].get("classification") or {}
            rcl = run.clean[m].get("random_classification") or {}
            if cl.get("macro_precision") is not None:
                sec.p(f"{m}: macro precision {pct(cl.get('macro_precision'))} (random "
                      f"{pct(rcl.get('macro_precision'))}), macro recall "
                      f"{pct(cl.get('macro_recall'))} (random {pct(rcl.get('macro_recall'))}), "
                      f"weighted precision {pct(cl.get('weighted_precision'))} (random "
                      f"{pct(rcl.get('weighted_precision'))}), weighted recall "
                      f"{pct(cl.get('weighted_recall'))} (random "
                      f"{pct(rcl.get('weighted_recall'))}).")
        sec.table("classifiers")
        sec.figure("cmc")
    ver = [m for m in run.model_names if m in run.verification]
    if ver:
        parts = []
        for m in ver:
            v = run.verification[m]
            parts.append(f"{m} {pct(v.get('mean_accuracy'))} ± {pct(v.get('std_accuracy'))} "
                         f"(AUC {num(v.get('auc'))}, EER {pct(v.get('eer'))})")
        sec.p("On the LFW pairs protocol (10-fold verification, random 50.0%), accuracy is "
              + _join(parts) + ".")
        sec.table("verification")
        sec.figure("verification_roc")
    return sec


def section_adversary(run: RunData, sums: list[CellSummary]) -> Section:
    sec = Section("adversary", "The adversary A")
    items = []
    by_attack: dict[str, list[CellSummary]] = {}
    for s in sums:
        by_attack.setdefault(s.cell.attack, []).append(s)
    for attack, group in by_attack.items():
        info = ATTACKS.get("transfer" if group[0].cell.is_transfer
                           else group[0].cell.kind.lower())
        eps = sorted({s.cell.eps255 for s in group if s.cell.eps255 is not None})
        grid = group[0].cell.params.get("grid_8bit")
        norms = sorted({_norm_name(s.cell.norm) for s in group})
        params: dict[str, set[str]] = {}
        for s in group:
            for k, v in s.cell.params.items():
                if k not in {"surrogate", "base_attack", "source_cell", "attack", "grid_8bit",
                             "sweep"}:
                    params.setdefault(k, set()).add(_param_text(k, v))
        text = f"{attack_name(attack)}"
        if group[0].cell.is_transfer:
            text += f" of {attack_name(group[0].cell.base_attack)} images"
        if info:
            text += f" ({info[1]}): {info[2]}"
        text += f"; norm {_join(norms)}"
        if eps:
            text += f"; ε ∈ {{{', '.join(f'{e:g}' for e in eps)}}}/255"
        elif isinstance(grid, list) and grid:
            text += f"; ε searched over {{{', '.join(f'{g:g}' for g in grid)}}}/255"
        if any(s.cell.params.get("sweep") for s in group):
            text += ("; swept upwards over ε (a probe fooled at a smaller ε keeps that image, "
                     "the others are attacked again starting from it)")
        if params:
            text += "; " + ", ".join(
                f"{k} = {next(iter(v))}" if len(v) == 1 else
                f"{k} ∈ {{{', '.join(sorted(v, key=_numeric_key))}}}" for k, v in params.items())
        items.append(text)
    if items:
        sec.p("Attacks run (hyper-parameters from the store's params_json):")
        sec.bullets(items)
    sec.p("An L∞ budget ε bounds the change of every pixel value, which matches the "
          "intuition that no single pixel may visibly change; an L2 budget bounds the total "
          "energy of the perturbation and allows a few larger, localised changes. Budgets "
          "are quoted in 8-bit units (ε·255, e.g. 2/255 is two grey levels).")
    sec.p("SSIM compares local structure (1 = identical) and PSNR the mean squared error in "
          "decibels (infinite for identical images). An L∞ budget ε fixes a floor for PSNR, "
          "20·log10(255/ε) dB, reached only when every value moves by the full ε.")
    norm = _main_norm(sums)
    vis = [s for s in S.whitebox(sums) if s.cell.norm == norm and s.cell.surface == "probe"
           and s.psnr is not None and s.ssim is not None]
    # The cells of the figure beside this text (figures.fig_visibility): one goal.
    goal = S.shown_goal(vis)
    vis = [s for s in vis if s.cell.goal == goal]
    if vis and norm == "linf":
        lines = []
        for eps in sorted({s.cell.eps255 for s in vis if s.cell.eps255}):
            at = [s for s in vis if s.cell.eps255 == eps]
            floor = 20 * math.log10(255 / eps)
            lo_s, hi_s = min(s.ssim for s in at), max(s.ssim for s in at)
            lo_p, hi_p = min(s.psnr for s in at), max(s.psnr for s in at)
            srange = num(lo_s) if lo_s == hi_s else f"{num(lo_s)}–{num(hi_s)}"
            prange = num(lo_p, 1) if lo_p == hi_p else f"{num(lo_p, 1)}–{num(hi_p, 1)}"
            lines.append(f"ε = {fmt_eps(eps)}: mean SSIM {srange}, mean PSNR {prange} dB "
                         f"(floor {num(floor, 1)} dB)")
        sec.p(f"Measured visibility of the saved adversarial images ({goal}), over models "
              "and attacks:")
        sec.bullets(lines)
        worst = min(vis, key=lambda s: s.ssim or 1.0)
        sec.p(f"The most visible perturbation is {attack_name(worst.cell.attack)} at "
              f"{fmt_eps(worst.cell.eps255 or 0)} on {worst.cell.model} ({worst.cell.goal}): "
              f"mean SSIM {num(worst.ssim)}, PSNR {num(worst.psnr, 1)} dB.")
        at_floor = [s for s in vis if s.cell.eps255 and s.psnr is not None
                    and s.psnr - 20 * math.log10(255 / s.cell.eps255) < 0.5]
        if at_floor:
            names = sorted({attack_name(s.cell.attack) for s in at_floor})
            sec.p(f"{_join(names)} stay{'s' if len(names) == 1 else ''} within 0.5 dB of the "
                  f"PSNR floor in {len(at_floor)} cell{'s' if len(at_floor) != 1 else ''}: "
                  "it spends the whole budget on nearly every value.")
        sec.figure(f"visibility_{norm}")
    sec.figure("adversarial_grid")
    return sec


def _series_sentence(run: RunData, curve: list[CellSummary], goal: str) -> str:
    c0 = curve[0]
    name = attack_name(c0.cell.attack)
    if goal == "dodging":
        steps = [f"{pct(s.robust_acc)} at {fmt_eps(s.cell.eps255 or 0)}" for s in curve]
        last = curve[-1]
        dropped = any(s.robust_acc is not None and c0.clean_acc is not None
                      and s.robust_acc < c0.clean_acc for s in curve)
        verb = "lowers rank-1" if dropped else "leaves rank-1"
        return (f"{name} {verb} of {c0.cell.model} from {pct(c0.clean_acc)} (clean, same "
                f"{c0.n} probes) to {_join(steps)} ({_rand(run)}); at "
                f"{fmt_eps(last.cell.eps255 or 0)} it fools {pct(last.asr)} of "
                f"{_over(last)}{_ci(last)}.")
    last = curve[-1]
    steps = [f"{pct(s.asr)} at {fmt_eps(s.cell.eps255 or 0)}" + (_ci(s) if s is last else "")
             for s in curve]
    return (f"{name} makes {c0.cell.model} name the chosen target for {_join(steps)} of "
            f"{_over(c0)} (a random guess names a given identity {pct(S.random_hit(run))} "
            f"of the time); at {fmt_eps(last.cell.eps255 or 0)} the true identity stays at "
            f"rank 1 for {pct(last.robust_acc)} ({_rand(run)}).")


def _attack_ranking(run: RunData, sums: list[CellSummary], model: str, goal: str,
                    norm: str) -> str | None:
    keys = [k for k in S.series_keys(sums) if k[0] == model and k[3] == goal and k[2] == norm
            and k[4] == "probe"]
    if len(keys) < 2:
        return None
    curves = {k[1]: {round(s.cell.eps255 or 0, 6): s for s in S.eps_curve(sums, *k)}
              for k in keys}
    shared = set.intersection(*(set(c) for c in curves.values()))
    if not shared:
        return None
    metric = "robust_acc" if goal == "dodging" else "asr"
    means = {a: statistics.fmean(getattr(c[e], metric) or 0.0 for e in shared)
             for a, c in curves.items()}
    order = sorted(means, key=lambda a: means[a], reverse=(goal != "dodging"))
    what = "robust rank-1 is lowest" if goal == "dodging" else "success rate is highest"
    eps = ", ".join(f"{e:g}" for e in sorted(shared))
    ranked = f"{attack_name(order[0])} ({pct(means[order[0]])}), followed by " + _join(
        [f"{attack_name(a)} ({pct(means[a])})" for a in order[1:]])
    return (f"On {model}, averaged over the budgets every {goal} attack was run at "
            f"({eps}/255), {what} under {ranked}.")


def _robustness_comparisons(run: RunData, sums: list[CellSummary]) -> list[str]:
    out = []
    models = [m for m in run.model_names if any(s.cell.model == m for s in sums)]
    for a, b in combinations(models, 2):
        pairs = S.same_budget_pairs(sums, a, b)
        # Random noise is the baseline the attacks are measured against, not an attack.
        pairs = [(x, y) for x, y in pairs if x.asr is not None and y.asr is not None
                 and x.cell.kind != "noise"]
        if not pairs:
            continue
        a_lower = sum(1 for x, y in pairs if x.asr < y.asr)
        b_lower = sum(1 for x, y in pairs if y.asr < x.asr)
        ties = len(pairs) - a_lower - b_lower
        ma = statistics.fmean(x.asr for x, _ in pairs)
        mb = statistics.fmean(y.asr for _, y in pairs)
        if a_lower > b_lower:
            verdict = f"{a} resisted more often"
        elif b_lower > a_lower:
            verdict = f"{b} resisted more often"
        else:
            verdict = "neither model resisted more often"
        out.append(f"Over the {len(pairs)} attack settings run identically on {a} and {b}, "
                   "the attack success rate (over the probes each model identified correctly, "
                   "or did not already name as the target) "
                   f"was lower on {a} in {a_lower}, lower on {b} in "
                   f"{b_lower} and equal in {ties} ({verdict}); mean success rate "
                   f"{pct(ma)} on {a} vs {pct(mb)} on {b}.")
    return out


def _monotonicity_sentence(sums: list[CellSummary]) -> str | None:
    """Whether any series reports fewer fooled items at a larger budget (checked, not
    assumed: a stronger attack must never report a weaker result unremarked)."""
    n = S.multi_eps_series(sums)
    if not n:
        return None
    falls = S.falling_steps(sums)
    if not falls:
        return (f"In each of the {n} series with more than one budget, no larger ε fooled fewer "
                "items than a smaller one (checked cell by cell).")
    items = [f"{attack_name(a.cell.attack)} on {a.cell.model} ({a.cell.goal}, "
             f"{a.cell.surface}): {a.n_success} of {a.n_attempted} at "
             f"{fmt_eps(a.cell.eps255 or 0)} but {b.n_success} at {fmt_eps(b.cell.eps255 or 0)}"
             for a, b in falls]
    return (f"A larger ε fooled fewer items than a smaller one in {len(falls)} place(s) (each "
            "ε run on its own: an attack with `sweep: false`, or gallery cells, which are not "
            "swept; an adversary with the larger budget could have used the smaller one's "
            "images): " + "; ".join(items) + ".")


def section_results(run: RunData, sums: list[CellSummary]) -> Section:
    sec = Section("results", "Results")
    norms = sorted({s.cell.norm for s in S.whitebox(sums)}, key=lambda n: (n != "linf", n))
    for norm in norms:
        for goal in [g for g in GOALS if any(s.cell.goal == g for s in S.whitebox(sums))]:
            sentences = []
            for key in S.series_keys(sums):
                if key[2] == norm and key[3] == goal and key[4] == "probe":
                    sentences.append(_series_sentence(run, S.eps_curve(sums, *key), goal))
            for m in run.model_names:
                rank = _attack_ranking(run, sums, m, goal, norm)
                if rank:
                    sentences.append(rank)
            if sentences:
                sec.p(f"{goal.capitalize()} under an {_norm_name(norm)} budget:")
                sec.bullets(sentences)
        sec.figure(f"robustness_{norm}")
    monotone = _monotonicity_sentence(sums)
    if monotone:
        sec.p(monotone)
    gallery = [s for s in S.whitebox(sums) if s.cell.surface != "probe"]
    if gallery:
        sec.p("Attacks on the gallery surface (enrolled images perturbed):")
        sec.bullets([f"{attack_name(s.cell.attack)} at {fmt_eps(s.cell.eps255 or 0)} on "
                     f"{s.cell.model} ({s.cell.goal}, {s.n} {s.cell.surface} items): success "
                     f"on {pct(s.asr)} of {_over(s)}{_ci(s)}, rank-1 from {pct(s.clean_acc)} to "
                     f"{pct(s.robust_acc)} ({_rand(run)})." for s in gallery])
    query = [s for s in S.whitebox(sums) if s.queries is not None]
    if query:
        sec.p("Query-based (black-box) cells: "
              + "; ".join(f"{attack_name(s.cell.attack)} at {fmt_eps(s.cell.eps255 or 0)} on "
                          f"{s.cell.model} ({s.cell.goal}) succeeds on {pct(s.asr)} of "
                          f"{_over(s)} with a "
                          f"median of {num(s.queries, 0)} queries" for s in query) + ".")
    sec.table("attacks")
    trans = _transfer_sentences(run, sums)
    if trans:
        sec.p("Transfer from a surrogate model (the target's gradients are never used):")
        sec.bullets([t + "." for t in trans])
        sec.table("transfer")
        sec.figure("transfer_matrix")
    mins = S.mineps_summaries(sums)
    if mins:
        items = []
        for s in mins:
            what = (f"{attack_name(s.cell.attack)} on {s.cell.model} ({s.cell.goal}, "
                    f"{_norm_name(s.cell.norm)})")
            if s.min_eps255_median is not None:
                items.append(f"{what}: {pct(s.fooled)} of {_over(s)} are fooled within "
                             f"{fmt_eps(s.cell.max_eps255 or 0)}; the median minimal ε of those is "
                             f"{fmt_eps(s.min_eps255_median)}.")
            else:
                items.append(f"{what}: none of {_over(s)} is fooled within "
                             f"{fmt_eps(s.cell.max_eps255 or 0)}.")
        sec.p("Minimal budget per probe (the smallest ε that fools it):")
        sec.bullets(items)
        sec.table("mineps")
        sec.figure("min_eps")
    other = S.other_summaries(sums)
    if other:
        sec.p("Minimum-norm attacks without a fixed budget:")
        sec.bullets([f"{attack_name(s.cell.attack)} on {s.cell.model} ({s.cell.goal}): "
                     f"success on {pct(s.asr)} of {_over(s)}{_ci(s)}, rank-1 "
                     f"{pct(s.robust_acc)} "
                     f"({_rand(run)}), mean L2 {num(s.l2, 1)} and L∞ {num(s.linf, 2)} (8-bit "
                     f"units), SSIM {num(s.ssim)}." for s in other])
        sec.table("unbounded")
    if any(s.cell.goal == "impersonation" for s in sums):
        sec.figure("impersonation_examples")
    return sec


def missing_count(run: RunData, undrawn: list[str]) -> int:
    """Everything the Missing results section lists: files, cells, images, figures."""
    return len(run.missing) + len(run.unreadable_images) + len(undrawn)


def section_discussion(run: RunData, sums: list[CellSummary], undrawn: list[str]) -> Section:
    sec = Section("discussion", "Discussion")
    for m in S.transfer_matrices(run, sums):
        for (a, b), s in m.rate.items():
            wb = m.rate.get((b, b))
            if a != b and wb is not None and wb.asr and s.asr is not None:
                sec.p(f"Transfer from {a} to {b} ({attack_name(m.base_attack)}, "
                      f"{fmt_eps((m.eps or 0) * 255)}, {m.goal}) reaches {pct(s.asr)} success, "
                      f"{s.asr / wb.asr:.2f} times the white-box rate on {b} ({pct(wb.asr)}): "
                      + ("more than half of the white-box success carries over without access "
                         "to the target's gradients." if s.asr / wb.asr > 0.5 else
                         "at most half of the white-box success carries over."))
    for text in _robustness_comparisons(run, sums):
        sec.p(text)
        sec.p("Robust rank-1 mixes clean accuracy with robustness, so the comparison above "
              "uses success rates, each over the probes the attack had to change on that model: "
              "a probe a model already got wrong is not counted as fooled. The two models' sets "
              "of such probes can differ when their clean accuracies do.")
    if sums:
        ns = [s.n for s in sums]
        n_small = min(ns)
        lo, hi = S.wilson_interval(n_small // 2, n_small) if n_small else (0.0, 1.0)
        sec.p(f"Limits. Each cell attacks between {min(ns)} and {max(ns)} items; with "
              f"{n_small} items a measured 50% success rate has a 95% interval of "
              f"{pct(lo, 0)}–{pct(hi, 0)}, so differences smaller than that are not "
              "resolved. Results hold for this closed set, these models and these attack "
              "settings; attacks stronger than the ones run here can only lower robust "
              "accuracy further, so the robust accuracies are upper bounds.")
    n = missing_count(run, undrawn)
    if n:
        sec.p(f"{n} expected result{'s are' if n != 1 else ' is'} missing (see Missing "
              "results); the statements above cover only what was measured.")
    return sec


def section_conclusion(run: RunData, sums: list[CellSummary]) -> Section:
    sec = Section("conclusion", "Conclusion")
    found = [h for m in run.model_names if (h := headline(run, sums, m))]
    heads = [headline_sentence(run, *h) for h in found]
    if heads:
        lead = ("Small perturbations are enough to change identities: "
                if any(halved for _, halved in found) else
                "No budget run here halved a model's rank-1: ")
        sec.p(lead + "; ".join(heads) + ".")
    comp = _robustness_comparisons(run, sums)
    if comp:
        sec.p(comp[0])
    strongest = _strongest_transfer(run, sums)
    if strongest:
        sec.p("Transfer between models, the strongest setting: " + strongest + ".")
    if not sec.blocks:
        sec.p("The run holds no attack results to conclude from.")
    return sec


def section_missing(run: RunData, undrawn: list[str]) -> Section:
    sec = Section("missing", "Missing results")
    n = missing_count(run, undrawn)
    if n == 0:
        sec.p("Nothing is missing: every file named in docs/run_dir.md was found, every cell "
              "is done with all its rows, and every figure was drawn.")
        return sec
    cells = sum(1 for m in run.missing if m.kind == "cell")
    files = sum(1 for m in run.missing if m.kind == "file")
    sec.p(f"{n} item{'s' if n != 1 else ''} could not be reported: {cells} cell"
          f"{'s' if cells != 1 else ''}, {files} file{'s' if files != 1 else ''}, "
          f"{len(run.unreadable_images)} unreadable image"
          f"{'s' if len(run.unreadable_images) != 1 else ''} and {len(undrawn)} figure"
          f"{'s' if len(undrawn) != 1 else ''} without data.")
    sec.table("missing")
    return sec


def build_sections(run: RunData, undrawn: list[str] | None = None) -> list[Section]:
    """All sections in report order. `undrawn`: figure names that had no data."""
    from advface.report.extras import section_defences, section_interpretability

    sums = S.summaries(run)
    undrawn = list(undrawn or [])
    return [
        section_abstract(run, sums, undrawn), section_introduction(run, sums),
        section_data(run, sums), section_classifiers(run, sums),
        section_adversary(run, sums), section_results(run, sums),
        section_interpretability(run), section_defences(run),
        section_discussion(run, sums, undrawn), section_conclusion(run, sums),
        section_missing(run, undrawn),
    ]


FIGURE_CAPTIONS: dict[str, str] = {
    "training_curves": "Training loss and accuracy per epoch (models trained in this run).",
    "cmc": "Cumulative match characteristic on clean probes; dotted: a random ranking.",
    "verification_roc": "ROC of LFW pair verification; dotted: chance.",
    "robustness_linf": "Robust rank-1 accuracy (top; ε = 0 is the clean accuracy of the same "
                       "items) and attack success rate (bottom) against the L∞ budget, one "
                       "column per goal; dotted: random guess.",
    "robustness_l2": "Robust rank-1 accuracy and attack success rate against the L2 budget.",
    "adversarial_grid": "Original, adversarial and difference ×10 (signed, mid-grey = unchanged) "
                        "at increasing budgets; titles give the predicted identity (red: not "
                        "the true one).",
    "visibility_linf": "Mean SSIM and PSNR of the saved adversarial images against ε; dashed: "
                       "the lowest PSNR the L∞ budget allows.",
    "visibility_l2": "Mean SSIM and PSNR of the saved adversarial images against the L2 budget.",
    "transfer_matrix": "Success rate of images crafted on the surrogate (rows) against the "
                       "target (columns); the diagonal is the white-box rate.",
    "min_eps": "Smallest ε that fools each probe; hatched: not fooled within the largest ε.",
    "impersonation_examples": "Successful impersonations: probe, adversarial image (predicted "
                              "identity) and an image of the target identity when the run "
                              "holds one.",
    "detector_roc": "ROC of the feature-squeezing detector: clean probes (negatives) against "
                    "adversarial probes that fooled the model (positives); dotted: chance.",
}


def figure_caption(run: RunData, name: str) -> str:
    """The caption of a figure, with data-dependent remarks (e.g. a target image missing)."""
    text = FIGURE_CAPTIONS.get(name, name.replace("_", " "))
    if name == "impersonation_examples":
        picks = impersonation_choice(run)
        lacking = sorted({run.identity_name(r.target_label) for _, r in picks
                          if not run.images_of_identity(run.identity_name(r.target_label))})
        if lacking:
            text += (" The run holds no image of " + _join(lacking)
                     + ", so only the probe and the adversarial image are shown for "
                     + ("it." if len(lacking) == 1 else "them."))
        sources = {src for _, r in picks
                   for src, _ in run.images_of_identity(run.identity_name(r.target_label))[:1]}
        if sources == {"probe set"}:
            text += " Target images come from the probe set (the run stores no gallery images)."
    return text
