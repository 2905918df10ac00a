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
    return eng.generate(prompts, build_press(spec))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_batched_equals_single(model64, spec):
    """One prompt at a time, all at once, and continuous batching (5 prompts through 2 slots, refilled as
    rows finish) give the same rows."""
    prompts = _prompts(5)
    single = _run(model64, prompts, spec, batch_size=1)
    for batch in (5, 2):
        for a, b in zip(_run(model64, prompts, spec, batch_size=batch), single):
            assert a.tokens == b.tokens
            assert a.finished == b.finished
            assert (a.kv_tokens == b.kv_tokens).all()
            assert torch.allclose(torch.from_numpy(a.signals), torch.from_numpy(b.signals), atol=1e-5)


def test_mixed_presses_in_one_batch_equal_each_press_alone(model64):
    """Rows under different prefill presses share one generate (prefill per press, one decode step for
    all): every row equals its press's own run, signals (the evicted-mass bound included) too."""
    prompts = _prompts(6, seed=4)
    specs = SPECS[:5]  # the prefill presses (and none)
    presses = {s.label: build_press(s) for s in specs}
    jobs = [(p, s) for p in prompts for s in specs]
    eng = Engine(model64, [256], max_new_tokens=20, batch_size=7, probe_layers=(0, -1))
    mixed = eng.generate([p for p, _ in jobs], [presses[s.label] for _, s in jobs])
    alone = {s.label: _run(model64, prompts, s, batch_size=7) for s in specs}
    for j, (p, s) in enumerate(jobs):
        a, b = mixed[j], alone[s.label][prompts.index(p)]
        assert a.tokens == b.tokens and (a.kv_tokens == b.kv_tokens).all(), s.label
        assert np.allclose(a.signals, b.signals, atol=1e-5, equal_nan=True), s.label
    with pytest.raises(Exception, match="decode_\\* presses .* run alone"):
        eng.generate(prompts[:2], [build_press(SPECS[5]), presses["none"]])


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
    off = Engine(model64, [256], max_new_tokens=20, batch_size=2, signals=False).generate(
        prompts, build_press(PressSpec("knorm", 0.5)))
    assert [g.tokens for g in on] == [g.tokens for g in off]
    assert all((g.signals[:, :-1] == 0).all() and (g.signals[:, -1] == g.kv_tokens).all() for g in off)


@pytest.mark.parametrize("name", ["streaming_llm", "snapkv", "knorm", "expected_attention", "tova", "keydiff",
                                  "cur", "cap", "critical_expected_attention", "critical_snapkv"])
def test_tracked_press_keeps_what_the_kvpress_press_keeps(model64, name, monkeypatch):
    """Our recording wrapper must compress exactly like the plain kvpress press it wraps."""
    from kvpress import CriticalKVPress
    from transformers import DynamicCache

    from hazard.compression.registry import SCORERS

    ids = torch.tensor([_prompts(1, seed=3)[0]])
    kwargs = {"window_size": 8} if name.endswith("snapkv") else {"n_future_positions": 64} if name == "cap" else {}

    def prefill(press):
        cache = DynamicCache()
        with press(model64):
            model64(input_ids=ids, past_key_values=cache, use_cache=True)
        return [layer.keys for layer in cache.layers]

    ours = build_press(PressSpec(name, 0.5, kwargs))
    if name.startswith("critical_"):  # kvpress reads config.head_dim, which Qwen2 configs leave unset
        cfg = model64.config
        monkeypatch.setattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads, raising=False)
        base = name.removeprefix("critical_")
        theirs = CriticalKVPress(SCORERS[base](**kwargs, **({"use_vnorm": False} if base == "expected_attention"
                                                            else {})))
        theirs.compression_ratio = 0.5
        assert not torch.equal(prefill(ours)[0], prefill(SCORERS[base](compression_ratio=0.5, **kwargs))[0])
    else:
        theirs = SCORERS[name](compression_ratio=0.5, **kwargs)
    for a, b in zip(prefill(ours), prefill(theirs)):
        assert torch.equal(a, b)
    if name == "streaming_llm":  # the 4 sink slots and the most recent ones, nothing from the middle
        n = ids.shape[1]
        kept = ours.pop_kept()[0][0, 0].sort().values.tolist()
        n_kept = compute_n_kept(n, 0.5)
        assert kept == list(range(4)) + list(range(n - n_kept + 4, n))


