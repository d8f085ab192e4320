"""One merge rule everywhere: a real FUSE mount, ``vfs cache warm`` and ``vfs manifest merge``
of the same layered manifests give the same tree, also where a later manifest replaces a
directory with a file or a file with a directory; a manifest that is not a tree is refused
by all three."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_vfs

from vfs.hashing import hash_bytes
from vfs.manifest import (
    Manifest,
    ManifestFilePath,
    ManifestPath,
    ManifestV2,
    decode_any_manifest,
    encode_manifest,
    encode_manifest_v2,
)
from vfs.storage import LocalStore, data_key

T = 1_700_000_000_000_000

OLD = {
    "scene/tex/a.png": b"texture a " * 300,
    "scene/tex/sub/b.png": b"texture b " * 200,
    "scene/main.blend": b"the scene",
    "render": b"an old file where a directory comes later",
}
NEW = {
    "scene/tex": b"a file replacing the directory scene/tex",
    "render/frame1.exr": b"a frame in a directory replacing the file render",
}
EXPECTED = {
    "scene/main.blend": OLD["scene/main.blend"],
    "render/frame1.exr": NEW["render/frame1.exr"],
    "scene/tex": NEW["scene/tex"],
}


def write_layer(path: Path, files: dict[str, bytes], fmt: str) -> Path:
    if fmt == "v1":
        entries = [ManifestPath(p, hash_bytes(d), len(d), T) for p, d in files.items()]
        path.write_bytes(encode_manifest(Manifest(entries)))
    else:
        v2 = [ManifestFilePath.file(p, hash_bytes(d), len(d), T) for p, d in files.items()]
        path.write_bytes(encode_manifest_v2(ManifestV2(files=v2, dirs=[])))
    return path


def walk(root: Path) -> tuple[dict[str, bytes], set[str]]:
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            dirs.add(os.path.normpath(os.path.join(rel, d)))
        for f in filenames:
            files[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_bytes()
    return files, dirs


@pytest.mark.parametrize("new_format", ["v1", "v2"])
def test_mount_warm_and_merge_give_the_same_tree(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
    new_format: str,
) -> None:
    store = LocalStore(str(local_store[0]))
    for data in [*OLD.values(), *NEW.values()]:
        store.put_bytes(data_key(hash_bytes(data)), data)
    old = write_layer(tmp_path / "old.manifest", OLD, "v1")
    new = write_layer(tmp_path / "new.manifest", NEW, new_format)

    # vfs manifest merge
    out = run_vfs(
        "manifest",
        "merge",
        "--root",
        "/proj",
        "-m",
        str(old),
        "-m",
        str(new),
        "-d",
        str(tmp_path / "merged"),
        "--json",
    ).stdout
    merged = decode_any_manifest(Path(json.loads(out)["manifest"]).read_bytes())
    entries = merged.paths if isinstance(merged, Manifest) else merged.files
    assert {e.path: e.hash for e in entries} == {p: hash_bytes(d) for p, d in EXPECTED.items()}

    # vfs cache warm: exactly the content of the merged tree, nothing of what was replaced
    cache = tmp_path / "cache"
    warmed = json.loads(
        run_vfs(
            "cache",
            "warm",
            "--manifest",
            str(old),
            "--manifest",
            str(new),
            "--store",
            local_store[1],
            "--cache-dir",
            str(cache),
            "--json",
        ).stdout
    )
    assert warmed["files"] == len(EXPECTED) and warmed["objects"] == len(EXPECTED)
    assert warmed["fetched_bytes"] == sum(map(len, EXPECTED.values()))
    assert warmed["failures"] == []

    # a real mount of the same layers, on the warmed cache: same tree, nothing fetched
    m = vfs_mount(tmp_path / "mnt", [old, new], local_store[1], cache_dir=cache)
    files, dirs = walk(m.path)
    assert files == EXPECTED
    assert dirs == {"scene", "render"}
    assert (m.path / "scene" / "tex").is_file()
    assert (m.path / "render").is_dir()
    counters = dict(json.loads(os.getxattr(m.path, "user.vfs.stats")))
    assert counters.get("fetch.objects", 0) == counters.get("fetch.blocks", 0) == 0


def test_a_manifest_that_is_not_a_tree_is_refused_everywhere(
    tmp_path: Path, local_store: tuple[Path, str]
) -> None:
    ok = write_layer(tmp_path / "ok.manifest", {"x": b"x"}, "v1")
    bad = write_layer(tmp_path / "bad.manifest", {"a/b": b"1", "a": b"2"}, "v1")
    commands = [
        ["manifest", "merge", "--root", "/r", "-m", str(ok), "-m", str(bad), "-d", str(tmp_path)],
        [
            "cache",
            "warm",
            "--manifest",
            str(ok),
            "--manifest",
            str(bad),
            "--store",
            local_store[1],
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        [
            "mount",
            str(tmp_path / "mnt"),
            "--foreground",
            "--manifest",
            str(ok),
            "--manifest",
            str(bad),
            "--store",
            local_store[1],
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    ]
    (tmp_path / "mnt").mkdir()
    for args in commands:
        result = run_vfs(*args, check=False, timeout=60)
        assert result.returncode != 0, args
        assert str(bad) in result.stderr, (args, result.stderr)
        assert "'a' is both a file and a directory in this one manifest" in result.stderr
