"""hazard relabel: today's label rules on stored traces, signals untouched."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hazard import SCHEMA_VERSION
from hazard.cli import main
from hazard.models import save_tiny
from hazard.traces import FEATURES, load_traces, shard_paths, write_shard

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A tiny collection on GSM8K-format problems (whose prompts the relabel rebuilds from a data path)."""
    base = tmp_path_factory.mktemp("relabel")
    model = save_tiny(base / "tiny-qwen2", "qwen2", seed=2)
    data = base / "gsm8k"
    data.mkdir()
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
            for a, b in [(3, 4), (10, 5), (7, 8), (1, 1)]]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = base / "traces"
    tasks = json.dumps([{"name": "gsm8k", "options": {"path": str(data), "limit": 3, "k_shot": 1}}])
    assert main(["collect", "--config", str(ROOT / "configs/collect/tiny.yaml"), "--output_dir", str(out),
                 "--model", json.dumps({"path": str(model), "device": "cpu", "dtype": "float64", "name": "tiny"}),
                 "--tasks", tasks, "--presses", "[{name: knorm, ratio: 0.5}]", "--max_new_tokens", "12"]) == 0
    return out, model, data


def _table(root):
    return sorted(load_traces(root).to_list(), key=lambda r: r["trace_id"])


def _relabel(root, model, data):
    return main(["relabel", "--traces", str(root), "--tokenizer", str(model),
                 "--task_paths", json.dumps({"gsm8k": str(data)})])


def test_relabel_reproduces_the_collections_labels_and_keeps_its_signals(collection, tmp_path, capsys):
    root, model, data = collection
    before = _table(root)
    moved = tmp_path / "moved"  # the manifest's data path no longer exists: --task_paths points at it
    data.rename(moved)
    try:
        assert _relabel(root, model, moved) == 0
    finally:
        moved.rename(data)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shards"] == len(shard_paths(root))
    after = _table(root)
    assert [r["trace_id"] for r in after] == [r["trace_id"] for r in before]
    for a, b in zip(after, before):
        for k in FEATURES:  # labels recomputed, signals kept: every column as the collection wrote it
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["relabelled"]["from_schema"] == SCHEMA_VERSION
    summary = json.loads((root / "summary.json").read_text())
    assert summary["relabelled"] == manifest["relabelled"] and "generated_tokens_per_s" in summary


def test_relabel_refreshes_the_summary_from_the_new_labels(collection, tmp_path):
    from hazard.summary import summarize_onsets

    root, model, data = collection
    shard = [f for f in shard_paths(root) if "knorm" in f.name][0]
    rows = pq.read_table(shard).to_pylist()
    stale = [dict(r, catastrophe=True, onset=3, onset_source="overrun") for r in rows]
    write_shard(stale, shard)
    assert main(["relabel", "--traces", str(root), "--tokenizer", str(model), "--task_paths",
                 json.dumps({"gsm8k": str(data)}), "--summary_out", str(tmp_path / "s.json")]) == 0
    onsets = json.loads((tmp_path / "s.json").read_text())["onsets"]
    assert onsets == json.loads(json.dumps(summarize_onsets(load_traces(root))))
    assert "overrun" not in json.dumps(onsets)


def test_relabel_replaces_stale_labels(collection):
    root, model, data = collection
    before = {r["trace_id"]: r for r in _table(root)}
    shard = [f for f in shard_paths(root) if "knorm" in f.name][0]
    rows = pq.read_table(shard).to_pylist()
    for r in rows:  # labels of an older rule: "overrun" at a made-up onset
        r.update(catastrophe=True, onset=3, onset_source="overrun", off_task_at=-1)
    write_shard(rows, shard)
    assert {r["onset_source"] for r in pq.read_table(shard).to_pylist()} == {"overrun"}
    assert _relabel(root, model, data) == 0
    for r in pq.read_table(shard).to_pylist():
        old = before[r["trace_id"]]
        assert (r["catastrophe"], r["onset"], r["onset_source"]) == (old["catastrophe"], old["onset"],
                                                                      old["onset_source"])


def test_relabel_says_what_to_fix(collection, tmp_path, capsys):
    root, model, data = collection
    assert main(["relabel", "--traces", str(tmp_path), "--tokenizer", str(model)]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert main(["relabel", "--traces", str(root), "--tokenizer", str(tmp_path / "none")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert _relabel(root, model, tmp_path / "nowhere") == 2  # the prompts cannot be rebuilt
    err = capsys.readouterr().err
    assert "--task_paths" in err and err.count("\n") == 1


def test_relabel_refuses_a_shard_without_todays_signals(collection, tmp_path, capsys):
    import shutil

    root, model, data = collection
    old = tmp_path / "old"
    shutil.copytree(root, old)
    shard = shard_paths(old)[0]
    pq.write_table(pq.read_table(shard).drop(["repeat4"]), shard)  # a schema before the repeat4 signal
    assert _relabel(old, model, data) == 2
    err = capsys.readouterr().err
    assert "repeat4" in err and "re-collect" in err
    assert json.loads((old / "manifest.json").read_text()) == json.loads((root / "manifest.json").read_text())


def test_relabel_adds_the_text_signal_to_traces_collected_before_it(collection):
    import pyarrow as pa

    root, model, data = collection
    before = _table(root)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for f in shard_paths(root):  # as schema 9 wrote them: no arith_wrong column
        t = pq.read_table(f)
        t = t.drop(["arith_wrong"]).set_column(0, "schema_version", pa.array([9] * len(t), pa.int32()))
        pq.write_table(t, f)
    manifest_path.write_text(json.dumps(dict(manifest, schema_version=9)))
    with pytest.raises(Exception, match="columns do not match|schema version 9"):
        load_traces(root)
    assert _relabel(root, model, data) == 0
    after = _table(root)
    assert [np.asarray(a["arith_wrong"]).tolist() for a in after] == \
        [np.asarray(b["arith_wrong"]).tolist() for b in before]
    assert all(np.isfinite(a["arith_wrong"]).all() and len(a["arith_wrong"]) == a["n_tokens"] for a in after)
