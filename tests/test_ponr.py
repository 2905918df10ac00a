"""The point-of-no-return procedure: its restore probe at the extremes, the oracle that uses it, and the summary."""

from hazard.collect import build_rows, encode
from hazard.compression import PressSpec, build_press
from hazard.control import PolicyController, build_policy
from hazard.engine import Engine
from hazard.ponr import _rows, point_of_no_return, summarize_ponr
from hazard.tasks import build_task


def _setup(model64, tok, gsm8k_dir):
    """Three GSM8K prompts, an engine, SnapKV 0.75, and their uncompressed and static runs."""
    prompts = build_task("gsm8k", path=str(gsm8k_dir), split="test", limit=3, k_shot=0, seed=0).prompts()
    ids = [encode(tok, p) for p in prompts]
    eng = Engine(model64, [tok.eos_token_id], max_new_tokens=12, batch_size=3)
    meta = {"model": "tiny", "task": "gsm8k", "seed": 0, "max_new_tokens": 12}
    spec = PressSpec("snapkv", 0.75, {"window_size": 4})
    full = _rows(eng, tok, prompts, ids, PressSpec("none"), meta)
    return prompts, ids, eng, meta, spec, full, _rows(eng, tok, prompts, ids, spec, meta, full)


def test_restore_probe_at_the_extremes(model64, tok, gsm8k_dir):
    """Restoring after the first token is the uncompressed run; restoring never is the static press."""
    prompts, ids, eng, meta, spec, full, static = _setup(model64, tok, gsm8k_dir)
    early = _rows(eng, tok, prompts, ids, spec, meta, full, at=1)
    never = _rows(eng, tok, prompts, ids, spec, meta, full, at=10**6)
    assert [r["tokens"] for r in early] == [r["tokens"] for r in full]
    assert [r["tokens"] for r in never] == [r["tokens"] for r in static]
    assert any(a["tokens"] != b["tokens"] for a, b in zip(full, static))  # the press changes something
    mid = _rows(eng, tok, prompts, ids, spec, meta, full, at=5)
    assert all(m["tokens"][:5] == s["tokens"][:5] for m, s in zip(mid, static))  # same run until it restores
    # A random tiny model solves nothing, so no run qualifies as failing-with-a-healthy-twin.
    assert point_of_no_return(eng, tok, prompts, spec, meta, grid=(1, 4)) == []


def test_summary_of_points_of_no_return():
    rows = [{"press": "knorm", "ratio": 0.875, "onset": o, "point_of_no_return": p, "same_prefix": [True, True]}
            for o, p in [(10, 8), (20, 16), (5, -1), (30, 32)]]
    s = summarize_ponr(rows)["knorm@0.875"]
    assert s["failing"] == 4 and s["saved_by_some_restore"] == 3
    assert s["ponr_quartiles"][1] == 16 and s["ponr_minus_onset_quartiles"][1] == -2 and s["prefix_mismatch"] == 0


def test_the_probe_writes_its_runs_as_a_collection(tmp_path, gsm8k_dir):
    """collect/ponr.py --traces_dir: the uncompressed and static runs become a loadable collection, and
    ponr.json maps failing runs to their point of no return (none here: a random model solves nothing)."""
    import json
    import sys
    from pathlib import Path

    from hazard.cli import build
    from hazard.models import save_tiny
    from hazard.traces import load_traces

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collect"))
    import ponr as script

    model = save_tiny(tmp_path / "tiny", "qwen2", seed=2)
    cfg = build(script.PonrConfig, {"model": {"path": str(model), "device": "cpu", "dtype": "float64",
                                              "name": "tiny"}, "gsm8k": str(gsm8k_dir), "limit": 3,
                                    "presses": [["knorm", 0.5]], "grid": [1, 4], "max_new_tokens": 8,
                                    "batch_size": 3, "out": str(tmp_path / "ponr.json"),
                                    "traces_dir": str(tmp_path / "traces")})
    data = script.run(cfg)
    ds = load_traces(tmp_path / "traces")
    assert sorted(set(ds["press"])) == ["knorm", "none"] and len(ds) == 2 * 3
    assert json.loads((tmp_path / "traces" / "ponr.json").read_text()) == {} and data["rows"] == []


def test_the_ponr_oracle_restores_each_row_where_its_probe_did(model64, tok, gsm8k_dir):
    """oracle at=ponr: a row whose point of no return is t runs as the probe's restore after t tokens; a
    row with none (-1) runs as the static press."""
    prompts, ids, eng, meta, spec, full, static = _setup(model64, tok, gsm8k_dir)
    points = {0: 1, 1: 5, 2: -1}
    ctl = PolicyController(build_policy("oracle", at="ponr", lead=3), None, spec.ratio, 12, points)
    got = build_rows(tok, prompts, eng.generate(ids, build_press(spec), ctl), full, spec, meta)
    assert got[0]["tokens"] == _rows(eng, tok, prompts, ids, spec, meta, full, at=1)[0]["tokens"] == full[0]["tokens"]
    assert got[1]["tokens"] == _rows(eng, tok, prompts, ids, spec, meta, full, at=5)[1]["tokens"]
    assert got[2]["tokens"] == static[2]["tokens"]
    assert got[1]["tokens"] != static[1]["tokens"]  # the restore after 5 tokens changed what followed


def test_evaluate_measures_the_point_of_no_return_once_for_the_ponr_oracle(tmp_path, monkeypatch):
    """A random tiny model solves nothing, so every static row is made 'failing' here: the evaluation
    probes each of them, reports the summary, and its oracle row fires on the rows some restore saved."""
    import json

    import hazard.evaluate as ev
    from hazard.cli import main

    monkeypatch.setattr(ev, "failing", lambda static, refs: list(range(len(static))))
    monkeypatch.setattr(ev, "PONR_GRID", (1, 4))
    out = tmp_path / "cl.json"
    args = ["evaluate", "--output", str(out), "--model.tiny", "qwen2", "--model.dtype", "float64",
            "--model.device", "cpu", "--max_new_tokens", "10", "--batch_size", "4",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 3, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]", "--policies", "[static, full, oracle]",
            "--policy_options", "{oracle: {at: [onset, ponr], action: restore}}"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    s = res["point_of_no_return"]["kv_retrieval/knorm@0.75"]
    assert s["failing"] == 3 and s["grid"] == [1, 4] and s["prefix_mismatch"] == 0
    assert s["saved_by_some_restore"] > 0
    row = next(r for r in res["rows"] if r["knob"] == {"at": "ponr"})
    # restoring after the first token turns a row into the uncompressed one, which is "healthy" here
    assert row["trigger_rate"] == s["saved_by_some_restore"] / 3
