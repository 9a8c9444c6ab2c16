"""Read-ahead across tensors: get_tensor calls in keys() or file order read the next
tensors while Python works; whatever the order of calls (in order, backwards, random,
interleaved with slices, from several threads), every array equals the source, and what
is read ahead stays within its budget and is dropped when the pattern breaks."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import haagenti


def check(f, name, tensors):
    array = f.get_tensor(name)
    expected = tensors[name]
    assert array.dtype == expected.dtype and array.shape == expected.shape, name
    assert array.tobytes() == expected.tobytes(), name


def bounded(f):
    """The window holds one tensor, or tensors within the budget."""
    count, nbytes = f._model._ahead()
    assert count <= 1 or nbytes <= f._model._ahead_budget, (count, nbytes)
    return count


def test_calls_in_keys_or_file_order_read_ahead_within_the_budget(family):
    location, _, tensors = family
    for order in ("keys", "offset_keys"):
        lib = haagenti.open(location, cache_mb=0)
        with lib.safe_open("base") as f:
            names = getattr(f, order)()
            windows = []
            for name in names:
                check(f, name, tensors["base"])
                windows.append(bounded(f))
            # Reads ahead happened, and the window drains at the end of the order.
            assert max(windows) >= 1, order
            assert windows[-1] == 0, order


def test_a_broken_pattern_drops_the_window_and_reads_stay_correct(family):
    location, _, tensors = family
    lib = haagenti.open(location, cache_mb=0)
    with lib.safe_open("base") as f:
        names = f.keys()
        check(f, names[0], tensors["base"])
        check(f, names[1], tensors["base"])
        assert bounded(f) >= 1
        # A jump backwards: nothing predicted, nothing kept.
        check(f, names[0], tensors["base"])
        assert f._model._ahead() == (0, 0)
    # Backwards and random orders read correctly (with the cache and without).
    for cache_mb in (0, 64):
        lib = haagenti.open(location, cache_mb=cache_mb)
        rng = random.Random(cache_mb)
        with lib.safe_open("base") as f:
            order = f.keys()[::-1] + rng.sample(f.keys(), len(f.keys()))
            for name in order:
                check(f, name, tensors["base"])
                bounded(f)


def test_slices_between_ordered_reads_see_the_right_bytes(family):
    location, _, tensors = family
    lib = haagenti.open(location, cache_mb=0)
    with lib.safe_open("org/fine") as f:
        for name in f.offset_keys():
            check(f, name, tensors["org/fine"])
            expected = tensors["org/fine"][name]
            if expected.ndim and expected.shape[0] > 1:
                got = f.get_slice(name)[1:, ...]
                assert got.tobytes() == expected[1:, ...].tobytes(), name
            bounded(f)


def test_threads_reading_in_order_on_one_handle_get_the_right_tensors(family):
    location, _, tensors = family
    lib = haagenti.open(location, cache_mb=0)
    with lib.safe_open("org/fine") as f:

        def read_all(i):
            names = f.keys() if i % 2 == 0 else f.offset_keys()
            return [(n, f.get_tensor(n)) for n in names]

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(read_all, range(4)))
        bounded(f)
    for got in results:
        for name, array in got:
            assert array.tobytes() == tensors["org/fine"][name].tobytes(), name


def test_tensors_read_ahead_still_share_memory_across_models(family):
    location, _, tensors = family
    lib = haagenti.open(location, cache_mb=0)
    with lib.safe_open("base") as a, lib.safe_open("org/fine") as b:
        base = {n: a.get_tensor(n) for n in a.keys()}
        fine = {n: b.get_tensor(n) for n in b.keys()}
    for name, x in base.items():
        if name in fine and x.nbytes and x.tobytes() == tensors["org/fine"][name].tobytes():
            assert np.shares_memory(x, fine[name]), name
