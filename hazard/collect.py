"""The collect stage: run the model on tasks under press settings, label, and write trace shards.

Work is cut into units of (task, chunk of ``shard_size`` prompts). A unit runs the uncompressed
reference first (every compressed run is compared with its uncompressed twin), then every press
setting, and writes one shard. Under torchrun, rank r takes units r, r + world, ...
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from hazard import SCHEMA_VERSION, __version__, dist
from hazard.compression import PressSpec, build_press, is_decoding, tracker_of
from hazard.engine import Engine, Generation
from hazard.errors import HazardError
from hazard.labels import HORIZONS, detect_amnesia, detect_loop, divergence, hazard_labels, progress_onsets, verdict
from hazard.labels.progress import last_number
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.signals import SIGNALS, arith_wrong, prefill_signals, question_positions, token_pieces
from hazard.signals.state import STATE_DIM
from hazard.summary import summarize, summarize_formats, summarize_onsets
from hazard.tasks import Prompt, build_task, parse_answer, score
from hazard.tasks.base import normalise_number
from hazard.traces import load_traces, write_json, write_shard


@dataclass
class TaskSpec:
    """A task by registry name with its options (see hazard/tasks).

    ``grid`` maps option names to lists of values: the spec stands for one task per combination (e.g.
    ``{k_shot: [0, 3, 8], seed: [0, 1]}`` is six prompt formats of the same problems); a list of such
    maps is the union of their combinations (e.g. 0-shot prompts need no exemplar seeds). Their prompts are
    collected together, a problem's formats next to each other, so a shard (and a batch) mixes formats and
    a partial collection has every format.
    """

    name: str
    options: dict = field(default_factory=dict)
    grid: dict | list = field(default_factory=dict)

    def expand(self) -> list[dict]:
        """The option dicts this spec stands for, in grid order."""
        out = []
        for grid in self.grid if isinstance(self.grid, list) else [self.grid]:
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise HazardError(f"task {self.name}: grid.{key} must be a non-empty list")
            out += [{**self.options, **dict(zip(grid, c))} for c in itertools.product(*grid.values())]
        return out


def format_of(task) -> str:
    """A task's prompt-format label (``default`` for tasks with a single format)."""
    return getattr(task, "format", "default")


def grid_prompts(tasks: list) -> list[Prompt]:
    """The prompts of one task spec's formats, problem by problem (each problem's formats in grid order)."""
    by_id: dict[str, list[Prompt]] = {}
    for task in tasks:
        for p in task.prompts():
            by_id.setdefault(p.id, []).append(p)
    return [p for group in by_id.values() for p in group]


@dataclass
class CollectConfig:
    """Everything ``hazard collect`` needs; YAML keys mirror these fields."""

    output_dir: str = "traces/demo"
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: list[TaskSpec] = field(default_factory=list)
    presses: list[PressSpec] = field(default_factory=lambda: [PressSpec("none")])
    max_new_tokens: int = 384
    batch_size: int = 8
    shard_size: int = 32
    probe_layers: list[int] = field(default_factory=lambda: [0, -1])
    seed: int = 0
    summary_out: str | None = None
    time_budget_s: float | None = None  # start no group that would end after this long (one shard at least);
    # run the same command again to go on
    mix_settings: int = 1  # prefill settings decoded together in one batch (0: all of a chunk's)
    verify_window: int = 0  # shadow each row's first k steps uncompressed: the verify_kl / verify_top1 signals
    state_layer: int | None = None  # record the projected residual stream after this layer (the state column)
    state_dim: int = STATE_DIM  # its width per token (hazard.signals.state; the hidden size: a full-rank projection)


def prompt_text(tok, prompt: Prompt) -> str:
    return tok.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)


def encode(tok, prompt: Prompt) -> list[int]:
    return tok(prompt_text(tok, prompt), add_special_tokens=False)["input_ids"]


CUT_TOKENS = 8  # a run cut by the budget within this many tokens of its answer statement answered


def decode_prefix(tok, tokens: list[int], m: int) -> str:
    """The text of the first ``m`` of ``tokens``, decoded as the whole generation is."""
    return tok.decode(tokens[:m], skip_special_tokens=True)


