"""gpu/traces.sh: a collection leaves the device in pieces and comes back whole, or not at all."""
import filecmp
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "gpu" / "traces.sh"


def _sh(*args, env, check=True):
    r = subprocess.run(["bash", str(SCRIPT), *map(str, args)], env={**os.environ, **env}, capture_output=True,
                       text=True)
    if check and r.returncode:
        raise AssertionError(r.stderr)
    return r


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "device" / "traces" / "camp"
    (src / "data").mkdir(parents=True)
    for i in range(3):
        (src / "data" / f"shard-{i}.parquet").write_bytes(os.urandom(3000 + 500 * i))
    (src / "manifest.json").write_text('{"schema_version": 5}')
    (src / "data" / "half-written.parquet.tmp").write_bytes(b"x" * 100)
    env = {"PACK_DIR": str(tmp_path / "pack"), "TPARTS": str(tmp_path / "tparts"), "PIECE": "2k", "PER_CALL": "2",
           "TRACES_ROOT": str(tmp_path / "device" / "back"), "STAGE_DIR": str(tmp_path / "stage")}
    return src, env, tmp_path


def _send_all(src, env, tmp_path) -> list[Path]:
    outs = []
    for i in range(10):
        out = tmp_path / f"out{i}"
        out.mkdir()
        outs.append(out)
        msg = _sh("send", src, env={**env, "OUT": str(out)}).stdout
        assert len(list(out.glob("*.tar.part*"))) <= 2  # PER_CALL pieces at most, plus the checksum
        if " 0 of " in msg:
            return outs
    raise AssertionError("send never finished")


def test_a_collection_goes_down_in_pieces_and_comes_back_whole(setup):
    src, env, tmp_path = setup
    outs = _send_all(src, env, tmp_path)
    n = int((Path(env["PACK_DIR"]) / "camp.sha256").read_text().split("parts ")[1])
    assert n > 4 and len(outs) == -(-n // 2)  # 2 KB pieces, 2 per call
    assert f"{n} of {n} pieces" in _sh("gather", *outs, env=env).stdout
    _sh("extract", "camp", tmp_path / "here", env=env)
    back = tmp_path / "here" / "camp"
    assert not filecmp.dircmp(src / "data", back / "data").diff_files
    assert sorted(p.name for p in (back / "data").iterdir()) == [f"shard-{i}.parquet" for i in range(3)]
    # carried back up in two calls: the first has too few pieces and says so
    stage = Path(env["STAGE_DIR"])
    later = tmp_path / "later"
    later.mkdir()
    for p in sorted(stage.glob("camp.tar.part*"))[3:]:
        p.rename(later / p.name)
    assert f"3 of {n} pieces here" in _sh("receive", "camp", env=env).stdout
    for p in later.iterdir():
        p.rename(stage / p.name)
    assert "unpacked" in _sh("receive", "camp", env=env).stdout
    assert (tmp_path / "device" / "back" / "camp" / "manifest.json").read_text() == '{"schema_version": 5}'


def test_a_broken_piece_is_refused_with_one_line(setup):
    src, env, tmp_path = setup
    outs = _send_all(src, env, tmp_path)
    _sh("gather", *outs, env=env)
    piece = sorted(Path(env["STAGE_DIR"]).glob("camp.tar.part*"))[1]
    piece.write_bytes(b"\0" + piece.read_bytes()[1:])
    r = _sh("extract", "camp", tmp_path / "here", env=env, check=False)
    assert r.returncode == 2 and "does not match its sha256" in r.stderr
    assert not (tmp_path / "here" / "camp").exists()
