"""Bad input ends in one clear line on stderr (exit 2), never a traceback."""

import json

import pytest

from hazard import SCHEMA_VERSION
from hazard.cli import main
from hazard.errors import HazardError
from hazard.traces import load_traces

BASE = ["--model.tiny", "qwen2", "--model.device", "cpu", "--max_new_tokens", "4"]


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("hazard: error:"), err
    return err


def test_missing_config_file(capsys, tmp_path):
    assert "does not exist" in _err(capsys, ["collect", "--config", str(tmp_path / "nope.yaml")])


def test_config_with_a_key_given_twice(capsys, tmp_path):
    # PyYAML would keep the second silently; a pasted line above the real one must not change a run unseen
    cfg = tmp_path / "twice.yaml"
    cfg.write_text("policies: [static]\npolicy_options:\nmax_new_tokens: 8\npolicy_options: {}\n")
    err = _err(capsys, ["evaluate", "--config", str(cfg)])
    assert "'policy_options' appears twice" in err and "line 4" in err
    nested = tmp_path / "nested.yaml"
    nested.write_text("policy_options:\n  answer_check: {tau: 0.2, tau: 0.3}\n")
    assert "'tau' appears twice" in _err(capsys, ["evaluate", "--config", str(nested)])
    assert "appears twice" in _err(capsys, ["train", "report", "--config", str(cfg)])


def test_unknown_task(capsys, tmp_path):
    err = _err(capsys, ["collect", "--output_dir", str(tmp_path), "--tasks", "[{name: mmlu}]", *BASE])
    assert "unknown task 'mmlu'" in err and "gsm8k" in err


def test_unknown_press(capsys, tmp_path):
    err = _err(capsys, ["collect", "--output_dir", str(tmp_path), "--tasks", "[{name: kv_retrieval}]",
                        "--presses", "[{name: h2o, ratio: 0.5}]", *BASE])
    assert "unknown press 'h2o'" in err and "snapkv" in err


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval(capsys, tmp_path, ratio):
    err = _err(capsys, ["collect", "--output_dir", str(tmp_path), "--tasks", "[{name: kv_retrieval}]",
                        "--presses", f"[{{name: snapkv, ratio: {ratio}}}]", *BASE])
    assert "ratio must be in [0, 1)" in err


def test_missing_gsm8k_file(capsys, tmp_path):
    err = _err(capsys, ["collect", "--output_dir", str(tmp_path / "o"),
                        "--tasks", f"[{{name: gsm8k, options: {{path: {tmp_path / 'none'}}}}}]", *BASE])
    assert "does not exist" in err


def test_unknown_config_key_and_verb(capsys, tmp_path):
    assert "unknown key(s) ['max_tokens']" in _err(capsys, ["collect", "--max_tokens", "3", *BASE])
    assert "unknown verb" in _err(capsys, ["fit"])
    assert "unknown policy 'pid'" in _err(capsys, ["evaluate", "--policies", "[pid]"])
    assert "usage: hazard train fit" in _err(capsys, ["train"])
    assert "does not exist" in _err(capsys, ["train", "report", "--config", "nope.yaml"])
    assert "does not exist" in _err(capsys, ["export", "--ckpt", "nope.ckpt", "--out", "x"])


def test_missing_model_dir(capsys, tmp_path):
    err = _err(capsys, ["collect", "--output_dir", str(tmp_path / "o"), "--tasks", "[{name: kv_retrieval}]",
                        "--model.path", str(tmp_path / "no-model")])
    assert "model.path" in err and "does not exist" in err


def test_wrong_schema_version(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(HazardError, match="schema version"):
        load_traces(tmp_path)
    with pytest.raises(HazardError, match="does not exist"):
        load_traces(tmp_path / "missing")


def test_overrides_reach_nested_keys_and_list_items(tmp_path):
    from hazard.cli import parse_args

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("tasks:\n  - {name: gsm8k, options: {limit: 3}}\nmodel: {dtype: float32}\n")
    cfg = parse_args(["--config", str(cfg_file), "--tasks.0.options.limit", "7", "--model.dtype=bfloat16",
                      "--presses", "[{name: snapkv, ratios: [0.5, 0.75]}]"])
    assert cfg["tasks"][0]["options"]["limit"] == 7 and cfg["model"]["dtype"] == "bfloat16"
    with pytest.raises(HazardError, match="not an index"):
        parse_args(["--config", str(cfg_file), "--tasks.3.name", "x"])


def test_unknown_train_report_key(capsys, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("data: {traces: [x], feature_set: logit}\nmodel: {net: gru}\nreport: {held_out_formats: [k8*]}\n")
    err = _err(capsys, ["train", "report", "--config", str(cfg)])
    assert "unknown report key(s) ['held_out_formats']" in err and "held_out_format" in err
