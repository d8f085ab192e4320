#!/usr/bin/env python3
"""Write benchmark of writable ``vfs mount`` and ``vfs commit`` (issue 9): every figure next to
a baseline measured in the same run.

Run ``scripts/bench_write.py [--quick] [--json] [size flags]``; it re-executes itself with the
project's virtualenv python (``$VFS_VENV`` or ``.venv``) when started with another
interpreter, and benchmarks whatever ``python -m vfs`` imports in the work directory.

Everything runs on 127.0.0.1 (a moto S3 server started here, fake credentials, empty AWS
config files). Cases (sizes are the defaults; ``--quick`` and the flags shrink them):

* seq: one 1 GiB file written with 1 MiB writes into the overlay, against the same on the
  native disk that holds the overlay (target ≥ 0.70×).
* random: 20,000 4 KiB writes at random aligned offsets of a 64 MiB file (report).
* small: creating 10,000 files of 1 KiB in one directory (report).
* first-write: the first 4 KiB write into the middle of an uncached 1 GiB base file: its
  time (target < 1 s) and the GETs of block data it caused, counted by a relay (target ≤ 2).
* commit: ``vfs commit`` (the CLI, process start included) of 1,000 new 64 KiB files, and of
  one new 1 GiB file, against deadline's ``_manifest_snapshot(diff=…)`` of the mount (the
  worker's output scan, ``include`` the output dir) + ``S3AssetUploader.upload_assets``
  (timed inside its process, imports excluded), each to its own prefix of the same server
  (target ≥ 2×).
* write-behind: a mount with ``--upload-on-close``; 24 files of 8 MiB are written evenly over
  3 s; the commit right after the last close is timed against uploading the files closed in
  the last second (boto3 ``upload_file``, 8 threads) (target ≤ 1.2×).

The machine's CPU use by others is sampled first and printed: every ratio is only as good as
the quiet of the machine. Every mount is unmounted and the server stopped on any exit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    from venv_reexec import reexec_in_venv

    reexec_in_venv(__file__)


import argparse
import json
import random
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3

from vfs.hashing import hash_file
from vfs.manifest import Manifest, ManifestPath, encode_manifest
from vfs.storage import data_key
from vfs.testing.bench import (
    GiB,
    KiB,
    MiB,
    S3Relay,
    cpu_busy,
    delta,
    fmt_value,
    human,
    isolate_aws,
    label,
    log,
    mbps,
    ratio,
    render_table,
    settle_memory,
    signals_as_interrupt,
    start_moto,
    stop_server,
    vfs_stats,
)
from vfs.testing.mounts import Mounted, MountSet, run_vfs

BUCKET = "vfs-bench-write"
BASE_PREFIX = "base"
IDS = [
    "--farm-id",
    "farm-" + "1" * 32,
    "--queue-id",
    "queue-" + "2" * 32,
    "--job-id",
    "job-" + "3" * 32,
    "--step-id",
    "step-" + "4" * 32,
    "--task-id",
    "task-" + "5" * 32 + "-0",
    "--session-action-id",
    "sessionaction-" + "6" * 32 + "-1",
]
WRITE = MiB  # bytes per write() of the sequential case

TARGET_SEQ = 0.70
TARGET_FIRST_GETS = 2
TARGET_FIRST_S = 1.0
TARGET_COMMIT = 2.0
TARGET_WB = 1.2

DEADLINE_BASELINE = r"""
import json, sys, time
from pathlib import Path
spec = json.loads(sys.argv[1])
from deadline.job_attachments.api.manifest import _manifest_snapshot
from deadline.job_attachments.asset_manifests.decode import decode_manifest
from deadline.job_attachments.models import JobAttachmentS3Settings
from deadline.job_attachments.upload import S3AssetUploader
t0 = time.perf_counter()
snap = _manifest_snapshot(root=spec["root"], destination=spec["dest"], name="output",
                          diff=spec["base"], include=[spec["include"]],
                          hash_cache_dir=spec["hash_cache"])
t1 = time.perf_counter()
with open(snap.manifest) as f:
    manifest = decode_manifest(f.read())
