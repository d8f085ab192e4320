"""Background prefetch: the policy without FUSE (which files, in which order, each once), demand
reads overtaking prefetch in the fetcher, and ``--prefetch dirs`` through a real mount."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio
from conftest import S3Relay
from test_fetcher import put, run_with_fetcher, s3_store
from test_read_path import put_local, write_manifest

from vfs.errors import VfsError
from vfs.hashing import hash_bytes
from vfs.manifest import Manifest, ManifestPath
from vfs.manifest.v2 import ManifestFilePath, ManifestV2
from vfs.mount.fetcher import ContentFetcher, FetchPolicy
from vfs.mount.prefetch import PrefetchPlanner, PrefetchPolicy
from vfs.mount.readahead import ReadaheadState
from vfs.mount.tree import InodeTree


def tree_of(paths: list[str], links: tuple[str, ...] = ()) -> InodeTree:
    files = [ManifestFilePath.file(p, hash_bytes(p.encode()), 10, 1) for p in paths]
    files += [ManifestFilePath.symlink(p, "a.exr") for p in links]
    return InodeTree.from_manifests([ManifestV2(files=files)])


def paths(tree: InodeTree, inodes: Iterable[int]) -> list[str]:
    return [tree.path_of(i) for i in inodes]


def ino(tree: InodeTree, path: str) -> int:
    node = 1
    for part in path.split("/"):
        found = tree.lookup(node, part.encode())
        assert found is not None, path
        node = found
    return node


def test_parse() -> None:
    assert PrefetchPolicy.parse([]).mode == "none"
    assert PrefetchPolicy.parse(["dirs"]).mode == "dirs"
    assert PrefetchPolicy.parse(["**/*.exr", "tex/*"]) == PrefetchPolicy(
        "globs", ("**/*.exr", "tex/*")
    )
    with pytest.raises(VfsError, match="not both"):
        PrefetchPolicy.parse(["dirs", "*.exr"])


def test_dirs_plans_the_siblings_once_without_links_or_subdirs() -> None:
    tree = tree_of(["seq/b.exr", "seq/a.exr", "seq/c.exr", "seq/sub/d.exr", "other/e.exr"],
                   links=("seq/link.exr",))  # fmt: skip
    planner = PrefetchPlanner(tree, PrefetchPolicy("dirs"))
    assert paths(tree, planner.after_read(ino(tree, "seq/b.exr"))) == ["seq/a.exr", "seq/c.exr"]
    assert list(planner.after_read(ino(tree, "seq/a.exr"))) == []  # the directory was planned
    assert paths(tree, planner.after_read(ino(tree, "other/e.exr"))) == []  # alone there
    assert list(planner.at_mount()) == []
    assert len(list(planner.objects([ino(tree, "seq/a.exr")]))) == 1


def test_all_plans_the_read_files_directory_first_then_everything_once() -> None:
    tree = tree_of(["x/1", "y/2", "y/3", "z"])
    planner = PrefetchPlanner(tree, PrefetchPolicy("all"))
    assert paths(tree, planner.after_read(ino(tree, "y/2"))) == ["y/3", "x/1", "z"]
    assert list(planner.after_read(ino(tree, "x/1"))) == []


def test_globs_plan_at_mount_with_snapshot_semantics() -> None:
    tree = tree_of(["a.exr", "shot/b.exr", "shot/deep/c.exr", "shot/.hidden.exr", "t.png"])
    planner = PrefetchPlanner(tree, PrefetchPolicy("globs", ("*.exr",)))
    assert paths(tree, planner.at_mount()) == ["a.exr"]  # `*` does not cross `/`
    planner = PrefetchPlanner(tree, PrefetchPolicy("globs", ("**/*.exr",)))
    assert paths(tree, planner.at_mount()) == ["a.exr", "shot/b.exr", "shot/deep/c.exr"]
    assert list(planner.after_read(ino(tree, "t.png"))) == []


def test_demand_reads_overtake_prefetch(
    tmp_path: Path,
    s3_client,
    s3_bucket: str,
    s3_relay: S3Relay,  # type: ignore[no-untyped-def]
) -> None:
    """30 objects queued for prefetch through a store that takes 1 s per request, 4 download
    slots: a demand read of another object is served after about one request, not behind
    the queue (prefetch never takes the last slot, and never queues for one)."""
    queued = [put(s3_client, s3_bucket, os.urandom(1000 + i)) for i in range(30)]
    wanted_data = os.urandom(5000)
    wanted = put(s3_client, s3_bucket, wanted_data)
    policy = FetchPolicy(max_fetches=4)
    s3_relay.stall = 1.0
    took: list[float] = []

    async def body(f: ContentFetcher) -> None:
        f.prefetch(queued)
        await trio.sleep(0.3)  # prefetch has taken its slots
        start = time.monotonic()
        got = await f.read([wanted], 0, 5000, ReadaheadState())
        took.append(time.monotonic() - start)
        assert bytes(got) == wanted_data
        assert f.slots.borrowed_tokens <= 3

    stats = run_with_fetcher(tmp_path / "c", s3_store(s3_relay, s3_bucket, policy), body, policy)
    assert took[0] < 1.7, took
    assert stats.counters["prefetch.bytes"] > 0


def test_prefetch_dirs_through_a_mount(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    files = {f"seq/f{i}.exr": os.urandom(100_000 + i) for i in range(5)}
    files["seq/big.exr"] = os.urandom(3 * 4 * 1024 * 1024 + 5)
    files["other/x.exr"] = os.urandom(5000)
    put_local(local_store[0], files)
    m = vfs_mount(tmp_path / "mnt", [write_manifest(tmp_path / "m", files)], local_store[1],
                  "--prefetch", "dirs")  # fmt: skip
    assert (m.path / "seq/f0.exr").read_bytes() == files["seq/f0.exr"]

    def cached(name: str) -> float:
        return float(os.getxattr(m.path / name, "user.vfs.cached"))

    deadline = time.monotonic() + 20
    while any(cached(n) < 1.0 for n in files if n.startswith("seq/")):
        assert time.monotonic() < deadline, {n: cached(n) for n in files}
        time.sleep(0.05)
    assert cached("other/x.exr") == 0.0
    for name, data in files.items():
        assert (m.path / name).read_bytes() == data


def test_bad_prefetch_value_is_refused_before_mounting(tmp_path: Path) -> None:
    from conftest import run_vfs

    (tmp_path / "mnt").mkdir()
    manifest = tmp_path / "m"
    from vfs.manifest import encode_manifest

    manifest.write_bytes(encode_manifest(Manifest([ManifestPath("a", "0" * 32, 1, 1)])))
    out = run_vfs("mount", str(tmp_path / "mnt"), "--manifest", str(manifest), "--store",
                  f"file://{tmp_path}", "--prefetch", "all", "--prefetch", "*.exr",
                  check=False)  # fmt: skip
    assert out.returncode != 0 and "not both" in out.stderr
