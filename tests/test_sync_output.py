"""Incremental output download (``vfs attachment sync-output``, :mod:`vfs.transfer.sync_output`)
and the directory-filtered download (``DownloadOrchestrator.download_files_in_directory``):
real files, a ``file://`` store and the moto S3 server (through the recording relay), output
manifests written by our own manifest code and by the worker agent's own upload script, and
deadline's ``get_output_manifests_by_asset_root`` as the oracle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import S3Relay
from test_cli_manifest import oracle, vfs
from test_render_node import COMPAT, worker_agent_dir

from vfs.hashing import hash_bytes
from vfs.manifest import (
    Manifest,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestPath,
    ManifestV2,
    decode_manifest,
    encode_any_manifest,
    encode_manifest,
)
from vfs.pathmap import PathFormat, PathMappingRule
from vfs.storage import (
    LocalStore,
    ObjectStore,
    S3Options,
    S3Store,
    data_key,
    manifest_key,
    manifest_metadata,
    output_manifest_path,
    upload_manifest,
)
from vfs.testing.relay import wait_for
from vfs.transfer import ConflictResolution, DownloadOrchestrator
from vfs.transfer.sync_output import (
    OutputSync,
    SyncOutputError,
    checkpoint_lock,
    mirrored_path,
    parse_output_manifest_key,
)

FARM = "farm-0123456789abcdef0123456789abcdef"
QUEUE = "queue-0123456789abcdef0123456789abcdef"
JOB = "job-0123456789abcdef0123456789abcdef"
STEP = "step-0123456789abcdef0123456789abcdef"
TASK1 = "task-0123456789abcdef0123456789abcdef-1"
TASK2 = "task-0123456789abcdef0123456789abcdef-2"
SESSION = "sessionaction-0123456789abcdef0123456789abcdef"
ROOT = "/mnt/projects/shot"
PREFIX = "DeadlineCloud"
MTIME = 1_790_000_000_654_321  # microseconds since the epoch
T0 = 1_790_000_000.5


def put_output(
    store: ObjectStore,
    task: str | None,
    action: str,
    start: float,
    files: dict[str, bytes],
    *,
    root: str = ROOT,
    job: str = JOB,
    mtime: int = MTIME,
) -> str:
    """Upload ``files`` and their output manifest as a worker would (our manifest code:
    the official key, name and metadata); return the manifest's store key."""
    paths = []
    for i, (path, data) in enumerate(sorted(files.items())):
        store.put_bytes(data_key(hash_bytes(data)), data)
        paths.append(ManifestPath(path, hash_bytes(data), len(data), mtime + i))
    key = manifest_key(output_manifest_path(FARM, QUEUE, job, STEP, task, action, start, root))
    upload_manifest(store, key, encode_manifest(Manifest(paths)), manifest_metadata(root))
    return key


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".vfs-checkpoint")
    }


def data_gets(relay: S3Relay) -> list[str]:
    return [r.path.split("/Data/")[1] for r in relay.gets("/Data/")]


def manifest_gets(relay: S3Relay) -> list[str]:
    return [unquote(r.path) for r in relay.gets("/Manifests/") if "list-type" not in r.path]


# -- keys -------------------------------------------------------------------------------------


def test_output_manifest_keys_parsed() -> None:
    key = manifest_key(output_manifest_path(FARM, QUEUE, JOB, STEP, TASK1, f"{SESSION}-7", T0,
                                            ROOT))  # fmt: skip
    got = parse_output_manifest_key(key, FARM, QUEUE)
    assert got is not None
    assert (got.job_id, got.step_id, got.task_id) == (JOB, STEP, TASK1)
    assert (got.timestamp, got.session_action_id) == ("2026-09-21T14:13:20.500000Z", f"{SESSION}-7")
    assert got.session_action_order()[1:3] == (SESSION, 7)
    chunked = manifest_key(output_manifest_path(FARM, QUEUE, JOB, STEP, None, f"{SESSION}-1", T0,
                                                ROOT))  # fmt: skip
    parsed = parse_output_manifest_key(chunked, FARM, QUEUE)
    assert parsed is not None and parsed.task_id is None
    for other in (
        f"Manifests/{FARM}/{QUEUE}/Inputs/{'a' * 32}/{'b' * 32}_input",
        key.replace(QUEUE, "queue-other"),
        key.replace("_output", "_input"),
        key.replace("2026-09-21T14:13:20.500000Z", "yesterday"),
    ):
        assert parse_output_manifest_key(other, FARM, QUEUE) is None, other
    # Later session actions of one session sort after earlier ones (index as a number).
    a9 = parse_output_manifest_key(key.replace("-7/", "-9/"), FARM, QUEUE)
    a10 = parse_output_manifest_key(key.replace("-7/", "-10/"), FARM, QUEUE)
    assert a9 is not None and a10 is not None
    assert a9.session_action_order() < a10.session_action_order()


