"""deadline's job-submission attachments, as the oracle of ``vfs attachment prepare-job``.

Usage: ``python deadline_submit.py SPEC.json``, run like tests/compat/deadline_oracle.py (a
throw-away ``HOME``, fake credentials, ``AWS_ENDPOINT_URL`` aimed at the moto server). SPEC:
``{"bucket", "root_prefix", "endpoint", "cache_dir", "farm_id", "queue_id", "inputs": [files],
"input_dirs": [dirs], "outputs": [dirs], "references": [paths], "storage_profile": dict |
null}``.

What runs is deadline 0.60.10's: the input-directory expansion of
``client/api/_submit_job_bundle.py::create_job_from_job_bundle`` (inline there, so repeated
here line for line), then ``S3AssetManager.prepare_paths_for_upload`` →
``hash_assets_and_create_manifest`` → ``upload_assets``. Prints ``{"attachments": …}``.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from deadline_oracle import _local_session, _require_isolated_env


def main() -> None:
    _require_isolated_env()
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    from deadline.job_attachments.models import (
        FileSystemLocation,
        FileSystemLocationType,
        JobAttachmentS3Settings,
        StorageProfile,
        StorageProfileOperatingSystemFamily,
    )
    from deadline.job_attachments.upload import S3AssetManager

    session, _ = _local_session(spec["endpoint"])
    profile = None
    if spec["storage_profile"]:
        p = spec["storage_profile"]
        profile = StorageProfile(
            storageProfileId=p["storageProfileId"],
            displayName=p.get("displayName", ""),
            osFamily=StorageProfileOperatingSystemFamily(p["osFamily"].upper()),
            fileSystemLocations=[
                FileSystemLocation(
                    name=loc["name"], path=loc["path"], type=FileSystemLocationType(loc["type"])
                )
                for loc in p["fileSystemLocations"]
            ],
        )
    input_filenames = set(spec["inputs"])
    referenced_paths = set(spec["references"])
    for directory in spec["input_dirs"]:  # _submit_job_bundle.py, require_paths_exist=False
        if not os.path.isdir(directory):
            referenced_paths.add(directory)
            continue
        is_dir_empty = True
        for root, _, files in os.walk(directory):
            if not files:
                continue
            is_dir_empty = False
            input_filenames.update(os.path.normpath(os.path.join(root, file)) for file in files)
        if is_dir_empty:
            referenced_paths.add(directory)

    settings = JobAttachmentS3Settings(s3BucketName=spec["bucket"], rootPrefix=spec["root_prefix"])
    manager = S3AssetManager(
        farm_id=spec["farm_id"], queue_id=spec["queue_id"], job_attachment_settings=settings,
        session=session,
    )  # fmt: skip
    group = manager.prepare_paths_for_upload(
        input_paths=sorted(input_filenames),
        output_paths=sorted(spec["outputs"]),
        referenced_paths=sorted(referenced_paths),
        storage_profile=profile,
    )
    _, manifests = manager.hash_assets_and_create_manifest(
        asset_groups=group.asset_groups,
        total_input_files=group.total_input_files,
        total_input_bytes=group.total_input_bytes,
        hash_cache_dir=spec["cache_dir"],
    )
    _, attachments = manager.upload_assets(
        manifests, s3_check_cache_dir=spec["cache_dir"], force_s3_check=True
    )
    sys.stdout.write(json.dumps({"attachments": attachments.to_dict()}) + "\n")


if __name__ == "__main__":
    main()
