#!/usr/bin/env python3
"""Read benchmark of ``vfs mount`` (issue 4): ratios to baselines measured in the same run.

Run ``scripts/bench_read.py [--quick] [--server moto|s3rver|both] [--json]``; it re-executes
itself with the project's virtualenv python (``$VFS_VENV`` or ``.venv``) when started with
another interpreter. It benchmarks whatever ``python -m vfs`` imports when run in the work
directory: the virtualenv's (editable) install, or a tree put first on ``PYTHONPATH``.

Everything runs on 127.0.0.1 with fake credentials (``S3RVER``/``S3RVER``, which both servers
accept) and empty AWS config files. The script starts its own servers: ``moto_server`` from
the virtualenv and s3rver 3.7.1 (installed with npm into ``--tools-dir``, default
``~/.cache/vfs-bench``, when missing). The s3fs-fuse and rclone baselines mount the same bucket;
their Debian packages are installed with apt-get when missing (printed first).

Cases (the same random data on every server; objects ``ja/Data/{xxh128}.xxh128``):

* cold: one BIG file (1 GiB; ``--quick`` 128 MiB) read once through a fresh vfs mount with an
  empty cache, against boto3 from the same server (one streaming ``get_object``, and
  ``download_fileobj`` with TransferConfig 8 threads × 8 MiB and 16 × 16 MiB; the best is the
  baseline), s3fs-fuse and rclone mount. Ranged baselines run on s3rver only (moto copies the
  whole object for every ranged GET).
* warm: the re-read of BIG on the same mount (page cache) against a native page-cache read
  of a local copy, and the daemon's ``req.read`` during the re-reads (target 0).
* cache-hit: BIG from a new mount on the filled cache, once with the cache file in the page
  cache, once after ``echo 3 > /proc/sys/vm/drop_caches`` against a native read after the same.
* ttfb: open → first 4 KiB of small uncached files (100 × 64 KiB; ``--quick`` 10) against
  one boto3 ``get_object`` of the same object just before it (interleaved), and s3fs, rclone
  on s3rver; medians.
* metadata: ``find -printf '%s'`` (a stat per entry) of a 100k-entry manifest (``--quick`` 20k),
  twice; the daemon requests of the 2nd pass (target 0) and its time against the same tree of
  empty files on local disk.
* coalesce: 64 threads read one uncached file (64 MiB; ``--quick`` 16 MiB) at once. GETs are
  counted by a relay on 127.0.0.1 in front of the server: GETs per distinct object/range
  (target 1.0) and requested bytes / file size.
* virtual: a job reads 10 % of a 2 GiB input set (``--quick`` 256 MiB): whole small files and
  the first 64 KiB of every large file, timed from ``vfs mount`` to its last byte, against
  deadline's ``download_files_from_manifests`` followed by the same reads of the local copy
  (target ≤ 0.25×); and a job reading everything (target ≤ 1.0×). s3rver only.

A single read that takes longer than ``--read-budget`` seconds (default 120) is stopped and
reported from the bytes read so far (marked STOPPED). The machine's CPU use by other processes
is sampled before and after the run and flagged in the notes: every ratio is only as good as
the quiet of the machine. ``--json`` prints rows, raw timings and stats deltas on stdout.

Every mount (vfs, s3fs, rclone) is unmounted and every server and relay stopped on any exit:
errors, Ctrl-C, SIGTERM, SIGHUP.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    from venv_reexec import reexec_in_venv

    reexec_in_venv(__file__)


import argparse
import concurrent.futures
import contextlib
import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vfs.testing.bench import (
    READ_BUFFER,
    GiB,
    KiB,
    MiB,
    ReadResult,
    Server,
    apt_install,
    cpu_busy,
    delta,
    drop_caches,
    fmt_value,
    free_port,
    human,
    isolate_aws,
    label,
    log,
    mbps,
    mount_entry,
    ratio,
    settle_memory,
    signals_as_interrupt,
    start_moto,
    start_server,
    stop_server,
    timed_read,
    vfs_stats,
)
from vfs.testing.bench import render_table as render_rows
from vfs.testing.mounts import unmount_path, vfs_unmount_command

BUCKET = "vfs-bench"
PREFIX = "ja"
ACCESS_KEY = SECRET_KEY = "S3RVER"
S3RVER_VERSION = "3.7.1"
MOUNT_TIMEOUT = 120.0
EXTRA_VFS_ARGS: list[str] = []  # --vfs-arg, appended to every `vfs mount`
MTIME_BASE = 1_700_000_000_000_000  # µs
TTFB_BYTES = 4 * KiB
HEADER_BYTES = 64 * KiB

TARGET_WARM = 0.90
TARGET_HIT_MBPS = 1800.0
TARGET_HIT_DISK = 0.80
TARGET_COLD = 0.90
TARGET_VIRTUAL_10 = 0.25
TARGET_VIRTUAL_ALL = 1.00
TARGET_LOOKUPS = 25_000.0


@dataclass(frozen=True)
class Sizes:
    big: int
    conc: int
    readers: int
    small_n: int
    small_size: int
    tree: int
    in_large_n: int
    in_large_size: int
    in_small_n: int
    in_small_size: int


FULL = Sizes(
    big=GiB,
    conc=64 * MiB,
    readers=64,
    small_n=100,
    small_size=64 * KiB,
    tree=100_000,
    in_large_n=12,
    in_large_size=128 * MiB,
    in_small_n=512,
    in_small_size=MiB,
)
QUICK = Sizes(
    big=128 * MiB,
    conc=16 * MiB,
    readers=64,
    small_n=10,
    small_size=64 * KiB,
    tree=20_000,
    in_large_n=6,
    in_large_size=32 * MiB,
    in_small_n=64,
    in_small_size=MiB,
)
CASES = ("cold", "warm", "cache-hit", "ttfb", "metadata", "coalesce", "virtual")


# -- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a measurement, its baseline, their ratio and the target."""

    server: str
    case: str
    what: str
    value: float | None
    unit: str
    baseline_what: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        log(
            f"  {row.case}: {row.what} = {fmt_value(row.value, row.unit)}"
            + (
                f" vs {fmt_value(row.baseline, row.unit)} ({row.baseline_what})"
                if row.baseline_what
                else ""
            )
        )


def render_table(results: Results) -> str:
    """The table of all rows, then the notes."""
    header = ("server", "case", "measurement", "value", "baseline", "base value", "ratio")
    header += ("target", "note")
    lines = [
        (
            r.server,
            r.case,
            r.what,
            fmt_value(r.value, r.unit),
            r.baseline_what,
            fmt_value(r.baseline, r.unit) if r.baseline_what else "",
            f"{r.ratio:.2f}x" if r.ratio is not None else "",
            r.target,
            r.note,
        )
        for r in results.rows
    ]
    return render_rows(header, lines, right={3, 5, 6}, notes=results.notes)


