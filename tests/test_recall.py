"""Recall under a cap: the evicted-key digest, ``KVStore.reselect``, the ``recall`` action and ``digest_recall``."""

import numpy as np
import pytest
import torch
from kvpress.utils import compute_n_kept
from test_control import Scripted, _prompts
from test_engine import _store_after_prefill

from hazard.compression import PressSpec, build_press
from hazard.control import PolicyController, build_policy
from hazard.control.policies import DIGEST_PAGE, RowState
from hazard.engine import Controller, Engine
from hazard.errors import HazardError

SPEC = PressSpec("snapkv", 0.75, {"window_size": 8})


def _digest_store(model64, seed=9, page=4):
    p = _prompts(1, seed=seed)[0]
    return p, _store_after_prefill(model64, p, SPEC, digest_page=page)


def test_digest_bounds_every_evicted_key_and_knows_what_was_evicted(model64):
    p, st = _digest_store(model64)
    n = len(p)
    scores = st.digest_scores([1])[:, 0, :, :n]  # (L, H, N)
    evicted = ~st.kept[:, 1, :, :n]
    assert torch.isfinite(scores[evicted]).all()
    # pages with no evicted key score -inf; the count per page is the evicted count
    assert int(st.dg_n[:, 1].sum()) == int(evicted.sum())
    keys = st.full_k[1, :n].permute(1, 2, 0, 3)  # (L, H, N, D)
    L, H = keys.shape[:2]
    q = st.q_last[:, 1].view(L, H, -1, st.head_dim)  # (L, H, G, D): the last prompt token's queries
    exact = (q @ keys.transpose(-1, -2)).amax(2)  # (L, H, N)
    assert (exact[evicted] <= scores[evicted] + 1e-9).all()  # an upper bound for each evicted key
    assert q.abs().sum() > 0  # the prefill left real queries to rank against


def test_reselect_of_everything_is_restore_and_a_share_stays_within_its_cap(model64):
    p, st = _digest_store(model64)
    n = len(p)
    n_kept = compute_n_kept(n, SPEC.ratio)
    full = _store_after_prefill(model64, p, PressSpec("none"))
    with torch.inference_mode():
        st.reselect([1], [n - n_kept])
    assert int(st.lens[1]) == n
    assert torch.equal(st.k[:, 1, :, :n], full.k[:, 1, :, :n])
    assert torch.equal(st.pos[:, 1, :, :n], full.pos[:, 1, :, :n])
    scores = st.digest_scores([1])[:, 0, :, :n]
    for k in (3, 5, 3):  # a swap: a smaller share after a larger one holds the smaller share
        with torch.inference_mode():
            st.reselect([1], [k])
        assert int(st.lens[1]) == n_kept + k
        held = st.held([1])[:, 0, :, :n]
        kept = st.kept[:, 1, :, :n]
        assert (held & kept).sum(-1).eq(n_kept).all() and (held & ~kept).sum(-1).eq(k).all()
        recalled = scores.masked_fill(~(held & ~kept), float("inf")).amin(-1)
        left_out = scores.masked_fill(held | kept, float("-inf")).amax(-1)
        assert (recalled >= left_out).all()  # the best-ranked evicted entries, per layer and KV head
        pos = st.pos[:, 1, :, : n_kept + k]
        assert (pos[..., 1:] > pos[..., :-1]).all()  # position order kept


def test_recall_action_of_everything_equals_restore_in_the_engine(model64):
    """("reselect", 1.0) + rollback to the prompt end regenerates what ("restore",) + rollback does."""
    prompts = _prompts(3, seed=1)
    press = build_press(PressSpec("knorm", 0.75))

    class Recall(Scripted):
        digest_page = DIGEST_PAGE

        def observe(self, slots, rows, packets, steps, extra=None):
            out = super().observe(slots, rows, packets, steps, extra)
            return {r: [("reselect", 1.0), a[1]] for r, a in out.items()}

    eng = Engine(model64, [256], max_new_tokens=20, batch_size=3, probe_layers=(0, -1))
    static = eng.generate(prompts, press)
    at = max(2, min(6, *(len(s.tokens) for s in static)))  # every row must still be generating then
    restored = eng.generate(prompts, press, controller=Scripted(at=at))
    recalled = eng.generate(prompts, press, controller=Recall(at=at))
    full = eng.generate(prompts, None)
    for a, b, f in zip(restored, recalled, full):
        assert a.tokens == b.tokens == f.tokens
        assert [e[1] for e in b.control["events"]] == ["reselect", "rollback"]


