"""Throughput of the engine against Hugging Face ``generate``, measured in one run on one GPU.

    python collect/bench.py --model.path /tmp/q15 --model.name qwen2.5-coder-1.5b-instruct \
        --gsm8k /path/to/gsm8k --guard checkpoints/qwen2.5-coder-1.5b-gru --out collect/results/throughput.json

Same prompts for every row (GSM8K test problems, 3-shot chat, seed-0 exemplars), ``max_new_tokens`` new
tokens per row with end tokens ignored, so every row of every setting generates the same number of tokens.
Anchors, in the same process: HF ``generate`` eager with a dynamic cache, and with a static cache +
``torch.compile`` where it runs. Engine variants: no signals, signals, signals + snapkv, signals + snapkv +
the guard and controller in the loop. Each engine row is run once to warm up (CUDA graph capture), then
timed ``repeats`` times (the median run is reported, all of them listed); it reports generated tokens/s,
ms per step, the time split (prefill, decode steps, host bookkeeping, controller) and peak GPU memory. A row
with a controller also times the same engine without it, interleaved with its own repeats, and reports
``overhead_paired`` (rows timed minutes apart drift by a few percent on the H100).
Rows are appended to ``--out`` as they finish (a killed run resumes; rows of another model are kept), and
the summary keys are recomputed over all rows.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hazard.cli import build, parse_args
from hazard.collect import _git_sha, encode, hardware
from hazard.compression import PressSpec, build_press
from hazard.engine import Engine
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.tasks import build_task
from hazard.traces import write_json

VARIANTS = {  # name -> (signals, press, controller, decode attention)
    "engine": (False, None, None, "auto"),
    "engine+signals": (True, None, None, "auto"),
    "engine+signals+snapkv": (True, "snapkv", None, "auto"),
    "engine+signals+snapkv+guard": (True, "snapkv", "guard", "auto"),
    # Diagnostics (not run by default): where the guard's cost goes, and what the attention kernel buys.
    "engine+signals+snapkv+reversible": (True, "snapkv", "reversible", "auto"),  # host prompt copies only
    "engine+signals+snapkv+guard_idle": (True, "snapkv", "idle", "auto"),  # + the guard, never acting
    "engine+signals+snapkv/sdpa": (True, "snapkv", None, "sdpa"),
}
MAIN_VARIANTS = list(VARIANTS)[:4]


@dataclass
class BenchConfig:
    """What to measure.

    Parameters
    ----------
    model : ModelConfig
        The model (bf16 on CUDA).
    gsm8k : str
        GSM8K folder (test.jsonl, train.jsonl).
    batch_sizes : list of int
        Engine batch sizes; each uses the first ``batch`` problems.
    hf_batch_sizes : list of int
        Batch sizes of the HF ``generate`` anchors.
    hf_compile_batch_sizes : list of int
        Batch sizes for HF ``generate`` with a static cache and ``torch.compile`` (empty: skip).
    variants : list of str
        Engine variants (see VARIANTS; the diagnostics split the guard's cost into host prompt copies,
        guard compute and actions, and compare the attention kernel with SDPA).
    ratio : float
        SnapKV compression ratio of the compressed variants.
    guard : str
        Guard checkpoint for the controller variant (policy ``hazard`` at its threshold).
    guard_max_batch : int
        Largest batch for the controller variant (its host prompt copies grow with the batch).
    max_new_tokens : int
    prefill_tokens : int
        Padded prompt tokens per prefill forward.
    probe_layers : list of int
    rerun : bool
        Drop this model's rows measured on this hardware first (a new commit), instead of resuming.
    repeats : int
        Timed runs per engine row after the warm-up; the row reports the median (and all of them).
    paired : bool
        Rows with a controller also time the same engine without it, interleaved with their own repeats
        (A B B A ...), and report ``overhead_paired``: the median per-pair time ratio minus one.
    out : str
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    gsm8k: str = "../shared/data/gsm8k"
    batch_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    hf_batch_sizes: list[int] = field(default_factory=lambda: [64, 128, 256])
    hf_compile_batch_sizes: list[int] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: list(MAIN_VARIANTS))
    ratio: float = 0.875
    guard: str = "checkpoints/qwen2.5-coder-1.5b-gru"
    guard_max_batch: int = 256
    max_new_tokens: int = 256
    prefill_tokens: int = 32768
    probe_layers: list[int] = field(default_factory=lambda: [0, 14, -1])
    rerun: bool = False
    repeats: int = 3
    paired: bool = True
    out: str = "collect/results/throughput.json"


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _peak(cuda: bool) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None


