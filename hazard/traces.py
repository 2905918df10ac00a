"""The trace store: HF ``datasets`` Parquet shards with explicit Features and a schema version.

Layout of a collection folder::

    manifest.json            schema version, the collect config, package versions, git sha
    data/<task>-<chunk>-<setting>.parquet   one shard per (task, prompt chunk, press setting)
    summary.json             per (task, press, ratio) rates, written when the collection is complete

A shard is written to ``<name>.tmp`` and renamed, so a killed job never leaves a readable partial shard,
and a re-run skips shards that exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq

from hazard import SCHEMA_VERSION
from hazard.errors import HazardError
from hazard.labels import HORIZONS
from hazard.signals import ARITHMETIC_SIGNALS, PREFILL_SIGNALS, SIGNALS

_seq = datasets.Sequence
FEATURES = datasets.Features({
    "schema_version": datasets.Value("int32"),
    "trace_id": datasets.Value("string"),
    "model": datasets.Value("string"),
    "task": datasets.Value("string"),
    "format": datasets.Value("string"),
    "prompt_id": datasets.Value("string"),
    "press": datasets.Value("string"),
    "ratio": datasets.Value("float32"),
    "seed": datasets.Value("int64"),
    "max_new_tokens": datasets.Value("int32"),
    "prompt_len": datasets.Value("int32"),
    "kv_tokens_prefill": datasets.Value("int32"),
    **{name: datasets.Value("float32") for name in PREFILL_SIGNALS},
    "bytes_per_token": datasets.Value("int64"),
    "n_tokens": datasets.Value("int32"),
    "tokens": _seq(datasets.Value("int32")),
    "text": datasets.Value("string"),
    "finished": datasets.Value("bool"),
    "gold": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "correct": datasets.Value("bool"),
    "ref_correct": datasets.Value("bool"),
    "loop": datasets.Value("bool"),
    "loop_onset": datasets.Value("int32"),
    "loop_period": datasets.Value("int32"),
    "nonterm": datasets.Value("bool"),
    "amnesia": datasets.Value("bool"),
    "divergence": datasets.Value("int32"),
    "stall_onset": datasets.Value("int32"),
    "answered_at": datasets.Value("int32"),
    "claim_onset": datasets.Value("int32"),
    "off_topic_at": datasets.Value("int32"),
    "off_task_at": datasets.Value("int32"),
    "format_only": datasets.Value("bool"),
    "cut_after_answer": datasets.Value("bool"),
    "catastrophe": datasets.Value("bool"),
    "onset": datasets.Value("int32"),
    "onset_source": datasets.Value("string"),
    **{name: _seq(datasets.Value("float32")) for name in SIGNALS},
    # from the generated text on the host (hazard.signals.arithmetic), NaN where no token texts were given
    **{name: _seq(datasets.Value("float32")) for name in ARITHMETIC_SIGNALS},
    "state": _seq(_seq(datasets.Value("float16"))),  # (n_tokens, STATE_DIM), or empty: hazard.signals.state
    "kv_tokens": _seq(datasets.Value("int32")),
    "kv_bytes": _seq(datasets.Value("int64")),
    **{f"label_h{k}": _seq(datasets.Value("int8")) for k in HORIZONS},
    "post_onset": _seq(datasets.Value("bool")),
})
PER_TOKEN = [n for n, f in FEATURES.items() if isinstance(f, (datasets.Sequence, datasets.List))]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename)."""
    _atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_shard(rows: list[dict], path: Path) -> None:
    """Validate ``rows`` against FEATURES and write them as one Parquet shard, atomically."""
    path = Path(path)
    for r in rows:
        for name in SIGNALS:
            if not np.all(np.isfinite(r[name])) and not name.startswith("attn_"):
                raise HazardError(f"trace {r['trace_id']}: signal {name} has NaN/inf; refusing to write it")
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(tmp))
    os.replace(tmp, path)


def shard_paths(root: Path) -> list[Path]:
    return sorted((Path(root) / "data").glob("*.parquet"))


def read_manifest(root: Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise HazardError(f"{root}: no manifest.json; is this a folder written by `hazard collect`?")
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise HazardError(f"{root}: trace schema version {manifest.get('schema_version')} but this hazard reads "
                          f"version {SCHEMA_VERSION}; `hazard relabel` them (labels and text signals), re-collect them "
                          "or install the matching hazard")
    return manifest


def load_traces(root: str | os.PathLike) -> datasets.Dataset:
    """Open a collection folder as one ``datasets.Dataset`` (all shards, schema version checked)."""
    root = Path(root)
    if not root.is_dir():
        raise HazardError(f"traces: {root} does not exist")
    read_manifest(root)
    files = shard_paths(root)
    if not files:
        raise HazardError(f"{root}: no finished shards in {root / 'data'}")
    for f in files:
        if set(pq.read_schema(f).names) != set(FEATURES):
            raise HazardError(f"{f}: columns do not match trace schema version {SCHEMA_VERSION}; re-collect it")
    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", features=FEATURES)
    bad = set(ds.unique("schema_version")) - {SCHEMA_VERSION}
    if bad:
        raise HazardError(f"{root}: rows with schema version {sorted(bad)}; this hazard reads {SCHEMA_VERSION}")
    return ds
