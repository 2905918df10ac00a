"""train/spot_checks.py on a synthetic readings file: a spot check at t reads only the first t tokens."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))
sys.path.insert(0, str(Path(__file__).parent.parent / "train"))

from answer_gate import SAVED_SIGNALS, save_gate_data  # noqa: E402

from hazard.engine.check import Verdict  # noqa: E402


def _readings(n=120, length=200, seed=0, signals=True):
    """Answers of ``length`` tokens; broken ones get one improbable changed digit (id 7) at token 100 only."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(np.int64)
    vs, sig = [], []
    for b in y:
        tokens = rng.integers(10, 20, length)
        tokens[::10] = 7  # digits
        top = tokens.copy()
        logp = np.log(rng.uniform(0.6, 0.99, length)).astype(np.float32)
        if b:
            top[100], logp[100] = 8, np.log(0.001)
        vs.append(Verdict(tokens, logp, top, np.maximum(logp, np.log(0.9)).astype(np.float32)))
        sig.append(rng.normal(size=(length, len(SAVED_SIGNALS))).astype(np.float32))
    return {"verdicts": vs, "y": y, "healthy": y == 0, "groups": np.arange(n) // 2, "full_correct": np.ones(n, bool),
            "vocab_ids": np.array([7, 8, 10]), "vocab": np.array(["7", "8", "a"]),
            "full_tokens": [v.tokens for v in vs], "max_new_tokens": 512, "collected": {"model": "synthetic"},
            "signals": sig if signals else []}


def test_a_spot_check_sees_a_broken_answer_only_once_it_has_read_the_changed_digit(tmp_path, capsys):
    import spot_checks

    save_gate_data(tmp_path / "r.npz", _readings())
    assert spot_checks.main([str(tmp_path / "r.npz"), str(tmp_path / "s.json")]) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    by_t = {r["t"]: r for r in res["rows"]}
    assert [r["t"] for r in res["rows"]] == list(spot_checks.TS)
    assert by_t[64]["spot_check"]["auroc"] < 0.75  # token 100 not read yet: nothing to see
    assert by_t[128]["spot_check"]["auroc"] > 0.95 and by_t[128]["spot_check"]["found_at_5pct"] > 0.9
    assert by_t[128]["disagreement_by_t"] == {"broken": 1.0, "right": 0.0}
    assert by_t[512]["own_signals"]["auroc"] < 0.75  # the compressed run's signals here are noise
    assert by_t[32]["tokens_read_per_check"] == 32 and by_t[512]["tokens_read_per_check"] == 200
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_readings_without_signals_are_refused_with_one_line(tmp_path, capsys):
    import spot_checks

    save_gate_data(tmp_path / "r.npz", _readings(signals=False))
    assert spot_checks.main([str(tmp_path / "r.npz"), str(tmp_path / "s.json")]) == 2
    assert "collect again" in capsys.readouterr().err and not (tmp_path / "s.json").exists()
