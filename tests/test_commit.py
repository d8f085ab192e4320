"""``vfs commit`` through real writable mounts: exactly the created and content-changed files
become outputs, with the right hashes, sizes and mtimes; deadline (the oracle, in a
subprocess) finds the same outputs in the mount, reads our output manifest from S3 under
the official key and downloads the files byte-exact; commits are idempotent and resume
after ``kill -9``; files open for writing are skipped (or waited for)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import Mounted, Request, S3Relay
from test_compat_deadline import oracle
from test_mount import make_manifest
from xxhash import xxh3_128_hexdigest

from vfs.commit import CommitOptions, commit_overlay
from vfs.hashing import hash_bytes
from vfs.manifest import (
    MANIFEST_VERSION_V2,
    Manifest,
    ManifestPath,
    apply_diff,
    decode_manifest,
    decode_manifest_v2,
    encode_manifest,
    manifest_hash,
)
from vfs.storage import data_key, format_session_action_time, output_manifest_name
from vfs.testing import run_vfs
from vfs.testing.mounts import run_vfs_on_a_tty, unmount_path, vfs_unmount_command
from vfs.testing.relay import wait_for

BIG = 9 * 1024 * 1024 + 123  # three 4 MiB blocks, the last one partial

BASE = {
    "scenes/comp.nk": b"nuke script\n" * 100,
    "scenes/plates/plate.0001.exr": os.urandom(300_000),
    "textures/wood.png": b"\x89PNG" + os.urandom(70_000),
    "tools/run.sh": b"#!/bin/sh\necho hi\n",
    "big.bin": os.urandom(BIG),
    "README": b"top level file",
    "out/old.txt": b"an input under the output dir",
}

FARM, QUEUE, JOB = "farm-" + "1" * 32, "queue-" + "2" * 32, "job-" + "3" * 32
STEP, TASK, SA = "step-" + "4" * 32, "task-" + "5" * 32 + "-0", "sessionaction-" + "6" * 32 + "-1"
IDS = ["--farm-id", FARM, "--queue-id", QUEUE, "--job-id", JOB, "--step-id", STEP,
       "--task-id", TASK, "--session-action-id", SA]  # fmt: skip
PREFIX = "DeadlineCloud"

Mount = Callable[..., Mounted]


def workload(root: Path) -> dict[str, bytes]:
    """A task-like run: creates, modifies, rewrites with the same bytes, touches, deletes,
    chmods, writes 4 KiB into the middle of a big base file, writes dot-files. Returns the
    expected outputs (without the dot-files)."""
    (root / "out" / "sub").mkdir(parents=True)
    new1, new2 = os.urandom(200_000), b"frame log\n" * 50
    (root / "out" / "frame.0001.exr").write_bytes(new1)
    (root / "out" / "sub" / "log.txt").write_bytes(new2)
    with open(root / "scenes" / "comp.nk", "ab") as f:  # modified
        f.write(b"# edited\n")
    (root / "textures" / "wood.png").write_bytes(BASE["textures/wood.png"])  # same bytes
    os.utime(root / "README", (1_800_000_000, 1_800_000_000))  # touched only
    (root / "scenes" / "plates" / "plate.0001.exr").unlink()  # deleted
    os.chmod(root / "tools" / "run.sh", 0o755)  # mode change only
    patch = os.urandom(4096)
    with open(root / "big.bin", "r+b") as f:  # a partial write: the rest stays in the base
        f.seek(5 * 1024 * 1024 + 17)
        f.write(patch)
    big = bytearray(BASE["big.bin"])
    big[5 * 1024 * 1024 + 17 : 5 * 1024 * 1024 + 17 + 4096] = patch
    (root / "out" / "old.txt").read_bytes()  # read only
    # Dot-files and dot-directories are not outputs (the worker's glob skips them).
    (root / "out" / ".frame.0002.exr.part").write_bytes(b"renderer temp")
    (root / ".cache" / "shaders").mkdir(parents=True)
    (root / ".cache" / "shaders" / "k.bin").write_bytes(b"shader cache")
    return {
        "out/frame.0001.exr": new1,
        "out/sub/log.txt": new2,
        "scenes/comp.nk": BASE["scenes/comp.nk"] + b"# edited\n",
        "big.bin": bytes(big),
    }


def check_manifest(data: bytes, root: Path, expected: dict[str, bytes]) -> Manifest:
    """The v1 manifest holds exactly ``expected``, with the files' hashes, sizes, mtimes."""
    manifest = decode_manifest(data)
    assert encode_manifest(manifest) == data
    got = {e.path: e for e in manifest.paths}
    assert set(got) == set(expected)
    for path, content in expected.items():
        st = (root / path).stat()
        assert got[path] == ManifestPath(
            path, hash_bytes(content), len(content), st.st_mtime_ns // 1000
        ), path
    return manifest


