"""Which runs are catastrophes, and at which token the catastrophe sets in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Verdict:
    catastrophe: bool
    onset: int  # -1: no catastrophe, or one whose onset is unknown (no loop and no reference twin)
    source: str  # "loop" | "divergence" | "none" | "unknown"


def verdict(loop_onset: int, nonterm: bool, correct: bool, ref_correct: bool | None, diverge: int) -> Verdict:
    """A catastrophe is a loop, a non-termination, or a wrong answer where the uncompressed run was right.

    Onset is the loop onset where there is a loop, otherwise the token where the run departs from its
    uncompressed twin. The uncompressed run itself has no twin (``ref_correct`` None): its non-loop
    catastrophes get onset -1 and source ``unknown``, and are left out of hazard labels.
    """
    loop = loop_onset >= 0
    induced_wrong = ref_correct is True and not correct
    if not (loop or nonterm or induced_wrong):
        return Verdict(False, -1, "none")
    if loop:
        return Verdict(True, loop_onset, "loop")
    if diverge >= 0:
        return Verdict(True, diverge, "divergence")
    return Verdict(True, -1, "unknown")
