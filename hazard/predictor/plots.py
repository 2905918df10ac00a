"""Train-stage figures: PR curves on test, lead-time histogram, hazard timelines of a few test traces."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402


def plot_report(test, curves: dict, metrics: dict, h: int, out: Path) -> None:
    y = np.concatenate([t.y[t.valid, h] for t in test])
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, scores in curves.items():
        s = np.concatenate([sc[t.valid] for t, sc in zip(test, scores)])
        if 0 < y.sum() < len(y):
            p, r, _ = precision_recall_curve(y, s)
            ax.plot(r, p, label=name)
    ax.set(xlabel="recall", ylabel="precision", title=f"pre-onset tokens, horizon {metrics['data']['horizon_tokens']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    leads = metrics["model"]["test"]["lead_times"]
    ax.hist(leads, bins=20)
    ax.set(xlabel="tokens from first alarm to onset", ylabel="catastrophic test traces",
           title=f"lead time ({len(leads)} flagged before onset)")
    fig.tight_layout()
    fig.savefig(out / "lead_times.png", dpi=120)
    plt.close(fig)

    cat = [i for i, t in enumerate(test) if t.catastrophe][:3]
    ok = [i for i, t in enumerate(test) if not t.catastrophe][:1]
    fig, axes = plt.subplots(len(cat + ok), 1, figsize=(7, 1.8 * max(len(cat + ok), 1)), squeeze=False)
    thr = metrics["model"]["test"]["threshold"]
    for ax, i in zip(axes[:, 0], cat + ok):
        t = test[i]
        ax.plot(curves["model"][i], label="hazard")
        ax.axhline(thr, color="gray", ls=":", lw=1)
        if t.onset >= 0:
            ax.axvline(t.onset, color="red", lw=1, label="onset")
        ax.set_title(f"{t.press}@{t.ratio:g} {t.prompt_id}", fontsize=8)
        ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("generated token")
    fig.tight_layout()
    fig.savefig(out / "hazard_timelines.png", dpi=120)
    plt.close(fig)
