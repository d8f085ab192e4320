"""``vfs cache warm -i GLOB`` selects exactly the files ``vfs manifest snapshot -i GLOB``
would include (deadline's recursive ``glob`` semantics, :mod:`vfs.manifest.globs`), also
where plain ``fnmatch`` would differ: ``*`` does not cross ``/``, ``**/`` spans zero or more
directories, and neither matches names starting with ``.``."""

from __future__ import annotations

import json
import os
from fnmatch import fnmatch
from pathlib import Path

import pytest
from conftest import run_vfs

from vfs.hashing import hash_bytes
from vfs.manifest import Manifest, ManifestPath, decode_manifest, encode_manifest
from vfs.mount.tree import InodeTree
from vfs.mount.warm import tree_objects
from vfs.snapshot import glob_files
from vfs.storage import LocalStore, data_key

FILES = [
    "a.exr",
    "shots/b.exr",
    "shots/sub/c.exr",
    "shots/.hidden.exr",
    ".config/d.exr",
    "shots/.cache/e.exr",
    "shots/notes.txt",
    "top.txt",
]
PATTERNS = ["*.exr", "**/*.exr", "shots/*", "shots/**", "**/.hidden.exr", "s*/*/*.exr", "**"]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """The files on disk (``root``) and a manifest listing every one of them."""
    root = tmp_path / "root"
    entries = []
    for n, path in enumerate(FILES):
        data = f"file {n}: {path}\n".encode()
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        entries.append(ManifestPath(path, hash_bytes(data), len(data), 1_700_000_000_000_000))
    manifest = tmp_path / "all.manifest"
    manifest.write_bytes(encode_manifest(Manifest(entries)))
    return root, manifest


def snapshot_selects(root: Path, pattern: str) -> set[str]:
    """The relative paths ``manifest snapshot -i PATTERN`` includes."""
    return {os.path.relpath(p, root) for p in glob_files(str(root), [pattern])}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_warm_selects_what_snapshot_includes(tree: tuple[Path, Path], pattern: str) -> None:
    root, manifest = tree
    paths, objects = tree_objects(
        InodeTree.from_manifests([decode_manifest(manifest.read_bytes())]), [pattern]
    )
    assert set(paths) == snapshot_selects(root, pattern)
    assert len(objects) == len(paths)


def test_the_patterns_are_ones_where_fnmatch_differs(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    differ = [
        p for p in PATTERNS if {f for f in FILES if fnmatch(f, p)} != snapshot_selects(root, p)
    ]
    assert set(differ) >= {"*.exr", "**/*.exr", "shots/*", "**"}


def test_cache_warm_include_end_to_end(
    tree: tuple[Path, Path], local_store: tuple[Path, str], tmp_path: Path
) -> None:
    root, manifest = tree
    store = LocalStore(str(local_store[0]))
    for path in FILES:
        data = (root / path).read_bytes()
        store.put_bytes(data_key(hash_bytes(data)), data)
    expected = snapshot_selects(root, "*.exr")
    assert expected == {"a.exr"}  # fnmatch would also take the five .exr files below
    warmed = json.loads(
        run_vfs(
            "cache", "warm", "--manifest", str(manifest), "--store", local_store[1],
            "-i", "*.exr", "--cache-dir", str(tmp_path / "cache"), "--json",
        ).stdout
    )  # fmt: skip
    assert warmed["files"] == 1 and warmed["objects"] == 1 and warmed["failures"] == []
    assert warmed["fetched_bytes"] == (root / "a.exr").stat().st_size
