"""The Python package section of `cargo xtask bench` (crates/haagenti-bench/src/python.rs
runs it with the test venv's interpreter, one process per measurement).

  setup BASE FINE LIB OUT   make the fine-tune FINE from BASE (every 4th tensor moved a
                            little), ingest both, export both under OUT, check that
                            haagenti's tensors equal safetensors' of the exports
  time haagenti LIB NAME    time to the first tensor and to every tensor of a model
                            (get_tensor of each key, then load_file)
  time safetensors FILE     the same with safetensors.safe_open on a file
  rss haagenti LIB A B      resident memory of both models loaded through one Library
                            (every tensor with safe_open(...).get_tensor)
  rss haagenti-load-file LIB A B   the same with haagenti.load_file
  rss safetensors FA FB     resident memory of both files loaded with safetensors
Each mode prints one JSON line.
"""

import gc
import json
import sys
import time

import ml_dtypes  # noqa: F401  (bf16 for numpy)
import numpy as np
import safetensors
from safetensors.numpy import load_file, save_file

import haagenti

CACHE_MB = 0  # arrays share memory through the Library's content map, not the cache


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def setup(base_path, fine_path, lib_path, out):
    base = load_file(base_path)
    rng = np.random.default_rng(11)
    fine = {}
    changed = 0
    for i, name in enumerate(sorted(base)):
        a = base[name]
        if i % 4 == 1 and a.dtype.kind in "fV" and a.size:
            noise = rng.standard_normal(a.shape, dtype=np.float32) * 1e-3
            a = (a.astype(np.float32) + noise).astype(a.dtype)
            changed += a.nbytes
        fine[name] = a
    save_file(fine, fine_path)
    lib = haagenti.open(lib_path, cache_mb=CACHE_MB)
    lib.ingest("base", base_path)
    lib.ingest("fine", fine_path)
    identical = True
    for name in ("base", "fine"):
        lib.export(name, f"{out}/{name}")
        exported = load_file(f"{out}/{name}/{name}.safetensors")
        got = haagenti.load_file(lib, name)
        identical &= sorted(got) == sorted(exported)
        identical &= all(
            got[k].dtype == v.dtype and got[k].shape == v.shape and got[k].tobytes() == v.tobytes()
            for k, v in exported.items()
        )
    base_bytes = sum(a.nbytes for a in base.values())
    print(json.dumps({
        "tensors": len(base),
        "base_bytes": base_bytes,
        "changed_bytes": changed,
        "distinct_bytes": base_bytes + changed,
        "identical": bool(identical),
    }))


def time_haagenti(lib_path, name):
    started = time.perf_counter()
    lib = haagenti.open(lib_path, cache_mb=CACHE_MB)
    with lib.safe_open(name) as f:
        first = f.get_tensor(f.offset_keys()[0])
    first_secs = time.perf_counter() - started
    del first, f, lib
    gc.collect()
    started = time.perf_counter()
    lib = haagenti.open(lib_path, cache_mb=CACHE_MB)
    with lib.safe_open(name) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    all_secs = time.perf_counter() - started
    nbytes = sum(a.nbytes for a in tensors.values())
    del tensors, f, lib
    gc.collect()
    started = time.perf_counter()
    lib = haagenti.open(lib_path, cache_mb=CACHE_MB)
    tensors = haagenti.load_file(lib, name)
    load_file_secs = time.perf_counter() - started
    print(json.dumps({"first_secs": first_secs, "all_secs": all_secs,
                      "load_file_secs": load_file_secs, "bytes": nbytes}))


def time_safetensors(path):
    started = time.perf_counter()
    with safetensors.safe_open(path, framework="np") as f:
        first = f.get_tensor(next(iter(f.offset_keys())))
    first_secs = time.perf_counter() - started
    del first
    started = time.perf_counter()
    with safetensors.safe_open(path, framework="np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    all_secs = time.perf_counter() - started
    nbytes = sum(a.nbytes for a in tensors.values())
    del tensors
    started = time.perf_counter()
    tensors = load_file(path)
    load_file_secs = time.perf_counter() - started
    print(json.dumps({"first_secs": first_secs, "all_secs": all_secs,
                      "load_file_secs": load_file_secs, "bytes": nbytes}))


def rss_haagenti(lib_path, a, b, load_file=False):
    lib = haagenti.open(lib_path, cache_mb=CACHE_MB)
    gc.collect()
    before = rss()
    loaded = []
    for name in (a, b):
        if load_file:
            loaded.append(haagenti.load_file(lib, name))
        else:
            with lib.safe_open(name) as f:
                loaded.append({k: f.get_tensor(k) for k in f.keys()})
    after = rss()
    print(json.dumps({"rss_bytes": after - before,
                      "bytes": sum(x.nbytes for d in loaded for x in d.values())}))


def rss_safetensors(fa, fb):
    gc.collect()
    before = rss()
    loaded = [load_file(fa), load_file(fb)]
    after = rss()
    print(json.dumps({"rss_bytes": after - before,
                      "bytes": sum(x.nbytes for d in loaded for x in d.values())}))


def main(argv):
    mode, rest = argv[0], argv[1:]
    if mode == "setup":
        setup(*rest)
    elif mode == "time" and rest[0] == "haagenti":
        time_haagenti(*rest[1:])
    elif mode == "time" and rest[0] == "safetensors":
        time_safetensors(*rest[1:])
    elif mode == "rss" and rest[0] == "haagenti":
        rss_haagenti(*rest[1:])
    elif mode == "rss" and rest[0] == "haagenti-load-file":
        rss_haagenti(*rest[1:], load_file=True)
    elif mode == "rss" and rest[0] == "safetensors":
        rss_safetensors(*rest[1:])
    else:
        sys.exit(f"unknown mode {argv}")


if __name__ == "__main__":
    main(sys.argv[1:])
