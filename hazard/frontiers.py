"""Accuracy-memory frontiers of the closed loop: per task, per policy family, the best accuracy reachable at
a mean GPU KV fraction, compared at matched memory and as an area between frontiers.

A family is one policy across its swept knobs and base presses (``hazard`` at every threshold), or one
static press across its ratios (``static:snapkv``); ``static`` pools every static press. The answer check is
three families by what chooses the answers it repairs: a learned gate (``answer_check:gate``, a checkpoint), a
coin (``answer_check:coin``, ``random:<rate>``) or nothing learned (``answer_check``: every changed answer, or
with ``random:0`` only the escalated ones), so a learned choice is compared with chance on the same action.
A family's frontier at memory x is the most accurate of its points whose mean KV fraction is at most x (a
staircase: more memory never hurts, since one can always run the cheaper setting), so "at matched KV 0.25"
reads "the best this family does without holding more than a quarter of the uncompressed KV on average".

A stricter baseline for a controller that relieves some rows and not others: the **static mix**, the upper
concave envelope of the static points and the uncompressed run. Giving a share of the rows one static
setting and the rest another (the engine takes a press per prompt) reaches every point on the segment
between them, so a learned policy that only lands on such a segment has learned nothing a coin flip per row
would not do.
"""

from __future__ import annotations

import numpy as np

LEARNED = "hazard"


def task_key(row: dict) -> str:
    return row["task"] if row.get("format", "default") == "default" else f"{row['task']}.{row['format']}"


def family(row: dict) -> str:
    if row["policy"] == "static":
        return f"static:{row['base_press']}"
    if row["policy"] == "answer_check":
        from hazard.paired import coin_rate  # here: hazard.paired imports this module

        coin = coin_rate(row)
        if coin is not None:
            return "answer_check" if coin == "random:0" else "answer_check:coin"
        return "answer_check:gate" if row.get("knob", {}).get("gate") else "answer_check"
    return row["policy"]


def _point(row: dict) -> dict:
    return {"kv": row["mean_kv_fraction"], "accuracy": row["accuracy"], "catastrophe_rate": row["catastrophe_rate"],
            "base": f"{row['base_press']}@{row['base_ratio']:g}", "knob": row.get("knob", {})}


def staircase(points: list[dict]) -> list[dict]:
    """The points no cheaper point beats on accuracy, by mean KV (ties: the cheaper one)."""
    out = []
    for p in sorted(points, key=lambda p: (p["kv"], -p["accuracy"])):
        if not out or p["accuracy"] > out[-1]["accuracy"]:
            out.append(p)
    return out


def best_at(points: list[dict], x: float) -> dict | None:
    """The most accurate point with mean KV <= ``x`` (None if the family never gets that low)."""
    ok = [p for p in points if p["kv"] <= x + 1e-9]
    return max(ok, key=lambda p: (p["accuracy"], -p["kv"])) if ok else None


def best_mix(points: list[dict], x: float) -> tuple[dict, dict, float] | None:
    """The most accurate per-row mix of two of ``points`` with mean KV ``x``: ``(a, b, w)``, a share ``w`` of rows
    at ``b`` and the rest at ``a`` (``b`` is ``a`` and ``w`` 0 where one point at or under ``x`` does best). None
    below the cheapest point's KV, where no mix reaches ``x``."""
    if not points or x < min(p["kv"] for p in points) - 1e-9:
        return None
    one = best_at(points, x)
    best, level = (one, one, 0.0), one["accuracy"]
    for a in points:
        for b in points:
            if a["kv"] <= x < b["kv"]:
                w = (x - a["kv"]) / (b["kv"] - a["kv"])
                if (acc := (1 - w) * a["accuracy"] + w * b["accuracy"]) > level:
                    best, level = (a, b, w), acc
    return best


def mix_level(points: list[dict], x: float) -> float | None:
    """Accuracy of the best per-row mix of two of ``points`` with mean KV ``x`` (their upper concave envelope
    at ``x``; the staircase below the cheapest point's KV is undefined: None)."""
    if (mix := best_mix(points, x)) is None:
        return None
    a, b, w = mix
    return float((1 - w) * a["accuracy"] + w * b["accuracy"])


