import random

import numpy as np
import pytest
import torch

from hazard.compression import PressSpec, build_press
from hazard.control import PolicyController, build_policy
from hazard.control.policies import RowState, RowStates
from hazard.engine import Controller, Engine
from hazard.errors import HazardError


def _prompts(n=3, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(250) for _ in range(rng.randrange(40, 70))] for _ in range(n)]


@pytest.fixture
def engine(model64):
    return Engine(model64, [256], max_new_tokens=20, batch_size=3, probe_layers=(0, -1))


class Scripted(Controller):
    """Restore and roll back to the prompt end once each row has generated ``at`` tokens."""

    def __init__(self, at):
        self.at, self.done = at, set()

    def observe(self, slots, rows, packets, steps, extra=None):
        out = {}
        for r, t in zip(rows.tolist(), steps.tolist()):
            if r not in self.done and t == self.at:
                self.done.add(r)
                out[r] = [("restore",), ("rollback", 10**6)]
        return out


@pytest.mark.parametrize("on_device", [False, True], ids=["prompts-on-host", "prompts-on-device"])
def test_restore_and_rollback_to_prompt_end_reproduce_the_uncompressed_run(engine, on_device, monkeypatch):
    monkeypatch.setattr(Engine, "_fits_on_device", lambda self, nbytes: on_device)
    engine.store = None  # a fresh store, with the whole prompts where on_device says
    prompts = _prompts(3, seed=1)
    full = engine.generate(prompts, None)
    spec = PressSpec("knorm", 0.75)
    static = engine.generate(prompts, build_press(spec))
    assert any(a.tokens != b.tokens for a, b in zip(full, static))  # compression changed something
    at = max(2, min(6, *(len(s.tokens) for s in static)))  # every row must still be generating then
    healed = engine.generate(prompts, build_press(spec), controller=Scripted(at=at))
    for f, h in zip(full, healed):
        assert h.tokens == f.tokens
        assert h.control["rollback_tokens"] == at - 1
        assert [e[1] for e in h.control["events"]] == ["restore", "rollback"]
    assert engine.store.full_on_device is on_device


def test_memory_accounting_follows_the_actions(engine, model64):
    ids = _prompts(1, seed=2)[0]
    L = len(ids)

    class RestoreThenRecompress(Controller):
        def observe(self, slots, rows, packets, steps, extra=None):
            t = int(steps[0])
            return {rows[0]: [("restore",)]} if t == 4 else {rows[0]: [("recompress",)]} if t == 9 else {}

    g = engine.generate([ids], build_press(PressSpec("streaming_llm", 0.5)), controller=RestoreThenRecompress())[0]
    kept = L // 2
    expected = [kept + t if t < 4 or t >= 9 else L + t for t in range(len(g.tokens))]
    assert g.kv_tokens.tolist() == expected
    cfg = model64.config
    per_token = cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2 * 8
    assert g.bytes_per_token == per_token and (g.kv_bytes == g.kv_tokens * per_token).all()
    assert g.control["offload_bytes"] == L * per_token  # the whole prompt is kept off the GPU
    assert g.control["relaxed_steps"] == 5


def test_threshold_policy_hysteresis_and_cooldown():
    p = build_policy("hazard", trigger=0.5, release=0.3, sustain=2, calm_tokens=3, cooldown=2, rollback=4)
    st = RowState()
    xs = [0.6, 0.2, 0.6, 0.7, 0.4, 0.2, 0.2, 0.2, 0.9, 0.9, 0.9, 0.9]
    acts = [p.decide(x, t, st) for t, x in enumerate(xs)]
    assert acts[3] == [("restore",), ("rollback", 4)]  # two in a row at or above 0.5
    assert all(a == [] for a in acts[:3])
    assert acts[4] == [] and acts[7] == [("recompress",)]  # 0.4 is not calm (>= off); three calm tokens
    assert acts[8] == [] and acts[9] == []  # cool-down of 2 tokens, then 2 sustained tokens needed
    assert acts[10] == [("restore",), ("rollback", 4)] and st.triggers == 2


@pytest.mark.parametrize("kw", [dict(trigger=0.5, release=0.3, sustain=2, calm_tokens=3, cooldown=2, rollback=4),
                                dict(trigger=0.6, sustain=1, calm_tokens=0, cooldown=0)])
