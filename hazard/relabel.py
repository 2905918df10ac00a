"""Relabel a stored collection with the current detectors and onset rules, without re-collecting.

The per-token signals are what a GPU run costs; the outcome, detector and onset columns follow from the
generated tokens and text alone (``hazard.collect.outcome``). When those rules change (a schema bump that
touches labels only, e.g. v7's off-task onsets), ``hazard relabel`` rewrites each shard's label columns in
place from its own tokens and text and the uncompressed twin's, keeps every signal column as it is, and
stamps the manifest with the current schema version and a ``relabelled`` record; the collection's
``summary.json`` gets the rates and onset counts of the new labels.

    hazard relabel --traces .traces/nonterm_q15 --tokenizer ~/.cache/hazard/converted/qwen2.5-coder-0.5b-... \\
        [--task_paths '{gsm8k: ../shared/data/gsm8k}'] [--summary_out collect/results/<name>_summary.json]

Each shard is rewritten atomically and the manifest last, so a killed relabel leaves a readable mix of old
and new shards that the next call finishes (relabelling a relabelled shard changes nothing). The prompts are
rebuilt from the manifest's task config (``task_paths`` points a task at its data on this machine).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq

from hazard import SCHEMA_VERSION
from hazard.errors import HazardError
from hazard.signals import token_pieces
from hazard.summary import summarize, summarize_formats, summarize_onsets
from hazard.traces import FEATURES, load_traces, shard_paths, write_json, write_shard


@dataclass
class RelabelConfig:
    """Parameters
    ----------
    traces : str
        A collection folder written by ``hazard collect`` (any schema whose signal columns are today's).
    tokenizer : str
        The collection model's tokenizer folder (it places onsets in the text: token of a character).
    task_paths : dict
        Task name -> data folder on this machine, replacing the path in the manifest's task options.
    summary_out : str, optional
        Also write the refreshed collection summary here (as ``hazard collect``'s ``summary_out``).
    """

    traces: str = ""
    tokenizer: str = ""
    task_paths: dict = field(default_factory=dict)
    summary_out: str | None = None


def manifest_prompts(manifest: dict, task_paths: dict) -> dict:
    """(task, format, prompt id) -> Prompt, rebuilt from the collection's task config."""
    from hazard.collect import TaskSpec, format_of
    from hazard.tasks import build_task

    out = {}
    for t in manifest["config"]["tasks"]:
        spec = TaskSpec(**t)
        for opts in spec.expand():
            if spec.name in task_paths:
                opts = {**opts, "path": str(task_paths[spec.name])}
            task = build_task(spec.name, **opts)
            for p in task.prompts():
                out[(spec.name, format_of(task), p.id)] = p
    return out


def _key(row: dict) -> tuple:
    return row["model"], row["task"], row["format"], row["prompt_id"], row["seed"]


def relabel(cfg: RelabelConfig) -> dict:
    """Rewrite every shard's label columns with the current rules; returns counts by onset source."""
    from transformers import AutoTokenizer

    from hazard.collect import _git_sha, decode_prefix, outcome  # collect loads torch and kvpress: on use

    root = Path(cfg.traces)
    path = root / "manifest.json"
    if not path.is_file():
        raise HazardError(f"--traces: {root} has no manifest.json; is it a folder written by `hazard collect`?")
    if not cfg.tokenizer or not Path(cfg.tokenizer).expanduser().is_dir():
        raise HazardError(f"--tokenizer: {cfg.tokenizer!r} is not a folder; give the collection model's folder")
    manifest = json.loads(path.read_text())
    files = shard_paths(root)
    if not files:
        raise HazardError(f"{root}: no shards in {root / 'data'}")
    tok = AutoTokenizer.from_pretrained(str(Path(cfg.tokenizer).expanduser()))
    try:
        prompts = manifest_prompts(manifest, cfg.task_paths)
    except (OSError, HazardError) as e:
        raise HazardError(f"{root}: cannot rebuild the prompts from the manifest ({e}); point --task_paths at "
                          "the tasks' data on this machine") from None
    twin_cols = ["model", "task", "format", "prompt_id", "seed", "press", "tokens", "text", "finished", "correct",
                 "n_tokens"]
    twins = {}
    for f in files:  # the uncompressed runs first: every compressed row is labelled against its twin
        names = pq.read_schema(f).names
        for r in pq.read_table(f, columns=[c for c in twin_cols if c in names]).to_pylist():
            if r["press"] == "none":
                twins[_key(r)] = r
    counts: dict[str, int] = {}
    pieces: dict[int, str] = {}  # token id -> its text (the text signals read it)
    t0 = time.time()
    for f in files:
        out = []
        for r in pq.read_table(f).to_pylist():
            p = prompts.get((r["task"], r["format"], r["prompt_id"]))
            if p is None:
                raise HazardError(f"{f}: prompt {r['prompt_id']} ({r['task']}, {r['format']}) is not in the "
                                  "manifest's tasks; check --task_paths")
            ref = None if r["press"] == "none" else twins.get(_key(r))
            if r["press"] != "none" and ref is None:
                raise HazardError(f"{f}: no uncompressed twin for {r['trace_id']}; relabel the whole collection")
            new = outcome(p, list(r["tokens"]), r["finished"], r["text"], ref,
                          partial(decode_prefix, tok, list(r["tokens"])), token_pieces(tok, r["tokens"], pieces))
            row = {k: v for k, v in r.items() if k in FEATURES}
            row.update(new, schema_version=SCHEMA_VERSION)
            row.setdefault("state", [])  # collected before the state signal (schema < 9): none recorded
            missing = set(FEATURES) - set(row)  # what only the collection writes (the signals, the run)
            if missing:
                raise HazardError(f"{f}: lacks {sorted(missing)[:4]}: its signals are not today's; re-collect it")
            out.append(row)
            if row["catastrophe"]:
                counts[row["onset_source"]] = counts.get(row["onset_source"], 0) + 1
        write_shard(out, f)
    first = manifest.get("relabelled", {}).get("from_schema", manifest.get("schema_version"))
    manifest["relabelled"] = {"from_schema": first, "git_sha": _git_sha(), "seconds": round(time.time() - t0, 1)}
    manifest["schema_version"] = SCHEMA_VERSION
    write_json(path, manifest)
    # The summary's label-derived parts follow the new labels (its throughput figures stay the collection's).
    ds = load_traces(root)
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update(configs=summarize(ds), formats=summarize_formats(ds), onsets=summarize_onsets(ds),
                   relabelled=manifest["relabelled"])
    write_json(summary_path, summary)
    if cfg.summary_out:
        write_json(Path(cfg.summary_out), summary)
    return {"shards": len(files), "catastrophes_by_source": counts}

