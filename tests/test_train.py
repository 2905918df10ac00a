import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hazard import SCHEMA_VERSION, SIGNALS_VERSION, setting_label
from hazard.errors import HazardError
from hazard.guard import HazardGuard
from hazard.predictor.baselines import CycleRule, EntropyRule, RepeatRule, rolling_min, rolling_share, windows
from hazard.predictor.data import HazardDataModule, Trace, load_trace_arrays, split_traces
from hazard.predictor.metrics import choose_threshold, evaluate
from hazard.predictor.nets import NETS


@pytest.fixture(scope="module")
def traces_dir(tmp_path_factory):
    """Traces from the real collect stage on a tiny random model: 2 tasks x 12 prompts x 4 settings, 48 new
    tokens (at 24 nearly every run is cut mid-way and gets no onset: a random model's loops need the room)."""
    from hazard.cli import main

    out = tmp_path_factory.mktemp("traces") / "tiny"
    assert main(["collect", "--config", "configs/collect/tiny.yaml", "--output_dir", str(out), "--max_new_tokens", "48",
                 "--tasks", "[{name: kv_retrieval, options: {n_prompts: 12, n_pairs: 6}}, "
                            "{name: var_tracking, options: {n_prompts: 12}}]",
                 "--presses", "[{name: snapkv, ratio: 0.5, kwargs: {window_size: 8}}, {name: knorm, ratio: 0.75},"
                              " {name: streaming_llm, ratio: 0.75}]"]) == 0
    return out


def test_splits_never_share_a_prompt(traces_dir):
    traces = load_trace_arrays([str(traces_dir)], "logit_attn")
    for split in ("prompt", "press:snapkv", "task:var_tracking"):
        parts = split_traces(traces, split, 0.25, 0.25, seed=0)
        ids = {k: {t.prompt_id for t in v} for k, v in parts.items()}
        assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    lopo = split_traces(traces, "press:snapkv", 0.25, 0.25)
    assert {t.press for t in lopo["test"]} == {"snapkv"} and "snapkv" not in {t.press for t in lopo["train"]}
    task = split_traces(traces, "task:var_tracking")
    assert {t.task for t in task["test"]} == {"var_tracking"} and {t.task for t in task["train"]} == {"kv_retrieval"}


def _fake(prompt: str, fmt: str, model: str, press: str = "snapkv") -> Trace:
    z = np.zeros((4, 1), np.float32)
    return Trace(z, np.zeros((4, 5), np.float32), np.ones(4, bool), f"{model}/{fmt}/{prompt}/{press}", prompt,
                 "gsm8k", press, 0.875, model, False, -1, z[:, 0], fmt)


def test_held_out_format_and_cross_model_splits():
    fmts = ["k0e-s0", "k3e0s0", "k3e1s1", "k8e2s0"]
    traces = [_fake(f"p{i}", f, m) for i in range(40) for f in fmts for m in ("small", "large")]
    parts = split_traces(traces, "format:k8*", 0.2, 0.3)
    assert {t.format for t in parts["test"]} == {"k8e2s0"}
    assert "k8e2s0" not in {t.format for t in parts["train"] + parts["val"]}
    cross = split_traces(traces, "model:large", 0.2, 0.3)
    assert {t.model for t in cross["test"]} == {"large"} and {t.model for t in cross["train"]} == {"small"}
    for split in (parts, split_traces(traces, "format:*e1*", 0.2, 0.3), cross):
        ids = {k: {t.prompt_id for t in v} for k, v in split.items()}  # new prompts in test as well
        assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
        assert len(ids["test"]) == 12  # 0.3 of 40 prompts
    with pytest.raises(HazardError, match="no traces match 'k5\\*'"):
        split_traces(traces, "format:k5*")
    with pytest.raises(HazardError, match="every trace matches"):
        split_traces(traces, "format:k*")
    with pytest.raises(HazardError, match="unknown split 'shots:3'"):
        split_traces(traces, "shots:3")


def test_a_learning_curve_point_trains_on_fewer_prompts_and_tests_on_the_same_ones():
    traces = [_fake(f"p{i}", "k3e0s0", "m", press) for i in range(40) for press in ("snapkv", "knorm")]
    full = split_traces(traces, "prompt", 0.2, 0.3)
    ids = lambda part: {t.prompt_id for t in part}  # noqa: E731
    curve = [split_traces(traces, "prompt", 0.2, 0.3, train_prompts=n) for n in (3, 10, len(ids(full["train"])))]
    for n, part in zip((3, 10, len(ids(full["train"]))), curve):
        assert ids(part["val"]) == ids(full["val"]) and ids(part["test"]) == ids(full["test"])
        assert len(ids(part["train"])) == n and ids(part["train"]) <= ids(full["train"])
        assert len(part["train"]) == 2 * n  # every setting of each prompt kept
    assert ids(curve[0]["train"]) <= ids(curve[1]["train"])  # nested: each point adds prompts
    with pytest.raises(HazardError, match="train_prompts 0: the train part has 20 prompts"):
        split_traces(traces, "prompt", 0.2, 0.3, train_prompts=0)
    with pytest.raises(HazardError, match="use 1..20"):
        split_traces(traces, "prompt", 0.2, 0.3, train_prompts=21)


def test_leakage_check_would_fail_on_a_token_split(traces_dir):
    """The split test above can fail: a split by trace (not prompt) puts one prompt in two parts."""
    traces = sorted(load_trace_arrays([str(traces_dir)], "logit"), key=lambda t: t.trace_id)
    by_trace = {"train": traces[0::2], "test": traces[1::2]}  # a prompt's settings are adjacent
    assert {t.prompt_id for t in by_trace["train"]} & {t.prompt_id for t in by_trace["test"]}


def test_normalisation_is_fitted_on_train_only(traces_dir):
    dm = HazardDataModule([str(traces_dir)], "logit", val_frac=0.25, test_frac=0.25)
    x = np.concatenate([t.x[t.valid] for t in dm.parts["train"]])
    assert np.allclose(dm.norm.mean, x.mean(0), atol=1e-4)
    assert dm.feature_spec["names"] == list(dm.feature_names) and len(dm.pos_weight) == 5


@pytest.mark.parametrize("net", list(NETS))
def test_nets_are_strictly_causal_and_stream_exactly(net):
    torch.manual_seed(0)
    m = NETS[net](6, 5, hidden=16, layers=2, dropout=0.0).eval()
    x = torch.randn(2, 20, 6)
    y = m(x)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(2, 8, 6) * 10  # change the future
    assert torch.allclose(m(x2)[:, :12], y[:, :12], atol=1e-5)
    assert not torch.allclose(m(x2)[:, 12:], y[:, 12:], atol=1e-3)
    state = m.init_state(2)
    for t in range(20):
        out, state = m.step(x[:, t], state)
        assert torch.allclose(out, y[:, t], atol=1e-5)


def test_metrics_on_hand_made_traces():
    from hazard.predictor.data import Trace

    def tr(n, onset, cat):
        y = np.zeros((n, 1), np.float32)
        valid = np.ones(n, bool)
        if onset >= 0:
            y[max(onset - 4, 0):, 0] = 1
            valid[onset:] = False
        return Trace(np.zeros((n, 1)), y, valid, "t", "p", "task", "press", 0.5, "m", cat, onset, np.zeros(n))

    traces = [tr(20, 10, True), tr(20, -1, False), tr(20, -1, False)]
    scores = [np.r_[np.zeros(5), np.ones(15)], np.zeros(20), np.r_[np.zeros(19), 0.9]]
    thr = choose_threshold(traces, scores, target_far=0.5)  # one of two healthy traces may alarm
    assert 0.0 < thr <= 0.9
    m = evaluate(traces, scores, 0, thr)
    assert m["detect_rate_lead1"] == 1.0 and m["detect_rate_lead8"] == 0.0  # first alarm at 5, onset 10
    assert m["lead_times"] == [5] and m["false_alarm_rate"] == 0.5
    strict = evaluate(traces, scores, 0, choose_threshold(traces, scores, target_far=0.0))
    assert strict["false_alarm_rate"] == 0.0
    # fast detection: an alarm 3 tokens after a loop's onset counts within 4 (and 8), not within 2
    late = tr(20, 10, True)
    late.kind = "loop"
    m = evaluate([late, *traces[1:]], [np.r_[np.zeros(13), np.ones(7)], *scores[1:]], 0, thr)
    assert m["detect_rate_lead1"] == 0.0 and m["detect_rate_within2"] == 0.0
    assert m["detect_rate_within4"] == m["detect_rate_within8"] == 1.0 and m["median_delay"] == 3.0
    assert m["by_type"] == {"loop": {"n": 1, **{k: m[k] for k in m["by_type"]["loop"] if k != "n"}}}
    assert "by_task" not in m  # one task


