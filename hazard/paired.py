"""Paired comparisons of runs on the same prompts: is one policy above another, or is the gap noise?

Every run of an evaluation answers the same prompts, so two runs are compared prompt by prompt, not as two
independent samples: most prompts come out the same under both, and only the discordant ones say which run is
better. Gaps of one or two points on 500 prompts are common between policies here (evaluate/RESULTS.md 0f); an
unpaired interval would be about +-6 points wide and call all of them noise, a paired one can tell.

For each pair this gives the difference of the two rates, a percentile-bootstrap interval over prompts, the
discordant counts and the exact two-sided sign test (McNemar's test without the normal approximation).
Rows carry their per-prompt outcomes as bit strings (``row["outcomes"]``, written by ``hazard evaluate``).
Against chance (a coin gate run with several seeds) a run is also compared with the seeds' mean outcome per
prompt (``coin_comparisons``), so one lucky or unlucky draw does not decide it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hazard.errors import HazardError
from hazard.frontiers import task_key

# per prompt, as "0"/"1" strings in a row's ``outcomes``; a catastrophe here is what ``catastrophe_rate``
# counts, a loop or a non-termination
OUTCOMES = ("correct", "catastrophe")


def outcome_bits(rows: Sequence[dict]) -> dict:
    """A run's per-prompt outcomes as bit strings: compact in JSON (500 prompts: 500 characters each). Rows
    saved before they kept ``loop`` and ``nonterm`` give ``correct`` only; ``acted`` (the controller acted on
    the row) where the rows kept it; ``kv``, each row's mean KV fraction (a list of numbers, not bits), where
    they kept it."""
    bits: dict = {"correct": "".join("1" if r["correct"] else "0" for r in rows)}
    if all("loop" in r and "nonterm" in r for r in rows):
        bits["catastrophe"] = "".join("1" if r["loop"] or r["nonterm"] else "0" for r in rows)
    if rows and all("acted" in r for r in rows):
        bits["acted"] = "".join("1" if r["acted"] else "0" for r in rows)
    if rows and all("kv" in r for r in rows):
        bits["kv"] = [float(r["kv"]) for r in rows]
    return bits


def _array(x: str | Sequence) -> np.ndarray:
    if isinstance(x, str):
        if set(x) - {"0", "1"}:
            raise HazardError("paired: outcomes must be a string of 0s and 1s")
        return np.frombuffer(x.encode(), np.uint8) == ord("1")
    return np.asarray(x, bool)


def sign_test_p(a_only: int, b_only: int) -> float:
    """Exact two-sided p-value of ``a_only`` against ``b_only`` discordant prompts, each side 1/2 under the null."""
    m, k = a_only + b_only, min(a_only, b_only)
    if m == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m)


def paired_difference(a: str | Sequence, b: str | Sequence, n_boot: int = 10000, level: float = 0.95,
                      seed: int = 0) -> dict:
    """Rate of ``a`` minus rate of ``b`` over the same prompts, with its bootstrap interval (prompts resampled
    with replacement, ``n_boot`` times, percentile ``level``), the prompts where only one is 1, and the sign
    test's p. The per-prompt difference takes three values, so a resample is one multinomial draw of their
    counts: exact, and cheap for any ``n_boot``."""
    x, y = _array(a), _array(b)
    if len(x) != len(y) or not len(x):
        raise HazardError(f"paired: the runs must answer the same prompts ({len(x)} vs {len(y)} outcomes)")
    n = len(x)
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    counts = np.random.default_rng(seed).multinomial(n, [a_only / n, b_only / n, 1 - (a_only + b_only) / n],
                                                     size=n_boot)
    boot = (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"n": n, "diff": (a_only - b_only) / n, "ci": [float(lo), float(hi)], "level": level,
            "a_only": a_only, "b_only": b_only, "p": sign_test_p(a_only, b_only)}


def run_label(row: dict) -> str:
    """``policy`` or ``policy(knob)``, as the closed-loop table writes the knob."""
    from hazard.report import knob_text  # here, not at the top: hazard.report loads matplotlib

    knob = knob_text(row.get("knob", {}))
    return f"{row['policy']}({knob})" if knob else row["policy"]


def outcome_groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The rows that kept per-prompt outcomes, by (task, base press): the runs that answered the same prompts."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("outcomes"):
            groups.setdefault((task_key(r), _base(r)), []).append(r)
    return groups


def task_full_rows(groups: dict[tuple[str, str], list[dict]]) -> dict[str, dict]:
    """The uncompressed row of each task in ``outcome_groups``: the same run under any base press, so a group
    without its own (a merge keeps one per task, under the first file's base) takes its task's."""
    full: dict[str, dict] = {}
    for (task, _), sub in groups.items():
        for r in sub:
            if r["policy"] == "full":
                full.setdefault(task, r)
    return full


def paired_comparisons(rows: list[dict], kv_tol: float = 0.02) -> list[dict]:
    """Per task and base press, each controlled run against the static press, the uncompressed run, and every
    other static press of the task within ``kv_tol`` of its mean KV (issue 12's bar is the best static press at
    the same memory, whichever press that is); and each two controlled runs whose mean KV differs by at most
    ``kv_tol`` (a matched-memory pair). The uncompressed run is the same under any base press: a group without
    its own (a merge keeps one per task) takes the task's. Rows without ``outcomes`` (written before they
    existed) are left out."""
    out = []
    groups = outcome_groups(rows)
    full_of = task_full_rows(groups)
    for (task, base), sub in groups.items():
        others = [r for (t, b), g in groups.items() if t == task and b != base for r in g]
        runs = [r for r in sub if r["policy"] not in ("static", "full")]
        refs = [r for r in sub if r["policy"] in ("static", "full")]
        if not any(r["policy"] == "full" for r in refs) and task in full_of:
            refs.append(full_of[task])
        pairs = [(r, ref) for r in runs for ref in refs]
        pairs += [(r, s) for r in runs for s in others if s["policy"] == "static"
                  and abs(r["mean_kv_fraction"] - s["mean_kv_fraction"]) <= kv_tol]
        pairs += [(r, s) for i, r in enumerate(runs) for s in runs[i + 1:]
                  if abs(r["mean_kv_fraction"] - s["mean_kv_fraction"]) <= kv_tol]
        for r, s in pairs:
            if r["accuracy"] < s["accuracy"]:  # the better run first: the differences read as gains
                r, s = s, r
            out.append({"task": task, "base": base, "a": _label(r, base), "b": _label(s, base),
                        "kv": [r["mean_kv_fraction"], s["mean_kv_fraction"]],
                        **{k: paired_difference(r["outcomes"][k], s["outcomes"][k]) for k in OUTCOMES
                           if k in r["outcomes"] and k in s["outcomes"]}})
    return out


def coin_rate(row: dict) -> str | None:
    """``random:<rate>`` when ``row`` is a run behind a coin gate (``random:<rate>[:<seed>]``, any seed), else
    None."""
    spec = str(row.get("knob", {}).get("gate", ""))
    if not spec.startswith("random:"):
        return None
    from hazard.control.gate import load_gate  # here: the gate module loads the engine

    return f"random:{load_gate(spec).rate:g}"


def pooled_difference(a: str | Sequence, coins: Sequence[str | Sequence], n_boot: int = 10000,
                      level: float = 0.95, seed: int = 0) -> dict:
    """Rate of ``a`` minus the mean rate of several coin runs (seeds of one random gate) on the same prompts.

    One coin is one draw of chance: against it alone a gap mixes the run's choice of rows with that draw's luck
    (three seeds of one rate differ by up to 1 point here, evaluate/RESULTS.md 0n). Per prompt, ``a``'s outcome
    minus the coins' mean outcome (the coin policy's expected outcome, estimated) removes most of the draw; the
    interval resamples prompts (percentile bootstrap) and p is the paired t-test on those per-prompt differences
    (normal approximation: hundreds of prompts)."""
    x = _array(a).astype(float)
    ys = [_array(c).astype(float) for c in coins]
    if not ys or any(len(y) != len(x) for y in ys) or not len(x):
        raise HazardError("paired: the run and its coins must answer the same prompts "
                          f"({len(x)} vs {[len(y) for y in ys]} outcomes)")
    return mean_difference(x - np.mean(ys, axis=0), n_boot, level, seed) | {"coins": len(ys)}


def mean_difference(d: np.ndarray, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> dict:
    """The mean of per-prompt differences ``d`` (any values: a run's outcome minus its coins' mean, say), a
    percentile-bootstrap interval over prompts and the paired t-test's two-sided p (normal approximation)."""
    d = np.asarray(d, float)
    n = len(d)
    if not n:
        raise HazardError("paired: no prompts to compare")
    rng = np.random.default_rng(seed)
    boot = np.concatenate([d[rng.integers(0, n, (min(1000, n_boot - i), n))].mean(1) for i in range(0, n_boot, 1000)])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    se = d.std(ddof=1) / math.sqrt(n) if n > 1 else 0.0
    p = 1.0 if d.mean() == 0 else 0.0 if se == 0 else math.erfc(abs(d.mean()) / se / math.sqrt(2))
    return {"n": n, "diff": float(d.mean()), "ci": [float(lo), float(hi)], "level": level, "p": p}


