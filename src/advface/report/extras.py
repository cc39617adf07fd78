"""The report's Interpretability and Defences sections, from analyses filed with the run.

`advface interpret run-figures RUN_DIR` writes RUN_DIR/interpret/saliency_<model>_<attack>.*;
`advface defend evaluate|detect|advtrain ... --run RUN_DIR` write RUN_DIR/defences/*.json
(docs/run_dir.md). Both are optional: without them each section is one sentence naming the
command that fills it. As everywhere in the report, every sentence states numbers read from
those files, and the documents are read tolerantly (a key an older version did not write is
left out, never invented).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from advface.report.figures import _RANDOM_STYLE, _subplots
from advface.report.load import RunData, fmt_eps
from advface.report.tables import Table, num, pct
from advface.report.text import Section, _join

METHOD_NAMES = {"vanilla": "vanilla gradient", "smoothgrad": "SmoothGrad",
                "ig": "Integrated Gradients"}
NOT_RUN_INTERPRET = ("Not run for this run directory: `advface interpret run-figures RUN_DIR` "
                     "(or `interpret: true` in the experiment config) adds saliency maps of "
                     "clean and adversarial probes here, `advface interpret run-identity "
                     "RUN_DIR` identity visualisations.")
NOT_RUN_DEFENCES = ("Not run for this run directory: `advface defend evaluate --checkpoint CKPT "
                    "--run RUN_DIR` (input transformations, naive and adaptive attacks), "
                    "`advface defend detect --checkpoint CKPT --run RUN_DIR` (feature-squeezing "
                    "detector) and `advface defend advtrain --config CFG --run RUN_DIR` "
                    "(adversarial training) add results here.")


def _f(value: Any) -> float | None:
    """A finite float or None (JSON null, NaN, strings and missing keys alike)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _eps(value: Any) -> str:
    v = _f(value)
    return "?" if v is None else fmt_eps(v)


def _budget(cell: dict[str, Any]) -> str:
    """`at 4/255`, or the norm of a minimum-norm attack's cell (no budget)."""
    v = _f(cell.get("eps255"))
    if v is not None:
        return f"at {fmt_eps(v)}"
    return f"without a fixed budget (minimum-norm, {cell.get('norm', '?')})"


# ---- interpretability -------------------------------------------------------------------------
def saliency_docs(run: RunData) -> list[tuple[str, dict[str, Any]]]:
    """(stem, document) of every saliency file, in the run's model order."""
    docs = [(k, d) for k, d in run.interpret.items() if d.get("kind", "saliency") == "saliency"
            and isinstance(d.get("summary"), dict)]
    order = {m: i for i, m in enumerate(run.model_names)}
    return sorted(docs, key=lambda kd: (order.get(str(kd[1].get("model")), 99), kd[0]))


def image_name(stem: str, doc: dict[str, Any]) -> str | None:
    """The figure of an interpret document as a path relative to the run directory."""
    fig = doc.get("figure")
    return f"interpret/{fig}" if isinstance(fig, str) and fig else None


def identity_docs(run: RunData) -> list[tuple[str, dict[str, Any]]]:
    """(stem, document) of every identity-visualisation file, in the run's model order."""
    docs = [(k, d) for k, d in run.interpret.items() if d.get("kind") == "identity"
            and isinstance(d.get("items"), list)]
    order = {m: i for i, m in enumerate(run.model_names)}
    return sorted(docs, key=lambda kd: (order.get(str(kd[1].get("model")), 99), kd[0]))


def image_names(run: RunData) -> list[str]:
    """Every interpret figure the report shows, relative to the run directory."""
    return [n for stem, doc in saliency_docs(run) + identity_docs(run)
            if (n := image_name(stem, doc)) is not None]


