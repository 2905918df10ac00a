"""The answer check (``hazard.engine.check``) and the ``answer_check`` policy that repairs answers with it."""

import json

import numpy as np
import pytest
import torch
from kvpress.utils import compute_n_kept
from test_control import _prompts

from hazard.compression import PressSpec, build_press
from hazard.control import PolicyController, build_policy
from hazard.engine import Engine
from hazard.engine.check import Verdict, check_answers
from hazard.errors import HazardError

KNORM = PressSpec("knorm", 0.75)


def _engine(model64, max_new=16, batch=3):
    return Engine(model64, [256], max_new_tokens=max_new, batch_size=batch, probe_layers=(0, -1))


def test_the_check_agrees_with_the_uncompressed_run_token_by_token(model64):
    eng = _engine(model64)
    prompts = _prompts(4, seed=3)
    full = eng.generate(prompts, None)
    verdicts = check_answers(eng.runner, prompts, [g.tokens for g in full], token_budget=150)  # several chunks
    for g, v in zip(full, verdicts):
        assert v.tokens.tolist() == g.tokens and v.top.tolist() == g.tokens
        assert v.first_disagreement(1.0) == -1
        assert np.allclose(v.logp, v.top_logp) and (v.logp <= 0).all()
    static = eng.generate(prompts, build_press(KNORM))
    changed = [i for i, (f, s) in enumerate(zip(full, static)) if f.tokens != s.tokens]
    assert changed  # compression changed some answers: the check finds exactly where
    for i, v in zip(changed, check_answers(eng.runner, [prompts[i] for i in changed],
                                           [static[i].tokens for i in changed])):
        first = next(t for t, (a, b) in enumerate(zip(full[i].tokens, static[i].tokens)) if a != b)
        assert v.first_disagreement(1.0) == first and v.top[first] == full[i].tokens[first]
        assert v.first_disagreement(np.exp(v.logp[first]) / 2) != first  # above tau: not counted


def test_first_disagreement_needs_a_changed_choice_and_a_low_probability():
    v = Verdict(tokens=np.array([5, 6, 7, 8]), logp=np.log([0.9, 0.3, 0.05, 0.01]), top=np.array([5, 6, 9, 9]),
                top_logp=np.log([0.9, 0.3, 0.9, 0.9]))
    assert v.first_disagreement(1.0) == 2  # token 1 has a low probability but is the greedy choice
    assert v.first_disagreement(0.02) == 3 and v.first_disagreement(0.001) == -1


def test_answers_checked_until_approved_are_the_uncompressed_run(model64):
    """Repair with a restore at every disagreement, as often as needed: the answer the check finally approves
    is the uncompressed model's greedy answer."""
    eng = _engine(model64)
    prompts = _prompts(3, seed=1)
    full = eng.generate(prompts, None)
    static = eng.generate(prompts, build_press(KNORM))
    ctl = PolicyController(build_policy("answer_check", tau=1.0, checks=64, action="restore"))
    gens = eng.generate(prompts, build_press(KNORM), controller=ctl)
    for f, s, g in zip(full, static, gens):
        assert g.tokens == f.tokens
        kinds = [e[1] for e in g.control["events"]]
        assert ("force" in kinds) == (s.tokens != f.tokens)
        assert g.control["check_tokens"] >= len(prompts[0]) // 2  # every row was read at least once


def test_an_approving_check_keeps_the_compressed_answer_and_pays_one_forward(model64):
    eng = _engine(model64)
    prompts = _prompts(3, seed=4)
    press = build_press(KNORM)
    static = eng.generate(prompts, press)
    gens = eng.generate(prompts, press, controller=PolicyController(build_policy("answer_check", tau=1e-30)))
    for p, s, g in zip(prompts, static, gens):
        assert g.tokens == s.tokens and g.control["events"] == []
        checked = len(s.tokens) >= 2
        assert g.control["check_tokens"] == (len(p) + len(s.tokens) if checked else 0)
        extra = g.kv_bytes - s.kv_bytes  # the check's prompt + answer, once, on the last token, one layer's K/V
        layers = model64.config.num_hidden_layers
        assert (extra[:-1] == 0).all() and extra[-1] == g.control["check_tokens"] * g.bytes_per_token // layers


def test_a_reading_counts_every_layers_kv_or_the_one_layer_its_forward_holds(model64):
    """``reading_kv``: the same run, the same tokens; only the reading's charge on the last token differs, by the
    layer count (the forward keeps no cache, so it holds one layer's K/V of prompt + answer at a time)."""
    prompts = _prompts(3, seed=4)
    press = build_press(KNORM)
    runs = {}
    for count in ("all_layers", "one_layer"):
        eng = Engine(model64, [256], max_new_tokens=16, batch_size=3, probe_layers=(0, -1), reading_kv=count)
        static = eng.generate(prompts, press)
        runs[count] = eng.generate(prompts, press, controller=PolicyController(build_policy("answer_check",
                                                                                            tau=1e-30)))
    layers = model64.config.num_hidden_layers
    assert layers > 1
    for s, a, o in zip(static, runs["all_layers"], runs["one_layer"]):
        assert a.tokens == o.tokens == s.tokens and a.control["check_tokens"] == o.control["check_tokens"] > 0
        assert (a.kv_bytes[:-1] == o.kv_bytes[:-1]).all() and (o.kv_bytes[:-1] == s.kv_bytes[:-1]).all()
        assert o.kv_bytes[-1] - s.kv_bytes[-1] == o.control["check_tokens"] * o.bytes_per_token // layers
        assert a.kv_bytes[-1] - s.kv_bytes[-1] == layers * (o.kv_bytes[-1] - s.kv_bytes[-1])
    with pytest.raises(HazardError, match="reading_kv must be one of all_layers, one_layer"):
        Engine(model64, [256], reading_kv="none")