def coin_comparisons(rows: list[dict], kv_tol: float = 0.02, min_seeds: int = 2) -> list[dict]:
    """Per task and base press, each controlled run that is not a coin against the pooled coins of each rate
    (``pooled_difference``) whose mean KV is within ``kv_tol`` of its own: issue 12 asks the learned policy to
    beat random at matched memory. A rate needs ``min_seeds`` seeds to be pooled; ``paired_comparisons`` still
    pairs each seed on its own."""
    out = []
    for (task, base), sub in outcome_groups(rows).items():
        coins: dict[tuple[str, str], list[dict]] = {}
        runs = []
        for r in sub:
            if rate := coin_rate(r):
                coins.setdefault((r["policy"], rate), []).append(r)
            elif r["policy"] not in ("static", "full"):
                runs.append(r)
        for (policy, rate), group in coins.items():
            if len(group) < min_seeds:
                continue
            kv = float(np.mean([g["mean_kv_fraction"] for g in group]))
            for r in runs:
                if abs(r["mean_kv_fraction"] - kv) > kv_tol:
                    continue
                out.append({"task": task, "base": base, "a": _label(r, base),
                            "b": f"{policy}(gate={rate}) x{len(group)} seeds", "kv": [r["mean_kv_fraction"], kv],
                            **{k: pooled_difference(r["outcomes"][k], [g["outcomes"][k] for g in group])
                               for k in OUTCOMES if k in r["outcomes"] and all(k in g["outcomes"] for g in group)}})
    return out


