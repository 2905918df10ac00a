"""The decode-attention kernel against SDPA on one GPU: agreement, and time per layer call.

    python collect/bench_attention.py --out collect/results/decode_attention.json

Random bf16 K/V in the store's layout (rows, KV heads, capacity, head dim) for the 0.5B (14 query / 2 KV
heads, dim 64) and 1.5B (12 / 2, dim 128) shapes; rows hold ``lens`` slots: "even" = every row ~200 slots,
"one_long" = the same plus one row restored to ~800 (what a controller's restore does to the width SDPA
reads). SDPA reads the common width (the longest row, rounded up to 128, as the engine's SDPA path does);
the kernel reads each row's own length. "stats" rows add the attention signals (the probed layers): SDPA's
side is ``attention_probs`` + ``stats_from_probs`` as the SDPA path runs them. Times are GPU time per call
(CUDA events over 200 calls replayed from CUDA graphs, as the engine's step runs them); each case is
also checked against SDPA (max abs difference of the output, and of the statistics).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from hazard.cli import build, parse_args
from hazard.collect import _git_sha, hardware
from hazard.engine import attention as decode_attn
from hazard.engine.runner import width_bucket
from hazard.signals.attention import attention_probs, stats_from_probs
from hazard.traces import write_json

SHAPES = {"qwen2.5-coder-0.5b": (14, 2, 64), "qwen2.5-coder-1.5b": (12, 2, 128)}


@dataclass
class AttentionBenchConfig:
    """Parameters
    ----------
    batch_sizes : list of int
    capacity : int
        Slots per row in the store.
    reps : int
        Timed calls per case.
    out : str
    """

    batch_sizes: tuple[int, ...] = (64, 128, 256)
    capacity: int = 1024
    reps: int = 200
    out: str = "collect/results/decode_attention.json"


def _time(fn, reps: int, per_graph: int = 20) -> float:
    """GPU ms per call, replayed from a CUDA graph of ``per_graph`` calls (as the engine's step runs them:
    no launch overhead, no allocator)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(max(1, reps // per_graph)):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (max(1, reps // per_graph) * per_graph)


def _sdpa(q, k, v, valid, scale, pos=None, cur=None, plen=None):
    """The engine's SDPA path over the common width (and the signals from the probabilities)."""
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], scale=scale)
    if pos is None:
        return o, None
    n, hkv, grp, d = q.shape
    p = attention_probs(q.reshape(n, hkv * grp, d), k, scale, valid)
    return o, stats_from_probs(p, pos[:, :, : k.shape[2]], valid, cur, plen)


def run(cfg: AttentionBenchConfig) -> dict:
    if not torch.cuda.is_available() or decode_attn.triton is None:
        raise SystemExit("bench_attention: needs a CUDA GPU and triton")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for model, (hq, hkv, d) in SHAPES.items():
        for n in cfg.batch_sizes:
            k = torch.randn(n, hkv, cfg.capacity, d, device=dev, dtype=torch.bfloat16, generator=g)
            v = torch.randn_like(k)
            q = torch.randn(n, hkv, hq // hkv, d, device=dev, dtype=torch.bfloat16, generator=g)
            pos = torch.arange(cfg.capacity, device=dev).expand(n, hkv, -1).contiguous()
            for layout in ("even", "one_long"):
                lens = torch.randint(180, 220, (n,), device=dev, generator=g)
                if layout == "one_long":
                    lens[0] = 800
                cur, plen = lens.clone(), torch.full_like(lens, 90)
                width = width_bucket(int(lens.max()) + 1, cfg.capacity)
                valid = torch.arange(width, device=dev)[None] <= lens[:, None]
                splits = decode_attn.splits_for(n, hkv, dev)
                scale = d ** -0.5
                for stats in (False, True):
                    extra = (pos, cur, plen) if stats else ()
                    sdpa = partial(_sdpa, q, k[:, :, :width], v[:, :, :width], valid, scale, *extra)
                    kernel = partial(decode_attn.decode_attention, q, k, v, lens, scale, *extra, splits=splits)
                    (o_ref, s_ref), (o, s, _) = sdpa(), kernel()
                    row = {"model_shape": model, "q_heads": hq, "kv_heads": hkv, "head_dim": d, "batch": n,
                           "layout": layout, "stats": stats, "mean_len": round(float(lens.float().mean()), 1),
                           "sdpa_width": width, "splits": splits,
                           "max_abs_diff_out": float((o.float() - o_ref.float()).abs().max()),
                           "max_abs_diff_stats": float((s - s_ref).abs().max()) if stats else None,
                           "sdpa_ms": round(_time(sdpa, cfg.reps), 4), "kernel_ms": round(_time(kernel, cfg.reps), 4)}
                    row["speedup"] = round(row["sdpa_ms"] / row["kernel_ms"], 2)
                    if splits > 1:  # does splitting rows pay at this batch?
                        one = partial(decode_attn.decode_attention, q, k, v, lens, scale, *extra, splits=1)
                        row["kernel_ms_one_split"] = round(_time(one, cfg.reps), 4)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    out = {"description": __doc__.split("\n\n")[0], "hardware": hardware(), "git_sha": _git_sha(),
           "torch": torch.__version__, "triton": decode_attn.triton.__version__, "capacity": cfg.capacity,
           "reps": cfg.reps, "rows": rows}
    write_json(cfg.out, out)
    return out


if __name__ == "__main__":
    run(build(AttentionBenchConfig, parse_args(sys.argv[1:])))
