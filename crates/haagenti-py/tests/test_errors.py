"""Bad input raises the documented exception types, with the library's message; nothing
crashes the interpreter."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import haagenti
from haagenti import Corrupt, HaagentiError, InvalidInput, NotFound, StoreError


def test_the_hierarchy():
    for cls in (NotFound, Corrupt, InvalidInput, StoreError):
        assert issubclass(cls, HaagentiError)
    assert issubclass(HaagentiError, Exception)


def test_missing_model(lib):
    with pytest.raises(NotFound, match="nope"):
        lib.safe_open("nope")
    with pytest.raises(NotFound):
        lib.export("nope", "/tmp/unused-haagenti-export")
    with pytest.raises(NotFound):
        haagenti.load_file(lib, "org/nope")


def test_missing_tensor_and_file(lib):
    with lib.safe_open("base") as f:
        with pytest.raises(NotFound, match="no.such"):
            f.get_tensor("no.such")
        with pytest.raises(NotFound):
            f.get_slice("no.such")
    with pytest.raises(NotFound, match="other.safetensors"):
        lib.safe_open("base", file="other.safetensors")


def test_bad_slices(lib):
    with lib.safe_open("base") as f:
        sl = f.get_slice("model.layers.0.f16.weight")  # (64, 33, 7)
        for bad in (1.5, (0, 0, 0, 0), (..., ...), 64, -65, (0, "a"), slice(0, 2, 0), [0, 1]):
            with pytest.raises(InvalidInput):
                sl[bad]


def test_bad_arguments(lib, tmp_path):
    with pytest.raises(InvalidInput, match="framework"):
        lib.safe_open("base", framework="tf")
    with pytest.raises(InvalidInput):
        haagenti.open(tmp_path / "x", cache_mb=-1)
    with pytest.raises(InvalidInput, match="codec"):
        lib.ingest("x", tmp_path, codec="turbo")
    with pytest.raises(InvalidInput, match="model name"):
        lib.ingest("../evil", tmp_path)
    with pytest.raises(InvalidInput):
        lib.ingest("x", tmp_path / "missing.safetensors")


def test_torch_missing_is_a_clear_error(lib):
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch"):
            lib.safe_open("base", framework="pt")
    else:
        with lib.safe_open("base", framework="pt") as f:
            t = f.get_tensor("model.layers.0.f32.weight")
            assert tuple(t.shape) == (300, 700)


@pytest.mark.parametrize(
    "location", ["", "s3://", "ftp://host/path", "file://relative/path", "s3:///prefix"]
)
def test_bad_location(location):
    with pytest.raises(InvalidInput):
        haagenti.open(location)


def test_existing_model_needs_replace(family, tmp_path):
    location, paths, _ = family
    lib = haagenti.open(tmp_path / "lib")
    lib.ingest("m", paths["base"])
    with pytest.raises(InvalidInput, match="already exists"):
        lib.ingest("m", paths["base"])
    assert lib.ingest("m", paths["base"], replace=True)["model"] == "m"


def hostile_files(root: Path):
    header = b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    files = {
        "empty": b"",
        "short": b"\x05\x00",
        "huge-header-length": (1 << 62).to_bytes(8, "little") + b"{}",
        "not-json": (8).to_bytes(8, "little") + b"\xff\xfe{[}]\x00\x01",
        "data-past-end": len(header).to_bytes(8, "little") + header + b"\x00" * 8,
        "overlap": (
            lambda h: len(h).to_bytes(8, "little") + h + b"\x00" * 16
        )(
            b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
            b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
        ),
        "bad-dtype": (
            lambda h: len(h).to_bytes(8, "little") + h + b"\x00" * 16
        )(b'{"a":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}}'),
        "shape-overflow": (
            lambda h: len(h).to_bytes(8, "little") + h + b"\x00" * 16
        )(b'{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}'),
        "random": np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }
    for name, data in files.items():
        path = root / f"{name}.safetensors"
        path.write_bytes(data)
        yield name, path


def test_hostile_files_given_to_ingest(tmp_path):
    lib = haagenti.open(tmp_path / "lib")
    for name, path in hostile_files(tmp_path):
        with pytest.raises(InvalidInput, match="safetensors"):
            lib.ingest("hostile", path)
        assert lib.models() == [], name


def test_damaged_fragment_is_corrupt_and_named(family, tmp_path):
    location, _, _ = family
    copy = tmp_path / "lib"
    shutil.copytree(location, copy)
    lib = haagenti.open(copy, cache_mb=0)
    name = "model.layers.0.self_attn.k_proj.weight"
    with lib.safe_open("base") as f:
        (fragment,) = f._model.fragment_ids(f._lookup(name).index)
        obj = copy / "fragments-flat" / fragment[:2] / fragment
        data = bytearray(obj.read_bytes())
        data[-10] ^= 0x40
        obj.write_bytes(bytes(data))
        with pytest.raises(Corrupt) as caught:
            f.get_tensor(name)
        message = str(caught.value)
        assert name in message and fragment[:12] in message, message
        with pytest.raises(Corrupt):
            f.get_slice(name)[3]
        # Other tensors still read.
        f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    report = lib.verify("base")
    assert report["problems"], report


def test_bf16_without_ml_dtypes_says_what_to_install(lib, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ml_dtypes", None)  # import fails
    with lib.safe_open("base") as f:
        with pytest.raises(ImportError, match="pip install ml_dtypes"):
            f.get_tensor("lm_head.weight")
        # Other dtypes still read.
        assert f.get_tensor("model.layers.0.f32.weight").dtype == np.float32
