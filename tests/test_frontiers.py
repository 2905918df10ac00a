"""Frontiers: staircases, matched-KV comparisons, the area between frontiers, and sweeps in evaluate."""

import json

import pytest

from hazard.evaluate import variants
from hazard.frontiers import area_between, best_at, frontiers, mix_level, staircase


def _row(policy, kv, acc, cat=0.0, press="snapkv", ratio=0.875, knob=None, task="gsm8k"):
    return {"task": task, "format": "default", "policy": policy, "base_press": press, "base_ratio": ratio,
            "mean_kv_fraction": kv, "accuracy": acc, "catastrophe_rate": cat, "knob": knob or {}}


def test_staircase_keeps_only_points_no_cheaper_point_beats():
    pts = [{"kv": x, "accuracy": a} for x, a in [(0.3, 0.4), (0.1, 0.2), (0.2, 0.5), (0.5, 0.45), (0.6, 0.6)]]
    assert [(p["kv"], p["accuracy"]) for p in staircase(pts)] == [(0.1, 0.2), (0.2, 0.5), (0.6, 0.6)]
    assert best_at(pts, 0.35)["accuracy"] == 0.5 and best_at(pts, 0.05) is None


def test_area_between_two_staircases_is_the_accuracy_gap_times_the_memory_it_holds_over():
    a = [{"kv": 0.2, "accuracy": 0.5}]
    b = [{"kv": 0.2, "accuracy": 0.3}, {"kv": 0.6, "accuracy": 0.5}]
    # a leads by 0.2 from 0.2 to 0.6, then they tie up to 1.0
    assert area_between(a, b) == pytest.approx(0.2 * 0.4, abs=2e-3)
    assert area_between(b, a) == pytest.approx(-0.08, abs=2e-3) and area_between([], a) is None


def test_frontiers_compare_families_at_matched_memory():
    rows = [_row("full", 1.0, 0.52, 0.05, press="snapkv"),
            _row("static", 0.20, 0.29, 0.12), _row("static", 0.31, 0.49, 0.04, ratio=0.75),
            _row("static", 0.22, 0.01, 0.6, press="knorm"),
            _row("hazard", 0.24, 0.50, 0.05, knob={"trigger": 0.5}),
            _row("hazard", 0.21, 0.35, 0.1, knob={"trigger": 0.9}),
            _row("digest_recall", 0.33, 0.45, 0.06)]
    fr = frontiers(rows, [0.15, 0.25, 0.35])["gsm8k"]
    m = fr["matched"]
    assert m["0.15"] == {}
    assert m["0.25"]["hazard"]["accuracy"] == 0.50 and m["0.25"]["hazard"]["knob"] == {"trigger": 0.5}
    assert m["0.25"]["static"]["accuracy"] == 0.29 and m["0.25"]["static:knorm"]["accuracy"] == 0.01
    assert m["0.35"]["static"]["accuracy"] == 0.49 and m["0.35"]["digest_recall"]["accuracy"] == 0.45
    assert "digest_recall" not in m["0.25"]
    assert fr["uncompressed"]["accuracy"] == 0.52 and fr["area_learned_minus_static"] > 0


