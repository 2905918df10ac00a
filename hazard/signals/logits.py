"""Per-token signals from the next-token logits, for a whole batch at once, on the device."""

from __future__ import annotations

import torch

LOGIT_SIGNALS = ("entropy", "top1_prob", "top5_mass", "margin", "chosen_logprob")


def logit_signals(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy token and logit signals.

    Parameters
    ----------
    logits : torch.Tensor
        ``(batch, vocab)`` next-token logits (any float dtype; computed in float32).

    Returns
    -------
    tokens : torch.Tensor
        ``(batch,)`` greedy choices (the first of equal maxima, as ``topk`` orders them).
    signals : torch.Tensor
        ``(batch, 5)`` float32 in ``LOGIT_SIGNALS`` order: entropy (nats), top-1 probability,
        top-5 probability mass, top-1 minus top-2 logit, log-probability of the chosen token.
    """
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    # 0 * log 0 is 0; xlogy-style masking keeps -inf logits (masked vocab) from producing NaN.
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    top_val, top_idx = logits.topk(min(5, logits.shape[-1]), dim=-1)
    top_p = p.gather(-1, top_idx)
    tokens = top_idx[:, 0]
    margin = top_val[:, 0] - top_val[:, 1]
    chosen = logp.gather(-1, tokens[:, None])[:, 0]
    return tokens, torch.stack([entropy, top_p[:, 0], top_p.sum(-1), margin, chosen], dim=-1)
