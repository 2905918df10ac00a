"""Which generated token writes what: the uncompressed model's first tokens on a task's prompts, one per step.

RESULTS.md 0k found that one recall at a fixed generated token of every row (`scheduled`) works at token 5 and
not at 3 or 8 on kv_retrieval. This decodes the first prompts greedily, uncompressed, and writes each step's
token, so the step numbers can be read against the answer's shape (the steps are 1-based, as `scheduled`'s
``at``: step n is the n-th generated token).

    python evaluate/answer_steps.py --model-path ~/.cache/hazard-models --gguf qwen2.5-coder-1.5b-instruct.gguf \
        --task kv_retrieval --options '{"n_prompts": 6, "n_pairs": 40, "seed": 8}' \
        --out evaluate/results/frontier_q15_kv_heldout/answer_steps.json

On this CPU (2 cores) the 1.5B takes about 2.5 minutes for 6 prompts, most of it the GGUF conversion (cached).
The model runs in bfloat16 here and on the GPU; greedy ties can still fall differently across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from hazard.collect import _git_sha, encode, hardware
from hazard.models import ModelConfig, load_model
from hazard.tasks import build_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--gguf", default=None, help="GGUF file name inside --model-path")
    ap.add_argument("--task", default="kv_retrieval")
    ap.add_argument("--options", default="{}", help="the task's options as JSON")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cfg = ModelConfig(path=a.model_path, gguf_file=a.gguf, dtype="bfloat16", device="cpu")
    model, tok = load_model(cfg)
    options = json.loads(a.options)
    task = build_task(a.task, **options)
    rows, t0 = [], time.time()
    for p in task.prompts():
        ids = torch.tensor([encode(tok, p)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=a.max_new_tokens, do_sample=False)
        new = out[0, ids.shape[1]:].tolist()
        steps = {i + 1: tok.decode([t]) for i, t in enumerate(new)}
        rows.append({"id": p.id, "gold": p.gold, "steps": steps})
        print(p.id, p.gold, " | ".join(f"{k}:{v!r}" for k, v in steps.items()), flush=True)
    res = {"model": cfg.label(), "task": a.task, "options": options, "dtype": "bfloat16", "greedy": True,
           "hardware": hardware(), "git_sha": _git_sha(), "seconds": round(time.time() - t0, 1), "rows": rows}
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, a.out)  # no partial file if killed


if __name__ == "__main__":
    main()