def test_a_recalling_repair_stays_within_its_cap_and_ranks_with_the_new_token(model64):
    eng = _engine(model64, max_new=20)
    prompts = _prompts(3, seed=1)
    press = build_press(KNORM)
    static = eng.generate(prompts, press)
    budget = 0.125
    gens = eng.generate(prompts, press, controller=PolicyController(
        build_policy("answer_check", tau=1.0, action="recall", budget=budget, page=4)))
    repaired = 0
    for p, s, g in zip(prompts, static, gens):
        kinds = [e[1] for e in g.control["events"]]
        if "force" not in kinds:
            assert g.tokens == s.tokens
            continue
        repaired += 1
        at = next(e[0] for e in g.control["events"] if e[1] == "force")
        assert g.tokens[: at - 1] == s.tokens[: at - 1] and g.tokens[at - 1] != s.tokens[at - 1]
        if at < len(g.tokens):  # it went on: recall one step later, then the replacement is fed again
            assert kinds[-2:] == ["reselect", "rollback"]
            cap = compute_n_kept(len(p), KNORM.ratio) + int(np.ceil(budget * len(p)))
            assert g.kv_tokens[at - 1:].max() <= cap + len(g.tokens)
            assert (g.kv_tokens[at:] - np.arange(at, len(g.tokens)) <= cap).all()
    assert repaired


def test_answer_check_knobs_are_checked():
    with pytest.raises(HazardError, match="tau"):
        build_policy("answer_check", tau=0.0)
    with pytest.raises(HazardError, match="checks"):
        build_policy("answer_check", checks=0)


def test_the_check_reads_only_the_answer_positions(model64):
    """Scores equal a plain forward's log-softmax at the answer's positions."""
    eng = _engine(model64)
    p, a = _prompts(1, seed=5)[0], [3, 9, 27, 81]
    (v,) = check_answers(eng.runner, [p], [a])
    with torch.inference_mode():
        logits = model64(torch.tensor([p + a[:-1]])).logits[0, len(p) - 1:].double()
    lp = torch.log_softmax(logits, -1)
    assert np.allclose(v.logp, lp[torch.arange(4), torch.tensor(a)].numpy(), atol=1e-6)
    assert v.top.tolist() == lp.argmax(-1).tolist()


def test_evaluate_runs_answer_check_between_static_and_full(tmp_path):
    import json

    from hazard.cli import main

    out = tmp_path / "cl.json"
    args = ["evaluate", "--output", str(out), "--model.tiny", "qwen2", "--model.dtype", "float64",
            "--model.device", "cpu", "--max_new_tokens", "12", "--batch_size", "4",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 4, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]", "--policies", "[static, full, answer_check]",
            "--policy_options", "{answer_check: {tau: [1.0e-30, 1.0], checks: 64, action: restore}}"]
    assert main(args) == 0
    by = {(r["policy"], r["knob"].get("tau")): r for r in json.loads(out.read_text())["rows"]}
    static, full = by[("static", None)], by[("full", None)]
    never, always = by[("answer_check", 1e-30)], by[("answer_check", 1.0)]
    assert never["trigger_rate"] == 0 and never["accuracy"] == static["accuracy"]
    assert static["mean_kv_fraction"] < never["mean_kv_fraction"] < always["mean_kv_fraction"]  # checks are paid
    assert static["catastrophe_rate"] > full["catastrophe_rate"]  # compression hurt; checking until approved heals
    assert always["trigger_rate"] > 0 and always["catastrophe_rate"] == full["catastrophe_rate"]
    assert always["accuracy"] == full["accuracy"] and always["rollback_tokens_per_trace"] > 0
    # each row's own mean KV fraction rides with its outcomes: they average to the run's, the uncompressed rows
    # hold all of it, and a check that approves every answer costs each row its reading over the static press
    for r in (static, full, never, always):
        assert len(r["outcomes"]["kv"]) == r["n"]
        assert sum(r["outcomes"]["kv"]) / r["n"] == pytest.approx(r["mean_kv_fraction"], abs=1e-5)
    assert full["outcomes"]["kv"] == [1.0] * full["n"]
    assert all(a > b for a, b in zip(never["outcomes"]["kv"], static["outcomes"]["kv"]))
    # the rows that read answers say how the readings were counted (here the default, the one layer a reading
    # holds at a time)
    assert never["reading_kv"] == always["reading_kv"] == "one_layer" and "reading_kv" not in static
    # counted as every layer's K/V (the upper bound of the older runs): the same answers at more memory
    out1 = tmp_path / "cl1.json"
    assert main([*args, "--output", str(out1), "--reading_kv", "all_layers"]) == 0
    every = {(r["policy"], r["knob"].get("tau")): r for r in json.loads(out1.read_text())["rows"]}[("answer_check",
                                                                                                   1e-30)]
    assert every["reading_kv"] == "all_layers" and every["outcomes"]["correct"] == never["outcomes"]["correct"]
    assert static["mean_kv_fraction"] < never["mean_kv_fraction"] < every["mean_kv_fraction"]


