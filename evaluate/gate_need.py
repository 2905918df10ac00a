"""How good must the answer check's gate be? From the ungated check's per-prompt outcomes on each prompt set, the
accuracy a gate of each AUROC would keep at issue 12's false-trigger bound, the AUROC it needs for the accuracy
bound and to tie the static press at the same memory, and what today's fitted gates predict against what they
kept live (``hazard.gate_need``).

    python evaluate/gate_need.py --base numbers_expected_attention@0.85 \
        --set test501-1000=evaluate/results/frontier_q15_nea85_test2_all.json \
        --reference mix:static \
        --gate answer-gate-q15-nea85/f0.03 --gate answer-gate-q15-nea85/f0.15 \
        --out evaluate/results/gate_need_q15_nea85.json > evaluate/results/gate_need_q15_nea85.txt

A set may be several files of the same prompts (``NAME=A,B``): their rows are pooled as ``merge_frontiers.py``
pools them, the static and uncompressed runs kept once (they must agree prompt by prompt). Every set is also
pooled into ``all``. The PNG is written beside ``--out``.

Each set also gets the same figures for a gate that ranks the rows the action *fixes* first (``FixGroups``: broken
answers, and answers wrong uncompressed too that the repair turns right; ``answer_gate.py --label helps`` fits
one), whose false triggers include the healthy rows it fixes.

``--reference`` is one static run (``static <press>@<ratio>``, a fixed accuracy) or ``mix:static``: static
compression at the memory the gate of each AUROC would hold, the set's static settings mixed per row to it
(``RowGroups.static_at_kv``; pooled, the sets' own mixes weighted by prompts), as ``replicate.py`` compares runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from merge_frontiers import merge_rows

from hazard.errors import HazardError
from hazard.gate_need import FixGroups, RowGroups, binormal_tpr, live_flags, ranking_auroc, sent_row_cost
from hazard.replication import MIX, _find, _group, static_points
from hazard.traces import write_json

AUROCS = [round(0.5 + 0.01 * i, 2) for i in range(51)]
GRID = ("0.5", "0.6", "0.7", "0.8", "0.9", "1.0")  # the printed columns


def load_set(name: str, paths: list[Path], base: str, sources: dict) -> list[dict]:
    """The rows of one prompt set's files under ``base``, each static or uncompressed run once
    (``merge_frontiers.merge_rows``); where each file came from goes to ``sources``."""
    for path in paths:
        if not path.is_file():
            raise HazardError(f"gate_need: set {name}: {path} not found; give merged closed-loop files")
    results = [json.loads(path.read_text()) for path in paths]
    sources[name] = [{"path": str(path), "model": rec.get("model"), "git_sha": rec.get("git_sha"),
                      "hardware": rec.get("hardware")} for path, rec in zip(paths, results)]
    return _group(merge_rows(paths, results)[0], base, name)


def gate_point(gate: str, checkpoints: Path) -> dict:
    """A fitted gate's cross-validated operating point on its train readings (``report.json``)."""
    path = checkpoints / gate / "report.json"
    if not path.is_file():
        raise HazardError(f"gate_need: {path} not found; --gate names a gate under {checkpoints}")
    rep = json.loads(path.read_text())
    return {"tpr": rep["cv_broken_repaired"], "fpr": rep["cv_healthy_repaired"],
            "auroc": rep.get("cv_auroc_broken_vs_healthy", rep.get("cv_auroc"))}


def _as_function(ref: float | Callable[[float], float] | None) -> Callable[[float], float] | None:
    """A reference as a function of the gate's AUROC (a fixed accuracy is the same at every AUROC)."""
    if ref is None or callable(ref):
        return ref
    return lambda _: ref