def format_coins(items: list[dict]) -> str:
    """One line per run against pooled coins: the accuracy gain, its interval, p, the catastrophe gap."""
    return _format_comparisons(items, pooled=True)


def _format_comparisons(items: list[dict], pooled: bool) -> str:
    """A header, then per (task, base press) a line naming it and one line per comparison: the accuracy
    difference, its interval, the discordant prompts (pairs; not for pooled coins), p, the catastrophe gap and
    the two KVs. Empty for no items."""
    if not items:
        return ""
    level = items[0]["correct"]["level"]
    if pooled:
        header = (f"against pooled coins, same prompts (accuracy a - the coins' mean, {level:.0%} bootstrap interval "
                  "over prompts; p: paired t-test on per-prompt differences; catastrophes a - the coins' mean)")
    else:
        header = (f"paired, same prompts (accuracy a - b, {level:.0%} bootstrap interval over prompts; prompts only "
                  "a / only b got right; p: exact sign test; catastrophes a - b)")
    lines = [header]
    w, v = max(len(p["a"]) for p in items), max(len(p["b"]) for p in items)
    last = None
    for p in items:
        if (p["task"], p["base"]) != last:
            last = (p["task"], p["base"])
            lines.append(f"{p['task']} {p['base']}")
        c = p["correct"]
        catas = f"catas {p['catastrophe']['diff']:+.3f}" if "catastrophe" in p else "catas   n/a"
        counts = "" if pooled else f"{c['a_only']:3d} / {c['b_only']:<3d} "
        lines.append(f"  {p['a']:{w}}  vs  {p['b']:{v}}  {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]  "
                     f"{counts}p={c['p']:<7.2g} {catas}  KV {p['kv'][0]:.3f} vs {p['kv'][1]:.3f}")
    return "\n".join(lines)