def test_threshold_policy_rows_at_once_equal_one_at_a_time(kw):
    """``decide_rows`` (the controller's vectorised path) == ``decide`` per row, on random signals for 40
    rows, a random subset stepping each time."""
    p = build_policy("hazard", **kw)
    rng = np.random.default_rng(0)
    n = 40
    one, many, some = [RowState() for _ in range(n)], RowStates.zeros(n), RowStates.zeros(n)
    for t in range(60):
        idx = np.flatnonzero(rng.random(n) < 0.8)
        x = rng.random(len(idx))
        got = p.decide_rows(x, many, idx)
        want = {j: a for j, (i, xi) in enumerate(zip(idx, x)) if (a := p.decide(float(xi), t, one[i]))}
        assert got == want, t
        # The controller steps only the rows a signal can change: the same actions.
        cand = np.flatnonzero(some.busy(idx) | (x >= p.trigger))
        assert {int(cand[j]): a for j, a in p.decide_rows(x[cand], some, idx[cand]).items()} == want, t
        for f in ("relaxed", "above", "calm", "cooldown", "triggers"):
            assert np.array_equal(getattr(many, f), [getattr(s, f) for s in one]), (t, f)
        for f in ("relaxed", "above", "cooldown", "triggers"):
            assert np.array_equal(getattr(some, f), [getattr(s, f) for s in one]), (t, f)


def test_oracle_random_static_policies():
    st = RowState()
    oracle = build_policy("oracle", lead=3)
    assert [oracle.decide(0, t, st, onset=10) for t in range(8)][7] == [("restore",)]
    assert build_policy("static").decide(99.0, 0, RowState()) == []
    never, always = build_policy("random", rate=0.0), build_policy("random", rate=1.0)
    assert all(never.decide(0, t, RowState()) == [] for t in range(50))
    assert always.decide(0, 0, RowState()) == [("restore",)]
    with pytest.raises(HazardError, match="unknown policy"):
        build_policy("pid")


class BrokenGuard:
    feature_names = ["entropy", "top1_prob"]
    horizons = [8, 16]
    eval_horizon = 16

    def __init__(self, mode):
        self.mode = mode

    def reset(self, rows=None, batch=None):
        pass

    def step(self, x, active=None):
        if self.mode == "raise":
            raise RuntimeError("guard crashed")
        return torch.full((len(x), 2), float("nan"))


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_a_failing_guard_never_stops_generation(engine, mode):
    prompts = _prompts(2, seed=3)
    ctl = PolicyController(build_policy("hazard", trigger=0.5), guard=BrokenGuard(mode), ratio=0.75, max_new_tokens=20)
    gens = engine.generate(prompts, build_press(PressSpec("knorm", 0.75)), controller=ctl)
    assert all(len(g.tokens) >= 1 for g in gens)
    assert ctl.guard_failures > 0
    assert all(g.control["events"][0][1] == "restore" and g.control["relaxed_steps"] > 0 for g in gens)


def test_controller_rejects_decode_presses(engine):
    with pytest.raises(HazardError, match="prefill compression"):
        engine.generate(_prompts(1), build_press(PressSpec("decode_knorm", 0.5)), controller=Scripted(at=2))


def test_a_guard_must_read_what_the_live_loop_gives():
    from hazard.control.controller import check_live

    check_live(["entropy", "repeat4", "ratio", "kv_fraction"])
    with pytest.raises(HazardError, match="history"):
        check_live(["roll8_mean:entropy"])
    with pytest.raises(HazardError, match="verify window"):
        check_live(["entropy", "verify_kl"])
    with pytest.raises(HazardError, match="question positions"):  # the prefill keeps: only with the positions
        check_live(["entropy", "question_kept"])
    check_live(["entropy", "question_kept"], prefill=True)


def test_features_from_packets_match_trace_features():
    from hazard.control import features_from_packets
    from hazard.predictor.features import trace_features
    from hazard.signals import SIGNALS

    rng = np.random.default_rng(0)
    n = 6
    row = {name: rng.random(n).astype(np.float32) for name in SIGNALS}
    row.update(n_tokens=n, ratio=0.5, prompt_len=40, max_new_tokens=64, trace_id="x",
               kv_tokens=np.arange(20, 20 + n))
    row["cache_len"] = row["kv_tokens"].astype(np.float32)
    from hazard.predictor.features import FEATURE_SETS

    names = FEATURE_SETS["live"]  # every signal a live guard may read, repeat4 and lost_mass_ub included
    packets = np.concatenate([np.zeros((n, 1)), np.stack([row[s] for s in SIGNALS], 1)], 1)
    got = features_from_packets(list(names), packets, 0.5, np.full(n, 40), np.arange(n), 64)
    assert np.allclose(got, trace_features(row, names))
    on_device = features_from_packets(list(names), torch.from_numpy(packets).float(), 0.5,
                                      torch.full((n,), 40.0), torch.arange(n).float(), 64)
    assert np.allclose(on_device.numpy(), got, atol=1e-6)