def commit(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_vfs("commit", *args, "--json", env=env)
    return dict(json.loads(result.stdout.splitlines()[-1]))


class Local:
    """A writable mount over a local store, with its overlay dir."""

    def __init__(self, tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]) -> None:
        self.store_dir, self.store = local_store
        self.manifest = make_manifest(tmp_path, BASE, self.store_dir)
        self.overlay = tmp_path / "overlay"
        self.mnt = tmp_path / "mnt"
        self.vfs_mount = vfs_mount

    def mount(self) -> Mounted:
        return self.vfs_mount(self.mnt, [self.manifest], self.store, "--writable",
                              "--overlay-dir", str(self.overlay))  # fmt: skip

    def object(self, content: bytes) -> bytes:
        return (self.store_dir / data_key(hash_bytes(content))).read_bytes()


@pytest.fixture()
def local(tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]) -> Local:
    return Local(tmp_path, vfs_mount, local_store)


def test_commit_holds_exactly_the_changed_files(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    expected = workload(m.path)
    (tmp_path / "out1").mkdir()
    # Only the output dir first, then the rest: each commit takes what is new since.
    first = commit(str(m.path), "--output-dir", "out", "--output", str(tmp_path / "o1"))
    assert first["files"] == 2 and first["open_for_writing"] == []
    outs = {p: c for p, c in expected.items() if p.startswith("out/")}
    check_manifest((tmp_path / "o1").read_bytes(), m.path, outs)
    second = commit(str(m.path), "--output", str(tmp_path / "o2"))
    rest = {p: c for p, c in expected.items() if not p.startswith("out/")}
    check_manifest((tmp_path / "o2").read_bytes(), m.path, rest)
    assert second["files"] == 2 and second["bytes"] == sum(map(len, rest.values()))
    for content in expected.values():  # every CAS object is in the store, byte-exact
        assert local.object(content) == content
    # Idempotent: nothing new, nothing written or uploaded.
    again = commit(str(m.path), "--output", str(tmp_path / "o3"))
    assert again["files"] == 0 and again["uploaded"] == 0 and again["manifest_hash"] is None
    assert not (tmp_path / "o3").exists()
    # A new change after the commit is the next commit's only output.
    (m.path / "out" / "frame.0001.exr").write_bytes(b"re-rendered")
    third = commit(str(m.path), "--output", str(tmp_path / "o4"))
    check_manifest((tmp_path / "o4").read_bytes(), m.path,
                   {"out/frame.0001.exr": b"re-rendered"})  # fmt: skip
    assert third["uploaded"] == 1
    # Dot-files only when asked for.
    dots = commit(str(m.path), "--include-dotfiles", "--output", str(tmp_path / "o5"))
    check_manifest((tmp_path / "o5").read_bytes(), m.path,
                   {"out/.frame.0002.exr.part": b"renderer temp",
                    ".cache/shaders/k.bin": b"shader cache"})  # fmt: skip
    assert dots["files"] == 2


def test_commit_of_a_stopped_mount_and_v2_diff(
    tmp_path: Path, local: Local, vfs_mount: Mount
) -> None:
    m = local.mount()
    expected = workload(m.path)
    mtimes = {p: (m.path / p).stat().st_mtime_ns // 1000 for p in expected}
    unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))
    # Unmounted: the overlay is read alone; big.bin's untouched bytes come from the store.
    out = tmp_path / "diff.manifest"
    got = commit("--overlay-dir", str(local.overlay), "--output", str(out),
                 "--manifest-version", MANIFEST_VERSION_V2)  # fmt: skip
    assert got["files"] == 4 and got["deleted"] == 1 and got["mode_changes"] == 1
    diff = decode_manifest_v2(out.read_bytes())
    base = decode_manifest(local.manifest.read_bytes())
    assert (
        diff.parent_manifest_hash == manifest_hash(base) == hash_bytes(local.manifest.read_bytes())
    )
    by_path = {f.path: f for f in diff.files}
    assert set(by_path) == {*expected, "scenes/plates/plate.0001.exr", "tools/run.sh"}
    assert by_path["scenes/plates/plate.0001.exr"].deleted
    assert by_path["tools/run.sh"].runnable
    assert by_path["tools/run.sh"].hash == hash_bytes(BASE["tools/run.sh"])
    for path, content in expected.items():
        f = by_path[path]
        assert (f.hash, f.size, f.mtime) == (hash_bytes(content), len(content), mtimes[path])
        assert local.object(content) == content
    # The diff applied to its parent is the mount's new state.
    state = {f.path: f for f in apply_diff(base, diff).files}
    assert "scenes/plates/plate.0001.exr" not in state
    assert state["README"].hash == hash_bytes(BASE["README"])
    assert state["big.bin"].hash == hash_bytes(expected["big.bin"])
    # Mounted again, the same overlay: nothing left to commit.
    m2 = local.mount()
    assert commit(str(m2.path), "--output", str(tmp_path / "x"))["files"] == 0