def _base(row: dict) -> str:
    """The row's base press setting, ``press@ratio``."""
    return f"{row['base_press']}@{row['base_ratio']:g}"


def _label(row: dict, base: str) -> str:
    """``run_label``; a static press other than the group's base press is named with its setting."""
    return f"static {_base(row)}" if row["policy"] == "static" and _base(row) != base else run_label(row)


def format_paired(pairs: list[dict]) -> str:
    """One line per pair: the accuracy gain of the better run, its interval, the discordant prompts, p."""
    return _format_comparisons(pairs, pooled=False)


def run_static_full(run: dict, static: dict, full: dict, who: str) -> tuple[np.ndarray, ...]:
    """The three rows' per-prompt ``correct`` bits and the static press's loops and non-terminations (``wild``),
    checked to answer the same prompts; ``who`` names the caller in the error."""
    for row in (run, static, full):
        if "catastrophe" not in row.get("outcomes", {}):
            raise HazardError(f"{who}: {run_label(row)} kept no per-prompt outcomes with catastrophes; "
                              "re-run it with this version of hazard evaluate")
    u, s, f = (_array(r["outcomes"]["correct"]) for r in (run, static, full))
    if not len(u) == len(s) == len(f):
        raise HazardError(f"{who}: the runs must answer the same prompts ({len(u)}, {len(s)}, {len(f)})")
    return u, s, f, _array(static["outcomes"]["catastrophe"])


def gate_headroom(run: dict, static: dict, full: dict, max_false: float = 0.05) -> dict:
    """What ``run``'s action would reach behind a perfect gate, from the three rows' per-prompt outcomes.

    A perfect gate acts only on the rows the static press failed, the catastrophes of the trace labels: a loop or
    a non-termination, or an answer the uncompressed run got right and the press got wrong. There the row takes
    ``run``'s outcome, everywhere else the static press's. The closed loop's ``false_trigger_rate`` counts the
    rows without such a catastrophe under the static press (``hazard.evaluate.summarize_policy``: ``not
    row["catastrophe"]``), so that gate has none. ``bound_gate`` is the best gate held to ``max_false`` of that
    rate: it acts on every failing row where ``run`` fixes the static answer (free) and on at most
    ``floor(max_false x healthy rows)`` healthy rows, those it fixes (answers wrong uncompressed too); its
    accuracy is the most any gate can keep with this action at that bound. (The per-prompt ``catastrophe`` bits
    are loops and non-terminations as the rows flag them; the closed loop's labels count a run the budget cut
    right after its answer as healthy: a row or two per 500 can fall on the other side here.) The counts say
    where ``run``'s accuracy comes from: rows it fixed or broke among the failing ones and among the healthy
    ones, and, with the run's per-prompt ``acted`` bits, among the healthy rows it acted on (``healthy_acted``:
    what its false triggers did; a row it left alone can still move with the rows batched beside it). A
    counterfactual per row: it assumes a row's outcome does not depend on the rows batched with it,
    which bf16 batch arithmetic makes only nearly true.
    """
    u, s, f, wild = run_static_full(run, static, full, "gate_headroom")
    failing = wild | (f & ~s)
    n = len(u)
    fixes = u & ~s
    healthy = int((~failing).sum())
    fix_failing, fix_healthy = int((fixes & failing).sum()), int((fixes & ~failing).sum())
    budget = int(np.floor(max_false * healthy))
    bound = {"max_false": max_false, "healthy_rows": healthy, "budget": budget, "fixable_failing": fix_failing,
             "fixable_healthy": fix_healthy,
             "accuracy": float((s.sum() + fix_failing + min(budget, fix_healthy)) / n)}

    def moves(mask: np.ndarray) -> dict:
        return {"rows": int(mask.sum()), "fixed": int((mask & fixes).sum()), "broke": int((mask & s & ~u).sum())}

    bits = run["outcomes"].get("acted")
    return {"n": n, "accuracy": float(u.mean()), "static_accuracy": float(s.mean()), "full_accuracy": float(f.mean()),
            "perfect_gate_accuracy": float(np.where(failing, u, s).mean()), "bound_gate": bound,
            "failing": moves(failing), "healthy": moves(~failing), "acted": acted_shares(run, static, failing),
            "healthy_acted": None if bits is None else moves(~failing & _array(bits))}


