"""Where a run stops making progress, and where it makes its first wrong claim: the onsets a reader would
point at for non-termination and wrong answers (the loop detector gives the loop onset).

Rules (tested in tests/test_detectors.py; checked by hand on GPU traces, see collect/results/onset_check):

stall
    A token is *novel* when the ``n``-gram of generated tokens ending at it has not occurred earlier in the
    generation. The final stretch without progress is the longest suffix, at least ``window`` tokens long,
    in which at most ``max_novel`` of the tokens are novel (a stretch that only recombines what the run
    already said: a loop, a near-loop with drifting numbers, a list that keeps repeating its items; the
    seams between recombined phrases stay sparse). Its onset is moved forward to the first repeated phrase
    in it: the first non-novel token, less the n-1 tokens its n-gram reaches back. None without one.
repeated lines
    The same for structure the token n-grams miss (numbered steps that cycle, a list of invented items
    whose numbers drift): the text is cut into lines and sentences, each reduced to a template (lower
    case, numbers and list markers dropped); the final stretch of at least ``min_lines`` segments in which
    every template occurs at least twice and there are at most half as many templates as segments (the
    last segment, often cut by the budget, aside). Its first segment is the onset. The stall onset is the
    earlier of the two rules.
answered
    The token after the first explicit answer statement ("The answer is N", ``\\boxed{N}``, "#### N"): a
    run that goes on after answering is off task from there (it invents follow-up problems, restates, pads).
off_topic
    Token 0 when the run's first sentence (up to a line break or full stop) with at least 3 content words
    (4+ letters, not stop words nor the solution words of off_task below; numbers), among its first 4,
    shares none with the question (a generic opening before it, "use Python to ensure our calculations
    are accurate", is not judged): the run answers something else from its first word (heavy eviction of
    the question); also token 0 when the whole output holds fewer than 3 words (it gave up at once: "P",
    "Char"). None otherwise.
off_task
    For a run that does not stop: the start of the final off-task stretch. The text is cut into segments
    (lines and sentences, as for repeated lines; the last one, often cut by the budget, aside). A segment
    with at least 3 topic words (4+ letters, not stop words, not the vocabulary of any worked solution:
    "calculate", "determine", "therefore", ...; compared by their first 4 letters, so "fold" meets
    "folding" and "hour" "hours") is off task when it shares none with the question nor with the
    uncompressed twin's answer (how a sound solution of this problem talks: "combined rate"). The onset is
    the first off-task segment from which on at least 2, and at least half, of the judged segments are
    off task: an invented follow-up problem, a list of made-up data ("January: 2 inches" for a question
    about eggs), the exemplars' topics. It replaces the twin's length ("overrun"), which matched no
    reader's onset in the hand checks (0 of 24, collect/results/onset_check.md): a run that reasons
    soundly on-topic until the budget cuts it gets no onset here (no reader saw a failure in it).
claim
    For a wrong answer: the first number the run writes that neither the prompt's question nor the
    uncompressed twin's (correct) output contains: the first step the healthy run never took. Its first
    token is the onset. None when every number is shared (then the answer statement is used).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from hazard.tasks.base import ANSWER_PATTERNS, normalise_number

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def novelty(tokens, n: int = 4) -> np.ndarray:
    """(len,) bool: the ``n``-gram ending at each token is new in the sequence (the first n-1 tokens count
    as novel)."""
    seen: set[tuple] = set()
    out = np.ones(len(tokens), dtype=bool)
    for t in range(n - 1, len(tokens)):
        g = tuple(tokens[t - n + 1: t + 1])
        out[t] = g not in seen
        seen.add(g)
    return out


def stall_onset(tokens, finished: bool = False, n: int = 4, window: int = 32, max_novel: float = 0.25) -> int:
    """Start of the final stretch without progress (see module docstring); -1 if there is none."""
    seq = list(tokens[:-1] if finished else tokens)
    if len(seq) < window:
        return -1
    nov = novelty(seq, n)
    suffix_novel = np.cumsum(nov[::-1])[::-1]  # novel tokens in seq[t:]
    length = len(seq) - np.arange(len(seq))
    ok = np.flatnonzero((suffix_novel <= max_novel * length) & (length >= window))
    if not len(ok):
        return -1
    t = int(ok[0])
    repeated = np.flatnonzero(~nov[t:])
    return max(t, t + int(repeated[0]) - (n - 1)) if len(repeated) else t


_STOP = frozenset((
    "that this with from have will then there their they what when which your into each were been more than "
    "them some much many would could should about also only over after before first next total lets solve "
    "step problem answer find need").split())
# Words every worked solution uses whatever the question (a sound on-topic step shares no topic with the question
# through them), dropped before the off-task comparison.
_SOLUTION_WORDS = frozenset((
    "calculate calculation calculations determine following therefore since given value equation result number "
    "numbers amount break down understand solve using python sympy code define variable print function formula "
    "steps step-by-step follows second third fourth final finally means known other same here just multiply "
    "divide subtract sum remaining left every ensure accurate accuracy approach correct equations express "
    "terms substitute substituting isolate sides both variables denote represent simplify simplifying "
    "information write rewrite solving").split())
_WORD = re.compile(r"[a-z]{4,}|\d+(?:\.\d+)?")


def _content(text: str) -> set[str]:
    return {w.rstrip("s") for w in _WORD.findall(text.lower()) if w not in _STOP and w not in _SOLUTION_WORDS}


def off_topic(text: str, question: str, opening: int = 4) -> bool:
    """The first sentence of ``text`` with 3 content words shares none with ``question`` (see module
    docstring); sentences before it (a generic opening) and after the first ``opening`` are not judged."""
    for part in re.split(r"\n|\.\s", text.strip())[:opening]:
        words = _content(part)
        if len(words) >= 3:
            return not (words & _content(question))
    return False


_TOPIC = re.compile(r"[a-z]{4,}")


def _topic(text: str) -> set[str]:
    return {w[:4] for w in _TOPIC.findall(text.lower()) if w not in _STOP and w not in _SOLUTION_WORDS}


def off_task_onset(text: str, question: str, ref_text: str | None = None, min_words: int = 3,
                   min_segments: int = 2) -> int:
    """Character offset where the final off-task stretch of ``text`` starts (see module docstring); -1 if
    there is none. The topic is the question's words and, when given, the healthy twin's (``ref_text``:
    how a sound solution of this problem talks)."""
    topic = _topic(question) | _topic(ref_text or "")
    judged = []  # (offset, off task?) for the segments with at least min_words topic words
    for m in [m for m in _SEGMENT.finditer(text) if m.group().strip()][:-1]:  # the last may be cut mid-way
        words = _topic(m.group())
        if len(words) >= min_words:
            judged.append((m.start(), not (words & topic)))
    off = np.array([f for _, f in judged], dtype=np.int64)
    suffix_off = np.cumsum(off[::-1])[::-1]  # off-task segments from i on
    suffix_len = len(off) - np.arange(len(off))
    ok = np.flatnonzero(off.astype(bool) & (suffix_off >= min_segments) & (2 * suffix_off >= suffix_len))
    return judged[int(ok[0])][0] if len(ok) else -1


def last_number(text: str) -> str | None:
    """The last number written in ``text``, normalised."""
    found = [m.group() for m in _NUMBER.finditer(text)]
    return normalise_number(found[-1]) if found else None


def answer_span(text: str) -> tuple[int, int] | None:
    """Character span of the first explicit answer statement in ``text``, or None."""
    spans = [m.span() for p in ANSWER_PATTERNS if (m := p.search(text))]
    return min(spans) if spans else None


def numbers(text: str) -> set[str]:
    """Normalised numbers written in ``text``."""
    return {x for m in _NUMBER.finditer(text) if (x := normalise_number(m.group())) is not None}


def first_new_number(text: str, known: set[str]) -> int | None:
    """Character offset of the first number in ``text`` not in ``known`` (normalised), or None."""
    for m in _NUMBER.finditer(text):
        x = normalise_number(m.group())
        if x is not None and x not in known:
            return m.start()
    return None


def token_of_char(decode_prefix: Callable[[int], str], n_tokens: int, char: int) -> int:
    """The token whose text holds character ``char`` of the decoded generation: the smallest m with
    ``len(decode_prefix(m + 1)) > char`` (binary search; prefix decodes grow with m)."""
    lo, hi = 0, n_tokens - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode_prefix(mid + 1)) > char:
            hi = mid
        else:
            lo = mid + 1
    return lo


_SEGMENT = re.compile(r"(?:[^\n.!?]|[.!?](?=\d))*(?:[.!?](?!\d)|\n|$)")  # "1.5" stays in its sentence
_MARKER = re.compile(r"^\s*(?:(?:step\s*)?#\s*[.):]|[-*\u2022])\s*")


def _template(segment: str) -> str:
    s = _NUMBER.sub("#", segment.lower())
    return re.sub(r"\s+", " ", _MARKER.sub("", s)).strip(" .!?")


def repeated_lines_onset(text: str, min_lines: int = 6) -> int:
    """Character offset where the final stretch of repeated line/sentence templates starts; -1 if none."""
    segs = [(m.start(), t) for m in _SEGMENT.finditer(text) if (t := _template(m.group()))]
    body = segs[:-1]  # the last segment may be cut mid-way
    best = -1
    counts: dict[str, int] = {}
    for i in range(len(body) - 1, -1, -1):  # grow the suffix backwards; keep the longest that qualifies
        counts[body[i][1]] = counts.get(body[i][1], 0) + 1
        n = len(body) - i
        if n >= min_lines and min(counts.values()) >= 2 and len(counts) * 2 <= n:
            best = body[i][0]
    return best


def progress_onsets(tokens, finished: bool, text: str, decode_prefix: Callable[[int], str] | None, question: str,
                    ref_text: str | None) -> dict[str, int]:
    """The onsets of this module for one run (-1 where a rule does not apply).

    ``decode_prefix(m)`` is the text of the first ``m`` generated tokens, decoded as ``text`` was; without
    it the rules that place an onset in the text (repeated lines, off_task, answered, claim) give -1.
    """
    n = len(tokens)
    out = {"stall_onset": stall_onset(tokens, finished), "answered_at": -1, "claim_onset": -1,
           "off_topic_at": 0 if off_topic(text, question) or len(re.findall(r"\w+", text)) < 3 else -1,
           "off_task_at": -1}
    if decode_prefix is None or not n:
        return out
    if not finished:
        c = repeated_lines_onset(text)
        if c >= 0:
            t = token_of_char(decode_prefix, n, c)
            out["stall_onset"] = t if out["stall_onset"] < 0 else min(out["stall_onset"], t)
        c = off_task_onset(text, question, ref_text)
        if c >= 0:
            out["off_task_at"] = token_of_char(decode_prefix, n, c)
    span = answer_span(text)
    if span is not None:
        out["answered_at"] = min(token_of_char(decode_prefix, n, span[1] - 1) + 1, n)
    if ref_text is not None:
        c = first_new_number(text, numbers(question) | numbers(ref_text))
        if c is not None:
            out["claim_onset"] = token_of_char(decode_prefix, n, c)
        elif span is not None:
            out["claim_onset"] = token_of_char(decode_prefix, n, span[0])
    return out
