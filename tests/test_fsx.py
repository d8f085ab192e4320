"""fsx-style randomized data test of writable mounts (after Linux's fsx): seeded random
pwrite, ftruncate and truncate by path, pread, shared writable mmap, fsync, O_APPEND writes,
close and reopen, and dropping the kernel's pages, through a real FUSE mount, on base files
(block-granular copy-up: extents, whole blocks, ``base_limit``) and on new files, checked
against an in-memory model after every step.

After every step the file's size (``fstat``) is checked, and after every write the bytes
around it are read back; every ``pread`` compares; every epoch ends with a full comparison
of both files through the daemon. Each epoch takes a fresh base file (one to two 4 MiB
blocks, the last one partial) and a fresh new file, so the base paths are exercised all run
long, not only until every block is copied up.

Reproduce a failure with the seed and step count it prints:
``VFS_FSX_SEED=S VFS_FSX_OPS=N pytest tests/test_fsx.py -k short``.
"""

from __future__ import annotations

import collections
import mmap
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mounted
from test_mount import make_manifest
from test_writable_mount import Setup, stats

from vfs.mount.blocks import BLOCK_SIZE

Mount = Callable[..., Mounted]

SIZES = [1, 7, 512, 4096, 4097, 30_000, 65_536]
"""Lengths of writes and reads (bytes); now and then 200,000, 1 MiB + 1 or a block + 1."""


class Fsx:
    """One fsx run: ``ops`` seeded operations in epochs of ``epoch`` operations."""

    def __init__(self, setup: Setup, seed: int, ops: int, epoch: int) -> None:
        self.seed, self.ops, self.epoch = seed, ops, epoch
        self.rng = random.Random(seed)
        self.epochs = (ops + epoch - 1) // epoch
        self.bases = {
            f"base{e:04d}": self.rng.randbytes(BLOCK_SIZE + self.rng.randrange(1, BLOCK_SIZE))
            for e in range(self.epochs)
        }
        setup.manifest = make_manifest(setup.tmp, self.bases, setup.tmp / "store", "fsx.manifest")
        self.m = setup.mount()
        self.root = self.m.path
        self.history: collections.deque[str] = collections.deque(maxlen=12)
        self.counts: collections.Counter[str] = collections.Counter()

    def run(self) -> float:
        """Run every operation; returns operations per second. Fails with the seed, the
        step and the last operations."""
        start = time.perf_counter()
        step = 0
        try:
            for e, base in enumerate(self.bases):
                self.files = {base: bytearray(self.bases[base]), f"new{e:04d}": bytearray()}
                (self.root / f"new{e:04d}").write_bytes(b"")
                self.fds = {n: os.open(self.root / n, os.O_RDWR) for n in self.files}
                try:
                    for _ in range(min(self.epoch, self.ops - step)):
                        self.step(step)
                        step += 1
                    self.check_all(step)
                finally:
                    for fd in self.fds.values():
                        os.close(fd)
                for name in self.files:  # the next epoch starts afresh; unlink is exercised
                    os.unlink(self.root / name)
        except (AssertionError, OSError) as e:
            pytest.fail(
                f"fsx seed {self.seed} failed at step {step} of {self.ops}: {e}\n"
                f"last operations:\n  " + "\n  ".join(self.history) + "\n"
                f"reproduce: VFS_FSX_SEED={self.seed} VFS_FSX_OPS={step + 1} "
                "pytest tests/test_fsx.py -k short",
                pytrace=True,
            )
        return step / (time.perf_counter() - start)

    def size(self) -> int:
        rng = self.rng
        r = rng.random()
        if r < 0.03:
            return 200_000 if r < 0.02 else (1 << 20) + 1 if r < 0.027 else BLOCK_SIZE + 1
        return rng.choice(SIZES)

    def offset(self, model: bytearray) -> int:
        """Anywhere up to 1 MiB past the end; often near a block boundary or the end."""
        rng = self.rng
        r = rng.random()
        if r < 0.25:  # around a block boundary
            return max(0, rng.randrange(0, 3) * BLOCK_SIZE + rng.randrange(-5000, 5000))
        if r < 0.4:  # around the end
            return max(0, len(model) + rng.randrange(-5000, 5000))
        return rng.randrange(0, len(model) + (1 << 20))

    def step(self, step: int) -> None:
        rng = self.rng
        name = rng.choice(sorted(self.files))
        model, fd = self.files[name], self.fds[name]
        op = rng.choices(
            ["write", "read", "truncate", "mmap", "fsync", "drop", "append", "reopen"],
            [40, 25, 6, 2, 1, 6, 3, 2],
        )[0]
        self.counts[op] += 1
        what = f"step {step}: {op} {name} (size {len(model)})"
        if op == "write":
            off = self.offset(model)
            data = rng.randbytes(self.size())
            what += f" {len(data)} bytes at {off}"
            self.history.append(what)
            assert os.pwrite(fd, data, off) == len(data), what
            self.put(model, off, data)
            lo, hi = max(0, off - 100), off + len(data) + 100
            assert os.pread(fd, hi - lo, lo) == bytes(model[lo:hi]), what + ": read back"
        elif op == "read":
            off = self.offset(model)
            size = self.size()
            what += f" {size} bytes at {off}"
            self.history.append(what)
            assert os.pread(fd, size, off) == bytes(model[off : off + size]), what
        elif op == "truncate":
            size = self.offset(model)
            what += f" to {size}"
            self.history.append(what)
            if rng.random() < 0.5:
                os.ftruncate(fd, size)
            else:
                os.truncate(self.root / name, size)  # setattr without a handle
            if size < len(model):
                del model[size:]
            else:
                model.extend(bytes(size - len(model)))
        elif op == "mmap":
            if not model:
                return
            off = rng.randrange(0, len(model))
            data = rng.randbytes(min(len(model) - off, self.size()))
            what += f" {len(data)} bytes at {off}"
            self.history.append(what)
            with mmap.mmap(fd, 0) as mm:
                assert mm[off : off + len(data)] == model[off : off + len(data)], what
                mm[off : off + len(data)] = data
                mm.flush()
            model[off : off + len(data)] = data
        elif op == "append":
            data = rng.randbytes(self.size())
            what += f" {len(data)} bytes"
            self.history.append(what)
            afd = os.open(self.root / name, os.O_WRONLY | os.O_APPEND)
            try:
                assert os.write(afd, data) == len(data), what
            finally:
                os.close(afd)
            model.extend(data)
        elif op == "reopen":  # release (size and mtime committed), then open again
            self.history.append(what)
            os.close(fd)
            self.fds[name] = fd = os.open(self.root / name, os.O_RDWR)
        elif op == "drop":  # the kernel's clean pages go: the next read asks the daemon
            self.history.append(what)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        else:
            self.history.append(what)
            os.fsync(fd)
        assert os.fstat(fd).st_size == len(model), what + ": size"

    def put(self, model: bytearray, off: int, data: bytes) -> None:
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off : off + len(data)] = data

    def check_all(self, step: int) -> None:
        """Both files, whole, through the daemon (the kernel's pages dropped first)."""
        for name, model in self.files.items():
            fd = self.fds[name]
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            self.history.append(f"step {step}: full comparison of {name}")
            got = (self.root / name).read_bytes()
            assert got == bytes(model), f"{name}: the whole file differs from the model"


