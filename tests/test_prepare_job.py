"""``vfs attachment prepare-job``: the job's ``attachments`` JSON, against deadline's own
submission code (tests/compat/deadline_submit.py: ``S3AssetManager.prepare_paths_for_upload``
→ ``hash_assets_and_create_manifest`` → ``upload_assets``) with the same inputs, storage
profile and moto bucket."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_vfs
from test_worker_steps import objects

from vfs.pathmap import StorageProfile
from vfs.transfer.submit import MisconfiguredInputsError, group_asset_paths

COMPAT = Path(__file__).resolve().parent / "compat"
FARM = "farm-0123456789abcdef0123456789abcdef"
QUEUE = "queue-0123456789abcdef0123456789abcdef"


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def layout(tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A submission's paths and the storage profile: unlocated files under ``proj/`` (a
    dot directory, a missing input, an empty input directory, an output directory), a
    LOCAL location with inputs in a subdirectory only, and a SHARED location."""
    proj, local, shared = tmp / "proj", tmp / "local-loc", tmp / "shared-loc"
    put(proj / "scene/shot.blend", os.urandom(30_000))
    put(proj / "tex/wood.exr", os.urandom(5_000))
    put(proj / "tex/.cache/mip.bin", b"dot directories are walked")
    put(proj / "tex/sub dir/café.png", b"non-ASCII")
    put(proj / "tex/empty.dat", b"")
    (proj / "emptydir").mkdir()
    put(local / "sub/a.abc", os.urandom(2_000))
    put(local / "sub/b/c.abc", b"c")
    put(shared / "lib/common.exr", b"on the shared file system: never uploaded")
    put(tmp / "single-loc/deep/only.txt", b"one input: the root is its directory")
    profile = {
        "storageProfileId": "sp-1", "displayName": "Linux", "osFamily": "LINUX",
        "fileSystemLocations": [
            {"name": "LocalAssets", "path": str(local), "type": "LOCAL"},
            {"name": "Shared", "path": str(shared), "type": "SHARED"},
            {"name": "Single", "path": str(tmp / "single-loc"), "type": "LOCAL"},
        ],
    }  # fmt: skip
    spec = {
        "inputs": [str(proj / "scene/shot.blend"), str(proj / "missing.txt"),
                   str(local / "sub/a.abc"), str(shared / "lib/common.exr"),
                   str(tmp / "single-loc/deep/only.txt")],
        "input_dirs": [str(proj / "tex"), str(proj / "emptydir"), str(local / "sub/b")],
        "outputs": [str(proj / "renders"), str(local / "sub/out"), str(shared / "out")],
        "references": [],
    }  # fmt: skip
    return spec, profile


def deadline_submit(tmp: Path, spec: dict[str, Any]) -> dict[str, Any]:
    path = tmp / "deadline-spec.json"
    path.write_text(json.dumps(spec))
    home = tmp / "deadline-home"
    home.mkdir()
    out = subprocess.run(
        [sys.executable, str(COMPAT / "deadline_submit.py"), str(path)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(home), "AWS_ENDPOINT_URL": spec["endpoint"],
             "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])["attachments"]
    return result


GUID = re.compile(r"^(.+/Inputs/)([0-9a-f]{32})(/[0-9a-f]{32}_input)$")


def without_guid(attachments: dict[str, Any]) -> dict[str, Any]:
    """The attachments with each input manifest's random folder replaced by ``GUID``."""
    copy = json.loads(json.dumps(attachments))
    for m in copy["manifests"]:
        if "inputManifestPath" in m:
            match = GUID.match(m["inputManifestPath"])
            assert match, m["inputManifestPath"]
            m["inputManifestPath"] = f"{match[1]}GUID{match[3]}"
    return copy


def test_prepare_job_equals_deadlines_submission(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    spec, profile = layout(tmp_path)
    theirs = deadline_submit(tmp_path, {
        **spec, "storage_profile": profile, "bucket": s3_bucket, "root_prefix": "deadline",
        "endpoint": s3_endpoint, "cache_dir": str(tmp_path / "deadline-cache"),
        "farm_id": FARM, "queue_id": QUEUE,
    })  # fmt: skip
    profile_file = tmp_path / "profile.json"
    profile_file.write_text(json.dumps({**profile, "ResponseMetadata": {"HTTPStatusCode": 200}}))
    args = ["attachment", "prepare-job", "--store", f"s3://{s3_bucket}/ours",
            "--farm-id", FARM, "--queue-id", QUEUE, "--storage-profile", str(profile_file),
            "--hash-cache-dir", str(tmp_path / "our-cache")]  # fmt: skip
    for p in spec["inputs"]:
        args += ["-i", p]
    for d in spec["input_dirs"]:
        args += ["--input-dir", d]
    for d in spec["outputs"]:
        args += ["-o", d]
    result = run_vfs(*args, env={"AWS_ENDPOINT_URL": s3_endpoint})
    ours = json.loads(result.stdout.splitlines()[-1])

    assert without_guid(ours) == without_guid(theirs)
    # What that is: the unlocated root and the LOCAL location's root (its subdirectory,
    # not the location), nothing of the SHARED location.
    assert [(m["rootPath"], m.get("fileSystemLocationName"), m.get("outputRelativeDirectories"))
            for m in ours["manifests"]] == [
        (str(tmp_path / "local-loc/sub"), "LocalAssets", ["out"]),
        (str(tmp_path / "proj"), None, ["renders"]),
        (str(tmp_path / "single-loc/deep"), "Single", None),
    ]  # fmt: skip
    assert ours["fileSystem"] == "COPIED"
    # The same objects: CAS data, and manifests byte for byte (hash in the JSON included)
    # with no metadata, at keys equal but for the random folder.
    mine = objects(s3_client, s3_bucket, "ours")
    official = objects(s3_client, s3_bucket, "deadline")

    def by_guidless_key(found: dict[str, tuple[bytes, dict[str, str]]]) -> dict[str, Any]:
        return {GUID.sub(r"\1GUID\3", k): v for k, v in found.items()}

    assert by_guidless_key(mine) == by_guidless_key(official)
    manifest = json.loads(mine[f"Manifests/{ours['manifests'][1]['inputManifestPath']}"][0])
    assert sorted(p["path"] for p in manifest["paths"]) == [
        "scene/shot.blend", "tex/.cache/mip.bin", "tex/empty.dat", "tex/sub dir/café.png",
        "tex/wood.exr"]  # fmt: skip


def test_grouping_rules(tmp_path: Path) -> None:
    spec, profile_dict = layout(tmp_path)
    profile = StorageProfile.from_dict(profile_dict)
    # Without a profile every path of this host is in one group (first component "/").
    [one] = group_asset_paths([spec["inputs"][0], spec["inputs"][2]], [], [])
    assert one.root_path == str(tmp_path) and one.file_system_location_name is None
    # A directory given as an input file, and with require_paths_exist a missing file.
    with pytest.raises(MisconfiguredInputsError, match="Directories classified as files"):
        group_asset_paths([str(tmp_path / "proj/tex")], [], [], profile)
    with pytest.raises(MisconfiguredInputsError, match=r"missing\.txt"):
        group_asset_paths([str(tmp_path / "proj/missing.txt")], [], [], profile,
                          require_paths_exist=True)  # fmt: skip
    # A path only under the SHARED location: no group at all.
    assert group_asset_paths([spec["inputs"][3]], [str(tmp_path / "shared-loc/o")], [],
                             profile) == []  # fmt: skip
