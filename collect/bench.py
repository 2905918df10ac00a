"""Throughput of the collect engine: generated tokens/s with and without signals, per batch size.

    python collect/bench.py --model.path /tmp/q05 --model.dtype bfloat16 --batch_sizes '[1, 16, 64, 128, 256]'

Every row runs to ``max_new_tokens`` (end tokens ignored) so batch sizes compare like for like; prompts
are kv_retrieval prompts (no data files needed). Writes ``--out`` (JSON: hardware, model, rows of batch,
signals, generated_tokens_per_s, peak_gpu_mem_gb; best_generated_tokens_per_s) and prints a table.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from hazard.cli import build, parse_args
from hazard.collect import encode, hardware
from hazard.engine import Engine
from hazard.models import ModelConfig, load_model
from hazard.tasks import build_task
from hazard.traces import write_json


@dataclass
class BenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    max_new_tokens: int = 128
    n_pairs: int = 40
    probe_layers: list[int] = field(default_factory=lambda: [0, 12, -1])
    repeats: int = 1
    out: str = "collect/results/throughput.json"


def run(cfg: BenchConfig) -> dict:
    model, tok = load_model(cfg.model)
    prompts = build_task("kv_retrieval", n_prompts=max(cfg.batch_sizes), n_pairs=cfg.n_pairs).prompts()
    ids = [encode(tok, p) for p in prompts]
    rows = []
    cuda = torch.cuda.is_available() and next(model.parameters()).is_cuda
    for b in cfg.batch_sizes:
        for signals in (True, False):
            eng = Engine(model, [], cfg.max_new_tokens, b, tuple(cfg.probe_layers), signals=signals)
            eng.generate(ids[:1], None)  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            best = 0.0
            for _ in range(cfg.repeats):
                t0 = time.perf_counter()
                gens = eng.generate(ids[:b], None)
                if cuda:
                    torch.cuda.synchronize()
                best = max(best, sum(len(g.tokens) for g in gens) / (time.perf_counter() - t0))
            eng.probe.remove()
            rows.append({"batch": b, "signals": signals, "generated_tokens_per_s": round(best, 2),
                         "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None})
            print(f"batch {b:4d} signals {str(signals):5}: {best:10.1f} generated tokens/s", flush=True)
    result = {"hardware": hardware(), "model": cfg.model.label(), "max_new_tokens": cfg.max_new_tokens,
              "prompt": f"kv_retrieval, {cfg.n_pairs} pairs", "rows": rows,
              "best_generated_tokens_per_s": max(r["generated_tokens_per_s"] for r in rows if r["signals"])}
    write_json(cfg.out, result)
    return result


if __name__ == "__main__":
    run(build(BenchConfig, parse_args(sys.argv[1:])))
