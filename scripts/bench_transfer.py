#!/usr/bin/env python3
"""Copy-mode transfer benchmark (issue 11): vfs's upload and download orchestrators against
deadline's and raw boto3, on the same local S3 server in one run.

Run ``scripts/bench_transfer.py [--server moto|s3rver] [--small-count N] [--small-kib K]
[--large-mib M] [--cases small,large] [--json]``; it re-executes itself with the project's
virtualenv python (``$VFS_VENV`` or ``.venv``) when started with another interpreter, and
benchmarks whatever ``vfs`` imports there (the editable install, or a tree first on
``PYTHONPATH``).

Everything runs on 127.0.0.1 with fake credentials and empty AWS config files; the script
starts its own server (``moto_server`` from the virtualenv, or s3rver 3.7.1 from
``--tools-dir``, installed with npm when missing) and stops it on any exit.

Cases (random, distinct content; every upload goes to a fresh root prefix, so nothing is
already stored; every download reads the objects vfs uploaded, into a fresh directory):

* small: ``--small-count`` files of ``--small-kib`` KiB (default 2,000 × 64 KiB). Upload:
  :class:`vfs.transfer.UploadOrchestrator` against deadline's
  ``S3AssetUploader.upload_assets`` (``s3_max_pool_connections=50``,
  ``small_file_threshold_multiplier=20``: the submitter's defaults). Download:
  :class:`vfs.transfer.DownloadOrchestrator` against deadline's
  ``download_files_from_manifests``. Compared in files per second (target ≥ 2×).
* large: one file of ``--large-mib`` MiB (default 1 GiB). The same pairs, plus raw boto3
  ``upload_file`` / ``download_file`` with their default ``TransferConfig``. Compared in
  MB/s (targets: ≥ 1.0× deadline, ≥ 0.9× boto3).

deadline runs in a subprocess (the venv's python, a throw-away ``HOME``); its time is taken
inside that process around the one call, like ours around ours, so interpreter start-up
and imports are charged to no one. The machine's CPU use by other processes is sampled
before and after and reported: on a busy machine every ratio is noisy.
"""

from __future__ import annotations

import os
import sys

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
from dataclasses import asdict, dataclass, field
from typing import Any

from vfs.manifest import Manifest, encode_manifest
from vfs.snapshot import snapshot_directory
from vfs.storage import S3Options, S3Store
from vfs.testing.bench import (
    KiB,
    MiB,
    Server,
    cpu_busy,
    fmt_value,
    free_port,
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
    start_server,
    stop_server,
    timed,
)
from vfs.transfer import DownloadOrchestrator, UploadOrchestrator

BUCKET = "vfs-bench-transfer"
ACCESS_KEY = SECRET_KEY = "S3RVER"  # accepted by moto and s3rver alike
S3RVER_VERSION = "3.7.1"
TARGET_SMALL = 2.0
TARGET_LARGE = 1.0
TARGET_BOTO3 = 0.9

DEADLINE_UPLOAD = r"""
import json, sys, time
from pathlib import Path
cfg = json.loads(sys.argv[1])
import boto3
from deadline.job_attachments.asset_manifests.decode import decode_manifest
from deadline.job_attachments.models import JobAttachmentS3Settings
from deadline.job_attachments.upload import S3AssetUploader
with open(cfg["manifest"], encoding="utf-8") as f:
    manifest = decode_manifest(f.read())
uploader = S3AssetUploader(
    boto3.Session(), s3_max_pool_connections=50, small_file_threshold_multiplier=20
)
settings = JobAttachmentS3Settings(s3BucketName=cfg["bucket"], rootPrefix=cfg["prefix"])
t0 = time.perf_counter()
uploader.upload_assets(settings, manifest, Path(cfg["root"]), s3_check_cache_dir=cfg["cache"])
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

DEADLINE_DOWNLOAD = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
from deadline.job_attachments.asset_manifests.decode import decode_manifest
from deadline.job_attachments.download import download_files_from_manifests
with open(cfg["manifest"], encoding="utf-8") as f:
    manifest = decode_manifest(f.read())
t0 = time.perf_counter()
summary = download_files_from_manifests(
    s3_bucket=cfg["bucket"], manifests_by_root={cfg["dest"]: manifest},
    cas_prefix=cfg["prefix"] + "/Data",
)
print(json.dumps({"seconds": time.perf_counter() - t0, "files": summary.processed_files,
                  "bytes": summary.processed_bytes}))
"""


