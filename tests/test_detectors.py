import numpy as np
import pytest

from hazard.labels import detect_amnesia, detect_loop, divergence, hazard_labels, verdict


def test_loop_after_prefix():
    loop = detect_loop([1, 2, 3] + [7, 8, 9, 10] * 6)
    assert (loop.onset, loop.period) == (3, 4)


def test_loop_partial_last_period_and_end_token():
    toks = [5, 6] + [1, 2, 3] * 7 + [1, 2]  # cut mid-cycle by the budget
    assert detect_loop(toks).onset == 2
    finished = [5, 6] + [1, 2, 3] * 7 + [99]  # the end token is not part of the cycle
    assert detect_loop(finished, finished=True).onset == 2
    assert detect_loop(finished, finished=False) is None


def test_loop_needs_three_periods_and_min_span():
    assert detect_loop([1, 2, 3, 4, 5, 6] * 2) is None  # two copies only
    assert detect_loop([9, 9, 9, 9, 9]) is None  # shorter than min_span
    assert detect_loop([9] * 16).onset == 0


def test_onset_is_the_first_sustained_cycle_when_the_trace_ends_looping():
    toks = [1, 2] + [7] * 20 + [3, 4] + [5, 6] * 10
    loop = detect_loop(toks)
    assert (loop.onset, loop.period) == (2, 2)
    # A short stutter (below min_span) before the terminal loop does not move the onset.
    toks = [1] + [7] * 5 + [3] + [5, 6] * 10
    assert detect_loop(toks).onset == 7


def test_escaped_cycle_is_not_a_loop():
    assert detect_loop([1, 2] * 12 + list(range(10, 30))) is None


def test_loop_earliest_onset_wins_and_long_period_ignored():
    # Period 2 from index 0, also periodic with 4: the earliest onset and the shortest period are kept.
    assert (detect_loop([4, 5] * 12).onset, detect_loop([4, 5] * 12).period) == (0, 2)
    long = list(range(41)) * 3
    assert detect_loop(long) is None  # period 41 exceeds max_period=40
    assert detect_loop(long, max_period=41).period == 41


def test_divergence():
    assert divergence([1, 2, 3], [1, 2, 3]) == -1
    assert divergence([1, 2, 4], [1, 2, 3]) == 2
    assert divergence([1, 2], [1, 2, 3]) == 2
    assert divergence([], [1]) == 0


def test_amnesia():
    kw = dict(gold="18", distractors=["4", "110"], exemplar_texts=[], question="q")
    assert detect_amnesia("The answer is 4.", "4", **kw)
    assert not detect_amnesia("The answer is 18.", "18", **kw)
    assert not detect_amnesia("The answer is 5.", "5", **kw)
    ex = "Natalia sold clips to 48 of her friends in April and then she sold half as many clips in May"
    out = "Let me see. Natalia sold clips to 48 of her friends in April and then more."
    assert detect_amnesia(out, None, "1", [], [ex], question="How many eggs?")
    # Copying words the question itself contains is not amnesia.
    assert not detect_amnesia(out, None, "1", [], [ex], question=out)


@pytest.mark.parametrize("args,expected", [
    ((-1, False, True, True, -1), (False, -1, "none")),
    ((12, True, False, True, 3), (True, 12, "loop")),
    ((-1, True, False, False, 7), (True, 7, "divergence")),
    ((-1, False, False, True, 5), (True, 5, "divergence")),  # wrong where the reference was right
    ((-1, False, False, False, 5), (False, -1, "none")),  # wrong like the reference: not induced
    ((-1, True, False, None, -1), (True, -1, "unknown")),  # uncompressed run, no twin
])
def test_verdict(args, expected):
    v = verdict(*args)
    assert (v.catastrophe, v.onset, v.source) == expected


def test_hazard_labels():
    labels, post = hazard_labels(10, 6, horizons=(2, 8))
    assert labels[2].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert labels[8].tolist() == [1] * 10
    assert post.tolist() == [False] * 6 + [True] * 4
    labels, post = hazard_labels(5, -1, horizons=(4,))
    assert labels[4].sum() == 0 and not post.any()
    labels, post = hazard_labels(3, 0, horizons=(4,))
    assert labels[4].tolist() == [1, 1, 1] and post.all()
    assert labels[4].dtype == np.int8