def test_fsx_short(tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]) -> None:
    """A few thousand operations (a few seconds); ``VFS_FSX_SEED``, ``VFS_FSX_OPS``."""
    seed = int(os.environ.get("VFS_FSX_SEED", "9"))
    ops = int(os.environ.get("VFS_FSX_OPS", "3000"))
    fsx = Fsx(Setup(tmp_path, vfs_mount, local_store), seed, ops, epoch=1000)
    rate = fsx.run()
    print(f"fsx seed {seed}: {ops} operations at {rate:.0f}/s: {dict(fsx.counts)}")
    counters = stats(fsx.m)
    assert counters["req.read"] > ops // 50  # the daemon's read path was exercised
    assert counters["overlay.blocks.written"] > 0  # base blocks written whole
    assert counters.get("overlay.copyup.fetched", 0) + counters.get("fetch.blocks", 0) > 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fsx_long(tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]) -> None:
    """1,000,000 operations in epochs of 20,000 (``VFS_FSX_LONG_OPS`` to change), as issue 9
    asks: 7 min 2 s on the 2-core test machine (2,381 operations/s, 2026-12-03, with the
    VM's free page reporting off; earlier runs with it on measured 275 to 870/s)."""
    ops = int(os.environ.get("VFS_FSX_LONG_OPS", "1000000"))
    seed = int(os.environ.get("VFS_FSX_SEED", "1000000"))
    fsx = Fsx(Setup(tmp_path, vfs_mount, local_store), seed, ops, epoch=20_000)
    rate = fsx.run()
    print(f"fsx seed {seed}: {ops} operations at {rate:.0f}/s: {dict(fsx.counts)}")
