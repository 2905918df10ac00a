"""Which runs are catastrophes, and at which token the catastrophe sets in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Verdict:
    catastrophe: bool
    onset: int  # -1: no catastrophe, or one whose onset no rule places
    source: str  # "loop" | "off_topic" | "stall" | "answered" | "off_task" | "claim" | "none" | "unknown"


def verdict(loop_onset: int, nonterm: bool, correct: bool, ref_correct: bool | None, *, stall: int = -1,
            answered: int = -1, claim: int = -1, off_task: int = -1, off_topic: int = -1) -> Verdict:
    """A catastrophe is a loop, a non-termination, or a wrong answer where the uncompressed run was right.

    Onsets (``hazard.labels.progress`` states the rules), in this order:

    - loop: the start of the first sustained cycle;
    - non-termination: where progress stops, the earliest of the stall onset (the final stretch that only
      recombines what the run already said), the token after the first explicit answer (what follows
      is off task) and the start of the final off-task stretch (``off_task``: segments about something
      the question never mentions). A run that reasons on-topic until the budget cuts it gets none: the
      twin's length ("overrun", used until schema 7) matched no reader's onset in the hand checks;
    - wrong answer: the first number the healthy twin never wrote ("claim"), else the answer statement;
    - either, when the run's first sentence has nothing to do with the question: token 0 ("off_topic").

    Divergence from the twin is not an onset (bf16 batch arithmetic alone parts identical runs); it stays
    an analysis column of the traces. A catastrophe no rule places gets onset -1, source ``unknown``, and
    is left out of hazard labels.
    """
    induced_wrong = ref_correct is True and not correct
    if not (loop_onset >= 0 or nonterm or induced_wrong):
        return Verdict(False, -1, "none")
    if loop_onset >= 0:
        return Verdict(True, loop_onset, "loop")
    if off_topic >= 0:
        return Verdict(True, off_topic, "off_topic")
    if nonterm:
        cands = [(t, s) for t, s in ((stall, "stall"), (answered, "answered"), (off_task, "off_task")) if t >= 0]
        if cands:
            t, s = min(cands)
            return Verdict(True, t, s)
        return Verdict(True, -1, "unknown")
    if claim >= 0:
        return Verdict(True, claim, "claim")
    return Verdict(True, -1, "unknown")
