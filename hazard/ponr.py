"""Point of no return: the latest token at which restoring the evicted KV still saves a failing run.

For each failing run of a press setting (a catastrophe under the static press, the twin healthy) the
prompt is generated again with the same press and every evicted prompt entry restored once the row has
generated t tokens, for t on a grid; greedy decoding makes the first t tokens those of the failing run
(up to bf16 batch noise, reported as ``same_prefix``). The run is labelled as collect labels it (same
detectors, same twin). The point of no return is the largest grid t whose restored run ends healthy
(-1: none does); ``healthy`` keeps the whole curve, which need not be monotone.

This is the label a controller needs: restoring before it helps, after it does not. Cost: one generation
of the sampled failing prompts per grid point, on the fast engine.
"""

from __future__ import annotations

import numpy as np

from hazard.collect import build_rows, encode, kept_positions, questions_of
from hazard.compression import PressSpec, build_press
from hazard.control import PolicyController, build_policy
from hazard.engine import Engine
from hazard.tasks import Prompt

GRID = (1, 4, 8, 16, 32, 64, 128)


def _rows(engine: Engine, tok, prompts: list[Prompt], ids, spec: PressSpec, meta: dict, refs=None, at=None):
    controller = None
    if at is not None:
        controller = PolicyController(build_policy("scheduled", at=at), None, spec.ratio, engine.max_new_tokens)
    questions = questions_of(tok, prompts)
    press = build_press(spec)
    gens = engine.generate(ids, press, controller, kept_positions(press, questions, ids))
    return build_rows(tok, prompts, gens, refs, spec, meta, questions)


def failing(static: list[dict], refs: list[dict]) -> list[int]:
    """Indices of the failing runs: a catastrophe under the static press where the twin was right."""
    return [i for i, r in enumerate(static) if r["catastrophe"] and refs[i]["correct"]]


def restore_curves(engine: Engine, tok, prompts: list[Prompt], ids, spec: PressSpec, meta: dict, refs: list[dict],
                   static: list[dict], rows: list[int], grid=GRID) -> list[dict]:
    """For the runs ``rows`` (indices into ``prompts``; ``refs``/``static`` are the uncompressed and static
    runs' rows, with tokens), restore after t tokens for each t in ``grid``: per run ``healthy`` (did the
    restored run end healthy), ``same_prefix`` (did it follow the static run up to t) and
    ``point_of_no_return`` (the largest t that saved it, -1: none)."""
    sub, sub_ids, sub_refs = [prompts[i] for i in rows], [ids[i] for i in rows], [refs[i] for i in rows]
    curves = {t: _rows(engine, tok, sub, sub_ids, spec, meta, sub_refs, at=t) for t in grid} if rows else {}
    out = []
    for j, i in enumerate(rows):
        healthy = [not curves[t][j]["catastrophe"] for t in grid]
        # The restored run follows the failing one until it restores (greedy, same press): check it did.
        same = [list(curves[t][j]["tokens"][: t]) == list(static[i]["tokens"][: t]) for t in grid]
        saved = [t for t, h in zip(grid, healthy) if h]
        out.append({"grid": list(grid), "healthy": healthy, "same_prefix": same,
                    "point_of_no_return": max(saved) if saved else -1})
    return out


def point_of_no_return(engine: Engine, tok, prompts: list[Prompt], spec: PressSpec, meta: dict,
                       grid=GRID, max_failing: int | None = None, seed: int = 0,
                       traces: dict | None = None, refs: list[dict] | None = None) -> list[dict]:
    """Run the procedure (module docstring) for ``prompts`` under ``spec``; one dict per failing run.

    ``meta`` holds the trace metadata collect writes (model, task, seed, max_new_tokens, ...);
    ``max_failing`` samples that many failing runs (seeded) when there are more. With ``traces`` (a dict),
    the uncompressed and static runs' trace rows are put there (``"none"``, ``spec.label``), so they can be
    written as a collection whose failing runs carry their point of no return. ``refs``: the uncompressed
    runs' rows from an earlier call on the same prompts (the twin is the same for every press setting).
    """
    ids = [encode(tok, p) for p in prompts]
    refs = refs if refs is not None else _rows(engine, tok, prompts, ids, PressSpec("none"), meta)
    static = _rows(engine, tok, prompts, ids, spec, meta, refs)
    if traces is not None:
        traces["none"], traces[spec.label] = refs, static
    rows = failing(static, refs)
    if max_failing is not None and len(rows) > max_failing:
        rows = sorted(np.random.default_rng(seed).choice(rows, max_failing, replace=False).tolist())
    curves = restore_curves(engine, tok, prompts, ids, spec, meta, refs, static, rows, grid)
    return [{"trace_id": static[i]["trace_id"], "prompt_id": static[i]["prompt_id"], "press": spec.name,
             "ratio": spec.ratio, "onset": static[i]["onset"], "onset_source": static[i]["onset_source"],
             "n_tokens": static[i]["n_tokens"], **c} for i, c in zip(rows, curves)]


def _quartiles(a: np.ndarray) -> list[float] | None:
    return [float(v) for v in np.percentile(a, [25, 50, 75])] if len(a) else None


def summarize_curves(curves: list[dict]) -> dict:
    """Over failing runs' curves (``restore_curves``): how many, how many some restore saves, the quartiles
    of their point of no return, and how many restored runs left the static run before restoring."""
    saved = np.array([c["point_of_no_return"] for c in curves if c["point_of_no_return"] >= 0])
    return {"failing": len(curves), "saved_by_some_restore": int(len(saved)), "ponr_quartiles": _quartiles(saved),
            "prefix_mismatch": sum(not all(c["same_prefix"]) for c in curves)}


def summarize_ponr(rows: list[dict]) -> dict:
    """Per (press, ratio): ``summarize_curves`` and the quartiles of the point of no return's lead on the
    labelled onset."""
    out = {}
    for key in sorted({(r["press"], r["ratio"]) for r in rows}):
        rs = [r for r in rows if (r["press"], r["ratio"]) == key]
        lead = np.array([r["point_of_no_return"] - r["onset"] for r in rs
                         if r["point_of_no_return"] >= 0 and r["onset"] >= 0])
        out[f"{key[0]}@{key[1]:g}"] = {**summarize_curves(rs), "ponr_minus_onset_quartiles": _quartiles(lead)}
    return out
