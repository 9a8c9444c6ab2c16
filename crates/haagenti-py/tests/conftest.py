"""Fixtures of the haagenti Python suite: a generated model family (a base and a
fine-tune that changes some tensors), written with safetensors and ingested through the
Python API once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import haagenti

BF16 = np.dtype(ml_dtypes.bfloat16)
# The library's default fragment: 1 MiB of a 16-bit dtype (512 Ki elements), 2 MiB of
# a 32-bit one (the same elements).
FRAGMENT_ELEMENTS = 512 * 1024


def _family(seed: int = 7):
    rng = np.random.default_rng(seed)

    def floats(shape, dtype, scale=0.02):
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)

    base: Dict[str, np.ndarray] = {
        # Several fragments, rows not aligned to fragment boundaries.
        "model.embed_tokens.weight": floats((1500, 1000), BF16),
        # Exactly three fragments.
        "model.layers.0.mlp.up_proj.weight": floats((1536, 1024), BF16),
        "model.layers.0.mlp.down_proj.weight": floats((1024, 1536), BF16),
        # Single fragment each.
        "model.layers.0.self_attn.q_proj.weight": floats((512, 512), BF16),
        "model.layers.0.self_attn.k_proj.weight": floats((512, 512), BF16),
        "model.layers.0.input_layernorm.weight": floats((1000,), BF16, 1.0),
        "model.layers.0.f32.weight": floats((300, 700), np.float32),
        "model.layers.0.f32_big.weight": floats((900, 1000), np.float32),
        "model.layers.0.f16.weight": floats((64, 33, 7), np.float16),
        "model.norm.weight": floats((1000,), np.float64, 1.0),
        "model.position_ids": np.arange(4096, dtype=np.int64).reshape(1, 4096),
        "model.mask": rng.integers(0, 2, size=(17, 5)).astype(np.bool_),
        "model.u8": rng.integers(0, 255, size=(3, 3, 3), dtype=np.uint8),
        "model.i32": rng.integers(-9, 9, size=(40,), dtype=np.int32),
        "model.scalar": np.array(3.5, dtype=np.float32),
        "model.empty": np.zeros((0, 4), dtype=np.float32),
        "lm_head.weight": floats((1200, 1100), BF16),
    }
    fine = dict(base)
    # The fine-tune moves some weights a little (multi- and single-fragment tensors) and
    # keeps the rest identical.
    for name in (
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "lm_head.weight",
    ):
        moved = base[name].astype(np.float32) + floats(base[name].shape, np.float32, 0.001)
        fine[name] = moved.astype(base[name].dtype)
    fine["model.extra.bias"] = floats((77,), BF16)
    return base, fine


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """(library location, {model: source path}, {model: tensors})"""
    root = tmp_path_factory.mktemp("family")
    base, fine = _family()
    paths = {"base": root / "base.safetensors", "org/fine": root / "fine.safetensors"}
    save_file(base, str(paths["base"]), metadata={"format": "np", "note": "base"})
    save_file(fine, str(paths["org/fine"]))
    location = root / "lib"
    lib = haagenti.open(location)
    for name, path in paths.items():
        report = lib.ingest(name, path)
        assert report["tensors"] == len(base if name == "base" else fine)
    return location, paths, {"base": base, "org/fine": fine}


@pytest.fixture
def lib(family):
    """A fresh Library (empty cache, counters at zero) over the family."""
    return haagenti.open(family[0])