def test_the_static_mix_is_the_upper_envelope_a_coin_flip_per_row_reaches():
    pts = [{"kv": 0.2, "accuracy": 0.4}, {"kv": 0.3, "accuracy": 0.5}, {"kv": 1.0, "accuracy": 0.6},
           {"kv": 0.25, "accuracy": 0.41}]
    assert mix_level(pts, 0.1) is None and mix_level(pts, 0.2) == pytest.approx(0.4)
    assert mix_level(pts, 0.25) == pytest.approx(0.45)  # halfway from 0.2 to 0.3 beats the point at 0.25
    assert mix_level(pts, 0.65) == pytest.approx(0.55) and mix_level(pts, 2.0) == pytest.approx(0.6)
    rows = [_row("full", 1.0, 0.6), _row("static", 0.2, 0.4), _row("static", 0.3, 0.5, ratio=0.75),
            _row("hazard", 0.25, 0.47, knob={"trigger": 0.5}), _row("hazard", 0.22, 0.41, knob={"trigger": 0.9})]
    vs = frontiers(rows, [0.25])["gsm8k"]["learned_vs_static_mix"]
    assert [(p["kv"], p["static_mix"]) for p in vs] == [(0.22, pytest.approx(0.42)), (0.25, pytest.approx(0.45))]
    rows.append(_row("answer_check", 0.22, 0.52, knob={"tau": 0.2}))
    a = frontiers(rows, [0.25])["gsm8k"]["against_static"]  # every controlled family, not only the learned
    assert set(a) == {"hazard", "answer_check"}
    assert a["hazard"]["best_vs_static_mix"]["kv"] == 0.25  # +0.02 over the mix beats +(-0.01) at 0.22
    best = a["answer_check"]["best_vs_static_mix"]
    assert best["static_mix"] == pytest.approx(0.42) and a["answer_check"]["area_minus_static"] > 0


def test_merging_runs_of_two_guards_names_the_guard_of_each_learned_row(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    from merge_frontiers import merge

    def bits(acc):  # ten prompts, the first acc x 10 right
        return {"correct": "1" * round(acc * 10) + "0" * (10 - round(acc * 10)), "catastrophe": "0" * 10}

    def result(guard, acc, full_bits=None):
        rows = [{**_row("full", 1.0, 0.6), "n": 10, "outcomes": full_bits or bits(0.6)},
                {**_row("static", 0.2, 0.4), "n": 10, "outcomes": bits(0.4)},
                {**_row("hazard", 0.25, acc, knob={"trigger": 0.9}), "n": 10, "outcomes": bits(acc)}]
        return {"model": "m", "guard": guard, "rows": rows}

    paths = []
    for i, (g, acc) in enumerate([("checkpoints/a", 0.45), ("checkpoints/b", 0.5)]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(result(g, acc)))
    res = merge(paths, [0.25])
    assert [r["knob"] for r in res["rows"] if r["policy"] == "hazard"] == [{"guard": "a", "trigger": 0.9},
                                                                          {"guard": "b", "trigger": 0.9}]
    assert res["guards"] == ["checkpoints/a", "checkpoints/b"] and len(res["rows"]) == 4
    assert res["frontiers"]["gsm8k"]["matched"]["0.25"]["hazard"]["knob"]["guard"] == "b"
    # the two guards' runs are compared prompt by prompt across the files (same KV: a matched pair)
    vs = {(p["a"], p["b"]): p["correct"] for p in res["paired"]}
    assert vs[("hazard(guard=b,trigger=0.9)", "hazard(guard=a,trigger=0.9)")]["a_only"] == 1
    # an uncompressed run with the same accuracy but other prompts right is not the same run
    paths[1].write_text(json.dumps(result("checkpoints/b", 0.5, {"correct": "0111111000", "catastrophe": "0" * 10})))
    with pytest.raises(SystemExit, match="measured this run differently"):
        merge(paths, [0.25])
    # the same static run, measured again with each row's KV kept: the merge keeps the copy with more per prompt
    later = result("checkpoints/b", 0.5)
    later["rows"][1]["outcomes"] = {**bits(0.4), "kv": [0.2] * 10}
    paths[1].write_text(json.dumps(later))
    static = [r for r in merge(paths, [0.25])["rows"] if r["policy"] == "static"]
    assert len(static) == 1 and static[0]["outcomes"]["kv"] == [0.2] * 10


def test_a_merge_pools_the_seeds_of_one_coin_from_several_files(tmp_path):
    """Coin seeds run in different sessions (files) are pooled by the merge, and the result table prints them."""
    import sys
    from pathlib import Path

    from hazard.report import format_closed_loop

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    from merge_frontiers import merge

    def run(policy, kv, correct, knob=None):
        acc = correct.count("1") / len(correct)
        return {**_row(policy, kv, acc, knob=knob), "n": len(correct), "peak_kv_fraction": kv,
                "recovered_fraction": None, "false_trigger_rate": 0.0, "rollback_tokens_per_trace": 0.0,
                "seconds": 1.0, "outcomes": {"correct": correct, "catastrophe": "0" * len(correct)}}

    full, static = run("full", 1.0, "1111111111"), run("static", 0.2, "1111000000")
    files = [[full, static, run("answer_check", 0.23, "1111100000", {"gate": "random:0.3:0"}),
              run("answer_check", 0.235, "1111111100", {"gate": "checkpoints/g/f0.2"})],
             [full, static, run("answer_check", 0.231, "1111010000", {"gate": "random:0.3:1"})]]
    paths = []
    for i, rows in enumerate(files):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps({"model": "m", "rows": rows}))
    res = merge(paths, [0.25])
    (item,) = res["coins"]
    assert (item["a"], item["b"]) == ("answer_check(gate=g/f0.2)", "answer_check(gate=random:0.3) x2 seeds")
    assert item["correct"]["diff"] == pytest.approx(0.8 - 0.5) and item["correct"]["coins"] == 2
    text = format_closed_loop({**res, "hardware": "cpu"})
    assert "against pooled coins" in text and "x2 seeds" in text


