"""Arrays are views of the fragment bytes, checked rather than assumed: a single-fragment
tensor lies inside the cached fragment, and identical tensors of a base and its
fine-tune (one fragment or many) share memory when read through one Library."""

from __future__ import annotations

import numpy as np

import haagenti


def test_single_fragment_tensor_is_a_view_of_the_cached_fragment(lib):
    with lib.safe_open("base") as f:
        for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.0.f32.weight"):
            assert f._fragment_count(name) == 1
            array = f.get_tensor(name)
            # The fragment as the cache holds it now.
            address, length = f._fragment_address(name, 0)
            data = array.__array_interface__["data"][0]
            assert address <= data and data + array.nbytes <= address + length, name
            assert not array.flags.owndata and not array.flags.writeable


def test_identical_tensors_of_base_and_fine_tune_share_memory(family, lib):
    _, _, tensors = family
    base, fine = tensors["base"], tensors["org/fine"]
    identical = [n for n in base if n in fine and base[n].tobytes() == fine[n].tobytes()]
    changed = [n for n in base if n in fine and base[n].tobytes() != fine[n].tobytes()]
    kinds = set()
    with lib.safe_open("base") as a, lib.safe_open("org/fine") as b:
        for name in identical:
            x, y = a.get_tensor(name), b.get_tensor(name)
            if x.nbytes == 0:
                continue
            assert np.shares_memory(x, y), name
            kinds.add("multi" if a._fragment_count(name) > 1 else "single")
        for name in changed:
            assert not np.shares_memory(a.get_tensor(name), b.get_tensor(name)), name
    assert kinds == {"single", "multi"}


def test_multi_fragment_tensor_is_assembled_once_per_content(lib):
    name = "model.embed_tokens.weight"
    with lib.safe_open("base") as f:
        assert f._fragment_count(name) > 1
        first = f.get_tensor(name)
    before = lib._metrics()
    with lib.safe_open("base") as g:
        again = g.get_tensor(name)
    after = lib._metrics()
    assert np.shares_memory(first, again)
    # The assembled buffer was reused: no fragment was looked up again.
    assert after["cache_hits"] == before["cache_hits"]
    assert after["cache_misses"] == before["cache_misses"]


def test_memory_outlives_the_handle_and_the_cache(family):
    lib = haagenti.open(family[0], cache_mb=0)
    with lib.safe_open("base") as f:
        array = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    del f, lib
    expected = family[2]["base"]["model.layers.0.mlp.down_proj.weight"]
    assert array.tobytes() == expected.tobytes()
