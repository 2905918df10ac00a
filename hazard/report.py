"""Closed-loop figures and tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from hazard.frontiers import mix_level

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto_plot(rows: list[dict], out: Path) -> None:
    """Accuracy vs mean KV fraction: a curve per policy across base settings, per task."""
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = [r for r in rows if r["task"] == task]
        for policy in sorted({r["policy"] for r in sub}):
            pts = sorted((r["mean_kv_fraction"], r["accuracy"]) for r in sub if r["policy"] == policy)
            style = {"static": dict(color="black", lw=2), "full": dict(color="gray", marker="*", ms=12, ls="")}
            ax.plot(*zip(*pts), **{"marker": "o", "label": policy, **style.get(policy, {})})
        ax.set(xlabel="mean GPU KV held / uncompressed", ylabel="accuracy", title=task, xlim=(0, 1.05))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def frontier_plot(key: str, fr: dict, out: Path, xlim: tuple[float, float] = (0, 1.05), note: str = "") -> None:
    """Accuracy and catastrophe rate against mean GPU KV, one staircase per family (static presses grey,
    controllers in colour, the uncompressed run a star, the static mix dotted); ``xlim`` zooms on a memory
    range (the uncompressed level stays as a line), ``note`` goes into the titles."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    greys = iter(["0.15", "0.45", "0.65", "0.8"])
    for fam, f in fr["families"].items():
        if fam in ("full", "static"):
            continue
        pts = f["points"]
        style = dict(color=next(greys, "0.5"), ls="--", marker=".") if fam.startswith("static:") else dict(marker="o")
        stair = f["staircase"]
        axes[0].step([p["kv"] for p in stair], [p["accuracy"] for p in stair], where="post", label=fam, **style)
        axes[0].scatter([p["kv"] for p in pts], [p["accuracy"] for p in pts], s=10,
                        color=axes[0].lines[-1].get_color(), alpha=0.5)
        axes[1].scatter([p["kv"] for p in pts], [p["catastrophe_rate"] for p in pts], label=fam, s=18,
                        color=axes[0].lines[-1].get_color(), marker="." if fam.startswith("static:") else "o")
    unc = fr.get("uncompressed")
    mix = fr["families"].get("static", {}).get("points", []) + ([unc] if unc else [])
    if mix:  # what a per-row mix of two static settings reaches (hazard.frontiers.mix_level)
        xs = np.linspace(min(p["kv"] for p in mix), max(1.0, max(p["kv"] for p in mix)), 300)
        axes[0].plot(xs, [mix_level(mix, x) for x in xs], color="k", lw=0.8, ls=":", label="static mix")
    for ax, y in zip(axes, ("accuracy", "catastrophe_rate")):
        if unc:
            ax.plot([unc["kv"]], [unc[y]], marker="*", ms=14, color="gold", mec="k", ls="", label="uncompressed")
            ax.axhline(unc[y], color="gold", lw=0.8)
        ax.set(xlabel="mean GPU KV held / uncompressed", ylabel=y.replace("_", " "), xlim=xlim)
    axes[0].set_title(f"{key}: best accuracy at <= KV (staircase){note}", fontsize=9)
    axes[1].set_title(f"{key}: loops or non-terminations, every run{note}", fontsize=9)
    axes[0].legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def knob_text(knob: dict) -> str:
    """``k=v,...``; a path shows its last two parts (a gate's folder and rate), not its common prefix."""
    def short(v):
        if isinstance(v, float):
            return f"{v:g}"
        return "/".join(str(v).rstrip("/").split("/")[-2:]) if isinstance(v, str) and "/" in v else str(v)
    return ",".join(f"{k}={short(v)}" for k, v in knob.items())


def format_closed_loop(result: dict) -> str:
    from hazard.frontiers import format_matched

    w = min(max([36] + [len(knob_text(r.get("knob", {}))) for r in result["rows"]]), 64)  # the knob column
    head = (f"{'task':13} {'base':24} {'policy':13} {'knob':{w}} {'n':>4} {'acc':>5} {'catas':>5} {'recov':>6} "
            f"{'meanKV':>6} {'peakKV':>6} {'falseTrig':>9} {'falseRep':>8} {'wasted':>6} {'s':>6}")
    lines = [f"closed loop: {result['model']} on {result['hardware']}", head]
    for r in result["rows"]:
        rec = "   n/a" if r["recovered_fraction"] is None else f"{r['recovered_fraction']:6.2f}"
        knob = knob_text(r.get("knob", {}))
        rep = f"{r['false_repair_rate']:8.2f}" if "false_repair_rate" in r else "     n/a"  # rows before it existed
        lines.append(f"{r['task']:13} {r['base_press'] + '@' + format(r['base_ratio'], 'g'):24} {r['policy']:13} "
                     f"{knob[:w]:{w}} {r['n']:4d} {r['accuracy']:5.2f} {r['catastrophe_rate']:5.2f} {rec} "
                     f"{r['mean_kv_fraction']:6.2f} {r['peak_kv_fraction']:6.2f} {r['false_trigger_rate']:9.2f} {rep} "
                     f"{r['rollback_tokens_per_trace']:6.1f} {r['seconds']:6.1f}")
    if result.get("frontiers"):
        lines += ["", format_matched(result["frontiers"])]
    if result.get("paired"):
        from hazard.paired import format_paired

        lines += ["", format_paired(result["paired"])]
    if result.get("coins"):
        from hazard.paired import format_coins

        lines += ["", format_coins(result["coins"])]
    return "\n".join(lines)


def tradeoff_plot(curves: dict[str, list[dict]], out: Path, max_false: float | None = None) -> None:
    """A run's lead over each reference (95% interval) against its false-trigger rate, one panel per pool or set
    (``hazard.replication.tradeoff``); the false-trigger bound dashed."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (name, points) in zip(axes[0], curves.items()):
        x = np.array([p["false_trigger_rate"] for p in points])
        for i, ref in enumerate(points[0]["against"]):
            d = np.array([p["against"][ref]["diff"] for p in points])
            ci = np.array([p["against"][ref]["ci"] for p in points])
            ax.errorbar(x + 0.003 * i, d, yerr=[d - ci[:, 0], ci[:, 1] - d], marker="o", capsize=3, label=f"vs {ref}")
        ax.axhline(0, color="k", lw=0.8)
        if max_false is not None:
            ax.axvline(max_false, color="r", ls="--", lw=0.8, label=f"false-trigger bound {max_false:g}")
        ax.set(xlabel="false triggers (share of healthy rows acted on)", ylabel="accuracy difference", title=name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
