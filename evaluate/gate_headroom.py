"""How far a gate could take each controlled run: its accuracy behind a perfect gate (acting only on the rows the
static press failed), and behind the best gate held to issue 12's false-trigger bound, from the per-prompt
outcomes a `closed_loop.json` keeps.

    python evaluate/gate_headroom.py evaluate/results/frontier_q15_check_paired/closed_loop.json \
        --out evaluate/results/frontier_q15_check_paired/gate_headroom.json \
        > evaluate/results/frontier_q15_check_paired/gate_headroom.txt

Issue 12 asks for the accuracy bound and false triggers ≤ 5% of healthy rows together. The closed loop counts a
false trigger on a row without a catastrophe in the trace labels (a loop, a non-termination, or an answer the
uncompressed run got right and the press got wrong), so the perfect gate has none; the best gate held to
`--max_false` of them (`bound_gate`) acts on every failing row the action fixes and on that share of the healthy
rows, only where it fixes. If a run's action behind that gate stays under the accuracy bound, no gate can meet
both with that action; if it clears it, the gap is the gate's (`hazard.paired.gate_headroom`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hazard.errors import HazardError
from hazard.paired import format_headroom, gate_headrooms
from hazard.traces import write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("closed_loop", type=Path)
    ap.add_argument("--out", type=Path, help="JSON to write (the printed table is on stdout)")
    ap.add_argument("--max_false", type=float, default=0.05,
                    help="the false-trigger bound of the bound gate (issue 12: 0.05 of the healthy rows)")
    args = ap.parse_args(argv)
    try:
        if not args.closed_loop.is_file():
            raise HazardError(f"gate_headroom: {args.closed_loop} not found; give a closed_loop.json")
        rec = json.loads(args.closed_loop.read_text())
        items = gate_headrooms(rec.get("rows", []), args.max_false)
        if not items:
            raise HazardError(f"gate_headroom: {args.closed_loop} has no controlled run with per-prompt outcomes "
                              "beside a static and an uncompressed one")
    except HazardError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{rec.get('model')} on {rec.get('hardware')} (git {str(rec.get('git_sha'))[:7]})")
    for task, base in dict.fromkeys((it["task"], it["base"]) for it in items):
        sub = [it for it in items if (it["task"], it["base"]) == (task, base)]
        h = sub[0]["headroom"]
        print(f"{task} {base}: static {h['static_accuracy']:.3f}, uncompressed {h['full_accuracy']:.3f}, "
              f"{h['n']} prompts")
        print(format_headroom(sub))
    if args.out:
        write_json(args.out, {"source": str(args.closed_loop), "model": rec.get("model"),
                              "hardware": rec.get("hardware"), "git_sha": rec.get("git_sha"), "items": items})
    return 0


if __name__ == "__main__":
    sys.exit(main())
