"""Baselines on the same splits: the entropy rule, logistic regression, gradient boosting.

The sklearn models see the same causal windows as the nets, flattened: the features of the last
``window`` tokens (zeros before the first token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from hazard.predictor.data import Normalizer, Trace, train_mask


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


def windows(x: np.ndarray, window: int) -> np.ndarray:
    """(T, window * F): row t holds features of tokens t-window+1 .. t, oldest first, zero-padded."""
    padded = np.concatenate([np.zeros((window - 1, x.shape[1]), x.dtype), x])
    return np.concatenate([padded[k:k + len(x)] for k in range(window)], axis=1)


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

    def fit(self, train: list[Trace], val: list[Trace], horizon: int, norm: Normalizer) -> WindowClassifier:
        self.norm = norm
        masks = [train_mask(t, self.detect_window) for t in train]
        x = np.concatenate([windows(norm(t.x), self.window)[m] for t, m in zip(train, masks)])
        y = np.concatenate([t.y[m, horizon] for t, m in zip(train, masks)])
        if len(y) > self.max_tokens:  # subsample tokens for speed, same seed every run
            keep = np.random.default_rng(self.seed).choice(len(y), self.max_tokens, replace=False)
            x, y = x[keep], y[keep]
        # One class only (tiny or degenerate data): the prior is all that can be learned.
        self.model = self._model().fit(x, y) if len(np.unique(y)) > 1 else None
        self.prior = float(y.mean())
        return self

    def scores(self, traces: list[Trace]) -> list[np.ndarray]:
        if self.model is None:
            return [np.full(len(t.x), self.prior) for t in traces]
        return [self.model.predict_proba(windows(self.norm(t.x), self.window))[:, 1] for t in traces]
