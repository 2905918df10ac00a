"""One evaluation function for every model and baseline.

Token level: AUROC/AUPRC over all tokens, and over pre-onset tokens only (tokens before the onset of a
catastrophic trace, positives within the horizon, plus every token of healthy traces). Trace level, with a
threshold chosen on validation for a target false-alarm rate and applied unchanged to test: the share of
catastrophes flagged at least m tokens before onset, lead times, the share flagged at most d tokens *after*
the onset (fast detection: with rollback, a late alarm still saves the run), the false-alarm rate on
healthy traces, alarms per 1k tokens, calibration (Brier, ECE) for probabilistic scores, and the
detection figures per catastrophe type (loop / nonterm / wrong).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from hazard import setting_label
from hazard.errors import HazardError
from hazard.predictor.data import Trace

LEADS = (1, 8, 16, 32)
# up to 32 tokens after the onset: a loop is recognisable only once it has cycled, and rollback still saves
# a run flagged that late (a guard trained with data.detect_window 32 learns what a failure in progress looks like)
DELAYS = (0, 2, 4, 8, 16, 32)


def _auc(y: np.ndarray, s: np.ndarray) -> tuple[float | None, float | None]:
    if y.min() == y.max():
        return None, None
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(total)


THRESHOLD_RULES = ("quantile", "conformal")


class FalseAlarmTarget(float):
    """The share of healthy traces allowed to raise an alarm, with the rule that holds a threshold to it on
    validation traces (``rule``). A float, so every function that passes the rate on passes the rule too.

    With n healthy validation traces exchangeable with the test's, a threshold that lets the k highest of
    their maxima alarm lets a new healthy trace alarm with probability (k + 1) / (n + 1) (its maximum is as
    likely to fall in any of the n + 1 gaps). ``quantile`` allows k = floor(rate * n): at the validation
    rate, but above it on test: at n = 30, 2/31 = 6.5% for a 5% rate. ``conformal`` allows
    k = floor(rate * (n + 1)) - 1, so that (k + 1) / (n + 1) <= rate: at n = 30, 1/31 = 3.2%. Under
    19 healthy traces (at 5%) no k meets it; the threshold then sits above their maximum, 1 / (n + 1).
    """

    rule: str

    def __new__(cls, rate: float, rule: str = "quantile") -> FalseAlarmTarget:
        if rule not in THRESHOLD_RULES:
            raise HazardError(f"report.threshold_rule {rule!r}: use one of {list(THRESHOLD_RULES)}")
        self = super().__new__(cls, rate)
        self.rule = rule
        return self


def choose_threshold(traces: list[Trace], scores: list[np.ndarray], target_far: float = 0.05) -> float:
    """Lowest threshold at which at most ``target_far`` of healthy traces raise any alarm (validation only):
    on the validation traces, or, with a ``FalseAlarmTarget`` of rule ``conformal``, on new ones in
    expectation (see there)."""
    maxes = np.sort([s[t.valid].max() for t, s in zip(traces, scores) if _holds_threshold(t)])[::-1]
    if len(maxes) == 0:
        return 0.5
    k = alarms_allowed(len(maxes), target_far)
    return float(np.nextafter(maxes[k], np.inf)) if k < len(maxes) else float(maxes[-1])


def _holds_threshold(t: Trace) -> bool:
    """A healthy trace with a token to score: the traces a threshold is held to."""
    return not t.catastrophe and t.valid.any()


def alarms_allowed(n: int, target_far: float) -> int:
    """How many of ``n`` healthy validation traces ``choose_threshold`` lets alarm under ``target_far``'s rule."""
    if getattr(target_far, "rule", "quantile") == "conformal":
        return max(int(np.floor(target_far * (n + 1))) - 1, 0)
    return int(np.floor(target_far * n))


