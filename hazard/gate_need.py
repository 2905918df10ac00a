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
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from hazard.errors import HazardError
from hazard.paired import _array

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
    """

    n: int
    static_right: int
    wild: int
    broken: int
    healthy: int
    sizes: dict

    @classmethod
    def from_rows(cls, run: dict, static: dict, full: dict) -> RowGroups:
        """The groups of ``run``'s prompts, from the three rows' per-prompt outcomes."""
        for row in (run, static, full):
            if "catastrophe" not in row.get("outcomes", {}):
                raise HazardError(f"gate_need: a {row.get('policy')} row kept no per-prompt outcomes with "
                                  "catastrophes; re-run it with this version of hazard evaluate")
        u, s, f = (_array(r["outcomes"]["correct"]) for r in (run, static, full))
        if not len(u) == len(s) == len(f):
            raise HazardError(f"gate_need: the runs must answer the same prompts ({len(u)}, {len(s)}, {len(f)})")
        wild = _array(static["outcomes"]["catastrophe"])
        broken = ~wild & f & ~s
        healthy = ~wild & ~broken
        change = u.astype(int) - s.astype(int)
        return cls(n=len(u), static_right=int(s.sum()), wild=int(change[wild].sum()),
                   broken=int(change[broken].sum()), healthy=int(change[healthy].sum()),
                   sizes={"wild": int(wild.sum()), "broken": int(broken.sum()), "healthy": int(healthy.sum())})

    def expected_accuracy(self, tpr: float, fpr: float) -> float:
        """Accuracy behind a gate that repairs ``tpr`` of the broken rows and ``fpr`` of the healthy ones."""
        return (self.static_right + self.wild + tpr * self.broken + fpr * self.healthy) / self.n

    def accuracy_at_auroc(self, auroc: float, fpr: float) -> float:
        """``expected_accuracy`` for a binormal gate of that AUROC held to ``fpr`` of the healthy rows."""
        return self.expected_accuracy(binormal_tpr(auroc, fpr), fpr)

    def required_auroc(self, target: float, fpr: float, tol: float = 1e-4) -> float | None:
        """The least AUROC whose gate at ``fpr`` keeps ``target`` in expectation; 0.5 when a coin does, None
        when no gate does (accuracy grows with AUROC when the action fixes more broken rows than it breaks)."""
        if self.accuracy_at_auroc(0.5, fpr) >= target:
            return 0.5
        if self.accuracy_at_auroc(1.0, fpr) < target:
            return None
        lo, hi = 0.5, 1.0
        while hi - lo > tol:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.accuracy_at_auroc(mid, fpr) >= target else (mid, hi)
        return hi
