"""question_* / numbers_* presses: the plain press's budget, with each prompt's question (or its digits) kept."""

import random

import pytest
import torch
from kvpress.utils import compute_n_kept
from transformers import DynamicCache

from hazard.compression import PressSpec, build_press
from hazard.compression.tracked import keep_first
from hazard.engine import Engine, KVStore
from hazard.engine.prefill import Prefill
from hazard.engine.runner import ModelRunner
from hazard.errors import HazardError


def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(250) for _ in range(rng.randrange(40, 70))] for _ in range(n)]


def test_keep_first_ranks_the_protected_positions_first_in_their_own_order():
    scores = torch.tensor([[[5.0, 1.0, 3.0, -2.0, 0.5, float("-inf")]]])  # last slot: padding
    out = keep_first(scores, torch.tensor([[False, False, False, True, True, False]]))
    assert out.topk(2, dim=-1).indices.tolist() == [[[4, 3]]]  # the protected pair, its better entry first
    assert out.topk(4, dim=-1).indices.tolist() == [[[4, 3, 0, 2]]]  # then the rest by the press's scores
    assert out[0, 0, 5] == float("-inf")


def _alone(model, name: str, prompt: list[int], keep: list[int], kwargs: dict):
    press = build_press(PressSpec(name, 0.5, kwargs))
    press.protect = torch.zeros(1, len(prompt), dtype=torch.bool)
    press.protect[0, keep] = True
    with torch.inference_mode(), press(model):
        model(input_ids=torch.tensor([prompt]), past_key_values=DynamicCache(), use_cache=True)
    return press.pop_kept()


@pytest.mark.parametrize("keep", ["question", "numbers"])
@pytest.mark.parametrize("base", ["snapkv", "knorm", "expected_attention"])
def test_a_keep_press_holds_its_positions_and_the_plain_press_best_others(model64, base, keep):
    """Prompts of different lengths prefilled together (batched scorers and per-length calls): each row holds the
    plain press's number of entries; every protected position in every layer and KV head; and, of the others,
    only entries the plain press keeps too (its best ones: what is left of the budget, by the same scores); the
    same entries as the press run on that prompt alone."""
    kwargs = {"window_size": 8} if base == "snapkv" else {}
    prompts = _prompts(4, seed=7) + [_prompts(1, seed=7)[0]]  # a repeated length: one group of two
    if keep == "question":  # the last 9-20 positions
        protect = [list(range(len(p) - q, len(p))) for p, q in zip(prompts, (12, 20, 9, 15, 12))]
    else:  # scattered positions, as a question's digits are
        protect = [sorted(random.Random(i).sample(range(len(p) - 8), 6)) for i, p in enumerate(prompts)]
    cfg = model64.config
    d = cfg.hidden_size // cfg.num_attention_heads
    store = KVStore(cfg.num_hidden_layers, cfg.num_key_value_heads, d, 6, 128, 0, torch.float64, torch.device("cpu"))
    slots = [5, 0, 3, 1, 2]
    Prefill(ModelRunner(model64, [0, -1]), token_budget=150)(
        store, slots, prompts, build_press(PressSpec(f"{keep}_{base}", 0.5, kwargs)), False, protect)
    for slot, p, keep_at in zip(slots, prompts, protect):
        n = compute_n_kept(len(p), 0.5)
        assert int(store.lens[slot]) == n
        plain = build_press(PressSpec(base, 0.5, kwargs))
        with torch.inference_mode(), plain(model64):
            model64(input_ids=torch.tensor([p]), past_key_values=DynamicCache(), use_cache=True)
        plain_kept = plain.pop_kept()
        alone = _alone(model64, f"{keep}_{base}", p, keep_at, kwargs)
        for li in range(cfg.num_hidden_layers):
            pos = store.pos[li, slot, :, :n]
            assert torch.equal(pos, alone[li][0].sort(-1).values)
            for h in range(cfg.num_key_value_heads):
                held = set(pos[h].tolist())
                assert set(keep_at) <= held
                assert held - set(keep_at) <= set(plain_kept[li][0, h].tolist())


