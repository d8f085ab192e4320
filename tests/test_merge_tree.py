"""Merging manifests as layers (against deadline's ``merge_asset_manifests`` where it defines
the result) and the mount's inode tree."""

from __future__ import annotations

import os

import pytest
from deadline.job_attachments.asset_manifests.hash_algorithms import HashAlgorithm
from deadline.job_attachments.asset_manifests.v2023_03_03 import AssetManifest as DlManifest
from deadline.job_attachments.asset_manifests.v2023_03_03 import ManifestPath as DlPath
from deadline.job_attachments.download import merge_asset_manifests
from hypothesis import given, settings
from hypothesis import strategies as st

from vfs.errors import ManifestError
from vfs.manifest import (
    Manifest,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestPath,
    ManifestV2,
    encode_manifest,
    merge_layers,
    merge_manifests_chronologically,
)
from vfs.mount.tree import MAX_MTIME_US, ROOT_INODE, InodeTree


def h(n: int) -> str:
    return f"{n:032x}"


def mp(path: str, n: int = 1, size: int = 1, mtime: int = 0) -> ManifestPath:
    return ManifestPath(path, h(n), size, mtime)


def merge_manifests(manifests: list[Manifest]) -> Manifest | None:
    """``vfs manifest merge`` of ``manifests`` in the order given."""
    return merge_manifests_chronologically(list(enumerate(manifests)))


def to_deadline(m: Manifest) -> DlManifest:
    return DlManifest(
        hash_alg=HashAlgorithm.XXH128,
        paths=[DlPath(path=p.path, hash=p.hash, size=p.size, mtime=p.mtime) for p in m.paths],
        total_size=m.effective_total_size(),
    )


# -- merge ---------------------------------------------------------------------------------


def test_merge_last_wins_first_insertion_order_total_recomputed() -> None:
    a = Manifest(paths=[mp("x", 1, 10), mp("y", 2, 20), mp("z", 3, 30)], total_size=999)
    b = Manifest(paths=[mp("w", 4, 40), mp("y", 5, 5)], total_size=7)
    c = Manifest(paths=[mp("x", 6, 1)], total_size=0)
    merged = merge_manifests([a, b, c])
    assert merged is not None
    assert [p.path for p in merged.paths] == ["x", "y", "z", "w"]
    assert merged.paths == [mp("x", 6, 1), mp("y", 5, 5), mp("z", 3, 30), mp("w", 4, 40)]
    assert merged.effective_total_size() == 1 + 5 + 30 + 40
    dl = merge_asset_manifests([to_deadline(m) for m in (a, b, c)])
    assert encode_manifest(merged) == dl.encode().encode()


def test_merge_zero_and_one() -> None:
    assert merge_manifests([]) is None
    a = Manifest(paths=[mp("x")], total_size=5)
    assert merge_manifests([a]) is a  # returned as-is, like deadline (totalSize kept)
    assert merge_asset_manifests([]) is None


def test_merge_layers_sources_and_hash_alg_mismatch() -> None:
    a = Manifest(paths=[mp("x", 1), mp("d/y", 2)])
    b = Manifest(paths=[mp("d/y", 3)])
    merged = merge_layers([a, b])
    assert list(merged.files) == ["x", "d/y"]
    assert merged.files["x"] == (mp("x", 1), 0)
    assert merged.files["d/y"] == (mp("d/y", 3), 1)
    assert merged.dirs == {"d": ("d", 0)}
    assert merged.hash_alg == "xxh128"
    assert merge_layers([]).hash_alg is None
    with pytest.raises(ManifestError, match="hashAlg"):
        merge_layers([a, Manifest(paths=[mp("x")], hash_alg="sha1")])


_names = st.sampled_from(["a", "b", "B", "d/e", "d/f", "\u00e9", "\U0001f600", "\uff41", "z/y/x"])
_entries = st.lists(
    st.builds(
        ManifestPath,
        _names,
        st.integers(0, 2**128 - 1).map(h),
        st.integers(0, 1000),
        st.integers(-(2**40), 2**40),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_entries, min_size=2, max_size=4))