# -- small helpers --------------------------------------------------------------------------


def request_delta(after: dict[str, int], before: dict[str, int]) -> int:
    """FUSE requests between two snapshots, not counting the getxattr that read the stats."""
    keys = {k for k in (*after, *before) if k.startswith("req.") and k != "req.getxattr"}
    return delta(after, before, *keys)


def read_first(path: str, nbytes: int = TTFB_BYTES) -> float:
    """Seconds from open to the first ``nbytes`` of ``path`` (or all of it when shorter)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, nbytes)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    if not data:
        raise RuntimeError(f"{path}: no data")
    return elapsed


def read_part(path: str, length: int | None) -> int:
    """Read the first ``length`` bytes of ``path`` (all when None); the bytes read."""
    buf = bytearray(READ_BUFFER)
    view = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while length is None or total < length:
            want = READ_BUFFER if length is None else min(READ_BUFFER, length - total)
            n = os.readv(fd, [view[:want]])
            if n == 0:
                break
            total += n
    finally:
        os.close(fd)
    return total


def run_job(root: str, plan: list[tuple[str, int | None]], readers: int) -> int:
    """The job: read ``(relative path, first N bytes or None for all)`` items under ``root``."""
    if readers <= 1:
        return sum(read_part(os.path.join(root, rel), n) for rel, n in plan)
    pool = concurrent.futures.ThreadPoolExecutor(readers)
    try:
        return sum(pool.map(lambda item: read_part(os.path.join(root, item[0]), item[1]), plan))
    finally:
        # Without waiting: on Ctrl-C the cleanup must get to abort a stuck mount first.
        pool.shutdown(wait=False, cancel_futures=True)


def xxh128_file(path: str) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


# -- a GET-counting relay -------------------------------------------------------------------


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of an S3 server that records every HTTP request.

    Requests are forwarded byte for byte (the Host header too, so SigV4 signatures stay
    valid); the client-to-server stream is parsed just enough to find each request line, its
    Range header and its body length.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def snapshot(self) -> list[tuple[str, str, str | None]]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with self.lock:
            socks = list(self.sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        with self.lock:
            self.sockets.update((client, upstream))
        back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
        back.start()
        try:
            self._forward_requests(client, upstream)
        except OSError:
            pass
        finally:
            back.join(60)
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()
            with self.lock:
                self.sockets.difference_update((client, upstream))

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _forward_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buf = b""
        body_left = 0
        raw = False
        while True:
            data = client.recv(1 << 18)
            if not data:
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)
                return
            if raw:
                upstream.sendall(data)
                continue
            buf += data
            out: list[bytes] = []
            while buf:
                if body_left:
                    n = min(body_left, len(buf))
                    out.append(buf[:n])
                    buf = buf[n:]
                    body_left -= n
                    continue
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head, buf = buf[: end + 4], buf[end + 4 :]
                out.append(head)
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                if len(parts) >= 2:
                    path = urllib.parse.unquote(urllib.parse.urlsplit(parts[1]).path)
                    with self.lock:
                        self.requests.append((parts[0], path, headers.get("range")))
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    raw = True  # no framing to follow; nothing the benchmark counts
                    out.append(buf)
                    buf = b""
                    break
                body_left = int(headers.get("content-length") or 0)
            if out:
                upstream.sendall(b"".join(out))


def range_length(header: str | None, size: int) -> int:
    """Bytes a GET with Range ``header`` asks for from an object of ``size`` bytes."""
    if not header:
        return size
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m:
        return size
    start, end = m.group(1), m.group(2)
    if not start:  # suffix range
        return min(int(end), size)
    last = min(int(end), size - 1) if end else size - 1
    return max(0, last - int(start) + 1)


# -- data and manifests ---------------------------------------------------------------------


@dataclass
class FileSpec:
    rel: str
    size: int
    digest: str
    local: str


@dataclass
class Dataset:
    root: str
    files: dict[str, FileSpec]
    big: str
    conc: str
    small: list[str]
    inputs: list[str]
    all_manifest: str
    input_manifest: str
    input_root: str
    tree_manifest: str
    tree_local: str

    def key(self, rel: str) -> str:
        return f"{PREFIX}/Data/{self.files[rel].digest}.xxh128"


def write_random_file(path: str, size: int, seed: int) -> str:
    """``size`` pseudo-random bytes (incompressible, distinct per seed); returns the xxh128."""
    import xxhash

    rng = random.Random(seed)
    h = xxhash.xxh3_128()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(8 * MiB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def write_manifest(path: str, entries: list[tuple[str, str, int]]) -> None:
    """A canonical v2023-03-03 manifest of ``(path, xxh128, size)`` entries."""
    entries = sorted(entries, key=lambda e: e[0].encode("utf-16-be"))
    paths = [
        {"hash": h, "mtime": MTIME_BASE + i * 1_000_003, "path": p, "size": s}
        for i, (p, h, s) in enumerate(entries)
    ]
    doc = {
        "hashAlg": "xxh128",
        "manifestVersion": "2023-03-03",
        "paths": paths,
        "totalSize": sum(e[2] for e in entries),
    }
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def tree_paths(n: int) -> list[str]:
    """``n`` VFX-style paths, 100 files per leaf directory."""
    return [
        f"seq{i // 10_000:03d}/sh{(i // 1000) % 10:02d}0/v{(i // 100) % 10:03d}/"
        f"plate.{i % 100 + 1001:04d}.exr"
        for i in range(n)
    ]


def make_dataset(work: str, sizes: Sizes, cases: set[str]) -> Dataset:
    """The files (random content, distinct objects) and manifests that ``cases`` need."""
    root = os.path.join(work, "data")
    files: dict[str, FileSpec] = {}
    seed = 1

    def add(rel: str, size: int) -> str:
        nonlocal seed
        local = os.path.join(root, rel)
        files[rel] = FileSpec(rel, size, write_random_file(local, size, seed), local)
        seed += 1
        return rel

    need_big = bool(cases & {"cold", "warm", "cache-hit"})
    plan = [
        ("big.bin", sizes.big, need_big),
        ("conc.bin", sizes.conc, "coalesce" in cases),
        *((f"small/s{i:03d}.bin", sizes.small_size, "ttfb" in cases) for i in range(sizes.small_n)),
        *(
            (f"input/large/L{i:02d}.bin", sizes.in_large_size, "virtual" in cases)
            for i in range(sizes.in_large_n)
        ),
        *(
            (f"input/small/s{i:03d}.bin", sizes.in_small_size, "virtual" in cases)
            for i in range(sizes.in_small_n)
        ),
    ]
    total = sum(size for _, size, wanted in plan if wanted)
    log(f"generating {human(total)} of random data in {root}")
    made_rels = [add(rel, size) for rel, size, wanted in plan if wanted]
    inputs = [r for r in made_rels if r.startswith("input/")]
    all_manifest = os.path.join(work, "all.manifest")
    write_manifest(all_manifest, [(f.rel, f.digest, f.size) for f in files.values()])
    input_manifest = os.path.join(work, "input.manifest")
    write_manifest(
        input_manifest,
        [(rel.removeprefix("input/"), files[rel].digest, files[rel].size) for rel in inputs],
    )
    tree_manifest = os.path.join(work, "tree.manifest")
    tree_local = os.path.join(work, "tree-local")
    if "metadata" in cases:
        log(f"generating the {label(sizes.tree)}-entry tree (manifest, and empty files on disk)")
        rng = random.Random(7)
        paths = tree_paths(sizes.tree)
        write_manifest(
            tree_manifest,
            [(p, f"{rng.getrandbits(128):032x}", rng.randrange(1, 1 << 30)) for p in paths],
        )
        made: set[str] = set()
        for p in paths:
            d = os.path.dirname(p)
            if d not in made:
                os.makedirs(os.path.join(tree_local, d), exist_ok=True)
                made.add(d)
            open(os.path.join(tree_local, p), "wb").close()
    return Dataset(
        root,
        files,
        "big.bin" if need_big else "",
        "conc.bin" if "coalesce" in cases else "",
        [r for r in made_rels if r.startswith("small/")],
        inputs,
        all_manifest,
        input_manifest,
        os.path.join(root, "input"),
        tree_manifest,
        tree_local,
    )


# -- servers, mounts, cleanup ---------------------------------------------------------------


@dataclass
class Mount:
    kind: str  # vfs, s3fs, rclone
    path: str
    log_file: str
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    elapsed: float = 0.0


class Bench:
    """Everything that must be cleaned up: mounts, their daemons, servers, relays."""

    def __init__(self, workdir: str, tools_dir: str) -> None:
        self.workdir = workdir
        self.tools_dir = tools_dir
        self.mounts: list[Mount] = []
        self.servers: list[Server] = []
        self.relays: list[CountingRelay] = []
        self.counter = 0
        self.python = sys.executable
        self.passwd = os.path.join(workdir, "s3fs-passwd")
        with open(self.passwd, "w") as f:
            f.write(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        os.chmod(self.passwd, 0o600)
        self.rclone_conf = os.path.join(workdir, "rclone.conf")
        open(self.rclone_conf, "w").close()

    def _new_mountpoint(self, name: str) -> tuple[str, str]:
        self.counter += 1
        mnt = os.path.join(self.workdir, "mnt", f"{self.counter:02d}-{name}")
        os.makedirs(mnt, exist_ok=True)
        return mnt, os.path.join(self.workdir, "logs", f"{self.counter:02d}-{name}.log")

    # mounts ---------------------------------------------------------------------------------

    def mount_vfs(
        self, manifest: str, store: str, cache: str, endpoint: str | None, name: str
    ) -> Mount:
        mnt, log_file = self._new_mountpoint(name)
        cmd = [self.python, "-m", "vfs", "mount", mnt, "--manifest", manifest, "--store", store]
        cmd += ["--cache-dir", cache, "--log-file", log_file]
        if endpoint:
            cmd += ["--endpoint-url", endpoint]
        cmd += EXTRA_VFS_ARGS
        m = Mount("vfs", mnt, log_file)
        self.mounts.append(m)  # registered first: cleaned up even if the command fails
        t0 = time.perf_counter()
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT, cwd=self.workdir
        )
        m.elapsed = time.perf_counter() - t0
        found = re.search(r"\(pid (\d+)", result.stdout)
        if found:
            m.pid = int(found.group(1))
        if result.returncode != 0 or m.pid is None:
            raise RuntimeError(
                f"vfs mount failed ({result.returncode}): {result.stdout}{result.stderr}"
            )
        return m

    def _mount_process(self, kind: str, name: str, argv: list[str], env: dict[str, str]) -> Mount:
        mnt, log_file = self._new_mountpoint(name)
        out = open(log_file, "wb")  # noqa: SIM115
        m = Mount(kind, mnt, log_file)
        self.mounts.append(m)
        t0 = time.perf_counter()
        m.proc = subprocess.Popen(
            [*argv[:1], *[mnt if a == "{MNT}" else a for a in argv[1:]]],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
        out.close()
        m.pid = m.proc.pid
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while mount_entry(mnt) is None:
            if m.proc.poll() is not None or time.monotonic() > deadline:
                with open(log_file, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"{kind} did not mount (status {m.proc.poll()}): {tail}")
            time.sleep(0.05)
        m.elapsed = time.perf_counter() - t0
        return m

    def mount_s3fs(self, server: Server, endpoint: str, name: str) -> Mount:
        argv = ["s3fs", f"{BUCKET}:/{PREFIX}", "{MNT}", "-f", "-o", f"passwd_file={self.passwd}"]
        argv += ["-o", f"url={endpoint}", "-o", "use_path_request_style", "-o", "ro"]
        return self._mount_process("s3fs", name, argv, dict(os.environ))

    def mount_rclone(self, server: Server, endpoint: str, name: str) -> Mount:
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        env.update(
            {
                "RCLONE_CONFIG_BENCH_TYPE": "s3",
                "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
                "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
                "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            }
        )
        argv = ["rclone", "mount", f"bench:{BUCKET}/{PREFIX}", "{MNT}", "--read-only"]
        argv += ["--use-server-modtime", "--config", self.rclone_conf]
        return self._mount_process("rclone", name, argv, env)

    def unmount(self, m: Mount) -> None:
        """Unmount ``m`` politely, then by force (fusectl abort, lazy unmount); stop its daemon."""
        vfs = m.kind == "vfs"
        cmd = vfs_unmount_command(m.path) if vfs else ["fusermount3", "-u", m.path]
        unmount_path(m.path, m.pid, cmd, timeout=60, exit_timeout=15)
        if m.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(5)
        if m in self.mounts:
            self.mounts.remove(m)

    # servers --------------------------------------------------------------------------------

    def start_moto(self) -> Server:
        server = start_moto(os.path.join(self.workdir, "logs", "moto.log"))
        self.servers.append(server)
        return server

    def start_s3rver(self) -> Server:
        exe = ensure_s3rver(self.tools_dir)
        port = free_port()
        data = os.path.join(self.workdir, "s3rver-data")
        os.makedirs(data, exist_ok=True)
        env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
        argv = [exe, "-d", data, "-a", "127.0.0.1", "-p", str(port), "-s"]
        log_file = os.path.join(self.workdir, "logs", "s3rver.log")
        server = start_server("s3rver", argv, port, log_file, env)
        server.data_dir = data
        self.servers.append(server)
        return server

    def stop_server(self, server: Server) -> None:
        stop_server(server)
        if server in self.servers:
            self.servers.remove(server)

    def relay(self, server: Server) -> CountingRelay:
        r = CountingRelay(server.port)
        self.relays.append(r)
        return r

    def cleanup(self) -> None:
        for m in reversed(list(self.mounts)):
            try:
                self.unmount(m)
            except Exception as e:  # keep cleaning up the rest
                log(f"cleanup of {m.path} failed: {e}")
        for r in self.relays:
            r.close()
        self.relays.clear()
        for s in list(self.servers):
            try:
                self.stop_server(s)
            except Exception as e:
                log(f"stopping {s.name} failed: {e}")


# -- tools ----------------------------------------------------------------------------------


def ensure_fuse_baselines(install: bool = True) -> dict[str, bool]:
    """s3fs and rclone, installed with apt-get when missing (and ``install``); which ones are
    usable. A missing one is said on stderr; its rows are left out (and noted)."""
    wanted = {"s3fs": "s3fs", "rclone": "rclone"}
    missing = [pkg for exe, pkg in wanted.items() if shutil.which(exe) is None]
    if missing and install:
        apt_install(missing)
    usable = {exe: shutil.which(exe) is not None for exe in wanted}
    for exe, ok in usable.items():
        if not ok:
            log(f"{exe} is not installed: no {exe} baseline (continuing without it)")
    return usable


def ensure_s3rver(tools_dir: str) -> str:
    """Path of the s3rver executable, installed with npm into ``tools_dir`` when missing."""
    exe = os.path.join(tools_dir, "node_modules", ".bin", "s3rver")
    if os.path.exists(exe):
        return exe
    if not shutil.which("npm") or not shutil.which("node"):
        apt_install(["nodejs", "npm"])
    os.makedirs(tools_dir, exist_ok=True)
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--prefix", tools_dir]
    cmd.append(f"s3rver@{S3RVER_VERSION}")
    log(f"installing s3rver: {' '.join(cmd)}")
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0 or not os.path.exists(exe):
        raise RuntimeError(f"npm install of s3rver failed: {(r.stdout + r.stderr)[-2000:]}")
    return exe


# -- S3 clients -----------------------------------------------------------------------------


def s3_client(endpoint: str, pool: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(
            max_pool_connections=pool,
            retries={"mode": "standard", "max_attempts": 5},
            request_checksum_calculation="when_required",
        ),
    )


def upload(server: Server, ds: Dataset, rels: list[str]) -> None:
    """Put the objects of ``rels`` into the bucket (created if needed) and check their sizes."""
    from boto3.s3.transfer import TransferConfig

    client = s3_client(server.endpoint, pool=16)
    for _ in range(50):
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except client.exceptions.BucketAlreadyOwnedByYou:
            break
        except Exception:
            time.sleep(0.2)
    config = TransferConfig(
        multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=4
    )
    total = sum(ds.files[r].size for r in rels)
    log(f"{server.name}: uploading {len(rels)} objects, {human(total)}")
    t0 = time.perf_counter()

    def put(rel: str) -> None:
        spec = ds.files[rel]
        client.upload_file(spec.local, BUCKET, ds.key(rel), Config=config)
        got = client.head_object(Bucket=BUCKET, Key=ds.key(rel))["ContentLength"]
        if got != spec.size:
            raise RuntimeError(f"{server.name}: {ds.key(rel)} has {got} bytes, not {spec.size}")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, rels))
    log(f"{server.name}: uploaded in {time.perf_counter() - t0:.1f} s")


def warm_server(server: Server) -> None:
    """Bring the server's stored objects into the page cache (s3rver keeps them in files).

    Called before every measurement that reads from the server, so that no client pays for
    disk reads another did not (``drop_caches`` in the cache-hit case evicts them).
    """
    os.sync()  # and no client pays for writing back another's dirty pages
    if not server.data_dir:
        return
    buf = bytearray(8 * MiB)
    for dirpath, _, names in os.walk(server.data_dir):
        for n in names:
            with open(os.path.join(dirpath, n), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


class NullSink:
    """A seekable file object that discards what boto3 writes into it."""

    def __init__(self) -> None:
        self.pos = 0
        self.written = 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data: bytes) -> int:
        self.pos += len(data)
        self.written += len(data)
        return len(data)


def boto3_stream(client: Any, key: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    got = sum(len(chunk) for chunk in body.iter_chunks(READ_BUFFER))
    return time.perf_counter() - t0, got


def boto3_transfer(client: Any, key: str, threads: int, part: int) -> tuple[float, int]:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=part, multipart_chunksize=part, max_concurrency=threads
    )
    sink = NullSink()
    t0 = time.perf_counter()
    client.download_fileobj(BUCKET, key, sink, Config=config)
    return time.perf_counter() - t0, sink.written


# -- the cases ------------------------------------------------------------------------------


@dataclass
class Ctx:
    bench: Bench
    results: Results
    ds: Dataset
    sizes: Sizes
    cases: set[str]
    budget: float
    job_readers: int
    fuse_tools: dict[str, bool]
    first_server: bool = True

    def cache_dir(self, name: str) -> str:
        d = os.path.join(self.bench.workdir, "cache", name)
        shutil.rmtree(d, ignore_errors=True)
        return d

    @property
    def store(self) -> str:
        return f"s3://{BUCKET}/{PREFIX}"


def read_row_note(r: ReadResult) -> str:
    note = f"1st byte {r.first:.3f} s"
    if not r.complete:
        note += f"; STOPPED after {r.seconds:.0f} s ({human(r.nbytes)} read)"
    return note


def case_cold_warm_hit(ctx: Ctx, server: Server, ranged_ok: bool) -> None:
    """Cold read of BIG vs boto3/s3fs/rclone; then (first server) warm and cache-hit reads."""
    ds, res, bench = ctx.ds, ctx.results, ctx.bench
    big = ds.files[ds.big]
    key = ds.key(ds.big)
    lbl = human(big.size)
    name = server.name
    client = s3_client(server.endpoint, pool=32)
    log(f"{name}: warming the server with one untimed GET of {lbl}")
    warm_server(server)
    boto3_stream(client, key)

    baselines: dict[str, float] = {}
    if "cold" in ctx.cases:
        log(f"{name}: boto3 baselines")
        runs = [boto3_stream(client, key) for _ in range(2)]
        assert all(got == big.size for _, got in runs), runs
        baselines["boto3 get_object stream"] = mbps(big.size, min(t for t, _ in runs))
        if ranged_ok:
            for threads, part in ((8, 8 * MiB), (16, 16 * MiB)):
                runs = [boto3_transfer(client, key, threads, part) for _ in range(2)]
                assert all(got == big.size for _, got in runs), runs
                what = f"boto3 TransferConfig {threads} thr x {part // MiB} MiB"
                baselines[what] = mbps(big.size, min(t for t, _ in runs))

    # vfs: cold, then warm re-reads on the same mount.
    cache = ctx.cache_dir(f"{name}-big")
    log(f"{name}: vfs cold read of {lbl}")
    m = bench.mount_vfs(ds.all_manifest, ctx.store, cache, server.endpoint, f"{name}-cold")
    target = os.path.join(m.path, ds.big)
    os.stat(target)
    s0 = vfs_stats(m.path)
    cold = timed_read(target, ctx.budget)
    s1 = vfs_stats(m.path)
    cold_mbps = mbps(cold.nbytes, cold.seconds)
    res.info[f"{name}.cold"] = {
        "vfs": asdict(cold),
        "baselines_MBps": baselines,
        "stats_delta": {k: s1.get(k, 0) - s0.get(k, 0) for k in s1},
    }
    if "cold" in ctx.cases:
        fetched = delta(s1, s0, "fetch.bytes")
        note = read_row_note(cold) + f"; fetched {human(fetched)}"
        for what, value in baselines.items() if len(baselines) > 1 else ():
            res.add(
                Row(
                    name,
                    "cold",
                    f"vfs {lbl} cold read",
                    cold_mbps,
                    "MB/s",
                    what,
                    value,
                    ratio(cold_mbps, value),
                    note=note,
                )
            )
        if baselines:
            best_what = max(baselines, key=lambda k: baselines[k])
            best = baselines[best_what]
            res.add(
                Row(
                    name,
                    "cold",
                    f"vfs {lbl} cold read",
                    cold_mbps,
                    "MB/s",
                    f"best boto3 ({best_what.removeprefix('boto3 ')})",
                    best,
                    ratio(cold_mbps, best),
                    f">= {TARGET_COLD:.2f}x",
                    note,
                )
            )

    warm_ok = ctx.first_server and cold.complete
    if warm_ok and "warm" in ctx.cases:
        log(f"{name}: vfs warm re-reads of {lbl}, native page-cache reads")
        warm = [timed_read(target) for _ in range(3)]
        s2 = vfs_stats(m.path)
        timed_read(big.local)
        native = [timed_read(big.local) for _ in range(3)]
        warm_mbps = mbps(big.size, min(r.seconds for r in warm))
        native_mbps = mbps(big.size, min(r.seconds for r in native))
        first_mbps = mbps(big.size, warm[0].seconds)
        reads = delta(s2, s1, "req.read")
        res.add(
            Row(
                "-",
                "warm",
                f"vfs {lbl} re-read (best of 3)",
                warm_mbps,
                "MB/s",
                "native page-cache read",
                native_mbps,
                ratio(warm_mbps, native_mbps),
                f">= {TARGET_WARM:.2f}x",
                f"1st re-read {first_mbps:,.0f} MB/s",
            )
        )
        res.add(
            Row(
                "-",
                "warm",
                "daemon req.read during 3 re-reads",
                reads,
                "",
                target="0",
                note=f"{delta(s2, s1, 'read.bytes') / MiB:,.0f} MiB served by the daemon",
            )
        )
        res.info["warm"] = {
            "vfs_s": [r.seconds for r in warm],
            "native_s": [r.seconds for r in native],
        }
    if warm_ok:
        verified = xxh128_file(target) == big.digest
        res.info["big_content_verified"] = verified
        if not verified:
            res.notes.append(f"CONTENT MISMATCH: {ds.big} read through vfs has a wrong xxh128")
    bench.unmount(m)

    if warm_ok and "cache-hit" in ctx.cases:
        log(f"{name}: vfs cache-hit reads from new mounts")
        # Block files are written past the page cache (O_DIRECT): read them once so that this
        # row measures what its name says (the cache files in the page cache).
        warm_files(cache)
        m = bench.mount_vfs(ds.all_manifest, ctx.store, cache, server.endpoint, f"{name}-hit")
        target = os.path.join(m.path, ds.big)
        os.stat(target)
        s0 = vfs_stats(m.path)
        hit = timed_read(target, ctx.budget)
        s1 = vfs_stats(m.path)
        bench.unmount(m)
        native_mbps = mbps(big.size, min(timed_read(big.local).seconds for _ in range(2)))
        hit_mbps = mbps(hit.nbytes, hit.seconds)
        fetched = delta(s1, s0, "fetch.objects")
        res.add(
            Row(
                "-",
                "cache-hit",
                f"vfs {lbl}, new mount, cache file in page cache",
                hit_mbps,
                "MB/s",
                "native page-cache read",
                native_mbps,
                ratio(hit_mbps, native_mbps),
                f">= {TARGET_HIT_MBPS:,.0f} MB/s",
                f"{fetched} objects fetched",
            )
        )
        if drop_caches():
            native_disk = timed_read(big.local)
            m = bench.mount_vfs(ds.all_manifest, ctx.store, cache, server.endpoint, f"{name}-hit2")
            target = os.path.join(m.path, ds.big)
            os.stat(target)
            drop_caches()
            s0 = vfs_stats(m.path)
            hit = timed_read(target, ctx.budget)
            s1 = vfs_stats(m.path)
            bench.unmount(m)
            hit_mbps = mbps(hit.nbytes, hit.seconds)
            disk_mbps = mbps(native_disk.nbytes, native_disk.seconds)
            res.add(
                Row(
                    "-",
                    "cache-hit",
                    f"vfs {lbl}, new mount, after drop_caches",
                    hit_mbps,
                    "MB/s",
                    "native read after drop_caches",
                    disk_mbps,
                    ratio(hit_mbps, disk_mbps),
                    f">= {TARGET_HIT_DISK:.2f}x",
                    f"{delta(s1, s0, 'fetch.objects')} objects fetched",
                )
            )
        else:
            res.notes.append("drop_caches not permitted: no cache-hit-from-disk row")
    shutil.rmtree(cache, ignore_errors=True)

    if "cold" in ctx.cases and ranged_ok:
        for tool in ("s3fs", "rclone"):
            if not ctx.fuse_tools.get(tool):
                res.notes.append(f"{tool} not available: no {tool} baseline")
                continue
            log(f"{name}: {tool} cold read of {lbl}")
            warm_server(server)
            mount = bench.mount_s3fs if tool == "s3fs" else bench.mount_rclone
            m = mount(server, server.endpoint, f"{name}-{tool}-cold")
            path = os.path.join(m.path, "Data", f"{big.digest}.xxh128")
            os.stat(path)
            r = timed_read(path, ctx.budget)
            bench.unmount(m)
            tool_mbps = mbps(r.nbytes, r.seconds)
            res.add(
                Row(
                    name,
                    "cold",
                    f"vfs {lbl} cold read",
                    cold_mbps,
                    "MB/s",
                    f"{tool} cold read",
                    tool_mbps,
                    ratio(cold_mbps, tool_mbps),
                    ">= 1.00x",
                    read_row_note(r).replace("1st byte", f"{tool} 1st byte"),
                )
            )


def warm_files(root: str) -> None:
    """Read every file under ``root`` once (into the page cache)."""
    for dirpath, _, names in os.walk(root):
        for n in names:
            with contextlib.suppress(OSError):
                timed_read(os.path.join(dirpath, n))


def case_ttfb(ctx: Ctx, server: Server, ranged_ok: bool) -> None:
    ds, res, bench = ctx.ds, ctx.results, ctx.bench
    name = server.name
    size = human(ctx.sizes.small_size)
    warm_server(server)
    client = s3_client(server.endpoint)
    client.head_bucket(Bucket=BUCKET)
    cache = ctx.cache_dir(f"{name}-ttfb")
    m = bench.mount_vfs(ds.all_manifest, ctx.store, cache, server.endpoint, f"{name}-ttfb")
    paths = [os.path.join(m.path, rel) for rel in ds.small]
    for p in paths:
        os.stat(p)
    # Interleaved, object by object: a drift of the machine's speed during the case moves
    # both sides alike (run apart, the ratio ranged 1.32-1.96x within one hour).
    boto: list[float] = []
    vfs_t: list[float] = []
    for rel, p in zip(ds.small, paths, strict=True):
        t0 = time.perf_counter()
        body = client.get_object(Bucket=BUCKET, Key=ds.key(rel))["Body"]
        first = body.read(TTFB_BYTES)
        boto.append(time.perf_counter() - t0)
        body.read()
        assert first
        vfs_t.append(read_first(p))
    base = statistics.median(boto)
    bench.unmount(m)
    shutil.rmtree(cache, ignore_errors=True)
    med = statistics.median(vfs_t)
    n = len(paths)
    res.add(
        Row(
            name,
            "ttfb",
            f"vfs {size} uncached: open->1st 4 KiB (median of {n})",
            med,
            "s",
            "boto3 get_object->1st 4 KiB",
            base,
            ratio(med, base),
            "",
            f"vfs max {max(vfs_t) * 1000:.1f} ms",
        )
    )
    res.info[f"{name}.ttfb"] = {"vfs_s": vfs_t, "boto3_s": boto}
    if not ranged_ok:
        return
    for tool in ("s3fs", "rclone"):
        if not ctx.fuse_tools.get(tool):
            continue
        mount = bench.mount_s3fs if tool == "s3fs" else bench.mount_rclone
        m = mount(server, server.endpoint, f"{name}-{tool}-ttfb")
        paths = [os.path.join(m.path, "Data", f"{ds.files[r].digest}.xxh128") for r in ds.small]
        for p in paths:
            os.stat(p)
        times = [read_first(p) for p in paths]
        bench.unmount(m)
        tool_med = statistics.median(times)
        res.add(
            Row(
                name,
                "ttfb",
                f"vfs {size} uncached: open->1st 4 KiB (median of {n})",
                med,
                "s",
                f"{tool} open->1st 4 KiB",
                tool_med,
                ratio(med, tool_med),
            )
        )
        res.info[f"{name}.ttfb.{tool}_s"] = times


def concurrent_read(paths: list[str], budget: float) -> tuple[float, int]:
    """All ``paths`` (one per thread) read at once after a barrier; (seconds, bytes)."""
    barrier = threading.Barrier(len(paths) + 1)

    def reader(p: str) -> int:
        barrier.wait()
        return timed_read(p, budget).nbytes

    pool = concurrent.futures.ThreadPoolExecutor(len(paths))
    try:
        futures = [pool.submit(reader, p) for p in paths]
        barrier.wait()
        t0 = time.perf_counter()
        total = sum(f.result() for f in futures)
        return time.perf_counter() - t0, total
    finally:
        barrier.abort()
        pool.shutdown(wait=False, cancel_futures=True)


def get_counts(relay: CountingRelay, digest: str, size: int) -> tuple[int, int, int]:
    """(GETs of the object, distinct ranges asked, bytes asked) seen by ``relay``."""
    ranges = [
        rng
        for method, path, rng in relay.snapshot()
        if method == "GET" and path.endswith(f"/{digest}.xxh128")
    ]
    asked = sum(range_length(rng, size) for rng in ranges)
    return len(ranges), len(set(ranges)), asked


def case_coalesce(ctx: Ctx, server: Server, ranged_ok: bool) -> None:
    ds, res, bench = ctx.ds, ctx.results, ctx.bench
    name = server.name
    spec = ds.files[ds.conc]
    n = ctx.sizes.readers
    relay = bench.relay(server)
    subjects = ["vfs"] + [t for t in ("s3fs", "rclone") if ranged_ok and ctx.fuse_tools.get(t)]
    for subject in subjects:
        log(f"{name}: {n} concurrent readers of one uncached {human(spec.size)} file via {subject}")
        warm_server(server)
        if subject == "vfs":
            cache = ctx.cache_dir(f"{name}-coalesce")
            m = bench.mount_vfs(ds.all_manifest, ctx.store, cache, relay.url, f"{name}-coalesce")
            path = os.path.join(m.path, ds.conc)
        else:
            mount = bench.mount_s3fs if subject == "s3fs" else bench.mount_rclone
            m = mount(server, relay.url, f"{name}-{subject}-coalesce")
            path = os.path.join(m.path, "Data", f"{spec.digest}.xxh128")
        os.stat(path)
        relay.reset()
        seconds, total = concurrent_read([path] * n, ctx.budget)
        gets, distinct, asked = get_counts(relay, spec.digest, spec.size)
        bench.unmount(m)
        if subject == "vfs":
            shutil.rmtree(cache, ignore_errors=True)
        per_block = gets / distinct if distinct else None
        note = (
            f"{gets} GETs, {distinct} distinct ranges covering {asked / spec.size:.2f}x the "
            f"file; {n} x {human(spec.size)} read in {seconds:.2f} s"
        )
        if total != n * spec.size:
            note += f"; only {human(total)} read"
        res.add(
            Row(
                name,
                "coalesce",
                f"{subject}: GETs per distinct object/range",
                per_block,
                "x",
                target="1.00" if subject == "vfs" else "",
                note=note,
            )
        )
        res.info[f"{name}.coalesce.{subject}"] = {
            "requests": relay.snapshot()[:500],
            "gets": gets,
            "distinct": distinct,
            "asked_bytes": asked,
            "seconds": seconds,
            "bytes": total,
        }


DEADLINE_DOWNLOAD = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
from deadline.job_attachments.asset_manifests.decode import decode_manifest
from deadline.job_attachments.download import download_files_from_manifests
with open(cfg["manifest"], encoding="utf-8") as f:
    manifest = decode_manifest(f.read())
t0 = time.perf_counter()
summary = download_files_from_manifests(
    s3_bucket=cfg["bucket"], manifests_by_root={cfg["dest"]: manifest}, cas_prefix=cfg["cas"]
)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "files": summary.processed_files,
                  "bytes": summary.processed_bytes}))
"""


