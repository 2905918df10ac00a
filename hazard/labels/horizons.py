"""Per-token hazard labels for forecasting horizons."""

from __future__ import annotations

import numpy as np

HORIZONS = (4, 8, 16, 32, 64)


def hazard_labels(n: int, onset: int, horizons=HORIZONS) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Labels for a trace of ``n`` tokens whose catastrophe sets in at ``onset`` (-1: none).

    Returns
    -------
    labels : dict
        horizon k -> (n,) int8, 1 where ``t < onset <= t + k`` (onset within the next k tokens) and for
        every ``t >= onset`` (the catastrophe is under way); all 0 without an onset.
    post_onset : np.ndarray
        (n,) bool, True for ``t >= onset``: metrics of forecasting leave these tokens out.
    """
    t = np.arange(n)
    post = (t >= onset) if onset >= 0 else np.zeros(n, dtype=bool)
    labels = {}
    for k in horizons:
        lab = ((t + k >= onset) & (t < onset)) | post if onset >= 0 else np.zeros(n, dtype=bool)
        labels[k] = lab.astype(np.int8)
    return labels, post