def area_between(a: list[dict], b: list[dict], grid: int = 2001) -> float | None:
    """Integral over mean KV of (frontier a - frontier b), where both are defined (from the larger of their
    cheapest points to 1); positive where a is more accurate. None when they share no range."""
    if not a or not b:
        return None
    lo = max(min(p["kv"] for p in a), min(p["kv"] for p in b))
    hi = max(1.0, lo)
    if hi <= lo:
        return None
    xs = np.linspace(lo, hi, grid)

    def level(pts):
        return np.array([best_at(pts, x)["accuracy"] for x in xs])

    d = level(a) - level(b)
    return float(((d[1:] + d[:-1]) / 2 * np.diff(xs)).sum())


def frontiers(rows: list[dict], matched_kv: list[float]) -> dict:
    """Per task: each family's points and staircase, the families at each matched KV, and the area between
    the learned (``hazard``) frontier and the best static one."""
    out = {}
    for key in sorted({task_key(r) for r in rows}):
        sub = [r for r in rows if task_key(r) == key]
        fams: dict[str, list[dict]] = {}
        for r in sub:
            fams.setdefault(family(r), []).append(_point(r))
        full = fams.get("full", [])
        fams["static"] = [p for f, pts in fams.items() if f.startswith("static:") for p in pts]
        matched = {}
        for x in matched_kv:
            at = {f: best_at(pts, x) for f, pts in sorted(fams.items()) if f != "full"}
            matched[f"{x:g}"] = {f: p for f, p in at.items() if p is not None}
        out[key] = {
            "uncompressed": full[0] if full else None,
            "families": {f: {"points": sorted(pts, key=lambda p: p["kv"]), "staircase": staircase(pts)}
                         for f, pts in sorted(fams.items()) if pts},
            "matched": matched,
            "area_learned_minus_static": area_between(fams.get(LEARNED, []), fams["static"] + full),
            "learned_vs_static_mix": [{**p, "static_mix": mix_level(fams["static"] + full, p["kv"])}
                                      for p in staircase(fams.get(LEARNED, []))],
            "against_static": {f: _against_static(pts, fams["static"] + full) for f, pts in sorted(fams.items())
                               if f != "full" and not f.startswith("static") and pts},
        }
    return out


def _against_static(pts: list[dict], static: list[dict]) -> dict:
    """One controlled family against the static settings: the area between their frontiers and the staircase
    point that gains most over a per-row mix of static settings at the same KV (None: no mix reaches it)."""
    vs = [{**p, "static_mix": mix_level(static, p["kv"])} for p in staircase(pts)]
    vs = [p for p in vs if p["static_mix"] is not None]
    return {"area_minus_static": area_between(pts, static),
            "best_vs_static_mix": max(vs, key=lambda p: p["accuracy"] - p["static_mix"]) if vs else None}


def format_matched(fr: dict) -> str:
    """One table per task: accuracy / catastrophe rate of each family's best point at each matched KV."""
    lines = []
    for key, t in fr.items():
        unc = t["uncompressed"]
        head = f"frontier {key}" + (f"  (uncompressed: acc {unc['accuracy']:.2f}, catastrophes "
                                    f"{unc['catastrophe_rate']:.2f})" if unc else "")
        xs = list(t["matched"])
        fams = sorted({f for m in t["matched"].values() for f in m})
        w = max([22] + [len(f) + 1 for f in fams])
        lines += [head, f"{'family':{w}}" + "".join(f"{'KV<=' + x:>21}" for x in xs)]
        for f in fams:
            cells = []
            for x in xs:
                p = t["matched"][x].get(f)
                cells.append(f"{'-':>21}" if p is None else f"{p['accuracy']:.3f} / {p['catastrophe_rate']:.3f} "
                                                             f"@{p['kv']:.3f}".rjust(21))
            lines.append(f"{f:{w}}" + "".join(cells))
        if t["area_learned_minus_static"] is not None:
            lines.append(f"area between the hazard and the best static frontier: {t['area_learned_minus_static']:+.4f}")
        for f, a in t.get("against_static", {}).items():
            p = a["best_vs_static_mix"]
            if p is None:
                continue
            area = "" if a["area_minus_static"] is None else f"; area - static {a['area_minus_static']:+.4f}"
            lines.append(f"{f} against a per-row mix of static settings at the same KV, best point: "
                         f"{p['accuracy']:.3f} vs {p['static_mix']:.3f} ({p['accuracy'] - p['static_mix']:+.3f}) "
                         f"@{p['kv']:.3f}{area}")
    return "\n".join(lines)
