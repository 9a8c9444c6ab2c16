"""A model ingested from a directory: several safetensors files and other files."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

import haagenti
from haagenti import InvalidInput, NotFound


@pytest.fixture
def sharded(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    rng = np.random.default_rng(3)
    one = {"a": rng.standard_normal((64, 8)).astype(np.float32), "shared": np.arange(5)}
    two = {"b": rng.standard_normal((3,)).astype(np.float16), "shared": np.arange(7)}
    save_file(one, str(model / "model-00001-of-00002.safetensors"), metadata={"part": "1"})
    save_file(two, str(model / "model-00002-of-00002.safetensors"), metadata={"part": "2"})
    (model / "config.json").write_text('{"hidden_size": 8}')
    lib = haagenti.open(tmp_path / "lib")
    lib.ingest("org/sharded", model)
    return lib, one, two


def test_every_file_by_default_and_one_with_file(sharded):
    lib, one, two = sharded
    with lib.safe_open("org/sharded") as f:
        assert f.keys() == ["a", "b", "shared"]
        assert f.get_tensor("a").tobytes() == one["a"].tobytes()
        assert f.get_tensor("b").tobytes() == two["b"].tobytes()
        assert f.metadata() is None  # several files: pass file=
        with pytest.raises(InvalidInput, match="several files"):
            f.get_tensor("shared")
    with lib.safe_open("org/sharded", file="model-00002-of-00002.safetensors") as f:
        assert f.keys() == ["b", "shared"]
        assert f.get_tensor("shared").tobytes() == two["shared"].tobytes()
        assert f.metadata() == {"part": "2"}
    with lib.safe_open("org/sharded", file="config.json") as f:
        assert f.keys() == [] and f.metadata() is None
    with pytest.raises(NotFound):
        lib.safe_open("org/sharded", file="model.safetensors")