def test_merge_matches_deadline(entry_lists: list[list[ManifestPath]]) -> None:
    ours = [Manifest(paths=list(e)) for e in entry_lists]
    theirs = merge_asset_manifests([to_deadline(m) for m in ours])
    merged = merge_manifests(ours)
    assert merged is not None
    # Order in memory is deadline's dict insertion order.
    assert [p.path for p in merged.paths] == [p.path for p in theirs.paths]
    assert encode_manifest(merged) == theirs.encode().encode()


# -- inode tree ----------------------------------------------------------------------------


def node(tree: InodeTree, path: str) -> int:
    ino = ROOT_INODE
    for part in path.split("/") if path else []:
        found = tree.lookup(ino, os.fsencode(part))
        assert found is not None, f"{path}: {part} not found"
        ino = found
    return ino


def snapshot(tree: InodeTree) -> tuple[object, ...]:
    return (
        tree.children,
        list(tree.size),
        list(tree.mtime),
        list(tree.parent),
        list(tree.source),
        bytes(tree.hashes),
    )


def test_tree_structure_sizes_mtimes_hashes() -> None:
    m = Manifest(
        paths=[
            mp("top.txt", 1, 3, 100),
            mp("a/b/c.bin", 2, 2**40, 500),
            mp("a/b/d.bin", 3, 0, 300),
            mp("a/e.txt", 4, 7, 200),
            mp("f/g/h/i", 2**128 - 1, 9, -50),
        ]
    )
    tree = InodeTree.from_manifests([m], ["m1.manifest"])
    assert tree.file_count == 5
    assert tree.total_size == 3 + 2**40 + 7 + 9
    # Directories implied by the paths.
    assert {n for n, _ in tree.entries(ROOT_INODE)} == {b"top.txt", b"a", b"f"}
    for d in ["", "a", "a/b", "f", "f/g", "f/g/h"]:
        assert tree.is_dir(node(tree, d)), d
    for p in m.paths:
        ino = node(tree, p.path)
        assert not tree.is_dir(ino)
        assert tree.size[ino] == p.size
        assert tree.mtime[ino] == p.mtime
        assert tree.hash_hex(ino) == p.hash
        (part,) = tree.file_parts(ino)
        assert part.hash == p.hash and part.size == p.size
        assert tree.path_of(ino) == p.path
        assert tree.source_of(ino) == "m1.manifest"
        assert tree.nlink(ino) == 1
    # Directory mtime = newest mtime below it.
    assert tree.mtime[node(tree, "a/b")] == 500
    assert tree.mtime[node(tree, "a")] == 500
    assert tree.mtime[ROOT_INODE] == 500
    assert tree.nlink(ROOT_INODE) == 2 + 2
    assert tree.nlink(node(tree, "a")) == 2 + 1
    assert tree.nlink(node(tree, "a/b")) == 2
    assert len(tree) == 1 + 5 + 6 - 1  # root, files, directories other than the root
    assert tree.exists(node(tree, "a")) and not tree.exists(0) and not tree.exists(len(tree) + 1)


def test_directory_mtime_is_newest_below_even_before_1970() -> None:
    m = Manifest(paths=[mp("old/x", 1, 1, -2_000_000), mp("old/sub/y", 2, 1, -1_000_000)])
    tree = InodeTree.from_manifests([m])
    assert tree.mtime[node(tree, "old/sub")] == -1_000_000
    assert tree.mtime[node(tree, "old")] == -1_000_000
    assert tree.mtime[ROOT_INODE] == -1_000_000


