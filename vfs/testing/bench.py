"""What the ``scripts/bench_*.py`` benchmarks share: progress output, timing, value formatting,
the ratio table, an isolated AWS environment, signal handling, the kernel's view of mounts
and the start of local servers (moto) and relays.

Each benchmark keeps its own rows and cases; this module holds only what was duplicated.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from vfs.testing.mounts import mount_fields
from vfs.testing.relay import S3Relay
from vfs.testing.servers import free_port, moto_executable, stop_process, wait_port

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
#: Buffer of the timed reads.
READ_BUFFER = MiB

T = TypeVar("T")

__all__ = [
    "GiB",
    "KiB",
    "MiB",
    "ReadResult",
    "S3Relay",
    "Server",
    "apt_install",
    "cpu_busy",
    "delta",
    "drop_caches",
    "fmt_value",
    "free_port",
    "human",
    "isolate_aws",
    "label",
    "log",
    "mbps",
    "mount_entry",
    "ratio",
    "render_table",
    "settle_memory",
    "signals_as_interrupt",
    "start_moto",
    "stop_server",
    "timed",
    "timed_read",
    "vfs_stats",
    "wait_port",
]


# -- output ---------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr (the table and --json output go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def human(n: float) -> str:
    """A byte count in the largest binary unit it reaches: ``1 GiB``, ``1.5 MiB``."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def label(n: int) -> str:
    """A count as a short label: ``10k``, ``1M``, ``1234``."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def fmt_value(value: float | None, unit: str) -> str:
    """A measurement with its unit (``s``, ``MB/s``, ``B``, ``MiB``, ``x`` or any other)."""
    if value is None:
        return "n/a"
    if unit == "s":
        if value < 0.1:
            return f"{value * 1000:.2f} ms"
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:,.0f}{(' ' + unit) if unit else ''}"


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``; None when either is unknown or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def mbps(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes per second); 0 for no time."""
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


def render_table(
    header: Sequence[str],
    lines: Sequence[Sequence[str]],
    right: set[int] | frozenset[int] = frozenset(),
    notes: Sequence[str] = (),
) -> str:
    """An aligned text table: ``header``, a rule, then ``lines``; the columns whose index is in
    ``right`` are right-aligned. ``notes`` follow as ``note: ...`` lines."""
    rows = [tuple(header), *(tuple(line) for line in lines)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = []
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out.extend(f"note: {note}" for note in notes)
    return "\n".join(out)


# -- timing ---------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of ``fn()`` and its result (after a full collection, so that earlier garbage
    is not charged to it)."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@dataclass
class ReadResult:
    """A timed read: seconds from open to the end (or the stop), bytes, seconds to the first
    bytes, and whether it reached the end of the file."""

    seconds: float
    nbytes: int
    first: float
    complete: bool


def timed_read(path: str, budget: float | None = None) -> ReadResult:
    """Read ``path`` to its end with ``os.readv`` into one reused 1 MiB buffer; stop after
    ``budget`` seconds when given (``complete`` is then False)."""
    view = memoryview(bytearray(READ_BUFFER))
    total = 0
    first = 0.0
    complete = True
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [view])
            if n == 0:
                break
            if not total:
                first = time.perf_counter() - t0
            total += n
            if budget is not None and time.perf_counter() - t0 > budget:
                complete = False
                break
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    return ReadResult(elapsed, total, first, complete)


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (/proc/stat), sampled while this is idle."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1 - (idle1 - idle0) / total if total > 0 else None


# -- environment ----------------------------------------------------------------------------


