"""evaluate/gate_features.py: the question's numbers as gate features, and the two operating points."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))

from answer_gate import save_gate_data  # noqa: E402

from hazard.engine.check import Verdict  # noqa: E402


def test_question_numbers_count_what_the_answer_never_writes():
    import gate_features as gf

    assert gf.numbers("Tom paid $1,200.50 for 3 apples, 2.0 kg") == ["1200.5", "3", "2"]
    missing, log_q, novel, log_a = gf.question_numbers("12 apples and 5 pears cost 3", "12 + 5 = 17")
    assert missing == pytest.approx(1 / 3) and log_q == pytest.approx(np.log(4))
    assert novel == pytest.approx(1 / 3) and log_a == pytest.approx(np.log(4))
    assert gf.question_numbers("no numbers", "none")[0] == 0.0


def test_operating_points_flag_broken_answers_at_5pct_of_the_right_or_of_all_others():
    import gate_features as gf

    broken = np.array([1] * 10 + [0] * 100, bool)
    right = np.array([0] * 10 + [1] * 60 + [0] * 40, bool)  # the last 40: wrong either way
    scores = np.r_[np.full(10, 0.9), np.zeros(60), np.full(40, 0.95)]  # wrong-either-way answers score highest
    m = gf.operating_points(scores, broken, right)
    assert m["found_at_5pct_right"] == 1.0 and m["auroc_broken_vs_right"] == 1.0
    assert m["found_at_5pct_others"] == 0.0  # the wrong-either-way answers take every flag first


def _write(tmp_path, n=60, signals=False):
    """A GSM8K folder of n problems, an evaluate config over them, and n readings: the broken answers (every
    third) write 7 where the others write the question's 12; the reading is the same noise for both. With
    ``signals``, the compressed run's saved signals too, its entropy high on the broken answers only, and the
    loop / non-termination flags (none)."""
    data = tmp_path / "gsm8k"
    data.mkdir()
    rows = [{"question": f"Tom has 12 apples and {i + 20} pears. How many?", "answer": f"12 + {i + 20}\n#### {i + 32}"}
            for i in range(n)]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (data / "test.jsonl").write_text("")
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(f"model: {{tiny: qwen2, device: cpu}}\ntasks:\n  - name: gsm8k\n    options: {{path: /gpu/only, "
                   f"split: train, start: 0, limit: {n}, k_shot: 0}}\nbase_presses:\n  - {{name: snapkv, ratio: 0.875}}"
                   "\npolicies: [static]\n")
    y = (np.arange(n) % 3 == 0).astype(np.int64)
    rng = np.random.default_rng(0)
    vs = []
    for b in y:
        tokens = np.array([5 if b else 1, 2, 3, 2, 4])  # "7 5 x" or "12 5 x"
        logp = np.log(rng.uniform(0.5, 0.99, len(tokens))).astype(np.float32)
        vs.append(Verdict(tokens, logp, tokens.copy(), logp.copy()))
    save_gate_data(tmp_path / "r.npz", {
        "verdicts": vs, "y": y, "healthy": y == 0, "groups": np.arange(n), "full_correct": np.ones(n, bool),
        "vocab_ids": np.array([1, 2, 3, 4, 5]), "vocab": np.array(["12", "Ġ", "5", "x", "7"]),
        "full_tokens": [v.tokens for v in vs], "max_new_tokens": 512, "collected": {"model": "synthetic"},
        **({"calm": np.ones(n, bool), "signals": [np.c_[np.full((5, 1), 3.0 if b else 0.5) + rng.normal(0, 0.1, (5, 1)),
                                                        rng.random((5, 5))] for b in y]} if signals else {})})
    return data, cfg


def test_the_study_finds_answers_that_lost_a_question_number(tmp_path, capsys):
    import gate_features as gf

    data, cfg = _write(tmp_path)
    out = tmp_path / "f.json"
    assert gf.main(["--config", str(cfg), "--data", str(tmp_path / "r.npz"), "--gsm8k", str(data),
                    "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert res["question_numbers_alone"]["q_missing"]["auroc_broken_vs_right"] == 1.0
    assert res["digits"]["logistic_regression/broken"]["auroc_broken_vs_right"] < 0.8  # the reading says nothing
    assert res["digits+question_numbers"]["logistic_regression/broken"]["found_at_5pct_right"] == 1.0
    assert "q_missing" in capsys.readouterr().out
    # a config whose prompts are not the readings' is one clear line, and writes nothing
    cfg.write_text(cfg.read_text().replace("limit: 60", "limit: 59"))
    assert gf.main(["--config", str(cfg), "--data", str(tmp_path / "r.npz"), "--gsm8k", str(data),
                    "--out", str(tmp_path / "g.json")]) == 2
    assert "do not match the 60 readings" in capsys.readouterr().err and not (tmp_path / "g.json").exists()


def test_signal_summaries_are_each_signals_statistics_over_the_answer():
    import gate_features as gf

    s = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 40.0]], np.float32)  # three tokens, two signals
    (row,) = gf.signal_summaries([s])
    per = dict(zip([f"{k}_{st}" for k in "ab" for st in gf.SIGNAL_STATS], row))
    assert (per["a_mean"], per["a_max"], per["a_min"], per["a_last32"]) == (3.0, 5.0, 1.0, 3.0)
    assert per["b_std"] == pytest.approx(np.std([10, 10, 40]))
    assert gf.signal_summaries([np.zeros((0, 2), np.float32)]).tolist() == [[0.0] * 10]


def test_the_study_reads_the_compressed_runs_signals_and_the_false_trigger_operating_points(tmp_path, capsys):
    """Readings that kept the run's signals get the signal feature sets; with the loop / non-termination flags,
    the share of broken answers found at 5% of the healthy ones (the closed loop's false-trigger rate) and of
    the calm ones."""
    import gate_features as gf

    data, cfg = _write(tmp_path, signals=True)
    out = tmp_path / "f.json"
    assert gf.main(["--config", str(cfg), "--data", str(tmp_path / "r.npz"), "--gsm8k", str(data),
                    "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    res = saved["results"]
    assert {"signals", "digits+signals"} <= set(res) and saved["calm"] == 60
    assert saved["signal_features"][0] == "entropy_mean" and len(saved["signal_features"]) == 30
    sig, dig = res["signals"]["logistic_regression/broken"], res["digits"]["logistic_regression/broken"]
    # the entropy ranks every broken answer first: at 5% of the healthy ones flagged it finds them all
    assert sig["found_at_5pct_healthy"] == 1.0 and sig["found_at_5pct_right"] == 1.0
    # every answer here is calm, broken ones included: 5% of 60 is 3 flags for 20 broken answers, 0.15 at best
    assert sig["found_at_5pct_calm"] == pytest.approx(0.15)
    assert dig["found_at_5pct_healthy"] < 0.5 and dig["found_at_5pct_calm"] < 0.15  # the reading does not tell them
    assert "of the healthy ones" in capsys.readouterr().out


def test_joint_features_count_tokens_compression_was_sure_of_and_the_whole_prompt_finds_improbable():
    import gate_features as gf

    # four tokens, the second a digit (id 5): compressed sure of it (0.9), uncompressed finds it improbable (0.01)
    tokens = np.array([1, 5, 2, 3])
    full = np.log(np.array([0.9, 0.01, 0.6, 0.9]))
    comp = np.log(np.array([0.9, 0.9, 0.3, 0.9]))
    v = Verdict(tokens, full.astype(np.float32), np.array([1, 6, 2, 3]), np.log(np.array([0.9, 0.95, 0.6, 0.9])))
    f = dict(zip(gf.JOINT, gf.joint_features(v, comp, [5, 6])))
    assert len(f) == len(gf.JOINT)
    assert f["digit_conf0.8_unlikely0.05"] == pytest.approx(np.log(2)) and f["word_conf0.8_unlikely0.05"] == 0.0
    assert f["delta_max"] == pytest.approx(np.log(90)) == pytest.approx(f["digit_delta_max"])
    assert f["changed_delta_max"] == pytest.approx(np.log(90))
    assert f["changed_digit_comp_max"] == pytest.approx(np.log(0.9))
    assert f["delta_pos_share"] == 0.25  # the third token: compression was less sure, not more
    # the same answer read identically by both models: no confident disagreement anywhere
    g = dict(zip(gf.JOINT, gf.joint_features(v, v.logp, [5, 6])))
    assert g["delta_max"] == 0.0 and g["digit_conf0.5_unlikely0.2"] == 0.0


def test_flags_by_class_says_whom_a_gate_flags_and_how_it_ranks_broken_answers_against_each_class():
    import gate_features as gf

    broken = np.array([1] * 10 + [0] * 90, bool)
    right = np.array([0] * 10 + [1] * 50 + [0] * 40, bool)
    full_right = np.array([1] * 10 + [1] * 50 + [0] * 40, bool)
    calm = np.ones(100, bool)
    classes = gf.flag_classes(broken, right, full_right, calm)
    assert [int(classes[k].sum()) for k in gf.FLAG_CLASSES] == [10, 50, 0, 40, 0]
    # the answers wrong either way score above the broken ones, the right ones below
    scores = np.r_[np.full(10, 0.8), np.zeros(50), np.linspace(0.85, 0.99, 40)]
    f = gf.flags_by_class(scores, classes, calm & ~broken)
    assert f["wrong_both"]["flagged"] == 4 and f["broken"]["flagged"] == 0 and f["right_both"]["flagged"] == 0
    assert f["right_both"]["auroc_broken_vs"] == 1.0 and f["wrong_both"]["auroc_broken_vs"] == 0.0
    assert f["right_compressed_only"]["auroc_broken_vs"] is None and f["broken"]["auroc_broken_vs"] is None


def test_the_study_adds_the_joint_features_and_the_flags_when_the_run_kept_its_log_probs(tmp_path, capsys):
    import gate_features as gf

    data, cfg = _write(tmp_path, signals=True)
    out = tmp_path / "f.json"
    assert gf.main(["--config", str(cfg), "--data", str(tmp_path / "r.npz"), "--gsm8k", str(data),
                    "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert {"joint", "digits+joint"} <= set(saved["results"]) and saved["joint_features"] == list(gf.JOINT)
    assert saved["flags"]["digits"]["broken"]["n"] == 20 and saved["flags"]["digits"]["right_both"]["n"] == 40
    assert "a digits gate (logistic regression, broken) at 5% of the healthy answers flagged: broken" \
        in capsys.readouterr().out
