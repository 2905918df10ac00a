import re

import numpy as np
import pytest

from hazard.labels import detect_amnesia, detect_loop, divergence, hazard_labels, stall_onset, verdict


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


@pytest.mark.parametrize("args,kw,expected", [
    ((-1, False, True, True), {}, (False, -1, "none")),
    ((12, True, False, True), {"stall": 5}, (True, 12, "loop")),  # a loop's own onset wins
    ((-1, True, False, False), {"stall": 40, "answered": 30}, (True, 30, "answered")),  # the earlier
    ((-1, True, False, False), {"stall": 40}, (True, 40, "stall")),
    ((-1, True, False, True), {"off_task": 90, "stall": 120}, (True, 90, "off_task")),  # the earliest rule
    ((-1, True, False, True), {}, (True, -1, "unknown")),  # ran on, on topic: no reader's onset (no "overrun")
    ((-1, True, False, None), {}, (True, -1, "unknown")),  # uncompressed run, nothing to place it
    ((-1, True, False, None), {"stall": 60}, (True, 60, "stall")),  # ... but a stall needs no twin
    ((-1, False, False, True), {"claim": 17}, (True, 17, "claim")),  # wrong where the reference was right
    ((-1, False, False, True), {}, (True, -1, "unknown")),
    ((-1, False, False, False), {"claim": 5}, (False, -1, "none")),  # wrong like the reference: not induced
])
def test_verdict(args, kw, expected):
    v = verdict(*args, **kw)
    assert (v.catastrophe, v.onset, v.source) == expected


def test_stall_onset_is_where_the_run_stops_saying_new_things():
    rng = np.random.default_rng(0)
    fresh = rng.integers(1000, 2000, 80).tolist()  # progress: every 4-gram new
    assert stall_onset(fresh) == -1
    # then it only recombines two phrases it already wrote (not a strict cycle: the order varies)
    a, b = fresh[10:16], fresh[30:37]
    tail = sum(([a, b][i] for i in rng.integers(0, 2, 14)), [])
    onset = stall_onset(fresh + tail)
    assert 80 <= onset <= 80 + 8, onset  # within a few tokens of where the recombining starts
    assert detect_loop(fresh + tail) is None  # no single cycle: the loop detector would not place it
    assert stall_onset(fresh + tail[:20]) == -1  # shorter than a window: not a stall
    assert stall_onset([7] * 50) <= 1  # the second 7 repeats the first
    assert stall_onset(fresh + tail + [999], finished=True) == onset  # the end token is left out


def test_progress_onsets_place_answer_and_first_wrong_claim():
    from hazard.labels.progress import first_new_number, numbers, progress_onsets, token_of_char

    words = ["She ", "has ", "3 ", "+ ", "4 ", "= ", "7 ", "eggs. ", "Then ", "7 ", "* ", "9 ", "= ", "63. ",
             "The answer is 63. ", "Next ", "question: ", "..."]
    text = "".join(words)

    def prefix(m):
        return "".join(words[:m])

    assert token_of_char(prefix, len(words), text.index("63")) == 11 + 2  # "63. " is word 13
    assert numbers("1,200 and 3.50 and 7.") == {"1200", "3.5", "7"}
    assert first_new_number(text, {"3", "4", "7"}) == text.index("9")
    question, ref = "She has 3 eggs and buys 4.", "3 + 4 = 7 eggs. Then 7 * 2 = 14. The answer is 14."
    out = progress_onsets(list(range(len(words))), True, text, prefix, question, ref)
    assert out["answered_at"] == 15  # the token after "The answer is 63. "
    assert out["claim_onset"] == 11  # "9": the first number the healthy twin never wrote
    assert out["stall_onset"] == -1
    same = progress_onsets(list(range(len(words))), True, text, prefix, question, text)  # every number shared
    assert same["claim_onset"] == 14  # falls back to the answer statement
    assert progress_onsets([1, 2], False, "no answer", lambda m: "", "q", None)["answered_at"] == -1


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


def test_off_topic_last_number_and_their_verdict():
    from hazard.labels.progress import last_number, off_topic

    q = "Janet's ducks lay 16 eggs per day. She eats three for breakfast. How much does she make at the market?"
    assert off_topic("The total rainfall in Virginia over one year is 12 inches.\nThe average...", q)
    assert not off_topic("Janet's ducks lay 16 eggs per day and she eats 3.", q)
    assert not off_topic("JoJoJoJo", q)  # fewer than 3 content words: no judgement (the loop detector's)
    # A generic opening is not judged; the first sentence with 3 content words is.
    opening = "Let's break down the problem step by step and use Python to ensure our calculations are accurate.\n"
    assert not off_topic(opening + "Janet's ducks lay 16 eggs per day.", q)
    assert off_topic(opening + "The rainfall in Virginia was 12 inches in March.", q)
    assert last_number("52 + 18 = 70\nTherefore, Travis now has 70 apps.") == "70"
    assert last_number("no numbers") is None
    v = verdict(-1, True, False, True, stall=40, off_topic=0)
    assert (v.catastrophe, v.onset, v.source) == (True, 0, "off_topic")
    assert verdict(-1, False, True, True, off_topic=0).catastrophe is False  # right answer: no catastrophe