def test_guard_step_leaves_inactive_rows_alone():
    """Admitting a row steps its guard state alone: the other rows' states, and so their next outputs,
    are those of a guard that never saw that step."""
    from hazard.guard import HazardGuard

    guard = HazardGuard.from_pretrained("checkpoints/qwen2.5-coder-1.5b-gru")
    ref = HazardGuard.from_pretrained("checkpoints/qwen2.5-coder-1.5b-gru")
    x = torch.randn(3, len(guard.feature_names))
    guard.step(x)
    ref.step(x)
    guard.step(torch.randn(3, x.shape[1]), torch.tensor([False, True, False]))
    a, b = guard.step(x), ref.step(x)
    assert torch.allclose(a[[0, 2]], b[[0, 2]]) and not torch.allclose(a[1], b[1])


def test_evaluate_end_to_end_with_an_exported_guard(tmp_path, monkeypatch):
    """collect -> train report (export) -> evaluate, on the tiny model: the closed-loop JSON has every row."""
    import json

    import yaml

    from hazard.cli import main

    traces = tmp_path / "traces"
    assert main(["collect", "--config", "configs/collect/tiny.yaml", "--output_dir", str(traces),
                 "--model.dtype", "float64",
                 "--tasks", "[{name: kv_retrieval, options: {n_prompts: 12, n_pairs: 6}}]",
                 "--presses", "[{name: knorm, ratio: 0.75}, {name: streaming_llm, ratio: 0.75}]"]) == 0
    cfg = yaml.safe_load(open("configs/train/tiny.yaml"))
    cfg["data"].update(traces=[str(traces)])
    cfg["report"] = {"target_false_alarm_rate": 0.2, "patience": 2, "run_dir": str(tmp_path / "runs"),
                     "out_dir": str(tmp_path / "res"), "export": str(tmp_path / "guard")}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "report", "--config", str(tmp_path / "train.yaml")]) == 0
    out = tmp_path / "closed_loop.json"
    args = ["evaluate", "--output", str(out), "--guard", str(tmp_path / "guard"), "--model.tiny", "qwen2",
            "--model.dtype", "float64", "--model.device", "cpu", "--max_new_tokens", "24",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 4, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]",
            "--policy_options", "{hazard: {trigger: 0.0, rollback: 2}, oracle: {lead: 4}}"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert not (tmp_path / "closed_loop.parts").exists()

    # Killed during its fourth run, an evaluation resumes from the three saved runs and ends the same.
    from hazard.engine import Engine

    generate, calls = Engine.generate, []

    def dies_on_fourth(self, *a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return generate(self, *a, **kw)

    monkeypatch.setattr(Engine, "generate", dies_on_fourth)
    out.unlink()
    with pytest.raises(RuntimeError):
        main(args)
    assert len(list((tmp_path / "closed_loop.parts").glob("*__*.json"))) == 3 and not out.exists()
    assert main([*args, "--max_new_tokens", "20"]) == 2  # saved runs of another config are not mixed in
    calls.clear()
    monkeypatch.setattr(Engine, "generate", lambda self, *a, **kw: (calls.append(1), generate(self, *a, **kw))[1])
    assert main(args) == 0 and len(calls) == 7  # full, static, hazard were saved; the other seven run
    calls.clear()

    def timeless(rows):
        return [{k: v for k, v in r.items() if k not in ("seconds", "overhead", "controller_ms_per_step",
                                                         "static_ms_per_token")} for r in rows]

    assert timeless(json.loads(out.read_text())["rows"]) == timeless(res["rows"])
    assert [r["policy"] for r in res["rows"]] == ["static", "full", "hazard", "entropy_rule", "random", "oracle",
                                                "detect_rewind", "digest_recall", "verify", "answer_check"]
    keys = {"task", "model", "base_press", "base_ratio", "policy", "n", "accuracy", "catastrophe_rate",
            "recovered_fraction", "mean_kv_fraction", "peak_kv_fraction", "false_trigger_rate", "overhead"}
    assert all(keys <= r.keys() for r in res["rows"])
    by = {r["policy"]: r for r in res["rows"]}
    assert by["full"]["mean_kv_fraction"] == 1.0 and by["static"]["mean_kv_fraction"] < 0.5
    # A guard threshold of 0 fires at once: the prompt cache is restored, so the KV held rises.
    assert by["hazard"]["trigger_rate"] == 1.0 and by["hazard"]["mean_kv_fraction"] > by["static"]["mean_kv_fraction"]
    assert out.with_suffix(".png").stat().st_size > 1000
    fr = res["frontiers"]["kv_retrieval"]
    assert set(fr["matched"]) == {"0.15", "0.25", "0.35"} and "static:knorm" in fr["families"]
    assert fr["uncompressed"]["kv"] == 1.0 and (tmp_path / "closed_loop_kv_retrieval.png").stat().st_size > 1000


def test_false_triggers_count_healthy_static_rows_and_false_repairs_only_right_ones():
    from types import SimpleNamespace

    from hazard.evaluate import summarize_policy

    # static rows: right, wrong (no catastrophe), a loop, right; the policy acts on rows 0, 1 and 2
    static = [{"correct": c, "catastrophe": k} for c, k in ((1, 0), (0, 0), (0, 1), (1, 0))]
    rows = [{"correct": 1, "loop": 0, "nonterm": 0, "prompt_len": 4, "n_tokens": 2, "bytes_per_token": 8,
             "kv_bytes": [32, 40]} for _ in static]
    events = [[(3, "force")], [(1, "restore")], [(2, "reselect")], [(5, "rollback")]]
    gens = [SimpleNamespace(control={"events": e}) for e in events]
    res = summarize_policy(rows, gens, rows, static, 1.0, 10)
    assert res["trigger_rate"] == 0.75
    assert res["false_trigger_rate"] == 2 / 3  # rows 0, 1 of the three without a catastrophe
    assert res["false_repair_rate"] == 0.5  # row 0 of the two the press left right


def _cycle_seq(rng, prefix: int, period: int, length: int) -> list[int]:
    """``prefix`` tokens from 100-199, then a cycle of ``period`` distinct tokens from 0-99 to ``length``."""
    cyc = rng.sample(range(100), period)
    head = [rng.randrange(100, 200) for _ in range(prefix)]
    return head + [cyc[i % period] for i in range(length - prefix)]


def test_cycle_tracker_fires_where_the_loop_label_starts():
    from hazard.control.cycles import CycleTracker
    from hazard.labels.detectors import detect_loop

    rng = random.Random(0)
    seqs = [_cycle_seq(rng, rng.randrange(0, 30), p, 150) for p in (1, 2, 3, 7, 16, 40)]
    seqs.append([rng.randrange(100, 200) for _ in range(150)])  # no cycle: never fires
    tr = CycleTracker(len(seqs))
    first: dict[int, tuple[int, int]] = {}
    for t in range(150):  # every row at once, as the controller feeds them
        fire, start = tr.update(np.arange(len(seqs)), np.array([s[t] for s in seqs]))
        for j in np.flatnonzero(fire):
            first.setdefault(int(j), (t + 1, int(start[j])))
    for j, s in enumerate(seqs[:-1]):
        loop = detect_loop(s)
        n, start = first[j]
        assert start == loop.onset  # the labelled onset, found online
        assert n - start == max(3 * loop.period, 16)  # at the first token the rule holds
    assert len(seqs) - 1 not in first
    tr.reset([0])
    fire, start = tr.update(np.array([0]), np.array([seqs[0][-1]]))
    assert not fire[0] and start[0] == -1 and tr.n[0] == 1


def test_cycle_spans_of_a_stored_trace_equal_the_online_tracker():
    """The train stage's whole-trace spans (the cycle rule's score) are what the controller's tracker reports
    token by token, for any period limit and period count; a stutter shows at its third token."""
    from hazard.control.cycles import CycleTracker, cycle_spans

    rng = np.random.default_rng(0)
    for _ in range(200):
        seq = rng.integers(0, 3, size=int(rng.integers(1, 60))).tolist()
        p, k = int(rng.integers(1, 10)), int(rng.integers(2, 4))
        tr, online = CycleTracker(1, p, k, 1), []
        for t, x in enumerate(seq):
            fire, start = tr.update(np.array([0]), np.array([x]))
            online.append(t + 1 - int(start[0]) if fire[0] else 0)
        assert cycle_spans(seq, p, k).tolist() == online
    assert cycle_spans([5, 7, 7, 7, 1, 2, 1, 2], 1).tolist() == [0, 0, 2, 3, 0, 0, 0, 0]
    assert cycle_spans([5, 7, 7, 7, 1, 2, 1, 2], 2).tolist() == [0, 0, 2, 3, 0, 0, 0, 4]
    from hazard.predictor.data import CYCLE_PERIODS, trace_cycles  # the train stage's columns, one pass

    seq = rng.integers(0, 3, size=80).tolist()
    assert trace_cycles(seq).tolist() == np.stack([cycle_spans(seq, p) for p in CYCLE_PERIODS], 1).tolist()


def test_cycle_spans_on_the_device_equal_the_stored_traces_through_slot_reuse():
    """``CycleSpans`` (the controller's tracker for guards on the ``cycle<P>`` features) gives, token by token,
    the spans the train stage computes from a stored trace, for rows stepped together in their slots and for a
    row that enters a slot after a reset."""
    from hazard.control.cycles import CycleSpans, capped_spans

    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 3, size=30).tolist() for _ in range(3)] + [[4, 4, 4, 5, 6, 5, 6, 5, 6, 7, 8, 9, 7, 8, 9]]
    spans = CycleSpans(3)
    got = {i: [] for i in range(4)}
    for t in range(30):  # rows 0-2 in slots 0-2, all stepped as one slice
        out = spans.update(slice(0, 3), torch.tensor([s[t] for s in seqs[:3]]))
        for i in range(3):
            got[i].append(out[i].tolist())
    spans.reset([1])  # row 3 enters slot 1
    for x in seqs[3]:
        got[3].append(spans.update([1], torch.tensor([x]))[0].tolist())
    for i, seq in enumerate(seqs):
        assert np.array_equal(np.array(got[i]), capped_spans(seq, (1, 2, 4, 8))), i
    assert got[3][2] == [3, 3, 3, 3] and got[3][-1] == [0, 0, 6, 6]  # a stutter; then period 3, twice


