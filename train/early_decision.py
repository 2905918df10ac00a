"""How early can a guard tell that a compressed trace will fail? Trace-level AUROC of the first k tokens.

Why: on the 1.5B GSM8K traces most catastrophes have their onset at token 0-1 (the compressed run leaves
its uncompressed twin at once), so "flag it 8 tokens before onset" is impossible for them, and the
closed-loop guard, held to <= 5% false alarms over whole traces, never fired. This measures the
alternative the data points to: decide from the first k generated tokens whether to restore.

For each test trace of the train report's split (same YAML, same prompt grouping, compressed traces
only): score = max over tokens 0..k-1 of the exported guard's hazard (eval horizon) or of the entropy;
label = the trace is a catastrophe. Writes a JSON beside the train report.

Usage: python train/early_decision.py configs/train/gpu_qwen15.yaml checkpoints/qwen2.5-coder-1.5b-gru \
           train/results/early_decision.json [--traces traces/q15_gsm8k_train]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from hazard.guard import HazardGuard
from hazard.predictor.data import HazardDataModule
from hazard.yaml_config import load_config

KS = (1, 2, 4, 8, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("guard")
    ap.add_argument("out")
    ap.add_argument("--traces", nargs="*", help="local copies of the config's trace folders")
    args = ap.parse_args()
    cfg = load_config(args.config)
    data = {**cfg["data"], **({"traces": args.traces} if args.traces else {})}
    dm = HazardDataModule(**data)
    guard = HazardGuard.from_pretrained(args.guard)
    h = guard.horizons.index(guard.eval_horizon)
    test = [t for t in dm.parts["test"] if t.press != "none"]
    hazard = [guard.forward_sequence(t.x)[:, h] for t in test]  # the guard normalises with its own statistics
    y = np.array([t.catastrophe for t in test])
    rows = []
    for k in KS:
        r = {"first_k_tokens": k}
        for name, seqs in (("guard", hazard), ("entropy", [t.entropy for t in test])):
            s = np.array([float(np.max(q[:k])) for q in seqs])
            r[f"{name}_auroc"] = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None
        rows.append(r)
    by_press = {p: {"n": int(sum(t.press == p for t in test)),
                    "catastrophe_rate": float(np.mean([t.catastrophe for t in test if t.press == p])),
                    "onset_le_1": float(np.mean([t.onset <= 1 for t in test if t.press == p and t.catastrophe])),
                    "median_onset": float(np.median([t.onset for t in test if t.press == p and t.catastrophe]))}
                for p in sorted({t.press for t in test})}
    out = {"config": args.config, "guard": args.guard, "traces": data["traces"], "n_test_traces": len(test),
           "catastrophe_rate": float(y.mean()), "by_press": by_press, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
