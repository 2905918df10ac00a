"""An unfinished evaluation's saved runs read back as rows, with their knobs, before the rest is run."""

import importlib.util
import io
import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("parts_report", ROOT / "evaluate/parts_report.py")
parts_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parts_report)


def _summary(acc, kv):
    return {"n": 10, "accuracy": acc, "catastrophe_rate": 0.1, "mean_kv_fraction": kv, "peak_kv_fraction": kv,
            "false_trigger_rate": 0.0, "false_repair_rate": 0.0, "rollback_tokens_per_trace": 0.0, "seconds": 1.0,
            "controller_ms_per_step": 0.0}


def _tgz(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(f"./closed_loop.parts/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_saved_runs_become_rows_with_their_knobs_and_a_frontier(tmp_path, capsys):
    config = {"model": {"name": "m", "path": "/x"}, "base_presses": [{"name": "knorm", "ratio": 0.75}],
              "frontier_kv": [0.25]}
    def run(acc, kv):  # ten prompts, the first acc x 10 right
        return {"summary": _summary(acc, kv), "ms_per_token": 1.0,
                "rows": [{"correct": i < round(acc * 10), "catastrophe": False} for i in range(10)]}
    _tgz(tmp_path / "c.tgz", {
        "config.json": config, "gsm8k__full.json": run(0.6, 1.0), "gsm8k__knorm@0.75__static.json": run(0.3, 0.2),
        "gsm8k__knorm@0.75__answer_check__action=restore__gate=ck/a/f0.3__hold=16.json": run(0.5, 0.24),
        # a run of a task whose references are not saved yet: left out, not read against another's
        "gsm8k.k5e1s0__knorm@0.75__answer_check__gate=.json": run(0.9, 0.2)})
    out = tmp_path / "r" / "partial.json"
    assert parts_report.main([str(tmp_path / "c.tgz"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(r["policy"], r["knob"]) for r in res["rows"]] == [
        ("full", {}), ("static", {}), ("answer_check", {"action": "restore", "gate": "ck/a/f0.3", "hold": 16})]
    assert abs(res["rows"][2]["recovered_fraction"] - 2 / 3) < 1e-9 and res["unfinished"]
    assert res["frontiers"]["gsm8k"]["matched"]["0.25"]["answer_check:gate"]["accuracy"] == 0.5
    assert "hold=16" in capsys.readouterr().out
    vs = {(p["a"], p["b"]): p["correct"] for p in res["paired"]}
    assert vs[("answer_check(action=restore,gate=a/f0.3,hold=16)", "static")]["a_only"] == 2


def test_a_file_without_saved_runs_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "x.tgz").write_bytes(b"not a tar")
    assert parts_report.main([str(tmp_path / "x.tgz"), "--out", str(tmp_path / "o.json")]) == 2
    assert "cannot read" in capsys.readouterr().err and not (tmp_path / "o.json").exists()
    _tgz(tmp_path / "e.tgz", {"other.json": {}})
    assert parts_report.main([str(tmp_path / "e.tgz"), "--out", str(tmp_path / "o.json")]) == 2
    assert "no closed_loop.parts/" in capsys.readouterr().err