def test_a_token_only_repair_keeps_the_press_memory(model64):
    """action none: the replaced token is the uncompressed model's, the cache stays the press's (no recall, no
    digest), and with checks left the repaired answer is read again."""
    eng = _engine(model64, max_new=20)
    prompts = _prompts(3, seed=1)
    press = build_press(KNORM)
    static = eng.generate(prompts, press)
    full = eng.generate(prompts, None)
    gens = eng.generate(prompts, press, controller=PolicyController(
        build_policy("answer_check", tau=1.0, action="none", checks=2)))
    for p, s, f, g in zip(prompts, static, full, gens):
        kinds = [e[1] for e in g.control["events"]]
        assert set(kinds) <= {"rollback", "force"}
        held = g.kv_tokens - np.arange(len(g.tokens))  # prompt entries held: the press's, throughout
        assert (held == compute_n_kept(len(p), KNORM.ratio)).all()
        if "force" in kinds:
            at = next(e[0] for e in g.control["events"] if e[1] == "force")
            assert g.tokens[at - 1] == f.tokens[at - 1] and g.tokens[: at - 1] == s.tokens[: at - 1]
            assert g.control["check_tokens"] > len(p) + at  # read at least twice
    assert any("force" in [e[1] for e in g.control["events"]] for g in gens)


def _gate(tmp_path, threshold):
    from hazard.control.gate import FEATURES, AnswerGate

    k = len(FEATURES)
    AnswerGate([0.0] * k, [1.0] * k, [0.0] * k, 0.0, threshold).save(tmp_path / "g" / "gate.json")
    return str(tmp_path / "g")


def test_a_gate_that_never_repairs_keeps_the_static_answers_and_one_that_always_does_changes_nothing(model64, tmp_path):
    eng = _engine(model64)
    prompts = _prompts(3, seed=1)
    press = build_press(KNORM)
    static = eng.generate(prompts, press)
    plain = eng.generate(prompts, press, controller=PolicyController(
        build_policy("answer_check", tau=1.0, action="none", checks=3)))
    never = eng.generate(prompts, press, controller=PolicyController(
        build_policy("answer_check", tau=1.0, action="none", checks=3, gate=_gate(tmp_path, 2.0)), max_new_tokens=16))
    always = eng.generate(prompts, press, controller=PolicyController(
        build_policy("answer_check", tau=1.0, action="none", checks=3, gate=_gate(tmp_path, 0.0)), max_new_tokens=16))
    assert any(g.control["events"] for g in plain)
    for s, p, n, a in zip(static, plain, never, always):
        assert n.tokens == s.tokens and n.control["events"] == []
        assert n.control["check_tokens"] <= len(prompts[0]) + 100  # read once, then approved
        assert a.tokens == p.tokens and a.control["events"] == p.control["events"]


