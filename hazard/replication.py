"""One comparison measured again on other prompts: does a run's gain over its references hold outside the prompt
set it was chosen on?

A run picked after many comparisons on one prompt set (issue 12's GSM8K test problems 1-500) is above its
references there partly by selection. Measured again on another set (other problems, or the same problems in
another prompt format), with nothing refit, each set gives its own paired difference; pooling the sets' prompts
gives one difference over all of them. Each set is a merged closed-loop file with its own uncompressed run (runs of
different prompts are never merged into one file: ``evaluate/merge_frontiers.py`` stops on two uncompressed runs).

A run and a reference are named as the merged files' paired tables name them (``hazard.paired``): ``static``
(the base press), ``full``, ``static <press>@<ratio>`` (another static setting), a controlled run's label such as
``answer_check(gate=random:0)``, or ``coins:<policy>(gate=random:<rate>)``, every seed of that coin pooled per
prompt (``hazard.paired.pooled_difference``). ``coins:<policy>(gate=random:matched)`` takes, in each set, the
coin whose seeds trigger on the share of rows nearest the run's own: a gate's trigger rate moves with the prompt
format, so the coin that acts on as many rows has a different rate in each set.

``mix:static`` is static compression at the run's own memory: in each set, the per-row mix of the set's static
settings (any press and ratio, the uncompressed run as ratio 0) whose mean KV equals the run's and whose accuracy
is highest (the upper concave envelope of ``hazard.frontiers.best_mix``), each prompt counted at its expected
correctness under the mix. A run that spends less memory than one static setting and more than another is
compared with neither but with what static compression reaches at exactly its KV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hazard.errors import HazardError
from hazard.frontiers import best_mix
from hazard.paired import _array, _base, _label, coin_rate, mean_difference, outcome_groups, paired_difference

COINS = "coins:"
MATCHED = "random:matched"  # in a coins label: the rate nearest the run's trigger rate, chosen per set
MIX = "mix:static"  # static compression at the run's mean KV: a per-row mix of two static settings, per set
NAMES = {"accuracy": "accuracy", "catastrophe_rate": "catastrophes", "mean_kv_fraction": "KV",
         "false_trigger_rate": "false triggers"}  # the bounds, as the table prints them


@dataclass
class Bounds:
    """Issue 12's target for one run against its set's uncompressed run: accuracy and catastrophes within
    ``acc_tol`` / ``catas_tol`` of it, mean KV at most ``max_kv``, false triggers at most ``max_false`` of the
    healthy rows."""

    acc_tol: float = 0.02
    catas_tol: float = 0.02
    max_kv: float = 0.25
    max_false: float = 0.05

    def check(self, run: dict, full: dict) -> dict:
        """Each bound's value, limit and verdict for ``run`` (a row or pooled summary) against ``full``."""
        items = {"accuracy": (run["accuracy"], full["accuracy"] - self.acc_tol, ">="),
                 "catastrophe_rate": (run["catastrophe_rate"], full["catastrophe_rate"] + self.catas_tol, "<="),
                 "mean_kv_fraction": (run["mean_kv_fraction"], self.max_kv, "<="),
                 "false_trigger_rate": (run.get("false_trigger_rate", 0.0), self.max_false, "<=")}
        # rounded as the tables print them, so 0.518 against a bound of 0.538 - 0.02 is not lost to 1e-16
        return {k: {"value": v, "limit": lim, "ok": bool(round(v - lim, 9) >= 0 if op == ">=" else
                                                         round(v - lim, 9) <= 0)}
                for k, (v, lim, op) in items.items()}


def _group(rows: list[dict], base: str, name: str) -> list[dict]:
    """The rows of the one task that ran ``base`` in set ``name``, with the task's static presses of other
    settings (named ``static <press>@<ratio>``)."""
    groups = outcome_groups(rows)
    tasks = sorted({t for t, b in groups if b == base})
    if len(tasks) != 1:
        bases = sorted({b for _, b in groups})
        raise HazardError(f"replication: set {name} has {len(tasks)} tasks with base press {base} "
                          f"(its base presses: {bases}); give one file per task, or another --base")
    return [r for (t, _), g in groups.items() if t == tasks[0] for r in g
            if _base(r) == base or r["policy"] in ("static", "full")]