def test_inode_numbers_are_stable() -> None:
    ms = [
        Manifest(paths=[mp("d/x", 1), mp("a", 2), mp("d/e/f", 3), mp("\u00e9/g", 4)]),
        Manifest(paths=[mp("a", 5), mp("z/y", 6)]),
    ]
    first = InodeTree.from_manifests(ms, ["one", "two"])
    again = InodeTree.from_manifests([Manifest(paths=list(m.paths)) for m in ms], ["one", "two"])
    assert snapshot(first) == snapshot(again)
    # Numbered in first-naming order: the root, then d, d/x, a, ...
    assert node(first, "d") == 2 and node(first, "d/x") == 3 and node(first, "a") == 4
    # The later manifest wins for "a" but "a" keeps its place.
    assert first.hash_hex(node(first, "a")) == h(5)
    assert first.source_of(node(first, "a")) == "two"
    assert first.source_of(node(first, "d/x")) == "one"


@pytest.mark.parametrize(
    "paths",
    [["a", "a/b"], ["a/b", "a"], ["x/a", "x/a/b/c"], ["x/a/b/c", "x/a/b"]],
)
def test_file_vs_directory_conflict_in_one_manifest(paths: list[str]) -> None:
    m = Manifest(paths=[mp(p, i) for i, p in enumerate(paths)])
    with pytest.raises(ManifestError) as info:
        InodeTree.from_manifests([m], ["s3://bucket/Manifests/one_input"])
    err = info.value
    assert err.source == "s3://bucket/Manifests/one_input"
    assert "s3://bucket/Manifests/one_input" in str(err)
    assert err.entry is not None and paths[1] in err.entry
    assert "both a file and a directory" in str(err)


def test_later_file_replaces_earlier_directory_across_manifests() -> None:
    dir_m = Manifest(paths=[mp("keep"), mp("shared/thing/inner.txt", 1), mp("shared/thing/x/y")])
    file_m = Manifest(paths=[mp("shared/thing", 2, 7)])
    tree = InodeTree.from_manifests([dir_m, file_m], ["dirs.manifest", "files.manifest"])
    thing = node(tree, "shared/thing")
    assert not tree.is_dir(thing)
    assert tree.hash_hex(thing) == h(2) and tree.size[thing] == 7
    assert tree.source_of(thing) == "files.manifest"
    assert tree.file_count == 2
    assert {n for n, _ in tree.entries(node(tree, "shared"))} == {b"thing"}
    merged = merge_layers([dir_m, file_m])
    assert list(merged.files) == ["keep", "shared/thing"]
    assert list(merged.dirs) == ["shared"]


def test_later_directory_replaces_earlier_file_across_manifests() -> None:
    file_m = Manifest(paths=[mp("keep"), mp("shared/thing", 1)])
    dir_m = Manifest(paths=[mp("shared/thing/inner.txt", 2)])
    tree = InodeTree.from_manifests([file_m, dir_m], ["files.manifest", "dirs.manifest"])
    assert tree.is_dir(node(tree, "shared/thing"))
    inner = node(tree, "shared/thing/inner.txt")
    assert tree.hash_hex(inner) == h(2) and tree.source_of(inner) == "dirs.manifest"
    assert tree.file_count == 2
    # v2: an explicit (empty) directory replaces a file too.
    v2 = ManifestV2(files=[], dirs=[ManifestDirectoryPath("keep")])
    tree2 = InodeTree.from_manifests([file_m, v2])
    assert tree2.is_dir(node(tree2, "keep")) and tree2.file_count == 1


def test_replacements_match_the_manifest_merge() -> None:
    """The mount's tree and ``vfs manifest merge`` give the same files from the same layers."""
    layers = [
        Manifest(paths=[mp("a/b/c", 1), mp("a/d", 2), mp("e", 3), mp("f/g", 4)]),
        Manifest(paths=[mp("a/b", 5), mp("e/x", 6)]),
        Manifest(paths=[mp("a/b/z", 7), mp("f", 8)]),
    ]
    merged = merge_manifests(layers)
    assert merged is not None
    assert [(p.path, p.hash) for p in merged.paths] == [
        ("a/d", h(2)),
        ("e/x", h(6)),
        ("a/b/z", h(7)),
        ("f", h(8)),
    ]
    tree = InodeTree.from_manifests(layers)
    assert tree.file_count == len(merged.paths)
    for p in merged.paths:
        assert tree.hash_hex(node(tree, p.path)) == p.hash


