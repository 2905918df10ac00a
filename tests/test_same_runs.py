"""collect/same_runs.py: whether two collections generated the same runs."""


def test_same_runs_counts_traces_that_repeat(tmp_path, capsys):
    """collect/same_runs.py: two collections sharing two of three traces, one of them with other tokens."""
    import sys
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).parent.parent / "collect"))
    from same_runs import main

    def shard(folder, rows):
        (folder / "data").mkdir(parents=True)
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        pq.write_table(pa.table(cols), folder / "data" / "x.parquet")

    def row(tid, tokens):
        return {"trace_id": tid, "tokens": tokens, "onset": -1, "onset_source": "none", "catastrophe": False,
                "loop": False, "nonterm": False, "correct": True}

    shard(tmp_path / "a", [row("t1", [1, 2]), row("t2", [3]), row("t3", [4])])
    shard(tmp_path / "b", [row("t1", [1, 2]), row("t2", [3, 9]), row("t4", [5])])
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o.json")]) == 0
    import json

    res = json.loads((tmp_path / "o.json").read_text())
    assert (res["in_both"], res["only_first"], res["only_second"], res["all_same"]) == (2, 1, 1, 1)
    assert res["same"]["tokens"] == 1 and res["same"]["onset"] == 2
    assert main([str(tmp_path / "none"), str(tmp_path / "b"), "--out", str(tmp_path / "p.json")]) == 2
    assert "no shards" in capsys.readouterr().err and not (tmp_path / "p.json").exists()
