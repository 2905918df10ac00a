"""train/check_signals.py: the check signals a guard knows at each token are causal and stale between checks; the
reading is the uncompressed model's (it agrees with a compressed run up to its divergence from the uncompressed
twin and not at it); a killed read goes on from its chunks; the study runs end to end on a tiny collection."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))

from check_signals import check_columns, check_cost, main, read_readings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_a_guard_knows_the_reading_only_up_to_its_last_check():
    rng = np.random.default_rng(0)
    n = 20
    top = rng.normal(size=n)
    logp = top - np.abs(rng.normal(size=n))
    agree = logp == top
    every1 = check_columns(logp, top, agree, 1)
    assert np.allclose(every1[:, 0], np.maximum.accumulate(top - logp))  # the largest surprise so far
    every4 = check_columns(logp, top, agree, 4)
    assert np.all(every4[:3] == 0)  # before the first check (token 3) it knows nothing
    for t in range(3, n):
        assert np.array_equal(every4[t], every1[(t + 1) // 4 * 4 - 1])  # the reading of the last check
    later = logp.copy()
    later[9] -= 50  # a surprise at token 9 ...
    moved = check_columns(later, top, agree, 4)
    assert np.array_equal(moved[:11], every4[:11]) and moved[11, 0] > every4[11, 0]  # ... is seen at the check at 11
    assert check_cost(10, 8, 4) == {"checks": 2, "tokens_read": (10 + 4) + (10 + 8)}


def test_the_reading_is_the_uncompressed_models_and_a_killed_read_resumes(tmp_path):
    from hazard.cli import main as hazard
    from hazard.models import save_tiny
    from hazard.traces import load_traces

    model = save_tiny(tmp_path / "tiny", "qwen2", seed=2)
    traces = tmp_path / "traces"
    spec = {"path": str(model), "device": "cpu", "dtype": "float64", "name": "tiny"}  # no near-ties in argmax
    assert hazard(["collect", "--config", str(ROOT / "configs/collect/tiny.yaml"), "--output_dir", str(traces),
                   "--model", json.dumps(spec)]) == 0
    readings = tmp_path / "readings"
    args = ["read", "--traces", str(traces), "--readings", str(readings)]
    assert main([*args, "--task_paths", "{gsm8k: x"]) == 2 and not readings.exists()  # one line, nothing written
    assert main([*args, "--limit", "5"]) == 0  # a read stopped after 5 traces ...
    assert len(read_readings(readings)) == 5
    assert main(args) == 0  # ... goes on from its chunk
    rows = [r for r in load_traces(traces) if r["press"] != "none"]
    got = read_readings(readings)
    assert set(got) == {r["trace_id"] for r in rows}
    diverged = 0
    for r in rows:
        agree = got[r["trace_id"]]["agree"]
        assert len(agree) == r["n_tokens"]
        d = r["divergence"]
        stop = d if d >= 0 else r["n_tokens"]
        assert agree[:stop].all()  # the twin's tokens are the uncompressed model's greedy choices
        if 0 <= d < r["n_tokens"]:
            assert not agree[d]  # where the run left its twin, the uncompressed model would not have chosen it
            diverged += 1
    assert diverged > 0
    out = tmp_path / "study.json"
    assert main(["study", "--traces", str(traces), "--readings", str(readings), "--out", str(out), "--folds", "2",
                 "--every", "1", "8", "--models", "logreg", "--detect_window", "4"]) == 0
    res = json.loads(out.read_text())
    scored = [r for r in rows if not r["catastrophe"] or r["onset"] >= 0]  # an unplaced onset is left out
    assert res["n_traces"] == len(scored) and res["cost"]["8"]["checks"] < res["cost"]["1"]["checks"]
    assert {"rule/check1_max", "rule/check8_dis16", "logreg/live", "logreg/live+check1"} <= set(res["runs"])
    assert sum(d["n"] for d in res["reading"].values()) == len(scored)
    assert all(0.0 <= d["disagree"] <= 1.0 for d in res["reading"].values())
    assert main(["study", "--traces", str(traces), "--readings", str(tmp_path / "none"), "--out", str(out)]) == 2
