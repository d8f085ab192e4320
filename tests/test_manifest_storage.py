"""Manifest storage against the official ``deadline`` package (0.60.10 / job attachments
0.1.5) as the oracle, in-process, on the moto S3 server.

* keys: input and output manifest names and prefixes, the ``{ts}`` of output folders on a
  table of tricky floats (µs truncation quirk), session action ids;
* metadata: ASCII, non-ASCII and ``fileSystemLocationName``, compared with deadline's
  ``ManifestProperties.as_output_metadata``;
* both directions on a real S3 endpoint: deadline's reader reads what vfs uploads, vfs's
  reader reads what deadline's uploader (job submission and worker paths) wrote;
* output-manifest discovery and selection, and the chronological merge, against
  ``_get_tasks_manifests_keys_from_s3`` and ``get_output_manifests_by_asset_root``;
* the job ``attachments`` dict against ``Attachments``/``ManifestProperties.to_dict``;
* user metadata on both stores (S3 headers, LocalStore sidecars).

deadline's S3 client comes from a ``boto3.Session`` created while ``AWS_ENDPOINT_URL`` points
at moto (and ``HOME`` at a temporary directory); a test checks the client's endpoint.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from vfs.errors import ManifestError, StoreError
from vfs.hashing import hash_bytes, hash_string
from vfs.manifest import (
    Manifest,
    ManifestPath,
    ManifestV2,
    decode_manifest,
    encode_any_manifest,
    encode_manifest,
    merge_manifests_chronologically,
    to_v2,
)
from vfs.storage import (
    Attachments,
    FileSystem,
    LocalStore,
    ManifestProperties,
    PathFormat,
    S3Options,
    S3Store,
    asset_root_from_metadata,
    compute_root_path_hash,
    discover_output_manifest_keys,
    download_manifest,
    find_session_action_manifest_keys,
    format_session_action_time,
    input_manifest_name,
    input_manifest_path,
    input_manifest_prefix,
    manifest_key,
    manifest_metadata,
    manifest_path_of_key,
    output_manifest_name,
    output_manifest_path,
    output_manifest_prefix,
    select_output_manifest_keys,
    session_action_id_from_key,
    session_action_manifest_prefix,
    upload_manifest,
)

ROOT_PREFIX = "DeadlineCloud"
FARM = "farm-0123456789abcdef0123456789abcdef"
QUEUE = "queue-0123456789abcdef0123456789abcdef"
JOB = "job-0123456789abcdef0123456789abcdef"
STEP = "step-11111111111111111111111111111111"
CHUNKED_STEP = "step-22222222222222222222222222222222"
TASK1 = "task-11111111111111111111111111111111-0"
TASK2 = "task-11111111111111111111111111111111-1"
SA = [f"sessionaction-{i:032x}-{i}" for i in range(6)]

ROOTS = [
    ("/mnt/projects/shot_010", None),
    ("/mnt/café/日本語 root", None),
    ("/mnt/shared/assets", "ProjectShare"),
    ("C:\\Users\\artist\\Documents\\scene", "WinShare"),
]

TRICKY_TIMES = [
    0.0,
    0.5,
    1e-6,
    1e-7,
    0.1,
    0.7,
    1.5,
    -1.5,
    -0.000001,
    1000000000.000001,
    1234567890.1234567,
    1700000000.123456789,
    1716416223.0,
    1716416223.099999,  # the documented quirk: .099998Z
    1716416223.409012,
    1716416223.999999,
    1716416223.9999999,  # rounds up to the next second as a float
    2147483647.999999,
    253402300799.999,  # the last second of year 9999
]


def random_times(n: int) -> list[float]:
    rng = random.Random(20240522)
    out = [rng.uniform(0, 4e9) for _ in range(n)]
    out += [round(rng.uniform(1.5e9, 2e9), rng.randint(0, 7)) for _ in range(n)]
    return out


# -- deadline, in-process, on moto ----------------------------------------------------------


@pytest.fixture(scope="module")
def deadline_env(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``AWS_ENDPOINT_URL`` at moto and a throw-away ``HOME`` while this module runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("AWS_ACCOUNT_ID", "123456789012")  # moto's account: no STS lookup needed
        yield s3_endpoint


@pytest.fixture()
def dl_session(deadline_env: str) -> boto3.Session:
    """A boto3 session for deadline; its S3 client (deadline's own) is checked to hit moto."""
    from deadline.job_attachments._aws.aws_clients import get_s3_client

    session = boto3.Session(region_name="us-east-1")
    client = get_s3_client(session=session)  # the lru-cached client deadline will use
    assert client.meta.endpoint_url == deadline_env
    return session


@pytest.fixture()
def store(s3_endpoint: str, s3_bucket: str) -> S3Store:
    return S3Store(s3_bucket, ROOT_PREFIX, S3Options(endpoint_url=s3_endpoint))


def make_manifest(files: dict[str, bytes], mtime: int = 1_700_000_000_000_000) -> Manifest:
    return Manifest(
        paths=[
            ManifestPath(p, hash_bytes(d), len(d), mtime + i)
            for i, (p, d) in enumerate(files.items())
        ]
    )


def dl_manifest(manifest: Manifest) -> Any:
    from deadline.job_attachments.asset_manifests.decode import decode_manifest as dl_decode

    return dl_decode(encode_manifest(manifest).decode("utf-8"))


def dl_bytes(manifest: Any) -> bytes:
    return manifest.encode().encode("utf-8")  # type: ignore[no-any-return]


# -- names and keys ---------------------------------------------------------------------------


def test_session_action_time_matches_deadline_on_tricky_floats() -> None:
    from deadline.job_attachments._utils import _float_to_iso_datetime_string

    for t in TRICKY_TIMES + random_times(1000):
        assert format_session_action_time(t) == _float_to_iso_datetime_string(t), t
    assert format_session_action_time(1716416223.099999) == "2024-05-22T22:17:03.099998Z"
    assert format_session_action_time(1716416223.9999999) == "2024-05-22T22:17:04.000000Z"
    for bad in (math.nan, math.inf, -math.inf, 1e20):
        with pytest.raises(ValueError):
            format_session_action_time(bad)


def test_output_prefixes_match_deadline() -> None:
    from deadline.job_attachments.models import JobAttachmentS3Settings as S

    for t in TRICKY_TIMES[:8] + random_times(50):
        for sa in SA[:2]:
            assert session_action_manifest_prefix(
                FARM, QUEUE, JOB, STEP, TASK1, sa, t
            ) == S.partial_session_action_manifest_prefix(FARM, QUEUE, JOB, STEP, TASK1, sa, t)
            assert session_action_manifest_prefix(
                FARM, QUEUE, JOB, CHUNKED_STEP, None, sa, t
            ) == S.partial_session_action_manifest_prefix_without_task(
                FARM, QUEUE, JOB, CHUNKED_STEP, sa, t
            )
    settings = S("bucket", ROOT_PREFIX)
    assert f"{ROOT_PREFIX}/{manifest_key('x/y')}" == settings.add_root_and_manifest_folder_prefix(
        "x/y"
    )
    assert manifest_path_of_key(manifest_key("a/b_input")) == "a/b_input"
    with pytest.raises(ValueError):
        manifest_path_of_key("Data/x")
    assert f"{ROOT_PREFIX}/{output_manifest_prefix(FARM, QUEUE, JOB)}" == (
        settings.full_job_output_prefix(FARM, QUEUE, JOB) + "/"
    )
    assert f"{ROOT_PREFIX}/{output_manifest_prefix(FARM, QUEUE, JOB, STEP)}" == (
        settings.full_step_output_prefix(FARM, QUEUE, JOB, STEP) + "/"
    )
    assert f"{ROOT_PREFIX}/{output_manifest_prefix(FARM, QUEUE, JOB, STEP, TASK1)}" == (
        settings.full_task_output_prefix(FARM, QUEUE, JOB, STEP, TASK1) + "/"
    )
    with pytest.raises(ValueError):
        output_manifest_prefix(FARM, QUEUE, JOB, None, TASK1)


def test_manifest_names_match_deadline() -> None:
    from deadline.job_attachments.asset_manifests import HashAlgorithm, hash_data
    from deadline.job_attachments.models import JobAttachmentS3Settings
    from deadline.job_attachments.upload import S3AssetUploader

    manifest = dl_manifest(make_manifest({"a.txt": b"a"}))
    for root, fsl in ROOTS:
        # Input: the root path only, whatever the file system location (0.1.5).
        _, _, name = S3AssetUploader._gather_upload_metadata(
            manifest=manifest,
            source_root=Path(root),
            manifest_name_suffix="input",
            file_system_location_name=fsl,
        )
        assert input_manifest_name(root) == name
        # Output: fsl + root, as asset_sync._upload_output_manifest_to_s3.
        expected = hash_data(f"{fsl or ''}{root}".encode(), HashAlgorithm.XXH128)
        assert compute_root_path_hash(fsl, root) == expected
        assert output_manifest_name(root, fsl) == f"{expected}_output"
        assert ManifestProperties(root, file_system_location_name=fsl).output_manifest_name() == (
            f"{expected}_output"
        )
    prefix = JobAttachmentS3Settings("b", ROOT_PREFIX).partial_manifest_prefix(FARM, QUEUE)
    pattern = rf"{FARM}/{QUEUE}/Inputs/[0-9a-f]{{32}}"
    assert re.fullmatch(pattern, prefix)
    assert re.fullmatch(pattern, input_manifest_prefix(FARM, QUEUE))
    assert input_manifest_prefix(FARM, QUEUE) != input_manifest_prefix(FARM, QUEUE)
    assert input_manifest_path(FARM, QUEUE, "/r", "g" * 32) == (
        f"{FARM}/{QUEUE}/Inputs/{'g' * 32}/{hash_string('/r')}_input"
    )
    assert output_manifest_path(FARM, QUEUE, JOB, STEP, TASK1, SA[0], 1.25, "/r", "L") == (
        f"{FARM}/{QUEUE}/{JOB}/{STEP}/{TASK1}/1970-01-01T00:00:01.250000Z_{SA[0]}/"
        f"{hash_string('L/r')}_output"
    )


def test_session_action_id_parsing_matches_deadline() -> None:
    from deadline.job_attachments._incremental_downloads._manifest_s3_downloads import (
        SESSION_ACTION_ID_FROM_KEY_RE,
    )

    keys = [
        output_manifest_path(FARM, QUEUE, JOB, STEP, TASK1, SA[3], 1716416223.5, "/r"),
        output_manifest_path(FARM, QUEUE, JOB, STEP, None, SA[4], 1716416223.5, "/r"),
        f"{FARM}/{QUEUE}/{JOB}/{STEP}/{TASK1}/ts_sessionaction-abc/x_output",  # no index
        "no/session/action/here_output",
    ]
    for key in keys:
        m = SESSION_ACTION_ID_FROM_KEY_RE.search(key)
        assert session_action_id_from_key(key) == (m.group(1) if m else None)
    assert session_action_id_from_key(keys[0]) == SA[3]
    assert session_action_id_from_key(keys[2]) is None


# -- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize("root,fsl", [*ROOTS, ("/mnt/empty-fsl", ""), ("/x/\u007f\u0080", None)])
def test_metadata_matches_deadline(root: str, fsl: str | None) -> None:
    from deadline.job_attachments.download import _get_asset_root_from_metadata
    from deadline.job_attachments.models import ManifestProperties as DlProps
    from deadline.job_attachments.models import PathFormat as DlFormat

    theirs = DlProps(
        rootPath=root, rootPathFormat=DlFormat.POSIX, fileSystemLocationName=fsl
    ).as_output_metadata()["Metadata"]
    ours = manifest_metadata(root, fsl)
    assert list(ours.items()) == list(theirs.items())  # same keys, values and order
    assert ManifestProperties(root, file_system_location_name=fsl).as_output_metadata() == ours
    assert asset_root_from_metadata(ours) == _get_asset_root_from_metadata(theirs) == root
    if not root.isascii():
        assert ours["asset-root"] == ours["asset-root-json"] == json.dumps(root)
        assert ours["asset-root"].startswith('"') and ours["asset-root"].isascii()


def test_metadata_reader_rule() -> None:
    assert asset_root_from_metadata({}) is None
    assert asset_root_from_metadata({"asset-root": "/a"}) == "/a"
    # asset-root-json wins over asset-root
    assert asset_root_from_metadata({"asset-root": "/a", "asset-root-json": '"/b"'}) == "/b"
    with pytest.raises(ValueError):
        asset_root_from_metadata({"asset-root-json": "[1]"})
    with pytest.raises(ValueError):
        asset_root_from_metadata({"asset-root-json": "not json"})


# -- both directions on moto --------------------------------------------------------------------


@pytest.mark.parametrize("root,fsl", ROOTS[:3])
def test_deadline_reads_what_vfs_uploads(
    dl_session: boto3.Session, store: S3Store, root: str, fsl: str | None
) -> None:
    from deadline.job_attachments.download import get_asset_root_and_manifest_from_s3

    manifest = make_manifest({"out/frame_0001.exr": b"pixels", "log 日本.txt": b"log"})
    key = manifest_key(output_manifest_path(FARM, QUEUE, JOB, STEP, TASK1, SA[0], 1.5, root, fsl))
    data = encode_manifest(manifest)
    assert upload_manifest(store, key, data, manifest_metadata(root, fsl)) == hash_bytes(data)
    asset_root, theirs = get_asset_root_and_manifest_from_s3(
        store.full_key(key), store.bucket, dl_session
    )
    assert asset_root == root
    assert dl_bytes(theirs) == data
    # and our own reader agrees
    downloaded = download_manifest(store, key)
    assert downloaded.asset_root == root
    assert encode_any_manifest(downloaded.manifest) == data
    assert abs(downloaded.last_modified - time.time()) < 120


def test_vfs_reads_what_deadline_uploads(
    dl_session: boto3.Session, store: S3Store, tmp_path: Path
) -> None:
    """The submission uploader (input manifest, no metadata, and an output-style manifest
    with ``as_output_metadata``) and the worker's ``_upload_output_manifest_to_s3``."""
    from deadline.job_attachments.asset_sync import AssetSync
    from deadline.job_attachments.models import JobAttachmentS3Settings
    from deadline.job_attachments.models import ManifestProperties as DlProps
    from deadline.job_attachments.models import PathFormat as DlFormat
    from deadline.job_attachments.upload import S3AssetUploader

    root = tmp_path / "café root"
    files = {"a.txt": b"alpha", "sub/b.bin": bytes(range(200))}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = make_manifest(files)
    theirs = dl_manifest(manifest)
    settings = JobAttachmentS3Settings(store.bucket, ROOT_PREFIX)
    uploader = S3AssetUploader(
        dl_session, s3_max_pool_connections=8, small_file_threshold_multiplier=20
    )
    guid = "0" * 32
    partial, manifest_hash = uploader.upload_assets(
        settings,
        theirs,
        source_root=root,
        partial_manifest_prefix=input_manifest_prefix(FARM, QUEUE, guid),
        s3_check_cache_dir=str(tmp_path / "dl-cache"),
    )
    assert partial == input_manifest_path(FARM, QUEUE, str(root), guid)
    got = download_manifest(store, manifest_key(partial))
    assert got.asset_root is None  # input manifests carry no metadata
    assert encode_any_manifest(got.manifest) == dl_bytes(theirs)
    assert manifest_hash == hash_bytes(encode_any_manifest(got.manifest))
    for data in files.values():  # and deadline put the CAS objects where we look
        assert store.get_bytes(f"Data/{hash_bytes(data)}.xxh128") == data

    # Output-style upload with deadline's metadata, non-ASCII root and a location name.
    out_prefix = session_action_manifest_prefix(
        FARM, QUEUE, JOB, STEP, TASK1, SA[1], 1716416223.099999
    )
    props = DlProps(rootPath=str(root), rootPathFormat=DlFormat.POSIX, fileSystemLocationName="Loc")
    partial, _ = uploader.upload_assets(
        settings,
        theirs,
        source_root=root,
        partial_manifest_prefix=out_prefix,
        manifest_metadata=props.as_output_metadata(),
        manifest_file_name=output_manifest_name(str(root), "Loc"),
        s3_check_cache_dir=str(tmp_path / "dl-cache"),
    )
    got = download_manifest(store, manifest_key(partial))
    assert got.asset_root == str(root)
    assert encode_any_manifest(got.manifest) == dl_bytes(theirs)
    _, metadata, _ = store.get_with_metadata(manifest_key(partial))
    assert metadata == manifest_metadata(str(root), "Loc")

    # The worker agent's path (asset_sync), which builds its metadata dict differently.
    for worker_root, fsl in ROOTS[1:3]:
        full_prefix = settings.add_root_and_manifest_folder_prefix(
            session_action_manifest_prefix(FARM, QUEUE, JOB, STEP, TASK2, SA[2], 1.0)
        )
        AssetSync(FARM, boto3_session=dl_session)._upload_output_manifest_to_s3(
            settings, theirs, full_prefix, worker_root, fsl
        )
        key = manifest_key(
            output_manifest_path(FARM, QUEUE, JOB, STEP, TASK2, SA[2], 1.0, worker_root, fsl)
        )
        got = download_manifest(store, key)
        assert got.asset_root == worker_root
        _, metadata, _ = store.get_with_metadata(key)
        assert metadata == manifest_metadata(worker_root, fsl)


# -- discovery, selection and merge --------------------------------------------------------------


def wait_next_second() -> None:
    """Sleep into the next wall-clock second (moto's LastModified has 1 s resolution)."""
    now = time.time()
    time.sleep(math.floor(now) + 1 - now + 0.01)


ROOT_A, ROOT_B = "/mnt/projects/shot_010", "/mnt/café/tex"
T_OLD, T_NEW = 1716416223.099999, 1716416290.5


@pytest.fixture(scope="module")
def job_bucket(deadline_env: str) -> S3Store:
    """A job's outputs, uploaded by vfs: task 1 ran twice (the older session action's folder
    is uploaded *last*, so only the folder name marks it as older), task 2 once with two
    roots, a chunked step twice; three manifests touch ``shared.txt`` in distinct seconds."""
    client = boto3.client("s3", endpoint_url=deadline_env, region_name="us-east-1")
    bucket = f"vfs-test-discovery-{int(time.time() * 1000)}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(bucket, ROOT_PREFIX, S3Options(endpoint_url=deadline_env))

    def put(
        step: str, task: str | None, sa: str, t: float, root: str, files: dict[str, bytes]
    ) -> None:
        key = manifest_key(output_manifest_path(FARM, QUEUE, JOB, step, task, sa, t, root))
        upload_manifest(store, key, encode_manifest(make_manifest(files)), manifest_metadata(root))

    put(STEP, TASK1, SA[1], T_NEW, ROOT_A, {"frame1.exr": b"new frame 1"})
    put(STEP, TASK2, SA[2], T_OLD, ROOT_A, {"frame2.exr": b"f2", "shared.txt": b"t2"})
    put(STEP, TASK2, SA[2], T_OLD, ROOT_B, {"tex.png": b"texture"})
    wait_next_second()
    put(CHUNKED_STEP, None, SA[3], T_OLD, ROOT_A, {"chunk/a.exr": b"a", "shared.txt": b"c1"})
    wait_next_second()
    put(CHUNKED_STEP, None, SA[4], T_NEW, ROOT_A, {"chunk/b.exr": b"b", "shared.txt": b"c2!"})
    put(STEP, TASK1, SA[0], T_OLD, ROOT_A, {"frame1.exr": b"old frame 1"})
    # Objects that are not output manifests.
    store.put_bytes(f"Manifests/{FARM}/{QUEUE}/{JOB}/{STEP}/{TASK1}/notes.txt", b"x")
    store.put_bytes(f"Manifests/{FARM}/{QUEUE}/{JOB}/stray_output", b"x")
    return store


SCOPES = [
    (None, None),
    (STEP, None),
    (CHUNKED_STEP, None),
    (STEP, TASK1),
    (STEP, TASK2),
]


@pytest.mark.parametrize("latest", [True, False])
@pytest.mark.parametrize("step,task", SCOPES)
def test_discovery_matches_deadline(
    job_bucket: S3Store,
    dl_session: boto3.Session,
    step: str | None,
    task: str | None,
    latest: bool,
) -> None:
    from deadline.job_attachments.download import (
        _get_output_manifest_prefix,
        _get_tasks_manifests_keys_from_s3,
    )
    from deadline.job_attachments.models import JobAttachmentS3Settings

    store = job_bucket
    settings = JobAttachmentS3Settings(store.bucket, ROOT_PREFIX)
    prefix = _get_output_manifest_prefix(settings, FARM, QUEUE, JOB, step, task)
    theirs = _get_tasks_manifests_keys_from_s3(
        prefix, store.bucket, dl_session, select_latest_per_task=latest
    )
    ours = discover_output_manifest_keys(
        store, FARM, QUEUE, JOB, step, task, select_latest_per_task=latest
    )
    assert [store.full_key(k) for k in ours] == theirs
    assert ours, "every scope has output manifests"
    if latest and task == TASK1:
        assert [session_action_id_from_key(k) for k in ours] == [SA[1]]  # by folder name


def test_merged_outputs_match_deadline(job_bucket: S3Store, dl_session: boto3.Session) -> None:
    from deadline.job_attachments.download import get_output_manifests_by_asset_root
    from deadline.job_attachments.models import JobAttachmentS3Settings

    store = job_bucket
    settings = JobAttachmentS3Settings(store.bucket, ROOT_PREFIX)
    theirs = get_output_manifests_by_asset_root(settings, FARM, QUEUE, JOB, session=dl_session)

    by_root: dict[str, list[tuple[float, Manifest]]] = {}
    for key in discover_output_manifest_keys(store, FARM, QUEUE, JOB):
        got = download_manifest(store, key)
        assert got.asset_root is not None
        assert isinstance(got.manifest, Manifest)
        by_root.setdefault(got.asset_root, []).append((got.last_modified, got.manifest))
    ours = {}
    for root, entries in by_root.items():
        merged = merge_manifests_chronologically(entries)
        assert isinstance(merged, Manifest)
        ours[root] = encode_manifest(merged)

    assert set(theirs) == set(ours) == {ROOT_A, ROOT_B}
    for root, manifests in theirs.items():
        assert len(manifests) == 1
        assert dl_bytes(manifests[0]) == ours[root]
    merged_a = {p.path: p.hash for p in decode_manifest(ours[ROOT_A]).paths}
    assert merged_a["shared.txt"] == hash_bytes(b"c2!")  # the newest upload wins
    assert merged_a["frame1.exr"] == hash_bytes(b"new frame 1")  # the latest session action


@pytest.mark.parametrize("step,task,sa", [(STEP, TASK1, SA[0]), (CHUNKED_STEP, TASK1, SA[3])])
def test_session_action_lookup_matches_deadline(
    job_bucket: S3Store,
    dl_session: boto3.Session,
    step: str,
    task: str,
    sa: str,
) -> None:
    from deadline.job_attachments.download import get_output_manifests_by_asset_root
    from deadline.job_attachments.models import JobAttachmentS3Settings

    store = job_bucket
    settings = JobAttachmentS3Settings(store.bucket, ROOT_PREFIX)
    theirs = get_output_manifests_by_asset_root(
        settings, FARM, QUEUE, JOB, step, task, session_action_id=sa, session=dl_session
    )
    keys = find_session_action_manifest_keys(store, FARM, QUEUE, JOB, step, task, sa)
    assert keys and all(session_action_id_from_key(k) == sa for k in keys)
    ours: dict[str, list[bytes]] = {}
    for key in keys:
        got = download_manifest(store, key)
        assert got.asset_root is not None
        ours.setdefault(got.asset_root, []).append(encode_any_manifest(got.manifest))
    assert {r: [dl_bytes(m) for m in ms] for r, ms in theirs.items()} == ours


def test_selection_edge_cases_match_deadline(store: S3Store, dl_session: boto3.Session) -> None:
    """Odd listings, on moto against deadline, and the expected result spelled out. A key
    directly in a task folder counts as a "sub-folder" name in deadline's sort: sorting
    last, it hides the task's real outputs (a deadline quirk that vfs reproduces)."""
    from deadline.job_attachments.download import _get_tasks_manifests_keys_from_s3

    base = f"Manifests/{FARM}/{QUEUE}/{JOB}/{STEP}"
    keys = [
        f"{base}/{TASK1}/0_loose_output",  # sorts first: harmless
        f"{base}/{TASK1}/a_{SA[1]}/h_output",
        f"{base}/{TASK1}/b_{SA[0]}/h2_output",
        f"{base}/{TASK1}/b_{SA[0]}/h_output",
        f"{base}/{TASK2}/a_{SA[2]}/h_output",
        f"{base}/{TASK2}/z_loose_output",  # sorts last: task 2 yields nothing
        f"{base}/ts_{SA[3]}/h_output",
        f"{base}/ts_{SA[3]}/readme.txt",  # not an output manifest
    ]
    for key in keys:
        store.put_bytes(key, b"{}")
    for latest in (True, False):
        theirs = _get_tasks_manifests_keys_from_s3(
            f"{ROOT_PREFIX}/{base}/", store.bucket, dl_session, select_latest_per_task=latest
        )
        ours = discover_output_manifest_keys(
            store, FARM, QUEUE, JOB, STEP, select_latest_per_task=latest
        )
        assert [store.full_key(k) for k in ours] == theirs
        assert select_output_manifest_keys(keys, select_latest_per_task=latest) == ours
    assert select_output_manifest_keys(keys) == [keys[6], keys[2], keys[3]]
    assert select_output_manifest_keys(keys, select_latest_per_task=False) == [
        keys[6],
        *keys[:6],
    ]
    assert (
        discover_output_manifest_keys(LocalStore("/nonexistent-vfs-store"), FARM, QUEUE, JOB) == []
    )


# -- the job's attachments ------------------------------------------------------------------------


def test_attachments_dict_matches_deadline() -> None:
    from deadline.job_attachments.models import Attachments as DlAttachments
    from deadline.job_attachments.models import ManifestProperties as DlProps
    from deadline.job_attachments.models import PathFormat as DlFormat

    cases: list[dict[str, Any]] = [
        {"root": "/mnt/a", "fmt": "posix"},
        {
            "root": "C:\\proj",
            "fmt": "windows",
            "fsl": "WinShare",
            "path": f"{FARM}/{QUEUE}/Inputs/{'a' * 32}/x_input",
            "hash": "f" * 32,
            "dirs": ["out", "renders\\final"],
        },
        {"root": "/mnt/b", "fmt": "posix", "fsl": "", "path": "", "hash": None, "dirs": []},
    ]
    ours_list, theirs_list = [], []
    for c in cases:
        ours_list.append(
            ManifestProperties(
                c["root"],
                PathFormat(c["fmt"]),
                c.get("fsl"),
                c.get("path"),
                c.get("hash"),
                c.get("dirs"),
            )
        )
        theirs_list.append(
            DlProps(
                rootPath=c["root"],
                rootPathFormat=DlFormat(c["fmt"]),
                fileSystemLocationName=c.get("fsl"),
                inputManifestPath=c.get("path"),
                inputManifestHash=c.get("hash"),
                outputRelativeDirectories=c.get("dirs"),
            )
        )
    for ours, theirs in zip(ours_list, theirs_list, strict=True):
        assert list(ours.to_dict().items()) == list(theirs.to_dict().items())
        assert ManifestProperties.from_dict(theirs.to_dict()).to_dict() == theirs.to_dict()
    for fs in FileSystem:
        expected = DlAttachments(manifests=theirs_list, fileSystem=fs.value).to_dict()
        assert Attachments(ours_list, fs).to_dict() == expected
        assert json.dumps(Attachments.from_dict(expected).to_dict()) == json.dumps(expected)
    assert Attachments.from_dict({"manifests": []}).file_system == FileSystem.COPIED
    assert ManifestProperties("/r").root_path_format == PathFormat.POSIX  # this host
    with pytest.raises(ValueError):
        ManifestProperties.from_dict({"rootPath": "/r"})
    with pytest.raises(ValueError):
        ManifestProperties.from_dict({"rootPath": "/r", "rootPathFormat": "amiga"})


# -- user metadata on both stores ------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        return LocalStore(str(tmp_path / "store"))
    return request.getfixturevalue("store")


def test_store_metadata_round_trip(any_store: Any) -> None:
    key = manifest_key(input_manifest_path(FARM, QUEUE, "/r", "1" * 32))
    any_store.put_bytes(key, b"one", {"Asset-Root": "/r", "file-system-location-name": "L"})
    data, metadata, mtime = any_store.get_with_metadata(key)
    assert (data, metadata) == (b"one", {"asset-root": "/r", "file-system-location-name": "L"})
    assert abs(mtime - time.time()) < 120
    any_store.put_bytes(key, b"two")  # replacing an object replaces its metadata
    assert any_store.get_with_metadata(key)[:2] == (b"two", {})
    any_store.put_bytes(key, b"three", {"asset-root": "/x"})
    assert [k for k, _ in any_store.list_keys("")] == [key]  # no sidecar is listed
    with pytest.raises(StoreError, match="not printable ASCII"):
        any_store.put_bytes(key, b"x", {"asset-root": "/café"})
    with pytest.raises(StoreError, match="not printable ASCII"):
        any_store.put_bytes(key, b"x", {"asset-root": "a\nb"})
    assert any_store.get_with_metadata(key)[:2] == (b"three", {"asset-root": "/x"})


def test_local_store_sidecar_layout(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    root = "/mnt/café"
    key = manifest_key(output_manifest_path(FARM, QUEUE, JOB, STEP, TASK1, SA[0], 2.0, root))
    data = encode_manifest(make_manifest({"a": b"a"}))
    upload_manifest(store, key, data, manifest_metadata(root))
    assert (tmp_path / key).read_bytes() == data  # the object is the plain manifest
    sidecar = json.loads((tmp_path / ".vfs-meta" / key).read_text())
    assert sidecar == manifest_metadata(root)
    got = download_manifest(store, key)
    assert (got.asset_root, encode_any_manifest(got.manifest)) == (root, data)
    assert got.last_modified == (tmp_path / key).stat().st_mtime
    with pytest.raises(StoreError, match="reserved"):
        store.put_bytes(".vfs-meta/x", b"x")
    (tmp_path / ".vfs-meta" / key).write_text('{"asset-root-json": "[1]"}')
    with pytest.raises(ManifestError, match="asset-root-json"):
        download_manifest(store, key)
    store.put_file(key, tmp_path / key)  # put_file never carries metadata: sidecar removed
    assert not (tmp_path / ".vfs-meta" / key).exists()


def test_v2_manifests_round_trip(tmp_path: Path) -> None:
    """download_manifest reads both formats, by manifestVersion."""
    store = LocalStore(str(tmp_path))
    v2 = to_v2(make_manifest({"a.txt": b"a", "dir/b.txt": b"bb"}))
    data = encode_any_manifest(v2)
    key = manifest_key(input_manifest_path(FARM, QUEUE, "/r", "2" * 32))
    upload_manifest(store, key, data, manifest_metadata("/r"))
    got = download_manifest(store, key)
    assert isinstance(got.manifest, ManifestV2)
    assert (encode_any_manifest(got.manifest), got.asset_root) == (data, "/r")
