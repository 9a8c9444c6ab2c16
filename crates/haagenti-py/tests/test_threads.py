"""Several Python threads read at once, correctly, and the GIL is released while
fragments are fetched and decoded."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import haagenti


def reads(f):
    """(tensor, index) pairs that each fetch and decode one fragment."""
    out = []
    for name in f.keys():
        n = f._fragment_count(name)
        shape = f.get_slice(name).get_shape()
        if n == 0 or not shape:
            continue
        if n == 1:
            out.append((name, slice(None)))
        else:
            # One row in each of the first and last fragments.
            out += [(name, 0), (name, shape[0] - 1)]
    return out


def test_eight_threads_read_different_tensors_correctly(family):
    location, _, tensors = family
    lib = haagenti.open(location)
    names = sorted(tensors["org/fine"])
    with lib.safe_open("org/fine") as f:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda n: (n, f.get_tensor(n)), names * 2))
    for name, array in got:
        assert array.tobytes() == tensors["org/fine"][name].tobytes(), name


def test_the_gil_is_released_during_fetches(family):
    """A Python thread that wakes every millisecond keeps recording while another waits
    in one long native read (every tensor of the base, several times, no cache). Each
    wake-up needs the GIL: were it held during the read, the sleeper would record nothing
    until the read returned (or once at a forced switch at the read's edges). It needs
    almost no CPU, so the decoding threads on a busy machine do not starve it."""
    location, _, _ = family
    lib = haagenti.open(location, cache_mb=0)
    stamps = []
    stop = threading.Event()

    def sleeper():
        while not stop.is_set():
            time.sleep(0.001)
            stamps.append(time.perf_counter())

    with lib.safe_open("base") as f:
        indices = [f._lookup(name).index for name in f.keys()] * 8
        thread = threading.Thread(target=sleeper)
        thread.start()
        try:
            time.sleep(0.01)
            started = time.perf_counter()
            f._model.read_tensors(indices)  # one native call, straight to the read path
            ended = time.perf_counter()
        finally:
            stop.set()
            thread.join()
    duration_ms = (ended - started) * 1000
    assert duration_ms > 50, f"the read took only {duration_ms:.0f} ms: too short to judge"
    inside = sum(1 for t in stamps if started <= t <= ended)
    print(f"sleeper woke {inside} times during the {duration_ms:.0f} ms read")
    assert inside > max(10, 0.25 * duration_ms), (inside, duration_ms)


def test_eight_threads_are_faster_than_one(family):
    """The same fragment reads (no cache: each read fetches and decodes) from 8 threads and
    from one. Short serial and threaded rounds alternate, in turn order, so that other
    work on a shared machine weighs on both alike; the threaded total must be at least
    5% below the serial one."""
    location, _, _ = family
    lib = haagenti.open(location, cache_mb=0)
    serial = threaded = 0.0
    with lib.safe_open("base") as f:
        work = reads(f) * 2

        def one(item):
            name, index = item
            return f.get_slice(name)[index]

        def run_serial():
            for item in work:
                one(item)

        def run_threaded():
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(one, work))

        run_serial()  # warm: the fragment objects in the page cache for both
        for round in range(10):
            for kind in (("s", "t") if round % 2 == 0 else ("t", "s")):
                started = time.perf_counter()
                run_serial() if kind == "s" else run_threaded()
                elapsed = time.perf_counter() - started
                if kind == "s":
                    serial += elapsed
                else:
                    threaded += elapsed
    print(f"8 threads / 1 thread time: {threaded / serial:.2f}")
    assert threaded < 0.95 * serial, (threaded, serial)