def image_caption(run: RunData, name: str) -> str:
    """Caption of an image block (an interpret figure), built from its document."""
    for stem, doc in identity_docs(run):
        if image_name(stem, doc) == name:
            return (f"Identity visualisation on {doc.get('model', '?')} "
                    f"({doc.get('objective', '?')}). Columns: a probe photo of the identity, "
                    "the image grown from noise, another person's probe, that face pushed "
                    "toward the identity, and the change (signed, amplified); under each image "
                    "the model's decision on it.")
    for stem, doc in saliency_docs(run):
        if image_name(stem, doc) == name:
            cell = doc.get("cell") or {}
            st = doc.get("settings") or {}
            top = _f(st.get("top_fraction")) or 0.2
            gain = doc.get("diff_gain", 10)
            return (f"Saliency of the true identity's score on {doc.get('model', '?')}, probes "
                    f"fooled by {cell.get('attack', '?')} (dodging) {_budget(cell)}; row "
                    "labels: true identity → decision on the adversarial image. "
                    f"Columns: clean, adversarial, difference ×{gain} (signed, grey = 0), then "
                    "the vanilla gradient, SmoothGrad and Integrated Gradients overlays on the "
                    "clean and on the adversarial image (each map scaled to its own 99th "
                    "percentile), and the "
                    f"perturbation with the pixels outside the clean image's top-{top:.0%} "
                    "SmoothGrad pixels dimmed, captioned with the share of the perturbation "
                    "energy on them.")
    return name


def _method_list(summary: dict[str, Any], key: str, fmt: Any) -> list[str]:
    out = []
    for m, label in METHOD_NAMES.items():
        v = _f((summary.get(m) or {}).get(key))
        if v is not None:
            out.append(f"{label} {fmt(v)}")
    return out


def section_interpretability(run: RunData) -> Section:
    sec = Section("interpretability", "Interpretability")
    docs = saliency_docs(run)
    if not docs:
        if identity_docs(run):
            _identity_paragraphs(sec, run)
        else:
            sec.p(NOT_RUN_INTERPRET)
        return sec
    sec.p("Saliency maps show which pixels the score of an identity is most sensitive to. The "
          "vanilla gradient is the derivative of the score with respect to the pixels "
          "(Simonyan et al. 2014); SmoothGrad averages it over noisy copies of the image "
          "(Smilkov et al. 2017); Integrated Gradients integrates it along a straight path from "
          "a baseline image to the image (Sundararajan et al. 2017). Here each map explains the "
          "true identity's score, on the clean probe and on its saved adversarial image, for "
          "probes that the attack fooled and that were identified correctly when clean. The "
          "perturbation concentrates on salient pixels when the most salient fraction f of the "
          "clean image's pixels holds more than f of its energy (sum of squared changes); the "
          "enrichment (share / f) is then above 1.")
    for stem, doc in docs:
        model = doc.get("model", stem)
        cell = doc.get("cell") or {}
        st = doc.get("settings") or {}
        summary = doc.get("summary") or {}
        top = _f(st.get("top_fraction")) or 0.2
        n = doc.get("n_items", len(doc.get("items") or []))
        text = (f"{model}: {n} probe{'s' if n != 1 else ''} fooled by {cell.get('attack', '?')} "
                f"(dodging) {_budget(cell)}")
        sc, sa = _f(doc.get("mean_true_score_clean")), _f(doc.get("mean_true_score_adv"))
        if sc is not None and sa is not None:
            text += (f"; the true identity's mean score falls from {num(sc)} on the clean "
                     f"images to {num(sa)} on the adversarial ones")
        parts = []
        if st.get("smoothgrad_samples") is not None:
            parts.append(f"SmoothGrad averages {st['smoothgrad_samples']} samples with noise "
                         f"{st.get('smoothgrad_noise', '?')}")
        if st.get("ig_steps") is not None:
            parts.append(f"Integrated Gradients takes {st['ig_steps']} steps from a "
                         f"{st.get('ig_baseline', '?')} baseline")
        sec.p(text + ". " + ("; ".join(parts) + "." if parts else ""))
        share = _method_list(summary, "energy_in_top", pct)
        enrich = _method_list(summary, "enrichment", lambda v: f"{v:.2f}×")
        if share:
            sec.p(f"Share of the perturbation energy on the top-{pct(top, 0)} most salient "
                  f"pixels of the clean image: {_join(share)}; enrichment {_join(enrich)} "
                  f"(1.00× = {pct(top, 0)}: spread regardless of saliency).")
        corr = _method_list(summary, "map_correlation", lambda v: f"r = {v:.2f}")
        overlap = _method_list(summary, "top_overlap", pct)
        if corr:
            sec.p(f"From the clean to the adversarial image the saliency map itself changes: "
                  f"pixel-wise correlation of the two maps {_join(corr)}; the top-{pct(top, 0)} "
                  f"pixels they share: {_join(overlap)}.")
        items = [i for i in doc.get("items") or [] if isinstance(i, dict)]
        gaps = [g for i in items for g in ((i.get("ig_completeness_rel_gap") or {}).values())
                if _f(g) is not None]
        if gaps:
            sec.p(f"Integrated Gradients' completeness check (attributions sum to the score "
                  f"difference from the baseline): mean relative error {pct(sum(gaps) / len(gaps))}"
                  f" over {len(gaps)} maps.")
        mismatch = [i for i in items if i.get("decision_matches_run") is False]
        if mismatch:
            sec.p(f"Caution: the rebuilt {model} does not reproduce the stored decision on "
                  f"{len(mismatch)} of {len(items)} probes, so these maps may not explain "
                  "exactly the decision that was attacked.")
        if doc.get("fingerprint_matches_run") is False:
            sec.p(f"Caution: the weights of {model} used for these maps differ from the ones "
                  "recorded for the run (models/<model>.json fingerprint).")
        name = image_name(stem, doc)
        if name is not None:
            sec.image(name)
    sec.table("saliency")
    _identity_paragraphs(sec, run)
    return sec


