"""A ScorerPress wrapper that records which cache slots each compression kept.

kvpress gathers the kept K/V and forgets the indices. We need them: the engine's store keeps each row's
slots in position order, the attention signals ask which original position a slot holds (sink, recent,
prompt or generated), and recompress returns to the kept set. The selection below is
ScorerPress.compress, step for step, with the indices kept.

``keep_question`` makes the press keep each prompt's question whole within the same budget (``question_<press>``
in the registry): kvpress's own pipeline compresses the context and appends the question uncompressed, while the
engine compresses the whole templated prompt, question included (evaluate/RESULTS.md 0h: ExpectedAttention 0.875
keeps about 40% of the question's tokens, and less of the answers it breaks). Here the n_kept count of the plain
press is unchanged (same memory); the question's positions rank above every other entry, and the rest of the
budget goes to the context by the press's own scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from kvpress import ScorerPress
from kvpress.utils import compute_n_kept
from torch import nn

from hazard.errors import HazardError


def keep_from(scores: torch.Tensor, start: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``scores`` (b, kv_heads, L) with every position in ``[start, length)`` of each row ranked above all of
    the row's other finite scores, in their own order (a top-k keeps the protected span first, and its best
    entries when the span is larger than k). Returned in float32; infinite scores (padding, SnapKV's window)
    stay as they are."""
    s = scores.float()
    at = torch.arange(s.shape[-1], device=s.device)
    span = (at[None, :] >= start[:, None]) & (at[None, :] < lengths[:, None])  # (b, L)
    finite = s.isfinite()
    lo = s.masked_fill(~finite, float("inf")).amin(dim=(1, 2), keepdim=True)
    hi = s.masked_fill(~finite, float("-inf")).amax(dim=(1, 2), keepdim=True)
    return torch.where(span[:, None, :] & finite, s + (hi - lo + 1), s)


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
    keep_question: bool = False
    kept: dict = field(default_factory=dict, repr=False)
    question_start: torch.Tensor | None = field(default=None, repr=False)  # (batch,), set by the engine per call

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
        if self.keep_question:
            if self.question_start is None:
                raise HazardError("a question_* press needs each prompt's question start; run it through the "
                                  "engine (generate(..., question_starts=)), not a plain kvpress pipeline")
            n = keys.shape[2]
            scores = keep_from(scores, self.question_start, torch.full_like(self.question_start, n))
        n_kept = compute_n_kept(keys.shape[2], self.compression_ratio)
        idx = scores.topk(n_kept, dim=-1).indices
        self.kept[module.layer_idx] = idx
        gather = idx.unsqueeze(-1).expand(-1, -1, -1, module.head_dim)
        return keys.gather(2, gather).contiguous(), values.gather(2, gather).contiguous()

    def pop_kept(self) -> dict[int, torch.Tensor]:
        kept, self.kept = self.kept, {}
        return kept