def _matched_coin(rows: list[dict], base: str, policy: str, run: dict) -> str:
    """The coin rate (``random:<rate>``) of ``policy`` whose seeds' mean trigger rate is nearest ``run``'s; a coin
    at rate 0 never acts (the policy without its repairs, a reference of its own) and is not a candidate."""
    seeds: dict[str, list[float]] = {}
    for r in rows:
        if _base(r) == base and r["policy"] == policy and (rate := coin_rate(r)) and rate != "random:0":
            seeds.setdefault(rate, []).append(r.get("trigger_rate", 0.0))
    if not seeds:
        return ""
    return min(seeds, key=lambda k: (abs(float(np.mean(seeds[k])) - run.get("trigger_rate", 0.0)), k))


def _find(rows: list[dict], base: str, label: str, name: str, run: dict | None = None) -> list[dict]:
    """The rows ``label`` names in one set's group: one row, or every seed of a coin (with ``random:matched``,
    of the coin nearest ``run``'s trigger rate)."""
    if label.startswith(COINS):
        want = label[len(COINS):]
        if want.endswith(f"(gate={MATCHED})"):
            policy = want[: -len(f"(gate={MATCHED})")]
            want = f"{policy}(gate={_matched_coin(rows, base, policy, run or {})})"
        found = [r for r in rows if _base(r) == base and (rate := coin_rate(r))
                 and f"{r['policy']}(gate={rate})" == want]
    else:
        found = [r for r in rows if _label(r, base) == label]
        found = found[:1] if label == "full" else found  # a merge keeps one uncompressed run per task
    if not found or (len(found) > 1 and not label.startswith(COINS)):
        known = sorted({_label(r, base) for r in rows})
        raise HazardError(f"replication: set {name}: {len(found)} runs named {label!r} under {base}; "
                          f"known there: {known}")
    return found


def static_points(rows: list[dict]) -> list[dict]:
    """The static settings among one set's rows as ``hazard.frontiers`` points (``kv``, ``accuracy``, the ``row``
    and its ``name``), the uncompressed run among them as static at ratio 0."""
    return [{"kv": r["mean_kv_fraction"], "accuracy": r["accuracy"], "row": r,
             "name": "full" if r["policy"] == "full" else _base(r)}
            for r in rows if r["policy"] in ("static", "full")]


def _static_mix(rows: list[dict], run: dict, name: str) -> dict:
    """The per-row mix of the static settings in ``rows`` with mean KV equal to ``run``'s and the highest accuracy
    (``hazard.frontiers.best_mix``): a ``row``-like summary, each prompt's expected correctness (``correct``) and
    the mix in words (``mix``)."""
    points = static_points(rows)
    x = run["mean_kv_fraction"]
    if (found := best_mix(points, x)) is None:
        raise HazardError(f"replication: set {name}: no static setting reaches the run's mean KV {x:.3f} "
                          + (f"(the cheapest holds {min(p['kv'] for p in points):.3f}); add a stronger static "
                             "press to the set" if points else "(the set has no static run)"))
    a, b, w = found
    correct = (1 - w) * _array(a["row"]["outcomes"]["correct"]) + w * _array(b["row"]["outcomes"]["correct"])
    row = {"n": a["row"]["n"], "accuracy": float(correct.mean()), "mean_kv_fraction": x, "false_trigger_rate": 0.0,
           "catastrophe_rate": (1 - w) * a["row"]["catastrophe_rate"] + w * b["row"]["catastrophe_rate"]}
    mix = a["name"] if w == 0 else f"{1 - w:.2f} {a['name']} + {w:.2f} {b['name']}"
    return {"row": row, "correct": correct, "mix": mix}


def _summary(rows: list[dict]) -> dict:
    """Prompt-weighted means of the rows' rates (several sets pooled; one row: its own values)."""
    n = np.array([r["n"] for r in rows], float)
    keys = ("accuracy", "catastrophe_rate", "mean_kv_fraction", "false_trigger_rate")
    return {"n": int(n.sum()), **{k: float(np.dot(n, [r.get(k, 0.0) for r in rows]) / n.sum()) for k in keys}}


