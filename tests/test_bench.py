"""collect/bench.py on CPU with a tiny model: rows, anchors, the paired overhead, resuming."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collect"))

from bench import BenchConfig, run  # noqa: E402

from hazard.models import ModelConfig  # noqa: E402


def test_bench_times_a_controller_against_the_same_engine_interleaved(tmp_path, gsm8k_dir):
    out = tmp_path / "throughput.json"
    cfg = BenchConfig(model=ModelConfig(tiny="qwen2", dtype="float32", device="cpu"), gsm8k=str(gsm8k_dir),
                      batch_sizes=[2], hf_batch_sizes=[2], max_new_tokens=4, probe_layers=[0, -1], repeats=3,
                      variants=["engine+signals+snapkv", "engine+signals+snapkv+reversible"], out=str(out))
    res = run(cfg)
    rows = {r["setting"]: r for r in res["rows"]}
    assert set(rows) == {"hf_generate", "engine+signals+snapkv", "engine+signals+snapkv+reversible"}
    ctl, plain = rows["engine+signals+snapkv+reversible"], rows["engine+signals+snapkv"]
    assert ctl["generated_tokens"] == plain["generated_tokens"] == 2 * 4
    assert len(ctl["repeats_tokens_per_s"]) == len(ctl["paired_base_tokens_per_s"]) == 3
    assert ctl["overhead_paired"] > -1 and "overhead_paired" not in plain
    assert "overhead_vs_engine+signals+snapkv" in ctl and plain["x_hf_generate"] > 0
    # a second call resumes: nothing left to measure, the file keeps its rows
    assert run(cfg)["rows"] == json.loads(out.read_text())["rows"]
