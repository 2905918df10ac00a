"""A ScorerPress wrapper that records which cache slots each compression kept.

kvpress gathers the kept K/V and forgets the indices. We need them: the engine's store keeps each row's
slots in position order, the attention signals ask which original position a slot holds (sink, recent,
prompt or generated), and recompress returns to the kept set. The selection below is
ScorerPress.compress, step for step, with the indices kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from kvpress import ScorerPress
from kvpress.utils import compute_n_kept
from torch import nn


@dataclass
class TrackedPress(ScorerPress):
    """Delegate scoring to ``press``; compress exactly as ScorerPress does and record kept indices.

    Parameters
    ----------
    press : ScorerPress
        The press whose ``score`` ranks the KV pairs.
    compression_ratio : float
        Fraction of KV pairs to remove (DecodingPress overrides it per call).

    Attributes
    ----------
    kept : dict[int, torch.Tensor]
        layer index -> kept slot indices ``(batch, kv_heads, n_kept)`` of the last compression,
        in cache order after the gather; cleared by ``pop_kept``.
    """

    press: ScorerPress | None = None
    compression_ratio: float = 0.0
    kept: dict = field(default_factory=dict, repr=False)

    def post_init_from_model(self, model):
        self.press.post_init_from_model(model)

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        # Some scorers read their own ratio inside score (StreamingLLMPress prunes the middle by it). The
        # ratio lives here (a DecodingPress sets it per call), so hand it down first: with the inner
        # default of 0, StreamingLLM scored every slot 1 and topk kept an arbitrary set (a real bug).
        self.press.compression_ratio = self.compression_ratio
        return self.press.score(module, hidden_states, keys, values, attentions, kwargs)

    def compress(self, module: nn.Module, hidden_states, keys, values, attentions, kwargs):
        if self.compression_ratio == 0:
            return keys, values
        scores = self.score(module, hidden_states, keys, values, attentions, kwargs)
        n_kept = compute_n_kept(keys.shape[2], self.compression_ratio)
        idx = scores.topk(n_kept, dim=-1).indices
        self.kept[module.layer_idx] = idx
        gather = idx.unsqueeze(-1).expand(-1, -1, -1, module.head_dim)
        return keys.gather(2, gather).contiguous(), values.gather(2, gather).contiguous()

    def pop_kept(self) -> dict[int, torch.Tensor]:
        kept, self.kept = self.kept, {}
        return kept
