"""One table over the campaign studies (issue 11): the headline test figures of each study's main guard,
its baselines and every held-out split, per catastrophe type and task, with the study each comes from.

    python train/campaign_summary.py            # writes train/results/campaign_summary.json, prints markdown

Reads train/results/campaign_*/metrics.json (written on the H100 by collect/gpu_campaign.sh, laid out by
gpu/unpack_report.sh); nothing is refitted.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
KEYS = ("pre_onset_auroc", "detect_rate_lead8", "detect_rate_within4", "false_alarm_rate")
SPLITS = ("leave_one_press_out", "held_out_format", "held_out_task", "cross_model", "architectures", "ablation")


def brief(m: dict) -> dict:
    m = m.get("test", m)  # comparisons keep their validation figures beside the test ones
    out = {k: round(m[k], 3) for k in KEYS if m.get(k) is not None}
    out["n_traces"], out["n_catastrophes"] = m.get("n_traces"), m.get("n_catastrophes")
    out["by_type"] = {t: {k: round(v[k], 3) for k in ("detect_rate_lead8", "detect_rate_within4")} | {"n": v["n"]}
                      for t, v in m.get("by_type", {}).items()}
    out["by_task"] = {t: {k: round(v[k], 3) for k in KEYS if v.get(k) is not None}
                      | {"n_catastrophes": v["n_catastrophes"]} for t, v in m.get("by_task", {}).items()}
    return out


def study(path: Path) -> dict:
    m = json.loads(path.read_text())
    out = {"complete": m.get("complete"), "models": m["data"]["models"], "tasks": m["data"].get("tasks"),
           "n_traces": m["data"]["n_traces"], "hardware": m.get("hardware"),
           "model": brief(m["model"]["test"]),
           "baselines": {b: brief(v["test"]) for b, v in m.get("baselines", {}).items()}}
    for key in SPLITS:
        if key in m:
            out[key] = {n: ({"skipped": v["skipped"]} if "skipped" in v else brief(v)) for n, v in m[key].items()}
    out["signals"] = {n: {k: (round(v[k], 3) if v[k] is not None else None) for k in ("trace_auroc", "pre_onset_auroc")}
                      for n, v in m.get("signals", {}).items() if ":" not in n and not n.startswith("novel")}
    return out


def row(name: str, m: dict) -> str:
    f = [m.get(k) for k in KEYS]
    return f"| {name} | " + " / ".join("-" if x is None else f"{x:.3f}" for x in f) + f" | {m.get('n_traces')} |"


def main() -> None:
    studies = {p.parent.name: study(p) for p in sorted(RESULTS.glob("campaign_*/metrics.json"))}
    (RESULTS / "campaign_summary.json").write_text(json.dumps(studies, indent=1) + "\n")
    print("| study: predictor or split | pre-onset AUROC / >=8 before / <=4 after / false alarms | test traces |")
    print("|---|---|---|")
    for name, s in studies.items():
        print(row(f"{name}: GRU", s["model"]))
        for b in ("gradient_boosting",):
            if b in s["baselines"]:
                print(row(f"{name}: {b}", s["baselines"][b]))
        for key in SPLITS:
            for n, v in s.get(key, {}).items():
                if "skipped" not in v:
                    print(row(f"{name}: {key} {n}", v))


if __name__ == "__main__":
    main()
