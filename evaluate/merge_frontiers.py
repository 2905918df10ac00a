"""Several closed-loop JSONs of the same model, prompts and uncompressed run -> one frontier file + PNGs.

    python evaluate/merge_frontiers.py evaluate/results/frontier_q15/closed_loop.json \
        evaluate/results/frontier_q15_ea/closed_loop.json --out evaluate/results/frontier_q15_all.json

Rows are pooled (one ``full`` row per task: every input must have measured the same uncompressed run, or
the merge stops), frontiers recomputed (``hazard.frontiers``), one PNG per task beside ``--out``, and the
matched-KV table printed; rows that kept their per-prompt outcomes are also compared prompt by prompt across
the inputs (``paired``, ``hazard.paired``), as they answered the same prompts, and each run against the
pooled seeds of every coin at its memory (``coins``). Inputs run with different
guards keep them apart: each learned (``hazard``) row's knob then names its guard. A controlled run whose knob
is the same in two inputs (options that were not swept, e.g. ``escalate``, differ between their configs) gets
its input's folder in the knob (``from``), so the two stay apart. Inputs whose answer checks count their readings
differently (``reading_kv``) are refused, as they are not on one memory axis, unless ``--reading_kv`` names the
count to keep: the answer-check rows of the other count are then left out (named on stderr) and every other row
kept, so one headline can pool a file's static and non-learned runs with answer checks of one count. With
``--max_false`` the frontiers are also computed over the runs whose false-trigger rate is within that bound
(``frontiers_max_false``, a PNG per task zoomed on the ``--kv`` range; issue 12 holds its controllers to 0.05), as
the plain frontier would credit a policy for repairs it buys with false triggers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hazard.errors import HazardError
from hazard.frontiers import format_matched, frontiers, task_key
from hazard.paired import coin_comparisons, format_coins, format_paired, paired_comparisons, run_label
from hazard.report import frontier_plot
from hazard.traces import write_json


def reading_count(row: dict) -> str:
    """How an answer-check row counted its readings' K/V; a file from before the count was recorded counted every
    layer's."""
    return row.get("reading_kv", "all_layers")


def keep_reading_count(paths: list[Path], results: list[dict], count: str) -> list[dict]:
    """``results`` with the answer-check rows that count their readings other than ``count`` left out (each named
    on stderr)."""
    kept = []
    for path, res in zip(paths, results):
        rows = []
        for r in res["rows"]:
            if r["policy"] == "answer_check" and reading_count(r) != count:
                where = f"{path.parent.name}: {run_label(r)} on {r['base_press']}@{r['base_ratio']:g}"
                print(f"merge_frontiers: {where} left out (its readings count {reading_count(r)})", file=sys.stderr)
            else:
                rows.append(r)
        kept.append({**res, "rows": rows})
    return kept