def test_detect_rewind_restores_and_rolls_back_to_before_the_cycle_once():
    from hazard.signals import SIGNALS

    ctl = PolicyController(build_policy("detect_rewind", min_span=8, margin=2))
    ctl.begin(3)
    ctl.admit([0, 2], [7, 9], [50, 60])
    rng = random.Random(1)
    looping, healthy = _cycle_seq(rng, 5, 2, 40), [rng.randrange(100, 200) for _ in range(40)]
    acts = {}
    for t in range(40):
        pk = np.zeros((2, 1 + len(SIGNALS)))
        pk[:, 0] = looping[t], healthy[t]
        for r, a in ctl.observe(np.array([0, 2]), np.array([7, 9]), pk, np.array([t + 1, t + 1])).items():
            acts[(r, t + 1)] = a
    # cycle from token 5, span 8 reached at 13 tokens: keep 5 - 2 = 3 tokens, regenerate the other 10
    assert acts == {(7, 13): [("restore",), ("rollback", 10)]}
    assert ctl._rows.triggers.tolist() == [1, 0, 0]


def test_detect_rewind_to_the_first_token_regenerates_the_uncompressed_run(model64):
    """Rewound to its first token with the whole prompt restored, a looping row continues exactly as the
    uncompressed run; rows that never cycle are the static run's."""
    from hazard.control.cycles import CycleTracker

    engine = Engine(model64, [256], max_new_tokens=48, batch_size=3, probe_layers=(0, -1))
    prompts = _prompts(3, seed=1)
    spec = PressSpec("knorm", 0.75)
    full, static = engine.generate(prompts, None), engine.generate(prompts, build_press(spec))
    healed = engine.generate(prompts, build_press(spec),
                             controller=PolicyController(build_policy("detect_rewind", margin=10**6)))
    fired = 0
    for f, s, h in zip(full, static, healed):
        tr = CycleTracker(1)
        cycles = any(tr.update(np.array([0]), np.array([x]))[0][0] for x in s.tokens)
        if cycles:
            fired += 1
            assert h.tokens == f.tokens and [e[1] for e in h.control["events"]] == ["restore", "rollback"]
        else:
            assert h.tokens == s.tokens and not h.control["events"]
    assert fired or model64.config.model_type != "qwen2"  # the qwen2 tiny model loops under knorm 0.75


