"""Downloading manifests' files (:class:`DownloadOrchestrator`) from a local store and from
the moto S3 server, with real files; deadline's own upload and download as the oracle."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Relay
from test_compat_deadline import ROOT_PREFIX, oracle

from vfs.errors import AccessDeniedError, BucketNotFoundError, StoreError
from vfs.hashing import hash_bytes
from vfs.manifest import (
    FILE_CHUNK_SIZE_BYTES,
    Manifest,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestPath,
    ManifestV2,
    decode_manifest,
    encode_manifest,
)
from vfs.pathmap import (
    PathFormat,
    PathMappingApplier,
    PathMappingRule,
    resolve_manifest_paths,
)
from vfs.snapshot import snapshot_directory
from vfs.storage import LocalStore, ObjectStore, S3Options, S3Store, data_key
from vfs.transfer import (
    ConflictResolution,
    DownloadError,
    DownloadOrchestrator,
    InsufficientSpaceError,
    LowTransferRateDetector,
    PathEscapeError,
    TransferProgress,
    upload_manifest_files,
)

FILES = {
    "a.txt": b"alpha",
    "sub/dup.txt": b"alpha",
    "sub/b.bin": random.Random(1).randbytes(300_000),
    "empty": b"",
    "deep/x/y.dat": random.Random(2).randbytes(3000),
    "caf\u00e9/\U0001f600.txt": b"unicode",
    "archive.tar.gz": b"tarball",
    ".hiddenrc": b"dot",
}
MTIME_US = 1_700_000_000_123_456  # microseconds since the epoch (reference §1.1)


def make_manifest(
    files: dict[str, bytes] = FILES, mtime: int = MTIME_US
) -> tuple[Manifest, dict[str, bytes]]:
    """A manifest of ``files`` and the CAS objects it needs (``{key: bytes}``)."""
    paths = [
        ManifestPath(rel, hash_bytes(data), len(data), mtime + i)
        for i, (rel, data) in enumerate(sorted(files.items()))
    ]
    return Manifest(paths), {data_key(hash_bytes(d)): d for d in files.values()}


def fill(store: ObjectStore, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        store.put_bytes(key, data)


def tree(root: Path) -> dict[str, bytes]:
    """``{relative path: content}`` of every regular file under ``root``."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.part")]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "jobs/root", S3Options(endpoint_url=endpoint))


def s3_store(endpoint: str, bucket: str, prefix: str = "jobs/root") -> S3Store:
    return S3Store(bucket, prefix, S3Options(endpoint_url=endpoint))


# -- basics ------------------------------------------------------------------------------


def test_roundtrip_bytes_mtimes_modes(store: ObjectStore, tmp_path: Path) -> None:
    m, objects = make_manifest()
    fill(store, objects)
    dest = tmp_path / "dest"
    stats = DownloadOrchestrator(store, verify_hash=True).download_manifest(m, str(dest))
    assert tree(dest) == FILES
    assert stats.files_transferred == len(FILES) and stats.files_failed == 0
    assert stats.bytes_transferred == sum(map(len, FILES.values()))
    umask = os.umask(0o022)
    os.umask(umask)
    for entry in m.paths:
        st = os.stat(dest / entry.path)
        assert st.st_mtime_ns == entry.mtime * 1000  # (atime too, until the read above)
        assert st.st_mode & 0o777 == 0o666 & ~umask
    assert leftovers(dest) == []


