"""What false-alarm rate a threshold rule gives on new healthy traces, from the split's counts alone.

    python train/threshold_rules.py --config configs/train/cpu_cycle_q05.yaml --seeds 0 1 2 3 \
        --out train/results/threshold_rules_q05.json

A report holds each press setting's threshold to ``report.target_false_alarm_rate`` on the validation part's
healthy traces (``hazard.predictor.metrics.choose_threshold``). With n of them, exchangeable with the test's,
a threshold that lets k alarm lets a new healthy trace alarm with probability (k + 1) / (n + 1): the ``quantile``
rule (k = floor(rate n)) lands above the rate on test, the ``conformal`` rule (k = floor(rate (n + 1)) - 1) at
or under it when n >= 1 / rate - 1. Per split seed and setting this prints n, the test's healthy count and each
rule's expected rate, and the expected pooled rate (settings weighted by their healthy test traces), to read
beside the reports' measured ``false_alarm_rate``. It reads only the labels, not the scores: seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hazard.collect import _git_sha
from hazard.predictor.data import expand_trace_paths, load_trace_arrays, split_traces
from hazard.predictor.metrics import THRESHOLD_RULES, FalseAlarmTarget, false_alarm_budget
from hazard.traces import write_json
from hazard.yaml_config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="a train config: its traces and split")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rate", type=float, default=None, help="default: the config's target_false_alarm_rate")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = load_config(args.config)
    data = cfg["data"]
    rate = args.rate if args.rate is not None else cfg.get("report", {}).get("target_false_alarm_rate", 0.05)
    traces = load_trace_arrays(expand_trace_paths(data["traces"]), "live")
    out = {"config": str(args.config), "traces": data["traces"], "rate": rate, "seeds": args.seeds,
           "models": sorted({t.model for t in traces}), "git_sha": _git_sha(), "splits": {}}
    for seed in args.seeds:
        parts = split_traces(traces, data.get("split", "prompt"), data.get("val_frac", 0.15),
                             data.get("test_frac", 0.2), seed)
        budgets = {rule: false_alarm_budget(parts["val"], parts["test"], FalseAlarmTarget(rate, rule))
                   for rule in THRESHOLD_RULES}
        test = budgets["quantile"]["test_healthy"]
        rows = {g: {"val_healthy": n, "test_healthy": test.get(g, 0),
                    **{rule: b["expected_false_alarm_rate"][g] for rule, b in budgets.items()}}
                for g, n in budgets["quantile"]["val_healthy"].items() if n}
        pooled = {rule: b["expected_pooled"] for rule, b in budgets.items()}
        out["splits"][str(seed)] = {"by_setting": rows, "pooled": pooled}
        print(f"split {seed}: " + ", ".join(f"{g} n={r['val_healthy']}" for g, r in rows.items())
              + " | expected pooled " + ", ".join(f"{k} {v:.3f}" for k, v in pooled.items()))
    out["mean_pooled"] = {rule: round(sum(s["pooled"][rule] for s in out["splits"].values()) / len(args.seeds), 4)
                          for rule in THRESHOLD_RULES}
    write_json(args.out, out)
    print(f"mean expected pooled false-alarm rate: {out['mean_pooled']} -> {args.out}")


if __name__ == "__main__":
    main()
