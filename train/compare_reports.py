"""The main fit against its feature-set ablations over several reports (one per split seed).

One small test set moves a detection rate by several points, so a feature set that looks better on one
split is read over a few: each ``hazard train report`` run on a different ``data.seed`` (the same config
otherwise) gives one ``metrics.json``; this prints, per predictor (the main model's ``model`` entry and each
``ablation.<set>``), the test figures with one threshold per press setting (``test_per_setting``: each setting
held to the target on validation) per split, their mean, and the main fit's mean lead over each ablation.

    python train/compare_reports.py train/results/cpu_state_q05*/metrics.json \
        --out train/results/cpu_state_q05_seeds.json

``--against`` adds another config's reports on the same split seeds (e.g. the same study on other features
that one report cannot hold as an ablation): each one's main fit joins the row of its seed as ``vs:<label>``.
``--baselines`` adds the report's baselines (``baseline:<name>``) and each predictor beside the cycle rule
(``or_cycle:<name>``, the report's ``or_cycle_rule``) as predictors of their own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hazard.errors import HazardError
from hazard.traces import write_json

KEYS = ("pre_onset_auroc", "false_alarm_rate", "detect_rate_lead8", "detect_rate_within4", "detect_rate_within16",
        "detect_rate_within32")


def figures(entry: dict) -> dict:
    """A predictor's test figures, detection with one threshold per setting, and its pre-onset AUROC within
    each setting."""
    if "test_per_setting" not in entry:
        raise HazardError("a metrics entry without test_per_setting: rerun the report with today's hazard")
    per = entry["test_per_setting"]
    out = {k: per.get(k) for k in KEYS}
    out["pre_onset_auroc"] = entry["test"]["pre_onset_auroc"]
    for name, sub in entry["test"].get("by_press", {}).items():
        out[f"pre_onset_auroc:{name}"] = sub["pre_onset_auroc"]
    for kind, sub in per.get("by_type", {}).items():
        out[f"{kind}:detect_rate_within4"] = sub.get("detect_rate_within4")
        out[f"{kind}:detect_rate_within16"] = sub.get("detect_rate_within16")
    for d in (4, 16):  # loops counted from their first repeated token (reports since this field exists)
        if "loop_from_repeat" in per:
            out[f"loop@repeat:detect_rate_within{d}"] = per["loop_from_repeat"][f"detect_rate_within{d}"]
    return out


def _predictor(key: str) -> bool:
    return key == "model" or key.startswith(("ablation:", "vs:", "baseline:", "or_cycle:"))


def compare(paths: list[Path], against: list[Path] = (), label: str = "against", baselines: bool = False) -> dict:
    others = {}
    for p in against:
        m = json.loads(p.read_text())
        others[m["config"]["data"]["seed"]] = (m["model"]["test"]["n_catastrophes"], figures(m["model"]))
    runs = {}
    for p in paths:
        m = json.loads(p.read_text())
        seed, n = m["config"]["data"]["seed"], m["model"]["test"]["n_catastrophes"]
        runs[str(p)] = {"seed": seed, "n_catastrophes": n, "model": figures(m["model"]),
                        **{f"ablation:{k}": figures(v) for k, v in m.get("ablation", {}).items()}}
        if baselines:  # entries without per-setting figures (one press setting) cannot be compared
            runs[str(p)].update({f"baseline:{k}": figures(v) for k, v in m.get("baselines", {}).items()
                                 if "test_per_setting" in v})
            runs[str(p)].update({f"or_cycle:{k}": figures(v) for k, v in m.get("or_cycle_rule", {}).items()})
        if against:
            if seed not in others or others[seed][0] != n:
                raise HazardError(f"--against: no report on split seed {seed} with the same {n} test catastrophes")
            runs[str(p)][f"vs:{label}"] = others[seed][1]
    names = [k for k in next(iter(runs.values())) if _predictor(k) and all(k in r for r in runs.values())]
    mean = {}
    for name in names:
        keys = runs[next(iter(runs))][name]
        mean[name] = {k: _mean([r[name].get(k) for r in runs.values()]) for k in keys}
    lead = {n: {k: _mean([_sub(r["model"].get(k), r[n].get(k)) for r in runs.values()]) for k in mean["model"]}
            for n in names if n != "model"}
    return {"runs": runs, "mean": mean, "model_minus": lead}


def _sub(a, b):
    return None if a is None or b is None else a - b


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def table(res: dict) -> str:
    def f(v) -> str:
        return "  n/a" if v is None else f"{v:6.3f}"

    cols = ["pre_onset_auroc", "false_alarm_rate", "detect_rate_lead8", "detect_rate_within4", "detect_rate_within16",
            "detect_rate_within32", "loop:detect_rate_within4", "loop:detect_rate_within16",
            "nonterm:detect_rate_within4", "nonterm:detect_rate_within16"]
    first = next(iter(res["runs"].values()))["model"]
    cols += [k for k in first if k.startswith("loop@repeat:")]
    cols += sorted(k for k in first if k.startswith("pre_onset_auroc:"))  # within each press setting
    heads = [c.replace("detect_rate_", "").replace("pre_onset_auroc", "pre") for c in cols]
    lines = ["| split seed | predictor | catastrophes | " + " | ".join(heads) + " |",
             "|---" * (len(cols) + 3) + "|"]
    for r in res["runs"].values():
        for name in [k for k in r if _predictor(k)]:
            lines.append(f"| {r['seed']} | {name} | {r['n_catastrophes']} | "
                         + " | ".join(f(r[name].get(c)) for c in cols) + " |")
    for name, m in res["mean"].items():
        lines.append(f"| mean | {name} | | " + " | ".join(f(m.get(c)) for c in cols) + " |")
    for name, m in res["model_minus"].items():
        lines.append(f"| mean | model - {name} | | " + " | ".join(f(m.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", nargs="+", type=Path, help="metrics.json of reports that differ in data.seed")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--against", nargs="+", type=Path, default=[],
                    help="metrics.json of another config's reports on the same split seeds (its main fit: vs:LABEL)")
    ap.add_argument("--label", default="against", help="the name of --against's main fit in the table")
    ap.add_argument("--baselines", action="store_true",
                    help="also the report's baselines and each predictor beside the cycle rule (or_cycle_rule)")
    args = ap.parse_args(argv)
    try:
        res = compare(args.metrics, args.against, args.label, args.baselines)
    except (HazardError, KeyError) as e:
        print(f"compare_reports: {e}", file=sys.stderr)
        return 2
    write_json(args.out, res)
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