def _identity_paragraphs(sec: Section, run: RunData) -> None:
    docs = identity_docs(run)
    if not docs:
        return
    st = docs[0][1].get("settings") or {}
    sec.p("Identity visualisation asks what each classifier thinks a person looks like: "
          "gradient ascent on the input raises one identity's score (Erhan et al. 2009; "
          "Simonyan et al. 2014) — the softmax logit, or for an embedding model the "
          "similarity to the centroid of the identity's gallery embeddings — from noise, and "
          "from another person's probe, with image priors that keep the result from being "
          f"adversarial noise: random shifts of up to {st.get('jitter', '?')} pixels, a "
          f"Gaussian blur (sigma {st.get('blur_sigma', '?')}) every "
          f"{st.get('blur_every', '?')} steps and a total-variation penalty (weight "
          f"{st.get('tv_weight', '?')}); {st.get('steps', '?')} Adam steps. Unlike the "
          "attacks, the change is unbounded: it shows the direction the model calls this "
          "identity.")
    for stem, doc in docs:
        n = len(doc.get("items") or [])
        text = (f"{doc.get('model', stem)} ({doc.get('objective', '?')}): the image grown from "
                "noise is identified as the visualised person for "
                f"{doc.get('noise_is_identity', '?')} of {n} identities, the pushed face of "
                "another person for "
                f"{doc.get('pushed_is_identity', '?')} of {n}")
        changes = [v for i in doc.get("items") or [] if isinstance(i, dict)
                   and (v := _f(i.get("change_linf255"))) is not None]
        if changes:
            text += (f"; the face's largest pixel change is {min(changes):.0f}–"
                     f"{max(changes):.0f}/255 (L-inf), far above the attacks' budgets")
        sec.p(text + ".")
        name = image_name(stem, doc)
        if name is not None:
            sec.image(name)


def table_saliency(run: RunData) -> Table | None:
    docs = saliency_docs(run)
    if not docs:
        return None
    rows = []
    top = 0.2
    for stem, doc in docs:
        cell = doc.get("cell") or {}
        top = _f((doc.get("settings") or {}).get("top_fraction")) or top
        for m, label in METHOD_NAMES.items():
            s = (doc.get("summary") or {}).get(m)
            if not isinstance(s, dict):
                continue
            en = _f(s.get("enrichment"))
            eps = _eps(cell.get("eps255")) if _f(cell.get("eps255")) is not None else "—"
            rows.append([str(doc.get("model", stem)), str(cell.get("attack", "?")),
                         eps, str(doc.get("n_items", "?")), label,
                         pct(_f(s.get("energy_in_top"))), "n/a" if en is None else f"{en:.2f}×",
                         num(_f(s.get("spearman")), 2), num(_f(s.get("map_correlation")), 2),
                         pct(_f(s.get("top_overlap")))])
    return Table("saliency", "Where the perturbation lies relative to saliency (means over "
                 "probes)", ["model", "attack", "ε", "n", "method",
                             f"energy on top-{pct(top, 0)}", "enrichment",
                             "Spearman ρ (energy, saliency)", "clean–adv. map r",
                             f"top-{pct(top, 0)} overlap"], rows,
                 note=f"Energy: share of Σ(adv − clean)² on the clean image's top-{pct(top, 0)} "
                      "pixels by saliency of the true identity (max |attribution| over colour "
                      f"channels); a perturbation spread regardless of saliency gives "
                      f"{pct(top, 0)}, enrichment 1.00×. Map r: pixel-wise Pearson correlation "
                      "of the clean and adversarial maps; overlap: share of the clean map's top "
                      "pixels also in the adversarial map's.")