def test_mirrored_paths_under_dest() -> None:
    assert mirrored_path("/d", "/mnt/a/b.exr", PathFormat.POSIX) == "/d/mnt/a/b.exr"
    assert mirrored_path("/d", "C:\\proj\\b.exr", PathFormat.WINDOWS) == "/d/C/proj/b.exr"
    assert mirrored_path("/d", "\\\\srv\\share\\x\\y", PathFormat.WINDOWS) == "/d/srv/share/x/y"


# -- polls ------------------------------------------------------------------------------------


def test_second_poll_fetches_only_new_session_actions(
    tmp_path: Path, s3_relay: S3Relay, s3_bucket: str
) -> None:
    store = S3Store(s3_bucket, PREFIX, S3Options(endpoint_url=s3_relay.url))
    put_output(store, TASK1, f"{SESSION}-0", T0, {"out/f1.exr": b"frame 1", "out/same.exr": b"v1"})
    put_output(store, TASK2, f"{SESSION}-1", T0 + 60, {"out/f2.exr": b"frame 2" * 10_000})
    # Another job of the queue, and an input manifest: neither is synced with --job-id.
    put_output(store, TASK1, f"{SESSION}-2", T0, {"x.exr": b"x"}, job=JOB.replace("0", "9"))
    store.put_bytes(f"Manifests/{FARM}/{QUEUE}/Inputs/{'a' * 32}/{'b' * 32}_input", b"{}")
    dest = tmp_path / "dest"
    sync = OutputSync(store, FARM, QUEUE, [JOB], dest=str(dest),
                      checkpoint_path=str(tmp_path / "cp.json"))  # fmt: skip
    s3_relay.seen.clear()
    first = sync.poll()
    assert len(first.plan.keys) == 2 and first.stats.files_transferred == 3
    local = dest / ROOT.lstrip("/")
    assert files_under(dest) == {
        f"{ROOT.lstrip('/')}/out/f1.exr": b"frame 1",
        f"{ROOT.lstrip('/')}/out/same.exr": b"v1",
        f"{ROOT.lstrip('/')}/out/f2.exr": b"frame 2" * 10_000,
    }
    assert os.stat(local / "out/f1.exr").st_mtime_ns == MTIME * 1000  # the manifest's mtime

    # A retry of task 1 in a later session action rewrites same.exr and adds f3.exr.
    time.sleep(1.05)  # LastModified has a one-second resolution
    retry = {"out/same.exr": b"v2!", "out/f3.exr": b"frame 3"}
    new = put_output(store, TASK1, f"{SESSION}-3", T0 + 120, retry, mtime=MTIME + 99)
    s3_relay.seen.clear()
    second = sync.poll()
    assert second.plan.keys == [new]
    assert second.stats.files_transferred == 2
    assert len(manifest_gets(s3_relay)) == 1 and new in manifest_gets(s3_relay)[0]
    assert sorted(data_gets(s3_relay)) == sorted(
        data_key(hash_bytes(d)).removeprefix("Data/") for d in (b"v2!", b"frame 3")
    )
    assert (local / "out/same.exr").read_bytes() == b"v2!"
    assert (local / "out/f2.exr").read_bytes() == b"frame 2" * 10_000

    # Nothing new: one listing, no GET of a manifest or an object.
    s3_relay.seen.clear()
    third = sync.poll()
    assert third.plan.keys == [] and third.stats.files_transferred == 0
    assert manifest_gets(s3_relay) == [] and data_gets(s3_relay) == []
    cp = json.loads((tmp_path / "cp.json").read_text())
    assert len(cp["processed"]) == 3 and cp["watermark"] == max(cp["processed"].values())