def test_a_merge_keeps_apart_runs_with_one_knob_from_two_configs(tmp_path):
    """The same swept knob in two inputs (an unswept option, e.g. ``escalate``, differs between the configs): both
    runs stay, each knob naming its input's folder; a run found in one input only keeps its knob."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    from merge_frontiers import merge

    def run(policy, kv, correct, knob=None):
        return {**_row(policy, kv, correct.count("1") / 10, knob=knob), "n": 10,
                "outcomes": {"correct": correct, "catastrophe": "0" * 10}}

    full, static = run("full", 1.0, "1111111111"), run("static", 0.2, "1111000000")
    gate = {"gate": "checkpoints/g/f0.03"}
    files = {"plain": [full, static, run("answer_check", 0.228, "1111100000", gate)],
             "escalate": [full, static, run("answer_check", 0.249, "1111110000", gate),
                          run("answer_check", 0.245, "1111100000", {"gate": "random:0"})]}
    paths = []
    for name, rows in files.items():
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "closed_loop.json")
        paths[-1].write_text(json.dumps({"model": "m", "rows": rows}))
    res = merge(paths, [0.25])
    knobs = [r["knob"] for r in res["rows"] if r["policy"] == "answer_check"]
    assert knobs == [{**gate, "from": "plain"}, {**gate, "from": "escalate"}, {"gate": "random:0"}]
    assert [r["mean_kv_fraction"] for r in res["rows"] if r["policy"] == "answer_check"] == [0.228, 0.249, 0.245]


def test_a_merge_refuses_answer_checks_whose_readings_count_differently(tmp_path):
    """A run whose readings count as one layer's K/V is not on the memory axis of one that counts every layer's
    (a file from before the count was recorded counts every layer's); static and uncompressed rows read nothing."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    from merge_frontiers import merge

    def run(policy, kv, knob=None, **extra):
        return {**_row(policy, kv, 0.5, knob=knob), "n": 10, **extra,
                "outcomes": {"correct": "1111100000", "catastrophe": "0" * 10}}

    full, static = run("full", 1.0), run("static", 0.2)
    old = [full, static, run("answer_check", 0.234, {"gate": "random:0"})]
    new = [full, static, run("answer_check", 0.222, {"gate": "g/f0.03"}, reading_kv="one_layer")]
    paths = []
    for name, rows in (("old", old), ("new", new), ("new2", new)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"model": "m", "rows": rows}))
    with pytest.raises(SystemExit, match="count answer readings differently"):
        merge(paths[:2], [0.25])
    assert len(merge(paths[1:], [0.25])["rows"]) == 4  # one count: merged (the same run in two files kept apart)
    # told which count to keep, the other count's answer checks are left out and every other row kept
    kept = merge(paths[:2], [0.25], reading_kv="one_layer")
    assert [(r["policy"], r.get("reading_kv")) for r in kept["rows"]] == [
        ("full", None), ("static", None), ("answer_check", "one_layer")]
    assert kept["reading_kv"] == "one_layer"
    old_only = merge(paths[:2], [0.25], reading_kv="all_layers")["rows"]
    assert [r["mean_kv_fraction"] for r in old_only if r["policy"] == "answer_check"] == [0.234]