# ---- defences ---------------------------------------------------------------------------------
def defence_kind(stem: str, doc: dict[str, Any]) -> str | None:
    """evaluate | detect | advtrain, from the document (or, for hand-copied --out files, its
    shape and file name); None when it is none of them."""
    kind = doc.get("kind")
    if kind in ("evaluate", "detect", "advtrain"):
        return str(kind)
    if "fpr_target" in doc:
        return "detect"
    results = doc.get("results")
    if isinstance(results, dict) and results and all(
            isinstance(v, dict) and "rows" in v for v in results.values()):
        return "advtrain" if stem.startswith("advtrain") else "evaluate"
    if isinstance(doc.get("rows"), list) and "worst_case" in doc:  # a bare robust_eval.json
        return "advtrain"
    return None


def _checkpoint(run: RunData, doc: dict[str, Any]) -> str:
    """The checkpoint's folder name, and the run's model it is, when the paths agree."""
    raw = doc.get("checkpoint")
    if not isinstance(raw, str) or not raw:
        return "an unnamed checkpoint"
    def folder(p: Path) -> Path:  # a checkpoint is its folder or the weights file in it
        return p.parent if p.suffix == ".safetensors" else p

    path = folder(Path(raw))
    try:
        resolved = path.resolve()
        for m in run.config.get("models") or []:
            ck = m.get("checkpoint") if isinstance(m, dict) else None
            if ck and folder(Path(ck)).resolve() == resolved:
                return f"{path.name} (the run's model {m.get('name')})"
    except (OSError, ValueError):
        pass
    return path.name


def _defence_label(key: str, res: dict[str, Any], kind: str, doc: dict[str, Any]) -> str:
    params = res.get("params") or {}
    if kind == "advtrain":
        adv = doc.get("adversarial") or {}
        if adv:
            return (f"adversarial training ({adv.get('attack', '?')} at "
                    f"{_eps(adv.get('eps_8bit'))})")
        return "adversarial training"
    labels = {
        "none": "no defence (the model itself)",
        "jpeg": f"JPEG compression (quality {params.get('quality', '?')})",
        "bit-depth": f"bit-depth reduction ({params.get('bits', '?')} bits)",
        "median": f"median filter ({params.get('size', '?')} px)",
        "resize-pad": f"random resize and pad (min scale {params.get('min_scale', '?')})",
    }
    return labels.get(key, str(res.get("defence") or key))


def robust_results(run: RunData) -> list[dict[str, Any]]:
    """One entry per evaluated defence: label, checkpoint, numbers per eps (naive/adaptive).

    Input transformations (with the undefended model first) come before adversarial training.
    """
    out = []
    kinds = {k: defence_kind(k, d) for k, d in run.defences.items()}
    order = sorted(run.defences, key=lambda k: (kinds[k] != "evaluate", k))
    for stem in order:
        doc, kind = run.defences[stem], kinds[stem]
        if kind not in ("evaluate", "advtrain"):
            continue
        results = doc.get("results")
        if not isinstance(results, dict) and kind == "advtrain" and "rows" in doc:
            results = {"adversarial-training": doc}
        keys = sorted((results or {}), key=lambda k: k != "none")
        for key in keys:
            res = results[key]
            if not isinstance(res, dict) or not isinstance(res.get("rows"), list):
                continue
            per_eps: dict[float, dict[str, Any]] = {}
            for row in res["rows"]:
                e = _f(row.get("eps255")) if isinstance(row, dict) else None
                acc = _f(row.get("robust_accuracy")) if isinstance(row, dict) else None
                if e is None or acc is None:
                    continue
                slot = per_eps.setdefault(e, {"attacks": {}, "naive": None, "adaptive": None})
                slot["attacks"][str(row.get("attack", "?"))] = acc
                k = row.get("kind")
                if k in ("naive", "adaptive"):
                    slot[k] = acc if slot[k] is None else min(slot[k], acc)
            for e, slot in per_eps.items():
                slot["worst"] = _f((res.get("worst_case") or {}).get(f"{e:g}"))
            n_id = doc.get("n_identities")
            out.append({
                "stem": stem, "kind": kind, "key": key,
                "label": _defence_label(key, res, kind, doc),
                "checkpoint": _checkpoint(run, doc), "n": res.get("n_images"),
                "clean": _f(res.get("clean_accuracy")),
                "undefended_clean": _f(res.get("undefended_clean_accuracy")),
                "random": 1 / n_id if isinstance(n_id, int) and n_id > 0 else None,
                "eps": dict(sorted(per_eps.items())),
            })
    return out


