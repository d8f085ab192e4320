#!/usr/bin/env python3
"""Manifest benchmark (issue 3): hashing, snapshots and the manifest codec against deadline.

Run ``scripts/bench_manifest.py [--quick] [--json] [--rounds N]``; it re-executes itself
with the project's virtualenv python (``$VFS_VENV`` or ``.venv``) when started with another
interpreter. Everything is measured in one run on the same data, and printed as ONE table of
ratios (vfs against its baseline); ``--json`` prints the results as JSON on stdout and the
table on stderr.

Cases (sizes with ``--quick`` in brackets):

* hash: xxh128 of one 1 GiB file [256 MiB] in the page cache (read once beforehand) by vfs
  ``hash_file``, ``xxhsum -H2 FILE`` (a subprocess; its wall time, start-up included, which
  is also reported on its own) and deadline's ``hash_file(path, XXH128)``. Target: vfs ≥ 90 %
  of xxhsum's throughput. The three digests must agree.
* snapshot: 20,000 files [4,000] of 1–16 KiB in nested directories (mtimes one minute old,
  so both hash caches may store them; all in the page cache) snapshotted into a manifest file
  by vfs (``HashCache`` + ``snapshot_directory`` + ``write_manifest_file``) and by deadline's
  ``api.manifest._manifest_snapshot``: "cold" with a fresh hash-cache directory, "warm" with
  the directory of a previous run. Target: vfs ≥ 2× faster in both. The two manifest files
  must be byte-identical.
* codec: a manifest of 1,000,000 entries [100,000] (nested ASCII paths with about 1 % BMP
  non-ASCII names) decoded from the same str by vfs ``decode_manifest`` and deadline's
  ``decode_manifest`` (vfs also from the file's bytes, for information: it then decodes the
  UTF-8 itself, which deadline's callers do before the call), and each side's result, its
  entries put in the same shuffled order, encoded by vfs ``encode_manifest`` and deadline's
  ``.encode()`` (the str, so deadline is spared the final UTF-8 encoding). Target: vfs ≥ 2×
  faster both ways. The outputs must be byte-identical. The same content as format
  2025-12-04-beta (``decode_manifest_v2`` / ``encode_manifest_v2``) is reported for
  information, against deadline's v1 timings.

Each measurement is repeated ``--rounds`` times (default 5, 3 for the slow snapshot and codec
cases), interleaving the contenders, and the best time is used; the spread column is
``max / min - 1`` of vfs's and the baseline's runs (the machine may be loaded by other jobs).
deadline runs in this process, imported after ``HOME`` is pointed at a throw-away directory
and fake AWS credentials and empty AWS config files are set; a warm-up snapshot of a tiny
directory is done first so that import and client set-up costs are not counted.
The work directory (``--workdir``, default a new directory under ``$TMPDIR``) is removed on
exit unless ``--keep``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    from venv_reexec import reexec_in_venv

    reexec_in_venv(__file__)

import argparse
import functools
import json
import logging
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import xxhash

from vfs.testing.bench import log, timed
from vfs.testing.bench import render_table as render_rows

GIB = 1024**3
MIB = 1024**2


# -- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table.

    ``kind`` is ``"rate"`` (values in GB/s, higher is better; ratio = vfs / baseline) or
    ``"time"`` (values in seconds, lower is better; ratio = baseline / vfs, the speed-up).
    ``target`` is the ratio to reach (``None``: for information).
    """

    case: str
    kind: str
    vfs_runs: list[float]
    base_name: str
    base_runs: list[float]
    target: float | None
    note: str = ""
    vfs_best: float = field(init=False)
    base_best: float = field(init=False)
    ratio: float = field(init=False)

    def __post_init__(self) -> None:
        if self.kind == "rate":
            self.vfs_best, self.base_best = max(self.vfs_runs), max(self.base_runs)
            self.ratio = self.vfs_best / self.base_best
        else:
            self.vfs_best, self.base_best = min(self.vfs_runs), min(self.base_runs)
            self.ratio = self.base_best / self.vfs_best

    @property
    def holds(self) -> bool | None:
        """Whether the target is met (``None`` when there is none)."""
        return None if self.target is None else self.ratio >= self.target


