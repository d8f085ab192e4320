"""Manifest operations: chronological merge, diff, diff manifests, filter and subtree.

deadline is the oracle wherever it has a counterpart: ``merge_asset_manifests`` and the
sort-then-merge of ``_incremental_downloads``, ``compare_manifest`` and
``_fast_file_list_to_manifest_diff`` (``_diff.py``), and ``_glob_paths`` (``_glob.py``).
"""

from __future__ import annotations

import ntpath
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import xxhash
from deadline.job_attachments._diff import _fast_file_list_to_manifest_diff, compare_manifest
from deadline.job_attachments._glob import _glob_paths
from deadline.job_attachments._incremental_downloads._manifest_s3_downloads import (
    _merge_absolute_path_manifest_list,
)
from deadline.job_attachments.asset_manifests.hash_algorithms import HashAlgorithm
from deadline.job_attachments.asset_manifests.v2023_03_03 import AssetManifest as DlManifest
from deadline.job_attachments.asset_manifests.v2023_03_03 import ManifestPath as DlPath
from deadline.job_attachments.download import merge_asset_manifests
from deadline.job_attachments.models import FileStatus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs.errors import ManifestError
from vfs.manifest import (
    FILE_CHUNK_SIZE_BYTES,
    AnyManifest,
    Manifest,
    ManifestDiff,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestPath,
    ManifestV2,
    apply_diff,
    create_diff_manifest,
    decode_manifest_v2,
    diff_manifests,
    encode_any_manifest,
    encode_manifest,
    encode_manifest_v2,
    filter_manifest,
    glob_matches,
    manifest_hash,
    merge_manifests_chronologically,
    subtree,
    to_v2,
)
from vfs.mount.tree import ROOT_INODE, InodeTree

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def h(n: int) -> str:
    return f"{n:032x}"


def mp(path: str, n: int = 1, size: int = 1, mtime: int = 0) -> ManifestPath:
    return ManifestPath(path, h(n), size, mtime)


def fp(path: str, n: int = 1, size: int = 1, mtime: int = 0) -> ManifestFilePath:
    return ManifestFilePath.file(path, h(n), size, mtime)


def to_deadline(m: Manifest) -> DlManifest:
    return DlManifest(
        hash_alg=HashAlgorithm.XXH128,
        paths=[DlPath(path=p.path, hash=p.hash, size=p.size, mtime=p.mtime) for p in m.paths],
        total_size=m.effective_total_size(),
    )


def v2_bytes(m: AnyManifest) -> bytes:
    """Canonical v2 bytes of either format (v1 converted losslessly)."""
    return encode_manifest_v2(m if isinstance(m, ManifestV2) else to_v2(m))


# -- strategies ----------------------------------------------------------------------------

POOL = ["a", "b", "A", "c.txt", "é", "\U0001f600"]
small_path = st.lists(st.sampled_from(POOL), min_size=1, max_size=3).map("/".join)
v1_entry = st.builds(
    ManifestPath,
    path=small_path,
    hash=st.integers(0, 3).map(h),
    size=st.integers(0, 3),
    mtime=st.integers(0, 4),
)
v1_manifest = st.lists(v1_entry, min_size=1, max_size=6).map(lambda ps: Manifest(paths=ps))

# Where deadline defines the merge: directory names and file names from disjoint pools (also
# when folded), so that no path is ever both a file and a directory, within one manifest or
# across manifests. deadline keeps both entries of such a clash, a tree no file system holds.
DIR_POOL = ["d", "D", "ü"]
FILE_POOL = ["a", "b", "A", "c.txt", "é", "\U0001f600"]
tree_v1_entry = st.builds(
    ManifestPath,
    path=st.tuples(st.lists(st.sampled_from(DIR_POOL), max_size=2), st.sampled_from(FILE_POOL)).map(
        lambda t: "/".join([*t[0], t[1]])
    ),
    hash=st.integers(0, 3).map(h),
    size=st.integers(0, 3),
    mtime=st.integers(0, 4),
)
tree_v1_manifest = st.lists(tree_v1_entry, min_size=1, max_size=6).map(
    lambda ps: Manifest(paths=ps)
)