def test_merge_order_rules_and_unmapped_paths(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    win = "C:\\Projects\\Shot"
    # One poll finds three session actions; the latest (LastModified, then session-action
    # order) wins per path.
    put_output(store, TASK1, f"{SESSION}-1", T0, {"a.exr": b"old", "only1.exr": b"1"})
    put_output(store, TASK1, f"{SESSION}-2", T0 + 1, {"a.exr": b"new"})
    put_output(store, TASK2, f"{SESSION}-3", T0, {"w\\x.exr": b"win"}, root=win)
    put_output(store, TASK2, f"{SESSION}-4", T0, {"y.exr": b"elsewhere"}, root="/other/root")
    for p in (tmp_path / "store" / "Manifests").rglob("*_output"):
        os.utime(p, (1_000, 1_000))  # equal LastModified: session-action order decides
    rules = [PathMappingRule(PathFormat.POSIX, ROOT, str(tmp_path / "mapped"))]
    sync = OutputSync(store, FARM, QUEUE, rules=rules, dest=None,
                      checkpoint_path=str(tmp_path / "cp.json"))  # fmt: skip
    got = sync.poll()
    assert files_under(tmp_path / "mapped") == {"a.exr": b"new", "only1.exr": b"1"}
    # No rule for the others and no --dest: reported, not downloaded.
    assert sorted(got.plan.unmapped) == ["/other/root/y.exr", "C:\\Projects\\Shot\\w\\x.exr"]
    # With --dest (another checkpoint: another destination), they are mirrored under it.
    dest = tmp_path / "dest"
    sync = OutputSync(store, FARM, QUEUE, rules=rules, dest=str(dest),
                      checkpoint_path=str(tmp_path / "cp2.json"))  # fmt: skip
    got = sync.poll()
    assert got.plan.unmapped == []
    assert files_under(dest) == {"C/Projects/Shot/w/x.exr": b"win",
                                 "other/root/y.exr": b"elsewhere"}  # fmt: skip
    assert len(got.plan.up_to_date) == 2  # the rule's files were there already
    # The first checkpoint belongs to the first destination.
    with pytest.raises(SyncOutputError, match="written for"):
        OutputSync(store, FARM, QUEUE, rules=rules, dest=str(dest),
                   checkpoint_path=str(tmp_path / "cp.json")).poll()  # fmt: skip
    with checkpoint_lock(str(tmp_path / "cp2.json")), pytest.raises(SyncOutputError,
                                                                    match="another"):  # fmt: skip
        sync.poll()


def test_v2_output_directories_created_by_sync(tmp_path: Path) -> None:
    """A v2 output manifest's empty directories are created at their mapped path, as its
    files are downloaded."""
    store = LocalStore(str(tmp_path / "store"))
    store.put_bytes(data_key(hash_bytes(b"frame")), b"frame")
    m = ManifestV2(
        files=[ManifestFilePath.file("r/a.exr", hash_bytes(b"frame"), 5, MTIME)],
        dirs=[ManifestDirectoryPath("r/empty/inner"), ManifestDirectoryPath("cache")],
    )
    key = manifest_key(output_manifest_path(FARM, QUEUE, JOB, STEP, TASK1, f"{SESSION}-1",
                                            T0, ROOT))  # fmt: skip
    upload_manifest(store, key, encode_any_manifest(m), manifest_metadata(ROOT))
    mapped = tmp_path / "mapped"
    rules = [PathMappingRule(PathFormat.POSIX, ROOT, str(mapped))]
    sync = OutputSync(store, FARM, QUEUE, rules=rules, dest=None,
                      checkpoint_path=str(tmp_path / "cp.json"))  # fmt: skip
    got = sync.poll()
    assert got.stats.files_transferred == 1 and files_under(mapped) == {"r/a.exr": b"frame"}
    assert (mapped / "r/empty/inner").is_dir() and (mapped / "cache").is_dir()


def test_kill_9_mid_download_resumes(
    tmp_path: Path, s3_relay: S3Relay, s3_bucket: str, s3_endpoint: str
) -> None:
    store = S3Store(s3_bucket, PREFIX, S3Options(endpoint_url=s3_endpoint))
    small = {f"out/small_{i}.exr": os.urandom(20_000) for i in range(6)}
    big = {"out/big.exr": os.urandom(3 * 1024 * 1024)}
    put_output(store, TASK1, f"{SESSION}-1", T0, small)
    put_output(store, TASK2, f"{SESSION}-2", T0 + 1, big)
    dest = tmp_path / "dest"
    local = dest / ROOT.lstrip("/")
    cp = tmp_path / "cp.json"
    args = [sys.executable, "-m", "vfs", "attachment", "sync-output", "--store",
            f"s3://{s3_bucket}/{PREFIX}", "--endpoint-url", s3_relay.url, "--farm-id", FARM,
            "--queue-id", QUEUE, "--dest", str(dest), "--checkpoint", str(cp),
            "--json"]  # fmt: skip
    s3_relay.stall_body = 60.0  # bodies beyond 64 KiB stop there: the big file never ends
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: (
                all((local / p).exists() for p in small) and any(local.rglob(".big.exr.vfs-*.part"))
            ),
            timeout=60,
            what="the small files and the big file's temporary file",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert not (local / "out/big.exr").exists()  # never a partial file under its name
    assert not cp.exists()
    s3_relay.stall_body = 0.0
    s3_relay.seen.clear()
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    [line] = out.stdout.splitlines()
    summary = json.loads(line)
    assert summary["files_transferred"] == 1 and summary["files_up_to_date"] == 6
    # Only the big file's object was fetched again, not the completed ones.
    assert data_gets(s3_relay) == [data_key(hash_bytes(big["out/big.exr"])).removeprefix("Data/")]
    assert files_under(dest) == {f"{ROOT.lstrip('/')}/{p}": d for p, d in {**small, **big}.items()}
    assert not list(dest.rglob("*.part"))  # the killed run's temporary file is gone
    assert len(json.loads(cp.read_text())["processed"]) == 2
    again = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert json.loads(again.stdout)["manifests"] == []


def test_watch_polls_until_ctrl_c(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    put_output(store, TASK1, f"{SESSION}-1", T0, {"a.exr": b"a"})
    dest = tmp_path / "dest"
    args = [sys.executable, "-m", "vfs", "attachment", "sync-output", "--store", store.uri,
            "--farm-id", FARM, "--queue-id", QUEUE, "--job-id", JOB, "--dest", str(dest),
            "--checkpoint", str(tmp_path / "cp.json"), "--watch", "0.2", "--json"]  # fmt: skip
    log = tmp_path / "out.jsonl"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: (dest / ROOT.lstrip("/") / "a.exr").exists(), timeout=30)
            key = put_output(store, TASK2, f"{SESSION}-2", T0 + 5, {"b.exr": b"b"})
            wait_for(lambda: key in log.read_text(), timeout=30, what="the second poll's line")
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    polls = [json.loads(line) for line in log.read_text().splitlines()]
    found = [p["manifests"] for p in polls if p["manifests"]]
    assert len(found) == 2 and found[1] == [key]
    assert (dest / ROOT.lstrip("/") / "b.exr").read_bytes() == b"b"
    assert "stopped" in err.decode()


def test_watch_keeps_polling_after_a_failed_poll(tmp_path: Path) -> None:
    """An output whose data is not in the store yet fails the poll; the poll records
    nothing, --watch goes on, and a later poll downloads it once the data is there."""
    store = LocalStore(str(tmp_path / "store"))
    key = put_output(store, TASK1, f"{SESSION}-1", T0, {"a.exr": b"late data"})
    data = tmp_path / "store" / data_key(hash_bytes(b"late data"))
    data.rename(tmp_path / "held")
    dest = tmp_path / "dest"
    args = [sys.executable, "-m", "vfs", "attachment", "sync-output", "--store", store.uri,
            "--farm-id", FARM, "--queue-id", QUEUE, "--dest", str(dest),
            "--checkpoint", str(tmp_path / "cp.json"), "--watch", "0.2", "--json"]  # fmt: skip
    out, err = tmp_path / "out.jsonl", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(args, stdout=o, stderr=e)
        try:
            wait_for(lambda: err.read_text().count("trying again") >= 2, timeout=30,
                     what="two failed polls")  # fmt: skip
            assert not (tmp_path / "cp.json").exists()
            (tmp_path / "held").rename(data)
            wait_for(lambda: key in out.read_text(), timeout=30, what="the successful poll")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err.read_text()
    assert (dest / ROOT.lstrip("/") / "a.exr").read_bytes() == b"late data"
    assert "does not exist" in err.read_text()  # the failure says which object is missing


# -- deadline's writers and reader ---------------------------------------------------------------


def worker_upload(tmp: Path, agent_dir: str, endpoint: str, bucket: str, task: str, action: str,
                  start: float, outputs: dict[str, bytes]) -> None:  # fmt: skip
    """One task's outputs uploaded by the worker agent's own attachment_upload.py (deadline's
    uploader, key, name and metadata), as in tests/test_render_node.py."""
    work = tmp / f"action-{action}"
    session_root = work / "root"
    for path, data in outputs.items():
        (session_root / path).parent.mkdir(parents=True, exist_ok=True)
        (session_root / path).write_bytes(data)
    inputs = work / "input.manifest"
    inputs.write_bytes(encode_manifest(Manifest([ManifestPath("in.txt", "0" * 32, 1, 1)])))
    (work / "props.json").write_text(json.dumps([{
        "manifestProperties": {"rootPath": ROOT, "rootPathFormat": "posix",
                               "outputRelativeDirectories": ["out"]},
        "localManifestPaths": [str(inputs)],
        "localRootPath": str(session_root),
    }]))  # fmt: skip
    env = {
        **os.environ, "AWS_ENDPOINT_URL": endpoint, "HOME": str(tmp / "job-home"),
        "DEADLINE_FARM_ID": FARM, "DEADLINE_QUEUE_ID": QUEUE, "DEADLINE_JOB_ID": JOB,
        "DEADLINE_STEP_ID": STEP, "DEADLINE_TASK_ID": task, "DEADLINE_SESSIONACTION_ID": action,
        "DEADLINE_SESSIONACTION_START_TIME": str(start), "PYTHONIOENCODING": "utf-8",
    }  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(COMPAT / "worker_agent.py"), agent_dir, "upload",
         "-s3", f"s3://{bucket}/{PREFIX}", "-wp", str(work / "props.json")],
        capture_output=True, text=True, timeout=120, cwd=work, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.slow