def test_the_answer_check_is_three_families_by_what_chooses_its_repairs():
    """A learned gate, a coin and no choice (every changed answer, or only the escalated ones with random:0) are
    separate frontiers, so the gate's points are never credited to a coin's run or the reverse."""
    from hazard.frontiers import family

    gates = {"": "answer_check", "random:0": "answer_check", "random:0.06:1": "answer_check:coin",
             "random:0.3": "answer_check:coin", "checkpoints/answer-gate-q15-nea85/f0.03": "answer_check:gate"}
    for gate, want in gates.items():
        assert family(_row("answer_check", 0.23, 0.5, knob={"gate": gate})) == want
    assert family(_row("answer_check", 0.23, 0.5)) == "answer_check"
    assert family(_row("hazard", 0.23, 0.5, knob={"gate": "random:0.1"})) == "hazard"
    fr = frontiers([_row("full", 1.0, 0.54), _row("static", 0.2, 0.5),
                    _row("answer_check", 0.23, 0.52, knob={"gate": "checkpoints/g/f0.03"}),
                    _row("answer_check", 0.23, 0.55, knob={"gate": "random:0.6:0"})], [0.25])["gsm8k"]
    assert fr["matched"]["0.25"]["answer_check:gate"]["accuracy"] == 0.52
    assert fr["matched"]["0.25"]["answer_check:coin"]["accuracy"] == 0.55