def acted_shares(run: dict, static: dict, failing: np.ndarray) -> dict | None:
    """Where ``run`` acted: its share of the failing rows (``gate_headroom``'s) and of the others, from its
    per-prompt ``acted`` bits. Runs saved without them give the split their summary allows: the rows the static
    press left right (``false_repair_rate``) against the others (``trigger_rate``). A trigger that knows which
    rows fail acts on more of the first group than of the second; a coin acts on both alike. None: neither."""
    bits = run["outcomes"].get("acted")
    if bits is not None:
        a = _array(bits)
        return {"among": "failing", "share": float(a[failing].mean()) if failing.any() else 0.0,
                "others": float(a[~failing].mean()) if (~failing).any() else 0.0}
    if "trigger_rate" not in run or "false_repair_rate" not in run:
        return None
    right = _array(static["outcomes"]["correct"]) & ~_array(static["outcomes"]["catastrophe"])
    n, n_right = len(right), int(right.sum())
    on_right = run["false_repair_rate"] * n_right
    return {"among": "static_not_right", "share": (run["trigger_rate"] * n - on_right) / max(n - n_right, 1),
            "others": on_right / max(n_right, 1)}


def gate_headrooms(rows: list[dict], max_false: float = 0.05) -> list[dict]:
    """``gate_headroom`` of each controlled row with outcomes, against the static and uncompressed rows of its
    task and base press (the task's uncompressed row where the group has none, ``task_full_rows``); a group
    without its static row is left out."""
    items = []
    groups = outcome_groups(rows)
    full_of = task_full_rows(groups)
    for (task, base), sub in groups.items():
        refs = {r["policy"]: r for r in sub if r["policy"] in ("static", "full")}
        if "full" not in refs and task in full_of:
            refs["full"] = full_of[task]
        if len(refs) == 2:
            items += [{"task": task, "base": base, "run": run_label(r),
                       "headroom": gate_headroom(r, refs["static"], refs["full"], max_false)}
                      for r in sub if r["policy"] not in ("static", "full")]
    return items


def format_headroom(items: list[dict]) -> str:
    """One line per run: its accuracy, the perfect gate's, and the rows it fixed / broke, failing vs healthy."""
    if not items:
        return ""
    w = max(len(it["run"]) for it in items)
    m = items[0]["headroom"]["bound_gate"]["max_false"]
    lines = [f"{'run':{w}}  acc    perfect gate  at <= {m:.0%} false triggers  "
             "failing rows: fixed / broke   healthy rows: fixed / broke   "
             "acted on: failing (F) or not right under static (W) / the others   healthy rows acted on: fixed / broke"]
    for it in items:
        h = it["headroom"]
        fa, he, a = h["failing"], h["healthy"], h.get("acted")
        where = "" if a is None else f"{'F' if a['among'] == 'failing' else 'W'} {a['share']:.3f} / {a['others']:.3f}"
        if (ha := h.get("healthy_acted")) is not None:
            where += f"                                   {ha['rows']:4d}: {ha['fixed']:3d} / {ha['broke']:<3d}"
        lines.append(f"{it['run']:{w}}  {h['accuracy']:.3f}  {h['perfect_gate_accuracy']:.3f}         "
                     f"{h['bound_gate']['accuracy']:.3f}                    "
                     f"{fa['rows']:4d}: {fa['fixed']:3d} / {fa['broke']:<3d}              "
                     f"{he['rows']:4d}: {he['fixed']:3d} / {he['broke']:<3d}              {where}")
    return "\n".join(lines)
