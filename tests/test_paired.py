"""Paired comparisons of runs on the same prompts: the difference, its bootstrap interval and the sign test."""

import numpy as np
import pytest

from hazard.errors import HazardError
from hazard.paired import (
    coin_comparisons,
    format_coins,
    format_paired,
    outcome_bits,
    paired_comparisons,
    paired_difference,
    pooled_difference,
    sign_test_p,
)


def test_identical_runs_differ_by_nothing_with_certainty():
    r = paired_difference("0110100111", "0110100111")
    assert r["diff"] == 0.0 and r["ci"] == [0.0, 0.0] and r["p"] == 1.0 and r["a_only"] == r["b_only"] == 0


def test_a_one_sided_gap_is_counted_and_found_significant():
    a = "1" * 10 + "0" * 40 + "1" * 50
    b = "0" * 10 + "0" * 40 + "1" * 50
    r = paired_difference(a, b)
    assert r["diff"] == pytest.approx(0.1) and (r["a_only"], r["b_only"]) == (10, 0)
    assert r["p"] == pytest.approx(2 / 2 ** 10)
    assert 0.0 < r["ci"][0] < 0.1 < r["ci"][1]
    # the same gap the other way round
    assert paired_difference(b, a)["diff"] == pytest.approx(-0.1)


def test_the_sign_test_is_exact():
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(0, 5) == pytest.approx(2 / 32) and sign_test_p(5, 0) == sign_test_p(0, 5)
    assert sign_test_p(1, 9) == pytest.approx(2 * (1 + 10) / 2 ** 10)  # C(10,0) + C(10,1)


def test_the_multinomial_bootstrap_matches_resampling_prompts():
    rng = np.random.default_rng(3)
    a, b = rng.random(500) < 0.52, rng.random(500) < 0.50
    b[:400] = a[:400]  # most prompts agree, as between two policies on one press
    r = paired_difference(a.tolist(), b.tolist(), n_boot=20000)
    idx = rng.integers(0, 500, (20000, 500))
    naive = (a[idx].astype(int) - b[idx].astype(int)).mean(1)
    assert np.allclose(r["ci"], np.quantile(naive, [0.025, 0.975]), atol=0.004)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())


def test_bad_outcomes_are_one_clear_error():
    with pytest.raises(HazardError, match="same prompts"):
        paired_difference("0101", "010")
    with pytest.raises(HazardError, match="0s and 1s"):
        paired_difference("01x1", "0101")


def _row(policy, kv, correct, knob=None, base="knorm"):
    acc = correct.count("1") / len(correct)
    return {"task": "gsm8k", "format": "k3e0s0", "policy": policy, "base_press": base, "base_ratio": 0.75,
            "mean_kv_fraction": kv, "accuracy": acc, "knob": knob or {},
            "outcomes": {"correct": correct, "catastrophe": "0" * len(correct)}}


def test_runs_are_paired_with_the_references_and_with_runs_at_matched_memory(capsys):
    rows = [_row("static", 0.2, "0011"), _row("full", 1.0, "1111"),
            _row("answer_check", 0.22, "1011", {"gate": ""}),
            _row("answer_check", 0.23, "0111", {"gate": "random:0.6"}),
            _row("digest_recall", 0.5, "0011", {"budget": 0.3}),
            _row("static", 0.1, "0001", base="snapkv")]  # another base press: nothing of its own to pair
    pairs = paired_comparisons(rows, kv_tol=0.02)
    names = [(p["a"], p["b"]) for p in pairs]
    # three controlled runs x two references, and one matched pair (0.22 vs 0.23; 0.5 is too far)
    assert len(pairs) == 7
    assert ("full", "answer_check(gate=)") in names  # the better run is named first
    assert ("answer_check(gate=)", "static") in names and ("digest_recall(budget=0.3)", "static") in names
    matched = [p for p in pairs if "full" not in (p["a"], p["b"]) and "static" not in (p["a"], p["b"])]
    assert [(p["a"], p["b"]) for p in matched] == [("answer_check(gate=)", "answer_check(gate=random:0.6)")]
    assert matched[0]["correct"]["a_only"] == 1 and matched[0]["correct"]["b_only"] == 1
    assert paired_comparisons(rows, kv_tol=0.0) != pairs  # no matched pair without tolerance
    text = format_paired(pairs)
    assert "gsm8k.k3e0s0 knorm@0.75" in text and "answer_check(gate=)" in text and "p=" in text
    # rows written before outcomes existed are left out, not compared as empty
    assert paired_comparisons([{**r, "outcomes": None} for r in rows]) == []


