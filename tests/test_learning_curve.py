"""train/learning_curve.py reads a report's learning curve: its points in order, skipped ones left out, the main
fit last at the whole train part, and one clear line for a report without a curve."""

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))

from learning_curve import curve, main  # noqa: E402


def _m(auroc, loop=0.9, nonterm=0.5):
    return {"n_traces": 10, "pre_onset_auroc": auroc, "auroc": auroc + 0.05, "detect_rate_lead8": 0.1,
            "detect_rate_within4": 0.6, "false_alarm_rate": 0.05,
            "by_type": {"loop": {"detect_rate_within4": loop}, "nonterm": {"detect_rate_within4": nonterm}}}


def _metrics():
    return {"model": {"net": "gru", "test": _m(0.8)},
            "baselines": {"gradient_boosting": {"test": _m(0.82)}},
            "learning_curve": {"1000": _m(0.75), "500": _m(0.7), "9000": {"skipped": "beyond the train part"}},
            "split_baselines": {"train-500": {"gradient_boosting": _m(0.71)},
                                "train-1000": {"gradient_boosting": _m(0.76)}},
            "data": {"n_prompts": {"train": 3086, "val": 1, "test": 2}, "models": ["m"]}, "hardware": "CPU"}


def test_curve_orders_points_drops_skipped_and_ends_at_the_full_train_part():
    rows = curve(_metrics())
    assert [(r["train_prompts"], r["predictor"]) for r in rows] == [
        (500, "gru"), (500, "gradient_boosting"), (1000, "gru"), (1000, "gradient_boosting"),
        (3086, "gru"), (3086, "gradient_boosting")]
    assert [r["pre_onset_auroc"] for r in rows] == [0.7, 0.71, 0.75, 0.76, 0.8, 0.82]
    assert rows[0]["loop_within4"] == 0.9 and rows[0]["nonterm_within4"] == 0.5


def test_main_writes_csv_and_png_and_refuses_a_report_without_a_curve(tmp_path, capsys):
    f = tmp_path / "metrics.json"
    f.write_text(json.dumps(_metrics()))
    main([str(f)])
    assert len(list(csv.DictReader(open(tmp_path / "learning_curve.csv")))) == 6
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    assert "| 3,086 | gru | 0.800 |" in capsys.readouterr().out
    m = _metrics()
    del m["learning_curve"]
    f.write_text(json.dumps(m))
    with pytest.raises(SystemExit, match="no learning_curve"):
        main([str(f)])
