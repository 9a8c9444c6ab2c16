"""With HF_HUB_CACHE pointing at a `haagenti mount --layout hf` and HF_HUB_OFFLINE=1,
resolves REPO_ID's files with the real `huggingface_hub` package and checks them against
the sources. Arguments: REPO_ID REVISION REL::SOURCE... Exits 1 naming the first
difference."""
import os
import sys

from huggingface_hub import snapshot_download, try_to_load_from_cache


def same(path, source):
    with open(path, "rb") as a, open(source, "rb") as b:
        return a.read() == b.read()


def main():
    repo_id, revision = sys.argv[1], sys.argv[2]
    pairs = [p.split("::", 1) for p in sys.argv[3:]]
    for rel, source in pairs:
        for rev in (None, revision):
            path = try_to_load_from_cache(repo_id, rel, revision=rev)
            if not isinstance(path, str):
                sys.exit(f"try_to_load_from_cache({repo_id}, {rel}, revision={rev}) = {path!r}")
            if not same(path, source):
                sys.exit(f"{path} differs from {source}")
    for rev in (None, revision):
        folder = snapshot_download(repo_id, revision=rev, local_files_only=True)
        if os.path.basename(folder) != revision:
            sys.exit(f"snapshot_download({repo_id}, revision={rev}) = {folder}")
        for rel, source in pairs:
            if not same(os.path.join(folder, rel), source):
                sys.exit(f"{folder}/{rel} differs from {source}")
    print(f"huggingface_hub: {repo_id}@{revision[:12]}: {len(pairs)} files equal")


main()