def test_runs_meet_the_static_presses_of_other_settings_at_the_same_memory():
    """The bar is the best static press at equal memory, whichever press: a controlled run is also paired with
    another setting's static run within the tolerance, and a group without its own uncompressed run (a merge
    keeps one per task) takes the task's."""
    rows = [_row("full", 1.0, "1111", base="snapkv"), _row("static", 0.2, "0011"),
            _row("answer_check", 0.24, "1011", {"gate": ""}),
            _row("static", 0.25, "0111", base="expected_attention"),  # matched: 0.01 from the run
            _row("static", 0.31, "1111", base="tova")]  # too far
    pairs = paired_comparisons(rows, kv_tol=0.02)
    names = {(p["a"], p["b"]) for p in pairs}
    assert names == {("full", "answer_check(gate=)"), ("answer_check(gate=)", "static"),
                     ("answer_check(gate=)", "static expected_attention@0.75")}
    cross = next(p for p in pairs if p["b"].startswith("static expected"))
    assert cross["base"] == "knorm@0.75" and cross["kv"] == [0.24, 0.25]
    assert (cross["correct"]["a_only"], cross["correct"]["b_only"]) == (1, 1)
    assert len(paired_comparisons(rows, kv_tol=0.005)) == 2


def test_outcome_bits_are_the_rows_in_order_and_catastrophes_are_loops_or_non_terminations():
    rows = [{"correct": True, "loop": False, "nonterm": False, "catastrophe": True},  # compression broke it
            {"correct": False, "loop": True, "nonterm": False, "catastrophe": True},
            {"correct": False, "loop": False, "nonterm": True, "catastrophe": True}]
    assert outcome_bits(rows) == {"correct": "100", "catastrophe": "011"}
    # rows saved before loop / nonterm were kept: accuracy only, and the pair says so
    old = [{"correct": r["correct"], "catastrophe": r["catastrophe"]} for r in rows]
    assert outcome_bits(old) == {"correct": "100"}
    assert outcome_bits([{**r, "acted": i == 1} for i, r in enumerate(rows)])["acted"] == "010"
    assert outcome_bits([{**r, "kv": 0.2 + i / 10} for i, r in enumerate(rows)])["kv"] == pytest.approx([0.2, 0.3, 0.4])
    assert "kv" not in outcome_bits(rows)  # rows saved before they kept it
    pair = paired_comparisons([_row("static", 0.2, "100"), {**_row("answer_check", 0.3, "110"),
                                                           "outcomes": outcome_bits(old)}])
    assert "catastrophe" not in pair[0] and "catas   n/a" in format_paired(pair)


def _outcome_row(policy, correct, catastrophe, **kw):
    return {"policy": policy, "task": "gsm8k", "format": "k3e0s0", "base_press": "snapkv", "base_ratio": 0.875,
            "knob": {}, "mean_kv_fraction": 0.2, "outcomes": {"correct": correct, "catastrophe": catastrophe}, **kw}


