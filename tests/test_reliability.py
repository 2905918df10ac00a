"""Faults injected on purpose: SIGKILL during collection and during training, bad and poisoned input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hazard import SCHEMA_VERSION
from hazard.cli import main
from hazard.errors import HazardError
from hazard.models import save_tiny
from hazard.traces import load_traces

ROOT = Path(__file__).resolve().parents[1]


def _collect_args(out, model_dir):
    return ["collect", "--config", str(ROOT / "configs/collect/tiny.yaml"), "--output_dir", str(out),
            "--model", json.dumps({"path": str(model_dir), "device": "cpu", "dtype": "float64", "name": "tiny"}),
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 24, n_pairs: 6}}]", "--shard_size", "2"]


def test_sigkill_during_collection_then_resume_equals_an_uninterrupted_run(tmp_path):
    model_dir = save_tiny(tmp_path / "m", "qwen2", seed=3)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(_collect_args(full, model_dir)) == 0
    proc = subprocess.Popen([sys.executable, "-m", "hazard.cli", *_collect_args(killed, model_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "data").glob("*.parquet"))) < 5:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted((killed / "data").glob("*.parquet"))
    total = len(list((full / "data").glob("*.parquet")))
    assert 5 <= len(done) < total, "the kill must land mid-run"
    for f in done:  # every visible shard is complete; a shard being written exists only as *.tmp
        pq.read_table(f)
    assert main(_collect_args(killed, model_dir)) == 0
    a = sorted(load_traces(full).to_list(), key=lambda r: r["trace_id"])
    b = sorted(load_traces(killed).to_list(), key=lambda r: r["trace_id"])
    assert [r["trace_id"] for r in a] == [r["trace_id"] for r in b]
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]


def test_training_killed_with_sigkill_resumes_from_its_last_checkpoint_and_ends_the_same(tmp_path):
    import yaml

    from hazard.predictor.train import cli_main

    traces = tmp_path / "traces"
    assert main(["collect", "--config", str(ROOT / "configs/collect/tiny.yaml"), "--output_dir", str(traces)]) == 0
    cfg = yaml.safe_load(open(ROOT / "configs/train/tiny.yaml"))
    cfg["data"]["traces"] = [str(traces)]
    epochs = 6

    def fit_args(name):
        cfg["report"] = {"run_dir": str(tmp_path / name)}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return ["fit", "--config", str(path), "--trainer.max_epochs", str(epochs)]

    cli_main(fit_args("unbroken"))
    unbroken = tmp_path / "unbroken" / "fit" / "checkpoints" / "last.ckpt"

    # A real training process, SIGKILLed as soon as its first per-epoch checkpoint is on disk.
    last = tmp_path / "broken" / "fit" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "hazard.cli", "train", *fit_args("broken")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    deadline = time.time() + 300
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the process must be killed, not finish"
    killed_at = torch.load(last, weights_only=True)["epoch"]  # Lightning writes checkpoints atomically
    assert killed_at < epochs - 1, "the kill must land before the last epoch"

    cli_main(fit_args("broken") + ["--ckpt_path", str(last)])
    a = torch.load(unbroken, weights_only=True)
    b = torch.load(last, weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6), k


def test_poisoned_and_empty_inputs(tmp_path):
    from hazard.predictor.features import trace_features
    from hazard.traces import write_shard

    row = {"trace_id": "t", "n_tokens": 3, "entropy": np.array([1.0, np.nan, 2.0], np.float32)}
    with pytest.raises(HazardError, match="feature entropy has NaN"):
        trace_features(row, ("entropy",))
    with pytest.raises(HazardError, match="signal entropy has NaN"):
        from hazard.signals import SIGNALS

        write_shard([{"trace_id": "t", **{s: np.zeros(3, np.float32) for s in SIGNALS},
                      "entropy": np.array([np.inf, 0, 0], np.float32)}], tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.parquet.tmp").exists()
    (tmp_path / "empty" / "data").mkdir(parents=True)
    (tmp_path / "empty" / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(HazardError, match="no finished shards"):
        load_traces(tmp_path / "empty")


def test_slow_guard_counts_as_a_failure_and_rows_fall_back(model64):
    import random

    from hazard.compression import PressSpec, build_press
    from hazard.control import PolicyController, build_policy
    from hazard.engine import Engine

    class SlowGuard:
        feature_names, horizons, eval_horizon = ["entropy"], [16], 16

        def reset(self, rows=None, batch=None):
            pass

        def step(self, x, active=None):
            time.sleep(0.01)
            return torch.zeros(len(x), 1)

    rng = random.Random(0)
    prompts = [[rng.randrange(250) for _ in range(40)] for _ in range(2)]
    eng = Engine(model64, [256], max_new_tokens=8, batch_size=2)
    ctl = PolicyController(build_policy("hazard", trigger=0.5), SlowGuard(), 0.5, 8, guard_timeout_s=0.001)
    gens = eng.generate(prompts, build_press(PressSpec("knorm", 0.5)), controller=ctl)
    assert ctl.guard_failures > 0 and all(g.control["events"][0][1] == "restore" for g in gens)
