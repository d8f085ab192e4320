"""Symbolic links created in a writable mount, committed by ``vfs commit``: format
2025-12-04-beta records them as links (unsafe targets skipped with a warning naming the
link; a link replacing a base file is a link entry, not a deletion; changes and removals of
committed links are the next commit's), format 2023-03-03 follows a link to a regular file
inside the mount like deadline's scan and skips the others with a warning naming them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_commit import BASE, Local, commit, local
from test_compat_deadline import oracle

from vfs.hashing import hash_bytes
from vfs.manifest import MANIFEST_VERSION_V2, apply_diff, decode_manifest, decode_manifest_v2
from vfs.testing import run_vfs

__all__ = ["local"]  # the fixture


def test_v2_diffs_record_symlinks(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    root = m.path
    (root / "renders").mkdir()
    (root / "renders" / "frame.exr").write_bytes(b"pixels")
    os.symlink("frame.exr", root / "renders" / "latest.exr")
    os.symlink("../scenes/comp.nk", root / "renders" / "comp")
    os.symlink("/etc/passwd", root / "renders" / "abs")
    os.symlink("../../elsewhere", root / "renders" / "escape")
    os.unlink(root / "README")
    os.symlink("renders/frame.exr", root / "README")  # a base file replaced by a link
    out = tmp_path / "d1.manifest"
    result = run_vfs("commit", str(root), "--output", str(out), "--json",
                     "--manifest-version", MANIFEST_VERSION_V2)  # fmt: skip
    got = json.loads(result.stdout.splitlines()[-1])
    assert "renders/abs" in result.stderr and "absolute" in result.stderr
    assert "renders/escape" in result.stderr and "escapes" in result.stderr
    assert got["files"] == 1 and got["links"] == 3 and got["deleted"] == 0
    diff = decode_manifest_v2(out.read_bytes())
    links = {f.path: f.symlink_target for f in diff.files if f.is_symlink}
    assert links == {
        "renders/latest.exr": "frame.exr",
        "renders/comp": "../scenes/comp.nk",
        "README": "renders/frame.exr",
    }
    assert [f.path for f in diff.files if f.deleted] == []
    snapshot = apply_diff(decode_manifest(local.manifest.read_bytes()), diff)
    after = {f.path: f for f in snapshot.files}
    assert after["README"].symlink_target == "renders/frame.exr"
    assert after["renders/frame.exr"].hash == hash_bytes(b"pixels")

    # Nothing new: nothing written. Then a changed target and a removed link.
    again = commit(str(root), "--output", str(tmp_path / "d2.manifest"),
                   "--manifest-version", MANIFEST_VERSION_V2)  # fmt: skip
    assert again["manifest_hash"] is None
    os.unlink(root / "renders" / "latest.exr")
    os.symlink("frame.0002.exr", root / "renders" / "latest.exr")
    os.unlink(root / "renders" / "comp")
    third = commit(str(root), "--output", str(tmp_path / "d3.manifest"),
                   "--manifest-version", MANIFEST_VERSION_V2)  # fmt: skip
    assert third["links"] == 1 and third["deleted"] == 1 and third["files"] == 0
    diff = decode_manifest_v2((tmp_path / "d3.manifest").read_bytes())
    assert {(f.path, f.symlink_target, f.deleted) for f in diff.files} == {
        ("renders/latest.exr", "frame.0002.exr", False),
        ("renders/comp", None, True),
    }


def test_v1_follows_links_to_files_inside_the_mount(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    root = m.path
    (root / "out" / "sub").mkdir(parents=True)
    (root / "out" / "frame.exr").write_bytes(b"pixels")
    os.symlink("frame.exr", root / "out" / "latest.exr")  # a new file
    os.symlink("../../scenes/comp.nk", root / "out" / "sub" / "comp")  # an untouched base file
    os.symlink("chain", root / "out" / "chain2")  # a link to a link to a file
    os.symlink("sub/comp", root / "out" / "chain")
    os.symlink("missing.exr", root / "out" / "dangling")
    os.symlink("sub", root / "out" / "dir")
    os.symlink("/etc/hostname", root / "out" / "abs")
    os.symlink("../../../../x", root / "out" / "up")
    out = tmp_path / "o.manifest"
    result = run_vfs("commit", str(root), "--output-dir", "out", "--output", str(out), "--json")
    for name, why in [("dangling", "dangling"), ("dir", "directory"), ("abs", "dangling or"),
                      ("up", "dangling or")]:  # fmt: skip
        assert f"out/{name} is a symbolic link that" in result.stderr and why in result.stderr
    manifest = decode_manifest(out.read_bytes())
    comp = BASE["scenes/comp.nk"]
    assert {p.path: (p.hash, p.size) for p in manifest.paths} == {
        "out/frame.exr": (hash_bytes(b"pixels"), 6),
        "out/latest.exr": (hash_bytes(b"pixels"), 6),
        "out/sub/comp": (hash_bytes(comp), len(comp)),
        "out/chain": (hash_bytes(comp), len(comp)),
        "out/chain2": (hash_bytes(comp), len(comp)),
    }
    mtimes = {p.path: p.mtime for p in manifest.paths}
    assert mtimes["out/latest.exr"] == (root / "out" / "frame.exr").stat().st_mtime_ns // 1000
    assert mtimes["out/chain2"] == (root / "scenes" / "comp.nk").stat().st_mtime_ns // 1000
    assert local.object(comp) == comp


def test_v2_diff_of_a_base_directory_replaced_by_a_file_or_link(
    tmp_path: Path, local: Local
) -> None:
    """Deleting the files of a base directory that is now a file (or a link) is one
    directory delete marker: per-file markers would make the path a directory too, and the
    diff would be invalid (a bug this test found)."""
    m = local.mount()
    root = m.path
    os.rename(root / "scenes", root / "old-scenes")  # scenes/comp.nk, scenes/plates/… gone
    (root / "scenes").write_bytes(b"now a file")
    os.unlink(root / "textures" / "wood.png")
    os.rmdir(root / "textures")
    os.symlink("old-scenes", root / "textures")  # a base directory replaced by a link
    (root / "out" / "new.txt").write_bytes(b"new")  # out/old.txt stays: files deleted one by one
    os.unlink(root / "out" / "old.txt")
    out = tmp_path / "d.manifest"
    got = commit(str(root), "--output", str(out), "--manifest-version", MANIFEST_VERSION_V2)
    assert got["deleted"] == 4 and got["links"] == 1
    diff = decode_manifest_v2(out.read_bytes())
    assert sorted(d.path for d in diff.dirs if d.deleted) == ["scenes", "textures"]
    assert sorted(f.path for f in diff.files if f.deleted) == ["out/old.txt"]
    after = apply_diff(decode_manifest(local.manifest.read_bytes()), diff)
    files = {f.path: f for f in after.files}
    assert files["scenes"].hash == hash_bytes(b"now a file")
    assert files["textures"].symlink_target == "old-scenes"
    assert "old-scenes/plates/plate.0001.exr" in files and "out/new.txt" in files
    assert not any(p.startswith(("scenes/", "textures/")) or p == "out/old.txt" for p in files)


def test_v1_links_match_deadlines_scan_of_the_mount(tmp_path: Path, local: Local) -> None:
    """deadline's snapshot of the mount against the base (the worker's output scan, which
    follows links) finds our outputs with the same hashes, sizes and mtimes; beyond them only
    the files under a link to a directory, which vfs skips with a warning."""
    m = local.mount()
    root = m.path
    (root / "renders").mkdir()
    (root / "renders" / "frame.exr").write_bytes(b"pixels")
    os.symlink("frame.exr", root / "renders" / "latest.exr")
    os.symlink("../scenes/comp.nk", root / "renders" / "comp.nk")
    os.symlink("latest.exr", root / "renders" / "chain.exr")
    os.symlink("nothing", root / "renders" / "dangling")
    os.symlink("../scenes/plates", root / "renders" / "plates")
    out = tmp_path / "o.manifest"
    commit(str(root), "--output", str(out))
    ours = {e.path: e for e in decode_manifest(out.read_bytes()).paths}
    spec = [{"op": "snapshot", "root": str(root), "destination": str(tmp_path / "snap"),
             "name": "output", "diff": str(local.manifest),
             "hash_cache_dir": str(tmp_path / "hc")}]  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    oracle("batch", str(tmp_path / "spec.json"), str(tmp_path / "res.json"), home=tmp_path / "h")
    [res] = json.loads((tmp_path / "res.json").read_text())
    theirs = {e.path: e for e in decode_manifest(Path(res["manifest"]).read_bytes()).paths}
    assert set(ours) == {"renders/frame.exr", "renders/latest.exr", "renders/comp.nk",
                         "renders/chain.exr"}  # fmt: skip
    assert set(theirs) == set(ours) | {"renders/plates/plate.0001.exr"}
    for path, entry in ours.items():
        assert theirs[path] == entry, path
