"""Attention statistics that work under SDPA, which returns no weights.

For a few chosen layers, a forward hook on the attention module recomputes the current query from the
module's input (q_proj + rotary embedding, as kvpress does) and takes softmax(q K^T * scale) over the
cached keys itself. Cost: O(heads x cache) per probed layer and step, small next to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kvpress.utils import get_prerope_query_states
from transformers.models.llama.modeling_llama import rotate_half

ATTENTION_SIGNALS = ("attn_entropy", "attn_sink_mass", "attn_recent_mass", "attn_prompt_mass", "attn_generated_mass")
N_SINK = 4
N_RECENT = 32


@dataclass
class ProbeContext:
    """What the probe needs to know about the cache at this step (set by the engine before a forward).

    valid : (batch, slots) bool, True where the cache slot (after this step's append) holds a real entry.
    slot_pos : layer -> (batch, kv_heads, slots) original token position of each slot, -1 for padding.
    cur_pos : (batch,) position of the token being processed.
    prompt_len : (batch,) prompt length; positions below it are prompt tokens.
    """

    valid: torch.Tensor
    slot_pos: dict[int, torch.Tensor]
    cur_pos: torch.Tensor
    prompt_len: torch.Tensor


def attention_stats(q: torch.Tensor, keys: torch.Tensor, scale: float, ctx: ProbeContext, layer: int) -> torch.Tensor:
    """Statistics of one layer's attention for the last query.

    Parameters
    ----------
    q : (batch, q_heads, head_dim) rotated query of the current token.
    keys : (batch, kv_heads, slots, head_dim) cached keys, the current token's included.

    Returns
    -------
    (batch, 5) float32 in ``ATTENTION_SIGNALS`` order, each averaged over query heads.
    """
    b, hq, d = q.shape
    hkv = keys.shape[1]
    q = q.view(b, hkv, hq // hkv, d).float()
    scores = torch.einsum("bhgd,bhsd->bhgs", q, keys.float()) * scale
    valid = ctx.valid[:, None, None, :]
    attn = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    ent = -torch.where(attn > 0, attn * attn.clamp_min(1e-30).log(), torch.zeros_like(attn)).sum(-1)
    pos = ctx.slot_pos[layer][:, :, None, :]  # broadcast over the query heads of each KV group
    cur = ctx.cur_pos[:, None, None, None]
    plen = ctx.prompt_len[:, None, None, None]
    real = pos >= 0
    masks = (real & (pos < N_SINK), real & (pos > cur - N_RECENT), real & (pos < plen), real & (pos >= plen))
    mass = [(attn * m).sum(-1) for m in masks]
    return torch.stack([ent, *mass], dim=-1).mean(dim=(1, 2))


def last_queries(module, kwargs: dict, m: int) -> torch.Tensor:
    """Rotated queries of the last ``m`` tokens, (batch, q_heads, m, head_dim), from an attention module's
    forward kwargs (as a forward hook with ``with_kwargs=True`` sees them)."""
    q = get_prerope_query_states(module, kwargs["hidden_states"][:, -m:])
    cos, sin = kwargs["position_embeddings"]
    cos, sin = cos[:, -m:].unsqueeze(1), sin[:, -m:].unsqueeze(1)
    return q * cos + rotate_half(q) * sin


class AttentionProbe:
    """Forward hooks on the attention modules of ``layers``; ``stats()`` gives the mean over them.

    Register before any press so the hook sees the cache before a press hook compresses it.
    """

    def __init__(self, model, layers: list[int]):
        decoder = model.model.language_model if hasattr(model.model, "language_model") else model.model
        n = len(decoder.layers)
        self.layers = sorted({i % n for i in layers})
        self.ctx: ProbeContext | None = None
        self._out: dict[int, torch.Tensor] = {}
        self._handles = [decoder.layers[i].self_attn.register_forward_hook(self._hook, with_kwargs=True)
                         for i in self.layers]

    def _hook(self, module, args, kwargs, output):
        if self.ctx is None:
            return
        q = last_queries(module, kwargs, 1)[:, :, 0]
        keys = kwargs["past_key_values"].layers[module.layer_idx].keys
        self._out[module.layer_idx] = attention_stats(q, keys, module.scaling, self.ctx, module.layer_idx)

    def stats(self, batch: int, device) -> torch.Tensor:
        """(batch, 5) mean over probed layers; NaN when no layer is probed."""
        if not self.layers:
            return torch.full((batch, len(ATTENTION_SIGNALS)), float("nan"), device=device)
        out = torch.stack([self._out[i] for i in self.layers]).mean(0)
        self._out = {}
        return out

    def remove(self):
        for h in self._handles:
            h.remove()
