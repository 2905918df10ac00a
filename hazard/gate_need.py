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
        u, s, f, wild = run_static_full(run, static, full, "gate_need")
        broken = ~wild & f & ~s
        healthy = ~wild & ~broken
        change = u.astype(int) - s.astype(int)
        kv = None
        if "kv" in run["outcomes"] and "kv" in static["outcomes"]:
            k_run, k_static = (np.asarray(r["outcomes"]["kv"], np.float64) for r in (run, static))
            acted = _array(run["outcomes"]["acted"]) if "acted" in run["outcomes"] else np.zeros(len(u), bool)
            # a run that acted nowhere (``--run full``: the ideal repair) reads nothing: no reading cost to take
            left = ~acted if acted.any() else np.zeros(len(u), bool)
            read = float((k_run - k_static)[left].mean()) if left.any() else 0.0
            kv = {"wild": float(k_run[wild].sum()), "read": read,
                  **{f"{name}_{part}": float(v[mask].sum()) for name, mask in (("broken", broken), ("healthy", healthy))
                     for part, v in (("run", k_run), ("rest", k_static + read))}}
        return cls(n=len(u), static_right=int(s.sum()), wild=int(change[wild].sum()),
                   broken=int(change[broken].sum()), healthy=int(change[healthy].sum()),
                   sizes={"wild": int(wild.sum()), "broken": int(broken.sum()), "healthy": int(healthy.sum())},
                   kv=kv)

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
        if self.kv is None:
            return None
        k = self.kv
        return (k["wild"] + tpr * k["broken_run"] + (1 - tpr) * k["broken_rest"] + fpr * k["healthy_run"]
                + (1 - fpr) * k["healthy_rest"]) / self.n

    def accuracy_at_auroc(self, auroc: float, fpr: float) -> float:
        """``expected_accuracy`` for a binormal gate of that AUROC held to ``fpr`` of the healthy rows."""
        return self.expected_accuracy(binormal_tpr(auroc, fpr), fpr)

    def required_auroc(self, target: float | Callable[[float], float], fpr: float, tol: float = 1e-4
                       ) -> float | None:
        """The least AUROC whose gate at ``fpr`` keeps ``target`` in expectation; 0.5 when a coin does, None
        when no gate does (accuracy grows with AUROC when the action fixes more broken rows than it breaks).
        ``target`` may depend on the AUROC (``target(auroc)``: static at the gate's own memory, which grows with
        it); the search then assumes the gate's lead over it grows with AUROC too (bisection)."""
        def short(a: float) -> float:  # how far under the target the gate of AUROC a keeps
            return (target(a) if callable(target) else target) - self.accuracy_at_auroc(a, fpr)

        if short(0.5) <= 0:
            return 0.5
        if short(1.0) > 0:
            return None
        lo, hi = 0.5, 1.0
        while hi - lo > tol:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if short(mid) <= 0 else (mid, hi)
        return hi

    def static_at_kv(self, points: list[dict], fpr: float) -> Callable[[float], float]:
        """Static compression at the memory of the gate of each AUROC held to ``fpr``: ``points`` are the set's
        static settings (``{"kv", "accuracy"}``, the uncompressed run among them), mixed per row
        (``hazard.frontiers.mix_level``). Needs per-row KV; a gate cheaper than every point is an error."""
        if self.kv is None:
            raise HazardError("gate_need: static at equal memory needs the rows' per-row KV (outcomes['kv']); "
                              "these runs kept none")

        def level(auroc: float) -> float:
            kv = self.expected_kv(binormal_tpr(auroc, fpr), fpr)
            if (acc := mix_level(points, kv)) is None:
                raise HazardError(f"gate_need: no static setting holds as little as the gate's {kv:.3f} mean KV "
                                  f"(the cheapest: {min(p['kv'] for p in points):.3f}); add a stronger static press")
            return acc
        return level


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
