"""The worker agent's two job-attachment steps: ``vfs attachment worker-download`` and
``worker-upload`` against the agent's own ``attachment_download.py`` / ``attachment_upload.py``
(deadline-cloud-worker-agent 0.33.6, run unchanged through tests/compat/worker_agent.py) on
the same session layout and the same JSON, against the moto server; and
``WorkerManifestProperties`` against the agent's class.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_vfs
from test_read_path import put_s3
from test_render_node import worker_agent_dir

from vfs.hashing import hash_bytes
from vfs.manifest import Manifest, ManifestPath, encode_manifest
from vfs.snapshot import snapshot_directory
from vfs.transfer import LowTransferRateDetector
from vfs.transfer.worker import WorkerManifestProperties, sync_inputs

COMPAT = Path(__file__).resolve().parent / "compat"
START_TIME = "1716416223.099999"
"""A session action start whose ``{ts}`` shows deadline's microsecond truncation."""
SESSION_ENV = {
    "DEADLINE_FARM_ID": "farm-1", "DEADLINE_QUEUE_ID": "queue-1", "DEADLINE_JOB_ID": "job-1",
    "DEADLINE_STEP_ID": "step-1", "DEADLINE_TASK_ID": "task-1",
    "DEADLINE_SESSIONACTION_ID": "sessionaction-abc-1",
    "DEADLINE_SESSIONACTION_START_TIME": START_TIME, "PYTHONIOENCODING": "utf-8",
}  # fmt: skip