def expected_false_alarm_rate(n: int, target_far: float) -> float:
    """The chance that a new healthy trace alarms at the threshold ``choose_threshold`` picks on ``n`` healthy
    validation traces, the new one exchangeable with them (their maxima distinct): (k + 1) / (n + 1)."""
    return min((alarms_allowed(n, target_far) + 1) / (n + 1), 1.0)


def setting(t: Trace) -> str:
    """The press setting a trace ran under, as ``by_press`` names it (``none``, ``snapkv@0.875``)."""
    return setting_label(t.press, t.ratio)


def _groups(items: list, key) -> dict[str, list[int]]:
    """Indices of ``items`` by ``key(item)``, keys in sorted order."""
    out: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        out.setdefault(key(item), []).append(i)
    return dict(sorted(out.items()))


def choose_thresholds(traces: list[Trace], scores: list[np.ndarray], target_far: float = 0.05) -> dict[str, float]:
    """``choose_threshold`` within each press setting (validation only). A controller knows the press it
    runs, so it can hold each setting to the target: one pooled threshold lets the setting that fails most
    take the whole false-alarm budget and flag its healthy traces wholesale."""
    return {g: choose_threshold([traces[i] for i in sel], [scores[i] for i in sel], target_far)
            for g, sel in _groups(traces, setting).items()}


def false_alarm_budget(val: list[Trace], test: list[Trace], target_far: float) -> dict:
    """What per-setting thresholds chosen on ``val`` promise on new healthy traces: per setting the validation
    part's healthy traces (``val_healthy``, those ``choose_threshold`` reads) and the expected false-alarm rate
    (``expected_false_alarm_rate``); pooled over the settings weighted by ``test``'s healthy traces
    (``test_healthy``, ``expected_pooled``); ``over_target``: the settings whose expectation exceeds the target (too few
    healthy validation traces for the rule: under 19 at 5% for ``conformal``)."""
    def healthy(traces: list[Trace]) -> dict[str, int]:
        return {g: sum(1 for i in sel if _holds_threshold(traces[i]))
                for g, sel in _groups(traces, setting).items()}

    n_val, n_test = healthy(val), healthy(test)
    rate = {g: round(expected_false_alarm_rate(n, target_far), 4) for g, n in n_val.items() if n}
    weight = sum(n_test.get(g, 0) for g in rate)
    pooled = sum(r * n_test.get(g, 0) for g, r in rate.items()) / weight if weight else None
    return {"rule": getattr(target_far, "rule", "quantile"), "val_healthy": n_val, "test_healthy": n_test,
            "expected_false_alarm_rate": rate, "expected_pooled": None if pooled is None else round(pooled, 4),
            "over_target": sorted(g for g, r in rate.items() if r > target_far + 1e-12)}


TASK_KEYS = ("n_traces", "n_catastrophes", "auroc", "pre_onset_auroc", "detect_rate_lead8", "lead_reachable8",
             "detect_rate_within4", "false_alarm_rate")


