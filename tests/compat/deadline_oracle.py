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
* ``batch SPEC OUT``: run the operations listed in the JSON file SPEC (a list of objects,
  each with ``"op"``: ``"diff"``, ``"snapshot"`` or ``"merge"``, and the keyword arguments
  of deadline's ``api.manifest._manifest_diff`` / ``_manifest_snapshot`` /
  ``_manifest_merge``) in one process, and write a JSON list to OUT with one result per
  operation: ``{"new": [...], "modified": [...], "deleted": [...]}`` for a diff (deadline's
  order), ``{"manifest": path or null}`` otherwise, or ``{"error": "Type: message"}`` when
  deadline raised. Prints ``{"count": n}``.
* ``outputs --bucket B --root-prefix P --farm-id F --queue-id Q --job-id J [--step-id S]
  [--task-id T] --endpoint URL``: deadline's ``download.get_output_manifests_by_asset_root``
  against the S3 server at URL (``AWS_ENDPOINT_URL`` must be set to it); prints
  ``{"endpoint": URL, "roots": {root: [encoded merged manifest, ...]}}``.
* ``download --bucket B --root-prefix P --endpoint URL --dest D [--conflict-resolution C]
  MANIFEST``: deadline's ``download.download_files_from_manifests`` of the manifest file
  into D (CAS prefix ``P/Data``); prints the processed and skipped file counts.
* ``attachment-upload --s3-root-uri URI --endpoint URL --cache-dir C [--root-dir R]…
  [--path-mapping-rules FILE] [--upload-manifest-path PREFIX] MANIFEST…``: deadline's
  ``api.attachment._attachment_upload`` (what ``deadline attachment upload`` runs) to the S3
  server at URL (``AWS_ENDPOINT_URL`` must be set to it); prints ``{"endpoint": URL,
  "uploads": [{output_manifest_path, output_manifest_hash, source_path}, …]}``.
* ``manifest-upload --bucket B --root-prefix P [--s3-key-prefix K] --endpoint URL FILE``:
  deadline's ``api.manifest._manifest_upload`` (what ``deadline manifest upload`` runs) to
  the S3 server at URL (``AWS_ENDPOINT_URL`` must be set to it); prints ``{"endpoint": URL}``.
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


def _local_session(endpoint: str):  # type: ignore[no-untyped-def]
    """A boto3 session whose S3 client, as deadline builds it, is aimed at ``endpoint``.

    Returns ``(session, endpoint deadline's client uses)``; exits unless they agree.
    """
    if os.environ.get("AWS_ENDPOINT_URL") != endpoint:
        raise SystemExit("deadline_oracle: AWS_ENDPOINT_URL must be the --endpoint URL")

    import boto3
    from deadline.job_attachments._aws.aws_clients import get_s3_client

    session = boto3.Session(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ["AWS_DEFAULT_REGION"],
    )
    # The client deadline builds for its transfers must be aimed at the local server.
    endpoint_used = get_s3_client(session).meta.endpoint_url
    if endpoint_used != endpoint:
        raise SystemExit(f"deadline_oracle: deadline's S3 client would use {endpoint_used}")
    return session, endpoint_used


def cmd_upload(args: argparse.Namespace) -> dict[str, object]:
    from deadline.job_attachments.asset_manifests import HashAlgorithm, hash_data
    from deadline.job_attachments.models import JobAttachmentS3Settings
    from deadline.job_attachments.upload import S3AssetManager

    session, endpoint_used = _local_session(args.endpoint)

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


def _batch_one(spec: dict[str, object]) -> dict[str, object]:
    from deadline.job_attachments.api.manifest import (
        _manifest_diff,
        _manifest_merge,
        _manifest_snapshot,
    )

    kwargs = {k: v for k, v in spec.items() if k != "op"}
    if spec["op"] == "diff":
        diff = _manifest_diff(**kwargs)
        return {"new": diff.new, "modified": diff.modified, "deleted": diff.deleted}
    if spec["op"] == "snapshot":
        snap = _manifest_snapshot(**kwargs)
        return {"manifest": None if snap is None else snap.manifest}
    if spec["op"] == "merge":
        merged = _manifest_merge(**kwargs)
        return {"manifest": None if merged is None else merged.local_manifest_path}
    raise SystemExit(f"deadline_oracle: unknown batch op {spec['op']!r}")