def outcome(prompt: Prompt, tokens: list[int], finished: bool, text: str, ref: dict | None,
            decode_prefix=None, pieces: list[str] | None = None) -> dict:
    """A run's outcome, detectors, onsets and hazard labels: every trace column that follows from the
    generated tokens and text (and the twin's): none of the model's per-token signals, but the text's own
    (``arith_wrong``). ``hazard.relabel`` calls it again on stored traces when these rules change.

    ``ref`` is the uncompressed twin's row (None when this row is the uncompressed run);
    ``decode_prefix(m)`` the text of the first m generated tokens (default: none, so the rules that place
    onsets in the text give -1); ``pieces`` each token's own text (``hazard.signals.token_pieces``), which the
    text signals read (``arith_wrong``; NaN without them).
    """
    answer = parse_answer(text)
    correct = score(answer, prompt.gold)
    loop = detect_loop(tokens, finished)
    question = prompt.messages[-1]["content"]
    n = len(tokens)
    prog = progress_onsets(tokens, finished, text, decode_prefix, question,
                           ref.get("text") if ref is not None else None)
    # Not catastrophes (the hand check, collect/results/onset_check.md): a run that wrote the gold number
    # last but dropped the "The answer is N" format, and one the budget cut right after its answer.
    format_only = finished and answer is None and last_number(text) == normalise_number(prompt.gold)
    cut_after_answer = not finished and prog["answered_at"] >= max(n - CUT_TOKENS, 0)
    v = verdict(loop.onset if loop else -1, not finished and not cut_after_answer, correct or format_only,
                ref["correct"] if ref is not None else None, stall=prog["stall_onset"],
                answered=prog["answered_at"], claim=prog["claim_onset"], off_task=prog["off_task_at"],
                off_topic=prog["off_topic_at"])
    labels, post = hazard_labels(n, v.onset)
    return {
        "answer": answer, "correct": correct, "ref_correct": ref["correct"] if ref is not None else correct,
        "loop": loop is not None, "loop_onset": loop.onset if loop else -1,
        "loop_period": loop.period if loop else 0, "nonterm": not finished,
        "amnesia": detect_amnesia(text, answer, prompt.gold, prompt.distractors, prompt.exemplar_texts, question),
        "divergence": divergence(tokens, ref["tokens"]) if ref is not None else -1,
        **prog, "format_only": format_only, "cut_after_answer": cut_after_answer,
        "catastrophe": v.catastrophe, "onset": v.onset, "onset_source": v.source, "post_onset": post,
        **{f"label_h{k}": labels[k] for k in HORIZONS},
        "arith_wrong": arith_wrong(pieces) if pieces is not None else np.full(n, np.nan, np.float32),
    }


def build_row(prompt: Prompt, gen: Generation, ref: dict | None, spec: PressSpec, text: str,
              meta: dict, decode_prefix=None, question: tuple[list[int], list[int]] | None = None,
              pieces: list[str] | None = None) -> dict:
    """One trace row: the run's ``outcome`` (detectors, onsets, labels), its per-token arrays, and what the
    prefill press kept of the question (``question``: its token positions and its digit tokens' in the
    prompt, ``hazard.signals.question_positions``; without them the prefill signals are NaN)."""
    fmt = prompt.format
    unit = meta["task"] if fmt == "default" else f"{meta['task']}.{fmt}"
    row = {
        **meta, "format": fmt,
        "trace_id": f"{meta['model']}/{unit}/{prompt.id}/{spec.label}/s{meta['seed']}",
        "prompt_id": prompt.id, "press": spec.name, "ratio": float(spec.ratio),
        "prompt_len": gen.prompt_len, "kv_tokens_prefill": gen.kv_tokens_prefill,
        **prefill_signals(gen.prompt_kept if question is not None else None, *(question or ([], []))),
        "bytes_per_token": gen.bytes_per_token, "n_tokens": len(gen.tokens), "tokens": gen.tokens,
        "text": text, "finished": gen.finished, "gold": prompt.gold,
        **outcome(prompt, gen.tokens, gen.finished, text, ref, decode_prefix, pieces),
        "kv_tokens": gen.kv_tokens, "kv_bytes": gen.kv_bytes,
    }
    for i, name in enumerate(SIGNALS):
        row[name] = gen.signals[:, i]
    row["state"] = gen.state if gen.state is not None else []
    return row


def questions_of(tok, prompts: list[Prompt]) -> list[tuple[list[int], list[int]]]:
    """Each prompt's question positions (``hazard.signals.question_positions``), for ``build_rows``."""
    return [question_positions(tok, prompt_text(tok, p), p.messages[-1]["content"]) for p in prompts]


