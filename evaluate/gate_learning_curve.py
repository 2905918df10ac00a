"""Would more train readings make a better answer gate? The gate refit on growing shares of the saved readings'
prompts (``evaluate/answer_gate.py --data``), on this CPU: the cross-validated AUROC and the share of broken answers
it flags at its false-trigger rate, per share, over a few random draws of the prompts.

    python evaluate/gate_learning_curve.py --data <readings.npz> --max_false 0.03 \
        --out evaluate/results/gate_learning_curve_q15_nea85.json > evaluate/results/gate_learning_curve_q15_nea85.txt

The fit is ``answer_gate.py``'s (``hazard.control.gate.fit_gate``: prompt-grouped 5-fold, the threshold held to
``--max_false`` of the healthy answers, label ``wrong``, the answers with a disagreement at tau 0.2 eligible, the
``digits`` features). A flat curve says the gate is limited by what its features see, not by the data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hazard.collect import _git_sha
from hazard.control.gate import FEATURE_SETS, digit_token_ids, fit_gate, verdict_features
from hazard.errors import HazardError
from hazard.traces import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answer_gate import fit_labels, load_gate_data  # noqa: E402


def learning_curve(data: dict, shares: list[float], draws: int, max_false: float, features: str = "digits",
                   tau: float = 0.2, seed: int = 0) -> list[dict]:
    """Per share of the prompts: ``draws`` random draws (one at share 1) refit, their reports' mean and spread."""
    ids = digit_token_ids(data["vocab_ids"], data["vocab"])
    x = np.array([verdict_features(v, data["max_new_tokens"], FEATURE_SETS[features], ids) for v in data["verdicts"]])
    y, groups = data["y"], data["groups"]
    # issue 12's false triggers, as --false_over healthy counts them
    target, eligible, healthy = fit_labels(data, "wrong", "healthy", tau)
    prompts, rng = np.unique(groups), np.random.default_rng(seed)
    out = []
    for share in shares:
        reps = []
        for _ in range(1 if share >= 1 else draws):
            keep = np.isin(groups, rng.permutation(prompts)[: int(round(share * len(prompts)))])
            _, rep = fit_gate(x[keep], y[keep], groups[keep], healthy[keep], max_false, target=target[keep],
                              eligible=eligible[keep])
            reps.append(rep)
        cols = {k: [r[k] for r in reps] for k in ("cv_auroc", "cv_broken_repaired", "cv_healthy_repaired")}
        out.append({"share": share, "prompts": int(round(share * len(prompts))), "draws": len(reps),
                    "broken": float(np.mean([r["broken"] for r in reps])),
                    **{k: float(np.mean(v)) for k, v in cols.items()},
                    **{f"{k}_range": [float(min(v)), float(max(v))] for k, v in cols.items()}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="readings saved by evaluate/answer_gate.py --data")
    ap.add_argument("--max_false", type=float, default=0.03)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    try:
        if not Path(a.data).is_file():
            raise HazardError(f"gate_learning_curve: {a.data} not found; collect it with answer_gate.py --data")
        data = load_gate_data(a.data)
        rows = learning_curve(data, a.shares, a.draws, a.max_false)
    except HazardError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{len(data['y'])} readings from {a.data}; gates held to {a.max_false:g} of the healthy answers")
    print("share  prompts  broken  cv AUROC (range)          broken flagged (range)    healthy flagged")
    for r in rows:
        print(f"{r['share']:5.2f}  {r['prompts']:7d}  {r['broken']:6.0f}  {r['cv_auroc']:.3f} "
              f"({r['cv_auroc_range'][0]:.3f}-{r['cv_auroc_range'][1]:.3f})   {r['cv_broken_repaired']:.3f} "
              f"({r['cv_broken_repaired_range'][0]:.3f}-{r['cv_broken_repaired_range'][1]:.3f})     "
              f"{r['cv_healthy_repaired']:.3f}")
    if a.out:
        write_json(a.out, {"data": a.data, "collected": data.get("collected"), "git_sha": _git_sha(),
                           "max_false": a.max_false, "features": "digits", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
