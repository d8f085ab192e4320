"""Compatibility with the official ``deadline`` package (0.60.10, job attachments 0.1.5).

The official code is the oracle and runs in a subprocess (tests/compat/deadline_oracle.py)
with a throw-away ``HOME``, fake credentials and, for uploads, ``AWS_ENDPOINT_URL`` aimed at
the session's moto server on 127.0.0.1, so its import-time boto session and default caches
touch nothing real.

* Snapshots: ``deadline``'s ``_manifest_snapshot`` and ours (CLI and library) on the same
  tricky tree give the same manifest bytes and the same file name apart from the timestamp;
  each side decodes and re-encodes the other's manifest to identical bytes.
* Uploads: deadline's job-submission code hashes and uploads a real tree (the installed
  ``deadline.job_attachments`` sources) to moto; ``vfs mount`` serves it from the bucket
  with exact content, sizes and mtimes, and a Python program imports that very package from
  the mount and uses it.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import Mounted, run_vfs

from vfs.hashing import hash_bytes, hash_string
from vfs.manifest import decode_manifest, encode_manifest
from vfs.snapshot import snapshot_directory, write_manifest_file

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ORACLE = Path(__file__).parent / "compat" / "deadline_oracle.py"
ROOT_PREFIX = "DeadlineCloud"
FARM_ID = "farm-0123456789abcdef0123456789abcdef"
QUEUE_ID = "queue-0123456789abcdef0123456789abcdef"
NAME_RE = re.compile(
    r"^(?P<name>.+)-(?P<hash>[0-9a-f]{32})-(?P<ts>\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d)\.manifest$"
)

NS_MTIME = 1_700_000_000_123_456_789  # sub-microsecond nanoseconds: recorded as ...123456 µs
BASE_NS = 1_600_000_000_000_000_000

# Relative path -> content. Every one of these must be in the manifest.
TRICKY_FILES: dict[str, bytes] = {
    "Z.txt": b"upper-case Z sorts before lower-case a\n",
    "a.txt": b"lower-case a\n",
    "B/upper.txt": b"in B\n",
    "b/lower.txt": b"in b\n",
    "b/deep/er/still/nested.bin": bytes(range(256)) * 400,  # > the 8 KiB hash buffer
    "empty.dat": b"",
    unicodedata.normalize("NFC", "café.txt"): "NFC café".encode(),
    unicodedata.normalize("NFD", "café.txt"): "NFD café, a different name".encode(),
    "😀.txt": "astral 😀: a surrogate pair in UTF-16".encode(),
    "ａ.txt": "ａ (U+FF41) sorts after the emoji in UTF-16".encode(),
    "sub dir/with space.txt": b"spaces\n",
    "[brackets].txt": b"glob metacharacters in a name\n",
    'we"ird\\na\tme\x7f.txt': b"quote, backslash, tab and DEL in the name\n",
    "ns/nanos.txt": b"mtime with nanoseconds\n",
    "ns/pre1970.txt": b"negative mtime\n",
    os.fsdecode(b"not-utf8-\xff.txt"): b"a lone surrogate (surrogateescape) in the name\n",
}
# Selected by neither implementation: dot files, files under dot directories, dangling links.
IGNORED_FILES = {".hidden": b"dot file\n", ".git/config": b"[core]\n", "b/.dot/x.txt": b"x\n"}
SYMLINK = "link-to-a.txt"  # a symlink to a.txt: followed, listed with a.txt's content


def build_tricky_tree(root: Path) -> set[str]:
    """Create the tree; return the manifest paths expected from it."""
    for i, (rel, data) in enumerate({**TRICKY_FILES, **IGNORED_FILES}.items()):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, ns=(BASE_NS, BASE_NS + i * 1_000_001_007))
    os.utime(root / "ns/nanos.txt", ns=(BASE_NS, NS_MTIME))
    os.utime(root / "ns/pre1970.txt", ns=(BASE_NS, -1_500_000_001))
    (root / SYMLINK).symlink_to("a.txt")
    (root / "dangling.txt").symlink_to("does-not-exist")
    return {*TRICKY_FILES, SYMLINK}


def oracle(*args: str, home: Path, env: dict[str, str] | None = None) -> dict[str, object]:
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


def split_name(path: str) -> tuple[str, str, datetime.datetime]:
    """``(name, root hash, timestamp)`` of a ``{name}-{hash}-{ts}.manifest`` file name."""
    m = NAME_RE.match(os.path.basename(path))
    assert m, f"unexpected manifest file name {os.path.basename(path)!r}"
    return m["name"], m["hash"], datetime.datetime.strptime(m["ts"], "%Y-%m-%dT%H-%M-%S")


@pytest.mark.parametrize(
    ("root_form", "name"),
    [
        ("absolute", "tricky"),
        ("absolute", None),
        ("trailing-slash", None),
        ("relative", "tricky"),
    ],
)
def test_snapshot_bytes_and_names_match_deadline(
    tmp_path: Path, root_form: str, name: str | None
) -> None:
    tree = tmp_path / "tree"
    expected_paths = build_tricky_tree(tree)
    root = {
        "absolute": str(tree),
        "trailing-slash": f"{tree}/",
        "relative": os.path.relpath(tree),  # relative to our cwd, shared by every side
    }[root_form]
    dest = {side: tmp_path / f"out-{side}" for side in ("deadline", "cli", "lib")}
    started = datetime.datetime.now().replace(microsecond=0)

    got = oracle(
        "snapshot",
        "--root",
        root,
        "--destination",
        str(dest["deadline"]),
        "--cache-dir",
        str(tmp_path / "deadline-cache"),
        *(["--name", name] if name else []),
        home=tmp_path / "home",
    )
    deadline_file = str(got["manifest"])

    cli_args = ["manifest", "snapshot", "--root", root, "-d", str(dest["cli"]), "--json"]
    out = json.loads(run_vfs(*cli_args, *(["-n", name] if name else [])).stdout)
    assert out["root"] == root
    cli_file = out["manifest"]

    manifest = snapshot_directory(root)
    assert manifest is not None
    lib_file = write_manifest_file(root, manifest, str(dest["lib"]), name)

    # The manifest bytes are identical.
    deadline_bytes = Path(deadline_file).read_bytes()
    assert Path(cli_file).read_bytes() == deadline_bytes
    assert Path(lib_file).read_bytes() == deadline_bytes
    assert encode_manifest(manifest) == deadline_bytes

    # The file names are identical apart from the timestamp, which is local time now.
    finished = datetime.datetime.now()
    d_name, d_hash, _ = split_name(deadline_file)
    assert d_hash == hash_string(root)
    if name:
        assert d_name == name
    for path, dest_dir in [(deadline_file, dest["deadline"]), (cli_file, dest["cli"])]:
        assert os.path.dirname(path) == str(dest_dir)
    assert os.path.dirname(lib_file) == str(dest["lib"])
    for ours in (cli_file, lib_file):
        o_name, o_hash, o_ts = split_name(ours)
        assert (o_name, o_hash) == (d_name, d_hash)
        assert started <= o_ts <= finished

    # The tree really exercised what it was built for (guards against a vacuous pass).
    doc = json.loads(deadline_bytes)
    paths = [e["path"] for e in doc["paths"]]
    assert set(paths) == expected_paths
    assert paths.index("Z.txt") < paths.index("a.txt")
    assert paths.index("😀.txt") < paths.index("ａ.txt")  # UTF-16 order, not code points
    by_path = {e["path"]: e for e in doc["paths"]}
    assert by_path["ns/nanos.txt"]["mtime"] == NS_MTIME // 1000
    assert by_path["ns/pre1970.txt"]["mtime"] == -1_500_001  # floor, not truncation
    assert by_path["empty.dat"]["size"] == 0
    assert by_path[SYMLINK]["hash"] == hash_bytes(TRICKY_FILES["a.txt"])
    assert deadline_bytes.isascii() and not deadline_bytes.endswith(b"\n")
    assert b"\\ud83d\\ude00" in deadline_bytes and b"\\u007f" in deadline_bytes
    assert b"not-utf8-\\udcff.txt" in deadline_bytes


def test_manifests_cross_decode(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    build_tricky_tree(tree)
    home = tmp_path / "home"
    got = oracle(
        "snapshot",
        "--root",
        str(tree),
        "--destination",
        str(tmp_path / "out-deadline"),
        "--cache-dir",
        str(tmp_path / "deadline-cache"),
        home=home,
    )
    deadline_bytes = Path(str(got["manifest"])).read_bytes()
    manifest = snapshot_directory(str(tree))
    assert manifest is not None
    ours = Path(write_manifest_file(str(tree), manifest, str(tmp_path / "out-vfs")))
    our_bytes = ours.read_bytes()

    # deadline reads our manifest and writes it back unchanged ...
    back = tmp_path / "deadline-reencoded"
    oracle("reencode", str(ours), str(back), home=home)
    assert back.read_bytes() == our_bytes

    # ... and we read deadline's and write it back unchanged.
    assert encode_manifest(decode_manifest(deadline_bytes)) == deadline_bytes
    assert encode_manifest(decode_manifest(deadline_bytes.decode("ascii"))) == deadline_bytes

    # Both also canonicalise a non-canonical rendering of it (entries and keys out of order,
    # whitespace) the same way.
    doc = json.loads(deadline_bytes)
    doc["paths"] = [{k: e[k] for k in reversed(e)} for e in reversed(doc["paths"])]
    loose = tmp_path / "loose.manifest"
    loose.write_text(json.dumps({k: doc[k] for k in reversed(doc)}, indent=2), encoding="ascii")
    oracle("reencode", str(loose), str(back), home=home)
    assert back.read_bytes() == deadline_bytes
    assert encode_manifest(decode_manifest(loose.read_bytes())) == deadline_bytes


# A program run from the venv with the mount on its path: it imports deadline's job
# attachments package FROM THE MOUNT, then uses that code to decode the manifest describing
# the mount and to hash every mounted file.
IMPORT_PROGRAM = r"""
import json, os, sys
mount, manifest_file = sys.argv[1], sys.argv[2]
import deadline.job_attachments as ja
from deadline.job_attachments.asset_manifests import HashAlgorithm, hash_data, hash_file
from deadline.job_attachments.asset_manifests import decode as decode_module
text = open(manifest_file, encoding="utf-8").read()
manifest = decode_module.decode_manifest(text)
print(json.dumps({
    "package_file": ja.__file__,
    "module_file": decode_module.__file__,
    "loaded": {
        name: getattr(mod, "__file__", None)
        for name, mod in sys.modules.items()
        if name.startswith("deadline.job_attachments")
    },
    "reencoded_equal": manifest.encode() == text,
    "manifest_hash": hash_data(text.encode("utf-8"), HashAlgorithm.XXH128),
    "hashes": {
        p.path: hash_file(os.path.join(mount, p.path), HashAlgorithm.XXH128)
        for p in manifest.paths
    },
}))
"""


def installed_job_attachments() -> Path:
    """The installed ``deadline/job_attachments`` directory (found without importing it)."""
    spec = importlib.util.find_spec("deadline.job_attachments")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def test_deadline_upload_is_mounted_by_vfs(
    tmp_path: Path,
    s3_endpoint: str,
    s3_client: S3Client,
    s3_bucket: str,
    vfs_mount: Callable[..., Mounted],
) -> None:
    source = installed_job_attachments()
    files = sorted(
        str(p) for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert len(files) > 20
    assert sum(os.path.getsize(f) for f in files) < 20 * 1024 * 1024

    # deadline hashes and uploads the tree, through its own S3 client, to moto.
    got = oracle(
        "upload",
        "--bucket",
        s3_bucket,
        "--root-prefix",
        ROOT_PREFIX,
        "--cache-dir",
        str(tmp_path / "deadline-cache"),
        "--endpoint",
        s3_endpoint,
        *files,
        home=tmp_path / "home",
        env={"AWS_ENDPOINT_URL": s3_endpoint},
    )
    assert got["endpoint"] == s3_endpoint
    assert got["root"] == str(source)
    key = str(got["manifest_key"])
    assert re.fullmatch(
        rf"{ROOT_PREFIX}/Manifests/{FARM_ID}/{QUEUE_ID}/Inputs/[0-9a-f]{{32}}/"
        rf"{hash_string(str(source))}_input",
        key,
    ), key

    # It really went to moto: the objects are in the moto bucket, exactly as described.
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert hash_bytes(body) == got["manifest_hash"] == got["encoded_hash"]
    manifest = decode_manifest(body)
    assert encode_manifest(manifest) == body
    listed = {
        obj["Key"]
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for obj in page.get("Contents", [])
    }
    assert listed == {key} | {f"{ROOT_PREFIX}/Data/{e.hash}.xxh128" for e in manifest.paths}

    # The manifest is what we would have made of the same files.
    ours = snapshot_directory(str(source), exclude=["**/__pycache__/**"])
    assert ours is not None and encode_manifest(ours) == body
    by_path = {e.path: e for e in manifest.paths}
    assert {os.path.join(str(source), p) for p in by_path} == set(files)

    # Mount the manifest straight from the bucket. The mount point sits at
    # site/deadline/job_attachments so that `site` on sys.path makes the mounted tree the
    # `deadline.job_attachments` package (`deadline` is a namespace package).
    site = tmp_path / "site"
    mnt = site / "deadline" / "job_attachments"
    m = vfs_mount(
        mnt,
        [f"s3://{s3_bucket}/{key}"],
        str(got["store_uri"]),
        "--endpoint-url",
        s3_endpoint,
    )

    # Every file reads back byte-equal, with the manifest's size and mtime.
    for rel, entry in by_path.items():
        src = source / rel
        mounted = m.path / rel
        assert mounted.read_bytes() == src.read_bytes(), rel
        st, src_st = mounted.stat(), src.stat()
        assert st.st_size == entry.size == src_st.st_size, rel
        assert st.st_mtime_ns // 1000 == entry.mtime == src_st.st_mtime_ns // 1000, rel

    # The mount shows exactly the manifest's files.
    under_mount = {
        Path(d, f).relative_to(m.path).as_posix() for d, _, fs in os.walk(m.path) for f in fs
    }
    assert under_mount == set(by_path)

    # A Python program imports deadline's job attachments package from the mount and uses it.
    manifest_file = tmp_path / "input.manifest"
    manifest_file.write_bytes(body)
    result = subprocess.run(
        [sys.executable, "-B", "-c", IMPORT_PROGRAM, str(m.path), str(manifest_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PYTHONPATH": str(site),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(tmp_path / "home"),
        },
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print("imported from the mount:", report["module_file"])
    assert Path(report["module_file"]) == m.path / "asset_manifests" / "decode.py"
    assert Path(report["package_file"]) == m.path / "__init__.py"
    assert len(report["loaded"]) > 5
    for name, file in report["loaded"].items():
        if file is not None:
            assert Path(file).is_relative_to(m.path), (name, file)
    assert report["reencoded_equal"] is True
    assert report["manifest_hash"] == got["manifest_hash"]
    assert report["hashes"] == {p: e.hash for p, e in by_path.items()}
