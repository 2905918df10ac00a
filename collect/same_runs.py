"""Did two collections generate the same runs? Trace by trace (matched on ``trace_id``): the generated tokens and
the label columns.

The engine is deterministic on one machine, so collecting the same prompts and settings again (for new columns,
e.g. trace schema 8's prefill signals) should repeat every run. The shards are read with pyarrow, not through
``load_traces``, so collections of different schema versions compare.

    python collect/same_runs.py .traces/nonterm_q15 .traces/prefill_q15 --out collect/results/prefill_q15_same_runs.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hazard.traces import write_json

COLUMNS = ("tokens", "onset", "onset_source", "catastrophe", "loop", "nonterm", "correct")


def read(folder: str) -> dict[str, dict]:
    files = sorted(Path(folder).glob("data/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no shards in data/")
    rows = {}
    for f in files:
        for r in pq.read_table(f, columns=["trace_id", *COLUMNS]).to_pylist():
            rows[r["trace_id"]] = r
    return rows


def compare(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Counts of traces in both, in one only, and of shared traces equal in each column."""
    both = sorted(set(a) & set(b))
    same = {c: int(sum(np.array_equal(a[t][c], b[t][c]) for t in both)) for c in COLUMNS}
    return {"in_both": len(both), "only_first": len(set(a) - set(b)), "only_second": len(set(b) - set(a)),
            "same": same, "all_same": int(sum(all(np.array_equal(a[t][c], b[t][c]) for c in COLUMNS) for t in both))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        res = {"first": args.first, "second": args.second, **compare(read(args.first), read(args.second))}
    except FileNotFoundError as e:
        print(f"same_runs: {e}", file=sys.stderr)
        return 2
    write_json(args.out, res)
    print(f"{res['in_both']} traces in both ({res['only_first']} / {res['only_second']} in one only); "
          f"identical in every column: {res['all_same']}; per column: {res['same']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