def analyse(name: str, groups: RowGroups, full_acc: float, ref: float | Callable[[float], float] | None, args,
            gates: dict, observed: dict, run: dict | None = None) -> dict:
    """One set's (or the pool's) figures; ``ref``: the reference's accuracy, or a function of the gate's AUROC
    (static at the gate's memory, ``RowGroups.static_at_kv``)."""
    bound = full_acc - args.acc_tol
    at = _as_function(ref)
    ref_curve = None if at is None else {str(a): at(a) for a in AUROCS}
    return {"set": name, "n": groups.n, "groups": groups.sizes,
            "net_change": {"wild": groups.wild, "broken": groups.broken, "healthy": groups.healthy},
            "static": groups.static_right / groups.n, "uncompressed": full_acc, "accuracy_bound": bound,
            "reference": ref if ref is None or not callable(ref) else None, "reference_curve": ref_curve,
            "max_false": args.max_false,
            "curve": {str(a): groups.accuracy_at_auroc(a, args.max_false) for a in AUROCS},
            "kv_curve": None if groups.kv is None else
            {str(a): groups.expected_kv(binormal_tpr(a, args.max_false), args.max_false) for a in AUROCS},
            "read_kv": None if groups.kv is None else groups.kv["read"],
            "perfect_gate": groups.accuracy_at_auroc(1.0, args.max_false),
            "auroc_for_bound": groups.required_auroc(bound, args.max_false),
            "auroc_to_tie_reference": None if at is None else groups.required_auroc(at, args.max_false),
            "auroc_to_lead_reference": None if at is None else groups.required_auroc(lambda a: at(a) + args.margin,
                                                                                      args.max_false),
            "margin": args.margin,
            "gates": {g: {**p, "predicted": groups.expected_accuracy(p["tpr"], p["fpr"]),
                          "predicted_kv": groups.expected_kv(p["tpr"], p["fpr"]),
                          "observed": (observed.get(g) or {}).get("accuracy"),
                          "observed_kv": (observed.get(g) or {}).get("mean_kv_fraction"),
                          "sent_rows": None if observed.get(g) is None or run is None else
                          sent_row_cost(observed[g], run)} for g, p in gates.items()}}


def analyse_fixes(fixes: FixGroups, bound: float, ref: float | Callable[[float], float] | None, args) -> dict:
    """The same figures for a gate that ranks the rows the action fixes first (``FixGroups``)."""
    at = _as_function(ref)
    return {"fixed": {"failing": fixes.fixed_failing, "healthy": fixes.fixed_healthy}, "broke": fixes.broke,
            "curve": {str(a): fixes.accuracy_at_auroc(a, args.max_false) for a in AUROCS},
            "kv_curve": None if fixes.kv is None else {str(a): fixes.kv_at_auroc(a, args.max_false) for a in AUROCS},
            "reference_curve": None if at is None else {str(a): at(a) for a in AUROCS},
            "false_triggers_perfect": fixes.fixed_healthy / max(fixes.fixed_healthy + fixes.negatives_healthy, 1),
            "auroc_for_bound": fixes.required_auroc(bound, args.max_false),
            "auroc_to_tie_reference": None if at is None else fixes.required_auroc(at, args.max_false),
            "auroc_to_lead_reference": None if at is None else fixes.required_auroc(lambda a: at(a) + args.margin,
                                                                                    args.max_false)}


def _auroc(a: float | None) -> str:
    return "no gate reaches it" if a is None else f"{a:.3f}"


