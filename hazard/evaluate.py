"""The evaluate stage: the guard as a live controller during generation, against static presses and rules.

For every task and base press setting it runs the uncompressed model (policy ``full``), the static press,
and each controlled policy on the same prompts, labels every run like the collect stage does (against
the uncompressed twin), and reports accuracy, catastrophes, recovered accuracy and KV memory held.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hazard import SCHEMA_VERSION
from hazard.collect import TaskSpec, build_rows, encode, format_of, hardware
from hazard.compression import PressSpec, build_press, is_decoding
from hazard.control import POLICY_NAMES, PolicyController, build_policy
from hazard.engine import Engine
from hazard.errors import HazardError
from hazard.guard import HazardGuard
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.predictor.features import CONFIG_FEATURES
from hazard.report import pareto_plot
from hazard.signals import SIGNALS
from hazard.tasks import build_task
from hazard.traces import write_json

# What a run keeps of each row: outcomes, and what the next runs need of their twin (onset rules).
ROW_KEYS = ("tokens", "correct", "onset", "catastrophe", "text", "finished", "n_tokens")


@dataclass
class EvaluateConfig:
    """Everything ``hazard evaluate`` needs; YAML keys mirror these fields."""

    output: str = "evaluate/results/closed_loop.json"
    model: ModelConfig = field(default_factory=ModelConfig)
    guard: str = ""
    tasks: list[TaskSpec] = field(default_factory=list)
    base_presses: list[PressSpec] = field(default_factory=list)
    policies: list[str] = field(default_factory=lambda: list(POLICY_NAMES))
    policy_options: dict = field(default_factory=dict)
    max_new_tokens: int = 384
    batch_size: int = 8
    probe_layers: list[int] = field(default_factory=lambda: [0, -1])
    seed: int = 0


def _kv_fractions(row: dict) -> tuple[float, float]:
    full = row["prompt_len"] + np.arange(row["n_tokens"])  # uncompressed: prompt + tokens fed so far
    frac = np.asarray(row["kv_tokens"]) / full
    return float(frac.mean()), float(frac.max())


def summarize_policy(rows: list[dict], gens, full_rows: list[dict], static_rows: list[dict] | None,
                     seconds: float, steps: int) -> dict:
    """Rates over one (task, base press, policy) run; ``gens`` carry the controller's bookkeeping."""
    kv = [_kv_fractions(r) for r in rows]
    ctl = [g.control for g in gens]
    healthy = [i for i, r in enumerate(static_rows or []) if not r["catastrophe"]]
    triggered = [any(e[1] == "restore" for e in c.get("events", [])) for c in ctl]
    return {
        "n": len(rows),
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "catastrophe_rate": float(np.mean([r["loop"] or r["nonterm"] for r in rows])),
        "compression_failure_rate": float(np.mean([f["correct"] and not r["correct"]
                                                   for f, r in zip(full_rows, rows)])),
        "mean_kv_fraction": float(np.mean([a for a, _ in kv])),
        "peak_kv_fraction": float(np.mean([b for _, b in kv])),
        "false_trigger_rate": float(np.mean([triggered[i] for i in healthy])) if healthy and ctl[0] else 0.0,
        "trigger_rate": float(np.mean(triggered)) if ctl and ctl[0] else 0.0,
        "relaxed_step_share": (sum(c.get("relaxed_steps", 0) for c in ctl) / max(steps, 1)),
        "rollback_tokens_per_trace": float(np.mean([c.get("rollback_tokens", 0) for c in ctl])),
        "offload_bytes_per_trace": float(np.mean([c.get("offload_bytes", 0) for c in ctl])),
        "controller_ms_per_step": 1000.0 * sum(c.get("controller_s", 0.0) for c in ctl) / max(steps, 1),
        "seconds": round(seconds, 3),
    }


