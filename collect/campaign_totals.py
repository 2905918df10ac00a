"""Issue 11's campaign over all its holds: traces and generated tokens of every committed collection summary,
and the distinct ones (a collection that repeated another's prompts and settings is counted once).

    python collect/campaign_totals.py        # writes collect/results/campaign_totals.json, prints the totals

Reads collect/results/campaign_*_summary.json (one per collection, written on the device by collect/gpu_campaign.sh
or collect/gpu_cross.sh); the merged records of side-by-side runs (campaign_scale*.json) are not summaries.
"""

from __future__ import annotations

import json
from pathlib import Path

from hazard.traces import write_json

RESULTS = Path(__file__).parent / "results"
# Collections whose every trace repeats another's (same model, prompts and settings), with the reason.
REPEATS = {"campaign_q15_run2": "run 2 re-collected GSM8K problems 1-20 under 18 of run 1's 26 settings "
                                "(campaign_q15: each run started from the first chunk on a fresh machine)"}


def totals(folder: Path = RESULTS) -> dict:
    rows = {}
    for path in sorted(folder.glob("campaign_*_summary.json")):
        s = json.loads(path.read_text())
        rows[path.name.removesuffix("_summary.json")] = {
            "model": s["model"], "n_traces": s["n_traces"], "n_generated_tokens": s["n_generated_tokens"],
            "hardware": s.get("hardware"), "git_sha": s.get("git_sha"), "complete": s.get("complete")}
    distinct = {k: v for k, v in rows.items() if k not in REPEATS}
    return {
        "n_traces": sum(r["n_traces"] for r in rows.values()),
        "n_generated_tokens": sum(r["n_generated_tokens"] for r in rows.values()),
        "distinct_n_traces": sum(r["n_traces"] for r in distinct.values()),
        "distinct_n_generated_tokens": sum(r["n_generated_tokens"] for r in distinct.values()),
        "repeats": {k: v for k, v in REPEATS.items() if k in rows},
        "collections": rows,
    }


if __name__ == "__main__":
    t = totals()
    write_json(RESULTS / "campaign_totals.json", t)
    print(f"{len(t['collections'])} collections: {t['n_traces']:,} traces / {t['n_generated_tokens']:,} generated "
          f"tokens; distinct {t['distinct_n_traces']:,} / {t['distinct_n_generated_tokens']:,}")
