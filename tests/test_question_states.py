"""evaluate/question_states.py: the question's last hidden state from a shared prefix, resumable."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))


def test_the_common_prefix_leaves_each_sequence_a_token_to_feed():
    from question_states import common_prefix

    assert common_prefix([[1, 2, 3, 4], [1, 2, 5, 6, 7]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token is still fed
    assert common_prefix([[9, 2], [1, 2]]) == 0


def test_the_sample_takes_as_many_broken_answers_as_wrong_anyway_ones():
    from question_states import sample

    broken = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    wrong = np.array([0, 0, 0, 1, 1, 0, 0, 0], bool)
    pick = sample(broken, wrong, per_class=5, seed=0)
    assert broken[pick].sum() == 2 and wrong[pick].sum() == 2 and list(pick) == sorted(pick)


def test_question_states_equal_a_whole_forward_and_resume_where_they_stopped(model64):
    from question_states import question_states

    rng = np.random.default_rng(0)
    prefix = rng.integers(5, 200, 12).tolist()
    seqs = [prefix + rng.integers(5, 200, n).tolist() for n in (3, 7, 1)]
    saved = []
    done = {1: np.full(model64.config.hidden_size, 7.0)}  # computed before a stop: left as it is
    assert question_states(model64.model, seqs, done, lambda d: saved.append(sorted(d)), every=1) == 12
    with torch.inference_mode():
        for i in (0, 2):
            whole = model64.model(input_ids=torch.tensor([seqs[i]])).last_hidden_state[0, -1].float().numpy()
            assert np.allclose(done[i], whole, atol=1e-6)
    assert (done[1] == 7.0).all() and saved[-1] == [0, 1, 2]


def test_a_probe_on_the_states_beats_statistics_that_say_nothing():
    from question_states import compare

    rng = np.random.default_rng(1)
    broken = rng.random(200) < 0.5
    states = rng.normal(size=(200, 16))
    states[:, 3] += 2.5 * broken
    res = compare(states, rng.normal(size=(200, 4)), broken, np.arange(200))
    assert res["probe"] > 0.85 and abs(res["digits"] - 0.5) < 0.15
    assert res["digits+probe"] > 0.8
