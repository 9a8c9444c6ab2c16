"""The library operations of the Python API return the CLI's --json reports."""

from __future__ import annotations

import haagenti


def test_library_operations(family, tmp_path):
    _, paths, _ = family
    lib = haagenti.open(tmp_path / "lib", cache_mb=64)
    assert repr(lib).startswith("haagenti.Library(")
    assert lib.models() == []
    report = lib.ingest("base", paths["base"], codec="fast")
    assert report["model"] == "base" and report["logical_bytes"] > 0
    report = lib.ingest("org/fine", paths["org/fine"])
    assert report["dedup_bytes"] > 0  # the identical tensors were already stored
    assert lib.models() == ["base", "org/fine"]

    stats = lib.stats()
    assert stats["models"] == 2 and stats["logical_bytes"] > stats["stored_bytes"]
    compared = lib.compare("base", "org/fine")
    assert isinstance(compared, dict) and compared
    similar = lib.similar("org/fine", limit=2)
    assert isinstance(similar, dict)
    verified = lib.verify()
    assert verified["models"] == 2 and not verified["problems"]

    exported = lib.export("org/fine", tmp_path / "out")
    assert exported["files"] == 1
    assert (tmp_path / "out" / "fine.safetensors").read_bytes() == paths["org/fine"].read_bytes()

    lib.remove("org/fine")
    assert lib.models() == ["base"]
    dry = lib.gc(grace_seconds=0, dry_run=True)
    assert dry["dry_run"] and dry["garbage_objects"] > 0
    done = lib.gc(grace_seconds=0)
    assert done["garbage_objects"] == dry["garbage_objects"]
    assert lib.verify()["models"] == 1


def test_help_is_useful():
    doc = haagenti.Library.__doc__ or ""
    assert "safe_open" in doc
    for method in ("ingest", "export", "verify", "stats", "remove", "gc", "compare", "similar", "safe_open"):
        assert getattr(haagenti.Library, method).__doc__, method
