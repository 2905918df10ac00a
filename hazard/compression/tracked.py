"""A ScorerPress wrapper that records which cache slots each compression kept.

kvpress gathers the kept K/V and forgets the indices. We need them: the engine's store keeps each row's
slots in position order, the attention signals ask which original position a slot holds (sink, recent,
prompt or generated), and recompress returns to the kept set. The selection below is
ScorerPress.compress, step for step, with the indices kept.

``keep`` makes the press keep some of each prompt's positions first, within the same budget: ``question`` (the
question and what follows it, ``question_<press>`` in the registry) or ``numbers`` (the question's digit tokens,
``numbers_<press>``). kvpress's own pipeline compresses the context and appends the question uncompressed, while
the engine compresses the whole templated prompt, question included (evaluate/RESULTS.md 0h: ExpectedAttention
0.875 keeps about 40% of the question's tokens, and fewer of its digits in the answers it breaks). The n_kept
count of the plain press is unchanged (same memory): the protected positions rank above every other entry, and
the rest of the budget goes by the press's own scores. The engine hands the positions over per call
(``Engine.generate(..., protect=)``, from ``hazard.collect.kept_positions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from kvpress import ScorerPress
from kvpress.utils import compute_n_kept
from torch import nn

from hazard.errors import HazardError

KEEPS = ("question", "numbers")  # what a ``keep`` press protects


def keep_first(scores: torch.Tensor, protect: torch.Tensor) -> torch.Tensor:
    """``scores`` (b, kv_heads, L) with the positions where ``protect`` (b, L) is True ranked above all of the
    row's other finite scores, in their own order (a top-k keeps them first, and the best of them when there are
    more than k). Returned in at least float32 (bf16 scores plus an offset would lose their order); infinite
    scores (padding, SnapKV's window) stay as they are."""
    s = scores.to(torch.promote_types(scores.dtype, torch.float32))
    finite = s.isfinite()
    lo = s.masked_fill(~finite, float("inf")).amin(dim=(1, 2), keepdim=True)
    hi = s.masked_fill(~finite, float("-inf")).amax(dim=(1, 2), keepdim=True)
    return torch.where(protect[:, None, :] & finite, s + (hi - lo + 1), s)


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
    keep: str = ""  # "" or one of KEEPS
    kept: dict = field(default_factory=dict, repr=False)
    protect: torch.Tensor | None = field(default=None, repr=False)  # (batch, >= length) bool, set per call

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
        if self.keep:
            if self.protect is None:
                raise HazardError(f"a {self.keep}_* press needs the positions it keeps; run it through the engine "
                                  f"(Engine.generate(..., protect=)), not a plain kvpress pipeline")
            scores = keep_first(scores, self.protect[:, : keys.shape[2]])
        n_kept = compute_n_kept(keys.shape[2], self.compression_ratio)
        idx = scores.topk(n_kept, dim=-1).indices
        self.kept[module.layer_idx] = idx
        gather = idx.unsqueeze(-1).expand(-1, -1, -1, module.head_dim)
        return keys.gather(2, gather).contiguous(), values.gather(2, gather).contiguous()

    def pop_kept(self) -> dict[int, torch.Tensor]:
        kept, self.kept = self.kept, {}
        return kept