uploader = S3AssetUploader(s3_max_pool_connections=50, small_file_threshold_multiplier=20)
settings = JobAttachmentS3Settings(s3BucketName=spec["bucket"], rootPrefix=spec["prefix"])
key, _ = uploader.upload_assets(
    job_attachment_settings=settings, manifest=manifest, partial_manifest_prefix="bench/out",
    manifest_file_name="bench_output", source_root=Path(spec["root"]),
    asset_root=Path(spec["root"]), s3_check_cache_dir=None)
t2 = time.perf_counter()
print(json.dumps({"snapshot_s": t1 - t0, "upload_s": t2 - t1, "files": len(manifest.paths),
                  "key": key}))
"""


@dataclass(frozen=True)
class Sizes:
    seq: int = GiB
    random_writes: int = 20_000
    random_file: int = 64 * MiB
    small_files: int = 10_000
    small_size: int = KiB
    base: int = GiB
    commit_files: int = 1000
    commit_file_size: int = 64 * KiB
    commit_big: int = GiB
    wb_files: int = 24
    wb_file_size: int = 8 * MiB
    wb_seconds: float = 3.0


QUICK = Sizes(
    seq=256 * MiB,
    random_writes=5000,
    random_file=16 * MiB,
    small_files=2000,
    base=256 * MiB,
    commit_files=300,
    commit_big=256 * MiB,
    wb_files=12,
    wb_file_size=4 * MiB,
    wb_seconds=3.0,
)


@dataclass
class Row:
    case: str
    vfs: float | None
    base: float | None
    unit: str
    rel: float | None
    target: str
    ok: bool | None
    detail: str = ""


@dataclass
class Bench:
    workdir: str
    sizes: Sizes
    endpoint: str = ""
    relay: S3Relay | None = None
    manifest: str = ""
    mounts: MountSet | None = None
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> str:
        """A file path under the work directory (its directory made)."""
        p = os.path.join(self.workdir, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def dir(self, *parts: str) -> str:
        """A directory under the work directory (made)."""
        p = os.path.join(self.workdir, *parts)
        os.makedirs(p, exist_ok=True)
        return p

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def mount(self, name: str, *extra: str, endpoint: str | None = None) -> Mounted:
        assert self.mounts is not None
        return self.mounts.mount(
            Path(self.dir("mnt", name)),
            [self.manifest],
            f"s3://{BUCKET}/{BASE_PREFIX}",
            "--writable",
            "--overlay-dir",
            os.path.join(self.workdir, "overlays", name),
            "--endpoint-url",
            endpoint or self.endpoint,
            *extra,
            cache_dir=Path(self.dir("cache", name)),
        )

    def add(self, row: Row) -> None:
        self.rows.append(row)
        log(
            f"{row.case}: vfs {fmt_value(row.vfs, row.unit)}, baseline "
            f"{fmt_value(row.base, row.unit)} {row.detail}"
        )


def write_file(path: str, size: int, block: bytes) -> float:
    """Write ``size`` bytes to ``path`` with ``len(block)``-byte writes; seconds to close."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, block[: min(left, len(block))])
    finally:
        os.close(fd)
    return time.perf_counter() - t0


# -- setup ------------------------------------------------------------------------------------


def setup_base(b: Bench) -> None:
    """The base: one big file (``base`` bytes) and a small one, in the bucket and a manifest."""
    s3 = b.s3()
    s3.create_bucket(Bucket=BUCKET)
    files = {"base/big.bin": b.sizes.base, "base/small.txt": 1000}
    entries = []
    for i, (rel, size) in enumerate(sorted(files.items())):
        local = b.path("basefiles", rel)
        with open(local, "wb") as f:
            left = size
            while left > 0:
                left -= f.write(os.urandom(min(left, 8 * MiB)))
        h = hash_file(local)
        s3.upload_file(local, BUCKET, f"{BASE_PREFIX}/{data_key(h)}")
        entries.append(ManifestPath(rel, h, size, 1_700_000_000_000_000 + i))
        os.unlink(local)
    b.manifest = b.path("base.manifest")
    with open(b.manifest, "wb") as f:
        f.write(encode_manifest(Manifest(entries)))


# -- cases ------------------------------------------------------------------------------------