def test_files_open_for_writing_are_skipped_or_waited_for(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    (m.path / "out" / "done.txt").write_bytes(b"closed")
    f = open(m.path / "out" / "busy.txt", "wb")  # noqa: SIM115 (closed below)
    try:
        f.write(b"partial")
        f.flush()
        got = commit(str(m.path), "--output", str(tmp_path / "o1"))
        assert got["open_for_writing"] == ["out/busy.txt"]
        check_manifest((tmp_path / "o1").read_bytes(), m.path, {"out/done.txt": b"closed"})

        def finish() -> None:
            time.sleep(1.5)
            f.write(b" and the rest")
            f.close()

        closer = threading.Thread(target=finish)
        closer.start()
        got = commit(str(m.path), "--wait", "--output", str(tmp_path / "o2"))
        closer.join()
    finally:
        f.close()
    assert got["open_for_writing"] == []
    check_manifest((tmp_path / "o2").read_bytes(), m.path,
                   {"out/busy.txt": b"partial and the rest"})  # fmt: skip


def test_commit_shows_a_progress_bar_with_total_and_eta_on_a_terminal_only(
    tmp_path: Path, local: Local
) -> None:
    m = local.mount()
    expected = workload(m.path)
    shown = run_vfs_on_a_tty("commit", str(m.path), "--output", str(tmp_path / "o1"))
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)  # colours and cursor moves
    assert "committing" in shown and "/s" in shown, shown  # the bar, with its rate
    assert re.search(r"\d/[\d.]+ (bytes|kB|MB|GB)", shown), shown  # bytes done / total
    assert re.search(r"\b\d:\d\d:\d\d\b", shown), shown  # the time remaining
    check_manifest((tmp_path / "o1").read_bytes(), m.path, expected)
    # Without a terminal, nothing of the bar.
    (m.path / "out" / "frame.0002.exr").write_bytes(os.urandom(100_000))
    quiet = run_vfs("commit", str(m.path), "--output", str(tmp_path / "o2"))
    assert "committing" not in quiet.stderr and "\x1b[" not in quiet.stderr, quiet.stderr
    assert quiet.stdout.startswith("committed 1 file(s), 100000 bytes")
    # With --json, not even on a terminal.
    (m.path / "out" / "frame.0003.exr").write_bytes(os.urandom(100_000))
    shown = run_vfs_on_a_tty("commit", str(m.path), "--output", str(tmp_path / "o3"), "--json")
    assert "committing" not in shown and "\x1b[" not in shown, shown
    frame = (m.path / "out" / "frame.0003.exr").read_bytes()
    check_manifest((tmp_path / "o3").read_bytes(), m.path, {"out/frame.0003.exr": frame})