def test_an_output_of_a_word_or_two_is_off_topic_from_token_0():
    from hazard.labels.progress import progress_onsets

    out = progress_onsets([5, 6], True, "Char", lambda m: "Char"[: 2 * m], "How many apples?", "x")
    assert out["off_topic_at"] == 0
    full = "Tom has 3 apples and buys 4 more, so 7."
    assert progress_onsets(list(range(9)), True, full, lambda m: full, "Tom has 3 apples and buys 4.", full)[
        "off_topic_at"] == -1


def test_repeated_lines_stall_where_token_ngrams_see_progress():
    """Numbered steps that cycle and invented lists whose numbers drift: every line is new as tokens, but
    the line templates repeat; the stall starts at the first line of the repeated stretch."""
    from hazard.labels.progress import progress_onsets, repeated_lines_onset

    head = "To solve this, we follow these steps:\n"
    cycle = "".join(f"{2 * i + 1}. Determine the number of days.\n{2 * i + 2}. Calculate the average per day.\n"
                    for i in range(5))
    assert repeated_lines_onset(head + cycle + "11. Determ") == len(head) + 2  # the first step, after "1."
    months = "".join(f"- Month {i}: {1 + i / 10:.1f} inches\n" for i in range(1, 9))
    assert repeated_lines_onset("First, the rainfall:\n" + months) == len("First, the rainfall:\n")
    healthy = ("She has 3 apples. She buys 4 more, so 3 + 4 = 7. Each costs $2, so 7 * 2 = 14 dollars.\n"
               "Her brother pays half: 14 / 2 = 7.\nThe answer is 7.")
    assert repeated_lines_onset(healthy) == -1
    assert repeated_lines_onset("Step 1: add.\nStep 2: add.\nStep 3: add.") == -1  # too short to be a stall
    # in progress_onsets: a run that never ended takes the earlier of the two stall rules
    text = head + cycle
    words = [text[i:i + 4] for i in range(0, len(text), 4)]

    def prefix(m):
        return "".join(words[:m])

    out = progress_onsets(list(range(len(words))), False, text, prefix, "How many days?", None)
    assert out["stall_onset"] == (len(head) + 2) // 4
    assert progress_onsets(list(range(len(words))), True, text, prefix, "How many days?", None)["stall_onset"] == -1


def test_off_task_onset_is_the_final_stretch_about_something_else():
    from hazard.labels.progress import off_task_onset, progress_onsets

    q = "Janet's ducks lay 16 eggs per day. She eats three for breakfast. How much does she make at the market?"
    start = "Janet's ducks lay 16 eggs a day.\nShe eats three eggs for breakfast.\n"
    invented = "".join(f"The rainfall in month {i} was {i + 1} inches of heavy rain.\n" for i in range(6))
    text = start + invented + "The rainfall in"  # cut by the budget
    assert off_task_onset(text, q) == len(start)
    # Sound on-topic reasoning cut by the budget: no onset, whatever solution words it uses.
    sound = ("First, we calculate how many eggs Janet's ducks lay per day.\nTherefore, she sells the remaining "
             "eggs at the market.\nThen we multiply the eggs she sells by the price at the market.\nThe")
    assert off_task_onset(sound, q) == -1
    # One stray off-topic sentence inside on-topic reasoning is not a stretch.
    stray = start + "The weather outside was sunny today.\n" + sound
    assert off_task_onset(stray, q) == -1
    # Words are compared by their first four letters ("breakfasts" meets "breakfast").
    assert off_task_onset("Breakfasts matter.\nBreakfasts at market stalls.\nBreakfasts again.\nx", q) == -1
    # In progress_onsets: a token offset, for runs that did not finish only.
    words = re.split(r"(?<=\s)", text)  # a token per word, each with the white space after it
    prefix = lambda m: "".join(words[:m])  # noqa: E731
    toks = list(range(len(words)))
    out = progress_onsets(toks, False, text, prefix, q, None)
    assert "".join(words[:out["off_task_at"]]) == start
    assert progress_onsets(toks, True, text, prefix, q, None)["off_task_at"] == -1


def test_a_loops_first_repeat_is_where_its_onset_cycle_first_repeats():
    """``first_repeat``: the onset plus the period of the cycle that starts there (not the terminal cycle's), the
    first token whose repetition a reader of the tokens can see."""
    assert detect_loop([1, 2, 3] + [7, 8, 9, 10] * 6).first_repeat == 3 + 4
    loop = detect_loop([1, 2] + [7] * 20 + [3, 4] + [5, 6] * 10)  # stutters (period 1), then ends in period 2
    assert (loop.onset, loop.period, loop.first_repeat) == (2, 2, 3)
    assert detect_loop([4, 5] * 12).first_repeat == 2  # also periodic with 4: the shorter period shows first
    long = list(range(30)) + list(range(12)) * 4
    assert detect_loop(long).first_repeat == 30 + 12
