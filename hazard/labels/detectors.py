"""Catastrophe detectors over one generated token sequence.

Definitions (tested in tests/test_detectors.py):

loop
    The generation ends in a cycle: from some token t0 to the end (an end token excluded), every token
    equals the one ``p`` tokens later, for a period p <= ``max_period``, and that periodic stretch covers at
    least 3 periods and ``min_span`` tokens. A cycle the model escapes for good is not a loop. Onset = the
    start of the first sustained cycle (same length rule) in the generation, which is t0 unless the model
    already cycled earlier and broke out ("TheTheThe...", then "####..." to the end: onset at the first
    "The"). Among periods, the earliest start wins; the reported period is the terminal cycle's.
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
    # the first token that repeats one of the onset's cycle (onset + that cycle's period): where the repetition
    # first shows, which a reader of the tokens cannot see before (issue 11's "within 4 tokens" bar counts
    # from the onset, so a loop of period over 4 is out of its reach)
    first_repeat: int = -1


def _cyclic_runs(seq: np.ndarray, p: int, min_len: int) -> list[tuple[int, int]]:
    """Maximal stretches ``[start, end)`` where every token equals the one ``p`` later, at least ``min_len`` long."""
    eq = np.concatenate([[False], seq[:-p] == seq[p:], [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(eq))  # alternating starts and ends of True runs in seq[:-p] == seq[p:]
    runs = []
    for s, e in zip(edges[::2], edges[1::2]):
        if (e - s) + p >= min_len:  # True at i..e-1 means tokens s .. e-1+p repeat with period p
            runs.append((int(s), int(e) + p))
    return runs


def detect_loop(tokens: list[int], finished: bool = False, max_period: int = 40,
                min_span: int = 16) -> Loop | None:
    """The loop catastrophe of ``tokens``, if any (see module docstring).

    The trace is a loop when it ends in a cycle covering >= 3 periods and >= ``min_span`` tokens. Its onset
    is the start of the first sustained cycle (same length rule, any period <= ``max_period``) in the
    generation: models under heavy eviction often stutter in one cycle, break out, and fall into
    another, and the hazard began with the first.
    """
    seq = np.asarray(tokens[:-1] if finished else tokens)
    n = len(seq)
    terminal: Loop | None = None
    onset, first_repeat = n, n
    for p in range(1, min(max_period, n // 3) + 1):
        runs = _cyclic_runs(seq, p, max(3 * p, min_span))
        if not runs:
            continue
        if runs[0][0] < onset:  # ties: the shorter period, found first, shows its repetition first
            onset, first_repeat = runs[0][0], runs[0][0] + p
        start, end = runs[-1]
        if end == n and (terminal is None or start < terminal.onset):
            terminal = Loop(onset=start, period=p)
    if terminal is None:
        return None
    # the terminal cycle starts at one of its period's runs, so never before ``onset``
    return Loop(onset=onset, period=terminal.period, first_repeat=first_repeat)


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