def kept_positions(presses, questions: list[tuple[list[int], list[int]]], ids: list[list[int]]) -> list[list[int]]:
    """Per prompt, the positions its press keeps first (``Engine.generate(..., protect=)``): for a ``question_*``
    press the question and the rest of the prompt after it, for a ``numbers_*`` press the question's digit tokens
    (``questions_of``), for any other press none. ``presses``: one press for all prompts, or one per prompt."""
    presses = presses if isinstance(presses, list) else [presses] * len(ids)
    out = []
    for press, (q, digits), p in zip(presses, questions, ids):
        keep = getattr(tracker_of(press), "keep", "")
        out.append(list(range(q[0], len(p))) if keep == "question" else list(digits) if keep == "numbers" else [])
    return out


def build_rows(tok, prompts: list[Prompt], gens: list[Generation], refs: list[dict] | None, spec: PressSpec,
               meta: dict, questions: list | None = None) -> list[dict]:
    """``build_row`` for one generate call: each row's text decoded once, onsets placed in it. ``questions``:
    ``questions_of(tok, prompts)`` when the caller builds rows of the same prompts under several settings."""
    questions = questions_of(tok, prompts) if questions is None else questions
    cache: dict[int, str] = {}  # token id -> its text, shared by the rows
    return [build_row(p, g, r, spec, tok.decode(g.tokens, skip_special_tokens=True), meta,
                      partial(decode_prefix, tok, g.tokens), q, token_pieces(tok, g.tokens, cache))
            for p, g, r, q in zip(prompts, gens, refs or [None] * len(prompts), questions)]


def shard_name(task: str, chunk: int, spec: PressSpec) -> str:
    """``<task>-<chunk>-<press>[-r<ratio>].parquet``: one shard per task chunk and press setting."""
    setting = spec.name if spec.name == "none" else f"{spec.name}-r{spec.ratio:g}"
    return f"{task}-{chunk:05d}-{setting}.parquet"


@dataclass
class TimeBudget:
    """When a time-budgeted call stops: no generate group starts after ``deadline`` (``time.perf_counter()``),
    nor one that would end after it if it lasts as long as the longest group so far in this call (a group of
    six mixed settings on a shared GPU runs for minutes: checking the start alone overran a device call's
    limit by one group and lost it)."""

    deadline: float
    longest_s: float = 0.0

    def allows(self, now: float | None = None) -> bool:
        return (time.perf_counter() if now is None else now) + self.longest_s <= self.deadline

    def ran(self, seconds: float) -> None:
        self.longest_s = max(self.longest_s, seconds)


def run_unit(engine: Engine, tok, prompts: list[Prompt], specs: list[PressSpec], meta: dict,
             shard_path, budget: TimeBudget | None = None, progress: int = 0,
             mix_settings: int = 1) -> tuple[int, int, bool]:
    """The uncompressed reference and every press setting for one chunk of prompts; one shard per setting.

    Settings whose shard exists are skipped; the reference rows are read back from their shard when a
    resumed run needs them. Up to ``mix_settings`` prefill settings share one ``generate`` (their rows in
    one batch, prompt by prompt, so each prompt's prefill forward serves all of them; decode-time presses
    always run alone; 0 = all). No group starts that ``budget`` does not allow, unless no shard has been
    written yet (``progress``: shards this call wrote before), so every call makes progress. Returns
    (shards written, shards skipped, stopped by the budget).
    """
    ids = [encode(tok, p) for p in prompts]
    questions = questions_of(tok, prompts)  # once per prompt, not per setting
    refs: list[dict] | None = None
    written = skipped = 0
    todo = []
    for spec in specs:
        if not shard_path(spec).exists():
            todo.append(spec)
            continue
        skipped += 1
        if spec.name == "none":
            cols = ["prompt_id", "format", "tokens", "correct", "text", "finished", "n_tokens"]
            table = pq.read_table(shard_path(spec), columns=cols).to_pylist()
            by_id = {(r["prompt_id"], r["format"]): r for r in table}
            refs = [by_id[p.id, p.format] for p in prompts]
    built = {s.label: build_press(s) for s in todo}
    mixable = [s for s in todo if not is_decoding(built[s.label])]  # the reference (if due) comes first
    size = len(mixable) if mix_settings <= 0 else mix_settings
    groups = [mixable[i:i + size] for i in range(0, len(mixable), size)] + [[s] for s in todo if s not in mixable]
    for group in groups:
        if budget is not None and not budget.allows() and progress + written:
            return written, skipped, True
        presses = [built[spec.label] for spec in group]
        tokens0, seconds0 = engine.generated_tokens, engine.seconds
        # Prompt-major: a prompt's settings are admitted together, so its prefill forward serves them all.
        m = len(group)
        rows_ids = [q for q in ids for _ in group]
        rows_press = presses * len(ids)
        gens = engine.generate(rows_ids, rows_press if m > 1 else presses[0], protect=kept_positions(
            rows_press, [q for q in questions for _ in group], rows_ids))
        seconds = engine.seconds - seconds0
        if budget is not None:
            budget.ran(seconds)
        total = max(engine.generated_tokens - tokens0, 1)
        for k, spec in enumerate(group):
            part = gens[k::m]
            rows = build_rows(tok, prompts, part, None if spec.name == "none" else refs, spec, meta, questions)
            if spec.name == "none":
                refs = rows
            path = shard_path(spec)
            write_shard(rows, path)
            # Per-shard timing survives a resume, so throughput over the whole collection can be reported
            # even when it took several calls (the shard is written first: a timing never lacks its shard).
            # Settings that shared a generate share its time in proportion to their tokens.
            tokens = sum(len(g.tokens) for g in part)
            write_json(path.parent.parent / "stats" / "shards" / f"{path.stem}.json",
                       {"generated_tokens": tokens, "seconds": seconds * tokens / total, "hardware": hardware(),
                        "settings_in_batch": len(group)})
            written += 1
            # one line per shard: progress without a terminal (the bars above need one)
            print(f"collect: {path.stem}: {len(rows)} traces, accuracy {np.mean([r['correct'] for r in rows]):.2f}, "
                  f"catastrophes {np.mean([r['catastrophe'] for r in rows]):.2f} ({seconds:.0f} s)", flush=True)
    return written, skipped, False


