"""A real DCC reads through the mount: Blender renders the same frame from local files and
from ``vfs mount``.

The test writes two PNG textures, has Blender build a small scene (a textured floor and
box, a camera, a sun) saved as ``scene.blend`` that refers to the textures by relative
paths (``//textures/*.png``), and renders frame 1 with Cycles on the CPU (64×64, 8 samples,
fixed seed, no denoising). The scene directory is then snapshotted and uploaded to a
``file://`` store with the ``vfs`` CLI, mounted, and Blender renders the same frame from the
mount: the ``.blend`` and both textures come through FUSE. The two frames must have equal
decoded pixels, and the mount's counters must show that the daemon fetched every file.

Needs the Debian package ``blender`` (scripts/bootstrap installs it); skipped without it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mounted, require_tool, run_vfs

BLENDER_TIMEOUT = 180
RESOLUTION = 64
Rgb = tuple[int, int, int]

# Run by Blender (``blender -b --python-expr``); argv after ``--``: the .blend to write.
# Absolute texture paths are remapped to relative ones (``//textures/…``) on save.
MAKE_SCENE = r"""
import os
import sys

import bpy

out_blend = sys.argv[sys.argv.index("--") + 1]
root = os.path.dirname(out_blend)
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene


def textured(name, texture, add_mesh, **kwargs):
    add_mesh(**kwargs)
    obj = bpy.context.active_object
    obj.name = name
    mat = bpy.data.materials.new(name + "-material")
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = bpy.data.images.load(os.path.join(root, "textures", texture))
    tex.interpolation = "Closest"
    mat.node_tree.links.new(tex.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    obj.data.materials.append(mat)
    return obj


textured("Floor", "wood.png", bpy.ops.mesh.primitive_plane_add, size=6)
box = textured("Box", "metal.png", bpy.ops.mesh.primitive_cube_add, size=2, location=(0, 0, 1))
box.rotation_euler = (0.0, 0.0, 0.6)
bpy.ops.object.camera_add(location=(6.0, -6.0, 5.0))
camera = bpy.context.active_object
camera.constraints.new("TRACK_TO").target = box
scene.camera = camera
bpy.ops.object.light_add(type="SUN", location=(2.0, -3.0, 8.0), rotation=(0.7, 0.2, 0.4))
bpy.context.active_object.data.energy = 4.0
world = bpy.data.worlds.new("World")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.3
scene.world = world

render = scene.render
render.engine = "CYCLES"
render.resolution_x = render.resolution_y = int(os.environ["VFS_TEST_RESOLUTION"])
render.resolution_percentage = 100
render.image_settings.file_format = "PNG"
render.image_settings.color_mode = "RGB"
render.image_settings.color_depth = "8"
scene.cycles.device = "CPU"
scene.cycles.samples = 8
scene.cycles.seed = 1234
scene.cycles.use_animated_seed = False
scene.cycles.use_adaptive_sampling = False
scene.cycles.use_denoising = False
scene.view_settings.view_transform = "Standard"
scene.frame_start = scene.frame_end = scene.frame_current = 1

bpy.ops.wm.save_as_mainfile(filepath=out_blend, relative_remap=True, compress=False)
for image in bpy.data.images:
    assert image.filepath.startswith("//textures/"), image.filepath
    assert image.packed_file is None, image.name
print("VFS-TEST images:", sorted(image.filepath for image in bpy.data.images))
"""


# -- PNG ------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, size: int, pixel: Callable[[int, int], Rgb]) -> None:
    """An 8-bit RGB PNG of ``size``×``size`` pixels, ``pixel(x, y)`` each."""
    rows = b"".join(b"\0" + bytes(c for x in range(size) for c in pixel(x, y)) for y in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(path: Path) -> tuple[int, int, int, bytes]:
    """``(width, height, channels, pixels)`` of an 8-bit, non-interlaced PNG.

    Only the pixels count: metadata chunks (Blender writes its own, with a date) are skipped.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, f"{path}: unsupported PNG layout"
            channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        filter_type, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[filter_type]
            line[i] = (line[i] + pred) & 0xFF
        out += line
        prev = line
    return width, height, channels, bytes(out)


# -- Blender --------------------------------------------------------------------------------


def run_blender(args: list[str], home: Path) -> str:
    """Run ``blender -b --factory-startup ARGS``; its output, or fail with it."""
    env = {**os.environ, "HOME": str(home), "VFS_TEST_RESOLUTION": str(RESOLUTION)}
    result = subprocess.run(
        ["blender", "-b", "--factory-startup", *args],
        capture_output=True,
        text=True,
        timeout=BLENDER_TIMEOUT,
        env=env,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"blender {' '.join(args)} exited {result.returncode}:\n{output}")
    return output


def render(blend: Path, out_dir: Path, home: Path) -> Path:
    """Render frame 1 of ``blend`` into ``out_dir``; the PNG written."""
    output = run_blender([str(blend), "-o", f"{out_dir}/frame_####", "-f", "1"], home)
    frame = out_dir / "frame_0001.png"
    assert frame.is_file(), f"Blender wrote no frame:\n{output}"
    return frame


def stats(m: Mounted) -> dict[str, int]:
    return dict(json.loads(os.getxattr(m.path, "user.vfs.stats")))


def checker(size: int, on: Rgb, off: Rgb) -> Callable[[int, int], Rgb]:
    """A checkerboard of ``size``-pixel squares."""
    return lambda x, y: on if (x // size + y // size) % 2 else off


@pytest.mark.slow
def test_blender_renders_the_same_frame_from_the_mount(
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
    blend = scene / "scene.blend"
    output = run_blender(["--python-expr", MAKE_SCENE, "--", str(blend)], home)
    assert "VFS-TEST images: ['//textures/metal.png', '//textures/wood.png']" in output, output
    files = sorted(str(p.relative_to(scene)) for p in scene.rglob("*") if p.is_file())
    assert files == ["scene.blend", "textures/metal.png", "textures/wood.png"]

    local_frame = render(blend, tmp_path / "render-local", home)

    snap = run_vfs(
        "manifest", "snapshot", "--root", str(scene), "-d", str(tmp_path / "manifests"), "--json"
    )
    manifest = json.loads(snap.stdout)["manifest"]
    run_vfs(
        "attachment", "upload", "-m", manifest, "-r", str(scene), "--s3-root-uri", local_store[1]
    )
    mounted = vfs_mount(tmp_path / "mnt", [manifest], local_store[1])
    before = stats(mounted)
    assert before.get("fetch.objects", 0) == 0, before

    mount_frame = render(mounted.path / "scene.blend", tmp_path / "render-mount", home)

    after = stats(mounted)
    w1, h1, c1, local_pixels = decode_png(local_frame)
    w2, h2, c2, mount_pixels = decode_png(mount_frame)
    assert (w1, h1, c1) == (RESOLUTION, RESOLUTION, 3)
    assert (w2, h2, c2) == (w1, h1, c1)
    differing = sum(a != b for a, b in zip(local_pixels, mount_pixels, strict=True))
    assert differing == 0, f"{differing} of {len(local_pixels)} channel values differ"

    # The frame shows both textures (a missing image renders magenta): the green floor
    # checker and the yellow squares of the box.
    pixels = [local_pixels[i : i + 3] for i in range(0, len(local_pixels), 3)]
    green = sum(1 for r, g, b in pixels if g > 100 and g > 2 * r and g > 2 * b)
    yellow = sum(1 for r, g, b in pixels if r > 100 and g > 100 and b < r // 3)
    assert green > len(pixels) // 20, f"floor texture not visible ({green} green pixels)"
    assert yellow > len(pixels) // 200, f"box texture not visible ({yellow} yellow pixels)"

    # Every file came through the daemon: fetched from the store and read.
    assert after.get("fetch.objects", 0) >= len(files), after
    assert after.get("fetch.bytes", 0) >= sum((scene / f).stat().st_size for f in files), after
    assert after.get("req.read", 0) > 0, after
    assert after.get("eio", 0) == 0, after
