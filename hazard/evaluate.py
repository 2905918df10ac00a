"""The evaluate stage: the guard as a live controller during generation, against static presses and rules.

For every task and base press setting it runs the uncompressed model (policy ``full``), the static press,
and each controlled policy on the same prompts, labels every run like the collect stage does (against
the uncompressed twin), and reports accuracy, catastrophes, recovered accuracy and KV memory held.

Frontiers: a list in ``policy_options`` sweeps that knob (several lists: every combination), one run per
value (``knob`` in the row); a list of such mappings runs each in turn (runs that are not one grid, sharing
one uncompressed and one static run); ``static_sweep`` adds static-only press settings (the static frontier);
``hazard.frontiers`` turns the rows into per-task staircases, matched-KV comparisons (``frontier_kv``) and
one PNG per task.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hazard import SCHEMA_VERSION
from hazard.collect import TaskSpec, _git_sha, build_rows, encode, format_of, hardware, kept_positions, questions_of
from hazard.compression import PressSpec, build_press, is_decoding
from hazard.control import POLICY_NAMES, PolicyController, build_policy
from hazard.control.gate import digit_token_ids
from hazard.engine import Engine
from hazard.engine.check import READING_KV
from hazard.errors import HazardError
from hazard.frontiers import frontiers
from hazard.guard import HazardGuard
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.paired import coin_comparisons, outcome_bits, paired_comparisons
from hazard.ponr import GRID, failing, restore_curves, summarize_curves
from hazard.predictor.features import CONFIG_FEATURES, CYCLE_FEATURES
from hazard.report import frontier_plot, pareto_plot
from hazard.signals import PREFILL_SIGNALS, SIGNALS, token_pieces
from hazard.signals.state import is_state_feature
from hazard.tasks import build_task
from hazard.traces import write_json

# What a run keeps of each row: outcomes, and what the next runs need of their twin (onset rules). Runs
# that no other run reads (every controlled run, the static sweep) keep the outcomes only: a resumable
# evaluation of 40 runs x 500 prompts stays a few MB that a later device session can carry.
ROW_KEYS = ("tokens", "correct", "onset", "catastrophe", "loop", "nonterm", "text", "finished", "n_tokens", "acted",
            "kv")
OUTCOME_KEYS = ("correct", "onset", "catastrophe", "loop", "nonterm", "finished", "n_tokens", "acted", "kv")
ACTS = ("restore", "reselect", "force")  # the events a trigger counts: entries brought back, a token replaced
# The point-of-no-return oracle's grid: the probe's, plus 256, as these runs go to 512 tokens and how late
# a restore can wait is what its memory depends on.
PONR_GRID = (*GRID, 256)


def acted(control: dict) -> bool:
    """Whether a row's controller acted on it (``ACTS``): the per-row trigger behind ``trigger_rate``."""
    return any(e[1] in ACTS for e in control.get("events", []))


@dataclass
class EvaluateConfig:
    """Everything ``hazard evaluate`` needs; YAML keys mirror these fields."""

    output: str = "evaluate/results/closed_loop.json"
    model: ModelConfig = field(default_factory=ModelConfig)
    guard: str = ""
    tasks: list[TaskSpec] = field(default_factory=list)
    base_presses: list[PressSpec] = field(default_factory=list)
    # every policy but ``scheduled``, which needs its step (``at``: 0 would rerun the uncompressed model),
    # ``number_recall``, a probe of RESULTS.md 0k's finding, and ``arith_rewind``, a probe of the text's
    # arithmetic (train/README.md); name them to run them
    policies: list[str] = field(default_factory=lambda: [p for p in POLICY_NAMES
                                                         if p not in ("scheduled", "number_recall", "arith_rewind")])
    policy_options: dict = field(default_factory=dict)
    static_sweep: list[PressSpec] = field(default_factory=list)
    frontier_kv: list[float] = field(default_factory=lambda: [0.15, 0.25, 0.35])
    paired_kv_tol: float = 0.02  # two controlled runs this close in mean KV are compared prompt by prompt
    max_new_tokens: int = 384
    batch_size: int = 8
    probe_layers: list[int] = field(default_factory=lambda: [0, -1])
    seed: int = 0
    # how an answer check's reading counts in memory (``hazard.engine.Engine``): one layer's K/V of prompt + answer
    # on the row's last token (what its no-cache forward holds; the default since the thirty-fifth session) or every
    # layer's (the upper bound every run before the thirty-third session used; merge_frontiers.py keeps them apart)
    reading_kv: str = "one_layer"


