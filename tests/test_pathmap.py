"""Storage profiles and path mapping, checked against deadline's own code.

deadline's ``_PathMappingRuleApplier``, ``_generate_path_mapping_rules`` and ``hash_data``
are imported here as the oracle (test-only dependency; these modules do no I/O at import).
"""

from __future__ import annotations

import json
import ntpath
import posixpath
from pathlib import Path

import pytest
from deadline.job_attachments import models as dl_models
from deadline.job_attachments._path_mapping import (
    _generate_path_mapping_rules,
    _PathMappingRuleApplier,
)
from deadline.job_attachments.asset_manifests.hash_algorithms import HashAlgorithm, hash_data

from vfs.errors import VfsError
from vfs.manifest import ManifestPath
from vfs.pathmap import (
    FileSystemLocation,
    FileSystemLocationType,
    OsFamily,
    PathFormat,
    PathMappingApplier,
    PathMappingRule,
    StorageProfile,
    UnmappedPathError,
    compute_root_path_hash,
    generate_path_mapping_rules,
    parse_path_mapping_rules,
    resolve_manifest_paths,
)

W, P = PathFormat.WINDOWS, PathFormat.POSIX

WINDOWS_RULES = [
    (r"C:\Projects", "/mnt/projects"),
    (r"C:\Projects\Special", "/mnt/special"),
    (r"\\server\share\assets", "/mnt/assets"),
    ("D:/Mixed/Seps/", "/mnt/mixed"),
    (r"E:\\", "/mnt/e"),
]
WINDOWS_PATHS = [
    r"C:\Projects\a.txt",
    r"c:\projects\A.TXT",  # case-insensitive match, case kept in the remainder
    "C:/Projects/sub/b.txt",  # forward slashes
    r"C:\Projects\\sub\\\c.txt",  # repeated separators
    "C:\\Projects\\",  # trailing separator: the rule's root itself
    r"C:\Projects",
    r"C:\ProjectsX\a.txt",  # not a component prefix
    r"C:\Projects\Special\deep\d.exr",  # the longer rule wins
    r"C:\projects\SPECIAL\e.exr",
    r"\\server\share\assets\tex\f.png",  # UNC
    r"\\SERVER\Share\Assets\g.png",
    "//server/share/assets/h.png",  # UNC with forward slashes
    r"\\server\other\i.png",
    r"D:\mixed\seps\j.txt",
    "D:/Mixed\\Seps/k/l.txt",
    r"E:\m.txt",
    r"F:\nothing.txt",
    "relative\\path.txt",
    "",
]
POSIX_RULES = [
    ("/mnt/projects", "/local/projects"),
    ("/mnt/projects/special", "/local/special"),
    ("/mnt/trailing/", "/local/trailing"),
    ("/", "/root-rule"),
]
POSIX_PATHS = [
    "/mnt/projects/a.txt",
    "/mnt/Projects/a.txt",  # case-sensitive: only the "/" rule matches
    "/mnt/projects//sub///b.txt",
    "/mnt/projects/",
    "/mnt/projects",
    "/mnt/projectsX/a",
    "/mnt/projects/special/c.exr",
    "/mnt/trailing/d",
    "/elsewhere/e",
    "relative/f",
    "",
]


def deadline_applier(fmt: PathFormat, rules: list[tuple[str, str]]) -> _PathMappingRuleApplier:
    return _PathMappingRuleApplier(
        [dl_models.PathMappingRule(fmt.value, src, dst) for src, dst in rules]
    )


@pytest.mark.parametrize(
    ("fmt", "rules", "paths"),
    [(W, WINDOWS_RULES, WINDOWS_PATHS), (P, POSIX_RULES, POSIX_PATHS)],
    ids=["windows", "posix"],
)
def test_applier_matches_deadline(
    fmt: PathFormat, rules: list[tuple[str, str]], paths: list[str]
) -> None:
    ours = PathMappingApplier(PathMappingRule(fmt, s, d) for s, d in rules)
    theirs = deadline_applier(fmt, rules)
    for path in paths:
        assert ours.transform(path) == str(theirs.transform(path)), path
        try:
            expected: str | None = str(theirs.strict_transform(path))
        except ValueError:
            expected = None
        if expected is None:
            with pytest.raises(UnmappedPathError, match="no path mapping rule"):
                ours.strict_transform(path)
        else:
            assert ours.strict_transform(path) == expected, path


