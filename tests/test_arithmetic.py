import random
import re

import numpy as np
import pytest

from hazard.signals.arithmetic import ArithmeticCheck, agree, arith_wrong, token_pieces, wrong_equations


@pytest.mark.parametrize("line, wrong", [
    # the wrong results of the 1.5B's compressed runs (collect/results/onset_check.md) ...
    ("So, John runs 1.5 hours + 3 hours + 3 hours = 8 hours in total.", 1),
    ("251 - (68 + 44 + 85) = 251 - 207 = 44 points.", 1),
    (" 2 = 1 + 3 + 0.5 + 1.5 + 2 = 7 hours.", 1),
    (r"\[ 24 \text{ pairs} \times \$12.00 \text{ per pair} = \$298.00 \]", 1),
    (r"\frac{1}{4} \times 16 = 5", 1),
    ("3 + 4 * 2 = 14", 1),  # written left to right, read as arithmetic is
    ("5 times 4 = 21", 1),
    # ... and the same lines right, or lines that state rather than compute, or do not parse
    ("So, John runs 1.5 hours + 3 hours + 3 hours = 7.5 hours in total.", 0),
    ("251 - (68 + 44 + 85) = 251 - 197 = 54 points.", 0),
    ("Natalia sold 48/2 = 24 clips in May.", 0),
    ("Each team has 5 players, so there are 5 players * 2 teams = 10 players per school.", 0),
    (r"\[ 24 \text{ pairs} \times \$12.00 \text{ per pair} = \$288.00 \]", 0),
    ("40% of $30 is 0.40 * $30 = $12.", 0),
    ("50% + 25% = 75%", 0),
    ("The total is 1,200 + 300 = 1,500 dollars", 0),
    ("10 / 3 = 3.33 per person", 0),  # rounded
    ("10 / 3 = 3 full boxes", 0),  # whole items of a division
    ("48 eggs - 64 eggs = -16 eggs", 0),
    ("The total is $7 because .25 + .5 + .75 + 1 + 1.25 + 1.5 + 1.75 = 7", 0),
    ("12 slices per pizza * 2 pizzas - 15 slices = 24 slices - 15 slices = 9 slices.", 0),
    ("2x + 3 = 7", 0),  # a variable
    ("15+2a = 35", 0),
    ("2 + 1 1/2 = 3 1/2", 0),  # mixed numbers: not read
    ("Free Range:28(2)-4=52 chickens", 0),  # implicit product: not read
    ("she has 5 units of 3 candies which is = 5*3 = 15 candies.", 0),  # prose before the '='
    ("Total = 4 * 10", 0),  # a bare left side states a value
    ("Step 2: 5 + 3 = 8", 0),
])
def test_each_equation_is_judged_by_its_arithmetic(line, wrong):
    assert wrong_equations(line) == wrong


def test_rounding_is_half_a_unit_of_the_stated_decimals_and_whole_items_only_for_division():
    assert agree(7.5, 7.5, "7.5") and not agree(7.5, 8, "8")  # 7.5 written as 8 is a wrong sum
    assert agree(10 / 3, 3.33, "3.33") and agree(10 / 3, 3.3, "3.3") and not agree(10 / 3, 3.4, "3.4")
    assert agree(10 / 3, 3, "3", divides=True) and agree(10 / 3, 4, "4", divides=True)
    assert not agree(7.5, 7, "7") and not agree(207, 197, "197")
    assert agree(0.75, 75, "75")  # a share written as a percentage


@pytest.mark.parametrize("prefix", [
    "1.5 + 3 = 8",  # 8 + ...?
    "1.5 + 3 = 8.",  # 8.5?
    "1.5 + 3 = 8 hours",  # 8 hours - 3.5 hours?
    "1.5 + 3 = 8 hours in",  # inches?
    "1.5 + 3 = 1,2",  # 1,200?
    "1.5 + 3 = 8,",  # 8,000?
    "1.5 + 3 = 4 x",  # 4 x 3?
    "3 + 3 = 2 \\ti",  # \times?
    "3 + 3 = 2 \\frac{1",
    "30 * 2 = 6",  # 60?
])
def test_a_right_side_that_may_still_grow_is_not_judged_yet(prefix):
    assert wrong_equations(prefix, complete=False) == 0


@pytest.mark.parametrize("prefix", ["1.5 + 3 = 8 hours.", "1.5 + 3 = 8 hours in total", "1.5 + 3 = 8, so",
                                    "1.5 + 3 = 8 =", "3 + 3 = 2 \\text{ cm}."])
def test_a_right_side_is_judged_once_what_follows_cannot_continue_it(prefix):
    assert wrong_equations(prefix, complete=False) == 1


TEXTS = [
    "First, 3 + 4 = 7 apples.\nThen 7 * 2 = 15 apples in all, and 15 - 5 = 10.\n$$ 10 \\times 3 = 30 $$\n"
    "So 30 / 4 = 7.5 hours. The answer is 7.5.",
    "Mary pays $100 - $15 - $23 = $68 before her next shopping trip.\nShe has 68 + 2 = 70 left = 70.",
    "ToToToTo " * 40 + "= 5 + 5 = 11 apples.",
    "x" * 900 + " and then 2 + 2 = 5 apples\n",  # a long prose line: the equation is still read
]


def _reference(pieces: list[str]) -> np.ndarray:
    """Brute force: the count over finished lines and the open prefix, re-read from scratch every token."""
    out, best = [], 0
    for i in range(len(pieces)):
        *full, line = "".join(pieces[:i + 1]).split("\n")
        best = max(best, sum(wrong_equations(f) for f in full) + wrong_equations(line, complete=False))
        out.append(best)
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("text", TEXTS)
def test_the_live_count_is_causal_and_matches_re_reading_the_text_whatever_the_tokens(text):
    rng = random.Random(0)
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, len(text) // 3)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        got = arith_wrong(pieces)
        np.testing.assert_array_equal(got, _reference(pieces))
        assert all(arith_wrong(pieces[:k])[-1] == got[k - 1] for k in range(1, len(pieces), 7))  # causal
        assert got[-1] == sum(wrong_equations(line) for line in text.split("\n"))
        assert np.all(np.diff(got) >= 0)


def test_the_wrong_result_is_found_right_after_it_is_written():
    text = "So he runs 1.5 hours + 3 hours + 3 hours = 8 hours.\nThe answer is 8."
    pieces = re.findall(r"\d|\s?[A-Za-z]+|\s|.", text)  # Qwen-like: single digits, words with their space
    got = arith_wrong(pieces)
    first = int(np.argmax(got > 0))
    onset = pieces.index("8")  # the claim: the first number the healthy run never wrote
    assert "".join(pieces[:first + 1]).endswith("= 8 hours.") and first - onset == 2
    check = ArithmeticCheck()
    assert [check.feed(p) for p in pieces] == got.tolist()
    assert pieces[check.token_of(check.wrong_at[0])] == "="  # the token that holds the wrong equation's '='
    assert check.ends[-1] == len(text)


def test_token_pieces_rebuild_the_text(tok):
    text = "She has 3 + 4 = 7 apples.\nSo 7 * 2 = 14."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    cache: dict[int, str] = {}
    pieces = token_pieces(tok, ids, cache)
    assert "".join(pieces) == tok.decode(ids) and len(cache) == len(set(ids))
    assert arith_wrong(pieces)[-1] == 0