def test_lead_reachable_bounds_what_any_predictor_flags_ahead():
    """A catastrophe whose onset is at token 3 cannot be flagged 8 tokens ahead, whatever the scores: the
    bound counts it out, and a guard alarming on every token still meets the bound and not more."""
    from hazard.predictor.data import Trace

    def tr(n, onset):
        y = np.zeros((n, 1), np.float32)
        valid = np.ones(n, bool)
        if onset >= 0:
            y[max(onset - 4, 0):, 0] = 1
            valid[onset:] = False
        return Trace(np.zeros((n, 1)), y, valid, "t", "p", "task", "press", 0.5, "m", onset >= 0, onset, np.zeros(n))

    traces = [tr(30, 3), tr(30, 20), tr(30, 0), tr(30, 8), tr(30, -1)]
    always = [np.ones(30)] * 5
    m = evaluate(traces, always, 0, 0.5)
    assert m["lead_reachable8"] == 0.5 and m["lead_reachable1"] == 0.75  # onsets 20, 8 of 3, 20, 0, 8
    assert m["detect_rate_lead8"] == m["lead_reachable8"] and m["detect_rate_lead1"] == m["lead_reachable1"]
    never = evaluate(traces, [np.zeros(30)] * 5, 0, 0.5)
    assert never["lead_reachable8"] == 0.5 and never["detect_rate_lead8"] == 0.0  # a bound of the onsets alone


def test_detection_per_onset_rule_separates_what_a_type_mixes():
    """Two non-terminations, one whose onset is a stall the scores see at once, one placed where they never
    see it (an "off_task" stretch): the type's rate is their mean, each rule's is 1 or 0."""
    from hazard.predictor.data import Trace

    def tr(onset, source):
        y = np.zeros((20, 1), np.float32)
        y[onset - 4:, 0] = 1
        valid = np.arange(20) < onset
        return Trace(np.zeros((20, 1)), y, valid, source, "p", "task", "press", 0.5, "m", True, onset, np.zeros(20),
                     kind="nonterm", source=source)

    healthy = Trace(np.zeros((20, 1)), np.zeros((20, 1), np.float32), np.ones(20, bool), "h", "p", "task", "press",
                    0.5, "m", False, -1, np.zeros(20))
    scores = [np.r_[np.zeros(11), np.ones(9)], np.zeros(20), np.zeros(20)]  # the stall run alarms at its onset + 1
    m = evaluate([tr(10, "stall"), tr(10, "off_task"), healthy], scores, 0, 0.5)
    assert m["by_type"]["nonterm"]["detect_rate_within4"] == 0.5
    assert m["by_source"]["nonterm/stall"]["detect_rate_within4"] == 1.0
    assert m["by_source"]["nonterm/off_task"]["detect_rate_within4"] == 0.0
    assert m["by_source"]["nonterm/off_task"]["n"] == m["by_source"]["nonterm/stall"]["n"] == 1
    assert "by_press" not in m  # one press setting


def test_loops_counted_from_their_first_repeat_beside_their_onset():
    """A loop of period 8 (onset 10, first repeat 18) noticed at token 20 is missed within 4 tokens of its onset
    and caught within 4 of its first repeat; a loop whose repeat is unknown (-1) and other types stay out."""
    from hazard.predictor.data import Trace

    def tr(kind, first_repeat, name):
        y = np.zeros((40, 1), np.float32)
        y[6:, 0] = 1
        return Trace(np.zeros((40, 1)), y, np.arange(40) < 10, name, "p", "task", "press", 0.5, "m", True, 10,
                     np.zeros(40), kind=kind, first_repeat=first_repeat)

    late = np.r_[np.zeros(20), np.ones(20)]
    m = evaluate([tr("loop", 18, "a"), tr("loop", -1, "b"), tr("nonterm", -1, "c")], [late] * 3, 0, 0.5)
    assert m["by_type"]["loop"]["detect_rate_within4"] == 0.0 and m["by_type"]["loop"]["n"] == 2
    rep = m["loop_from_repeat"]
    assert rep["n"] == 1 and rep["detect_rate_within4"] == 1.0 and rep["detect_rate_within0"] == 0.0
    assert rep["median_delay"] == 2.0


def test_a_stored_loops_first_repeat_is_read_from_its_tokens():
    from hazard.predictor.data import first_repeat

    row = {"catastrophe": True, "loop": True, "nonterm": True, "onset": 3, "tokens": [1, 2, 3] + [7, 8, 9, 10] * 6}
    assert first_repeat(row) == 7
    assert first_repeat({**row, "onset": 5}) == -1  # a relabelled onset: not the detector's, left out
    assert first_repeat({**row, "loop": False}) == -1  # a non-termination


def test_metrics_per_press_expose_a_guard_that_flags_one_setting_wholesale():
    """A guard that alarms on every trace of the setting that fails most (failing and healthy alike) and on
    no other: pooled, most catastrophes are flagged at 1 false alarm in 10 healthy traces; per press, it
    flags every trace of one setting and nothing of the other."""
    from hazard.predictor.data import Trace

    def tr(press, failing, i):
        y = np.zeros((20, 1), np.float32)
        onset = 10 if failing else -1
        if failing:
            y[6:, 0] = 1
        valid = np.arange(20) < onset if failing else np.ones(20, bool)
        return Trace(np.zeros((20, 1)), y, valid, f"{press}{failing}{i}", f"p{i}", "task", press, 0.875, "m",
                     failing, onset, np.zeros(20), kind="loop" if failing else "none",
                     source="loop" if failing else "none")

    traces = ([tr("knorm", True, i) for i in range(8)] + [tr("knorm", False, 0)] + [tr("snapkv", True, 0)]
              + [tr("snapkv", False, i) for i in range(9)])
    scores = [np.ones(20) if t.press == "knorm" else np.zeros(20) for t in traces]
    m = evaluate(traces, scores, 0, 0.5)
    assert m["detect_rate_within4"] == 8 / 9 and m["false_alarm_rate"] == 0.1
    knorm, snapkv = m["by_press"]["knorm@0.875"], m["by_press"]["snapkv@0.875"]
    assert knorm["false_alarm_rate"] == 1.0 and knorm["detect_rate_within4"] == 1.0
    loop = snapkv["by_type"]["loop"]
    assert snapkv["false_alarm_rate"] == 0.0 and loop["n"] == 1 and loop["detect_rate_within32"] == 0.0


