"""The answer check's hidden states and the gate's linear probes on them (``hazard.control.gate.PROBES``)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_control import _prompts

from hazard.compression import PressSpec, build_press
from hazard.control import PolicyController, build_policy
from hazard.engine import Engine
from hazard.engine.check import STATE_ROWS, Verdict, check_answers
from hazard.errors import HazardError

sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))


def test_the_reading_keeps_the_states_at_the_questions_end_and_after_the_answer(model64):
    """The question's state is what a forward over the prompt alone ends with (the answer cannot reach back);
    the answer's is the state at its last fed token; a one-token answer has the question's state twice."""
    eng = Engine(model64, [256], max_new_tokens=8, batch_size=2, probe_layers=(0, -1))
    p, a = _prompts(1, seed=5)[0], [3, 9, 27, 81]
    (v, one) = check_answers(eng.runner, [p, p], [a, a[:1]])
    hidden = model64.config.hidden_size
    assert v.states.shape == (len(STATE_ROWS), hidden) and STATE_ROWS == ("question", "answer")
    with torch.inference_mode():
        alone = eng.runner.decoder(input_ids=torch.tensor([p])).last_hidden_state[0, -1].double().numpy()
        fed = eng.runner.decoder(input_ids=torch.tensor([p + a[:-1]])).last_hidden_state[0, -1].double().numpy()
    assert np.allclose(v.states[0], alone, atol=1e-8) and np.allclose(v.states[1], fed, atol=1e-8)
    assert not np.allclose(v.states[0], v.states[1])
    assert np.allclose(one.states[0], one.states[1])


def _states(n, hidden=12, seed=0):
    """Hidden states where dimension 0 of the question's state says the uncompressed model is right and dimension
    1 of the answer's says the answer is."""
    rng = np.random.default_rng(seed)
    full_ok, ok = rng.random(n) < 0.6, rng.random(n) < 0.5
    s = rng.normal(size=(n, 2, hidden))
    s[:, 0, 0] += 3 * full_ok
    s[:, 1, 1] += 3 * ok
    return s, full_ok, ok