def spread(runs: list[float]) -> str:
    """``max / min - 1`` of the runs, as a percentage."""
    return f"{(max(runs) / min(runs) - 1) * 100:.0f}%" if len(runs) > 1 else "-"


def fmt(kind: str, value: float) -> str:
    """A value with its unit."""
    return f"{value:.2f} GB/s" if kind == "rate" else f"{value:.3f} s"


def render_table(rows: list[Row]) -> str:
    """The one table of ratios."""
    header = ("case", "vfs", "baseline", "", "ratio", "target", "holds", "spread vfs/base")
    lines = []
    for r in rows:
        target = (
            "-"
            if r.target is None
            else (f"≥ {r.target:.0%}" if r.kind == "rate" else f"≥ {r.target:.1f}×")
        )
        ratio = f"{r.ratio:.0%}" if r.kind == "rate" else f"{r.ratio:.2f}×"
        holds = {None: "info", True: "yes", False: "NO"}[r.holds]
        lines.append(
            (
                r.case,
                fmt(r.kind, r.vfs_best),
                fmt(r.kind, r.base_best),
                r.base_name,
                ratio,
                target,
                holds,
                f"{spread(r.vfs_runs)} / {spread(r.base_runs)}",
            )
        )
    table = render_rows(header, lines)
    notes = [f"  {r.case}: {r.note}" for r in rows if r.note]
    return "\n".join([table, *(["notes:", *notes] if notes else [])])


# -- environment ----------------------------------------------------------------------------