def test_thresholds_per_setting_hold_each_setting_to_the_target():
    """Two settings whose scores live on different scales: Knorm's healthy traces score 0.8 and its failures
    0.9, SnapKV's 0.1 and 0.2. One pooled threshold for 0 false alarms (0.9) misses every SnapKV failure;
    a threshold per setting flags every failure of both at no false alarm, and a setting the thresholds do
    not name is one clear error."""
    from hazard.errors import HazardError
    from hazard.predictor.data import Trace
    from hazard.predictor.metrics import choose_threshold, choose_thresholds

    def tr(press, failing, i):
        y = np.zeros((20, 1), np.float32)
        if failing:
            y[6:, 0] = 1
        valid = np.arange(20) < 10 if failing else np.ones(20, bool)
        return Trace(np.zeros((20, 1)), y, valid, f"{press}{failing}{i}", f"p{i}", "task", press, 0.875, "m",
                     failing, 10 if failing else -1, np.zeros(20), kind="loop" if failing else "none",
                     source="loop" if failing else "none")

    traces = [tr(p, f, i) for p in ("knorm", "snapkv") for f in (True, False) for i in range(4)]
    base = {"knorm": 0.8, "snapkv": 0.1}
    scores = [np.full(20, base[t.press] + (0.1 if t.catastrophe else 0.0)) for t in traces]
    pooled = evaluate(traces, scores, 0, choose_threshold(traces, scores, 0.0))
    assert pooled["false_alarm_rate"] == 0.0 and pooled["detect_rate_within4"] == 0.5
    per = choose_thresholds(traces, scores, 0.0)
    assert set(per) == {"knorm@0.875", "snapkv@0.875"} and per["snapkv@0.875"] < per["knorm@0.875"]
    m = evaluate(traces, scores, 0, per)
    assert m["false_alarm_rate"] == 0.0 and m["detect_rate_within4"] == 1.0
    assert m["by_press"]["snapkv@0.875"]["detect_rate_within4"] == 1.0
    with pytest.raises(HazardError, match="no threshold for press setting"):
        evaluate(traces, scores, 0, {"knorm@0.875": 0.5})


def test_a_conformal_threshold_holds_the_rate_on_new_healthy_traces():
    """Healthy traces' maxima drawn from one distribution (uniform): a threshold chosen on n of them lets a new
    one alarm with probability (k + 1) / (n + 1), k the validation traces it lets alarm. The quantile rule
    (k = floor(0.05 n)) sits at 5% on validation and above it on new traces: 2/31 at n = 30. The conformal
    rule stays at or under 5% in expectation (1/31 at n = 30; at n = 9, under 19, above the maximum: 1/10);
    a rule it does not know is one clear error."""
    from types import SimpleNamespace

    from hazard.predictor.metrics import FalseAlarmTarget, expected_false_alarm_rate

    rng = np.random.default_rng(0)

    def new_alarm_rate(n: int, far: float, trials: int = 4000) -> float:
        rates = []
        for _ in range(trials):
            maxes = rng.random(n)
            traces = [SimpleNamespace(valid=np.ones(1, bool), catastrophe=False) for _ in maxes]
            thr = choose_threshold(traces, [np.array([m]) for m in maxes], far)
            rates.append(1.0 - min(thr, 1.0))  # P(a new uniform maximum >= thr)
        return float(np.mean(rates))

    for n, quantile, conformal in ((30, 2 / 31, 1 / 31), (60, 4 / 61, 3 / 61), (9, 1 / 10, 1 / 10)):
        q = new_alarm_rate(n, FalseAlarmTarget(0.05))
        c = new_alarm_rate(n, FalseAlarmTarget(0.05, "conformal"))
        assert q == pytest.approx(quantile, abs=0.004) and c == pytest.approx(conformal, abs=0.004)
        assert expected_false_alarm_rate(n, FalseAlarmTarget(0.05)) == pytest.approx(quantile)
        assert expected_false_alarm_rate(n, FalseAlarmTarget(0.05, "conformal")) == pytest.approx(conformal)
        if n >= 19:
            assert c <= 0.05 < q
    assert new_alarm_rate(30, 0.05, 500) == pytest.approx(new_alarm_rate(30, FalseAlarmTarget(0.05), 500), abs=0.01)
    with pytest.raises(HazardError, match="threshold_rule 'strict'"):
        FalseAlarmTarget(0.05, "strict")


def test_the_false_alarm_budget_names_settings_too_small_for_the_target():
    """30 healthy Knorm validation traces hold 5% under the conformal rule (1/31), 9 healthy SnapKV ones cannot
    (1/10); failing traces and healthy ones without a valid token do not count; the pooled expectation
    weights the settings by the test's healthy traces."""
    from types import SimpleNamespace

    from hazard.predictor.metrics import FalseAlarmTarget, false_alarm_budget

    def tr(press, failing=False, valid=True):
        return SimpleNamespace(press=press, ratio=0.875, catastrophe=failing, valid=np.array([valid]))

    val = [tr("knorm")] * 30 + [tr("knorm", failing=True)] * 5 + [tr("snapkv")] * 9 + [tr("snapkv", valid=False)]
    test = [tr("knorm")] * 10 + [tr("snapkv")] * 30
    b = false_alarm_budget(val, test, FalseAlarmTarget(0.05, "conformal"))
    assert b["val_healthy"] == {"knorm@0.875": 30, "snapkv@0.875": 9} and b["rule"] == "conformal"
    assert b["expected_false_alarm_rate"] == {"knorm@0.875": round(1 / 31, 4), "snapkv@0.875": 0.1}
    assert b["over_target"] == ["snapkv@0.875"]
    assert b["expected_pooled"] == pytest.approx((10 * round(1 / 31, 4) + 30 * 0.1) / 40, abs=1e-4)
    assert false_alarm_budget(val, test, 0.05)["over_target"] == ["knorm@0.875", "snapkv@0.875"]  # 2/31, 1/10


def test_threshold_rules_script_counts_each_settings_healthy_traces(traces_dir, tmp_path, monkeypatch):
    """train/threshold_rules.py: per split and setting, the validation part's healthy traces and each rule's
    expected false-alarm rate on new ones; the conformal one never above the quantile one."""
    import sys

    monkeypatch.syspath_prepend("train")
    import threshold_rules

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"traces": [str(traces_dir)], "val_frac": 0.25, "test_frac": 0.25},
                                   "report": {"target_false_alarm_rate": 0.05}}))
    out = tmp_path / "rules.json"
    monkeypatch.setattr(sys, "argv", ["threshold_rules.py", "--config", str(cfg), "--seeds", "0", "1",
                                      "--out", str(out)])
    threshold_rules.main()
    got = json.loads(out.read_text())
    traces = load_trace_arrays([str(traces_dir)], "live")
    val = split_traces(traces, "prompt", 0.25, 0.25, 1)["val"]
    rows = got["splits"]["1"]["by_setting"]
    for g, r in rows.items():
        n = sum(1 for t in val if not t.catastrophe and t.valid.any() and setting_label(t.press, t.ratio) == g)
        assert r["val_healthy"] == n > 0 and r["conformal"] <= r["quantile"] == pytest.approx((n // 20 + 1) / (n + 1),
                                                                                             abs=1e-4)
    assert set(got["mean_pooled"]) == {"quantile", "conformal"}


def test_metrics_per_task_expose_a_pooled_auroc_made_by_base_rates():
    """Two tasks, each scored by a constant (no ranking within either), one failing more often: the pooled
    AUROC looks good, each task's is 0.5."""
    from hazard.predictor.data import Trace

    def tr(task, onset):
        n = 20
        y = np.zeros((n, 1), np.float32)
        valid = np.ones(n, bool)
        if onset >= 0:
            y[onset - 4:, 0] = 1
            valid[onset:] = False
        return Trace(np.zeros((n, 1)), y, valid, f"{task}{onset}", "p", task, "press", 0.5, "m", onset >= 0, onset,
                     np.zeros(n))

    traces = [tr("a", 10), tr("a", 12), tr("a", -1), tr("b", 10), tr("b", -1), tr("b", -1)]
    scores = [np.full(20, 0.9 if t.task == "a" else 0.1) for t in traces]
    m = evaluate(traces, scores, 0, 0.5)
    assert m["pre_onset_auroc"] > 0.6
    assert set(m["by_task"]) == {"a", "b"}
    assert m["by_task"]["a"]["pre_onset_auroc"] == m["by_task"]["b"]["pre_onset_auroc"] == 0.5
    assert m["by_task"]["a"]["n_catastrophes"] == 2 and m["by_task"]["b"]["false_alarm_rate"] == 0.0


def test_baseline_helpers():
    assert rolling_min(np.array([3.0, 1, 4, 1, 5]), 2).tolist() == [3, 1, 1, 1, 1]
    w = windows(np.arange(6, dtype=np.float32).reshape(3, 2), 2)
    assert w.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [2, 3, 4, 5]]
    assert EntropyRule().candidates[0] == 1
    assert rolling_share(np.array([1.0, 0, 1, 1]), 2).tolist() == [0.5, 0.5, 0.5, 1]