def test_commit_progress_adds_up_to_its_total(tmp_path: Path, local: Local) -> None:
    """The bytes ``commit_overlay`` reports done end exactly at the last total it gave
    (a bar ends full): with files hashed, a file rewritten with its own bytes (hashed, no
    output), a renamed base file (an output not hashed) and nothing left to commit."""
    m = local.mount()
    workload(m.path)
    os.rename(m.path / "README", m.path / "out" / "README.txt")
    events: list[tuple[str, int]] = []  # ("total", n) and ("done", n), in order
    for name in ("o1", "o2"):
        events.clear()
        got = commit_overlay(str(local.overlay), CommitOptions(output_file=str(tmp_path / name)),
                             None, lambda n: events.append(("done", n)),
                             lambda n: events.append(("total", n)))  # fmt: skip
        assert events and events[0][0] == "total", events
        totals = [n for what, n in events if what == "total"]
        assert sum(n for what, n in events if what == "done") == totals[-1], events
        assert totals[-1] == got.hashed_bytes + got.uploaded_bytes + got.skipped_bytes
    assert got.files == 0 and got.uploaded_bytes + got.skipped_bytes == 0


# -- S3 (moto), the official key, deadline as the oracle ----------------------------------------


def put_base(s3_client: Any, bucket: str, tmp_path: Path) -> Path:
    """The base manifest (local file) and its objects in the bucket under PREFIX."""
    manifest = make_manifest(tmp_path, BASE, None)
    for content in BASE.values():
        s3_client.put_object(Bucket=bucket, Key=f"{PREFIX}/{data_key(hash_bytes(content))}",
                             Body=content)  # fmt: skip
    return manifest


