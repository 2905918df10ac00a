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


LEAD = 8  # issue 11's lead time: flagged >= 8 tokens before the onset


def summarize_onsets(ds, delay: int = 4) -> dict:
    """Per catastrophe type (loop, non-termination, wrong answer; ``kind_of``'s order), where its onsets come
    from, and for loops how soon repetition itself shows: how fast a guard *can* notice them.

    A loop of period p repeats its first token p tokens after its onset, so its own cycle makes the
    ``repeat4`` signal (a 4-gram seen before) fire at onset + p + 3: unless the cycle's text already
    occurred earlier, loops with p > ``delay`` - 3 are not seen by repetition within ``delay`` tokens of
    their onset, only forecast. ``repeat4_within`` is the share of
    each type whose ``repeat4`` fires at onset .. onset + ``delay``; ``healthy_repeat4_any`` the share of
    healthy traces where it ever fires (what an alarm on it alone would cost in false alarms). ``onset_ge8``
    (per type, and over every catastrophe with a placed onset) is the share whose onset is at token 8 or later:
    the most any predictor can flag 8 tokens ahead, whatever it reads. ``arith_any`` is the share of each type
    whose text holds a wrong equation (``arith_wrong``, hazard.signals.arithmetic), ``arith_within`` the share
    whose first one is found at onset .. onset + ``delay``, ``healthy_arith_any`` the share of healthy traces
    with one (an alarm on it alone: the false alarms it costs).
    """
    cols = ["catastrophe", "loop", "nonterm", "onset", "onset_source", "loop_period", "repeat4", "arith_wrong"]
    df = ds.select_columns(cols).to_pandas()
    kind = np.where(~df["catastrophe"], "none", np.where(df["loop"], "loop",
                                                          np.where(df["nonterm"], "nonterm", "wrong")))
    first_hit = np.array([_first_at_or_after(r, o) for r, o in zip(df["repeat4"], df["onset"])])
    arith_any = np.array([np.nanmax(np.asarray(a, dtype=np.float64), initial=0.0) > 0 for a in df["arith_wrong"]])
    arith_first = np.array([_first_at_or_after(a, 0) for a in df["arith_wrong"]])
    out: dict = {"delay": delay}
    for k in ("loop", "nonterm", "wrong"):
        g = df[kind == k]
        if not len(g):
            continue
        placed = (g["onset"] >= 0).to_numpy()
        lag = first_hit[kind == k] - g["onset"].to_numpy()
        entry = {"n": int(len(g)), "onset_placed": float(placed.mean()),
                 "onset_sources": {str(s): int(c) for s, c in g["onset_source"].value_counts().items()},
                 "median_onset": float(g["onset"][placed].median()) if placed.any() else None,
                 # the most a guard can flag >= LEAD tokens ahead (of the placed onsets): it reads no token before 0
                 "onset_ge8": float(np.mean(g["onset"][placed] >= LEAD)) if placed.any() else None,
                 "repeat4_within": float(np.mean(placed & (first_hit[kind == k] >= 0) & (lag <= delay))),
                 # a wrong equation in its text: anywhere, and first found at onset .. onset + delay
                 "arith_any": float(np.mean(arith_any[kind == k])),
                 "arith_within": float(np.mean(placed & (arith_first[kind == k] >= g["onset"].to_numpy())
                                               & (arith_first[kind == k] <= g["onset"].to_numpy() + delay)))}
        if k == "loop":
            p = g["loop_period"].to_numpy()
            entry.update({"period_quantiles": {q: float(np.quantile(p, q / 100)) for q in (10, 25, 50, 75, 90)},
                          "period_le_delay": float(np.mean(p <= delay)),
                          "period_le_1": float(np.mean(p <= 1))})
        out[k] = entry
    placed_all = df["onset"][df["catastrophe"] & (df["onset"] >= 0)]
    out["onset_ge8"] = float(np.mean(placed_all >= LEAD)) if len(placed_all) else None
    healthy = [r for r, k in zip(df["repeat4"], kind) if k == "none"]
    out["healthy_repeat4_any"] = float(np.mean([np.any(np.asarray(r) > 0) for r in healthy])) if healthy else None
    out["healthy_arith_any"] = float(np.mean(arith_any[kind == "none"])) if healthy else None
    return out


def _first_at_or_after(signal, onset: int) -> int:
    """First token index >= ``onset`` where ``signal`` > 0; -1 if none (or no onset)."""
    if onset < 0:
        return -1
    hit = np.flatnonzero(np.asarray(signal)[onset:] > 0)
    return int(onset + hit[0]) if len(hit) else -1