def evaluate(traces: list[Trace], scores: list[np.ndarray], horizon: int, threshold: float | dict[str, float],
             probabilistic: bool = True, leads=LEADS, delays=DELAYS, by_task: bool = True,
             by_press: bool = True) -> dict:
    """Metrics of per-token ``scores`` (one array per trace) for labels at column ``horizon``; with several
    tasks among the traces, also the main figures per task (``by_task``, same threshold): a pooled AUROC
    can come from tasks that differ in how often they fail rather than from within-task ranking. Likewise
    per press setting (``by_press``, same threshold, with detection per catastrophe type): a pooled
    false-alarm rate of 5% can hide a guard that flags most traces of the setting that fails most (healthy
    and failing alike) and none of the others. ``threshold``: one for every trace, or one per press setting
    (``choose_thresholds``; a setting it does not name is a HazardError)."""
    if isinstance(threshold, dict):
        missing = sorted({setting(t) for t in traces} - set(threshold))
        if missing:
            raise HazardError(f"no threshold for press setting(s) {missing}: choose them on validation traces "
                              "of the same settings")
        thr = [threshold[setting(t)] for t in traces]
    else:
        thr = [threshold] * len(traces)
    y_all = np.concatenate([t.y[:, horizon] for t in traces])
    s_all = np.concatenate(scores)
    y_pre = np.concatenate([t.y[t.valid, horizon] for t in traces])
    s_pre = np.concatenate([s[t.valid] for t, s in zip(traces, scores)])
    auroc, auprc = _auc(y_all, s_all)
    pre_auroc, pre_auprc = _auc(y_pre, s_pre)
    out = {"n_traces": len(traces), "n_catastrophes": int(sum(t.catastrophe for t in traces)),
           "auroc": auroc, "auprc": auprc, "pre_onset_auroc": pre_auroc, "pre_onset_auprc": pre_auprc,
           "threshold": threshold}
    first_alarm, healthy_alarm, repeats, alarm_tokens, tokens = [], [], [], 0, 0
    for t, s, th in zip(traces, scores, thr):
        alarms = (s >= th) & t.valid
        alarm_tokens += int(alarms.sum())
        tokens += int(t.valid.sum())
        hit = np.flatnonzero(alarms)
        if t.catastrophe:
            # pre-onset tokens are all valid, so the first alarm at any token is the first valid one when
            # there is one; after the onset it is how late the guard notices
            anytime = np.flatnonzero(s >= th)
            first_alarm.append((t.onset, int(anytime[0]) if len(anytime) else None, t.kind, t.source))
            if t.kind == "loop" and t.first_repeat >= 0:  # the same alarm, counted from the first repeat
                repeats.append((t.first_repeat, first_alarm[-1][1]))
        else:
            healthy_alarm.append(len(hit) > 0)
    out.update(detection(first_alarm, leads, delays))
    leads_seen = [onset - a for onset, a, *_ in first_alarm if a is not None and a <= onset]
    out["lead_times"] = leads_seen
    out["median_lead_time"] = float(np.median(leads_seen)) if leads_seen else None
    out["by_type"] = _grouped(first_alarm, lambda f: f[2], leads, delays)
    # Per type and onset rule ("nonterm/stall"): a type's detection rate mixes onsets a token-level signal
    # can see (a loop's first cycle) with ones it cannot (token 0 of an off-topic answer).
    out["by_source"] = _grouped(first_alarm, lambda f: f"{f[2]}/{f[3]}", leads, delays)
    # Loops counted from their first repeated token instead of the onset: how soon after the repetition shows
    # the guard notices it (a diagnostic beside the bar, which counts from the onset; the controller's
    # rollback reaches back past the onset when the alarm comes within rollback - period tokens of it).
    rep = detection(repeats, leads, delays)
    out["loop_from_repeat"] = {"n": len(repeats), "median_delay": rep["median_delay"],
                               **{f"detect_rate_within{d}": rep[f"detect_rate_within{d}"] for d in delays}}
    out["false_alarm_rate"] = float(np.mean(healthy_alarm)) if healthy_alarm else None
    out["alarms_per_1k_tokens"] = 1000.0 * alarm_tokens / max(tokens, 1)
    def within(key) -> dict:
        """The main figures of each group of traces (``key(trace)``), at the same threshold."""
        return {g: evaluate([traces[i] for i in sel], [scores[i] for i in sel], horizon, threshold, False, leads,
                            delays, by_task=False, by_press=False) for g, sel in _groups(traces, key).items()}

    if by_task and len({t.task for t in traces}) > 1:
        out["by_task"] = {task: {k: sub[k] for k in TASK_KEYS} for task, sub in within(lambda t: t.task).items()}
    if by_press and len({setting(t) for t in traces}) > 1:
        out["by_press"] = {name: {**{k: sub[k] for k in TASK_KEYS},
                                  "by_type": {k: {"n": v["n"], **{f"detect_rate_within{d}": v[f"detect_rate_within{d}"]
                                                                  for d in delays if d >= 4}}
                                              for k, v in sub["by_type"].items()}}
                           for name, sub in within(setting).items()}
    if probabilistic:
        out["brier"] = float(np.mean((s_pre - y_pre) ** 2))
        out["ece"] = ece(y_pre, s_pre)
    return out