def _kv_fractions(row: dict) -> tuple[float, float]:
    """Mean and peak over the row's steps of the GPU bytes it held (K/V kept and recalled, plus a recalling
    controller's digest) over the uncompressed run's K/V bytes at the same step."""
    full = (row["prompt_len"] + np.arange(row["n_tokens"])) * row["bytes_per_token"]  # prompt + tokens fed
    frac = np.asarray(row["kv_bytes"], dtype=np.float64) / full
    return float(frac.mean()), float(frac.max())


def summarize_policy(rows: list[dict], gens, full_rows: list[dict], static_rows: list[dict] | None,
                     seconds: float, steps: int) -> dict:
    """Rates over one (task, base press, policy) run; ``gens`` carry the controller's bookkeeping."""
    kv = [_kv_fractions(r) for r in rows]
    ctl = [g.control for g in gens]
    healthy = [i for i, r in enumerate(static_rows or []) if not r["catastrophe"]]
    # rows the press left right: acting on them can only cost (the answer check's false repairs)
    right = [i for i, r in enumerate(static_rows or []) if r["correct"] and not r["catastrophe"]]
    triggered = [acted(c) for c in ctl]
    return {
        "n": len(rows),
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "catastrophe_rate": float(np.mean([r["loop"] or r["nonterm"] for r in rows])),
        "compression_failure_rate": float(np.mean([f["correct"] and not r["correct"]
                                                   for f, r in zip(full_rows, rows)])),
        "mean_kv_fraction": float(np.mean([a for a, _ in kv])),
        "peak_kv_fraction": float(np.mean([b for _, b in kv])),
        "false_trigger_rate": float(np.mean([triggered[i] for i in healthy])) if healthy and ctl[0] else 0.0,
        "false_repair_rate": float(np.mean([triggered[i] for i in right])) if right and ctl[0] else 0.0,
        "trigger_rate": float(np.mean(triggered)) if ctl and ctl[0] else 0.0,
        "relaxed_step_share": (sum(c.get("relaxed_steps", 0) for c in ctl) / max(steps, 1)),
        "rollback_tokens_per_trace": float(np.mean([c.get("rollback_tokens", 0) for c in ctl])),
        "offload_bytes_per_trace": float(np.mean([c.get("offload_bytes", 0) for c in ctl])),
        "controller_ms_per_step": 1000.0 * sum(c.get("controller_s", 0.0) for c in ctl) / max(steps, 1),
        "seconds": round(seconds, 3),
    }


def variants(options: dict | list[dict]) -> list[dict]:
    """The runs of one policy's options, as the knobs that tell them apart. A mapping: every combination of its
    list values ([{}] when none). A list of mappings (option sets, for runs that are not one grid): each swept
    so, their runs in turn, each knob naming the options that are not the same in every run."""
    if isinstance(options, dict):
        swept = {k: v for k, v in options.items() if isinstance(v, list)}
        return [dict(zip(swept, combo)) for combo in itertools.product(*swept.values())]
    runs = _set_runs(options)
    common = _shared(runs)
    return [{k: v for k, v in r.items() if k not in common} for r in runs]


def _set_runs(sets: list[dict]) -> list[dict]:
    """Every run of a list of option sets, with all its options."""
    return [{**_fixed(d), **k} for d in sets for k in variants(d)]


