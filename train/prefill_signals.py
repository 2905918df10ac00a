"""What the prefill press kept of the question, per press setting, and how well it tells failing runs apart.

Reads collections of trace schema >= 8 (the ``question_*`` columns, ``hazard/signals/prefill.py``) and writes,
per press setting: the traces by outcome (healthy, loop, non-termination, wrong), the signals' means, and each
signal's trace AUROC within the setting for every catastrophe type against the healthy traces, and for answers
compression broke against answers right under compression (the 0h comparison of evaluate/RESULTS.md). Risk
direction: less kept (``question_kept``, ``question_digits_kept``) or more lost (``question_digits_lost``) is
the higher score, so 0.5 is no information and above it the expected direction. Also, per setting, the
pre-onset token AUROC of the token's position alone (earlier = riskier; the report's ``pre_onset_auroc`` at the
8-token horizon): where onsets sit at the first tokens (Knorm), a per-setting pre-onset AUROC that does not beat
it says no more than "early tokens".

    python train/prefill_signals.py --traces .traces/prefill_q15 .traces/prefill_q15_p2 \
        --out train/results/prefill_signals_q15.json > train/results/prefill_signals_q15.txt
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from hazard.collect import _git_sha
from hazard.errors import HazardError
from hazard.signals import PREFILL_SIGNALS
from hazard.traces import load_traces, write_json

RISK = {"question_kept": -1.0, "question_digits_kept": -1.0, "question_digits_lost": 1.0}
COLUMNS = ["press", "ratio", "prompt_id", "catastrophe", "loop", "nonterm", "correct", "onset", "label_h8",
           "post_onset", *PREFILL_SIGNALS]
MIN_N = 10  # fewer traces of a class: no AUROC


def outcome_kind(df: pd.DataFrame) -> pd.Series:
    """healthy / loop / nonterm / wrong per trace (a catastrophe that neither loops nor runs on is wrong)."""
    kind = np.where(~df["catastrophe"], "healthy", np.where(df["loop"], "loop", np.where(df["nonterm"], "nonterm",
                                                                                          "wrong")))
    return pd.Series(kind, index=df.index)


def _auroc(pos: pd.Series, neg: pd.Series, sign: float) -> float | None:
    if len(pos) < MIN_N or len(neg) < MIN_N:
        return None
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, sign * np.r_[pos.to_numpy(), neg.to_numpy()]))


def position_auroc(g: pd.DataFrame) -> float | None:
    """Pre-onset AUROC (8-token horizon) of minus the token position, over the traces of ``g`` (catastrophes
    without an onset left out, as the report does)."""
    y, s = [], []
    for lab, post, cat, onset in zip(g["label_h8"], g["post_onset"], g["catastrophe"], g["onset"]):
        if cat and onset < 0:
            continue
        keep = ~np.asarray(post, dtype=bool)
        y.append(np.asarray(lab)[keep])
        s.append(-np.arange(len(keep))[keep])
    y = np.concatenate(y) if y else np.zeros(0)
    return float(roc_auc_score(y, np.concatenate(s))) if 0 < y.sum() < len(y) else None


def table(df: pd.DataFrame) -> dict:
    """Per press setting (``press@ratio``; the uncompressed runs left out: they keep everything)."""
    df = df.assign(kind=outcome_kind(df))
    out = {}
    for (press, ratio), g in df[df["press"] != "none"].groupby(["press", "ratio"]):
        healthy = g[g["kind"] == "healthy"]
        broken, right = g[g["kind"] == "wrong"], g[g["correct"].astype(bool)]
        entry = {"n": len(g), "kinds": {k: int(v) for k, v in g["kind"].value_counts().sort_index().items()},
                 "mean": {s: float(g[s].mean()) for s in PREFILL_SIGNALS}, "auroc": {},
                 "position_pre_onset_auroc": position_auroc(g)}
        for s in PREFILL_SIGNALS:
            a = {k: _auroc(g[g["catastrophe"]][s] if k == "any" else g[g["kind"] == k][s], healthy[s], RISK[s])
                 for k in ("any", "loop", "nonterm", "wrong")}
            a["broken_vs_right"] = _auroc(broken[s], right[s], RISK[s])
            entry["auroc"][s] = a
        out[f"{press}@{float(ratio):g}"] = entry
    return out


def format_table(t: dict) -> str:
    f = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{'setting':26} {'signal':22} {'mean':>6} {'any':>6} {'loop':>6} {'nonterm':>7} {'wrong':>6} "
             f"{'broken vs right':>15}"]
    for name, e in t.items():
        lines.append(f"{name:26} traces {e['n']}: " + ", ".join(f"{k} {v}" for k, v in e["kinds"].items())
                     + f"; pre-onset AUROC of the position alone {f(e['position_pre_onset_auroc'])}")
        for s in PREFILL_SIGNALS:
            a = e["auroc"][s]
            lines.append(f"{'':26} {s:22} {e['mean'][s]:6.3f} {f(a['any']):>6} {f(a['loop']):>6} {f(a['nonterm']):>7} "
                         f"{f(a['wrong']):>6} {f(a['broken_vs_right']):>15}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", nargs="+", required=True, help="collection folders (trace schema >= 8)")
    ap.add_argument("--out", required=True, help="JSON to write")
    args = ap.parse_args(argv)
    try:
        frames = [load_traces(p).select_columns(COLUMNS).to_pandas() for p in args.traces]
    except HazardError as e:
        print(f"prefill_signals: {e}", file=sys.stderr)
        return 2
    df = pd.concat(frames, ignore_index=True)
    t = table(df)
    write_json(args.out, {"traces": args.traces, "n_traces": len(df), "n_prompts": int(df["prompt_id"].nunique()),
                          "git_sha": _git_sha(), "settings": t})
    print(format_table(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
