"""``vfs manifest snapshot|diff|merge|show|upload|download`` against deadline's own API.

The official ``deadline`` package (0.60.10, job attachments 0.1.5) is the oracle. It runs
once per module in a subprocess (tests/compat/deadline_oracle.py ``batch``) with a throw-away
``HOME``: every diff, ``snapshot --diff`` and merge below is computed by deadline's
``_manifest_diff`` / ``_manifest_snapshot`` / ``_manifest_merge`` on the very same files,
after every tree has been built and changed, so both sides read identical trees.

Our CLI runs in process through click's ``CliRunner`` for the big table (a ``vfs``
subprocess costs ~1 s of imports), and as a real ``vfs`` subprocess in the tests that check
the entry point itself (exit codes, warnings on stderr, S3 through moto).

For every case of the TABLE:

* ``vfs manifest diff --json`` equals deadline's ``ManifestDiff`` (as sorted lists; deadline's
  order is glob order), in fast mode and with ``--force-rehash``;
* ``vfs manifest snapshot --diff BASE`` writes the same bytes as deadline's
  ``_manifest_snapshot(diff=BASE)`` (or both write nothing), with and without
  ``--force-rehash``, under the same file name apart from the timestamp;
* the expected diff is spelled out too, so that a case cannot pass vacuously.

All mtimes are set with ``os.utime(ns=…)`` to 2020, so hash caches see settled files.
Deliberate differences (documented in vfs/snapshot.py): vfs never follows a link out of the
root (skipped with a warning); format 2025-12-04-beta only with ``--manifest-version``.
"""

from __future__ import annotations

import datetime
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result
from conftest import run_vfs

from vfs.cli.main import cli
from vfs.hashing import hash_bytes, hash_string
from vfs.manifest import (
    Manifest,
    ManifestPath,
    ManifestV2,
    apply_diff,
    decode_any_manifest,
    decode_manifest,
    encode_any_manifest,
    encode_manifest,
)
from vfs.snapshot import snapshot_directory, snapshot_directory_v2
from vfs.storage import manifest_metadata, output_manifest_path

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ORACLE = Path(__file__).parent / "compat" / "deadline_oracle.py"
NAME_RE = re.compile(
    r"^(?P<name>.+)-(?P<hash>[0-9a-f]{32})-(?P<ts>\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d)\.manifest$"
)
SEC = 1_000_000_000
T0 = 1_600_000_000 * SEC + 123_456_789  # 2020-09-13, with sub-microsecond nanoseconds
V2 = "2025-12-04-beta"

# -- helpers ----------------------------------------------------------------------------------