def format_items(items: list[dict], run: str, reference: str) -> str:
    lines = [f"{run} on each set; a gate held to a share of the healthy rows (binormal ROC of the given AUROC), "
             f"expected accuracy; reference: {reference}"]
    for it in items:
        curve = it["reference_curve"]
        ref = ("-" if curve is None else f"{curve['0.5']:.3f}-{curve['1.0']:.3f} (at the gate's KV)"
               if it["reference"] is None else f"{it['reference']:.3f}")
        need = it["auroc_for_bound"]
        tie, lead = it["auroc_to_tie_reference"], it["auroc_to_lead_reference"]
        lines += [f"\nset {it['set']}: {it['n']} prompts; rows wild / broken / healthy "
                  f"{it['groups']['wild']} / {it['groups']['broken']} / {it['groups']['healthy']}, the action's net "
                  f"change there {it['net_change']['wild']:+d} / {it['net_change']['broken']:+d} / "
                  f"{it['net_change']['healthy']:+d}",
                  f"  static {it['static']:.3f}, uncompressed {it['uncompressed']:.3f} (bound "
                  f"{it['accuracy_bound']:.3f}), reference {ref}; at {it['max_false']:.0%} false triggers a perfect "
                  f"gate keeps {it['perfect_gate']:.3f}",
                  "  AUROC   " + "  ".join(f"{a:>5}" for a in GRID),
                  "  keeps   " + "  ".join(f"{it['curve'][a]:.3f}" for a in GRID),
                  *(["  static  " + "  ".join(f"{curve[a]:.3f}" for a in GRID) + "   (at equal memory)"]
                    if curve is not None and it["reference"] is None else []),
                  *(["  at KV   " + "  ".join(f"{it['kv_curve'][a]:.3f}" for a in GRID)
                     + f"   (the reading: +{it['read_kv']:.3f} on every row)"] if it["kv_curve"] else []),
                  f"  AUROC needed for the accuracy bound: {_auroc(need)}; to tie the reference: "
                  f"{'-' if curve is None else _auroc(tie)}; to lead it by {it['margin']:.3f}: "
                  f"{'-' if curve is None else _auroc(lead)}"]
        for g, p in it["gates"].items():
            obs = "not run here" if p["observed"] is None else f"{p['observed']:.3f}"
            if p["observed_kv"] is not None:
                obs += f" @ {p['observed_kv']:.3f}"
            pred = f"{p['predicted']:.3f}" + ("" if p["predicted_kv"] is None else f" @ {p['predicted_kv']:.3f}")
            lines.append(f"  fitted gate {g}: train CV AUROC {p['auroc']:.3f}, repairs {p['tpr']:.3f} of broken "
                         f"at {p['fpr']:.3f} of healthy -> predicted {pred}, live {obs}")
            if c := p.get("sent_rows"):
                lines.append(f"    the {c['rows']} rows it acted on: KV {c['live']:.3f} there, {c['ungated_same']:.3f} "
                             f"in the ungated run; that run's rows acted on average {c['ungated_acted']:.3f}")
        if (lr := it.get("live_ranking")) is not None:
            def num(x: float | None) -> str:
                return "-" if x is None else f"{x:.3f}"
            lines.append(f"  live, the {lr['gates']} fitted gates' nested flags (a score: how many act on a row) rank "
                         f"the broken rows at AUROC {num(lr['broken_auroc'])} and the rows the action fixes at "
                         f"{num(lr['fixes_auroc'])}, each against the rest of the {lr['rows']} rows that are not wild; "
                         f"among the {lr['acted_rows']} the ungated check acted on, {num(lr['broken_auroc_acted'])} "
                         f"and {num(lr['fixes_auroc_acted'])}")
        if h := it.get("fixes"):
            lines += [f"  a gate that ranks the rows the action fixes first ({h['fixed']['failing']} broken and "
                      f"{h['fixed']['healthy']} healthy ones; it breaks {h['broke']} others), at most "
                      f"{it['max_false']:.0%} false triggers (perfect: {h['false_triggers_perfect']:.1%}):",
                      "  keeps   " + "  ".join(f"{h['curve'][a]:.3f}" for a in GRID),
                      *(["  at KV   " + "  ".join(f"{h['kv_curve'][a]:.3f}" for a in GRID)] if h["kv_curve"] else []),
                      *(["  static  " + "  ".join(f"{h['reference_curve'][a]:.3f}" for a in GRID)]
                        if h["reference_curve"] is not None else []),
                      f"  AUROC needed for the accuracy bound: {_auroc(h['auroc_for_bound'])}; to tie the reference: "
                      f"{'-' if h['reference_curve'] is None else _auroc(h['auroc_to_tie_reference'])}; to lead it "
                      f"by {it['margin']:.3f}: "
                      f"{'-' if h['reference_curve'] is None else _auroc(h['auroc_to_lead_reference'])}"]
    return "\n".join(lines)