def test_applier_spot_values() -> None:
    """A few results spelled out, so the table above cannot pass by both sides being wrong."""
    ours = PathMappingApplier(PathMappingRule(W, s, d) for s, d in WINDOWS_RULES)
    assert ours.strict_transform(r"c:\projects\A.TXT") == "/mnt/projects/A.TXT"
    assert ours.strict_transform(r"C:\projects\SPECIAL\e.exr") == "/mnt/special/e.exr"
    assert ours.strict_transform("//server/share/assets/h.png") == "/mnt/assets/h.png"
    assert ours.try_transform(r"C:\ProjectsX\a.txt") is None


def test_mixed_formats_refused() -> None:
    with pytest.raises(VfsError, match="mix source path formats"):
        PathMappingApplier([PathMappingRule(W, "C:\\a", "/a"), PathMappingRule(P, "/b", "/b")])


def test_empty_rules_map_nothing() -> None:
    applier = PathMappingApplier([])
    assert applier.transform("/a") == "/a"
    with pytest.raises(UnmappedPathError):
        applier.strict_transform("/a")


def profile(pid: str, os_family: str, locations: list[tuple[str, str, str]]) -> StorageProfile:
    return StorageProfile.from_dict(
        {
            "storageProfileId": pid,
            "displayName": pid,
            "osFamily": os_family,
            "fileSystemLocations": [{"name": n, "path": p, "type": t} for n, p, t in locations],
        }
    )


def test_generate_rules_matches_deadline() -> None:
    src = profile(
        "sp-win",
        "WINDOWS",
        [
            ("Projects", r"C:\Projects", "SHARED"),
            ("Assets", r"\\server\assets", "LOCAL"),
            ("OnlyHere", r"D:\x", "LOCAL"),
        ],
    )
    dst = profile(
        "sp-linux",
        "linux",
        [
            ("Assets", "/mnt/assets", "SHARED"),
            ("Projects", "/mnt/projects", "LOCAL"),
            ("OnlyThere", "/y", "SHARED"),
        ],
    )
    ours = generate_path_mapping_rules(src, dst)
    theirs = _generate_path_mapping_rules(src.to_dict(), dst.to_dict())
    assert [r.to_dict() for r in ours] == [
        {
            "source_path_format": r.source_path_format,
            "source_path": r.source_path,
            "destination_path": r.destination_path,
        }
        for r in theirs
    ]
    assert [r.source_path_format for r in ours] == [W, W]
    assert generate_path_mapping_rules(src, src) == []
    back = generate_path_mapping_rules(dst, src)
    assert {r.source_path_format for r in back} == {P}
    assert src.os_family is OsFamily.WINDOWS
    assert src.file_system_locations[1] == FileSystemLocation(
        "Assets", r"\\server\assets", FileSystemLocationType.LOCAL
    )


def test_rules_file_shapes(tmp_path: Path) -> None:
    rules = [{"source_path_format": "windows", "source_path": "C:\\a", "destination_path": "/a"}]
    assert parse_path_mapping_rules(rules) == parse_path_mapping_rules(
        {"path_mapping_rules": rules}
    )
    camel = [{"sourcePathFormat": "WINDOWS", "sourcePath": "C:\\a", "destinationPath": "/a"}]
    assert parse_path_mapping_rules(camel) == [PathMappingRule(W, "C:\\a", "/a")]
    with pytest.raises(VfsError, match="source_path_format"):
        parse_path_mapping_rules([{**rules[0], "source_path_format": "amiga"}])
    with pytest.raises(VfsError, match="JSON list"):
        parse_path_mapping_rules(json.loads('{"rules": []}'))


def test_resolve_manifest_paths_windows_root() -> None:
    entries = [
        ManifestPath("out/a.exr", "0" * 32, 1, 0),
        ManifestPath("b.txt", "1" * 32, 1, 0),
    ]
    rules = [PathMappingRule(W, r"C:\Proj\out", "/local/out")]
    got = resolve_manifest_paths(entries, r"C:\Proj", W, PathMappingApplier(rules))
    assert [(r.entry.path, r.local_path, r.source_path) for r in got.resolved] == [
        ("out/a.exr", "/local/out/a.exr", r"C:\Proj\out\a.exr")
    ]
    assert [(u.entry.path, u.absolute_source_path) for u in got.unmapped] == [
        ("b.txt", r"C:\Proj\b.txt")
    ]
    # Same result as deadline's join + normpath + strict_transform on the Windows root.
    theirs = deadline_applier(W, [(r"C:\Proj\out", "/local/out")])
    assert str(theirs.strict_transform(r"C:\Proj\out\a.exr")) == got.resolved[0].local_path


