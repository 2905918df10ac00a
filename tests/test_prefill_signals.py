"""hazard.signals.prefill: what the prefill press kept of the question, per trace."""

import math

import numpy as np
import pytest

from hazard.errors import HazardError
from hazard.signals.prefill import PREFILL_SIGNALS, prefill_signals, question_positions


def test_question_positions_are_the_last_occurrence_and_its_digits(tok):
    question = "Tom has 3 apples and buys 45 more."
    text = tok.apply_chat_template([{"role": "user", "content": f"Example: {question}"},
                                    {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    q, digits = question_positions(tok, text, question)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode([ids[i] for i in q]) == question  # the second occurrence, whole
    assert tok.decode([ids[i] for i in digits]) == "345" and q[0] > text.find(question)
    with pytest.raises(HazardError, match="not in the templated prompt"):
        question_positions(tok, text, "a question that is not there")


def test_prefill_signals_of_hand_made_keeps():
    kept = np.array([1.0, 1.0, 0.05, 0.5, 0.0, 1.0])  # share of layer-heads holding each prompt position
    got = prefill_signals(kept, q=[2, 3, 4, 5], digits=[2, 3])
    assert got["question_kept"] == pytest.approx((0.05 + 0.5 + 0 + 1) / 4)
    assert got["question_digits_kept"] == pytest.approx(0.275)
    assert got["question_digits_lost"] == 0.5  # 0.05 is under 10%, 0.5 is not
    assert prefill_signals(np.ones(6), q=[1, 2], digits=[]) == {"question_kept": 1.0, "question_digits_kept": 1.0,
                                                                "question_digits_lost": 0.0}
    assert all(math.isnan(v) for v in prefill_signals(None, [1], [1]).values())
    assert set(got) == set(PREFILL_SIGNALS)


def test_the_per_setting_table_ranks_runs_that_lost_the_question_as_riskier():
    """train/prefill_signals.py on hand-made traces: in one setting the loops kept less of the question than
    the healthy runs (AUROC 1 in the risk direction), the wrong answers as much (0.5); too few runs of a kind
    give no AUROC; uncompressed runs are left out."""
    import sys
    from pathlib import Path

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent.parent / "train"))
    from prefill_signals import format_table, table

    rows = []
    for i in range(12):
        for kind, kept in (("healthy", 0.5), ("loop", 0.1), ("wrong", 0.5)):
            rows.append({"press": "knorm", "ratio": 0.875, "prompt_id": f"p{i}", "catastrophe": kind != "healthy",
                         "loop": kind == "loop", "nonterm": False, "correct": kind == "healthy",
                         "onset": 1 if kind == "loop" else (5 if kind == "wrong" else -1),
                         "label_h8": [0] * 10 if kind == "healthy" else [1] * 10,
                         "post_onset": [t >= {"loop": 1, "wrong": 5}.get(kind, 10) for t in range(10)],
                         "question_kept": kept + 0.001 * i, "question_digits_kept": kept,
                         "question_digits_lost": 1 - kept})
        rows.append({"press": "none", "ratio": 0.0, "prompt_id": f"p{i}", "catastrophe": False, "loop": False,
                     "onset": -1, "label_h8": [0] * 10, "post_onset": [False] * 10,
                     "nonterm": False, "correct": True, "question_kept": 1.0, "question_digits_kept": 1.0,
                     "question_digits_lost": 0.0})
    t = table(pd.DataFrame(rows))
    assert list(t) == ["knorm@0.875"] and t["knorm@0.875"]["kinds"] == {"healthy": 12, "loop": 12, "wrong": 12}
    a = t["knorm@0.875"]["auroc"]
    assert a["question_kept"]["loop"] == 1.0 and a["question_digits_lost"]["loop"] == 1.0
    assert a["question_kept"]["wrong"] == pytest.approx(0.5) and a["question_kept"]["nonterm"] is None
    assert "knorm@0.875" in format_table(t)
    # positives: the tokens before each onset (position 0 of the loops, 0-4 of the wrong answers); negatives:
    # every healthy token (0-9). Position 0 outranks 9 of 10 negative positions and ties one (0.95), 1 -> 0.85,
    # ..., 4 -> 0.55: (12 * 0.95 + 12 * (0.95 + 0.85 + 0.75 + 0.65 + 0.55)) / 72
    assert t["knorm@0.875"]["position_pre_onset_auroc"] == pytest.approx((0.95 + 3.75) / 6)