def _tree_paths(paths: list[str]) -> list[str]:
    """Drop paths that are ancestors of others, so that files never double as dirs."""
    unique = list(dict.fromkeys(paths))
    prefixes = {p[:i] for p in unique for i in range(len(p)) if p[i] == "/"}
    return [p for p in unique if p not in prefixes]


@st.composite
def v2_entry(draw: st.DrawFn, path: str) -> ManifestFilePath:
    kind = draw(st.sampled_from(["file", "file", "file", "chunked", "symlink"]))
    if kind == "file":
        return ManifestFilePath.file(
            path,
            h(draw(st.integers(0, 3))),
            draw(st.integers(0, 3)),
            draw(st.integers(0, 4)),
            runnable=draw(st.booleans()),
        )
    if kind == "chunked":
        return ManifestFilePath.chunked(
            path, [h(draw(st.integers(0, 3))), h(9)], FILE_CHUNK_SIZE_BYTES + 1, 0
        )
    ups = draw(st.integers(0, path.count("/")))
    return ManifestFilePath.symlink(path, "/".join([".."] * ups + [draw(st.sampled_from(POOL))]))


@st.composite
def v2_snapshot(draw: st.DrawFn) -> ManifestV2:
    paths = _tree_paths(draw(st.lists(small_path, max_size=6)))
    files = [draw(v2_entry(p)) for p in paths]
    dirs = [
        ManifestDirectoryPath(d)
        for d in draw(st.lists(small_path, max_size=3))
        if not any(d == f or d.startswith(f + "/") for f in paths)
    ]
    return ManifestV2(files=files, dirs=dirs)


any_snapshot = st.one_of(
    v1_manifest.filter(lambda m: len(_tree_paths([p.path for p in m.paths])) == len(m.paths)),
    v2_snapshot(),
)


# -- merge: v1 against deadline ------------------------------------------------------------

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@PROPS
@given(st.lists(st.tuples(st.integers(0, 3), tree_v1_manifest), max_size=5))
def test_merge_v1_matches_deadline(items: list[tuple[int, Manifest]]) -> None:
    ours = merge_manifests_chronologically(items)
    if not items:
        assert ours is None and merge_asset_manifests([]) is None
        return
    assert isinstance(ours, Manifest)
    ordered = [m for _, m in sorted(items, key=lambda it: it[0])]
    theirs = merge_asset_manifests([to_deadline(m) for m in ordered])
    assert [p.path for p in ours.paths] == [p.path for p in theirs.paths]
    assert encode_manifest(ours) == theirs.encode().encode("ascii")
    # The incremental-download merge sorts by S3 LastModified itself, stably. (For a single
    # manifest it de-duplicates, where merge_asset_manifests and vfs return it unchanged.)
    if len(items) < 2:
        return
    stamped = [(T0 + timedelta(seconds=ts), to_deadline(m)) for ts, m in items]
    paths = _merge_absolute_path_manifest_list(stamped)
    assert [(p.path, p.hash) for p in paths] == [(p.path, p.hash) for p in ours.paths]


def test_merge_sorts_stably_by_timestamp() -> None:
    a, b, c = Manifest([mp("x", 1)]), Manifest([mp("x", 2)]), Manifest([mp("x", 3)])
    merged = merge_manifests_chronologically([(5, a), (1, b), (5, c)])
    assert isinstance(merged, Manifest) and merged.paths == [mp("x", 3)]
    merged = merge_manifests_chronologically([(5, c), (1, b), (5, a)])
    assert isinstance(merged, Manifest) and merged.paths == [mp("x", 1)]
    assert merge_manifests_chronologically([(T0, a)]) is a  # like deadline
    with pytest.raises(ManifestError, match="hashAlg"):
        merge_manifests_chronologically([(0, a), (1, Manifest([mp("y")], hash_alg="sha1"))])


