"""Opens each MOUNTED::SOURCE pair of .safetensors files with the real `safetensors`
package (`safe_open`, which mmaps the file) and checks that both hold the same tensors:
names, metadata, dtypes, shapes and bytes. Exits 1 naming the first difference."""
import sys

import ml_dtypes  # noqa: F401  (registers numpy's bfloat16, which safetensors asks for)
from safetensors import safe_open


def tensors(path):
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        out = {}
        for k in f.keys():
            t = f.get_tensor(k)
            out[k] = (str(t.dtype), t.shape, t.tobytes())
        return meta, out


def main():
    total = 0
    for pair in sys.argv[1:]:
        mounted, source = pair.split("::", 1)
        got_meta, got = tensors(mounted)
        want_meta, want = tensors(source)
        if got_meta != want_meta:
            sys.exit(f"{mounted}: metadata {got_meta!r} != {want_meta!r}")
        if list(got) != list(want):
            sys.exit(f"{mounted}: tensor names differ from {source}")
        for k, (dtype, shape, data) in want.items():
            if got[k][:2] != (dtype, shape):
                sys.exit(f"{mounted}: {k}: {got[k][:2]} != {(dtype, shape)}")
            if got[k][2] != data:
                sys.exit(f"{mounted}: {k}: bytes differ from {source}")
        total += len(want)
    print(f"safetensors: {len(sys.argv) - 1} files, {total} tensors equal")


main()
