"""Named feature sets over the per-token trace signals, so an ablation is one flag.

``config`` features describe the compression setting and where the generation is: the press ratio, the
share of an uncompressed cache the row holds, and the step over the generation budget. No press identity
is used, so leave-one-press-out stays meaningful.

Dynamics (causal, from the trace's own history; the public prior work's logit-only variant used rolling
statistics): ``roll<W>_<stat>:<signal>`` is the mean / std / min / max of a signal over the last W tokens
(fewer at the start), ``drift:<signal>`` its mean over the last 16 tokens less its mean over the first 16
(the change since the verify window), and ``novel<n>_<W>`` the share of the last W tokens whose n-gram of
generated tokens is new in the generation (repetition: it falls before a loop and in a stall). A GRU has
memory and needs them less; a per-token model (gradient boosting) cannot see history without them. The
live controller computes per-step features only, so guards for it use the sets without dynamics.

``cycle<P>`` is log(1 + the span) of the periodic stretch of period <= P that ends at the token and covers two
periods (``hazard.control.cycles.cycle_spans``, what the cycle rule reads; 0 where there is none): a loop as it
starts, in the form a learned model can weigh against the other signals. It reads the token history; live, the
controller tracks each row's last tokens on the device (``hazard.control.cycles.CycleSpans``, the same numbers).

A set that reads the model's state (``state0`` .. ``state63``) reads a wider collection (``state_dim: W``) as
``<set>@W``: ``live_state@896`` is ``live_state`` with ``state0`` .. ``state895``.
"""

from __future__ import annotations

import numpy as np

from hazard.errors import HazardError
from hazard.signals import (
    ARITHMETIC_SIGNALS,
    ATTENTION_SIGNALS,
    EVICTION_SIGNALS,
    LOGIT_SIGNALS,
    PREFILL_SIGNALS,
    REPETITION_SIGNALS,
    VERIFY_SIGNALS,
)
from hazard.signals.state import STATE_FEATURES, is_state_feature, state_names

CONFIG_FEATURES = ("ratio", "kv_fraction", "step_frac")
CYCLE_PERIODS = (1, 2, 4, 8)  # the longest periods the cycle rule may watch (``Trace.cycle``'s columns)
CYCLE_FEATURES = tuple(f"cycle{p}" for p in CYCLE_PERIODS)  # the cycle rule's spans for those periods
DYN_SIGNALS = ("entropy", "top1_prob", "margin", "attn_entropy", "attn_generated_mass", "attn_prompt_mass",
               "lost_mass_ub", "repeat4")
DYNAMICS = (
    *(f"roll{w}_{s}:{sig}" for sig in DYN_SIGNALS for w in (8, 32) for s in ("mean", "std", "min", "max")),
    *(f"drift:{sig}" for sig in DYN_SIGNALS),
    "novel2_32", "novel4_32", "novel8_32",
)
FEATURE_SETS = {
    "logit": (*LOGIT_SIGNALS,),
    "logit_config": (*LOGIT_SIGNALS, *CONFIG_FEATURES),
    "logit_attn": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS),
    "logit_attn_config": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *CONFIG_FEATURES),
    "logit_attn_evict_config": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *CONFIG_FEATURES),
    # what a live guard can compute, repetition included (the campaign's main set)
    "live": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *CONFIG_FEATURES),
    # + the verify window's signals (traces collected with verify_window > 0; constant otherwise)
    "live_verify": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *VERIFY_SIGNALS,
                    *CONFIG_FEATURES),
    # + what the prefill press kept of the question (schema >= 8; constant over a trace: a prior)
    "live_prefill": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *VERIFY_SIGNALS,
                     *PREFILL_SIGNALS, *CONFIG_FEATURES),
    # what a live guard can compute once the controller knows the question's positions: live + the prefill keeps
    "live_question": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *PREFILL_SIGNALS,
                      *CONFIG_FEATURES),
    # + the projected residual stream (schema >= 9, collected with ``state_layer``): the model's own state
    "live_state": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *CONFIG_FEATURES,
                   *STATE_FEATURES),
    "state_config": (*CONFIG_FEATURES, *STATE_FEATURES),  # the state alone (with where the run is)
    # + the cycle rule's spans (the live controller tracks them: CycleSpans): a loop as it starts
    "live_cycle": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *CONFIG_FEATURES,
                   *CYCLE_FEATURES),
    "live_state_cycle": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *CONFIG_FEATURES,
                         *STATE_FEATURES, *CYCLE_FEATURES),
    # + the count of wrong equations in the text so far (schema >= 10, hazard.signals.arithmetic): a wrong
    # answer's claim as it is written; offline until the live controller feeds it token texts
    "live_arith": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS, *ARITHMETIC_SIGNALS,
                   *CONFIG_FEATURES),
    "logit_attn_config_dyn": (*LOGIT_SIGNALS, *ATTENTION_SIGNALS, *EVICTION_SIGNALS, *REPETITION_SIGNALS,
                              *CONFIG_FEATURES, *DYNAMICS),
}