@PROPS
@given(st.lists(st.tuples(st.integers(0, 3), tree_v1_manifest), min_size=1, max_size=4))
def test_merge_case_insensitive_matches_windows_normcase(
    items: list[tuple[int, Manifest]],
) -> None:
    # deadline on Windows keys by os.path.normcase (ntpath: lower-case, "\" for "/").
    ours = merge_manifests_chronologically(items, case_insensitive=True)
    assert isinstance(ours, Manifest)
    expected: dict[str, ManifestPath] = {}
    for _, m in sorted(items, key=lambda it: it[0]):
        for p in m.paths:
            expected[ntpath.normcase(p.path)] = p
    assert ours.paths == list(expected.values())


@PROPS
@given(tree_v1_manifest, tree_v1_manifest, tree_v1_manifest)
def test_merge_v1_is_associative(a: Manifest, b: Manifest, c: Manifest) -> None:
    flat = merge_manifests_chronologically([(0, a), (1, b), (2, c)])
    ab = merge_manifests_chronologically([(0, a), (1, b)])
    bc = merge_manifests_chronologically([(1, b), (2, c)])
    assert ab is not None and bc is not None and flat is not None
    left = merge_manifests_chronologically([(0, ab), (2, c)])
    right = merge_manifests_chronologically([(0, a), (1, bc)])
    assert isinstance(left, Manifest) and isinstance(right, Manifest)
    assert isinstance(flat, Manifest)
    assert encode_manifest(left) == encode_manifest(right) == encode_manifest(flat)


def test_merge_v1_file_replaces_directory_differs_from_deadline() -> None:
    """DIFFERENCE: deadline keeps ``a/b/c`` beside the later file ``a/b`` (and ``x`` beside the
    later ``x/y``), a manifest that no file system can hold; vfs layers like its mount: a
    later file replaces an earlier directory with everything beneath it, a later entry
    beneath a path replaces an earlier file."""
    old = Manifest([mp("a/b/c", 1), mp("a/b/d/e", 2), mp("a/k", 3), mp("x", 4)])
    new = Manifest([mp("a/b", 5), mp("x/y", 6)])
    theirs = merge_asset_manifests([to_deadline(old), to_deadline(new)])
    assert [p.path for p in theirs.paths] == ["a/b/c", "a/b/d/e", "a/k", "x", "a/b", "x/y"]
    ours = merge_manifests_chronologically([(0, old), (1, new)])
    assert isinstance(ours, Manifest)
    assert [(p.path, p.hash) for p in ours.paths] == [("a/k", h(3)), ("a/b", h(5)), ("x/y", h(6))]
    assert ours.effective_total_size() == 3


def test_merge_refuses_a_manifest_that_is_not_a_tree() -> None:
    bad = Manifest([mp("a/b", 1), mp("a", 2)])
    with pytest.raises(ManifestError) as info:
        merge_manifests_chronologically([(0, Manifest([mp("z")])), (1, bad)], sources=["z", "bad"])
    assert info.value.source == "bad" and info.value.entry == repr("a")
    assert "'a' is both a file and a directory in this one manifest" in str(info.value)
    with pytest.raises(ManifestError, match=r"manifest bad.*'a' is both"):
        merge_manifests_chronologically([(0, bad)], sources=["bad"])  # even alone


