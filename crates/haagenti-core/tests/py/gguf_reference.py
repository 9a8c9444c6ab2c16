"""Reference outputs of llama.cpp's gguf-py for tests/gguf_reference.rs.

Usage: gguf_reference.py OUTDIR

Writes into OUTDIR:
  * GGUF files made by gguf.GGUFWriter: every float type, the five legacy quant types
    (quantized by gguf.quants.quantize), every metadata value type, string arrays,
    nested arrays, default and custom alignments;
  * for each quantization case, the f32 input (CASE.f32), and for each type gguf-py's
    quantize output (CASE.TYPE.q) and the dequantization of that output
    (CASE.TYPE.deq, f32);
  * f16.in / f16.out: f32 bit patterns and numpy's float16 conversion of them;
  * description.json: what each file holds (key-values as written, tensors as
    gguf.GGUFReader reads them back), the cases, gguf-py's GGML_QUANT_SIZES.

Floats in the JSON are bit patterns (u32 for f32, u64 for f64), so they compare exactly.
"""

import importlib.metadata
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)

LEGACY = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
FLOATS = [Q.F32, Q.F16, Q.BF16]


def f32_bits(v):
    return struct.unpack("<I", struct.pack("<f", v))[0]


def f64_bits(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def describe(value, vtype, sub_type=None):
    """The JSON form tests/gguf_reference.rs builds from our reader's GgufValue."""
    if vtype == V.ARRAY:
        if sub_type is None:
            sub_type = V.get_type(value[0])
        return {"type": "ARRAY", "elem": sub_type.name,
                "value": [describe(v, sub_type)["value"] if sub_type != V.ARRAY
                          else describe(v, V.ARRAY) for v in value]}
    if vtype == V.FLOAT32:
        v = f32_bits(value)
    elif vtype == V.FLOAT64:
        v = f64_bits(value)
    elif vtype == V.STRING:
        v = value
    elif vtype == V.BOOL:
        v = bool(value)
    else:
        v = int(value)
    return {"type": vtype.name, "value": v}


class Writer:
    """A GGUFWriter that remembers what it was given."""

    def __init__(self, path, arch="llama", alignment=None):
        self.path = path
        self.w = gguf.GGUFWriter(str(path), arch)
        self.kvs = [("general.architecture", describe(arch, V.STRING))]
        if alignment is not None:
            self.w.add_custom_alignment(alignment)
            self.kvs.append(("general.alignment", describe(alignment, V.UINT32)))

    def kv(self, key, value, vtype, sub_type=None):
        self.w.add_key_value(key, value, vtype, sub_type=sub_type)
        self.kvs.append((key, describe(value, vtype, sub_type)))

    def tensor(self, name, array, raw_dtype=None):
        self.w.add_tensor(name, array, raw_dtype=raw_dtype)

    def close(self):
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_tensors_to_file()
        self.w.close()
        r = gguf.GGUFReader(str(self.path))
        tensors = [
            {
                "name": t.name,
                "dims": [int(d) for d in t.shape],
                "type": int(t.tensor_type),
                "start": int(t.data_offset),
                "len": int(t.n_bytes),
                "n_elements": int(t.n_elements),
            }
            for t in r.tensors
        ]
        return {
            "file": self.path.name,
            "alignment": int(r.alignment),
            "data_start": int(r.data_offset),
            "kvs": [{"key": k, **v} for k, v in self.kvs],
            "tensors": tensors,
        }


rng = np.random.default_rng(20261201)
files = []

# Every value type, string arrays, nested arrays; the float types.
w = Writer(OUT / "values_floats.gguf")
w.kv("t.u8", 200, V.UINT8)
w.kv("t.i8", -100, V.INT8)
w.kv("t.u16", 65535, V.UINT16)
w.kv("t.i16", -32768, V.INT16)
w.kv("t.u32", 4000000000, V.UINT32)
w.kv("t.i32", -2000000000, V.INT32)
w.kv("t.u64", 2**64 - 1, V.UINT64)
w.kv("t.i64", -(2**63), V.INT64)
w.kv("t.f32", 0.1, V.FLOAT32)
w.kv("t.f64", -1e300, V.FLOAT64)
w.kv("t.bool", True, V.BOOL)
w.kv("t.bool_false", False, V.BOOL)
w.kv("t.string", "héllo, wörld ✓", V.STRING)
w.kv("t.tokens", ["<s>", "</s>", "▁the", "", "日本", "\n"], V.ARRAY, V.STRING)
w.kv("t.scores", [0.0, -1.5, 3.25], V.ARRAY, V.FLOAT32)
w.kv("t.types", [1, 2, 3, 6], V.ARRAY, V.INT32)
w.kv("t.u8s", [0, 1, 255], V.ARRAY, V.UINT8)
w.kv("t.i8s", [-128, 127], V.ARRAY, V.INT8)
w.kv("t.u16s", [1, 65535], V.ARRAY, V.UINT16)
w.kv("t.i16s", [-1, 2], V.ARRAY, V.INT16)
w.kv("t.u32s", [7, 4294967295], V.ARRAY, V.UINT32)
w.kv("t.u64s", [2**40, 3], V.ARRAY, V.UINT64)
w.kv("t.i64s", [-(2**40), 3], V.ARRAY, V.INT64)
w.kv("t.f64s", [0.5, -2.0e-300], V.ARRAY, V.FLOAT64)
w.kv("t.bools", [True, False, True], V.ARRAY, V.BOOL)
w.kv("t.nested", [[1, 2, 3], [4], [5, 6]], V.ARRAY, V.ARRAY)
w.kv("t.nested_strings", [["a", "b"], ["c"]], V.ARRAY, V.ARRAY)
w.kv("t.deep", [[[1.5], [2.5, 3.5]], [[4.5]]], V.ARRAY, V.ARRAY)
w.tensor("f32.vec", rng.standard_normal(7).astype(np.float32))
w.tensor("f32.mat", rng.standard_normal((3, 5)).astype(np.float32))
w.tensor("f16.mat", rng.standard_normal((4, 6)).astype(np.float16))
w.tensor("f16.3d", rng.standard_normal((2, 3, 4)).astype(np.float16))
w.tensor("f32.4d", rng.standard_normal((2, 1, 3, 2)).astype(np.float32))
bf16 = gguf.quants.quantize(rng.standard_normal((5, 8)).astype(np.float32), Q.BF16)
w.tensor("bf16.mat", bf16, raw_dtype=Q.BF16)
w.tensor("i32.vec", np.arange(5, dtype=np.int32))
files.append(w.close())

# The five legacy quant types, as a quantized Llama-shaped layer; default alignment,
# then custom alignments.
for name, alignment in [("quants.gguf", None), ("quants_align64.gguf", 64), ("quants_align1.gguf", 1)]:
    w = Writer(OUT / name, alignment=alignment)
    w.kv("general.file_type", 7, V.UINT32)
    w.kv("tokenizer.ggml.tokens", [f"tok{i}" for i in range(50)], V.ARRAY, V.STRING)
    w.tensor("token_embd.weight", gguf.quants.quantize(
        (rng.standard_normal((16, 64)) * 0.02).astype(np.float32), Q.Q8_0), raw_dtype=Q.Q8_0)
    w.tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    for i, qt in enumerate(LEGACY):
        data = (rng.standard_normal((3 + i, 96)) * 0.02).astype(np.float32)
        w.tensor(f"blk.0.w{i}.{qt.name}", gguf.quants.quantize(data, qt), raw_dtype=qt)
    w.tensor("output.weight", rng.standard_normal((4, 64)).astype(np.float16))
    files.append(w.close())

# Tokenizer-sized metadata (what dominates real headers): 32k tokens, scores, types and
# merges, and one tensor.
w = Writer(OUT / "tokenizer.gguf")
n_vocab = 32_000  # Llama 2's
w.kv("tokenizer.ggml.model", "gpt2", V.STRING)
w.kv("tokenizer.ggml.tokens", [f"tok_{i:x}_\u0120{'ab' * (i % 7)}" for i in range(n_vocab)], V.ARRAY, V.STRING)
w.kv("tokenizer.ggml.scores", [float(-i) / 7 for i in range(n_vocab)], V.ARRAY, V.FLOAT32)
w.kv("tokenizer.ggml.token_type", [1 + i % 6 for i in range(n_vocab)], V.ARRAY, V.INT32)
w.kv("tokenizer.ggml.merges", [f"m{i} x{i}" for i in range(n_vocab)], V.ARRAY, V.STRING)
w.kv("tokenizer.chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}" * 200, V.STRING)
w.tensor("token_embd.weight", gguf.quants.quantize(
    (rng.standard_normal((8, 256)) * 0.02).astype(np.float32), Q.Q4_0), raw_dtype=Q.Q4_0)
files.append(w.close())

# Metadata only.
w = Writer(OUT / "metadata_only.gguf")
w.kv("general.name", "no tensors", V.STRING)
files.append(w.close())

# Quantization cases: (name, f32 array with rows of whole blocks).
cases = []


def case(name, data):
    data = np.ascontiguousarray(data, dtype=np.float32)
    assert data.shape[-1] % 32 == 0
    data.tofile(OUT / f"{name}.f32")
    for qt in LEGACY + FLOATS:
        q = gguf.quants.quantize(data, qt)
        np.ascontiguousarray(q).view(np.uint8).tofile(OUT / f"{name}.{qt.name}.q")
        deq = gguf.quants.dequantize(np.ascontiguousarray(q).view(np.uint8) if qt in LEGACY else q, qt)
        np.ascontiguousarray(deq, dtype=np.float32).tofile(OUT / f"{name}.{qt.name}.deq")
    cases.append({"name": name, "shape": list(data.shape)})


case("uniform", rng.uniform(-1, 1, (64, 256)))
case("weights", rng.normal(0, 0.02, (256, 1024)))
case("weights_from_f16", rng.normal(0, 0.02, (128, 512)).astype(np.float16).astype(np.float32))
case("zeros", np.zeros((4, 64)))
outlier = rng.normal(0, 0.02, (32, 32))
outlier[np.arange(32), rng.integers(0, 32, 32)] = rng.choice([-1, 1], 32) * rng.uniform(5, 500, 32)
case("outlier", outlier)
sub = np.concatenate([
    rng.uniform(-1, 1, (8, 32)) * 1e-40,  # subnormal
    rng.uniform(-1, 1, (8, 32)) * 1e-38,  # the smallest normals
    rng.uniform(-1, 1, (8, 32)) * 1e-36,  # normal, scale subnormal
    rng.uniform(-1, 1, (8, 32)) * 1e-33,  # normal, scale normal
])
sub[0, :] = np.float32(1.4e-45)  # the smallest subnormal, everywhere
sub[1, 5] = np.float32(-1.4e-45)
case("subnormal", sub)
mixed = np.abs(rng.normal(0, 1, (16, 64)))
mixed *= rng.choice([-1, 1], mixed.shape)
mixed[0, :32] = np.abs(mixed[0, :32])  # all positive
mixed[1, :32] = -np.abs(mixed[1, :32])  # all negative
mixed[2, :32] = 3.0  # all equal
mixed[2, 32:] = -3.0
case("mixed_signs", mixed)
# Exact ties: with a largest magnitude of 127 (Q8_0: d = 1), of -8 (Q4_0: d = 1), of -16
# (Q5_0), and ranges of 15 and 31 from 0 (Q4_1, Q5_1), x*id lands on halves.
ties = np.zeros((8, 32))
ties[0] = np.r_[127, np.arange(31) - 15.5]
ties[1] = np.r_[-127, (np.arange(31) - 15) * 2 + 0.5]
ties[2] = np.r_[-8, np.arange(31) / 4 - 3.75]
ties[3] = np.r_[-16, np.arange(31) / 2 - 7.5]
ties[4] = np.r_[0, 15, np.arange(30) / 2]
ties[5] = np.r_[0, 31, np.arange(30) + 0.5]
ties[6] = np.r_[8, np.arange(31) / 2 - 7.5]  # positive extremum: d negative
ties[7] = np.r_[-127.5, 127.5, np.arange(30) - 14.5]
case("ties", ties)
case("extremes", np.array([
    np.r_[65504.0, 65520.0, -70000.0, np.ones(29)],
    np.r_[1e30, -1e30, np.zeros(30)],
    np.r_[np.inf, np.ones(31)],
    np.r_[-np.inf, np.inf, np.ones(30)],
]))

# numpy's float32 -> float16 (the scale conversion), on a sweep of bit patterns.
bits = np.concatenate([
    np.arange(0, 2**32, 65537, dtype=np.uint64).astype(np.uint32),
    np.array([0x7F800001, 0xFF800001, 0x7FC00000, 0xFFC00000, 0x7FA00000, 0x7F802000,
              0x387FE000, 0x387FF000, 0x33000000, 0x33000001, 0x477FF000, 0x477FEFFF],
             dtype=np.uint32),
])
bits.tofile(OUT / "f16.in")
with np.errstate(all="ignore"):
    bits.view(np.float32).astype(np.float16).view(np.uint16).tofile(OUT / "f16.out")

json.dump({
    "gguf_version": importlib.metadata.version("gguf"),
    "files": files,
    "cases": cases,
    "quant_sizes": {t.name: [int(t), b, s] for t, (b, s) in gguf.GGML_QUANT_SIZES.items()},
}, open(OUT / "description.json", "w"), indent=1, ensure_ascii=False)
print(f"wrote {len(files)} GGUF files and {len(cases)} quantization cases to {OUT}")
