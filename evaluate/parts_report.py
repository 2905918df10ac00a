"""The runs an unfinished frontier evaluation has saved, reported as the finished one would report them.

`evaluate/gpu_frontier.sh` saves every (task, press, policy, knob) run when it ends; a call stopped by its budget
returns them as `<config>.tgz`, which the next hold carries back to go on. Until then this lays the finished runs
out as rows (the keys `closed_loop.json` rows have), their frontiers and the printed table, so what was measured
can be read and cited before the rest is run:

    python evaluate/parts_report.py evaluate/<config>.tgz \
        --out evaluate/results/<config>/partial.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

from hazard.compression import PressSpec
from hazard.evaluate import closed_loop_row, knob_from_label
from hazard.frontiers import frontiers
from hazard.paired import paired_comparisons
from hazard.report import format_closed_loop


def _model(config: dict) -> str:
    return config["model"].get("name") or config["model"]["path"]


def parts_rows(parts: dict[str, dict], config: dict) -> list[dict]:
    """Rows from saved runs keyed by their file name (``<unit>__[<press>__]<policy>[__<knob>]``)."""
    presses = {f"{p['name']}@{p['ratio']:g}": PressSpec(p["name"], p["ratio"]) for p in config["base_presses"]}
    full = {k.split("__")[0]: v for k, v in parts.items() if k.split("__")[1] == "full"}
    rows = []
    for key, rec in parts.items():
        unit, *rest = key.split("__")
        if rest[0] == "full":
            continue
        static = parts.get(f"{unit}__{rest[0]}__static")
        if static is None or unit not in full:
            continue  # no reference to read it against yet
        name, knob = rest[1], knob_from_label("__".join(rest[2:]))
        task, _, fmt = unit.partition(".")
        for policy, run in ([("full", full[unit])] if name == "static" else []) + [(name, rec)]:
            rows.append(closed_loop_row(task, fmt or "default", _model(config), presses[rest[0]], policy,
                                        knob if policy == name else {}, run, full[unit], static))
    return sorted(rows, key=lambda r: (r["task"], r["format"], r["policy"] not in ("full", "static"), r["policy"],
                                       json.dumps(r["knob"], sort_keys=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tgz", help="a gpu_frontier.sh output, <config>.tgz, with closed_loop.parts/")
    ap.add_argument("--out", required=True, help="where the partial report goes (JSON)")
    ap.add_argument("--hardware", default="not recorded in the parts", help="the machine the runs ran on")
    ap.add_argument("--git_sha", default="not recorded in the parts", help="the commit the runs ran at")
    args = ap.parse_args(argv)
    parts, config = {}, None
    try:
        with tarfile.open(args.tgz) as tar:
            for m in tar.getmembers():
                if not (m.isfile() and "closed_loop.parts/" in m.name and m.name.endswith(".json")):
                    continue
                rel = m.name.split("closed_loop.parts/", 1)[1]
                data = json.load(tar.extractfile(m))
                if rel == "config.json":
                    config = data
                elif "__" in rel:
                    parts[rel[: -len(".json")]] = data
    except (OSError, tarfile.TarError) as e:
        print(f"parts_report: cannot read {args.tgz}: {e}", file=sys.stderr)
        return 2
    if config is None or not parts:
        print(f"parts_report: {args.tgz} holds no closed_loop.parts/ with a config.json and runs", file=sys.stderr)
        return 2
    rows = parts_rows(parts, config)
    result = {"unfinished": True, "source": args.tgz, "model": _model(config),
              "hardware": args.hardware, "git_sha": args.git_sha, "config": config, "rows": rows,
              "frontiers": frontiers(rows, config.get("frontier_kv", [0.15, 0.25, 0.35])),
              "paired": paired_comparisons(rows, config.get("paired_kv_tol", 0.02))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(format_closed_loop(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