def _texts(words: dict[int, str]):
    return lambda t: words.get(t, " w")


def test_arith_rewind_rolls_back_to_just_after_the_wrong_equals_once():
    from hazard.signals import SIGNALS

    # row 7 writes "So 3 + 4 = 8 apples.\n ... 2 + 2 = 5.\n", row 9 the same with 7: right
    words = {1: "So", 2: " 3", 3: " +", 4: " 4", 5: " =", 6: " 8", 7: " apples", 8: ".\n", 9: " 7",
             10: " 2 + 2 =", 11: " 5"}
    wrong, right = [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 8], [1, 2, 3, 4, 5, 9, 7, 8, 1, 1, 1]
    ctl = PolicyController(build_policy("arith_rewind"), token_text=_texts(words))
    ctl.begin(3)
    ctl.admit([0, 2], [7, 9], [50, 60])
    acts = {}
    for t in range(len(wrong)):
        pk = np.zeros((2, 1 + len(SIGNALS)))
        pk[:, 0] = wrong[t], right[t]
        for r, a in ctl.observe(np.array([0, 2]), np.array([7, 9]), pk, np.array([t + 1, t + 1])).items():
            acts[(r, t + 1)] = a
    # decided at ".\n" (token 7, 8 recorded: " apples" might have been a unit before a "-"): keep through " ="
    # (token 4), regenerate the other 3; the second wrong sum comes after the row relaxed, so nothing more
    assert acts == {(7, 8): [("restore",), ("rollback", 3)]}
    assert ctl._rows.triggers.tolist() == [1, 0, 0]
    with pytest.raises(HazardError, match="token_text"):
        PolicyController(build_policy("arith_rewind"))
    with pytest.raises(HazardError, match="margin"):
        build_policy("arith_rewind", margin=-1)
    assert build_policy("arith_rewind", margin=3).actions(9, 4) == [("restore",), ("rollback", 7)]