def _difference(run: list[dict], ref: list[dict]) -> dict:
    """``run``'s per-prompt outcomes against ``ref``'s, one set or several concatenated (lists of per-set rows
    in the same set order): the sign test for two runs, the paired t-test against pooled coins."""
    a = np.concatenate([_array(r["outcomes"]["correct"]) for r in run])
    if not isinstance(ref[0], list):
        return paired_difference(a, np.concatenate([_array(r["outcomes"]["correct"]) for r in ref]))
    means = np.concatenate([np.mean([_array(c["outcomes"]["correct"]) for c in seeds], 0) for seeds in ref])
    if len(means) != len(a):
        raise HazardError(f"replication: the run and its coins answered different prompts ({len(a)} vs "
                          f"{len(means)})")
    return mean_difference(a - means) | {"coins": [len(s) for s in ref]}


def replicate(sets: dict[str, list[dict]], run: str, against: list[str], base: str,
              pools: dict[str, list[str]] | None = None, bounds: Bounds | None = None) -> dict:
    """``run`` against each of ``against`` in every prompt set, then over each pool of sets.

    Parameters
    ----------
    sets
        name -> rows of one merged closed-loop file (one prompt set, its own uncompressed run).
    run, against
        labels as the paired tables print them (module docstring); ``coins:...`` pools a coin's seeds.
    base
        the base press setting the runs ran on, ``press@ratio``.
    pools
        name -> set names whose prompts are concatenated; default one pool of every set.
    bounds
        issue 12's target (``Bounds``), checked for ``run`` per set and pooled.

    Returns
    -------
    dict
        ``sets``: per set, ``run``'s summary, its bounds and one difference per reference; ``pools``: the same
        over each pool (its bounds against the pool's uncompressed runs, prompt-weighted).
    """
    bounds = bounds or Bounds()
    pools = pools or {"all": list(sets)}
    for pool, names in pools.items():
        if missing := [n for n in names if n not in sets]:
            raise HazardError(f"replication: pool {pool} names sets {missing} that were not given "
                              f"(given: {list(sets)})")
    found: dict[str, dict] = {}
    for name, rows in sets.items():
        group = _group(rows, base, name)
        found[name] = {run: _find(group, base, run, name)}
        found[name] |= {label: [_static_mix(group, found[name][run][0], name)] if label == MIX else
                        _find(group, base, label, name, found[name][run][0]) for label in ["full", *against]}

    def compare(fs: list[dict]) -> dict:  # one set, or a pool: the sets' prompts concatenated in order
        runs = [f[run][0] for f in fs]
        r, full = _summary(runs), _summary([f["full"][0] for f in fs])
        refs = {lab: [f[lab] for f in fs] if lab.startswith(COINS) else [f[lab][0] for f in fs] for lab in against}

        def against_one(lab: str, ref: list) -> dict:
            if lab == MIX:  # expected correctness per prompt: the difference of means, as against coins
                a = np.concatenate([_array(x["outcomes"]["correct"]) for x in runs])
                return {"summary": _summary([m["row"] for m in ref]),
                        **mean_difference(a - np.concatenate([m["correct"] for m in ref])),
                        "mixes": [m["mix"] for m in ref]}
            return {"summary": _summary([x for f in fs for x in f[lab]]), **_difference(runs, ref),
                    **({"rates": [coin_rate(f[lab][0]) for f in fs]} if lab.startswith(COINS) else {})}

        return {"run": r, "full": full, "bounds": bounds.check(r, full),
                "against": {lab: against_one(lab, ref) for lab, ref in refs.items()}}

    return {"run": run, "base": base, "against": against, "bounds": bounds.__dict__,
            "sets": {name: compare([f]) for name, f in found.items()},
            "pools": {pool: {"sets": names, **compare([found[n] for n in names])} for pool, names in pools.items()}}