def test_a_perfect_gate_keeps_the_runs_outcome_only_on_the_rows_the_press_failed():
    from hazard.paired import gate_headroom

    # prompts:        0    1    2    3    4    5
    full = _outcome_row("full", "111100", "000000")
    static = _outcome_row("static", "100100", "001000")  # 1 broken, 2 looped (both failing); 0, 3, 4, 5 healthy
    run = _outcome_row("answer_check", "110010", "000000")  # fixes 1; 2 stays wrong; breaks healthy 3, fixes healthy 4
    h = gate_headroom(run, static, full)
    assert h["failing"] == {"rows": 2, "fixed": 1, "broke": 0}
    assert h["healthy"] == {"rows": 4, "fixed": 1, "broke": 1}
    # behind the perfect gate: rows 1-2 from the run (1, 0), rows 0, 3-5 from static (1, 1, 0, 0)
    assert h["perfect_gate_accuracy"] == pytest.approx(3 / 6) and h["accuracy"] == pytest.approx(3 / 6)
    # a run that acts on everything the same way as static gains nothing
    assert gate_headroom(static, static, full)["perfect_gate_accuracy"] == pytest.approx(2 / 6)
    assert h["acted"] is None  # neither per-prompt bits nor the summary's rates: nothing to say
    # where it acted: its bits split by the failing rows (1, 2) and the others (0, 3, 4, 5)
    bits = {**run, "outcomes": {**run["outcomes"], "acted": "011100"}}
    assert gate_headroom(bits, static, full)["acted"] == {"among": "failing", "share": 1.0, "others": 0.25}
    # of the healthy rows it acted on (3 of 0, 3, 4, 5) it broke that one; the fix of row 4 came without acting
    assert gate_headroom(bits, static, full)["healthy_acted"] == {"rows": 1, "fixed": 0, "broke": 1}
    assert h["healthy_acted"] is None
    # without bits, from the summary: acted on 3 of 6 rows, on 1 of the 2 the press left right (0, 3)
    rates = {**run, "trigger_rate": 0.5, "false_repair_rate": 0.5}
    assert gate_headroom(rates, static, full)["acted"] == {"among": "static_not_right", "share": 0.5, "others": 0.5}
    with pytest.raises(HazardError, match="kept no per-prompt outcomes"):
        gate_headroom({**run, "outcomes": {"correct": "110010"}}, static, full)
    with pytest.raises(HazardError, match="same prompts"):
        gate_headroom(_outcome_row("answer_check", "11001", "00000"), static, full)


def test_the_bound_gate_spends_issue_12s_false_triggers_only_where_the_run_fixes():
    """The closed loop's false triggers count the rows without a catastrophe in the trace labels (no loop,
    non-termination or broken answer): the best gate held to the bound acts free on every failing row it fixes
    and on at most floor(max_false x healthy) healthy rows, only where the run fixes them."""
    from hazard.paired import gate_headroom

    full = _outcome_row("full", "1" * 10 + "0" * 10, "0" * 20)
    static = _outcome_row("static", "0000000111" + "0" * 10, "11" + "0" * 18)  # rows 0-1 loop; 2-6 broken
    # fixes loop 0, broken 2-6, and healthy 10-12 (wrong uncompressed too); breaks healthy 9
    run = _outcome_row("answer_check", "1011111110" + "111" + "0" * 7, "0" * 20)
    h = gate_headroom(run, static, full, max_false=0.2)
    assert h["perfect_gate_accuracy"] == pytest.approx(9 / 20)
    b = h["bound_gate"]
    assert (b["healthy_rows"], b["budget"], b["fixable_failing"], b["fixable_healthy"]) == (13, 2, 6, 3)
    assert b["accuracy"] == pytest.approx((3 + 6 + 2) / 20)  # static's 3, the 6 failing fixes, 2 of 3 healthy
    assert gate_headroom(run, static, full, max_false=0.5)["bound_gate"]["accuracy"] == pytest.approx(12 / 20)
    assert gate_headroom(run, static, full, max_false=0.0)["bound_gate"]["accuracy"] == pytest.approx(9 / 20)