def case_first_write(b: Bench, m: Mounted) -> None:
    assert b.relay is not None
    before = vfs_stats(str(m.path))
    seen = len(b.relay.seen)
    t0 = time.perf_counter()
    with open(m.path / "base" / "big.bin", "r+b") as f:
        f.seek(b.sizes.base // 2 + 12345)
        f.write(os.urandom(4 * KiB))
    seconds = time.perf_counter() - t0
    gets = [r for r in b.relay.seen[seen:] if r.method == "GET" and "/Data/" in r.path]
    after = vfs_stats(str(m.path))
    fetched = delta(after, before, "fetch.blocks", "fetch.objects")
    b.add(
        Row(
            f"first 4 KiB write into a {human(b.sizes.base)} uncached base file",
            seconds,
            None,
            "s",
            None,
            f"< {TARGET_FIRST_S:.0f} s, <= {TARGET_FIRST_GETS} GETs",
            seconds < TARGET_FIRST_S and len(gets) <= TARGET_FIRST_GETS,
            f"({len(gets)} data GETs, {fetched} fetches)",
        )
    )


def case_seq(b: Bench, m: Mounted) -> None:
    size = b.sizes.seq
    block = os.urandom(WRITE)
    native = b.path("native", "seq.bin")
    t_native = write_file(native, size, block)
    os.unlink(native)
    (m.path / "out").mkdir(exist_ok=True)
    t_vfs = write_file(str(m.path / "out" / "seq.bin"), size, block)
    os.unlink(m.path / "out" / "seq.bin")
    v, n = mbps(size, t_vfs), mbps(size, t_native)
    rel = ratio(v, n)
    b.add(
        Row(
            f"sequential write {human(size)} (1 MiB writes)",
            v,
            n,
            "MB/s",
            rel,
            f">= {TARGET_SEQ:.2f}x",
            rel is not None and rel >= TARGET_SEQ,
        )
    )


def random_writes(path: str, size: int, count: int) -> float:
    with open(path, "wb") as f:
        f.truncate(size)
    rng = random.Random(9)
    offsets = [rng.randrange(size // (4 * KiB)) * 4 * KiB for _ in range(count)]
    data = os.urandom(4 * KiB)
    fd = os.open(path, os.O_WRONLY)
    t0 = time.perf_counter()
    try:
        for off in offsets:
            os.pwrite(fd, data, off)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def case_random(b: Bench, m: Mounted) -> None:
    s = b.sizes
    native = b.path("native", "random.bin")
    t_native = random_writes(native, s.random_file, s.random_writes)
    os.unlink(native)
    t_vfs = random_writes(str(m.path / "out" / "random.bin"), s.random_file, s.random_writes)
    os.unlink(m.path / "out" / "random.bin")
    v, n = s.random_writes / t_vfs, s.random_writes / t_native
    b.add(
        Row(
            f"{label(s.random_writes)} random 4 KiB writes ({human(s.random_file)} file)",
            v,
            n,
            "writes/s",
            ratio(v, n),
            "report",
            None,
        )
    )


def create_files(folder: str, count: int, size: int) -> float:
    os.makedirs(folder, exist_ok=True)
    contents = [os.urandom(size) for _ in range(count)]  # distinct objects
    t0 = time.perf_counter()
    for i, data in enumerate(contents):
        fd = os.open(os.path.join(folder, f"f{i:05d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, data)
        os.close(fd)
    return time.perf_counter() - t0


def case_small(b: Bench, m: Mounted) -> None:
    s = b.sizes
    folder = os.path.join(b.dir("native"), "small")
    t_native = create_files(folder, s.small_files, s.small_size)
    shutil.rmtree(folder)
    t_vfs = create_files(str(m.path / "out" / "small"), s.small_files, s.small_size)
    v, n = s.small_files / t_vfs, s.small_files / t_native
    b.add(
        Row(
            f"create {label(s.small_files)} files of {human(s.small_size)}",
            v,
            n,
            "files/s",
            ratio(v, n),
            "report",
            None,
        )
    )


def deadline_commit(b: Bench, m: Mounted, include: str, prefix: str) -> dict[str, Any]:
    """deadline's output scan + upload of the mount (in a throw-away HOME)."""
    home = b.dir("home", prefix)
    spec = {
        "root": str(m.path),
        "dest": b.dir("dl", prefix),
        "base": b.manifest,
        "include": include,
        "hash_cache": b.dir("dlcache", prefix),
        "bucket": BUCKET,
        "prefix": prefix,
    }
    env = {**os.environ, "HOME": home, "AWS_ENDPOINT_URL": b.endpoint}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", DEADLINE_BASELINE, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"deadline baseline failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def vfs_commit(m: Mounted, endpoint: str, *args: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out = run_vfs(
        "commit", str(m.path), *IDS, "--endpoint-url", endpoint, "--json", *args, timeout=3600
    )
    seconds = time.perf_counter() - t0
    return seconds, dict(json.loads(out.stdout.strip().splitlines()[-1]))


def case_commit(b: Bench, m: Mounted) -> None:
    s = b.sizes
    create_files(str(m.path / "out" / "many"), s.commit_files, s.commit_file_size)
    (m.path / "out" / "one").mkdir()
    write_file(str(m.path / "out" / "one" / "big.bin"), s.commit_big, os.urandom(WRITE))
    for name, what, count in (
        ("many", f"{label(s.commit_files)} new {human(s.commit_file_size)} files", s.commit_files),
        ("one", f"one new {human(s.commit_big)} file", 1),
    ):
        t_vfs, got = vfs_commit(
            m, b.endpoint, "--output-dir", f"out/{name}", "--store", f"s3://{BUCKET}/vfs-{name}"
        )
        if got["files"] != count:
            raise RuntimeError(f"vfs commit of out/{name} committed {got['files']} files")
        dl = deadline_commit(b, m, f"out/{name}/**", f"dl-{name}")
        if dl["files"] != count:
            raise RuntimeError(f"deadline's snapshot of out/{name} found {dl['files']} files")
        t_dl = dl["process_s"]
        b.raw[f"commit_{name}"] = {"vfs": got, "vfs_s": t_vfs, "deadline": dl}
        rel = ratio(t_dl, t_vfs)
        b.add(
            Row(
                f"commit {what}",
                t_vfs,
                t_dl,
                "s",
                rel,
                f">= {TARGET_COMMIT:.1f}x faster",
                rel is not None and rel >= TARGET_COMMIT,
                f"(vfs: {got['hash_reused']} hashes reused, {got['uploaded']} objects; "
                f"deadline: scan {dl['snapshot_s']:.2f} s + upload {dl['upload_s']:.2f} s "
                f"after its imports)",
            )
        )


def case_write_behind(b: Bench) -> None:
    s = b.sizes
    m = b.mount("wb", "--upload-on-close")
    m.path.joinpath("out", "wb").mkdir(parents=True)
    contents: list[bytes] = []
    closed: list[float] = []
    interval = s.wb_seconds / s.wb_files
    start = time.perf_counter()
    for i in range(s.wb_files):
        due = start + i * interval
        time.sleep(max(0.0, due - time.perf_counter()))
        data = os.urandom(s.wb_file_size)
        with open(m.path / "out" / "wb" / f"frame.{i:04d}.exr", "wb") as f:
            for off in range(0, len(data), WRITE):
                f.write(data[off : off + WRITE])
        closed.append(time.perf_counter())
        contents.append(data)
    last = closed[-1]
    # The commit's own work, in this process (boto3 is loaded already); the CLI adds its
    # process start, measured below with a commit that finds nothing new.
    from vfs.commit import CommitOptions, commit_overlay
    from vfs.storage import S3Options

    options = CommitOptions(output_dirs=["out/wb"], output_file=b.path("wb.manifest"))
    t0 = time.perf_counter()
    result = commit_overlay(
        os.path.join(b.workdir, "overlays", "wb"), options, S3Options(endpoint_url=b.endpoint)
    )
    t_commit = time.perf_counter() - t0
    got = result.to_json()
    t_noop, _ = vfs_commit(m, b.endpoint, "--output-dir", "out/wb")
    if got["files"] != s.wb_files:
        raise RuntimeError(f"vfs commit of out/wb committed {got['files']} files")
    recent = [c for c, t in zip(contents, closed, strict=True) if t >= last - 1.0]
    paths = []
    for i, data in enumerate(recent):
        p = b.path("native", "wb", f"f{i}")
        with open(p, "wb") as f:
            f.write(data)
        paths.append(p)
    s3 = b.s3()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda p: s3.upload_file(p, BUCKET, f"wb-baseline/{os.path.basename(p)}"), paths
            )
        )
    t_base = time.perf_counter() - t0
    b.raw["write_behind"] = {
        "commit": got,
        "commit_s": t_commit,
        "baseline_s": t_base,
        "recent_files": len(recent),
    }
    rel = ratio(t_commit, t_base)
    b.add(
        Row(
            f"--upload-on-close: commit after the last close ({s.wb_files} x "
            f"{human(s.wb_file_size)} over {s.wb_seconds:.0f} s)",
            t_commit,
            t_base,
            "s",
            rel,
            f"<= {TARGET_WB:.1f}x",
            rel is not None and rel <= TARGET_WB,
            f"(baseline: upload of the {len(recent)} files closed in the last second; "
            f"commit: {got['written_behind']} written behind, {got['uploaded']} uploaded; "
            f"the CLI adds {t_noop:.2f} s of process start and reading)",
        )
    )


# -- main -------------------------------------------------------------------------------------


def table(b: Bench) -> str:
    lines = []
    for r in b.rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(
            (
                r.case,
                fmt_value(r.vfs, r.unit),
                fmt_value(r.base, r.unit),
                "" if r.rel is None else f"{r.rel:.2f}x",
                r.target,
                ok,
                r.detail,
            )
        )
    return render_table(
        ("case", "vfs", "baseline", "ratio", "target", "met", "detail"),
        lines,
        right={1, 2, 3},
        notes=b.notes,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (see QUICK)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    p.add_argument("--cases", default="first-write,seq,random,small,commit,write-behind")
    p.add_argument("--workdir", help="work directory (default: a new one under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", action="store_true", help="print rows and raw results as JSON")
    return p.parse_args(argv)


def scaled(sizes: Sizes, k: float) -> Sizes:
    if k == 1.0:
        return sizes
    ints = {
        name: max(1, int(getattr(sizes, name) * k))
        for name in (
            "seq",
            "random_writes",
            "random_file",
            "small_files",
            "base",
            "commit_files",
            "commit_big",
            "wb_files",
            "wb_file_size",
        )
    }
    return Sizes(**{**sizes.__dict__, **ints})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = scaled(QUICK if args.quick else Sizes(), args.scale)
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    workdir = args.workdir or tempfile.mkdtemp(prefix="vfs-bench-write-", dir="/tmp")
    os.makedirs(workdir, exist_ok=True)
    isolate_aws(workdir)
    b = Bench(workdir, sizes)
    b.notes.extend(settle_memory())
    busy = cpu_busy()
    if busy is not None:
        b.notes.append(f"CPU busy with other work at the start: {busy:.0%} of all cores")
    server = start_moto(b.path("logs", "moto.log"))
    b.endpoint = server.endpoint
    b.relay = S3Relay(server.endpoint)
    b.mounts = MountSet(Path(b.dir("logs")))
    status = 0
    try:
        with signals_as_interrupt():
            log(f"sizes: {sizes}")
            setup_base(b)
            m = b.mount("main", endpoint=b.relay.url)
            if "first-write" in cases:
                case_first_write(b, m)
            if "seq" in cases:
                case_seq(b, m)
            (m.path / "out").mkdir(exist_ok=True)
            if "random" in cases:
                case_random(b, m)
            if "small" in cases:
                case_small(b, m)
            if "commit" in cases:
                case_commit(b, m)
            if "write-behind" in cases:
                case_write_behind(b)
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    except Exception as e:
        log(f"benchmark failed: {type(e).__name__}: {e}")
        b.notes.append(f"FAILED: {type(e).__name__}: {e}")
        status = 1
    finally:
        with signals_as_interrupt():
            b.mounts.close()
            b.relay.close()
            stop_server(server)
            if not args.keep and not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    print(table(b))
    if args.json:
        print(
            json.dumps(
                {
                    "sizes": sizes.__dict__,
                    "rows": [r.__dict__ for r in b.rows],
                    "raw": b.raw,
                    "notes": b.notes,
                },
                indent=2,
                default=str,
            )
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
