"""A library in S3-compatible storage, through the Python API: the local S3 server
`cargo xtask test` starts (HAAGENTI_TEST_S3_ENDPOINT, HAAGENTI_TEST_S3_BUCKET and the
AWS_* credentials). Without it the test fails saying so, unless HAAGENTI_SKIP_S3=1, when
it is skipped with the reason printed (never silently)."""

from __future__ import annotations

import os
import sys
import uuid

import numpy as np
import pytest
from safetensors.numpy import load_file

import haagenti


def s3_server():
    endpoint = os.environ.get("HAAGENTI_TEST_S3_ENDPOINT")
    if endpoint:
        return endpoint, os.environ.get("HAAGENTI_TEST_S3_BUCKET", "haagenti-test")
    why = "HAAGENTI_TEST_S3_ENDPOINT is not set: run the suite with `cargo xtask test`"
    if os.environ.get("HAAGENTI_SKIP_S3") == "1":
        print(f"SKIPPED test_s3: {why} (HAAGENTI_SKIP_S3=1)", file=sys.stderr)
        pytest.skip(why)
    pytest.fail(f"{why}, or set HAAGENTI_SKIP_S3=1 to skip it")


def test_an_s3_library_reads_like_a_directory(family):
    endpoint, bucket = s3_server()
    _, paths, _ = family
    location = f"s3://{bucket}/py-{uuid.uuid4().hex}"
    lib = haagenti.open(location, s3_endpoint=endpoint, cache_mb=0)
    lib.ingest("base", paths["base"])
    source = load_file(str(paths["base"]))
    with lib.safe_open("base") as f:
        for name, expected in source.items():
            assert f.get_tensor(name).tobytes() == expected.tobytes(), name
        rows = f.get_slice("model.layers.0.mlp.up_proj.weight")[5:9, ::3]
        assert np.array_equal(
            rows.view(np.uint16), source["model.layers.0.mlp.up_proj.weight"][5:9, ::3].view(np.uint16)
        )
    assert lib.verify()["models"] == 1
    lib.remove("base")
    assert lib.models() == []


def test_an_unreachable_s3_endpoint_is_a_store_error():
    s3_server()
    with pytest.raises(haagenti.StoreError):
        haagenti.open("s3://no-such-bucket/x", s3_endpoint="http://127.0.0.1:9")
