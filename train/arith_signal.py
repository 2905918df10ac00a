"""Wrong arithmetic as a signal (issue 11 part 3): how often the text's own equations are wrong, per catastrophe
type and press setting, and how soon after the onset the first wrong one is found.

The signal (``arith_wrong``, hazard.signals.arithmetic) is a rule, not a fit: an alarm at the first wrong
equation. So its figures need no folds: per setting, the share of healthy traces it would flag (its false
alarms) and the share of each catastrophe type it finds within d tokens of the onset. Three sources:

- ``--gold``: GSM8K's reference solutions (calculator marks removed), text that should hold no wrong equation:
  what the rule flags there is its misreadings (and GSM8K's own slips);
- ``--traces``: collections of trace schema 10 (``hazard relabel`` adds the column to older ones);
- ``--hand``: the hand-checked catastrophe samples (collect/results/onset_check*.json; the 1.5B on the GPU), whose
  texts are tokenized again here (no healthy traces among them, so no false-alarm rate).

    python train/arith_signal.py --traces traces/cpu_state_q05_l8 --gold ../shared/data/gsm8k \\
        --hand collect/results/onset_check.json collect/results/onset_check_v2.json \\
        collect/results/onset_check_v3.json --tokenizer <Qwen2.5 tokenizer folder> \\
        --out train/results/arith_signal_q05.json > train/results/arith_signal_q05.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hazard import setting_label
from hazard.errors import HazardError
from hazard.predictor.data import kind_of
from hazard.signals.arithmetic import ArithmeticCheck, arith_wrong, token_pieces, wrong_equations

DELAYS = (0, 2, 4, 8, 16, 32)
KINDS = ("loop", "nonterm", "wrong")


def first_fire(signal) -> int:
    """The first token where the count of wrong equations is above 0; -1 if never (NaN: never)."""
    hit = np.flatnonzero(np.nan_to_num(np.asarray(signal, dtype=np.float64)) > 0)
    return int(hit[0]) if len(hit) else -1


def detection(firsts: list[int], onsets: list[int]) -> dict:
    """Per catastrophe group: found anywhere, before the onset, within d tokens after it (placed onsets only
    for the timing shares, over every catastrophe of the group)."""
    f, o = np.asarray(firsts), np.asarray(onsets)
    placed = o >= 0
    lag = f - o
    out = {"n": int(len(f)), "any": float(np.mean(f >= 0)) if len(f) else None,
           "before_onset": float(np.mean(placed & (f >= 0) & (lag < 0))) if len(f) else None}
    for d in DELAYS:
        out[f"within{d}"] = float(np.mean(placed & (f >= 0) & (lag >= 0) & (lag <= d))) if len(f) else None
    hit = placed & (f >= 0) & (lag >= 0)
    out["median_delay"] = float(np.median(lag[hit])) if hit.any() else None
    return out


def study_traces(roots: list[str]) -> dict:
    from hazard.traces import load_traces

    cols = ["press", "ratio", "catastrophe", "loop", "nonterm", "onset", "onset_source", "correct", "format_only",
            "arith_wrong"]
    groups: dict[str, dict[str, list]] = {}
    answers: dict[str, dict[bool, list]] = {}  # per setting, right / wrong answers (any cause): fired or not
    for root in roots:
        ds = load_traces(root).select_columns(cols)
        for r in ds:
            setting = setting_label(r["press"], r["ratio"])
            k = kind_of(r)
            right = bool(r["correct"] or r["format_only"])  # the gold number last, without the answer format: right
            if k == "none":
                k = "healthy_right" if right else "healthy_wrong_both"
            groups.setdefault(setting, {}).setdefault(k, []).append((first_fire(r["arith_wrong"]), r["onset"]))
            answers.setdefault(setting, {}).setdefault(right, []).append(first_fire(r["arith_wrong"]) >= 0)
    out: dict = {}
    for setting, by_kind in sorted(groups.items()):
        entry: dict = {}
        healthy = by_kind.get("healthy_right", []) + by_kind.get("healthy_wrong_both", [])
        entry["healthy"] = {"n": len(healthy), "flagged": float(np.mean([f >= 0 for f, _ in healthy])) if healthy
                            else None}
        for h in ("healthy_right", "healthy_wrong_both"):
            g = by_kind.get(h, [])
            entry[h] = {"n": len(g), "flagged": float(np.mean([f >= 0 for f, _ in g])) if g else None}
        for k in KINDS:
            g = by_kind.get(k, [])
            if g:
                entry[k] = detection([f for f, _ in g], [o for _, o in g])
                # the alarm as a trace classifier against this setting's healthy traces (both rates of one rule)
                if healthy:
                    entry[k]["trace_auroc"] = 0.5 * (entry[k]["any"] + 1 - entry["healthy"]["flagged"])
        # as a detector of wrong answers whatever their cause (the model's own slips included)
        right, wrong = answers[setting].get(True, []), answers[setting].get(False, [])
        entry["answers"] = {"right": {"n": len(right), "flagged": float(np.mean(right)) if right else None},
                            "wrong": {"n": len(wrong), "flagged": float(np.mean(wrong)) if wrong else None}}
        if right and wrong:
            entry["answers"]["auroc"] = 0.5 * (np.mean(wrong) + 1 - np.mean(right))
        out[setting] = entry
    return out


def study_gold(path: Path) -> dict:
    from hazard.tasks.gsm8k import solution_text

    out = {}
    for split in ("train", "test"):
        f = path / f"{split}.jsonl"
        if not f.is_file():
            raise HazardError(f"--gold: {f} does not exist; point it at the GSM8K folder")
        flagged, examples, n = 0, [], 0
        for line in f.read_text().splitlines():
            n += 1
            text = solution_text(json.loads(line)["answer"])
            wrong = [x for x in text.split("\n") if wrong_equations(x)]
            flagged += bool(wrong)
            if wrong and len(examples) < 8:
                examples.append(wrong[0][-160:])
        out[split] = {"solutions": n, "flagged": flagged, "share": flagged / n, "examples": examples}
    return out


def study_hand(paths: list[str], tok) -> dict:
    seen, by_source = set(), {}
    for p in paths:
        d = json.loads(Path(p).read_text())
        for e in d["entries"] if isinstance(d, dict) else d:
            if e["trace_id"] in seen:
                continue
            seen.add(e["trace_id"])
            ids = tok(e["text"], add_special_tokens=False)["input_ids"]
            f = first_fire(arith_wrong(token_pieces(tok, ids)))
            claim = e["rules"].get("claim_onset", -1)
            by_source.setdefault(e["source"], []).append((f, claim, e["press"], e["text"]))
    out = {}
    for source, g in sorted(by_source.items()):
        entry = detection([f for f, *_ in g], [c for _, c, *_ in g])
        entry["examples"] = [{"press": p, "claim_onset": c, "found_at": f,
                              "text": (lambda pieces: "".join(pieces[max(f - 20, 0):f + 1]))(
                                  token_pieces(tok, tok(t, add_special_tokens=False)["input_ids"]))}
                             for f, c, p, t in g if f >= 0 and source == "claim"]
        out[source] = entry
    return out


def cost(roots: list[str], tok, limit: int = 400) -> dict:
    """Host time of the live check per generated token (token texts given), over up to ``limit`` traces."""
    from hazard.traces import load_traces

    pieces = []
    for root in roots:
        ds = load_traces(root).select_columns(["tokens"])
        cache: dict[int, str] = {}
        pieces += [token_pieces(tok, r["tokens"], cache) for r in ds.select(range(min(limit, len(ds))))]
    t0 = time.perf_counter()
    n = 0
    for p in pieces:
        check = ArithmeticCheck()
        for x in p:
            check.feed(x)
        n += len(p)
    dt = time.perf_counter() - t0
    return {"traces": len(pieces), "tokens": n, "us_per_token": 1e6 * dt / max(n, 1)}


def report(result: dict) -> str:
    lines = []
    if "gold" in result:
        g = result["gold"]
        lines.append("GSM8K reference solutions with a wrong equation (the rule's misreadings and GSM8K's slips): "
                     + ", ".join(f"{s} {v['flagged']}/{v['solutions']} ({v['share']:.3f})" for s, v in g.items()))
    if "traces" in result:
        lines.append("\nper setting: healthy traces flagged (right / wrong in both runs); per catastrophe type: n, "
                     "found anywhere, before the onset, within 4 / 16 / 32 tokens after it, trace AUROC")
        for setting, e in result["traces"].items():
            h = e["healthy"]
            lines.append(f"{setting:28s} healthy {h['flagged'] if h['flagged'] is not None else float('nan'):.3f} "
                         f"(n={h['n']}; right {e['healthy_right']['flagged'] or 0:.3f}, "
                         f"wrong both {e['healthy_wrong_both']['flagged'] or 0:.3f})")
            a = e["answers"]
            lines.append(f"    answers: right flagged {a['right']['flagged'] or 0:.3f} (n={a['right']['n']}), wrong "
                         f"{a['wrong']['flagged'] or 0:.3f} (n={a['wrong']['n']}), "
                         f"AUROC {a.get('auroc', float('nan')):.3f}")
            for k in KINDS:
                if k in e:
                    d = e[k]
                    lines.append(f"    {k:8s} n={d['n']:4d} any {d['any']:.3f} before {d['before_onset']:.3f} "
                                 f"<=4 {d['within4']:.3f} <=16 {d['within16']:.3f} <=32 {d['within32']:.3f} "
                                 f"AUROC {d.get('trace_auroc', float('nan')):.3f}")
    if "hand" in result:
        lines.append("\nhand-checked samples (1.5B, GPU; re-tokenized): per onset source, found anywhere and within "
                     "4 tokens of the claim onset")
        for s, d in result["hand"].items():
            lines.append(f"    {s:10s} n={d['n']:4d} any {d['any']:.3f} <=4 of the claim {d['within4']:.3f}")
        for x in result["hand"].get("claim", {}).get("examples", []):
            lines.append(f"      {x['press']:20s} claim {x['claim_onset']:4d} found {x['found_at']:4d}  {x['text']!r}")
    if "cost" in result:
        c = result["cost"]
        lines.append(f"\ncost: {c['us_per_token']:.1f} us of host time per generated token ({c['tokens']} tokens)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", nargs="*", default=[], help="collection folders (trace schema 10)")
    ap.add_argument("--gold", default=None, help="the GSM8K folder (train.jsonl, test.jsonl)")
    ap.add_argument("--hand", nargs="*", default=[], help="hand-check JSON files (collect/results/onset_check*.json)")
    ap.add_argument("--tokenizer", default=None, help="the collection model's tokenizer folder (for --hand, cost)")
    ap.add_argument("--out", required=True, help="JSON to write")
    args = ap.parse_args(argv)
    try:
        result: dict = {"signal": "arith_wrong (hazard.signals.arithmetic): alarm at the first wrong equation"}
        tok = None
        if args.hand or args.tokenizer:
            if not args.tokenizer or not Path(args.tokenizer).expanduser().is_dir():
                raise HazardError(f"--tokenizer: {args.tokenizer!r} is not a folder; give the collection model's "
                                  "tokenizer folder")
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(Path(args.tokenizer).expanduser()))
        if args.gold:
            result["gold"] = study_gold(Path(args.gold))
        if args.traces:
            result["traces"] = study_traces(args.traces)
            result["trace_folders"] = args.traces
        if args.hand:
            result["hand"] = study_hand(args.hand, tok)
        if tok is not None and args.traces:
            result["cost"] = cost(args.traces, tok)
    except HazardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from hazard.collect import _git_sha, hardware

    result.update(git_sha=_git_sha(), hardware=hardware())
    from hazard.traces import write_json

    write_json(Path(args.out), result)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
