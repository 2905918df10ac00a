"""Per (task, press, ratio) rates over a trace dataset: what compression did to the model."""

from __future__ import annotations

import numpy as np


def summarize(ds) -> list[dict]:
    """One dict per (task, press, ratio), sorted, with rates over its traces."""
    cols = ["task", "press", "ratio", "correct", "loop", "nonterm", "amnesia", "catastrophe", "n_tokens",
            "prompt_len", "kv_tokens_prefill"]
    df = ds.select_columns(cols).to_pandas()
    ent = ds.select_columns(["entropy"])["entropy"]
    kvt = ds.select_columns(["kv_tokens"])["kv_tokens"]
    df["max_entropy"] = [float(np.max(e)) for e in ent]
    # Held KV over what an uncompressed cache would hold at the same step, averaged over the generation.
    df["kv_fraction"] = [float(np.mean(np.asarray(k) / (p + np.arange(len(k)))))
                         for k, p in zip(kvt, df["prompt_len"])]
    rows = []
    for (task, press, ratio), g in df.groupby(["task", "press", "ratio"], sort=True):
        rows.append({
            "task": task, "press": press, "ratio": round(float(ratio), 4), "n": int(len(g)),
            "accuracy": float(g["correct"].mean()),
            "loop_rate": float(g["loop"].mean()),
            "nonterm_rate": float(g["nonterm"].mean()),
            "amnesia_rate": float(g["amnesia"].mean()),
            "catastrophe_rate": float(g["catastrophe"].mean()),
            "mean_tokens": float(g["n_tokens"].mean()),
            "max_entropy": float(g["max_entropy"].max()),
            "mean_max_entropy": float(g["max_entropy"].mean()),
            "kept_fraction": float((g["kv_tokens_prefill"] / g["prompt_len"]).mean()),
            "mean_kv_fraction": float(g["kv_fraction"].mean()),
        })
    return rows


def summarize_formats(ds) -> list[dict]:
    """One dict per (task, prompt format): uncompressed accuracy, and over its compressed traces the
    catastrophe, loop and non-termination rates (how much the prompt format moves the hazard)."""
    df = ds.select_columns(["task", "format", "press", "correct", "loop", "nonterm", "catastrophe"]).to_pandas()
    rows = []
    for (task, fmt), g in df.groupby(["task", "format"], sort=True):
        ref, comp = g[g["press"] == "none"], g[g["press"] != "none"]
        rows.append({
            "task": task, "format": fmt, "n": int(len(g)),
            "accuracy_uncompressed": float(ref["correct"].mean()) if len(ref) else None,
            "catastrophe_rate_compressed": float(comp["catastrophe"].mean()) if len(comp) else None,
            "loop_rate_compressed": float(comp["loop"].mean()) if len(comp) else None,
            "nonterm_rate_compressed": float(comp["nonterm"].mean()) if len(comp) else None,
        })
    return rows