@pytest.mark.parametrize("name", ["streaming_llm", "snapkv", "knorm", "expected_attention", "tova", "keydiff",
                                  "lagkv", "random", "cur", "cap", "critical_expected_attention"])
def test_batched_prefill_keeps_what_kvpress_keeps_for_each_prompt_alone(model64, name):
    """Prompts of different lengths prefilled together: each row's store holds exactly the entries the
    press keeps when it compresses that prompt alone (kept positions and K/V, every layer)."""
    from transformers import DynamicCache

    from hazard.engine import KVStore
    from hazard.engine.prefill import Prefill
    from hazard.engine.runner import ModelRunner

    kwargs = {"window_size": 8} if name == "snapkv" else {"seed": 0} if name == "random" else {}
    if name == "lagkv":
        kwargs = {"n_sink": 2, "lag_size": 8}
    if name == "cap":
        kwargs = {"n_future_positions": 64}
    prompts = _prompts(4, seed=7) + [_prompts(1, seed=7)[0]]  # a repeated length: one group of two
    cfg = model64.config
    d = cfg.hidden_size // cfg.num_attention_heads
    runner = ModelRunner(model64, [0, -1])
    store = KVStore(cfg.num_hidden_layers, cfg.num_key_value_heads, d, 6, 128, 0, torch.float64, torch.device("cpu"))
    slots = [5, 0, 3, 1, 2]
    Prefill(runner, token_budget=150)(store, slots, prompts, build_press(PressSpec(name, 0.5, kwargs)), False)
    for slot, p in zip(slots, prompts):
        alone = build_press(PressSpec(name, 0.5, kwargs))
        cache = DynamicCache()
        with torch.inference_mode(), alone(model64):
            model64(input_ids=torch.tensor([p]), past_key_values=cache, use_cache=True)
        kept = alone.pop_kept()
        n = compute_n_kept(len(p), 0.5)
        assert int(store.lens[slot]) == n
        for li, layer in enumerate(cache.layers):
            order = kept[li][0].sort(-1)
            assert torch.equal(store.pos[li, slot, :, :n], order.values)
            g = order.indices[..., None].expand(-1, -1, d)
            assert torch.allclose(store.k[li, slot, :, :n], layer.keys[0].gather(1, g), atol=1e-12)
            assert torch.allclose(store.v[li, slot, :, :n], layer.values[0].gather(1, g), atol=1e-12)


def test_attention_signals_match_eager_attention_weights(model64):
    """The signals the engine computes without attention weights (prefill probe and decode step) equal
    statistics of the model's own eager attention weights for the same tokens."""
    from hazard.signals.attention import N_RECENT, N_SINK

    p = _prompts(1, seed=8)[0]
    g = Engine(model64, [256], max_new_tokens=3, batch_size=1, probe_layers=(0, -1), ignore_eos=True).generate([p])[0]
    ids = torch.tensor([p + g.tokens[:2]])
    model64.config._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            out = model64(ids, output_attentions=True)
    finally:
        model64.config._attn_implementation = "sdpa"
    n = len(p)
    for t in range(3):  # token t was chosen by the forward of position n - 1 + t
        q = n - 1 + t
        ref = []
        for li in (0, len(out.attentions) - 1):
            a = out.attentions[li][0, :, q, : q + 1]  # (heads, keys)
            ent = -(a * a.clamp_min(1e-300).log()).sum(-1).mean()
            pos = torch.arange(q + 1)
            ref.append(torch.stack([ent, a[:, pos < N_SINK].sum(-1).mean(), a[:, pos > q - N_RECENT].sum(-1).mean(),
                                    a[:, pos < n].sum(-1).mean(), a[:, pos >= n].sum(-1).mean()]))
        assert np.allclose(g.signals[t, 5:10], torch.stack(ref).mean(0).numpy(), atol=1e-5), t