def test_repeat_rule_flags_loops_once_they_cycle_and_picks_its_window_on_validation():
    """Loops whose tokens repeat from 3 tokens after the onset, healthy runs with an isolated repeat now and
    then: averaged over 4+ tokens the rule flags every loop within 16 tokens at no false alarm, where a
    single token (window 1) cannot tell a loop's first repeat from a healthy one's."""
    def tr(i, loop):
        n, x = 60, np.zeros((60, 2), np.float32)
        x[::7, 1] = 1.0  # isolated repeats in every run
        y = np.zeros((n, 1), np.float32)
        onset = 20 if loop else -1
        if loop:
            x[onset + 3:, 1] = 1.0
            y[onset - 8:, 0] = 1
        valid = np.arange(n) < onset if loop else np.ones(n, bool)
        return Trace(x, y, valid, f"t{i}{loop}", f"p{i}", "task", "knorm", 0.875, "m", loop, onset, np.zeros(n),
                     kind="loop" if loop else "none", source="loop" if loop else "none")

    val = [tr(i, i % 2 == 0) for i in range(20)]
    rule = RepeatRule(column=1, candidates=(1, 8)).fit([], val, 0)
    assert rule.n == 8
    m = evaluate(val, rule.scores(val), 0, choose_threshold(val, rule.scores(val), 0.0), probabilistic=False)
    assert m["false_alarm_rate"] == 0.0 and m["detect_rate_within16"] == 1.0 and m["detect_rate_lead1"] == 0.0


def test_cycle_rule_flags_stutters_within_4_tokens_and_stands_beside_a_guard():
    """Loops that stutter from their onset (one token repeated), healthy runs that repeat a token twice ("00"):
    the rule watches period 1 at span 3 and flags every stutter 2 tokens after its onset at no false alarm,
    where the loop label confirms it at 16 tokens. Beside a guard that flags the other catastrophes (here a
    wrong answer it sees coming), the combination keeps both kinds of alarm within the same budget."""
    from hazard.predictor.data import trace_cycles

    rng = np.random.default_rng(0)

    def tr(i, kind):
        n, onset = 60, (20 if kind != "none" else -1)
        tokens = rng.integers(100, 200, size=n)
        tokens[::9] = 7
        tokens[1::9] = 7  # a pair in every run: span 2
        if kind == "loop":
            tokens[onset:] = 5
        y = np.zeros((n, 1), np.float32)
        if onset >= 0:
            y[onset - 8:, 0] = 1
        valid = np.arange(n) < onset if onset >= 0 else np.ones(n, bool)
        return Trace(np.zeros((n, 1), np.float32), y, valid, f"t{i}{kind}", f"p{i}", "task", "knorm", 0.875, "m",
                     kind != "none", onset, np.zeros(n), kind=kind, source=kind, cycle=trace_cycles(tokens))

    val = [tr(i, ("loop", "none", "wrong", "none")[i % 4]) for i in range(40)]
    rule = CycleRule().fit([], val, 0)
    s = rule.scores(val)
    thr = choose_threshold(val, s, 0.05)
    assert rule.period == 1 and 2 < thr <= 3
    m = evaluate(val, s, 0, thr, probabilistic=False)
    assert m["false_alarm_rate"] == 0.0 and m["by_type"]["loop"]["detect_rate_within2"] == 1.0
    assert m["by_type"]["wrong"]["detect_rate_within32"] == 0.0  # no cycle, no alarm
    # a guard that sees the wrong answers coming (score 0.9 from 8 tokens before their onset), not the loops
    guard = [np.where((np.arange(60) >= t.onset - 8) & (t.kind == "wrong"), 0.9, 0.1) for t in val]
    period, floor = rule.fit_combined(val, guard, 0)
    both = rule.combine(val, guard, period, floor)
    m = evaluate(val, both, 0, choose_threshold(val, both, 0.05), probabilistic=False)
    assert period == 1 and floor in (3, 4) and m["false_alarm_rate"] == 0.0  # ties: the longer floor
    assert m["by_type"]["loop"]["detect_rate_within4"] == 1.0 and m["by_type"]["wrong"]["detect_rate_lead8"] == 1.0


def test_report_trains_evaluates_exports_and_guard_streams(traces_dir, tmp_path):
    from hazard.predictor.train import run_report

    cfg = yaml.safe_load(open("configs/train/tiny.yaml"))
    cfg["data"].update(traces=[str(traces_dir)], feature_set="live")  # live has repeat4: the repetition rule too
    cfg["report"].update(run_dir=str(tmp_path / "runs"), out_dir=str(tmp_path / "results"),
                         export=str(tmp_path / "ckpt"), resume=True,  # nothing to resume on the first call
                         leave_one_press_out="all",
                         feature_sets=["logit_config"])  # adds features to the main set's: their signals too
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    metrics = run_report(str(path))
    saved = json.loads((tmp_path / "results" / "metrics.json").read_text())
    for key in ("pre_onset_auroc", "auroc", "detect_rate_lead8", "detect_rate_within4", "false_alarm_rate", "by_type"):
        assert key in saved["model"]["test"]
        for b in ("entropy_rule", "repeat_rule", "cycle_rule", "logistic_regression", "gradient_boosting"):
            assert key in saved["baselines"][b]["test"]
        for b in ("model", "gradient_boosting"):  # each beside the cycle rule
            assert key in saved["or_cycle_rule"][b]["test"]
    assert "pre_onset_auroc" in saved["leave_one_press_out"]["snapkv"]
    # thresholds per press setting beside the pooled one; none where test holds a press validation lacks
    per = saved["model"]["test_per_setting"]
    assert set(per["threshold"]) == set(per["by_press"]) == set(saved["model"]["test"]["by_press"])
    assert "test_per_setting" in saved["baselines"]["gradient_boosting"]
    budget = saved["model"]["test_per_setting"]["false_alarm_budget"]  # what the thresholds promise on new traces
    assert budget["rule"] == "quantile" and sum(budget["val_healthy"].values()) == sum(
        1 for t in split_traces(load_trace_arrays([str(traces_dir)], "live"), "prompt", cfg["data"]["val_frac"],
                                cfg["data"]["test_frac"], cfg["data"]["seed"])["val"]
        if not t.catastrophe and t.valid.any())
    guard = HazardGuard.from_pretrained(tmp_path / "ckpt")  # the exported guard carries them
    assert guard.thresholds == per["threshold"] and guard.threshold == saved["model"]["val"]["threshold"]
    setting = next(k for k in per["threshold"] if k != "none")
    press, ratio = setting.split("@")
    assert guard.threshold_for(press, float(ratio)) == per["threshold"][setting]
    assert guard.threshold_for("a_press_it_never_saw", 0.5) == guard.threshold
    assert set(saved["held_out_task"]) == {"kv_retrieval", "var_tracking"}
    assert set(saved["leave_one_press_out"]) == {"snapkv", "knorm", "streaming_llm"}  # "all": every press
    assert set(saved["split_baselines"]) == {"lopo-snapkv", "lopo-knorm", "lopo-streaming_llm", "task-kv_retrieval",
                                             "task-var_tracking", "features-logit_config"}
    assert "no traces match 'k8*'" in saved["held_out_format"]["k8*"]["skipped"] and saved["complete"]
    assert "pre_onset_auroc" in saved["split_baselines"]["lopo-snapkv"]["gradient_boosting"]
    assert set(saved["architectures"]) == {"tcn", "transformer"} and "logit_config" in saved["ablation"]
    assert set(saved["signals"]) == {*HazardGuard.from_pretrained(tmp_path / "ckpt").feature_names,
                                     "ratio", "kv_fraction", "step_frac"}
    assert all(set(v) == {"trace_auroc", "pre_onset_auroc", "settings"} for v in saved["signals"].values())
    for png in ("pr_curves.png", "lead_times.png", "hazard_timelines.png"):
        assert (tmp_path / "results" / png).stat().st_size > 1000

    # A report stopped by a time limit goes on: the main model and finished studies are kept, not refitted.
    from hazard.predictor.train import _resumable

    stopped = {**saved, "complete": False, "held_out_task": {"kv_retrieval": saved["held_out_task"]["kv_retrieval"]},
               "architectures": {"tcn": saved["architectures"]["tcn"]}}
    (tmp_path / "results" / "metrics.json").write_text(json.dumps(stopped))
    resumed = run_report(str(path))
    assert resumed["model"] == saved["model"] and resumed["held_out_task"]["kv_retrieval"] == saved["held_out_task"][
        "kv_retrieval"]
    assert set(resumed["held_out_task"]) == {"kv_retrieval", "var_tracking"} and resumed["complete"]
    assert set(resumed["architectures"]) == {"tcn", "transformer"}
    assert _resumable(tmp_path / "results", path, {**cfg, "seed_everything": 1}) is None  # another config

    guard = HazardGuard.from_pretrained(tmp_path / "ckpt")
    assert guard.threshold == metrics["model"]["val"]["threshold"]
    guard.check_features(cfg_names := guard.feature_names)
    with pytest.raises(HazardError, match="expects features"):
        guard.check_features(list(reversed(cfg_names)))
    # Streaming, batched with reset, equals the full-sequence forward.
    from hazard.predictor.data import load_trace_arrays as lta

    tr = lta([str(traces_dir)], cfg["data"]["feature_set"])[:2]
    full = [guard.forward_sequence(t.x) for t in tr]
    n = min(len(t.x) for t in tr)
    guard.reset(batch=2)
    for t in range(n):
        p = guard.step(np.stack([tr[0].x[t], tr[1].x[t]])).numpy()
        assert np.allclose(p[0], full[0][t], atol=1e-5) and np.allclose(p[1], full[1][t], atol=1e-5)
    guard.reset(rows=[1])
    p = guard.step(np.stack([tr[0].x[n], tr[1].x[0]])).numpy() if len(tr[0].x) > n else None
    if p is not None:
        assert np.allclose(p[1], full[1][0], atol=1e-5)


