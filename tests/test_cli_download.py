"""``vfs attachment download``: the command as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import S3Relay, run_vfs
from test_download import FILES, fill, make_manifest, tree

from vfs.cli.common import ctrl_c_cancels
from vfs.hashing import hash_string
from vfs.manifest import encode_manifest
from vfs.storage import LocalStore, S3Options, S3Store


def test_cli_download_file_store_json_and_conflicts(
    tmp_path: Path, local_store: tuple[Path, str]
) -> None:
    store_dir, uri = local_store
    m, objects = make_manifest()
    fill(LocalStore(str(store_dir)), objects)
    mfile = tmp_path / "in.manifest"
    mfile.write_bytes(encode_manifest(m))
    dest = tmp_path / "dest"
    args = ("attachment", "download", "-m", str(mfile), "-r", str(dest), "--s3-root-uri", uri)
    out = json.loads(run_vfs(*args, "--json", "--verify-hash").stdout)
    assert len(out) == 1 and out[0]["manifest"] == str(mfile) and out[0]["dest"] == str(dest)
    assert out[0]["files_transferred"] == len(FILES) and out[0]["files_failed"] == 0
    assert out[0]["bytes_transferred"] == sum(map(len, FILES.values()))
    assert tree(dest) == FILES
    # deadline's spelling of the choice (upper case) is accepted.
    again = json.loads(run_vfs(*args, "--json", "--conflict-resolution", "SKIP").stdout)
    assert again[0]["files_skipped"] == len(FILES)
    text = run_vfs(*args).stdout
    assert f"{len(FILES)} files downloaded" in text
    assert (dest / "a (1).txt").read_bytes() == b"alpha"


def test_cli_download_s3_with_path_mapping_rules(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """As ``deadline attachment download``: the rule whose hashed source path is in the
    manifest file name gives the destination."""
    m, objects = make_manifest({"x/y.txt": b"mapped"})
    fill(S3Store(s3_bucket, "root", S3Options(endpoint_url=s3_endpoint)), objects)
    source = "C:\\Projects\\shot"
    mfile = tmp_path / f"{hash_string(source)}_input"
    mfile.write_bytes(encode_manifest(m))
    mapped = tmp_path / "mapped"
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "path_mapping_rules": [
                    {
                        "source_path_format": "windows",
                        "source_path": source,
                        "destination_path": str(mapped),
                    }
                ]
            }
        )
    )
    run_vfs(
        "attachment",
        "download",
        "-m",
        str(mfile),
        "--path-mapping-rules",
        str(rules),
        "--s3-root-uri",
        f"s3://{s3_bucket}/root",
        "--endpoint-url",
        s3_endpoint,
    )
    assert tree(mapped) == {"x/y.txt": b"mapped"}


def test_cli_download_missing_bucket_one_line(tmp_path: Path, s3_endpoint: str) -> None:
    m, _ = make_manifest({f"f{i}": f"{i}".encode() for i in range(300)})
    mfile = tmp_path / "in.manifest"
    mfile.write_bytes(encode_manifest(m))
    t0 = time.monotonic()
    result = run_vfs(
        "attachment",
        "download",
        "-m",
        str(mfile),
        "--dest",
        str(tmp_path / "d"),
        "--s3-root-uri",
        "s3://vfs-missing-bucket/root",
        "--endpoint-url",
        s3_endpoint,
        check=False,
    )
    assert time.monotonic() - t0 < 20
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "vfs-missing-bucket" in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_ctrl_c_leaves_no_partial_file(
    tmp_path: Path, s3_relay: S3Relay, s3_bucket: str
) -> None:
    files = {"slow.bin": random.Random(9).randbytes(3_000_000), "quick.txt": b"quick"}
    m, objects = make_manifest(files)
    fill(S3Store(s3_bucket, "root", S3Options(endpoint_url=s3_relay.url)), objects)
    mfile = tmp_path / "in.manifest"
    mfile.write_bytes(encode_manifest(m))
    dest = tmp_path / "d"
    s3_relay.stall_body = 20.0  # bodies pause after their first 64 KiB for 20 s
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vfs",
            "attachment",
            "download",
            "-m",
            str(mfile),
            "--dest",
            str(dest),
            "--s3-root-uri",
            f"s3://{s3_bucket}/root",
            "--endpoint-url",
            s3_relay.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not list(dest.glob(".slow.bin.*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(dest.glob(".slow.bin.*.part")), "the download never started"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        # Well within the 20 s pause: the stalled reads are cut, not waited out.
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert not (dest / "slow.bin").exists()
    assert not list(dest.glob("*.part")) and not list(dest.glob(".*.part"))


def test_cli_download_without_credentials_one_line(tmp_path: Path, s3_endpoint: str) -> None:
    m, _ = make_manifest({f"f{i}": f"{i}".encode() for i in range(200)})
    mfile = tmp_path / "in.manifest"
    mfile.write_bytes(encode_manifest(m))
    result = run_vfs(
        "attachment",
        "download",
        "-m",
        str(mfile),
        "--dest",
        str(tmp_path / "d"),
        "--s3-root-uri",
        "s3://some-bucket/root",
        "--endpoint-url",
        s3_endpoint,
        env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no AWS credentials found" in lines[0], result.stderr
    assert "--profile" in lines[0]


def test_ctrl_c_is_a_cancel_request_not_an_exception_anywhere() -> None:
    """A SIGINT inside :func:`ctrl_c_cancels` does not raise where the main thread happens
    to be (inside ``concurrent.futures.wait`` or a lock's window it left locks held and the
    download hung); it turns the progress callback into a cancel, and is raised on exit."""
    reached = False
    with pytest.raises(KeyboardInterrupt), ctrl_c_cancels() as interrupt:
        assert interrupt.guard(lambda p: True)(None) is True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between two bytecodes of this thread
        reached = True
        assert interrupt.guard(lambda p: True)(None) is False
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_stays_ignored_where_it_was_ignored() -> None:
    """Under ``nohup`` (SIGINT ignored) a Ctrl-C sent to the process group must not stop a
    transfer: :func:`ctrl_c_cancels` leaves an ignored SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_cancels() as interrupt:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert not interrupt.hit
            assert interrupt.guard(lambda p: True)(None) is True
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