def test_the_headroom_script_reads_a_closed_loop_file(tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    import gate_headroom as script

    rows = [_outcome_row("full", "111100", "000000"), _outcome_row("static", "100100", "001000"),
            _outcome_row("answer_check", "110010", "000000", knob={"gate": ""}),
            _outcome_row("oracle", "111100", "000000")]
    src = tmp_path / "closed_loop.json"
    src.write_text(json.dumps({"model": "m", "hardware": "cpu", "git_sha": "abc", "rows": rows}))
    assert script.main([str(src), "--out", str(tmp_path / "h.json")]) == 0
    items = json.loads((tmp_path / "h.json").read_text())["items"]
    assert [it["run"] for it in items] == ["answer_check(gate=)", "oracle"]
    assert items[1]["headroom"]["perfect_gate_accuracy"] == pytest.approx(4 / 6)
    assert "perfect gate" in capsys.readouterr().out
    src.write_text(json.dumps({"rows": rows[:2]}))
    assert script.main([str(src)]) == 2
    assert "no controlled run" in capsys.readouterr().err


def test_a_run_against_pooled_coins_is_compared_with_their_mean_outcome_per_prompt():
    """Three seeds of one coin are pooled (their per-prompt mean); a run far from their memory, a rate with
    one seed, and the coins themselves are not compared; a clear gain is significant, no gain is not."""
    rng = np.random.default_rng(0)
    n = 400
    base = rng.random(n) < 0.5
    coins = [base ^ (rng.random(n) < 0.1) for _ in range(3)]
    better = base | (rng.random(n) < 0.15)  # right wherever the base is, and on more prompts
    bits = lambda a: "".join("1" if v else "0" for v in a)  # noqa: E731
    rows = [_row("static", 0.2, bits(base)), _row("full", 1.0, "1" * n),
            *[_row("answer_check", 0.23 + 0.001 * s, bits(c), {"gate": f"random:0.3:{s}"}) for s, c in
              enumerate(coins)],
            _row("answer_check", 0.23, bits(coins[0]), {"gate": "random:0.6"}),  # one seed: not pooled
            _row("answer_check", 0.235, bits(better), {"gate": "checkpoints/g/f0.2"}),
            _row("answer_check", 0.232, bits(base), {"gate": "checkpoints/g/f0.05"}),
            _row("digest_recall", 0.3, bits(better), {"budget": 0.03})]  # 0.07 from the coins' memory
    items = coin_comparisons(rows, kv_tol=0.02)
    assert [(i["a"], i["b"]) for i in items] == [
        ("answer_check(gate=g/f0.2)", "answer_check(gate=random:0.3) x3 seeds"),
        ("answer_check(gate=g/f0.05)", "answer_check(gate=random:0.3) x3 seeds")]
    gain, same = items[0]["correct"], items[1]["correct"]
    assert gain["diff"] == pytest.approx(better.mean() - np.mean(coins, 0).mean())
    assert gain["coins"] == 3 and gain["ci"][0] > 0 and gain["p"] < 1e-3
    assert same["ci"][0] < same["diff"] < same["ci"][1] and same["p"] > 0.05
    assert items[0]["kv"] == [0.235, pytest.approx(0.231)]
    text = format_coins(items)
    assert "x3 seeds" in text and "paired t-test" in text
    assert coin_comparisons(rows, kv_tol=0.02, min_seeds=4) == []
    with pytest.raises(HazardError, match="same prompts"):
        pooled_difference("0101", ["010", "0101"])
    assert pooled_difference("0101", ["0101", "0101"])["p"] == 1.0


def test_every_base_press_of_a_merge_gets_its_headroom_against_the_tasks_one_uncompressed_run():
    """A merge keeps one uncompressed row per task, under the first file's base press; the runs of another base
    press (a second file's) are measured against that same uncompressed run, not left out."""
    from hazard.paired import gate_headrooms

    full = _outcome_row("full", "1111", "0000")
    on_a = [_outcome_row("static", "1000", "0100"), _outcome_row("answer_check", "1100", "0000")]
    on_b = [_outcome_row(p, c, k, base_ratio=0.825) for p, c, k in
            (("static", "1100", "0010"), ("answer_check", "1110", "0000"))]
    items = gate_headrooms([full, *on_a, *on_b])
    assert [(it["base"], it["headroom"]["accuracy"]) for it in items] == [
        ("snapkv@0.875", pytest.approx(0.5)), ("snapkv@0.825", pytest.approx(0.75))]
    assert items[1]["headroom"]["failing"] == {"rows": 2, "fixed": 1, "broke": 0}  # rows 2 (looped), 3 (broken)
    # a base press without its static row has nothing to measure against
    assert [it["base"] for it in gate_headrooms([full, *on_a, on_b[1]])] == ["snapkv@0.875"]
