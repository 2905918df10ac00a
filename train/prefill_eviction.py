"""Does the eviction itself predict the failure? Attention mass a press evicts at prefill vs the trace's outcome.

Why: on the 1.5B GSM8K traces most catastrophes start at generated token 0-1, so a guard that reads the
decode's logits has nothing to warn ahead of (evaluate/RESULTS.md). If failure is decided at prefill,
a prefill-time signal should carry it. This measures one candidate: the share of the last prompt tokens'
attention that falls on the entries the press evicts (averaged over heads, the last ``--queries``
prompt tokens and all layers), computed for every press setting from one uncompressed forward (a
prefill press compresses each layer after its attention, so hidden states, keys and the press scores
are those of the compressed run). Joined with the collected traces by prompt and setting, it reports
the trace-level AUROC for "catastrophe" and for "wrong answer".

Usage (CPU is enough, prefill only):
    python train/prefill_eviction.py --traces traces/q15_gsm8k_train --limit 60 \
        --model-path ~/.cache/hazard-models --gguf qwen2.5-coder-1.5b-instruct.gguf \
        --exclude streaming_llm --out train/results/prefill_eviction.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from kvpress.utils import compute_n_kept
from sklearn.metrics import roc_auc_score
from transformers import DynamicCache

from hazard.collect import encode
from hazard.compression import PressSpec, build_press
from hazard.models import ModelConfig, load_model
from hazard.signals.attention import last_queries
from hazard.tasks import build_task


def evicted_mass(model, ids: list[int], presses: dict, n_queries: int) -> dict[str, float]:
    """Setting label -> mean over layers of the attention share the press evicts."""
    decoder = model.model
    out: dict[str, list[float]] = {label: [] for label in presses}
    cache = DynamicCache()

    def hook(module, args, kwargs, output):
        h = kwargs["hidden_states"]
        keys = kwargs["past_key_values"].layers[module.layer_idx].keys  # (1, kv_heads, n, d), rotated
        values = kwargs["past_key_values"].layers[module.layer_idx].values
        q = last_queries(module, kwargs, n_queries)  # (1, heads, m, d)
        b, hq, m, d = q.shape
        hkv, n = keys.shape[1], keys.shape[2]
        q = q.view(b, hkv, hq // hkv, m, d).float()
        scores = torch.einsum("bhgmd,bhsd->bhgms", q, keys.float()) * module.scaling
        causal = torch.arange(n)[None, :] <= (n - m + torch.arange(m))[:, None]  # (m, n)
        attn = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        for label, press in presses.items():
            s = press.score(module, h, keys, values, None, kwargs)  # (1, kv_heads, n)
            kept = s.topk(compute_n_kept(n, press.compression_ratio), dim=-1).indices
            mask = torch.zeros(b, hkv, n, dtype=torch.bool).scatter_(-1, kept, True)
            kept_mass = (attn * mask[:, :, None, None, :]).sum(-1)  # (1, kv_heads, g, m)
            out[label].append(float(1 - kept_mass.mean()))

    handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in decoder.layers]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
    finally:
        for hd in handles:
            hd.remove()
    return {label: float(np.mean(v)) for label, v in out.items()}


def auroc(y, s):
    y = np.asarray(y, bool)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", required=True)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--limit", type=int, default=60, help="first N prompts of the collection's task")
    ap.add_argument("--queries", type=int, default=8, help="last prompt tokens whose attention is measured")
    ap.add_argument("--exclude", nargs="*", default=[], help="press names to leave out")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    manifest = json.loads((Path(args.traces) / "manifest.json").read_text())
    task_cfg = manifest["config"]["tasks"][0]
    opts = dict(task_cfg["options"])
    if "path" in opts and not Path(opts["path"]).exists():  # a GPU config points at its carried copy of GSM8K
        opts["path"] = "../shared/data/gsm8k"
    prompts = build_task(task_cfg["name"], **opts).prompts()[:args.limit]
    rows = []
    for f in sorted((Path(args.traces) / "data").glob("*.parquet")):
        rows += pq.read_table(f, columns=["prompt_id", "press", "ratio", "catastrophe", "correct", "ref_correct",
                                          "onset"]).to_pylist()
    settings = sorted({(r["press"], r["ratio"]) for r in rows if r["press"] not in ("none", *args.exclude)})
    presses = {f"{p}@{r:g}": build_press(PressSpec(p, r)) for p, r in settings}
    model, tok = load_model(ModelConfig(path=args.model_path, gguf_file=args.gguf, dtype="float32", device="cpu"))
    for press in presses.values():
        press.post_init_from_model(model)

    t0 = time.time()
    mass = {}
    for i, p in enumerate(prompts):
        mass[p.id] = evicted_mass(model, encode(tok, p), presses, args.queries)
        print(f"{i + 1}/{len(prompts)} {p.id} {time.time() - t0:.0f}s", flush=True)
    by_setting, pooled_y, pooled_s = {}, [], []
    for label in presses:
        name, ratio = label.split("@")
        sel = [r for r in rows
               if r["prompt_id"] in mass and r["press"] == name and abs(r["ratio"] - float(ratio)) < 1e-9]
        s = [mass[r["prompt_id"]][label] for r in sel]
        y = [r["catastrophe"] for r in sel]
        wrong = [r["ref_correct"] and not r["correct"] for r in sel]
        by_setting[label] = {"n": len(sel), "catastrophe_rate": float(np.mean(y)),
                             "mean_evicted_mass": float(np.mean(s)), "auroc_catastrophe": auroc(y, s),
                             "auroc_compression_failure": auroc(wrong, s)}
        pooled_y += y
        pooled_s += s
    res = {"traces": args.traces, "model": manifest["config"]["model"].get("name"), "n_prompts": len(prompts),
           "query_tokens": args.queries, "seconds": round(time.time() - t0, 1), "hardware": "CPU",
           "pooled_auroc_catastrophe": auroc(pooled_y, pooled_s), "by_setting": by_setting}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
