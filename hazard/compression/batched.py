"""Exact batched scoring for prompts of different lengths, for the presses the engine uses most.

A kvpress ScorerPress scores one batch of equal-length rows. The engine's prefill holds a right-padded
chunk of prompts of many lengths; calling the press once per length group costs ~30 small kernels and a
host sync per group and layer, which dominated compressed prefill on the GPU. The functions here compute,
for every row at once, the scores the press computes for that prompt alone (the same formulas, with the
padding masked out), so one top-k per row picks the same entries; tests/test_engine.py checks every
registered press against kvpress run on each prompt alone. Presses without an entry here are scored per
length group by their own ``score``.

Each function takes the press, the attention module, the chunk's attention input ``hidden`` (b, L, hidden),
``keys`` (b, kv_heads, L, head_dim), per-row ``lengths`` (b,) and the rotary ``cos``/``sin`` (b, L, head_dim),
and returns scores (b, kv_heads, L) with -inf on padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kvpress import KeyDiffPress, KnormPress, SnapKVPress, StreamingLLMPress, TOVAPress

from hazard.signals.attention import last_queries


def _window_attention(module, hidden, keys, lengths, window: int, cos, sin) -> torch.Tensor:
    """SnapKVPress.compute_window_attention per row: the last ``window`` queries of each prompt over its
    keys, causal, softmax in float32 then cast back; columns from ``length - window`` on are zeroed (kvpress
    slices them off). Returns (b, q_heads, window, L)."""
    b, hkv, L, d = keys.shape
    at = torch.arange(L, device=keys.device)
    rows = lengths[:, None] - window + torch.arange(window, device=keys.device)  # (b, window) absolute positions
    pick = rows[..., None].expand(-1, -1, hidden.shape[-1])
    at_rows = {"hidden_states": hidden.gather(1, pick),
               "position_embeddings": tuple(t.gather(1, rows[..., None].expand(-1, -1, d)) for t in (cos, sin))}
    q = last_queries(module, at_rows, window)  # (b, hq, window, d)
    hq = q.shape[1]
    w = torch.matmul(q.reshape(b, hkv, hq // hkv * window, d), keys.transpose(2, 3)).view(b, hq, window, L)
    w = w / math.sqrt(d)
    w = w.masked_fill(at[None, None, None, :] > rows[:, None, :, None], float("-inf"))
    w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    return w.masked_fill(at[None, None, None, :] >= (lengths - window)[:, None, None, None], 0)


def _pad_and_window(scores: torch.Tensor, lengths: torch.Tensor, window: int) -> torch.Tensor:
    """kvpress pads the window's own slots with ``max + 1`` (always kept); padding gets -inf."""
    at = torch.arange(scores.shape[-1], device=scores.device)
    start = (lengths - window)[:, None, None]
    scores = scores.masked_fill(at >= start, float("inf"))
    return scores.masked_fill(at >= lengths[:, None, None], float("-inf"))


def snapkv(press: SnapKVPress, module, hidden, keys, lengths, cos, sin) -> torch.Tensor:
    b, hkv, L, _ = keys.shape
    w = _window_attention(module, hidden, keys, lengths, press.window_size, cos, sin)
    scores = F.avg_pool1d(w.mean(dim=-2), kernel_size=press.kernel_size, padding=press.kernel_size // 2, stride=1)
    scores = scores.view(b, hkv, -1, L).mean(2)
    return _pad_and_window(scores, lengths, press.window_size)


def tova(press: TOVAPress, module, hidden, keys, lengths, cos, sin) -> torch.Tensor:
    w = _window_attention(module, hidden, keys, lengths, 1, cos, sin)
    scores = w.mean(1).expand(-1, keys.shape[1], -1)  # (b, 1, L) -> one score per position for every head
    return _pad_and_window(scores, lengths, 1)


def knorm(press: KnormPress, module, hidden, keys, lengths, cos, sin) -> torch.Tensor:
    scores = -torch.linalg.vector_norm(keys, dim=-1, dtype=torch.promote_types(keys.dtype, torch.float32))
    return _pad_and_window(scores, lengths, 0)


def streaming_llm(press: StreamingLLMPress, module, hidden, keys, lengths, cos, sin) -> torch.Tensor:
    at = torch.arange(keys.shape[2], device=keys.device)
    n_pruned = lengths - (lengths.double() * (1 - press.compression_ratio)).long()  # int(k_len * (1 - r))
    pruned = (at >= press.n_sink) & (at < press.n_sink + n_pruned[:, None])
    scores = torch.ones_like(keys[..., 0]).masked_fill(pruned[:, None, :], 0)
    return _pad_and_window(scores, lengths, 0)


def keydiff(press: KeyDiffPress, module, hidden, keys, lengths, cos, sin) -> torch.Tensor:
    valid = torch.arange(keys.shape[2], device=keys.device)[None, None, :, None] < lengths[:, None, None, None]
    unit = F.normalize(keys, p=2, dim=-1)
    # torch's mean of a low-precision tensor sums in float32 and rounds once: so does this masked mean.
    total = unit.float().masked_fill(~valid, 0).sum(dim=2, keepdim=True) if keys.dtype != torch.float64 else \
        unit.masked_fill(~valid, 0).sum(dim=2, keepdim=True)
    anchor = (total / lengths[:, None, None, None]).to(keys.dtype)
    return _pad_and_window(-F.cosine_similarity(keys, anchor, dim=-1), lengths, 0)


BATCHED_SCORERS = {SnapKVPress: snapkv, TOVAPress: tova, KnormPress: knorm, StreamingLLMPress: streaming_llm,
                   KeyDiffPress: keydiff}


def batched_scorer(press):
    """The batched scoring function for a (tracked) press's scorer, or None."""
    inner = getattr(press, "press", press)
    return BATCHED_SCORERS.get(type(inner))