def test_fit_gate_picks_a_threshold_for_the_false_repair_rate_and_round_trips(tmp_path):
    from hazard.control.gate import FEATURES, AnswerGate, fit_gate

    rng = np.random.default_rng(0)
    n = 400
    y = rng.random(n) < 0.2
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, 5] -= 2.0 * y  # broken answers have a lower minimum log-prob
    healthy = ~y & (rng.random(n) < 0.9)
    gate, rep = fit_gate(x, y.astype(int), np.arange(n) // 2, healthy, max_false=0.05)
    assert rep["cv_auroc"] > 0.8 and rep["cv_healthy_repaired"] <= 0.05 and rep["cv_broken_repaired"] > 0.2
    gate.save(tmp_path / "gate.json")
    back = AnswerGate.load(tmp_path)
    assert np.allclose(back.prob(x), gate.prob(x)) and back.threshold == gate.threshold
    with pytest.raises(HazardError, match="need at least"):
        fit_gate(x, np.zeros(n, int), np.arange(n), healthy)
    with pytest.raises(HazardError, match="gate.json"):
        AnswerGate.load(tmp_path / "nowhere")


def test_gate_data_come_from_the_engine_and_the_check(tmp_path):
    import sys

    sys.path.insert(0, "evaluate")
    from answer_gate import collect_gate_data, load_gate_data, save_gate_data

    from hazard.cli import build, parse_args
    from hazard.control.gate import FEATURES
    from hazard.evaluate import EvaluateConfig

    cfg = build(EvaluateConfig, parse_args([
        "--output", str(tmp_path / "x.json"), "--model.tiny", "qwen2", "--model.dtype", "float64",
        "--model.device", "cpu", "--max_new_tokens", "8", "--batch_size", "4",
        "--tasks", "[{name: kv_retrieval, options: {n_prompts: 3, n_pairs: 6, seed: 5}}]",
        "--base_presses", "[{name: knorm, ratio: 0.75}, {name: snapkv, ratio: 0.5, kwargs: {window_size: 4}}]"]))
    d = collect_gate_data(cfg)
    assert d["x"].shape == (6, len(FEATURES)) and np.isfinite(d["x"]).all()
    assert d["groups"].tolist() == [0, 1, 2, 0, 1, 2]  # one group per prompt, across presses
    assert set(d["y"].tolist()) <= {0, 1} and d["healthy"].dtype == bool
    assert d["calm"].dtype == bool and len(d["calm"]) == 6
    # the readings round-trip through the dump, and a fit reads them back without a model
    save_gate_data(tmp_path / "d.npz", d)
    back = load_gate_data(tmp_path / "d.npz")
    assert np.array_equal(back["x"], d["x"]) and np.array_equal(back["y"], d["y"])
    assert np.array_equal(back["calm"], d["calm"])
    assert all(np.array_equal(a.tokens, b.tokens) and np.array_equal(a.logp, b.logp)
               for a, b in zip(back["verdicts"], d["verdicts"]))
    assert [list(t) for t in back["full_tokens"]] == [list(t) for t in d["full_tokens"]]
    assert set(back["vocab_ids"].tolist()) >= {int(t) for v in d["verdicts"] for t in v.tokens}
    # the compressed run's own signals ride along, one row per generated token
    assert [len(s) for s in back["signals"]] == [len(v.tokens) for v in d["verdicts"]]
    assert np.allclose(np.concatenate(back["signals"]), np.concatenate(d["signals"]), rtol=1e-2, atol=1e-2)
    assert "entropy" in back["signal_names"]
    assert not list(tmp_path.glob("*.tmp*"))


def test_the_effect_labels_are_the_closed_loops_ungated_check_prompt_by_prompt(tmp_path):
    """``collect_effects`` runs the ungated answer check as ``hazard evaluate`` does: the same answers."""
    import sys

    sys.path.insert(0, "evaluate")
    from answer_gate import collect_effects

    from hazard.cli import build, main, parse_args
    from hazard.evaluate import EvaluateConfig

    args = ["--output", str(tmp_path / "cl.json"), "--model.tiny", "qwen2", "--model.dtype", "float64",
            "--model.device", "cpu", "--max_new_tokens", "10", "--batch_size", "4",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 4, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]",
            "--policy_options", "{answer_check: {tau: 1.0, checks: 2, action: none, gate: some/gate}}"]
    eff = collect_effects(build(EvaluateConfig, parse_args(args)))
    assert eff["repaired_correct"].dtype == bool and len(eff["repaired_correct"]) == 4
    # the closed loop's ungated check on the same prompts (the gate left out, as collect_effects does)
    loop = [*args[:-1], "{answer_check: {tau: 1.0, checks: 2, action: none}}", "--policies",
            "[static, full, answer_check]"]
    assert main(["evaluate", *loop]) == 0
    row = [r for r in json.loads((tmp_path / "cl.json").read_text())["rows"] if r["policy"] == "answer_check"][0]
    assert "".join("1" if c else "0" for c in eff["repaired_correct"]) == row["outcomes"]["correct"]
    assert "".join("1" if a else "0" for a in eff["repaired_acted"]) == row["outcomes"]["acted"]
    assert eff["repaired_acted"].any()  # tau 1: every changed greedy choice is repaired
    with pytest.raises(HazardError, match="policy_options.answer_check"):
        collect_effects(build(EvaluateConfig, parse_args(args[:-2])))
    # answer_gate.py --effect on readings saved without repairs collects the repairs only, and saves them with them
    from answer_gate import collect_gate_data, load_gate_data, save_gate_data
    from answer_gate import main as gate_main

    save_gate_data(tmp_path / "d.npz", collect_gate_data(build(EvaluateConfig, parse_args(args))))
    gate_main(["--config", "configs/evaluate/gate_q15_4k.yaml", *args[2:], "--data", str(tmp_path / "d.npz"),
               "--effect", "--out", str(tmp_path / "g")])  # four answers may be too few to fit: not asked here
    back = load_gate_data(tmp_path / "d.npz")
    assert np.array_equal(back["repaired_correct"], eff["repaired_correct"]) and len(back["y"]) == 4


