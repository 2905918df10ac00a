"""Point of no return on a GPU (issue 11, part 2): for failing runs of each press setting, restore the
evicted KV after t generated tokens (t on a grid) and see whether the run still ends healthy.

    source gpu/setup.sh q15
    python3 collect/ponr.py --model.path /tmp/q15 --model.name qwen2.5-coder-1.5b-instruct \
        --gsm8k .data/gsm8k --out collect/results/ponr_q15.json

Resumes per press setting (settings already in ``--out`` are skipped). Writes every failing run's curve
(``hazard.ponr.point_of_no_return``) and, per setting, the distribution (``summarize_ponr``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hazard.cli import build, parse_args
from hazard.collect import _git_sha, hardware
from hazard.compression import PressSpec
from hazard.engine import Engine
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.ponr import GRID, point_of_no_return, summarize_ponr
from hazard.tasks import build_task
from hazard.traces import write_json


@dataclass
class PonrConfig:
    """Parameters
    ----------
    model : ModelConfig
    gsm8k : str
        GSM8K folder.
    start, limit : int
        Test problems used.
    presses : list of [name, ratio]
    grid : list of int
        Restore after this many generated tokens.
    max_failing : int
        Failing runs sampled per setting (seeded).
    max_new_tokens, batch_size : int
    probe_layers : list of int
    out : str
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    gsm8k: str = ".data/gsm8k"
    start: int = 0
    limit: int = 512
    presses: list[tuple[str, float]] = field(default_factory=lambda: [("snapkv", 0.875), ("knorm", 0.875),
                                                                     ("streaming_llm", 0.875), ("snapkv", 0.75)])
    grid: list[int] = field(default_factory=lambda: list(GRID))
    max_failing: int = 100
    max_new_tokens: int = 512
    batch_size: int = 256
    probe_layers: list[int] = field(default_factory=lambda: [0, -1])
    out: str = "collect/results/ponr.json"


def run(cfg: PonrConfig) -> dict:
    out = Path(cfg.out)
    data = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    done = {(r["press"], r["ratio"]) for r in data["rows"]} | set(map(tuple, data.get("settings_done", [])))
    model, tok = load_model(cfg.model)
    engine = Engine(model, end_token_ids(tok, model), cfg.max_new_tokens, cfg.batch_size, tuple(cfg.probe_layers))
    prompts = build_task("gsm8k", path=cfg.gsm8k, split="test", start=cfg.start, limit=cfg.limit, k_shot=3,
                         seed=0).prompts()
    meta = {"model": cfg.model.label(), "task": "gsm8k", "seed": 0, "max_new_tokens": cfg.max_new_tokens}
    for name, ratio in cfg.presses:
        if (name, ratio) in done:
            continue
        rows = point_of_no_return(engine, tok, prompts, PressSpec(name, ratio), meta, tuple(cfg.grid),
                                  cfg.max_failing)
        data["rows"] += rows
        data.setdefault("settings_done", []).append([name, ratio])
        data.update({"description": __doc__.split("\n\n")[0], "model": cfg.model.label(), "hardware": hardware(),
                     "git_sha": _git_sha(), "grid": cfg.grid, "max_new_tokens": cfg.max_new_tokens,
                     "prompts": f"GSM8K test {cfg.start + 1}-{cfg.start + cfg.limit}, 3-shot, seed-0 exemplars",
                     "summary": summarize_ponr(data["rows"])})
        write_json(out, data)
        print(name, ratio, data["summary"].get(f"{name}@{ratio:g}"), flush=True)
    return data


if __name__ == "__main__":
    run(build(PonrConfig, parse_args(sys.argv[1:])))