def _shared(runs: list[dict]) -> dict:
    return {k: v for k, v in runs[0].items() if all(k in r and r[k] == v for r in runs)} if runs else {}


def _fixed(options: dict | list[dict]) -> dict:
    """The options every run of a policy shares: a mapping's single values; for option sets, those set alike
    in every run."""
    if isinstance(options, dict):
        return {k: v for k, v in options.items() if not isinstance(v, list)}
    return _shared(_set_runs(options))


def matched_knobs(knobs: list[dict], rates: list[float], key: str = "rate") -> list[dict]:
    """Random's runs when its rate is matched: each swept knob (e.g. seeds) at each hazard run's measured rate
    (settings that fired alike share a run). ``key="share"``: scheduled's runs at each hazard run's share of
    rows that acted (``share: matched``)."""
    return [{**k, key: r} for r in dict.fromkeys(rates) for k in knobs]


def closed_loop_row(task: str, fmt: str, model: str, spec: PressSpec, policy: str, knob: dict, run: dict,
                    full: dict, static: dict) -> dict:
    """One row of ``closed_loop.json``: a saved run's summary with what it ran on, the share of the accuracy
    compression lost that it got back (``full`` and ``static`` are the saved reference runs) and, where the run
    kept its rows, its per-prompt outcomes (``hazard.paired`` compares runs prompt by prompt)."""
    res = run["summary"]
    acc_full, acc_static = full["summary"]["accuracy"], static["summary"]["accuracy"]
    recovered = (res["accuracy"] - acc_static) / (acc_full - acc_static) if acc_full != acc_static else None
    return {"task": task, "format": fmt, "model": model, "base_press": spec.name, "base_ratio": spec.ratio,
            "policy": policy, "knob": knob, **res, "recovered_fraction": recovered,
            "overhead": res["controller_ms_per_step"], "static_ms_per_token": static["ms_per_token"],
            **({"outcomes": outcome_bits(run["rows"])} if run.get("rows") else {})}


def _knob_label(knob: dict) -> str:
    return "__".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in knob.items())


def knob_from_label(label: str) -> dict:
    """``_knob_label`` read back (a saved run's file name into its knob): numbers as int or float."""
    def value(text: str):
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return text
    return {k: value(v) for k, _, v in (p.partition("=") for p in label.split("__")) if k} if label else {}


def _policy(name: str, cfg: EvaluateConfig, guard: HazardGuard | None, hazard_rate: float | None,
            knob: dict | None = None, spec: PressSpec | None = None):
    opts = {**_fixed(cfg.policy_options.get(name, {})), **(knob or {})}
    if name == "hazard":  # the guard's threshold for this press setting (its pooled one if it has none)
        opts.setdefault("trigger", (guard.threshold_for(spec.name, spec.ratio) if spec is not None else guard.threshold)
                        if guard is not None else 0.5)  # None: only checking knobs
    if name == "entropy_rule":
        rule = (guard.config.get("baselines", {}) if guard else {}).get("entropy_rule", {})
        opts.setdefault("trigger", rule.get("threshold", 2.5))
        opts.setdefault("sustain", rule.get("n", 4))
    if name == "random":
        opts.setdefault("rate", hazard_rate if hazard_rate is not None else 0.01)
        opts.setdefault("seed", cfg.seed)
    if opts.get("share") == "matched":  # only checking knobs: the run loop puts the hazard run's share here
        opts["share"] = 1.0
    return build_policy(name, **opts)


