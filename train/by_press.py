"""Per press setting, what a report's gradient-boosting guard flags (issue 11): the report's split, features and
baseline fit, scored at the validation threshold for the pooled false-alarm target, then broken down by press
(``evaluate``'s ``by_press``). A pooled 5% can come from a guard that flags most traces of the setting that fails
most (healthy ones too) and nothing of the others; this says whether it does.

    python train/by_press.py --config configs/train/nonterm_q15.yaml --traces .traces/nonterm_q15 \\
        --out train/results/nonterm_q15/by_press_gbm.json

Runs on the CPU in a minute or two (no net is fitted). Prints one line per press setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from hazard.errors import HazardError
from hazard.predictor.baselines import WindowClassifier
from hazard.predictor.data import HazardDataModule
from hazard.predictor.train import scored
from hazard.traces import write_json


def by_press(config: str, traces: list[str] | None = None) -> dict:
    path = Path(config)
    if not path.is_file():
        raise HazardError(f"--config: {path} does not exist")
    cfg = yaml.safe_load(path.read_text())
    data, rep = dict(cfg["data"]), cfg.get("report", {})
    if traces:
        data["traces"] = traces
    dm = HazardDataModule(data["traces"], feature_set=data.get("feature_set", "live"),
                          split=data.get("split", "prompt"), val_frac=data.get("val_frac", 0.15),
                          test_frac=data.get("test_frac", 0.2), seed=data.get("seed", 0),
                          detect_window=data.get("detect_window", 0))
    h = dm.horizons.index(cfg["model"].get("eval_horizon", 16))
    val, test = dm.parts["val"], dm.parts["test"]
    clf = WindowClassifier("gbm", window=rep.get("window", 8), seed=cfg.get("seed_everything", 0),
                           detect_window=data.get("detect_window", 0)).fit(dm.parts["train"], val, h, dm.norm)
    res = scored(val, clf.scores(val), test, clf.scores(test), h, rep.get("target_false_alarm_rate", 0.05))
    return {"config": str(path), "traces": data["traces"], "feature_set": data.get("feature_set", "live"),
            "predictor": "gradient_boosting", "threshold": res["val"]["threshold"],
            "test": {k: res["test"][k] for k in ("n_traces", "n_catastrophes", "pre_onset_auroc", "detect_rate_within4",
                                                 "false_alarm_rate", "by_type", "by_press")}}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--traces", nargs="*", help="collection folders here (default: the config's data.traces)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        out = by_press(a.config, a.traces)
    except HazardError as e:
        sys.exit(f"by_press.py: {e}")
    write_json(Path(a.out), out)
    t = out["test"]
    print(f"pooled: within 4 tokens {t['detect_rate_within4']:.3f}, false alarms {t['false_alarm_rate']:.3f}")
    for press, m in t["by_press"].items():
        types = ", ".join(f"{k} {v['detect_rate_within4']:.2f} of {v['n']}" for k, v in m["by_type"].items())
        print(f"{press:24s} false alarms {m['false_alarm_rate']:.3f}  flagged within 4 tokens: {types or '-'}")
    print(json.dumps({"out": a.out}))


if __name__ == "__main__":
    main(sys.argv[1:])
