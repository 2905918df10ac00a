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


GATES = sorted(p.parent for p in Path(__file__).parent.parent.glob("checkpoints/answer-gate*/f*/gate.json"))


@pytest.mark.parametrize("path", GATES, ids=[f"{p.parent.name}/{p.name}" for p in GATES])
def test_committed_answer_gates_load_and_score_a_reading(path):
    from hazard.control.gate import AnswerGate, Verdict

    gate = AnswerGate.load(path)
    # a probe gate reads the reading's two hidden states (question, answer) at the model's width
    width = {len(p.coef) for p in (gate.probes or {}).values()}
    assert len(width) <= 1
    states = np.random.default_rng(0).normal(size=(2, width.pop())) if width else None
    v = Verdict(np.array([1, 2, 3]), np.log(np.array([0.9, 0.05, 0.9])), np.array([1, 4, 3]),
                np.log(np.array([0.9, 0.9, 0.9])), states)
    assert isinstance(gate.repairs_verdict(v, 512), bool) and 0.0 <= gate.threshold <= 1.0


def test_the_hazard_policy_takes_the_guards_threshold_for_its_press():
    """checkpoints/qwen2.5-coder-1.5b-live32 holds a threshold per press setting: the evaluate stage's hazard
    policy triggers at the one for its base press, at the pooled one for a press the guard never saw, and at
    a threshold the config sets."""
    from hazard.compression import PressSpec
    from hazard.evaluate import EvaluateConfig, _policy

    guard = HazardGuard.from_pretrained(Path(__file__).parent.parent / "checkpoints" / "qwen2.5-coder-1.5b-live32")
    cfg = EvaluateConfig(policy_options={"hazard": {"action": "restore"}})
    knorm, snapkv = guard.thresholds["knorm@0.875"], guard.thresholds["snapkv@0.875"]
    assert knorm != snapkv != guard.threshold
    assert _policy("hazard", cfg, guard, None, {}, PressSpec("knorm", 0.875)).trigger == knorm
    assert _policy("hazard", cfg, guard, None, {}, PressSpec("snapkv", 0.875)).trigger == snapkv
    assert _policy("hazard", cfg, guard, None, {}, PressSpec("tova", 0.5)).trigger == guard.threshold
    assert _policy("hazard", cfg, guard, None, {"trigger": 0.5}, PressSpec("knorm", 0.875)).trigger == 0.5
