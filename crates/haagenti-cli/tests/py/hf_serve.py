"""Downloads from a `haagenti serve` with the real `huggingface_hub` client (HF_ENDPOINT and
HF_HOME set by the caller) and checks every file against its source.

Usage: hf_serve.py MODE REPO_ID=REL::SOURCE[,REL::SOURCE...] ...
  first:  snapshot_download and hf_hub_download of every repo, byte-compared
  again:  a second snapshot_download and hf_hub_download (from the client's cache: the
          caller checks no file was fetched again), then an unknown repo, file and
          revision raise the client's own exceptions
Exits 1 naming the first difference."""
import os
import sys

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def same(path, source):
    with open(path, "rb") as a, open(source, "rb") as b:
        return a.read() == b.read()


def parse(args):
    repos = {}
    for arg in args:
        repo_id, pairs = arg.split("=", 1)
        repos[repo_id] = [p.split("::", 1) for p in pairs.split(",")]
    return repos


def check_snapshot(repo_id, pairs):
    folder = snapshot_download(repo_id)
    got = sorted(
        os.path.relpath(os.path.join(d, f), folder)
        for d, _, files in os.walk(folder)
        for f in files
    )
    want = sorted(rel for rel, _ in pairs)
    if got != want:
        sys.exit(f"snapshot_download({repo_id}) holds {got}, want {want}")
    for rel, source in pairs:
        if not same(os.path.join(folder, rel), source):
            sys.exit(f"snapshot_download({repo_id}): {rel} differs from {source}")
    return folder


def check_files(repo_id, pairs, revision=None):
    for rel, source in pairs:
        path = hf_hub_download(repo_id, rel, revision=revision)
        if not same(path, source):
            sys.exit(f"hf_hub_download({repo_id}, {rel}, {revision}) differs from {source}")


def expect(exc, what, fn):
    try:
        fn()
    except exc as e:
        print(f"{what}: {type(e).__name__}")
        return
    except Exception as e:  # noqa: BLE001 - the wrong class is the failure
        sys.exit(f"{what}: raised {type(e).__name__} ({e}), want {exc.__name__}")
    sys.exit(f"{what}: no exception, want {exc.__name__}")


def main():
    mode, repos = sys.argv[1], parse(sys.argv[2:])
    for repo_id, pairs in repos.items():
        if mode == "first":
            folder = check_snapshot(repo_id, pairs)
            # By commit too: the revision the snapshot folder is named after.
            check_files(repo_id, pairs, revision=os.path.basename(folder))
            print(f"{repo_id}: {len(pairs)} files equal ({os.path.basename(folder)[:12]})")
        else:
            check_snapshot(repo_id, pairs)
            check_files(repo_id, pairs)
            print(f"{repo_id}: {len(pairs)} files equal again")
    if mode == "again":
        repo_id, pairs = next(iter(repos.items()))
        rel = pairs[0][0]
        expect(RepositoryNotFoundError, "unknown repo",
               lambda: hf_hub_download("no-such-org/no-such-model", rel))
        expect(RepositoryNotFoundError, "unknown repo (snapshot)",
               lambda: snapshot_download("no-such-org/no-such-model"))
        expect(EntryNotFoundError, "unknown file",
               lambda: hf_hub_download(repo_id, "no-such-file.json"))
        expect(RevisionNotFoundError, "unknown revision",
               lambda: hf_hub_download(repo_id, rel, revision="0" * 40))
        expect(RevisionNotFoundError, "unknown branch (snapshot)",
               lambda: snapshot_download(repo_id, revision="no-such-branch"))


main()
