"""Every committed config parses and names things that exist, so a typo fails here, not on a GPU."""

from pathlib import Path

import pytest
import yaml

from hazard.cli import build
from hazard.collect import CollectConfig, validate
from hazard.evaluate import EvaluateConfig
from hazard.predictor.features import FEATURE_SETS
from hazard.predictor.nets import NETS
from hazard.predictor.train import REPORT_KEYS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs/collect").glob("*.yaml")), ids=lambda p: p.stem)
def test_collect_configs_build(path):
    tasks, specs = validate(build(CollectConfig, yaml.safe_load(path.read_text())))
    assert tasks and specs[0].name == "none"


@pytest.mark.parametrize("path", sorted((ROOT / "configs/evaluate").glob("*.yaml")), ids=lambda p: p.stem)
def test_evaluate_configs_build(path):
    build(EvaluateConfig, yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", sorted((ROOT / "configs/train").glob("*.yaml")), ids=lambda p: p.stem)
def test_train_configs_name_known_things(path):
    cfg = yaml.safe_load(path.read_text())
    assert set(cfg) <= {"data", "model", "trainer", "report", "seed_everything"}
    assert cfg["data"]["feature_set"] in FEATURE_SETS and cfg["model"].get("net", "gru") in NETS
    rep = cfg.get("report", {})
    assert set(rep.get("architectures", [])) <= set(NETS) and set(rep.get("feature_sets", [])) <= set(FEATURE_SETS)
    assert set(rep) <= REPORT_KEYS, set(rep) - REPORT_KEYS
