"""Spot checks (issue 11): how early does the uncompressed model's reading of a compressed answer see that the
answer will end wrong, and do the compressed run's own signals see it as early?

A spot check at generated token t is one teacher-forced forward of the uncompressed model over prompt + the
first t tokens (``hazard.engine.check``; a prefill's cost, no cache kept). Its reading of token s < t depends
only on the prompt and tokens < s, so the reading of a whole answer (what ``evaluate/answer_gate.py --data``
saves) holds every spot check's reading at once: a check at t sees its first t entries. For each t this fits,
prompt-grouped and out of fold, a logistic regression over the digit-aware statistics of those t entries
(``hazard.control.gate.DIGITS``), and as the baseline one over the compressed run's own signals in the same
tokens (mean / max / last-8 mean of entropy, 1 - top-1 probability, negative margin, repetition; no
uncompressed model needed). Label: compression broke the answer (right uncompressed, wrong compressed);
AUROC is of broken against right-under-compression answers, and ``found_at_5pct`` is the share of broken answers
flagged when 5% of the right ones are. Answers shorter than t are read whole (their end is known by then).

    python train/spot_checks.py <readings.npz> train/results/spot_checks_q15.json

Writes the JSON and a PNG beside it (AUROC against t for both).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "evaluate"))

from answer_gate import load_gate_data  # noqa: E402

from hazard.collect import _git_sha, hardware  # noqa: E402
from hazard.control.gate import DIGITS, digit_token_ids, verdict_features  # noqa: E402
from hazard.engine.check import Verdict  # noqa: E402
from hazard.traces import write_json  # noqa: E402

TS = (8, 16, 32, 64, 128, 256, 512)


def own_signal_features(sig: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Mean, max and mean of the last 8 tokens of the compressed run's entropy, 1 - top-1 probability,
    -margin and repetition over the tokens read so far (rows of ``sig``)."""
    cols = {n: sig[:, names.index(n)].astype(np.float64) for n in ("entropy", "top1_prob", "margin", "repeat4")}
    series = [cols["entropy"], 1.0 - cols["top1_prob"], -cols["margin"], cols["repeat4"]]
    return np.array([f(s) for s in series for f in (np.mean, np.max, lambda a: a[-8:].mean())])


def oof_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    oof = np.zeros(len(y))
    for tr, te in GroupKFold(folds).split(x, y, groups):
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
        lr = LogisticRegression(max_iter=3000).fit((x[tr] - mu) / sd, y[tr])
        oof[te] = lr.predict_proba((x[te] - mu) / sd)[:, 1]
    return oof


def score(oof: np.ndarray, broken: np.ndarray, right: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    both = broken | right
    thr = np.sort(oof[right])[::-1][int(0.05 * right.sum())]
    return {"auroc": float(roc_auc_score(broken[both], oof[both])), "found_at_5pct": float((oof[broken] > thr).mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="readings saved by evaluate/answer_gate.py --data")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    d = load_gate_data(args.data)
    if not d["signals"]:
        print(f"spot_checks: {args.data} holds no compressed-run signals (collected before 6c62574); collect again",
              file=sys.stderr)
        return 2
    m, names = d["max_new_tokens"], tuple(str(n) for n in d["signal_names"])
    digits = digit_token_ids(d["vocab_ids"], d["vocab"])
    broken, right = d["y"].astype(bool), d["healthy"].astype(bool)
    lens = np.array([len(v.tokens) for v in d["verdicts"]])
    rows = []
    for t in TS:
        pre = [Verdict(v.tokens[:t], v.logp[:t], v.top[:t], v.top_logp[:t]) for v in d["verdicts"]]
        xs = np.array([verdict_features(v, m, DIGITS, digits) for v in pre])
        xo = np.array([own_signal_features(s[:t], names) for s in d["signals"]])
        first = np.array([v.first_disagreement(0.2) for v in pre])
        rows.append({"t": t, "answers_still_running": float((lens > t).mean()),
                     "tokens_read_per_check": float(np.minimum(lens, t).mean()),
                     "spot_check": score(oof_scores(xs, d["y"], d["groups"]), broken, right),
                     "own_signals": score(oof_scores(xo, d["y"], d["groups"]), broken, right),
                     "both": score(oof_scores(np.hstack([xs, xo]), d["y"], d["groups"]), broken, right),
                     "disagreement_by_t": {"broken": float((first[broken] >= 0).mean()),
                                           "right": float((first[right] >= 0).mean())}})
        r = rows[-1]
        print(f"t={t:4d}: spot check AUROC {r['spot_check']['auroc']:.3f} (finds {r['spot_check']['found_at_5pct']:.2f}"
              f" at 5% of right answers), own signals {r['own_signals']['auroc']:.3f}, both {r['both']['auroc']:.3f}; "
              f"a disagreement by then in {r['disagreement_by_t']['broken']:.2f} of broken / "
              f"{r['disagreement_by_t']['right']:.2f} of right answers")
    out = Path(args.out)
    write_json(out, {"data": args.data, "collected": d["collected"], "n": int(len(broken)), "broken": int(broken.sum()),
                     "right": int(right.sum()), "max_new_tokens": m, "features": list(DIGITS),
                     "label": "broken by compression (right uncompressed, wrong compressed) vs right compressed",
                     "rows": rows, "git_sha": _git_sha(), "hardware": hardware()})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, lab in (("spot_check", "spot check (uncompressed reading)"), ("own_signals", "compressed run's signals"),
                     ("both", "both")):
        ax.plot(TS, [r[key]["auroc"] for r in rows], marker="o", label=lab)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens read (t)")
    ax.set_ylabel("AUROC, broken vs right answers")
    ax.set_title(f"{d['collected'].get('model', '')}: when does a check see a broken answer?", fontsize=9)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
