"""Tensors read through safe_open, get_slice and load_file equal the source file's."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors
from safetensors.numpy import load_file as st_load_file

import haagenti

MODELS = ["base", "org/fine"]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("model", MODELS)
def test_every_tensor_equals_safetensors_load_file(family, lib, model):
    _, paths, _ = family
    source = st_load_file(str(paths[model]))
    with lib.safe_open(model, framework="np") as f:
        assert f.keys() == sorted(source)
        for name, expected in source.items():
            got = f.get_tensor(name)
            assert isinstance(got, np.ndarray)
            assert same(got, expected), name
            assert not got.flags.writeable, name
    # bf16 included, as ml_dtypes.bfloat16.
    assert any(str(a.dtype) == "bfloat16" for a in source.values())


@pytest.mark.parametrize("model", MODELS)
def test_load_file_equals_safetensors(family, lib, model):
    _, paths, _ = family
    source = st_load_file(str(paths[model]))
    loaded = haagenti.load_file(lib, model)
    assert sorted(loaded) == sorted(source)
    for name, expected in source.items():
        assert same(loaded[name], expected), name


@pytest.mark.parametrize("model", MODELS)
def test_metadata_and_slice_surface_match_safetensors(family, lib, model):
    _, paths, _ = family
    with safetensors.safe_open(str(paths[model]), framework="np") as st, lib.safe_open(
        model
    ) as f:
        assert f.metadata() == st.metadata()
        assert f.keys() == sorted(st.keys())
        for name in st.keys():
            assert f.get_slice(name).get_shape() == st.get_slice(name).get_shape()
            assert f.get_slice(name).get_dtype() == st.get_slice(name).get_dtype()


def test_file_picks_one_file(family, lib):
    with lib.safe_open("base", file="base.safetensors") as f:
        assert "lm_head.weight" in f.keys()
        assert f.metadata() == {"format": "np", "note": "base"}


def random_index(rng: np.random.Generator, shape):
    """A random numpy index of ints, slices (any step, either direction) and at most one
    ellipsis."""
    parts = []
    for dim in shape:
        kind = rng.integers(0, 5)
        if kind == 0:
            parts.append(int(rng.integers(-dim, dim)))
        elif kind == 1:
            parts.append(slice(None))
        else:
            a, b = sorted(int(x) for x in rng.integers(-dim - 2, dim + 2, size=2))
            step = int(rng.choice([1, 1, 2, 3, 7, -1, -2]))
            parts.append(slice(a, b, step) if step > 0 else slice(b, a, step))
    if shape and rng.integers(0, 4) == 0:
        # Replace a run of trailing full slices by an ellipsis.
        cut = int(rng.integers(0, len(parts) + 1))
        parts = parts[:cut] + [Ellipsis]
    return tuple(parts) if len(parts) != 1 or rng.integers(0, 2) else parts[0]


def touched_fragments(shape, itemsize, lens, index):
    """Oracle: the fragments holding the elements numpy selects with ``index``."""
    n = int(np.prod(shape, dtype=np.int64))
    elements = np.arange(n, dtype=np.int64).reshape(shape)[index].ravel()
    bounds = np.cumsum([0] + list(lens))
    return set((np.searchsorted(bounds, elements * itemsize, side="right") - 1).tolist())


def test_get_slice_random_slices_equal_numpy_and_fetch_only_touched_fragments(family):
    location, _, tensors = family
    source = tensors["base"]
    # No cache: every fragment a read needs is fetched from the store, and counted.
    lib = haagenti.open(location, cache_mb=0)
    rng = np.random.default_rng(1234)
    checked = partial = 0
    with lib.safe_open("base") as f:
        for name in f.keys():
            expected_array = source[name]
            if expected_array.ndim == 0:
                continue
            sl = f.get_slice(name)
            lens = f._model.tensors()[f._lookup(name).index][4]
            for _ in range(12):
                index = random_index(rng, expected_array.shape)
                before = lib._fetch_count()
                got = sl[index]
                fetched = lib._fetch_count() - before
                expected = expected_array[index]
                assert got.dtype == expected.dtype, (name, index)
                assert got.shape == expected.shape, (name, index)
                assert got.tobytes() == expected.tobytes(), (name, index)
                touched = touched_fragments(
                    expected_array.shape, expected_array.itemsize, lens, index
                )
                assert fetched == len(touched), (name, index, fetched, touched)
                checked += 1
                partial += 0 < len(touched) < len(lens)
    assert checked > 100
    assert partial > 10  # many slices touched only part of a multi-fragment tensor


def test_slice_of_one_row_fetches_one_fragment(family):
    location, _, tensors = family
    lib = haagenti.open(location, cache_mb=0)
    with lib.safe_open("base") as f:
        name = "model.layers.0.mlp.up_proj.weight"  # three fragments
        assert f._fragment_count(name) == 3
        before = lib._fetch_count()
        row = f.get_slice(name)[700]
        assert lib._fetch_count() - before == 1
        assert row.tobytes() == tensors["base"][name][700].tobytes()
        before = lib._fetch_count()
        f.get_slice(name)[-1, 3:9]
        assert lib._fetch_count() - before == 1


def test_scalar_and_empty_tensors(family, lib):
    _, _, tensors = family
    with lib.safe_open("base") as f:
        assert f.get_tensor("model.scalar").shape == ()
        assert f.get_slice("model.scalar")[()] == tensors["base"]["model.scalar"]
        assert f.get_slice("model.scalar")[...].shape == ()
        empty = f.get_tensor("model.empty")
        assert empty.shape == (0, 4) and empty.dtype == np.float32
        assert f.get_slice("model.empty")[:, 1:].shape == (0, 3)