@PROPS
@given(
    st.lists(
        v1_manifest.filter(lambda m: len(_tree_paths([p.path for p in m.paths])) == len(m.paths)),
        min_size=1,
        max_size=4,
    )
)
def test_merge_v1_with_replacements_equals_the_mount_tree(layers: list[Manifest]) -> None:
    """Any tree-shaped layers, clashing across manifests: ``manifest merge`` gives the files
    of the mount's tree, each from the manifest the tree names, and is a tree itself."""
    merged = merge_manifests_chronologically(list(enumerate(layers)))
    assert isinstance(merged, Manifest)
    tree = InodeTree.from_manifests(layers, [str(i) for i in range(len(layers))])
    assert tree.file_count == len(merged.paths)
    for p in merged.paths:
        ino = ROOT_INODE
        for part in p.path.split("/"):
            found = tree.lookup(ino, os.fsencode(part))
            assert found is not None
            ino = found
        assert not tree.is_dir(ino) and tree.hash_hex(ino) == p.hash
        assert tree.size[ino] == p.size and tree.mtime[ino] == p.mtime
    paths = [p.path for p in merged.paths]
    assert _tree_paths(paths) == paths


# -- merge: v2 -----------------------------------------------------------------------------

# Paths chosen so that no file ever stands where another manifest has a directory.
CF_FILES = ["r1", "r2", "d1/f1", "d1/f2", "d2/f1", "d1/e/f3"]
CF_DIRS = ["d1", "d2", "d3", "d1/e", "d3/empty"]


@st.composite
def conflict_free_snapshot(draw: st.DrawFn) -> ManifestV2:
    files = [draw(v2_entry(p)) for p in draw(st.lists(st.sampled_from(CF_FILES), unique=True))]
    files = [f for f in files if f.symlink_target is None or ".." not in f.symlink_target]
    dirs = [ManifestDirectoryPath(d) for d in draw(st.lists(st.sampled_from(CF_DIRS), unique=True))]
    return ManifestV2(files=files, dirs=dirs)


@st.composite
def conflict_free_diff(draw: st.DrawFn) -> ManifestV2:
    deleted_dirs = draw(st.lists(st.sampled_from(CF_DIRS), unique=True, max_size=2))

    def gone(p: str) -> bool:
        return any(p == d or p.startswith(d + "/") for d in deleted_dirs)

    snap = draw(conflict_free_snapshot())
    deleted_files = draw(st.lists(st.sampled_from(CF_FILES), unique=True, max_size=3))
    files = [f for f in snap.files if not gone(f.path) and f.path not in deleted_files]
    files += [ManifestFilePath.deletion(p) for p in deleted_files]
    dirs = [d for d in snap.dirs if not gone(d.path)]
    dirs += [ManifestDirectoryPath(d, deleted=True) for d in deleted_dirs]
    return ManifestV2(files=files, dirs=dirs, parent_manifest_hash=h(7))


def merged_bytes(items: list[tuple[int, AnyManifest]]) -> bytes:
    result = merge_manifests_chronologically(items)
    assert result is not None
    return v2_bytes(result)


@PROPS
@given(conflict_free_snapshot(), conflict_free_snapshot(), conflict_free_snapshot())
def test_merge_v2_snapshots_is_associative(a: ManifestV2, b: ManifestV2, c: ManifestV2) -> None:
    ab = merge_manifests_chronologically([(0, a), (1, b)])
    bc = merge_manifests_chronologically([(1, b), (2, c)])
    assert ab is not None and bc is not None
    flat = merged_bytes([(0, a), (1, b), (2, c)])
    assert merged_bytes([(0, ab), (2, c)]) == flat
    assert merged_bytes([(0, a), (1, bc)]) == flat


@PROPS
@given(
    st.one_of(conflict_free_snapshot(), conflict_free_diff()),
    st.one_of(conflict_free_snapshot(), conflict_free_diff()),
    st.one_of(conflict_free_snapshot(), conflict_free_diff()),
)
def test_merge_v2_with_deletions_folds_left(a: ManifestV2, b: ManifestV2, c: ManifestV2) -> None:
    ab = merge_manifests_chronologically([(0, a), (1, b)])
    assert ab is not None
    assert merged_bytes([(0, ab), (2, c)]) == merged_bytes([(0, a), (1, b), (2, c)])
    # And with a snapshot at the bottom, merging equals applying the diffs one by one.
    if not a.is_diff:
        stepwise: AnyManifest = a
        for layer in (b, c):
            if layer.is_diff:
                layer = ManifestV2(layer.files, layer.dirs, manifest_hash(stepwise))
                stepwise = apply_diff(stepwise, layer)
            else:
                merged = merge_manifests_chronologically([(0, stepwise), (1, layer)])
                assert merged is not None
                stepwise = merged
        assert v2_bytes(stepwise) == merged_bytes([(0, a), (1, b), (2, c)])


