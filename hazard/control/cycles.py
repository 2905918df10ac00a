"""The loop detector's rule, online: which rows' generated tokens end in a sustained cycle, as they arrive.

``hazard.labels.detectors.detect_loop`` labels a finished trace: from its cycle start to the end every token
equals the one ``p`` later, over >= 3 periods and >= ``min_span`` tokens. A controller cannot wait for the
end. ``CycleTracker`` keeps, per batch slot and period p <= ``max_period``, the number of consecutive newest
tokens that equal the token p before them; the periodic stretch ending now then spans that count + p
tokens, and a row is *in a cycle* once that span reaches max(``periods`` x p, ``min_span``): the first step
at which the labelled loop's rule holds for the tokens seen so far. Host numpy, O(max_period) per row and
step, all rows at once (a Python loop over rows costs more than the model step at batch 256).
"""

from __future__ import annotations

import numpy as np
import torch


class CycleTracker:
    """Per-slot online cycle detection (see module docstring).

    Parameters
    ----------
    n_slots : int
        Batch slots; a slot's history is cleared with ``reset`` when a new row enters it.
    max_period, periods, min_span : int
        The cycle rule: period <= ``max_period``, span >= ``periods`` periods and >= ``min_span`` tokens.
    """

    def __init__(self, n_slots: int, max_period: int = 40, periods: int = 3, min_span: int = 16):
        self.max_period, self.periods, self.min_span = max_period, periods, min_span
        self.p = np.arange(1, max_period + 1)
        self.need = np.maximum(periods * self.p, min_span)  # span each period must reach
        self.hist = np.full((n_slots, max_period), -1, dtype=np.int64)  # last tokens, newest last
        self.runs = np.zeros((n_slots, max_period), dtype=np.int64)
        self.n = np.zeros(n_slots, dtype=np.int64)  # tokens seen per slot

    def reset(self, slots) -> None:
        self.hist[slots], self.runs[slots], self.n[slots] = -1, 0, 0

    def update(self, slots: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed one new token per slot in ``slots``. Returns (in_cycle, start): whether each row's tokens
        now end in a sustained cycle, and the index (in the row's generated tokens) of that cycle's first
        token: the longest qualifying stretch, -1 where there is none."""
        slots = np.asarray(slots, dtype=np.int64)
        tok = np.asarray(tokens, dtype=np.int64)[:, None]
        back = self.hist[slots][:, self.max_period - self.p]  # column p-1: the token p before the new one
        eq = (back == tok) & (self.n[slots][:, None] >= self.p)
        runs = np.where(eq, self.runs[slots] + 1, 0)
        self.runs[slots] = runs
        self.hist[slots] = np.concatenate([self.hist[slots][:, 1:], tok], axis=1)
        self.n[slots] += 1
        span = np.where(runs > 0, runs + self.p, 0)
        span = np.where(span >= self.need, span, 0)
        longest = span.max(axis=1)
        return longest > 0, np.where(longest > 0, self.n[slots] - longest, -1)


def period_spans(tokens, max_period: int, periods: int = 2):
    """Yield (p, span) for p = 1 .. ``max_period``: per token, the span (in tokens) of the stretch of period p
    ending there if it covers at least ``periods`` periods, else 0 (``cycle_spans`` takes their maximum)."""
    seq = np.asarray(tokens, dtype=np.int64)
    n = len(seq)
    idx = np.arange(n)
    for p in range(1, max_period + 1):
        eq = np.zeros(n, dtype=bool)
        eq[p:] = seq[p:] == seq[:-p]  # token t equals the one p before
        # consecutive True ending at t: t - (index of the last False at or before t)
        run = idx - np.maximum.accumulate(np.where(eq, -1, idx))
        span = np.where(run > 0, run + p, 0)
        yield p, np.where(span >= periods * p, span, 0)


def capped_spans(tokens, caps) -> np.ndarray:
    """(T, len(caps)): column j is ``cycle_spans(tokens, caps[j])``, all from one pass over the periods up to
    the largest cap (``caps`` ascending)."""
    best, cols = np.zeros(len(tokens), dtype=np.int64), []
    for p, span in period_spans(tokens, caps[-1]):
        best = np.maximum(best, span)
        if p in caps:
            cols.append(best)
    return np.stack(cols, axis=1)


def cycle_spans(tokens, max_period: int, periods: int = 2) -> np.ndarray:
    """Per token, the span (in tokens) of the longest periodic stretch of period <= ``max_period`` that ends
    there and covers at least ``periods`` periods; 0 where none does. The same number as ``n - start`` from
    ``CycleTracker(1, max_period, periods, min_span=1).update`` fed the tokens one by one (tested), computed
    for a whole stored trace at once: what the train stage's fast loop rule reads
    (``hazard.predictor.baselines.CycleRule``). Only the tokens so far count, so it is causal. A stutter
    ("JoJoJo", period 1) reaches span 3 at its third token; healthy text reaches 2 often ("the the", "00" in
    numbers), so the rule's threshold is chosen on validation traces."""
    best = np.zeros(len(tokens), dtype=np.int64)
    for _, span in period_spans(tokens, max_period, periods):
        best = np.maximum(best, span)
    return best


class CycleSpans:
    """``capped_spans`` online, on the model's device: per batch slot, the spans a guard trained on the
    ``cycle<P>`` features reads (``hazard.predictor.features.CYCLE_FEATURES``), one token per row and step.

    Tensor ops on buffers updated in place, no host sync, so a CUDA graph can capture ``update``. Like the
    guard's recurrent state it is not rewound after a rollback: it has seen the discarded tokens.

    Parameters
    ----------
    n_slots : int
        Batch slots; ``reset`` clears a slot when a new row enters it.
    caps : tuple of int
        The period limits (ascending), one output column each.
    device : torch.device or str, optional
    """

    def __init__(self, n_slots: int, caps=(1, 2, 4, 8), device=None):
        self.caps = tuple(caps)
        top = self.caps[-1]
        self.p = torch.arange(1, top + 1, device=device)
        self.cols = torch.tensor([c - 1 for c in self.caps], device=device)
        self.hist = torch.full((n_slots, top), -1, dtype=torch.long, device=device)  # last tokens, newest last
        self.runs = torch.zeros(n_slots, top, dtype=torch.long, device=device)

    def reset(self, slots) -> None:
        self.hist[slots] = -1
        self.runs[slots] = 0

    def update(self, slots, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row of ``slots`` (a slice or index list); returns (rows, len(caps)) float: the
        span of the longest periodic stretch of period <= each cap ending at the token, over two periods, else 0
        (``period_spans`` with ``periods=2``, column by column ``capped_spans``)."""
        tok = tokens.long()[:, None]
        hist, runs = self.hist[slots], self.runs[slots]
        back = hist.flip(1)  # column p-1: the token p before the new one (-1 before the row's start)
        runs = torch.where(back == tok, runs + 1, torch.zeros_like(runs))
        span = torch.where(runs > 0, runs + self.p, torch.zeros_like(runs))
        span = torch.where(span >= 2 * self.p, span, torch.zeros_like(span))
        self.runs[slots] = runs
        self.hist[slots] = torch.cat([hist[:, 1:], tok], dim=1)
        return span.cummax(dim=1).values[:, self.cols].float()
