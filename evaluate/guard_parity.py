"""Does the guard see live what it saw in training? Its per-token probabilities on one static run, two ways.

A guard's thresholds are chosen on collected traces (its probabilities over each trace, computed offline from
the trace's features, ``HazardGuard.forward_sequence``); in the closed loop the same guard steps token by token
inside the engine (``PolicyController``: features from the step's packets, a recurrent state per batch slot,
CUDA graphs on a GPU). This runs one evaluate config's prompts under one base press twice on the same engine:

- *offline*: the static run, no controller; its rows' features (``trace_features``, as training reads them)
  through ``forward_sequence``;
- *live*: the same press with the ``hazard`` policy at a trigger it never reaches, recording the probability
  the controller computed for every row and step (CUDA graphs on or off, ``--eager``).

and reports, per row, the largest difference between the two over the tokens both runs generated alike, and
the share of rows each way would have alarmed at the guard's threshold for the press (all rows, rows the press
left right). If the live shares are far above the offline ones, the closed loop is not the guard that was
validated; if they match, a false-trigger rate above the validation target comes from the prompts.

    python evaluate/guard_parity.py --config configs/evaluate/frontier_q15_live32.yaml \
        --press snapkv@0.875 --limit 200 --out /tmp/parity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from hazard import SCHEMA_VERSION
from hazard.cli import build, parse_args
from hazard.collect import build_rows, encode, questions_of
from hazard.compression import build_press
from hazard.control import PolicyController, build_policy
from hazard.engine import Engine
from hazard.errors import HazardError
from hazard.evaluate import EvaluateConfig
from hazard.guard import HazardGuard
from hazard.models import end_token_ids, load_model
from hazard.predictor.features import trace_features
from hazard.tasks import build_task
from hazard.traces import write_json


class Recorder(PolicyController):
    """A ``PolicyController`` that keeps every probability its guard returns, per row and step."""

    def begin(self, n_slots: int, device=None) -> None:
        super().begin(n_slots, device)
        self.row_of = np.full(n_slots, -1, dtype=np.int64)
        self.probs: dict[int, dict[int, float]] = {}

    def admit(self, slots, rows, prompt_lens, prompt_kept=None) -> None:
        super().admit(slots, rows, prompt_lens, prompt_kept)
        self.row_of[list(slots)] = list(rows)

    def device_step(self, slots, packets, prompt_lens, steps):
        p = super().device_step(slots, packets, prompt_lens, steps)
        if p is not None:  # a copy now: a graph's output buffer is overwritten by the next replay
            idx = np.arange(self.n_slots)[slots] if isinstance(slots, slice) else np.asarray(list(slots))
            vals, st = p[:, 0].float().cpu().numpy(), steps.cpu().numpy().astype(np.int64)
            for j, s in enumerate(idx):
                r = int(self.row_of[s])
                if r >= 0:
                    self.probs.setdefault(r, {})[int(st[j])] = float(vals[j])
        return p


def parity(cfg: EvaluateConfig, press: str, limit: int, eager: bool = False) -> dict:
    specs = {s.label: s for s in cfg.base_presses}
    if press not in specs:
        raise HazardError(f"--press {press}: not a base press of the config ({', '.join(specs)})")
    if not cfg.guard:
        raise HazardError("the config names no guard; set guard: <checkpoint>")
    spec = specs[press]
    guard = HazardGuard.from_pretrained(cfg.guard)
    task = build_task(cfg.tasks[0].name, **cfg.tasks[0].expand()[0])
    prompts = task.prompts()[:limit]
    model, tok = load_model(cfg.model)
    ids = [encode(tok, p) for p in prompts]
    engine = Engine(model, end_token_ids(tok, model), cfg.max_new_tokens, cfg.batch_size, tuple(cfg.probe_layers),
                    **guard.engine_options())  # a guard reading the model's state: the engine records it
    meta = {"schema_version": SCHEMA_VERSION, "model": cfg.model.label(), "seed": cfg.seed,
            "max_new_tokens": cfg.max_new_tokens, "task": task.name}
    h = guard.horizons.index(guard.eval_horizon)
    thr = guard.threshold_for(spec.name, spec.ratio)

    questions = questions_of(tok, prompts)  # for a guard reading the prefill press's keeps of the question
    static = build_rows(tok, prompts, engine.generate(ids, build_press(spec)), None, spec, meta, questions)
    offline = [guard.forward_sequence(trace_features(r, tuple(guard.feature_names)))[:, h] for r in static]

    policy = build_policy("hazard", trigger=float("inf"), sustain=1, calm_tokens=0)
    rec = Recorder(policy, guard, spec.ratio, cfg.max_new_tokens, cuda_graphs=not eager, questions=questions)
    live_gens = engine.generate(ids, build_press(spec), controller=rec)

    # the uncompressed answers (the twin the closed loop's rows are labelled against)
    refs = build_rows(tok, prompts, engine.generate(ids, None), None, spec, meta)
    rows = []
    for i, (r, off, g) in enumerate(zip(static, offline, live_gens)):
        same = 0  # tokens both runs generated alike (bf16 batch noise can part them)
        for a, b in zip(r["tokens"], g.tokens):
            if a != b:
                break
            same += 1
        live = np.array([rec.probs.get(i, {}).get(t, np.nan) for t in range(len(g.tokens))])
        both = min(same, len(live), len(off))
        diff = np.abs(live[:both] - off[:both])
        rows.append({"row": i, "tokens": len(r["tokens"]), "same_tokens": same,
                     "max_abs_diff": float(np.nanmax(diff)) if both else None,
                     "offline_alarm": bool(off.max() >= thr), "live_alarm": bool(np.nanmax(live) >= thr),
                     "offline_first": int(np.argmax(off >= thr)) if off.max() >= thr else -1,
                     "live_first": int(np.nanargmax(live >= thr)) if np.nanmax(live) >= thr else -1,
                     "right": bool(r["correct"]), "right_uncompressed": bool(refs[i]["correct"])})

    def share(key: str, sel) -> float | None:
        sel = [x for x in rows if sel(x)]
        return float(np.mean([x[key] for x in sel])) if sel else None

    diffs = [x["max_abs_diff"] for x in rows if x["max_abs_diff"] is not None]
    return {"config": cfg.output, "guard": cfg.guard, "press": press, "threshold": thr, "n": len(rows),
            "cuda_graphs": not eager and torch.cuda.is_available(), "device": str(engine.device),
            "median_max_abs_diff": float(np.median(diffs)) if diffs else None,
            "max_abs_diff": float(np.max(diffs)) if diffs else None,
            "same_token_share": float(np.mean([x["same_tokens"] == x["tokens"] for x in rows])),
            "alarm_share": {"offline": share("offline_alarm", lambda x: True),
                            "live": share("live_alarm", lambda x: True)},
            "alarm_share_right_under_press": {"offline": share("offline_alarm", lambda x: x["right"]),
                                              "live": share("live_alarm", lambda x: x["right"])},
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="an evaluate config (model, guard, tasks, base presses)")
    ap.add_argument("--press", required=True, help="one of its base presses, e.g. snapkv@0.875")
    ap.add_argument("--limit", type=int, default=100, help="the task's first N prompts")
    ap.add_argument("--eager", action="store_true", help="the live guard without CUDA graphs")
    ap.add_argument("--out", required=True)
    a, overrides = ap.parse_known_args(argv)  # the rest: config overrides as for hazard evaluate (--model.path ..)
    try:
        cfg = build(EvaluateConfig, parse_args(["--config", a.config, *overrides]))
        res = parity(cfg, a.press, a.limit, a.eager)
    except HazardError as e:
        print(f"guard_parity: error: {e}", file=sys.stderr)
        return 2
    write_json(Path(a.out), res)
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