def _store_after_prefill(model64, prompt, spec, reversible=True, full_on_device=False, digest_page=0):
    from hazard.engine import KVStore
    from hazard.engine.prefill import Prefill
    from hazard.engine.runner import ModelRunner

    cfg = model64.config
    d = cfg.hidden_size // cfg.num_attention_heads
    store = KVStore(cfg.num_hidden_layers, cfg.num_key_value_heads, d, 2, 128, 64 if reversible else 0,
                    torch.float64, torch.device("cpu"), full_on_device=full_on_device, digest_page=digest_page,
                    q_heads=cfg.num_attention_heads)
    store.digest_active = digest_page > 0
    Prefill(ModelRunner(model64, [0]))(store, [1], [prompt], build_press(spec), reversible)
    return store


@pytest.mark.parametrize("full_on_device", [False, True], ids=["prompts-on-host", "prompts-on-device"])
def test_restore_recall_recompress_on_the_store(model64, full_on_device):
    """restore == the uncompressed prefill bit for bit; recall of every evicted entry == restore; recompress
    returns to the press's entries; a partial recall holds kept + recalled entries in position order. The
    whole prompts may be kept in host memory or on the device (the engine picks what fits)."""
    p = _prompts(1, seed=9)[0]
    n = len(p)
    full = _store_after_prefill(model64, p, PressSpec("none"))
    spec = PressSpec("snapkv", 0.75, {"window_size": 8})
    a = _store_after_prefill(model64, p, spec, full_on_device=full_on_device)
    k0, pos0, n_kept = a.k.clone(), a.pos.clone(), int(a.lens[1])
    assert n_kept == compute_n_kept(n, 0.75)
    with torch.inference_mode():
        a.restore([1])
    assert int(a.lens[1]) == n
    assert torch.equal(a.k[:, 1, :, :n], full.k[:, 1, :, :n]) and torch.equal(a.v[:, 1, :, :n], full.v[:, 1, :, :n])
    assert torch.equal(a.pos[:, 1, :, :n], full.pos[:, 1, :, :n])
    with torch.inference_mode():
        a.recompress([1])
    assert int(a.lens[1]) == n_kept and torch.equal(a.k[:, 1, :, :n_kept], k0[:, 1, :, :n_kept])
    assert torch.equal(a.pos[:, 1, :, :n_kept], pos0[:, 1, :, :n_kept])
    held = a.held([1])[:, 0]  # (L, H, N)
    evicted = (~held[..., :n]).nonzero()[:, -1].view(held.shape[0], held.shape[1], -1)
    with torch.inference_mode():
        a.recall([1], evicted[:, None])
    assert torch.equal(a.k[:, 1, :, :n], full.k[:, 1, :, :n]) and torch.equal(a.pos[:, 1, :, :n], full.pos[:, 1, :, :n])
    with torch.inference_mode():
        a.recompress([1])
        a.recall([1], evicted[:, None, :, :3])
    pos = a.pos[:, 1, :, : n_kept + 3]
    assert int(a.lens[1]) == n_kept + 3 and (pos[..., 1:] > pos[..., :-1]).all()
    want = torch.cat([pos0[:, 1, :, :n_kept], evicted[..., :3]], -1).sort(-1).values
    assert torch.equal(pos, want)
    g = want[..., None].expand(-1, -1, -1, a.head_dim)
    assert torch.equal(a.k[:, 1, :, : n_kept + 3], full.k[:, 1].gather(2, g))