def run_agent(tmp: Path, endpoint: str, command: str, *args: str, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> str:  # fmt: skip
    """The agent's code (tests/compat/worker_agent.py); its stdout."""
    out = subprocess.run(
        [sys.executable, str(COMPAT / "worker_agent.py"), worker_agent_dir(), command, *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**os.environ, "AWS_ENDPOINT_URL": endpoint, "HOME": str(tmp / "agent-home"),
             **(env or {})},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: relative path -> (content, mtime in µs)."""
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            found[p.relative_to(root).as_posix()] = (p.read_bytes(), os.stat(p).st_mtime_ns // 1000)
    return found


def same_tree(a: dict[str, tuple[bytes, int]], b: dict[str, tuple[bytes, int]]) -> None:
    """Same paths and bytes; mtimes equal within 1 µs (deadline restores them as floats)."""
    assert sorted(a) == sorted(b)
    for path, (data, mtime) in a.items():
        assert b[path][0] == data, path
        assert abs(b[path][1] - mtime) <= 1, (path, mtime, b[path][1])


# -- WorkerManifestProperties -----------------------------------------------------------------

ENTRIES: list[dict[str, Any]] = [
    {"manifestProperties": {"rootPath": "/projects/shot", "rootPathFormat": "posix",
                            "outputRelativeDirectories": ["out", "renders/final"],
                            "inputManifestPath": "farm-1/queue-1/Inputs/abc/x_input",
                            "inputManifestHash": "0" * 32},
     "localRootPath": "/sessions/s/assetroot-1", "localManifestPaths": ["/m/a", "/m/b"],
     "localInputManifestPath": "/m/a"},
    {"manifestProperties": {"rootPath": "C:\\Projets\\café", "rootPathFormat": "windows",
                            "fileSystemLocationName": "Projets",
                            "outputRelativeDirectories": ["renders\\final", "out"]},
     "localRootPath": "/mnt/projets"},
    {"manifestProperties": {"rootPath": "/mnt/caf\u00e9", "rootPathFormat": "posix",
                            "fileSystemLocationName": "Caf\u00e9Loc"},
     "localRootPath": "/sessions/s/assetroot-2", "localManifestPaths": []},
    {"manifestProperties": {"rootPath": "/empty/outputs", "rootPathFormat": "posix",
                            "outputRelativeDirectories": []},
     "localRootPath": "/x"},
]  # fmt: skip


def test_worker_manifest_properties_match_the_agents(tmp_path: Path) -> None:
    path = tmp_path / "props.json"
    path.write_text(json.dumps(ENTRIES))
    theirs = json.loads(run_agent(tmp_path, "http://127.0.0.1:9", "models", str(path)))
    ours = []
    for entry in ENTRIES:
        p = WorkerManifestProperties.from_dict(entry)
        ours.append(
            {
                "to_dict": p.to_dict(),
                "as_output_metadata": {"Metadata": p.as_output_metadata()},
                "to_path_mapping_rule": p.to_path_mapping_rule().to_dict(),
                "get_hashed_source_path": p.get_hashed_source_path(),
                "local_output_relative_directories": p.local_output_relative_directories(),
            }
        )
    assert ours == theirs
    # The cases above cover what differs between roots.
    assert ours[1]["local_output_relative_directories"] == ["renders/final", "out"]
    assert ours[1]["as_output_metadata"]["Metadata"]["asset-root"].startswith('"')
    assert ours[2]["local_output_relative_directories"] is None


# -- the download step ------------------------------------------------------------------------

INPUTS_A = {"scene/shot.blend": os.urandom(70_000), "tex/wood.exr": os.urandom(3_000),
            "tex/empty.dat": b""}  # fmt: skip
INPUTS_B = {"lib/café.abc": os.urandom(20_000), "lib/deep/x.txt": b"x" * 100}


def write_input_manifest(path: Path, files: dict[str, bytes]) -> None:
    entries = [ManifestPath(p, hash_bytes(d), len(d), 1_700_000_000_123_456 + i)
               for i, (p, d) in enumerate(sorted(files.items()))]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_manifest(Manifest(entries)))


def download_session(tmp: Path, name: str, manifests: Path) -> tuple[Path, Path]:
    """A session directory with one pre-existing file (a conflict); its properties file."""
    session = tmp / name
    (session / "assetroot-a/scene").mkdir(parents=True)
    (session / "assetroot-a/scene/shot.blend").write_bytes(b"left by an earlier action")
    os.utime(session / "assetroot-a/scene/shot.blend", ns=(10**18, 10**18))
    props = [
        {"manifestProperties": {"rootPath": "/projects/shot", "rootPathFormat": "posix"},
         "localRootPath": str(session / "assetroot-a"),
         "localInputManifestPath": str(manifests / "a_job")},
        {"manifestProperties": {"rootPath": "/mnt/café", "rootPathFormat": "posix",
                                "fileSystemLocationName": "Cafe"},
         "localRootPath": str(session / "mapped-b"),
         "localInputManifestPath": str(manifests / "b_job")},
        {"manifestProperties": {"rootPath": "/projects/outputs-only", "rootPathFormat": "posix",
                                "outputRelativeDirectories": ["out"]},
         "localRootPath": str(session / "assetroot-c")},
    ]  # fmt: skip
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(props))
    return session, path


def test_worker_download_matches_the_agents_script(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    put_s3(s3_client, s3_bucket, "DeadlineCloud", {**INPUTS_A, **INPUTS_B})
    manifests = tmp_path / "manifests"
    write_input_manifest(manifests / "a_job", INPUTS_A)
    write_input_manifest(manifests / "b_job", INPUTS_B)
    uri = f"s3://{s3_bucket}/DeadlineCloud"

    agent_session, agent_props = download_session(tmp_path, "agent", manifests)
    theirs = run_agent(tmp_path, s3_endpoint, "download", "-s3", uri, "-wp", str(agent_props))
    our_session, our_props = download_session(tmp_path, "ours", manifests)
    ours = run_vfs("attachment", "worker-download", "-s3", uri, "-wp", str(our_props),
                   env={"AWS_ENDPOINT_URL": s3_endpoint}).stdout  # fmt: skip

    same_tree(tree(agent_session), tree(our_session))
    # create_copy, as the script's default: the earlier file stays, the input gets a copy.
    assert (our_session / "assetroot-a/scene/shot (1).blend").read_bytes() == INPUTS_A[
        "scene/shot.blend"
    ]
    for text in (theirs, ours):
        assert "Root /projects/outputs-only contains no input manifest to sync." in text
        progress = [ln for ln in text.splitlines() if ln.startswith("openjd_progress: ")]
        assert progress and float(progress[-1].split(": ")[1]) == 100.0, text
        assert any(ln.startswith("openjd_status: ") for ln in text.splitlines())


# -- the upload step --------------------------------------------------------------------------


def write(root: Path, rel: str, data: bytes, mtime_ns: int | None = None) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))


def objects(s3_client: Any, bucket: str, prefix: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Every object under ``prefix/``: key relative to it -> (body, user metadata)."""
    found = {}
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    for page in pages:
        for o in page.get("Contents", []):
            got = s3_client.get_object(Bucket=bucket, Key=o["Key"])
            found[o["Key"][len(prefix) + 1 :]] = (got["Body"].read(), got["Metadata"])
    return found


def tagged(text: str, tag: str) -> list[Any]:
    return [json.loads(ln[len(tag) :]) for ln in text.splitlines() if ln.startswith(tag)]


def test_worker_upload_matches_the_agents_script(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    # Root A: inputs (some under the output directory), then what the task did.
    root_a = tmp_path / "session/assetroot-a"
    t0 = 1_700_000_000_000_000_000
    for i, rel in enumerate(["scene/shot.blend", "out/frame_0001.exr", "out/frame_0002.exr"]):
        write(root_a, rel, os.urandom(5_000), t0 + i * 10**9)
    input_a = snapshot_directory(str(root_a))
    assert input_a is not None
    manifests = tmp_path / "session/manifests"
    manifests.mkdir()
    (manifests / "a_job").write_bytes(encode_manifest(input_a))
    write(root_a, "out/frame_0002.exr", os.urandom(5_000), t0 + 2 * 10**9)  # same size and mtime
    write(root_a, "out/frame_0001.exr", os.urandom(5_000), t0 + 7 * 10**9)  # re-rendered
    write(root_a, "out/frame_0003.exr", os.urandom(8_000))
    write(root_a, "out/passes/depth.exr", b"d" * 900)
    write(root_a, "out/.hidden", b"dot files are not outputs")
    write(root_a, "scratch/render.log", b"not under an output directory")
    # Root B: a Windows root (non-ASCII, with a location name) mapped to a local directory;
    # its output directory is written with backslashes; an earlier snapshot is a base too.
    root_b = tmp_path / "projets"
    write(root_b, "renders/final/beauty.exr", os.urandom(12_000))
    write(root_b, "renders/final/same.exr", b"s" * 10, t0)
    earlier = Manifest([ManifestPath("renders/final/same.exr", hash_bytes(b"s" * 10), 10,
                                     t0 // 1000)])  # fmt: skip
    (manifests / "b_earlier_output").write_bytes(encode_manifest(earlier))
    props = [
        {"manifestProperties": {"rootPath": "/projects/shot", "rootPathFormat": "posix",
                                "outputRelativeDirectories": ["out"]},
         "localRootPath": str(root_a), "localManifestPaths": [str(manifests / "a_job")]},
        {"manifestProperties": {"rootPath": "C:\\Projets\\café", "rootPathFormat": "windows",
                                "fileSystemLocationName": "Projets",
                                "outputRelativeDirectories": ["renders\\final"]},
         "localRootPath": str(root_b),
         "localManifestPaths": [str(manifests / "b_earlier_output")]},
        {"manifestProperties": {"rootPath": "/projects/inputs-only", "rootPathFormat": "posix"},
         "localRootPath": str(tmp_path / "nothing")},
    ]  # fmt: skip
    props_file = tmp_path / "props.json"
    props_file.write_text(json.dumps(props))

    runs: dict[str, str] = {}
    for who in ("agent", "ours"):
        cwd = tmp_path / f"{who}-action"
        cwd.mkdir()
        uri = f"s3://{s3_bucket}/{who}"
        if who == "agent":
            runs[who] = run_agent(tmp_path, s3_endpoint, "upload", "-s3", uri, "-wp",
                                  str(props_file), cwd=cwd, env=SESSION_ENV)  # fmt: skip
        else:
            runs[who] = run_vfs("attachment", "worker-upload", "-s3", uri, "-wp", str(props_file),
                                cwd=cwd, env={**SESSION_ENV, "AWS_ENDPOINT_URL": s3_endpoint,
                                              "PYTHONPATH": str(COMPAT.parents[1])},
                                ).stdout  # fmt: skip

    # The same objects, manifests (bytes, keys with the same {ts}) and metadata.
    theirs = objects(s3_client, s3_bucket, "agent")
    ours = objects(s3_client, s3_bucket, "ours")
    assert ours == theirs
    manifest_keys = sorted(k for k in ours if k.startswith("Manifests/"))
    assert [k.split("/")[6] for k in manifest_keys] == [
        "2024-05-22T22:17:03.099998Z_sessionaction-abc-1"
    ] * 2
    outputs_a = json.loads(ours[manifest_keys[0]][0]) if ours[manifest_keys[0]][1][
        "asset-root"] == "/projects/shot" else json.loads(ours[manifest_keys[1]][0])  # fmt: skip
    assert sorted(p["path"] for p in outputs_a["paths"]) == [
        "out/frame_0001.exr", "out/frame_0003.exr", "out/passes/depth.exr"]  # fmt: skip
    # The same ja_upload report and snapshot files (names equal but for the time).
    assert tagged(runs["ours"], "ja_upload: ") == tagged(runs["agent"], "ja_upload: ")
    snaps = {who: tagged(runs[who], "ja_snapshot: ") for who in runs}
    assert len(snaps["ours"]) == len(snaps["agent"]) == 2
    for mine, theirs_snap in zip(snaps["ours"], snaps["agent"], strict=True):
        assert mine["root"] == theirs_snap["root"]
        assert mine["manifest"].rsplit("-", 5)[0] == theirs_snap["manifest"].rsplit("-", 5)[0]
        assert (tmp_path / "ours-action" / mine["manifest"]).read_bytes() == (
            tmp_path / "agent-action" / theirs_snap["manifest"]
        ).read_bytes()
    assert any(ln.startswith("openjd_progress: ") for ln in runs["ours"].splitlines())

    # The next upload of the session has the snapshots as bases: nothing new, both say so.
    for entry in props[:2]:
        snap = next(s for s in snaps["ours"] if s["root"] == entry["localRootPath"])
        entry["localManifestPaths"].append(str(tmp_path / "ours-action" / snap["manifest"]))
    props_file.write_text(json.dumps(props))
    again_theirs = run_agent(tmp_path, s3_endpoint, "upload", "-s3", f"s3://{s3_bucket}/agent",
                             "-wp", str(props_file), cwd=tmp_path / "agent-action",
                             env=SESSION_ENV)  # fmt: skip
    again_ours = run_vfs("attachment", "worker-upload", "-s3", f"s3://{s3_bucket}/ours", "-wp",
                         str(props_file), cwd=tmp_path / "ours-action",
                         env={**SESSION_ENV, "AWS_ENDPOINT_URL": s3_endpoint,
                              "PYTHONPATH": str(COMPAT.parents[1])}).stdout  # fmt: skip
    for text in (again_theirs, again_ours):
        assert "No output to upload" in text and "ja_upload" not in text


def test_worker_upload_needs_the_session_environment(tmp_path: Path) -> None:
    props = tmp_path / "props.json"
    props.write_text(json.dumps(ENTRIES[:1]))
    env = {k: "" for k in SESSION_ENV if k != "PYTHONIOENCODING"}
    out = run_vfs("attachment", "worker-upload", "-s3", f"file://{tmp_path}/store", "-wp",
                  str(props), env=env, check=False)  # fmt: skip
    assert out.returncode != 0
    assert "DEADLINE_FARM_ID" in out.stderr and "DEADLINE_SESSIONACTION_START_TIME" in out.stderr
    props.write_text(json.dumps({"manifestProperties": {}}))
    out = run_vfs("attachment", "worker-download", "-s3", f"file://{tmp_path}/store", "-wp",
                  str(props), check=False)  # fmt: skip
    assert out.returncode != 0 and str(props) in out.stderr and "JSON list" in out.stderr


@pytest.mark.parametrize("bad", [[{"localRootPath": "/x"}], [{"manifestProperties": {
    "rootPath": "/a", "rootPathFormat": "posix"}}], "not json"])  # fmt: skip
def test_bad_worker_properties_name_the_file(tmp_path: Path, bad: Any) -> None:
    from vfs.transfer.worker import WorkerPropertiesError, load_worker_manifest_properties

    path = tmp_path / "props.json"
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(WorkerPropertiesError, match=str(path)):
        load_worker_manifest_properties(str(path))


def test_a_download_below_the_rate_floor_fails_with_openjd_fail(
    tmp_path: Path, local_store: tuple[Path, str]
) -> None:
    """The script's policy, with the floor raised so that any rate is too low: after
    ``low_rate_reports`` slow reports the download is cancelled and ``openjd_fail:`` said."""
    from vfs.storage import LocalStore, data_key
    from vfs.transfer.worker import load_worker_manifest_properties, sync_inputs

    store_dir, _ = local_store
    store = LocalStore(str(store_dir))
    # A finished file resets the count (the script's heartbeat): one large file goes first.
    files = {"a_big.bin": os.urandom(24 << 20), **{f"f{i}.bin": os.urandom(1000) for i in range(9)}}
    for data in files.values():
        store.put_bytes(data_key(hash_bytes(data)), data)
    write_input_manifest(tmp_path / "m_job", files)
    _, props_file = download_session(tmp_path, "s", tmp_path)
    props = load_worker_manifest_properties(str(props_file))[:1]
    props[0].local_input_manifest_path = str(tmp_path / "m_job")
    lines: list[str] = []
    result = sync_inputs(props, store, out=lines.append, workers=1, progress_interval=0.001,
                         low_rate_threshold=1e15, low_rate_reports=3)  # fmt: skip
    assert result.failed_low_rate and result.cancelled
    assert lines[-1].startswith("openjd_fail: Input syncing failed due to successive low")
    # Nothing partial: what was not finished is not there under its name.
    done = {p: d for p, (d, _) in tree(Path(props[0].local_root_path)).items() if p in files}
    assert len(done) < len(files)
    assert all(data == files[p] for p, data in done.items())
    # The same download with the worker's floor completes.
    lines.clear()
    result = sync_inputs(props, store, out=lines.append)
    assert not result.cancelled and "openjd_progress: 100.0" in lines
    assert tree(Path(props[0].local_root_path))["f7.bin"][0] == files["f7.bin"]


def test_the_output_prefix_comes_from_the_session_environment() -> None:
    from vfs.transfer.worker import output_prefix_from_env

    env = {k: v for k, v in SESSION_ENV.items() if k != "DEADLINE_TASK_ID"}
    assert output_prefix_from_env(env) == (  # a chunked step: no task folder
        "farm-1/queue-1/job-1/step-1/2024-05-22T22:17:03.099998Z_sessionaction-abc-1"
    )
    assert output_prefix_from_env(SESSION_ENV) == (
        "farm-1/queue-1/job-1/step-1/task-1/2024-05-22T22:17:03.099998Z_sessionaction-abc-1"
    )


def test_worker_upload_puts_the_data_before_the_manifest(
    tmp_path: Path, s3_relay: Any, s3_bucket: str, s3_client: Any
) -> None:
    """Unlike the agent's script (manifest first), a manifest is published only once every
    object it names is in the store; an output that cannot be uploaded publishes none."""
    from vfs.errors import UploadError
    from vfs.storage import S3Options, S3Store
    from vfs.transfer.worker import (
        merge_base_manifests,
        snapshot_outputs,
        sync_outputs,
        upload_outputs,
    )

    root = tmp_path / "root"
    for i in range(5):
        write(root, f"out/f{i}.exr", os.urandom(1000 + i))
    props = [WorkerManifestProperties.from_dict({
        "manifestProperties": {"rootPath": "/p", "rootPathFormat": "posix",
                               "outputRelativeDirectories": ["out"]},
        "localRootPath": str(root)})]  # fmt: skip
    store = S3Store(s3_bucket, "root", S3Options(endpoint_url=s3_relay.url))
    lines: list[str] = []
    [info] = sync_outputs(props, store, "f/q/j/s/t/ts_sa", snapshot_dir=str(tmp_path / "snaps"),
                          out=lines.append)  # fmt: skip
    puts = [r.path for r in s3_relay.seen if r.method == "PUT"]
    assert puts[-1].endswith(f"/root/Manifests/{info.output_manifest_path}")
    assert len([p for p in puts if "/root/Data/" in p]) == 5 and len(puts) == 6

    write(root, "out/f9.exr", b"new")
    snaps = snapshot_outputs(props, merge_base_manifests(props), out=lines.append,
                             destination=str(tmp_path / "snaps"))  # fmt: skip
    os.unlink(root / "out/f9.exr")  # gone before its upload
    with pytest.raises(UploadError, match=r"f9\.exr"):
        upload_outputs(snaps, store, "f/q/j/s/t/ts2_sa", out=lines.append)
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="root/Manifests/")["Contents"]
    assert [o["Key"] for o in listed] == [f"root/Manifests/{info.output_manifest_path}"]


def test_low_transfer_rate_policy_is_the_worker_agents() -> None:
    """The detector's defaults are the constants of the agent's attachment_download.py
    (read from its source), and the worker step reports as often as deadline's progress
    tracker calls the agent's handler (``CALLBACK_INTERVAL``): 60 reports under 10 KB/s
    are one minute."""
    import ast
    import inspect

    from deadline.job_attachments import progress_tracker

    script = os.path.join(
        worker_agent_dir(), "deadline_worker_agent/sessions/actions/scripts/attachment_download.py"
    )
    with open(script, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    # Only the constants' assignments (``10 * 10**3``, ``60``) are run, not the script.
    wanted = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign)
        and all(isinstance(t, ast.Name) and t.id.startswith("LOW_TRANSFER_") for t in node.targets)
    ]
    theirs: dict[str, Any] = {}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), script, "exec"), {}, theirs)
    assert theirs == {"LOW_TRANSFER_RATE_THRESHOLD": 10_000, "LOW_TRANSFER_COUNT_THRESHOLD": 60}
    d = LowTransferRateDetector()
    assert (d.threshold, d.reports) == (
        theirs["LOW_TRANSFER_RATE_THRESHOLD"],
        theirs["LOW_TRANSFER_COUNT_THRESHOLD"],
    )
    params = inspect.signature(sync_inputs).parameters
    assert params["low_rate_threshold"].default == theirs["LOW_TRANSFER_RATE_THRESHOLD"]
    assert params["low_rate_reports"].default == theirs["LOW_TRANSFER_COUNT_THRESHOLD"]
    assert params["progress_interval"].default == progress_tracker.CALLBACK_INTERVAL == 1
