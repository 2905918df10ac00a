"""hazard.models.gguf_parsed_once: transformers' four reads of one GGUF file share one parse."""
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from hazard.models import gguf_parsed_once


def _write_gguf(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("test.n", 3)
    w.add_tensor("w", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_file_is_parsed_once_under_any_path_and_the_reader_comes_back(tmp_path, monkeypatch):
    f = _write_gguf(tmp_path / "m.gguf")
    other = _write_gguf(tmp_path / "n.gguf")
    monkeypatch.chdir(tmp_path)
    reader = gguf.GGUFReader
    with gguf_parsed_once():
        first = gguf.GGUFReader(str(f))
        assert gguf.GGUFReader("m.gguf") is first  # transformers reads the weights under the bare file name
        assert gguf.GGUFReader(f"{tmp_path}/./m.gguf") is first
        assert gguf.GGUFReader(str(other)) is not first
        assert first.fields["test.n"].parts[-1][0] == 3
        np.testing.assert_array_equal(first.tensors[0].data, np.arange(8, dtype=np.float32))
    assert gguf.GGUFReader is reader
    assert gguf.GGUFReader(str(f)) is not first  # outside the block every read parses again


def test_the_reader_comes_back_when_the_block_fails(tmp_path):
    reader = gguf.GGUFReader
    with pytest.raises(FileNotFoundError), gguf_parsed_once():
        gguf.GGUFReader(os.fspath(tmp_path / "missing.gguf"))
    assert gguf.GGUFReader is reader
