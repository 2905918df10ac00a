"""How good a gate must be: the accuracy a gate of a given AUROC would keep with a measured action, and the AUROC
it needs to reach a target.

An answer-check run acts on every row (``answer_check(gate=)``): its per-prompt outcomes say, row by row, what the
action does where it acts. A gate only chooses the rows. The rows fall in three groups (``hazard.paired
.gate_headroom``'s): *wild* ones (a loop or non-termination under the press), which the check escalates whatever
the gate says; *broken* ones (right uncompressed, wrong under the press), which the gate should send to the
check; and *healthy* ones, where the closed loop counts every action as a false trigger. A gate that repairs a
share ``tpr`` of the broken rows and ``fpr`` of the healthy ones keeps, in expectation over which rows it picks
within each group,

    (static right + sum over wild (run - static) + tpr x sum over broken + fpr x sum over healthy) / n

with ``run - static`` each row's change (+1 fixed, -1 broke). That assumes the gate's choice within a group is
independent of whether the action fixes the row there. ``tpr`` at ``fpr`` for an AUROC comes from the
equal-variance binormal ROC (``binormal_tpr``); a fitted gate's own operating point (its cross-validated shares of
broken and healthy train answers repaired, ``report.json``) can stand in for it (``expected_accuracy``).

Memory the same way, where the rows kept their mean KV fractions (``outcomes["kv"]``): a row the gate sends on
costs what it cost in the ungated run, any other its static cost plus the reading every row gets (the gate reads
it), estimated as the mean extra the ungated run paid on the rows it left alone (``expected_kv``). With the
uncompressed run as the action (the ideal repair) a sent row costs the whole cache and there is no reading.

Static compression at equal memory (``static_at_kv``) is the set's static settings mixed per row to the gate's
expected mean KV (``hazard.frontiers.mix_level``, the uncompressed run counted as ratio 0): a gate of higher AUROC
sends more rows on and so holds more memory, and the static press it must beat holds as much.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from hazard.errors import HazardError
from hazard.frontiers import mix_level
from hazard.paired import _array, run_static_full

_N = NormalDist()


def binormal_tpr(auroc: float, fpr: float) -> float:
    """The share of positives above the threshold that passes ``fpr`` of the negatives, for scores N(d, 1)
    against N(0, 1) with ``d = sqrt(2) x Phi^-1(auroc)`` (the ROC whose area is ``auroc``)."""
    if not 0.0 <= fpr <= 1.0:
        raise HazardError(f"gate_need: fpr {fpr} must be in [0, 1]")
    if auroc >= 1.0 or fpr == 1.0:
        return 1.0
    if fpr == 0.0:
        return 0.0
    d = np.sqrt(2.0) * _N.inv_cdf(min(max(auroc, 1e-9), 1 - 1e-9))
    return float(_N.cdf(d + _N.inv_cdf(fpr)))


def least_auroc(short: Callable[[float], float], tol: float = 1e-4) -> float | None:
    """The least AUROC at which ``short(auroc)`` (how far under its target a gate of that AUROC keeps) is <= 0:
    0.5 when a coin does, None when no gate does; bisection, so ``short`` should fall as the AUROC grows."""
    if short(0.5) <= 0:
        return 0.5
    if short(1.0) > 0:
        return None
    lo, hi = 0.5, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if short(mid) <= 0 else (mid, hi)
    return hi


def static_level(points: list[dict], kv: float) -> float:
    """Static compression at mean KV ``kv``: the per-row mix of ``points`` (``hazard.frontiers.mix_level``)."""
    if (acc := mix_level(points, kv)) is None:
        raise HazardError(f"gate_need: no static setting holds as little as the gate's {kv:.3f} mean KV "
                          f"(the cheapest: {min(p['kv'] for p in points):.3f}); add a stronger static press")
    return acc


def _split(run: dict, static: dict, full: dict) -> tuple[np.ndarray, ...]:
    """The run's and the static press's per-prompt correctness, and the rows that are wild (a loop or
    non-termination under the press), broken (right uncompressed, wrong under the press) or healthy (neither)."""
    u, s, f, wild = run_static_full(run, static, full, "gate_need")
    broken = ~wild & f & ~s
    return u, s, wild, broken, ~wild & ~broken


def _kv_sums(run: dict, static: dict, wild: np.ndarray, parts: dict[str, np.ndarray]
             ) -> tuple[float, dict] | None:
    """The reading's cost per row and the summed mean KV fractions behind a gate: ``wild`` (the run's, on the rows
    it escalates) and, for each of the two ``parts`` (name -> rows), ``<name>_run`` (the run's, where the gate sends
    a row on) and ``<name>_rest`` (static plus the reading, where it does not). The reading is estimated as the mean
    extra the run paid on the rows it left alone. None without per-row KV."""
    if "kv" not in run["outcomes"] or "kv" not in static["outcomes"]:
        return None
    k_run, k_static = (np.asarray(r["outcomes"]["kv"], np.float64) for r in (run, static))
    acted = _array(run["outcomes"]["acted"]) if "acted" in run["outcomes"] else np.zeros(len(k_run), bool)
    # a run that acted nowhere (``--run full``: the ideal repair) reads nothing: no reading cost to take
    left = ~acted if acted.any() else np.zeros(len(k_run), bool)
    read = float((k_run - k_static)[left].mean()) if left.any() else 0.0
    return read, {"wild": float(k_run[wild].sum()),
                  **{f"{name}_{part}": float(v[mask].sum()) for name, mask in parts.items()
                     for part, v in (("run", k_run), ("rest", k_static + read))}}


def _kv_behind(kv: dict, n: int, first: str, second: str, tpr: float, fpr: float) -> float:
    """Mean KV fraction behind a gate that sends on ``tpr`` of the ``first`` part's rows and ``fpr`` of the
    ``second``'s (``_kv_sums``' parts)."""
    return (kv["wild"] + tpr * kv[f"{first}_run"] + (1 - tpr) * kv[f"{first}_rest"] + fpr * kv[f"{second}_run"]
            + (1 - fpr) * kv[f"{second}_rest"]) / n


@dataclass
class RowGroups:
    """Per-row changes of an act-on-every-row run against the static press, by group.

    Parameters
    ----------
    n : int
        Prompts.
    static_right : int
        Prompts the static press answers right.
    wild, broken, healthy : int
        The net change (fixed minus broken answers) the action makes in each group, summed over its rows.
    sizes : dict
        Rows per group.
    kv : dict or None
        Summed mean KV fractions: ``wild`` (the run's), ``<group>_run`` (the run's) and ``<group>_rest`` (static
        plus the reading) for broken and healthy; None when the rows kept no per-row KV.
    """

    n: int
    static_right: int
    wild: int
    broken: int
    healthy: int
    sizes: dict
    kv: dict | None = None

    @classmethod
    def from_rows(cls, run: dict, static: dict, full: dict) -> RowGroups:
        """The groups of ``run``'s prompts, from the three rows' per-prompt outcomes."""
        u, s, wild, broken, healthy = _split(run, static, full)
        change = u.astype(int) - s.astype(int)
        sums = _kv_sums(run, static, wild, {"broken": broken, "healthy": healthy})
        return cls(n=len(u), static_right=int(s.sum()), wild=int(change[wild].sum()),
                   broken=int(change[broken].sum()), healthy=int(change[healthy].sum()),
                   sizes={"wild": int(wild.sum()), "broken": int(broken.sum()), "healthy": int(healthy.sum())},
                   kv=None if sums is None else {"read": sums[0], **sums[1]})

    def __add__(self, other: RowGroups) -> RowGroups:
        """Two prompt sets' groups pooled."""
        kv = None
        if self.kv is not None and other.kv is not None:
            kv = {k: self.kv[k] + other.kv[k] for k in self.kv if k != "read"}
            kv["read"] = (self.kv["read"] * self.n + other.kv["read"] * other.n) / (self.n + other.n)
        return RowGroups(n=self.n + other.n, static_right=self.static_right + other.static_right,
                         wild=self.wild + other.wild, broken=self.broken + other.broken,
                         healthy=self.healthy + other.healthy,
                         sizes={k: self.sizes[k] + other.sizes[k] for k in self.sizes}, kv=kv)

    def expected_accuracy(self, tpr: float, fpr: float) -> float:
        """Accuracy behind a gate that repairs ``tpr`` of the broken rows and ``fpr`` of the healthy ones."""
        return (self.static_right + self.wild + tpr * self.broken + fpr * self.healthy) / self.n

    def expected_kv(self, tpr: float, fpr: float) -> float | None:
        """Mean KV fraction behind that gate; None without per-row KV."""
        return None if self.kv is None else _kv_behind(self.kv, self.n, "broken", "healthy", tpr, fpr)

    def accuracy_at_auroc(self, auroc: float, fpr: float) -> float:
        """``expected_accuracy`` for a binormal gate of that AUROC held to ``fpr`` of the healthy rows."""
        return self.expected_accuracy(binormal_tpr(auroc, fpr), fpr)

    def required_auroc(self, target: float | Callable[[float], float], fpr: float, tol: float = 1e-4
                       ) -> float | None:
        """The least AUROC whose gate at ``fpr`` keeps ``target`` in expectation; 0.5 when a coin does, None
        when no gate does (accuracy grows with AUROC when the action fixes more broken rows than it breaks).
        ``target`` may depend on the AUROC (``target(auroc)``: static at the gate's own memory, which grows with
        it); the search then assumes the gate's lead over it grows with AUROC too (bisection)."""
        return least_auroc(lambda a: (target(a) if callable(target) else target) - self.accuracy_at_auroc(a, fpr),
                           tol)

    def static_at_kv(self, points: list[dict], fpr: float) -> Callable[[float], float]:
        """Static compression at the memory of the gate of each AUROC held to ``fpr``: ``points`` are the set's
        static settings (``{"kv", "accuracy"}``, the uncompressed run among them), mixed per row
        (``hazard.frontiers.mix_level``). Needs per-row KV; a gate cheaper than every point is an error."""
        if self.kv is None:
            raise HazardError("gate_need: static at equal memory needs the rows' per-row KV (outcomes['kv']); "
                              "these runs kept none")
        return lambda auroc: static_level(points, self.expected_kv(binormal_tpr(auroc, fpr), fpr))


