"""Closed-loop figures and tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

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


def format_closed_loop(result: dict) -> str:
    head = (f"{'task':13} {'base':18} {'policy':13} {'n':>4} {'acc':>5} {'catas':>5} {'recov':>6} "
            f"{'meanKV':>6} {'peakKV':>6} {'falseTrig':>9} {'ctl ms/step':>11}")
    lines = [f"closed loop: {result['model']} on {result['hardware']}", head]
    for r in result["rows"]:
        rec = "   n/a" if r["recovered_fraction"] is None else f"{r['recovered_fraction']:6.2f}"
        lines.append(f"{r['task']:13} {r['base_press'] + '@' + format(r['base_ratio'], 'g'):18} {r['policy']:13} "
                     f"{r['n']:4d} {r['accuracy']:5.2f} {r['catastrophe_rate']:5.2f} {rec} "
                     f"{r['mean_kv_fraction']:6.2f} {r['peak_kv_fraction']:6.2f} {r['false_trigger_rate']:9.2f} "
                     f"{r['overhead']:11.3f}")
    return "\n".join(lines)
