"""A learned gate for the answer check: which compressed answers to repair, from the check's first reading.

The answer check (``hazard.engine.check``) reads every finished answer with the uncompressed model. Most answers
it would repair are healthy (a changed word, not a changed result), and each repair costs regeneration time.
The gate is a logistic regression over a few statistics of that first reading (how improbable the answer's
tokens are to the uncompressed model, where the first strong disagreement sits, the answer's length and
whether it ended), trained on GSM8K train problems to predict that compression broke the answer (right
uncompressed, wrong compressed). The policy repairs only answers whose probability reaches the gate's
threshold, chosen on held-out prompts for a false-repair rate on healthy answers (``evaluate/answer_gate.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hazard.engine.check import Verdict
from hazard.errors import HazardError

FEATURES = ("log_len", "ended", "first_bad", "bad_share", "bad_share_rare", "min_logp", "mean_logp", "mean_gap")


def verdict_features(v: Verdict, max_new_tokens: int) -> np.ndarray:
    """``FEATURES`` of one reading: log length, ended before the budget, first disagreement (tau 0.2) as a share
    of the length (1 when none), shares of disagreeing tokens at tau 0.2 and 0.01, the lowest and mean log-prob
    of the chosen tokens, and the mean gap between the uncompressed model's choice and the chosen token."""
    n = len(v.tokens)
    changed = v.top != v.tokens
    bad, rare = changed & (v.logp < np.log(0.2)), changed & (v.logp < np.log(0.01))
    first = int(np.argmax(bad)) if bad.any() else n  # Verdict.first_disagreement(0.2), or the length
    return np.array([np.log(n), float(n < max_new_tokens), first / n, bad.mean(),
                     rare.mean(), v.logp.min(), v.logp.mean(), (v.top_logp - v.logp).mean()], dtype=np.float64)


@dataclass
class AnswerGate:
    """Standardise, then ``sigmoid(coef . x + intercept)`` >= ``threshold`` means repair."""

    mean: list[float]
    std: list[float]
    coef: list[float]
    intercept: float
    threshold: float
    features: tuple[str, ...] = FEATURES

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(x) - np.asarray(self.mean)) / np.asarray(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def repairs(self, x: np.ndarray) -> np.ndarray:
        return self.prob(x) >= self.threshold

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({**asdict(self), "features": list(self.features)}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> AnswerGate:
        p = Path(path).expanduser()
        p = p / "gate.json" if p.is_dir() else p
        if not p.is_file():
            raise HazardError(f"answer gate {path}: no gate.json there; train one with evaluate/answer_gate.py")
        d = json.loads(p.read_text())
        if tuple(d.get("features", ())) != FEATURES:
            raise HazardError(f"answer gate {path}: features {d.get('features')} are not {list(FEATURES)}; retrain it")
        d["features"] = tuple(d["features"])
        return cls(**{k: d[k] for k in ("mean", "std", "coef", "intercept", "threshold", "features")})


def fit_gate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, healthy: np.ndarray, max_false: float = 0.05,
             folds: int = 5, seed: int = 0) -> tuple[AnswerGate, dict]:
    """Logistic regression of ``y`` (compression broke the answer) on ``x``; the threshold is the lowest that
    repairs at most ``max_false`` of the ``healthy`` answers in prompt-grouped cross-validation (out-of-fold
    probabilities), then the model is refit on everything. Returns the gate and its cross-validated report."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    if y.sum() < folds or (~y.astype(bool)).sum() < folds:
        raise HazardError(f"answer gate: {int(y.sum())} broken and {int((1 - y).sum())} other answers; need at "
                          f"least {folds} of each")
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / std
    oof = np.zeros(len(y))
    for tr, te in GroupKFold(folds).split(z, y, groups):
        oof[te] = LogisticRegression(max_iter=1000, random_state=seed).fit(z[tr], y[tr]).predict_proba(z[te])[:, 1]
    h = np.sort(oof[healthy])[::-1]
    k = int(np.floor(max_false * len(h)))  # healthy answers it may repair
    # just above the (k+1)-th highest healthy probability: at most k of them reach it
    threshold = float(np.nextafter(h[k], np.inf)) if k < len(h) else float(h[-1]) if len(h) else 0.5
    lr = LogisticRegression(max_iter=1000, random_state=seed).fit(z, y)
    gate = AnswerGate(mean.tolist(), std.tolist(), lr.coef_[0].tolist(), float(lr.intercept_[0]), threshold)
    rep = oof >= threshold
    report = {"n": int(len(y)), "broken": int(y.sum()), "healthy": int(healthy.sum()),
              "cv_auroc": float(roc_auc_score(y, oof)), "threshold": threshold,
              "cv_healthy_repaired": float(rep[healthy].mean()) if healthy.any() else None,
              "cv_broken_repaired": float(rep[y.astype(bool)].mean()), "max_false": max_false, "folds": folds}
    return gate, report
