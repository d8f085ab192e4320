"""The filesystem through real FUSE mounts: content, metadata, errors, S3, unmounting."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest
from conftest import Mounted, pid_alive, run_vfs

from vfs.hashing import hash_bytes
from vfs.manifest import Manifest, ManifestPath, encode_manifest
from vfs.mount.service import is_mounted
from vfs.storage import LocalStore, data_key

MTIME_BASE = 1_700_000_000_123_456  # µs


def make_manifest(
    tmp_path: Path, files: dict[str, bytes], store_dir: Path | None, name: str = "m.manifest"
) -> Path:
    """Write a manifest of ``files`` and, when ``store_dir`` is given, put their objects there."""
    entries = []
    for i, (path, data) in enumerate(sorted(files.items())):
        entries.append(ManifestPath(path, hash_bytes(data), len(data), MTIME_BASE + i * 1_000_001))
        if store_dir is not None:
            LocalStore(str(store_dir)).put_bytes(data_key(hash_bytes(data)), data)
    out = tmp_path / name
    out.write_bytes(encode_manifest(Manifest(entries)))
    return out


def stats(m: Mounted) -> dict[str, int]:
    return dict(json.loads(os.getxattr(m.path, "user.vfs.stats")))


FILES = {
    "scenes/shot010/comp.nk": b"nuke script\n" * 100,
    "scenes/shot010/plates/plate.0001.exr": os.urandom(300_000),
    "scenes/shot010/plates/plate.0002.exr": os.urandom(5),
    "textures/wood.png": b"\x89PNG" + os.urandom(70_000),
    "textures/empty.tx": b"",
    "café/ünïcode ﬁle.txt": "grüße".encode(),
    "README": b"top level file",
}


@pytest.fixture()
def mounted(tmp_path: Path, vfs_mount, local_store) -> Mounted:  # type: ignore[no-untyped-def]
    manifest = make_manifest(tmp_path, FILES, local_store[0])
    return vfs_mount(tmp_path / "mnt", [manifest], local_store[1])  # type: ignore[no-any-return]


def test_content_and_metadata_are_exact(mounted: Mounted) -> None:
    for i, (path, data) in enumerate(sorted(FILES.items())):
        p = mounted.path / path
        assert p.read_bytes() == data, path
        st = p.stat()
        assert st.st_size == len(data)
        assert st.st_mtime_ns == (MTIME_BASE + i * 1_000_001) * 1000
        assert os.getxattr(p, "user.vfs.hash").decode() == hash_bytes(data)
    listed = sorted(
        str(p.relative_to(mounted.path)) for p in mounted.path.rglob("*") if p.is_file()
    )
    assert listed == sorted(FILES)
    assert sorted(os.listdir(mounted.path)) == ["README", "café", "scenes", "textures"]
    assert (mounted.path / "scenes" / "shot010").is_dir()


def test_ranged_reads_serve_the_right_bytes(mounted: Mounted) -> None:
    data = FILES["scenes/shot010/plates/plate.0001.exr"]
    with open(mounted.path / "scenes/shot010/plates/plate.0001.exr", "rb") as f:
        for off, size in [(0, 10), (131_000, 5000), (299_990, 100), (400_000, 10)]:
            f.seek(off)
            assert f.read(size) == data[off : off + size]


def test_read_only(mounted: Mounted) -> None:
    with pytest.raises(OSError) as e:
        os.open(mounted.path / "README", os.O_RDWR)
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        (mounted.path / "new").mkdir()
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        (mounted.path / "README").unlink()
    assert e.value.errno == errno.EROFS


def test_inode_numbers_are_stable_across_remounts(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    manifest = make_manifest(tmp_path, FILES, local_store[0])
    a = vfs_mount(tmp_path / "a", [manifest], local_store[1])
    b = vfs_mount(tmp_path / "b", [manifest], local_store[1])
    for path in FILES:
        assert (a.path / path).stat().st_ino == (b.path / path).stat().st_ino


def test_second_pass_is_answered_by_the_kernel(mounted: Mounted) -> None:
    for path in FILES:
        (mounted.path / path).stat()
        assert not (mounted.path / (path + ".missing")).exists()
    before = stats(mounted)
    for path in FILES:
        (mounted.path / path).stat()
        assert not (mounted.path / (path + ".missing")).exists()
    after = stats(mounted)
    for kind in ("req.lookup", "req.getattr"):
        assert after.get(kind, 0) == before.get(kind, 0), kind


def test_cache_is_reused_by_a_second_mount(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    manifest = make_manifest(tmp_path, FILES, local_store[0])
    first = vfs_mount(tmp_path / "a", [manifest], local_store[1])
    assert (first.path / "textures/wood.png").read_bytes() == FILES["textures/wood.png"]
    assert stats(first)["fetch.objects"] == 1
    second = vfs_mount(tmp_path / "b", [manifest], local_store[1])
    assert (second.path / "textures/wood.png").read_bytes() == FILES["textures/wood.png"]
    assert stats(second).get("fetch.objects", 0) == 0
    assert stats(second)["cache.hits"] == 1


def test_later_manifest_wins(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    older = make_manifest(tmp_path, {"a.txt": b"old", "b.txt": b"b"}, local_store[0], "1.manifest")
    newer = make_manifest(tmp_path, {"a.txt": b"newer"}, local_store[0], "2.manifest")
    m = vfs_mount(tmp_path / "mnt", [older, newer], local_store[1])
    assert (m.path / "a.txt").read_bytes() == b"newer"
    assert (m.path / "b.txt").read_bytes() == b"b"
    assert os.getxattr(m.path / "a.txt", "user.vfs.source").decode() == str(newer)


def test_missing_object_fails_that_read_only(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    files = {"gone.bin": b"this object will be deleted", "ok.bin": b"still here"}
    manifest = make_manifest(tmp_path, files, local_store[0])
    key = data_key(hash_bytes(files["gone.bin"]))
    (local_store[0] / key).unlink()
    m = vfs_mount(tmp_path / "mnt", [manifest], local_store[1])
    m.expect_log(r"ERROR vfs\.mount\.fs: read of gone\.bin failed: object .* does not exist")
    m.expect_log(r"WARNING vfs\.mount\.service: gone\.bin: its content .* is not in the store")
    with pytest.raises(OSError) as e:
        (m.path / "gone.bin").read_bytes()
    assert e.value.errno == errno.EIO
    assert (m.path / "ok.bin").read_bytes() == files["ok.bin"]
    assert key in m.log_text()
    assert "gone.bin" in m.log_text()
    assert is_mounted(str(m.path))


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_corrupt_object_is_refused(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
    damage: str,
) -> None:
    files = {"bad.bin": os.urandom(10_000), "ok.bin": b"fine"}
    manifest = make_manifest(tmp_path, files, local_store[0])
    obj = local_store[0] / data_key(hash_bytes(files["bad.bin"]))
    data = bytearray(obj.read_bytes())
    if damage == "bitflip":
        data[1234] ^= 0x01
    else:
        del data[-1]
    obj.write_bytes(bytes(data))
    m = vfs_mount(tmp_path / "mnt", [manifest], local_store[1])
    m.expect_log(r"ERROR vfs\.mount\.fs: read of bad\.bin failed: .*the store holds wrong data")
    m.expect_log(r"WARNING vfs\.mount\.service: bad\.bin: .* has \d+ bytes, the manifest says")
    with pytest.raises(OSError) as e:
        (m.path / "bad.bin").read_bytes()
    assert e.value.errno == errno.EIO
    assert data_key(hash_bytes(files["bad.bin"])) in m.log_text()
    assert (m.path / "ok.bin").read_bytes() == b"fine"
    # Nothing unverified was cached.
    assert not list((tmp_path / "cache" / "objects").rglob(hash_bytes(files["bad.bin"])))


BAD_MANIFESTS = {
    "invalid-json": (b'{"hashAlg": "xxh128", "paths": [', "not valid JSON"),
    "absolute": ("/etc/passwd", "absolute"),
    "dotdot": ("a/../../etc/passwd", "'..'"),
    "empty-component": ("a//b", "empty component"),
    "nul": ("a\x00b", "NUL"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_refused_before_mounting(
    tmp_path: Path, local_store: tuple[Path, str], case: str
) -> None:
    bad, problem = BAD_MANIFESTS[case]
    manifest = tmp_path / "bad.manifest"
    if isinstance(bad, bytes):
        manifest.write_bytes(bad)
    else:
        doc = {
            "hashAlg": "xxh128",
            "manifestVersion": "2023-03-03",
            "paths": [{"hash": hash_bytes(b""), "mtime": 1, "path": bad, "size": 0}],
            "totalSize": 0,
        }
        manifest.write_text(json.dumps(doc))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_vfs(
        "mount", str(mnt), "--manifest", str(manifest), "--store", local_store[1],
        "--cache-dir", str(tmp_path / "cache"), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert str(manifest) in result.stderr
    assert problem in result.stderr
    if not isinstance(bad, bytes):
        assert repr(bad) in result.stderr  # the entry is named
    assert not is_mounted(str(mnt))


def test_file_and_directory_conflict_in_one_manifest_is_refused(
    tmp_path: Path, local_store: tuple[Path, str]
) -> None:
    # Across manifests the later one wins (tests/test_merge_layers.py); within one manifest a
    # path that is both a file and a directory is malformed.
    first = make_manifest(tmp_path, {"x": b"fine"}, local_store[0], "1.manifest")
    files = {"a/b": b"file", "a/b/c": b"nested"}
    second = make_manifest(tmp_path, files, local_store[0], "2.manifest")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_vfs(
        "mount", str(mnt), "--manifest", str(first), "--manifest", str(second),
        "--store", local_store[1], "--cache-dir", str(tmp_path / "cache"), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "both a file and a directory" in result.stderr
    assert str(second) in result.stderr
    assert "a/b/c" in result.stderr
    assert not is_mounted(str(mnt))


def test_mount_errors_are_clear(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    manifest = make_manifest(tmp_path, {"x": b"x"}, local_store[0])
    cache = str(tmp_path / "cache")
    missing = tmp_path / "no-such-dir"
    r = run_vfs("mount", str(missing), "--manifest", str(manifest), "--store", local_store[1],
                "--cache-dir", cache, check=False)  # fmt: skip
    assert r.returncode != 0 and "not a directory" in r.stderr and str(missing) in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_vfs("mount", str(tmp_path / "empty"), "--manifest", str(tmp_path / "nope.manifest"),
                "--store", local_store[1], "--cache-dir", cache, check=False)  # fmt: skip
    assert r.returncode != 0 and "nope.manifest" in r.stderr
    m = vfs_mount(tmp_path / "mnt", [manifest], local_store[1])
    r = run_vfs("mount", str(m.path), "--manifest", str(manifest), "--store", local_store[1],
                "--cache-dir", cache, check=False)  # fmt: skip
    assert r.returncode != 0 and "already a mount point" in r.stderr
    r = run_vfs("unmount", str(tmp_path), check=False)
    assert r.returncode != 0 and "not mounted" in r.stderr


def test_unmount_stops_the_daemon(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    manifest = make_manifest(tmp_path, {"x": b"x"}, local_store[0])
    m = vfs_mount(tmp_path / "mnt", [manifest], local_store[1])
    run_vfs("unmount", str(m.path))
    assert not is_mounted(str(m.path))
    for _ in range(200):
        if not pid_alive(m.pid):
            break
        threading.Event().wait(0.05)
    else:
        pytest.fail("daemon still running after unmount")
    assert "unmounted" in m.log_text()


def test_mount_from_s3(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    s3_endpoint: str,
    s3_client,  # type: ignore[no-untyped-def]
    s3_bucket: str,
) -> None:
    src = tmp_path / "src"
    for path, data in FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    out = tmp_path / "manifests"
    run_vfs("manifest", "snapshot", "--root", str(src), "-d", str(out))
    manifest = next(out.iterdir())
    store = f"s3://{s3_bucket}/DeadlineCloud"
    run_vfs("attachment", "upload", "-m", str(manifest), "-r", str(src), "--s3-root-uri", store,
            "--endpoint-url", s3_endpoint)  # fmt: skip
    key = "DeadlineCloud/Manifests/test/" + manifest.name
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=manifest.read_bytes())
    m = vfs_mount(tmp_path / "mnt", [f"s3://{s3_bucket}/{key}"], store,
                  "--endpoint-url", s3_endpoint)  # fmt: skip
    for path, data in FILES.items():
        assert (m.path / path).read_bytes() == data
        assert (m.path / path).stat().st_mtime_ns == (src / path).stat().st_mtime_ns // 1000 * 1000


def test_concurrent_readers_share_one_fetch(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    data = os.urandom(8 * 1024 * 1024)
    manifest = make_manifest(tmp_path, {"big.bin": data}, local_store[0])
    m = vfs_mount(tmp_path / "mnt", [manifest], local_store[1])
    results: list[bool] = []
    start = threading.Barrier(16)

    def reader() -> None:
        start.wait()
        with open(m.path / "big.bin", "rb") as f:
            results.append(f.read() == data)

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 16
    assert stats(m)["fetch.blocks"] == 2  # 8 MiB = two 4 MiB blocks, each fetched once
