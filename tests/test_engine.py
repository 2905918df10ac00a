import random

import numpy as np
import pytest
import torch
from kvpress.utils import compute_n_kept

from hazard.compression import PressSpec, build_press
from hazard.engine import Engine
from hazard.signals import logit_signals

SPECS = [
    PressSpec("none"),
    PressSpec("snapkv", 0.5, {"window_size": 8}),
    PressSpec("knorm", 0.75),
    PressSpec("streaming_llm", 0.5),
    PressSpec("expected_attention", 0.5),
    PressSpec("decode_knorm", 0.5, {"compression_interval": 8}),
]


def _prompts(n=4, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(250) for _ in range(rng.randrange(30, 70))] for _ in range(n)]


def _run(model, prompts, spec, batch_size, max_new=20):
    eng = Engine(model, [256], max_new_tokens=max_new, batch_size=batch_size, probe_layers=(0, -1))
    try:
        return eng.generate(prompts, build_press(spec))
    finally:
        eng.probe.remove()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_batched_equals_single(model64, spec):
    prompts = _prompts()
    batched = _run(model64, prompts, spec, batch_size=4)
    single = _run(model64, prompts, spec, batch_size=1)
    for a, b in zip(batched, single):
        assert a.tokens == b.tokens
        assert a.finished == b.finished
        assert (a.kv_tokens == b.kv_tokens).all()
        assert torch.allclose(torch.from_numpy(a.signals), torch.from_numpy(b.signals), atol=1e-5)


def test_engine_matches_hf_generate_without_press(model64):
    prompts = _prompts(3, seed=1)
    ours = _run(model64, prompts, PressSpec("none"), batch_size=3, max_new=15)
    for p, g in zip(prompts, ours):
        ref = model64.generate(torch.tensor([p]), max_new_tokens=15, do_sample=False, eos_token_id=256,
                               pad_token_id=257)[0, len(p):].tolist()
        assert g.tokens == ref[:len(g.tokens)]


@pytest.mark.parametrize("name,ratio", [("snapkv", 0.5), ("knorm", 0.875), ("streaming_llm", 0.75)])
def test_press_really_shrinks_the_cache(model64, name, ratio):
    kwargs = {"window_size": 8} if name == "snapkv" else {}
    prompts = _prompts(2, seed=2)
    gens = _run(model64, prompts, PressSpec(name, ratio, kwargs), batch_size=2)
    for p, g in zip(prompts, gens):
        kept = compute_n_kept(len(p), ratio)
        assert g.kv_tokens_prefill == kept < len(p)
        assert g.kv_tokens.tolist() == [kept + t for t in range(len(g.tokens))]
        hkv, d = model64.config.num_key_value_heads, model64.config.hidden_size // model64.config.num_attention_heads
        assert g.bytes_per_token == model64.config.num_hidden_layers * hkv * d * 2 * 8  # float64 K and V
        assert (g.kv_bytes == g.kv_tokens * g.bytes_per_token).all()


def test_decode_press_compresses_during_generation(model64):
    prompts = _prompts(1, seed=3)
    g = _run(model64, prompts, PressSpec("decode_knorm", 0.5, {"compression_interval": 8}), 1, max_new=30)[0]
    assert g.kv_tokens_prefill == len(prompts[0])  # nothing evicted at prefill
    assert g.kv_tokens.max() < len(prompts[0]) + len(g.tokens)  # but the cache shrank while decoding
    assert (g.kv_tokens[1:] < g.kv_tokens[:-1]).any()


def test_positions_after_eviction_follow_the_prompt(model64):
    """After eviction the next token's RoPE position is prompt_len + t: a manual loop with those positions
    over the compressed cache gives the engine's tokens, and one that uses the cache length does not."""
    from transformers import DynamicCache

    spec = PressSpec("streaming_llm", 0.75)
    p = _prompts(1, seed=4)[0]
    ours = _run(model64, [p], spec, batch_size=1, max_new=12)[0]

    def manual(true_positions: bool):
        cache = DynamicCache()
        with build_press(spec)(model64):
            logits = model64(torch.tensor([p]), past_key_values=cache).logits[:, -1]
        toks, sigs = [int(logits.argmax())], [logit_signals(logits)[1][0].detach().numpy()]
        for t in range(len(ours.tokens) - 1):
            n = cache.get_seq_length()
            pos = len(p) + t if true_positions else n
            logits = model64(torch.tensor([[toks[-1]]]), past_key_values=cache, position_ids=torch.tensor([[pos]]),
                             attention_mask=torch.ones(1, n + 1, dtype=torch.long)).logits[:, -1]
            toks.append(int(logits.argmax()))
            sigs.append(logit_signals(logits)[1][0].detach().numpy())
        return toks, np.stack(sigs)

    toks, sigs = manual(True)
    assert ours.tokens == toks
    assert np.allclose(ours.signals[:, :5], sigs, atol=1e-5)
    _, wrong = manual(False)  # the cache length as position: other logits from step 1 on
    assert np.abs(ours.signals[1:, 3] - wrong[1:, 3]).max() > 1e-3


def test_signals_off_gives_the_same_tokens(model64):
    prompts = _prompts(2, seed=5)
    on = _run(model64, prompts, PressSpec("knorm", 0.5), batch_size=2)
    eng = Engine(model64, [256], max_new_tokens=20, batch_size=2, signals=False)
    off = eng.generate(prompts, build_press(PressSpec("knorm", 0.5)))
    assert [g.tokens for g in on] == [g.tokens for g in off]
    assert all((g.signals[:, :-1] == 0).all() and (g.signals[:, -1] == g.kv_tokens).all() for g in off)


@pytest.mark.parametrize("name", ["streaming_llm", "snapkv", "knorm", "expected_attention", "tova", "keydiff"])
def test_tracked_press_keeps_what_the_kvpress_press_keeps(model64, name):
    """Our recording wrapper must compress exactly like the plain kvpress press it wraps."""
    from transformers import DynamicCache

    from hazard.compression.registry import SCORERS

    ids = torch.tensor([_prompts(1, seed=3)[0]])
    kwargs = {"window_size": 8} if name == "snapkv" else {}

    def prefill(press):
        cache = DynamicCache()
        with press(model64):
            model64(input_ids=ids, past_key_values=cache, use_cache=True)
        return [layer.keys for layer in cache.layers]

    ours = build_press(PressSpec(name, 0.5, kwargs))
    theirs = SCORERS[name](compression_ratio=0.5, **kwargs)
    for a, b in zip(prefill(ours), prefill(theirs)):
        assert torch.equal(a, b)
    if name == "streaming_llm":  # the 4 sink slots and the most recent ones, nothing from the middle
        n = ids.shape[1]
        kept = ours.pop_kept()[0][0, 0].sort().values.tolist()
        n_kept = compute_n_kept(n, 0.5)
        assert kept == list(range(4)) + list(range(n - n_kept + 4, n))
