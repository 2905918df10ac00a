"""Named feature sets over the per-token trace signals, so an ablation is one flag.

``config`` features describe the compression setting and where the generation is: the press ratio, the
share of an uncompressed cache the row holds, and the step over the generation budget. No press identity
is used, so leave-one-press-out stays meaningful.
"""

from __future__ import annotations

import numpy as np

from hazard.errors import HazardError
from hazard.signals import ATTENTION_SIGNALS, LOGIT_SIGNALS

CONFIG_FEATURES = ("ratio", "kv_fraction", "step_frac")
FEATURE_SETS = {
    "logit": (*LOGIT_SIGNALS,),
    "logit_config": (*LOGIT_SIGNALS, *CONFIG_FEATURES),
    "logit_attn": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS),
    "logit_attn_config": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *CONFIG_FEATURES),
}


def feature_names(feature_set: str) -> tuple[str, ...]:
    if feature_set not in FEATURE_SETS:
        raise HazardError(f"unknown feature set {feature_set!r}; known: {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def trace_features(row: dict, names: tuple[str, ...]) -> np.ndarray:
    """(n_tokens, len(names)) float32 features of one trace row (a dict from the trace dataset)."""
    n = row["n_tokens"]
    cols = []
    for name in names:
        if name == "ratio":
            col = np.full(n, row["ratio"], dtype=np.float32)
        elif name == "kv_fraction":
            col = np.asarray(row["kv_tokens"], dtype=np.float32) / (row["prompt_len"] + np.arange(n))
        elif name == "step_frac":
            col = np.arange(n, dtype=np.float32) / row["max_new_tokens"]
        else:
            col = np.asarray(row[name], dtype=np.float32)
        if not np.all(np.isfinite(col)):
            raise HazardError(f"trace {row['trace_id']}: feature {name} has NaN/inf (attention signals are NaN "
                              "when collected with probe_layers: []); pick a feature set without it or re-collect")
        cols.append(col)
    return np.stack(cols, axis=1).astype(np.float32)
