"""A hypothesis state machine over a writable mount: random namespace and data operations
(create, write, truncate, mkdir, rmdir, unlink, rename also over existing names, symlink,
chmod) applied to the mount and to a local directory, which must agree after every step:
the same names, kinds, sizes, contents, permission bits and symlink targets, and the same
errno for every operation that fails. At the end of each example, ``vfs commit``'s manifest
(to a ``file://`` store) holds exactly the regular files of the local directory that differ
from the base (symbolic links to files followed, as deadline does), with the mount's sizes
and mtimes, and the store holds their content.

One mount serves the whole test: its base manifest has a fresh copy of the same small
subtree for every example (``ex0000/``, ``ex0001/`` …), and each example works and commits
(``--output-dir exNNNN``) only there. Sized by ``VFS_SM_EXAMPLES`` and ``VFS_SM_STEPS``;
``VFS_SM_SHRINK=1`` shrinks a failure to a short example (minutes).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
from conftest import Mounted
from hypothesis import HealthCheck, Phase, assume, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from test_mount import make_manifest
from test_writable_mount import snapshot

from vfs.commit import CommitOptions, commit_overlay
from vfs.hashing import hash_bytes
from vfs.manifest import MANIFEST_VERSION_V2, decode_manifest, decode_manifest_v2
from vfs.manifest.v2 import symlink_target_problem
from vfs.storage import data_key

Mount = Callable[..., Mounted]

SUBTREE = {
    "a": b"base file a\n",
    "d/b": bytes(range(256)) * 300,
    "d/e/c": b"",
    "d/e/f": b"f" * 5000,
}
"""The base subtree every example starts from."""

SUBTREES = 400
"""Copies of the subtree in the base (hypothesis runs more examples while it shrinks a
failure; an example beyond the last copy is skipped)."""

NAMES = ["a", "b", "c", "d", "e", "f", "new"]
MODES = [0o644, 0o755, 0o600, 0o700, 0o444, 0o750]
TARGETS = ["a", "b", "d/b", "d/e", "d/e/f", "../a", "../b", "./c", "e/f", "missing", "new/x"]


def apply(root: Path, op: str, a: str, b: str, data: bytes, n: int) -> int:
    """Do ``op`` on ``root / a`` (and ``b``); the errno it failed with, or 0."""
    try:
        if op == "create":
            with open(root / a, "xb") as f:
                f.write(data)
        elif op == "write":
            fd = os.open(root / a, os.O_WRONLY)
            try:
                os.pwrite(fd, data, n)
            finally:
                os.close(fd)
        elif op == "append":
            with open(root / a, "ab") as f:
                f.write(data)
        elif op == "truncate":
            os.truncate(root / a, n)
        elif op == "mkdir":
            os.mkdir(root / a)
        elif op == "rmdir":
            os.rmdir(root / a)
        elif op == "unlink":
            os.unlink(root / a)
        elif op == "rename":
            os.rename(root / a, root / b)
        elif op == "symlink":
            os.symlink(b, root / a)
        elif op == "chmod":
            os.chmod(root / a, n)  # follows a symlink (Linux has no lchmod)
        else:
            raise AssertionError(op)
    except OSError as e:
        return e.errno or -1
    return 0


def expected_outputs(ref: Path, prefix: str) -> dict[str, tuple[str, int]]:
    """``{path: (xxh128, size)}`` of the files under ``ref`` whose content differs from the
    base subtree's at the same path (paths under ``prefix``). Symbolic links are followed
    to regular files like deadline's scan (format 2023-03-03 has no links); dangling ones,
    links to directories and out of the mount are not outputs. ``ref.parent`` mirrors the
    mount root: a link at an example's top that climbs out of it (``../a``) leads to a file
    there that an earlier example may have written through such a link, in both trees."""
    out: dict[str, tuple[str, int]] = {}
    inside = os.path.realpath(ref.parent) + "/"
    for dirpath, _dirs, files in os.walk(ref):
        for name in files:
            p = Path(dirpath) / name
            real = os.path.realpath(p)
            if not real.startswith(inside) or not os.path.isfile(real):
                continue
            rel = str(p.relative_to(ref))
            data = p.read_bytes()
            if SUBTREE.get(rel) != data:
                out[f"{prefix}/{rel}"] = (hash_bytes(data), len(data))
    return out


Entry = tuple[object, ...]


def expected_diff(ref: Path, prefix: str) -> set[Entry]:
    """The 2025-12-04-beta diff of ``ref`` against the base subtree (paths under
    ``prefix``): ``("file", path, xxh128, size, runnable)`` for files whose content differs
    or whose execute bit is set (the base has none), ``("link", path, target)`` for every
    symbolic link whose target the format accepts (the base has none; a link moved with its
    directory can end up climbing above the mount root: not recorded),
    ``("deleted", path)`` for base files that are neither a file nor a recorded link now."""
    tree = snapshot(ref)
    out: set[Entry] = set()
    recorded: set[str] = set()
    for rel, v in tree.items():
        path = f"{prefix}/{rel}"
        if v[0] == "link":
            assert isinstance(v[1], str)
            if symlink_target_problem(path, v[1]) is None:
                out.add(("link", path, v[1]))
                recorded.add(rel)
        elif v[0] == "file":
            _, mode, size, data = v
            assert isinstance(mode, int) and isinstance(data, bytes)
            runnable = bool(mode & stat.S_IXUSR)
            if SUBTREE.get(rel) != data or runnable:
                out.add(("file", path, hash_bytes(data), size, runnable))
    for rel in SUBTREE:
        if tree.get(rel, ("none",))[0] != "file" and rel not in recorded:
            out.add(("deleted", f"{prefix}/{rel}"))
    return out


def test_random_operations_agree_with_a_local_directory(
    tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]
) -> None:
    files = {f"ex{i:04d}/{p}": data for i in range(SUBTREES) for p, data in SUBTREE.items()}
    manifest = make_manifest(tmp_path, files, local_store[0])
    overlay = tmp_path / "overlay"
    m = vfs_mount(tmp_path / "mnt", [manifest], local_store[1], "--writable", "--overlay-dir",
                  str(overlay))  # fmt: skip
    counter = iter(range(SUBTREES))

    class Machine(RuleBasedStateMachine):
        """One example: ``exNNNN/`` of the mount against ``ref/exNNNN``."""

        def __init__(self) -> None:
            super().__init__()
            self.ok = False

        @initialize()
        def start(self) -> None:
            number = next(counter, None)
            assume(number is not None)
            self.prefix = f"ex{number:04d}"
            self.mnt = m.path / self.prefix
            self.ref = tmp_path / "ref" / self.prefix
            for path, data in SUBTREE.items():
                (self.ref / path).parent.mkdir(parents=True, exist_ok=True)
                (self.ref / path).write_bytes(data)
            self.ok = True

        def paths(self) -> list[str]:
            return sorted(snapshot(self.ref))

        def path(self, data: st.DataObject, existing: bool) -> str:
            """An existing path of the local tree, or a name in one of its directories."""
            tree = snapshot(self.ref)
            if existing and tree:
                return data.draw(st.sampled_from(sorted(tree)), label="path")
            dirs = ["", *sorted(p for p, v in tree.items() if v[0] == "dir")]
            d = data.draw(st.sampled_from(dirs), label="dir")
            name = data.draw(st.sampled_from(NAMES), label="name")
            return f"{d}/{name}" if d else name

        def do(self, op: str, a: str, b: str = "", data: bytes = b"", n: int = 0) -> None:
            self.ok = False
            expected = apply(self.ref, op, a, b, data, n)
            got = apply(self.mnt, op, a, b, data, n)
            assert got == expected, (
                f"{op} {a!r} {b!r}: {errno.errorcode.get(got, got)} on the mount, "
                f"{errno.errorcode.get(expected, expected)} locally"
            )
            self.ok = True

        @rule(data=st.data(), content=st.binary(max_size=3000))
        def create(self, data: st.DataObject, content: bytes) -> None:
            self.do("create", self.path(data, existing=data.draw(st.booleans())), data=content)

        @rule(
            data=st.data(),
            content=st.binary(min_size=1, max_size=3000),
            off=st.sampled_from([0, 1, 100, 4095, 4096, 70_000]),
        )
        def write(self, data: st.DataObject, content: bytes, off: int) -> None:
            self.do("write", self.path(data, existing=True), data=content, n=off)

        @rule(data=st.data(), content=st.binary(min_size=1, max_size=3000))
        def append(self, data: st.DataObject, content: bytes) -> None:
            self.do("append", self.path(data, existing=True), data=content)

        @rule(data=st.data(), size=st.sampled_from([0, 1, 10, 4096, 100_000]))
        def truncate(self, data: st.DataObject, size: int) -> None:
            self.do("truncate", self.path(data, existing=True), n=size)

        @rule(data=st.data())
        def mkdir(self, data: st.DataObject) -> None:
            self.do("mkdir", self.path(data, existing=data.draw(st.booleans())))

        @rule(data=st.data())
        def rmdir(self, data: st.DataObject) -> None:
            self.do("rmdir", self.path(data, existing=True))

        @rule(data=st.data())
        def unlink(self, data: st.DataObject) -> None:
            self.do("unlink", self.path(data, existing=True))

        @rule(data=st.data())
        def rename(self, data: st.DataObject) -> None:
            src = self.path(data, existing=data.draw(st.integers(0, 9)) > 0)
            dst = self.path(data, existing=data.draw(st.booleans()))
            self.do("rename", src, dst)

        @rule(data=st.data())
        def move_directory(self, data: st.DataObject) -> None:
            """A directory (holding base files never opened) to a new name, or over one."""
            dirs = sorted(p for p, v in snapshot(self.ref).items() if v[0] == "dir")
            if dirs:
                src = data.draw(st.sampled_from(dirs), label="directory")
                self.do("rename", src, self.path(data, existing=data.draw(st.booleans())))

        @rule(data=st.data(), link=st.sampled_from(TARGETS))
        def symlink(self, data: st.DataObject, link: str) -> None:
            self.do("symlink", self.path(data, existing=data.draw(st.booleans())), link)

        @rule(data=st.data(), mode=st.sampled_from(MODES))
        def chmod(self, data: st.DataObject, mode: int) -> None:
            self.do("chmod", self.path(data, existing=True), n=mode)

        @rule(data=st.data())
        def link_to_file(self, data: st.DataObject) -> None:
            """A symbolic link (relative target) to a regular file of the tree."""
            tree = snapshot(self.ref)
            files = sorted(p for p, v in tree.items() if v[0] == "file")
            if files:
                target = data.draw(st.sampled_from(files), label="file")
                link = self.path(data, existing=False)
                text = os.path.relpath(target, os.path.dirname(link) or ".")
                self.do("symlink", link, text)

        @invariant()
        def same_tree(self) -> None:
            if not self.ok:
                return
            self.ok = False
            assert snapshot(self.mnt) == snapshot(self.ref)
            self.ok = True

        def teardown(self) -> None:
            if not self.ok:  # a step failed: its error is the one to report
                return
            out = tmp_path / f"{self.prefix}.manifest"
            if int(self.prefix[2:]) % 2:  # every other example: a 2025-12-04-beta diff
                self.check_v2(out)
                shutil.rmtree(self.ref)
                return
            commit_overlay(str(overlay), CommitOptions([self.prefix], output_file=str(out)))
            want = expected_outputs(self.ref, self.prefix)
            if not want:
                assert not out.exists(), "a commit with nothing to commit wrote a manifest"
                return
            got = decode_manifest(out.read_bytes(), source=str(out))
            assert {p.path: (p.hash, p.size) for p in got.paths} == want
            for p in got.paths:
                mtime_us = (m.path / p.path).stat().st_mtime_ns // 1000  # a link's file
                assert p.mtime == mtime_us, p.path
                stored = local_store[0] / data_key(p.hash)
                assert stored.read_bytes() == (self.ref.parent / p.path).read_bytes(), p.path
            shutil.rmtree(self.ref)

        def check_v2(self, out: Path) -> None:
            """The v2 diff ``vfs commit`` writes is the local diff: files changed, execute
            bits, links, deletions."""
            commit_overlay(str(overlay), CommitOptions([self.prefix], MANIFEST_VERSION_V2,
                                                       output_file=str(out)))  # fmt: skip
            want = expected_diff(self.ref, self.prefix)
            if not want:
                assert not out.exists(), "a commit with nothing to commit wrote a manifest"
                return
            diff = decode_manifest_v2(out.read_bytes())
            got: set[Entry] = set()
            for f in diff.files:
                if f.deleted:
                    got.add(("deleted", f.path))
                elif f.symlink_target is not None:
                    got.add(("link", f.path, f.symlink_target))
                else:
                    got.add(("file", f.path, f.hash, f.size, f.runnable))
                    assert f.mtime == (m.path / f.path).lstat().st_mtime_ns // 1000, f.path
            for d in diff.dirs:  # a base directory gone: its base files are deleted
                if d.deleted:
                    under = d.path.removeprefix(self.prefix + "/") + "/"
                    got |= {("deleted", f"{self.prefix}/{p}") for p in SUBTREE
                            if p.startswith(under)}  # fmt: skip
            assert got == want

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=int(os.environ.get("VFS_SM_EXAMPLES", "60")),
            stateful_step_count=int(os.environ.get("VFS_SM_STEPS", "30")),
            deadline=None,
            database=None,
            print_blob=True,
            # Shrinking a failure takes minutes here (up to hypothesis's 300 s cap): off
            # unless asked for, so a failure is reported with its steps before the timeout.
            phases=[Phase.explicit, Phase.reuse, Phase.generate]
            + ([Phase.shrink] if os.environ.get("VFS_SM_SHRINK") == "1" else []),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
