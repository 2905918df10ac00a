"""Does the uncompressed model's state at the end of the question tell broken answers from answers wrong anyway?

Issue 12's false triggers are mostly answers the model gets wrong uncompressed too (evaluate/RESULTS.md 0p: 156 of
168 false flags); the reading ranks broken answers above them at AUROC 0.61 only. A broken answer is one the
uncompressed model would have got right, so what separates the two is whether the model can solve the problem,
which its hidden state at the question's last token may encode. ``hazard.control.gate.PROBES`` reads that state
live (``Verdict.states``); this asks the question on this CPU before a device session collects it at scale:
sample broken answers and answers wrong under both (calm: no loop or non-termination) from the saved readings,
compute each prompt's question state in float32 (the shared few-shot prefix once, then each question on a copy of
its cache), and compare, out of fold, a linear probe on the state with the digit gate's reading statistics and
with both together. ``--state answer`` takes the other state the gate's probes read instead: after the compressed
answer (prompt + the answer's tokens but its last, as the reading feeds them).

    python evaluate/question_states.py --config configs/evaluate/gate_q15_ea85.yaml --data <readings.npz> \
        --gsm8k ../shared/data/gsm8k --model-path ~/.cache/hazard-models --gguf qwen2.5-coder-1.5b-instruct.gguf \
        --per-class 200 --out evaluate/results/question_states_q15_ea85.json

The states computed so far are kept beside ``--out`` (``<out>.states.npz``, written atomically every 25
prompts, removed once the JSON is written), so a stopped run goes on where it was. Caveat: float32 here, bf16
on the device; the probe is refit on whatever states it is given, so the comparison holds within one precision.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hazard.collect import _git_sha, encode
from hazard.control.gate import DIGITS, PROBE_C, digit_token_ids, verdict_features
from hazard.errors import HazardError
from hazard.models import ModelConfig, load_model
from hazard.traces import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_features import add_readings_args, out_of_fold, readings_and_prompts  # noqa: E402


def sample(broken: np.ndarray, wrong_both: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` broken answers and as many answers wrong under both (fewer if short)."""
    rng = np.random.default_rng(seed)
    n = min(per_class, int(broken.sum()), int(wrong_both.sum()))
    return np.sort(np.r_[rng.choice(np.flatnonzero(broken), n, replace=False),
                         rng.choice(np.flatnonzero(wrong_both), n, replace=False)])


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence shares, less one: the last token of each stays to be fed."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return n


@torch.inference_mode()
def question_states(decoder, seqs: list[list[int]], done: dict[int, np.ndarray], save, every: int = 25) -> int:
    """Fill ``done[i]`` with the decoder's last hidden state at the last token of ``seqs[i]``: the shared prefix
    is run once and its cache cropped back after each sequence's own tokens. ``save(done)`` every ``every``.
    Returns the shared prefix's length."""
    from transformers import DynamicCache

    k = common_prefix(seqs)
    cache = DynamicCache()
    decoder(input_ids=torch.tensor([seqs[0][:k]]), past_key_values=cache, use_cache=True)
    t0, fresh = time.time(), 0
    for i, s in enumerate(seqs):
        if i in done:
            continue
        out = decoder(input_ids=torch.tensor([s[k:]]), past_key_values=cache, use_cache=True)
        done[i] = out.last_hidden_state[0, -1].float().numpy()
        cache.crop(k)
        fresh += 1
        if fresh % every == 0:
            save(done)
            print(f"question_states: {len(done)}/{len(seqs)} prompts, {time.time() - t0:.0f} s", file=sys.stderr)
    save(done)
    return k