def _baselines_report(traces_dir, tmp_path, export: str | None = None) -> tuple[dict, Path]:
    """The tiny report on ``live`` with the main fit and the baselines only, resumable, written to
    ``tmp_path/train.yaml``: (its config, the file)."""
    cfg = yaml.safe_load(open("configs/train/tiny.yaml"))
    cfg["data"].update(traces=[str(traces_dir)], feature_set="live")
    cfg["report"].update(run_dir=str(tmp_path / "runs"), out_dir=str(tmp_path / "results"), export=export,
                         resume=True, architectures=[], feature_sets=[], leave_one_press_out=[], held_out_task=[],
                         held_out_format=[], cross_model=[])
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cfg, path


def test_report_killed_in_its_baselines_resumes_without_refitting_the_main_model(traces_dir, tmp_path, monkeypatch):
    """The sklearn baselines can take longer than the main fit (wide state features): a report killed among
    them keeps the main fit, its guard and the baselines done, and a second call ends as one uninterrupted."""
    import hazard.predictor.train as tr
    from hazard.predictor.baselines import WindowClassifier

    cfg, path = _baselines_report(traces_dir, tmp_path, export=str(tmp_path / "g"))
    fits, real_fit, real_clf_fit = [], tr.fit, WindowClassifier.fit
    monkeypatch.setattr(tr, "fit", lambda *a, **k: (fits.append(a[4]), real_fit(*a, **k))[1])

    def killed_in_gbm(self, *a, **k):
        if self.kind == "gbm":
            raise KeyboardInterrupt  # what a time limit's SIGTERM does to the process, as far as files go
        return real_clf_fit(self, *a, **k)

    monkeypatch.setattr(WindowClassifier, "fit", killed_in_gbm)
    with pytest.raises(KeyboardInterrupt):
        tr.run_report(str(path))
    stopped = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert not stopped["complete"] and fits == ["main"]
    assert set(stopped["baselines"]) == {"entropy_rule", "repeat_rule", "cycle_rule", "logistic_regression"}
    assert HazardGuard.from_pretrained(tmp_path / "g").threshold == stopped["model"]["val"]["threshold"]

    monkeypatch.setattr(WindowClassifier, "fit", real_clf_fit)
    fingerprint = tr.traces_fingerprint
    monkeypatch.setattr(tr, "traces_fingerprint", lambda paths: "0" * 16)  # as if the folder were re-collected
    with pytest.raises(HazardError, match="other traces"):
        tr.run_report(str(path))
    monkeypatch.setattr(tr, "traces_fingerprint", fingerprint)
    resumed = tr.run_report(str(path))
    assert fits == ["main"] and resumed["complete"]  # the main model was not fitted again
    assert resumed["model"] == stopped["model"]
    assert {k: resumed["baselines"][k] for k in stopped["baselines"]} == stopped["baselines"]
    assert "gradient_boosting" in resumed["baselines"] and "repeat4" in resumed["signals"]
    assert set(resumed["or_cycle_rule"]) == {"model", "gradient_boosting"}  # the resumed baseline beside the rule
    assert (tmp_path / "results" / "pr_curves.png").stat().st_size > 1000
    assert not (tmp_path / "results" / "test_scores.npz").exists()  # the plots' input, gone once they are drawn
    # each stage's seconds, the stopped call's kept: what plans a time-limited call on a device machine
    assert list(resumed["stage_seconds"]) == ["main fit, rules and export", "repeat_rule", "logistic_regression",
                                              "gradient_boosting", "signals and plots"]
    assert {k: resumed["stage_seconds"][k] for k in stopped["stage_seconds"]} == stopped["stage_seconds"]

    # the same report in one go: the same baselines (the resumed one scored them on the same split)
    cfg["report"].update(out_dir=str(tmp_path / "once"), run_dir=str(tmp_path / "runs_once"), export=None)
    path.write_text(yaml.safe_dump(cfg))
    once = tr.run_report(str(path))
    assert once["baselines"] == json.loads(json.dumps(resumed["baselines"]))
    assert once["signals"] == resumed["signals"] and once["model"]["test"] == resumed["model"]["test"]
    assert once["or_cycle_rule"] == json.loads(json.dumps(resumed["or_cycle_rule"]))


def test_a_stopped_report_goes_on_in_another_place(traces_dir, tmp_path, monkeypatch):
    """A report stopped on a device machine goes on here: its folder unpacked elsewhere, the traces sent to
    another path, another accelerator. It keeps the finished part (the main model is not fitted again) and
    records the move; a change in what it computes still starts it afresh."""
    import shutil

    import hazard.predictor.train as tr
    from hazard.predictor.baselines import WindowClassifier

    cfg, path = _baselines_report(traces_dir, tmp_path)
    cfg["trainer"]["accelerator"] = "auto"
    path.write_text(yaml.safe_dump(cfg))
    fits, real_fit, real_clf_fit = [], tr.fit, WindowClassifier.fit
    monkeypatch.setattr(tr, "fit", lambda *a, **k: (fits.append(a[4]), real_fit(*a, **k))[1])

    def killed_in_gbm(self, *a, **k):
        if self.kind == "gbm":
            raise KeyboardInterrupt
        return real_clf_fit(self, *a, **k)

    monkeypatch.setattr(WindowClassifier, "fit", killed_in_gbm)
    with pytest.raises(KeyboardInterrupt):
        tr.run_report(str(path))
    stopped = json.loads((tmp_path / "results" / "metrics.json").read_text())
    monkeypatch.setattr(WindowClassifier, "fit", real_clf_fit)

    here = tmp_path / "here"
    shutil.copytree(tmp_path / "results", here / "results")
    shutil.copytree(traces_dir, here / "traces")
    moved = dict(cfg, trainer={**cfg["trainer"], "accelerator": "cpu"},
                 data={**cfg["data"], "traces": [str(here / "traces")]},
                 report={**cfg["report"], "out_dir": str(here / "results"), "run_dir": str(here / "runs")})
    (here / "train.yaml").write_text(yaml.safe_dump(moved))
    resumed = tr.run_report(str(here / "train.yaml"))
    assert fits == ["main"] and resumed["complete"] and resumed["model"] == stopped["model"]
    [move] = resumed["moves"]
    assert move["hardware"] == "CPU" and "main fit, rules and export" in move["stages_done"]
    assert set(move["moved"]) == {"path", "data.traces", "trainer.accelerator", "report.run_dir", "report.out_dir"}
    assert move["moved"]["trainer.accelerator"] == ["auto", "cpu"]

    changed = dict(moved, report={**moved["report"], "out_dir": str(tmp_path / "results"), "window": 2})
    (here / "other.yaml").write_text(yaml.safe_dump(changed))
    tr.run_report(str(here / "other.yaml"))
    assert fits == ["main", "main"]  # another window is another report: it starts afresh


