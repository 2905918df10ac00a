"""evaluate/answer_steps.py: the uncompressed model's first tokens, numbered as `scheduled`'s ``at``."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))

from answer_steps import main  # noqa: E402

from hazard.collect import encode  # noqa: E402
from hazard.models import ModelConfig, load_model, save_tiny  # noqa: E402
from hazard.tasks import build_task  # noqa: E402


def test_step_one_is_the_first_generated_token(tmp_path, monkeypatch):
    path = save_tiny(tmp_path / "tiny")
    out = tmp_path / "steps.json"
    monkeypatch.setattr(sys, "argv", ["answer_steps.py", "--model-path", str(path), "--task", "kv_retrieval",
                                      "--options", '{"n_prompts": 2, "n_pairs": 3, "seed": 1}',
                                      "--max-new-tokens", "4", "--out", str(out)])
    main()
    res = json.loads(out.read_text())
    assert not out.with_suffix(".tmp").exists()
    assert [r["id"] for r in res["rows"]] == [p.id for p in build_task("kv_retrieval", n_prompts=2, n_pairs=3,
                                                                          seed=1).prompts()]
    model, tok = load_model(ModelConfig(path=str(path), dtype="bfloat16", device="cpu"))
    for row, prompt in zip(res["rows"], build_task("kv_retrieval", n_prompts=2, n_pairs=3, seed=1).prompts()):
        assert list(row["steps"])[0] == "1" and len(row["steps"]) <= 4
        with torch.no_grad():
            first = model(torch.tensor([encode(tok, prompt)])).logits[0, -1].argmax().item()
        assert row["steps"]["1"] == tok.decode([first])  # step 1: the token the prompt's last position predicts
