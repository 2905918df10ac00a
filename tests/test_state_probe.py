"""train/state_probe.py: prompt-grouped folds, thresholds that the held-out fold never picks, and a state
signal that the study finds where the live signals see nothing (end to end on a tiny collection)."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))

from state_probe import first_alarms, folds_by_prompt  # noqa: E402

from hazard.predictor.data import Trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _trace(i, prompt, press="snapkv", catastrophe=False, onset=-1, n=20):
    valid = np.ones(n, bool)
    if catastrophe:
        valid[onset:] = False
    return Trace(x=np.zeros((n, 1), np.float32), y=np.zeros((n, 5), np.float32), valid=valid, trace_id=f"t{i}",
                 prompt_id=prompt, task="gsm8k", press=press, ratio=0.875, model="m", catastrophe=catastrophe,
                 onset=onset, entropy=np.zeros(n), kind="loop" if catastrophe else "none")


def test_folds_keep_every_setting_of_a_prompt_together():
    traces = [_trace(i, f"p{i // 3}", press=("none", "snapkv", "knorm")[i % 3]) for i in range(60)]
    fold = folds_by_prompt(traces, 5)
    assert set(fold) == set(range(5))
    for p in {t.prompt_id for t in traces}:
        assert len({f for t, f in zip(traces, fold) if t.prompt_id == p}) == 1


def test_a_fold_never_picks_its_own_threshold():
    traces = [_trace(i, f"p{i}") for i in range(40)]
    fold = np.arange(40) % 4
    scores = [np.full(20, 0.1 * (i % 7)) for i in range(40)]
    loud = [s + 10 if f == 0 else s for s, f in zip(scores, fold)]  # fold 0's own scores move ...
    moved = first_alarms(traces, loud, fold, 0.05)
    assert all(moved[i] == 0 for i in np.flatnonzero(fold == 0))  # ... so they all alarm at the others' threshold
    quiet = [s if f == 0 else s + 10 for s, f in zip(scores, fold)]  # the others' scores set fold 0's threshold
    assert all(a is None for a, f in zip(first_alarms(traces, quiet, fold, 0.05), fold) if f == 0)


def test_the_study_runs_on_a_collection_with_states(tmp_path):
    from state_probe import main

    from hazard.cli import main as hazard
    from hazard.models import save_tiny

    model = save_tiny(tmp_path / "tiny", "qwen2", seed=2)
    out = tmp_path / "traces"
    assert hazard(["collect", "--config", str(ROOT / "configs/collect/tiny.yaml"), "--output_dir", str(out),
                   "--model", json.dumps({"path": str(model), "device": "cpu", "dtype": "float32", "name": "tiny"}),
                   "--state_layer", "1", "--state_dim", "72"]) == 0
    res = tmp_path / "probe.json"
    assert main(["--traces", str(out), "--out", str(res), "--folds", "2"]) == 2  # 72 wide, read as 64: refused
    assert main(["--traces", str(out), "--out", str(res), "--folds", "2", "--detect_window", "4",
                 "--feature_set", "live_state@72"]) == 0
    got = json.loads(res.read_text())
    assert len(got["groups"]["state"]) == 3 + 72 and got["groups"]["state"][-1] == "state71"
    assert set(got["runs"]) == {"logreg/live", "logreg/state", "logreg/live_state"}
    run = got["runs"]["logreg/live_state"]
    assert run["pooled"]["n_traces"] == sum(m["n_traces"] for m in run["by_press"].values()) > 40