RESOLVE_CASES = [
    # (format, root as the source host wrote it, rules, manifest paths)
    (W, r"\\server\share\proj", [(r"\\SERVER\Share", "/local/unc")],
     ["a/b.exr", "c.txt", "sub/../d.txt"]),  # UNC root; the rule's case differs
    (W, r"\\server\share\\", [(r"\\server\share", "/local/share")],
     ["a.exr", "x/y.exr"]),  # the share itself, with a trailing separator
    (W, "C:/Proj\\shots/", [(r"C:\proj\shots", "/local/shots")],
     ["x/y.exr", "z.exr"]),  # mixed and trailing separators
    (W, "C:\\Proj\\out\\\\", [("c:/proj/out/", "/local/out")],
     ["a.exr", "sub/b.exr"]),  # doubled trailing separator; the rule's written with "/"
    (W, r"D:\elsewhere", [(r"C:\Proj", "/local/proj")], ["a.exr"]),  # unmapped
    (P, "/mnt/proj//", [("/mnt/proj", "/local/proj")], ["a/b.exr", "c.txt"]),
    (P, "/mnt/we\\ird/", [("/mnt", "/local/mnt")], ["f.txt"]),  # "\\" is a name character
    (P, "/mnt/proj", [("/mnt/proj/", "/local/proj")], ["./a//b.exr"]),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "root", "rules", "paths"), RESOLVE_CASES)
def test_resolve_manifest_paths_unc_mixed_trailing_like_deadline(
    fmt: PathFormat, root: str, rules: list[tuple[str, str]], paths: list[str]
) -> None:
    """Roots with UNC shares, mixed separators and trailing separators resolve as
    deadline's sync-output resolves them (``_job_download_helpers.py::
    _transform_manifests_to_absolute_paths``: the source format's ``normpath(join(root,
    path))``, then ``strict_transform``, a ``ValueError`` meaning unmapped)."""
    entries = [ManifestPath(p, "0" * 32, 1, 0) for p in paths]
    got = resolve_manifest_paths(
        entries, root, fmt, PathMappingApplier(PathMappingRule(fmt, s, d) for s, d in rules)
    )
    source_os = ntpath if fmt is W else posixpath
    theirs = deadline_applier(fmt, rules)
    want_resolved, want_unmapped = [], []
    for p in paths:
        source = source_os.normpath(source_os.join(root, p))
        try:
            want_resolved.append((p, str(theirs.strict_transform(source)), source))
        except ValueError:
            want_unmapped.append((p, source))
    assert [(r.entry.path, r.local_path, r.source_path) for r in got.resolved] == want_resolved
    assert [(u.entry.path, u.absolute_source_path) for u in got.unmapped] == want_unmapped


def test_resolve_manifest_paths_spot_values() -> None:
    """A few results written out, so that the table above is not only relative."""
    e = [ManifestPath("a/b.exr", "0" * 32, 1, 0)]
    unc = resolve_manifest_paths(
        e, r"\\srv\share\proj\\", W, PathMappingApplier([PathMappingRule(W, r"\\SRV\share", "/l")])
    )
    assert [(r.source_path, r.local_path) for r in unc.resolved] == [
        (r"\\srv\share\proj\a\b.exr", "/l/proj/a/b.exr")
    ]
    mixed = resolve_manifest_paths(e, "C:/Proj\\shots/", W, None)
    assert [r.local_path for r in mixed.resolved] == [r"C:\Proj\shots\a\b.exr"]
    posix = resolve_manifest_paths(e, "/mnt/we\\ird//", P, None)
    assert [r.local_path for r in posix.resolved] == ["/mnt/we\\ird/a/b.exr"]


def test_resolve_manifest_paths_posix_without_rules() -> None:
    entries = [ManifestPath("x/y.txt", "0" * 32, 1, 0)]
    got = resolve_manifest_paths(entries, "/root/", P, None)
    assert [r.local_path for r in got.resolved] == ["/root/x/y.txt"]
    assert got.unmapped == []


@pytest.mark.parametrize(
    ("location", "root"),
    [
        (None, "/mnt/projects/shot1"),
        ("Projects", "/mnt/projects/shot1"),
        ("Proj", r"C:\Users\artist\café"),
        ("", r"\\server\share"),
    ],
)
def test_root_path_hash_matches_deadline(location: str | None, root: str) -> None:
    # deadline asset_sync.py::_upload_output_manifest_to_s3
    theirs = hash_data(f"{location or ''}{root}".encode(), HashAlgorithm.XXH128)
    assert compute_root_path_hash(location, root) == theirs
    # Without a location, the same as deadline's rule.get_hashed_source_path (attachment
    # download matches manifest file names with it).
    rule = dl_models.PathMappingRule("posix", root, "/dest")
    ours = PathMappingRule(PathFormat.POSIX, root, "/dest")
    assert ours.hashed_source_path() == rule.get_hashed_source_path(HashAlgorithm.XXH128)
    assert compute_root_path_hash(None, root) == ours.hashed_source_path()
