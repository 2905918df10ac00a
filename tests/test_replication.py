"""One run against its references on several prompt sets: per set, pooled, and issue 12's bounds."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hazard.errors import HazardError
from hazard.replication import Bounds, format_replication, format_tradeoff, replicate, tradeoff

GATE = "answer_check(gate=g/f0.03)"


def _row(policy, correct, kv, knob=None, ratio=0.85, catas=0.0, false=0.0):
    return {"task": "gsm8k", "format": "k3e0s0", "policy": policy, "base_press": "numbers", "base_ratio": ratio,
            "knob": knob or {}, "n": len(correct), "accuracy": correct.count("1") / len(correct),
            "catastrophe_rate": catas, "mean_kv_fraction": kv, "false_trigger_rate": false,
            "outcomes": {"correct": correct, "catastrophe": "0" * len(correct)}}


def _set(full, static, milder, gate, coins, false=0.03):
    return [_row("full", full, 1.0), _row("static", static, 0.21), _row("static", milder, 0.235, ratio=0.825),
            _row("answer_check", gate, 0.234, {"gate": "checkpoints/g/f0.03"}, false=false),
            *[_row("answer_check", c, 0.233, {"gate": f"random:0.06:{s}"}) for s, c in enumerate(coins)]]


# set a: the gate fixes 2 of static's 10 prompts and the milder press 1; set b: it fixes none
A = _set("1111111100", "1111100000", "1111110000", "1111111000", ["1111100000", "1111110000"])
B = _set("1111110000", "1110000000", "1111000000", "1110000000", ["1110000000", "1110000000"], false=0.08)
AGAINST = ["static", "static numbers@0.825", "coins:answer_check(gate=random:0.06)", "full"]


def test_each_set_is_compared_on_its_own_prompts_and_the_pool_on_all_of_them():
    res = replicate({"a": A, "b": B}, GATE, AGAINST, "numbers@0.85")
    a, b, pool = res["sets"]["a"], res["sets"]["b"], res["pools"]["all"]
    assert (a["against"]["static"]["a_only"], a["against"]["static"]["b_only"]) == (2, 0)
    assert (b["against"]["static"]["a_only"], b["against"]["static"]["b_only"]) == (0, 0)
    # the pool concatenates the prompts: its discordant counts are the sets' sums, its rates prompt-weighted
    s = pool["against"]["static"]
    assert (s["n"], s["a_only"], s["b_only"], s["diff"]) == (20, 2, 0, pytest.approx(0.1))
    assert pool["run"]["accuracy"] == pytest.approx(10 / 20) and pool["full"]["accuracy"] == pytest.approx(14 / 20)
    assert pool["against"]["static numbers@0.825"]["summary"]["accuracy"] == pytest.approx(10 / 20)
    # against the coins: the run's outcome minus the seeds' mean, per prompt
    c = a["against"]["coins:answer_check(gate=random:0.06)"]
    assert c["diff"] == pytest.approx(0.7 - 0.55) and c["coins"] == [2]
    assert pool["against"]["coins:answer_check(gate=random:0.06)"]["coins"] == [2, 2]


def test_matched_coins_are_the_rate_nearest_the_runs_trigger_rate_in_each_set():
    def with_coins(rows, trig, coins):  # coins: rate -> (trigger rate, outcomes of each seed)
        rows = [r | {"trigger_rate": trig} if r["policy"] == "answer_check" else r for r in rows[:4]]
        return rows + [_row("answer_check", c, 0.233, {"gate": f"random:{rate}:{s}"}) | {"trigger_rate": t}
                       for rate, (t, cs) in coins.items() for s, c in enumerate(cs)]

    # the run triggers on 20% of a's rows and 30% of b's; each set holds coins at two rates
    a = with_coins(A, 0.2, {"0.06": (0.05, ["1111100000"] * 2), "0.27": (0.21, ["1111110000"] * 2),
                            "0": (0.2, ["0000000000"])})  # rate 0 never acts: never the match, whatever it reads
    b = with_coins(B, 0.3, {"0.27": (0.18, ["1110000000"] * 2), "0.41": (0.29, ["1111000000", "1110000000"])})
    label = "coins:answer_check(gate=random:matched)"
    res = replicate({"a": a, "b": b}, GATE, [label], "numbers@0.85")
    assert res["sets"]["a"]["against"][label]["rates"] == ["random:0.27"]
    assert res["sets"]["b"]["against"][label]["rates"] == ["random:0.41"]
    pool = res["pools"]["all"]["against"][label]
    assert pool["rates"] == ["random:0.27", "random:0.41"] and pool["coins"] == [2, 2]
    # a: 0.7 against the 0.27 coins' 0.6; b: 0.3 against the 0.41 coins' mean 0.35
    assert pool["diff"] == pytest.approx((0.7 - 0.6 + 0.3 - 0.35) / 2)
    assert "(random:0.27, random:0.41)" in format_replication(res)
    assert "(coins 0.27/0.41)" in format_tradeoff(tradeoff([res]))
    with pytest.raises(HazardError, match="0 runs named"):
        replicate({"a": A[:4]}, GATE, [label], "numbers@0.85")


def test_mix_static_is_static_compression_at_the_runs_own_kv_in_each_set():
    # a: the gate (0.7 @ 0.234) sits between static 0.85 (0.5 @ 0.21) and 0.825 (0.6 @ 0.235): the mix is 0.04 of
    # the one and 0.96 of the other, 0.596; per prompt the gate gains prompt 6 whole and 0.04 of prompt 5
    worse = _row("static", "1100000000", 0.22) | {"base_press": "knorm"}  # a dominated setting: not in the mix
    res = replicate({"a": A + [worse], "b": B}, GATE, ["mix:static"], "numbers@0.85")
    a, b = res["sets"]["a"]["against"]["mix:static"], res["sets"]["b"]["against"]["mix:static"]
    assert a["summary"]["accuracy"] == pytest.approx(0.596) and a["summary"]["mean_kv_fraction"] == pytest.approx(0.234)
    assert a["diff"] == pytest.approx(0.104) and a["mixes"] == ["0.04 numbers@0.85 + 0.96 numbers@0.825"]
    assert b["diff"] == pytest.approx(0.3 - 0.396)  # b: the gate fixes nothing, the mix gains 0.96 of a prompt
    pool = res["pools"]["all"]["against"]["mix:static"]
    assert pool["diff"] == pytest.approx((0.104 - 0.096) / 2) and len(pool["mixes"]) == 2
    assert "(0.04 numbers@0.85 + 0.96 numbers@0.825)" in format_replication(res)
    # above every press, the uncompressed run (ratio 0) is a setting too; below all of them is an error
    above = [r | {"mean_kv_fraction": 0.3} if r["policy"] == "answer_check" else r for r in A]
    res = replicate({"a": above}, GATE, ["mix:static"], "numbers@0.85")
    assert res["sets"]["a"]["against"]["mix:static"]["mixes"] == ["0.92 numbers@0.825 + 0.08 full"]
    assert res["sets"]["a"]["against"]["mix:static"]["summary"]["accuracy"] == pytest.approx(0.6 + 0.2 * 0.065 / 0.765)
    below = [r | {"mean_kv_fraction": 0.2} if r["policy"] == "answer_check" else r for r in A]
    with pytest.raises(HazardError, match="no static setting reaches the run's mean KV 0.200"):
        replicate({"a": below}, GATE, ["mix:static"], "numbers@0.85")


def test_the_bounds_are_checked_per_set_and_on_the_pool():
    res = replicate({"a": A, "b": B}, GATE, ["static"], "numbers@0.85", bounds=Bounds(acc_tol=0.1))
    a, b = res["sets"]["a"]["bounds"], res["sets"]["b"]["bounds"]
    assert a["accuracy"] == {"value": 0.7, "limit": pytest.approx(0.7), "ok": True}  # at the bound: met
    assert not b["accuracy"]["ok"] and not b["false_trigger_rate"]["ok"] and b["mean_kv_fraction"]["ok"]
    assert res["pools"]["all"]["bounds"]["false_trigger_rate"]["value"] == pytest.approx(0.055)
    text = format_replication(res)
    assert "set b" in text and "MISSED" in text and "pool all (a + b)" in text


def test_named_pools_and_unknown_names_are_one_clear_error():
    res = replicate({"a": A, "b": B}, GATE, ["static"], "numbers@0.85", pools={"held-out": ["b"]})
    assert list(res["pools"]) == ["held-out"] and res["pools"]["held-out"]["run"]["n"] == 10
    with pytest.raises(HazardError, match="known there"):
        replicate({"a": A}, "answer_check(gate=g/f0.2)", ["static"], "numbers@0.85")
    with pytest.raises(HazardError, match="pool x names sets"):
        replicate({"a": A}, GATE, ["static"], "numbers@0.85", pools={"x": ["a", "c"]})
    with pytest.raises(HazardError, match="0 tasks with base press"):
        replicate({"a": A}, GATE, ["static"], "snapkv@0.875")


def test_the_script_writes_the_json_and_names_a_missing_file(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    import replicate as script

    for name, rows in (("a", A), ("b", B)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"git_sha": "abc", "hardware": "cpu", "rows": rows}))
    out = tmp_path / "r.json"
    args = ["--base", "numbers@0.85", "--run", GATE, "--against", "static", "full",
            "--set", f"a={tmp_path / 'a.json'}", "--set", f"b={tmp_path / 'b.json'}", "--out", str(out)]
    assert script.main(args) == 0
    rec = json.loads(out.read_text())
    assert rec["sources"]["a"]["git_sha"] == "abc" and set(rec["pools"]) == {"all"}
    assert np.isclose(rec["sets"]["a"]["against"]["full"]["diff"], -0.1)
    assert "pool all" in capsys.readouterr().out
    assert script.main(args[:-4] + ["--set", f"c={tmp_path / 'none.json'}"]) == 2
    assert "none.json not found" in capsys.readouterr().err
    assert script.main(args + ["--pool", "nosets"]) == 2
    assert "write NAME=SET,SET" in capsys.readouterr().err


def _wide(false):
    """Set a with a second, wider gate that fixes one more prompt at more false triggers."""
    return A + [_row("answer_check", "1111111100", 0.236, {"gate": "checkpoints/g/f0.3"}, false=false)]


def test_several_runs_make_one_tradeoff_curve_per_pool_sorted_by_false_triggers():
    wide = "answer_check(gate=g/f0.3)"
    sets = {"a": _wide(0.3)}
    results = [replicate(sets, run, ["static", "static numbers@0.825"], "numbers@0.85", bounds=Bounds(acc_tol=0.1))
               for run in (wide, GATE)]
    curve = tradeoff(results)["all"]
    assert [p["run"] for p in curve] == [GATE, wide]  # sorted by false triggers, 0.03 then 0.3
    assert [p["against"]["static"]["diff"] for p in curve] == [pytest.approx(0.2), pytest.approx(0.3)]
    assert curve[0]["bounds_ok"] and not curve[1]["bounds_ok"]  # the wide gate misses the 5% bound
    assert tradeoff(results, "sets")["a"] == curve  # one set: its curve is the pool's
    text = format_tradeoff({"all": curve})
    assert "pool all" in text and "+0.300" in text and "missed" in text
    with pytest.raises(HazardError, match="no runs"):
        tradeoff([])


def test_the_script_with_several_runs_writes_the_tradeoff_and_its_plot(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    import replicate as script

    (tmp_path / "a.json").write_text(json.dumps({"git_sha": "abc", "hardware": "cpu", "rows": _wide(0.3)}))
    out, png = tmp_path / "t.json", tmp_path / "t.png"
    args = ["--base", "numbers@0.85", "--run", GATE, "answer_check(gate=g/f0.3)", "--against", "static",
            "--set", f"a={tmp_path / 'a.json'}", "--out", str(out), "--plot", str(png)]
    assert script.main(args) == 0
    rec = json.loads(out.read_text())
    assert len(rec["runs"]) == 2 and [p["run"] for p in rec["tradeoff"]["pools"]["all"]][1].endswith("f0.3)")
    assert png.stat().st_size > 0 and "pool all" in capsys.readouterr().out
