"""Engine checks that need a GPU: CUDA graphs against eager decoding, and recovery from running out of memory.

    python collect/gpu_checks.py --model.path /tmp/q05 --model.name qwen2.5-coder-0.5b-instruct \
        --gsm8k /path/to/gsm8k --out collect/results/gpu_checks.json

graphs: the same prompts under snapkv 0.875 with the decode step replayed from CUDA graphs and run eagerly;
the kernels are the same, so the tokens should be too.
oom: a batch that fits, then the same batch with the process capped (``set_per_process_memory_fraction``)
below what it needs: the engine must halve its batch, run the unfinished rows again and return every row
once; the rows are compared with the uncapped run (a smaller batch changes bf16 arithmetic in prefill, so
a greedy run may part after a near-tie: outcomes are compared too).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from hazard.cli import build, parse_args
from hazard.collect import _git_sha, encode, hardware
from hazard.compression import PressSpec, build_press
from hazard.engine import Engine
from hazard.labels import divergence
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.tasks import build_task
from hazard.traces import write_json


@dataclass
class ChecksConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    gsm8k: str = "../shared/data/gsm8k"
    n_prompts: int = 256
    batch_size: int = 256
    max_new_tokens: int = 128
    out: str = "collect/results/gpu_checks.json"


def run(cfg: ChecksConfig) -> dict:
    model, tok = load_model(cfg.model)
    end = end_token_ids(tok, model)
    problems = build_task("gsm8k", path=cfg.gsm8k, split="test", limit=cfg.n_prompts, k_shot=3, seed=0).prompts()
    ids = [encode(tok, p) for p in problems]
    spec = PressSpec("snapkv", 0.875)

    def gen(**kw):
        eng = Engine(model, end, cfg.max_new_tokens, kw.pop("batch", cfg.batch_size), **kw)
        return eng, [g.tokens for g in eng.generate(ids, build_press(spec))]

    _, graphs = gen()
    _, eager = gen(cuda_graphs=False)
    graph_check = {"identical_rows": sum(a == b for a, b in zip(graphs, eager)), "rows": len(ids)}
    print("graphs vs eager", graph_check, flush=True)

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    eng, ref = gen()
    peak = torch.cuda.max_memory_allocated()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del eng
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = weights + 0.6 * (peak - weights)  # 60% of what the batch needed above the weights
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        eng, capped = gen()
    except torch.OutOfMemoryError as e:  # reported, not hidden
        capped, eng = None, None
        oom_error = str(e).splitlines()[0]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    if capped is None:
        result = {"model": cfg.model.label(), "hardware": hardware(), "git_sha": _git_sha(),
                  "graphs_vs_eager": graph_check, "out_of_memory": {"error": oom_error}}
        write_json(cfg.out, result)
        return result
    first = [divergence(a, b) for a, b in zip(capped, ref)]
    oom_check = {"cap_gb": round(cap / 2**30, 2), "uncapped_peak_gb": round(peak / 2**30, 2),
                 "batch_size_after": eng.batch_size, "rows_returned": len(capped), "rows": len(ids),
                 "identical_rows": sum(d == -1 for d in first),
                 "finished_uncapped": sum(t[-1] in end for t in ref),
                 "finished_capped": sum(t[-1] in end for t in capped)}
    print("oom", oom_check, flush=True)
    result = {"model": cfg.model.label(), "hardware": hardware(), "git_sha": _git_sha(), "press": spec.label,
              "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "graphs_vs_eager": graph_check,
              "out_of_memory": oom_check}
    write_json(cfg.out, result)
    return result


if __name__ == "__main__":
    run(build(ChecksConfig, parse_args(sys.argv[1:])))