def base_columns(names) -> set[str]:
    """Trace columns the features ``names`` are computed from."""
    cols = set()
    for name in names:
        if name in CONFIG_FEATURES:
            cols |= {"ratio", "kv_tokens", "prompt_len", "max_new_tokens", "n_tokens"}
        elif name.startswith("novel") or name in CYCLE_FEATURES:
            cols.add("tokens")
        elif is_state_feature(name):
            cols.add("state")
        else:
            cols.add(name.split(":")[-1])
    return cols


def _rolling(x: np.ndarray, w: int, stat: str) -> np.ndarray:
    """Causal rolling statistic over the last ``w`` values (fewer at the start)."""
    n = len(x)
    if stat in ("mean", "std"):
        cs = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
        cs2 = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
        hi = np.arange(1, n + 1)
        lo = np.maximum(hi - w, 0)
        cnt = hi - lo
        mean = (cs[hi] - cs[lo]) / cnt
        if stat == "mean":
            return mean
        return np.sqrt(np.maximum((cs2[hi] - cs2[lo]) / cnt - mean ** 2, 0.0))
    fill = np.inf if stat == "min" else -np.inf
    padded = np.concatenate([np.full(w - 1, fill), x])
    win = np.lib.stride_tricks.sliding_window_view(padded, w)
    return win.min(1) if stat == "min" else win.max(1)


def _derived(row: dict, name: str, n: int) -> np.ndarray:
    from hazard.labels.progress import novelty  # labels -> tasks: imported on use

    if name.startswith("novel"):
        k, w = (int(v) for v in name[len("novel"):].split("_"))
        return _rolling(novelty(list(row["tokens"]), k).astype(np.float64), w, "mean")
    head, sig = name.split(":")
    x = np.asarray(row[sig], dtype=np.float64)
    if head == "drift":
        return _rolling(x, 16, "mean") - np.cumsum(x)[np.minimum(np.arange(n), 15)] / np.minimum(np.arange(n) + 1, 16)
    w, stat = head[len("roll"):].split("_")
    return _rolling(x, int(w), stat)


def feature_names(feature_set: str) -> tuple[str, ...]:
    """The features of ``feature_set``: a name in ``FEATURE_SETS``, or ``<set>@W`` for a state set read at width W."""
    base, _, width = feature_set.partition("@")
    if base not in FEATURE_SETS:
        raise HazardError(f"unknown feature set {feature_set!r}; known: {', '.join(FEATURE_SETS)} (a state set "
                          "read wider: <set>@<state_dim>)")
    names = FEATURE_SETS[base]
    if not width:
        return names
    if not width.isdigit() or int(width) < 1 or not any(n in STATE_FEATURES for n in names):
        raise HazardError(f"feature set {feature_set!r}: '@W' takes a positive state width on a set that reads the "
                          "state (live_state, state_config)")
    return tuple(n for n in names if n not in STATE_FEATURES) + state_names(int(width))


def trace_features(row: dict, names: tuple[str, ...]) -> np.ndarray:
    """(n_tokens, len(names)) float32 features of one trace row (a dict from the trace dataset)."""
    n = row["n_tokens"]
    cols = []
    state = cycles = None
    for name in names:
        if name == "ratio":
            col = np.full(n, row["ratio"], dtype=np.float32)
        elif name == "kv_fraction":
            col = np.asarray(row["kv_tokens"], dtype=np.float32) / (row["prompt_len"] + np.arange(n))
        elif name == "step_frac":
            col = np.arange(n, dtype=np.float32) / row["max_new_tokens"]
        elif name in PREFILL_SIGNALS:  # one value per trace, known before the first token
            col = np.full(n, row[name], dtype=np.float32)
        elif is_state_feature(name):
            if state is None:
                state = np.asarray(row["state"], dtype=np.float32)
                width = sum(map(is_state_feature, names))
                if state.ndim != 2 or len(state) != n or not state.shape[1]:
                    raise HazardError(f"trace {row['trace_id']}: no state signal (shape {state.shape}); collect "
                                      "with state_layer set or pick a feature set without state*")
                if state.shape[1] != width:
                    raise HazardError(f"trace {row['trace_id']}: its state is {state.shape[1]} wide, the feature set "
                                      f"reads {width}: name the set <set>@{state.shape[1]}")
            col = state[:, int(name[len("state"):])]
        elif name in CYCLE_FEATURES:
            if cycles is None:
                from hazard.control.cycles import capped_spans  # control -> engine: imported on use

                cycles = np.log1p(capped_spans(row["tokens"], CYCLE_PERIODS)).astype(np.float32)
            col = cycles[:, CYCLE_FEATURES.index(name)]
        elif ":" in name or name.startswith("novel"):
            col = _derived(row, name, n).astype(np.float32)
        else:
            col = np.asarray(row[name], dtype=np.float32)
        if not np.all(np.isfinite(col)):
            raise HazardError(f"trace {row['trace_id']}: feature {name} has NaN/inf (attention signals are NaN "
                              "when collected with probe_layers: []; prefill signals without signals); pick a "
                              "feature set without it or re-collect")
        cols.append(col)
    return np.stack(cols, axis=1).astype(np.float32)
