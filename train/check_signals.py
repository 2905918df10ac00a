"""Spot checks against the onsets (issue 11 part 3): does the uncompressed model's reading of a compressed run
flag a catastrophe within a few tokens of its onset, within a press setting, at 5% false-alarm traces?

``train/spot_checks.py`` measured the reading at the trace level (does a check at token t see that the answer
will end wrong); this measures it against the labelled onsets, as the issue's targets count: per token. A check
at generated token c is one teacher-forced forward of the uncompressed model over prompt + tokens 0..c
(``hazard.engine.check``; nothing kept). Its reading of token s <= c depends only on the prompt and tokens < s,
so one reading of a whole trace holds every check's: a guard that checks every N tokens knows, at token t, the
reading of tokens 0..c for the last check c <= t (c + 1 a multiple of N). Per token three check signals:

    check<N>_max     the largest surprise so far: max over s <= c of log p_full(top) - log p_full(chosen)
    check<N>_mean16  the surprise's mean over the 16 tokens up to c (sustained disagreement)
    check<N>_dis16   the share of those 16 tokens the uncompressed model would not have chosen

(0 before the first check). N = 1 is an uncompressed shadow row decoded beside the compressed one (the verify
window kept for the whole generation: the uncompressed cache is held, so it saves no memory); N >= 16 are spot
checks, each a prefill's compute over prompt + c tokens and one layer's K/V at a time.

Two steps, both resumable:

    python train/check_signals.py read  --traces traces/cpu_state_q05_l8 --readings runs/check_q05 \\
        --task_paths '{"gsm8k": "../shared/data/gsm8k"}' [--model_path ~/.cache/hazard-models] [--device cpu]
    python train/check_signals.py study --traces traces/cpu_state_q05_l8 --readings runs/check_q05 \\
        --out train/results/check_signals_q05.json [--every 1 16 64] [--models logreg gbm]

``read`` reads every compressed trace once with the collection's model (its manifest says which), prompt by
prompt, and writes the readings in chunks (each written whole: a killed run keeps its chunks and goes on from
them). ``study`` is state_probe's prompt-grouped k-fold study (thresholds per press setting from the other folds,
applied unchanged) on the compressed traces that have a reading: each check signal alone as a rule, and logistic
regression / gradient boosting on the live signals with and without the check signals. The uncompressed runs
are left out (a check of the uncompressed model against itself reads nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from state_probe import folds_by_prompt, format_table, out_of_fold, run_figures  # noqa: E402

from hazard.errors import HazardError  # noqa: E402
from hazard.predictor.data import Trace, load_trace_arrays  # noqa: E402
from hazard.predictor.features import _rolling, feature_names  # noqa: E402
from hazard.predictor.metrics import setting  # noqa: E402
from hazard.traces import load_traces, read_manifest, write_json  # noqa: E402

CHECK_STATS = ("max", "mean16", "dis16")
CHUNK = 16  # traces per readings file


def check_names(every: int) -> list[str]:
    return [f"check{every}_{s}" for s in CHECK_STATS]


def check_columns(logp: np.ndarray, top_logp: np.ndarray, agree: np.ndarray, every: int) -> np.ndarray:
    """(n, 3) check signals (``CHECK_STATS``) a guard checking every ``every`` tokens knows at each token: the
    values at the last check c <= t, where checks fall on tokens with (c + 1) % every == 0; 0 before the first."""
    surprise = np.maximum(np.asarray(top_logp, np.float64) - np.asarray(logp, np.float64), 0.0)
    cols = np.stack([np.maximum.accumulate(surprise), _rolling(surprise, 16, "mean"),
                     _rolling(1.0 - np.asarray(agree, np.float64), 16, "mean")], 1)
    n = len(surprise)
    last = (np.arange(n) + 1) // every * every - 1  # the last check at or before each token
    out = np.zeros_like(cols)
    seen = last >= 0
    out[seen] = cols[last[seen]]
    return out.astype(np.float32)


def check_cost(prompt_len: int, n_tokens: int, every: int) -> dict:
    """One trace's checks: how many, and the tokens they forward (each check re-reads prompt + answer so far)."""
    checks = np.arange(every - 1, n_tokens, every)
    return {"checks": len(checks), "tokens_read": int(np.sum(prompt_len + checks + 1))}


# ---------------------------------------------------------------- readings