def test_merge_v2_semantics() -> None:
    base = ManifestV2(
        files=[fp("dir/x", 1), fp("dir/sub/y", 2), fp("keep", 3), fp("file", 4)],
        dirs=[ManifestDirectoryPath("empty")],
    )
    later = ManifestV2(
        files=[
            ManifestFilePath.deletion("keep"),
            fp("dir", 5),  # a file replaces the directory "dir" and its content
            fp("file/inner", 6),  # the file "file" becomes a directory
            ManifestFilePath.symlink("link", "dir"),
        ],
        dirs=[ManifestDirectoryPath("empty", deleted=True)],
        parent_manifest_hash=h(8),
    )
    merged = merge_manifests_chronologically([(2, later), (1, base)])
    assert isinstance(merged, ManifestV2) and not merged.is_diff
    assert sorted((f.path, f.hash) for f in merged.files if not f.is_symlink) == [
        ("dir", h(5)),
        ("file/inner", h(6)),
    ]
    assert sorted(d.path for d in merged.dirs) == ["file"]
    assert all(not f.deleted for f in merged.files)  # delete markers are consumed


def test_merge_v2_case_insensitive_and_mixed_versions() -> None:
    v1 = Manifest([mp("Dir/File.TXT", 1), mp("other", 2)])
    v2 = ManifestV2(files=[fp("dir/file.txt", 3)], dirs=[ManifestDirectoryPath("DIR/new")])
    merged = merge_manifests_chronologically([(0, v1), (1, v2)], case_insensitive=True)
    assert isinstance(merged, ManifestV2)
    assert sorted((f.path, f.hash) for f in merged.files) == [
        ("Dir/file.txt", h(3)),
        ("other", h(2)),
    ]
    # One spelling per directory: the first one seen, unless the directory itself is listed
    # again later; entries keep their own last spelling of their last component.
    assert sorted(d.path for d in merged.dirs) == ["Dir", "Dir/new"]
    assert sorted(f.path for f in merged.files) == ["Dir/file.txt", "other"]
    assert b'"name":"dir' not in encode_manifest_v2(merged)
    sensitive = merge_manifests_chronologically([(0, v1), (1, v2)])
    assert isinstance(sensitive, ManifestV2) and len(sensitive.files) == 3


# -- diff ----------------------------------------------------------------------------------


def deadline_compare(base: Manifest, target: Manifest) -> ManifestDiff:
    out = ManifestDiff()
    for status, path in compare_manifest(to_deadline(base), to_deadline(target)):
        {
            FileStatus.NEW: out.new,
            FileStatus.MODIFIED: out.modified,
            FileStatus.DELETED: out.deleted,
            FileStatus.UNCHANGED: [],
        }[status].append(path.path)
    return out


def unique_paths(m: Manifest) -> Manifest:
    return Manifest(paths=list({p.path: p for p in m.paths}.values()))


@PROPS
@given(v1_manifest.map(unique_paths), v1_manifest.map(unique_paths))
def test_diff_hash_mode_matches_compare_manifest(base: Manifest, target: Manifest) -> None:
    ours = diff_manifests(base, target)
    theirs = deadline_compare(base, target)
    assert sorted(ours.new) == sorted(theirs.new)
    assert sorted(ours.modified) == sorted(theirs.modified)
    assert sorted(ours.deleted) == sorted(theirs.deleted)
    assert ours.new_dirs == ours.deleted_dirs == []


