import datasets
import pytest

from hazard.summary import summarize_onsets


def _ds(rows):
    keys = ["catastrophe", "loop", "nonterm", "onset", "onset_source", "loop_period", "repeat4", "arith_wrong"]
    rows = [r if len(r) == len(keys) else (*r, [0.0] * len(r[-1])) for r in rows]  # no wrong equation by default
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
    # onsets at 2, 1 (loops) and 4 (the stall): none can be flagged 8 tokens ahead; the wrong answer has no onset
    assert loop["onset_ge8"] == 0.0 and out["nonterm"]["onset_ge8"] == 0.0 and out["wrong"]["onset_ge8"] is None
    assert out["onset_ge8"] == 0.0
    late = summarize_onsets(_ds([*rows, (True, False, False, 12, "claim", 0, [0] * 14)]), delay=4)
    assert late["wrong"]["onset_ge8"] == 1.0 and late["onset_ge8"] == 0.25
    assert out["healthy_arith_any"] == 0.0 and loop["arith_any"] == 0.0


def test_onset_summary_counts_wrong_equations_found_at_the_claim():
    nan = float("nan")
    rows = [
        # a wrong answer whose wrong sum is found 2 tokens after its claim onset
        (True, False, False, 3, "claim", 0, [0] * 8, [0, 0, 0, 0, 0, 1, 1, 1]),
        # one whose wrong equation is found 6 tokens after: in its text, not within 4
        (True, False, False, 1, "claim", 0, [0] * 8, [0] * 7 + [1]),
        # one with no wrong equation, and one collected without token texts (NaN: nothing found)
        (True, False, False, 2, "claim", 0, [0] * 4, [0, 0, 0, 0]),
        (True, False, False, 2, "claim", 0, [0] * 4, [nan] * 4),
        (False, False, False, -1, "none", 0, [0] * 3, [0, 1, 1]),  # a healthy run's own slip
        (False, False, False, -1, "none", 0, [0] * 3, [0, 0, 0]),
    ]
    out = summarize_onsets(_ds(rows), delay=4)
    assert out["wrong"]["arith_any"] == 0.5 and out["wrong"]["arith_within"] == 0.25
    assert out["healthy_arith_any"] == 0.5


def _part(model, traces, tokens, press="snapkv", complete=True):
    return {"model": model, "complete": complete, "chunks_left": 0 if complete else 1, "n_traces": traces,
            "n_generated_tokens": tokens, "shard_generated_tokens_per_s": 100.0, "git_sha": "abc",
            "hardware": "1x GPU", "configs": [{"press": press, "ratio": 0.5}], "formats": [
                {"task": "gsm8k", "format": "k3e0s0"}]}


def test_parts_collected_side_by_side_add_up_over_the_wall_time(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    paths = []
    for name, part in {"campaign_q15_p3": _part("q15", 10, 1000), "campaign_q05_p3": _part("q05", 5, 500, "knorm"),
                       "campaign_q15_p4": _part("q15", 20, 1500, complete=False)}.items():
        paths.append(tmp_path / f"{name}_summary.json")
        paths[-1].write_text(json.dumps(part))
    wall = tmp_path / "wall.txt"
    wall.write_text("# call 1\n100 200\n300 350  # call 2\n")  # two calls: 150 s in all
    out = tmp_path / "merged.json"
    run = subprocess.run([sys.executable, str(root / "collect/merge_parts.py"), "--wall", str(wall), "--out", str(out),
                          *map(str, paths)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rec = json.loads(out.read_text())
    assert rec["n_traces"] == 35 and rec["n_generated_tokens"] == 3000 and rec["wall_seconds"] == 150
    assert rec["aggregate_generated_tokens_per_s"] == 20.0 and rec["processes"] == 3 and not rec["complete"]
    assert rec["summed_part_generated_tokens_per_s"] == 300.0
    assert rec["by_model"]["q15"] == {"n_traces": 30, "n_generated_tokens": 2500, "parts": 2}
    assert rec["settings"] == ["knorm@0.5", "snapkv@0.5"] and set(rec["parts"]) == {
        "campaign_q15_p3", "campaign_q05_p3", "campaign_q15_p4"}
    wall.write_text("100 later\n")
    run = subprocess.run([sys.executable, str(root / "collect/merge_parts.py"), "--wall", str(wall), "--out", str(out),
                          *map(str, paths)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "wall.txt:1" in run.stderr


def test_campaign_totals_count_a_repeated_collection_once(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("totals", Path(__file__).parents[1] / "collect/campaign_totals.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, n in {"campaign_q15": 10, "campaign_q15_run2": 4, "campaign_q05_p3": 6}.items():
        (tmp_path / f"{name}_summary.json").write_text(json.dumps(_part("m", n, 100 * n)))
    (tmp_path / "campaign_scale.json").write_text("{}")  # a merged record, not a summary
    t = mod.totals(tmp_path)
    assert (t["n_traces"], t["n_generated_tokens"]) == (20, 2000)
    assert (t["distinct_n_traces"], t["distinct_n_generated_tokens"]) == (16, 1600)
    assert set(t["collections"]) == {"campaign_q15", "campaign_q15_run2", "campaign_q05_p3"}