def _ponr(path: Path, engine: Engine, tok, prompts, ids, spec: PressSpec, meta: dict, refs: list[dict],
          static: list[dict]) -> tuple[dict[int, int], dict]:
    """Each failing row's point of no return under ``spec`` (``hazard.ponr`` on ``PONR_GRID``; -1 for the
    rest) and a summary; kept in ``path`` so a resumed evaluation measures it once."""
    if path.exists():
        rec = json.loads(path.read_text())
    else:
        t0 = time.perf_counter()
        rows = failing(static, refs)
        curves = restore_curves(engine, tok, prompts, ids, spec, meta, refs, static, rows, PONR_GRID)
        summary = {"grid": list(PONR_GRID), **summarize_curves(curves), "seconds": round(time.perf_counter() - t0, 3)}
        rec = {"summary": summary, "ponr": {str(i): c["point_of_no_return"] for i, c in zip(rows, curves)}}
        write_json(path, rec)
        print(f"evaluate: point of no return under {spec.label}: {summary['saved_by_some_restore']} of "
              f"{summary['failing']} failing rows saved by some restore ({summary['seconds']:.0f} s)", flush=True)
    return {int(i): p for i, p in rec["ponr"].items()}, rec["summary"]


def check_config(cfg: EvaluateConfig) -> None:
    """Every check that needs no model: policies, their knobs, presses. A typo fails here, on the CPU, before
    a device machine loads the model (``tests/test_configs.py`` runs it on every committed config)."""
    unknown = set(cfg.policies) - set(POLICY_NAMES)
    if unknown:
        raise HazardError(f"unknown policy {sorted(unknown)[0]!r}; known: {', '.join(POLICY_NAMES)}")
    if cfg.paired_kv_tol < 0:
        raise HazardError(f"evaluate: paired_kv_tol must be >= 0 (a mean-KV gap), got {cfg.paired_kv_tol}")
    if cfg.reading_kv not in READING_KV:
        raise HazardError(f"evaluate: reading_kv must be one of {', '.join(READING_KV)}, got {cfg.reading_kv!r}")
    if not cfg.tasks or not cfg.base_presses:
        raise HazardError("evaluate: configure at least one task and one base press")
    for spec in [*cfg.base_presses, *cfg.static_sweep]:
        press = build_press(spec)
        if spec.ratio <= 0 or press is None or is_decoding(press):
            raise HazardError(f"evaluate: base press {spec.label} must be a prefill press with ratio > 0")
    for name, opts in cfg.policy_options.items():
        sets = opts if isinstance(opts, list) else [opts]
        if name not in POLICY_NAMES or name == "full" or not sets or not all(isinstance(o, dict) for o in sets):
            raise HazardError(f"evaluate: policy_options.{name} must be a mapping of knob: value (or [values]), "
                              f"or a list of such mappings, for one of "
                              f"{', '.join(p for p in POLICY_NAMES if p != 'full')}")
        knobs = variants(opts)
        labels = [_knob_label(k) for k in knobs]
        if len(set(labels)) < len(labels):
            raise HazardError(f"evaluate: policy_options.{name}: two option sets give the same run "
                              f"({max(labels, key=labels.count) or 'no knob'}); make each run differ")
        for knob in knobs:  # a bad knob fails here, before any model is loaded
            _policy(name, cfg, None, None, knob)
        if _fixed(opts).get("share") == "matched" and (
                "hazard" not in cfg.policies or name not in cfg.policies
                or cfg.policies.index("hazard") > cfg.policies.index(name)):
            raise HazardError(f"evaluate: policy_options.{name}.share 'matched' takes the hazard run's share of rows "
                              "that acted: list hazard before it in policies")