def test_outputs_written_by_the_worker_merged_like_deadline(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    agent_dir = worker_agent_dir()
    worker_upload(tmp_path, agent_dir, s3_endpoint, s3_bucket, TASK1, f"{SESSION}-1", T0,
                  {"out/f1.exr": b"task 1", "out/shared.exr": b"task 1 wrote"})  # fmt: skip
    time.sleep(1.05)  # LastModified has a one-second resolution
    worker_upload(tmp_path, agent_dir, s3_endpoint, s3_bucket, TASK2, f"{SESSION}-2", T0 - 60,
                  {"out/f2.exr": b"task 2", "out/shared.exr": b"task 2 wrote last"})  # fmt: skip
    theirs = oracle(
        "outputs", "--bucket", s3_bucket, "--root-prefix", PREFIX, "--farm-id", FARM,
        "--queue-id", QUEUE, "--job-id", JOB, "--endpoint", s3_endpoint,
        home=tmp_path / "home", env={"AWS_ENDPOINT_URL": s3_endpoint},
    )  # fmt: skip
    [[encoded]] = theirs["roots"].values()
    assert list(theirs["roots"]) == [ROOT]
    merged = {e.path: e for e in decode_manifest(encoded.encode()).paths}
    assert set(merged) == {"out/f1.exr", "out/f2.exr", "out/shared.exr"}

    store = S3Store(s3_bucket, PREFIX, S3Options(endpoint_url=s3_endpoint))
    dest = tmp_path / "dest"
    got = OutputSync(store, FARM, QUEUE, [JOB], dest=str(dest),
                     checkpoint_path=str(tmp_path / "cp.json")).poll()  # fmt: skip
    assert len(got.plan.keys) == 2
    local = dest / ROOT.lstrip("/")
    assert set(files_under(local)) == set(merged)
    for path, entry in merged.items():
        data = (local / path).read_bytes()
        st = os.stat(local / path)
        assert (hash_bytes(data), len(data), st.st_mtime_ns // 1000) == (
            entry.hash, entry.size, entry.mtime), path  # fmt: skip
    assert (local / "out/shared.exr").read_bytes() == b"task 2 wrote last"


# -- directory filter --------------------------------------------------------------------------


def test_download_files_in_directory_matches_whole_components(tmp_path: Path) -> None:
    files = {"ab/x": b"1", "ab/sub/z": b"2", "abc/y": b"3", "abx": b"4", "ab.txt": b"5"}
    store = LocalStore(str(tmp_path / "store"))
    paths = []
    for i, (p, d) in enumerate(sorted(files.items())):
        store.put_bytes(data_key(hash_bytes(d)), d)
        paths.append(ManifestPath(p, hash_bytes(d), len(d), MTIME + i))
    orch = DownloadOrchestrator(store)
    for n, directory in enumerate(("ab", "ab/", "./ab")):
        dest = tmp_path / f"d{n}"
        stats = orch.download_files_in_directory(Manifest(paths), directory, str(dest))
        assert stats.files_transferred == 2
        assert files_under(dest) == {"ab/x": b"1", "ab/sub/z": b"2"}, directory
    stats = orch.download_files_in_directory(Manifest(paths), "ab/sub", str(tmp_path / "e"))
    assert files_under(tmp_path / "e") == {"ab/sub/z": b"2"}
    orch.download_files_in_directory(Manifest(paths), "", str(tmp_path / "all"))
    assert files_under(tmp_path / "all") == files
    for bad in ("/ab", "ab/../abc"):
        with pytest.raises(ValueError):
            orch.download_files_in_directory(Manifest(paths), bad, str(tmp_path / "bad"))
    # v2: files and (empty) directories under the directory only.
    v2_files = [
        ManifestFilePath(p, hash=hash_bytes(d), size=len(d), mtime=MTIME)
        for p, d in sorted(files.items())
    ]
    v2 = ManifestV2(
        files=v2_files,
        dirs=[ManifestDirectoryPath("ab/empty"), ManifestDirectoryPath("abc/empty")],
    )
    orch.download_files_in_directory(v2, "ab", str(tmp_path / "v2"),
                                     conflict_resolution=ConflictResolution.OVERWRITE)  # fmt: skip
    assert files_under(tmp_path / "v2") == {"ab/x": b"1", "ab/sub/z": b"2"}
    assert (tmp_path / "v2/ab/empty").is_dir() and not (tmp_path / "v2/abc").exists()


def test_manifest_without_root_metadata_and_paths_leaving_the_root(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    win = "C:\\Proj"
    put_output(store, TASK1, f"{SESSION}-1", T0, {"..\\..\\evil.exr": b"x", "ok.exr": b"ok"},
               root=win)  # fmt: skip
    # Output manifests without asset-root metadata (not written by deadline's code): the
    # root is the rule whose hashed source path names the manifest, else none.
    for root, action in ((ROOT, 2), ("/unknown", 3)):
        key = manifest_key(
            output_manifest_path(FARM, QUEUE, JOB, STEP, TASK2, f"{SESSION}-{action}", T0, root)
        )
        body = encode_manifest(Manifest([ManifestPath("n.exr", hash_bytes(b"n"), 1, MTIME)]))
        store.put_bytes(data_key(hash_bytes(b"n")), b"n")
        upload_manifest(store, key, body, None)
    rules = [PathMappingRule(PathFormat.POSIX, ROOT, str(tmp_path / "mapped"))]
    got = OutputSync(store, FARM, QUEUE, rules=rules, dest=str(tmp_path / "dest"),
                     checkpoint_path=str(tmp_path / "cp.json")).poll()  # fmt: skip
    assert files_under(tmp_path / "mapped") == {"n.exr": b"n"}
    assert files_under(tmp_path / "dest") == {"C/Proj/ok.exr": b"ok"}
    assert got.plan.outside_root == ["C:\\evil.exr"]
    # An undecodable manifest is reported and recorded, and blocks nothing.
    bad = manifest_key(output_manifest_path(FARM, QUEUE, JOB, STEP, TASK2, f"{SESSION}-4", T0,
                                            ROOT))  # fmt: skip
    store.put_bytes(bad, b"not json", manifest_metadata(ROOT))
    put_output(store, TASK2, f"{SESSION}-5", T0, {"m.exr": b"m"})
    more = OutputSync(store, FARM, QUEUE, rules=rules, dest=str(tmp_path / "dest"),
                      checkpoint_path=str(tmp_path / "cp.json")).poll()  # fmt: skip
    assert more.plan.unreadable == [bad] and len(more.plan.keys) == 2
    assert (tmp_path / "mapped/m.exr").read_bytes() == b"m"
    assert len(got.plan.rootless) == 1 and "-3/" in got.plan.rootless[0]
    assert len(got.plan.keys) == 3  # all recorded: none is fetched again


def test_local_store_lists_only_the_prefix_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling a ``file://`` store lists the queue's manifests without walking ``Data/``."""
    store = LocalStore(str(tmp_path / "store"))
    key = put_output(store, TASK1, f"{SESSION}-1", T0, {"a.exr": b"a"})
    walked: list[str] = []
    real_walk = os.walk

    def spy(top: str, *args: Any, **kwargs: Any) -> Any:
        walked.append(os.fspath(top))
        return real_walk(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", spy)
    prefix = f"Manifests/{FARM}/{QUEUE}/"
    assert [k for k, _ in store.list_keys(prefix)] == [key]
    assert [k for k, _ in store.list_keys(f"Manifests/{FARM}/{QUEUE}/job-0")] == [key]
    assert walked == [str(tmp_path / "store" / prefix.rstrip("/"))] * 2
    assert list(store.list_keys(".vfs-meta/x")) == list(store.list_keys("Manifests/../")) == []


def test_cli_rules_file_json_summary_and_errors(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    put_output(store, TASK1, f"{SESSION}-1", T0, {"out/a.exr": b"a"})
    put_output(store, TASK1, f"{SESSION}-2", T0, {"b.exr": b"b"}, root="/elsewhere")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"source_path_format": "posix", "source_path": ROOT,
                                  "destination_path": str(tmp_path / "local")}]))  # fmt: skip
    base = ["attachment", "sync-output", "--store", store.uri, "--farm-id", FARM,
            "--queue-id", QUEUE, "--checkpoint", str(tmp_path / "cp.json")]  # fmt: skip
    got = json.loads(vfs(*base, "--path-mapping-rules", str(rules), "--json").stdout)
    assert len(got["manifests"]) == 2 and got["files_transferred"] == 1
    assert got["unmapped"] == ["/elsewhere/b.exr"]
    assert got["checkpoint"] == str(tmp_path / "cp.json") and got["watermark"] is not None
    assert files_under(tmp_path / "local") == {"out/a.exr": b"a"}
    again = vfs(*base, "--path-mapping-rules", str(rules)).stdout
    assert again.startswith("0 new output manifests")
    # Errors name what to fix, without a traceback.
    err = vfs(*base, exit_code=1).stderr
    assert "--dest" in err and "Traceback" not in err
    rules.write_text("[{")
    err = vfs(*base, "--path-mapping-rules", str(rules), exit_code=1).stderr
    assert str(rules) in err
    err = vfs(*base, "--dest", str(tmp_path / "d"), exit_code=1).stderr
    assert "cp.json was written for" in err and "another --checkpoint" in err


