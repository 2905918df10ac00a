"""Catastrophe detectors over one generated token sequence.

Definitions (tested in tests/test_detectors.py):

loop
    The generation ends in a cycle: from some token t0 to the end (an end token excluded), every token
    equals the one ``p`` tokens later, for a period p <= ``max_period``, and that periodic stretch covers at
    least 3 periods and ``min_span`` tokens. Onset = t0, the start of the first copy of the cycle; among
    periods, the earliest t0 wins (then the shortest period). A cycle the model escapes from is not a loop.
non_termination
    No end token within the budget.
divergence
    The first index where a compressed run's tokens differ from its uncompressed twin (greedy decoding
    is deterministic, so the twin is well defined); -1 when the runs are identical.
amnesia
    The model answered a different question: its parsed answer is one of the prompt's distractors
    (a few-shot exemplar's answer, another key's value) and not the gold answer, or its output copies a
    run of ``ngram`` words from an in-context exemplar that the question itself does not contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass
class Loop:
    onset: int
    period: int


def detect_loop(tokens: list[int], finished: bool = False, max_period: int = 40, min_span: int = 16) -> Loop | None:
    """The persisting cycle at the end of ``tokens``, if any (see module docstring)."""
    seq = np.asarray(tokens[:-1] if finished else tokens)
    n = len(seq)
    best: Loop | None = None
    for p in range(1, min(max_period, n // 3) + 1):
        eq = seq[:-p] == seq[p:]  # eq[i]: token i repeats p later
        if not eq[-1]:
            continue
        breaks = np.flatnonzero(~eq)
        t0 = int(breaks[-1]) + 1 if len(breaks) else 0
        span = n - t0
        if span >= max(3 * p, min_span) and (best is None or t0 < best.onset):
            best = Loop(onset=t0, period=p)
    return best


def divergence(tokens: list[int], reference: list[int]) -> int:
    """First index where ``tokens`` and ``reference`` differ; -1 if identical."""
    n = min(len(tokens), len(reference))
    a, b = np.asarray(tokens[:n]), np.asarray(reference[:n])
    diff = np.flatnonzero(a != b)
    if len(diff):
        return int(diff[0])
    return -1 if len(tokens) == len(reference) else n


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def detect_amnesia(text: str, answer: str | None, gold: str, distractors: list[str],
                   exemplar_texts: list[str], question: str, ngram: int = 8) -> bool:
    """True when the output answers a distractor or copies an exemplar (see module docstring)."""
    if answer is not None and answer != gold and answer in distractors:
        return True
    if not exemplar_texts:
        return False
    out = _ngrams(_words(text), ngram)
    own = _ngrams(_words(question), ngram)
    return any((_ngrams(_words(ex), ngram) - own) & out for ex in exemplar_texts)