@pytest.mark.parametrize(
    ("manifest", "entry"),
    [
        (Manifest(paths=[mp("a"), mp("b"), mp("a/b")]), "a/b"),
        (
            ManifestV2(
                files=[ManifestFilePath.file("a", h(1), 1, 0)], dirs=[ManifestDirectoryPath("a/b")]
            ),
            "a",
        ),
    ],
)
def test_within_one_manifest_conflict_refused_by_every_merge(
    manifest: Manifest | ManifestV2, entry: str
) -> None:
    ok = Manifest(paths=[mp("ok")])
    with pytest.raises(ManifestError) as info:
        merge_layers([ok, manifest], sources=["ok.manifest", "bad.manifest"])
    assert info.value.source == "bad.manifest"
    assert info.value.entry == repr(entry)
    assert "'a' is both a file and a directory" in str(info.value)
    with pytest.raises(ManifestError, match=r"bad\.manifest.*'a' is both"):
        merge_manifests_chronologically([(0, ok), (1, manifest)], sources=["o", "bad.manifest"])
    with pytest.raises(ManifestError, match=r"bad\.manifest.*'a' is both"):
        InodeTree.from_manifests([ok, manifest], ["ok.manifest", "bad.manifest"])


def test_within_one_manifest_conflict_refused_case_insensitive() -> None:
    m = Manifest(paths=[mp("Dir"), mp("dir/x")])
    assert merge_manifests_chronologically([(0, m)]) is m  # distinct paths when case matters
    with pytest.raises(ManifestError, match="'Dir' is both a file and a directory"):
        merge_manifests_chronologically([(0, m)], case_insensitive=True, sources=["m"])


def test_later_manifest_replacing_a_file_is_not_a_conflict() -> None:
    tree = InodeTree.from_manifests(
        [Manifest(paths=[mp("a/b", 1)]), Manifest(paths=[mp("a/b", 2, 9)])]
    )
    assert tree.hash_hex(node(tree, "a/b")) == h(2)
    assert tree.size[node(tree, "a/b")] == 9
    assert tree.file_count == 1


def test_surrogateescape_names_become_original_bytes() -> None:
    raw_dir, raw_file = b"caf\xe9", b"\xff\xfe.bin"
    path = os.fsdecode(raw_dir) + "/" + os.fsdecode(raw_file)
    tree = InodeTree.from_manifests([Manifest(paths=[mp(path, 7, 4, 11)])])
    d = tree.lookup(ROOT_INODE, raw_dir)
    assert d is not None and tree.is_dir(d)
    f = tree.lookup(d, raw_file)
    assert f is not None
    assert tree.size[f] == 4 and tree.hash_hex(f) == h(7) and tree.mtime[f] == 11
    assert tree.path_of(f) == path
    # Valid non-ASCII names are UTF-8.
    tree2 = InodeTree.from_manifests([Manifest(paths=[mp("\u00e9\U0001f600")])])
    assert tree2.lookup(ROOT_INODE, "\u00e9\U0001f600".encode()) is not None


@pytest.mark.parametrize("path", ["\ud800", "dir/\udfff.txt", "\ud800/file", "a/\udc00x/f"])
def test_lone_surrogate_that_is_not_surrogateescape_is_refused(path: str) -> None:
    m = Manifest(paths=[mp("fine"), mp(path)])
    with pytest.raises(ManifestError) as info:
        InodeTree.from_manifests([m], ["bad.manifest"])
    assert info.value.source == "bad.manifest"
    assert "bad.manifest" in str(info.value)
    assert info.value.entry is not None and repr(path) in info.value.entry


