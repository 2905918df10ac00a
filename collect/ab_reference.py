"""A/B: the engine against plain kvpress and a batch-1 Hugging Face decode loop, on the same token ids.

    python collect/ab_reference.py --model.path /tmp/q05 --model.name qwen2.5-coder-0.5b-instruct \
        --gsm8k /path/to/gsm8k --out collect/results/ab_reference.json

Reference: each prompt alone, prefilled under the plain kvpress press (``SnapKVPress(compression_ratio=r)``,
not our wrapper), then a greedy decode loop over the HF ``DynamicCache`` with the true RoPE positions
(prompt length + t), in several processes on the same GPU. Engine: every prompt at once (continuous
batching, CUDA graphs). Both choose the first of equal maxima (``topk`` order) over float32 logits. The JSON
holds the outcome rates of both (accuracy, loop, non-termination), the per-prompt first differing token
(-1: identical), and how many prompts agree exactly. Under bf16, batched and batch-1 arithmetic differ in
the last bits, so greedy runs can part after a near-tie; outcome rates must agree within that noise.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from hazard.cli import build, parse_args
from hazard.collect import _git_sha, encode, hardware
from hazard.compression import PressSpec, build_press
from hazard.compression.registry import SCORERS
from hazard.engine import Engine
from hazard.labels import detect_loop, divergence
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.tasks import build_task, parse_answer, score
from hazard.traces import write_json


@dataclass
class ABConfig:
    """Parameters: model, GSM8K folder, problems (test split from 0), presses at ``ratio``, workers."""

    model: ModelConfig = field(default_factory=ModelConfig)
    gsm8k: str = "../shared/data/gsm8k"
    n_prompts: int = 40
    presses: list[str] = field(default_factory=lambda: ["none", "snapkv", "knorm"])
    ratio: float = 0.875
    max_new_tokens: int = 256
    batch_size: int = 64
    workers: int = 8
    out: str = "collect/results/ab_reference.json"


@torch.inference_mode()
def reference_decode(model, ids: list[int], press, max_new: int, end_ids: set[int]) -> list[int]:
    """Plain kvpress prefill of one prompt, then a batch-1 greedy loop with true positions."""
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    cache = DynamicCache()
    with press(model) if press is not None else nullcontext():
        logits = model(input_ids=torch.tensor([ids], device=dev), past_key_values=cache, use_cache=True).logits
    toks = [int(logits[0, -1].float().topk(5).indices[0])]
    n = len(ids)
    for t in range(max_new - 1):
        if toks[-1] in end_ids:
            break
        held = cache.get_seq_length()
        logits = model(input_ids=torch.tensor([[toks[-1]]], device=dev), past_key_values=cache,
                       position_ids=torch.tensor([[n + t]], device=dev),
                       attention_mask=torch.ones(1, held + 1, dtype=torch.long, device=dev), use_cache=True).logits
        toks.append(int(logits[0, -1].float().topk(5).indices[0]))
    return toks


_WORKER: dict = {}


def _init(model_cfg: ModelConfig) -> None:
    model, tok = load_model(model_cfg)
    _WORKER.update(model=model, end=set(end_token_ids(tok, model)))


def _job(args) -> list[int]:
    ids, name, ratio, max_new = args
    press = None if name == "none" else SCORERS[name](compression_ratio=ratio)
    return reference_decode(_WORKER["model"], ids, press, max_new, _WORKER["end"])


def outcomes(tok, problems, gens: list[list[int]], end_ids: set[int]) -> dict:
    rows = []
    for p, toks in zip(problems, gens):
        finished = bool(toks) and toks[-1] in end_ids
        correct = score(parse_answer(tok.decode(toks, skip_special_tokens=True)), p.gold)
        rows.append({"correct": correct, "loop": detect_loop(toks, finished) is not None, "nonterm": not finished})
    return {k: float(np.mean([r[k] for r in rows])) for k in ("correct", "loop", "nonterm")} | {
        "per_prompt": rows}


def run(cfg: ABConfig) -> dict:
    model, tok = load_model(cfg.model)
    end = set(end_token_ids(tok, model))
    problems = build_task("gsm8k", path=cfg.gsm8k, split="test", limit=cfg.n_prompts, k_shot=3, seed=0).prompts()
    ids = [encode(tok, p) for p in problems]
    engine = Engine(model, sorted(end), cfg.max_new_tokens, cfg.batch_size, (0, -1))
    ours, secs = {}, {}
    for name in cfg.presses:
        spec = PressSpec(name, 0.0 if name == "none" else cfg.ratio)
        t0 = time.perf_counter()
        ours[name] = [g.tokens for g in engine.generate(ids, build_press(spec))]
        secs[f"engine_{name}"] = round(time.perf_counter() - t0, 2)
    del engine
    t0 = time.perf_counter()
    jobs = [(p, name, cfg.ratio, cfg.max_new_tokens) for name in cfg.presses for p in ids]
    with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=_init,
                             initargs=(cfg.model,)) as pool:
        flat = list(pool.map(_job, jobs))
    secs["reference_all"] = round(time.perf_counter() - t0, 2)
    ref = {name: flat[i * len(ids):(i + 1) * len(ids)] for i, name in enumerate(cfg.presses)}
    settings = []
    for name in cfg.presses:
        a, b = outcomes(tok, problems, ours[name], end), outcomes(tok, problems, ref[name], end)
        first_diff = [divergence(x, y) for x, y in zip(ours[name], ref[name])]
        settings.append({
            "press": name, "ratio": 0.0 if name == "none" else cfg.ratio,
            "engine": {k: a[k] for k in ("correct", "loop", "nonterm")},
            "kvpress_batch1": {k: b[k] for k in ("correct", "loop", "nonterm")},
            "identical_prompts": sum(d == -1 for d in first_diff), "first_differing_token": first_diff,
            "outcome_disagreements": sum(x != y for x, y in zip(a["per_prompt"], b["per_prompt"])),
        })
        print(settings[-1]["press"], settings[-1]["engine"], settings[-1]["kvpress_batch1"],
              "identical", settings[-1]["identical_prompts"], flush=True)
    result = {"model": cfg.model.label(), "hardware": hardware(), "git_sha": _git_sha(), "n_prompts": len(ids),
              "prompts": "GSM8K test from problem 1, 3-shot chat, seed-0 exemplars",
              "max_new_tokens": cfg.max_new_tokens,
              "engine_batch_size": cfg.batch_size, "seconds": secs, "settings": settings}
    write_json(cfg.out, result)
    return result


if __name__ == "__main__":
    run(build(ABConfig, parse_args(sys.argv[1:])))
