"""Writes a generated Llama-shaped quant set with llama.cpp's own gguf-py (not ours).

Usage: gguf_quant_set.py OUT_DIR [N_LAYERS]

OUT_DIR/model-F16.gguf holds a small Llama (32k-token vocab, 2-D weights drawn from
N(0, 0.02) and rounded to F16, 1-D norms in F32) with a tokenizer-sized metadata block
(tokens, scores, token types); model-{Q8_0,Q5_1,Q5_0,Q4_1,Q4_0}.gguf hold the same
tensors, the 2-D weights quantized from the F16 values by gguf.quants.quantize, the 1-D
ones F32, and identical metadata but general.file_type. OUT_DIR/st/model.safetensors
holds the F16 file's tensors unpermuted (same bytes, numpy shapes).
"""

import os
import sys

import gguf
import numpy as np
from safetensors.numpy import save_file

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType
SET = [
    ("F16", Q.F16, FT.MOSTLY_F16),
    ("Q8_0", Q.Q8_0, FT.MOSTLY_Q8_0),
    ("Q5_1", Q.Q5_1, FT.MOSTLY_Q5_1),
    ("Q5_0", Q.Q5_0, FT.MOSTLY_Q5_0),
    ("Q4_1", Q.Q4_1, FT.MOSTLY_Q4_1),
    ("Q4_0", Q.Q4_0, FT.MOSTLY_Q4_0),
]

out = sys.argv[1]
n_layers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
n_vocab, n_embd, n_ff, n_head = 32000, 128, 352, 4
rng = np.random.default_rng(16)


def weight(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)


tensors = [("token_embd.weight", weight(n_vocab, n_embd))]
for i in range(n_layers):
    p = f"blk.{i}"
    tensors += [
        (f"{p}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)),
        (f"{p}.attn_q.weight", weight(n_embd, n_embd)),
        (f"{p}.attn_k.weight", weight(n_embd, n_embd)),
        (f"{p}.attn_v.weight", weight(n_embd, n_embd)),
        (f"{p}.attn_output.weight", weight(n_embd, n_embd)),
        (f"{p}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)),
        (f"{p}.ffn_gate.weight", weight(n_ff, n_embd)),
        (f"{p}.ffn_up.weight", weight(n_ff, n_embd)),
        (f"{p}.ffn_down.weight", weight(n_embd, n_ff)),
    ]
tensors += [
    ("output_norm.weight", (1 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)),
    ("output.weight", weight(n_vocab, n_embd)),
]

# A SentencePiece-like vocabulary: byte tokens, then pieces of growing length.
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
letters = "abcdefghijklmnopqrstuvwxyz"
while len(tokens) < n_vocab:
    k = len(tokens)
    piece = "".join(letters[(k * 7 + j * 13) % 26] for j in range(2 + k % 9))
    tokens.append(("\u2581" if k % 3 == 0 else "") + piece + str(k % 97))
scores = [-float(i) / 10 for i in range(n_vocab)]
types = [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259)

os.makedirs(out, exist_ok=True)
for name, qtype, ftype in SET:
    w = gguf.GGUFWriter(os.path.join(out, f"model-{name}.gguf"), "llama")
    w.add_name("haagenti-test-llama")
    w.add_file_type(ftype)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for tname, data in tensors:
        if data.ndim == 2 and qtype != Q.F16:
            q = gguf.quants.quantize(data.astype(np.float32), qtype)
            w.add_tensor(tname, q, raw_dtype=qtype)
        else:
            w.add_tensor(tname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

os.makedirs(os.path.join(out, "st"), exist_ok=True)
save_file(dict(tensors), os.path.join(out, "st", "model.safetensors"))
for name, _, _ in SET:
    print(name, os.path.getsize(os.path.join(out, f"model-{name}.gguf")))
