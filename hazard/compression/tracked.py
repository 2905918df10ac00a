"""A ScorerPress wrapper that records which cache slots each compression kept.

kvpress gathers the kept K/V and forgets the indices. We need them: the attention probe asks which
original position each cache slot holds (sink, recent, prompt or generated), and reversible eviction
needs to know what was dropped. The selection below is ScorerPress.compress, step for step, with the
indices kept.
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
    keep_evicted : bool
        Also keep the evicted K/V (on the CPU) so they can be restored.
    kept : dict[int, torch.Tensor]
        layer index -> kept slot indices ``(batch, kv_heads, n_kept)`` of the last compression,
        in cache order after the gather; cleared by ``pop_kept``.
    evicted : dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
        layer index -> (indices, keys, values) of the evicted slots, when ``keep_evicted``. Keys were
        rotated at their original positions before eviction, so putting them back needs no re-rotation.
    """

    press: ScorerPress | None = None
    compression_ratio: float = 0.0
    keep_evicted: bool = False
    kept: dict = field(default_factory=dict, repr=False)
    evicted: dict = field(default_factory=dict, repr=False)

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
        if self.keep_evicted:
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
            ev = (~keep).nonzero()[:, -1].view(*idx.shape[:2], -1)  # the complement, ascending per head
            g = ev.unsqueeze(-1).expand(-1, -1, -1, module.head_dim)
            # Plain (pageable) host copies of a few hundred KB per layer and row: pinned ones would
            # page-lock one allocation per tensor for as long as the row lives.
            self.evicted[module.layer_idx] = tuple(t.cpu() for t in (ev, keys.gather(2, g), values.gather(2, g)))
        return keys.gather(2, gather).contiguous(), values.gather(2, gather).contiguous()

    def pop_kept(self) -> dict[int, torch.Tensor]:
        kept, self.kept = self.kept, {}
        return kept

    def pop_evicted(self) -> dict[int, tuple]:
        evicted, self.evicted = self.evicted, {}
        return evicted
