"""Run the official ``deadline`` job-attachments code as a compatibility oracle.

Run by tests/test_compat_deadline.py in a subprocess of the project's venv python, with a
throw-away ``HOME`` and fake AWS credentials, so that deadline's import-time boto session and
its default caches (``~/.deadline``) never touch anything real. Every subcommand prints one
JSON object on stdout.

Subcommands:

* ``snapshot --root R --destination D [--name N] --cache-dir C``: deadline's
  ``api.manifest._manifest_snapshot``; prints ``{"manifest": path or null}``.
* ``reencode IN OUT``: ``decode_manifest(IN's text).encode()`` written to OUT as UTF-8.
* ``upload --bucket B --root-prefix P --cache-dir C --endpoint URL FILE…``: the job
  submission path (``S3AssetManager.prepare_paths_for_upload`` →
  ``hash_assets_and_create_manifest`` → ``upload_assets``) against the S3 server at URL
  (``AWS_ENDPOINT_URL`` must be set to it by the caller; this is checked). Prints the
  attachments, the manifest's S3 key, its hash and the endpoint deadline's client used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

FARM_ID = "farm-0123456789abcdef0123456789abcdef"
QUEUE_ID = "queue-0123456789abcdef0123456789abcdef"


def _require_isolated_env() -> None:
    """Refuse to run unless HOME is a throw-away directory and AWS is faked."""
    for var in ("HOME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        if not os.environ.get(var):
            raise SystemExit(f"deadline_oracle: {var} must be set by the caller")


def cmd_snapshot(args: argparse.Namespace) -> dict[str, object]:
    from deadline.job_attachments.api.manifest import _manifest_snapshot

    result = _manifest_snapshot(
        root=args.root,
        destination=args.destination,
        name=args.name,
        hash_cache_dir=args.cache_dir,
    )
    return {"manifest": None if result is None else result.manifest}


def cmd_reencode(args: argparse.Namespace) -> dict[str, object]:
    from deadline.job_attachments.asset_manifests.decode import decode_manifest

    with open(args.input, encoding="utf-8") as f:
        manifest = decode_manifest(f.read())
    text = manifest.encode()
    with open(args.output, "wb") as f:
        f.write(text.encode("utf-8"))
    return {"output": args.output}


def cmd_upload(args: argparse.Namespace) -> dict[str, object]:
    if os.environ.get("AWS_ENDPOINT_URL") != args.endpoint:
        raise SystemExit("deadline_oracle: AWS_ENDPOINT_URL must be the --endpoint URL")

    import boto3
    from deadline.job_attachments._aws.aws_clients import get_s3_client
    from deadline.job_attachments.asset_manifests import HashAlgorithm, hash_data
    from deadline.job_attachments.models import JobAttachmentS3Settings
    from deadline.job_attachments.upload import S3AssetManager

    session = boto3.Session(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ["AWS_DEFAULT_REGION"],
    )
    # The client deadline builds for its transfers must be aimed at the local server.
    endpoint_used = get_s3_client(session).meta.endpoint_url
    if endpoint_used != args.endpoint:
        raise SystemExit(f"deadline_oracle: deadline's S3 client would use {endpoint_used}")

    settings = JobAttachmentS3Settings(s3BucketName=args.bucket, rootPrefix=args.root_prefix)
    manager = S3AssetManager(
        farm_id=FARM_ID, queue_id=QUEUE_ID, job_attachment_settings=settings, session=session
    )
    group = manager.prepare_paths_for_upload(
        input_paths=args.files, output_paths=[], referenced_paths=[]
    )
    _, manifests = manager.hash_assets_and_create_manifest(
        asset_groups=group.asset_groups,
        total_input_files=group.total_input_files,
        total_input_bytes=group.total_input_bytes,
        hash_cache_dir=args.cache_dir,
    )
    _, attachments = manager.upload_assets(
        manifests, s3_check_cache_dir=args.cache_dir, force_s3_check=True
    )
    [props] = attachments.manifests
    [arm] = manifests
    assert arm.asset_manifest is not None
    encoded = arm.asset_manifest.encode()
    return {
        "endpoint": endpoint_used,
        "attachments": attachments.to_dict(),
        "root": props.rootPath,
        "manifest_key": f"{args.root_prefix}/Manifests/{props.inputManifestPath}",
        "manifest_hash": props.inputManifestHash,
        "encoded_hash": hash_data(encoded.encode("utf-8"), HashAlgorithm.XXH128),
        "store_uri": f"s3://{args.bucket}/{args.root_prefix}",
    }


def main(argv: list[str]) -> None:
    _require_isolated_env()
    parser = argparse.ArgumentParser(prog="deadline_oracle")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("snapshot")
    p.add_argument("--root", required=True)
    p.add_argument("--destination", required=True)
    p.add_argument("--name", default=None)
    p.add_argument("--cache-dir", required=True)
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("reencode")
    p.add_argument("input")
    p.add_argument("output")
    p.set_defaults(func=cmd_reencode)

    p = sub.add_parser("upload")
    p.add_argument("--bucket", required=True)
    p.add_argument("--root-prefix", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_upload)

    args = parser.parse_args(argv)
    result = args.func(args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