@pytest.mark.parametrize(
    ("size", "mtime"), [(2**64, 0), (0, 2**63), (0, -(2**63) - 1), (2**70, 2**70)]
)
def test_out_of_range_size_or_mtime_is_refused(size: int, mtime: int) -> None:
    # The decoder accepts any JSON integer (as deadline does); the tree's arrays cannot.
    m = Manifest(paths=[mp("ok"), mp("d/huge", 1, size, mtime)])
    with pytest.raises(ManifestError) as info:
        InodeTree.from_manifests([m], ["big.manifest"])
    assert info.value.source == "big.manifest"
    assert info.value.entry is not None and "d/huge" in info.value.entry
    assert "out of range" in str(info.value)


def test_extreme_but_valid_size_and_mtime() -> None:
    """The limits are what the kernel represents: st_size is a signed 64-bit count of bytes
    and st_mtime_ns a signed 64-bit count of nanoseconds."""
    m = Manifest(paths=[mp("a/x", 1, 2**63 - 1, MAX_MTIME_US), mp("a/y", 2, 0, -MAX_MTIME_US)])
    tree = InodeTree.from_manifests([m])
    assert tree.size[node(tree, "a/x")] == 2**63 - 1
    assert tree.mtime[node(tree, "a/y")] == -MAX_MTIME_US
    assert tree.mtime[node(tree, "a")] == MAX_MTIME_US


@pytest.mark.parametrize(
    ("size", "mtime", "what"),
    [(2**63, 0, "size"), (2**64 - 1, 0, "size"), (0, MAX_MTIME_US + 1, "mtime"),
     (0, -(2**63), "mtime")],
)  # fmt: skip
def test_sizes_and_mtimes_the_kernel_cannot_represent_are_refused(
    size: int, mtime: int, what: str
) -> None:
    m = Manifest(paths=[mp("ok", 1, 5, 5), mp("d/huge", 2, size, mtime)])
    with pytest.raises(ManifestError, match=f"the {what} .* is out of range") as e:
        InodeTree.from_manifests([m], ["m.json"])
    assert "d/huge" in str(e.value) and "m.json" in str(e.value)


def test_out_of_range_first_entry_is_refused() -> None:
    with pytest.raises(ManifestError, match="out of range"):
        InodeTree.from_manifests([Manifest(paths=[mp("x", 1, 0, 2**64)])], ["m"])


# -- the single-manifest fast build -----------------------------------------------------------


def _general_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InodeTree, "_build_single_v1", lambda self, manifest: False)


def _full_snapshot(tree: InodeTree) -> tuple[object, ...]:
    dirs = sorted(tree.children)
    return (
        *snapshot(tree),
        {d: list(tree.entries(d)) for d in dirs},
        [tree.nlink(i) for i in range(1, len(tree) + 1)],
        [tree.path_of(i) for i in range(1, len(tree) + 1)],
        tree.file_count,
        tree.total_size,
        tree.sources,
    )


_fast_paths = st.lists(
    st.lists(st.sampled_from(["a", "b", "Ä", "c.txt", "d d", "日本"]), min_size=1, max_size=4).map(
        "/".join
    ),
    min_size=1,
    max_size=25,
    unique=True,
)


@settings(max_examples=150, deadline=None)
@given(_fast_paths, st.booleans())
def test_single_manifest_fast_build_equals_general_build(paths: list[str], sort: bool) -> None:
    """The column-wise build of one v1 manifest gives exactly the tree (inode numbers,
    names, mtimes, sizes, hashes) of the general build through merge_layers, or, for a
    manifest the general build refuses, the same error."""
    if sort:
        paths = sorted(paths)
    manifest = Manifest(
        [mp(p, n=i + 1, size=i * 7, mtime=(-1) ** i * i * 1000) for i, p in enumerate(paths)]
    )
    results = []
    for general in (False, True):
        with pytest.MonkeyPatch.context() as mpatch:
            if general:
                _general_only(mpatch)
            try:
                results.append(_full_snapshot(InodeTree.from_manifests([manifest], ["m.json"])))
            except ManifestError as e:
                results.append(str(e))
    assert results[0] == results[1]


