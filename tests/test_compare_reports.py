"""train/compare_reports.py: the main fit against its ablations, per split seed and on average."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))

from compare_reports import main  # noqa: E402


def _entry(pre, w16, knorm):
    per = {"pre_onset_auroc": pre, "false_alarm_rate": 0.05, "detect_rate_lead8": 0.1, "detect_rate_within4": 0.2,
           "detect_rate_within16": w16, "detect_rate_within32": w16 + 0.1,
           "by_type": {"loop": {"detect_rate_within16": w16}}}
    return {"test": {"pre_onset_auroc": pre, "n_catastrophes": 40,
                     "by_press": {"knorm@0.875": {"pre_onset_auroc": knorm}}}, "test_per_setting": per}


def _write(tmp_path, seed, model, live):
    p = tmp_path / f"s{seed}.json"
    p.write_text(json.dumps({"config": {"data": {"seed": seed}}, "model": model, "ablation": {"live": live}}))
    return p


def test_means_and_the_main_fits_lead_over_each_ablation(tmp_path, capsys):
    paths = [_write(tmp_path, 0, _entry(0.8, 0.4, 0.7), _entry(0.8, 0.2, 0.6)),
             _write(tmp_path, 1, _entry(0.9, 0.2, 0.8), _entry(0.7, 0.3, 0.6))]
    out = tmp_path / "cmp.json"
    assert main([*map(str, paths), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert abs(res["mean"]["model"]["detect_rate_within16"] - 0.3) < 1e-9
    assert abs(res["model_minus"]["ablation:live"]["detect_rate_within16"] - 0.05) < 1e-9
    assert abs(res["model_minus"]["ablation:live"]["pre_onset_auroc:knorm@0.875"] - 0.15) < 1e-9
    assert "model - ablation:live" in capsys.readouterr().out


def test_a_report_without_per_setting_figures_is_one_clear_line(tmp_path, capsys):
    old = _entry(0.8, 0.4, 0.7)
    del old["test_per_setting"]
    p = _write(tmp_path, 0, old, old)
    assert main([str(p), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test_per_setting" in err[0] and not (tmp_path / "x.json").exists()


def test_another_configs_reports_join_their_seeds_rows(tmp_path, capsys):
    """``--against``: another config's main fit on the same split seed joins that seed's row; a seed it lacks is
    one clear line."""
    paths = [_write(tmp_path, 0, _entry(0.8, 0.4, 0.7), _entry(0.8, 0.2, 0.6)),
             _write(tmp_path, 1, _entry(0.9, 0.2, 0.8), _entry(0.7, 0.3, 0.6))]
    other = tmp_path / "other"
    other.mkdir()
    vs = [_write(other, 1, _entry(0.7, 0.1, 0.5), _entry(0.7, 0.1, 0.5)),
          _write(other, 0, _entry(0.7, 0.3, 0.5), _entry(0.7, 0.1, 0.5))]
    out = tmp_path / "cmp.json"
    assert main([*map(str, paths), "--out", str(out), "--against", *map(str, vs), "--label", "narrow"]) == 0
    res = json.loads(out.read_text())
    assert abs(res["model_minus"]["vs:narrow"]["detect_rate_within16"] - 0.1) < 1e-9  # (0.1 + 0.1) / 2
    assert "model - vs:narrow" in capsys.readouterr().out
    assert main([*map(str, paths), "--out", str(out), "--against", str(vs[0])]) == 2
    assert "split seed 0" in capsys.readouterr().err


def test_baselines_and_the_cycle_rule_beside_a_predictor_join_on_request(tmp_path, capsys):
    """``--baselines``: the report's baselines and its ``or_cycle_rule`` entries are predictors too; a baseline
    without per-setting figures is left out, not an error."""
    paths = []
    for seed, w in ((0, 0.2), (1, 0.4)):
        p = tmp_path / f"s{seed}.json"
        one = _entry(0.8, 0.3, 0.7)
        del one["test_per_setting"]
        p.write_text(json.dumps({"config": {"data": {"seed": seed}}, "model": _entry(0.8, 0.3, 0.7),
                                 "baselines": {"cycle_rule": _entry(0.6, w, 0.5), "single_setting": one},
                                 "or_cycle_rule": {"model": _entry(0.8, w + 0.1, 0.7)}}))
        paths.append(p)
    out = tmp_path / "cmp.json"
    assert main([*map(str, paths), "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["mean"]) == {"model"}  # not asked for
    assert main([*map(str, paths), "--out", str(out), "--baselines"]) == 0
    res = json.loads(out.read_text())
    assert set(res["mean"]) == {"model", "baseline:cycle_rule", "or_cycle:model"}
    assert abs(res["mean"]["or_cycle:model"]["loop:detect_rate_within16"] - 0.4) < 1e-9
    assert abs(res["model_minus"]["baseline:cycle_rule"]["detect_rate_within16"] - 0.0) < 1e-9
    assert "| mean | or_cycle:model |" in capsys.readouterr().out