def test_a_keep_press_needs_its_positions(model64):
    eng = Engine(model64, [256], max_new_tokens=4, batch_size=2)
    prompts = _prompts(2, seed=1)
    with pytest.raises(HazardError, match="needs the positions it keeps"):
        eng.generate(prompts, build_press(PressSpec("question_knorm", 0.5)))
    out = eng.generate(prompts, build_press(PressSpec("numbers_knorm", 0.5)), protect=[[3, 9], [30, 31, 32]])
    assert [g.kv_tokens_prefill for g in out] == [compute_n_kept(len(p), 0.5) for p in prompts]
    with pytest.raises(HazardError, match="needs the positions it keeps"):
        with torch.inference_mode(), build_press(PressSpec("question_knorm", 0.5))(model64):
            model64(input_ids=torch.tensor([prompts[0]]), past_key_values=DynamicCache(), use_cache=True)


def test_evaluate_runs_a_question_press_at_the_plain_press_memory(tmp_path):
    """Through ``hazard evaluate`` (the kept positions come from the task's prompts): the question-kept and the
    numbers-kept press hold exactly the plain press's KV, and the answer check with escalation runs on them."""
    import json

    from hazard.cli import main

    out = tmp_path / "cl.json"
    args = ["evaluate", "--output", str(out), "--model.tiny", "qwen2", "--model.dtype", "float64",
            "--model.device", "cpu", "--max_new_tokens", "12", "--batch_size", "4",
            "--tasks", "[{name: kv_retrieval, options: {n_prompts: 4, n_pairs: 6, seed: 5}}]",
            "--base_presses", "[{name: question_knorm, ratio: 0.75}, {name: numbers_knorm, ratio: 0.75}]",
            "--policies", "[static, answer_check]",
            "--static_sweep", "[{name: knorm, ratio: 0.75}]",
            "--policy_options", "{answer_check: {tau: 1.0, checks: 4, escalate: true, gate: 'random:0'}}"]
    assert main(args) == 0
    rows = {(r["base_press"], r["policy"]): r for r in json.loads(out.read_text())["rows"]}
    plain = rows[("knorm", "static")]
    for name in ("question_knorm", "numbers_knorm"):
        assert rows[(name, "static")]["mean_kv_fraction"] == plain["mean_kv_fraction"]
        assert rows[(name, "answer_check")]["n"] == 4


def test_collect_keeps_the_question_or_its_digits_in_every_layer_head(tmp_path, gsm8k_dir):
    """Through ``hazard collect`` on GSM8K-format prompts, settings mixed in one batch: the prefill signals (the
    share of layer-heads holding the question's tokens, ``hazard.signals.prefill``) are 1 for the question-kept
    press, its digit tokens are all held under the numbers-kept press, and the plain press keeps less; every row
    holds the plain press's number of entries."""
    import json
    from pathlib import Path

    from hazard.cli import main
    from hazard.models import save_tiny
    from hazard.traces import load_traces

    model = save_tiny(tmp_path / "tiny-qwen2", "qwen2", seed=2)
    root = Path(__file__).resolve().parents[1]
    tasks = json.dumps([{"name": "gsm8k", "options": {"path": str(gsm8k_dir), "limit": 3, "k_shot": 2}}])
    presses = "[{name: knorm, ratio: 0.75}, {name: question_knorm, ratio: 0.75}, {name: numbers_knorm, ratio: 0.75}]"
    out = tmp_path / "traces"
    assert main(["collect", "--config", str(root / "configs/collect/tiny.yaml"), "--output_dir", str(out),
                 "--model", json.dumps({"path": str(model), "device": "cpu", "dtype": "float64", "name": "tiny"}),
                 "--tasks", tasks, "--presses", presses, "--max_new_tokens", "4", "--mix_settings", "0"]) == 0
    rows = {(r["press"], r["prompt_id"]): r for r in load_traces(out).to_list()}
    ids = sorted({p for _, p in rows})
    for p in ids:
        plain, question, numbers = (rows[(n, p)] for n in ("knorm", "question_knorm", "numbers_knorm"))
        assert question["question_kept"] == 1.0 and numbers["question_digits_kept"] == 1.0
        assert question["kv_tokens_prefill"] == numbers["kv_tokens_prefill"] == plain["kv_tokens_prefill"]
    assert min(rows[("knorm", p)]["question_kept"] for p in ids) < 1.0
    assert min(rows[("knorm", p)]["question_digits_kept"] for p in ids) < 1.0
