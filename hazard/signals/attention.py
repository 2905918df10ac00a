"""Attention statistics that work under SDPA, which returns no weights.

The engine computes, for a few probed layers, softmax(q K^T * scale) of the current query over the cached
keys itself (its decode step holds q; the prefill recomputes the last prompt token's query from the
attention module's input with q_proj + rotary embedding, as kvpress does), and reduces it to five numbers
per row. Cost: O(heads x cache) per probed layer and step, small next to the model.
"""

from __future__ import annotations

import torch
from kvpress.utils import get_prerope_query_states
from transformers.models.llama.modeling_llama import rotate_half

ATTENTION_SIGNALS = ("attn_entropy", "attn_sink_mass", "attn_recent_mass", "attn_prompt_mass", "attn_generated_mass")
N_SINK = 4
N_RECENT = 32


def attention_probs(q: torch.Tensor, keys: torch.Tensor, scale: float, valid: torch.Tensor, return_lse: bool = False):
    """Softmax attention of one query per row over its cache slots, in float32.

    Parameters
    ----------
    q : (batch, q_heads, head_dim) rotated query of the current token.
    keys : (batch, kv_heads, slots, head_dim) cached keys, the current token's included.
    valid : (batch, slots) bool, True where a slot holds a real entry.

    Returns
    -------
    (batch, kv_heads, q_heads // kv_heads, slots) probabilities (0 on invalid slots); with ``return_lse``
    also the (batch, kv_heads, group) log-partition of the scores.
    """
    b, hq, d = q.shape
    hkv = keys.shape[1]
    # The matmul runs in the cache dtype (a float32 copy of the cache would cost more than the model's own
    # attention); only the scores are promoted.
    scores = torch.matmul(q.view(b, hkv, hq // hkv, d), keys.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs, torch.logsumexp(scores, dim=-1)) if return_lse else probs


def stats_from_probs(attn: torch.Tensor, slot_pos: torch.Tensor, valid: torch.Tensor, cur_pos: torch.Tensor,
                     prompt_len: torch.Tensor) -> torch.Tensor:
    """Reduce attention probabilities to ``ATTENTION_SIGNALS``.

    Parameters
    ----------
    attn : (batch, kv_heads, group, slots) from ``attention_probs``.
    slot_pos : (batch, kv_heads, slots) original token position held by each slot.
    valid : (batch, slots) bool.
    cur_pos : (batch,) position of the current token; prompt_len : (batch,) prompt tokens.

    Returns
    -------
    (batch, 5) float32: entropy, then mass on sink, recent, prompt and generated positions, each averaged
    over query heads.
    """
    ent = -torch.special.xlogy(attn, attn).sum(-1)  # 0 log 0 = 0
    real = valid[:, None, :]
    cur, plen = cur_pos[:, None, None], prompt_len[:, None, None]
    masks = torch.stack([real & (slot_pos < N_SINK), real & (slot_pos > cur - N_RECENT),
                         real & (slot_pos < plen), real & (slot_pos >= plen)], dim=-1).to(attn.dtype)
    mass = torch.matmul(attn, masks)  # (batch, kv_heads, group, 4): one pass over the probabilities
    return torch.cat([ent[..., None], mass], dim=-1).mean(dim=(1, 2)).float()


def attention_stats(q: torch.Tensor, keys: torch.Tensor, scale: float, valid: torch.Tensor, slot_pos: torch.Tensor,
                    cur_pos: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    """``stats_from_probs(attention_probs(...))``: (batch, 5) statistics of one layer's attention."""
    return stats_from_probs(attention_probs(q, keys, scale, valid), slot_pos, valid, cur_pos, prompt_len)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as Llama/Qwen2 apply it (``cos``/``sin`` broadcast over the heads)."""
    return x * cos + rotate_half(x) * sin


def last_queries(module, kwargs: dict, m: int) -> torch.Tensor:
    """Rotated queries of the last ``m`` tokens, (batch, q_heads, m, head_dim), from an attention module's
    forward kwargs (as a forward hook with ``with_kwargs=True`` sees them)."""
    q = get_prerope_query_states(module, kwargs["hidden_states"][:, -m:])
    cos, sin = kwargs["position_embeddings"]
    return rope(q, cos[:, -m:].unsqueeze(1), sin[:, -m:].unsqueeze(1))