def read_readings(root: Path) -> dict[str, dict]:
    """trace_id -> {"logp", "top_logp", "agree", "prompt_len"} from every chunk in ``root``."""
    out = {}
    for f in sorted(root.glob("chunk_*.npz")):
        z = np.load(f)
        for i, tid in enumerate(z["ids"]):
            a, b = z["offsets"][i], z["offsets"][i + 1]
            out[str(tid)] = {"logp": z["logp"][a:b], "top_logp": z["top_logp"][a:b], "agree": z["agree"][a:b],
                             "prompt_len": int(z["prompt_len"][i])}
    return out


def write_chunk(root: Path, k: int, ids: list[str], prompt_lens: list[int], verdicts) -> None:
    offsets = np.concatenate([[0], np.cumsum([len(v.logp) for v in verdicts])])
    tmp = root / f".chunk_{k:05d}.tmp.npz"
    np.savez(tmp, ids=np.array(ids), offsets=offsets, prompt_len=np.array(prompt_lens),
             logp=np.concatenate([v.logp for v in verdicts]).astype(np.float32),
             top_logp=np.concatenate([v.top_logp for v in verdicts]).astype(np.float32),
             agree=np.concatenate([v.top == v.tokens for v in verdicts]))
    os.replace(tmp, root / f"chunk_{k:05d}.npz")


