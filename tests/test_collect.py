import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hazard import SCHEMA_VERSION
from hazard.cli import main
from hazard.labels import HORIZONS
from hazard.models import save_tiny
from hazard.signals import PREFILL_SIGNALS, SIGNALS, arith_wrong, token_pieces
from hazard.traces import load_traces

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-qwen2", "qwen2", seed=2)


def _args(out, model_dir, *extra):
    return ["collect", "--config", str(ROOT / "configs/collect/tiny.yaml"), "--output_dir", str(out),
            "--model", json.dumps({"path": str(model_dir), "device": "cpu", "dtype": "float64",
                                   "name": "tiny"}), *extra]


def _rows(ds):
    return sorted(ds.to_list(), key=lambda r: r["trace_id"])


def test_collect_writes_a_labelled_dataset(tmp_path, tiny_dir, capsys, tok):
    out = tmp_path / "traces"
    assert main(_args(out, tiny_dir)) == 0
    assert "kv_retrieval" in capsys.readouterr().out
    ds = load_traces(out)
    # 12 prompts x (none + 3 press settings)
    assert len(ds) == 12 * 4
    assert len(set(ds["trace_id"])) == len(ds)
    assert set(ds["press"]) == {"none", "snapkv", "streaming_llm", "decode_knorm"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and "transformers" in manifest["versions"]
    summary = json.loads((out / "summary.json").read_text())
    assert {"model", "hardware", "generated_tokens_per_s", "configs", "onsets"} <= summary.keys()
    assert summary["generated_tokens_per_s"] > 0
    for row in ds:
        n = row["n_tokens"]
        assert len(row["tokens"]) == n and all(len(row[s]) == n for s in SIGNALS)
        assert all(len(row[f"label_h{k}"]) == n for k in HORIZONS) and len(row["post_onset"]) == n
        assert np.isfinite(row["entropy"]).all()
        # the text signal, from the token texts the collection decoded (the tiny model writes no equations)
        assert np.array_equal(row["arith_wrong"], arith_wrong(token_pieces(tok, row["tokens"])))
        if row["press"] == "none":
            assert row["divergence"] == -1 and row["kv_tokens_prefill"] == row["prompt_len"]
        if row["press"] == "snapkv":
            assert row["kv_tokens_prefill"] < row["prompt_len"]
        assert all(0.0 <= row[c] <= 1.0 for c in PREFILL_SIGNALS)
        if row["press"] in ("none", "decode_knorm"):  # nothing evicted at prefill
            assert row["question_kept"] == row["question_digits_kept"] == 1.0 and row["question_digits_lost"] == 0
        if row["onset"] >= 0:
            assert row["catastrophe"] and sum(row["post_onset"]) == max(n - row["onset"], 0)
            assert row["label_h4"][max(row["onset"] - 4, 0):].count(1) == n - max(row["onset"] - 4, 0)
        else:
            assert sum(row["label_h64"]) == 0
        if row["loop"]:
            assert row["onset"] == row["loop_onset"] and row["onset_source"] == "loop"
    assert min(r["question_kept"] for r in ds if r["press"] == "snapkv") < 1.0  # the press evicted question tokens


def test_interrupted_run_resumes_to_the_same_dataset(tmp_path, tiny_dir, monkeypatch):
    full = tmp_path / "full"
    assert main(_args(full, tiny_dir)) == 0

    import hazard.collect as collect_mod

    real_write = collect_mod.write_shard
    calls = {"n": 0}

    def dying_write(rows, path):
        calls["n"] += 1
        if calls["n"] == 3:  # die while writing the third shard, leaving a partial temp file behind
            Path(str(path) + ".tmp").write_bytes(b"PAR1 partial")
            raise KeyboardInterrupt
        real_write(rows, path)

    part = tmp_path / "part"
    monkeypatch.setattr(collect_mod, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        main(_args(part, tiny_dir))
    assert sorted(p.name for p in (part / "data").glob("*.parquet")) == [
        "kv_retrieval-00000-none.parquet", "kv_retrieval-00000-snapkv-r0.5.parquet"]
    assert len(load_traces(part)) == 2 * 4  # two settings of 4 prompts; the partial third is never read
    monkeypatch.setattr(collect_mod, "write_shard", real_write)
    assert main(_args(part, tiny_dir)) == 0
    stats = json.loads((part / "stats" / "rank-000.json").read_text())
    assert stats["skipped_shards"] == 2  # the resumed run reads the reference back from its shard
    a, b = _rows(load_traces(full)), _rows(load_traces(part))
    assert [r["trace_id"] for r in a] == [r["trace_id"] for r in b]
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    # Throughput over the whole collection counts the shards of both calls, one timing per shard.
    timings = sorted(p.stem for p in (part / "stats" / "shards").glob("*.json"))
    assert timings == sorted(p.stem for p in (part / "data").glob("*.parquet"))
    total = sum(json.loads(p.read_text())["generated_tokens"] for p in (part / "stats" / "shards").glob("*.json"))
    assert total == sum(r["n_tokens"] for r in b)
    assert json.loads((part / "summary.json").read_text())["shard_generated_tokens_per_s"] > 0


def test_a_call_that_finds_every_shard_says_so(tmp_path, tiny_dir, capsys):
    out = tmp_path / "done"
    assert main(_args(out, tiny_dir)) == 0
    capsys.readouterr()
    assert main(_args(out, tiny_dir)) == 0  # nothing left to generate
    head = capsys.readouterr().out
    rate = json.loads((out / "summary.json").read_text())["shard_generated_tokens_per_s"]
    assert f"no new shards (the collection's shards: {rate} generated tokens/s)" in head and "None" not in head


def test_resume_refuses_a_different_config(tmp_path, tiny_dir, capsys):
    out = tmp_path / "t"
    assert main(_args(out, tiny_dir)) == 0
    assert main(_args(out, tiny_dir, "--max_new_tokens", "7")) == 2
    assert "different config" in capsys.readouterr().err


def test_resume_reads_a_key_added_since_as_its_default(tmp_path, tiny_dir, capsys):
    """A manifest written before a config key existed (here ``state_dim``) resumes when the key keeps its
    default, and is refused when it does not."""
    out = tmp_path / "t"
    assert main(_args(out, tiny_dir)) == 0
    man = json.loads((out / "manifest.json").read_text())
    del man["config"]["state_dim"]
    (out / "manifest.json").write_text(json.dumps(man))
    capsys.readouterr()
    assert main(_args(out, tiny_dir)) == 0 and "no new shards" in capsys.readouterr().out
    (out / "manifest.json").write_text(json.dumps(man))
    assert main(_args(out, tiny_dir, "--state_dim", "32")) == 2
    assert "different config" in capsys.readouterr().err


def test_torchrun_two_processes_match_one(tmp_path, tiny_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(one, tiny_dir)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "hazard.cli", *_args(two, tiny_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (two / "stats").glob("rank-*.json")) == ["rank-000.json", "rank-001.json"]
    a, b = _rows(load_traces(one)), _rows(load_traces(two))
    assert [r["trace_id"] for r in a] == [r["trace_id"] for r in b]
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]


def _torchrun(n, args, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(port),
           "-m", "hazard.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_collection_stopped_on_two_processes_resumes_on_one_and_the_reverse(tmp_path, tiny_dir):
    """Shards are named by (task, chunk, setting), not by rank: a collection stopped under one world size
    goes on under another with every shard written once and the rows of a single uninterrupted run."""
    ref = tmp_path / "ref"
    assert main(_args(ref, tiny_dir)) == 0
    shards = sorted(p.name for p in (ref / "data").glob("*.parquet"))
    for first, then, port in ((2, 1, 29518), (1, 2, 29519)):
        out = tmp_path / f"{first}-then-{then}"
        stop = _args(out, tiny_dir, "--time_budget_s", "0")  # each rank writes one shard, then stops
        _torchrun(first, stop, port) if first > 1 else main(stop)
        summary = json.loads((out / "summary.json").read_text())
        assert not summary["complete"] and len(list((out / "data").glob("*.parquet"))) == first
        _torchrun(then, _args(out, tiny_dir), port) if then > 1 else main(_args(out, tiny_dir))
        summary = json.loads((out / "summary.json").read_text())
        assert summary["complete"] and summary["world_size"] == then
        assert sorted(p.name for p in (out / "data").glob("*.parquet")) == shards  # none lost, none twice
        skipped = sum(json.loads((out / "stats" / f"rank-{r:03d}.json").read_text())["skipped_shards"]
                      for r in range(then))
        assert skipped == first  # the first call's shards were read back, not regenerated
        a, b = _rows(load_traces(ref)), _rows(load_traces(out))
        assert [r["trace_id"] for r in a] == [r["trace_id"] for r in b]
        assert [r["tokens"] for r in a] == [r["tokens"] for r in b]


def test_build_row_format_only_and_cut_after_answer_are_not_catastrophes():
    from hazard.collect import build_row
    from hazard.compression import PressSpec
    from hazard.engine import Generation
    from hazard.tasks import Prompt

    def gen(words, finished):
        n = len(words)
        return Generation(tokens=list(range(n)), finished=finished,
                          signals=np.zeros((n, len(SIGNALS)), np.float32), kv_tokens=np.full(n, 10),
                          kv_bytes=np.full(n, 100), prompt_len=10, kv_tokens_prefill=10, bytes_per_token=10)

    prompt = Prompt("p0", [{"role": "user", "content": "Travis has 61 apps, deletes 9, downloads 18. How many?"}], "70")
    meta = {"model": "m", "task": "gsm8k", "seed": 0}
    ref = {"tokens": [0], "correct": True, "text": "61 - 9 = 52, 52 + 18 = 70. The answer is 70.", "finished": True,
           "n_tokens": 14}
    words = ["61 ", "- ", "9 ", "= ", "52, ", "52 ", "+ ", "18 ", "= ", "70. ", "Travis ", "has ", "70 ", "apps."]
    text = "".join(words)
    row = build_row(prompt, gen(words, True), ref, PressSpec("snapkv", 0.5), text, meta,
                    lambda m: "".join(words[:m]))
    assert row["answer"] is None and not row["correct"] and row["format_only"] and not row["catastrophe"]
    cut = words[:10] + ["The ", "answer ", "is ", "70"]  # the budget ends right after the answer
    row = build_row(prompt, gen(cut, False), ref, PressSpec("snapkv", 0.5), "".join(cut), meta,
                    lambda m: "".join(cut[:m]))
    assert row["nonterm"] and row["cut_after_answer"] and row["correct"] and not row["catastrophe"]
    wrong = words[:9] + ["71. ", "The ", "answer ", "is ", "71."]
    row = build_row(prompt, gen(wrong, True), ref, PressSpec("snapkv", 0.5), "".join(wrong), meta,
                    lambda m: "".join(wrong[:m]))
    assert row["catastrophe"] and row["onset_source"] == "claim" and row["onset"] == 9  # "71" is new


def test_a_task_grid_collects_every_format_with_its_label(tmp_path, tiny_dir, gsm8k_dir):
    out = tmp_path / "formats"
    tasks = json.dumps([{"name": "gsm8k", "options": {"path": str(gsm8k_dir), "limit": 2},
                         "grid": {"k_shot": [0, 1], "system": [1]}}])
    assert main(_args(out, tiny_dir, "--tasks", tasks, "--presses", "[{name: knorm, ratio: 0.5}]",
                      "--max_new_tokens", "6")) == 0
    ds = load_traces(out)
    assert sorted(set(ds["format"])) == ["k0e-s1", "k1e0s1"] and set(ds["task"]) == {"gsm8k"}
    per_format = json.loads((out / "summary.json").read_text())["formats"]
    assert [(f["format"], f["n"]) for f in per_format] == [("k0e-s1", 4), ("k1e0s1", 4)]
    assert all(0 <= f["catastrophe_rate_compressed"] <= 1 for f in per_format)
    # the same problem in two formats: one prompt id, two traces (with their own ids) per setting
    assert len(set(ds["prompt_id"])) == 2 and len(set(ds["trace_id"])) == len(ds) == 8
    # problem by problem: a shard (and a batch) holds every format of its problems
    assert ds.filter(lambda r: r["press"] == "none")["format"] == ["k0e-s1", "k1e0s1"] * 2
    listed_twice = json.dumps([{"name": "gsm8k", "options": {"path": str(gsm8k_dir)}, "grid": {"k_shot": [1, 1]}}])
    assert main(_args(tmp_path / "twice", tiny_dir, "--tasks", listed_twice)) == 2


def test_a_time_budget_stops_between_settings_and_the_next_call_goes_on(tmp_path, tiny_dir):
    out = tmp_path / "budget"
    assert main(_args(out, tiny_dir, "--time_budget_s", "0.000001")) == 0  # one shard, then stop
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["complete"] and summary["chunks_left"] == 4 and summary["n_traces"] == 4
    assert main(_args(out, tiny_dir, "--time_budget_s", "0.000001")) == 0  # the next call goes on
    assert json.loads((out / "summary.json").read_text())["n_traces"] == 8
    assert main(_args(out, tiny_dir)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["n_traces"] == 2 * 6 * 4
    assert [(f["task"], f["format"], f["n"]) for f in summary["formats"]] == [("kv_retrieval", "default", 24),
                                                                                ("var_tracking", "default", 24)]
    assert summary["n_generated_tokens"] == sum(load_traces(out)["n_tokens"])


def test_settings_mixed_in_one_batch_collect_the_same_traces(tmp_path, tiny_dir):
    """mix_settings 0: a chunk's prefill settings decode together (decode-time presses alone); the traces
    equal one generate per setting, shard by shard."""
    one, mixed = tmp_path / "one", tmp_path / "mixed"
    assert main(_args(one, tiny_dir)) == 0
    assert main(_args(mixed, tiny_dir, "--mix_settings", "0")) == 0
    a, b = _rows(load_traces(one)), _rows(load_traces(mixed))
    assert [r["trace_id"] for r in a] == [r["trace_id"] for r in b]
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"] and x["onset"] == y["onset"] and x["catastrophe"] == y["catastrophe"]
        assert np.allclose(x["entropy"], y["entropy"], atol=1e-6)
        assert np.allclose(x["lost_mass_ub"], y["lost_mass_ub"], atol=1e-6)
    stats = [json.loads(p.read_text()) for p in (mixed / "stats" / "shards").glob("*.json")]
    assert sorted({s["settings_in_batch"] for s in stats}) == [1, 3]  # none + snapkv + streaming_llm; decode_knorm


def test_a_verify_window_fills_the_verify_columns(tmp_path, tiny_dir):
    out = tmp_path / "verify"
    assert main(_args(out, tiny_dir, "--verify_window", "4", "--batch_size", "4")) == 0
    rows = load_traces(out).to_list()
    none = [r for r in rows if r["press"] == "none"]
    assert none and all(max(r["verify_kl"]) == 0 and min(r["verify_top1"]) == 1 for r in none)
    evicting = [r for r in rows if r["press"] not in ("none",) and not r["press"].startswith("decode")]
    assert max(max(r["verify_kl"]) for r in evicting) > 0  # the shadows saw the compressed runs differ
    assert all(r["verify_kl"][0] == 0 and r["verify_top1"][0] == 1 for r in rows)  # the prefill's token


def test_a_state_layer_fills_the_state_column_and_leaves_the_rest_as_it_was(tmp_path, tiny_dir):
    """``state_layer``: every trace holds (n_tokens, STATE_DIM) float16 states; tokens and the other signals
    are those of a collection without it, whose state column is empty."""
    from hazard.signals.state import STATE_DIM

    plain, with_state = tmp_path / "plain", tmp_path / "state"
    assert main(_args(plain, tiny_dir)) == 0
    assert main(_args(with_state, tiny_dir, "--state_layer", "-1")) == 0
    a, b = _rows(load_traces(plain)), _rows(load_traces(with_state))
    for x, y in zip(a, b):
        assert x["state"] == [] and x["tokens"] == y["tokens"]
        assert np.allclose(x["entropy"], y["entropy"], atol=1e-6)
        st = np.asarray(y["state"], dtype=np.float32)
        assert st.shape == (y["n_tokens"], STATE_DIM) and np.isfinite(st).all() and st.std() > 0
    wide = tmp_path / "wide"  # state_dim: the recorded width
    assert main(_args(wide, tiny_dir, "--state_layer", "-1", "--state_dim", "80")) == 0
    assert all(np.asarray(r["state"]).shape == (r["n_tokens"], 80) for r in _rows(load_traces(wide)))
    assert main(_args(tmp_path / "bad", tiny_dir, "--state_layer", "-1", "--state_dim", "0")) == 2


def test_the_time_budget_starts_no_group_the_longest_one_says_would_overrun():
    from hazard.collect import TimeBudget

    b = TimeBudget(deadline=100.0)
    assert b.allows(now=99.0)  # nothing ran yet: only the start counts
    b.ran(30.0)
    b.ran(10.0)  # the longest group so far is what the next one may take
    assert b.allows(now=70.0) and not b.allows(now=71.0) and not b.allows(now=101.0)