def test_single_manifest_fast_build_lookups_and_generated_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    rng = random.Random(5)
    paths = sorted(
        {
            f"shots/sq{rng.randrange(3)}/sh{rng.randrange(4)}/v{rng.randrange(2)}/"
            f"f{rng.randrange(300)}.exr"
            for _ in range(2000)
        }
        | {"top.txt", "shots/readme"}
    )
    manifest = Manifest([mp(p, n=i, size=i, mtime=i * 3) for i, p in enumerate(paths)])
    fast = InodeTree.from_manifests([manifest], ["m"])
    for i, p in enumerate(paths):
        ino = node(fast, p)
        assert fast.path_of(ino) == p and fast.size[ino] == i and fast.hash_hex(ino) == h(i)
    assert fast.lookup(ROOT_INODE, b"nope") is None
    assert fast.lookup(node(fast, "top.txt"), b"x") is None
    _general_only(monkeypatch)
    assert _full_snapshot(InodeTree.from_manifests([manifest], ["m"])) == _full_snapshot(fast)


@pytest.mark.parametrize(
    "paths",
    [
        ["a", "a/b"],
        ["a/b", "a"],
        ["\udcc3\udca9", "é"],
        ["d/\ud800"],
    ],
)
def test_single_manifest_fast_build_refuses_like_the_general_build(paths: list[str]) -> None:
    manifest = Manifest([mp(p, n=i) for i, p in enumerate(paths)])
    with pytest.raises(ManifestError) as fast:
        InodeTree.from_manifests([manifest], ["m.json"])
    with pytest.MonkeyPatch.context() as mpatch:
        _general_only(mpatch)
        with pytest.raises(ManifestError) as general:
            InodeTree.from_manifests([manifest], ["m.json"])
    assert str(fast.value) == str(general.value)
    assert "m.json" in str(fast.value)


def test_single_manifest_listing_a_path_twice_builds_like_the_merge() -> None:
    manifest = Manifest([mp("d/x", n=1), mp("d/y", n=2), mp("d/x", n=3, size=9)])
    fast = InodeTree.from_manifests([manifest], ["m"])
    with pytest.MonkeyPatch.context() as mpatch:
        _general_only(mpatch)
        general = InodeTree.from_manifests([manifest], ["m"])
    assert _full_snapshot(fast) == _full_snapshot(general)
    assert fast.hash_hex(node(fast, "d/x")) == h(3)


def test_tree_from_decoded_columns_equals_tree_from_the_manifest() -> None:
    from vfs.manifest.codec import decode_manifest_columns

    paths = sorted({f"s/{a}/{b}/f{c}" for a in range(3) for b in range(4) for c in range(9)})
    manifest = Manifest([mp(p, n=i, size=i, mtime=i - 50) for i, p in enumerate(paths)])
    data = encode_manifest(manifest)
    columns = decode_manifest_columns(data)
    assert columns is not None
    from_columns = InodeTree.from_manifests([columns], ["m"])
    with pytest.MonkeyPatch.context() as mpatch:
        _general_only(mpatch)
        general = InodeTree.from_manifests([manifest], ["m"])
        assert _full_snapshot(from_columns) == _full_snapshot(general)
    # Several manifests: the columns take part in the general merge.
    other = Manifest([mp("s/0/0/f0", n=99), mp("t/new", n=98)])
    mixed = InodeTree.from_manifests([columns, other], ["m", "o"])
    assert _full_snapshot(mixed) == _full_snapshot(
        InodeTree.from_manifests([manifest, other], ["m", "o"])
    )
    assert mixed.hash_hex(node(mixed, "s/0/0/f0")) == h(99)
