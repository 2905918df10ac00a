import math

import torch

from hazard.signals import logit_signals
from hazard.signals.attention import N_RECENT, N_SINK, attention_stats


def test_logit_signals_match_naive_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 50, dtype=torch.float64) * 3
    logits[1, 7] = 40.0  # a peaked row
    tokens, sig = logit_signals(logits)
    for b in range(3):
        row = logits[b].tolist()
        z = max(row)
        exps = [math.exp(x - z) for x in row]
        s = sum(exps)
        p = [e / s for e in exps]
        order = sorted(range(50), key=lambda i: -row[i])
        assert tokens[b].item() == order[0]
        assert math.isclose(sig[b, 0].item(), -sum(pi * math.log(pi) for pi in p if pi > 0), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(sig[b, 1].item(), p[order[0]], rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(sig[b, 2].item(), sum(p[i] for i in order[:5]), rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(sig[b, 3].item(), row[order[0]] - row[order[1]], rel_tol=1e-5)
        assert math.isclose(sig[b, 4].item(), math.log(p[order[0]]), rel_tol=1e-5, abs_tol=1e-6)


def test_logit_signals_masked_vocab_has_no_nan():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, 2.0, float("-inf"), 0.5]])
    _, sig = logit_signals(logits)
    assert torch.isfinite(sig).all()


def test_attention_stats_match_naive_loops():
    torch.manual_seed(0)
    b, hkv, g, slots, d = 2, 2, 3, 40, 8
    q = torch.randn(b, hkv * g, d)
    keys = torch.randn(b, hkv, slots, d)
    valid = torch.ones(b, slots, dtype=torch.bool)
    valid[1, :5] = False  # left padding in row 1
    pos = torch.stack([torch.randperm(60)[:slots] for _ in range(b * hkv)]).view(b, hkv, slots)
    pos[1, :, :5] = -1
    cur = torch.tensor([70, 65])
    plen = torch.tensor([50, 30])
    got = attention_stats(q, keys, 0.3, valid, pos, cur, plen)
    for r in range(b):
        acc = [0.0] * 5
        for h in range(hkv * g):
            kv = h // g
            idx = [s for s in range(slots) if valid[r, s]]
            sc = [0.3 * float(q[r, h] @ keys[r, kv, s]) for s in idx]
            m = max(sc)
            w = [math.exp(x - m) for x in sc]
            tot = sum(w)
            a = [x / tot for x in w]
            ps = [int(pos[r, kv, s]) for s in idx]
            acc[0] += -sum(x * math.log(x) for x in a if x > 0)
            acc[1] += sum(x for x, p in zip(a, ps) if p < N_SINK)
            acc[2] += sum(x for x, p in zip(a, ps) if p > int(cur[r]) - N_RECENT)
            acc[3] += sum(x for x, p in zip(a, ps) if p < int(plen[r]))
            acc[4] += sum(x for x, p in zip(a, ps) if p >= int(plen[r]))
        for i in range(5):
            assert math.isclose(got[r, i].item(), acc[i] / (hkv * g), rel_tol=1e-4, abs_tol=1e-5)


def test_lost_mass_bound_from_the_page_sketch_is_an_upper_bound():
    """For random queries, kept and evicted keys: the page min/max bound of the evicted entries' softmax
    share is >= the exact share, <= 1, and 0 when nothing was evicted."""
    from types import SimpleNamespace

    from hazard.engine.runner import ModelRunner
    from hazard.engine.store import KVStore

    g = torch.Generator().manual_seed(0)
    b, h, grp, d, width = 3, 2, 3, 8, 70
    st = KVStore(1, h, d, b, 128, 0, torch.float64, torch.device("cpu"), sketch_layers=1, sketch_positions=width)
    keys = torch.randn(b, h, width, d, generator=g, dtype=torch.float64)
    evicted = torch.rand(b, h, width, generator=g) < 0.6
    evicted[2] = False  # a row that lost nothing
    st.write_sketch(0, torch.arange(b), keys, evicted)
    q = torch.randn(b, h * grp, d, generator=g, dtype=torch.float64)
    scores = torch.einsum("bhgd,bhwd->bhgw", q.view(b, h, grp, d), keys) * 0.4
    held = ~evicted  # the kept prompt entries (generated entries would only add to the held partition)
    lse = torch.logsumexp(scores.masked_fill(~held[:, :, None], float("-inf")), -1)
    ev = torch.logsumexp(scores.masked_fill(~evicted[:, :, None], float("-inf")), -1)
    exact = torch.sigmoid(ev - lse).mean(dim=(1, 2))
    bound = ModelRunner._lost_mass(SimpleNamespace(store=st), 0, q, lse, 0.4, b)
    assert (bound >= exact - 1e-9).all() and (bound <= 1).all()
    assert bound[2] == 0 and exact[2] == 0
    assert (bound[:2] > 0).all()


def test_lost_mass_signal_in_the_engine(model64):
    """0 under no press; under snapkv, the first token's value is the exact evicted share (in (0, 1)), the
    decode steps' bounds stay in [0, 1]; a restore before the first decode step zeroes it."""
    from hazard.compression import PressSpec, build_press
    from hazard.control import PolicyController, build_policy
    from hazard.engine import Engine
    from hazard.signals import SIGNALS

    col = SIGNALS.index("lost_mass_ub")
    p = [[(7 * i) % 250 for i in range(40)], [(3 * i + 1) % 250 for i in range(55)]]
    eng = Engine(model64, [256], max_new_tokens=10, batch_size=2, probe_layers=(0, -1), ignore_eos=True)
    for gen in eng.generate(p, build_press(PressSpec("none"))):
        assert (gen.signals[:, col] == 0).all()
    spec = PressSpec("snapkv", 0.5, {"window_size": 8})
    for gen in eng.generate(p, build_press(spec)):
        x = gen.signals[:, col]
        assert 0 < x[0] < 1 and (x >= 0).all() and (x <= 1).all() and (x[1:] > 0).all()
    ctl = PolicyController(build_policy("scheduled", at=1), None, 0.5, 10)
    for gen in eng.generate(p, build_press(spec), ctl):
        assert (gen.signals[1:, col] == 0).all()  # restored before the first decode step: nothing evicted
