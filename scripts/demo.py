#!/usr/bin/env python3
"""The main job on the embedded default, end to end, in one command.

1. snapshot a real directory already on this machine (default: the Python standard
   library's ``email`` and ``json`` packages' parent, i.e. a tree of real source files)
   into a manifest, as ``deadline manifest snapshot`` would;
2. upload its content to a local ``file://`` store laid out like the S3 bucket;
3. ``vfs mount`` the manifest, read and verify every file through the mount twice (cold:
   fetched from the store into the cache; warm: from the kernel's page cache);
4. print a short table and unmount.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from vfs.hashing import hash_bytes
from vfs.manifest import decode_manifest
from vfs.mount.service import is_mounted
from vfs.snapshot import snapshot_directory, write_manifest_file
from vfs.storage import open_store
from vfs.transfer import upload_manifest_files


def vfs(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "vfs", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"vfs {args[0]} failed:\n{result.stderr.strip()}")
    return result.stdout.strip()


def read_pass(mnt: Path, source: Path, entries: list[tuple[str, str, int]]) -> tuple[int, float]:
    """Read every file through the mount; check bytes, hash and size. Returns bytes, seconds."""
    total = 0
    start = time.perf_counter()
    for path, hash_, size in entries:
        data = (mnt / path).read_bytes()
        if len(data) != size or hash_bytes(data) != hash_ or data != (source / path).read_bytes():
            sys.exit(f"MISMATCH: {path} read through the mount differs from the source")
        total += len(data)
    return total, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=os.path.join(sysconfig.get_paths()["stdlib"], "email"),
        help="directory to snapshot (default: the standard library's email package)",
    )
    parser.add_argument("--workdir", help="keep the store, cache and manifest here")
    args = parser.parse_args()

    source = Path(args.source).resolve()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vfs-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    store_dir, cache_dir, mnt = work / "store", work / "cache", work / "mnt"
    shutil.rmtree(cache_dir, ignore_errors=True)
    mnt.mkdir(exist_ok=True)

    print(f"source      {source}")
    t0 = time.perf_counter()
    manifest = snapshot_directory(str(source))
    if manifest is None:
        sys.exit(f"{source} has no files to snapshot")
    manifest_file = write_manifest_file(str(source), manifest, str(work / "manifests"))
    t_snap = time.perf_counter() - t0
    print(f"manifest    {manifest_file}")
    store = open_store(f"file://{store_dir}")
    t0 = time.perf_counter()
    up = upload_manifest_files(manifest, str(source), store)
    t_up = time.perf_counter() - t0
    print(f"store       {store.uri} ({up.uploaded} objects uploaded, {up.skipped} present)")

    t0 = time.perf_counter()
    print(vfs("mount", str(mnt), "--manifest", manifest_file, "--store", store.uri,
              "--cache-dir", str(cache_dir)))  # fmt: skip
    t_mount = time.perf_counter() - t0
    try:
        decoded = decode_manifest(Path(manifest_file).read_bytes(), source=manifest_file)
        entries = [(p.path, p.hash, p.size) for p in decoded.paths]
        cold_bytes, cold_s = read_pass(mnt, source, entries)
        cold_stats = json.loads(os.getxattr(mnt, "user.vfs.stats"))
        warm_bytes, warm_s = read_pass(mnt, source, entries)
        stats = json.loads(os.getxattr(mnt, "user.vfs.stats"))
    finally:
        if is_mounted(str(mnt)):
            vfs("unmount", str(mnt))

    files = len(entries)
    rows = [
        ("snapshot (hash)", files, sum(p.size for p in manifest.paths), t_snap, "", ""),
        ("upload to store", up.objects, up.uploaded_bytes, t_up, "", ""),
        ("mount", files, 0, t_mount, "", ""),
        ("read, cold", files, cold_bytes, cold_s, cold_stats.get("cache.hits", 0),
         cold_stats.get("fetch.objects", 0)),
        ("read, warm", files, warm_bytes, warm_s,
         stats.get("cache.hits", 0) - cold_stats.get("cache.hits", 0),
         stats.get("fetch.objects", 0) - cold_stats.get("fetch.objects", 0)),
    ]  # fmt: skip
    print()
    print(
        f"{'step':<17}{'files':>7}{'bytes':>12}{'seconds':>9}{'MB/s':>9}{'hits':>6}{'fetches':>9}"
    )
    for step, n, nbytes, secs, hits, fetches in rows:
        rate = f"{nbytes / secs / 1e6:.0f}" if nbytes and secs else ""
        print(f"{step:<17}{n:>7}{nbytes:>12}{secs:>9.3f}{rate:>9}{hits!s:>6}{fetches!s:>9}")
    print()
    print(f"all {files} files verified byte-for-byte through the mount; unmounted {mnt}")
    print("(warm reads come from the kernel page cache: the daemon sees no read requests)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