def sent_row_cost(live: dict, run: dict) -> dict | None:
    """What the rows a live gated run acted on cost: their mean KV fraction there (``live``), in the ungated run on
    the same rows (``ungated_same``), and the ungated run's mean over every row it acted on (``ungated_acted``), the
    cost ``expected_kv`` charges a sent row on average. None when either run kept no per-row KV or acting.

    Why: the model assumes the gate's picks within a group are typical of it. Where ``ungated_same`` is above
    ``ungated_acted`` the gate picks costlier rows than that, and the model under-predicts its memory."""
    if not all("kv" in r["outcomes"] and "acted" in r["outcomes"] for r in (live, run)):
        return None
    k_live, k_run = (np.asarray(r["outcomes"]["kv"], np.float64) for r in (live, run))
    a_live, a_run = (_array(r["outcomes"]["acted"]) for r in (live, run))
    if len(k_live) != len(k_run):
        raise HazardError(f"gate_need: the gated and ungated runs answered different prompts ({len(k_live)} vs "
                          f"{len(k_run)})")
    if not (a_live.any() and a_run.any()):
        return None
    return {"live": float(k_live[a_live].mean()), "ungated_same": float(k_run[a_live].mean()),
            "ungated_acted": float(k_run[a_run].mean()), "rows": int(a_live.sum())}


