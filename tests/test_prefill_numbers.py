"""evaluate/prefill_numbers.py: which of the question's number tokens a real press keeps at prefill."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))

from prefill_numbers import features, kept_share, main  # noqa: E402

from hazard.compression.registry import PressSpec, build_press  # noqa: E402
from hazard.models import tiny_model  # noqa: E402


def test_kept_share_records_what_a_real_press_keeps_per_layer_and_head():
    model = tiny_model("qwen2", seed=0)
    press = build_press(PressSpec("knorm", 0.5))
    ids = torch.randint(0, 250, (1, 40))
    with torch.inference_mode(), press(model):
        model(ids, past_key_values=DynamicCache(), use_cache=True)
    share = kept_share(press.pop_kept(), 40)
    assert share.shape == (2, 2, 40)  # layers, KV heads, positions
    assert (share.sum(-1) == 20).all()  # each layer and head keeps half, as kvpress does


def test_features_of_hand_made_keeps():
    share = np.zeros((3, 2, 10), np.float32)
    share[:, :, [0, 1, 2]] = 1  # positions 0-2 kept everywhere
    share[2, 0, 5] = 1  # position 5 kept by one of six layer-heads, in the last layer
    kept, least, lost, question, last = features(share, q=[0, 1, 5, 6], digits=[1, 5])
    assert kept == pytest.approx((1 + 1 / 6) / 2) and least == pytest.approx(1 / 6)
    assert lost == 0.0  # 1/6 is not under 10%
    assert question == pytest.approx((1 + 1 + 1 / 6 + 0) / 4) and last == pytest.approx((1 + 0.5) / 2)
    assert features(share, q=[6], digits=[6])[2] == 1.0  # never kept: lost


def test_bad_paths_give_one_line(tmp_path, capsys):
    assert main(["--config", "configs/evaluate/gate_q15_4k.yaml", "--data", str(tmp_path / "none.npz"),
                 "--gsm8k", str(tmp_path), "--model-path", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]