def test_a_gate_fitted_to_what_the_repair_does_gains_more_than_one_fitted_to_broken_answers(tmp_path, capsys):
    """--label helps: when the repair fixes the answers whose disagreement is most confident, wrong anyway or
    not, a gate fitted to that makes more net fixes at the same false-trigger budget than a gate fitted to the
    answers compression broke (here a coin among the wrong ones)."""
    import sys

    sys.path.insert(0, "evaluate")
    from answer_gate import load_gate_data, main, save_gate_data

    d = _synthetic_readings(600, seed=3)
    low = np.array([v.logp.min() for v in d["verdicts"]])
    # the repair turns wrong answers with a confident disagreement right, and breaks a few right ones
    rng = np.random.default_rng(0)
    d["repaired_correct"] = np.where(d["healthy"], rng.random(600) > 0.05, low < -4.0)
    d["repaired_acted"] = np.ones(600, bool)
    save_gate_data(tmp_path / "d.npz", d)
    back = load_gate_data(tmp_path / "d.npz")
    assert np.array_equal(back["repaired_correct"], d["repaired_correct"])
    args = ["--config", "configs/evaluate/gate_q15_4k.yaml", "--data", str(tmp_path / "d.npz"), "--features",
            "reading", "--max_false", "0.1", "--false_over", "healthy",
            "--policy_options", "{answer_check: {tau: 0.2, escalate: true}}"]  # loops: repaired whatever the gate
    # --effect with the repairs already in the file collects nothing (no model is there to load)
    assert main([*args, "--effect", "--out", str(tmp_path / "helps"), "--label", "helps"]) == 0
    assert main([*args, "--out", str(tmp_path / "broken"), "--label", "broken"]) == 0
    helps, broken = (json.loads((tmp_path / k / "f0.1" / "report.json").read_text()) for k in ("helps", "broken"))
    assert helps["label"] == "helps" and helps["cv_healthy_repaired"] <= 0.1
    gain = np.where(d["calm"], d["repaired_correct"].astype(int) - d["healthy"].astype(int), 0)  # escalated: 0
    assert helps["cv_net_gain"] > broken["cv_net_gain"] and helps["cv_fixed"] > broken["cv_fixed"]
    assert helps["cv_net_gain"] <= (gain > 0).sum() / 600 and helps["cv_target_auroc"] > 0.8
    # both rank the answers the repair fixes on the same scale: the helps gate's is its own target's AUROC
    assert helps["cv_fix_auroc"] == pytest.approx(helps["cv_target_auroc"])
    assert 0.5 < broken["cv_fix_auroc"] < helps["cv_fix_auroc"]
    assert "net" in capsys.readouterr().out
    # readings without the repairs: one clear line naming --effect
    del d["repaired_correct"], d["repaired_acted"]
    save_gate_data(tmp_path / "plain.npz", d)
    assert main([*args[:2], "--data", str(tmp_path / "plain.npz"), "--out", str(tmp_path / "x"), "--label",
                 "helps", *args[-2:]]) == 2
    assert "--effect" in capsys.readouterr().err


def _synthetic_readings(n: int, seed: int) -> dict:
    """Readings where wrong answers carry a confident disagreement and half the right ones a mild one; some wrong
    answers are calm (no loop or non-termination), as answers wrong uncompressed too are."""
    from hazard.engine.check import Verdict

    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.4
    vs = []
    for w in wrong:
        tokens = rng.integers(0, 50, 20)
        top, logp = tokens.copy(), np.full(20, -0.05)
        j = rng.integers(0, 20)
        if w or rng.random() < 0.5:
            top[j] = tokens[j] + 1
            logp[j] = -3.0 - 2 * rng.random() if w else -1.7 - 1.5 * rng.random()
        vs.append(Verdict(tokens, logp, top, np.full(20, -0.05)))
    return {"verdicts": vs, "y": (wrong & (rng.random(n) < 0.5)).astype(np.int64), "healthy": ~wrong,
            "calm": ~wrong | (rng.random(n) < 0.7), "groups": np.arange(n) // 2, "full_correct": np.ones(n, bool),
            "full_tokens": [v.tokens for v in vs], "vocab_ids": np.arange(60),
            "vocab": np.array([str(i) for i in range(60)], dtype=object), "max_new_tokens": 32,
            "collected": {"hardware": "test"}}


def test_a_gate_held_to_the_false_trigger_rate_spares_the_healthy_answers(tmp_path, capsys):
    """--false_over healthy holds the gate to issue 12's false triggers as the closed loop counts them (answers
    without a loop, non-termination or broken answer), which also count the wrong-anyway answers a false-repair
    threshold may repair; --false_over calm counts the broken answers as well."""
    import sys

    sys.path.insert(0, "evaluate")
    from answer_gate import main, save_gate_data

    d = _synthetic_readings(400, seed=2)
    save_gate_data(tmp_path / "d.npz", d)
    args = ["--config", "configs/evaluate/gate_q15_4k.yaml", "--data", str(tmp_path / "d.npz"), "--features",
            "reading", "--max_false", "0.05"]
    assert main([*args, "--out", str(tmp_path / "right")]) == 0
    assert main([*args, "--out", str(tmp_path / "calm"), "--false_over", "calm"]) == 0
    assert main([*args, "--out", str(tmp_path / "healthy"), "--false_over", "healthy"]) == 0
    right, calm, healthy = (json.loads((tmp_path / k / "f0.05" / "report.json").read_text())
                            for k in ("right", "calm", "healthy"))
    assert (right["false_over"], calm["false_over"], healthy["false_over"]) == ("right", "calm", "healthy")
    assert calm["cv_healthy_repaired"] <= 0.05 and right["cv_healthy_repaired"] <= 0.05
    assert healthy["cv_healthy_repaired"] <= 0.05
    # the healthy answers: calm and not broken
    assert healthy["healthy"] == int((d["calm"] & ~d["y"].astype(bool)).sum()) < calm["healthy"]
    assert calm["threshold"] > right["threshold"]  # sparing the calm wrong answers takes a stricter gate
    assert calm["threshold"] >= healthy["threshold"]  # and counting the broken ones among them stricter still
    out = capsys.readouterr().out
    assert "of the calm (no loop or non-termination) answers" in out
    assert "of the healthy (no loop, non-termination or broken answer) answers" in out
    # readings collected before the flags were kept: one clear line
    del d["calm"]
    save_gate_data(tmp_path / "old.npz", d)
    old = ["--data", str(tmp_path / "old.npz"), "--out", str(tmp_path / "x"), "--false_over", "calm"]
    assert main([*args[:2], *old]) == 2
    assert "collect them again" in capsys.readouterr().err


