"""Gradient boosting's feature binning on a class-weighted training set: scikit-learn's own against
``fast_weighted_binning`` (hazard.predictor.baselines), in one run on this machine.

    python train/bench_binning.py --out train/results/bench_binning.json

The report's gradient boosting fits 200k tokens less the early-stopping tenth (180k rows) with
``class_weight="balanced"``. scikit-learn 1.8-1.9 finds a weighted set's bin edges with one weighted-percentile
call per edge (254 per feature); the context finds them with one call. Both bin the same standard-normal
matrix (180k rows by default, every value distinct); the script checks that the edges are equal, feature by
feature, and writes seconds per feature for each, the ratio, and the minutes each would take on the 1.5B's
664 window features (8 tokens x 83 features of ``live_state_cycle``). No timing assertion lives in a test.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.ensemble._hist_gradient_boosting import binning

from hazard.collect import _git_sha
from hazard.predictor.baselines import fast_weighted_binning
from hazard.traces import write_json

WINDOW_FEATURES_Q15 = 8 * 83  # the 1.5B report's window (8 tokens) x live_state_cycle's 83 features


def edges(x: np.ndarray, weight: np.ndarray) -> tuple[list[np.ndarray], float]:
    """Each column's bin edges as the report's boosting finds them (255 bins), and the seconds they took."""
    start = time.perf_counter()
    out = [binning._find_binning_thresholds(x[:, j], 255, sample_weight=weight) for j in range(x.shape[1])]
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=180_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("train/results/bench_binning.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.features))
    y = rng.random(args.rows) < 0.1  # about the report's share of positive tokens
    weight = np.where(y, 0.5 / y.mean(), 0.5 / (1 - y.mean()))  # class_weight="balanced"
    slow, t_slow = edges(x, weight)
    with fast_weighted_binning():
        fast, t_fast = edges(x, weight)
    same = all(np.array_equal(a, b) for a, b in zip(slow, fast))
    per_slow, per_fast = t_slow / args.features, t_fast / args.features
    result = {
        "rows": args.rows, "features": args.features, "edges_equal": same,
        "seconds_per_feature": {"scikit_learn": round(per_slow, 4), "fast_weighted_binning": round(per_fast, 4)},
        "speedup": round(per_slow / per_fast, 1),
        "minutes_for_q15_window_features": {"features": WINDOW_FEATURES_Q15,
                                            "scikit_learn": round(per_slow * WINDOW_FEATURES_Q15 / 60, 1),
                                            "fast_weighted_binning": round(per_fast * WINDOW_FEATURES_Q15 / 60, 2)},
        "scikit_learn_version": sklearn.__version__, "numpy_version": np.__version__,
        "hardware": f"{platform.processor() or platform.machine()}, one thread (edges found one feature at a time)",
        "git_sha": _git_sha(),
    }
    write_json(args.out, result)
    print(result)
    if not same:
        raise SystemExit("bench_binning: the fast edges differ from scikit-learn's")


if __name__ == "__main__":
    main()