def test_diff_fast_mode_matches_deadline(tmp_path: Path) -> None:
    mtime = 1_700_000_000_123_456  # microseconds
    # (path, size in base, mtime in base, size on disk, mtime on disk)
    cases = [
        ("same", 3, mtime, 3, mtime),
        ("plus-one-us", 3, mtime, 3, mtime + 1),
        ("minus-one-us", 3, mtime, 3, mtime - 1),
        ("plus-three-us", 3, mtime, 3, mtime + 3),
        ("older", 3, mtime, 3, mtime - 10_000_000),
        ("bigger", 3, mtime, 4, mtime),
        ("dir/same", 0, mtime, 0, mtime),
        ("dir/size-and-time", 5, mtime, 0, mtime + 100),
    ]
    base = Manifest([mp(p, i, size, t) for i, (p, size, t, _, _) in enumerate(cases)])
    base.paths.append(mp("deleted", 9, 1, mtime))
    files = []
    for path, _, _, size, t in [*cases, ("new", 0, 0, 7, mtime)]:
        f = tmp_path / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * size)
        os.utime(f, ns=(t * 1000, t * 1000))
        files.append(str(f))
    # What a snapshot of the directory records: stat size and st_mtime_ns // 1000.
    target = Manifest(
        [
            mp(
                Path(f).relative_to(tmp_path).as_posix(),
                0,
                os.stat(f).st_size,
                os.stat(f).st_mtime_ns // 1000,
            )
            for f in files
        ]
    )
    theirs = _fast_file_list_to_manifest_diff(str(tmp_path), files, to_deadline(base))
    expected = {s: sorted(p for p, st_ in theirs if st_ == s) for s in FileStatus}
    ours = diff_manifests(base, target, mode="fast")
    assert ours.new == expected[FileStatus.NEW] == ["new"]
    assert ours.deleted == expected[FileStatus.DELETED] == ["deleted"]
    assert sorted(ours.modified) == expected[FileStatus.MODIFIED]
    assert sorted(ours.modified) == ["bigger", "dir/size-and-time", "older", "plus-three-us"]
    # Hash mode ignores size and time: only the content hash counts.
    assert diff_manifests(base, target).modified == sorted(
        (p for p, *_ in cases if p != "same"), key=lambda s: s.encode("utf-16-be")
    )


def test_diff_v2_kinds_and_dirs() -> None:
    base = ManifestV2(
        files=[fp("a", 1), fp("s", 2), ManifestFilePath.symlink("l", "a"), fp("x/y", 3)],
        dirs=[ManifestDirectoryPath("gone/deep")],
    )
    target = ManifestV2(
        files=[
            ManifestFilePath.file("a", h(1), 1, 0, runnable=True),  # exec bit flipped
            ManifestFilePath.symlink("s", "a"),  # file became a symlink
            ManifestFilePath.symlink("l", "x/y"),  # new target
            ManifestFilePath.file("x/y", h(3), 99, 99),  # same hash, other size/time
        ],
        dirs=[ManifestDirectoryPath("fresh")],
    )
    d = diff_manifests(base, target)
    assert (d.new, d.modified, d.deleted) == ([], ["a", "l", "s"], [])
    assert d.new_dirs == ["fresh"] and d.deleted_dirs == ["gone", "gone/deep"]
    fast = diff_manifests(base, target, mode="fast")
    assert fast.modified == ["a", "l", "s", "x/y"]
    assert diff_manifests(target, target).is_empty()
    with pytest.raises(ManifestError, match="diff manifest"):
        diff_manifests(base, ManifestV2(parent_manifest_hash=h(1)))


# -- diff manifests ------------------------------------------------------------------------