def test_digit_statistics_count_changed_numbers_apart_from_changed_words():
    from hazard.control.gate import DIGITS, TAUS, Verdict, reading_stats, verdict_features

    digits = {7, 8}  # token ids whose text holds a digit; positions 1, 3 and 5 involve one
    tokens = np.array([1, 7, 2, 8, 3, 7])
    top = np.array([1, 8, 5, 8, 3, 2])  # changed: a digit (7 -> 8), a word (2 -> 5), a digit away (7 -> 2)
    logp = np.log(np.array([0.9, 0.1, 0.3, 0.95, 0.9, 0.001]))
    v = Verdict(tokens, logp, top, np.log(np.array([0.9, 0.8, 0.6, 0.95, 0.9, 0.9])))
    s = reading_stats(v, 16, digits)
    assert s["digit_bad@0.5"] == np.log1p(2) and s["digit_bad@0.01"] == np.log1p(1)
    assert s["word_bad@0.5"] == np.log1p(1) and s["word_bad@0.2"] == 0.0
    assert np.isclose(s["digit_min_logp"], np.log(0.001)) and np.isclose(s["log_digits"], np.log1p(3))
    assert np.isclose(s["digit_max_gap"], np.log(0.9) - np.log(0.001))
    assert verdict_features(v, 16, DIGITS, digits).shape == (len(DIGITS),) and len(TAUS) == 4
    # no digit ids: every change is a word
    assert reading_stats(v, 16)["digit_bad@0.5"] == 0.0 and reading_stats(v, 16)["word_bad@0.5"] == np.log1p(3)


def test_a_digit_gate_round_trips_and_a_broken_gate_file_says_what_to_do(tmp_path):
    import json

    from hazard.control.gate import DIGITS, AnswerGate, Verdict

    k = len(DIGITS)
    g = AnswerGate([0.0] * k, [1.0] * k, [0.0] * k, 0.0, 0.4, features=DIGITS, digit_ids=[7, 8], label="wrong")
    g.save(tmp_path / "g" / "gate.json")
    back = AnswerGate.load(tmp_path / "g")
    assert back.features == DIGITS and back.digit_ids == [7, 8] and back.label == "wrong"
    v = Verdict(np.array([1, 7]), np.log(np.array([0.5, 0.5])), np.array([1, 8]), np.log(np.array([0.5, 0.5])))
    assert back.repairs_verdict(v, 16)  # sigmoid(0) = 0.5 >= 0.4
    d = json.loads((tmp_path / "g" / "gate.json").read_text())
    for bad in ({**d, "features": [*d["features"][:-1], "nonsense"]}, {**d, "digit_ids": []},
                {**d, "coef": d["coef"][:-1]}):
        (tmp_path / "b").mkdir(exist_ok=True)
        (tmp_path / "b" / "gate.json").write_text(json.dumps(bad))
        with pytest.raises(HazardError, match="retrain it"):
            AnswerGate.load(tmp_path / "b")


def test_fit_gate_counts_only_answers_that_reach_it_against_the_false_repair_rate():
    from hazard.control.gate import FEATURES, fit_gate

    rng = np.random.default_rng(1)
    n = 600
    y = rng.random(n) < 0.25
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, 5] -= 1.5 * y
    healthy = ~y & (rng.random(n) < 0.8)
    eligible = y | (rng.random(n) < 0.5)  # half the healthy answers have no disagreement: never repaired
    groups = np.arange(n) // 3
    plain, rep = fit_gate(x, y.astype(int), groups, healthy, max_false=0.1)
    gated, rep_e = fit_gate(x, y.astype(int), groups, healthy, max_false=0.1, eligible=eligible,
                            target=(~healthy).astype(int))
    assert rep_e["cv_healthy_repaired"] <= 0.1 and rep_e["eligible"] == int(eligible.sum())
    # the same budget of healthy repairs spent only among the eligible ones: a lower threshold, more found
    assert rep_e["cv_broken_repaired"] > rep["cv_broken_repaired"]
    assert 0.5 < rep_e["cv_auroc_broken_vs_healthy"] <= 1.0