@dataclass
class Row:
    """One measured transfer: ``who`` moved ``files`` files / ``nbytes`` bytes in
    ``seconds`` for ``case`` (``small``/``large``) ``direction`` (``upload``/``download``)."""

    case: str
    direction: str
    who: str
    seconds: float
    files: int
    nbytes: int

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return mbps(self.nbytes, self.seconds)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Bench:
    """The work directory, the server and the runs against it."""

    def __init__(self, workdir: str, server: Server) -> None:
        self.workdir = workdir
        self.server = server
        self.results = Results()
        self.home = os.path.join(workdir, "deadline-home")
        os.makedirs(self.home, exist_ok=True)

    def store(self, prefix: str) -> S3Store:
        return S3Store(BUCKET, prefix, S3Options(endpoint_url=self.server.endpoint))

    def record(self, row: Row) -> None:
        self.results.rows.append(row)
        rate = (
            f"{row.files_per_s:,.0f} files/s"
            if row.case == "small"
            else f"{row.mb_per_s:,.0f} MB/s"
        )
        log(f"{row.case} {row.direction} {row.who}: {row.seconds:.2f} s, {rate}")

    # -- the parties -------------------------------------------------------------------------

    def ours_upload(self, case: str, m: Manifest, root: str, prefix: str) -> None:
        orch = UploadOrchestrator(self.store(prefix))
        seconds, stats = timed(lambda: orch.upload_manifest(m, root))
        if stats.files_transferred != len(m.paths):
            raise RuntimeError(f"vfs uploaded {stats.files_transferred} of {len(m.paths)}")
        self.record(Row(case, "upload", "vfs", seconds, len(m.paths), stats.bytes_transferred))

    def ours_download(self, case: str, m: Manifest, prefix: str, dest: str) -> None:
        orch = DownloadOrchestrator(self.store(prefix))
        seconds, stats = timed(lambda: orch.download_manifest(m, dest))
        if stats.files_transferred != len(m.paths):
            raise RuntimeError(f"vfs downloaded {stats.files_transferred} of {len(m.paths)}")
        self.record(Row(case, "download", "vfs", seconds, len(m.paths), stats.bytes_transferred))

    def deadline(self, script: str, cfg: dict[str, Any]) -> dict[str, Any]:
        env = {**os.environ, "HOME": self.home, "AWS_ENDPOINT_URL": self.server.endpoint}
        r = subprocess.run(
            [sys.executable, "-c", script, json.dumps(cfg)],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
            check=False,
            cwd=self.workdir,
        )
        if r.returncode != 0:
            raise RuntimeError(f"deadline failed ({r.returncode}): {r.stderr[-3000:]}")
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return out

    def deadline_upload(self, case: str, m: Manifest, mfile: str, root: str, prefix: str) -> None:
        cache = tempfile.mkdtemp(prefix="s3cc-", dir=self.workdir)
        cfg = {"manifest": mfile, "bucket": BUCKET, "prefix": prefix, "root": root}
        out = self.deadline(DEADLINE_UPLOAD, {**cfg, "cache": cache})
        stored = sum(1 for _ in self.store(prefix).list_keys("Data/"))
        if stored != len(m.paths):
            raise RuntimeError(f"deadline stored {stored} of {len(m.paths)} objects")
        nbytes = sum(p.size for p in m.paths)
        self.record(Row(case, "upload", "deadline", out["seconds"], len(m.paths), nbytes))

    def deadline_download(self, case: str, m: Manifest, mfile: str, prefix: str, dest: str) -> None:
        cfg = {"manifest": mfile, "bucket": BUCKET, "prefix": prefix, "dest": dest}
        out = self.deadline(DEADLINE_DOWNLOAD, cfg)
        if out["files"] != len(m.paths):
            raise RuntimeError(f"deadline downloaded {out['files']} of {len(m.paths)} files")
        self.record(Row(case, "download", "deadline", out["seconds"], out["files"], out["bytes"]))

    def boto3_pair(self, path: str, dest: str) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.server.endpoint, region_name="us-east-1")
        size = os.path.getsize(path)
        seconds, _ = timed(lambda: client.upload_file(path, BUCKET, "boto3/large.bin"))
        self.record(Row("large", "upload", "boto3", seconds, 1, size))
        seconds, _ = timed(lambda: client.download_file(BUCKET, "boto3/large.bin", dest))
        if os.path.getsize(dest) != size:
            raise RuntimeError("boto3 downloaded a file of the wrong size")
        self.record(Row("large", "download", "boto3", seconds, 1, size))

    # -- cases -------------------------------------------------------------------------------

    def case(self, case: str, root: str, with_boto3: bool) -> None:
        m = snapshot_directory(root)
        assert m is not None
        mfile = os.path.join(self.workdir, f"{case}.manifest")
        with open(mfile, "wb") as f:
            f.write(encode_manifest(m))
        self.ours_upload(case, m, root, f"vfs-{case}")
        self.deadline_upload(case, m, mfile, root, f"deadline-{case}")
        dest = os.path.join(self.workdir, "dest")
        for who in ("vfs", "deadline"):
            shutil.rmtree(dest, ignore_errors=True)
            if who == "vfs":
                self.ours_download(case, m, f"vfs-{case}", dest)
            else:
                self.deadline_download(case, m, mfile, f"vfs-{case}", dest)
            check_tree(m, root, dest, who)
        shutil.rmtree(dest, ignore_errors=True)
        if with_boto3:
            path = os.path.join(root, m.paths[0].path)
            os.makedirs(dest)
            self.boto3_pair(path, os.path.join(dest, "large.bin"))
            shutil.rmtree(dest, ignore_errors=True)


