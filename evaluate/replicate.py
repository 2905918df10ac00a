"""One run against its references on several prompt sets, each and pooled, with issue 12's bounds per set;
several runs (e.g. one gate fitted for each false-trigger rate) as a trade-off curve.

    python evaluate/replicate.py --base numbers_expected_attention@0.85 \
        --set test1-500=evaluate/results/frontier_q15_nea85_all.json \
        --set test501-1000=evaluate/results/frontier_q15_nea85_test2_all.json \
        --run "answer_check(gate=answer-gate-q15-nea85/f0.03)" \
        --against static "answer_check(gate=random:0)" "coins:answer_check(gate=random:0.06)" \
        --pool all=test1-500,test501-1000 --out evaluate/results/replication.json

Each ``--set`` is a merged closed-loop file of one prompt set (its own uncompressed run); labels are those of the
files' paired tables (``hazard.replication``). The table goes to stdout, the JSON to ``--out``. Given several
``--run`` labels, each is replicated and stdout shows the trade-off instead: per set and pool, each run's false
triggers against its lead over every reference (``hazard.replication.tradeoff``); ``--plot`` draws it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hazard.errors import HazardError
from hazard.replication import Bounds, format_replication, format_tradeoff, replicate, tradeoff
from hazard.traces import write_json


def _pair(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise HazardError(f"replicate: --{what} {text!r}: write NAME={'PATH' if what == 'set' else 'SET,SET'}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", required=True, metavar="NAME=PATH",
                    help="a merged closed-loop file of one prompt set (repeat per set)")
    ap.add_argument("--run", nargs="+", required=True,
                    help="the run to replicate, as the paired tables name it (several: a trade-off curve)")
    ap.add_argument("--against", nargs="+", required=True,
                    help="its references (coins:<label> pools a coin's seeds; mix:static is static at the run's KV)")
    ap.add_argument("--base", required=True, help="the base press setting, press@ratio")
    ap.add_argument("--pool", action="append", default=[], metavar="NAME=SET,SET",
                    help="sets whose prompts are pooled (repeat; default: one pool of every set)")
    ap.add_argument("--out", type=Path, help="JSON to write (the table is on stdout)")
    ap.add_argument("--plot", type=Path, help="PNG of each run's lead against its false triggers, per pool")
    b = Bounds()
    ap.add_argument("--acc_tol", type=float, default=b.acc_tol)
    ap.add_argument("--catas_tol", type=float, default=b.catas_tol)
    ap.add_argument("--max_kv", type=float, default=b.max_kv)
    ap.add_argument("--max_false", type=float, default=b.max_false)
    a = ap.parse_args(argv)
    try:
        sets, sources = {}, {}
        for text in a.set:
            name, path = _pair(text, "set")
            if not Path(path).is_file():
                raise HazardError(f"replicate: --set {name}: {path} not found; give a merged closed-loop JSON")
            rec = json.loads(Path(path).read_text())
            sets[name], sources[name] = rec.get("rows", []), {"path": path, "git_sha": rec.get("git_sha"),
                                                             "hardware": rec.get("hardware")}
        pools = dict((n, v.split(",")) for n, v in (_pair(t, "pool") for t in a.pool)) or None
        bounds = Bounds(a.acc_tol, a.catas_tol, a.max_kv, a.max_false)
        results = [replicate(sets, run, a.against, a.base, pools, bounds) for run in a.run]
    except HazardError as e:
        print(e, file=sys.stderr)
        return 2
    curves = {scope: tradeoff(results, scope) for scope in ("sets", "pools")}
    if len(results) == 1:
        print(format_replication(results[0]))
        rec = {"sources": sources, **results[0]}
    else:
        print(format_tradeoff(curves["sets"], "set") + "\n" + format_tradeoff(curves["pools"], "pool"))
        rec = {"sources": sources, "runs": results, "tradeoff": curves}
    if a.out:
        write_json(a.out, rec)
    if a.plot:
        from hazard.report import tradeoff_plot  # here: hazard.report loads matplotlib

        tradeoff_plot(curves["pools"], a.plot, a.max_false)
    return 0


if __name__ == "__main__":
    sys.exit(main())