def test_large_object_in_parallel_ranges(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    big = random.Random(3).randbytes(5 * 1024 * 1024 + 17)
    m, objects = make_manifest({"big.bin": big, "small.txt": b"s"})
    store = s3_store(s3_endpoint, s3_bucket)
    fill(store, objects)
    gets: list[bytes | None] = []

    def before_send(request: Any, **_: Any) -> None:
        gets.append(request.headers.get("Range"))

    store.client.meta.events.register("before-send.s3.GetObject", before_send)
    orch = DownloadOrchestrator(store, part_size=1024 * 1024, multipart_threshold=2 * 1024**2)
    orch.download_manifest(m, str(tmp_path / "d"))
    assert (tmp_path / "d/big.bin").read_bytes() == big
    ranged = [r for r in gets if r]
    assert len(ranged) == 6 and b"bytes=0-1048575" in ranged


def test_legacy_key_without_suffix(tmp_path: Path) -> None:
    """deadline ``download_file`` retries ``Data/{hash}`` on a 404 (reference §4)."""
    m, objects = make_manifest({"old.txt": b"from an old uploader"})
    store = LocalStore(str(tmp_path / "store"))
    fill(store, {k.removesuffix(".xxh128"): v for k, v in objects.items()})
    DownloadOrchestrator(store).download_manifest(m, str(tmp_path / "d"))
    assert (tmp_path / "d/old.txt").read_bytes() == b"from an old uploader"


def test_missing_and_corrupt_objects_named(tmp_path: Path) -> None:
    m, objects = make_manifest({"ok.txt": b"fine", "gone.txt": b"missing", "bad.txt": b"right"})
    store = LocalStore(str(tmp_path / "store"))
    fill(store, {k: (b"wrong" if v == b"right" else v) for k, v in objects.items()})
    store.put_bytes(data_key(hash_bytes(b"missing")), b"")  # wrong size too
    os.remove(store.describe(data_key(hash_bytes(b"missing"))))
    with pytest.raises(DownloadError) as e:
        DownloadOrchestrator(store, verify_hash=True).download_manifest(m, str(tmp_path / "d"))
    text = str(e.value)
    assert "2 of 3 files were not downloaded" in text
    assert data_key(hash_bytes(b"missing")) in text and "gone.txt" in text
    assert "content hash" in text and "bad.txt" in text
    assert tree(tmp_path / "d") == {"ok.txt": b"fine"}
    assert leftovers(tmp_path / "d") == []
    # Same size, wrong content: only the hash check notices it.
    d2 = tmp_path / "d2"
    with pytest.raises(DownloadError):
        DownloadOrchestrator(store).download_manifest(m, str(d2))
    assert (d2 / "bad.txt").read_bytes() == b"wrong"


def test_objects_of_the_wrong_size_refused_naming_the_key(
    store: ObjectStore, tmp_path: Path
) -> None:
    """An object longer or shorter than the manifest's size, under the right key, fails
    its file with an error naming the key (the longer one as soon as it runs over); no
    file of either is left, not even a temporary one."""
    files = {"long.txt": b"right", "short.txt": b"exactly ten", "ok.txt": b"fine"}
    m, objects = make_manifest(files)
    fill(store, objects)
    long_key, short_key = data_key(hash_bytes(b"right")), data_key(hash_bytes(b"exactly ten"))
    store.put_bytes(long_key, b"right and then some")
    store.put_bytes(short_key, b"exactly")
    with pytest.raises(DownloadError) as e:
        DownloadOrchestrator(store).download_manifest(m, str(tmp_path / "d"))
    text = str(e.value)
    assert "2 of 3 files were not downloaded" in text
    assert f"{store.describe(long_key)} has more than the 5 bytes the manifest gives long.txt" in (
        text
    )
    assert f"{store.describe(short_key)} has 7 bytes, the manifest gives 11 for short.txt" in text
    assert tree(tmp_path / "d") == {"ok.txt": b"fine"}
    assert leftovers(tmp_path / "d") == []


def test_v2_symlinks_runnable_empty_dirs(tmp_path: Path) -> None:
    data = b"#!/bin/sh\necho hi\n"
    m = ManifestV2(
        files=[
            ManifestFilePath.file(
                "bin/run.sh", hash_bytes(data), len(data), MTIME_US, runnable=True
            ),
            ManifestFilePath.symlink("bin/link", "run.sh"),
            ManifestFilePath.file("doc.txt", hash_bytes(b"doc"), 3, MTIME_US),
        ],
        dirs=[ManifestDirectoryPath("empty/inner")],
    )
    store = LocalStore(str(tmp_path / "store"))
    fill(store, {data_key(hash_bytes(data)): data, data_key(hash_bytes(b"doc")): b"doc"})
    dest = tmp_path / "d"
    DownloadOrchestrator(store).download_manifest(m, str(dest))
    assert os.readlink(dest / "bin/link") == "run.sh"
    assert (dest / "bin/link").read_bytes() == data
    assert os.stat(dest / "bin/run.sh").st_mode & 0o111
    assert not os.stat(dest / "doc.txt").st_mode & 0o111
    assert (dest / "empty/inner").is_dir()


# -- deadline as the oracle ----------------------------------------------------------------


def build_source(root: Path) -> dict[str, bytes]:
    files = {
        "scene/shot.ma": random.Random(4).randbytes(9 * 1024 * 1024 + 5),  # > 8 MiB: multipart
        "scene/tex/wood.png": random.Random(5).randbytes(70_000),
        "caf\u00e9 space/n\u00e4me.txt": b"unicode name",
        "empty.dat": b"",
        "notes.txt": b"notes\n",
    }
    for i, (rel, data) in enumerate(sorted(files.items())):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_650_000_000_123_456_789 + i * 10**9))
    return files


