"""One record for campaign parts collected side by side (``collect/gpu_cross.sh``): each part's size and rate,
the totals, and the aggregate rate of the processes together over the wall time they ran.

    python collect/merge_parts.py --wall /tmp/hz/campaign_scale_wall.txt --out campaign_scale.json \
        /tmp/hz/campaign_q15_p3_summary.json /tmp/hz/campaign_q05_p3_summary.json ...

``--wall`` holds one line "start end" (seconds) per collecting call, ``#`` comments allowed; their durations
add up (a part resumed in a later call is counted once per call it ran in). A part's own rate
(``shard_generated_tokens_per_s``) is its tokens over its own generation time while sharing the GPU, not the
engine's rate alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hazard.errors import HazardError
from hazard.traces import write_json

PART_KEYS = ("model", "complete", "chunks_left", "n_traces", "n_generated_tokens", "shard_generated_tokens_per_s",
             "git_sha", "hardware")


def wall_seconds(path: Path) -> float:
    """Summed durations of the "start end" lines in ``path`` (``#`` starts a comment)."""
    total = 0.0
    for i, line in enumerate(path.read_text().split("\n"), 1):
        line = line.split("#")[0]
        if not line.strip():
            continue
        try:
            start, end = (float(x) for x in line.split())
        except ValueError:
            raise HazardError(f"{path}:{i}: expected 'start end' in seconds, got {line!r}") from None
        total += max(end - start, 0.0)
    return total


def merge(summaries: dict[str, dict], wall_s: float) -> dict:
    """The merged record of ``summaries`` (name -> a collection's summary.json) collected in ``wall_s`` seconds."""
    if not summaries:
        raise HazardError("merge_parts: no part summaries given")
    parts = {name: {k: s.get(k) for k in PART_KEYS} for name, s in summaries.items()}
    traces = sum(p["n_traces"] for p in parts.values())
    tokens = sum(p["n_generated_tokens"] for p in parts.values())
    by_model: dict[str, dict] = {}
    for p in parts.values():
        m = by_model.setdefault(p["model"], {"n_traces": 0, "n_generated_tokens": 0, "parts": 0})
        m["n_traces"] += p["n_traces"]
        m["n_generated_tokens"] += p["n_generated_tokens"]
        m["parts"] += 1
    settings = sorted({f"{c['press']}@{c['ratio']}" for s in summaries.values() for c in s.get("configs", [])})
    formats = sorted({f"{f['task']}:{f['format']}" for s in summaries.values() for f in s.get("formats", [])})
    return {
        "description": "Campaign parts collected side by side on one GPU (collect/gpu_cross.sh), one process each.",
        "complete": all(p["complete"] for p in parts.values()),
        "n_traces": traces, "n_generated_tokens": tokens, "wall_seconds": round(wall_s, 1),
        "aggregate_generated_tokens_per_s": round(tokens / wall_s, 1) if wall_s > 0 else None,
        # the parts' own rates added up: what the processes reached while generating, lost or idle time aside
        "summed_part_generated_tokens_per_s": round(sum(p["shard_generated_tokens_per_s"] or 0.0
                                                        for p in parts.values()), 1),
        "processes": len(parts), "by_model": by_model, "n_settings": len(settings), "settings": settings,
        "n_formats": len(formats), "git_shas": sorted({p["git_sha"] for p in parts.values() if p["git_sha"]}),
        "hardware": sorted({p["hardware"] for p in parts.values() if p["hardware"]}),
        "parts": parts,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="+", type=Path, help="each part's summary.json")
    ap.add_argument("--wall", type=Path, required=True, help="file of 'start end' lines, one per collecting call")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        missing = [str(p) for p in a.summaries if not p.is_file()]
        if missing:
            raise HazardError(f"merge_parts: no summary at {', '.join(missing)} (did that part write one?)")
        summaries = {p.name.removesuffix("_summary.json").removesuffix(".json"): json.loads(p.read_text())
                     for p in a.summaries}
        record = merge(summaries, wall_seconds(a.wall))
    except HazardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(a.out, record)
    print(f"{len(summaries)} parts: {record['n_traces']:,} traces, {record['n_generated_tokens']:,} generated tokens "
          f"in {record['wall_seconds']:.0f} s wall: {record['aggregate_generated_tokens_per_s']} tokens/s together")
    return 0


if __name__ == "__main__":
    sys.exit(main())