def plot(items: list[dict], out: Path, gate_aurocs: list[float], run: str) -> None:
    from hazard.report import plt  # matplotlib, Agg

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, it in enumerate(items):
        c = f"C{i}"
        ax.plot([float(a) for a in it["curve"]], list(it["curve"].values()), color=c, label=f"{it['set']}")
        ax.axhline(it["accuracy_bound"], color=c, ls="--", lw=0.8)
        if it["reference_curve"] is not None:
            ax.plot([float(a) for a in it["reference_curve"]], list(it["reference_curve"].values()), color=c,
                    ls=":", lw=0.8)
    for a in gate_aurocs:
        ax.axvline(a, color="grey", lw=0.8)
    ax.set_xlabel(f"gate AUROC (broken vs healthy rows), held to {items[0]['max_false']:.0%} false triggers")
    ax.set_ylabel("expected accuracy")
    ax.set_title(f"what {run}'s action keeps behind a gate\n(dashed: accuracy bound; dotted: static "
                 "at equal memory; grey: fitted gates)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _ranking(flags: dict, gates: int) -> dict:
    """``live_flags``' AUROCs: broken rows, and rows the action fixes, each against the other (calm) rows."""
    sc, a = flags["score"], flags["acted"]
    return {"gates": gates, "rows": int(len(sc)), "acted_rows": int(a.sum()),
            "broken_auroc": ranking_auroc(sc, flags["broken"]), "fixes_auroc": ranking_auroc(sc, flags["fixes"]),
            "broken_auroc_acted": ranking_auroc(sc[a], flags["broken"][a]),
            "fixes_auroc_acted": ranking_auroc(sc[a], flags["fixes"][a])}


def _pooled_reference(refs: list, w: np.ndarray) -> float | Callable[[float], float] | None:
    """The sets' references weighted by their prompts: accuracies, or functions of the AUROC (``mix:static``)."""
    if any(r is None for r in refs):
        return None
    if callable(refs[0]):
        return lambda a: float(np.dot(w, [r(a) for r in refs]) / w.sum())
    return float(np.dot(w, refs) / w.sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", required=True, metavar="NAME=PATH[,PATH]")
    ap.add_argument("--base", required=True, help="the base press setting, press@ratio")
    ap.add_argument("--run", default="answer_check(gate=)",
                    help="the run that acts on every row (full: the ideal repair, the uncompressed answer)")
    ap.add_argument("--reference", default="", help="the static press at the run's memory, as the paired tables "
                                                    f"name it (static <press>@<ratio>), or {MIX}: static mixed "
                                                    "per row to each gate's memory")
    ap.add_argument("--gate", action="append", default=[], help="a fitted gate under --checkpoints (repeat)")
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    ap.add_argument("--max_false", type=float, default=0.05)
    ap.add_argument("--acc_tol", type=float, default=0.02)
    ap.add_argument("--margin", type=float, default=0.02, help="the lead over the reference worth having")
    ap.add_argument("--out", type=Path, required=True, help="JSON to write; the PNG goes beside it")
    args = ap.parse_args(argv)
    try:
        gates = {g: gate_point(g, args.checkpoints) for g in args.gate}
        items, pooled, pooled_fixes, sets, fix_refs, flagged, sources = [], [], [], [], [], [], {}
        for spec in args.set:
            name, sep, paths = spec.partition("=")
            if not sep or not paths:
                raise HazardError(f"gate_need: --set {spec!r} must read NAME=PATH[,PATH]")
            rows = load_set(name, [Path(p) for p in paths.split(",")], args.base, sources)
            run, static, full = (_find(rows, args.base, lab, name)[0] for lab in (args.run, "static", "full"))
            groups, fixes = RowGroups.from_rows(run, static, full), FixGroups.from_rows(run, static, full)
            if args.reference == MIX:
                ref = groups.static_at_kv(static_points(rows), args.max_false)
                ref_fix = fixes.static_at_kv(static_points(rows), args.max_false)
            else:
                ref = _find(rows, args.base, args.reference, name)[0]["accuracy"] if args.reference else None
                ref_fix = ref
            observed = {}
            for g in gates:
                hit = [r for r in rows if r["policy"] == run["policy"] and
                       str(r.get("knob", {}).get("gate", "")).endswith(g)]
                observed[g] = hit[0] if hit else None
            items.append(analyse(name, groups, full["accuracy"], ref, args, gates, observed, run))
            items[-1]["fixes"] = analyse_fixes(fixes, full["accuracy"] - args.acc_tol, ref_fix, args)
            gated = [r for r in observed.values() if r is not None]
            if gated and (flags := live_flags(gated, run, static, full)) is not None:
                flagged.append(flags)
                items[-1]["live_ranking"] = _ranking(flags, len(gated))
            pooled.append(groups)
            pooled_fixes.append(fixes)
            sets.append((full["accuracy"], ref))
            fix_refs.append(ref_fix)
        if len(pooled) > 1:
            total = pooled[0]
            for g in pooled[1:]:
                total = total + g
            w = np.array([g.n for g in pooled], dtype=float)
            full_acc = float(np.dot(w, [f for f, _ in sets]) / w.sum())
            items.append(analyse("all", total, full_acc, _pooled_reference([r for _, r in sets], w), args, gates, {}))
            items[-1]["fixes"] = analyse_fixes(sum(pooled_fixes[1:], pooled_fixes[0]), full_acc - args.acc_tol,
                                               _pooled_reference(fix_refs, w), args)
            if len(flagged) == len(pooled):  # every set ran the same gates: their scores pool
                items[-1]["live_ranking"] = _ranking({k: np.concatenate([f[k] for f in flagged]) for k in flagged[0]},
                                                     len(gates))
    except HazardError as e:
        print(e, file=sys.stderr)
        return 2
    print(format_items(items, args.run, args.reference or "none"))
    write_json(args.out, {"sources": sources, "base": args.base, "run": args.run, "reference": args.reference,
                          "items": items})
    plot(items, args.out.with_suffix(".png"), sorted({p["auroc"] for p in gates.values()}), args.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
