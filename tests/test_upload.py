"""Uploading a manifest's files to the content-addressed store (local directory and moto S3)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import S3Relay, run_vfs
from test_compat_deadline import oracle

from vfs.errors import UploadError
from vfs.hashing import hash_bytes, hash_string
from vfs.manifest import Manifest, ManifestPath, encode_manifest
from vfs.snapshot import snapshot_directory, write_manifest_file
from vfs.storage import (
    LocalStore,
    ObjectStore,
    S3Options,
    S3Store,
    data_key,
    download_manifest,
    manifest_metadata,
)
from vfs.testing.mounts import run_vfs_on_a_tty
from vfs.transfer import upload_manifest_files

OWNER = "123456789012"

FILES = {
    "a.txt": b"alpha",
    "sub/dup.txt": b"alpha",  # same content as a.txt: one object
    "sub/b.bin": random.Random(1).randbytes(100_000),
    "empty": b"",
    "deep/x/y.dat": random.Random(2).randbytes(3000),
    "caf\u00e9/\U0001f600.txt": b"unicode",
}


def make_root(root: Path, files: dict[str, bytes] = FILES) -> Manifest:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    m = snapshot_directory(str(root))
    assert m is not None and len(m.paths) == len(files)
    return m


def distinct(files: dict[str, bytes] = FILES) -> dict[str, bytes]:
    """``{data key: content}`` of the distinct objects of ``files``."""
    return {data_key(hash_bytes(d)): d for d in files.values()}


def stored(store: ObjectStore) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k, _ in store.list_keys("Data/")}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "jobs/root", S3Options(endpoint_url=endpoint))


def count_puts(store: ObjectStore) -> list[str]:
    """For an S3 store, record the key of every PUT the client sends (observing only)."""
    puts: list[str] = []
    if isinstance(store, S3Store):

        def before_send(request: Any, **_: Any) -> None:
            if request.method == "PUT":
                puts.append(urlsplit(request.url).path)

        store.client.meta.events.register("before-send.s3.PutObject", before_send)
    return puts


# -- upload_manifest_files ------------------------------------------------------------------


def test_uploads_each_distinct_hash_once(store: ObjectStore, tmp_path: Path) -> None:
    m = make_root(tmp_path / "root")
    puts = count_puts(store)
    called: list[tuple[ManifestPath, bool]] = []
    summary = upload_manifest_files(
        m, str(tmp_path / "root"), store, on_object=lambda e, up: called.append((e, up))
    )
    want = distinct()
    assert len(want) == len(FILES) - 1
    assert summary.objects == len(want)
    assert summary.uploaded == len(want) and summary.skipped == 0
    assert summary.uploaded_bytes == sum(len(d) for d in want.values())
    assert stored(store) == want
    assert sorted(data_key(e.hash) for e, _ in called) == sorted(want)
    assert all(up for _, up in called)
    if isinstance(store, S3Store):
        assert len(puts) == len(want)
        assert all(p.startswith(f"/{store.bucket}/jobs/root/Data/") for p in puts)


def test_second_upload_skips_everything(store: ObjectStore, tmp_path: Path) -> None:
    m = make_root(tmp_path / "root")
    upload_manifest_files(m, str(tmp_path / "root"), store)
    puts = count_puts(store)
    summary = upload_manifest_files(m, str(tmp_path / "root"), store)
    want = distinct()
    assert (summary.uploaded, summary.skipped) == (0, len(want))
    assert summary.skipped_bytes == sum(len(d) for d in want.values())
    assert puts == []
    assert stored(store) == want


def test_present_object_of_right_size_is_skipped_wrong_size_replaced(
    store: ObjectStore, tmp_path: Path
) -> None:
    m = make_root(tmp_path / "root")
    alpha_key = data_key(hash_bytes(b"alpha"))
    big_key = data_key(hash_bytes(FILES["sub/b.bin"]))
    store.put_bytes(alpha_key, b"ALPHA")  # right size: trusted, not re-read
    store.put_bytes(big_key, b"truncated")  # wrong size: uploaded again
    uploaded: dict[str, bool] = {}
    summary = upload_manifest_files(
        m, str(tmp_path / "root"), store, on_object=lambda e, up: uploaded.update({e.hash: up})
    )
    assert summary.skipped == 1 and summary.uploaded == len(distinct()) - 1
    assert uploaded[hash_bytes(b"alpha")] is False
    assert uploaded[hash_bytes(FILES["sub/b.bin"])] is True
    assert store.get_bytes(alpha_key) == b"ALPHA"
    assert store.get_bytes(big_key) == FILES["sub/b.bin"]


@pytest.mark.parametrize("change", ["same_size", "other_size"])
def test_changed_and_missing_files_are_refused_others_uploaded(
    store: ObjectStore, tmp_path: Path, change: str
) -> None:
    root = tmp_path / "root"
    m = make_root(root)
    changed = root / "sub" / "b.bin"
    data = bytearray(FILES["sub/b.bin"])
    if change == "same_size":
        data[500] ^= 0xFF
    else:
        data += b"more"
    changed.write_bytes(data)
    missing = root / "deep" / "x" / "y.dat"
    missing.unlink()

    with pytest.raises(UploadError) as info:
        upload_manifest_files(m, str(root), store)
    msg = str(info.value)
    assert str(changed) in msg and "changed since the manifest" in msg
    assert str(missing) in msg and "no such file" in msg
    assert "2 of 5 objects were not uploaded" in msg

    good = {
        k: v for k, v in distinct().items() if v not in (FILES["sub/b.bin"], FILES["deep/x/y.dat"])
    }
    assert stored(store) == good  # the others were uploaded; nothing under a wrong hash
    assert hash_bytes(bytes(data)) not in str(list(store.list_keys("")))


# -- the CLI -------------------------------------------------------------------------------


def cli_upload(*args: str, check: bool = True) -> Any:
    result = run_vfs("attachment", "upload", *args, check=check)
    return json.loads(result.stdout) if check and "--json" in args else result


def test_cli_upload_to_file_store(tmp_path: Path, local_store: tuple[Path, str]) -> None:
    store_dir, uri = local_store
    root = tmp_path / "root"
    m = make_root(root)
    manifest_file = write_manifest_file(str(root), m, str(tmp_path / "manifests"))
    out = cli_upload("-m", manifest_file, "-r", str(root), "--s3-root-uri", uri, "--json")
    n = len(distinct())
    assert len(out) == 1
    got = out[0]
    assert (got["manifest"], got["root"], got["dest"]) == (manifest_file, str(root), uri)
    # The shape of `vfs attachment download --json` (TransferStatistics.as_dict), in objects.
    assert got["files_total"] == got["files_transferred"] == n
    assert got["bytes_transferred"] == sum(len(d) for d in distinct().values())
    assert (got["files_skipped"], got["bytes_skipped"], got["files_failed"]) == (0, 0, 0)
    assert (got["errors"], got["cancelled"]) == ([], False)
    assert {"elapsed_seconds", "bytes_per_second"} <= set(got)
    assert stored(LocalStore(str(store_dir))) == distinct()
    again = cli_upload("-m", manifest_file, "-r", str(root), "--s3-root-uri", uri, "--json")
    assert (again[0]["files_transferred"], again[0]["files_skipped"]) == (0, n)
    text = cli_upload("-m", manifest_file, "-r", str(root), "--s3-root-uri", uri)
    assert "0 objects uploaded (0 bytes, " in text.stdout
    assert f"{n} already in {uri}" in text.stdout


@pytest.mark.parametrize("flag", ["--store", "--s3-root-uri"])
def test_cli_upload_takes_store_and_deadline_flag(
    tmp_path: Path, local_store: tuple[Path, str], flag: str
) -> None:
    """``--store`` as on every command that takes a store; deadline's ``--s3-root-uri``
    is its alias."""
    store_dir, uri = local_store
    root = tmp_path / "root"
    manifest_file = write_manifest_file(str(root), make_root(root), str(tmp_path / "m"))
    [got] = cli_upload("-m", manifest_file, "-r", str(root), flag, uri, "--json")
    assert (got["dest"], got["files_transferred"]) == (uri, len(distinct()))
    assert stored(LocalStore(str(store_dir))) == distinct()


def test_cli_upload_two_roots_paired_by_manifest_name(
    tmp_path: Path, local_store: tuple[Path, str]
) -> None:
    store_dir, uri = local_store
    files1 = {"one/a": b"1", "one/b": b"shared"}
    files2 = {"two": b"2", "same": b"shared"}
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    m1 = write_manifest_file(str(r1), make_root(r1, files1), str(tmp_path / "m"))
    m2 = write_manifest_file(str(r2), make_root(r2, files2), str(tmp_path / "m"))
    out = cli_upload(
        *("-m", m1, "-m", m2, "-r", str(r2), "-r", str(r1)), "--s3-root-uri", uri, "--json"
    )
    assert [(o["manifest"], o["root"]) for o in out] == [(m1, str(r1)), (m2, str(r2))]
    assert stored(LocalStore(str(store_dir))) == {**distinct(files1), **distinct(files2)}


def test_cli_upload_refuses_changed_file(tmp_path: Path, local_store: tuple[Path, str]) -> None:
    store_dir, uri = local_store
    root = tmp_path / "root"
    m = make_root(root)
    manifest_file = tmp_path / "x.manifest"
    manifest_file.write_bytes(encode_manifest(m))
    (root / "a.txt").write_bytes(b"ALPHA")  # same size, different content
    (root / "sub" / "dup.txt").write_bytes(b"ALPHA")  # the other copy of that content too
    result = cli_upload(
        "-m", str(manifest_file), "-r", str(root), "--s3-root-uri", uri, check=False
    )
    assert result.returncode != 0
    assert str(root / "a.txt") in result.stderr or str(root / "sub" / "dup.txt") in result.stderr
    assert "Traceback" not in result.stderr
    assert data_key(hash_bytes(b"alpha")) not in stored(LocalStore(str(store_dir)))


def test_cli_upload_takes_an_intact_copy_of_changed_content(
    tmp_path: Path, local_store: tuple[Path, str]
) -> None:
    store_dir, uri = local_store
    root = tmp_path / "root"
    m = make_root(root)
    manifest_file = tmp_path / "x.manifest"
    manifest_file.write_bytes(encode_manifest(m))
    changed = root / "a.txt"
    changed.write_bytes(b"ALPHA")  # sub/dup.txt still holds the manifest's content
    result = cli_upload("-m", str(manifest_file), "-r", str(root), "--s3-root-uri", uri)
    assert result.returncode == 0
    assert str(changed) in result.stderr  # the changed copy is named in a warning
    key = data_key(hash_bytes(b"alpha"))
    assert (store_dir / key).read_bytes() == b"alpha"


def test_cli_upload_to_moto(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    root = tmp_path / "root"
    m = make_root(root)
    manifest_file = write_manifest_file(str(root), m, str(tmp_path / "manifests"))
    uri = f"s3://{s3_bucket}/jobs/root"
    args = ("-m", manifest_file, "-r", str(root), "--s3-root-uri", uri)
    out = cli_upload(*args, "--endpoint-url", s3_endpoint, "--json")
    assert out[0]["files_transferred"] == len(distinct())
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="jobs/root/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(f"jobs/root/{k}" for k in distinct())
    for key, data in distinct().items():
        body = s3_client.get_object(Bucket=s3_bucket, Key=f"jobs/root/{key}")["Body"].read()
        assert body == data
    # The endpoint can also come from AWS_ENDPOINT_URL.
    result = run_vfs("attachment", "upload", *args, "--json", env={"AWS_ENDPOINT_URL": s3_endpoint})
    assert json.loads(result.stdout)[0]["files_skipped"] == len(distinct())


# -- --path-mapping-rules and --upload-manifest-path, deadline as the oracle ----------------


def rules_file(path: Path, rules: dict[str, Path]) -> str:
    """A deadline rules file mapping each POSIX source path to its local directory."""
    path.write_text(json.dumps({"path_mapping_rules": [
        {"source_path_format": "posix", "source_path": src, "destination_path": str(dst)}
        for src, dst in rules.items()
    ]}))  # fmt: skip
    return str(path)


def test_cli_upload_with_rules_and_manifest_path_like_deadline(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    """Each manifest is read from the destination of the rule whose hashed source path its
    name holds, and uploaded to Manifests/PREFIX/NAME with the source path as asset-root:
    the same objects, keys, manifest bytes, metadata and hashes as deadline's
    ``_attachment_upload`` (but for deadline's odd file-system-location-name)."""
    sources = {"/mnt/proj/shot": {"a.txt": b"alpha", "sub/b.bin": b"b" * 5000},
               "/mnt/caf\u00e9": {"c.txt": b"gamma", "a2.txt": b"alpha"}}  # fmt: skip
    rules, manifests = {}, []
    for i, (src, files) in enumerate(sources.items()):
        local = tmp_path / f"local{i}"
        rules[src] = local
        manifest_file = tmp_path / "m" / f"{hash_string(src)}_input"
        manifest_file.parent.mkdir(exist_ok=True)
        manifest_file.write_bytes(encode_manifest(make_root(local, files)))
        manifests.append(str(manifest_file))
    rules_json = rules_file(tmp_path / "rules.json", rules)
    prefix = "farm-1/queue-1/Inputs/0123"
    ours = cli_upload(
        *(a for m in manifests for a in ("-m", m)), "--path-mapping-rules", rules_json,
        "--store", f"s3://{s3_bucket}/Ours", "--upload-manifest-path", prefix + "/",
        "--endpoint-url", s3_endpoint, "--json",
    )  # fmt: skip
    theirs = oracle(
        "attachment-upload", "--s3-root-uri", f"s3://{s3_bucket}/Theirs", "--endpoint",
        s3_endpoint, "--cache-dir", str(tmp_path / "cc"), "--path-mapping-rules", rules_json,
        "--upload-manifest-path", prefix, *manifests,
        home=tmp_path / "home", env={"AWS_ENDPOINT_URL": s3_endpoint},
    )  # fmt: skip
    assert theirs["endpoint"] == s3_endpoint

    def listing(root: str) -> dict[str, Any]:
        got = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{root}/")["Contents"]
        return {o["Key"].removeprefix(f"{root}/"): o for o in got}

    assert set(listing("Ours")) == set(listing("Theirs"))
    want = {**distinct(sources["/mnt/proj/shot"]), **distinct(sources["/mnt/caf\u00e9"])}
    assert {k for k in listing("Ours") if k.startswith("Data/")} == set(want)
    assert [o["source_root"] for o in ours] == list(sources)
    assert [o["root"] for o in ours] == [str(p) for p in rules.values()]
    for mine, info in zip(ours, theirs["uploads"], strict=True):
        assert mine["manifest_key"] == f"Manifests/{info['output_manifest_path']}"
        assert mine["manifest_hash"] == info["output_manifest_hash"]
        a = s3_client.get_object(Bucket=s3_bucket, Key=f"Ours/{mine['manifest_key']}")
        b = s3_client.get_object(Bucket=s3_bucket, Key=f"Theirs/{mine['manifest_key']}")
        assert a["Body"].read() == b["Body"].read()
        # DIFFERENCE: deadline records the rule's source_path_format ("posix") as
        # file-system-location-name, which names a storage-profile location; vfs does not.
        assert b["Metadata"].pop("file-system-location-name") == "posix"
        assert a["Metadata"] == b["Metadata"] == manifest_metadata(info["source_path"])
    assert "asset-root-json" in manifest_metadata("/mnt/caf\u00e9")


def test_cli_upload_root_dirs_or_rules(tmp_path: Path, local_store: tuple[Path, str]) -> None:
    """Exactly one of -r and --path-mapping-rules, as deadline; a manifest no rule names is
    refused before anything is uploaded; with -r the manifest goes up with the root as its
    asset-root."""
    store_dir, uri = local_store
    root = tmp_path / "root"
    manifest_file = write_manifest_file(str(root), make_root(root), str(tmp_path / "m"))
    rules = rules_file(tmp_path / "rules.json", {"/elsewhere": root})
    for args, message in [
        (("-r", str(root), "--path-mapping-rules", rules), "not both"),
        ((), "give either --root-dirs or --path-mapping-rules"),
        (("--path-mapping-rules", rules), f"no path mapping rule's source path belongs to "
                                          f"manifest {manifest_file}"),
    ]:  # fmt: skip
        bad = cli_upload("-m", manifest_file, *args, "--store", uri, check=False)
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    assert list(store_dir.iterdir()) == []
    [got] = cli_upload("-m", manifest_file, "-r", str(root), "--store", uri,
                       "--upload-manifest-path", "P", "--json")  # fmt: skip
    key = f"Manifests/P/{os.path.basename(manifest_file)}"
    assert got["manifest_key"] == key
    assert got["manifest_hash"] == hash_bytes(Path(manifest_file).read_bytes())
    uploaded = download_manifest(LocalStore(str(store_dir)), key)
    assert uploaded.asset_root == str(root)
    assert stored(LocalStore(str(store_dir))) == distinct()


# -- ExpectedBucketOwner through the CLI, observed on the wire --------------------------------


@pytest.fixture()
def proxy(s3_relay: S3Relay) -> S3Relay:
    return s3_relay


def test_cli_sends_expected_bucket_owner_on_every_request(
    tmp_path: Path, s3_bucket: str, s3_client: Any, proxy: S3Relay
) -> None:
    root = tmp_path / "root"
    m = make_root(root)
    # The manifest itself is read from S3 too (read_location with the same options).
    s3_client.put_object(Bucket=s3_bucket, Key="Manifests/in_input", Body=encode_manifest(m))
    args = (
        *("-m", f"s3://{s3_bucket}/Manifests/in_input", "-r", str(root)),
        *("--s3-root-uri", f"s3://{s3_bucket}/jobs", "--endpoint-url", proxy.url),
    )
    out = cli_upload(*args, "--expected-bucket-owner", OWNER, "--json")
    assert out[0]["files_transferred"] == len(distinct())
    methods = {r.method for r in proxy.seen}
    assert {"GET", "HEAD", "PUT"} <= methods
    assert all(r.owner == OWNER for r in proxy.seen), proxy.seen
    assert any(r.path.endswith("/Manifests/in_input") for r in proxy.seen)

    # Also from the environment variable; and nothing is sent when it is not set.
    proxy.seen.clear()
    env = {"VFS_EXPECTED_BUCKET_OWNER": OWNER}
    run_vfs("attachment", "upload", *args, env=env)
    assert proxy.seen and all(r.owner == OWNER for r in proxy.seen)
    proxy.seen.clear()
    run_vfs("attachment", "upload", *args, env={"VFS_EXPECTED_BUCKET_OWNER": ""})
    assert proxy.seen and all(r.owner is None for r in proxy.seen)


def test_s3_check_cache_skips_heads_and_survives_a_deleted_object(
    tmp_path: Path, s3_bucket: str, s3_client: Any, s3_relay: S3Relay
) -> None:
    root = tmp_path / "root"
    files = {f"f{i}.bin": bytes([i]) * (100 + i) for i in range(40)}
    m = make_root(root, files)
    manifest_file = write_manifest_file(str(root), m, str(tmp_path / "manifests"))
    args = ("-m", manifest_file, "-r", str(root), "--s3-root-uri", f"s3://{s3_bucket}/ja",
            "--endpoint-url", s3_relay.url, "--s3-check-cache-dir", str(tmp_path / "cc"),
            "--json")  # fmt: skip
    first = json.loads(run_vfs("attachment", "upload", *args).stdout)[0]
    assert first["files_transferred"] == 40
    s3_relay.seen.clear()
    second = json.loads(run_vfs("attachment", "upload", *args).stdout)[0]
    assert second["files_skipped"] == 40
    heads = [r for r in s3_relay.seen if r.method == "HEAD"]
    assert len(heads) <= 30  # only deadline's integrity sample, not one HEAD per object
    assert not [r for r in s3_relay.seen if r.method == "PUT"]
    # An object removed behind the cache's back is noticed by the sample and uploaded again.
    gone = data_key(hash_bytes(files["f0.bin"]))
    for key in [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]:
        s3_client.delete_object(Bucket=s3_bucket, Key=key)
    third = json.loads(run_vfs("attachment", "upload", *args).stdout)[0]
    assert third["files_transferred"] == 40
    body = s3_client.get_object(Bucket=s3_bucket, Key=f"ja/{gone}")["Body"].read()
    assert body == files["f0.bin"]


def test_missing_bucket_stops_the_upload_at_once(s3_relay: S3Relay, tmp_path: Path) -> None:
    """Errors every object would meet are reported once, not per object, and the upload
    stops instead of trying the remaining objects."""
    files = {f"f{i:03d}.bin": random.Random(i).randbytes(100) for i in range(200)}
    m = make_root(tmp_path / "root", files)
    store = S3Store("no-such-bucket-vfs", "r", S3Options(endpoint_url=s3_relay.url))
    with pytest.raises(UploadError) as info:
        upload_manifest_files(m, str(tmp_path / "root"), store, workers=8)
    text = str(info.value)
    assert "upload stopped after 0 of 200 objects" in text
    assert "bucket 'no-such-bucket-vfs' does not exist" in text
    assert text.count("check the bucket name") == 1  # the hint, once
    assert len(s3_relay.seen) <= 3 * 8, len(s3_relay.seen)


@pytest.mark.parametrize("cause", ["access denied", "no credentials"])
def test_unhealable_errors_stop_the_upload_at_once(
    cause: str, s3_relay: S3Relay, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 403 on every request (the relay answers AccessDenied), or no credentials at all,
    is reported once and stops the upload: neither each object's HEAD nor its PUT is
    tried."""
    files = {f"f{i:03d}.bin": random.Random(i).randbytes(100) for i in range(200)}
    m = make_root(tmp_path / "root", files)
    if cause == "access denied":
        s3_relay.deny = (403, "AccessDenied", "Access Denied")
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store(s3_bucket, "r", S3Options(endpoint_url=s3_relay.url))
    calls: list[str] = []
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    with pytest.raises(UploadError) as info:
        upload_manifest_files(m, str(tmp_path / "root"), store, workers=8)
    text = str(info.value)
    assert "upload stopped after 0 of 200 objects" in text
    assert ("access denied" if cause == "access denied" else "no AWS credentials found") in text
    hint = "permissions on s3://" if cause == "access denied" else "--profile"
    assert text.count(hint) == 1  # the hint, once
    assert len(calls) <= 3 * 8, calls  # a few in flight at most, not one per object
    assert "PutObject" not in calls
    if cause == "no credentials":
        assert s3_relay.seen == []  # nothing could be signed, nothing was sent


def test_cli_upload_shows_progress_on_a_terminal_only(
    tmp_path: Path, local_store: tuple[Path, str]
) -> None:
    root = tmp_path / "root"
    files = {f"f{i:03d}.bin": random.Random(i).randbytes(200_000) for i in range(40)}
    m = make_root(root, files)
    manifest_file = write_manifest_file(str(root), m, str(tmp_path / "manifests"))
    shown = run_vfs_on_a_tty("attachment", "upload", "-m", manifest_file, "-r", str(root),
                         "--s3-root-uri", local_store[1])  # fmt: skip
    assert "uploading" in shown and "/s" in shown  # the bar with its rate
    quiet = cli_upload("-m", manifest_file, "-r", str(root), "--s3-root-uri", local_store[1])
    assert "uploading" not in quiet.stderr


def test_cli_ctrl_c_stops_an_upload_promptly(
    tmp_path: Path, s3_relay: S3Relay, s3_bucket: str
) -> None:
    """Ctrl-C during ``vfs attachment upload``: no new object starts, the command exits
    within a few seconds (each PUT answered 0.5 s late) with a failure status and no
    traceback, long before the 200 objects could have gone up, and the manifest
    (``--upload-manifest-path``) is not uploaded."""
    root = tmp_path / "root"
    rng = random.Random(5)
    for i in range(200):
        (root / f"f{i:03}.bin").parent.mkdir(parents=True, exist_ok=True)
        (root / f"f{i:03}.bin").write_bytes(rng.randbytes(1000))
    manifest_file = write_manifest_file(str(root), snapshot_directory(str(root)), str(tmp_path))
    s3_relay.stall, s3_relay.stall_only = 0.5, "PUT "
    args = ("-m", manifest_file, "-r", str(root), "--s3-root-uri", f"s3://{s3_bucket}/root",
            "--upload-manifest-path", "P")  # fmt: skip
    relay_args = ("--endpoint-url", s3_relay.url, "--workers", "4")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfs", "attachment", "upload", *args, *relay_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len([r for r in s3_relay.seen if r.method == "PUT"]) < 8:
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in err, err
    puts = [r for r in s3_relay.seen if r.method == "PUT"]
    assert len(puts) < 60, len(puts)
    assert not [r for r in puts if "/Manifests/" in r.path]  # a stopped upload: no manifest
