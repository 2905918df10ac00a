"""How good a gate must be: the binormal ROC, the row groups of an act-on-every-row run, the AUROC a target needs,
and evaluate/gate_need.py on two small prompt sets."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hazard.errors import HazardError
from hazard.gate_need import FixGroups, RowGroups, binormal_tpr, live_flags, ranking_auroc, sent_row_cost


def _row(policy, correct, catas=None, knob=None, ratio=0.85):
    n = len(correct)
    return {"task": "gsm8k", "format": "k3e0s0", "policy": policy, "base_press": "numbers", "base_ratio": ratio,
            "knob": knob or {}, "n": n, "accuracy": correct.count("1") / n, "catastrophe_rate": 0.0,
            "mean_kv_fraction": 0.2, "outcomes": {"correct": correct, "catastrophe": catas or "0" * n}}


# ten prompts: 0 wild (a loop; the check escalates it and fixes it), 1-3 broken (right uncompressed, wrong under
# the press; the action fixes 1 and 2), 4-9 healthy (the action breaks 4 and fixes 9, wrong uncompressed too)
FULL = _row("full", "1111111110")
STATIC = _row("static", "0000111110", catas="1000000000")
RUN = _row("answer_check", "1110011111", knob={"gate": ""})


def test_binormal_tpr_is_the_roc_of_its_auroc():
    assert binormal_tpr(0.5, 0.05) == pytest.approx(0.05)  # a coin
    assert binormal_tpr(1.0, 0.0) == 1.0 and binormal_tpr(0.9, 0.0) == 0.0 and binormal_tpr(0.7, 1.0) == 1.0
    tprs = [binormal_tpr(a, 0.05) for a in (0.55, 0.7, 0.85, 0.99)]
    assert tprs == sorted(tprs) and tprs[0] > 0.05
    # the area under the curve it traces is its AUROC
    fpr = np.linspace(0, 1, 20001)
    tpr = np.array([binormal_tpr(0.8, f) for f in fpr])
    assert float(np.sum((tpr[1:] + tpr[:-1]) / 2 * np.diff(fpr))) == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(HazardError, match="fpr 1.5"):
        binormal_tpr(0.7, 1.5)


def test_row_groups_reproduce_the_static_and_the_ungated_run():
    g = RowGroups.from_rows(RUN, STATIC, FULL)
    assert g.sizes == {"wild": 1, "broken": 3, "healthy": 6}
    assert (g.static_right, g.wild, g.broken, g.healthy) == (5, 1, 2, 0)
    assert g.expected_accuracy(1.0, 1.0) == pytest.approx(RUN["accuracy"])  # acting everywhere is the run
    assert g.expected_accuracy(0.0, 0.0) == pytest.approx(0.6)  # escalation alone: static plus the wild row
    assert g.accuracy_at_auroc(1.0, 0.0) == pytest.approx(0.8)  # the perfect gate: every broken row, no other
    with pytest.raises(HazardError, match="same prompts"):
        RowGroups.from_rows(_row("answer_check", "11"), STATIC, FULL)
    with pytest.raises(HazardError, match="per-prompt outcomes"):
        RowGroups.from_rows({"policy": "answer_check", "outcomes": {"correct": "1"}}, STATIC, FULL)


def _with_kv(row, kv, acted=None):
    return {**row, "mean_kv_fraction": float(np.mean(kv)),
            "outcomes": {**row["outcomes"], "kv": kv, **({"acted": acted} if acted else {})}}


def test_expected_kv_charges_the_run_where_the_gate_acts_and_static_plus_the_reading_elsewhere():
    static = _with_kv(STATIC, [0.2] * 10)
    # the ungated run acted on rows 0-4 and 9 (they cost 0.6), left rows 5-8 alone (static + a 0.05 reading)
    run = _with_kv(RUN, [0.6] * 5 + [0.25] * 4 + [0.6], acted="1111100001")
    g = RowGroups.from_rows(run, static, FULL)
    assert g.kv["read"] == pytest.approx(0.05)
    assert g.expected_kv(1.0, 1.0) == pytest.approx(run["mean_kv_fraction"])  # acting everywhere is the run
    # escalation alone: the wild row at the run's cost, every other static plus the reading
    assert g.expected_kv(0.0, 0.0) == pytest.approx((0.6 + 9 * 0.25) / 10)
    assert g.expected_kv(0.0, 0.0) < g.expected_kv(1.0, 0.05) < g.expected_kv(1.0, 1.0)
    pooled = g + g
    assert pooled.n == 20 and pooled.expected_kv(0.5, 0.1) == pytest.approx(g.expected_kv(0.5, 0.1))
    assert pooled.expected_accuracy(0.5, 0.1) == pytest.approx(g.expected_accuracy(0.5, 0.1))
    assert (g + RowGroups.from_rows(RUN, STATIC, FULL)).kv is None  # one set without per-row KV: none pooled
    # the ideal repair (the uncompressed run, which acts nowhere): a sent row costs the whole cache, no reading
    ideal = RowGroups.from_rows(_with_kv(FULL, [1.0] * 10, acted="0" * 10), static, FULL)
    assert ideal.kv["read"] == 0.0 and ideal.expected_kv(0.0, 0.0) == pytest.approx(ideal.kv["wild"] / 10 + 0.2 * 0.9)
    assert ideal.expected_kv(1.0, 1.0) == pytest.approx(1.0)


def test_required_auroc_is_the_least_that_keeps_the_target():
    g = RowGroups.from_rows(RUN, STATIC, FULL)
    assert g.required_auroc(0.55, 0.05) == 0.5  # escalation alone clears it: a coin does
    assert g.required_auroc(0.81, 0.05) is None  # above the perfect gate
    a = g.required_auroc(0.7, 0.05)
    assert 0.5 < a < 1.0
    assert g.accuracy_at_auroc(a, 0.05) >= 0.7 > g.accuracy_at_auroc(a - 0.002, 0.05)


def _write(path, rows):
    path.write_text(json.dumps({"model": "tiny", "rows": rows}))
    return path


def test_the_script_writes_each_set_the_pool_and_a_fitted_gates_prediction(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    import gate_need as script

    gate = tmp_path / "ck" / "g" / "f0.1"
    gate.mkdir(parents=True)
    (gate / "report.json").write_text(json.dumps({"cv_broken_repaired": 0.5, "cv_healthy_repaired": 0.1,
                                                  "cv_auroc_broken_vs_healthy": 0.7}))
    milder = _row("static", "0110111110", ratio=0.825)
    gated = _row("answer_check", "0110111110", knob={"gate": "checkpoints/g/f0.1"})
    a = _write(tmp_path / "a.json", [FULL, STATIC, RUN, milder])
    a2 = _write(tmp_path / "a2.json", [FULL, STATIC, gated])  # the same prompts, another file
    b = _write(tmp_path / "b.json", [_with_kv(FULL, [1.0] * 10), _with_kv(STATIC, [0.2] * 10),
                                      _with_kv(RUN, [0.3] * 10, acted="1" * 10), milder])
    out = tmp_path / "need.json"
    args = ["--base", "numbers@0.85", "--set", f"a={a},{a2}", "--set", f"b={b}", "--reference",
            "static numbers@0.825", "--gate", "g/f0.1", "--checkpoints", str(tmp_path / "ck"), "--out", str(out)]
    assert script.main(args) == 0
    res = json.loads(out.read_text())
    first, pooled = res["items"][0], res["items"][-1]
    assert [it["set"] for it in res["items"]] == ["a", "b", "all"]
    assert [src["path"] for src in res["sources"]["a"]] == [str(a), str(a2)]
    # the gate's train operating point predicts static + wild + half the broken fixes + a tenth of the healthy
    assert first["gates"]["g/f0.1"] == {"tpr": 0.5, "fpr": 0.1, "auroc": 0.7, "predicted": pytest.approx(0.7),
                                        "predicted_kv": None, "observed": pytest.approx(0.7), "observed_kv": 0.2,
                                        "sent_rows": None}
    assert first["kv_curve"] is None and pooled["kv_curve"] is None  # set a's rows kept no per-row KV
    # a perfect gate at 5%: the wild and the 3 broken rows at the run's 0.3, 5% of the 6 healthy ones too, the
    # rest at static (the run left no row alone, so no reading cost is seen)
    assert res["items"][1]["kv_curve"]["1.0"] == pytest.approx((4 * 0.3 + 6 * (0.05 * 0.3 + 0.95 * 0.2)) / 10)
    assert res["items"][1]["gates"]["g/f0.1"]["observed"] is None
    assert "live_ranking" not in first  # the gated run kept no per-prompt acted bits: nothing to rank
    assert pooled["n"] == 20 and pooled["net_change"] == {"wild": 2, "broken": 4, "healthy": 0}
    assert pooled["reference"] == pytest.approx(0.7) and pooled["auroc_to_lead_reference"] is not None
    assert (tmp_path / "need.png").is_file() and "set all: 20 prompts" in capsys.readouterr().out
    # bad input: one clear line, exit 2
    assert script.main(args[:4] + ["--set", "nopath", "--out", str(out)]) == 2
    assert script.main(["--base", "numbers@0.85", "--set", f"c={tmp_path / 'none.json'}", "--out", str(out)]) == 2
    disagree = _write(tmp_path / "d.json", [FULL, _row("static", "1000111110", catas="1000000000"), gated])
    assert script.main(["--base", "numbers@0.85", "--set", f"a={a},{disagree}", "--out", str(out)]) == 2
    assert "measured this run differently" in capsys.readouterr().err


def test_sent_row_cost_compares_the_gated_picks_with_the_ungated_runs_average_repair():
    ungated = _with_kv(RUN, [0.6] * 2 + [0.3] * 3 + [0.25] * 5, acted="1111100000")
    gated = _with_kv(RUN, [0.6] * 2 + [0.2] * 8, acted="1100000000")  # it acted on the two costly rows only
    c = sent_row_cost(gated, ungated)
    assert c == {"live": pytest.approx(0.6), "ungated_same": pytest.approx(0.6),
                 "ungated_acted": pytest.approx((2 * 0.6 + 3 * 0.3) / 5), "rows": 2}
    assert sent_row_cost(RUN, ungated) is None  # no per-row KV kept
    with pytest.raises(HazardError, match="different prompts"):
        sent_row_cost(gated, {**RUN, "outcomes": {"kv": [0.3] * 9, "acted": "1" * 9}})  # nine prompts, not ten


def test_static_at_equal_memory_grows_with_the_gates_memory_and_sets_a_higher_bar():
    static = _with_kv(STATIC, [0.2] * 10)
    run = _with_kv(RUN, [0.6] * 5 + [0.25] * 4 + [0.6], acted="1111100001")
    g = RowGroups.from_rows(run, static, FULL)
    points = [{"kv": 0.2, "accuracy": 0.5}, {"kv": 0.4, "accuracy": 0.75}]  # the press and a milder one
    level = g.static_at_kv(points, 0.05)
    for a in (0.5, 0.8, 1.0):  # the per-row mix of the two at the gate's expected memory
        kv = g.expected_kv(binormal_tpr(a, 0.05), 0.05)
        assert level(a) == pytest.approx(0.5 + (kv - 0.2) / 0.2 * 0.25)
    assert level(0.5) < level(1.0)  # a better gate sends more rows on, so static gets more memory too
    # a target that depends on the AUROC: the least AUROC whose gate keeps it there
    a = g.required_auroc(level, 0.05)
    assert 0.5 < a < 1.0 and g.accuracy_at_auroc(a, 0.05) >= level(a)
    assert g.accuracy_at_auroc(a - 0.002, 0.05) < level(a - 0.002)
    assert g.required_auroc(lambda _: 0.7, 0.05) == g.required_auroc(0.7, 0.05)  # a constant as before
    assert a > g.required_auroc(level(0.5), 0.05)  # the bar moves up with the gate's memory
    with pytest.raises(HazardError, match="per-row KV"):
        RowGroups.from_rows(RUN, STATIC, FULL).static_at_kv(points, 0.05)
    with pytest.raises(HazardError, match="stronger static press"):
        g.static_at_kv([{"kv": 0.5, "accuracy": 0.6}, {"kv": 1.0, "accuracy": 0.9}], 0.05)(0.5)


def test_the_script_takes_static_at_the_gates_memory_as_its_reference(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    import gate_need as script

    milder = _with_kv(_row("static", "0111111100", ratio=0.825), [0.21] * 10)
    rows = [_with_kv(FULL, [1.0] * 10), _with_kv(STATIC, [0.2] * 10), _with_kv(RUN, [0.3] * 10, acted="1" * 10),
            milder]
    a = _write(tmp_path / "a.json", rows)
    b = _write(tmp_path / "b.json", rows)
    out = tmp_path / "need.json"
    assert script.main(["--base", "numbers@0.85", "--set", f"a={a}", "--set", f"b={b}", "--reference",
                        "mix:static", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    one, pooled = res["items"][0], res["items"][-1]
    assert one["reference"] is None and pooled["reference_curve"] == pytest.approx(one["reference_curve"])
    kv = one["kv_curve"]["0.7"]  # the milder press mixed with the uncompressed run to the gate's memory
    assert one["reference_curve"]["0.7"] == pytest.approx(0.7 + (kv - 0.21) / 0.79 * (0.9 - 0.7))
    tie = one["auroc_to_tie_reference"]  # a coin does not tie it, a perfect gate does
    assert 0.5 < tie < 1.0 and tie == pytest.approx(pooled["auroc_to_tie_reference"])
    above = [a for a in one["curve"] if one["curve"][a] >= one["reference_curve"][a]]
    assert float(above[0]) == pytest.approx(tie, abs=0.01)
    out = capsys.readouterr().out
    assert "(at equal memory)" in out and "ranks the rows the action fixes first" in out
    fixes = one["fixes"]  # the second gate: fitted to the rows the action fixes
    assert fixes["fixed"] == {"failing": 2, "healthy": 1} and fixes["reference_curve"] is not None
    # its one healthy fix is 1 of 6 healthy rows, over the 5% bound: even a perfect gate sends only 30% of the fixes
    # (it cannot tell the healthy one from the broken ones), where the perfect broken-answer gate sends both
    assert fixes["curve"]["1.0"] == pytest.approx((6 + 0.3 * 3) / 10) and fixes["curve"]["1.0"] < one["curve"]["1.0"]
    assert pooled["fixes"]["curve"]["0.8"] == pytest.approx(fixes["curve"]["0.8"])
    # rows without per-row KV cannot say what static holds at the gate's memory: one clear line
    c = _write(tmp_path / "c.json", [FULL, STATIC, RUN])
    assert script.main(["--base", "numbers@0.85", "--set", f"c={c}", "--reference", "mix:static",
                        "--out", str(out)]) == 2
    assert "per-row KV" in capsys.readouterr().err


def test_a_gate_that_ranks_the_rows_the_action_fixes_spends_its_false_triggers_on_fixes():
    """FixGroups: the positives are the rows the action turns right, broken or wrong uncompressed too; its false
    triggers are the healthy rows it flags, positives among them."""
    g = FixGroups.from_rows(RUN, STATIC, FULL)
    # rows 1 and 2 broken and fixed, 9 healthy (wrong uncompressed too) and fixed; 3-8 not fixed, 4 broken by it
    assert (g.fixed_failing, g.fixed_healthy, g.negatives_healthy, g.broke) == (2, 1, 5, 1)
    assert g.base == 6  # static's 5 and the wild row the check escalates and fixes
    # a perfect gate held to 20% false triggers, its threshold as low as that allows (as a fitted gate's): the three
    # fixes (1 of the 6 healthy rows) and 4% of the rest, where the one row the action breaks costs 0.04
    tpr, fpr = g.operating_point(1.0, 0.2)
    assert tpr == pytest.approx(1.0) and fpr == pytest.approx(0.04, abs=1e-6)
    assert g.accuracy_at_auroc(1.0, 0.2) == pytest.approx((6 + 3 - 0.04) / 10)
    # at 5% even the perfect gate must leave the healthy fix out, and the threshold finds the share that fits
    tpr, fpr = g.operating_point(1.0, 0.05)
    assert (tpr * 1 + fpr * 5) / 6 == pytest.approx(0.05, abs=1e-6) and fpr == pytest.approx(0.0, abs=1e-6)
    # a coin flags fixes and the rest alike; a better gate keeps more
    assert g.accuracy_at_auroc(0.5, 0.2) < g.accuracy_at_auroc(0.8, 0.2) < g.accuracy_at_auroc(1.0, 0.2)
    assert g.required_auroc(0.85, 0.2) is not None and g.required_auroc(0.95, 0.2) is None
    pooled = g + g
    assert pooled.accuracy_at_auroc(0.7, 0.1) == pytest.approx(g.accuracy_at_auroc(0.7, 0.1))
    # memory: flagged rows cost what they cost in the run, the others static plus the reading
    static = _with_kv(STATIC, [0.2] * 10)
    run = _with_kv(RUN, [0.6] * 5 + [0.25] * 4 + [0.6], acted="1111100001")
    k = FixGroups.from_rows(run, static, FULL)
    assert k.kv_at_auroc(1.0, 1.0) == pytest.approx(run["mean_kv_fraction"])  # flags every row: the run
    level = k.static_at_kv([{"kv": 0.2, "accuracy": 0.5}, {"kv": 0.4, "accuracy": 0.75}], 0.2)
    assert level(0.9) == pytest.approx(0.5 + (k.kv_at_auroc(0.9, 0.2) - 0.2) / 0.2 * 0.25)
    with pytest.raises(HazardError, match="per-row KV"):
        g.static_at_kv([{"kv": 0.2, "accuracy": 0.5}], 0.2)


def test_the_live_flags_of_nested_gates_rank_the_rows():
    assert ranking_auroc(np.array([2, 1, 0, 0]), np.array([True, False, True, False])) == pytest.approx(2.5 / 4)
    assert ranking_auroc(np.array([1, 0]), np.array([True, True])) is None
    ungated = {**RUN, "outcomes": {**RUN["outcomes"], "acted": "1111100001"}}
    wide = {**RUN, "outcomes": {**RUN["outcomes"], "acted": "1110100001"}}  # a gate flags 1, 2 (and wild 0), 4, 9
    narrow = {**RUN, "outcomes": {**RUN["outcomes"], "acted": "1100000001"}}  # a stricter one: 1 and 9
    f = live_flags([wide, narrow], ungated, STATIC, FULL)
    assert f["score"].tolist() == [2, 1, 0, 1, 0, 0, 0, 0, 2]  # rows 1-9: the wild row 0 is left out
    assert f["broken"].tolist() == [True, True, True] + [False] * 6
    assert f["fixes"].tolist() == [True, True, False, False, False, False, False, False, True]
    assert f["acted"].tolist() == [True, True, True, True, False, False, False, False, True]
    # the fixes (1, 2, 9) hold scores 2, 1, 2; the other rows 0, 1, 0, 0, 0, 0
    assert ranking_auroc(f["score"], f["fixes"]) == pytest.approx((6 + 5 + 0.5 + 6) / 18)
    assert live_flags([RUN], ungated, STATIC, FULL) is None  # no acted bits kept
