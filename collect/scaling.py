"""Issue 13's scaling record: one collection made by one process and the same made by torchrun on two
GPUs, and one training report on one device and on two (DDP), -> ``collect/results/scaling.json``.

    python collect/scaling.py --one /tmp/traces/scale1 --two /tmp/traces/scale2 \
        --train-one /tmp/hz/train/results/scaling_1 --train-two /tmp/hz/train/results/scaling_2 \
        --out collect/results/scaling.json

Rows are matched by ``trace_id``: the same prompts and settings must be in both (else it stops); their
generated tokens are compared (equal, or the share of rows that differ: bf16 decoding in other batch
arrangements is not bit-stable). Throughput is each collection's ``generated_tokens_per_s`` (its
summary); training time is each report's main fit (``metrics.json`` ``fit_seconds``, epochs from its CSV log).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pyarrow.parquet as pq

from hazard.traces import write_json


def _rows(folder: Path) -> dict[str, list[int]]:
    out = {}
    for shard in sorted((folder / "data").glob("*.parquet")):
        for r in pq.read_table(shard, columns=["trace_id", "tokens"]).to_pylist():
            out[r["trace_id"]] = r["tokens"]
    return out


def compare_collections(one: Path, two: Path) -> dict:
    """Same traces in both, their tokens compared, and each collection's throughput."""
    a, b = _rows(one), _rows(two)
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))
        raise SystemExit(f"scaling: the collections hold different traces ({len(missing)} differ, e.g. {missing[0]})")
    differ = [k for k in a if a[k] != b[k]]
    same_prefix = [next((i for i, (x, y) in enumerate(zip(a[k], b[k])) if x != y), min(len(a[k]), len(b[k])))
                   for k in differ]
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (one, two))
    return {"rows_compared": len(a), "rows_identical": len(a) - len(differ),
            "rows_differing": len(differ), "median_first_difference": sorted(same_prefix)[len(same_prefix) // 2]
            if same_prefix else None,
            "one_gpu_tokens_per_s": sa["generated_tokens_per_s"], "two_gpu_tokens_per_s": sb["generated_tokens_per_s"],
            "world_sizes": [sa.get("world_size", 1), sb.get("world_size", 1)],
            "speedup": sb["generated_tokens_per_s"] / sa["generated_tokens_per_s"],
            "n_generated_tokens": [sa["n_generated_tokens"], sb["n_generated_tokens"]],
            "hardware": sa["hardware"], "git_sha": [sa["git_sha"], sb["git_sha"]]}


def training_entry(results: Path) -> dict:
    """A report's main fit: seconds, epochs, its test metrics."""
    m = json.loads((results / "metrics.json").read_text())
    log = Path(m["config"]["report"]["run_dir"]) / "main"
    epochs = 0
    for f in log.glob("version_*/metrics.csv"):
        epochs = max([epochs, *(int(r["epoch"]) + 1 for r in csv.DictReader(open(f)))])
    test, secs = m["model"]["test"], m.get("fit_seconds")
    return {"devices": m["config"].get("trainer", {}).get("devices", 1), "fit_seconds": secs, "epochs": epochs,
            "seconds_per_epoch": secs / epochs if epochs and secs else None,
            "test_pre_onset_auroc": test["pre_onset_auroc"], "test_auroc": test["auroc"],
            "hardware": m.get("hardware")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", type=Path, required=True)
    ap.add_argument("--two", type=Path, required=True)
    ap.add_argument("--train-one", type=Path)
    ap.add_argument("--train-two", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    res = {"collection": compare_collections(a.one, a.two)}
    if a.train_one and a.train_two:
        t1, t2 = training_entry(a.train_one), training_entry(a.train_two)
        res["training"] = {"one": t1, "two": t2, "speedup_total": t1["fit_seconds"] / t2["fit_seconds"],
                           "speedup_per_epoch": (t1["seconds_per_epoch"] / t2["seconds_per_epoch"]
                                                 if t1["seconds_per_epoch"] and t2["seconds_per_epoch"] else None)}
    write_json(a.out, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
