"""How a press's budget splits between the positions a keep press protects and the rest, per prompt.

RESULTS.md 0s: ``question_<press>`` keeps the question (and the template after it) first within the plain press's
number of entries, ``numbers_<press>`` the question's digit tokens. This counts, for the frontier's GSM8K prompts
(3-shot, seed-0 exemplars), each prompt's length, the entries a press at each ratio keeps (kvpress's
``compute_n_kept``), the positions each keep press protects (``hazard.collect.kept_positions``) and what that
leaves for the system prompt and exemplars; it writes the per-prompt counts and their medians. Tokenizer only.

    python evaluate/kept_counts.py --model-path ~/.cache/hazard-models --gguf qwen2.5-coder-1.5b-instruct.gguf \
        --gsm8k ../shared/data/gsm8k --limit 500 --ratios 0.8 0.85 0.875 \
        --out evaluate/results/frontier_q15_check_escalate_qea85/kept_counts.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from kvpress.utils import compute_n_kept

from hazard.collect import _git_sha, encode, kept_positions, questions_of
from hazard.compression import PressSpec, build_press
from hazard.models import ModelConfig, load_model
from hazard.tasks import build_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--gguf", default=None, help="GGUF file name inside --model-path")
    ap.add_argument("--gsm8k", required=True, help="folder with GSM8K's test.jsonl and train.jsonl")
    ap.add_argument("--limit", type=int, default=500, help="GSM8K test problems from the first")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.85])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cfg = ModelConfig(path=a.model_path, gguf_file=a.gguf, dtype="float32", device="cpu")
    _, tok = load_model(cfg)
    prompts = build_task("gsm8k", path=a.gsm8k, split="test", start=0, limit=a.limit, k_shot=3, seed=0).prompts()
    ids = [encode(tok, p) for p in prompts]
    questions = questions_of(tok, prompts)
    lengths = np.array([len(i) for i in ids])
    protected = {keep: np.array([len(k) for k in kept_positions(build_press(PressSpec(f"{keep}_knorm", 0.5)),
                                                                  questions, ids)])
                 for keep in ("question", "numbers")}
    per_ratio = {}
    for r in a.ratios:
        held = np.array([compute_n_kept(int(n), r) for n in lengths])
        per_ratio[f"{r:g}"] = {"held_median": float(np.median(held)),
                               **{f"left_after_{k}_median": float(np.median(held - np.minimum(v, held)))
                                  for k, v in protected.items()}}
    res = {"model": cfg.label(), "prompts": len(ids), "prompt_len_median": float(np.median(lengths)),
           **{f"{k}_protected_median": float(np.median(v)) for k, v in protected.items()},
           "ratios": per_ratio, "git_sha": _git_sha(),
           "per_prompt": {"prompt_len": lengths.tolist(), **{k: v.tolist() for k, v in protected.items()}}}
    print(json.dumps({k: v for k, v in res.items() if k != "per_prompt"}, indent=1))
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, a.out)  # no partial file if killed


if __name__ == "__main__":
    main()