@pytest.mark.parametrize("budget,page", [(0.1, DIGEST_PAGE), (0.25, 8)])
def test_digest_recall_holds_its_cap_and_counts_the_digest_in_memory(model64, budget, page):
    prompts = _prompts(3, seed=3)
    eng = Engine(model64, [256], max_new_tokens=20, batch_size=3, probe_layers=(0, -1))
    press = build_press(PressSpec("knorm", 0.75))
    ctl = PolicyController(build_policy("digest_recall", budget=budget, interval=4, page=page))
    gens = eng.generate(prompts, press, controller=ctl)
    st = eng.store
    assert st.digest_page == page
    for p, g in zip(prompts, gens):
        n = len(p)
        kept = compute_n_kept(n, 0.75)
        cap = kept + min(int(np.ceil(budget * n)), n - kept)
        t = np.arange(len(g.tokens))
        assert (g.kv_tokens <= cap + t).all()
        assert (g.kv_tokens == np.where(t == 0, kept, cap + t)).all()  # selected from the first decode step on
        # the digest's GPU bytes, counted in kv_bytes, are the bytes of its tensors for this prompt
        pages = -(-n // st.digest_page)
        tensors = sum(x[:, 0, :, :pages].nbytes for x in (st.dg_min, st.dg_max, st.dg_n))
        assert (g.kv_bytes - g.kv_tokens * g.bytes_per_token == tensors).all() and tensors > 0
        assert [e[1] for e in g.control["events"]] == ["reselect"] * len(range(0, len(g.tokens) - 1, 4))


def test_a_triggered_policy_recalls_under_its_budget_and_recompresses(model64):
    prompts = _prompts(2, seed=4)
    eng = Engine(model64, [256], max_new_tokens=24, batch_size=2, probe_layers=(0, -1))
    press = build_press(PressSpec("knorm", 0.75))
    # entropy >= 0 always: fires on the first token, recompresses after 5 calm... never calm; relaxed to the end
    ctl = PolicyController(build_policy("entropy_rule", trigger=0.0, action="recall", budget=0.2, calm_tokens=0,
                                        rollback=0))
    gens = eng.generate(prompts, press, controller=ctl)
    for p, g in zip(prompts, gens):
        kept = compute_n_kept(len(p), 0.75)
        cap = kept + int(np.ceil(0.2 * len(p)))
        assert g.kv_tokens.max() - (len(g.tokens) - 1) <= cap
        assert [e[1] for e in g.control["events"]] == ["reselect"]
    assert ctl.digest_page == DIGEST_PAGE


@pytest.mark.parametrize("at", [3, 6])
def test_a_scheduled_recall_acts_once_at_its_step_and_rolls_back_to_the_first_token(model64, at):
    # the non-learned twin of a guard that fires at a fixed step: one recall (under its cap) after ``at``
    # tokens, then a rollback of up to 8, which stops at the first token (it comes from the prefill forward)
    prompts = _prompts(2, seed=6)
    no_end = [model64.config.vocab_size]  # an id the model cannot emit: every row reaches its step
    eng = Engine(model64, no_end, max_new_tokens=16, batch_size=2, probe_layers=(0, -1))
    press = build_press(PressSpec("knorm", 0.75))
    ctl = PolicyController(build_policy("scheduled", at=at, action="recall", budget=0.2, rollback=8))
    gens = eng.generate(prompts, press, controller=ctl)
    static = eng.generate(prompts, press)
    for p, g, s in zip(prompts, gens, static):
        assert g.control["events"] == [(at, "reselect"), (at, "rollback")]
        assert g.control["rollback_tokens"] == at - 1
        assert g.tokens[0] == s.tokens[0]  # kept: the rollback never undoes the prefill's token
        cap = compute_n_kept(len(p), 0.75) + int(np.ceil(0.2 * len(p)))
        assert g.kv_tokens.max() - (len(g.tokens) - 1) <= cap
    assert ctl.digest_page == DIGEST_PAGE
    # without recall and rollback it is still the point-of-no-return probe: one restore, nothing rolled back
    probe = build_policy("scheduled", at=at)
    st = RowState()
    assert [probe.decide(0.0, t, st) for t in range(at + 2)] == [[]] * (at - 1) + [[("restore",)], [], []]


def test_a_scheduled_coin_acts_on_its_share_of_rows_once_each_and_a_full_share_draws_nothing():
    # share < 1: the twin of a guard that fires at one step on some rows; each row gets one coin, at its step
    coin = build_policy("scheduled", at=3, share=0.3, seed=4)
    states = [RowState() for _ in range(2000)]
    acted = [sum(bool(coin.decide(0.0, t, st)) for t in range(8)) for st in states]
    assert set(acted) == {0, 1} and abs(np.mean(acted) - 0.3) < 0.04
    assert all(st.passed != bool(a) for st, a in zip(states, acted))
    again = build_policy("scheduled", at=3, share=0.3, seed=4)  # seeded: the same rows
    assert [sum(bool(again.decide(0.0, t, st)) for t in range(8)) for st in [RowState() for _ in range(2000)]] == acted
    every = build_policy("scheduled", at=3)
    draws = every.rng.bit_generator.state
    assert all(sum(bool(every.decide(0.0, t, st)) for t in range(8)) == 1 for st in [RowState() for _ in range(50)])
    assert every.rng.bit_generator.state == draws  # share 1 is the old policy: no coin
    for bad in (0.0, 1.5, "half"):
        with pytest.raises(HazardError, match="scheduled share"):
            build_policy("scheduled", at=3, share=bad)


def test_a_scheduled_coin_matched_to_the_hazard_runs_share_of_rows(tmp_path):
    """``share: matched`` runs the coin at each hazard run's measured share of rows that acted (one that never
    acted gives no run), so the pair measures the guard's choice of rows at the same step and memory."""
    import json

    from hazard.cli import build, main, parse_args
    from hazard.evaluate import EvaluateConfig, check_config

    out = tmp_path / "closed_loop.json"
    args = ["evaluate", "--output", str(out), "--guard", "checkpoints/qwen2.5-coder-1.5b-campaign",
            "--model.tiny", "qwen2", "--model.dtype", "float64", "--model.device", "cpu", "--max_new_tokens", "12",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 4, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: knorm, ratio: 0.75}]", "--policies", "[static, full, hazard, scheduled]",
            "--policy_options", "{hazard: {trigger: [0.0, 2.0], sustain: 1, calm_tokens: 0, rollback: 2, "
            "action: recall, budget: 0.25}, scheduled: {at: 2, rollback: 2, action: recall, budget: 0.25, "
            "share: matched}}"]
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    by = {(r["policy"], json.dumps(r["knob"])): r for r in rows}
    assert by[("hazard", '{"trigger": 0.0}')]["trigger_rate"] == 1.0
    assert by[("hazard", '{"trigger": 2.0}')]["trigger_rate"] == 0.0
    coins = [r for r in rows if r["policy"] == "scheduled"]
    assert [c["knob"] for c in coins] == [{"share": 1.0}] and coins[0]["trigger_rate"] == 1.0
    # each row records whether it was acted on, so a trigger's choice of rows can be judged prompt by prompt
    assert coins[0]["outcomes"]["acted"] == "1111" and by[("hazard", '{"trigger": 2.0}')]["outcomes"]["acted"] == "0000"
    assert by[("static", "{}")]["outcomes"]["acted"] == "0000"
    # matched needs a hazard run before it: one line, before any model is loaded
    cfg = build(EvaluateConfig, parse_args(args[1:]))
    check_config(cfg)
    cfg.policies = ["static", "scheduled"]
    with pytest.raises(HazardError, match="list hazard before it"):
        check_config(cfg)


