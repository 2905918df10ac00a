"""Every exported guard committed under checkpoints/ loads without pickle and streams like its full forward."""

from pathlib import Path

import numpy as np
import pytest
import torch

from hazard.guard import HazardGuard

COMMITTED = sorted(p.parent for p in Path(__file__).parent.parent.glob("checkpoints/*/config.json"))


def test_there_are_committed_checkpoints():
    assert COMMITTED, "no exported guard under checkpoints/"


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_checkpoint_loads_and_streams(path):
    guard = HazardGuard.from_pretrained(path)
    assert 0.0 < guard.threshold < 1.0 and guard.eval_horizon in guard.horizons
    x = np.random.default_rng(0).normal(size=(3, 40, len(guard.feature_names))).astype(np.float32)
    full = np.stack([guard.forward_sequence(seq) for seq in x])
    guard.reset(batch=3)
    streamed = np.stack([guard.step(torch.from_numpy(x[:, t])).numpy() for t in range(x.shape[1])], axis=1)
    assert np.allclose(streamed, full, atol=1e-5)
    assert np.all((full > 0) & (full < 1))