def test_guard_checkpoint_errors(tmp_path, traces_dir):
    with pytest.raises(HazardError, match="missing config.json"):
        HazardGuard.from_pretrained(tmp_path)
    from hazard.predictor.train import fit

    model, dm = fit({"traces": [str(traces_dir)], "feature_set": "logit", "val_frac": 0.25, "test_frac": 0.25},
                    {"net": "gru", "hidden": 8, "layers": 1}, {"max_epochs": 1, "accelerator": "cpu"},
                    tmp_path / "runs", "x", seed=0)
    from hazard.guard import export_guard

    out = export_guard(model, tmp_path / "g", 0.5, 16, {})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["signals_version"] == SIGNALS_VERSION == 1 and cfg["schema_version"] == SCHEMA_VERSION
    cfg["signals_version"] = 999
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HazardError, match="signals v999"):
        HazardGuard.from_pretrained(out)
    del cfg["signals_version"]  # a guard exported before signals_version: trace schema v1 means signals v1
    cfg["schema_version"] = 1
    (out / "config.json").write_text(json.dumps(cfg))
    HazardGuard.from_pretrained(out)
    cfg["net_kwargs"]["hidden"] = 9
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HazardError, match="weights do not fit"):
        HazardGuard.from_pretrained(out)


def test_fit_records_its_offline_wandb_run(tmp_path, traces_dir, monkeypatch):
    """A real W&B run in offline mode: its id, config and final metrics are recorded for committing."""
    from hazard.predictor.train import fit

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = []
    fit({"traces": [str(traces_dir)], "feature_set": "logit", "val_frac": 0.25, "test_frac": 0.25},
        {"net": "gru", "hidden": 8, "layers": 1}, {"max_epochs": 2, "accelerator": "cpu"}, tmp_path / "runs", "w",
        seed=0, runs=runs)
    (rec,) = runs
    assert rec["name"] == "w" and rec["id"] and "val/loss" in rec["summary"]
    assert rec["config"]["model"]["hidden"] == 8
    assert list((tmp_path / "runs" / "wandb").glob(f"offline-run-*-{rec['id']}"))


@pytest.mark.parametrize("net", list(NETS))
def test_batched_prediction_equals_one_trace_at_a_time(net):
    from hazard.predictor.module import HazardModule

    torch.manual_seed(0)
    spec = {"names": ["a", "b", "c"], "mean": [0.0] * 3, "std": [1.0] * 3, "horizons": [1, 16], "feature_set": "x"}
    m = HazardModule(net=net, hidden=8, layers=2, dropout=0.0, feature_spec=spec)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (5, 17, 2, 30, 9)]
    one = m.predict_traces(xs, batch=1)
    together = m.predict_traces(xs, batch=3)
    for a, b, x in zip(one, together, xs):
        assert a.shape == (len(x), 2) and np.allclose(a, b, atol=1e-5)


def test_onsets_from_a_point_of_no_return_map(traces_dir, tmp_path):
    """data.onsets_from relabels catastrophes at the given onsets; catastrophes without one are left out."""
    from hazard.labels import HORIZONS
    from hazard.predictor.data import with_onsets

    traces = load_trace_arrays([str(traces_dir)], "logit")
    bad = [t for t in traces if t.catastrophe and len(t.x) > 6]
    assert bad
    if len(bad) == 1:  # the tiny collection places few onsets (schema 7 has no "overrun"): a second one
        bad.append(dataclasses.replace(bad[0], trace_id=bad[0].trace_id + "/copy", prompt_id="copy"))
        traces.append(bad[1])
    onsets = {bad[0].trace_id: 3, bad[1].trace_id: -1}  # -1: no restore saved it
    out = with_onsets(traces, onsets)
    kept = {t.trace_id: t for t in out}
    assert bad[1].trace_id not in kept and all(t.trace_id in kept for t in bad[:1])
    assert sum(t.catastrophe for t in out) == 1 and len(out) == len(traces) - sum(t.catastrophe for t in traces) + 1
    t = kept[bad[0].trace_id]
    h4 = list(HORIZONS).index(4)
    assert t.onset == 3 and t.valid.tolist() == [True] * 3 + [False] * (len(t.x) - 3)
    assert t.y[:, h4].tolist() == [1.0] * len(t.x)  # onset 3 is within 4 tokens of every earlier token
    path = tmp_path / "ponr.json"
    path.write_text(json.dumps(onsets))
    dm = HazardDataModule([str(traces_dir)], "logit", val_frac=0.25, test_frac=0.25, onsets_from=str(path))
    assert sum(t.catastrophe for part in dm.parts.values() for t in part) == 1


def test_a_glob_in_data_traces_stands_for_every_collection_it_matches(traces_dir, tmp_path):
    import shutil

    from hazard.predictor.data import expand_trace_paths

    first, part = tmp_path / "camp", tmp_path / "camp_p1"  # a collection made in two parts
    shutil.copytree(traces_dir, first)
    shutil.copytree(traces_dir, part)
    (tmp_path / "camp_notes.txt").write_text("not a folder")
    pattern = str(tmp_path / "camp*")
    assert expand_trace_paths([pattern]) == [str(first), str(part)]
    both = load_trace_arrays([pattern], "logit")
    assert len(both) == 2 * len(load_trace_arrays([str(traces_dir)], "logit"))
    with pytest.raises(HazardError, match="no collection folder matches"):
        expand_trace_paths([str(tmp_path / "nothing*")])