def test_static_runs_keep_no_digest(model64):
    eng = Engine(model64, [256], max_new_tokens=8, batch_size=2)
    g = eng.generate(_prompts(2, seed=5), build_press(PressSpec("knorm", 0.5)), controller=Controller())[0]
    assert (g.kv_bytes == g.kv_tokens * g.bytes_per_token).all()


@pytest.mark.parametrize("kw", [{"action": "offload"}, {"action": "recall", "budget": 0.0},
                                {"action": "recall", "budget": 1.5}])
def test_bad_recall_settings_fail_with_one_line(kw):
    with pytest.raises(HazardError, match="action|budget"):
        build_policy("hazard", **kw)
    with pytest.raises(HazardError, match="interval"):
        build_policy("digest_recall", interval=0)
    with pytest.raises(HazardError, match="page"):
        build_policy("digest_recall", page=0)
    with pytest.raises(HazardError, match="page"):
        build_policy("hazard", action="recall", page=2.5)
    with pytest.raises(HazardError, match="scheduled at"):
        build_policy("scheduled", at=-1)


def test_a_larger_digest_page_holds_proportionally_less_memory(model64):
    """Digest bytes per page are fixed (min, max, count), so doubling the page halves them."""
    p = _prompts(1, seed=9)[0]
    a = _store_after_prefill(model64, p, SPEC, digest_page=4).digest_bytes(64)
    b = _store_after_prefill(model64, p, SPEC, digest_page=8).digest_bytes(64)
    assert a == 2 * b > 0