def isolate_deadline(work: str) -> None:
    """Point HOME and AWS at throw-away values before deadline is imported."""
    home = os.path.join(work, "home")
    os.makedirs(home, exist_ok=True)
    empty = os.path.join(home, "empty-aws-config")
    Path(empty).write_text("")
    os.environ.update(
        {
            "HOME": home,
            "AWS_ACCESS_KEY_ID": "bench-fake-key",
            "AWS_SECRET_ACCESS_KEY": "bench-fake-secret",
            "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_CONFIG_FILE": empty,
            "AWS_SHARED_CREDENTIALS_FILE": empty,
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    logging.getLogger("deadline").setLevel(logging.ERROR)


# -- (a) hashing ----------------------------------------------------------------------------


def make_big_file(path: str, size: int) -> None:
    """``size`` bytes of incompressible data (64 MiB of random bytes, repeated)."""
    block = random.Random(1).randbytes(min(size, 64 * MIB))
    with open(path, "wb") as f:
        left = size
        while left:
            n = f.write(block[: min(left, len(block))])
            left -= n


def bench_hash(work: str, size: int, rounds: int) -> list[Row]:
    """vfs ``hash_file`` vs ``xxhsum -H2`` vs deadline ``hash_file`` on one cached file."""
    from deadline.job_attachments.asset_manifests.hash_algorithms import (
        HashAlgorithm,
    )
    from deadline.job_attachments.asset_manifests.hash_algorithms import (
        hash_file as deadline_hash_file,
    )

    from vfs.hashing import hash_file

    xxhsum = shutil.which("xxhsum")
    if xxhsum is None:
        raise SystemExit("xxhsum is not installed (apt-get install -y xxhash)")
    path = os.path.join(work, "big.bin")
    log(f"hash: writing a {size / MIB:.0f} MiB file")
    make_big_file(path, size)
    empty = os.path.join(work, "empty.bin")
    Path(empty).write_bytes(b"")
    with open(path, "rb") as f:  # into the page cache
        while f.read(8 * MIB):
            pass

    def run_xxhsum(target: str) -> str:
        out = subprocess.run(
            [xxhsum, "-H2", target], check=True, capture_output=True, text=True
        ).stdout
        return out.split()[0]

    vfs_runs: list[float] = []
    xx_runs: list[float] = []
    xx_start: list[float] = []
    dl_runs: list[float] = []
    digests: set[str] = set()
    for r in range(rounds):
        log(f"hash: round {r + 1}/{rounds}")
        t, d = timed(lambda: hash_file(path))
        vfs_runs.append(size / t / 1e9)
        digests.add(d)
        t, d = timed(lambda: run_xxhsum(path))
        xx_runs.append(size / t / 1e9)
        digests.add(d)
        xx_start.append(timed(lambda: run_xxhsum(empty))[0])
        t, d = timed(lambda: deadline_hash_file(path, HashAlgorithm.XXH128))
        dl_runs.append(size / t / 1e9)
        digests.add(d)
    if len(digests) != 1:
        raise SystemExit(f"hash: the digests differ: {sorted(digests)}")
    os.unlink(path)
    size_text = f"{size / GIB:g} GiB" if size >= GIB else f"{size / MIB:g} MiB"
    startup_ms = min(xx_start) * 1000
    return [
        Row(
            f"hash xxh128 {size_text} (page cache)",
            "rate",
            vfs_runs,
            "xxhsum -H2",
            xx_runs,
            0.90,
            f"xxhsum wall time includes its start-up, {startup_ms:.1f} ms on an empty file "
            f"({startup_ms / 1000 * max(xx_runs) * 1e9 / size:.1%} of its best run)",
        ),
        Row(
            f"hash xxh128 {size_text} (page cache)",
            "rate",
            vfs_runs,
            "deadline hash_file",
            dl_runs,
            None,
        ),
    ]


# -- (b) snapshots --------------------------------------------------------------------------


def make_tree(root: str, count: int) -> int:
    """``count`` files of 1–16 KiB under ``root`` (3 levels); mtimes one minute old."""
    rng = random.Random(2)
    pool = rng.randbytes(32 * 1024 * 1024)
    old = time.time() - 60
    total = 0
    per_dir = 50
    for i in range(count):
        d = i // per_dir
        directory = os.path.join(root, f"seq{d // 40:03d}", f"shot{(d // 4) % 10:02d}", f"v{d % 4}")
        if i % per_dir == 0:
            os.makedirs(directory, exist_ok=True)
        size = rng.randint(1024, 16 * 1024)
        offset = rng.randrange(0, len(pool) - size)
        path = os.path.join(directory, f"frame.{i:06d}.exr")
        with open(path, "wb") as f:
            f.write(pool[offset : offset + size])
        os.utime(path, (old, old))
        total += size
    return total


def bench_snapshot(work: str, count: int, rounds: int) -> list[Row]:
    """vfs snapshot (+ manifest file) vs deadline ``_manifest_snapshot``, cold and warm."""
    from deadline.job_attachments.api.manifest import _manifest_snapshot

    from vfs.hash_cache import HashCache
    from vfs.snapshot import snapshot_directory, write_manifest_file

    root = os.path.join(work, "tree")
    log(f"snapshot: writing {count} files")
    total = make_tree(root, count)
    tiny = os.path.join(work, "tiny")
    os.makedirs(tiny)
    Path(tiny, "a.txt").write_text("warm-up")
    seq = iter(range(1_000_000))

    def fresh(kind: str) -> str:
        return os.path.join(work, "caches", f"{kind}-{next(seq)}")

    def run_vfs(cache_dir: str) -> str:
        dest = fresh("vfs-out")
        with HashCache(cache_dir) as cache:
            manifest = snapshot_directory(root, hash_cache=cache)
            assert manifest is not None
            return write_manifest_file(root, manifest, dest, name="bench")

    def run_deadline(cache_dir: str, target: str = root) -> str:
        dest = fresh("dl-out")
        result = _manifest_snapshot(
            root=target, destination=dest, name="bench", hash_cache_dir=cache_dir
        )
        assert result is not None
        return str(result.manifest)

    log("snapshot: warm-up (imports, clients) on a tiny directory")
    run_deadline(fresh("dl-cache"), tiny)
    with HashCache(fresh("vfs-cache")) as cache:
        snapshot_directory(tiny, hash_cache=cache)
    for dirpath, _dirs, files in os.walk(root):  # into the page cache
        for name in files:
            Path(dirpath, name).read_bytes()

    runs: dict[str, list[float]] = {k: [] for k in ("vfs-cold", "vfs-warm", "dl-cold", "dl-warm")}
    outputs: set[bytes] = set()
    for r in range(rounds):
        log(f"snapshot: round {r + 1}/{rounds}")
        vfs_cache, dl_cache = fresh("vfs-cache"), fresh("dl-cache")
        for key, fn in (
            ("vfs-cold", functools.partial(run_vfs, vfs_cache)),
            ("dl-cold", functools.partial(run_deadline, dl_cache)),
            ("vfs-warm", functools.partial(run_vfs, vfs_cache)),
            ("dl-warm", functools.partial(run_deadline, dl_cache)),
        ):
            t, manifest_path = timed(fn)
            runs[key].append(t)
            outputs.add(Path(manifest_path).read_bytes())
        shutil.rmtree(os.path.join(work, "caches"), ignore_errors=True)
    if len(outputs) != 1:
        raise SystemExit(f"snapshot: vfs and deadline wrote {len(outputs)} different manifests")
    shutil.rmtree(root)
    what = f"snapshot {count:,} files ({total / MIB:.0f} MiB)"
    return [
        Row(f"{what} cold", "time", runs["vfs-cold"], "deadline", runs["dl-cold"], 2.0),
        Row(
            f"{what} warm",
            "time",
            runs["vfs-warm"],
            "deadline",
            runs["dl-warm"],
            2.0,
            "warm = hash cache filled by the cold run; both write the same manifest file",
        ),
    ]


# -- (c) codec ------------------------------------------------------------------------------

_ODD_NAMES = ("été", "日本語", "naïve", "Ωmega", "smörgåsbord")


def make_manifest(count: int) -> Any:
    """A v1 manifest of ``count`` entries."""
    from vfs.manifest import Manifest, ManifestPath

    rng = random.Random(3)
    paths = []
    for i in range(count):
        d = i // 200
        name = f"frame.{i:07d}.exr"
        if i % 100 == 7:
            name = f"{_ODD_NAMES[i % len(_ODD_NAMES)]}_{i}.png"
        path = f"seq{d // 500:03d}/shot{(d // 20) % 25:02d}/v{d % 20:02d}/{name}"
        paths.append(
            ManifestPath(
                path,
                xxhash.xxh3_128_hexdigest(path),
                rng.randrange(0, 1 << 34),
                1_700_000_000_000_000 + rng.randrange(0, 10**13),
            )
        )
    return Manifest(paths=paths)


def bench_codec(count: int, rounds: int) -> list[Row]:
    """v1 decode/encode vs deadline; v2 for information.

    Only the inputs (bytes, str, a permutation of ints) stay alive between measurements,
    so that neither side's garbage collections walk the other side's objects.
    """
    from deadline.job_attachments.asset_manifests.decode import (
        decode_manifest as deadline_decode,
    )

    from vfs.manifest import decode_manifest, encode_manifest, to_v2
    from vfs.manifest.v2 import decode_manifest_v2, encode_manifest_v2

    log(f"codec: building a {count:,}-entry manifest")
    manifest = make_manifest(count)
    data = encode_manifest(manifest)
    text = data.decode("ascii")
    v2_data = encode_manifest_v2(to_v2(manifest))
    del manifest
    perm = list(range(count))  # the in-memory order both sides encode from
    random.Random(4).shuffle(perm)
    runs: dict[str, list[float]] = {
        k: []
        for k in ("vfs-dec", "vfs-dec-bytes", "dl-dec", "vfs-enc", "dl-enc", "v2-dec", "v2-enc")
    }

    def shuffled(entries: list[Any]) -> list[Any]:
        return [entries[i] for i in perm]

    for r in range(rounds):
        log(f"codec: round {r + 1}/{rounds}")
        t, ours = timed(functools.partial(decode_manifest, data))
        runs["vfs-dec-bytes"].append(t)
        del ours
        t, ours = timed(functools.partial(decode_manifest, text))
        runs["vfs-dec"].append(t)
        ours.paths = shuffled(ours.paths)
        t, out = timed(functools.partial(encode_manifest, ours))
        runs["vfs-enc"].append(t)
        if out != data:
            raise SystemExit("codec: vfs re-encoding differs from the original bytes")
        del ours, out
        t, theirs = timed(functools.partial(deadline_decode, text))
        runs["dl-dec"].append(t)
        theirs.paths = shuffled(theirs.paths)  # deadline sorts this list in place
        t, out_text = timed(theirs.encode)
        runs["dl-enc"].append(t)
        if out_text != text:
            raise SystemExit("codec: deadline's encoding differs from vfs's")
        del theirs, out_text
        t, decoded_v2 = timed(functools.partial(decode_manifest_v2, v2_data))
        runs["v2-dec"].append(t)
        decoded_v2.files = shuffled(decoded_v2.files)
        t, out = timed(functools.partial(encode_manifest_v2, decoded_v2))
        runs["v2-enc"].append(t)
        if out != v2_data:
            raise SystemExit("codec: v2 re-encoding differs")
        del decoded_v2, out
    size = f"{count / 1e6:g}M" if count >= 1_000_000 else f"{count // 1000}k"
    mb1, mb2 = len(data) / 1e6, len(v2_data) / 1e6
    return [
        Row(
            f"decode v1 {size} entries",
            "time",
            runs["vfs-dec"],
            "deadline",
            runs["dl-dec"],
            2.0,
            f"{mb1:.0f} MB of JSON; vfs validates more strictly (hashes, sizes, paths)",
        ),
        Row(
            f"decode v1 {size} entries, vfs from bytes (info)",
            "time",
            runs["vfs-dec-bytes"],
            "deadline",
            runs["dl-dec"],
            None,
        ),
        Row(f"encode v1 {size} entries", "time", runs["vfs-enc"], "deadline", runs["dl-enc"], 2.0),
        Row(
            f"decode v2 {size} entries (info)",
            "time",
            runs["v2-dec"],
            "deadline v1",
            runs["dl-dec"],
            None,
            f"{mb2:.0f} MB of JSON ($N/ compressed), same content as v1",
        ),
        Row(
            f"encode v2 {size} entries (info)",
            "time",
            runs["v2-enc"],
            "deadline v1",
            runs["dl-enc"],
            None,
        ),
    ]


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table: stderr)")
    p.add_argument("--rounds", type=int, default=None, help="repetitions of each measurement")
    p.add_argument(
        "--only",
        choices=("hash", "snapshot", "codec"),
        action="append",
        help="run only these cases (repeatable)",
    )
    p.add_argument("--workdir", default=None, help="work directory (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (and JSON with ``--json``)."""
    args = parse_args(argv)
    quick = args.quick
    cases = args.only or ["hash", "snapshot", "codec"]
    hash_size = 256 * MIB if quick else GIB
    files = 4_000 if quick else 20_000
    entries = 100_000 if quick else 1_000_000
    fast_rounds = args.rounds or 5
    slow_rounds = args.rounds or 3
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        work = tempfile.mkdtemp(prefix="bench-manifest-", dir=args.workdir)
    else:
        work = tempfile.mkdtemp(prefix="bench-manifest-")
    rows: list[Row] = []
    started = time.time()
    try:
        isolate_deadline(work)
        if "hash" in cases:
            rows += bench_hash(work, hash_size, fast_rounds)
        if "snapshot" in cases:
            rows += bench_snapshot(work, files, slow_rounds)
        if "codec" in cases:
            rows += bench_codec(entries, slow_rounds)
    finally:
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    table = render_table(rows)
    load = os.getloadavg()
    header = (
        f"bench_manifest ({'quick' if quick else 'full'}), {os.cpu_count()} CPUs, "
        f"load {load[0]:.1f}/{load[1]:.1f}, {time.time() - started:.0f} s; best of "
        f"{fast_rounds} (hash) / {slow_rounds} (snapshot, codec)"
    )
    if args.json:
        print(f"{header}\n{table}", file=sys.stderr)
        doc = {
            "quick": quick,
            "cpus": os.cpu_count(),
            "loadavg": load,
            "rows": [{**asdict(r), "holds": r.holds} for r in rows],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"{header}\n{table}")
    failed = [r for r in rows if r.holds is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