def _detector_docs(run: RunData) -> list[tuple[str, dict[str, Any]]]:
    return [(k, d) for k, d in sorted(run.defences.items()) if defence_kind(k, d) == "detect"]


def section_defences(run: RunData) -> Section:
    sec = Section("defences", "Defences")
    robust = robust_results(run)
    detectors = _detector_docs(run)
    unknown = [k for k, d in sorted(run.defences.items()) if defence_kind(k, d) is None]
    if not robust and not detectors:
        sec.p(NOT_RUN_DEFENCES)
        if unknown:
            sec.p("Files in defences/ that are not results of these commands: "
                  + ", ".join(f"{k}.json" for k in unknown) + ".")
        return sec
    if robust:
        sec.p("A defence is only as strong as the best attack that knows it (Carlini et al. "
              "2019; Athalye et al. 2018), so each is attacked naively and adaptively: naive "
              "attacks are PGD on the undefended model whose images are then passed through the "
              "defence (transfer), and PGD differentiating the defended model as implemented "
              "(direct); the adaptive attack is PGD with straight-through gradients (BPDA) "
              "through non-differentiable transformations, averaging over the randomness of "
              "random ones (EOT), with more steps and random restarts. A probe counts as robust "
              "when it is identified correctly both clean and attacked (L∞ dodging); the worst "
              "case is per probe the minimum over all attacks.")
        items = []
        gaps = []
        for r in robust:
            base = f", random guess {pct(r['random'])}" if r["random"] is not None else ""
            clean = f"clean accuracy {pct(r['clean'])}"
            if r["undefended_clean"] is not None and r["key"] != "none":
                clean += f" (without the defence {pct(r['undefended_clean'])})"
            per = []
            for e, slot in r["eps"].items():
                bits = []
                if slot["naive"] is not None:
                    bits.append(f"naive {pct(slot['naive'])}")
                if slot["adaptive"] is not None:
                    bits.append(f"adaptive {pct(slot['adaptive'])}")
                if slot["worst"] is not None:
                    bits.append(f"worst case {pct(slot['worst'])}")
                per.append(f"at {fmt_eps(e)} " + ", ".join(bits))
                if slot["naive"] is not None and slot["adaptive"] is not None:
                    gaps.append((slot["naive"] - slot["adaptive"], e, r))
            items.append(f"{r['label']} on {r['checkpoint']} ({r['n']} probes{base}): {clean}; "
                         "robust accuracy " + "; ".join(per) + ".")
        sec.p("Robust accuracy per defence (the strongest naive attack against the adaptive "
              "one):")
        sec.bullets(items)
        sec.p(_versus_undefended(robust))
        if gaps:
            gap, e, r = max(gaps, key=lambda g: g[0])
            if gap > 0:
                sec.p(f"The largest overstatement by the naive attacks is {100 * gap:.1f} points: "
                      f"{r['label']} on {r['checkpoint']} at {fmt_eps(e)}, naive "
                      f"{pct(r['eps'][e]['naive'])} against adaptive "
                      f"{pct(r['eps'][e]['adaptive'])}; the adaptive number is the one to "
                      "quote.")
            else:
                low = min(g[0] for g in gaps)
                sec.p("In every setting the adaptive attack left at least as many probes robust "
                      f"as the strongest naive attack (differences from {100 * low:.1f} to "
                      f"{100 * gap:.1f} points), so here the naive numbers did not overstate "
                      "robustness.")
        sec.table("defences")
    for _stem, doc in detectors:
        st = doc.get("settings") or {}
        squeeze = []
        if st.get("bits") is not None:
            squeeze.append(f"{st['bits']}-bit colour depth")
        if st.get("median_size") is not None:
            squeeze.append(f"a {st['median_size']}-pixel median filter")
        head = (f"Feature-squeezing detector (Xu et al. 2018) on {_checkpoint(run, doc)}: an "
                "input is flagged when the softmax output moves by more than a threshold "
                "(L1) under " + (_join(squeeze) or "squeezing") + ".")
        fpr_t = _f(doc.get("fpr_target"))
        if doc.get("n_validation") is not None and fpr_t is not None:
            head += (f" The threshold ({num(_f(doc.get('threshold')), 4)}) was fitted on "
                     f"{doc['n_validation']} clean validation images for a target "
                     f"false-positive rate of {pct(fpr_t)}.")
        sec.p(head)
        lines = []
        results = doc.get("results") if isinstance(doc.get("results"), dict) else {}
        for e_key, res in sorted(results.items(), key=lambda kv: _f(kv[0]) or 0):
            if not isinstance(res, dict):
                continue
            steps = f"PGD-{st['steps']}" if st.get("steps") is not None else "PGD"
            over = (f"the {res['n_attempted']} probes identified correctly"
                    if res.get("n_attempted") is not None else
                    f"the {doc.get('n_clean_probes', '?')} probes")
            line = (f"at {_eps(e_key)}, {steps} fooled {pct(_f(res.get('attack_success_rate')))} "
                    f"of {over}; of the "
                    f"{res.get('n_adversarial', '?')} successful adversarial examples the "
                    f"detector flags {pct(_f(res.get('tpr_at_threshold')))} at a false-positive "
                    f"rate of {pct(_f(res.get('fpr_at_threshold')))} on the clean probes; ROC "
                    f"AUC {num(_f(res.get('auc')))} (chance 0.500)")
            lines.append(line)
        tried = [_eps(e) for e in st.get("eps") or []
                 if _f(e) is not None and f"{_f(e):g}" not in results] \
            if isinstance(st.get("eps"), list) else []
        if tried:
            lines.append(f"at {_join(tried)} the attack fooled no probe, so there was nothing "
                         "to detect")
        if lines:
            sec.bullets([ln[0].upper() + ln[1:] + "." for ln in lines])
        sec.p("The attack did not know the detector. An attacker who also keeps the squeezed "
              "predictions consistent is known to evade feature squeezing (He et al. 2017; "
              "Athalye et al. 2018), so the AUC measures detection of attacks oblivious to it, "
              "not robustness.")
    if detectors:
        sec.table("detector")
        sec.figure("detector_roc")
    if unknown:
        sec.p("Files in defences/ that are not results of these commands: "
              + ", ".join(f"{k}.json" for k in unknown) + ".")
    return sec