def listed(s3_client: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_deadline_finds_and_downloads_our_outputs(
    tmp_path: Path, s3_endpoint: str, s3_client: Any, s3_bucket: str, vfs_mount: Mount
) -> None:
    base = put_base(s3_client, s3_bucket, tmp_path)
    store = f"s3://{s3_bucket}/{PREFIX}"
    m = vfs_mount(tmp_path / "mnt", [base], store, "--writable", "--overlay-dir",
                  str(tmp_path / "overlay"), "--endpoint-url", s3_endpoint)  # fmt: skip
    expected = workload(m.path)
    start = 1_795_000_000.25
    got = commit(str(m.path), *IDS, "--start-time", str(start), "--endpoint-url", s3_endpoint)
    folder = f"{format_session_action_time(start)}_{SA}"
    name = output_manifest_name(str(m.path))
    key = f"{PREFIX}/Manifests/{FARM}/{QUEUE}/{JOB}/{STEP}/{TASK}/{folder}/{name}"
    assert got["manifest_key"] == key.removeprefix(f"{PREFIX}/")
    assert got["output_manifest_path"] == key.removeprefix(f"{PREFIX}/Manifests/")
    assert got["manifest_uri"] == f"s3://{s3_bucket}/{key}"
    obj = s3_client.get_object(Bucket=s3_bucket, Key=key)
    assert obj["Metadata"] == {"asset-root": str(m.path)}
    body = obj["Body"].read()
    assert hash_bytes(body) == got["manifest_hash"]
    check_manifest(body, m.path, expected)

    # deadline's output discovery reads exactly our manifest, under the mount's root.
    home = tmp_path / "home"
    env = {"AWS_ENDPOINT_URL": s3_endpoint}
    found = oracle("outputs", "--bucket", s3_bucket, "--root-prefix", PREFIX, "--farm-id", FARM,
                   "--queue-id", QUEUE, "--job-id", JOB, "--endpoint", s3_endpoint,
                   home=home, env=env)  # fmt: skip
    assert found["roots"] == {str(m.path): [body.decode()]}
    # ... and downloads our outputs byte-exact.
    (tmp_path / "ours.manifest").write_bytes(body)
    dest = tmp_path / "download"
    oracle("download", "--bucket", s3_bucket, "--root-prefix", PREFIX, "--endpoint",
           s3_endpoint, "--dest", str(dest), str(tmp_path / "ours.manifest"),
           home=home, env=env)  # fmt: skip
    for path, content in expected.items():
        assert (dest / path).read_bytes() == content, path

    # deadline's own snapshot of the mount against the base (the worker's fast diff:
    # size, mtime ±1 µs) finds our outputs, plus the two files it cannot tell apart by
    # content: the one rewritten with the same bytes and the one only touched.
    spec = [{"op": "snapshot", "root": str(m.path), "destination": str(tmp_path / "snap"),
             "name": "output", "diff": str(base),
             "hash_cache_dir": str(tmp_path / "hc")}]  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    oracle("batch", str(tmp_path / "spec.json"), str(tmp_path / "res.json"), home=home)
    [res] = json.loads((tmp_path / "res.json").read_text())
    theirs = {e.path: e for e in decode_manifest(Path(res["manifest"]).read_bytes()).paths}
    ours = {e.path: e for e in decode_manifest(body).paths}
    assert set(theirs) == set(ours) | {"textures/wood.png", "README"}
    for path, entry in ours.items():
        assert theirs[path] == entry, path

    # Idempotent: a second commit to the same session action uploads nothing.
    again = commit(str(m.path), *IDS, "--start-time", str(start), "--endpoint-url", s3_endpoint)
    assert again["files"] == 0 and again["uploaded"] == 0
    assert listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/") == [key]


def test_session_ids_default_to_the_workers_environment(
    tmp_path: Path, s3_endpoint: str, s3_client: Any, s3_bucket: str, vfs_mount: Mount
) -> None:
    """No id option given: ``vfs commit`` takes the session ids and start time from the
    worker's ``DEADLINE_*`` variables and writes the manifest under the official key with
    its metadata; without ``DEADLINE_TASK_ID`` (a chunked step) the key has no task."""
    base = put_base(s3_client, s3_bucket, tmp_path)
    m = vfs_mount(tmp_path / "mnt", [base], f"s3://{s3_bucket}/{PREFIX}", "--writable",
                  "--overlay-dir", str(tmp_path / "overlay"),
                  "--endpoint-url", s3_endpoint)  # fmt: skip
    expected = workload(m.path)
    env = {"DEADLINE_FARM_ID": FARM, "DEADLINE_QUEUE_ID": QUEUE, "DEADLINE_JOB_ID": JOB,
           "DEADLINE_STEP_ID": STEP, "DEADLINE_TASK_ID": TASK,
           "DEADLINE_SESSIONACTION_ID": SA,
           "DEADLINE_SESSIONACTION_START_TIME": "1795000000.25"}  # fmt: skip
    got = commit(str(m.path), "--endpoint-url", s3_endpoint, env=env)
    name = xxh3_128_hexdigest(str(m.path).encode()) + "_output"
    key = (f"{PREFIX}/Manifests/{FARM}/{QUEUE}/{JOB}/{STEP}/{TASK}/"
           f"2026-11-18T11:06:40.250000Z_{SA}/{name}")  # fmt: skip
    assert listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/") == [key]
    assert got["manifest_key"] == key.removeprefix(f"{PREFIX}/")
    obj = s3_client.get_object(Bucket=s3_bucket, Key=key)
    assert obj["Metadata"] == {"asset-root": str(m.path)}
    check_manifest(obj["Body"].read(), m.path, expected)

    (m.path / "out" / "frame.0002.exr").write_bytes(b"second frame")
    sa2 = "sessionaction-" + "7" * 32 + "-2"
    env = {**env, "DEADLINE_TASK_ID": "", "DEADLINE_SESSIONACTION_ID": sa2}
    got = commit(str(m.path), "--endpoint-url", s3_endpoint, env=env)
    key2 = f"{PREFIX}/Manifests/{FARM}/{QUEUE}/{JOB}/{STEP}/2026-11-18T11:06:40.250000Z_{sa2}/"
    key2 += name
    assert got["manifest_key"] == key2.removeprefix(f"{PREFIX}/")
    obj = s3_client.get_object(Bucket=s3_bucket, Key=key2)
    assert obj["Metadata"] == {"asset-root": str(m.path)}
    check_manifest(obj["Body"].read(), m.path, {"out/frame.0002.exr": b"second frame"})


def test_commit_killed_at_the_manifest_upload_resumes(
    tmp_path: Path, s3_endpoint: str, s3_client: Any, s3_bucket: str, s3_relay: S3Relay,
    local: Local,
) -> None:  # fmt: skip
    m = local.mount()
    expected = workload(m.path)
    store = f"s3://{s3_bucket}/{PREFIX}"
    args = [sys.executable, "-m", "vfs", "commit", str(m.path), *IDS, "--store", store,
            "--endpoint-url", s3_relay.url, "--json"]  # fmt: skip
    # No start time given: the first try chooses it, the rerun must reuse it (same key).
    s3_relay.stall, s3_relay.stall_only = 60.0, "/Manifests/"

    def manifest_puts() -> list[Request]:
        return [r for r in list(s3_relay.seen) if r.method == "PUT" and "/Manifests/" in r.path]

    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: bool(manifest_puts()), timeout=60, what="the manifest PUT")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    [put] = manifest_puts()
    data_keys = {f"{PREFIX}/{data_key(hash_bytes(c))}" for c in expected.values()}
    assert set(listed(s3_client, s3_bucket, f"{PREFIX}/Data/")) == data_keys
    assert listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/") == []
    with sqlite3.connect(local.overlay / "commits.db") as db:
        assert db.execute("SELECT state FROM commits").fetchall() == [("pending",)]

    s3_relay.stall = 0.0
    time.sleep(0.5)  # a different clock: a fresh start time would give another key
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(result.stdout.splitlines()[-1])
    assert got["uploaded"] == 0 and got["skipped"] == len(expected) and got["files"] == 4
    [key] = listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/")
    assert unquote(put.path.split("?")[0]).endswith(key)
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    check_manifest(body, m.path, expected)
    again = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(again.stdout.splitlines()[-1])["files"] == 0
    assert listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/") == [key]


