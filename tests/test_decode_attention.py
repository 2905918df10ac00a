"""The Triton decode-attention kernel (run by Triton's interpreter here) against SDPA + the signal reduction,
and the engine with it against the engine with SDPA."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hazard.compression import PressSpec, build_press
from hazard.engine import Engine

attention = pytest.importorskip("hazard.engine.attention")
if attention.triton is None:
    pytest.skip("triton is not installed (make install installs it)", allow_module_level=True)

from hazard.signals.attention import attention_stats  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("splits", [1, 3])
def test_kernel_equals_masked_sdpa_and_attention_stats(dtype, splits):
    """Per-row lengths (empty row, one block, block edges, a row past capacity), GQA groups of 3, stats on
    and off, one split and several: the output equals SDPA with the row's mask and the statistics equal
    ``attention_stats`` over the same slots."""
    g = torch.Generator().manual_seed(0)
    n, hkv, grp, d, cap = 6, 2, 3, 16, 150
    q = torch.randn(n, hkv, grp, d, generator=g, dtype=dtype)
    k = torch.randn(8, hkv, cap, d, generator=g, dtype=dtype)  # more rows than the step runs: strides
    v = torch.randn(8, hkv, cap, d, generator=g, dtype=dtype)
    lens = torch.tensor([0, 5, 63, 64, 148, 400])
    pos = torch.randperm(cap, generator=g).expand(8, hkv, cap).contiguous()  # any positions, not slot order
    cur, plen = lens + 7, torch.tensor([1, 3, 40, 70, 100, 20])
    valid = torch.arange(cap)[None] <= lens.clamp(max=cap - 1)[:, None]
    ref = F.scaled_dot_product_attention(q, k[:n], v[:n], attn_mask=valid[:, None, None, :], scale=0.3)
    ref_stats = attention_stats(q.reshape(n, hkv * grp, d), k[:n], 0.3, valid, pos[:n], cur, plen)
    out, stats, lse = attention.decode_attention(q, k, v, lens, 0.3, pos, cur, plen, splits=splits)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out, ref, atol=tol)
    assert stats.dtype == torch.float32 and torch.allclose(stats, ref_stats, atol=1e-5)
    scores = (q @ k[:n].transpose(-1, -2) * 0.3).masked_fill(~valid[:, None, None, :], float("-inf"))
    assert torch.allclose(lse, torch.logsumexp(scores, -1).float(), atol=1e-5)
    out2, none, no_lse = attention.decode_attention(q, k, v, lens, 0.3, splits=splits)
    assert none is None and no_lse is None and torch.allclose(out2, ref, atol=tol)


@pytest.mark.parametrize("spec", [PressSpec("none"), PressSpec("snapkv", 0.5, {"window_size": 8}),
                                  PressSpec("decode_knorm", 0.5, {"compression_interval": 8})], ids=lambda s: s.label)
def test_engine_with_kernel_equals_engine_with_sdpa(model64, spec):
    """Rows of different lengths through 2 slots (continuous batching, per-row decode compression): same
    tokens, cache lengths and signals whichever attention the step runs."""
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 250, rng.integers(20, 60)).tolist() for _ in range(3)]
    runs = {}
    for impl in ("sdpa", "triton"):
        eng = Engine(model64, [256], max_new_tokens=12, batch_size=2, probe_layers=(0, -1), attention=impl)
        assert eng.runner.kernel == (impl == "triton")
        runs[impl] = eng.generate(prompts, build_press(spec))
    for a, b in zip(runs["sdpa"], runs["triton"]):
        assert a.tokens == b.tokens and (a.kv_tokens == b.kv_tokens).all()
        assert np.allclose(a.signals, b.signals, atol=1e-5, equal_nan=True)