@pytest.mark.parametrize("window", [1, 3])
def test_the_verify_decision_acts_once_when_its_window_closes(model64, window):
    """kl >= -1 always holds: every row restores after its window and, rolled back to the first token,
    regenerates the uncompressed run; its shadow's K/V count while it lives."""
    prompts = _prompts(3, seed=6)
    eng = Engine(model64, [256], max_new_tokens=16, batch_size=6, probe_layers=(0, -1))
    press = build_press(PressSpec("knorm", 0.75))
    full = eng.generate(prompts, None)
    ctl = PolicyController(build_policy("verify", window=window, kl=-1.0, rollback=10**6))
    gens = eng.generate(prompts, press, controller=ctl)
    for p, f, g in zip(prompts, full, gens):
        if len(g.tokens) <= window:  # ended inside its window: no decision
            assert g.control["events"] == []
            continue
        assert g.tokens == f.tokens
        assert g.control["events"] == [(window + 1, "restore"), (window + 1, "rollback")]
        t = np.arange(len(g.tokens))
        shadow = g.kv_bytes - g.kv_tokens * g.bytes_per_token
        assert (shadow == np.where(t <= window, (len(p) + t) * g.bytes_per_token, 0)).all()


def test_a_verify_window_that_agrees_keeps_the_compressed_run(model64):
    prompts = _prompts(3, seed=7)
    eng = Engine(model64, [256], max_new_tokens=12, batch_size=6, probe_layers=(0, -1))
    press = build_press(PressSpec("knorm", 0.75))
    static = eng.generate(prompts, press)
    gens = eng.generate(prompts, press, controller=PolicyController(build_policy("verify", window=4, kl=np.inf)))
    assert [g.tokens for g in gens] == [s.tokens for s in static]  # the shadows never touch their rows
    assert all(g.control["events"] == [] for g in gens)
    assert any(np.isfinite(g.signals[:, -3]).all() and g.signals[1:5, -3].max() > 0 for g in gens)  # KL measured
    with pytest.raises(HazardError, match="without a controller"):
        Engine(model64, [256], max_new_tokens=4, batch_size=4, verify_window=2).generate(
            prompts, press, controller=PolicyController(build_policy("verify", window=2)))
    with pytest.raises(HazardError, match="window"):
        build_policy("verify", window=0)


