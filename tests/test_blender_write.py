"""A real application writes into a writable mount: Blender opens the scene from the mount,
renders frames 1–2 into ``renders/`` of the mount and saves the ``.blend`` (which it does by
writing a temporary file and renaming it over the old one, keeping the old one as
``scene.blend1``). ``vfs commit`` then uploads exactly the files that are new or changed —
the same names the same Blender run produces in a local copy of the scene — and they
download from the store byte-exact, the frames with the pixels of the local run.

Needs the Debian package ``blender``; skipped without it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mounted, require_tool, run_vfs
from test_blender import MAKE_SCENE, RESOLUTION, checker, decode_png, run_blender, write_png

from vfs.hashing import hash_bytes
from vfs.manifest import decode_manifest

# Run after the frames (``--python-expr``): a change to the scene, then save over the file.
SAVE = r"""
import bpy

bpy.context.scene["vfs_test"] = "rendered"
bpy.ops.wm.save_mainfile()
print("VFS-TEST saved", bpy.data.filepath)
"""


def work(blend: Path, home: Path) -> None:
    """Render frames 1 and 2 of ``blend`` into ``renders/`` beside it, then save it."""
    out = f"{blend.parent}/renders/frame_####"
    output = run_blender([str(blend), "-o", out, "-s", "1", "-e", "2", "-a",
                          "--python-expr", SAVE], home)  # fmt: skip
    assert "VFS-TEST saved" in output, output


def changed(root: Path, base: Path) -> dict[str, bytes]:
    """Files under ``root`` that are not under ``base`` with the same bytes."""
    out: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            rel = str(p.relative_to(root))
            data = p.read_bytes()
            if not (base / rel).is_file() or (base / rel).read_bytes() != data:
                out[rel] = data
    return out


@pytest.mark.slow
def test_blender_writes_into_the_mount_and_commit_uploads_exactly_that(
    tmp_path: Path,
    vfs_mount: Callable[..., Mounted],
    local_store: tuple[Path, str],
) -> None:
    require_tool("blender", "blender")
    home = tmp_path / "home"
    home.mkdir()
    scene = tmp_path / "scene"
    write_png(scene / "textures" / "wood.png", 32, checker(4, (30, 200, 40), (10, 60, 10)))
    write_png(scene / "textures" / "metal.png", 32, checker(8, (230, 200, 20), (200, 40, 20)))
    run_blender(["--python-expr", MAKE_SCENE, "--", str(scene / "scene.blend")], home)

    snap = run_vfs(
        "manifest", "snapshot", "--root", str(scene), "-d", str(tmp_path / "manifests"), "--json"
    )
    manifest = json.loads(snap.stdout)["manifest"]
    run_vfs(
        "attachment", "upload", "-m", manifest, "-r", str(scene), "--s3-root-uri", local_store[1]
    )
    local = tmp_path / "local"  # the same work on a local copy: what it should produce
    shutil.copytree(scene, local)
    work(local / "scene.blend", home)
    expected = changed(local, scene)
    assert {"renders/frame_0001.png", "renders/frame_0002.png", "scene.blend"} <= set(expected)

    m = vfs_mount(tmp_path / "mnt", [manifest], local_store[1], "--writable",
                  "--overlay-dir", str(tmp_path / "overlay"))  # fmt: skip
    work(m.path / "scene.blend", home)
    outputs = changed(m.path, scene)
    assert set(outputs) == set(expected)

    out = tmp_path / "output.manifest"
    result = json.loads(
        run_vfs("commit", str(m.path), "--output", str(out), "--json").stdout.splitlines()[-1]
    )
    committed = decode_manifest(out.read_bytes())
    assert sorted(p.path for p in committed.paths) == sorted(outputs)
    # scene.blend1 is the old scene.blend: its object is in the store already.
    base = {hash_bytes(p.read_bytes()) for p in scene.rglob("*") if p.is_file()}
    new = {hash_bytes(data) for data in outputs.values()} - base
    assert result["files"] == len(outputs) and result["uploaded"] == len(new)

    dest = tmp_path / "download"
    run_vfs("attachment", "download", "-m", str(out), "--dest", str(dest),
            "--s3-root-uri", local_store[1])  # fmt: skip
    for path, data in outputs.items():
        assert (dest / path).read_bytes() == data, path
        st = (m.path / path).stat()
        assert (dest / path).stat().st_mtime_ns // 1000 == st.st_mtime_ns // 1000, path
    for frame in ("renders/frame_0001.png", "renders/frame_0002.png"):
        w, h, c, pixels = decode_png(dest / frame)
        assert (w, h, c) == (RESOLUTION, RESOLUTION, 3)
        assert pixels == decode_png(local / frame)[3], frame