def deadline_download(ctx: Ctx, server: Server, dest: str) -> float:
    """deadline's download of the input manifest into ``dest``; seconds inside the call."""
    home = os.path.join(ctx.bench.workdir, "deadline-home")
    os.makedirs(home, exist_ok=True)
    cfg = {"manifest": ctx.ds.input_manifest, "bucket": BUCKET, "dest": dest}
    cfg["cas"] = f"{PREFIX}/Data"
    env = {**os.environ, "HOME": home, "AWS_ENDPOINT_URL": server.endpoint}
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    r = subprocess.run(
        [sys.executable, "-c", DEADLINE_DOWNLOAD, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        check=False,
        cwd=ctx.bench.workdir,
    )
    if r.returncode != 0:
        raise RuntimeError(f"deadline download failed ({r.returncode}): {r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    want = sum(ctx.ds.files[rel].size for rel in ctx.ds.inputs)
    if out["bytes"] != want:
        raise RuntimeError(f"deadline downloaded {out['bytes']} bytes, not {want}")
    return float(out["seconds"])


def job_plans(ctx: Ctx) -> dict[str, list[tuple[str, int | None]]]:
    """The 10 % job (headers of large files, whole small files) and the read-everything job."""
    ds, sizes = ctx.ds, ctx.sizes
    large = [r.removeprefix("input/") for r in ds.inputs if "/large/" in r]
    small = [r.removeprefix("input/") for r in ds.inputs if "/small/" in r]
    total = sum(ds.files[r].size for r in ds.inputs)
    budget = total // 10 - len(large) * HEADER_BYTES
    k = max(1, min(len(small), round(budget / sizes.in_small_size)))
    step = len(small) / k
    chosen = [small[int(i * step)] for i in range(k)]
    part: list[tuple[str, int | None]] = [(r, HEADER_BYTES) for r in large]
    part += [(r, None) for r in chosen]
    everything: list[tuple[str, int | None]] = [(r.removeprefix("input/"), None) for r in ds.inputs]
    return {"10%": part, "100%": everything}


def case_virtual(ctx: Ctx, server: Server, repeat: int = 2) -> None:
    """Virtual (vfs mount, then the job's reads) vs copied (deadline download, then reads).

    deadline always downloads the whole input set: it is timed ``repeat`` times, the best
    counts, and each job then reads the last copy. Each vfs run starts with an empty cache;
    the best of ``repeat`` counts.
    """
    ds, res, bench = ctx.ds, ctx.results, ctx.bench
    name = server.name
    total = sum(ds.files[r].size for r in ds.inputs)
    readers = ctx.job_readers
    dest = os.path.join(bench.workdir, "deadline-dest")
    downloads = []
    for i in range(repeat):
        log(f"{name}: deadline download_files_from_manifests of {human(total)} ({i + 1}/{repeat})")
        shutil.rmtree(dest, ignore_errors=True)
        warm_server(server)
        downloads.append(deadline_download(ctx, server, dest))
    download_s = min(downloads)
    try:
        for job, plan in job_plans(ctx).items():
            want = sum(ds.files["input/" + rel].size if n is None else n for rel, n in plan)
            desc = f"job reads {job} ({human(want)} of {human(total)}, {len(plan)} files)"
            t0 = time.perf_counter()
            got = run_job(dest, plan, readers)
            local_read_s = time.perf_counter() - t0
            assert got == want, (got, want)
            copied_s = download_s + local_read_s

            runs: list[tuple[float, float, float, dict[str, int]]] = []
            for i in range(repeat):
                log(f"{name}: {desc}: vfs mount + reads ({i + 1}/{repeat})")
                cache = ctx.cache_dir(f"{name}-job")
                warm_server(server)
                t0 = time.perf_counter()
                m = bench.mount_vfs(
                    ds.input_manifest, ctx.store, cache, server.endpoint, f"{name}-job"
                )
                t_mounted = time.perf_counter()
                got = run_job(m.path, plan, readers)
                t_end = time.perf_counter()
                s = vfs_stats(m.path)
                bench.unmount(m)
                shutil.rmtree(cache, ignore_errors=True)
                assert got == want, (got, want)
                runs.append((t_end - t0, t_end - t_mounted, t_mounted - t0, s))
            virtual_s, reads_s, mount_s, s = min(runs, key=lambda r: r[0])
            target = TARGET_VIRTUAL_10 if job == "10%" else TARGET_VIRTUAL_ALL
            note = (
                f"vfs mount {mount_s:.2f} s + reads {reads_s:.2f} s "
                f"({ratio(reads_s, copied_s) or 0:.2f}x), "
                f"fetched {human(s.get('fetch.bytes', 0))}; "
                f"deadline download {download_s:.2f} s + reads {local_read_s:.2f} s; "
                f"{readers} reader(s), best of {repeat}"
            )
            res.add(
                Row(
                    name,
                    "virtual",
                    f"vfs: {desc}",
                    virtual_s,
                    "s",
                    "deadline download + local reads",
                    copied_s,
                    ratio(virtual_s, copied_s),
                    f"<= {target:.2f}x",
                    note,
                )
            )
            res.info[f"{name}.virtual.{job}"] = {
                "vfs_runs": [
                    {"total_s": r[0], "reads_s": r[1], "mount_s": r[2], "stats": r[3]} for r in runs
                ],
                "deadline_download_s": downloads,
                "local_read_s": local_read_s,
                "bytes_read": want,
                "files": len(plan),
            }
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def case_metadata(ctx: Ctx) -> None:
    ds, res, bench = ctx.ds, ctx.results, ctx.bench
    n = label(ctx.sizes.tree)

    def find(path: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(["find", path, "-printf", "%s\n"], stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - t0

    log(f"metadata: find/stat passes over the {n}-entry tree")
    find(ds.tree_local)
    local2 = min(find(ds.tree_local) for _ in range(2))
    store_dir = os.path.join(bench.workdir, "empty-store")
    os.makedirs(store_dir, exist_ok=True)
    cache = ctx.cache_dir("tree")
    m = bench.mount_vfs(ds.tree_manifest, f"file://{store_dir}", cache, None, "tree")
    s0 = vfs_stats(m.path)
    first = find(m.path)
    s1 = vfs_stats(m.path)
    second = find(m.path)
    s2 = vfs_stats(m.path)
    bench.unmount(m)
    shutil.rmtree(cache, ignore_errors=True)
    req1, req2 = request_delta(s1, s0), request_delta(s2, s1)
    kinds2 = ", ".join(
        f"{k.removeprefix('req.')} {s2.get(k, 0) - s1.get(k, 0):,}"
        for k in sorted(s2)
        if k.startswith("req.") and k != "req.getxattr" and s2.get(k, 0) != s1.get(k, 0)
    )
    entries = ctx.sizes.tree
    res.add(
        Row(
            "-",
            "metadata",
            f"{n} entries: 2nd find -printf %s pass",
            second,
            "s",
            "local tree, 2nd pass",
            local2,
            ratio(second, local2),
        )
    )
    res.add(
        Row(
            "-",
            "metadata",
            f"{n} entries: daemon requests in the 2nd pass",
            req2,
            "",
            target="0",
            note=f"{kinds2 or 'none'}; 1st pass: {req1:,} requests in {first:.2f} s",
        )
    )
    res.add(
        Row(
            "-",
            "metadata",
            f"{n} entries: 1st pass, entries/s",
            entries / first,
            "/s",
            target=f">= {TARGET_LOOKUPS:,.0f}/s",
        )
    )
    res.info["metadata"] = {
        "first_s": first,
        "second_s": second,
        "local_second_s": local2,
        "first_delta": {k: s1.get(k, 0) - s0.get(k, 0) for k in s1},
        "second_delta": {k: s2.get(k, 0) - s1.get(k, 0) for k in s2},
    }


def run_server(ctx: Ctx, server_name: str) -> None:
    bench, ds = ctx.bench, ctx.ds
    ranged_ok = server_name == "s3rver"
    server = bench.start_moto() if server_name == "moto" else bench.start_s3rver()
    log(f"{server_name} at {server.endpoint}")
    rels = [r for r in (ds.big, ds.conc) if r] + ds.small
    if ranged_ok:
        rels += ds.inputs
    upload(server, ds, rels)
    if not ranged_ok:
        ctx.results.notes.append(
            f"{server_name} copies the whole object for every ranged GET: a vfs that fetches "
            "ranges is penalised there; s3rver is the reference for ranged reads"
        )
    steps: list[tuple[str, Callable[[], None]]] = []
    if ctx.cases & {"cold", "warm", "cache-hit"}:
        steps.append(("cold", lambda: case_cold_warm_hit(ctx, server, ranged_ok)))
    if "ttfb" in ctx.cases:
        steps.append(("ttfb", lambda: case_ttfb(ctx, server, ranged_ok)))
    if "coalesce" in ctx.cases:
        steps.append(("coalesce", lambda: case_coalesce(ctx, server, ranged_ok)))
    if "virtual" in ctx.cases and ranged_ok:
        steps.append(("virtual", lambda: case_virtual(ctx, server)))
    try:
        for step, fn in steps:
            try:
                fn()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                log(f"{server_name}: case {step} failed: {type(e).__name__}: {e}")
                ctx.results.notes.append(
                    f"{server_name}: case {step} FAILED: {type(e).__name__}: {e}"
                )
                for m in list(bench.mounts):
                    bench.unmount(m)
    finally:
        bench.stop_server(server)
    ctx.first_server = False


# -- main -----------------------------------------------------------------------------------


def sample_load(results: Results, when: str) -> None:
    """Record how busy the machine is with other work (it skews every ratio)."""
    busy = cpu_busy()
    results.info.setdefault("cpu_busy_other", []).append((when, busy))
    log(f"CPU busy with other work ({when}): {'n/a' if busy is None else f'{busy:.0%}'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (about 1 minute)")
    p.add_argument("--server", choices=("moto", "s3rver", "both"), default="both")
    p.add_argument("--json", action="store_true", help="results as JSON on stdout (table: stderr)")
    p.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    p.add_argument("--job-readers", type=int, default=1, help="threads of the job's reads")
    p.add_argument(
        "--read-budget",
        type=float,
        default=120.0,
        help="stop a single read after this many seconds and report it as partial",
    )
    p.add_argument(
        "--tools-dir",
        default=os.path.expanduser("~/.cache/vfs-bench"),
        help="where s3rver is installed with npm (default ~/.cache/vfs-bench)",
    )
    p.add_argument("--workdir", default=None, help="work directory (default: new, under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--vfs-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument of every `vfs mount`, repeatable (e.g. --vfs-arg=--prefetch "
        "--vfs-arg=dirs)",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing s3fs/rclone (their baselines are left out)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    EXTRA_VFS_ARGS[:] = args.vfs_arg
    sizes = QUICK if args.quick else FULL
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = cases - set(CASES)
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
    servers = ["s3rver", "moto"] if args.server == "both" else [args.server]

    if args.workdir:
        workdir = os.path.abspath(args.workdir)
        os.makedirs(workdir, exist_ok=True)
        remove = False
    else:
        workdir = tempfile.mkdtemp(prefix="vfs-bench-read-", dir="/tmp")
        remove = not args.keep
    for sub in ("mnt", "logs", "cache"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    isolate_aws(workdir, ACCESS_KEY, SECRET_KEY)

    results = Results()
    results.info.update(
        {"workdir": workdir, "sizes": asdict(sizes), "servers": servers, "cases": sorted(cases)}
    )
    bench = Bench(workdir, args.tools_dir)
    results.notes.extend(settle_memory())
    sample_load(results, "start")
    started = time.perf_counter()
    status = 0
    try:
        with signals_as_interrupt():
            try:
                fuse_tools = ensure_fuse_baselines(install=not args.no_install)
                ds = make_dataset(workdir, sizes, cases)
                ctx = Ctx(
                    bench, results, ds, sizes, cases, args.read_budget, args.job_readers, fuse_tools
                )
                if "metadata" in cases:
                    case_metadata(ctx)
                for name in servers:
                    run_server(ctx, name)
            finally:
                bench.cleanup()
    except KeyboardInterrupt:
        log("interrupted; everything was unmounted and stopped")
        status = 130
    except Exception as e:
        log(f"benchmark failed: {type(e).__name__}: {e}")
        results.notes.append(f"FAILED: {type(e).__name__}: {e}")
        status = 1
    finally:
        with signals_as_interrupt():
            leftover = [m.path for m in bench.mounts if mount_entry(m.path) is not None]
            if leftover:
                log(f"still mounted: {leftover}")
            if remove:
                shutil.rmtree(workdir, ignore_errors=True)
    if any("FAILED" in n for n in results.notes) and status == 0:
        status = 1
    results.info["total_s"] = time.perf_counter() - started
    sample_load(results, "end")
    busy = [v for _, v in results.info.get("cpu_busy_other", []) if v is not None]
    if busy:
        results.notes.append(
            f"CPUs busy with other work: {busy[0]:.0%} before, {busy[-1]:.0%} after the run"
            + ("; OTHER PROCESSES WERE BUSY: ratios are noisy" if max(busy) > 0.2 else "")
        )
    table = render_table(results)
    if args.json:
        print(table, file=sys.stderr)
        doc = {"rows": [asdict(r) for r in results.rows], "info": results.info}
        doc["notes"] = results.notes
        print(json.dumps(doc, indent=2))
    else:
        print(table)
    log(f"total {results.info['total_s']:.0f} s (workdir {workdir}{' removed' if remove else ''})")
    return status


if __name__ == "__main__":
    sys.exit(main())