def test_out_of_memory_halves_the_batch_and_loses_nothing(model64, monkeypatch, caplog):
    """A step that runs out of memory: the batch halves, unfinished rows run again, finished ones are kept;
    the rows equal an unbroken run (no row lost or duplicated)."""
    from hazard.engine.runner import ModelRunner

    prompts = _prompts(5, seed=10)
    spec = PressSpec("knorm", 0.5)
    ref = _run(model64, prompts, spec, batch_size=4)
    step, calls = ModelRunner.step, []

    def oom_once(self, n, width):
        calls.append(n)
        if len(calls) == 7:
            raise torch.OutOfMemoryError("injected")
        return step(self, n, width)

    monkeypatch.setattr(ModelRunner, "step", oom_once)
    eng = Engine(model64, [256], max_new_tokens=20, batch_size=4)
    got = eng.generate(prompts, build_press(spec))
    assert eng.batch_size == 2 and "out of GPU memory" in caplog.text
    assert [g.tokens for g in got] == [g.tokens for g in ref]
    assert all(np.allclose(a.signals, b.signals, atol=1e-9) for a, b in zip(got, ref))


def test_failed_graph_capture_falls_back_to_eager_with_one_warning(model64, caplog):
    prompts = _prompts(2, seed=11)
    eager = _run(model64, prompts, PressSpec("knorm", 0.5), batch_size=2)
    eng = Engine(model64, [256], max_new_tokens=20, batch_size=2, cuda_graphs=True)  # no CUDA here: capture fails
    got = eng.generate(prompts, build_press(PressSpec("knorm", 0.5)))
    assert [g.tokens for g in got] == [g.tokens for g in eager]
    assert caplog.text.count("CUDA graph capture failed") == 1


def _repeat4_reference(tokens, n=4, window=64):
    grams = [tuple([-1] * max(0, n - 1 - i) + tokens[max(0, i - n + 1): i + 1]) for i in range(len(tokens))]
    return [float(grams[i] in grams[max(0, i - window): i]) for i in range(len(tokens))]


@pytest.mark.parametrize("spec", [PressSpec("none"), PressSpec("knorm", 0.75)], ids=lambda s: s.label)
def test_repeat4_signal_matches_the_tokens(model64, spec):
    """The device-side repetition signal equals its definition on the generated tokens, through slot reuse
    (7 prompts through 3 slots; repeated prompts, so a slot's stale history would show) and the tail's
    compaction."""
    from hazard.signals import SIGNALS

    prompts = _prompts(4, seed=5)
    gens = _run(model64, prompts + prompts[:3], spec, batch_size=3, max_new=90)
    col = SIGNALS.index("repeat4")
    for g in gens:
        assert g.signals[:, col].tolist() == _repeat4_reference(g.tokens)
    assert sum(g.signals[:, col].sum() for g in gens) > 0  # the tiny model does repeat itself


def test_one_prompt_under_several_presses_runs_through_the_model_once(model64):
    """Rows that repeat a prompt under different presses share its forward; each row's store and first
    packet equal that press's own prefill of the prompt."""
    from hazard.engine import KVStore
    from hazard.engine.prefill import Prefill
    from hazard.engine.runner import ModelRunner

    prompts = _prompts(3, seed=9)
    specs = [PressSpec("snapkv", 0.5, {"window_size": 8}), PressSpec("knorm", 0.75), PressSpec("none"),
             PressSpec("expected_attention", 0.5)]  # batched scorers, no press, a per-length scorer
    jobs = [(p, s) for p in prompts for s in specs]
    cfg = model64.config
    d = cfg.hidden_size // cfg.num_attention_heads
    runner = ModelRunner(model64, [0, -1])
    forwarded = []
    handle = runner.decoder.register_forward_pre_hook(
        lambda mod, args, kw: forwarded.append(kw["input_ids"].shape[0]), with_kwargs=True)

    def store_of(rows: int) -> KVStore:
        return KVStore(cfg.num_hidden_layers, cfg.num_key_value_heads, d, rows, 128, 0, torch.float64,
                       torch.device("cpu"))

    shared = store_of(len(jobs))
    presses = {s.label: build_press(s) for s in specs}
    packets = Prefill(runner)(shared, list(range(len(jobs))), [p for p, _ in jobs], [presses[s.label] for _, s in jobs],
                              False)
    assert forwarded == [len(prompts)]
    for s in specs:
        alone = store_of(len(prompts))
        own = Prefill(runner)(alone, list(range(len(prompts))), prompts, build_press(s), False)
        for i in range(len(prompts)):
            r = jobs.index((prompts[i], s))
            n = int(alone.lens[i])
            assert int(shared.lens[r]) == n, s.label
            assert torch.equal(shared.pos[:, r, :, :n], alone.pos[:, i, :, :n]), s.label
            assert torch.allclose(shared.k[:, r, :, :n], alone.k[:, i, :, :n], atol=1e-12), s.label
            assert torch.allclose(shared.v[:, r, :, :n], alone.v[:, i, :, :n], atol=1e-12), s.label
            assert torch.allclose(packets[r], own[i], atol=1e-9, equal_nan=True), s.label
    handle.remove()


