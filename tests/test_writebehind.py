"""Hash reuse, write-behind (``--upload-on-close``) and the overlay counters of ``vfs stats``,
through real writable mounts over a ``file://`` store and the moto server (through the
fault-injecting relay).

- A file written sequentially from offset 0 is committed without being read again
  (``hash_reused``), also after a remount; any other write, a truncate, or a write after
  the close makes the commit hash the file again, and every committed hash is the hash of
  the file's bytes (a stale hash would publish wrong data).
- With ``--upload-on-close`` the objects of closed files are in the store without a commit;
  the commit then sends no object (not even a HEAD) and the manifest downloads byte-exact.
  A file written again is stored again. A store that fails during write-behind leaves the
  mount up and the commit does the work. Reads of the mount keep priority: while a read's
  GET is held by the relay, a closed file's upload waits (up to ``YIELD_MAX`` per piece).
- Write-behind never stores an object whose bytes do not hash to its key
  (:class:`~vfs.mount.writebehind.VerifyingReader`), on the local store and on S3 (single
  PUT and multipart).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Mounted, Request, S3Relay
from test_commit import BASE, IDS, PREFIX, Local, check_manifest, commit, listed, put_base
from test_overlay import World

from vfs.hashing import hash_bytes
from vfs.manifest import decode_manifest
from vfs.mount.overlay import Overlay
from vfs.mount.overlaydb import KnownHash
from vfs.mount.tree import ROOT_INODE
from vfs.mount.writebehind import YIELD_MAX, ContentChangedError, VerifyingReader, upload_object
from vfs.storage import LocalStore, S3Options, S3Store, data_key
from vfs.testing import run_vfs
from vfs.testing.mounts import unmount_path, vfs_unmount_command
from vfs.testing.relay import wait_for

Mount = Callable[..., Mounted]
MiB = 1024 * 1024


def stats(path: Path) -> dict[str, int]:
    out = run_vfs("stats", str(path), "--json").stdout
    return dict(json.loads(out))


def write_sequential(path: Path, data: bytes, piece: int = MiB) -> None:
    with open(path, "wb") as f:
        for i in range(0, len(data), piece):
            f.write(data[i : i + piece])


@pytest.fixture()
def local(tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]) -> Local:
    return Local(tmp_path, vfs_mount, local_store)


# -- hash reuse ---------------------------------------------------------------------------------


def test_sequentially_written_files_are_not_read_again(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    out = m.path / "out"
    out.mkdir(exist_ok=True)
    frames = {f"out/frame.{i:04d}.exr": os.urandom(3 * MiB + i * 1000) for i in range(3)}
    for rel, data in frames.items():
        write_sequential(m.path / rel, data)
    (out / "empty").write_bytes(b"")  # created, never written: nothing to hash either way
    # Overwritten from offset 0 in full (O_TRUNC), a base file's hash is kept too.
    (m.path / "scenes" / "comp.nk").write_bytes(b"new script\n" * 50)
    expected = {**frames, "out/empty": b"", "scenes/comp.nk": b"new script\n" * 50}
    got = commit(str(m.path), "--output", str(tmp_path / "o1"))
    check_manifest((tmp_path / "o1").read_bytes(), m.path, expected)
    assert got["hash_reused"] == 4 and got["hashed"] == 1 and got["hashed_bytes"] == 0
    assert got["hash_reused_bytes"] == sum(map(len, frames.values())) + 550
    for data in frames.values():
        assert local.object(data) == data

    # The hashes are kept in the overlay: the commit of the stopped mount reads no file
    # (every candidate is looked at again, the committed ones too).
    (m.path / "out" / "later.bin").write_bytes(b"x" * 100_000)
    mtime = (m.path / "out" / "later.bin").stat().st_mtime_ns
    unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))
    again = commit("--overlay-dir", str(local.overlay), "--output", str(tmp_path / "o2"))
    assert again["hash_reused"] == 5 and again["hashed_bytes"] == 0 and again["files"] == 1
    [entry] = decode_manifest((tmp_path / "o2").read_bytes()).paths
    assert (entry.path, entry.hash, entry.mtime) == (
        "out/later.bin",
        hash_bytes(b"x" * 100_000),
        mtime // 1000,
    )


def test_other_writes_make_the_commit_hash_the_file(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    root = m.path / "out"
    root.mkdir(exist_ok=True)
    data = {name: os.urandom(2 * MiB + 77) for name in "abcdefgh"}
    expected: dict[str, bytes] = {}
    # a: written sequentially, then a 4 KiB patch in the middle after its close.
    write_sequential(root / "a", data["a"])
    with open(root / "a", "r+b") as f:
        f.seek(MiB)
        f.write(b"P" * 4096)
    expected["out/a"] = data["a"][:MiB] + b"P" * 4096 + data["a"][MiB + 4096 :]
    # b: the header patched before the close (seek back to 0): the run starts again.
    with open(root / "b", "wb") as f:
        f.write(data["b"])
        f.seek(0)
        f.write(b"HEAD")
    expected["out/b"] = b"HEAD" + data["b"][4:]
    # c: written out of order.
    with open(root / "c", "wb") as f:
        f.seek(MiB)
        f.write(data["c"][MiB:])
        f.seek(0)
        f.write(data["c"][:MiB])
    expected["out/c"] = data["c"]
    # d: written sequentially, then truncated shorter by path.
    write_sequential(root / "d", data["d"])
    os.truncate(root / "d", 1000)
    expected["out/d"] = data["d"][:1000]
    # e: written sequentially, then appended to after its close.
    write_sequential(root / "e", data["e"])
    with open(root / "e", "ab") as f:
        f.write(b"tail")
    expected["out/e"] = data["e"] + b"tail"
    # f: extended by a truncate while open, past what was written.
    with open(root / "f", "wb") as f:
        f.write(data["f"][:1000])
        f.truncate(5000)
    expected["out/f"] = data["f"][:1000] + bytes(4000)
    # g: written sequentially, cut shorter and extended again while open: zeros, not the
    # bytes hashed.
    with open(root / "g", "wb") as f:
        f.write(data["g"])
        f.truncate(1000)
        f.truncate(len(data["g"]))
    expected["out/g"] = data["g"][:1000] + bytes(len(data["g"]) - 1000)
    # h: written sequentially, patched after its close, then its mtime set back (as
    # `cp -p` or an archiver does): same size, same mtime, other bytes.
    write_sequential(root / "h", data["h"])
    st = (root / "h").stat()
    with open(root / "h", "r+b") as f:
        f.seek(100)
        f.write(b"Q" * 100)
    os.utime(root / "h", ns=(st.st_atime_ns, st.st_mtime_ns))
    expected["out/h"] = data["h"][:100] + b"Q" * 100 + data["h"][200:]
    got = commit(str(m.path), "--output", str(tmp_path / "o"))
    # Every hash in the manifest is the hash of the bytes: none was reused stale.
    check_manifest((tmp_path / "o").read_bytes(), m.path, expected)
    assert got["hash_reused"] == 0 and got["hashed"] == 8
    assert got["hashed_bytes"] == sum(map(len, expected.values()))


def test_a_touch_after_the_close_keeps_the_hash(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    data = os.urandom(MiB)
    write_sequential(m.path / "frame.exr", data)
    os.utime(m.path / "frame.exr", ns=(1_800_000_000_123_456_000, 1_800_000_000_123_456_000))
    got = commit(str(m.path), "--output", str(tmp_path / "o"))
    assert got["hash_reused"] == 1 and got["hashed_bytes"] == 0
    manifest = check_manifest((tmp_path / "o").read_bytes(), m.path, {"frame.exr": data})
    assert manifest.paths[0].mtime == 1_800_000_000_123_456


def test_the_recorded_hash_persists_and_goes_before_the_data_changes(tmp_path: Path) -> None:
    w = World(tmp_path)
    data = os.urandom(3 * MiB + 5)

    async def write(o: Overlay) -> None:
        ino = o.create(ROOT_INODE, b"frame", 0o644).ino
        o.opened(ino, writing=True)
        for off in range(0, len(data), MiB):
            await o.write(ino, off, data[off : off + MiB])
        o.released(ino, writing=True)
        assert o.hashes[ino] == KnownHash(hash_bytes(data), len(data), o.nodes[ino].mtime_ns)

    w.run(write)
    db = os.path.join(w.dir, "overlay.db")

    def rows() -> list[tuple[str, int]]:
        with sqlite3.connect(db) as c:
            return list(c.execute("SELECT hash, size FROM hashes"))

    assert rows() == [(hash_bytes(data), len(data))]

    async def rewrite(o: Overlay) -> None:
        ino = w.ino(o, "frame")
        assert o.hashes[ino].hash == hash_bytes(data)  # loaded again
        # The data file cannot be written (a directory now): the write fails, and by
        # then the record is gone, as a crash right after the data changed would need.
        data_file = os.path.join(w.dir, "data", str(ino))
        os.unlink(data_file)
        os.mkdir(data_file)
        with pytest.raises(OSError):
            await o.write(ino, 10, b"new bytes")
        assert rows() == [] and ino not in o.hashes
        os.rmdir(data_file)
        shutil.copyfile(os.devnull, data_file)

    w.run(rewrite)


# -- overlay counters -----------------------------------------------------------------------------


def test_stats_show_the_overlay_counters(local: Local) -> None:
    m = local.mount()
    (m.path / "out").mkdir(exist_ok=True)
    (m.path / "out" / "new.bin").write_bytes(b"n" * 10_000)
    with open(m.path / "big.bin", "r+b") as f:  # a base file written in part: a copy-up
        f.write(b"W" * 4096)
    (m.path / "README").unlink()
    s = stats(m.path)
    assert s["overlay.files.changed"] == 2 and s["overlay.files.created"] == 1
    assert s["overlay.bytes.changed"] == 10_000 + len(BASE["big.bin"])
    assert s["overlay.files.deleted"] == 1
    assert s["overlay.copyup.files"] == 1 and s["overlay.hash.recorded"] == 1
    assert s["overlay.hashes.known"] == 1  # new.bin; big.bin was not written from 0 to its end
    assert s["overlay.write.bytes"] == 10_000 + 4096
    assert "writebehind.pending" not in s  # no write-behind on this mount
    text = run_vfs("stats", str(m.path)).stdout
    assert "overlay.files.changed" in text


# -- write-behind ---------------------------------------------------------------------------------


def s3_mount(
    tmp_path: Path, vfs_mount: Mount, s3_client: Any, bucket: str, endpoint: str
) -> Mounted:
    base = put_base(s3_client, bucket, tmp_path)
    return vfs_mount(tmp_path / "mnt", [base], f"s3://{bucket}/{PREFIX}", "--writable",
                     "--overlay-dir", str(tmp_path / "overlay"), "--upload-on-close",
                     "--endpoint-url", endpoint)  # fmt: skip


def data_keys(contents: Any) -> set[str]:
    return {f"{PREFIX}/{data_key(hash_bytes(c))}" for c in contents}


def test_write_behind_stores_closed_files_before_the_commit(
    tmp_path: Path, s3_endpoint: str, s3_client: Any, s3_bucket: str, s3_relay: S3Relay,
    vfs_mount: Mount,
) -> None:  # fmt: skip
    m = s3_mount(tmp_path, vfs_mount, s3_client, s3_bucket, s3_relay.url)
    (m.path / "out").mkdir(exist_ok=True)
    frames = {f"out/f{i}.exr": os.urandom(MiB + i) for i in range(4)}
    frames["out/big.exr"] = os.urandom(10 * MiB + 5)  # a multipart upload
    for rel, data in frames.items():
        write_sequential(m.path / rel, data)
    (m.path / "out" / "shuffled").write_bytes(b"")
    with open(m.path / "out" / "shuffled", "r+b") as f:  # not sequential: hashed in the mount
        f.seek(100)
        f.write(b"b" * 100)
        f.seek(0)
        f.write(b"a" * 100)
    frames["out/shuffled"] = b"a" * 100 + b"b" * 100
    base_keys = set(listed(s3_client, s3_bucket, f"{PREFIX}/Data/"))
    wanted = data_keys(frames.values())

    def stored() -> bool:
        return wanted <= set(listed(s3_client, s3_bucket, f"{PREFIX}/Data/"))

    wait_for(stored, timeout=60, what="write-behind to store the closed files")
    for rel, data in frames.items():
        key = f"{PREFIX}/{data_key(hash_bytes(data))}"
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data, rel
    wait_for(lambda: stats(m.path)["writebehind.pending"] == 0, timeout=30, what="an empty queue")
    s = stats(m.path)
    assert s["writebehind.uploaded.objects"] == len(frames)
    assert s["writebehind.uploaded.bytes"] == sum(map(len, frames.values()))
    assert s["writebehind.hashed.bytes"] == 200  # only the shuffled file was read to hash it
    assert s.get("writebehind.errors", 0) == 0

    # The commit sends no object and asks nothing about them: only the manifest goes up.
    s3_relay.seen.clear()
    got = commit(str(m.path), *IDS, "--start-time", "1795000000", "--endpoint-url", s3_relay.url)
    data_requests = [r for r in list(s3_relay.seen) if "/Data/" in r.path]
    assert data_requests == []
    puts = [r for r in list(s3_relay.seen) if r.method == "PUT"]
    assert len(puts) == 1 and "/Manifests/" in puts[0].path
    assert got["files"] == len(frames) and got["uploaded"] == 0
    assert got["written_behind"] == len(frames) and got["hashed_bytes"] == 0
    assert set(listed(s3_client, s3_bucket, f"{PREFIX}/Data/")) == base_keys | wanted
    # The manifest downloads byte-exact.
    [key] = listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/")
    manifest = decode_manifest(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert {e.path for e in manifest.paths} == set(frames)
    for e in manifest.paths:
        body = s3_client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/{data_key(e.hash)}")
        assert body["Body"].read() == frames[e.path] == (m.path / e.path).read_bytes()

    # A file written again is stored again, at its close.
    with open(m.path / "out" / "f0.exr", "ab") as f:
        f.write(b"more")
    new = frames["out/f0.exr"] + b"more"
    wait_for(lambda: data_keys([new]) <= set(listed(s3_client, s3_bucket, f"{PREFIX}/Data/")),
             timeout=60, what="the rewritten file stored again")  # fmt: skip
    key = f"{PREFIX}/{data_key(hash_bytes(new))}"
    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == new


def test_a_failing_store_leaves_the_mount_up_and_commit_does_the_work(
    tmp_path: Path, s3_endpoint: str, s3_client: Any, s3_bucket: str, s3_relay: S3Relay,
    vfs_mount: Mount,
) -> None:  # fmt: skip
    m = s3_mount(tmp_path, vfs_mount, s3_client, s3_bucket, s3_relay.url)
    m.expect_log(r"write-behind of out/.* failed")
    s3_relay.down = True  # every request of the mount answered 503 from now on
    (m.path / "out").mkdir(exist_ok=True)
    frames = {f"out/f{i}.exr": os.urandom(200_000 + i) for i in range(3)}
    for rel, data in frames.items():
        write_sequential(m.path / rel, data)
    wait_for(lambda: stats(m.path).get("writebehind.errors", 0) >= len(frames), timeout=60,
             what="write-behind failures")  # fmt: skip
    # The mount is up: it lists, reads back and takes more writes.
    (m.path / "out" / "more.txt").write_bytes(b"more")
    frames["out/more.txt"] = b"more"
    for rel, data in frames.items():
        assert (m.path / rel).read_bytes() == data
    assert not (set(listed(s3_client, s3_bucket, f"{PREFIX}/Data/")) & data_keys(frames.values()))
    # The commit (straight to the server) stores what write-behind could not.
    got = commit(str(m.path), "--output", str(tmp_path / "o"), "--endpoint-url", s3_endpoint)
    assert got["files"] == len(frames) and got["uploaded"] == len(frames)
    assert got["written_behind"] == 0
    check_manifest((tmp_path / "o").read_bytes(), m.path, frames)
    for data in frames.values():
        key = f"{PREFIX}/{data_key(hash_bytes(data))}"
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data
    s3_relay.down = False


def test_reads_of_the_mount_hold_back_write_behind(
    tmp_path: Path, s3_endpoint: str, s3_client: Any, s3_bucket: str, s3_relay: S3Relay,
    vfs_mount: Mount,
) -> None:  # fmt: skip
    """Through a real mount: a demand read of an uncached base file has its GET held by the
    relay; a file written and closed meanwhile is looked up (HEAD) but not sent while the
    read is stalled: its upload waits for the mount's download slots to be free, up to
    :data:`YIELD_MAX` per piece (it is never starved, so it goes up after that even while
    the GET is still held). Then the read returns the base bytes and the object is stored."""
    m = s3_mount(tmp_path, vfs_mount, s3_client, s3_bucket, s3_relay.url)
    plate = BASE["scenes/plates/plate.0001.exr"]
    stall = 8.0
    s3_relay.stall = stall
    s3_relay.stall_only = f"GET /{s3_bucket}/{PREFIX}/{data_key(hash_bytes(plate))}"
    read: list[bytes | BaseException] = []

    def demand_read() -> None:
        try:
            read.append((m.path / "scenes" / "plates" / "plate.0001.exr").read_bytes())
        except BaseException as e:
            read.append(e)

    reader = threading.Thread(target=demand_read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: bool(s3_relay.gets(data_key(hash_bytes(plate)))), timeout=30,
                 what="the read's GET at the relay")  # fmt: skip
        held_since = time.monotonic()
        frame = os.urandom(200_000)
        key = f"{PREFIX}/{data_key(hash_bytes(frame))}"

        def sent(method: str) -> list[Request]:
            return [r for r in list(s3_relay.seen) if r.method == method and key in r.path]

        write_sequential(m.path / "out" / "frame.exr", frame)  # closed: queued
        wait_for(lambda: bool(sent("HEAD")), timeout=30, what="write-behind's HEAD")
        # The upload has begun (the HEAD comes just before the bytes are read): it pauses.
        until = time.monotonic() + 0.8 * YIELD_MAX
        while time.monotonic() < until:
            assert sent("PUT") == [], "write-behind sent its PUT while a read was stalled"
            time.sleep(0.02)
        assert stats(m.path).get("writebehind.uploaded.objects", 0) == 0
        assert reader.is_alive() and time.monotonic() - held_since < stall, (
            "the read's GET was not held for the whole check: the test proved nothing"
        )
        # Never starved: it goes up, and the read then gets the base bytes.
        wait_for(lambda: bool(sent("PUT")), timeout=30, what="write-behind's PUT")
    finally:
        reader.join(timeout=stall + 30)
    assert not reader.is_alive()
    assert read == [plate]
    wait_for(lambda: stats(m.path).get("writebehind.uploaded.objects", 0) == 1, timeout=30,
             what="the upload counted")  # fmt: skip
    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == frame


# -- a wrong object is never stored ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, 9 * MiB + 3])
def test_write_behind_never_stores_bytes_that_are_not_the_key(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, size: int
) -> None:
    src = tmp_path / "data"
    content = os.urandom(size)
    src.write_bytes(content)
    stale = hash_bytes(content + b"!")  # what the file held when it was hashed
    s3 = S3Store(s3_bucket, PREFIX, S3Options(endpoint_url=s3_endpoint))
    local = LocalStore(str(tmp_path / "store"))
    for store in (s3, local):
        with pytest.raises(ContentChangedError):
            upload_object(store, str(src), size, stale, "out/data")
        assert store.head(data_key(stale)) is None
        assert list(store.list_keys("Data/")) == []
        if store is s3:  # a multipart upload was aborted, not left behind
            assert not s3.client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
        assert upload_object(store, str(src), size, hash_bytes(content), "out/data")
        assert store.get_bytes(data_key(hash_bytes(content))) == content
        assert not upload_object(store, str(src), size, hash_bytes(content), "out/data")


def test_uploads_pause_while_the_mount_fetches(tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.write_bytes(b"z" * 3000)
    until = time.monotonic() + 0.5

    def busy() -> bool:  # demand fetches in flight for the first half second
        return time.monotonic() < until

    with open(src, "rb") as f:
        reader = VerifyingReader(f, 3000, hash_bytes(b"z" * 3000), "out/data", busy)
        t0 = time.monotonic()
        assert reader.read(1000) == b"z" * 1000
        paused = time.monotonic() - t0
        t1 = time.monotonic()
        assert reader.read() == b"z" * 2000 and reader.read() == b""
        assert 0.4 <= paused <= YIELD_MAX + 0.5 and time.monotonic() - t1 < 0.2
    with open(src, "rb") as f:
        forever = VerifyingReader(f, 3000, hash_bytes(b"z" * 3000), "x", lambda: True)
        t0 = time.monotonic()
        forever.read(10)
        assert YIELD_MAX - 0.1 <= time.monotonic() - t0 <= YIELD_MAX + 0.5  # never starved