def hf_row(model, tok, ids: list[list[int]], max_new: int, compile_: bool, cuda: bool) -> dict:
    """HF ``generate`` on left-padded ``ids``, exactly ``max_new`` new tokens per row."""
    b, width = len(ids), max(len(p) for p in ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    x = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, p in enumerate(ids):
        x[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    x, mask = x.to(model.device), mask.to(model.device)
    kw = dict(max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, pad_token_id=pad)
    note = "dynamic cache, eager"
    if compile_:  # transformers compiles the decoding forward itself when the cache is static
        kw.update(cache_implementation="static")
        note = "static cache; transformers' own torch.compile of the decoding step (compiled in a warm-up call)"
        model.generate(x, attention_mask=mask, **kw)
    _sync(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = model.generate(x, attention_mask=mask, **kw)
    _sync(cuda)
    secs = time.perf_counter() - t0
    n = (out.shape[1] - width) * b
    return {"generated_tokens": n, "seconds": round(secs, 3), "generated_tokens_per_s": round(n / secs, 1),
            "ms_per_step": round(1000 * secs / max_new, 2), "peak_gpu_mem_gb": _peak(cuda), "note": note}


def engine_row(model, tok, ids, cfg: BenchConfig, variant: str, batch: int, cuda: bool) -> dict:
    from hazard.control import PolicyController, build_policy
    from hazard.guard import HazardGuard

    signals, press_name, mode, attention = VARIANTS[variant]
    spec = PressSpec(press_name, cfg.ratio) if press_name else PressSpec("none")
    eng = Engine(model, end_token_ids(tok, model), cfg.max_new_tokens, batch, tuple(cfg.probe_layers),
                 signals=signals, ignore_eos=True, prefill_tokens=cfg.prefill_tokens, attention=attention)

    def controller():
        if mode is None:
            return None
        if mode == "reversible":  # a controller that never acts: the engine keeps the host prompt copies
            return PolicyController(build_policy("static"), None, cfg.ratio, cfg.max_new_tokens)
        guard = HazardGuard.from_pretrained(cfg.guard)
        trigger = guard.threshold if mode == "guard" else float("inf")
        return PolicyController(build_policy("hazard", trigger=trigger), guard, cfg.ratio, cfg.max_new_tokens)

    paired = mode is not None and cfg.paired
    eng.generate(ids, build_press(spec), controller())  # warm-up: graph capture, lazy initialisation
    if paired:  # the same engine without the controller (its store fits: no new graphs in the timed runs)
        eng.generate(ids, build_press(spec), None)
    _sync(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def timed(ctl) -> tuple:
        eng.timings = dict.fromkeys(eng.timings, 0.0)
        eng.steps = 0
        t0 = time.perf_counter()
        gens = eng.generate(ids, build_press(spec), ctl)
        _sync(cuda)
        return time.perf_counter() - t0, dict(eng.timings), eng.steps, gens

    runs, base = [], []  # timed repeats: the row reports the median one (single runs spread by +-2-3%)
    for i in range(max(cfg.repeats, 1)):
        if paired and i % 2 == 0:  # A B B A ...: slow drift of the clocks cancels within each pair
            base.append(timed(None)[0])
        runs.append(timed(controller()))
        if paired and i % 2 == 1:
            base.append(timed(None)[0])
    ratios = [r[0] / b for r, b in zip(runs, base)]
    runs.sort(key=lambda r: r[0])
    secs, timings, steps_taken, gens = runs[len(runs) // 2]
    n = sum(len(g.tokens) for g in gens)
    steps = max(steps_taken, 1)
    row = {"generated_tokens": n, "seconds": round(secs, 3), "generated_tokens_per_s": round(n / secs, 1),
           "repeats_tokens_per_s": [round(n / r[0], 1) for r in runs],
           "ms_per_step": round(1000 * secs / steps, 2), "steps": steps_taken,
           "split_ms_per_step": {k.removesuffix("_s"): round(1000 * v / steps, 3) for k, v in timings.items()},
           "peak_gpu_mem_gb": _peak(cuda), "cuda_graphs": bool(eng.runner.graphs),
           "attention": "triton" if eng.runner.kernel else "sdpa",
           "mean_kv_tokens": round(float(sum(g.kv_tokens.mean() for g in gens) / len(gens)), 1)}
    if paired:
        # Against the same engine and store without the controller, each repeat beside its own base run:
        # the median of the per-pair time ratios (rows measured minutes apart also differ by the drift).
        row["paired_base_tokens_per_s"] = [round(n / b, 1) for b in base]
        row["overhead_paired"] = round(float(np.median(ratios)) - 1, 4)
    if mode in ("guard", "idle"):
        row["triggered_rows"] = sum(any(e[1] == "restore" for e in g.control["events"]) for g in gens)
    return row


def summarize(rows: list[dict]) -> dict:
    """Ratios to HF generate (same model, batch) and to the same engine without signals / guard."""
    rows = [r for r in rows if "generated_tokens_per_s" in r]
    key = {(r["model"], r["batch"], r["setting"]): r for r in rows}
    for r in rows:
        m, b = r["model"], r["batch"]
        hf = key.get((m, b, "hf_generate"))
        if r["setting"].startswith("engine") and hf:
            r["x_hf_generate"] = round(r["generated_tokens_per_s"] / hf["generated_tokens_per_s"], 2)
        base = {"engine+signals": "engine"}.get(r["setting"])
        if r["setting"].startswith("engine+signals+snapkv") and r["setting"] != "engine+signals+snapkv":
            base = "engine+signals+snapkv"
        if base and (m, b, base) in key:
            r["overhead_vs_" + base] = round(key[(m, b, base)]["generated_tokens_per_s"]
                                             / r["generated_tokens_per_s"] - 1, 3)
    compressed = [r for r in rows if r["setting"] == "engine+signals+snapkv"]
    best = {}
    for r in compressed:
        if r["generated_tokens_per_s"] > best.get(r["model"], {}).get("generated_tokens_per_s", 0):
            best[r["model"]] = r
    return {"best_generated_tokens_per_s": max((r["generated_tokens_per_s"] for r in compressed), default=None),
            "best_by_model": {m: {k: r[k] for k in ("batch", "generated_tokens_per_s", "ms_per_step",
                                                    "x_hf_generate") if k in r} for m, r in best.items()}}


def run(cfg: BenchConfig) -> dict:
    out = Path(cfg.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    label = cfg.model.label()
    rows = [r for r in old.get("rows", []) if r["model"] != label or r.get("hardware") == hardware()]
    if cfg.rerun:
        rows = [r for r in rows if r["model"] != label]
    done = {(r["model"], r["batch"], r["setting"]) for r in rows}
    model, tok = load_model(cfg.model)
    cuda = next(model.parameters()).is_cuda
    problems = build_task("gsm8k", path=cfg.gsm8k, split="test", limit=max(cfg.batch_sizes + cfg.hf_batch_sizes),
                          k_shot=3, seed=0).prompts()
    ids = [encode(tok, p) for p in problems]
    meta = {"model": label, "hardware": hardware(), "max_new_tokens": cfg.max_new_tokens, "git_sha": _git_sha(),
            "probe_layers": cfg.probe_layers,
            "prompt_tokens_mean": round(sum(map(len, ids)) / len(ids), 1)}

    def save(row: dict) -> None:
        rows.append({**meta, **row})
        print(json.dumps(rows[-1]), flush=True)
        write_json(out, {"description": __doc__.split("\n\n")[0], "prompts": "GSM8K test, 3-shot chat, seed-0",
                         "ratio": cfg.ratio, **summarize(rows), "rows": rows})

    plan = [("hf_generate", b) for b in cfg.hf_batch_sizes]
    plan += [(v, b) for b in cfg.batch_sizes for v in cfg.variants
             if not (VARIANTS[v][2] and b > cfg.guard_max_batch)]
    plan += [("hf_generate_static_compile", b) for b in cfg.hf_compile_batch_sizes]
    for setting, b in plan:
        if (label, b, setting) in done:
            continue
        try:
            if setting.startswith("hf_generate"):
                row = hf_row(model, tok, ids[:b], cfg.max_new_tokens, setting.endswith("compile"), cuda)
            else:
                row = engine_row(model, tok, ids[:b], cfg, setting, b, cuda)
        except Exception as e:  # noqa: BLE001 - a row that cannot run is reported, not hidden
            row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            if cuda:
                torch.cuda.empty_cache()
        save({"setting": setting, "batch": b, **row})
    return json.loads(out.read_text())


if __name__ == "__main__":
    run(build(BenchConfig, parse_args(sys.argv[1:])))