def test_ddp_on_two_processes_scores_the_whole_validation_set(tmp_path, traces_dir):
    """Lightning DDP (2 CPU processes, gloo, spawned): each rank validates half the traces, yet the
    validation AUROC is computed over the whole set (gathered across ranks): the tokens it scored are every
    masked validation token, as in one process."""
    import csv

    from hazard.predictor.train import fit

    data = {"traces": [str(traces_dir)], "feature_set": "logit", "val_frac": 0.25, "test_frac": 0.25, "batch_size": 4}
    scored = {}
    for name, extra in (("one", {}), ("ddp", {"devices": 2, "strategy": "ddp_spawn"})):
        model, dm = fit(data, {"net": "gru", "hidden": 8, "layers": 1},
                        {"max_epochs": 1, "accelerator": "cpu", **extra}, tmp_path, name, seed=0)
        rows = list(csv.DictReader(open(next((tmp_path / name).glob("version_*/metrics.csv")))))
        scored[name] = [float(r["val/scored_tokens"]) for r in rows if r.get("val/scored_tokens")]
    assert len(dm.parts["val"]) % 2 == 0  # no trace padded in by the distributed sampler
    whole = sum(int(mask.sum()) for _, _, mask in dm.val_dataloader())
    assert scored["one"][-1] == scored["ddp"][-1] == whole > 0
    # the main process gets the best weights back from the spawned workers (a report goes on with them)
    (best,) = (tmp_path / "ddp" / "ckpt").glob("best-*.ckpt")
    saved = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_report_takes_overrides_and_the_scaling_record_reads_it(tmp_path, traces_dir):
    """`hazard train report --config ... --a.b value`, as the other verbs; collect/scaling.py reads the main
    fit's seconds and epochs back, and compares two collections trace by trace."""
    import shutil
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hazard.cli import main

    sys.path.insert(0, "collect")
    from scaling import compare_collections, training_entry

    out = tmp_path / "res"
    assert main(["train", "report", "--config", "configs/train/tiny.yaml", "--data.traces", f"[{traces_dir}]",
                 "--trainer.max_epochs", "1", "--report.run_dir", str(tmp_path / "runs"), "--report.out_dir", str(out),
                 "--report.export", str(tmp_path / "guard"),  # not the committed checkpoints/tiny-gru
                 "--report.learning_curve", "[2, 100000]",  # the second is beyond the train part: skipped
                 *(x for k in ("architectures", "feature_sets", "leave_one_press_out", "held_out_task",
                               "held_out_format") for x in (f"--report.{k}", "[]"))]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the learning-curve point: 2 train prompts, scored on the main fit's test traces, with its own baseline
    point = metrics["learning_curve"]["2"]
    assert point["n_traces"] == metrics["model"]["test"]["n_traces"] and "pre_onset_auroc" in point
    assert "gradient_boosting" in metrics["split_baselines"]["train-2"]
    from hazard.predictor.train import format_report

    assert "train prompts 2" in format_report(metrics)
    assert "the train part has" in metrics["learning_curve"]["100000"]["skipped"] and metrics["complete"]
    assert f"{'train prompts 100000':32} skipped" in format_report(metrics)
    t = training_entry(out)
    assert t["epochs"] == 1 and t["fit_seconds"] > 0 and t["devices"] == 1 and 0 <= t["test_auroc"] <= 1
    same = compare_collections(traces_dir, traces_dir)
    assert same["rows_identical"] == same["rows_compared"] > 0 and same["speedup"] == 1.0
    other = tmp_path / "other"
    shutil.copytree(traces_dir, other)
    shard = sorted((other / "data").glob("*.parquet"))[0]
    table = pq.read_table(shard).to_pylist()
    table[0]["tokens"] = table[0]["tokens"][:1] + [0]
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)
    diff = compare_collections(traces_dir, other)
    assert diff["rows_differing"] == 1 and diff["median_first_difference"] == 1
    shard.unlink()
    with pytest.raises(SystemExit, match="different traces"):
        compare_collections(traces_dir, other)


def test_a_state_guard_records_where_its_traces_read_the_state(tmp_path):
    """A feature set that reads the model's state puts the collections' ``state_layer`` and ``state_dim`` in the
    feature spec (so the exported guard tells the engine what to read live); collections that read it at
    different layers are refused with one line."""
    from hazard.cli import main

    tiny = ["collect", "--config", "configs/collect/tiny.yaml", "--max_new_tokens", "24",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 8, n_pairs: 6}}]"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*tiny, "--output_dir", str(a), "--state_layer", "1"]) == 0
    assert main([*tiny, "--output_dir", str(b), "--state_layer", "-1"]) == 0
    spec = HazardDataModule([str(a)], "live_state", val_frac=0.25, test_frac=0.25).feature_spec
    assert spec["state"] == {"layer": 1, "dim": 64} and spec["names"][-1] == "state63"
    assert "state" not in HazardDataModule([str(a)], "live", val_frac=0.25, test_frac=0.25).feature_spec
    with pytest.raises(HazardError, match="different"):
        HazardDataModule([str(a), str(b)], "live_state", val_frac=0.25, test_frac=0.25)


def test_a_collections_fingerprint_is_its_summary_not_its_provenance(tmp_path):
    """Two collections that hold the same traces (counts, per-setting rates, onsets) have one fingerprint
    whatever their git sha, card speed or time; any change in what they hold changes it."""
    from hazard.predictor.data import traces_fingerprint

    summary = {"complete": True, "n_traces": 8, "n_generated_tokens": 900, "git_sha": "a" * 40,
               "generated_tokens_per_s": 5891.9, "configs": [{"press": "knorm", "ratio": 0.875, "loop_rate": 0.3}],
               "onsets": {"loop": 2}}
    a, b = tmp_path / "a", tmp_path / "b"
    for d, extra in ((a, {}), (b, {"git_sha": "b" * 40, "generated_tokens_per_s": 5840.0})):
        (d / "data").mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({**summary, **extra}))
    assert traces_fingerprint([str(a)]) == traces_fingerprint([str(b)])
    (b / "summary.json").write_text(json.dumps({**summary, "configs": [{"press": "knorm", "ratio": 0.875,
                                                                          "loop_rate": 0.31}]}))
    assert traces_fingerprint([str(a)]) != traces_fingerprint([str(b)])


