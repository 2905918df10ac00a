import datasets
import pytest

from hazard.summary import summarize_onsets


def _ds(rows):
    keys = ["catastrophe", "loop", "nonterm", "onset", "onset_source", "loop_period", "repeat4"]
    return datasets.Dataset.from_dict({k: [r[i] for r in rows] for i, k in enumerate(keys)})


def test_onset_summary_counts_what_repetition_can_see_within_the_delay():
    rows = [
        # a period-1 loop from token 2: repeat4 fires at 2 + 1 + 3 = 6, within 4 of its onset
        (True, True, False, 2, "loop", 1, [0, 0, 0, 0, 0, 0, 1, 1, 1]),
        # a period-6 loop from token 1: repeat4 first at 1 + 6 + 3 = 10, too late
        (True, True, False, 1, "loop", 6, [0] * 10 + [1, 1]),
        # a non-termination whose stall repetition fires 3 tokens after its onset
        (True, False, True, 4, "stall", 0, [0, 1, 0, 0, 0, 0, 0, 1, 0]),  # the hit before the onset does not count
        (True, False, False, -1, "unknown", 0, [0, 0, 0]),  # a wrong answer no rule places
        (False, False, False, -1, "none", 0, [0, 1, 0]),
        (False, False, False, -1, "none", 0, [0, 0, 0]),
    ]
    out = summarize_onsets(_ds(rows), delay=4)
    loop = out["loop"]
    assert loop["n"] == 2 and loop["repeat4_within"] == 0.5
    assert loop["period_le_delay"] == 0.5 and loop["period_le_1"] == 0.5
    assert loop["period_quantiles"][50] == pytest.approx(3.5)
    assert out["nonterm"]["repeat4_within"] == 1.0 and out["nonterm"]["onset_sources"] == {"stall": 1}
    assert out["wrong"]["onset_placed"] == 0.0 and out["wrong"]["repeat4_within"] == 0.0
    assert out["wrong"]["median_onset"] is None
    assert out["healthy_repeat4_any"] == 0.5
