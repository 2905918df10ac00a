"""A learned gate for the answer check: which compressed answers to repair, from the check's first reading.

The answer check (``hazard.engine.check``) reads every finished answer with the uncompressed model. Most answers
it would repair are healthy (a changed word, not a changed result), and each repair costs regeneration time. The
gate is a logistic regression over a few statistics of that first reading (``FEATURE_SETS``: how improbable the
answer's tokens are to the uncompressed model, how many of its disagreements change a digit, the answer's length
and whether it ended), trained on GSM8K train problems to predict that compression broke the answer (right
uncompressed, wrong compressed) or, simply, that the compressed answer is wrong. The policy repairs only answers
whose probability reaches the gate's threshold, chosen on held-out prompts for a false-repair rate on healthy
answers (``evaluate/answer_gate.py``).

The reading's statistics cannot tell an answer compression broke from one the model gets wrong uncompressed too
(evaluate/RESULTS.md 0p): both read as shaky. ``PROBES`` add what the uncompressed model's own hidden states say
(``Verdict.states``, free with the reading): a linear probe on the state at the question's last token for "the
uncompressed model answers this right" (how hard the problem is for it), and one on the state after the answer
for "this answer is right". Each probe's logit is one more gate feature; probe features come last in a set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hazard.engine.check import STATE_ROWS, Verdict
from hazard.errors import HazardError

# the first gate's statistics of the whole reading
READING = ("log_len", "ended", "first_bad", "bad_share", "bad_share_rare", "min_logp", "mean_logp", "mean_gap")
FEATURES = READING
PROBE_C = 0.01  # the probes' inverse L2 strength
TAUS = (0.5, 0.2, 0.05, 0.01)
# the second: disagreements split by whether a digit is involved (the row's token or the uncompressed choice has
# one). A changed digit is a changed number, a changed word mostly a rewording: on GSM8K train readings of the
# 1.5B this lifts the share of broken answers found at 5% of healthy ones repaired from 0.22 to 0.43.
DIGITS = ("log_len", "ended", "bad_share", "mean_logp", "mean_gap", *(f"digit_bad@{t:g}" for t in TAUS),
          *(f"word_bad@{t:g}" for t in TAUS), "digit_min_logp", "digit_low3_logp", "digit_max_gap", "word_max_gap",
          "log_digits")
# linear probes on the reading's hidden states (``StateProbe``): name -> (Verdict.states row, what it predicts)
PROBES = {"probe_question": ("question", "full_correct"), "probe_answer": ("answer", "correct")}
FEATURE_SETS = {"reading": READING, "digits": DIGITS, "digits+probes": (*DIGITS, *PROBES)}


def reading_stats(v: Verdict, max_new_tokens: int, digit_ids=()) -> dict[str, float]:
    """Every named statistic of one reading (``FEATURE_SETS``): log length, ended before the budget, first
    disagreement (tau 0.2) as a share of the length (1 when none), shares of disagreeing tokens at tau 0.2 and
    0.01, the lowest and mean log-prob of the chosen tokens, the mean gap between the uncompressed model's
    choice and the chosen token; with ``digit_ids`` (token ids whose text holds a digit): log(1 + count) of the
    changed tokens below each tau in ``TAUS`` that involve a digit (``digit_bad@tau``) or not (``word_bad@tau``),
    the lowest and the sum of the three lowest log-probs of digit tokens, the largest gap on digit and on other
    tokens, log(1 + digit tokens)."""
    n = len(v.tokens)
    lp, gap = v.logp.astype(np.float64), (v.top_logp - v.logp).astype(np.float64)
    changed = v.top != v.tokens
    bad, rare = changed & (lp < np.log(0.2)), changed & (lp < np.log(0.01))
    out = {"log_len": np.log(n), "ended": float(n < max_new_tokens),
           "first_bad": (int(np.argmax(bad)) if bad.any() else n) / n,  # Verdict.first_disagreement(0.2) / n
           "bad_share": bad.mean(), "bad_share_rare": rare.mean(), "min_logp": lp.min(), "mean_logp": lp.mean(),
           "mean_gap": gap.mean()}
    digits = np.fromiter(digit_ids, dtype=np.int64)
    dig = np.isin(v.tokens, digits) | np.isin(v.top, digits)
    for t in TAUS:
        low = changed & (lp < np.log(t))
        out[f"digit_bad@{t:g}"] = np.log1p((low & dig).sum())
        out[f"word_bad@{t:g}"] = np.log1p((low & ~dig).sum())
    d_lp = np.sort(lp[dig])
    out.update({"digit_min_logp": d_lp[0] if len(d_lp) else 0.0, "digit_low3_logp": d_lp[:3].sum(),
                "digit_max_gap": gap[dig].max() if dig.any() else 0.0,
                "word_max_gap": gap[~dig].max() if (~dig).any() else 0.0, "log_digits": np.log1p(dig.sum())})
    return out


def verdict_features(v: Verdict, max_new_tokens: int, features=FEATURES, digit_ids=(),
                     probes: dict | None = None) -> np.ndarray:
    """The named ``features`` of one reading (``reading_stats``; ``PROBES`` by ``probes[name].score``), in order."""
    stats = reading_stats(v, max_new_tokens, digit_ids)
    for f in features:
        if f in PROBES:
            if not probes or f not in probes:
                raise HazardError(f"answer gate feature {f}: no probe for it; fit the gate with answer_gate.py")
            if v.states is None:
                raise HazardError(f"answer gate feature {f}: this reading kept no hidden states (Verdict.states)")
            stats[f] = probes[f].score(v.states)
    return np.array([stats[f] for f in features], dtype=np.float64)


@dataclass
class StateProbe:
    """Logistic regression on one row (``STATE_ROWS``) of a reading's hidden states, standardised; ``score`` is
    its logit (the gate's feature)."""

    row: str
    mean: list[float]
    std: list[float]
    coef: list[float]
    intercept: float

    def score(self, states: np.ndarray) -> float:
        x = (np.asarray(states[STATE_ROWS.index(self.row)], np.float64) - self.mean) / np.asarray(self.std)
        return float(x @ np.asarray(self.coef) + self.intercept)


def fit_probe(states: np.ndarray, row: str, target: np.ndarray, c: float = PROBE_C, seed: int = 0) -> StateProbe:
    """A ``StateProbe`` of ``target`` on ``states[:, row]`` (L2-regularised at inverse strength ``c``: the states
    have as many dimensions as a few thousand readings)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(states[:, STATE_ROWS.index(row)], np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit((x - mean) / std, target)
    return StateProbe(row, mean.tolist(), std.tolist(), lr.coef_[0].tolist(), float(lr.intercept_[0]))


def probe_columns(states: np.ndarray, targets: dict[str, np.ndarray], groups: np.ndarray, names=tuple(PROBES),
                  folds: int = 5, seed: int = 0) -> tuple[np.ndarray, dict[str, StateProbe], dict[str, float]]:
    """For the probes ``names``: out-of-fold logits (prompt-grouped, so a gate fitted on them sees each probe as
    it scores prompts it never saw: stacking), the probes refit on everything (what a gate ships) and each
    probe's out-of-fold AUROC for its own target. ``targets`` maps each probe's target name (``PROBES``) to its
    labels."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    cols, probes, auroc = np.zeros((len(states), len(names))), {}, {}
    for j, name in enumerate(names):
        row, target = PROBES[name]
        y = np.asarray(targets[target]).astype(int)
        for tr, te in GroupKFold(folds).split(states, y, groups):
            pr = fit_probe(states[tr], row, y[tr], seed=seed)
            cols[te, j] = [pr.score(s) for s in states[te]]
        probes[name] = fit_probe(states, row, y, seed=seed)
        auroc[name] = float(roc_auc_score(y, cols[:, j]))
    return cols, probes, auroc


def digit_token_ids(ids, texts) -> list[int]:
    """Of token ``ids`` with their ``texts``, those whose text holds a digit."""
    return sorted(int(i) for i, t in zip(ids, texts) if any(c.isdigit() for c in str(t)))


@dataclass
class AnswerGate:
    """Standardise, then ``sigmoid(coef . x + intercept)`` >= ``threshold`` means repair."""

    mean: list[float]
    std: list[float]
    coef: list[float]
    intercept: float
    threshold: float
    features: tuple[str, ...] = FEATURES
    digit_ids: list[int] = field(default_factory=list)  # what ``digit_*`` features count as a digit token
    label: str = "broken"  # what it was fitted to predict: "broken" by compression, or "wrong" compressed
    probes: dict[str, StateProbe] = field(default_factory=dict)  # for ``PROBES`` features

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(x) - np.asarray(self.mean)) / np.asarray(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def repairs(self, x: np.ndarray) -> np.ndarray:
        return self.prob(x) >= self.threshold

    def repairs_verdict(self, v: Verdict, max_new_tokens: int) -> bool:
        """Whether to repair the answer of reading ``v`` (its features computed as this gate was fitted)."""
        return bool(self.repairs(verdict_features(v, max_new_tokens, self.features, self.digit_ids, self.probes))[0])

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
        known = set(READING) | set(DIGITS) | set(PROBES)
        unknown = [f for f in d.get("features", ()) if f not in known]
        if unknown or not d.get("features") or len(d["features"]) != len(d.get("coef", ())):
            raise HazardError(f"answer gate {path}: features {d.get('features')} do not match its coefficients or "
                              f"are unknown ({unknown}); retrain it with evaluate/answer_gate.py")
        if any(f.startswith("digit_") for f in d["features"]) and not d.get("digit_ids"):
            raise HazardError(f"answer gate {path}: digit features but no digit_ids; retrain it")
        probes = d.get("probes") or {}
        if {f for f in d["features"] if f in PROBES} != set(probes) or any(
                len(pr.get("coef", ())) != len(pr.get("mean", ())) or pr.get("row") not in STATE_ROWS
                for pr in probes.values()):
            raise HazardError(f"answer gate {path}: its probe features and probes do not match; retrain it")
        d["features"] = tuple(d["features"])
        return cls(**{k: d[k] for k in ("mean", "std", "coef", "intercept", "threshold", "features")},
                   digit_ids=list(d.get("digit_ids", [])), label=d.get("label", "broken"),
                   probes={k: StateProbe(**pr) for k, pr in probes.items()})


@dataclass
class RandomGate:
    """The learned gate's control: repairs a reading with probability ``rate`` whatever it says (``gate:
    random:<rate>`` in a policy's options), to compare the learned gate with chance at a matched repair rate."""

    rate: float
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.rate <= 1.0:
            raise HazardError(f"random gate: rate must be in [0, 1], got {self.rate}")
        self._rng = np.random.default_rng(self.seed)

    def repairs_verdict(self, v: Verdict, max_new_tokens: int) -> bool:
        return bool(self._rng.random() < self.rate)


def load_gate(spec: str) -> AnswerGate | RandomGate:
    """``random:<rate>[:<seed>]`` (``RandomGate``; other seeds give other coins of the same rate, the spread a
    learned gate has to clear) or a gate folder / gate.json (``AnswerGate.load``)."""
    if spec.startswith("random:"):
        try:
            _, rate, *seed = spec.split(":")
            if len(seed) > 1:
                raise ValueError(spec)
            return RandomGate(float(rate), int(seed[0]) if seed else 0)
        except ValueError:
            raise HazardError(f"answer gate {spec!r}: write random:<rate>[:<seed>], e.g. random:0.3 or "
                              f"random:0.3:1") from None
    return AnswerGate.load(spec)


def fit_gate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, healthy: np.ndarray, max_false: float = 0.05,
             folds: int = 5, seed: int = 0, target: np.ndarray | None = None,
             eligible: np.ndarray | None = None, gain: np.ndarray | None = None) -> tuple[AnswerGate, dict]:
    """Logistic regression of ``target`` (default ``y``: compression broke the answer; or, e.g., the compressed
    answer is wrong) on ``x``. The threshold is the lowest at which at most ``max_false`` of the ``healthy``
    answers get repaired in prompt-grouped cross-validation (out-of-fold probabilities); an answer is repaired
    when it is ``eligible`` (the check found a disagreement: the gate is only asked then; default all) and its
    probability reaches the threshold. Then the model is refit on everything. Returns the gate and its
    cross-validated report (AUROC and repair rates of the ``y`` answers; with ``gain``, what a repair does to each
    answer, +1 fixed, -1 broken, 0 neither: the answers the cross-validated gate's repairs fix and break, their
    net change per answer, ``cv_net_gain``, and how its scores rank the eligible answers a repair fixes,
    ``cv_fix_auroc``, whatever ``target`` is)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    target = y if target is None else target
    eligible = np.ones(len(y), bool) if eligible is None else np.asarray(eligible, bool)
    for name, t in (("broken", y), ("target", target)):
        if t.sum() < folds or (~t.astype(bool)).sum() < folds:
            raise HazardError(f"answer gate: {int(t.sum())} {name} and {int((1 - t).sum())} other answers; need at "
                              f"least {folds} of each")
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / std
    oof = np.zeros(len(y))
    for tr, te in GroupKFold(folds).split(z, target, groups):
        lr = LogisticRegression(max_iter=3000, random_state=seed).fit(z[tr], target[tr])
        oof[te] = lr.predict_proba(z[te])[:, 1]
    h = np.sort(oof[healthy & eligible])[::-1]
    k = int(np.floor(max_false * healthy.sum()))  # healthy answers it may repair
    # just above the (k+1)-th highest eligible healthy probability: at most k of them reach it
    threshold = float(np.nextafter(h[k], np.inf)) if k < len(h) else float(h[-1]) if len(h) else 0.0
    lr = LogisticRegression(max_iter=3000, random_state=seed).fit(z, target)
    gate = AnswerGate(mean.tolist(), std.tolist(), lr.coef_[0].tolist(), float(lr.intercept_[0]), threshold)
    rep = (oof >= threshold) & eligible
    broken = y.astype(bool)
    both = broken | healthy
    report = {"n": int(len(y)), "broken": int(y.sum()), "healthy": int(healthy.sum()),
              "eligible": int(eligible.sum()), "cv_auroc": float(roc_auc_score(y, oof)),
              "cv_auroc_broken_vs_healthy": float(roc_auc_score(y[both], oof[both])), "threshold": threshold,
              "cv_healthy_repaired": float(rep[healthy].mean()) if healthy.any() else None,
              "cv_broken_repaired": float(rep[broken].mean()), "max_false": max_false, "folds": folds}
    if target is not y:
        report["cv_target_auroc"] = float(roc_auc_score(target[eligible], oof[eligible])) if len(
            set(target[eligible].tolist())) == 2 else None
    if gain is not None:
        gain = np.asarray(gain)
        g = gain[rep]
        fixes = gain[eligible] > 0  # whatever the label: how well it ranks what its repair fixes
        report.update({"cv_fixed": int((g > 0).sum()), "cv_broke": int((g < 0).sum()),
                       "cv_net_gain": float(g.sum() / len(y)),
                       "cv_fix_auroc": float(roc_auc_score(fixes, oof[eligible])) if 0 < fixes.sum() < len(fixes)
                       else None})
    return gate, report