def cmd_batch(args: argparse.Namespace) -> dict[str, object]:
    with open(args.spec, encoding="utf-8") as f:
        specs = json.load(f)
    results = []
    for spec in specs:
        try:
            results.append(_batch_one(spec))
        except Exception as e:  # reported per operation; the caller decides
            results.append({"error": f"{type(e).__name__}: {e}"})
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f)
    return {"count": len(results)}


def cmd_outputs(args: argparse.Namespace) -> dict[str, object]:
    from deadline.job_attachments.download import get_output_manifests_by_asset_root
    from deadline.job_attachments.models import JobAttachmentS3Settings

    session, endpoint_used = _local_session(args.endpoint)
    settings = JobAttachmentS3Settings(s3BucketName=args.bucket, rootPrefix=args.root_prefix)
    by_root = get_output_manifests_by_asset_root(
        settings,
        args.farm_id,
        args.queue_id,
        args.job_id,
        step_id=args.step_id,
        task_id=args.task_id,
        session=session,
    )
    return {
        "endpoint": endpoint_used,
        "roots": {root: [m.encode() for m in ms] for root, ms in by_root.items()},
    }


def cmd_manifest_upload(args: argparse.Namespace) -> dict[str, object]:
    from deadline.job_attachments.api.manifest import _manifest_upload

    session, endpoint_used = _local_session(args.endpoint)
    _manifest_upload(
        manifest_file=args.file,
        s3_bucket_name=args.bucket,
        s3_cas_prefix=args.root_prefix,
        boto_session=session,
        s3_key_prefix=args.s3_key_prefix,
    )
    return {"endpoint": endpoint_used}


def cmd_attachment_upload(args: argparse.Namespace) -> dict[str, object]:
    from dataclasses import asdict

    from deadline.job_attachments.api.attachment import _attachment_upload

    session, endpoint_used = _local_session(args.endpoint)
    infos = _attachment_upload(
        manifests=args.manifests,
        s3_root_uri=args.s3_root_uri,
        boto3_session=session,
        root_dirs=args.root_dir,
        path_mapping_rules=args.path_mapping_rules,
        upload_manifest_path=args.upload_manifest_path,
        s3_check_cache_dir=args.cache_dir,
    )
    return {"endpoint": endpoint_used, "uploads": [asdict(i) for i in infos]}


def cmd_download(args: argparse.Namespace) -> dict[str, object]:
    from deadline.job_attachments.asset_manifests.decode import decode_manifest
    from deadline.job_attachments.download import download_files_from_manifests
    from deadline.job_attachments.models import FileConflictResolution

    session, endpoint_used = _local_session(args.endpoint)
    with open(args.manifest, encoding="utf-8") as f:
        manifest = decode_manifest(f.read())
    stats = download_files_from_manifests(
        s3_bucket=args.bucket,
        manifests_by_root={args.dest: manifest},
        cas_prefix=f"{args.root_prefix}/Data",
        session=session,
        conflict_resolution=FileConflictResolution[args.conflict_resolution],
    )
    return {
        "endpoint": endpoint_used,
        "processed_files": stats.processed_files,
        "skipped_files": stats.skipped_files,
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

    p = sub.add_parser("batch")
    p.add_argument("spec")
    p.add_argument("output")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("outputs")
    p.add_argument("--bucket", required=True)
    p.add_argument("--root-prefix", required=True)
    p.add_argument("--farm-id", required=True)
    p.add_argument("--queue-id", required=True)
    p.add_argument("--job-id", required=True)
    p.add_argument("--step-id", default=None)
    p.add_argument("--task-id", default=None)
    p.add_argument("--endpoint", required=True)
    p.set_defaults(func=cmd_outputs)

    p = sub.add_parser("manifest-upload")
    p.add_argument("--bucket", required=True)
    p.add_argument("--root-prefix", required=True)
    p.add_argument("--s3-key-prefix", default=None)
    p.add_argument("--endpoint", required=True)
    p.add_argument("file")
    p.set_defaults(func=cmd_manifest_upload)

    p = sub.add_parser("attachment-upload")
    p.add_argument("--s3-root-uri", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--root-dir", action="append", default=[])
    p.add_argument("--path-mapping-rules", default=None)
    p.add_argument("--upload-manifest-path", default=None)
    p.add_argument("manifests", nargs="+")
    p.set_defaults(func=cmd_attachment_upload)

    p = sub.add_parser("download")
    p.add_argument("--bucket", required=True)
    p.add_argument("--root-prefix", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--conflict-resolution", default="CREATE_COPY")
    p.add_argument("manifest")
    p.set_defaults(func=cmd_download)

    args = parser.parse_args(argv)
    result = args.func(args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