def test_arith_rewind_in_the_engine_keeps_the_text_before_the_wrong_result(model64):
    """A wrong equation planted in a row's text (its tokens' texts chosen for it): the row is restored and
    rolled back to just after its '=', and regenerates from there; the tokens before it are the static run's."""
    engine = Engine(model64, [256], max_new_tokens=24, batch_size=3, probe_layers=(0, -1))
    prompts = _prompts(3, seed=2)
    spec = PressSpec("knorm", 0.75)
    static = engine.generate(prompts, build_press(spec))
    s = static[0].tokens
    i = next(i for i in range(1, len(s) - 3) if len({*s[i:i + 3]}) == 3 and not {*s[i:i + 3]} & {*s[:i]})
    words = {s[i]: " 3 + 4 =", s[i + 1]: " 8", s[i + 2]: ".\n"}
    healed = engine.generate(prompts, build_press(spec),
                             controller=PolicyController(build_policy("arith_rewind"), token_text=_texts(words)))
    h = healed[0]
    assert [e[1] for e in h.control["events"]] == ["restore", "rollback"] and h.control["rollback_tokens"] == 2
    assert h.tokens[:i + 1] == s[:i + 1]  # through the '=': the static run's


def test_random_at_matched_rates_keeps_its_own_swept_knobs():
    from hazard.evaluate import matched_knobs, variants

    knobs = variants({"calm_tokens": 0, "seed": [0, 1]})
    assert matched_knobs(knobs, [0.01, 0.02, 0.01]) == [
        {"seed": 0, "rate": 0.01}, {"seed": 1, "rate": 0.01}, {"seed": 0, "rate": 0.02}, {"seed": 1, "rate": 0.02}]
    assert matched_knobs(variants({"calm_tokens": 0}), [0.5]) == [{"rate": 0.5}]