def _git_sha() -> str:
    if os.environ.get("HAZARD_GIT_SHA"):  # the GPU machine gets a working tree without .git
        return os.environ["HAZARD_GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict:
    import datasets
    import kvpress
    import transformers

    return {"hazard": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "kvpress": getattr(kvpress, "__version__", "0.5.5"), "datasets": datasets.__version__,
            "python": platform.python_version()}


def _content(cfg: CollectConfig) -> dict:
    """The parts of the config that change trace content (a resume must match them)."""
    d = dataclasses.asdict(cfg)
    for k in ("output_dir", "summary_out", "batch_size", "time_budget_s", "mix_settings"):
        d.pop(k)
    d["model"].pop("device")
    return d


def validate(cfg: CollectConfig) -> tuple[list[tuple[str, list]], list[PressSpec]]:
    """Build tasks and presses once up front so bad names fail before the model loads."""
    if not cfg.tasks:
        raise HazardError("collect: no tasks configured; add at least one under `tasks:`")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1 or cfg.shard_size < 1:
        raise HazardError("collect: max_new_tokens, batch_size and shard_size must be >= 1")
    if cfg.state_dim < 1:
        raise HazardError(f"collect: state_dim must be a positive width, got {cfg.state_dim}")
    names = [t.name for t in cfg.tasks]
    if len(set(names)) != len(names):
        raise HazardError(f"collect: task listed twice in {names}; shards are named by task, list each once "
                          "(a grid gives one task several prompt formats)")
    tasks = [(t.name, [build_task(t.name, **opts) for opts in t.expand()]) for t in cfg.tasks]
    for name, group in tasks:
        fmts = [format_of(t) for t in group]
        if len(set(fmts)) != len(fmts):
            twice = sorted({f for f in fmts if fmts.count(f) > 1})
            raise HazardError(f"collect: task {name}'s grid gives format(s) {twice} twice; list each format once")
    specs = [PressSpec("none")] + [s for s in cfg.presses if s.name != "none"]
    for s in specs:
        build_press(s)
    return tasks, specs


def _shard_rate(out: Path) -> float | None:
    timings = [json.loads(p.read_text()) for p in sorted((out / "stats" / "shards").glob("*.json"))]
    tokens, seconds = sum(t["generated_tokens"] for t in timings), sum(t["seconds"] for t in timings)
    return round(tokens / seconds, 2) if seconds > 0 else None


def run_collect(cfg: CollectConfig) -> dict | None:
    """Collect traces into ``cfg.output_dir``; returns the summary on rank 0 (None on other ranks)."""
    tasks, specs = validate(cfg)
    rank, world, local = dist.setup()
    out = Path(cfg.output_dir)
    manifest_path = out / "manifest.json"
    content = _content(cfg)
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("schema_version") != SCHEMA_VERSION:
            raise HazardError(f"{out}: holds trace schema version {old.get('schema_version')}, this hazard writes "
                              f"{SCHEMA_VERSION}; use a new output_dir")
        # A key the old manifest lacks was added since, with a default that keeps the old behaviour.
        defaults = json.loads(json.dumps(_content(CollectConfig())))
        old_cfg = {**{k: v for k, v in defaults.items() if k not in old.get("config", {})}, **old.get("config", {})}
        if old_cfg != json.loads(json.dumps(content)):
            raise HazardError(f"{out}: holds a collection with a different config; use a new output_dir "
                              "or delete the old one to resume")
    dist.barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(manifest_path, {"schema_version": SCHEMA_VERSION, "config": content, "versions": versions(),
                                   "git_sha": _git_sha(), "world_size": world, "hardware": hardware()})
    dist.barrier()

    if world > 1 and cfg.model.device == "auto" and torch.cuda.is_available():
        cfg.model.device = f"cuda:{local}"
    model, tok = load_model(cfg.model)
    engine = Engine(model, end_token_ids(tok, model), cfg.max_new_tokens, cfg.batch_size, tuple(cfg.probe_layers),
                    verify_window=cfg.verify_window, state_layer=cfg.state_layer, state_dim=cfg.state_dim)
    units = []
    for name, group in tasks:
        prompts = grid_prompts(group)
        for c in range(0, len(prompts), cfg.shard_size):
            units.append((name, c // cfg.shard_size, prompts[c:c + cfg.shard_size]))
    # Chunk 0 of every task, then chunk 1, ...: a time-budgeted (partial) collection has every task.
    order = {name: i for i, (name, _) in enumerate(tasks)}
    units.sort(key=lambda u: (u[1], order[u[0]]))
    mine = units[rank::world]
    meta_base = {"schema_version": SCHEMA_VERSION, "model": cfg.model.label(), "seed": cfg.seed,
                 "max_new_tokens": cfg.max_new_tokens}
    bar = tqdm(mine, desc=f"collect[rank {rank}]", unit="chunk", disable=None)
    skipped = left = written = 0
    budget = None if cfg.time_budget_s is None else TimeBudget(time.perf_counter() + cfg.time_budget_s)
    for i, (name, chunk, prompts) in enumerate(bar):
        w, s, stopped = run_unit(engine, tok, prompts, specs, {**meta_base, "task": name},
                                 lambda spec, t=name, c=chunk: out / "data" / shard_name(t, c, spec), budget,
                                 written, cfg.mix_settings)
        written += w
        skipped += s
        if stopped:
            left = len(mine) - i  # this chunk is unfinished; a later call resumes with it
            break
        bar.set_postfix(tok_s=f"{engine.generated_tokens / max(engine.seconds, 1e-9):.0f}")
    write_json(out / "stats" / f"rank-{rank:03d}.json",
               {"generated_tokens": engine.generated_tokens, "seconds": engine.seconds, "skipped_shards": skipped,
                "chunks_left": left})
    dist.barrier()
    if rank != 0:
        dist.teardown()
        return None
    stats = [json.loads(p.read_text()) for p in sorted((out / "stats").glob("rank-*.json"))][:world]
    tokens, seconds = sum(s["generated_tokens"] for s in stats), max(s["seconds"] for s in stats)
    ds = load_traces(out)
    chunks_left = sum(s.get("chunks_left", 0) for s in stats)
    summary = {
        # A time-budgeted call stops between chunks: run the same command again to go on.
        "complete": chunks_left == 0, "chunks_left": chunks_left, "n_traces": len(ds),
        "n_generated_tokens": int(sum(ds["n_tokens"])),
        "model": cfg.model.label(), "hardware": hardware(), "world_size": world,
        "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "git_sha": _git_sha(),
        # Throughput of this invocation (shards skipped on resume are not counted).
        "generated_tokens_per_s": round(tokens / seconds, 2) if tokens else None,
        # Every shard of the collection, resumed calls included: tokens over the summed generation time of
        # one process (prefill included), so with several ranks it is the per-process rate.
        "shard_generated_tokens_per_s": _shard_rate(out),
        "configs": summarize(ds),
        "formats": summarize_formats(ds),
        "onsets": summarize_onsets(ds),
    }
    write_json(out / "summary.json", summary)
    if cfg.summary_out:
        Path(cfg.summary_out).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(cfg.summary_out), summary)
    dist.teardown()
    return summary