def check_tree(m: Manifest, root: str, dest: str, who: str) -> None:
    """Every downloaded file has its source's size (content: the orchestrators hash)."""
    for p in m.paths:
        got = os.path.getsize(os.path.join(dest, p.path))
        if got != os.path.getsize(os.path.join(root, p.path)):
            raise RuntimeError(f"{who}: {p.path} downloaded with {got} bytes")


def make_small(root: str, count: int, size: int) -> None:
    rng = random.Random(11)
    for i in range(count):
        d = os.path.join(root, f"d{i // 500:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
            f.write(rng.randbytes(size))


def make_large(root: str, size: int) -> None:
    os.makedirs(root, exist_ok=True)
    rng = random.Random(12)
    with open(os.path.join(root, "large.bin"), "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(rng.randbytes(n))
            left -= n


# -- server ---------------------------------------------------------------------------------


def start(kind: str, workdir: str, tools_dir: str) -> Server:
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    if kind == "moto":
        return start_moto(os.path.join(logs, "moto.log"))
    exe = os.path.join(tools_dir, "node_modules", ".bin", "s3rver")
    if not os.path.exists(exe):
        cmd = ["npm", "install", "--no-audit", "--no-fund", "--prefix", tools_dir]
        log(f"installing s3rver: {' '.join(cmd)} s3rver@{S3RVER_VERSION}")
        subprocess.run([*cmd, f"s3rver@{S3RVER_VERSION}"], check=True, capture_output=True)
    port = free_port()
    data = os.path.join(workdir, "s3rver-data")
    os.makedirs(data, exist_ok=True)
    env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
    argv = [exe, "-d", data, "-a", "127.0.0.1", "-p", str(port), "-s"]
    server = start_server("s3rver", argv, port, os.path.join(logs, "s3rver.log"), env)
    server.data_dir = data
    return server


def make_bucket(server: Server) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    for _ in range(50):
        try:
            client.create_bucket(Bucket=BUCKET)
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"cannot create bucket {BUCKET} on {server.endpoint}")


# -- report ---------------------------------------------------------------------------------


def table(results: Results) -> str:
    by = {(r.case, r.direction, r.who): r for r in results.rows}
    lines: list[list[str]] = []
    for case in ("small", "large"):
        for direction in ("upload", "download"):
            ours = by.get((case, direction, "vfs"))
            if ours is None:
                continue
            unit = "files/s" if case == "small" else "MB/s"

            def value(r: Row | None, small: bool = case == "small") -> float | None:
                if r is None:
                    return None
                return r.files_per_s if small else r.mb_per_s

            theirs = by.get((case, direction, "deadline"))
            target = TARGET_SMALL if case == "small" else TARGET_LARGE
            r = ratio(value(ours), value(theirs))
            lines.append([
                case, direction, "vs deadline", fmt_value(value(ours), unit),
                fmt_value(value(theirs), unit), fmt_value(r, "x"), f">= {target:.1f}",
                "" if r is None else ("ok" if r >= target else "MISSED"),
            ])  # fmt: skip
            boto = by.get((case, direction, "boto3"))
            if boto is not None:
                r = ratio(value(ours), value(boto))
                lines.append([
                    case, direction, "vs boto3", fmt_value(value(ours), unit),
                    fmt_value(value(boto), unit), fmt_value(r, "x"), f">= {TARGET_BOTO3:.1f}",
                    "" if r is None else ("ok" if r >= TARGET_BOTO3 else "MISSED"),
                ])  # fmt: skip
    header = ["case", "direction", "baseline", "vfs", "baseline", "ratio", "target", ""]
    return render_table(header, lines, right={3, 4, 5}, notes=results.notes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--server", choices=("moto", "s3rver"), default="moto")
    p.add_argument("--small-count", type=int, default=2000, help="small files (default 2000)")
    p.add_argument("--small-kib", type=int, default=64, help="KiB per small file (default 64)")
    p.add_argument("--large-mib", type=int, default=1024, help="MiB of the large file (1024)")
    p.add_argument("--cases", default="small,large", help="comma-separated: small, large")
    p.add_argument("--json", action="store_true", help="results as JSON on stdout (table: stderr)")
    p.add_argument(
        "--tools-dir",
        default=os.path.expanduser("~/.cache/vfs-bench"),
        help="where s3rver is installed with npm (default ~/.cache/vfs-bench)",
    )
    p.add_argument("--workdir", default=None, help="work directory (default: new, under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if set(cases) - {"small", "large"}:
        raise SystemExit(f"unknown cases: {args.cases}")
    if args.workdir:
        workdir = os.path.abspath(args.workdir)
        os.makedirs(workdir, exist_ok=True)
        remove = False
    else:
        workdir = tempfile.mkdtemp(prefix="vfs-bench-transfer-", dir="/tmp")
        remove = not args.keep
    isolate_aws(workdir, ACCESS_KEY, SECRET_KEY)
    memory_notes = settle_memory()
    busy_before = cpu_busy()
    started = time.perf_counter()
    status = 0
    server: Server | None = None
    results = Results()
    results.notes.extend(memory_notes)
    try:
        with signals_as_interrupt():
            try:
                server = start(args.server, workdir, args.tools_dir)
                log(f"{server.name} at {server.endpoint}")
                make_bucket(server)
                bench = Bench(workdir, server)
                results = bench.results
                if "small" in cases:
                    root = os.path.join(workdir, "small")
                    size = args.small_kib * KiB
                    log(f"small: {label(args.small_count)} files of {human(size)}")
                    make_small(root, args.small_count, size)
                    bench.case("small", root, with_boto3=False)
                if "large" in cases:
                    root = os.path.join(workdir, "large")
                    log(f"large: one file of {human(args.large_mib * MiB)}")
                    make_large(root, args.large_mib * MiB)
                    bench.case("large", root, with_boto3=True)
            finally:
                if server is not None:
                    stop_server(server)
    except KeyboardInterrupt:
        log("interrupted; the server was stopped")
        status = 130
    except Exception as e:
        log(f"benchmark failed: {type(e).__name__}: {e}")
        results.notes.append(f"FAILED: {type(e).__name__}: {e}")
        status = 1
    finally:
        if remove:
            shutil.rmtree(workdir, ignore_errors=True)
    busy_after = cpu_busy()
    busy = [b for b in (busy_before, busy_after) if b is not None]
    if busy:
        results.notes.append(
            f"CPUs busy with other work: {busy[0]:.0%} before, {busy[-1]:.0%} after the run"
            + ("; OTHER PROCESSES WERE BUSY: ratios are noisy" if max(busy) > 0.2 else "")
        )
    results.notes.append(
        f"server {args.server}; small {args.small_count} x {args.small_kib} KiB; "
        f"large {args.large_mib} MiB; total {time.perf_counter() - started:.0f} s"
    )
    text = table(results)
    if args.json:
        print(text, file=sys.stderr)
        doc = {
            "rows": [{**asdict(r), "files_per_s": r.files_per_s, "mb_per_s": r.mb_per_s}
                     for r in results.rows],
            "notes": results.notes,
        }  # fmt: skip
        print(json.dumps(doc, indent=2))
    else:
        print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