def read(args) -> int:
    import torch

    from hazard.collect import encode
    from hazard.engine.check import check_answers
    from hazard.engine.runner import ModelRunner
    from hazard.models import ModelConfig, load_model
    from hazard.relabel import manifest_prompts

    try:
        task_paths = json.loads(args.task_paths)
    except ValueError:
        raise HazardError(f"--task_paths: {args.task_paths!r} is not JSON; give "
                          "'{\"gsm8k\": \"<its folder>\"}'") from None
    root = Path(args.readings)
    root.mkdir(parents=True, exist_ok=True)
    done = read_readings(root)
    for folder in args.traces:
        manifest = read_manifest(Path(folder))
        prompts = manifest_prompts(manifest, task_paths)
        cols = ["trace_id", "task", "format", "prompt_id", "press", "tokens"]
        rows = [r for r in load_traces(folder).select_columns(cols) if r["press"] != "none"
                and r["trace_id"] not in done]
        rows.sort(key=lambda r: (r["prompt_id"], r["trace_id"]))  # whole prompts first: a partial read splits well
        if args.limit:
            rows = rows[:args.limit]
        if not rows:
            print(f"{folder}: every compressed trace already read", file=sys.stderr)
            continue
        spec = {k: v for k, v in manifest["config"]["model"].items() if k in {f.name for f in
                                                                               dataclasses.fields(ModelConfig)}}
        spec.update({k: v for k, v in (("path", args.model_path), ("device", args.device), ("dtype", args.dtype))
                     if v})
        torch.set_num_threads(args.threads)
        model, tok = load_model(ModelConfig(**spec))
        runner = ModelRunner(model, [0], signals=False)
        k = len(list(root.glob("chunk_*.npz")))
        t0 = time.time()
        for c in range(0, len(rows), CHUNK):
            part = rows[c:c + CHUNK]
            ids = []
            for r in part:
                p = prompts.get((r["task"], r["format"], r["prompt_id"]))
                if p is None:
                    raise HazardError(f"{folder}: no prompt for {r['trace_id']} in the manifest's tasks; check "
                                      "--task_paths")
                ids.append(encode(tok, p))
            verdicts = check_answers(runner, ids, [r["tokens"] for r in part], token_budget=args.token_budget)
            write_chunk(root, k, [r["trace_id"] for r in part], [len(i) for i in ids], verdicts)
            k += 1
            n = c + len(part)
            print(f"read {n}/{len(rows)} traces ({time.time() - t0:.0f} s, "
                  f"{(time.time() - t0) / n:.2f} s a trace)", file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------- study

def with_checks(traces: list[Trace], readings: dict, every: list[int]) -> tuple[list[Trace], list[str]]:
    """The compressed traces that have a reading, their features extended by each period's check signals."""
    out = []
    for t in traces:
        r = readings.get(t.trace_id)
        if t.press == "none" or r is None:
            continue
        if len(r["logp"]) != len(t.x):
            raise HazardError(f"{t.trace_id}: its reading has {len(r['logp'])} tokens, the trace {len(t.x)}; "
                              "read it again (the readings folder is from another collection?)")
        extra = [check_columns(r["logp"], r["top_logp"], r["agree"], n) for n in every]
        out.append(dataclasses.replace(t, x=np.concatenate([t.x, *extra], 1)))
    return out, [n for e in every for n in check_names(e)]


def describe(traces: list[Trace], readings: dict) -> dict:
    """Per press setting and catastrophe type (``none``: healthy): how often the uncompressed model would not
    have chosen the run's token, over the whole run, in the 16 tokens from the onset and before it; where it
    first disagrees; its largest surprise in the first 8 tokens (medians over traces)."""
    groups: dict[str, list] = {}
    for t in traces:
        r = readings[t.trace_id]
        off = ~np.asarray(r["agree"], bool)
        surprise = np.maximum(r["top_logp"] - r["logp"], 0.0)
        on = t.onset if t.catastrophe else -1
        groups.setdefault(f"{setting(t)}/{t.kind}", []).append(
            (off.mean(), off[on:on + 16].mean() if on >= 0 else np.nan, off[:on].mean() if on > 0 else np.nan,
             int(np.argmax(off)) if off.any() else len(off), surprise[:8].max()))

    def mean(v):
        v = [x for x in v if not np.isnan(x)]
        return float(np.mean(v)) if v else None

    return {g: {"n": len(v), "disagree": mean([x[0] for x in v]), "disagree_16_from_onset": mean([x[1] for x in v]),
                "disagree_before_onset": mean([x[2] for x in v]),
                "median_first_disagreement": float(np.median([x[3] for x in v])),
                "median_max_surprise_first8": float(np.median([x[4] for x in v]))} for g, v in sorted(groups.items())}


def pick(traces: list[Trace], names: list[str], cols: list[str]) -> list[Trace]:
    idx = [names.index(c) for c in cols]
    return [dataclasses.replace(t, x=t.x[:, idx]) for t in traces]


def study(args) -> int:
    from hazard.collect import _git_sha, hardware
    from hazard.labels import HORIZONS

    h = HORIZONS.index(args.horizon)
    t0 = time.time()
    readings = read_readings(Path(args.readings))
    if not readings:
        print(f"check_signals: no readings in {args.readings}; run `check_signals.py read` first", file=sys.stderr)
        return 2
    live = list(feature_names(args.feature_set))
    traces, checks = with_checks(load_trace_arrays(args.traces, args.feature_set), readings, args.every)
    names = live + checks
    fold = folds_by_prompt(traces, args.folds, args.seed)
    lens = {t.trace_id: len(t.x) for t in traces}
    cost = {str(n): {k: float(np.mean([check_cost(readings[i]["prompt_len"], lens[i], n)[k] for i in lens]))
                     for k in ("checks", "tokens_read")} for n in args.every}
    for n in args.every:
        cost[str(n)]["tokens_read_per_generated"] = cost[str(n)]["tokens_read"] / float(np.mean(list(lens.values())))
    result = {"traces": args.traces, "readings": args.readings, "n_read": len(readings), "git_sha": _git_sha(),
              "hardware": hardware(),
              "manifest": {k: read_manifest(Path(args.traces[0])).get(k) for k in ("git_sha", "hardware", "config")},
              "folds": args.folds, "horizon": args.horizon, "far": args.far, "window": args.window,
              "detect_window": args.detect_window, "seed": args.seed, "every": args.every,
              "n_prompts": len({t.prompt_id for t in traces}), "n_traces": len(traces), "feature_set": args.feature_set,
              "cost": cost, "reading": describe(traces, readings), "runs": {}}

    def record(name: str, sub: list[Trace], scores: list[np.ndarray]) -> None:
        result["runs"][name] = run_figures(sub, scores, fold, args.far, h)
        print(f"{name} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)

    for c in checks:  # each check signal alone, as a rule: alarm once it crosses the setting's threshold
        j = names.index(c)
        record(f"rule/{c}", traces, [t.x[:, j].astype(np.float64) for t in traces])
    groups = {"live": live, **{f"live+check{n}": live + check_names(n) for n in args.every}}
    for kind in args.models:
        for g, cols in groups.items():
            sub = pick(traces, names, cols)
            scores = out_of_fold(sub, fold, {"kind": kind, "window": args.window, "seed": args.seed,
                                             "detect_window": args.detect_window}, h)
            record(f"{kind}/{g}", sub, scores)
    result["seconds"] = round(time.time() - t0, 1)
    write_json(Path(args.out), result)
    plot(result, Path(args.out).with_suffix(".png"))
    print(format_table(result))
    print("the reading, per setting / type: share of tokens the uncompressed model would not have chosen (whole "
          "run, 16 from the onset, before it); median first disagreement; median largest surprise in 8 tokens")
    for g, d in result["reading"].items():
        print(f"  {g:32} n {d['n']:4}  " + "  ".join("  n/a" if d[k] is None else f"{d[k]:5.3f}" for k in (
            "disagree", "disagree_16_from_onset", "disagree_before_onset")) +
            f"  {d['median_first_disagreement']:5.1f}  {d['median_max_surprise_first8']:6.2f}")
    print("cost per trace (mean), as spot checks that re-read prompt + answer: " + "; ".join(
        f"every {n}: {c['checks']:.1f} checks, {c['tokens_read']:.0f} tokens read "
        f"({c['tokens_read_per_generated']:.0f} per generated token)" for n, c in cost.items())
        + " (every 1 is cheaper as an uncompressed shadow row: one more decode row, the whole cache held)")
    return 0


PLOTTED = ("rule/check1_max", "rule/check16_mean16", "logreg/live", "logreg/live+check1", "gbm/live",
           "gbm/live+check1", "gbm/live+check16")


def plot(result: dict, path: Path) -> None:
    """Per press setting, the share of catastrophes flagged within d tokens of the onset (thresholds per setting,
    5% false-alarm traces), for the check rules and the learned models with and without the checks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {k: v for k, v in result["runs"].items() if k in PLOTTED}
    if not runs:  # a study of other periods or models: nothing of these to draw
        return
    settings = sorted(next(iter(runs.values()))["by_press"])
    delays = (0, 2, 4, 8, 16, 32)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 3.6), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], settings):
        for k, run in runs.items():
            m = run["by_press"][name]
            ax.plot(delays, [m.get(f"detect_rate_within{d}") or 0.0 for d in delays], marker="o", ms=3,
                    ls="--" if k.startswith("rule") else "-", label=k)
        ax.set_title(f"{name} ({m['n_catastrophes']} catastrophes)", fontsize=9)
        ax.set_xlabel("tokens after the onset")
        ax.set_xticks(delays)
    axes[0][0].set_ylabel("catastrophes flagged (5% false alarms per setting)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"the uncompressed model's reading as a detector ({result['manifest']['config']['model']['name']}, "
                 f"{result['folds']}-fold by prompt)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    r = sub.add_parser("read", help="read the compressed traces with the uncompressed model")
    s = sub.add_parser("study", help="the k-fold study of the check signals against the onsets")
    pl = sub.add_parser("plot", help="the study's PNG again from its JSON")
    pl.add_argument("json", help="a study's JSON (the PNG goes beside it)")
    for p in (r, s):
        p.add_argument("--traces", nargs="+", required=True, help="collection folders")
        p.add_argument("--readings", required=True, help="folder of the readings (chunk_*.npz)")
    r.add_argument("--task_paths", default="{}", help='JSON: task name -> its data here, {"gsm8k": "../shared/..."}')
    r.add_argument("--model_path", default=None, help="the collection model's folder here (default: the manifest's)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--dtype", default=None, help="default: the manifest's")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--token_budget", type=int, default=8192, help="padded tokens per forward")
    r.add_argument("--limit", type=int, default=0, help="read at most this many traces (0: all)")
    s.add_argument("--out", required=True, help="JSON to write")
    s.add_argument("--every", type=int, nargs="+", default=[1, 16, 64], help="check periods in tokens")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--horizon", type=int, default=8)
    s.add_argument("--far", type=float, default=0.05, help="false-alarm traces per setting")
    s.add_argument("--models", nargs="*", default=["logreg", "gbm"], choices=["logreg", "gbm"],
                   help="learned models over the live signals with and without the checks (none: the rules only)")
    s.add_argument("--window", type=int, default=8)
    s.add_argument("--detect_window", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--feature_set", default="live", help="the live signals the checks are added to")
    args = ap.parse_args(argv)
    if args.step == "study" and min(args.every) < 1:
        ap.error("--every takes periods >= 1")
    if args.step == "plot":
        plot(json.loads(Path(args.json).read_text()), Path(args.json).with_suffix(".png"))
        return 0
    try:
        return read(args) if args.step == "read" else study(args)
    except HazardError as e:
        print(f"check_signals: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
