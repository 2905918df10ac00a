"""Train the answer check's learned gate (``hazard.control.gate``) on an evaluate config's tasks and base press.

    python evaluate/answer_gate.py --config configs/evaluate/gate_q15.yaml --out checkpoints/answer-gate-q15
        [--max_false 0.05 0.2] [--any.evaluate.key value ...]

For every prompt: the uncompressed run and the run under each base press (the engine, greedy), then one
reading of each compressed answer by the uncompressed model (``check_answers``). Label: compression broke the
answer (right uncompressed, wrong compressed). Features: ``hazard.control.gate.FEATURES`` of that reading.
Prompt-grouped 5-fold cross-validation picks the threshold (at most ``max_false`` of the answers that are
right compressed get repaired); the gate refit on everything goes to ``<out>/f<max_false>/gate.json`` with
``report.json`` (cross-validated AUROC, repair rates, data, model, git sha), one folder per ``max_false``.
Use prompts the evaluation never sees (GSM8K train).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hazard.cli import build, parse_args
from hazard.collect import _git_sha, build_rows, encode, hardware
from hazard.compression import PressSpec, build_press
from hazard.control.gate import FEATURES, fit_gate, verdict_features
from hazard.engine import Engine
from hazard.engine.check import check_answers
from hazard.errors import HazardError
from hazard.evaluate import EvaluateConfig
from hazard.models import end_token_ids, load_model
from hazard.tasks import build_task
from hazard.traces import write_json


def collect_gate_data(cfg: EvaluateConfig) -> dict:
    """Features, labels and prompt groups for every (prompt, base press) of ``cfg``."""
    model, tok = load_model(cfg.model)
    engine = Engine(model, end_token_ids(tok, model), cfg.max_new_tokens, cfg.batch_size, tuple(cfg.probe_layers))
    xs, ys, ok, groups = [], [], [], []
    meta = {"model": cfg.model.label(), "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens}
    for t in cfg.tasks:
        for opts in t.expand():
            task = build_task(t.name, **opts)
            prompts = task.prompts()
            ids = [encode(tok, p) for p in prompts]
            full_spec = PressSpec("none")
            full = build_rows(tok, prompts, engine.generate(ids, None), None, full_spec, {**meta, "task": task.name})
            for spec in cfg.base_presses:
                gens = engine.generate(ids, build_press(spec))
                rows = build_rows(tok, prompts, gens, full, spec, {**meta, "task": task.name})
                verdicts = check_answers(engine.runner, ids, [g.tokens for g in gens], engine.prefill.token_budget)
                for i, (f, r, v) in enumerate(zip(full, rows, verdicts)):
                    xs.append(verdict_features(v, cfg.max_new_tokens))
                    ys.append(bool(f["correct"] and not r["correct"]))
                    ok.append(bool(r["correct"]))
                    groups.append(f"{task.name}/{i}")
    _, groups = np.unique(np.array(groups), return_inverse=True)
    return {"x": np.array(xs), "y": np.array(ys, dtype=np.int64), "healthy": np.array(ok), "groups": groups}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max_false", type=float, nargs="+", default=[0.05])
    args, rest = ap.parse_known_args(argv)
    try:
        cfg = build(EvaluateConfig, parse_args(["--config", args.config, *rest]))
        data = collect_gate_data(cfg)
        fits = [(m, *fit_gate(data["x"], data["y"], data["groups"], data["healthy"], m)) for m in args.max_false]
    except HazardError as e:
        print(f"answer_gate: error: {e}", file=sys.stderr)
        return 2
    for m, gate, report in fits:
        out = Path(args.out) / f"f{m:g}"
        gate.save(out / "gate.json")
        report.update({"features": list(FEATURES), "coef": dict(zip(FEATURES, gate.coef)), "config": args.config,
                       "model": cfg.model.label(), "tasks": [t.name for t in cfg.tasks],
                       "base_presses": [s.label for s in cfg.base_presses], "max_new_tokens": cfg.max_new_tokens,
                       "hardware": hardware(), "git_sha": _git_sha()})
        write_json(out / "report.json", report)
        print(f"answer gate: {report['n']} answers ({report['broken']} broken by compression), cross-validated "
              f"AUROC {report['cv_auroc']:.3f}; at threshold {gate.threshold:.3f} it repairs "
              f"{report['cv_broken_repaired']:.2f} of the broken and {report['cv_healthy_repaired']:.2f} of the "
              f"healthy answers -> {out}/gate.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