def _versus_undefended(robust: list[dict[str, Any]]) -> str:
    """Worst-case robust accuracy of each transformation next to the model itself, at the
    largest budget both were evaluated at (same evaluation file: same model and probes)."""
    parts = []
    for stem in dict.fromkeys(r["stem"] for r in robust):
        group = [r for r in robust if r["stem"] == stem]
        base = next((r for r in group if r["key"] == "none"), None)
        if base is None:
            continue
        for r in group:
            if r is base:
                continue
            shared = [e for e in r["eps"] if e in base["eps"]
                      and r["eps"][e]["worst"] is not None and base["eps"][e]["worst"] is not None]
            if shared:
                e = max(shared)
                parts.append(f"{r['label']} {pct(r['eps'][e]['worst'])} against "
                             f"{pct(base['eps'][e]['worst'])} without it at {fmt_eps(e)}")
    if not parts:
        return ""
    return ("Worst-case robust accuracy with each transformation, next to the same model "
            "without a defence on the same probes: " + "; ".join(parts) + ".")


def table_defences(run: RunData) -> Table | None:
    robust = robust_results(run)
    if not robust:
        return None
    attacks: list[str] = []
    for r in robust:
        for slot in r["eps"].values():
            for a in slot["attacks"]:
                if a not in attacks:
                    attacks.append(a)
    known = ["naive-transfer", "naive-direct", "adaptive"]
    attacks.sort(key=lambda a: (known.index(a) if a in known else len(known), a))
    rows = []
    randoms = {r["random"] for r in robust if r["random"] is not None}
    for r in robust:
        for e, slot in r["eps"].items():
            rows.append([r["checkpoint"], r["label"], str(r["n"]), pct(r["clean"]), fmt_eps(e),
                         *[pct(slot["attacks"][a]) if a in slot["attacks"] else "—"
                           for a in attacks], pct(slot["worst"])])
    note = ("Robust accuracy: identified correctly both clean and under the attack (L∞ "
            "dodging). naive-transfer: PGD on the undefended model, images passed through the "
            "defence; naive-direct: PGD through the defence as implemented; adaptive: BPDA/EOT "
            "PGD with restarts; worst case: per probe the minimum over the attacks.")
    if randoms:
        note += " Random guess: " + ", ".join(pct(v) for v in sorted(randoms)) + "."
    return Table("defences", "Defences: clean, naive and adaptive robust accuracy",
                 ["checkpoint", "defence", "n", "clean", "ε", *attacks, "worst case"], rows,
                 note=note)