def test_number_recall_fires_where_a_number_starts_and_not_on_its_rewrite():
    from hazard.signals import SIGNALS

    ctl = PolicyController(build_policy("number_recall", budget=0.2), digit_ids=[5, 6])
    ctl.begin(2)
    ctl.admit([0, 1], [0, 1], [10, 10])
    fire = [("reselect", 0.2), ("rollback", 1)]

    def step(tokens, steps):
        packets = np.zeros((2, len(SIGNALS) + 1), dtype=np.float32)
        packets[:, 0] = tokens
        return ctl.observe(np.array([0, 1]), np.array([0, 1]), packets, np.array(steps))

    assert step([1, 5], [1, 1]) == {1: fire}  # row 1's first token is a digit: a number starts
    assert step([5, 6], [2, 2]) == {0: fire}  # row 0 starts one; row 1 goes on with it
    assert step([6, 2], [2, 3]) == {}  # row 0's rewritten digit does not fire again
    assert step([2, 6], [3, 4]) == {1: fire}  # row 1 starts a second number
    assert step([6, 7], [4, 5]) == {0: fire}
    # a longer rollback regenerates up to the step that fired: that number start does not fire twice
    ctl = PolicyController(build_policy("number_recall", budget=0.2, rollback=8), digit_ids=[5, 6])  # ``step``'s
    ctl.begin(2)
    ctl.admit([0, 1], [0, 1], [10, 10])
    fire8 = [("reselect", 0.2), ("rollback", 8)]
    assert step([1, 2], [1, 6]) == {}
    assert step([5, 2], [2, 7]) == {0: fire8}  # row 0 starts a number at step 2 and rolls back to before it
    assert step([1, 2], [1, 8]) == {}
    assert step([5, 2], [2, 9]) == {}  # the same start, written again
    assert step([2, 2], [3, 10]) == {}
    assert step([6, 2], [4, 11]) == {0: fire8}  # a new one
    with pytest.raises(HazardError, match="digit token ids"):
        PolicyController(build_policy("number_recall"))
    with pytest.raises(HazardError, match="rollback"):
        build_policy("number_recall", rollback=-1)


def test_number_recall_in_the_engine_recalls_under_its_cap_and_rewrites_one_token(model64):
    prompts = _prompts(2, seed=6)
    no_end = [model64.config.vocab_size]  # an id the model cannot emit: every row runs to the end
    eng = Engine(model64, no_end, max_new_tokens=16, batch_size=2, probe_layers=(0, -1))
    press = build_press(PressSpec("knorm", 0.75))
    static = eng.generate(prompts, press)
    digits = {static[0].tokens[3]}  # "digits": a token row 0 writes at step 4, so the first fire is known
    first = next(i for i, t in enumerate(static[0].tokens) if t in digits and (i == 0 or static[0].tokens[i - 1]
                                                                                not in digits))
    ctl = PolicyController(build_policy("number_recall", budget=0.2), digit_ids=sorted(digits))
    gens = eng.generate(prompts, press, controller=ctl)
    g = gens[0]
    assert g.control["events"][0] == (first + 1, "reselect")
    assert g.tokens[:first] == static[0].tokens[:first]  # nothing acts before the first number
    for p, g in zip(prompts, gens):
        events = g.control["events"]
        recalls = [s for s, kind in events if kind == "reselect"]
        assert [s for s, kind in events if kind == "rollback"] == [s for s in recalls if s > 1]  # one rewrite each
        assert g.control["rollback_tokens"] == sum(s > 1 for s in recalls)
        cap = compute_n_kept(len(p), 0.75) + int(np.ceil(0.2 * len(p)))
        assert g.kv_tokens.max() - (len(g.tokens) - 1) <= cap
    assert ctl.digest_page == DIGEST_PAGE
    # rollback 8: each fire regenerates from before its number; none fires twice at one step, and rows end
    ctl8 = PolicyController(build_policy("number_recall", budget=0.2, rollback=8), digit_ids=sorted(digits))
    gens8 = eng.generate(prompts, press, controller=ctl8)
    assert gens8[0].control["events"][0] == (first + 1, "reselect")  # row 0 fires where it did with rollback 1
    for g in gens8:
        recalls = [s for s, kind in g.control["events"] if kind == "reselect"]
        assert recalls == sorted(set(recalls))
        assert len(g.tokens) == 16
