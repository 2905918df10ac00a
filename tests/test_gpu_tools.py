"""gpu/lean_tree.sh: the committed results leave the working tree for device calls and come back unchanged."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, check=check, capture_output=True, text=True)


def test_lean_tree_leaves_out_results_and_brings_them_back(tmp_path: Path) -> None:
    for rel in ("gpu/lean_tree.sh", "evaluate/unpack_frontier.sh", "gpu/unpack_report.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    result = tmp_path / "evaluate/results/run/closed_loop.json"
    result.parent.mkdir(parents=True)
    result.write_text("{}" + " " * 3_000_000)  # 3 MB: the count of what travels must drop by it
    report = tmp_path / "train/results/rep/metrics.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"model": 1}')
    (tmp_path / "hazard").mkdir()
    (tmp_path / "hazard/x.py").write_text("x = 1\n")
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, "git", "add", "-A")
    _run(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")

    on = _run(tmp_path, "bash", "gpu/lean_tree.sh", "on")
    assert not result.exists() and not report.exists() and (tmp_path / "hazard/x.py").exists()
    assert "tracked files in the working tree: 0 MiB" in on.stdout
    for unpacker in ("evaluate/unpack_frontier.sh", "gpu/unpack_report.sh"):  # they would write where git looks away
        refused = _run(tmp_path, "bash", unpacker, "/nowhere", "run", check=False)
        assert refused.returncode == 2 and "gpu/lean_tree.sh off" in refused.stdout

    off = _run(tmp_path, "bash", "gpu/lean_tree.sh", "off")
    assert report.read_text() == '{"model": 1}'
    assert result.read_text().startswith("{}") and "tracked files in the working tree: 2 MiB" in off.stdout
    assert _run(tmp_path, "git", "status", "--porcelain").stdout == ""
    assert _run(tmp_path, "bash", "gpu/lean_tree.sh", "both", check=False).returncode == 2