def test_deadline_upload_downloaded_like_deadline_download(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    """What deadline uploads (``S3AssetManager.upload_assets``) we download byte-exact with
    its mtimes, and our result equals deadline's ``download_files_from_manifests``."""
    src = tmp_path / "src"
    files = build_source(src)
    got = oracle(
        "upload",
        "--bucket",
        s3_bucket,
        "--root-prefix",
        ROOT_PREFIX,
        "--cache-dir",
        str(tmp_path / "dl-cache"),
        "--endpoint",
        s3_endpoint,
        *sorted(str(src / rel) for rel in files),
        home=tmp_path / "home",
        env={"AWS_ENDPOINT_URL": s3_endpoint},
    )
    body = s3_client.get_object(Bucket=s3_bucket, Key=str(got["manifest_key"]))["Body"].read()
    manifest = decode_manifest(body)
    root = Path(str(got["root"]))
    assert {p.path for p in manifest.paths} == {
        (src / rel).relative_to(root).as_posix() for rel in files
    }

    ours = tmp_path / "ours"
    orch = DownloadOrchestrator(
        s3_store(s3_endpoint, s3_bucket, ROOT_PREFIX),
        part_size=2 * 1024 * 1024,
        multipart_threshold=4 * 1024 * 1024,
        verify_hash=True,
    )
    stats = orch.download_manifest(manifest, str(ours))
    assert stats.files_transferred == len(files)
    for entry in manifest.paths:
        assert (ours / entry.path).read_bytes() == (root / entry.path).read_bytes()
        src_ns = os.stat(root / entry.path).st_mtime_ns
        assert os.stat(ours / entry.path).st_mtime_ns == src_ns // 1000 * 1000  # µs (§1.1)

    theirs = tmp_path / "theirs"
    mfile = tmp_path / "input.manifest"
    mfile.write_bytes(encode_manifest(manifest))
    oracle(
        "download",
        "--bucket",
        s3_bucket,
        "--root-prefix",
        ROOT_PREFIX,
        "--endpoint",
        s3_endpoint,
        "--dest",
        str(theirs),
        str(mfile),
        home=tmp_path / "home",
        env={"AWS_ENDPOINT_URL": s3_endpoint},
    )
    assert tree(ours) == tree(theirs)
    for rel in tree(theirs):
        a, b = os.stat(ours / rel), os.stat(theirs / rel)
        assert abs(a.st_mtime_ns - b.st_mtime_ns) <= 1000  # deadline's float: ±1 µs
        assert a.st_mode == b.st_mode

    # The same again into both trees with create_copy: the same copy names.
    oracle(
        "download",
        "--bucket",
        s3_bucket,
        "--root-prefix",
        ROOT_PREFIX,
        "--endpoint",
        s3_endpoint,
        "--dest",
        str(theirs),
        str(mfile),
        home=tmp_path / "home",
        env={"AWS_ENDPOINT_URL": s3_endpoint},
    )
    orch.download_manifest(manifest, str(ours), conflict_resolution=ConflictResolution.CREATE_COPY)
    assert tree(ours) == tree(theirs)
    assert leftovers(ours) == []


# -- conflicts -----------------------------------------------------------------------------


def test_conflict_resolution(tmp_path: Path) -> None:
    m, objects = make_manifest({"a.txt": b"new", "archive.tar.gz": b"new tar", ".rc": b"new rc"})
    store = LocalStore(str(tmp_path / "store"))
    fill(store, objects)
    dest = tmp_path / "d"
    dest.mkdir()
    for name in ("a.txt", "archive.tar.gz", ".rc"):
        (dest / name).write_bytes(b"old")
    orch = DownloadOrchestrator(store)

    s = orch.download_manifest(m, str(dest), conflict_resolution=ConflictResolution.SKIP)
    assert s.files_skipped == 3 and s.files_transferred == 0
    assert tree(dest) == {"a.txt": b"old", "archive.tar.gz": b"old", ".rc": b"old"}

    orch.download_manifest(m, str(dest), conflict_resolution=ConflictResolution.CREATE_COPY)
    orch.download_manifest(m, str(dest), conflict_resolution=ConflictResolution.CREATE_COPY)
    assert tree(dest) == {
        "a.txt": b"old",
        "a (1).txt": b"new",
        "a (2).txt": b"new",
        "archive.tar.gz": b"old",
        "archive.tar (1).gz": b"new tar",  # Path.stem/suffix, as deadline
        "archive.tar (2).gz": b"new tar",
        ".rc": b"old",
        ".rc (1)": b"new rc",
        ".rc (2)": b"new rc",
    }

    orch.download_manifest(m, str(dest), conflict_resolution=ConflictResolution.OVERWRITE)
    assert (dest / "a.txt").read_bytes() == b"new"
    assert (dest / "archive.tar.gz").read_bytes() == b"new tar"
    assert leftovers(dest) == []


def test_eight_concurrent_create_copy_downloads(tmp_path: Path) -> None:
    files = {f"d{i % 4}/f{i}.bin": random.Random(i).randbytes(2000 + i) for i in range(60)}
    m, objects = make_manifest(files)
    store = LocalStore(str(tmp_path / "store"))
    fill(store, objects)
    dest = tmp_path / "d"
    barrier = threading.Barrier(8)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            s = DownloadOrchestrator(store, workers=4).download_manifest(m, str(dest))
            results.append(s.paths)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    all_paths = [p for r in results for p in r]
    assert len(all_paths) == len(set(all_paths)) == 8 * len(files)  # distinct names, no loss
    got = tree(dest)
    assert len(got) == 8 * len(files)
    for rel, data in files.items():
        stem, ext = rel.rsplit(".", 1)
        names = [rel] + [f"{stem} ({n}).{ext}" for n in range(1, 8)]
        assert all(got[n] == data for n in names), rel
    assert leftovers(dest) == []


# -- cancellation, disk space, escapes, fatal errors ----------------------------------------


def test_cancel_mid_transfer_leaves_no_partial_file(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    files = {f"f{i}.bin": random.Random(i).randbytes(200_000) for i in range(20)}
    files["big.bin"] = random.Random(99).randbytes(6 * 1024 * 1024)
    m, objects = make_manifest(files)
    store = s3_store(s3_endpoint, s3_bucket)
    fill(store, objects)
    reports: list[TransferProgress] = []

    def progress(p: TransferProgress) -> bool:
        reports.append(p)
        return p.files_done < 2

    dest = tmp_path / "d"
    orch = DownloadOrchestrator(
        store, workers=3, range_workers=2, part_size=256 * 1024, multipart_threshold=512 * 1024
    )
    t0 = time.monotonic()
    stats = orch.download_manifest(m, str(dest), progress=progress)
    assert time.monotonic() - t0 < 10
    assert stats.cancelled
    assert stats.files_transferred < len(files)
    assert stats.bytes_transferred < sum(map(len, files.values()))
    got = tree(dest)
    assert got and all(files[rel] == data for rel, data in got.items())  # only whole files
    assert leftovers(dest) == []
    assert all(r.files_total == len(files) for r in reports)


def test_disk_space_refused_before_writing(tmp_path: Path) -> None:
    m, objects = make_manifest()
    store = LocalStore(str(tmp_path / "store"))
    fill(store, objects)
    need = sum(map(len, FILES.values()))
    dest = tmp_path / "d"
    with pytest.raises(InsufficientSpaceError) as e:
        DownloadOrchestrator(store).download_manifest(m, str(dest), available_bytes=need - 1)
    assert f"needs {need} bytes, {need - 1} are available" in str(e.value)
    assert tree(dest) == {}
    DownloadOrchestrator(store).download_manifest(m, str(dest), available_bytes=need)
    assert tree(dest) == FILES


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_space_refused_on_a_real_small_filesystem(tmp_path: Path) -> None:
    big = random.Random(7).randbytes(2 * 1024 * 1024)
    m, objects = make_manifest({"big.bin": big})
    store = LocalStore(str(tmp_path / "store"))
    fill(store, objects)
    with small_tmpfs(tmp_path / "small", "1m") as small:
        with pytest.raises(InsufficientSpaceError, match=f"needs {len(big)} bytes"):
            DownloadOrchestrator(store).download_manifest(m, str(small / "d"))
        assert list(small.rglob("*")) == [small / "d"]


def test_symlink_escape_refused(tmp_path: Path) -> None:
    m, objects = make_manifest({"ok.txt": b"ok", "sub/evil.txt": b"evil"})
    store = LocalStore(str(tmp_path / "store"))
    fill(store, objects)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(PathEscapeError) as e:
        DownloadOrchestrator(store).download_manifest(m, str(dest))
    assert str(dest / "sub/evil.txt") in str(e.value) and "outside" in str(e.value)
    assert list(outside.iterdir()) == []
    assert not (dest / "ok.txt").exists()  # refused before anything was written


def test_resolved_paths_mapping_and_escape(tmp_path: Path) -> None:
    m, objects = make_manifest({"out/a.exr": b"frame", "other/b.txt": b"b"})
    store = LocalStore(str(tmp_path / "store"))
    fill(store, objects)
    local = tmp_path / "local"
    rules = [PathMappingRule(PathFormat.WINDOWS, "C:\\Proj\\OUT", str(local))]
    resolved = resolve_manifest_paths(
        m.paths, "c:\\proj", PathFormat.WINDOWS, PathMappingApplier(rules)
    )
    assert [u.entry.path for u in resolved.unmapped] == ["other/b.txt"]
    stats = DownloadOrchestrator(store).download_to_resolved_paths(resolved.resolved, [str(local)])
    assert stats.files_transferred == 1 and tree(local) == {"a.exr": b"frame"}
    # A rule whose destination lies outside the roots given: refused.
    with pytest.raises(PathEscapeError, match="inside none of the destination roots"):
        DownloadOrchestrator(store).download_to_resolved_paths(
            resolved.resolved, [str(tmp_path / "elsewhere")]
        )


def test_resolved_paths_create_v2_directories_inside_their_root(tmp_path: Path) -> None:
    """A v2 manifest's directories, empty ones included, resolved like its files: created
    at their mapped path, checked inside their root (a link leaving it, or a destination
    outside every root, is refused before anything is written); delete markers ignored."""
    m = ManifestV2(
        files=[ManifestFilePath.file("out/a.exr", hash_bytes(b"frame"), 5, MTIME_US)],
        dirs=[ManifestDirectoryPath("out/empty/inner"), ManifestDirectoryPath("out/e2"),
              ManifestDirectoryPath("out/gone", deleted=True)],
    )  # fmt: skip
    store = LocalStore(str(tmp_path / "store"))
    fill(store, {data_key(hash_bytes(b"frame")): b"frame"})
    local = tmp_path / "local"
    rules = [PathMappingRule(PathFormat.POSIX, "/proj/out", str(local))]
    resolved = resolve_manifest_paths(
        [*m.dirs, *m.files], "/proj", PathFormat.POSIX, PathMappingApplier(rules)
    )
    stats = DownloadOrchestrator(store).download_to_resolved_paths(resolved.resolved, [str(local)])
    assert stats.files_transferred == 1 and tree(local) == {"a.exr": b"frame"}
    assert (local / "empty/inner").is_dir() and (local / "e2").is_dir()
    assert not (local / "gone").exists()
    # A directory on the way that is a link leaving the root: refused, nothing written.
    outside = tmp_path / "outside"
    outside.mkdir()
    local2 = tmp_path / "local2"
    local2.mkdir()
    (local2 / "empty").symlink_to(outside)
    rules2 = [PathMappingRule(PathFormat.POSIX, "/proj/out", str(local2))]
    resolved2 = resolve_manifest_paths(
        [*m.dirs, *m.files], "/proj", PathFormat.POSIX, PathMappingApplier(rules2)
    )
    with pytest.raises(PathEscapeError, match="outside the destination root"):
        DownloadOrchestrator(store).download_to_resolved_paths(resolved2.resolved, [str(local2)])
    assert list(outside.iterdir()) == [] and sorted(os.listdir(local2)) == ["empty"]
    # A directory whose mapped path is in none of the roots: refused.
    with pytest.raises(PathEscapeError, match="inside none of the destination roots"):
        DownloadOrchestrator(store).download_to_resolved_paths(
            [r for r in resolved.resolved if isinstance(r.entry, ManifestDirectoryPath)],
            [str(tmp_path / "elsewhere")],
        )


def test_missing_bucket_fails_fast_with_one_error(tmp_path: Path, s3_endpoint: str) -> None:
    files = {f"f{i}.txt": f"file {i}".encode() for i in range(400)}
    m, _ = make_manifest(files)
    store = s3_store(s3_endpoint, "vfs-no-such-bucket")
    gets: list[str] = []
    store.client.meta.events.register(
        "before-send.s3.GetObject", lambda request, **_: gets.append(request.url)
    )
    t0 = time.monotonic()
    with pytest.raises(BucketNotFoundError) as e:
        DownloadOrchestrator(store, workers=8).download_manifest(m, str(tmp_path / "d"))
    assert "vfs-no-such-bucket" in str(e.value) and "bucket" in str(e.value)
    assert len(gets) <= 16, len(gets)
    assert time.monotonic() - t0 < 5
    assert tree(tmp_path / "d") == {} and leftovers(tmp_path / "d") == []


def test_uploaded_by_vfs_downloaded(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    src = tmp_path / "src"
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    m = snapshot_directory(str(src))
    assert m is not None
    store = s3_store(s3_endpoint, s3_bucket)
    upload_manifest_files(m, str(src), store)
    DownloadOrchestrator(store).download_manifest(m, str(tmp_path / "d"))
    assert tree(tmp_path / "d") == {e.path: (src / e.path).read_bytes() for e in m.paths}


def test_v2_chunked_file_from_chunk_objects(tmp_path: Path) -> None:
    """A v2 file over 256 MiB is one CAS object per 256 MiB chunk (reference §2)."""
    chunk = FILE_CHUNK_SIZE_BYTES
    data = os.urandom(chunk + 100_000)
    parts = [data[:chunk], data[chunk:]]
    m = ManifestV2(
        files=[
            ManifestFilePath.chunked(
                "huge.bin", [hash_bytes(p) for p in parts], len(data), MTIME_US
            )
        ]
    )
    store = LocalStore(str(tmp_path / "store"))
    fill(store, {data_key(hash_bytes(p)): p for p in parts})
    del parts
    dest = tmp_path / "d"
    stats = DownloadOrchestrator(store, verify_hash=True).download_manifest(m, str(dest))
    assert stats.bytes_transferred == len(data)
    assert hash_bytes((dest / "huge.bin").read_bytes()) == hash_bytes(data)
    assert os.stat(dest / "huge.bin").st_mtime_ns == MTIME_US * 1000


def test_broken_bodies_fetched_again_a_bounded_number_of_times(
    tmp_path: Path, s3_relay: S3Relay, s3_bucket: str
) -> None:
    """One retry layer: a body cut off mid-read is fetched again ``retries`` times, then
    the download stops with an error naming the object, and leaves nothing behind."""
    m, objects = make_manifest({"cut.bin": random.Random(8).randbytes(300_000)})
    store = s3_store(s3_relay.url, s3_bucket)
    fill(store, objects)
    s3_relay.reset_after = 100_000
    with pytest.raises(StoreError) as e:
        DownloadOrchestrator(store, retries=2).download_manifest(m, str(tmp_path / "d"))
    [key] = objects
    assert key in str(e.value)
    assert len(s3_relay.gets(key)) == 3  # the first GET and 2 retries, nothing multiplied
    assert tree(tmp_path / "d") == {} and leftovers(tmp_path / "d") == []


def test_access_denied_fails_fast(tmp_path: Path, s3_relay: S3Relay, s3_bucket: str) -> None:
    """A 403 (here: the bucket owner check S3 makes) stops the download at the first one."""
    files = {f"f{i}.txt": f"file {i}".encode() for i in range(200)}
    m, objects = make_manifest(files)
    fill(s3_store(s3_relay.url, s3_bucket), objects)
    s3_relay.expected_owner = "111111111111"
    store = S3Store(
        s3_bucket,
        "jobs/root",
        S3Options(endpoint_url=s3_relay.url, expected_bucket_owner="222222222222"),
    )
    with pytest.raises(AccessDeniedError, match="access denied") as e:
        DownloadOrchestrator(store, workers=8).download_manifest(m, str(tmp_path / "d"))
    assert s3_bucket in str(e.value)
    assert len(s3_relay.gets("/Data/")) <= 16
    assert tree(tmp_path / "d") == {} and leftovers(tmp_path / "d") == []


def test_low_transfer_rate_detector_cancels_a_stalled_download(
    tmp_path: Path, s3_relay: S3Relay, s3_bucket: str
) -> None:
    """The worker agent's policy as a progress callback: slow reports in a row with no file
    completed cancel; reports keep coming while the body is stalled."""
    m, objects = make_manifest({"stalled.bin": random.Random(10).randbytes(1_000_000)})
    store = s3_store(s3_relay.url, s3_bucket)
    fill(store, objects)
    s3_relay.stall_body = 30  # the first 64 KiB, then nothing for 30 s
    detector = LowTransferRateDetector(threshold=1_000_000, reports=10)
    orch = DownloadOrchestrator(store, progress_interval=0.05)
    t0 = time.monotonic()
    stats = orch.download_manifest(m, str(tmp_path / "d"), progress=detector)
    assert time.monotonic() - t0 < 10
    assert detector.triggered and stats.cancelled and stats.files_transferred == 0
    assert tree(tmp_path / "d") == {} and leftovers(tmp_path / "d") == []


def test_low_transfer_rate_detector_counts() -> None:
    d = LowTransferRateDetector(threshold=100, reports=3)

    def report(rate: float, files: int) -> bool:
        return d(TransferProgress(0, 0, files, 10, rate, 1.0))

    assert report(10, 0) and report(10, 0)
    assert report(10, 1)  # a completed file resets the count, then this one counts
    assert report(500, 1)  # a good rate resets it
    assert report(10, 1) and report(10, 1) and not report(10, 1)
    assert d.triggered


def test_overwrite_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    m, objects = make_manifest({"a.txt": b"downloaded"})
    store = LocalStore(str(tmp_path / "store"))
    fill(store, objects)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "a.txt").symlink_to(outside)
    DownloadOrchestrator(store).download_manifest(
        m, str(dest), conflict_resolution=ConflictResolution.OVERWRITE
    )
    assert outside.read_bytes() == b"precious"
    assert not (dest / "a.txt").is_symlink() and (dest / "a.txt").read_bytes() == b"downloaded"
