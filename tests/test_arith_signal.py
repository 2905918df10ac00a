"""train/arith_signal.py: detection counts a wrong equation only from the onset on; the gold check flags a
reference solution with a wrong sum and no sound one; bad input gives one line and writes nothing."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))

from arith_signal import detection, first_fire, main  # noqa: E402


def test_detection_times_the_first_wrong_equation_against_the_onset():
    # found 2 after the onset, found before it, never found, and a catastrophe with no placed onset
    out = detection([7, 1, -1, 5], [5, 3, 2, -1])
    assert out["n"] == 4 and out["any"] == 0.75
    assert out["before_onset"] == 0.25 and out["within0"] == 0.0 and out["within2"] == 0.25
    assert out["within32"] == 0.25 and out["median_delay"] == 2.0
    assert first_fire([0, 0, 1, 1]) == 2 and first_fire([float("nan")] * 3) == -1 and first_fire([]) == -1


def test_the_gold_check_flags_only_the_solution_with_a_wrong_sum(gsm8k_dir, tmp_path, capsys):
    rows = [json.loads(x) for x in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    rows[1]["answer"] = "He has 10 + 5 = <<10+5=16>>16 apples.\n#### 16"  # a slip in the reference
    (gsm8k_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--gold", str(gsm8k_dir), "--out", str(tmp_path / "a.json")]) == 0
    out = json.loads((tmp_path / "a.json").read_text())
    assert out["gold"]["train"]["flagged"] == 1 and out["gold"]["test"]["flagged"] == 0
    assert out["gold"]["train"]["examples"] == ["He has 10 + 5 = 16 apples."]
    assert "train 1/4" in capsys.readouterr().out


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["--gold", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gold" in err[0] and not (tmp_path / "a.json").exists()
    assert main(["--hand", "x.json", "--tokenizer", str(tmp_path / "none"), "--out", str(tmp_path / "a.json")]) == 2
    assert "--tokenizer" in capsys.readouterr().err and not (tmp_path / "a.json").exists()


def test_a_collection_without_the_text_signal_names_the_fix(tmp_path, capsys):
    (tmp_path / "old" / "data").mkdir(parents=True)
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"schema_version": 9}))
    assert main(["--traces", str(tmp_path / "old"), "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schema version 9" in err[0] and "hazard relabel" in err[0]
    assert not (tmp_path / "a.json").exists()


def test_the_offline_rewind_keeps_the_tokens_through_the_wrong_equals_and_then_holds_the_whole_prompt():
    sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))
    from arith_rewind_offline import kv_fraction, rollback_point

    pieces = ["So", " 3", " +", " 4", " =", " 8", " apples", ".\n", " Then"]
    assert rollback_point(pieces) == 5  # tokens 0-4, through " =": the result is written again
    assert rollback_point(["So", " 3 + 4 =", " 7", ".\n"]) is None  # right: never fires
    # 4 tokens after a 10-token prompt, 3 entries held at first; from token 2 on the whole prompt
    assert kv_fraction([3, 4, 5, 6], 10) == pytest.approx(np.mean([3 / 10, 4 / 11, 5 / 12, 6 / 13]))
    assert kv_fraction([3, 4, 5, 6], 10, keep=2) == pytest.approx(np.mean([3 / 10, 4 / 11, 1, 1]))


def test_the_replay_counts_a_rewound_row_as_the_same_result_only_when_it_writes_the_same_number(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parent.parent / "evaluate"))
    from arith_rewind_offline import main as replay_main
    from arith_rewind_offline import same_result

    assert same_result({"static": " $48 stamps.", "rewound": " $48 stamps in all."})
    assert not same_result({"static": " $151.", "rewound": " $161."})
    assert not same_result({"static": " many", "rewound": " many"})  # no number written: not the same result
    out = {"settings": {"snapkv@0.875": {
        "rows": 2, "fired": 2, "fired_catastrophes": 1, "fired_wrong_both": 1, "fired_right": 0,
        "accuracy_static": 0.0, "accuracy_rewound": 0.5, "fixed": 1, "broken": 0, "fixed_catastrophes": 1,
        "mean_kv_fraction_static": 0.2, "mean_kv_fraction_rewound": 0.3, "same_first_token": 2,
        "examples": [{"static": " 8 apples", "rewound": " 8 apples"}, {"static": " 8.", "rewound": " 7."}]}},
        "replay_seconds": 1.0}
    (tmp_path / "r.json").write_text(json.dumps(out))
    assert replay_main(["--from_json", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["snapkv@0.875"]["same_result"] == 1
    assert "the same result 1 of 2" in capsys.readouterr().out
    assert replay_main(["--out", str(tmp_path / "r.json")]) == 2
    assert "--traces" in capsys.readouterr().err
