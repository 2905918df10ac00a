"""Does the press evict the question's numbers from the answers it breaks? A prefill-time gate candidate.

Issue 12's false-trigger bound needs a gate that tells answers compression broke from every other answer, the
ones wrong uncompressed as well included; no reading of the answer does (evaluate/gate_features.py: 12-17% of
broken answers found at 5% of the others). Its best new feature was the share of the question's numbers the
answer never writes. This asks the cause instead, before a token is generated: per prompt, which of the
question's number tokens the press kept, over every layer and KV head (``TrackedPress`` records kept indices),
from one prefill under the press on this CPU, joined with the outcomes the GPU measured for the same prompts
(the answer check's readings, ``evaluate/answer_gate.py --data``).

    python evaluate/prefill_numbers.py --config configs/evaluate/gate_q15_4k.yaml --data <readings.npz> \
        --gsm8k ../shared/data/gsm8k --model-path ~/.cache/hazard-models --gguf qwen2.5-coder-1.5b-instruct.gguf \
        --per-class 60 --out evaluate/results/prefill_numbers_q15.json

Samples ``--per-class`` broken answers and as many of the others (seeded), so AUROCs are not dominated by one
class. Caveat: the prefill here runs in float32 on the CPU, the outcomes in bf16 on the GPU; top-k ties can
fall differently, so a feature here is an estimate of what the GPU's press kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hazard.collect import _git_sha
from hazard.compression.registry import build_press
from hazard.errors import HazardError
from hazard.signals.prefill import question_positions
from hazard.traces import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_features import add_readings_args, operating_points, readings_and_prompts  # noqa: E402

FEATURES = ("numbers_kept", "numbers_min_kept", "numbers_lost", "question_kept", "numbers_kept_last_layers")


def kept_share(kept: dict[int, torch.Tensor], n: int) -> np.ndarray:
    """(layers, kv_heads, n) 0/1: whether each layer and head kept each of the prompt's ``n`` positions."""
    layers = sorted(kept)
    out = np.zeros((len(layers), kept[layers[0]].shape[1], n), dtype=np.float32)
    for j, li in enumerate(layers):
        idx = kept[li][0].cpu().numpy()  # (kv_heads, n_kept) positions: prefill cache order is position order
        for h in range(idx.shape[0]):
            out[j, h, idx[h]] = 1.0
    return out


def features(share: np.ndarray, q: list[int], digits: list[int]) -> list[float]:
    """``FEATURES``: the mean share of layer-heads keeping a question digit token; the least kept digit token's
    share; the share of digit tokens kept by under 10% of layer-heads; the question's mean kept share; digit
    tokens' mean over the last third of layers."""
    per_token = share.mean(axis=(0, 1))
    d = per_token[digits] if digits else np.ones(1)
    last = share[-max(1, share.shape[0] // 3):].mean(axis=(0, 1))
    return [float(d.mean()), float(d.min()), float((d < 0.1).mean()), float(per_token[q].mean()),
            float(last[digits].mean() if digits else 1.0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_readings_args(ap)
    ap.add_argument("--model-path", required=True, help="a folder with the GGUF file, or an HF model folder")
    ap.add_argument("--gguf", default=None, help="the GGUF file name in --model-path")
    ap.add_argument("--per-class", type=int, default=60, help="broken answers sampled, and as many others")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        cfg, d, prompts = readings_and_prompts(args.config, args.data, args.gsm8k)
        spec = cfg.base_presses[0]
        press = build_press(spec)
        if not Path(args.model_path).exists():
            raise HazardError(f"--model-path {args.model_path} does not exist")
    except HazardError as e:
        print(f"prefill_numbers: error: {e}", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    kw = {"gguf_file": args.gguf} if args.gguf else {}
    tok = AutoTokenizer.from_pretrained(args.model_path, **kw)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32, **kw).eval()
    broken, right = d["y"].astype(bool), d["healthy"].astype(bool)
    rng = np.random.default_rng(args.seed)
    n = min(args.per_class, int(broken.sum()), int((~broken).sum()))
    pick = np.sort(np.r_[rng.choice(np.flatnonzero(broken), n, replace=False),
                         rng.choice(np.flatnonzero(~broken), n, replace=False)])
    rows, t0 = [], time.time()
    for k, i in enumerate(pick):
        p = prompts[i]
        text = tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        q, digits = question_positions(tok, text, p.messages[-1]["content"])
        with torch.inference_mode(), press(model):
            model(ids, past_key_values=DynamicCache(), use_cache=True)
        rows.append(features(kept_share(press.pop_kept(), ids.shape[1]), q, digits))
        if k % 10 == 9:
            print(f"prefill_numbers: {k + 1}/{len(pick)} prompts, {time.time() - t0:.0f} s", file=sys.stderr)
    x = np.array(rows)
    b, r = broken[pick], right[pick]
    # a low kept share is the hazard: score = 1 - feature (the lost share as is)
    res = {f: operating_points(x[:, j] if f == "numbers_lost" else 1 - x[:, j], b, r)
           for j, f in enumerate(FEATURES)}
    groups = {"broken": b, "right": r, "wrong_uncompressed_too": ~b & ~r}
    res["means"] = {f: {g: (float(x[m, j].mean()) if m.any() else None) for g, m in groups.items()}
                    for j, f in enumerate(FEATURES)}
    write_json(Path(args.out), {"data": str(args.data), "config": args.config, "collected": d["collected"],
                                "press": spec.label,
                                "model": args.gguf or args.model_path, "prefill_dtype": "float32",
                                "n": int(len(pick)), "broken": int(b.sum()), "right": int(r.sum()),
                                "prompt_index": pick.tolist(), "features": dict(zip(FEATURES, x.T.tolist())),
                                "seconds": round(time.time() - t0, 1), "git_sha": _git_sha(), "hardware": "CPU",
                                "results": res})
    print(f"{len(pick)} prompts ({int(b.sum())} broken by compression, {int(r.sum())} right under it); "
          "broken found at 5% of the right / of all others flagged (AUROC broken vs right / vs others); "
          "means: broken / right / wrong uncompressed too")
    for f in FEATURES:
        m = res[f]
        print(f"{f:26} {m['found_at_5pct_right']:.3f} / {m['found_at_5pct_others']:.3f}   "
              f"({m['auroc_broken_vs_right']:.3f} / {m['auroc_broken_vs_others']:.3f})   means "
              + " / ".join("n/a" if v is None else f"{v:.3f}" for v in res["means"][f].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