def merge_rows(paths: list[Path], results: list[dict]) -> tuple[list[dict], set]:
    """The rows of closed-loop files of one model, each uncompressed and static run once (measured twice, they
    must agree), a controlled run found in two files tagged with its file's folder, a learned row with its guard
    when the files ran several; and the guards."""
    if len({r["model"] for r in results}) != 1:
        raise HazardError(f"merge_frontiers: different models {sorted({r['model'] for r in results})}")
    # an answer check's reading counted as every layer's K/V or as one layer's (hazard.engine.Engine): runs of
    # the two counts are not on one memory axis
    counts = {reading_count(r) for res in results for r in res["rows"] if r["policy"] == "answer_check"}
    if len(counts) > 1:
        raise HazardError(f"merge_frontiers: the inputs count answer readings differently ({', '.join(sorted(counts))}"
                          f" reading_kv); merge runs of one count, or keep one with --reading_kv")
    rows, seen = [], {}
    guards = {res.get("guard", "") for res in results if any(r["policy"] == "hazard" for r in res["rows"])}

    def run_key(r: dict) -> tuple:
        return (task_key(r), r["policy"], r["base_press"], r["base_ratio"], json.dumps(r.get("knob", {})))

    controlled = [[run_key(r) for r in res["rows"] if r["policy"] not in ("full", "static")] for res in results]
    shared = {k for i, keys in enumerate(controlled) for k in keys
              if any(k in other for j, other in enumerate(controlled) if j != i)}
    for path, res in zip(paths, results):
        for r in res["rows"]:
            if r["policy"] == "hazard" and len(guards) > 1:
                r = {**r, "knob": {"guard": Path(res["guard"]).name, **r.get("knob", {})}}
            elif r["policy"] not in ("full", "static") and run_key(r) in shared:
                r = {**r, "knob": {**r.get("knob", {}), "from": path.parent.name}}
            # one full row per task, one row per static setting (a static run of one file may be the base
            # press of another): the same run measured twice must agree, and is kept once
            key = (task_key(r), r["policy"]) + (() if r["policy"] == "full" else
                                                (r["base_press"], r["base_ratio"], json.dumps(r.get("knob", {}))))
            if r["policy"] in ("full", "static") and key in seen:
                kept = rows[seen[key]]
                a, b = kept.get("outcomes"), r.get("outcomes")  # prompt by prompt, where both kept it
                same_prompts = not (a and b) or a["correct"] == b["correct"]
                if (kept["accuracy"], kept["n"]) != (r["accuracy"], r["n"]) or not same_prompts:
                    raise HazardError(f"merge_frontiers: {key}: the inputs measured this run differently")
                if set(b or {}) > set(a or {}):  # a later copy kept more per prompt (each row's KV): keep that one
                    rows[seen[key]] = r
                continue
            seen[key] = len(rows)
            rows.append(r)
    return rows, guards


def merge(paths: list[Path], matched_kv: list[float], max_false: float | None = None,
          reading_kv: str | None = None) -> dict:
    results = [json.loads(p.read_text()) for p in paths]
    if reading_kv is not None:
        results = keep_reading_count(paths, results, reading_kv)
    try:
        rows, guards = merge_rows(paths, results)
    except HazardError as e:
        raise SystemExit(str(e)) from None

    def every(key: str) -> list:
        return sorted({r.get(key, "") for r in results})

    out = {"model": results[0]["model"], "sources": [str(p) for p in paths], "guards": sorted(guards),
           **({"reading_kv": reading_kv} if reading_kv is not None else {}),
           "hardware": every("hardware"),
           "git_sha": every("git_sha"), "max_new_tokens": every("max_new_tokens"), "seed": every("seed"),
           "rows": rows, "frontiers": frontiers(rows, matched_kv), "paired": paired_comparisons(rows),
           "coins": coin_comparisons(rows)}
    if max_false is not None:
        held = [r for r in rows if r.get("false_trigger_rate", 0.0) <= max_false + 1e-9]
        out["frontiers_max_false"] = {"max_false": max_false, "tasks": frontiers(held, matched_kv)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kv", type=float, nargs="+", default=[0.15, 0.25, 0.35])
    ap.add_argument("--max_false", type=float, default=None,
                    help="also the frontiers of the runs with at most this false-trigger rate (issue 12: 0.05)")
    ap.add_argument("--reading_kv", choices=["one_layer", "all_layers"], default=None,
                    help="keep only the answer checks whose readings count this way (default: refuse a mix)")
    a = ap.parse_args()
    res = merge(a.inputs, a.kv, a.max_false, a.reading_kv)
    write_json(a.out, res)
    for key, f in res["frontiers"].items():
        frontier_plot(key, f, a.out.with_name(f"{a.out.stem}_{key}.png"))
    print(format_matched(res["frontiers"]))
    if "frontiers_max_false" in res:
        held = res["frontiers_max_false"]
        print(f"\nheld to false triggers <= {held['max_false']:g} of the healthy rows")
        print(format_matched(held["tasks"]))
        for key, f in held["tasks"].items():  # zoomed on the matched memory range, where the policies differ
            frontier_plot(key, f, a.out.with_name(f"{a.out.stem}_{key}_max_false.png"),
                          xlim=(max(0.0, min(a.kv) - 0.1), max(a.kv) + 0.1),
                          note=f", false triggers <= {held['max_false']:g}")
    if res["paired"]:
        print("\n" + format_paired(res["paired"]))
    if res["coins"]:
        print("\n" + format_coins(res["coins"]))


if __name__ == "__main__":
    main()