def test_a_merge_held_to_a_false_trigger_bound_leaves_out_the_runs_over_it(tmp_path, capsys, monkeypatch):
    """--max_false adds frontiers over the runs within the bound (static and full have none), beside the plain
    ones, and prints their table; without it there is no such section."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    import merge_frontiers

    def run(policy, kv, acc, false, knob=None):
        return {**_row(policy, kv, acc, knob=knob), "n": 10, "false_trigger_rate": false}

    rows = [run("full", 1.0, 0.6, 0.0), run("static", 0.2, 0.4, 0.0),
            run("answer_check", 0.24, 0.58, 0.40, {"gate": "checkpoints/g/f0.3"}),
            run("answer_check", 0.23, 0.52, 0.036, {"gate": "checkpoints/g/f0.03"})]
    path = tmp_path / "closed_loop.json"
    path.write_text(json.dumps({"model": "m", "rows": rows}))
    assert "frontiers_max_false" not in merge_frontiers.merge([path], [0.25])
    res = merge_frontiers.merge([path], [0.25], max_false=0.05)
    assert res["frontiers"]["gsm8k"]["matched"]["0.25"]["answer_check:gate"]["accuracy"] == 0.58
    held = res["frontiers_max_false"]
    assert held["max_false"] == 0.05
    assert held["tasks"]["gsm8k"]["matched"]["0.25"]["answer_check:gate"]["accuracy"] == 0.52
    assert held["tasks"]["gsm8k"]["matched"]["0.25"]["static"]["accuracy"] == 0.4
    out = tmp_path / "merged.json"
    argv = ["merge_frontiers", str(path), "--out", str(out), "--kv", "0.25", "--max_false", "0.05"]
    monkeypatch.setattr(sys, "argv", argv)
    merge_frontiers.main()
    text = capsys.readouterr().out
    assert "held to false triggers <= 0.05" in text
    assert text.count("0.520 / 0.000 @0.230") == 1 and text.count("0.580 / 0.000 @0.240") == 1
    assert (tmp_path / "merged_gsm8k.png").stat().st_size > 0
    assert (tmp_path / "merged_gsm8k_max_false.png").stat().st_size > 0


def test_variants_sweep_every_list_valued_knob():
    assert variants({"rollback": 8}) == [{}]
    assert variants({"trigger": [0.1, 0.2], "budget": [0.1, 0.2], "rollback": 8}) == [
        {"trigger": 0.1, "budget": 0.1}, {"trigger": 0.1, "budget": 0.2},
        {"trigger": 0.2, "budget": 0.1}, {"trigger": 0.2, "budget": 0.2}]


def test_option_sets_run_in_turn_and_their_knobs_name_what_differs():
    from hazard.evaluate import _fixed, _knob_label, knob_from_label

    sets = [{"tau": 0.2, "action": "restore", "gate": ["a", "b"], "hold": 16},
            {"tau": 0.2, "action": "none", "spot": [0, 64]}]
    assert variants(sets) == [{"action": "restore", "gate": "a", "hold": 16},
                              {"action": "restore", "gate": "b", "hold": 16},
                              {"action": "none", "spot": 0}, {"action": "none", "spot": 64}]
    assert _fixed(sets) == {"tau": 0.2}  # with a knob, each run's options again
    assert all(knob_from_label(_knob_label(k)) == k for k in variants(sets))  # a saved run's name read back
    assert variants([{"rollback": 8}]) == [{}] and _fixed([{"rollback": 8}]) == {"rollback": 8}


def test_evaluate_sweeps_knobs_and_static_ratios_into_frontiers(tmp_path):
    from hazard.cli import main

    out = tmp_path / "cl.json"
    args = ["evaluate", "--output", str(out), "--model.tiny", "qwen2", "--model.dtype", "float64",
            "--model.device", "cpu", "--max_new_tokens", "12", "--batch_size", "4",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 3, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]",
            "--static_sweep", "[{name: knorm, ratio: 0.5}, {name: knorm, ratio: 0.75}, {name: snapkv, ratio: 0.5,"
                              " kwargs: {window_size: 4}}]",
            "--policies", "[static, full, digest_recall, entropy_rule]",
            # entropy_rule as two option sets: the same two runs as {trigger: [0.0, 100.0], ...} would give
            "--policy_options", "{digest_recall: {budget: [0.1, 0.3], interval: 4}, entropy_rule: ["
                                "{trigger: 0.0, action: recall, budget: 0.2, rollback: 2}, "
                                "{trigger: 100.0, action: recall, budget: 0.2, rollback: 2}]}"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    rows = [(r["base_press"], r["base_ratio"], r["policy"], r["knob"]) for r in res["rows"]]
    k = ("knorm", 0.75)
    assert rows == [(*k, "static", {}), (*k, "full", {}),
                    (*k, "digest_recall", {"budget": 0.1}), (*k, "digest_recall", {"budget": 0.3}),
                    (*k, "entropy_rule", {"trigger": 0.0}), (*k, "entropy_rule", {"trigger": 100.0}),
                    ("knorm", 0.5, "static", {}), ("snapkv", 0.5, "static", {})]
    by = {(r["policy"], json.dumps(r["knob"])): r for r in res["rows"]}
    kv = {k: r["mean_kv_fraction"] for k, r in by.items()}
    assert kv[("digest_recall", '{"budget": 0.1}')] < kv[("digest_recall", '{"budget": 0.3}')] < 1.0
    static = res["rows"][0]["mean_kv_fraction"]
    # a recalling policy that never fires still holds its digest on the GPU: counted
    assert static < kv[("entropy_rule", '{"trigger": 100.0}')] < kv[("entropy_rule", '{"trigger": 0.0}')]
    assert by[("entropy_rule", '{"trigger": 100.0}')]["accuracy"] == res["rows"][0]["accuracy"]
    assert by[("entropy_rule", '{"trigger": 0.0}')]["trigger_rate"] == 1.0
    fr = res["frontiers"]["kv_retrieval"]["families"]
    assert {"static:knorm", "static:snapkv", "static", "digest_recall", "entropy_rule", "full"} <= set(fr)
    assert len(fr["static:knorm"]["points"]) == 2 and res["git_sha"]
    assert (tmp_path / "cl_kv_retrieval.png").stat().st_size > 1000
    # per-prompt outcomes on every row, and the runs compared prompt by prompt
    assert all(len(r["outcomes"]["correct"]) == 3 for r in res["rows"])
    never = by[("entropy_rule", '{"trigger": 100.0}')]
    # it never fires: the static run, prompt by prompt (its memory is not: the controller's digest is on the GPU)
    static_outcomes = res["rows"][0]["outcomes"]
    assert {k: never["outcomes"][k] for k in ("correct", "catastrophe")} == \
        {k: static_outcomes[k] for k in ("correct", "catastrophe")}
    assert min(never["outcomes"]["kv"]) > max(static_outcomes["kv"])
    vs_static = {p["a"] if p["b"] == "static" else p["b"]: p for p in res["paired"] if "static" in (p["a"], p["b"])}
    assert set(vs_static) == {"digest_recall(budget=0.1)", "digest_recall(budget=0.3)", "entropy_rule(trigger=0)",
                              "entropy_rule(trigger=100)"}
    assert vs_static["entropy_rule(trigger=100)"]["correct"]["p"] == 1.0
    assert res["coins"] == []  # no coin gate ran: nothing to pool (hazard.paired.coin_comparisons)


def test_a_bad_knob_fails_before_the_model_loads(tmp_path, capsys):
    from hazard.cli import main

    args = ["evaluate", "--output", str(tmp_path / "x.json"), "--model.path", str(tmp_path / "nowhere"),
            "--tasks", "[{name: kv_retrieval}]", "--base_presses", "[{name: knorm, ratio: 0.75}]",
            "--policy_options", "{digest_recall: {budget: [0.1, 2.0]}}"]
    assert main(args) == 2
    assert "budget" in capsys.readouterr().err
    same = args[:-1] + ["{digest_recall: [{budget: 0.1}, {budget: [0.2, 0.1]}]}"]
    assert main(same) == 2
    assert "two option sets give the same run (budget=0.1)" in capsys.readouterr().err


def test_evaluate_gives_number_recall_the_tokenizers_digits(tmp_path):
    from hazard.cli import main

    out = tmp_path / "cl.json"
    args = ["evaluate", "--output", str(out), "--model.tiny", "qwen2", "--model.dtype", "float64",
            "--model.device", "cpu", "--max_new_tokens", "16", "--batch_size", "6",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 6, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]",
            "--policies", "[static, full, number_recall]",
            "--policy_options", "{number_recall: {budget: 0.2, rollback: 1}}"]
    assert main(args) == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())["rows"]}
    nr = rows["number_recall"]
    assert 0 < nr["trigger_rate"] <= 1 and nr["rollback_tokens_per_trace"] > 0  # the tiny model writes digits
    assert rows["static"]["mean_kv_fraction"] < nr["mean_kv_fraction"] < 1.0


def test_evaluate_gives_arith_rewind_the_token_texts(tmp_path):
    """arith_rewind runs in ``hazard evaluate`` (the controller gets each token's text); the tiny model's text
    holds no wrong equation, so it never fires and keeps the static run's memory and answers."""
    from hazard.cli import main

    out = tmp_path / "cl.json"
    args = ["evaluate", "--output", str(out), "--model.tiny", "qwen2", "--model.dtype", "float64",
            "--model.device", "cpu", "--max_new_tokens", "12", "--batch_size", "6",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 6, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]", "--policies", "[static, full, arith_rewind]"]
    assert main(args) == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())["rows"]}
    ar = rows["arith_rewind"]
    assert ar["trigger_rate"] == 0 and ar["mean_kv_fraction"] == rows["static"]["mean_kv_fraction"]
    assert ar["accuracy"] == rows["static"]["accuracy"]