def compare(states: np.ndarray, x_digits: np.ndarray, broken: np.ndarray, groups: np.ndarray) -> dict:
    """Out-of-fold AUROC of broken against the others (here: wrong under both) for a linear probe on the states
    (standardised, L2 at the gate probes' ``PROBE_C``), the digit statistics (logistic regression) and both
    (the probe's out-of-fold logit beside them). In this sample broken = right uncompressed and wrong anyway =
    wrong uncompressed, so the probe's target is the question probe's own."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = broken.astype(int)
    probe = out_of_fold(lambda: make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=3000)),
                        states, y, groups)
    logit = np.log(np.clip(probe, 1e-9, 1)) - np.log(np.clip(1 - probe, 1e-9, 1))
    lr = lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))  # noqa: E731
    return {"probe": float(roc_auc_score(y, probe)),
            "digits": float(roc_auc_score(y, out_of_fold(lr, x_digits, y, groups))),
            "digits+probe": float(roc_auc_score(y, out_of_fold(lr, np.hstack([x_digits, logit[:, None]]), y, groups)))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_readings_args(ap)
    ap.add_argument("--model-path", required=True, help="a folder with the GGUF file, or an HF model folder")
    ap.add_argument("--gguf", default=None, help="the GGUF file name in --model-path")
    ap.add_argument("--per-class", type=int, default=200, help="broken answers sampled, and as many wrong anyway")
    ap.add_argument("--state", choices=["question", "answer"], default="question",
                    help="the state at the question's last token, or after the compressed answer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        _, d, prompts = readings_and_prompts(args.config, args.data, args.gsm8k)
        if "calm" not in d:
            raise HazardError(f"--data {args.data}: the readings kept no loop / non-termination flags; collect again")
        model, tok = load_model(ModelConfig(path=args.model_path, gguf_file=args.gguf, dtype="float32", device="cpu"))
    except HazardError as e:
        print(f"question_states: error: {e}", file=sys.stderr)
        return 2
    broken, right, full = d["y"].astype(bool), d["healthy"].astype(bool), d["full_correct"].astype(bool)
    pick = sample(broken, ~right & ~full & d["calm"].astype(bool), args.per_class, args.seed)
    # as the device encoded them; the answer state's sequence is what the reading feeds
    seqs = [encode(tok, prompts[i]) + (d["verdicts"][i].tokens[:-1].tolist() if args.state == "answer" else [])
            for i in pick]
    lens = np.array([len(q) for q in seqs])
    part = Path(str(args.out) + ".states.npz")
    done: dict[int, np.ndarray] = {}
    if part.is_file():
        z = np.load(part)
        same = "lens" in z and np.array_equal(z["lens"], lens) and str(z["state"]) == args.state
        if same and np.array_equal(z["pick"], pick):  # the same sample and sequences: go on where it stopped
            done = {int(i): s for i, s in zip(z["done"], z["states"])}

    def save(states: dict[int, np.ndarray]) -> None:
        keys = sorted(states)
        tmp = part.with_name(part.name + ".tmp.npz")
        np.savez(tmp, pick=pick, lens=lens, state=np.array(args.state),
                 done=np.array(keys, dtype=np.int64),
                 states=np.stack([states[i] for i in keys]) if keys else np.zeros((0, 0), np.float32))
        tmp.replace(part)

    t0 = time.time()
    prefix = question_states(model.model, seqs, done, save)
    states = np.stack([done[i] for i in range(len(pick))])
    digits = digit_token_ids(d["vocab_ids"], d["vocab"])
    x_digits = np.array([verdict_features(d["verdicts"][i], d["max_new_tokens"], DIGITS, digits) for i in pick])
    res = compare(states, x_digits, broken[pick], d["groups"][pick])
    write_json(Path(args.out), {"data": str(args.data), "config": args.config, "collected": d["collected"],
                                "model": args.gguf or args.model_path, "state": args.state, "state_dtype": "float32",
                                "n": int(len(pick)), "broken": int(broken[pick].sum()),
                                "prefix_tokens": prefix, "prompt_index": pick.tolist(),
                                "auroc_broken_vs_wrong_both": res, "seconds": round(time.time() - t0, 1),
                                "git_sha": _git_sha(), "hardware": "CPU"})
    part.unlink()  # the JSON holds the result; the states were only for resuming
    print(f"{len(pick)} prompts ({int(broken[pick].sum())} broken by compression, the rest wrong under both), the "
          f"{args.state} state; out-of-fold AUROC of broken against wrong under both:")
    for name, a in res.items():
        print(f"  {name:24} {a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