def oracle(*args: str, home: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run deadline_oracle.py in the venv's python with a throw-away HOME; return its JSON."""
    home.mkdir(parents=True, exist_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")},
        "HOME": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
        **(env or {}),
    }
    result = subprocess.run(
        [sys.executable, str(ORACLE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"deadline oracle {args[0]} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return dict(json.loads(result.stdout.splitlines()[-1]))


def vfs(*args: str, exit_code: int = 0) -> Result:
    """Run ``vfs ARGS`` in process; fail with its output unless it exits ``exit_code``.

    The root logger is restored afterwards (``vfs`` points it at the runner's stderr).
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(cli, list(args), prog_name="vfs")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    if result.exit_code != exit_code:
        tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        raise AssertionError(
            f"vfs {' '.join(args)} exited {result.exit_code}, not {exit_code}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{tb}"
        )
    if exit_code == 0:
        assert result.exception is None, result.exception
    return result


def vfs_json(*args: str) -> Any:
    """``vfs ARGS --json`` in process, its stdout decoded."""
    return json.loads(vfs(*args, "--json").stdout)


def split_name(path: str) -> tuple[str, str, datetime.datetime]:
    """``(name, root hash, timestamp)`` of a ``{name}-{hash}-{ts}.manifest`` file name."""
    m = NAME_RE.match(os.path.basename(path))
    assert m, f"unexpected manifest file name {os.path.basename(path)!r}"
    return m["name"], m["hash"], datetime.datetime.strptime(m["ts"], "%Y-%m-%dT%H-%M-%S")


def put(root: Path, rel: str, data: bytes, mtime_ns: int) -> Path:
    """Write ``root/rel`` with ``data`` and set its mtime (and atime) to ``mtime_ns``."""
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, ns=(mtime_ns, mtime_ns))
    return p


def mtime_ns(p: Path) -> int:
    return os.stat(p).st_mtime_ns


def set_mtime(p: Path, ns: int) -> None:
    os.utime(p, ns=(ns, ns))


def sorted_diff(d: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: sorted(d[k]) for k in ("new", "modified", "deleted")}


def D(
    new: tuple[str, ...] = (), modified: tuple[str, ...] = (), deleted: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """An expected diff."""
    return sorted_diff({"new": list(new), "modified": list(modified), "deleted": list(deleted)})


NOTHING = D()

# -- the TABLE --------------------------------------------------------------------------------

BASE_FILES: dict[str, bytes] = {
    "a.txt": b"alpha\n",
    "b.bin": bytes(range(256)) * 40,  # > the 8 KiB hash buffer
    "empty.dat": b"",
    "sub/c.txt": b"gamma\n",
    "sub/deep/d.txt": b"delta\n",
    "skip/s.txt": b"skipped\n",
    "Upper.TXT": b"upper\n",
}
ALL_BASE = tuple(BASE_FILES)


def base_tree(root: Path) -> None:
    for i, (rel, data) in enumerate(BASE_FILES.items()):
        put(root, rel, data, T0 + i * SEC)


def with_links(root: Path) -> None:
    """The base tree plus a relative and an absolute link to a file and a link to a dir."""
    base_tree(root)
    (root / "link.txt").symlink_to("a.txt")
    (root / "abs-link.txt").symlink_to(root / "sub" / "c.txt")
    (root / "linkdir").symlink_to("sub")


# What format 2023-03-03 records of that tree: links are followed, the directory link too.
LINKED = (*ALL_BASE, "link.txt", "abs-link.txt", "linkdir/c.txt", "linkdir/deep/d.txt")


def nothing(root: Path) -> None:
    pass


def shift(rel: str, delta_ns: int) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        p = root / rel
        set_mtime(p, mtime_ns(p) + delta_ns)

    return change


def rewrite(rel: str, data: bytes, keep_mtime: bool = True) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        p = root / rel
        before = mtime_ns(p)
        p.write_bytes(data)
        set_mtime(p, before if keep_mtime else before + 7 * SEC)

    return change


def add(rel: str, data: bytes = b"new\n") -> Callable[[Path], None]:
    def change(root: Path) -> None:
        put(root, rel, data, T0 + 100 * SEC)

    return change


def remove(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def link(rel: str, target: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).symlink_to(target)


def steps(*changes: Callable[[Path], None]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        for c in changes:
            c(root)

    return change


def delete_all(root: Path) -> None:
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def file_to_dir(root: Path) -> None:
    (root / "a.txt").unlink()
    put(root, "a.txt/inner.txt", b"now a directory\n", T0 + 50 * SEC)


def case_rename(root: Path) -> None:
    (root / "Upper.TXT").rename(root / "upper.txt")


def dot_files(root: Path) -> None:
    put(root, ".hidden", b"dot file\n", T0)
    put(root, ".cfg/x.txt", b"under a dot dir\n", T0)
    put(root, "sub/.dot/y.txt", b"under a nested dot dir\n", T0)
    put(root, "sub/.z", b"nested dot file\n", T0)


def dangling(root: Path) -> None:
    (root / "dangle.txt").symlink_to("nowhere")
    (root / "loop.txt").symlink_to("loop.txt")
    (root / "sub" / "c.txt").unlink()
    (root / "sub" / "c.txt").symlink_to("gone")


def retarget(root: Path) -> None:
    (root / "link.txt").unlink()
    (root / "link.txt").symlink_to("b.bin")


def non_ascii_tree(root: Path) -> None:
    files = {"é.txt": b"e\n", "日本/x.txt": b"x\n", "a.txt": b"a\n", "😀.txt": b"s\n"}
    for i, (rel, data) in enumerate(files.items()):
        put(root, rel, data, T0 + i * SEC)


IE = '{"include": ["**/*.txt"], "exclude": ["skip/**"]}'
GLOB_CHANGES = steps(
    shift("a.txt", 5 * SEC),
    shift("b.bin", 5 * SEC),
    add("skip/n.txt"),
    add("sub/n.txt"),
    add("sub/n.bin"),
)
TXT_NOT_SKIP = D(
    new=("sub/n.txt",),
    modified=("a.txt",),
    deleted=("b.bin", "empty.dat", "skip/s.txt", "Upper.TXT"),
)

# Float quirk: trunc(st_mtime_ns / 1000) in binary floating point. 1.7e15 µs has a 0.25 µs
# resolution, so X.999 µs rounds up to X+1; with the base saying X-1 the distance is 2 (>1,
# modified) although floor arithmetic would give 1.
FLOAT_NS = 1_700_000_000_123_456_999
# Pre-1970: the manifest holds floor(ns/1000) but the fast diff truncates toward zero.
PRE1970_NS = -1_500_000_001


@dataclass(frozen=True)
class Case:
    """One row of the table: a tree, its base manifest, a change, the flags, the answer."""

    id: str
    change: Callable[[Path], None] = nothing
    fast: dict[str, list[str]] = field(default_factory=lambda: NOTHING)
    rehash: dict[str, list[str]] | None = None  # None: same as fast
    build: Callable[[Path], None] = base_tree
    root_name: str = "root"
    root_suffix: str = ""  # appended to the root argument (e.g. a trailing "/")
    base_include: tuple[str, ...] = ()  # globs the base manifest is made with
    base_mtimes: tuple[tuple[str, int], ...] = ()  # (path, µs) edits to the base manifest
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    ie: str | None = None
    ie_file: bool = False

    @property
    def expected_rehash(self) -> dict[str, list[str]]:
        return self.fast if self.rehash is None else self.rehash


TABLE = [
    Case("unchanged"),
    Case("mtime-only", shift("a.txt", 5 * SEC), D(modified=("a.txt",)), NOTHING),
    Case("mtime-plus-1us", shift("a.txt", 1000)),
    Case("mtime-minus-1us", shift("a.txt", -1000)),
    Case("mtime-plus-2us", shift("a.txt", 2000), D(modified=("a.txt",)), NOTHING),
    Case("mtime-minus-2us", shift("a.txt", -2000), D(modified=("a.txt",)), NOTHING),
    Case("mtime-sub-us", shift("a.txt", 200)),  # .789 µs -> .989 µs: same microsecond
    Case(
        "mtime-plus-1.211us",  # n.789 µs -> (n+2).000 µs: whole microseconds 2 apart
        shift("a.txt", 1_211),
        D(modified=("a.txt",)),
        NOTHING,
    ),
    Case(
        "mtime-float-rounding",
        nothing,
        D(modified=("a.txt",)),
        NOTHING,
        build=steps(base_tree, lambda r: set_mtime(r / "a.txt", FLOAT_NS)),
        base_mtimes=(("a.txt", FLOAT_NS // 1000 - 1),),
    ),
    Case(
        "mtime-pre-1970",
        nothing,
        D(modified=("a.txt",)),
        NOTHING,
        build=steps(base_tree, lambda r: set_mtime(r / "a.txt", PRE1970_NS)),
        base_mtimes=(("a.txt", PRE1970_NS // 1000 - 1),),
    ),
    Case(
        "mtime-pre-1970-floor",  # base = floor; trunc is 1 µs away: unchanged
        nothing,
        build=steps(base_tree, lambda r: set_mtime(r / "a.txt", PRE1970_NS)),
    ),
    Case("size-change", rewrite("a.txt", b"alpha, longer\n"), D(modified=("a.txt",))),
    Case("size-to-zero", rewrite("sub/c.txt", b""), D(modified=("sub/c.txt",))),
    Case(
        "same-size-new-content",  # only a hash comparison can see it
        rewrite("a.txt", b"ALPHA\n"),
        NOTHING,
        D(modified=("a.txt",)),
    ),
    Case(
        "content-and-mtime",
        rewrite("b.bin", bytes(range(255, -1, -1)) * 40, keep_mtime=False),
        D(modified=("b.bin",)),
    ),
    Case(
        "new-file",
        steps(add("z.txt"), add("sub/new/e.txt"), add("café/é.txt")),
        D(new=("z.txt", "sub/new/e.txt", "café/é.txt")),
    ),
    Case("deleted-file", remove("sub/c.txt"), D(deleted=("sub/c.txt",))),
    Case("all-deleted", delete_all, D(deleted=ALL_BASE)),
    Case("file-becomes-dir", file_to_dir, D(new=("a.txt/inner.txt",), deleted=("a.txt",))),
    Case("case-rename", case_rename, D(new=("upper.txt",), deleted=("Upper.TXT",))),
    Case("dot-files-ignored", dot_files),
    Case(
        "dot-file-in-base",  # recorded by an explicit glob, invisible to the default globs
        build=steps(base_tree, lambda r: put(r, ".hidden", b"dot\n", T0)),
        base_include=("**/*", ".hidden"),
        fast=D(deleted=(".hidden",)),
    ),
    Case(
        "dot-files-included",
        dot_files,
        D(new=(".hidden", "sub/.z")),
        include=("**/*", "**/.*"),
    ),
    Case(
        "symlinked-file",
        steps(shift("a.txt", 5 * SEC), link("link2.txt", "sub/deep/d.txt")),
        D(new=("link2.txt",), modified=("a.txt", "link.txt")),
        NOTHING | {"new": ["link2.txt"]},
        build=with_links,
    ),
    Case(
        "symlinked-dir",
        add("sub/f.txt"),
        D(new=("sub/f.txt", "linkdir/f.txt")),
        build=with_links,
    ),
    Case(
        "symlink-retargeted",
        retarget,
        D(modified=("link.txt",)),
        build=with_links,
    ),
    Case(
        "symlink-target-deleted",
        remove("sub/c.txt"),
        D(deleted=("sub/c.txt", "abs-link.txt", "linkdir/c.txt")),
        build=with_links,
    ),
    Case("dangling-link", dangling, D(deleted=("sub/c.txt",))),
    Case(
        "non-ascii-root",
        steps(shift("é.txt", 5 * SEC), add("naïve/ü.txt"), remove("日本/x.txt")),
        D(new=("naïve/ü.txt",), modified=("é.txt",), deleted=("日本/x.txt",)),
        NOTHING | {"new": ["naïve/ü.txt"], "deleted": ["日本/x.txt"]},
        build=non_ascii_tree,
        root_name="café-root",
    ),
    Case(
        "glob-metachar-root",  # the root is globbed too: [1] is a character class
        shift("a.txt", 5 * SEC),
        D(deleted=ALL_BASE),
        root_name="root[1]",
    ),
    Case(
        "root-trailing-slash",
        steps(shift("a.txt", 5 * SEC), add("n.txt")),
        D(new=("n.txt",), modified=("a.txt",)),
        D(new=("n.txt",)),
        root_suffix="/",
    ),
    Case(
        "include-exclude",
        GLOB_CHANGES,
        TXT_NOT_SKIP,
        TXT_NOT_SKIP | {"modified": []},
        include=("**/*.txt",),
        exclude=("skip/**",),
    ),
    Case(
        "exclude-only",
        GLOB_CHANGES,
        D(new=("skip/n.txt", "sub/n.txt"), modified=("a.txt",), deleted=("b.bin",)),
        D(new=("skip/n.txt", "sub/n.txt"), deleted=("b.bin",)),
        exclude=("**/*.bin",),
    ),
    Case(
        "ie-json",
        GLOB_CHANGES,
        TXT_NOT_SKIP,
        TXT_NOT_SKIP | {"modified": []},
        ie=IE,
    ),
    Case(
        "ie-file",
        GLOB_CHANGES,
        TXT_NOT_SKIP,
        TXT_NOT_SKIP | {"modified": []},
        ie=IE,
        ie_file=True,
    ),
    Case(
        "ie-include-only",
        GLOB_CHANGES,
        D(new=("sub/n.bin", "sub/n.txt"), deleted=tuple(p for p in ALL_BASE if "sub/" not in p)),
        ie='{"include": ["sub/**"]}',
    ),
    Case(
        "ie-exclude-only",
        GLOB_CHANGES,
        D(new=("skip/n.txt", "sub/n.txt"), modified=("a.txt",), deleted=("b.bin",)),
        D(new=("skip/n.txt", "sub/n.txt"), deleted=("b.bin",)),
        ie='{"exclude": ["**/*.bin"]}',
    ),
    Case(
        "ie-empty-include",  # an empty include list selects nothing
        GLOB_CHANGES,
        D(deleted=ALL_BASE),
        ie='{"include": [], "exclude": []}',
    ),
    Case(
        "ie-include-string",  # deadline iterates a string: one-character globs, "*" matches
        GLOB_CHANGES,
        D(modified=("a.txt", "b.bin"), deleted=("skip/s.txt", "sub/c.txt", "sub/deep/d.txt")),
        D(deleted=("skip/s.txt", "sub/c.txt", "sub/deep/d.txt")),
        ie='{"include": "**/*.txt"}',
    ),
    Case(
        "ie-ignored-with-include",  # -i wins over -ie, in deadline and in vfs
        GLOB_CHANGES,
        D(
            new=("sub/n.bin",),
            modified=("b.bin",),
            deleted=tuple(p for p in ALL_BASE if p != "b.bin"),
        ),
        D(new=("sub/n.bin",), deleted=tuple(p for p in ALL_BASE if p != "b.bin")),
        include=("**/*.bin",),
        ie=IE,
    ),
]

MODES = ("fast", "rehash")


@dataclass
class Prepared:
    """A case's tree after the change, its base manifest, and what deadline made of it."""

    case: Case
    dir: Path
    root: str
    base: str
    ie: str | None
    deadline: dict[str, dict[str, Any]] = field(default_factory=dict)

    def glob_args(self) -> list[str]:
        args: list[str] = []
        for g in self.case.include:
            args += ["-i", g]
        for g in self.case.exclude:
            args += ["-e", g]
        if self.ie is not None:
            args += ["-ie", self.ie]
        return args

    def glob_kwargs(self) -> dict[str, Any]:
        return {
            "include": list(self.case.include) or None,
            "exclude": list(self.case.exclude) or None,
            "include_exclude_config": self.ie,
        }


@dataclass
class Merge:
    """A merge of manifest files, and what deadline made of it."""

    root: str
    files: list[str]
    name: str | None
    dir: Path
    deadline: dict[str, Any] = field(default_factory=dict)


@dataclass
class OracleRuns:
    """Everything deadline computed for this module, in one subprocess."""

    started: datetime.datetime
    cases: dict[str, Prepared]
    merges: dict[str, Merge]
    escape: dict[str, Any]
    escape_root: Path


def prepare_case(case: Case, top: Path) -> Prepared:
    d = top / case.id
    tree = d / case.root_name
    # A root whose name globs to nothing can only have its base made under another name.
    plain = d / "plain-root" if glob.has_magic(case.root_name) else tree
    plain.mkdir(parents=True)
    case.build(plain)
    base = snapshot_directory(str(plain), list(case.base_include) or None)
    assert base is not None
    if plain != tree:
        plain.rename(tree)
    edits = dict(case.base_mtimes)
    for p in base.paths:
        if p.path in edits:
            p.mtime = edits[p.path]
    if case.build is with_links:
        assert sorted(p.path for p in base.paths) == sorted(LINKED)
    base_file = d / "base.manifest"
    base_file.write_bytes(encode_manifest(base))
    case.change(tree)
    ie = case.ie
    if ie is not None and case.ie_file:
        (d / "ie.json").write_text(ie, encoding="utf-8")
        ie = str(d / "ie.json")
    return Prepared(case, d, str(tree) + case.root_suffix, str(base_file), ie)


def merge_inputs(top: Path) -> dict[str, Merge]:
    """Manifest files to merge: overlapping paths, astral and full-width names (UTF-16
    order), a non-canonical rendering with a wrong totalSize."""
    d = top / "merge"
    d.mkdir()

    def entry(path: str, content: bytes, mtime: int) -> ManifestPath:
        return ManifestPath(path, hash_bytes(content), len(content), mtime)

    def write(name: str, paths: list[ManifestPath]) -> str:
        f = d / name
        f.write_bytes(encode_manifest(Manifest(paths=paths)))
        return str(f)

    m1 = write(
        "one-0123-2024-01-01T00-00-00.manifest",
        [entry("a.txt", b"a1", 1), entry("b.txt", b"b1", 2), entry("😀.txt", b"e1", 3)],
    )
    m2 = write(
        "two.manifest",
        [entry("b.txt", b"b2 longer", 20), entry("c/d.txt", b"d2", 21), entry("ａ.txt", b"f", 22)],
    )
    m3 = write(
        "three.manifest",
        [
            entry("a.txt", b"a3 much longer", 30),
            entry("c/d.txt", b"", 31),
            entry("Z.txt", b"z", 32),
        ],
    )
    # Non-canonical: pretty-printed, keys and entries reversed, a wrong totalSize (kept when
    # a single manifest is merged, recomputed otherwise).
    doc = json.loads(Path(m2).read_bytes())
    doc["totalSize"] = 12345
    doc["paths"] = [{k: e[k] for k in reversed(e)} for e in reversed(doc["paths"])]
    loose = d / "loose.manifest"
    loose.write_text(json.dumps({k: doc[k] for k in reversed(doc)}, indent=2), encoding="ascii")
    root = str(top / "merge-root")
    return {
        "two": Merge(root, [m1, m2], None, d / "out-two"),
        "three": Merge(root, [m1, m2, m3], "merged", d / "out-three"),
        "three-reversed": Merge(root, [m3, m2, m1], "merged", d / "out-three-reversed"),
        "loose-with-others": Merge(root, [str(loose), m3], None, d / "out-loose-with-others"),
        "single-loose": Merge("/mnt/café/proj", [str(loose)], None, d / "out-single-loose"),
    }


def escape_tree(top: Path) -> Path:
    """A root with links leading out of it (vfs skips them; deadline follows them)."""
    outside = top / "escape" / "outside"
    put(outside, "secret.txt", b"outside the root\n", T0)
    put(outside, "dir/inner.txt", b"also outside\n", T0)
    root = top / "escape" / "root"
    put(root, "in.txt", b"inside\n", T0)
    (root / "out.txt").symlink_to(outside / "secret.txt")
    (root / "rel-out.txt").symlink_to("../outside/secret.txt")
    (root / "outdir").symlink_to(outside / "dir")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> OracleRuns:
    """Build every tree, make every base manifest, apply every change, then let deadline
    compute every diff, snapshot and merge in one subprocess."""
    top = tmp_path_factory.mktemp("cli-manifest")
    started = datetime.datetime.now().replace(microsecond=0)
    specs: list[dict[str, Any]] = []
    slots: list[Callable[[dict[str, Any]], None]] = []
    cases: dict[str, Prepared] = {}
    for case in TABLE:
        prep = cases[case.id] = prepare_case(case, top)
        for mode in MODES:
            rehash = mode == "rehash"
            specs.append(
                {
                    "op": "diff",
                    "manifest": prep.base,
                    "root": prep.root,
                    **prep.glob_kwargs(),
                    "force_rehash": rehash,
                    "cache_dir": str(prep.dir / f"deadline-cache-diff-{mode}"),
                }
            )
            slots.append(lambda r, p=prep, m=mode: p.deadline.__setitem__(f"diff-{m}", r))
            specs.append(
                {
                    "op": "snapshot",
                    "root": prep.root,
                    "destination": str(prep.dir / f"deadline-snapshot-{mode}"),
                    "name": None,
                    **prep.glob_kwargs(),
                    "diff": prep.base,
                    "force_rehash": rehash,
                    "hash_cache_dir": str(prep.dir / f"deadline-cache-snapshot-{mode}"),
                }
            )
            slots.append(lambda r, p=prep, m=mode: p.deadline.__setitem__(f"snapshot-{m}", r))
    merges = merge_inputs(top)
    for merge in merges.values():
        specs.append(
            {
                "op": "merge",
                "root": merge.root,
                "manifest_files": merge.files,
                "destination": str(merge.dir / "deadline"),
                "name": merge.name,
            }
        )
        slots.append(lambda r, m=merge: m.deadline.update(r))
    escape_root = escape_tree(top)
    escape: dict[str, Any] = {}
    specs.append(
        {
            "op": "snapshot",
            "root": str(escape_root),
            "destination": str(top / "escape" / "deadline"),
            "name": None,
            "hash_cache_dir": str(top / "escape" / "deadline-cache"),
        }
    )
    slots.append(escape.update)

    spec_file = top / "oracle-spec.json"
    spec_file.write_text(json.dumps(specs), encoding="utf-8")
    out_file = top / "oracle-out.json"
    got = oracle("batch", str(spec_file), str(out_file), home=top / "home")
    results = json.loads(out_file.read_text(encoding="utf-8"))
    assert got["count"] == len(results) == len(specs)
    for slot, result in zip(slots, results, strict=True):
        slot(result)
    return OracleRuns(started, cases, merges, escape, escape_root)


# -- the table: diff and snapshot --diff ------------------------------------------------------


@pytest.mark.parametrize("case_id", [c.id for c in TABLE])
def test_diff_matches_deadline(runs: OracleRuns, case_id: str) -> None:
    prep = runs.cases[case_id]
    for mode in MODES:
        theirs = prep.deadline[f"diff-{mode}"]
        assert "error" not in theirs, theirs
        args = ["manifest", "diff", "--manifest", prep.base, "--root", prep.root]
        args += [*prep.glob_args(), "--hash-cache-dir", str(prep.dir / f"vfs-cache-diff-{mode}")]
        if mode == "rehash":
            args.append("--force-rehash")
        ours = vfs_json(*args)
        assert set(ours) == {"new", "modified", "deleted"}
        for key in ours:
            assert ours[key] == sorted(ours[key]), f"vfs lists {key} unsorted"
        expected = prep.case.fast if mode == "fast" else prep.case.expected_rehash
        assert sorted_diff(theirs) == expected, f"deadline ({mode}) is not what the case says"
        assert sorted_diff(ours) == sorted_diff(theirs), mode


@pytest.mark.parametrize("case_id", [c.id for c in TABLE])
def test_snapshot_diff_matches_deadline(runs: OracleRuns, case_id: str) -> None:
    prep = runs.cases[case_id]
    for mode in MODES:
        theirs = prep.deadline[f"snapshot-{mode}"]
        assert "error" not in theirs, theirs
        dest = prep.dir / f"vfs-snapshot-{mode}"
        args = ["manifest", "snapshot", "--root", prep.root, "-d", str(dest), "--diff", prep.base]
        args += [*prep.glob_args(), "--hash-cache-dir", str(prep.dir / f"vfs-cache-snap-{mode}")]
        if mode == "rehash":
            args.append("--force-rehash")
        ours = vfs_json(*args)
        assert ours["root"] == prep.root
        # What the case says changed (deleted files cannot be expressed in format 2023-03-03).
        diff = prep.case.fast if mode == "fast" else prep.case.expected_rehash
        changed = sorted(diff["new"] + diff["modified"])
        if theirs["manifest"] is None:
            assert not changed
            assert ours["manifest"] is None, f"deadline wrote nothing ({mode}), vfs did"
            assert not dest.exists() or not any(dest.iterdir())
            continue
        assert ours["manifest"] is not None, f"deadline wrote a manifest ({mode}), vfs did not"
        their_bytes = Path(theirs["manifest"]).read_bytes()
        assert Path(ours["manifest"]).read_bytes() == their_bytes, mode
        assert sorted(p.path for p in decode_manifest(their_bytes).paths) == changed
        d_name, d_hash, d_ts = split_name(theirs["manifest"])
        o_name, o_hash, o_ts = split_name(ours["manifest"])
        assert (o_name, o_hash) == (d_name, d_hash)
        assert d_hash == hash_string(prep.root)
        assert runs.started <= d_ts <= o_ts <= datetime.datetime.now()
        assert os.path.dirname(ours["manifest"]) == str(dest)


@pytest.mark.parametrize("case_id", ["non-ascii-root", "include-exclude", "symlinked-dir"])
def test_table_through_the_vfs_command(runs: OracleRuns, case_id: str) -> None:
    """The same answers from a real ``vfs`` process (the entry point, not just the group)."""
    prep = runs.cases[case_id]
    args = ["manifest", "diff", "--manifest", prep.base, "--root", prep.root]
    out = run_vfs(*args, *prep.glob_args(), "--no-hash-cache", "--json")
    assert sorted_diff(json.loads(out.stdout)) == sorted_diff(prep.deadline["diff-fast"])
    args = ["manifest", "snapshot", "--root", prep.root, "-d", str(prep.dir / "vfs-subprocess")]
    out = run_vfs(*args, "--diff", prep.base, *prep.glob_args(), "--no-hash-cache", "--json")
    ours = json.loads(out.stdout)["manifest"]
    theirs = prep.deadline["snapshot-fast"]["manifest"]
    assert Path(ours).read_bytes() == Path(theirs).read_bytes()
    assert split_name(ours)[:2] == split_name(theirs)[:2]


def snap(root: Path | str, dest: Path | str, *extra: str) -> Any:
    """``vfs manifest snapshot --root ROOT -d DEST --no-hash-cache EXTRA --json``: the
    manifest file written, or ``None``."""
    args = ["manifest", "snapshot", "--root", str(root), "-d", str(dest), "--no-hash-cache"]
    return vfs_json(*args, *extra)["manifest"]


def test_stale_hash_cache_is_shared_behaviour(tmp_path: Path) -> None:
    """A same-size rewrite that restores the mtime fools a hash cache: with a cache filled
    before the rewrite, ``--force-rehash`` trusts the cached hash (as deadline's does); with
    ``--no-hash-cache`` the change is found."""
    root = tmp_path / "root"
    base_tree(root)
    cache = tmp_path / "cache"
    args = ["manifest", "snapshot", "--root", str(root), "-d", str(tmp_path / "m")]
    base = vfs_json(*args, "--hash-cache-dir", str(cache))["manifest"]
    rewrite("a.txt", b"ALPHA\n")(root)
    common = ["manifest", "diff", "--manifest", base, "--root", str(root), "--force-rehash"]
    assert vfs_json(*common, "--hash-cache-dir", str(cache)) == NOTHING
    assert vfs_json(*common, "--no-hash-cache") == D(modified=("a.txt",))


def test_relative_root(runs: OracleRuns, monkeypatch: pytest.MonkeyPatch) -> None:
    """DIFFERENCE: deadline's fast diff crashes on a relative root (``Path.relative_to`` of
    the absolute glob results); vfs answers as for the absolute root."""
    prep = runs.cases["include-exclude"]
    rel = prep.case.root_name
    monkeypatch.chdir(prep.dir)  # for vfs in process and for deadline's subprocess
    args = ["manifest", "diff", "--manifest", prep.base, "--root", rel, *prep.glob_args()]
    ours = vfs_json(*args, "--no-hash-cache")
    assert sorted_diff(ours) == sorted_diff(prep.deadline["diff-fast"])
    made = snap(rel, "rel-out", "--diff", prep.base, *prep.glob_args())
    theirs = prep.deadline["snapshot-fast"]["manifest"]
    assert Path(made).read_bytes() == Path(theirs).read_bytes()
    assert split_name(made)[1] == hash_string(rel)  # the root is hashed as given

    spec = prep.dir / "relative-spec.json"
    spec.write_text(json.dumps([{"op": "diff", "manifest": prep.base, "root": rel}]))
    out = prep.dir / "relative-out.json"
    oracle("batch", str(spec), str(out), home=prep.dir / "home")
    [result] = json.loads(out.read_text())
    assert result["error"].startswith("ValueError"), result


def test_bad_inputs_are_one_line_errors(runs: OracleRuns, tmp_path: Path) -> None:
    """Exit code 1 and a message naming the culprit, never a traceback. Where deadline
    behaves differently, it is said below."""
    prep = runs.cases["unchanged"]
    diff = ["manifest", "diff", "--manifest", prep.base, "--root", prep.root, "--no-hash-cache"]
    for config, culprit in [
        ("not json", "not json"),
        ("[1]", "[1]"),
        ('{"include": 5}', "include"),  # deadline: TypeError
        ('{"exclude": [1]}', "exclude"),  # deadline: TypeError
        (str(tmp_path / "missing.json"), "missing.json"),
    ]:
        result = vfs(*diff, "-ie", config, exit_code=1)
        assert culprit in result.stderr and "Traceback" not in result.stderr, result.stderr
    # deadline: {"include": null} is a TypeError; vfs reads it as the default.
    assert vfs_json(*diff, "-ie", '{"include": null}') == NOTHING

    # DIFFERENCE: deadline reports every file of a missing root as deleted (and snapshots
    # nothing); vfs refuses the root.
    out = str(tmp_path / "o")
    for root in (str(tmp_path / "nope"), str(Path(prep.root) / "a.txt")):
        for args in (
            ["manifest", "diff", "--manifest", prep.base, "--root", root],
            ["manifest", "snapshot", "--root", root, "-d", out],
            ["manifest", "snapshot", "--root", root, "-d", out, "--diff", prep.base],
        ):
            result = vfs(*args, "--no-hash-cache", exit_code=1)
            assert f"{root} is not a directory" in result.stderr
    assert not os.path.exists(out)

    # DIFFERENCE: deadline accepts "./a.txt" in a manifest (and reports it deleted, as the
    # fast diff compares normalised paths but lists the raw one); vfs refuses to decode it.
    doc = json.loads(Path(prep.base).read_bytes())
    doc["paths"][0]["path"] = "./" + doc["paths"][0]["path"]
    dotted = tmp_path / "dotted.manifest"
    dotted.write_text(json.dumps(doc))
    args = ["manifest", "diff", "--root", prep.root, "--no-hash-cache", "--manifest"]
    result = vfs(*args, str(dotted), exit_code=1)
    assert "dotted.manifest" in result.stderr and "'.' component" in result.stderr
    result = vfs(*args, str(tmp_path / "gone.manifest"), exit_code=1)
    assert "gone.manifest" in result.stderr and "Traceback" not in result.stderr


# -- merge ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["two", "three", "three-reversed", "loose-with-others", "single-loose"]
)
def test_merge_matches_deadline(runs: OracleRuns, key: str) -> None:
    merge = runs.merges[key]
    assert "error" not in merge.deadline, merge.deadline
    args = ["manifest", "merge", "--root", merge.root, "-d", str(merge.dir / "vfs")]
    for f in merge.files:
        args += ["-m", f]
    if merge.name:
        args += ["-n", merge.name]
    ours = vfs_json(*args)
    assert ours["root"] == merge.root
    their_bytes = Path(merge.deadline["manifest"]).read_bytes()
    assert Path(ours["manifest"]).read_bytes() == their_bytes
    assert split_name(ours["manifest"])[:2] == split_name(merge.deadline["manifest"])[:2]
    assert split_name(ours["manifest"])[1] == hash_string(merge.root)

    # The winners are the last manifest given that has the path.
    merged = decode_manifest(their_bytes)
    expected: dict[str, ManifestPath] = {}
    for f in merge.files:
        for p in decode_manifest(Path(f).read_bytes()).paths:
            expected[p.path] = p
    assert {p.path: p for p in merged.paths} == expected
    if key == "single-loose":
        assert merged.total_size == 12345  # a single manifest is re-encoded as it is
    else:
        assert merged.total_size == sum(p.size for p in expected.values())


def one_file_manifest(f: Path, content: bytes, path: str = "p.txt") -> Path:
    f.parent.mkdir(parents=True, exist_ok=True)
    entry = ManifestPath(path, hash_bytes(content), len(content), 1)
    f.write_bytes(encode_manifest(Manifest([entry])))
    return f


def test_merge_repeated_basename_differs_from_deadline(tmp_path: Path) -> None:
    """DIFFERENCE: deadline's ``_manifest_merge`` reads the files into a dict keyed by base
    name (``api/_utils.py::_read_manifests``), so of two files with the same name only the
    later one counts, at the earlier one's position, and a file given twice counts once.
    vfs merges every file given, in the order given."""
    one = one_file_manifest(tmp_path / "x" / "out.manifest", b"first")
    mid = one_file_manifest(tmp_path / "mid.manifest", b"middle")
    two = one_file_manifest(tmp_path / "y" / "out.manifest", b"second!")
    orders = [[one, mid, two], [mid, two, mid]]
    specs = [
        {"op": "merge", "root": "/r", "manifest_files": [str(f) for f in files],
         "destination": str(tmp_path / f"deadline-{i}"), "name": "m"}
        for i, files in enumerate(orders)
    ]  # fmt: skip
    spec, out = tmp_path / "spec.json", tmp_path / "out.json"
    spec.write_text(json.dumps(specs))
    oracle("batch", str(spec), str(out), home=tmp_path / "home")
    theirs = [
        decode_manifest(Path(r["manifest"]).read_bytes()) for r in json.loads(out.read_text())
    ]
    for files, deadline in zip(orders, theirs, strict=True):
        args = ["manifest", "merge", "--root", "/r", "-n", "m", "-d", str(tmp_path / "vfs")]
        for f in files:
            args += ["-m", str(f)]
        ours = decode_manifest(Path(vfs_json(*args)["manifest"]).read_bytes())
        last = decode_manifest(files[-1].read_bytes())
        assert ours.paths == last.paths  # vfs: the last file given wins
        assert deadline.paths != last.paths  # deadline: the basename collision decides
    # deadline: [x/out, mid, y/out] -> {out: y/out, mid} -> mid wins;
    #           [mid, y/out, mid]   -> {mid, out: y/out} -> y/out wins.
    assert [m.paths[0].size for m in theirs] == [len(b"middle"), len(b"second!")]


def test_merge_case_insensitive_and_errors(tmp_path: Path) -> None:
    a = one_file_manifest(tmp_path / "a.manifest", b"A", "Dir/A.txt")
    b = one_file_manifest(tmp_path / "b.manifest", b"bb", "dir/a.TXT")
    common = ["manifest", "merge", "--root", "C:\\proj", "-m", str(a), "-m", str(b), "-d"]
    plain = decode_manifest(Path(vfs_json(*common, str(tmp_path / "o1"))["manifest"]).read_bytes())
    assert sorted(p.path for p in plain.paths) == ["Dir/A.txt", "dir/a.TXT"]
    folded_file = vfs_json(*common, str(tmp_path / "o2"), "--case-insensitive")["manifest"]
    folded = decode_manifest(Path(folded_file).read_bytes())
    assert [(p.path, p.size) for p in folded.paths] == [("dir/a.TXT", 2)]
    assert os.path.basename(folded_file).startswith("C__proj-")  # '\\' and ':' replaced

    bad = tmp_path / "bad.manifest"
    bad.write_text('{"hashAlg": "xxh128"}')
    args = ["manifest", "merge", "--root", "/r", "-d", str(tmp_path / "o3"), "-m", str(a)]
    result = vfs(*args, "-m", str(bad), exit_code=1)
    assert "bad.manifest" in result.stderr and "Traceback" not in result.stderr
    result = vfs(*args, "-m", str(tmp_path / "missing.manifest"), exit_code=1)
    assert "missing.manifest" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o3").exists()


# -- symlinks escaping the root, format 2025-12-04-beta -----------------------------------------


def test_escaping_symlinks_are_skipped_with_a_warning(runs: OracleRuns, tmp_path: Path) -> None:
    """DELIBERATE DIFFERENCE: deadline follows links out of the root and records the outside
    files; vfs skips them and says so on stderr, in both formats."""
    root = runs.escape_root
    escaping = {"out.txt", "rel-out.txt", "outdir/inner.txt"}
    theirs = decode_manifest(Path(runs.escape["manifest"]).read_bytes())
    assert {p.path for p in theirs.paths} == {"in.txt"} | escaping

    for version in ("2023-03-03", V2):
        args = ["manifest", "snapshot", "--root", str(root), "-d", str(tmp_path / version)]
        out = run_vfs(*args, "--manifest-version", version, "--no-hash-cache", "--json")
        for name in ("out.txt", "rel-out.txt", "outdir"):
            warning = rf"warning.*{re.escape(str(root / name))}.*outside the root"
            assert re.search(warning, out.stderr, re.I), (version, out.stderr)
        manifest = decode_any_manifest(Path(json.loads(out.stdout)["manifest"]).read_bytes())
        if isinstance(manifest, Manifest):
            # The file inside the root is recorded exactly as deadline records it.
            assert manifest.paths == [p for p in theirs.paths if p.path == "in.txt"]
        else:
            assert [(f.path, f.symlink_target) for f in manifest.files] == [("in.txt", None)]

    # The diff leaves them out too: against deadline's manifest they look deleted.
    args = ["manifest", "diff", "--manifest", runs.escape["manifest"], "--root", str(root)]
    assert sorted_diff(vfs_json(*args, "--no-hash-cache")) == D(deleted=tuple(escaping))


def make_v2_tree(root: Path) -> None:
    put(root, "a.txt", b"alpha\n", T0)
    put(root, "bin/run.sh", b"#!/bin/sh\necho hi\n", T0 + SEC)
    os.chmod(root / "bin" / "run.sh", 0o755)
    put(root, "nested/deep/f.txt", b"deep\n", T0 + 2 * SEC)
    (root / "empty").mkdir()
    (root / "nested" / "empty2").mkdir()
    (root / "link.txt").symlink_to("a.txt")
    (root / "nested" / "up.txt").symlink_to(root / "a.txt")  # absolute, inside the root
    (root / "linkdir").symlink_to("nested/deep")
    (root / "dangling").symlink_to("nowhere")


def test_v2_snapshot_has_links_empty_dirs_and_exec_bit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_v2_tree(root)
    args = ["manifest", "snapshot", "--root", str(root), "-d", str(tmp_path / "out")]
    out = vfs(*args, "--manifest-version", V2, "--no-hash-cache", "--json")
    assert re.search(r"warning.*dangling", out.stderr, re.I)  # skipped, and said so
    data = Path(json.loads(out.stdout)["manifest"]).read_bytes()
    m = decode_any_manifest(data)
    assert isinstance(m, ManifestV2) and not m.is_diff
    assert encode_any_manifest(m) == data
    files = {f.path: f for f in m.files}
    links = {"link.txt": "a.txt", "nested/up.txt": "../a.txt", "linkdir": "nested/deep"}
    assert set(files) == {"a.txt", "bin/run.sh", "nested/deep/f.txt", *links}
    assert {p: files[p].symlink_target for p in links} == links  # absolute made relative
    assert files["bin/run.sh"].runnable and not files["a.txt"].runnable
    assert {"empty", "nested/empty2"} <= {d.path for d in m.dirs}
    # Regular files carry what format 2023-03-03 records for them; v1 follows the links.
    v1 = {p.path: p for p in decode_manifest(Path(snap(root, tmp_path / "v1")).read_bytes()).paths}
    for path in ("a.txt", "bin/run.sh", "nested/deep/f.txt"):
        f, p = files[path], v1[path]
        assert (f.hash, f.size, f.mtime) == (p.hash, p.size, p.mtime)
    assert {"link.txt", "nested/up.txt", "linkdir/f.txt"} <= set(v1)
    assert v1["linkdir/f.txt"].hash == v1["nested/deep/f.txt"].hash


@pytest.mark.parametrize("base_version", ["2023-03-03", V2])
def test_v2_snapshot_diff_has_delete_markers_and_parent_hash(
    tmp_path: Path, base_version: str
) -> None:
    root = tmp_path / "root"
    make_v2_tree(root)
    base_file = snap(root, tmp_path / "base", "--manifest-version", base_version)
    base_bytes = Path(base_file).read_bytes()
    as_diff = ["--manifest-version", V2, "--diff", base_file]
    if base_version == V2:  # no change: nothing to write
        assert snap(root, tmp_path / "same", *as_diff) is None

    (root / "a.txt").unlink()
    (root / "link.txt").unlink()
    shutil.rmtree(root / "nested" / "empty2")
    rewrite("bin/run.sh", b"#!/bin/sh\necho changed\n", keep_mtime=False)(root)
    put(root, "new/g.txt", b"new\n", T0 + 9 * SEC)
    (root / "new" / "empty3").mkdir()

    diff = decode_any_manifest(Path(snap(root, tmp_path / "diff", *as_diff)).read_bytes())
    assert isinstance(diff, ManifestV2) and diff.is_diff
    assert diff.parent_manifest_hash == hash_bytes(base_bytes)
    files = {f.path: f for f in diff.files}
    assert files["a.txt"].deleted and files["link.txt"].deleted
    assert files["bin/run.sh"].runnable and not files["bin/run.sh"].deleted
    assert files["new/g.txt"].hash == hash_bytes(b"new\n")
    # Its target went away: a dangling link is skipped, so it is gone from the snapshot.
    assert files["nested/up.txt"].deleted
    deleted_dirs = {d.path for d in diff.dirs if d.deleted}
    if base_version == V2:
        assert deleted_dirs == {"nested/empty2"}
    else:  # v1 lists no directories; its followed linkdir/ is one now gone
        assert deleted_dirs == {"linkdir"} and files["linkdir/f.txt"].deleted
    assert "new/empty3" in {d.path for d in diff.dirs if not d.deleted}
    # Base + diff = the new full snapshot.
    full = snapshot_directory_v2(str(root))
    assert full is not None
    rebuilt = apply_diff(decode_any_manifest(base_bytes), diff)
    assert {f.path: f for f in rebuilt.files} == {f.path: f for f in full.files}


# -- show -------------------------------------------------------------------------------------


def test_show_both_formats(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_v2_tree(root)
    v1_file = snap(root, tmp_path / "v1")
    v2_file = snap(root, tmp_path / "v2", "--manifest-version", V2)
    v1_bytes, v2_bytes = Path(v1_file).read_bytes(), Path(v2_file).read_bytes()

    shown = vfs_json("manifest", "show", v1_file)
    v1 = decode_manifest(v1_bytes)
    assert shown["manifest"] == v1_file
    assert shown["manifestVersion"] == "2023-03-03"
    assert (shown["files"], shown["dirs"], shown["symlinks"]) == (len(v1.paths), 0, 0)
    assert shown["totalSize"] == sum(p.size for p in v1.paths)
    assert shown["manifestHash"] == hash_bytes(v1_bytes)
    assert shown["entries"] == [
        {"path": p.path, "size": p.size, "mtime": p.mtime, "hash": p.hash} for p in v1.paths
    ]

    shown = vfs_json("manifest", "show", v2_file)
    v2 = decode_any_manifest(v2_bytes)
    assert isinstance(v2, ManifestV2)
    assert shown["manifestVersion"] == V2
    assert (shown["files"], shown["symlinks"]) == (3, 3)
    assert shown["dirs"] == len(v2.dirs) >= 2
    assert shown["totalSize"] == v2.computed_total_size()
    assert shown["manifestHash"] == hash_bytes(v2_bytes)
    assert shown["parentManifestHash"] is None
    entries = {e["path"]: e for e in shown["entries"]}
    assert entries["link.txt"] == {"path": "link.txt", "symlink": "a.txt"}
    assert entries["bin/run.sh"]["runnable"] is True
    assert "runnable" not in entries["a.txt"]
    assert entries["a.txt"]["hash"] == hash_bytes(b"alpha\n")

    # A diff manifest shows its parent and its delete markers.
    (root / "a.txt").unlink()
    diff_file = snap(root, tmp_path / "diff", "--manifest-version", V2, "--diff", v2_file)
    shown = vfs_json("manifest", "show", diff_file)
    assert shown["parentManifestHash"] == hash_bytes(v2_bytes)
    assert {"path": "a.txt", "delete": True} in shown["entries"]

    # Human output names every entry; a file that is no manifest is a one-line error.
    text = vfs("manifest", "show", v2_file).stdout
    assert "symlink -> a.txt" in text and "bin/run.sh" in text
    junk = tmp_path / "junk.manifest"
    junk.write_text("not json")
    result = vfs("manifest", "show", str(junk), exit_code=1)
    assert "junk.manifest" in result.stderr and "Traceback" not in result.stderr


# -- upload / download through moto ---------------------------------------------------------


def test_upload_then_download_by_key(
    tmp_path: Path, s3_endpoint: str, s3_client: S3Client, s3_bucket: str
) -> None:
    root = tmp_path / "root"
    make_v2_tree(root)
    files = {v: snap(root, tmp_path / v, "--manifest-version", v) for v in ("2023-03-03", V2)}
    uri = f"s3://{s3_bucket}/DeadlineCloud"
    s3 = ["--endpoint-url", s3_endpoint]
    roots = {"2023-03-03": "/mnt/proj", V2: "/mnt/café/proj"}
    keys = {}
    for version, f in files.items():
        args = ["manifest", "upload", f, "--s3-cas-uri", uri, "--asset-root", roots[version]]
        prefix = f"farm-1/queue-1/{version}/"  # the trailing "/" is dropped
        out = run_vfs(*args, "--s3-manifest-prefix", prefix, *s3, "--json")
        data = Path(f).read_bytes()
        assert json.loads(out.stdout)["hash"] == hash_bytes(data)
        keys[version] = f"Manifests/farm-1/queue-1/{version}/{os.path.basename(f)}"
        obj = s3_client.get_object(Bucket=s3_bucket, Key=f"DeadlineCloud/{keys[version]}")
        assert obj["Body"].read() == data
        assert obj["Metadata"] == manifest_metadata(roots[version])
        assert obj["ContentType"] == "binary/octet-stream"

    dl = tmp_path / "dl"
    args = ["manifest", "download", str(dl), "--s3-cas-uri", uri, *s3, "--json"]
    out = run_vfs(*args, "--key", keys["2023-03-03"], "--key", keys[V2])
    results = {r["root"]: r for r in json.loads(out.stdout)}
    assert set(results) == set(roots.values())
    for version, f in files.items():
        r = results[roots[version]]
        assert r["keys"] == [keys[version]]
        assert os.path.dirname(r["manifest"]) == str(dl)
        original = decode_any_manifest(Path(f).read_bytes())
        assert decode_any_manifest(Path(r["manifest"]).read_bytes()) == original
        assert Path(r["manifest"]).read_bytes() == Path(f).read_bytes()
        name, root_hash, _ = split_name(r["manifest"])
        assert root_hash == hash_string(roots[version])
        assert name == roots[version].replace("/", "_")[1:]  # deadline's download naming

    # DIFFERENCE: `deadline manifest upload` with the same prefix keeps its trailing "/"
    # (a "//" in the key) and records the local file path as file-system-location-name
    # (reference §4.1); vfs drops the "/" and, without --asset-root, sets no metadata.
    v1 = files["2023-03-03"]
    got = oracle(
        "manifest-upload", "--bucket", s3_bucket, "--root-prefix", "Deadline",
        "--s3-key-prefix", "farm-1/queue-1/2023-03-03/", "--endpoint", s3_endpoint, v1,
        home=tmp_path / "home", env={"AWS_ENDPOINT_URL": s3_endpoint},
    )  # fmt: skip
    assert got["endpoint"] == s3_endpoint
    theirs = s3_client.get_object(
        Bucket=s3_bucket, Key=f"Deadline/Manifests/farm-1/queue-1/2023-03-03//{Path(v1).name}"
    )
    assert theirs["Body"].read() == Path(v1).read_bytes()
    assert theirs["Metadata"] == {"file-system-location-name": v1}
    run_vfs("manifest", "upload", v1, "--s3-cas-uri", f"s3://{s3_bucket}/Plain", *s3)
    ours = s3_client.get_object(Bucket=s3_bucket, Key=f"Plain/Manifests/{Path(v1).name}")
    assert ours["Metadata"] == {}

    # Errors are one line, exit code 1.
    args = ["manifest", "download", str(dl), "--s3-cas-uri", uri, *s3]
    bad = run_vfs(*args, "--key", "Manifests/nope", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "nope" in bad.stderr
    none = run_vfs(*args, check=False)
    assert none.returncode == 1 and "Traceback" not in none.stderr


@pytest.mark.parametrize("flag", ["--store", "--s3-cas-uri"])
def test_upload_and_download_take_store_and_deadline_flag(tmp_path: Path, flag: str) -> None:
    """``--store`` as on every other command that takes a store, deadline's
    ``--s3-cas-uri`` as its alias; both name the same store."""
    root = tmp_path / "root"
    put(root, "a.txt", b"alpha", 1_700_000_000_000_000_000)
    f = snap(root, tmp_path / "m")
    store = tmp_path / "store"
    up = vfs_json("manifest", "upload", f, flag, f"file://{store}", "--asset-root", "/mnt/p")
    key = f"Manifests/{os.path.basename(f)}"
    assert up["uri"] == str(store / key)
    assert (store / key).read_bytes() == Path(f).read_bytes()
    dl = tmp_path / "dl"
    [got] = vfs_json("manifest", "download", str(dl), flag, f"file://{store}", "--key", key)
    assert (got["root"], got["keys"]) == ("/mnt/p", [key])
    assert Path(got["manifest"]).read_bytes() == Path(f).read_bytes()


FARM = "farm-0123456789abcdef0123456789abcdef"
QUEUE = "queue-0123456789abcdef0123456789abcdef"
JOB = "job-0123456789abcdef0123456789abcdef"
STEP = "step-0123456789abcdef0123456789abcdef"


def test_download_job_outputs_latest_per_task_merged_per_root(
    tmp_path: Path, s3_endpoint: str, s3_client: S3Client, s3_bucket: str
) -> None:
    """Two session actions of task 1 (only the later one counts), one of task 2, two roots;
    the surviving manifests of a root are merged by LastModified. Compared with deadline's
    ``get_output_manifests_by_asset_root`` on the same bucket."""
    prefix = "DeadlineCloud"
    r1, r2 = "/mnt/out", "/mnt/ünïcode out"
    t1, t2 = "task-" + "1" * 32 + "-0", "task-" + "2" * 32 + "-0"
    sa = "sessionaction-" + "a" * 32

    def manifest(*entries: tuple[str, bytes]) -> bytes:
        mtime = 1_700_000_000_000_000
        return encode_manifest(Manifest([ManifestPath(p, hash_bytes(c), len(c), mtime)
                                         for p, c in entries]))  # fmt: skip

    def put_output(task: str, sa_id: str, start: float, root: str, body: bytes) -> str:
        path = output_manifest_path(FARM, QUEUE, JOB, STEP, task, sa_id, start, root)
        key = f"{prefix}/Manifests/{path}"
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body, Metadata=manifest_metadata(root))
        return f"Manifests/{path}"

    old = manifest(("stale.exr", b"old"), ("shared.exr", b"t1 old"))
    stale = put_output(t1, f"{sa}-0", 1_716_416_223.099999, r1, old)
    t2_r1 = put_output(
        t2, f"{sa}-2", 1_716_416_300.5, r1, manifest(("t2.exr", b"2"), ("shared.exr", b"t2"))
    )
    time.sleep(1.05)  # LastModified has one-second resolution
    last = manifest(("t1.exr", b"task 1"), ("shared.exr", b"t1 wrote last"))
    t1_r1 = put_output(t1, f"{sa}-1", 1_716_416_400.25, r1, last)
    t1_r2 = put_output(t1, f"{sa}-1", 1_716_416_400.25, r2, manifest(("x/y.exr", b"root 2")))
    # Not an output manifest: ignored.
    key = f"{prefix}/Manifests/{FARM}/{QUEUE}/Inputs/{'c' * 32}/{hash_string(r1)}_input"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=manifest(("in", b"x")))
    assert "2024-05-22T22:17:03.099998Z" in stale  # deadline's truncated microseconds
    assert stale.split("/")[-2] < t1_r1.split("/")[-2]

    store = ["--s3-cas-uri", f"s3://{s3_bucket}/{prefix}", "--endpoint-url", s3_endpoint]
    job = ["--farm-id", FARM, "--queue-id", QUEUE, "--job-id", JOB]
    out = run_vfs("manifest", "download", str(tmp_path / "dl"), *store, *job, "--json")
    results = {r["root"]: r for r in json.loads(out.stdout)}
    assert set(results) == {r1, r2}
    assert sorted(results[r1]["keys"]) == sorted([t1_r1, t2_r1])
    assert results[r2]["keys"] == [t1_r2]
    by_path = {p.path: p for p in decode_manifest(Path(results[r1]["manifest"]).read_bytes()).paths}
    assert set(by_path) == {"t1.exr", "t2.exr", "shared.exr"}
    assert by_path["shared.exr"].hash == hash_bytes(b"t1 wrote last")

    # deadline's reader on the same bucket agrees, byte for byte.
    theirs = oracle(
        "outputs", "--bucket", s3_bucket, "--root-prefix", prefix, "--farm-id", FARM,
        "--queue-id", QUEUE, "--job-id", JOB, "--endpoint", s3_endpoint,
        home=tmp_path / "home", env={"AWS_ENDPOINT_URL": s3_endpoint},
    )  # fmt: skip
    assert theirs["endpoint"] == s3_endpoint
    assert set(theirs["roots"]) == {r1, r2}
    for root, [encoded] in theirs["roots"].items():
        assert Path(results[root]["manifest"]).read_bytes() == encoded.encode("ascii")

    # One task's outputs alone.
    task = ["--step-id", STEP, "--task-id", t2]
    out = run_vfs("manifest", "download", str(tmp_path / "dl2"), *store, *job, *task, "--json")
    [only] = json.loads(out.stdout)
    assert only["root"] == r1 and only["keys"] == [t2_r1]
    # A partial job address is an error, not a crash.
    bad = run_vfs("manifest", "download", str(tmp_path / "dl3"), *store, *job[:2], check=False)
    assert bad.returncode == 1 and "--job-id" in bad.stderr and "Traceback" not in bad.stderr
