"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), real FUSE mounts that are
always unmounted, and a runner for the ``vfs`` command.

No test talks to anything beyond 127.0.0.1: every S3 client gets the moto endpoint, and the
AWS configuration files are pointed at empty files so no profile can redirect traffic.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from vfs.mount.service import is_mounted

# Credentials and region for moto; set before anything creates a boto3 session.
_AWS_HOME = tempfile.mkdtemp(prefix="vfs-test-aws-")
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.path.join(_AWS_HOME, "config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(_AWS_HOME, "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # Caches (block cache, hash cache, S3 check cache) of commands run without
        # --cache-dir go here, never into the user's own.
        "VFS_CACHE_DIR": os.path.join(_AWS_HOME, "vfs-cache"),
    }
)
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)

VENV_BIN = Path(sys.executable).parent
MOUNT_TIMEOUT = 120
UNMOUNT_TIMEOUT = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1, started for the session."""
    port = _free_port()
    exe = shutil.which("moto_server", path=str(VENV_BIN)) or "moto_server"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class Request:
    """One request seen by the relay."""

    method: str
    path: str
    range: str | None
    owner: str | None


class S3Relay:
    """A plain HTTP relay on 127.0.0.1 in front of the S3 server that records every request
    (method, path, Range and ``x-amz-expected-bucket-owner`` headers) and can inject faults:
    ``down`` answers every request with 503, ``fail_ratio`` answers that share with 503,
    ``stall`` delays every answer by that many seconds."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self.seen: list[Request] = []
        self.down = False
        self.fail_ratio = 0.0
        self.stall = 0.0
        self.drop_range = False
        self.rewrite: Callable[[str, bytes], bytes] | None = None
        self.expected_owner: str | None = None
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                relay.seen.append(
                    Request(
                        self.command,
                        self.path,
                        self.headers.get("Range"),
                        self.headers.get("x-amz-expected-bucket-owner"),
                    )
                )
                if relay.stall:
                    time.sleep(relay.stall)
                if relay.down or (relay.fail_ratio and random.random() < relay.fail_ratio):
                    msg = b"<Error><Code>ServiceUnavailable</Code></Error>"
                    self.send_response(503, "Service Unavailable")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                headers_out = dict(self.headers)
                if relay.drop_range and self.command == "GET":
                    headers_out = {k: v for k, v in headers_out.items() if k.lower() != "range"}
                conn = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers_out)
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = resp.getheaders()
                finally:
                    conn.close()
                if relay.rewrite and self.command == "GET" and resp.status in (200, 206):
                    data = relay.rewrite(self.path, data)
                self.send_response(resp.status, resp.reason)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, contains: str = "") -> list[Request]:
        """The GET requests whose path contains ``contains``."""
        return [r for r in self.seen if r.method == "GET" and contains in r.path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def s3_relay(s3_endpoint: str) -> Iterator[S3Relay]:
    """A recording, fault-injecting relay in front of the moto server (see :class:`S3Relay`)."""
    relay = S3Relay(s3_endpoint)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture()
def s3_client(s3_endpoint: str):  # type: ignore[no-untyped-def]
    """A boto3 S3 client on the moto server."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture()
def s3_bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    """A new, empty bucket on the moto server."""
    name = f"vfs-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def run_vfs(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``vfs ARGS`` in a subprocess; raise with its output when ``check`` and it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "vfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"vfs {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@dataclass
class Mounted:
    """A mount made by a test: its path, daemon pid and log file."""

    path: Path
    pid: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def force_unmount(path: str) -> None:
    """Last resort for a stuck mount: abort the FUSE connection, then lazy-unmount."""
    with contextlib.suppress(Exception):
        if not os.path.ismount("/sys/fs/fuse/connections"):
            subprocess.run(
                ["mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"],
                capture_output=True,
                timeout=10,
                check=False,
            )
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split(" ")
                if fields[4] == path:
                    minor = fields[2].split(":")[1]
                    with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as ab:
                        ab.write("1")
    subprocess.run(["fusermount3", "-uz", path], capture_output=True, timeout=10, check=False)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped by init has finished)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture()
def vfs_mount(tmp_path: Path) -> Iterator[Callable[..., Mounted]]:
    """Factory: ``vfs_mount(mountpoint, manifests, store, *extra_args)`` mounts for real.

    Every mount is unmounted when the test ends, pass or fail: ``vfs unmount`` first, then
    a fusectl abort and a lazy unmount, and the daemon is killed if it lingers.
    """
    made: list[Mounted] = []

    def mount(
        mountpoint: Path,
        manifests: Sequence[str | Path],
        store: str,
        *extra: str,
        cache_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Mounted:
        mountpoint.mkdir(parents=True, exist_ok=True)
        cache = cache_dir or tmp_path / "cache"
        log = tmp_path / f"mount-{len(made)}.log"
        args = ["mount", str(mountpoint), "--store", store, "--cache-dir", str(cache)]
        args += ["--log-file", str(log)]
        for manifest in manifests:
            args += ["--manifest", str(manifest)]
        result = run_vfs(*args, *extra, timeout=MOUNT_TIMEOUT, env=env)
        pid = int(result.stdout.split("(pid ")[1].split(",")[0])
        mounted = Mounted(mountpoint, pid, log)
        made.append(mounted)
        return mounted

    yield mount

    for m in reversed(made):
        path = str(m.path)
        if is_mounted(path):
            with contextlib.suppress(Exception):
                run_vfs("unmount", path, timeout=UNMOUNT_TIMEOUT, check=False)
        if is_mounted(path):
            force_unmount(path)
        deadline = time.monotonic() + 10
        while pid_alive(m.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(m.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.pid, signal.SIGKILL)


@pytest.fixture()
def local_store(tmp_path: Path) -> tuple[Path, str]:
    """An empty ``file://`` store: ``(directory, URI)``."""
    d = tmp_path / "store"
    d.mkdir()
    return d, f"file://{d}"