def test_window_trees_compute_the_gradient_boosting_baselines_probabilities():
    """``WindowTrees`` (the trees as tensors) gives scikit-learn's probabilities on flattened windows (missing
    values included), over a whole sequence and streamed token by token with per-row resets."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from hazard.predictor.trees import WindowTrees

    rng = np.random.default_rng(0)
    f, w = 5, 4
    x = rng.normal(size=(3000, w * f)).astype(np.float32)
    x[rng.random(x.shape) < 0.01] = np.nan
    y = (np.nansum(x[:, -3:], 1) + rng.normal(size=3000) > 0.5).astype(int)
    gbm = HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(x, y)
    net = WindowTrees.from_sklearn(gbm, f, 3, w)
    assert np.allclose(torch.sigmoid(net.logit(torch.from_numpy(x))).numpy(), gbm.predict_proba(x)[:, 1], atol=1e-6)

    seqs = rng.normal(size=(2, 20, f)).astype(np.float32)
    ref = np.stack([gbm.predict_proba(windows(s, w))[:, 1] for s in seqs])
    full = torch.sigmoid(net(torch.from_numpy(seqs))).numpy()
    assert full.shape == (2, 20, 3) and np.allclose(full, ref[..., None], atol=1e-6)
    state, out = net.init_state(2), []
    for t in range(20):
        if t == 10:  # row 1 starts a new sequence: its window empties
            state = net.reset_rows(state, torch.tensor([1]))
        logits, state = net.step(torch.from_numpy(seqs[:, t]), state)
        out.append(torch.sigmoid(logits[:, 0]).numpy())
    out = np.stack(out, 1)
    assert np.allclose(out[0], ref[0], atol=1e-6)
    assert np.allclose(out[1, 10:], gbm.predict_proba(windows(seqs[1, 10:], w))[:, 1], atol=1e-6)


def test_report_exports_the_gradient_boosting_baseline_as_a_guard(traces_dir, tmp_path, monkeypatch):
    """``report.export_gbm``: the baseline's trees as a guard checkpoint whose probabilities on the test traces
    are the baseline's test scores, with its own thresholds. Added to a finished report's config, the export
    does not make the report start afresh (it says where results go, not what they are)."""
    import hazard.predictor.train as tr
    from hazard.predictor.baselines import WindowClassifier

    cfg, path = _baselines_report(traces_dir, tmp_path)
    first = tr.run_report(str(path))
    cfg["report"]["export_gbm"] = str(tmp_path / "g")
    path.write_text(yaml.safe_dump(cfg))
    assert tr.run_report(str(path))["baselines"] == first["baselines"] and not (tmp_path / "g").exists()
    assert json.loads((tmp_path / "results" / "metrics.json").read_text())["config"]["report"]["export_gbm"]

    fitted, real_fit = [], WindowClassifier.fit
    monkeypatch.setattr(WindowClassifier, "fit", lambda self, *a, **k: fitted.append(real_fit(self, *a, **k))
                        or fitted[-1])
    cfg["report"]["out_dir"] = str(tmp_path / "again")
    path.write_text(yaml.safe_dump(cfg))
    gbm_entry = tr.run_report(str(path))["baselines"]["gradient_boosting"]
    guard = HazardGuard.from_pretrained(tmp_path / "g")
    assert guard.config["net"] == "window_trees"
    assert guard.threshold == gbm_entry["val"]["threshold"]
    assert guard.thresholds == gbm_entry["test_per_setting"]["threshold"]
    gbm = next(c for c in fitted if c.kind == "gbm")
    test = HazardDataModule(**cfg["data"]).parts["test"]
    got = [guard.forward_sequence(t.x)[:, guard.horizons.index(guard.eval_horizon)] for t in test]
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, gbm.scores(test))) < 1e-4


def _boosting_killed_at(n: int, calls: list):
    """A ``HistGradientBoostingClassifier.fit`` that records each call's ``max_iter`` and raises
    KeyboardInterrupt (what a time limit's kill does, as far as files go) on the n-th call."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    real = HistGradientBoostingClassifier.fit

    def fit(self, *a, **k):
        calls.append(self.max_iter)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    return fit


def test_gradient_boosting_killed_mid_fit_resumes_to_the_same_model(tmp_path, monkeypatch):
    """Boosting saved every few iterations (``_boost_in_chunks``): killed in its third chunk, a second call goes
    on from the saved model and ends with the model an uninterrupted chunked fit gives; the file goes at the
    end. A saved fit of other data is not resumed. Through the report it is opt-in (``HAZARD_GBM_CHUNK``)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from hazard.predictor.baselines import _boost_in_chunks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 12)).astype(np.float32)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(x[:, :4].sum(1) * 0.5 - 2)))).astype(int)
    make = lambda: HistGradientBoostingClassifier(max_iter=200, class_weight="balanced", random_state=0)  # noqa: E731
    one = _boost_in_chunks(make(), x, y, tmp_path / "uninterrupted.pkl", chunk=10)
    assert 20 < one.n_iter_ < 200  # early stopping ends it inside a chunk, after a few chunks
    assert not (tmp_path / "uninterrupted.pkl").exists() and not one.warm_start

    path, real, calls = tmp_path / "gbm.partial.pkl", HistGradientBoostingClassifier.fit, []
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", _boosting_killed_at(3, calls))
    with pytest.raises(KeyboardInterrupt):
        _boost_in_chunks(make(), x, y, path, chunk=10)
    assert calls == [10, 20, 30] and path.is_file()
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", real)
    resumed = _boost_in_chunks(make(), x, y, path, chunk=10)
    assert resumed.n_iter_ == one.n_iter_ and not path.exists()
    assert np.array_equal(resumed.predict_proba(x), one.predict_proba(x))

    # a saved fit of other data starts over (and still ends as one fit of this data)
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", _boosting_killed_at(3, []))
    with pytest.raises(KeyboardInterrupt):
        _boost_in_chunks(make(), x[::-1].copy(), y[::-1].copy(), path, chunk=10)
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", real)
    again = _boost_in_chunks(make(), x, y, path, chunk=10)
    assert np.array_equal(again.predict_proba(x), one.predict_proba(x))


def test_boosting_chunk_is_opt_in_and_checked(monkeypatch):
    from hazard.predictor.train import boosting_chunk

    monkeypatch.delenv("HAZARD_GBM_CHUNK", raising=False)
    assert boosting_chunk() is None
    monkeypatch.setenv("HAZARD_GBM_CHUNK", "20")
    assert boosting_chunk() == 20
    monkeypatch.setenv("HAZARD_GBM_CHUNK", "ten")
    with pytest.raises(HazardError, match="HAZARD_GBM_CHUNK"):
        boosting_chunk()


def test_report_killed_mid_boosting_resumes_from_the_saved_chunks(traces_dir, tmp_path, monkeypatch):
    """With ``HAZARD_GBM_CHUNK`` the report's gradient boosting is saved in ``out_dir`` as it goes: killed in
    its third chunk, the next call goes on from there and scores what an uninterrupted chunked report scores."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    import hazard.predictor.train as tr

    monkeypatch.setenv("HAZARD_GBM_CHUNK", "40")
    cfg, path = _baselines_report(traces_dir, tmp_path)
    real, calls = HistGradientBoostingClassifier.fit, []
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", _boosting_killed_at(3, calls))
    with pytest.raises(KeyboardInterrupt):
        tr.run_report(str(path))
    assert calls == [40, 80, 120] and (tmp_path / "results" / "gradient_boosting.partial.pkl").is_file()
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", real)
    resumed = tr.run_report(str(path))["baselines"]["gradient_boosting"]
    assert resumed["boosting_chunk"] == 40 and not list((tmp_path / "results").glob("*.partial.pkl"))

    cfg["report"].update(out_dir=str(tmp_path / "once"), run_dir=str(tmp_path / "runs_once"))
    path.write_text(yaml.safe_dump(cfg))
    assert tr.run_report(str(path))["baselines"]["gradient_boosting"] == resumed


def test_fast_weighted_binning_gives_scikit_learns_edges_and_model():
    """``fast_weighted_binning``: the class-weighted edges from one weighted-percentile call equal the installed
    scikit-learn's own (NaNs, zero weights, ties, few distinct values), so the boosted model is the same one;
    the context puts scikit-learn's function back, also on an error."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.ensemble._hist_gradient_boosting import binning

    from hazard.predictor.baselines import _SKLEARN_THRESHOLDS, _weighted_thresholds, fast_weighted_binning

    rng = np.random.default_rng(0)
    for n, decimals in ((5000, None), (3000, 1), (400, None), (60, None)):
        col = rng.normal(size=n)
        col = col if decimals is None else np.round(col, decimals)  # ties; under 255 distinct values
        col[rng.random(n) < 0.05] = np.nan
        weight = np.where(rng.random(n) < 0.1, 5.0, 0.55)
        weight[rng.random(n) < 0.02] = 0.0
        for w in (weight, None):
            want = _SKLEARN_THRESHOLDS(col, 255, sample_weight=w)
            assert np.array_equal(_weighted_thresholds(col, 255, sample_weight=w), want)
    x = rng.normal(size=(6000, 8))
    y = (x[:, 0] + rng.normal(size=6000) > 1.5).astype(int)
    make = lambda: HistGradientBoostingClassifier(max_iter=15, class_weight="balanced", random_state=0)  # noqa: E731
    plain = make().fit(x, y)
    with fast_weighted_binning():
        assert binning._find_binning_thresholds is _weighted_thresholds
        fast = make().fit(x, y)
    assert binning._find_binning_thresholds is _SKLEARN_THRESHOLDS
    assert np.array_equal(fast.predict_proba(x), plain.predict_proba(x))
    with pytest.raises(RuntimeError), fast_weighted_binning():
        raise RuntimeError
    assert binning._find_binning_thresholds is _SKLEARN_THRESHOLDS


def test_a_subset_feature_set_is_sliced_from_the_loaded_one(traces_dir, monkeypatch):
    """A report's ablations read feature sets contained in its main one: their traces come from the loaded
    set's columns, equal to a fresh read of the folders, which is not done again."""
    import hazard.predictor.data as data

    data._LOADED.clear()
    full = load_trace_arrays([str(traces_dir)], "live_cycle")
    reads = []
    real = data._read_trace_arrays
    monkeypatch.setattr(data, "_read_trace_arrays", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    sliced = load_trace_arrays([str(traces_dir)], "live")
    assert reads == []  # taken from live_cycle's columns
    data._LOADED.clear()
    fresh = load_trace_arrays([str(traces_dir)], "live")
    assert reads == ["live"] and len(sliced) == len(fresh) == len(full)
    for a, b in zip(sliced, fresh):
        assert a.trace_id == b.trace_id and a.x.dtype == b.x.dtype and np.array_equal(a.x, b.x)
        assert np.array_equal(a.y, b.y) and a.onset == b.onset
    load_trace_arrays([str(traces_dir)], "live_cycle")  # not contained in live: read
    assert reads == ["live", "live_cycle"]
    data._LOADED.clear()