def format_replication(res: dict) -> str:
    """Per set, then per pool: the run's accuracy, catastrophes, KV and false triggers with each bound's verdict,
    and one line per reference: its accuracy and KV, the difference, its interval, p."""
    lines = [f"{res['run']} on {res['base']}; bounds: accuracy >= uncompressed - {res['bounds']['acc_tol']:g}, "
             f"catastrophes <= uncompressed + {res['bounds']['catas_tol']:g}, mean KV <= {res['bounds']['max_kv']:g}, "
             f"false triggers <= {res['bounds']['max_false']:g}",
             "(against a run: exact sign test, prompts only a / only b got right; against coins: paired t-test on "
             "the per-prompt difference from the seeds' mean; against mix:static, from each prompt's expected "
             "correctness under the mix; 95% bootstrap intervals over prompts)"]
    w = max(len(lab) for lab in res["against"])
    for kind, items in (("set", res["sets"]), ("pool", res["pools"])):
        for name, s in items.items():
            r, full = s["run"], s["full"]
            what = f"{kind} {name}" + (f" ({' + '.join(s['sets'])})" if kind == "pool" else "")
            lines.append(f"\n{what}: {r['n']} prompts, uncompressed {full['accuracy']:.3f} / "
                         f"{full['catastrophe_rate']:.3f}")
            verdict = ", ".join(f"{NAMES[k]} {b['value']:.3f} ({'ok' if b['ok'] else 'MISSED'} vs "
                                f"{b['limit']:.3f})" for k, b in s["bounds"].items())
            lines.append(f"  run: {verdict}")
            for lab, d in s["against"].items():
                counts = (f"{d['a_only']:3d} / {d['b_only']:<3d}" if "a_only" in d else
                          "   mix   " if lab == MIX else "   coins ")
                rates = (f"  ({', '.join(d['rates'])})" if MATCHED in lab else
                         f"  ({'; '.join(d['mixes'])})" if lab == MIX else "")
                lines.append(f"  vs {lab:{w}}  {d['summary']['accuracy']:.3f} @ {d['summary']['mean_kv_fraction']:.3f}"
                             f"  {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]  {counts}  p={d['p']:.2g}"
                             + rates)
    return "\n".join(lines)


def tradeoff(results: list[dict], scope: str = "pools") -> dict[str, list[dict]]:
    """Several runs' replications (``replicate`` once per run, the same sets, pools and references) as one curve
    per set or pool (``scope``: ``sets`` or ``pools``): what each run's false triggers buy over each reference.

    Why: a gate held to fewer false triggers repairs fewer broken answers. Issue 12 bounds false triggers at 5%;
    this shows how much of a run's lead over static compression at equal memory survives as the gate narrows.

    Returns
    -------
    dict
        name -> one point per run, sorted by false triggers: ``run``, ``false_trigger_rate``, ``accuracy``,
        ``mean_kv_fraction``, ``bounds_ok`` (every bound held) and, per reference, ``diff``, ``ci`` and ``p``.
    """
    if not results:
        raise HazardError("replication: no runs to draw a trade-off from")
    curves: dict[str, list[dict]] = {}
    for name in results[0][scope]:
        points = []
        for res in results:
            s = res[scope][name]
            points.append({"run": res["run"], **{k: s["run"][k] for k in NAMES},
                           "bounds_ok": all(b["ok"] for b in s["bounds"].values()),
                           "against": {lab: {k: d[k] for k in ("diff", "ci", "p", "rates", "mixes") if k in d}
                                       for lab, d in s["against"].items()}})
        curves[name] = sorted(points, key=lambda p: p["false_trigger_rate"])
    return curves


def format_tradeoff(curves: dict[str, list[dict]], kind: str = "pool") -> str:
    """One table per set or pool: each run's false triggers, accuracy and KV, then its lead over each reference
    (over matched coins, with the coin rate each set's comparison used)."""
    lines = []
    for name, points in curves.items():
        refs = list(points[0]["against"])
        w = max(len(p["run"]) for p in points)
        lines.append(f"\n{kind} {name}: false triggers, accuracy @ KV, bounds, then the difference from each of "
                     f"{', '.join(refs)} [95% interval] p")
        for p in points:
            diffs = "  ".join(f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] p={d['p']:.2g}"
                              + (f" (coins {'/'.join(r.removeprefix('random:') for r in d['rates'])})"
                                 if MATCHED in lab else "")
                              for lab, d in p["against"].items())
            lines.append(f"  {p['run']:{w}}  {p['false_trigger_rate']:6.1%}  {p['accuracy']:.3f} @ "
                         f"{p['mean_kv_fraction']:.3f}  {'met   ' if p['bounds_ok'] else 'missed'}  {diffs}")
    return "\n".join(lines)