@dataclass
class FixGroups:
    """The rows of an act-on-every-row run split by what its action does there, for a gate that ranks the rows the
    action *fixes* first (``answer_gate.py --label helps``) rather than the rows compression broke.

    Wild rows are repaired whatever the gate says, as in ``RowGroups``. Among the others the positives are the rows
    the action turns right: broken ones, and healthy ones the uncompressed model gets wrong too (a repair is a second
    attempt). A binormal gate of a given AUROC between positives and the rest flags ``tpr`` of the positives and
    ``fpr`` of the rest. Its false triggers are the healthy rows it flags, positives among them, and its threshold
    is the lowest that keeps them within ``max_false`` (as a fitted gate's); a flagged negative the action breaks
    (a right answer it turns wrong) costs one, the others nothing. Memory as in ``RowGroups.expected_kv``: a
    flagged row costs what it cost in the run, any other its static cost plus the reading.

    Parameters
    ----------
    n, base : int
        Rows; the rows right behind a gate that flags nothing (static right, plus the wild rows' net change).
    fixed_failing, fixed_healthy, negatives_healthy, broke : int
        Positives among the broken rows and among the healthy ones; the healthy rows that are not positives; the
        rows (wild left out) the action breaks, all of them negatives.
    kv : dict or None
        Summed mean KV fractions: ``wild``, then ``run`` and ``rest`` (static plus the reading) of the positives
        (``pos_*``) and of the negatives (``neg_*``); None without per-row KV.
    """

    n: int
    base: int
    fixed_failing: int
    fixed_healthy: int
    negatives_healthy: int
    broke: int
    kv: dict | None = None

    @classmethod
    def from_rows(cls, run: dict, static: dict, full: dict) -> FixGroups:
        u, s, wild, broken, healthy = _split(run, static, full)
        pos = ~wild & u & ~s
        neg = ~wild & ~pos
        sums = _kv_sums(run, static, wild, {"pos": pos, "neg": neg})
        return cls(n=len(u), base=int(s.sum() + (u.astype(int) - s.astype(int))[wild].sum()),
                   fixed_failing=int((pos & broken).sum()), fixed_healthy=int((pos & healthy).sum()),
                   negatives_healthy=int((neg & healthy).sum()), broke=int((neg & s & ~u).sum()),
                   kv=None if sums is None else sums[1])

    def operating_point(self, auroc: float, max_false: float) -> tuple[float, float]:
        """``(tpr, fpr)`` of the binormal gate of ``auroc`` at the lowest threshold whose false triggers stay within
        ``max_false``. The threshold, not ``fpr``, is searched: positives among the healthy rows count as false
        triggers, so even a perfect gate (``fpr`` 0) may have to leave some positives out."""
        healthy = max(self.fixed_healthy + self.negatives_healthy, 1)
        d = np.sqrt(2.0) * _N.inv_cdf(min(max(auroc, 1e-9), 1 - 1e-12))  # scores: N(d, 1) against N(0, 1)

        def rates(c: float) -> tuple[float, float]:
            return 1 - _N.cdf(c - d), 1 - _N.cdf(c)

        lo, hi = -12.0, d + 12.0  # flags every row at lo, none at hi
        for _ in range(80):  # false triggers fall as the threshold rises
            mid = (lo + hi) / 2
            tpr, fpr = rates(mid)
            lo, hi = (lo, mid) if (tpr * self.fixed_healthy + fpr * self.negatives_healthy) / healthy <= max_false \
                else (mid, hi)
        return rates(hi)

    def accuracy_at_auroc(self, auroc: float, max_false: float) -> float:
        tpr, fpr = self.operating_point(auroc, max_false)
        return (self.base + tpr * (self.fixed_failing + self.fixed_healthy) - fpr * self.broke) / self.n

    def kv_at_auroc(self, auroc: float, max_false: float) -> float | None:
        if self.kv is None:
            return None
        return _kv_behind(self.kv, self.n, "pos", "neg", *self.operating_point(auroc, max_false))

    def required_auroc(self, target: float | Callable[[float], float], max_false: float) -> float | None:
        """As ``RowGroups.required_auroc``, for this gate."""
        return least_auroc(lambda a: (target(a) if callable(target) else target)
                           - self.accuracy_at_auroc(a, max_false))

    def static_at_kv(self, points: list[dict], max_false: float) -> Callable[[float], float]:
        """As ``RowGroups.static_at_kv``, at this gate's memory."""
        if self.kv is None:
            raise HazardError("gate_need: static at equal memory needs the rows' per-row KV (outcomes['kv']); "
                              "these runs kept none")
        return lambda auroc: static_level(points, self.kv_at_auroc(auroc, max_false))

    def __add__(self, other: FixGroups) -> FixGroups:
        kv = None if self.kv is None or other.kv is None else {k: self.kv[k] + other.kv[k] for k in self.kv}
        return FixGroups(**{f: getattr(self, f) + getattr(other, f) for f in
                            ("n", "base", "fixed_failing", "fixed_healthy", "negatives_healthy", "broke")}, kv=kv)