def test_verify_window_measures_kl_against_the_uncompressed_model(model64):
    """verify_kl / verify_top1: the running means over the first k steps of KL(uncompressed || compressed)
    and top-1 agreement on the row's own tokens, equal to a manual kvpress loop against one uncompressed
    forward; held after the window; 0 / 1 when nothing is evicted; the rows' tokens are unchanged."""
    from transformers import DynamicCache

    from hazard.errors import HazardError
    from hazard.signals import SIGNALS

    ki, ti = SIGNALS.index("verify_kl"), SIGNALS.index("verify_top1")
    prompts, k = _prompts(3, seed=11), 5
    spec = PressSpec("knorm", 0.75)
    kw = dict(max_new_tokens=12, batch_size=4, probe_layers=(0, -1), ignore_eos=True)
    eng = Engine(model64, [256], verify_window=k, **kw)
    gens = eng.generate(prompts, build_press(spec))
    for p, g, h in zip(prompts, gens, Engine(model64, [256], **kw).generate(prompts, build_press(spec))):
        assert g.tokens == h.tokens  # the shadows change nothing of the rows
        toks = g.tokens
        m = min(k, len(toks) - 1)
        with torch.inference_mode():
            full = model64(torch.tensor([p + toks])).logits[0, len(p): len(p) + m].log_softmax(-1)
            cache = DynamicCache()
            with build_press(spec)(model64):
                model64(torch.tensor([p]), past_key_values=cache)
            comp = []
            for t in range(m):  # the compressed run's distribution for token t + 1, at its true position
                n = cache.get_seq_length()
                out = model64(torch.tensor([[toks[t]]]), past_key_values=cache,
                              position_ids=torch.tensor([[len(p) + t]]), attention_mask=torch.ones(1, n + 1).long())
                comp.append(out.logits[0, -1].log_softmax(-1))
            comp = torch.stack(comp)
        kl = (full.exp() * (full - comp)).sum(-1).numpy()
        agree = (full.argmax(-1) == comp.argmax(-1)).double().numpy()
        steps = np.arange(1, m + 1)
        assert g.signals[0, ki] == 0.0 and g.signals[0, ti] == 1.0  # the prefill's token: the uncompressed one
        assert np.allclose(g.signals[1: m + 1, ki], np.cumsum(kl) / steps, rtol=1e-4, atol=1e-7)
        assert np.allclose(g.signals[1: m + 1, ti], np.cumsum(agree) / steps, atol=1e-6)
        assert (g.signals[m + 1:, ki] == g.signals[m, ki]).all()  # held after the window
        assert kl.max() > 1e-4  # knorm 0.75 does change the distribution
    same = eng.generate(prompts, build_press(PressSpec("knorm", 0.0)))  # a press that evicts nothing
    assert all((s.signals[:, ki] == 0).all() and (s.signals[:, ti] == 1).all() for s in same)
    with pytest.raises(HazardError, match="verify_window"):
        Engine(model64, [256], batch_size=1, verify_window=4)