@pytest.mark.parametrize(
    ("resolution", "want", "skipped"),
    [
        ("skip", {"a.exr": b"mine, kept"}, 1),
        ("overwrite", {"a.exr": b"rendered"}, 0),
        ("CREATE_COPY", {"a.exr": b"mine, kept", "a (1).exr": b"rendered"}, 0),
    ],
)
def test_cli_conflict_resolution(
    tmp_path: Path, resolution: str, want: dict[str, bytes], skipped: int
) -> None:
    """``--conflict-resolution`` (either case, as deadline's) decides what happens to a
    different file already at an output's path."""
    store = LocalStore(str(tmp_path / "store"))
    put_output(store, TASK1, f"{SESSION}-1", T0, {"a.exr": b"rendered"})
    local = tmp_path / "local"
    local.mkdir()
    (local / "a.exr").write_bytes(b"mine, kept")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"source_path_format": "posix", "source_path": ROOT,
                                  "destination_path": str(local)}]))  # fmt: skip
    got = json.loads(vfs(
        "attachment", "sync-output", "--store", store.uri, "--farm-id", FARM, "--queue-id",
        QUEUE, "--checkpoint", str(tmp_path / "cp.json"), "--path-mapping-rules", str(rules),
        "--conflict-resolution", resolution, "--json",
    ).stdout)  # fmt: skip
    assert (got["files_transferred"], got["files_skipped"]) == (1 - skipped, skipped)
    assert files_under(local) == want
