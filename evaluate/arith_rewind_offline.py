"""What ``arith_rewind`` would do to a collection, without a device: restore, roll back, regenerate.

``arith_rewind`` (hazard.control.policies) restores every evicted entry at a row's first wrong equation and
rolls back to just after its '='. Under a prefill-only press (SnapKV, ExpectedAttention) the generated tokens'
entries are all kept, so the restored row *is* the uncompressed model reading prompt + the tokens kept: this
script replays exactly that for every compressed trace whose ``arith_wrong`` fires (the same check, on the same
token texts), decodes greedily with the uncompressed model to the trace's budget, and scores the answer. Rows
that never fire keep the static run. Per press setting: how many rows fire (catastrophes, answers wrong in both
runs, right answers), accuracy with and without the rewinds, the answers it fixes and breaks, and the mean KV
fraction with the rewound rows holding the whole prompt from their rollback point on.

    python evaluate/arith_rewind_offline.py --traces traces/cpu_arith_q15 --task_paths '{"gsm8k": "<folder>"}' \\
        --out evaluate/results/arith_rewind_offline_q15cpu.json
    python evaluate/arith_rewind_offline.py --from_json --out <the same JSON>   # recount and print, no replay

The closed loop on the device measures the same policy in the engine (configs/evaluate/frontier_q15_arith.yaml);
this replay differs from it only by the arithmetic of batching.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from hazard import setting_label
from hazard.errors import HazardError
from hazard.signals import ArithmeticCheck, token_pieces
from hazard.traces import load_traces, read_manifest, write_json

PRESSES = ("snapkv", "expected_attention", "tova", "keydiff")  # prefill-only: the generated entries are all kept


def rollback_point(pieces: list[str]) -> int | None:
    """Tokens kept when the first wrong equation is found: those through its '=' (None: it never fires)."""
    check = ArithmeticCheck()
    for piece in pieces:
        if check.feed(piece):
            return check.token_of(check.wrong_at[0]) + 1
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def same_result(example: dict) -> bool:
    """Whether the rewound row wrote the same result as the static run: the first number after the '='."""
    a, b = _NUMBER.search(example["static"]), _NUMBER.search(example["rewound"])
    return bool(a and b and a.group() == b.group())


def summarize_examples(out: dict) -> dict:
    """Per setting, how many rewound rows wrote the same result again (from the stored examples)."""
    for v in out["settings"].values():
        v["same_result"] = sum(same_result(e) for e in v["examples"])
    return out


def report(out: dict) -> str:
    lines = []
    for k, v in out["settings"].items():
        lines.append(f"{k:26s} rows {v['rows']}, fired {v['fired']} (catastrophes {v['fired_catastrophes']}, wrong "
                     f"both {v['fired_wrong_both']}, right {v['fired_right']}); accuracy {v['accuracy_static']:.3f} -> "
                     f"{v['accuracy_rewound']:.3f} (fixed {v['fixed']}, of them catastrophes "
                     f"{v['fixed_catastrophes']}; broken {v['broken']}); mean KV {v['mean_kv_fraction_static']:.3f} "
                     f"-> {v['mean_kv_fraction_rewound']:.3f}; the same first regenerated token "
                     f"{v['same_first_token']} of {v['fired']}, the same result {v['same_result']} of {v['fired']}")
    lines.append(f"replay: {sum(v['fired'] for v in out['settings'].values())} rows in {out['replay_seconds']:.0f} s")
    return "\n".join(lines)


def kv_fraction(kv_tokens, prompt_len: int, keep: int | None = None) -> float:
    """Mean over the run's tokens of KV held / prompt + tokens so far; from ``keep`` on the whole prompt held."""
    k = np.asarray(kv_tokens, dtype=np.float64)
    full = prompt_len + np.arange(len(k))
    if keep is not None:
        k = k.copy()
        k[keep:] = full[keep:]
    return float(np.mean(k / full))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", help="a collection folder (trace schema 10)")
    ap.add_argument("--task_paths", help='JSON: task -> data folder, e.g. {"gsm8k": "<folder>"}')
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--device", default=None, help="default: the collection's")
    ap.add_argument("--from_json", action="store_true",
                    help="no replay: recount the stored examples of --out and print the report again")
    args = ap.parse_args(argv)
    if args.from_json:
        path = Path(args.out)
        if not path.is_file():
            print(f"error: --out: {path} does not exist; run the replay first", file=sys.stderr)
            return 2
        out = summarize_examples(json.loads(path.read_text()))
        write_json(path, out)
        print(report(out))
        return 0
    if not args.traces or not args.task_paths:
        print("error: the replay needs --traces and --task_paths (or --from_json to recount a replay)", file=sys.stderr)
        return 2
    try:
        task_paths = json.loads(args.task_paths)
    except ValueError:
        print(f"error: --task_paths: {args.task_paths!r} is not JSON; give '{{\"gsm8k\": \"<folder>\"}}'",
              file=sys.stderr)
        return 2
    try:
        return run(args, task_paths)
    except HazardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args, task_paths: dict) -> int:
    from hazard.collect import _git_sha, encode, hardware, outcome
    from hazard.engine import Engine
    from hazard.models import ModelConfig, end_token_ids, load_model
    from hazard.relabel import manifest_prompts

    manifest = read_manifest(Path(args.traces))
    prompts = manifest_prompts(manifest, task_paths)
    spec = {k: v for k, v in manifest["config"]["model"].items() if k in {f.name for f in
                                                                           dataclasses.fields(ModelConfig)}}
    if args.device:
        spec["device"] = args.device
    model, tok = load_model(ModelConfig(**spec))
    cols = ["trace_id", "task", "format", "prompt_id", "press", "ratio", "tokens", "correct", "format_only",
            "catastrophe", "max_new_tokens", "prompt_len", "kv_tokens"]
    rows = [r for r in load_traces(args.traces).select_columns(cols) if r["press"] != "none"]
    other = sorted({r["press"] for r in rows} - set(PRESSES))
    if other:
        raise HazardError(f"{args.traces}: presses {other} evict during decoding or are not prefill-only; the "
                          "replay holds only for prefill presses (run the closed loop for those)")
    cache: dict[int, str] = {}
    fired = []
    for r in rows:
        r["right"] = bool(r["correct"] or r["format_only"])
        r["keep"] = rollback_point(token_pieces(tok, r["tokens"], cache))
        if r["keep"] is not None:
            fired.append(r)
    t0 = time.time()
    budget = max((r["max_new_tokens"] - r["keep"] for r in fired), default=1)
    engine = Engine(model, end_token_ids(tok, model), max_new_tokens=budget, batch_size=args.batch_size,
                    signals=False)
    ids = []
    for r in fired:
        p = prompts.get((r["task"], r["format"], r["prompt_id"]))
        if p is None:
            raise HazardError(f"no prompt for {r['trace_id']} in the manifest's tasks; check --task_paths")
        r["prompt"] = p
        ids.append(encode(tok, p) + list(r["tokens"][:r["keep"]]))
    gens = engine.generate(ids, None) if ids else []
    for r, g in zip(fired, gens):
        left = r["max_new_tokens"] - r["keep"]
        cont = list(g.tokens[:left])
        tokens = list(r["tokens"][:r["keep"]]) + cont
        finished = g.finished and len(g.tokens) <= left
        text = tok.decode(tokens, skip_special_tokens=True)
        o = outcome(r["prompt"], tokens, finished, text, None)
        r["rewound_right"] = bool(o["correct"] or o["format_only"])
        r["rollback_tokens"] = len(r["tokens"]) - r["keep"]
        # the equation as the static run finished it, and as the restored model writes it again
        head = tok.decode(list(r["tokens"][max(r["keep"] - 16, 0):r["keep"]]), skip_special_tokens=True)
        r["example"] = {"trace_id": r["trace_id"], "catastrophe": bool(r["catastrophe"]), "right": r["right"],
                        "rewound_right": r["rewound_right"], "kept": head,
                        "static": tok.decode(list(r["tokens"][r["keep"]:r["keep"] + 12]), skip_special_tokens=True),
                        "rewound": tok.decode(cont[:12], skip_special_tokens=True),
                        "same_next_tokens": int(np.argmin(np.r_[np.asarray(cont[:64]) == np.asarray(
                            list(r["tokens"][r["keep"]:r["keep"] + 64]) + [-1] * 64)[:len(cont[:64])], False]))}
    seconds = time.time() - t0
    out: dict = {"traces": args.traces, "model": manifest["config"]["model"].get("name"), "policy":
                 "arith_rewind (restore, margin 0), replayed with the uncompressed model", "settings": {}}
    for setting in sorted({(r["press"], r["ratio"]) for r in rows}):
        g = [r for r in rows if (r["press"], r["ratio"]) == setting]
        f = [r for r in g if r["keep"] is not None]
        static = np.mean([r["right"] for r in g])
        rewound = np.mean([r["rewound_right"] if r["keep"] is not None else r["right"] for r in g])
        out["settings"][setting_label(*setting)] = {
            "rows": len(g), "fired": len(f),
            "fired_catastrophes": sum(r["catastrophe"] for r in f),
            "fired_wrong_both": sum(not r["catastrophe"] and not r["right"] for r in f),
            "fired_right": sum(r["right"] for r in f),
            "accuracy_static": float(static), "accuracy_rewound": float(rewound),
            "fixed": sum(r["rewound_right"] and not r["right"] for r in f),
            "broken": sum(r["right"] and not r["rewound_right"] for r in f),
            "fixed_catastrophes": sum(r["rewound_right"] and r["catastrophe"] for r in f),
            "mean_kv_fraction_static": float(np.mean([kv_fraction(r["kv_tokens"], r["prompt_len"]) for r in g])),
            "mean_kv_fraction_rewound": float(np.mean([kv_fraction(r["kv_tokens"], r["prompt_len"], r["keep"])
                                                       for r in g])),
            "rollback_tokens_per_fired_row": float(np.mean([r["rollback_tokens"] for r in f])) if f else None,
            # rewound rows whose first regenerated tokens repeat the static run's (the same result written again)
            "same_first_token": sum(r["example"]["same_next_tokens"] > 0 for r in f),
            "examples": [r["example"] for r in f],
        }
    out.update(replay_seconds=round(seconds, 1), git_sha=_git_sha(), hardware=hardware())
    out = summarize_examples(out)
    write_json(Path(args.out), out)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