def table_detector(run: RunData) -> Table | None:
    rows = []
    for _stem, doc in _detector_docs(run):
        st = doc.get("settings") or {}
        results = doc.get("results") if isinstance(doc.get("results"), dict) else {}
        for e_key, res in sorted(results.items(), key=lambda kv: _f(kv[0]) or 0):
            if not isinstance(res, dict):
                continue
            rows.append([_checkpoint(run, doc),
                         f"{st.get('bits', '?')} bits + median {st.get('median_size', '?')}",
                         _eps(e_key), pct(_f(res.get("attack_success_rate"))),
                         str(res.get("n_adversarial", "?")), num(_f(res.get("auc"))),
                         pct(_f(res.get("tpr_at_threshold"))),
                         pct(_f(res.get("fpr_at_threshold"))), pct(_f(doc.get("fpr_target")))])
    if not rows:
        return None
    return Table("detector", "Feature-squeezing detection of successful adversarial probes",
                 ["checkpoint", "squeezers", "ε", "attack success", "adversarial examples",
                  "ROC AUC", "TPR at threshold", "FPR at threshold", "target FPR"], rows,
                 note="Negatives: clean probes; positives: adversarial probes that fooled the "
                      "model (of probes it identified correctly). Chance: AUC 0.5, TPR = FPR.")


def fig_detector_roc(run: RunData) -> Figure | None:
    """ROC of each feature-squeezing detector result, with the chance diagonal."""
    curves = []
    for _stem, doc in _detector_docs(run):
        results = doc.get("results") if isinstance(doc.get("results"), dict) else {}
        for e_key, res in sorted(results.items(), key=lambda kv: _f(kv[0]) or 0):
            roc = res.get("roc") if isinstance(res, dict) else None
            if isinstance(roc, dict) and roc.get("fpr") and roc.get("tpr"):
                curves.append((f"{_checkpoint(run, doc)}, {_eps(e_key)} (AUC "
                               f"{num(_f(res.get('auc')))})", roc["fpr"], roc["tpr"]))
    if not curves:
        return None
    fig, ax = _subplots(figsize=(5.5, 4.5))
    for i, (label, fpr, tpr) in enumerate(curves):
        ax.plot(fpr, tpr, color=f"C{i % 10}", label=label)
    ax.plot([0, 1], [0, 1], **_RANDOM_STYLE, label="chance")
    ax.set(xlabel="false-positive rate (clean probes flagged)",
           ylabel="true-positive rate (adversarial flagged)", xlim=(0, 1), ylim=(0, 1.01),
           title="Feature-squeezing detector (ROC)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def has_detector_roc(run: RunData) -> bool:
    return any(isinstance(res, dict) and isinstance(res.get("roc"), dict)
               for _s, d in _detector_docs(run)
               for res in (d.get("results") or {}).values())


def image_id(name: str) -> str:
    """An HTML id for an image block: `interpret/saliency_m_pgd.png` -> `interpret-saliency_m_pgd`.
    """
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name.rsplit(".", 1)[0]).strip("-")
