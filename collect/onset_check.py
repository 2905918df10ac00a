"""Sample catastrophes per onset rule for a hand check: where each rule puts the onset, with the text
around it, so a reader can say whether that is where the failure begins.

    python collect/onset_check.py --traces /tmp/traces/q15_onsets --tokenizer /tmp/q15 \
        --out collect/results/onset_check.json

For every onset source (loop, off_topic, stall, answered, off_task, claim, unknown) up to ``per_source`` compressed
catastrophes are drawn at random (seeded); each entry holds the prompt id, press and ratio, the onset and
its source, the other rules' onsets and the divergence from the twin, the text of the ``context`` tokens
before the onset and after it (the onset token starts the second part), and the whole generated text.
The hand verdicts go into ``collect/results/onset_check.md`` (agree yes/no per entry).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from transformers import AutoTokenizer

from hazard.cli import build, parse_args
from hazard.traces import load_traces, write_json

SOURCES = ("loop", "off_topic", "stall", "answered", "off_task", "claim", "unknown")


@dataclass
class OnsetCheckConfig:
    """Parameters
    ----------
    traces : str
        A collection folder (the current trace schema).
    tokenizer : str
        The model folder (its tokenizer decodes the snippets).
    per_source : int
        Entries drawn per onset source.
    context : int
        Tokens shown on each side of the onset.
    seed : int
    out : str
    """

    traces: str = ""
    tokenizer: str = ""
    per_source: int = 40
    context: int = 24
    seed: int = 0
    out: str = "collect/results/onset_check.json"


def run(cfg: OnsetCheckConfig) -> dict:
    tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    cols = ["trace_id", "prompt_id", "press", "ratio", "tokens", "text", "catastrophe", "onset", "onset_source",
            "loop_onset", "stall_onset", "answered_at", "claim_onset", "off_topic_at", "off_task_at", "divergence",
            "nonterm", "correct", "gold",
            "answer", "n_tokens"]
    ds = load_traces(cfg.traces).select_columns(cols)
    rows = [r for r in ds if r["catastrophe"] and r["press"] != "none"]
    rng = np.random.default_rng(cfg.seed)
    counts = {s: sum(r["onset_source"] == s for r in rows) for s in SOURCES}
    entries = []
    for source in SOURCES:
        pool = [r for r in rows if r["onset_source"] == source]
        for i in rng.permutation(len(pool))[: cfg.per_source]:
            r = pool[int(i)]
            t = max(r["onset"], 0)
            entries.append({
                "trace_id": r["trace_id"], "prompt_id": r["prompt_id"], "press": r["press"], "ratio": r["ratio"],
                "source": source, "onset": r["onset"], "n_tokens": r["n_tokens"], "nonterm": r["nonterm"],
                "gold": r["gold"], "answer": r["answer"],
                "rules": {k: r[k] for k in ("loop_onset", "stall_onset", "answered_at", "claim_onset", "off_topic_at",
                                             "off_task_at", "divergence")},
                "before": tok.decode(r["tokens"][max(t - cfg.context, 0): t], skip_special_tokens=True),
                "after": tok.decode(r["tokens"][t: t + cfg.context], skip_special_tokens=True),
                "text": r["text"]})
    out = {"description": __doc__.split("\n\n")[0], "traces": cfg.traces, "seed": cfg.seed,
           "catastrophes_by_source": counts, "compressed_traces": sum(r["press"] != "none" for r in ds),
           "entries": entries}
    write_json(cfg.out, out)
    print(counts)
    return out


if __name__ == "__main__":
    run(build(OnsetCheckConfig, parse_args(sys.argv[1:])))