def isolate_aws(workdir: str, access_key: str = "testing", secret_key: str = "testing") -> None:
    """Fake credentials and empty AWS config files, for this process and its children."""
    aws = os.path.join(workdir, "aws")
    os.makedirs(aws, exist_ok=True)
    for name in ("config", "credentials"):
        open(os.path.join(aws, name), "w").close()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.path.join(aws, "config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(aws, "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(var, None)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so that every ``finally`` runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def apt_install(packages: list[str]) -> bool:
    """Install Debian ``packages`` (printed first); False when that is not possible."""
    if not shutil.which("apt-get"):
        log(f"cannot install {' '.join(packages)}: no apt-get")
        return False
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    names = " ".join(packages)
    log(f"installing {names}: apt-get update && apt-get install -y {names}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        r = subprocess.run(prefix + cmd, capture_output=True, text=True, env=env, check=False)
        if r.returncode != 0:
            log(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stdout + r.stderr)[-1000:]}")
            return False
    return True


PAGE_REPORTING_ORDER = "/sys/module/page_reporting/parameters/page_reporting_order"
"""The smallest block of free pages (as a power of two of pages) that a virtual machine's
balloon driver reports to its host (Linux ``mm/page_reporting.c``)."""

_NO_REPORTING = 11
"""An order above x86-64's largest (``MAX_PAGE_ORDER`` 10): no free block is ever reported."""

_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14, <linux/mman.h>


def settle_memory(margin: int = GiB) -> list[str]:
    """Back the guest's free memory by its host for the rest of the run; returns notes for
    the table.

    In a virtual machine with free page reporting (virtio-balloon), freed memory is handed
    back to the host within moments, and whoever gets those pages next pays a host fault on
    first touch: measured on the 2-core Firecracker VM of 2026-12, touching such memory runs
    at 0.55 GB/s against 5.5 GB/s for writes into the page cache. A baseline that reuses the
    pages it has just freed then runs at full speed while the next case pays, so ratios
    drifted by 20-40 % within one session. As root this turns reporting off
    (:data:`PAGE_REPORTING_ORDER` set to :data:`_NO_REPORTING`) until the process exits
    (``atexit`` restores the old order; :func:`signals_as_interrupt` turns SIGTERM into an
    exit), then touches all free memory but ``margin`` bytes once (8 to 35 s for 19-22 GiB
    there). Otherwise it only says that the numbers may drift. Without reporting: nothing."""
    try:
        with open(PAGE_REPORTING_ORDER) as f:
            old = f.read().strip()
    except OSError:
        return []  # not a VM with free page reporting
    if int(old) >= _NO_REPORTING:
        return []
    try:
        with open(PAGE_REPORTING_ORDER, "w") as f:
            f.write(f"{_NO_REPORTING}\n")
    except OSError as e:
        return [
            f"free page reporting is on ({PAGE_REPORTING_ORDER} = {old}) and could not be "
            f"turned off ({e.strerror}): memory touched for the first time is slow, ratios "
            "may drift"
        ]

    def restore() -> None:
        with open(PAGE_REPORTING_ORDER, "w") as f:
            f.write(f"{old}\n")

    atexit.register(restore)
    t0 = time.perf_counter()
    touched = _touch_free_memory(margin)
    note = (
        f"free page reporting off for the run (order {old} -> {_NO_REPORTING}, restored at "
        f"exit); {human(touched)} of free memory touched first, in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    log(note)
    return [note]


def _touch_free_memory(margin: int) -> int:
    """Write-fault all of MemFree but ``margin`` bytes once, then free it; the bytes touched."""
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    size = int(fields["MemFree"].split()[0]) * KiB - margin
    if size <= 0:
        return 0
    size -= size % mmap.PAGESIZE
    with mmap.mmap(-1, size) as m:
        try:
            m.madvise(_MADV_POPULATE_WRITE)
        except OSError:  # before Linux 5.14: one write per page
            for pos in range(0, size, mmap.PAGESIZE):
                m[pos] = 1
    return size


# -- the kernel's view ----------------------------------------------------------------------


def mount_entry(path: str) -> list[str] | None:
    """Fields of ``path``'s line in /proc/self/mountinfo (read without touching the mount)."""
    return mount_fields(path)


def drop_caches() -> bool:
    """Drop the page, dentry and inode caches; False when not permitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def vfs_stats(mnt: str) -> dict[str, int]:
    """The counters of the vfs mount at ``mnt`` (its ``user.vfs.stats`` xattr)."""
    data: dict[str, int] = json.loads(os.getxattr(mnt, "user.vfs.stats"))
    return data


def delta(after: dict[str, int], before: dict[str, int], *keys: str) -> int:
    """The sum of the increases of ``keys`` between two stats snapshots."""
    return sum(after.get(k, 0) - before.get(k, 0) for k in keys)


# -- servers --------------------------------------------------------------------------------


@dataclass
class Server:
    """A local S3 server process on 127.0.0.1."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: str | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_server(
    name: str, argv: list[str], port: int, log_file: str, env: dict[str, str] | None = None
) -> Server:
    """Start ``argv`` (a server that will listen on ``port``) with its output in ``log_file``;
    return once the port accepts connections (the process is stopped if it never does)."""
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
    try:
        wait_port(port, proc, name)
    except BaseException:
        stop_process(proc)
        raise
    return Server(name, port, proc)


def start_moto(log_file: str) -> Server:
    """moto's S3 server on a free port of 127.0.0.1, its output in ``log_file``."""
    port = free_port()
    return start_server(
        "moto", [moto_executable(), "-H", "127.0.0.1", "-p", str(port)], port, log_file
    )


def stop_server(server: Server) -> None:
    """Stop ``server`` (SIGTERM, then SIGKILL) and remove its data directory."""
    stop_process(server.proc)
    if server.data_dir:
        shutil.rmtree(server.data_dir, ignore_errors=True)


def relay(server: Server) -> S3Relay:
    """A recording, fault-injecting :class:`S3Relay` in front of ``server``."""
    return S3Relay(server.endpoint)
