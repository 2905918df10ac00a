"""Plot collect/results/throughput.json: generated tokens/s against batch, one panel per model.

    python collect/plot_throughput.py collect/results/throughput.json   # writes throughput.png beside it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(path: Path) -> Path:
    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if "generated_tokens_per_s" in r]
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        for setting in sorted({r["setting"] for r in mine}, key=lambda s: (s.startswith("hf"), s)):
            pts = sorted((r["batch"], r["generated_tokens_per_s"]) for r in mine if r["setting"] == setting)
            style = "--" if setting.startswith("hf") else "-"
            ax.plot(*zip(*pts), style, marker="o", label=setting)
        ax.set(title=f"{model}\n{mine[0]['hardware']}, {mine[0]['max_new_tokens']} new tokens, GSM8K 3-shot",
               xlabel="batch", ylabel="generated tokens/s", xscale="log", yscale="log")
        ax.set_xticks(sorted({r["batch"] for r in mine}), [str(b) for b in sorted({r["batch"] for r in mine})])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(plot(Path(sys.argv[1] if len(sys.argv) > 1 else "collect/results/throughput.json")))
