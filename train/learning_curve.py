"""The learning curve of one report (issue 11): the guard and the gradient-boosting baseline trained on the first
n train problems, scored on the same validation threshold rule and the same test problems, up to the full train
part (the report's main fit). Nothing is refitted: it reads the report's metrics.json.

    python train/learning_curve.py train/results/problems_all_q15/metrics.json

writes learning_curve.csv and learning_curve.png beside it and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ("train_prompts", "predictor", "pre_onset_auroc", "auroc", "detect_rate_lead8", "detect_rate_within4",
           "loop_within4", "nonterm_within4", "false_alarm_rate", "n_test_traces")


def row(n: int, predictor: str, m: dict) -> dict:
    by = m.get("by_type", {})
    return {"train_prompts": n, "predictor": predictor, "n_test_traces": m["n_traces"],
            **{k: m[k] for k in ("pre_onset_auroc", "auroc", "detect_rate_lead8", "detect_rate_within4",
                                 "false_alarm_rate")},
            "loop_within4": by.get("loop", {}).get("detect_rate_within4"),
            "nonterm_within4": by.get("nonterm", {}).get("detect_rate_within4")}


def curve(metrics: dict) -> list[dict]:
    """One row per (train prompts, predictor): each learning-curve point, then the main fit on the whole train
    part. Points the report skipped (beyond the train part) are left out."""
    if not metrics.get("learning_curve"):
        sys.exit("learning_curve.py: this metrics.json has no learning_curve (set report.learning_curve)")
    net = metrics["model"]["net"]
    rows = []
    for n, m in sorted(metrics["learning_curve"].items(), key=lambda kv: int(kv[0])):
        if "skipped" in m:
            continue
        rows.append(row(int(n), net, m))
        gbm = metrics.get("split_baselines", {}).get(f"train-{n}", {}).get("gradient_boosting")
        if gbm:
            rows.append(row(int(n), "gradient_boosting", gbm))
    full = metrics["data"]["n_prompts"]["train"]
    rows.append(row(full, net, metrics["model"]["test"]))
    rows.append(row(full, "gradient_boosting", metrics["baselines"]["gradient_boosting"]["test"]))
    return rows


def plot(rows: list[dict], title: str, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for pred in dict.fromkeys(r["predictor"] for r in rows):  # the net, then the baseline, as the rows come
        style = "s--" if pred == "gradient_boosting" else "o-"
        sel = [r for r in rows if r["predictor"] == pred]
        xs = [r["train_prompts"] for r in sel]
        axes[0].plot(xs, [r["pre_onset_auroc"] for r in sel], style, label=pred)
        axes[1].plot(xs, [r["loop_within4"] for r in sel], style, label=f"{pred}: loops")
        axes[1].plot(xs, [r["nonterm_within4"] for r in sel], style, alpha=0.5, label=f"{pred}: non-terminations")
    axes[0].set(xscale="log", xlabel="train problems", ylabel="pre-onset AUROC (test)", title="forecast")
    axes[0].axhline(0.95, color="grey", lw=0.8, ls=":")  # issue 11's target
    axes[1].set(xscale="log", xlabel="train problems", ylabel="flagged <= 4 tokens after onset",
                title="fast detection (threshold: <= 5% false alarms on val)", ylim=(0, 1))
    axes[1].axhline(0.9, color="grey", lw=0.8, ls=":")
    ns = sorted({r["train_prompts"] for r in rows})
    for ax in axes:
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", type=Path, help="a report's metrics.json with a learning_curve section")
    args = ap.parse_args(argv)
    if not args.metrics.is_file():
        sys.exit(f"learning_curve.py: {args.metrics} does not exist")
    metrics = json.loads(args.metrics.read_text())
    rows = curve(metrics)
    out = args.metrics.parent
    with open(out / "learning_curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    n = metrics["data"]["n_prompts"]
    plot(rows, f"{', '.join(metrics['data']['models'])}; test: {n['test']} problems, "
               f"{metrics['model']['test']['n_traces']} traces; {metrics.get('hardware')}", out / "learning_curve.png")
    f3 = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print("| train problems | predictor | pre-onset AUROC | trace AUROC | ≥ 8 before | ≤ 4 after | loops ≤ 4 | "
          "non-terminations ≤ 4 | false alarms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['train_prompts']:,} | {r['predictor']} | " + " | ".join(f3(r[k]) for k in COLUMNS[2:9]) + " |")


if __name__ == "__main__":
    main()
