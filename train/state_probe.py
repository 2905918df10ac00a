"""Does the model's own state tell a catastrophe within a press setting? (issue 11, trace schema 9)

Prompt-grouped k-fold study on traces collected with ``state_layer`` (``hazard.signals.state``): the same
classifier over causal windows (``WindowClassifier``) on three feature groups of the ``live_state`` set,

    live        the live guard's per-token signals (logits, attention, lost mass, repeat4) + config
    state       the projected residual stream + config
    live_state  both

fitted on the other folds' traces and scored on the held-out fold's (every setting pooled, as a guard
trains), so every trace gets an out-of-fold score. Per press setting it reports the pre-onset token AUROC
and, with a threshold per setting chosen on the *other* folds' out-of-fold scores (each setting held to
``--far`` false-alarm traces; the held-out fold never picks its own threshold), the false-alarm rate and
the share of catastrophes flagged >= 8 tokens before the onset and <= 4 / 16 / 32 after it, per type.
Writes one JSON and prints a table.

    python train/state_probe.py --traces traces/cpu_state_q05 --out train/results/state_probe_q05.json

Traces collected with a wider state (``state_dim: W``; at the hidden size, the whole state) are read with
``--feature_set live_state@W``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from hazard.errors import HazardError
from hazard.predictor.baselines import WindowClassifier
from hazard.predictor.data import Normalizer, Trace, load_trace_arrays
from hazard.predictor.features import CONFIG_FEATURES, feature_names
from hazard.predictor.metrics import _auc, _grouped, choose_thresholds, detection, setting
from hazard.signals.state import is_state_feature
from hazard.traces import read_manifest, write_json


def groups(feature_set: str = "live_state") -> dict[str, list[str]]:
    """The three feature groups of a state set: its live signals, its state (+ config), both."""
    names = list(feature_names(feature_set))
    state = [n for n in names if is_state_feature(n)]
    return {"live": [n for n in names if not is_state_feature(n)], "state": [*CONFIG_FEATURES, *state],
            "live_state": names}


def folds_by_prompt(traces: list[Trace], k: int, seed: int = 0) -> np.ndarray:
    """Fold of each trace: whole prompts (every setting of one problem) land in one fold."""
    prompts = sorted({t.prompt_id for t in traces})
    order = np.random.default_rng(seed).permutation(len(prompts))
    fold_of = {prompts[i]: j % k for j, i in enumerate(order)}
    return np.array([fold_of[t.prompt_id] for t in traces])


def columns(traces: list[Trace], names: list[str], feature_set: str) -> list[Trace]:
    every = feature_names(feature_set)
    idx = [every.index(n) for n in names]
    return [dataclasses.replace(t, x=t.x[:, idx]) for t in traces]


def out_of_fold(traces: list[Trace], fold: np.ndarray, model: dict, horizon: int) -> list[np.ndarray]:
    scores: list[np.ndarray | None] = [None] * len(traces)
    for f in np.unique(fold):
        train = [t for t, g in zip(traces, fold) if g != f]
        clf = WindowClassifier(**model).fit(train, [], horizon, Normalizer.fit(train))
        held = np.flatnonzero(fold == f)
        for i, s in zip(held, clf.scores([traces[i] for i in held])):
            scores[i] = s
    return scores


def first_alarms(traces: list[Trace], scores: list[np.ndarray], fold: np.ndarray, far: float) -> list[int | None]:
    """Each trace's first alarm, its threshold chosen per setting on the other folds' traces."""
    thr = {}
    for f in np.unique(fold):
        others = np.flatnonzero(fold != f)
        thr[f] = choose_thresholds([traces[i] for i in others], [scores[i] for i in others], far)
    out = []
    for t, s, f in zip(traces, scores, fold):
        th = thr[f][setting(t)]
        hit = np.flatnonzero((s >= th) & t.valid) if not t.catastrophe else np.flatnonzero(s >= th)
        out.append(int(hit[0]) if len(hit) else None)
    return out


def figures(traces: list[Trace], scores: list[np.ndarray], alarms: list, horizon: int) -> dict:
    y = np.concatenate([t.y[t.valid, horizon] for t in traces])
    s = np.concatenate([sc[t.valid] for t, sc in zip(traces, scores)])
    healthy = [a is not None for t, a in zip(traces, alarms) if not t.catastrophe]
    out = {"n_traces": len(traces), "n_catastrophes": int(sum(t.catastrophe for t in traces)),
           "pre_onset_auroc": _auc(y, s)[0] if len(y) else None,
           "false_alarm_rate": float(np.mean(healthy)) if healthy else None}
    failing = [(t.onset, a, t.kind, t.source) for t, a in zip(traces, alarms) if t.catastrophe and t.onset >= 0]
    out.update({"n": len(failing), **detection(failing)})
    out["by_type"] = {**{k: {"n": 0} for k in ("loop", "nonterm", "wrong")}, **_grouped(failing, lambda f: f[2])}
    return out


def run_figures(traces: list[Trace], scores: list[np.ndarray], fold: np.ndarray, far: float, horizon: int) -> dict:
    """``figures`` pooled and within each press setting, thresholds per setting from the other folds."""
    alarms = first_alarms(traces, scores, fold, far)
    run = {"pooled": figures(traces, scores, alarms, horizon), "by_press": {}}
    for name in sorted({setting(t) for t in traces}):
        sel = [i for i, t in enumerate(traces) if setting(t) == name]
        run["by_press"][name] = figures([traces[i] for i in sel], [scores[i] for i in sel], [alarms[i] for i in sel],
                                        horizon)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", nargs="+", required=True, help="collection folders (schema 9, with state_layer)")
    ap.add_argument("--out", required=True, help="JSON to write")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--horizon", type=int, default=8, help="label horizon in tokens (hazard.labels.HORIZONS)")
    ap.add_argument("--far", type=float, default=0.05, help="false-alarm traces per setting")
    ap.add_argument("--models", nargs="+", default=["logreg"], choices=["logreg", "gbm"])
    ap.add_argument("--window", type=int, default=8, help="tokens per causal window")
    ap.add_argument("--detect_window", type=int, default=32, help="train on this many tokens after an onset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--feature_set", default="live_state",
                    help="a state feature set; live_state@W for traces collected with state_dim: W")
    ap.add_argument("--groups", nargs="+", default=["live", "state", "live_state"],
                    choices=["live", "state", "live_state"])
    args = ap.parse_args(argv)
    from hazard.labels import HORIZONS

    h = HORIZONS.index(args.horizon)
    t0 = time.time()
    try:
        every = groups(args.feature_set)
        traces = load_trace_arrays(args.traces, args.feature_set)
    except HazardError as e:
        print(f"state_probe: {e}", file=sys.stderr)
        return 2
    fold = folds_by_prompt(traces, args.folds, args.seed)
    result = {"traces": args.traces, "manifest": {k: read_manifest(Path(p)).get(k) for p in args.traces[:1]
                                                  for k in ("git_sha", "hardware", "config")},
              "folds": args.folds, "horizon": args.horizon, "far": args.far, "window": args.window,
              "detect_window": args.detect_window, "seed": args.seed, "n_prompts": len({t.prompt_id for t in traces}),
              "feature_set": args.feature_set, "groups": {g: every[g] for g in args.groups}, "runs": {}}
    for kind in args.models:
        for group in args.groups:
            sub = columns(traces, every[group], args.feature_set)
            scores = out_of_fold(sub, fold, {"kind": kind, "window": args.window, "seed": args.seed,
                                             "detect_window": args.detect_window}, h)
            result["runs"][f"{kind}/{group}"] = run_figures(sub, scores, fold, args.far, h)
            print(f"{kind}/{group} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    result["seconds"] = round(time.time() - t0, 1)
    write_json(Path(args.out), result)
    print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    def f(v) -> str:
        return "  n/a" if v is None else f"{v:5.3f}"

    lines = [f"per press setting, {result['folds']}-fold by prompt, horizon {result['horizon']}, thresholds for "
             f"{result['far']:.0%} false-alarm traces per setting from the other folds",
             "| run | setting | traces / catastrophes | pre-onset AUROC | false alarms | >= 8 ahead | <= 4 after | "
             "<= 16 | <= 32 | loops <= 4 / 16 | non-terminations <= 4 / 16 | wrong <= 16 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        for where, m in [("pooled", run["pooled"]), *run["by_press"].items()]:
            bt = m["by_type"]

            def two(k: str, bt=bt) -> str:
                return (f"{f(bt[k].get('detect_rate_within4'))} / {f(bt[k].get('detect_rate_within16'))} "
                        f"({bt[k]['n']})")

            lines.append(f"| {name} | {where} | {m['n_traces']} / {m['n_catastrophes']} | {f(m['pre_onset_auroc'])} | "
                         f"{f(m['false_alarm_rate'])} | {f(m.get('detect_rate_lead8'))} | "
                         f"{f(m.get('detect_rate_within4'))} | {f(m.get('detect_rate_within16'))} | "
                         f"{f(m.get('detect_rate_within32'))} | {two('loop')} | {two('nonterm')} | "
                         f"{f(bt['wrong'].get('detect_rate_within16'))} ({bt['wrong']['n']}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