def test_probes_find_what_each_state_says_out_of_fold_and_score_as_sklearn_does():
    from sklearn.metrics import roc_auc_score

    from hazard.control.gate import PROBES, fit_probe, probe_columns

    s, full_ok, ok = _states(300)
    cols, probes, auroc = probe_columns(s, {"full_correct": full_ok, "correct": ok}, np.arange(300) // 3)
    assert list(probes) == list(PROBES) == ["probe_question", "probe_answer"]
    assert roc_auc_score(full_ok, cols[:, 0]) == auroc["probe_question"] > 0.9
    assert roc_auc_score(ok, cols[:, 1]) == auroc["probe_answer"] > 0.9
    assert abs(roc_auc_score(ok, cols[:, 0]) - 0.5) < 0.15  # the question's state says nothing of the answer
    pr = fit_probe(s, "answer", ok)
    assert pr.row == "answer" and np.argmax(np.abs(pr.coef)) == 1
    # the logit is the standardised dot product, as sklearn's decision function
    from sklearn.linear_model import LogisticRegression

    x = s[:, 1]
    lr = LogisticRegression(C=0.01, max_iter=3000).fit((x - x.mean(0)) / (x.std(0) + 1e-6), ok)
    assert np.isclose(pr.score(s[7]), lr.decision_function(((x[7] - x.mean(0)) / (x.std(0) + 1e-6))[None])[0])


def test_a_probe_gate_round_trips_reads_the_states_and_says_what_is_missing(tmp_path):
    from hazard.control.gate import DIGITS, AnswerGate, fit_probe, verdict_features

    s, full_ok, ok = _states(100)
    probes = {"probe_question": fit_probe(s, "question", full_ok), "probe_answer": fit_probe(s, "answer", ok)}
    feats = (*DIGITS, "probe_question", "probe_answer")
    k = len(feats)
    coef = [0.0] * (k - 1) + [-1.0]  # repair when the answer's probe says "wrong"
    gate = AnswerGate([0.0] * k, [1.0] * k, coef, 0.0, 0.5, features=feats, digit_ids=[7], probes=probes)
    gate.save(tmp_path / "g" / "gate.json")
    back = AnswerGate.load(tmp_path / "g")
    assert back.probes["probe_answer"].row == "answer"
    tokens = np.array([1, 7])
    says_right, says_wrong = np.zeros((2, 12)), np.zeros((2, 12))
    says_right[1, 1], says_wrong[1, 1] = 5.0, -5.0  # the answer's state, on the dimension that says "right"
    right = Verdict(tokens, np.log([0.5, 0.5]), tokens, np.log([0.5, 0.5]), states=says_right)
    wrong = Verdict(tokens, np.log([0.5, 0.5]), tokens, np.log([0.5, 0.5]), states=says_wrong)
    assert back.repairs_verdict(wrong, 16) and not back.repairs_verdict(right, 16)
    logit = probes["probe_answer"].score(right.states)
    assert logit > 0 and np.isclose(verdict_features(right, 16, feats, [7], back.probes)[-1], logit)
    with pytest.raises(HazardError, match="no hidden states"):
        back.repairs_verdict(Verdict(tokens, np.log([0.5, 0.5]), tokens, np.log([0.5, 0.5])), 16)
    with pytest.raises(HazardError, match="no probe"):
        verdict_features(right, 16, feats, [7])
    d = json.loads((tmp_path / "g" / "gate.json").read_text())
    (tmp_path / "b").mkdir()
    one = {"probe_question": d["probes"]["probe_question"]}
    (tmp_path / "b" / "gate.json").write_text(json.dumps({**d, "probes": one}))
    with pytest.raises(HazardError, match="probe features and probes do not match; retrain it"):
        AnswerGate.load(tmp_path / "b")


def test_a_probe_gate_runs_live_on_the_checks_own_states(model64, tmp_path):
    """In the closed loop the gate reads the states of the engine's own reading: a gate whose answer probe
    says "wrong" for every state repairs as the ungated check does, one that says "right" never repairs."""
    from hazard.control.gate import DIGITS, AnswerGate, StateProbe

    hidden = model64.config.hidden_size
    feats = (*DIGITS, "probe_question", "probe_answer")
    k = len(feats)

    def gate(bias):
        probes = {name: StateProbe(row, [0.0] * hidden, [1.0] * hidden, [0.0] * hidden, bias)
                  for name, row in (("probe_question", "question"), ("probe_answer", "answer"))}
        path = tmp_path / f"g{bias}"
        AnswerGate([0.0] * k, [1.0] * k, [0.0] * (k - 1) + [-1.0], 0.0, 0.5, features=feats, digit_ids=[7],
                   probes=probes).save(path / "gate.json")
        return str(path)

    eng = Engine(model64, [256], max_new_tokens=16, batch_size=3, probe_layers=(0, -1))
    prompts = _prompts(3, seed=1)
    press = build_press(PressSpec("knorm", 0.75))
    static = eng.generate(prompts, press)

    def run(g=""):
        pol = build_policy("answer_check", tau=1.0, action="none", checks=3, gate=g)
        return eng.generate(prompts, press, controller=PolicyController(pol, max_new_tokens=16))

    plain, always, never = run(), run(gate(-5.0)), run(gate(5.0))
    assert any(g.control["events"] for g in plain)
    for s, p, a, n in zip(static, plain, always, never):
        assert a.tokens == p.tokens and a.control["events"] == p.control["events"]
        assert n.tokens == s.tokens and n.control["events"] == []


def _readings(n=300, seed=0):
    """``answer_gate.save_gate_data`` input: readings whose reading statistics are the same noise for every
    answer; the answer's state says whether it is right, the question's whether the uncompressed run is."""
    rng = np.random.default_rng(seed)
    s, full_ok, ok = _states(n, seed=seed)
    vs = []
    for st in s:
        tokens = rng.integers(0, 50, 10)
        top = tokens.copy()
        top[rng.integers(0, 10)] += 1
        logp = np.log(rng.uniform(0.05, 0.99, 10))
        vs.append(Verdict(tokens, logp, top, np.full(10, -0.05), states=st))
    broken = full_ok & ~ok
    return {"verdicts": vs, "y": broken.astype(np.int64), "healthy": ok, "calm": np.ones(n, bool),
            "groups": np.arange(n) // 2, "full_correct": full_ok, "full_tokens": [v.tokens for v in vs],
            "vocab_ids": np.arange(60), "vocab": np.array([str(i) for i in range(60)], dtype=object),
            "max_new_tokens": 32, "collected": {"hardware": "test"}}


def test_answer_gate_fits_the_probes_with_the_gate_and_refuses_readings_without_states(tmp_path, capsys):
    from answer_gate import load_gate_data, main, save_gate_data

    from hazard.control.gate import AnswerGate

    d = _readings()
    save_gate_data(tmp_path / "d.npz", d)
    back = load_gate_data(tmp_path / "d.npz")
    assert np.allclose(back["verdicts"][3].states, d["verdicts"][3].states, atol=1e-2)  # float16 on disk
    args = ["--config", "configs/evaluate/gate_q15_4k.yaml", "--data", str(tmp_path / "d.npz"), "--max_false", "0.05",
            "--false_over", "healthy", "--label", "broken"]
    assert main([*args, "--out", str(tmp_path / "p"), "--features", "digits+probes"]) == 0
    assert main([*args, "--out", str(tmp_path / "d"), "--features", "digits"]) == 0
    rp, rd = (json.loads((tmp_path / k / "f0.05" / "report.json").read_text()) for k in "pd")
    assert rp["probe_cv_auroc"]["probe_answer"] > 0.9 and rp["probe_cv_auroc"]["probe_question"] > 0.9
    assert rp["cv_auroc"] > 0.9 > rd["cv_auroc"] and rd["probe_cv_auroc"] == {}
    gate = AnswerGate.load(tmp_path / "p" / "f0.05")
    assert set(gate.probes) == {"probe_question", "probe_answer"} and gate.features[-1] == "probe_answer"
    # readings that kept no states: one clear line
    for v in d["verdicts"]:
        v.states = None
    save_gate_data(tmp_path / "old.npz", d)
    old = [*args[:3], str(tmp_path / "old.npz"), *args[4:], "--out", str(tmp_path / "x"), "--features", "digits+probes"]
    capsys.readouterr()
    assert main(old) == 2 and "kept no hidden states; collect them again" in capsys.readouterr().err


def test_gate_features_study_the_probes_where_the_readings_kept_states(tmp_path, capsys):
    """With states, the study adds the probe sets, each probe's AUROC, and the flags of a gate with the probes:
    here the question's state is what tells a broken answer from one wrong anyway, which the reading cannot."""
    import gate_features as gf
    from answer_gate import save_gate_data
    from test_gate_features import _write

    data, cfg = _write(tmp_path, n=200)  # the prompts; the readings are replaced by ones with states
    d = _readings(n=200, seed=1)
    save_gate_data(tmp_path / "r.npz", d)
    out = tmp_path / "f.json"
    assert gf.main(["--config", str(cfg), "--data", str(tmp_path / "r.npz"), "--gsm8k", str(data),
                    "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert {"probes", "digits+probes"} <= set(saved["results"])
    assert saved["probe_auroc"]["probe_question"] > 0.85 and saved["probe_auroc"]["probe_answer"] > 0.85
    with_probes, digits = saved["flags"]["digits+probes"], saved["flags"]["digits"]
    assert with_probes["wrong_both"]["auroc_broken_vs"] > 0.8 > digits["wrong_both"]["auroc_broken_vs"]
    assert "probe_question (out of fold) predicts full_correct" in capsys.readouterr().out
