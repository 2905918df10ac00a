"""What two presses make the model write on the same prompts, and what an answer gate makes of each answer.

RESULTS.md 0s: at the plain press's budget, ExpectedAttention 0.85 with the question kept whole
(``question_expected_attention``) kept 0.434 on GSM8K test 1-500 against 0.500 for the plain press, and the
answer gates of 0p / 0r, which repair 4-10% of the plain press's answers, repaired none of its answers. This
generates the chosen prompts under each press (the engine, greedy, on this CPU), reads every answer with the
uncompressed model (``hazard.engine.check``, as the closed loop's answer check does) and writes each answer's text,
whether it is right, its reading's first disagreement and the gate's probability against its threshold.

    python evaluate/press_answers.py --model-path ~/.cache/hazard-models --gguf qwen2.5-coder-1.5b-instruct.gguf \
        --gsm8k ../shared/data/gsm8k --index 9 15 19 27 --presses expected_attention@0.85 \
        question_expected_attention@0.85 --gate checkpoints/answer-gate-q15-ea85/f0.03 \
        --out evaluate/results/frontier_q15_check_escalate_qea85/press_answers.json

The outcomes on the GPU came from bf16 there; here the model runs in float32 (bf16 matmuls on 2 CPU cores are
slow), so greedy ties can fall differently: compare each answer with the GPU's outcome bits, which are copied in.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from hazard.collect import _git_sha, encode, hardware, kept_positions, questions_of
from hazard.compression import PressSpec, build_press
from hazard.control.gate import AnswerGate, verdict_features
from hazard.engine import Engine
from hazard.engine.check import check_answers
from hazard.errors import HazardError
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.tasks import build_task
from hazard.tasks.base import parse_answer, score


def spec_of(label: str) -> PressSpec:
    name, _, ratio = label.partition("@")
    if not ratio:
        raise HazardError(f"press {label!r}: write <press>@<ratio>, e.g. expected_attention@0.85")
    return PressSpec(name, float(ratio))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--gguf", default=None, help="GGUF file name inside --model-path")
    ap.add_argument("--gsm8k", required=True, help="folder with GSM8K's test.jsonl and train.jsonl")
    ap.add_argument("--index", type=int, nargs="+", required=True, help="GSM8K test problems (0-based)")
    ap.add_argument("--presses", nargs="+", required=True, help="<press>@<ratio> each")
    ap.add_argument("--gate", required=True, help="an answer gate folder (evaluate/answer_gate.py)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    specs = [spec_of(s) for s in a.presses]
    gate = AnswerGate.load(a.gate)
    cfg = ModelConfig(path=a.model_path, gguf_file=a.gguf, dtype="float32", device="cpu")
    model, tok = load_model(cfg)
    prompts = []
    for i in a.index:  # the frontier's format: 3-shot, seed-0 exemplars
        prompts += build_task("gsm8k", path=a.gsm8k, split="test", start=i, limit=1, k_shot=3, seed=0).prompts()
    ids = [encode(tok, p) for p in prompts]
    questions = questions_of(tok, prompts)
    engine = Engine(model, end_token_ids(tok, model), a.max_new_tokens, batch_size=len(prompts))
    rows, t0 = [], time.time()
    for spec in specs:
        press = build_press(spec)
        gens = engine.generate(ids, press, protect=kept_positions(press, questions, ids))
        verdicts = check_answers(engine.runner, ids, [g.tokens for g in gens], engine.prefill.token_budget)
        for p, g, v in zip(prompts, gens, verdicts):
            text = tok.decode(g.tokens, skip_special_tokens=True)
            x = verdict_features(v, a.max_new_tokens, gate.features, gate.digit_ids, gate.probes)
            at, answer = v.first_disagreement(0.2), parse_answer(text)
            rows.append({"id": p.id, "press": spec.label, "gold": p.gold, "answer": answer,
                         "correct": score(answer, p.gold), "finished": g.finished,
                         "n_tokens": len(g.tokens), "first_disagreement": at,
                         "there": tok.decode(g.tokens[max(at - 8, 0): at + 4]) if at >= 0 else "",
                         "gate_prob": float(gate.prob(x)[0]), "text": text})
            r = rows[-1]
            print(f"{r['id']} {r['press']}: {r['answer']} (gold {r['gold']}) right={r['correct']} "
                  f"tokens={r['n_tokens']} first_disagreement={at} gate={r['gate_prob']:.3f}", flush=True)
    res = {"model": cfg.label(), "dtype": "float32", "greedy": True, "gate": a.gate, "threshold": gate.threshold,
           "presses": a.presses, "index": a.index, "max_new_tokens": a.max_new_tokens, "hardware": hardware(),
           "git_sha": _git_sha(), "seconds": round(time.time() - t0, 1), "rows": rows}
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, a.out)  # no partial file if killed


if __name__ == "__main__":
    main()