def test_spot_checks_reach_the_same_answer_and_throw_away_fewer_tokens(model64):
    """Restoring at the first disagreement gives the uncompressed answer whether it is found at the end or by a
    spot check every 4 tokens; the spot check finds it within 4 tokens, so less is generated in vain."""
    eng = _engine(model64)
    prompts = _prompts(3, seed=1)
    full = eng.generate(prompts, None)
    end = eng.generate(prompts, build_press(KNORM), controller=PolicyController(
        build_policy("answer_check", tau=1.0, checks=64, action="restore"), max_new_tokens=16))
    spot = eng.generate(prompts, build_press(KNORM), controller=PolicyController(
        build_policy("answer_check", tau=1.0, checks=64, action="restore", spot=4), max_new_tokens=16))
    assert any(g.control["rollback_tokens"] for g in end)
    for f, e, s in zip(full, end, spot):
        assert e.tokens == f.tokens and s.tokens == f.tokens
        assert s.control["rollback_tokens"] <= e.control["rollback_tokens"]
        forced = [t for t, kind in s.control["events"] if kind == "force"]
        assert s.control["rollback_tokens"] <= 3 * len(forced)  # found within the 4 tokens since the last check
        if forced:  # read while running: at least one reading of a partial answer
            assert s.control["check_tokens"] > len(prompts[0]) + len(s.tokens)


def test_spot_repairs_stop_at_the_checks_budget(model64):
    eng = _engine(model64)
    prompts = _prompts(3, seed=1)
    gens = eng.generate(prompts, build_press(KNORM), controller=PolicyController(
        build_policy("answer_check", tau=1.0, checks=1, action="none", spot=2), max_new_tokens=16))
    forces = [sum(kind == "force" for _, kind in g.control["events"]) for g in gens]
    assert max(forces) >= 1 and max(forces) <= 2  # one at a spot check, one at the end reading
    with pytest.raises(HazardError, match="spot"):
        build_policy("answer_check", spot=1)


def test_a_held_restore_recompresses_after_its_tokens_and_costs_less_memory(model64):
    eng = _engine(model64, max_new=24)
    prompts = _prompts(3, seed=1)
    press = build_press(KNORM)

    def run(**kw):
        return eng.generate(prompts, press, controller=PolicyController(
            build_policy("answer_check", tau=1.0, checks=1, action="restore", **kw), max_new_tokens=24))

    to_end, held = run(), run(hold=3)
    assert any("recompress" in [k for _, k in g.control["events"]] for g in held)
    continued = False
    for a, b in zip(to_end, held):
        ev = b.control["events"]
        assert [t for t, k in ev if k == "force"] == [t for t, k in a.control["events"] if k == "force"]
        assert "recompress" not in [k for _, k in a.control["events"]]
        for (t, kind), nxt in zip(ev, ev[1:]):
            if kind == "force" and nxt[1] == "recompress":
                assert nxt[0] - t == 3  # three tokens under the restored cache, then back to the press
                if len(b.tokens) > nxt[0]:  # the row went on: compressed again from the next token
                    assert b.kv_tokens[nxt[0]] < b.prompt_len <= b.kv_tokens[nxt[0] - 1]
                    assert b.kv_bytes.sum() < a.kv_bytes.sum()
                    continued = True
    assert continued
    with pytest.raises(HazardError, match="hold"):
        build_policy("answer_check", action="none", hold=4)


def test_a_random_gate_is_chance_at_a_set_rate(model64):
    from hazard.control.gate import RandomGate

    eng = _engine(model64)
    prompts = _prompts(3, seed=1)
    press = build_press(KNORM)

    def run(gate=""):
        return eng.generate(prompts, press, controller=PolicyController(
            build_policy("answer_check", tau=1.0, action="none", checks=3, gate=gate), max_new_tokens=16))

    static, plain, never, always = eng.generate(prompts, press), run(), run("random:0"), run("random:1")
    assert any(g.control["events"] for g in plain)
    assert [g.tokens for g in never] == [g.tokens for g in static]
    assert [g.tokens for g in always] == [g.tokens for g in plain]
    coin = RandomGate(0.3, seed=4)
    assert 0.2 < np.mean([coin.repairs_verdict(None, 16) for _ in range(2000)]) < 0.4
    from hazard.control.gate import load_gate

    assert load_gate("random:0.3").seed == 0 and load_gate("random:0.3:2") == RandomGate(0.3, seed=2)
    for bad in ("random:often", "random:1.5", "random:0.3:x", "random:0.3:1:2"):
        with pytest.raises(HazardError, match="random"):
            build_policy("answer_check", gate=bad)


def test_escalation_rolls_back_to_the_disagreement_or_before_the_cycle():
    pol = build_policy("answer_check", tau=0.2, action="none", escalate=True, margin=2)
    ended = [1, 2, 3, 4, 5, 256]  # ended before the budget, no cycle: not a visible failure
    assert pol.escalation(ended, 3, 9, max_new_tokens=40) is None
    loop = [1, 2, 3, 4, 5, 6] + [7, 8] * 12 + [256]  # a cycle from token 6, then the end token
    n = len(loop)
    assert n < 40
    assert pol.escalation(loop, -1, -1, 40) == [("restore",), ("rollback", n - 4)]  # keeps 6 - 2 tokens
    assert pol.escalation(loop, 2, 99, 40) == [("restore",), ("rollback", n - 3), ("force", 99)]
    assert pol.escalation(loop, 10, 99, 40) == [("restore",), ("rollback", n - 4)]  # the cycle came first
    budget = list(range(40))  # ran to the budget without a cycle: a non-termination
    assert pol.escalation(budget, -1, -1, 40) is None  # nothing to roll back to
    assert pol.escalation(budget, 7, 99, 40) == [("restore",), ("rollback", 32), ("force", 99)]
    assert build_policy("answer_check", escalate=True).escalation(loop, -1, -1, 40) == [
        ("restore",), ("rollback", n - 2)]  # margin 4 by default
    with pytest.raises(HazardError, match="escalate"):
        build_policy("answer_check", escalate="yes")
    with pytest.raises(HazardError, match="escalate_tau"):
        build_policy("answer_check", escalate=True, escalate_tau=0.0)
    with pytest.raises(HazardError, match="margin"):
        build_policy("answer_check", margin=-1)