def test_the_live_guard_gives_the_probabilities_it_was_validated_with(tmp_path):
    """The guard stepping inside the engine gives, token by token, the probabilities its thresholds were chosen
    on (``forward_sequence`` over the static run's features), first token included and through slot reuse
    (7 prompts, 3 slots). Admission used to reset the guard's state after its first step, so every live row
    started at its second token: differences of 0.13 on this model, and on the 1.5B alarms in the first tokens
    of 22-25% of healthy rows where validation allowed 5% (evaluate/RESULTS.md 0i)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))
    from guard_parity import main

    out = tmp_path / "parity.json"
    assert main(["--config", "configs/evaluate/frontier_q15_live32.yaml", "--press", "knorm@0.5", "--limit", "7",
                 "--out", str(out), "--model.tiny", "qwen2", "--model.dtype", "float64", "--model.device", "cpu",
                 "--max_new_tokens", "24", "--batch_size", "3", "--base_presses", "[{name: knorm, ratio: 0.5}]",
                 "--tasks", "[{name: kv_retrieval, options: {n_prompts: 7, n_pairs: 6}}]"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 7 and res["same_token_share"] == 1.0
    assert all(r["max_abs_diff"] is not None and r["same_tokens"] == r["tokens"] for r in res["rows"])
    assert res["max_abs_diff"] < 1e-5
    assert res["alarm_share"]["live"] == res["alarm_share"]["offline"]
    assert main(["--config", "configs/evaluate/frontier_q15_live32.yaml", "--press", "snapkv@0.5",
                 "--out", str(out)]) == 2  # not one of the config's base presses: one line, no run


def _weighted_guard(tmp_path, feature_set: str, weigh, **features):
    """A GRU guard checkpoint on ``feature_set`` whose inputs ``weigh`` (names -> bool) count 20 times over, so
    a wrong or missing value shows in its output; ``features``: more keys of its feature spec."""
    import json

    from safetensors.torch import save_file

    from hazard import SCHEMA_VERSION, SIGNALS_VERSION
    from hazard.guard import FORMAT, FORMAT_VERSION
    from hazard.predictor.features import FEATURE_SETS
    from hazard.predictor.nets import GRUNet

    names = list(FEATURE_SETS[feature_set])
    torch.manual_seed(0)
    net = GRUNet(len(names), 5, hidden=8, layers=1, dropout=0.0)
    with torch.no_grad():
        net.gru.weight_ih_l0[:, [i for i, n in enumerate(names) if weigh(n)]] *= 20
    ckpt = tmp_path / "guard"
    ckpt.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, ckpt / "model.safetensors")
    (ckpt / "config.json").write_text(json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION,
        "signals_version": SIGNALS_VERSION, "net": "gru", "net_kwargs": {"hidden": 8, "layers": 1, "dropout": 0.0},
        "features": {"names": names, "mean": [0.0] * len(names), "std": [1.0] * len(names),
                     "horizons": [4, 8, 16, 32, 64], "feature_set": feature_set, **features},
        "horizons": [4, 8, 16, 32, 64], "eval_horizon": 8, "threshold": 0.5}))
    return ckpt


def _parity(tmp_path, ckpt) -> dict:
    """evaluate/guard_parity.py on the tiny model: the guard's probabilities live and offline, 5 prompts."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))
    from guard_parity import main

    out = tmp_path / "parity.json"
    assert main(["--config", "configs/evaluate/frontier_q15_live32.yaml", "--press", "knorm@0.75", "--limit", "5",
                 "--out", str(out), "--guard", str(ckpt), "--model.tiny", "qwen2", "--model.dtype", "float64",
                 "--model.device", "cpu", "--max_new_tokens", "16", "--batch_size", "3",
                 "--base_presses", "[{name: knorm, ratio: 0.75}]",
                 "--tasks", "[{name: kv_retrieval, options: {n_prompts: 5, n_pairs: 6}}]"]) == 0
    return json.loads(out.read_text())


def test_a_live_guard_reads_what_the_prefill_press_kept_of_the_question(tmp_path):
    """A guard on the ``live_question`` features (the live set + ``PREFILL_SIGNALS``) runs in the closed loop
    when the controller knows each prompt's question positions: live it gives the probabilities it gives
    offline on the collected features (the keeps computed at admission, as collection computes them per
    trace). Without the positions the controller refuses it with one line."""
    from hazard.guard import HazardGuard
    from hazard.signals import PREFILL_SIGNALS

    ckpt = _weighted_guard(tmp_path, "live_question", lambda n: n in PREFILL_SIGNALS)
    res = _parity(tmp_path, ckpt)
    assert res["n"] == 5 and res["same_token_share"] == 1.0 and res["max_abs_diff"] < 1e-5

    guard = HazardGuard.from_pretrained(ckpt)
    with pytest.raises(HazardError, match="question positions"):
        PolicyController(build_policy("hazard", trigger=2.0), guard, 0.75, 16).begin(3)


def test_a_live_guard_reads_the_cycle_spans_as_the_traces_hold_them(tmp_path, monkeypatch):
    """A guard on ``live_cycle`` (the live set + the cycle rule's spans) runs in the closed loop: the controller
    tracks each row's last tokens on the device (``CycleSpans``), so live it gives the probabilities it gives
    offline on the stored trace's features, through slot reuse (the tiny model stutters: spans up to 15)."""
    from hazard.control import cycles
    from hazard.predictor.features import CYCLE_FEATURES

    update, longest = cycles.CycleSpans.update, []

    def watched(self, slots, tokens):
        out = update(self, slots, tokens)
        longest.append(float(out.max()))
        return out

    monkeypatch.setattr(cycles.CycleSpans, "update", watched)
    ckpt = _weighted_guard(tmp_path, "live_cycle", lambda n: n in CYCLE_FEATURES)
    res = _parity(tmp_path, ckpt)
    assert res["n"] == 5 and res["same_token_share"] == 1.0 and res["max_abs_diff"] < 1e-5
    assert res["alarm_share"]["live"] == res["alarm_share"]["offline"]
    assert max(longest) >= 4  # the spans the guard weighs were not all zero