def _grouped(first_alarm: list[tuple], key, leads=LEADS, delays=DELAYS) -> dict:
    """``detection`` within each group of catastrophes (``key`` of their first-alarm tuple), with its size."""
    return {g: {"n": len(sel), **detection([first_alarm[i] for i in sel], leads, delays)}
            for g, sel in _groups(first_alarm, key).items()}


def detection(first_alarm: list[tuple], leads=LEADS, delays=DELAYS) -> dict:
    """Shares of catastrophes flagged >= m tokens before the onset, and <= d tokens after it, from
    (onset, first alarm or None, ...) tuples; plus the median alarm delay (alarm - onset, missed left out).

    ``lead_reachable{m}`` is the most any predictor can flag >= m tokens ahead: the share of catastrophes whose
    onset is at token m or later (a guard reads nothing before the first generated token, so a loop that starts
    at token 0 can only be detected, never forecast)."""
    if not first_alarm:
        return {**{f"detect_rate_lead{m}": None for m in leads}, **{f"lead_reachable{m}": None for m in leads},
                **{f"detect_rate_within{d}": None for d in delays}, "median_delay": None}
    out = {f"detect_rate_lead{m}": float(np.mean([a is not None and a <= on - m for on, a, *_ in first_alarm]))
           for m in leads}
    out.update({f"lead_reachable{m}": float(np.mean([on >= m for on, *_ in first_alarm])) for m in leads})
    out.update({f"detect_rate_within{d}": float(np.mean([a is not None and a <= on + d for on, a, *_ in first_alarm]))
                for d in delays})
    delays_seen = [a - on for on, a, *_ in first_alarm if a is not None]
    out["median_delay"] = float(np.median(delays_seen)) if delays_seen else None
    return out


def signal_report(traces: list[Trace], names: list[str], horizon: int, min_per_class: int = 5,
                  only: list[str] | None = None) -> dict:
    """Which features carry information, each alone, within a press setting (so that the ratio, which
    separates settings, cannot stand in for the signal).

    For every (press, ratio) with at least ``min_per_class`` healthy and failing traces: the trace AUROC of
    the feature's mean over the pre-onset tokens (failing vs healthy traces; below 0.5 = inverted), and the
    pre-onset token AUROC against the labels at column ``horizon``. Reported: their trace-weighted means
    over settings, and the settings used. No fitting: any split may be passed. ``names`` name the columns
    of the traces' features; ``only``: report these of them (default: all).
    """
    groups: dict[tuple, list[Trace]] = {}
    for t in traces:
        groups.setdefault((t.press, t.ratio), []).append(t)
    out = {}
    for j, name in enumerate(names):
        if only is not None and name not in only:
            continue
        trace_aucs, token_aucs, weights = [], [], []
        for group in groups.values():
            usable = [t for t in group if t.valid.any()]
            y = np.array([t.catastrophe for t in usable])
            if min(y.sum(), (~y).sum()) < min_per_class:
                continue
            mean = np.array([t.x[t.valid, j].mean() for t in usable])
            auc, _ = _auc(y.astype(int), mean)
            tok, _ = _auc(np.concatenate([t.y[t.valid, horizon] for t in usable]),
                          np.concatenate([t.x[t.valid, j] for t in usable]))
            if auc is None or tok is None:
                continue
            trace_aucs.append(auc)
            token_aucs.append(tok)
            weights.append(len(usable))
        out[name] = ({"trace_auroc": float(np.average(trace_aucs, weights=weights)),
                      "pre_onset_auroc": float(np.average(token_aucs, weights=weights)), "settings": len(weights)}
                     if weights else {"trace_auroc": None, "pre_onset_auroc": None, "settings": 0})
    return out
