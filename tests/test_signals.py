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