def test_prompt_kept_is_what_the_prefill_press_kept_of_each_prompt(model64):
    """StreamingLLM keeps the same positions in every layer and head (4 sinks and the most recent ones):
    each row's ``prompt_kept`` is 1 there and 0 elsewhere, whichever slot the row ran in (six prompts of
    different lengths through two slots, refilled as rows finish); uncompressed rows keep everything, and
    a run without signals reports nothing."""
    prompts = _prompts(6, seed=5)
    gens = _run(model64, prompts, PressSpec("streaming_llm", 0.5), batch_size=2, max_new=6)
    for p, g in zip(prompts, gens):
        n, n_kept = len(p), compute_n_kept(len(p), 0.5)
        want = np.zeros(n, np.float32)
        want[:4] = want[n - n_kept + 4:] = 1.0
        assert g.prompt_kept.shape == (n,) and np.array_equal(g.prompt_kept, want)
    assert all(np.all(g.prompt_kept == 1.0) for g in _run(model64, prompts, PressSpec("none"), batch_size=2, max_new=4))
    eng = Engine(model64, [256], max_new_tokens=4, batch_size=2, signals=False)
    assert all(g.prompt_kept is None for g in eng.generate(prompts[:2], None))


@pytest.mark.parametrize("layer,dim", [(1, 64), (-1, 64), (1, 96)])
def test_state_signal_is_the_projected_residual_stream(model64, layer, dim):
    """``Generation.state`` at token t is the fixed projection of the residual stream after ``state_layer``,
    normed as the next reader sees it, in the forward that chose token t: the same numbers as a plain HF
    forward over prompt + answer, through continuous batching (5 prompts, 2 slots) and at the first token
    (the prefill's); at any ``state_dim`` (96: wider than this model's 64-wide state)."""
    from hazard.signals.state import project_state, state_projection, state_reader

    prompts = _prompts(5)
    eng = Engine(model64, [256], max_new_tokens=12, batch_size=2, probe_layers=(0, -1), state_layer=layer,
                 state_dim=dim)
    gens = eng.generate(prompts, None)
    decoder = model64.model
    idx = layer % len(decoder.layers)
    norm = state_reader(decoder, idx)
    proj = state_projection(model64.config.hidden_size, dtype=torch.float64, dim=dim)
    for p, g in zip(prompts, gens):
        seen: list[torch.Tensor] = []
        h = decoder.layers[idx].register_forward_hook(
            lambda m, a, out, seen=seen: seen.append(out[0] if isinstance(out, tuple) else out))
        try:
            with torch.no_grad():
                model64(torch.tensor([p + g.tokens[:-1]]))
        finally:
            h.remove()
        with torch.no_grad():
            want = project_state(norm, proj, seen[0][0, len(p) - 1:]).numpy()
        assert g.state.shape == (len(g.tokens), dim) and g.state.dtype == np.float16
        np.testing.assert_allclose(g.state.astype(np.float64), want, rtol=2e-3, atol=2e-3)


def test_state_signal_is_the_same_in_any_batch_under_a_press(model64):
    """Under a press, one prompt at a time and continuous batching record the same states; the first token's
    state comes from the prefill forward, which the press does not change."""
    prompts, spec = _prompts(4), PressSpec("snapkv", 0.5, {"window_size": 8})
    runs = [Engine(model64, [256], max_new_tokens=12, batch_size=bs, state_layer=1).generate(prompts, build_press(s))
            for bs, s in ((1, spec), (3, spec), (3, PressSpec("none")))]
    for a, b, full in zip(*runs):
        np.testing.assert_allclose(a.state.astype(np.float64), b.state.astype(np.float64), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(a.state[0], full.state[0], rtol=1e-3, atol=1e-3)
    assert Engine(model64, [256], max_new_tokens=4, batch_size=2).generate(prompts[:1], None)[0].state is None
