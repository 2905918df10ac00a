"""Point of no return on a GPU (issue 11, part 2): for failing runs of each press setting, restore the
evicted KV after t generated tokens (t on a grid) and see whether the run still ends healthy.

    source gpu/setup.sh q15
    python3 collect/ponr.py --model.path /tmp/q15 --model.name qwen2.5-coder-1.5b-instruct \
        --gsm8k .data/gsm8k --out collect/results/ponr_q15.json
    python3 collect/ponr.py --config configs/ponr/ponr_q15.yaml     # the head's traces (STEPS=ponr)

Resumes per press setting (settings already in ``--out`` are skipped). Writes every failing run's curve
(``hazard.ponr.point_of_no_return``) and, per setting, the distribution (``summarize_ponr``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hazard import SCHEMA_VERSION
from hazard.cli import build, parse_args
from hazard.collect import _git_sha, hardware, shard_name
from hazard.compression import PressSpec
from hazard.engine import Engine
from hazard.models import ModelConfig, end_token_ids, load_model
from hazard.ponr import GRID, point_of_no_return, summarize_ponr
from hazard.tasks import build_task
from hazard.traces import write_json, write_shard


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
    traces_dir : str, optional
        Also write the uncompressed and static runs as a trace collection there (shards, manifest) and
        ``ponr.json`` (``trace_id -> point of no return``, -1 where no restore saved the run): train with
        ``data.onsets_from: <traces_dir>/ponr.json`` to forecast the point of no return.
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
    traces_dir: str | None = None


def run(cfg: PonrConfig) -> dict:
    out = Path(cfg.out)
    data = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    done = {(r["press"], r["ratio"]) for r in data["rows"]} | set(map(tuple, data.get("settings_done", [])))
    model, tok = load_model(cfg.model)
    engine = Engine(model, end_token_ids(tok, model), cfg.max_new_tokens, cfg.batch_size, tuple(cfg.probe_layers))
    prompts = build_task("gsm8k", path=cfg.gsm8k, split="test", start=cfg.start, limit=cfg.limit, k_shot=3,
                         seed=0).prompts()
    meta = {"schema_version": SCHEMA_VERSION, "model": cfg.model.label(), "task": "gsm8k", "seed": 0,
            "max_new_tokens": cfg.max_new_tokens}
    refs = None  # the uncompressed runs, generated once for every setting of this call
    for name, ratio in cfg.presses:
        if (name, ratio) in done:
            continue
        spec = PressSpec(name, ratio)
        kept: dict = {}
        rows = point_of_no_return(engine, tok, prompts, spec, meta, tuple(cfg.grid), cfg.max_failing, traces=kept,
                                  refs=refs)
        refs = kept["none"]
        if cfg.traces_dir:
            write_traces(Path(cfg.traces_dir), kept, rows, cfg, spec)
        data["rows"] += rows
        data.setdefault("settings_done", []).append([name, ratio])
        data.update({"description": __doc__.split("\n\n")[0], "model": cfg.model.label(), "hardware": hardware(),
                     "git_sha": _git_sha(), "grid": cfg.grid, "max_new_tokens": cfg.max_new_tokens,
                     "prompts": f"GSM8K test {cfg.start + 1}-{cfg.start + cfg.limit}, 3-shot, seed-0 exemplars",
                     "summary": summarize_ponr(data["rows"])})
        write_json(out, data)
        print(name, ratio, data["summary"].get(f"{name}@{ratio:g}"), flush=True)
    return data


def write_traces(root: Path, kept: dict, rows: list[dict], cfg: PonrConfig, spec: PressSpec) -> None:
    """The setting's runs as shards of a collection (the uncompressed twin once), and its points of no
    return added to ``ponr.json``; the shard is written before the map that points into it."""
    write_json(root / "manifest.json", {"schema_version": SCHEMA_VERSION, "written_by": "collect/ponr.py",
                                        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
                                        "git_sha": _git_sha(), "hardware": hardware()})
    for s in (PressSpec("none"), spec):
        path = root / "data" / shard_name("gsm8k", 0, s)
        if not path.exists():
            write_shard(kept[s.label], path)
    ponr_path = root / "ponr.json"
    ponr = json.loads(ponr_path.read_text()) if ponr_path.is_file() else {}
    ponr.update({r["trace_id"]: r["point_of_no_return"] for r in rows})
    write_json(ponr_path, ponr)


if __name__ == "__main__":
    run(build(PonrConfig, parse_args(sys.argv[1:])))