def _policy(name: str, cfg: EvaluateConfig, guard: HazardGuard | None, hazard_rate: float | None):
    opts = dict(cfg.policy_options.get(name, {}))
    if name == "hazard":
        opts.setdefault("trigger", guard.threshold)
    if name == "entropy_rule":
        rule = (guard.config.get("baselines", {}) if guard else {}).get("entropy_rule", {})
        opts.setdefault("trigger", rule.get("threshold", 2.5))
        opts.setdefault("sustain", rule.get("n", 4))
    if name == "random":
        opts.setdefault("rate", hazard_rate if hazard_rate is not None else 0.01)
        opts.setdefault("seed", cfg.seed)
    return build_policy(name, **opts)


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """Closed-loop evaluation; writes ``cfg.output`` (JSON) and a Pareto PNG beside it."""
    unknown = set(cfg.policies) - set(POLICY_NAMES)
    if unknown:
        raise HazardError(f"unknown policy {sorted(unknown)[0]!r}; known: {', '.join(POLICY_NAMES)}")
    if not cfg.tasks or not cfg.base_presses:
        raise HazardError("evaluate: configure at least one task and one base press")
    for spec in cfg.base_presses:
        press = build_press(spec)
        if spec.ratio <= 0 or press is None or is_decoding(press):
            raise HazardError(f"evaluate: base press {spec.label} must be a prefill press with ratio > 0")
    needs_guard = "hazard" in cfg.policies
    guard = HazardGuard.from_pretrained(cfg.guard) if needs_guard or cfg.guard else None
    tasks = [build_task(t.name, **opts) for t in cfg.tasks for opts in t.expand()]
    model, tok = load_model(cfg.model)
    if guard is not None:  # every feature the guard wants must be one the engine can produce
        missing = [n for n in guard.feature_names if n not in (*SIGNALS, *CONFIG_FEATURES)]
        if missing:
            raise HazardError(f"guard {cfg.guard}: features {missing} are not produced by this engine "
                              f"(it gives {list(SIGNALS)} and {list(CONFIG_FEATURES)})")
    engine = Engine(model, end_token_ids(tok, model), cfg.max_new_tokens, cfg.batch_size, tuple(cfg.probe_layers))
    label = cfg.model.label()
    out = Path(cfg.output)
    # Each (task, base press, policy) run is saved when it finishes, so a killed evaluation resumes at
    # the next run; the folder goes once the final JSON is written.
    parts = out.with_name(out.stem + ".parts")
    config = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    if (parts / "config.json").is_file() and json.loads((parts / "config.json").read_text()) != config:
        raise HazardError(f"{parts} holds runs of a different evaluate config; delete it to start over")
    write_json(parts / "config.json", config)
    out_rows = []
    for task in tasks:
        prompts = task.prompts()
        ids = [encode(tok, p) for p in prompts]
        meta = {"schema_version": SCHEMA_VERSION, "model": label, "seed": cfg.seed,
                "max_new_tokens": cfg.max_new_tokens, "task": task.name}

        def run(key: str, spec: PressSpec, policy=None, refs=None, static=None, prompts=prompts, ids=ids,
                meta=meta, task=task) -> dict:
            """One generation run, summarised; read back from ``parts`` when an earlier call finished it."""
            unit = task.name if format_of(task) == "default" else f"{task.name}.{format_of(task)}"
            path = parts / f"{unit}__{key}.json"
            if path.exists():
                return json.loads(path.read_text())
            t0 = time.perf_counter()
            gens = engine.generate(ids, build_press(spec), controller=policy)
            secs = time.perf_counter() - t0
            rows = build_rows(tok, prompts, gens, refs, spec, meta)
            steps = sum(len(g.tokens) + g.control.get("rollback_tokens", 0) for g in gens)
            res = summarize_policy(rows, gens, refs or rows, static, secs, steps)
            restores = sum(sum(e[1] == "restore" for e in g.control.get("events", [])) for g in gens)
            rec = {"summary": res, "restore_rate": restores / max(steps, 1),
                   "ms_per_token": 1000 * secs / max(sum(len(g.tokens) for g in gens), 1),
                   "rows": [{k: r[k] for k in ROW_KEYS} for r in rows]}
            write_json(path, rec)
            return rec

        full = run("full", PressSpec("none"))
        for spec in cfg.base_presses:
            static = run(f"{spec.label}__static", spec, refs=full["rows"])
            onsets = {i: r["onset"] for i, r in enumerate(static["rows"])}
            results = {}
            hazard_rate = None
            for name in cfg.policies:
                if name == "full":
                    rec = full
                elif name == "static":
                    rec = static
                else:
                    ctl = PolicyController(_policy(name, cfg, guard, hazard_rate), guard if name == "hazard" else None,
                                           spec.ratio, cfg.max_new_tokens, onsets)
                    rec = run(f"{spec.label}__{name}", spec, ctl, full["rows"], static["rows"])
                if name == "hazard":  # random fires at the hazard policy's measured rate per step
                    hazard_rate = rec["restore_rate"]
                results[name] = rec["summary"]
            acc_full, acc_static = full["summary"]["accuracy"], static["summary"]["accuracy"]
            for name, res in results.items():
                recovered = None
                if acc_full != acc_static:
                    recovered = (res["accuracy"] - acc_static) / (acc_full - acc_static)
                out_rows.append({
                    "task": task.name, "format": format_of(task), "model": label, "base_press": spec.name,
                    "base_ratio": spec.ratio, "policy": name, **res, "recovered_fraction": recovered,
                    "overhead": res["controller_ms_per_step"],
                    "static_ms_per_token": static["ms_per_token"],
                })
    result = {"model": label, "guard": cfg.guard, "hardware": hardware(), "max_new_tokens": cfg.max_new_tokens,
              "seed": cfg.seed, "policy_options": cfg.policy_options, "rows": out_rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    pareto_plot(out_rows, out.with_suffix(".png"))
    shutil.rmtree(parts, ignore_errors=True)
    return result