@PROPS
@given(any_snapshot, any_snapshot)
def test_create_then_apply_reproduces_the_target(base: AnyManifest, target: AnyManifest) -> None:
    diff = create_diff_manifest(base, target)
    assert diff.is_diff and diff.parent_manifest_hash == manifest_hash(base)
    # Through the wire format and back.
    wire = decode_manifest_v2(encode_manifest_v2(diff), source="diff")
    result = apply_diff(base, wire)
    assert not result.is_diff
    assert encode_manifest_v2(result) == v2_bytes(target)
    # The diff holds what diff_manifests reports (and exact-field changes besides).
    report = diff_manifests(base, target)
    upserts = {f.path for f in diff.files if not f.deleted}
    assert set(report.new) | set(report.modified) <= upserts
    assert {f.path for f in diff.files if f.deleted} == set(report.deleted)
    if isinstance(base, ManifestV2) or isinstance(target, ManifestV2):
        assert {d.path for d in diff.dirs if d.deleted} == set(report.deleted_dirs)
        assert {d.path for d in diff.dirs if not d.deleted} == set(report.new_dirs)


def test_diff_manifest_golden_and_parent_checks() -> None:
    base = Manifest([mp("a/keep", 1), mp("a/old", 2), mp("z", 3)])
    target = ManifestV2(
        files=[fp("a/keep", 1), fp("z", 4, 2, 5), fp("n/new", 5)],
        dirs=[ManifestDirectoryPath("n/empty")],
    )
    diff = create_diff_manifest(base, target)
    parent = manifest_hash(base)
    assert encode_manifest_v2(diff) == (
        b'{"dirs":[{"name":"a"},{"name":"n"},{"name":"$1/empty"}],"files":['
        b'{"delete":true,"name":"$0/old"},'
        b'{"hash":"' + h(5).encode() + b'","mtime":0,"name":"$1/new","size":1},'
        b'{"hash":"' + h(4).encode() + b'","mtime":5,"name":"z","size":2}],'
        b'"hashAlg":"xxh128","manifestVersion":"2025-12-04-beta",'
        b'"parentManifestHash":"' + parent.encode() + b'","totalSize":3}'
    )
    # The parent hash is over the parent's own (v1) bytes.
    assert parent == xxhash.xxh3_128_hexdigest(encode_manifest(base))
    with pytest.raises(ManifestError, match="made against"):
        apply_diff(Manifest([mp("a/keep", 1)]), diff)
    loose = apply_diff(Manifest([mp("a/keep", 1)]), diff, check_parent_hash=False)
    assert sorted(f.path for f in loose.files) == ["a/keep", "n/new", "z"]
    with pytest.raises(ManifestError, match="needs a diff"):
        apply_diff(base, to_v2(base))
    with pytest.raises(ManifestError, match="itself a diff"):
        apply_diff(diff, diff)
    with pytest.raises(ManifestError):
        create_diff_manifest(Manifest([]), target)  # an empty v1 parent has no bytes


# -- filter --------------------------------------------------------------------------------

TREE = [
    "a.txt",
    "b.exr",
    ".hidden",
    "scenes/s1.ma",
    "scenes/s1.tmp",
    "scenes/.cache/c.tmp",
    "scenes/deep/er/x.tmp",
    "scenes/deep/er/y.ma",
    ".git/config",
    "renders/f_001.exr",
    "renders/f_002.exr",
    "renders/[x].exr",
]
PATTERNS = [
    "**/*",
    "**",
    "*",
    "*.txt",
    "**/*.tmp",
    "scenes/**",
    "scenes/**/*.ma",
    "scenes/*",
    "**/er/*",
    "renders/f_00?.exr",
    "renders/[!f]*",
    "renders/[[]x].exr",
    ".*",
    "**/.*",
    ".git/*",
    "scenes/.cache/*",
    "./a.txt",
    "a.txt",
    "scenes/",
    "../a.txt",
    "nothing/**",
    "**/deep/**",
]


@pytest.fixture(scope="module")
def tree_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("globtree")
    for p in TREE:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    return root