def test_commit_killed_during_the_data_uploads_resumes(
    tmp_path: Path, s3_client: Any, s3_bucket: str, s3_relay: S3Relay, local: Local
) -> None:
    """``vfs commit`` killed while its CAS objects go up: the small objects are stored,
    big.bin's multipart upload has its second part stalled. Run again, it uploads only what
    is missing, writes the manifest once with every output once, and the objects are
    byte-exact."""
    m = local.mount()
    expected = workload(m.path)
    args = [sys.executable, "-m", "vfs", "commit", str(m.path), *IDS, "--store",
            f"s3://{s3_bucket}/{PREFIX}", "--endpoint-url", s3_relay.url, "--json"]  # fmt: skip
    keys = {f"{PREFIX}/{data_key(hash_bytes(c))}": c for c in expected.values()}
    big = f"{PREFIX}/{data_key(hash_bytes(expected['big.bin']))}"  # 9 MiB: two parts
    s3_relay.stall, s3_relay.stall_only = 60.0, "partNumber=2"

    def stalled() -> bool:
        parts = [r for r in list(s3_relay.seen) if r.method == "PUT" and "partNumber=2" in r.path]
        stored = set(listed(s3_client, s3_bucket, f"{PREFIX}/Data/"))
        return bool(parts) and stored == set(keys) - {big}

    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(stalled, timeout=60, what="the small objects stored, big.bin's part 2 sent")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/") == []
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [big]  # left unfinished by the kill
    with sqlite3.connect(local.overlay / "commits.db") as db:
        assert db.execute("SELECT state FROM commits").fetchall() == [("pending",)]

    s3_relay.stall = 0.0
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(result.stdout.splitlines()[-1])
    assert (got["files"], got["uploaded"], got["skipped"]) == (4, 1, 3)
    assert got["uploaded_bytes"] == len(expected["big.bin"])
    assert set(listed(s3_client, s3_bucket, f"{PREFIX}/Data/")) == set(keys)
    for key, content in keys.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == content, key
    [key] = listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/")
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    manifest = check_manifest(body, m.path, expected)
    assert sorted(e.path for e in manifest.paths) == sorted(expected)  # each once
    with sqlite3.connect(local.overlay / "commits.db") as db:
        assert sorted(db.execute("SELECT state FROM commits").fetchall()) == [
            ("done",), ("superseded",),
        ]  # fmt: skip
    again = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(again.stdout.splitlines()[-1])["files"] == 0
    assert listed(s3_client, s3_bucket, f"{PREFIX}/Manifests/") == [key]


def test_commit_errors_name_the_fix(tmp_path: Path, local: Local) -> None:
    r = run_vfs("commit", str(tmp_path), "--output", str(tmp_path / "x"), check=False)
    assert r.returncode != 0 and "not a writable vfs mount" in r.stderr
    m = local.mount()
    r = run_vfs("commit", str(m.path), check=False, env={"DEADLINE_FARM_ID": ""})
    assert r.returncode != 0 and "nowhere to write the output manifest" in r.stderr
    r = run_vfs("commit", str(m.path), "--farm-id", FARM, check=False)
    assert r.returncode != 0 and "--queue-id" in r.stderr