def live_flags(gated: list[dict], run: dict, static: dict, full: dict) -> dict[str, np.ndarray] | None:
    """How fitted gates ranked a set's rows live: each row's score is how many of the ``gated`` runs (the same
    check behind gates of several thresholds, so their flags nest) acted on it. Wild rows are left out (the check
    escalates them whatever a gate says). Returns the scores with the rows compression broke (``broken``), the
    rows the ungated ``run``'s action fixes (``fixes``) and the rows it acted on (``acted``: a gate is only asked
    where the check found a disagreement, and a fix takes an action, up to bf16 batch noise), for
    ``ranking_auroc``. None when a run
    kept no per-prompt ``acted`` bits (runs before they were kept)."""
    u, s, wild, broken, _ = _split(run, static, full)
    if any(len(r["outcomes"].get("acted", "")) != len(u) for r in gated):
        return None
    score = np.sum([_array(r["outcomes"]["acted"]) for r in gated], axis=0, dtype=float)
    keep = ~wild
    acted = _array(run["outcomes"]["acted"]) if "acted" in run["outcomes"] else np.ones(len(u), bool)
    return {"score": score[keep], "broken": broken[keep], "fixes": (u & ~s)[keep], "acted": acted[keep]}


def ranking_auroc(score: np.ndarray, positives: np.ndarray) -> float | None:
    """AUROC of ``score`` for ``positives`` against the other rows (ties count half); None without both."""
    pos, neg = score[positives], score[~positives]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))
