"""Every committed config parses and names things that exist, so a typo fails here, not on a GPU."""

from pathlib import Path

import pytest

from hazard.cli import build
from hazard.collect import CollectConfig, validate
from hazard.evaluate import EvaluateConfig, check_config, check_guard_features
from hazard.predictor.features import feature_names
from hazard.predictor.nets import NETS
from hazard.predictor.train import REPORT_KEYS
from hazard.yaml_config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs/collect").glob("*.yaml")), ids=lambda p: p.stem)
def test_collect_configs_build(path):
    tasks, specs = validate(build(CollectConfig, load_config(path)))
    assert tasks and specs[0].name == "none"


@pytest.mark.parametrize("path", sorted((ROOT / "configs/evaluate").glob("*.yaml")), ids=lambda p: p.stem)
def test_evaluate_configs_build(path):
    cfg = build(EvaluateConfig, load_config(path))
    check_config(cfg)  # policies, knobs and presses
    if cfg.guard and (ROOT / cfg.guard).is_dir():  # a committed guard: its features are ones the loop produces
        from hazard.guard import HazardGuard

        check_guard_features(HazardGuard.from_pretrained(ROOT / cfg.guard), cfg.guard)


@pytest.mark.parametrize("path", sorted((ROOT / "configs/train").glob("*.yaml")), ids=lambda p: p.stem)
def test_train_configs_name_known_things(path):
    cfg = load_config(path)
    assert set(cfg) <= {"data", "model", "trainer", "report", "seed_everything"}
    assert feature_names(cfg["data"]["feature_set"]) and cfg["model"].get("net", "gru") in NETS
    rep = cfg.get("report", {})
    assert set(rep.get("architectures", [])) <= set(NETS) and all(map(feature_names, rep.get("feature_sets", [])))
    assert set(rep) <= REPORT_KEYS, set(rep) - REPORT_KEYS


@pytest.mark.parametrize("model", ["q05", "q15"])
def test_a_campaign_part_is_its_own_problems_and_seeds(model, tmp_path):
    """collect/gpu_campaign.sh's PART=k overrides select GSM8K problems 20k+1..20k+20 and seed k."""
    from hazard.cli import parse_args

    k = 3
    argv = ["--config", str(ROOT / f"configs/collect/campaign_{model}.yaml"), "--output_dir", str(tmp_path / "p3"),
            "--tasks.0.options.start", str(20 * k), "--tasks.0.options.limit", "20",
            "--tasks.1.options.seed", str(k), "--tasks.2.options.seed", str(k)]
    cfg = build(CollectConfig, parse_args(argv))
    gsm, kv, var = cfg.tasks
    assert (gsm.name, kv.name, var.name) == ("gsm8k", "kv_retrieval", "var_tracking")
    assert gsm.options["start"] == 60 and gsm.options["limit"] == 20 and kv.options["seed"] == var.options["seed"] == 3
    script = (ROOT / "collect/gpu_campaign.sh").read_text()
    assert "--tasks.0.options.start $((20 * PART)) --tasks.0.options.limit 20" in script
    assert '--tasks.1.options.seed "$PART" --tasks.2.options.seed "$PART"' in script


def test_the_second_problems_collection_is_the_next_2000_problems():
    """collect/gpu_problems.sh STEP=more collects GSM8K problems 2001-4000 into a folder of its own, disjoint
    from STEP=collect1's problems 1-2000 (the same config without overrides)."""
    import re
    import shlex

    from hazard.cli import parse_args

    script = (ROOT / "collect/gpu_problems.sh").read_text()
    extra = shlex.split(re.search(r'COLLECT_ARGS="([^"]+)"', script).group(1))
    base = ["--config", str(ROOT / "configs/collect/scaling_q15.yaml")]
    first, second = (build(CollectConfig, parse_args(base + a)) for a in ([], extra))
    (g1,), (g2,) = first.tasks, second.tasks
    assert (g1.options["start"], g1.options["limit"]) == (0, 2000)
    assert (g2.options["start"], g2.options["limit"]) == (2000, 2000)
    assert second.output_dir != first.output_dir and second.output_dir.endswith("scale2")


@pytest.mark.parametrize("path", sorted((ROOT / "configs/ponr").glob("*.yaml")), ids=lambda p: p.stem)
def test_ponr_probe_configs_name_known_presses(path):
    import sys

    from hazard.compression import PressSpec, build_press

    sys.path.insert(0, str(ROOT / "collect"))
    import ponr as script

    cfg = build(script.PonrConfig, load_config(path))
    assert all(build_press(PressSpec(name, ratio)) is not None for name, ratio in cfg.presses)
    assert cfg.grid == sorted(cfg.grid) and cfg.traces_dir