def test_hazard_evaluate_runs_a_guard_on_the_state_and_the_cycle_spans(tmp_path):
    """``hazard evaluate`` takes a guard on ``live_state_cycle`` (the engine records the state, the controller
    tracks the spans) through to its closed-loop rows; a guard naming a feature nothing produces fails there,
    before generation, with one line."""
    import json

    from hazard.cli import main
    from hazard.predictor.features import CYCLE_FEATURES
    from hazard.signals.state import is_state_feature

    ckpt = _weighted_guard(tmp_path, "live_state_cycle", lambda n: n in CYCLE_FEATURES or is_state_feature(n),
                           state={"layer": 1, "dim": 64})
    out = tmp_path / "closed_loop.json"
    args = ["evaluate", "--output", str(out), "--guard", str(ckpt), "--model.tiny", "qwen2",
            "--model.dtype", "float64", "--model.device", "cpu", "--max_new_tokens", "16",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 3, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]", "--policies", "[static, hazard]",
            "--policy_options", "{hazard: {trigger: 0.0}}"]
    assert main(args) == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["hazard"]["n"] == 3 and rows["hazard"]["trigger_rate"] == 1.0  # threshold 0: every row fires

    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["features"]["names"][-1] = "cycle99"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    out.unlink()
    assert main(args) == 2 and not out.exists()


def test_a_gradient_boosting_guard_runs_live_as_offline(tmp_path):
    """A ``window_trees`` guard (the gradient-boosting baseline's trees as tensors, reading the last 8 tokens'
    features) gives live, in the closed loop with slot reuse, the probabilities it gives offline. Its trees
    read the oldest token of the window (zeros until 8 tokens are in), so it alarms at token 7 both ways."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from hazard.guard import write_guard
    from hazard.predictor.features import FEATURE_SETS
    from hazard.predictor.trees import WindowTrees

    names = list(FEATURE_SETS["live"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 2, size=(4000, 8 * len(names))).astype(np.float32)
    y = (x[:, names.index("entropy")] > 1).astype(int)  # the oldest token's entropy (the tiny model's: ~log 1000)
    trees = WindowTrees.from_sklearn(HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y),
                                     len(names), 5, 8)
    spec = {"names": names, "mean": [0.0] * len(names), "std": [1.0] * len(names), "horizons": [4, 8, 16, 32, 64],
            "feature_set": "live"}
    ckpt = write_guard(trees, "window_trees", trees.net_kwargs(), spec, tmp_path / "guard", 0.5, 8, {})
    res = _parity(tmp_path, ckpt)
    assert res["n"] == 5 and res["same_token_share"] == 1.0 and res["max_abs_diff"] < 1e-5
    assert [(r["offline_first"], r["live_first"]) for r in res["rows"]] == [(7, 7)] * 5


def test_a_live_guard_reads_the_models_state_as_collected(tmp_path):
    """A guard on ``live_state`` (the live set + the model's projected state) runs in the closed loop: the engine
    records the state at the layer and width the checkpoint names (``guard.engine_options()``) and the
    controller reads the step's buffer, so live it gives the probabilities it gives offline on the collected
    features. A controller on an engine without the state, or with another width, refuses it with one line."""
    from hazard.guard import HazardGuard
    from hazard.signals.state import is_state_feature

    ckpt = _weighted_guard(tmp_path, "live_state", is_state_feature, state={"layer": 1, "dim": 64})
    res = _parity(tmp_path, ckpt)
    assert res["n"] == 5 and res["same_token_share"] == 1.0 and res["max_abs_diff"] < 1e-5
    assert res["alarm_share"]["live"] == res["alarm_share"]["offline"]

    guard = HazardGuard.from_pretrained(ckpt)
    assert guard.engine_options() == {"state_layer": 1, "state_dim": 64}
    with pytest.raises(HazardError, match="engine_options"):
        PolicyController(build_policy("hazard", trigger=2.0), guard, 0.75, 16).begin(3)
    wrong = PolicyController(build_policy("hazard", trigger=2.0), guard, 0.75, 16)
    wrong.model_state = torch.zeros(3, 96)
    with pytest.raises(HazardError, match="width 64, the engine records 96"):
        wrong.begin(3)