def test_the_commit_library_imports_no_fuse_stack() -> None:
    probe = (
        "import sys, vfs.commit, vfs.cli.commit; "
        "print([m for m in ('trio', 'pyfuse3') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_renamed_base_files_are_outputs_at_their_new_paths(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    os.rename(m.path / "scenes", m.path / "out" / "scenes")  # a base directory moved
    os.rename(m.path / "README", m.path / "out" / "README.txt")  # a base file renamed
    (m.path / "out" / "README.txt").write_bytes(BASE["README"])  # same bytes again
    expected = {
        "out/scenes/comp.nk": BASE["scenes/comp.nk"],
        "out/scenes/plates/plate.0001.exr": BASE["scenes/plates/plate.0001.exr"],
        "out/README.txt": BASE["README"],
    }
    out = tmp_path / "o.manifest"
    got = commit(str(m.path), "--output-dir", "out", "--output", str(out),
                 "--manifest-version", MANIFEST_VERSION_V2)  # fmt: skip
    assert got["uploaded"] == 0 and got["skipped"] == 3  # the objects are the base's
    diff = decode_manifest_v2(out.read_bytes())
    by_path = {f.path: f for f in diff.files}
    assert {p for p, f in by_path.items() if not f.deleted} == set(expected)
    for path, content in expected.items():
        st = (m.path / path).stat()
        f = by_path[path]
        assert (f.hash, f.size, f.mtime) == (hash_bytes(content), len(content),
                                             st.st_mtime_ns // 1000)  # fmt: skip
    # Deletions are recorded only under the output dirs: the old paths are outside.
    assert not [f for f in diff.files if f.deleted]
    whole = commit(str(m.path), "--output", str(tmp_path / "o2.manifest"),
                   "--manifest-version", MANIFEST_VERSION_V2)  # fmt: skip
    assert whole["files"] == 0 and whole["deleted"] == 3
    deleted = {f.path for f in decode_manifest_v2((tmp_path / "o2.manifest").read_bytes()).files}
    assert deleted == {"scenes/comp.nk", "scenes/plates/plate.0001.exr", "README"}
    assert (
        decode_manifest_v2((tmp_path / "o2.manifest").read_bytes()).parent_manifest_hash
        == (got["manifest_hash"])
    )


def test_many_outputs_are_looked_up_by_one_listing_not_a_head_each(
    tmp_path: Path, s3_client: Any, s3_bucket: str, s3_relay: S3Relay, vfs_mount: Mount
) -> None:
    """From 100 objects on, ``vfs commit`` lists ``Data/`` (one request per 1,000 keys)
    instead of sending a HEAD per object, as the upload orchestrator does; objects the
    listing shows are skipped, the others uploaded byte-exact."""
    base = put_base(s3_client, s3_bucket, tmp_path)
    m = vfs_mount(tmp_path / "mnt", [base], f"s3://{s3_bucket}/{PREFIX}", "--writable",
                  "--overlay-dir", str(tmp_path / "overlay"),
                  "--endpoint-url", s3_relay.url)  # fmt: skip
    (m.path / "renders").mkdir()
    frames = {f"renders/f{i:03}.exr": os.urandom(1000 + i) for i in range(120)}
    for path, content in frames.items():
        (m.path / path).write_bytes(content)
    for content in list(frames.values())[:20]:  # already stored: to be skipped
        s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/{data_key(hash_bytes(content))}",
                             Body=content)  # fmt: skip
    before = len(s3_relay.seen)
    got = commit(str(m.path), "--output", str(tmp_path / "o"), "--endpoint-url", s3_relay.url)
    seen = s3_relay.seen[before:]
    assert got["files"] == 120 and got["uploaded"] == 100 and got["skipped"] == 20
    assert [r for r in seen if r.method == "HEAD"] == []
    assert len([r for r in seen if r.method == "GET" and "list-type=2" in r.path]) == 1
    for content in frames.values():
        key = f"{PREFIX}/{data_key(hash_bytes(content))}"
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == content