def check_guard_features(guard: HazardGuard, where: str) -> None:
    """Fail with one line unless every feature ``guard`` reads is one the closed loop produces: the engine's
    signals, the prefill press's keeps of the question, the config features, the model's state, or the cycle
    spans (the controller's ``CycleSpans``, on the tokens)."""
    missing = [n for n in guard.feature_names if n not in (*SIGNALS, *PREFILL_SIGNALS, *CONFIG_FEATURES,
                                                           *CYCLE_FEATURES) and not is_state_feature(n)]
    if missing:
        raise HazardError(f"guard {where}: features {missing} are not produced by this engine "
                          f"(it gives {list(SIGNALS)}, {list(PREFILL_SIGNALS)}, {list(CONFIG_FEATURES)}, "
                          f"the model's state and the cycle spans {list(CYCLE_FEATURES)})")


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """Closed-loop evaluation; writes ``cfg.output`` (JSON) and a Pareto PNG beside it."""
    check_config(cfg)
    needs_guard = "hazard" in cfg.policies
    guard = HazardGuard.from_pretrained(cfg.guard) if needs_guard or cfg.guard else None
    tasks = [build_task(t.name, **opts) for t in cfg.tasks for opts in t.expand()]
    model, tok = load_model(cfg.model)
    if guard is not None:
        check_guard_features(guard, cfg.guard)
    # a guard reading the model's state: the engine reads it at the guard's layer and width
    engine = Engine(model, end_token_ids(tok, model), cfg.max_new_tokens, cfg.batch_size, tuple(cfg.probe_layers),
                    reading_kv=cfg.reading_kv, **(guard.engine_options() if guard is not None else {}))
    label = cfg.model.label()
    out = Path(cfg.output)
    # Each (task, base press, policy) run is saved when it finishes, so a killed evaluation resumes at
    # the next run; the folder goes once the final JSON is written.
    parts = out.with_name(out.stem + ".parts")
    config = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    if (parts / "config.json").is_file() and json.loads((parts / "config.json").read_text()) != config:
        raise HazardError(f"{parts} holds runs of a different evaluate config; delete it to start over")
    write_json(parts / "config.json", config)
    out_rows, ponr_summaries = [], {}
    digit_ids = None  # number_recall's: token ids whose text holds a digit
    if "number_recall" in cfg.policies:
        vocab = list(range(len(tok)))
        digit_ids = digit_token_ids(vocab, tok.convert_ids_to_tokens(vocab))
    pieces: dict[int, str] = {}  # arith_rewind's: token id -> its text, decoded once

    def token_text(t: int) -> str:
        return token_pieces(tok, [t], pieces)[0]

    for task in tasks:
        prompts = task.prompts()
        ids = [encode(tok, p) for p in prompts]
        # the question's positions, once per task: every run's rows, and a guard reading the prefill keeps
        questions = questions_of(tok, prompts)
        meta = {"schema_version": SCHEMA_VERSION, "model": label, "seed": cfg.seed,
                "max_new_tokens": cfg.max_new_tokens, "task": task.name}
        unit = task.name if format_of(task) == "default" else f"{task.name}.{format_of(task)}"

        def run(key: str, spec: PressSpec, policy=None, refs=None, static=None, prompts=prompts, ids=ids,
                meta=meta, unit=unit, questions=questions, twin: bool = False) -> dict:
            """One generation run, summarised; read back from ``parts`` when an earlier call finished it."""
            path = parts / f"{unit}__{key}.json"
            if path.exists():
                return json.loads(path.read_text())
            t0 = time.perf_counter()
            press = build_press(spec)
            gens = engine.generate(ids, press, controller=policy, protect=kept_positions(press, questions, ids))
            secs = time.perf_counter() - t0
            rows = build_rows(tok, prompts, gens, refs, spec, meta, questions)
            for r, g in zip(rows, gens):  # per prompt, so a trigger's choice of rows can be judged (hazard.paired)
                r["acted"] = acted(g.control)
                r["kv"] = round(_kv_fractions(r)[0], 5)  # and what each row cost (hazard.gate_need)
            steps = sum(len(g.tokens) + g.control.get("rollback_tokens", 0) for g in gens)
            res = summarize_policy(rows, gens, refs or rows, static, secs, steps)
            if any(g.control.get("check_tokens") for g in gens):  # its KV holds answer readings: counted how
                res["reading_kv"] = cfg.reading_kv
            restores = sum(sum(e[1] in ("restore", "reselect") for e in g.control.get("events", [])) for g in gens)
            rec = {"summary": res, "restore_rate": restores / max(steps, 1),
                   "ms_per_token": 1000 * secs / max(sum(len(g.tokens) for g in gens), 1),
                   "rows": [{k: r[k] for k in (ROW_KEYS if twin else OUTCOME_KEYS)} for r in rows]}
            write_json(path, rec)
            # one line per run: the demo and the device logs show progress without a terminal
            print(f"evaluate: {unit} {key.replace('__', ' ')}: accuracy {res['accuracy']:.2f}, catastrophes "
                  f"{res['catastrophe_rate']:.2f}, mean KV {res['mean_kv_fraction']:.2f} ({secs:.0f} s)", flush=True)
            return rec

        full = run("full", PressSpec("none"), twin=True)
        controlled = {s.label for s in cfg.base_presses}
        settings = [*cfg.base_presses, *(s for s in cfg.static_sweep if s.label not in controlled)]
        for spec in settings:
            static = run(f"{spec.label}__static", spec, refs=full["rows"], twin=spec.label in controlled)
            onsets = {i: r["onset"] for i, r in enumerate(static["rows"])}
            ponrs = None  # the point of no return per row, measured once, if an oracle asks for it
            results = []
            hazard_rates: list[float] = []
            hazard_shares: list[float] = []  # each hazard run's share of rows that acted (``share: matched``)
            names = cfg.policies if spec.label in controlled else ["static"]
            for name in names:
                if name in ("full", "static"):
                    results.append((name, {}, full if name == "full" else static))
                    continue
                opts = cfg.policy_options.get(name, {})
                knobs = variants(opts)
                rate_set = "rate" in _fixed(opts) or any("rate" in k for k in knobs)
                if name == "random" and not rate_set and hazard_rates:
                    knobs = matched_knobs(knobs, hazard_rates)
                if _fixed(opts).get("share") == "matched":
                    knobs = matched_knobs(knobs, [x for x in hazard_shares if x > 0], key="share")  # 0: static
                for knob in knobs:
                    rate = hazard_rates[0] if hazard_rates else None
                    policy = _policy(name, cfg, guard, rate, knob, spec)
                    known = onsets
                    if getattr(policy, "at", "onset") == "ponr":
                        if ponrs is None:
                            ponrs, ponr_summaries[f"{unit}/{spec.label}"] = _ponr(
                                parts / f"{unit}__{spec.label}__ponr.json", engine, tok, prompts, ids, spec, meta,
                                full["rows"], static["rows"])
                        known = ponrs
                    ctl = PolicyController(policy, guard if name == "hazard" else None, spec.ratio,
                                           cfg.max_new_tokens, known, questions=questions,
                                           digit_ids=digit_ids if name == "number_recall" else None,
                                           token_text=token_text if name == "arith_rewind" else None)
                    key = f"{spec.label}__{name}" + (f"__{_knob_label(knob)}" if knob else "")
                    rec = run(key, spec, ctl, full["rows"], static["rows"])
                    if name == "hazard":  # random fires at the hazard policy's measured rate per step
                        hazard_rates.append(rec["restore_rate"])
                        hazard_shares.append(rec["summary"]["trigger_rate"])
                    results.append((name, knob, rec))
            out_rows += [closed_loop_row(task.name, format_of(task), label, spec, name, knob, rec, full, static)
                         for name, knob, rec in results]
    fr = frontiers(out_rows, cfg.frontier_kv)
    result = {"model": label, "guard": cfg.guard, "hardware": hardware(), "max_new_tokens": cfg.max_new_tokens,
              "seed": cfg.seed, "git_sha": _git_sha(), "policy_options": cfg.policy_options, "rows": out_rows,
              "frontiers": fr, "paired": paired_comparisons(out_rows, cfg.paired_kv_tol),
              "coins": coin_comparisons(out_rows, cfg.paired_kv_tol),
              **({"point_of_no_return": ponr_summaries} if ponr_summaries else {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    pareto_plot(out_rows, out.with_suffix(".png"))
    for key, f in fr.items():
        frontier_plot(key, f, out.with_name(f"{out.stem}_{key}.png"))
    shutil.rmtree(parts, ignore_errors=True)
    return result