def deadline_glob(root: Path, include: list[str], exclude: list[str] | None) -> list[str]:
    found = _glob_paths(str(root), include=include, exclude=exclude)
    return sorted(Path(f).relative_to(root).as_posix() for f in found)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_glob_matches_deadline_glob(tree_dir: Path, pattern: str) -> None:
    assert sorted(p for p in TREE if glob_matches(p, pattern)) == deadline_glob(
        tree_dir, [pattern], None
    )


@pytest.mark.parametrize(
    ("include", "exclude"),
    [
        (["**/*"], None),
        (["**/*"], ["**/*.tmp"]),
        (["**/*.exr", "**/*.ma"], ["renders/*_002.exr"]),
        (["**"], ["scenes/**"]),
        ([".*", "**/*"], [".git/*"]),
    ],
)
def test_filter_manifest_matches_deadline(
    tree_dir: Path, include: list[str], exclude: list[str] | None
) -> None:
    m = Manifest([mp(p) for p in TREE])
    kept = filter_manifest(m, include, exclude)
    assert sorted(p.path for p in kept.paths) == deadline_glob(tree_dir, include, exclude)
    v2 = filter_manifest(to_v2(m), include, exclude)
    assert sorted(f.path for f in v2.files) == sorted(p.path for p in kept.paths)


def test_filter_manifest_v2_keeps_dirs_and_parent() -> None:
    m = ManifestV2(
        files=[fp("a/x.tmp"), fp("a/y.ma"), ManifestFilePath.deletion("b/z.tmp")],
        dirs=[ManifestDirectoryPath("empty"), ManifestDirectoryPath("cache/tmp")],
        parent_manifest_hash=h(1),
    )
    kept = filter_manifest(m, exclude=["**/*.tmp", "cache/**"])
    assert [f.path for f in kept.files] == ["a/y.ma"]
    assert [d.path for d in kept.dirs] == ["empty"]
    assert kept.parent_manifest_hash == h(1)
    assert filter_manifest(m).files == m.files  # no patterns: everything


# -- subtree -------------------------------------------------------------------------------


def test_subtree_v1() -> None:
    m = Manifest([mp("shots/s1/a.exr", 1), mp("shots/s10/b.exr", 2), mp("shots", 3)])
    sub = subtree(m, "shots/s1/")
    assert sub.paths == [mp("a.exr", 1)]
    assert subtree(m, "/shots").paths == [mp("s1/a.exr", 1), mp("s10/b.exr", 2)]
    assert subtree(m, "").paths == m.paths
    for bad in ("a/../b", "a//b", "x\x00"):
        with pytest.raises(ManifestError, match="subtree prefix"):
            subtree(m, bad)


def test_subtree_v2() -> None:
    m = ManifestV2(
        files=[
            fp("proj/a/x", 1),
            ManifestFilePath.symlink("proj/a/in", "x"),
            ManifestFilePath.symlink("proj/a/up", "../b/y"),  # stays inside proj
            ManifestFilePath.symlink("proj/out", "../other"),  # escapes proj: left out
            fp("other", 2),
        ],
        dirs=[ManifestDirectoryPath("proj"), ManifestDirectoryPath("proj/b/empty")],
    )
    sub = subtree(m, "proj")
    assert sorted(f.path for f in sub.files) == ["a/in", "a/up", "a/x"]
    assert [d.path for d in sub.dirs] == ["b/empty"]
    assert b'"name":"b"' in encode_manifest_v2(sub)
    deeper = subtree(m, "proj/a")
    assert sorted(f.path for f in deeper.files) == ["in", "x"]  # "../b/y" would escape
    with pytest.raises(ManifestError, match="diff"):
        subtree(ManifestV2(parent_manifest_hash=h(1)), "proj")


def test_everything_encodes_either_way() -> None:
    assert encode_any_manifest(Manifest([mp("a")])) == encode_manifest(Manifest([mp("a")]))
