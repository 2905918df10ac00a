"""Baselines on the same splits: the entropy rule, the repetition rule, the cycle rule, logistic regression,
gradient boosting.

The sklearn models see the same causal windows as the nets, flattened: the features of the last
``window`` tokens (zeros before the first token).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.ensemble._hist_gradient_boosting import binning as _binning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from hazard.errors import HazardError
from hazard.predictor.data import CYCLE_PERIODS, Normalizer, Trace, train_mask
from hazard.predictor.metrics import choose_threshold, evaluate


def rolling_min(x: np.ndarray, n: int) -> np.ndarray:
    """min(x[t-n+1 .. t]) for every t (shorter at the start)."""
    out = x.copy()
    for k in range(1, n):
        out[k:] = np.minimum(out[k:], x[:-k])
    return out


@dataclass
class EntropyRule:
    """Alarm when entropy stays above a threshold for ``n`` consecutive tokens.

    The score is the minimum entropy over the last ``n`` tokens, so "score >= threshold" is the rule;
    ``n`` is tuned on validation (pre-onset AUROC), the threshold by the shared false-alarm rule.
    """

    n: int = 1
    candidates: tuple[int, ...] = (1, 2, 4, 8, 16)
    probabilistic = False

    def fit(self, train: list[Trace], val: list[Trace], horizon: int) -> EntropyRule:
        best = -1.0
        y = np.concatenate([t.y[t.valid, horizon] for t in val])
        for n in self.candidates:
            s = np.concatenate([rolling_min(t.entropy, n)[t.valid] for t in val])
            auc = roc_auc_score(y, s) if 0 < y.sum() < len(y) else 0.0
            if auc > best:
                best, self.n = auc, n
        return self

    def scores(self, traces: list[Trace]) -> list[np.ndarray]:
        return [rolling_min(t.entropy, self.n) for t in traces]


def rolling_share(x: np.ndarray, n: int) -> np.ndarray:
    """sum(x[t-n+1 .. t]) / n for every t, as if zeros came before the first value (so one repeat among the
    first tokens is not already a share of 1)."""
    cs = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    hi = np.arange(1, len(x) + 1)
    return (cs[hi] - cs[np.maximum(hi - n, 0)]) / n


@dataclass
class RepeatRule:
    """Alarm when the share of the last ``n`` tokens whose 4-gram already occurred (the ``repeat4`` signal, which
    the engine computes on the device) reaches a threshold: the non-learned loop detector a live guard can run.

    ``column`` is ``repeat4``'s index among the traces' features. ``n`` is tuned on validation for the share of
    catastrophes flagged within ``delay`` tokens of the onset at the target false-alarm rate (a repetition rule
    sees a loop once it has cycled, not before: pre-onset AUROC would not choose ``n``); the threshold by the
    shared false-alarm rule.
    """

    column: int
    n: int = 16
    candidates: tuple[int, ...] = (4, 8, 16, 32)
    delay: int = 16
    probabilistic = False

    def fit(self, train: list[Trace], val: list[Trace], horizon: int, target_far: float = 0.05) -> RepeatRule:
        best = -1.0
        for n in self.candidates:
            s = [rolling_share(t.x[:, self.column], n) for t in val]
            m = evaluate(val, s, horizon, choose_threshold(val, s, target_far), probabilistic=False, leads=(),
                         delays=(self.delay,), by_task=False, by_press=False)
            rate = m[f"detect_rate_within{self.delay}"] or 0.0
            if rate > best:
                best, self.n = rate, n
        return self

    def scores(self, traces: list[Trace]) -> list[np.ndarray]:
        return [rolling_share(t.x[:, self.column], self.n) for t in traces]


@dataclass
class CycleRule:
    """Alarm when the generated tokens end in a periodic stretch of period <= ``period`` that covers two periods
    and reaches a threshold's length in tokens (``Trace.cycle``, ``hazard.control.cycles.cycle_spans``): the loop
    label's own rule made fast. The label asks for >= 3 periods and >= 16 tokens, so it confirms a loop 16
    tokens after a stutter starts; a stutter ("JoJoJo", half the 1.5B's loops, collect/README.md) shows in its
    third token. The threshold comes from the shared false-alarm rule (healthy text repeats a token or two:
    "00" in numbers), ``period`` is tuned on validation for the share of loops and non-terminations flagged
    within ``delay`` tokens of the onset (the issue's fast-detection bar: 4 tokens, for those two types). It
    reads the tokens, so it runs beside any guard (``or_cycle_rule`` in the report: the guard's alarms and the
    rule's together; live, ``detect_rewind`` with ``periods: 2``, ``max_period`` = period and ``min_span`` =
    the span threshold is the same rule).
    """

    period: int = 1
    candidates: tuple[int, ...] = CYCLE_PERIODS
    delay: int = 4
    probabilistic = False

    def fit(self, train: list[Trace], val: list[Trace], horizon: int, target_far: float = 0.05) -> CycleRule:
        best = None
        for p in self.candidates:
            self.period = p
            rate = self._fast(val, self.scores(val), horizon, target_far)
            if best is None or rate > best:
                best, chosen = rate, p
        self.period = chosen
        return self

    def _fast(self, val: list[Trace], scores: list[np.ndarray], horizon: int, target_far: float) -> tuple:
        """What the rule is tuned for on validation, at the target false-alarm rate: the share of loops and
        non-terminations flagged within ``delay`` tokens of their onset (the issue's fast-detection bar counts
        those two types), then of every catastrophe."""
        m = evaluate(val, scores, horizon, choose_threshold(val, scores, target_far), probabilistic=False, leads=(),
                     delays=(self.delay,), by_task=False, by_press=False)
        key = f"detect_rate_within{self.delay}"
        groups = [m["by_type"][k] for k in ("loop", "nonterm") if k in m["by_type"]]
        n = sum(g["n"] for g in groups)
        fast = sum(g["n"] * (g[key] or 0.0) for g in groups) / n if n else 0.0
        return fast, m[key] or 0.0

    def scores(self, traces: list[Trace]) -> list[np.ndarray]:
        if any(t.cycle is None for t in traces):
            raise ValueError("CycleRule needs Trace.cycle (traces read by hazard.predictor.data)")
        col = CYCLE_PERIODS.index(self.period)
        return [t.cycle[:, col].astype(np.float64) for t in traces]

    def combine(self, traces: list[Trace], scores: list[np.ndarray], period: int, floor: int) -> list[np.ndarray]:
        """Another predictor's scores with this rule's alarms ranked above all of them: ``1 + span`` where the
        stretch of period <= ``period`` is at least ``floor`` tokens long, the predictor's score (a
        probability) elsewhere. One threshold chosen on the result for the target false-alarm rate then gives
        the rule's alarms the budget first and the predictor the rest (above 1, the rule alone runs, at a
        longer span)."""
        col = CYCLE_PERIODS.index(period)
        return [np.where(t.cycle[:, col] >= floor, 1.0 + t.cycle[:, col], np.clip(s, 0.0, 1.0))
                for t, s in zip(traces, scores)]

    def fit_combined(self, val: list[Trace], val_scores: list[np.ndarray], horizon: int, target_far: float = 0.05,
                     floors: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16)) -> tuple[int, int]:
        """The (period, floor) of ``combine`` whose result flags the most loops and non-terminations within
        ``delay`` tokens of the onset on validation at the target false-alarm rate (then the most catastrophes;
        ties: the longer floor, fewer rule alarms)."""
        best, chosen = None, (self.candidates[0], floors[-1])
        for p in self.candidates:
            for f in sorted(floors, reverse=True):
                rate = self._fast(val, self.combine(val, val_scores, p, f), horizon, target_far)
                if best is None or rate > best:
                    best, chosen = rate, (p, f)
        return chosen


def windows(x: np.ndarray, window: int) -> np.ndarray:
    """(T, window * F): row t holds features of tokens t-window+1 .. t, oldest first, zero-padded."""
    padded = np.concatenate([np.zeros((window - 1, x.shape[1]), x.dtype), x])
    return np.concatenate([padded[k:k + len(x)] for k in range(window)], axis=1)


def _weighted_thresholds(col_data: np.ndarray, max_bins: int, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """scikit-learn's ``_find_binning_thresholds`` with the weighted edges from one ``_weighted_percentile`` call
    for all of them instead of one call per edge (each re-sorting the column): the same thresholds (tested
    against the installed scikit-learn), its steps in its order."""
    if sample_weight is None:
        return _SKLEARN_THRESHOLDS(col_data, max_bins)
    missing = np.isnan(col_data)
    if missing.any():
        col_data, sample_weight = col_data[~missing], sample_weight[~missing]
    nonzero = sample_weight != 0
    col_data, sample_weight = col_data[nonzero], sample_weight[nonzero]
    order = np.argsort(col_data)
    col_data, sample_weight = col_data[order], sample_weight[order]
    distinct = np.unique(col_data).astype(_binning.X_DTYPE)
    if len(distinct) == 1:
        return np.asarray([])
    if len(distinct) <= max_bins:
        edges = (distinct[:-1] + distinct[1:]) / 2
    else:
        ranks = np.linspace(0, 100, num=max_bins + 1)[1:-1]
        edges = np.asarray(_binning._weighted_percentile(col_data, sample_weight, ranks, average=True))
    unique = np.unique(edges)
    if len(unique) != len(edges):
        edges = unique
    return np.clip(edges, None, _binning.ALMOST_INF, out=edges)


_SKLEARN_THRESHOLDS = _binning._find_binning_thresholds


@contextmanager
def fast_weighted_binning() -> Iterator[None]:
    """Bin class-weighted training sets fast while gradient boosting fits.

    scikit-learn 1.8-1.9 bins a weighted training set of under 200k rows (ours: ``class_weight="balanced"``,
    200k tokens less the early-stopping tenth) with one weighted-percentile call per bin edge, each sorting the
    column again: 0.36 s per feature on this CPU, 4 minutes for the 1.5B's 664 window features
    (``train/bench_binning.py``), and again at every warm start of chunked boosting (scikit-learn issue
    34304, fixed upstream by PR 34248). Inside this context ``_weighted_thresholds`` takes its place: the
    same edges from one call. A scikit-learn without weighted binning (before 1.8) is left as it is.
    """
    if "sample_weight" not in inspect.signature(_SKLEARN_THRESHOLDS).parameters:
        yield
        return
    _binning._find_binning_thresholds = _weighted_thresholds
    try:
        yield
    finally:
        _binning._find_binning_thresholds = _SKLEARN_THRESHOLDS


def _boost_in_chunks(model: HistGradientBoostingClassifier, x: np.ndarray, y: np.ndarray, path: Path,
                     chunk: int) -> HistGradientBoostingClassifier:
    """``model.fit(x, y)`` by warm starts of ``chunk`` more iterations, the model saved after each (written
    whole, then renamed), resumed from ``path`` when it holds a fit of this same data and model; the file goes
    when the boosting ends (its iteration cap or early stopping)."""
    goal = model.max_iter
    data = hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16)
    data.update(np.ascontiguousarray(y).data)
    key = {"params": model.get_params(), "shape": x.shape, "data": data.hexdigest()}
    if path.is_file():
        with open(path, "rb") as f:
            saved = pickle.load(f)
        if saved["key"] == key:
            model = saved["model"]
    model.set_params(warm_start=True)
    while True:
        done = getattr(model, "n_iter_", 0)
        if done and (done < model.max_iter or done >= goal):  # stopped early, or at the cap
            break
        model.set_params(max_iter=min(done + chunk, goal))
        start = time.time()
        model.fit(x, y)
        # a device call stopped inside the boosting keeps these lines: how far it got and at what pace
        print(f"boosting: {model.n_iter_} of at most {goal} iterations saved ({time.time() - start:.0f} s for "
              "this chunk)", flush=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"key": key, "model": model}, f)
        os.replace(tmp, path)
    path.unlink(missing_ok=True)
    return model.set_params(warm_start=False)


@dataclass
class WindowClassifier:
    """A scikit-learn classifier over flattened causal windows of normalised features."""

    kind: str = "logreg"
    window: int = 8
    max_tokens: int = 200_000
    seed: int = 0
    detect_window: int = 0  # as the nets' (``train_mask``)
    probabilistic = True

    def _model(self):
        if self.kind == "logreg":
            return LogisticRegression(max_iter=500, class_weight="balanced")
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, class_weight="balanced",
                                              random_state=self.seed)

    def fit(self, train: list[Trace], val: list[Trace], horizon: int, norm: Normalizer,
            checkpoint: str | os.PathLike | None = None, chunk: int | None = None) -> WindowClassifier:
        """Fit on the training tokens. With ``chunk`` (gradient boosting only) the boosting runs in warm starts
        of ``chunk`` iterations, saved after each to ``checkpoint``, from which a killed fit goes on and ends
        as an uninterrupted chunked fit does (tested); the file goes once the fit ends. Chunked boosting is
        not bit-identical to one fit (each warm start recomputes the running predictions, so early stopping
        can end a few iterations apart, as on the pilot's ``live`` ablation), so it is opt-in."""
        self.norm = norm
        masks = [train_mask(t, self.detect_window) for t in train]
        x = np.concatenate([windows(norm(t.x), self.window)[m] for t, m in zip(train, masks)])
        y = np.concatenate([t.y[m, horizon] for t, m in zip(train, masks)])
        if len(y) > self.max_tokens:  # subsample tokens for speed, same seed every run
            keep = np.random.default_rng(self.seed).choice(len(y), self.max_tokens, replace=False)
            x, y = x[keep], y[keep]
        self.prior = float(y.mean())
        # One class only (tiny or degenerate data): the prior is all that can be learned.
        if len(np.unique(y)) < 2:
            self.model = None
        elif self.kind == "gbm" and chunk:
            if checkpoint is None:
                raise HazardError("WindowClassifier.fit: chunked boosting needs a checkpoint file")
            with fast_weighted_binning():
                self.model = _boost_in_chunks(self._model(), x, y, Path(checkpoint), chunk)
        else:
            with fast_weighted_binning():
                self.model = self._model().fit(x, y)
        return self

    def scores(self, traces: list[Trace]) -> list[np.ndarray]:
        if self.model is None:
            return [np.full(len(t.x), self.prior) for t in traces]
        return [self.model.predict_proba(windows(self.norm(t.x), self.window))[:, 1] for t in traces]
