"""What every task gives the collector: prompts with gold answers, and an exact scorer."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# Accepted explicit answer formats, tried in this order; the first occurrence wins, because models that
# lose the thread tend to run on into invented follow-up problems with answers of their own.
_NUM = r"(-?[\d,]*\.?\d+)"
ANSWER_PATTERNS = (
    re.compile(r"[Tt]he (?:final )?answer is[:\s]*\$?\\?\(?\s*" + _NUM),
    re.compile(r"\\boxed\{\s*\$?" + _NUM),
    re.compile(r"####\s*\$?" + _NUM),
)


@dataclass
class Prompt:
    """One problem, as chat messages, with what scoring and the amnesia detector need.

    Parameters
    ----------
    id : str
        Stable id, unique within the task; splits group traces by it.
    messages : list of dict
        Chat messages (system / user / assistant exemplars / user question).
    gold : str
        The exact answer.
    distractors : list of str
        Answers that are right for something else in the prompt (few-shot exemplars, other keys):
        answering one of them means the model answered the wrong question.
    exemplar_texts : list of str
        Text of in-context exemplars; copying long runs of it is a sign of instruction amnesia.
    format : str
        The prompt format (exemplar set, shot count, system wording) as a short label; held-out-format
        splits group traces by it. The same problem in two formats keeps one ``id``.
    """

    id: str
    messages: list[dict]
    gold: str
    distractors: list[str] = field(default_factory=list)
    exemplar_texts: list[str] = field(default_factory=list)
    format: str = "default"


def parse_answer(text: str) -> str | None:
    """The first explicit answer in ``text`` ("The answer is N", ``\\boxed{N}``, "#### N"), normalised."""
    for pattern in ANSWER_PATTERNS:
        m = pattern.search(text)
        if m:
            return normalise_number(m.group(1))
    return None


def normalise_number(s: str) -> str | None:
    s = s.replace(",", "").strip().rstrip(".")
    try:
        x = float(s)
    except ValueError:
        return None
    if not math.isfinite(x):
        return None
    return str(int(x)) if x == int(x) else repr(x)


def score(answer: str | None, gold: str) -> bool:
    """Exact numeric match after normalisation; no answer is wrong."""
    return answer is not None and answer == normalise_number(gold)