def test_escalation_restores_the_visibly_failed_answers_whatever_the_gate_says(model64):
    """A gate that never repairs, with ``escalate``: the answers that end in a cycle or run to the budget under
    the press (the catastrophes of the trace labels) are restored from where compression changed them and
    become the uncompressed answer (``escalate_tau`` 1: the first changed greedy choice, whatever ``tau``);
    every other answer stays."""
    from hazard.labels.detectors import detect_loop

    eng = _engine(model64, max_new=40)
    prompts = _prompts(6, seed=1)
    press = build_press(KNORM)
    full, static = eng.generate(prompts, None), eng.generate(prompts, press)
    gens = eng.generate(prompts, press, controller=PolicyController(build_policy(
        "answer_check", tau=1e-30, action="none", checks=3, gate="random:0", escalate=True), max_new_tokens=40))
    escalated = 0
    for f, s, g in zip(full, static, gens):
        failed = not s.finished or detect_loop(s.tokens, s.finished) is not None
        kinds = [e[1] for e in g.control["events"]]
        if failed and s.tokens != f.tokens:
            escalated += 1
            assert kinds[0] == "restore" and g.tokens == f.tokens
            assert g.kv_tokens[-1] == f.kv_tokens[-1]  # the whole prompt held to the end
        else:
            assert g.tokens == s.tokens and kinds == []
    assert escalated  # (the tiny llama also ends some answers, which stay)


def test_a_held_escalation_recompresses_after_its_tokens_and_costs_less_memory(model64):
    """``escalate_hold``: an escalated repair restores the whole prompt as before, then goes back to the press's
    entries after that many generated tokens; the rows it never escalates are untouched."""
    eng = _engine(model64, max_new=40)
    prompts = _prompts(6, seed=1)
    press = build_press(KNORM)

    def run(**kw):
        return eng.generate(prompts, press, controller=PolicyController(build_policy(
            "answer_check", tau=1e-30, action="none", checks=1, gate="random:0", escalate=True, **kw),
            max_new_tokens=40))

    to_end, held = run(), run(escalate_hold=2)
    continued = False
    for a, b in zip(to_end, held):
        ea, eb = a.control["events"], b.control["events"]
        assert "recompress" not in [k for _, k in ea]
        if not ea:  # not escalated: the same answer either way
            assert b.tokens == a.tokens and not eb
            continue
        assert eb[0][1] == "restore" and eb[0][0] == ea[0][0]  # the same escalation, at the same reading
        rec = [t for t, k in eb if k == "recompress"]
        forced = [t for t, k in eb if k == "force"]
        if rec and forced:
            assert rec[0] - forced[0] == 2  # two tokens under the restored prompt, then back to the press
        if rec and len(b.tokens) > rec[0]:  # the row went on past its hold: compressed again from there
            assert b.kv_tokens[rec[0]] < b.prompt_len <= b.kv_tokens[rec[0] - 1]
            assert b.kv_bytes.sum() < a.kv_bytes.sum()
            continued = True
    assert continued
    with pytest.raises(HazardError, match="escalate_hold"):
        build_policy("answer_check", escalate_hold=4)  # without escalate
    with pytest.raises(HazardError, match="escalate_hold"):
        build_policy("answer_check", escalate=True, escalate_hold=-1)


def test_the_gate_learning_curve_refits_on_shares_of_the_prompts(tmp_path, capsys):
    """evaluate/gate_learning_curve.py: each share refits on that many prompts (all the answers of a prompt kept
    together), holds the gate to its false-trigger rate and finds the readings' signal; a missing file is one
    clear line."""
    import sys

    sys.path.insert(0, "evaluate")
    from answer_gate import save_gate_data
    from gate_learning_curve import main

    d = _synthetic_readings(400, seed=2)
    save_gate_data(tmp_path / "d.npz", d)
    out = tmp_path / "lc.json"
    assert main(["--data", str(tmp_path / "d.npz"), "--shares", "0.5", "1", "--draws", "2", "--max_false", "0.05",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["prompts"], r["draws"]) for r in rows] == [(100, 2), (200, 1)]
    assert rows[1]["broken"] == d["y"].sum()
    assert all(r["cv_healthy_repaired"] <= 0.05 and r["cv_auroc"] > 0.6 for r in rows)
    assert "cv AUROC" in capsys.readouterr().out
    assert main(["--data", str(tmp_path / "none.npz")]) == 2
    assert "none.npz not found" in capsys.readouterr().err
