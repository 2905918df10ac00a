"""What the prefill press kept of the question: per-trace signals, known before the first generated token.

A prefill press decides once which prompt entries each layer and KV head keep. The engine reports, per prompt
position, the share of (layer, KV head) caches that hold it right after prefill (``Generation.prompt_kept``);
these signals reduce that to the question, the part of the prompt an answer needs (the exemplars before it
only show the format). A press that drops the question's numbers leaves the model to answer from the
exemplars'.

Measured before they became signals (evaluate/RESULTS.md 0h, 80 GSM8K train prompts, 1.5B, ExpectedAttention
0.875, float32 prefill on a CPU): the share of the question's digit tokens kept by under 10% of layer-heads
separates answers compression broke from answers it left right at AUROC 0.70, and from every other answer
(those wrong uncompressed too) at 0.63. They are constant over a trace: a guard reads them as a prior.
"""

from __future__ import annotations

import re

import numpy as np

from hazard.errors import HazardError

PREFILL_SIGNALS = ("question_kept", "question_digits_kept", "question_digits_lost")
LOST_BELOW = 0.1  # a digit token held by fewer than this share of layer-heads counts as lost
_DIGIT = re.compile(r"\d")


def question_positions(tok, text: str, question: str) -> tuple[list[int], list[int]]:
    """Token positions of ``question`` (its last occurrence in the templated prompt ``text``, tokenized as the
    engine's prompt is) and of the digit-bearing tokens among them. Needs a fast tokenizer (offsets)."""
    start = text.rfind(question)
    if start < 0 or not question:
        raise HazardError("the question is not in the templated prompt; the task's prompt format changed")
    end = start + len(question)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    q, digits = [], []
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if a < end and b > start:
            q.append(i)
            if _DIGIT.search(text[a:b]):
                digits.append(i)
    return q, digits


def prefill_signals(kept: np.ndarray | None, q: list[int], digits: list[int]) -> dict[str, float]:
    """``PREFILL_SIGNALS`` of one row from its ``prompt_kept`` (None: collected without signals, all NaN):
    the question tokens' mean kept share, its digit tokens' mean kept share, and the share of its digit tokens
    kept by under ``LOST_BELOW`` of layer-heads (a question without digits keeps them all: 1 and 0)."""
    if kept is None:
        return dict.fromkeys(PREFILL_SIGNALS, float("nan"))
    kept = np.asarray(kept, dtype=np.float64)
    d = kept[digits] if digits else np.ones(1)
    return {"question_kept": float(kept[q].mean()) if q else 1.0, "question_digits_kept": float(d.mean()),
            "question_digits_lost": float((d < LOST_BELOW).mean())}
