"""Commands that do not mount never import the FUSE stack (pyfuse3, trio), nor boto3 when
no S3 location is used; a background ``vfs mount`` imports none of them before it spawns
the daemon.

Each case runs in a fresh interpreter that invokes the ``vfs`` click group in process
(``standalone_mode=False``) and then reports which of the FUSE modules ``sys.modules``
holds. ``vfs --help`` still lists the lazily registered ``mount`` and ``unmount``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from vfs.cli.main import LAZY_COMMANDS, cli
from vfs.hashing import hash_bytes
from vfs.manifest import Manifest, ManifestPath, encode_manifest

FUSE_STACK = ("pyfuse3", "trio")
HEAVY = (*FUSE_STACK, "boto3")
"""What no command that does not mount (or use S3) imports."""
PROBE = """
import json, sys
from vfs.cli.main import cli
code = 0
try:
    cli.main(args=sys.argv[1:], prog_name="vfs", standalone_mode=False)
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": [m for m in FUSE_STACK if m in sys.modules]}))
""".replace("FUSE_STACK", repr(HEAVY))


def loaded_after(*args: str, cwd: Path) -> list[str]:
    """The FUSE modules imported by ``vfs ARGS``, which must succeed."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] in (0, None), result.stdout + result.stderr
    return list(report["loaded"])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"alpha\n")
    manifest = tmp_path / "a.manifest"
    entry = ManifestPath("a.txt", hash_bytes(b"alpha\n"), 6, 0)
    manifest.write_bytes(encode_manifest(Manifest([entry])))
    store = tmp_path / "store"
    store.mkdir()
    return {
        "root": str(root),
        "manifest": str(manifest),
        "store": "file://" + str(store),
        "cache": str(tmp_path / "cache"),
    }


@pytest.mark.parametrize(
    "args",
    [
        ["manifest", "show", "{manifest}"],
        ["manifest", "show", "--json", "{manifest}"],
        ["manifest", "diff", "--manifest", "{manifest}", "--root", "{root}", "--no-hash-cache"],
        ["manifest", "snapshot", "--root", "{root}", "-d", "{cache}/out", "--no-hash-cache"],
        ["cache", "stats", "--cache-dir", "{cache}"],
        ["cache", "prune", "--all", "--cache-dir", "{cache}"],
        [
            "attachment",
            "upload",
            "-m",
            "{manifest}",
            "-r",
            "{root}",
            "--s3-root-uri",
            "{store}",
            "--s3-check-cache-dir",
            "{cache}",
            "--json",
        ],
        ["cache", "warm", "--help"],
        ["commit", "--help"],
        ["--help"],
    ],
    ids=lambda args: " ".join(a for a in args if not a.startswith(("{", "-"))) or "help",
)
def test_commands_that_do_not_mount_leave_the_fuse_stack_unimported(
    args: list[str], files: dict[str, str], tmp_path: Path
) -> None:
    assert loaded_after(*(a.format(**files) for a in args), cwd=tmp_path) == []


def test_help_lists_mount_and_unmount(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vfs", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    commands = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert {"mount", "unmount", "manifest", "cache", "attachment", "stats"} <= commands
    # The short help stored for the lazy entries is the commands' own.
    for name, (_, short) in LAZY_COMMANDS.items():
        real = cli.get_command(click.Context(cli), name)
        assert real is not None and real.get_short_help_str(200) == short
        # (long ones are cut to the terminal width, as click cuts any short help)
        assert f"  {name}  " in result.stdout and short[:40] in result.stdout
    mount_help = subprocess.run(
        [sys.executable, "-m", "vfs", "mount", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    assert "--manifest" in mount_help.stdout and "--cache-size" in mount_help.stdout


def test_mount_still_loads_its_command(tmp_path: Path) -> None:
    """The lazy entry resolves: ``vfs mount`` without arguments is a usage error, not an
    import error."""
    result = subprocess.run(
        [sys.executable, "-m", "vfs", "mount"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and "MOUNTPOINT" in result.stderr


MOUNT_PROBE = """
import json, sys
import vfs.mount.launch as launch
from vfs.cli.main import cli
seen = {}

def fake_start_mount(argv, log_file, timeout=0):
    seen["argv"] = list(argv)
    seen["loaded"] = [m for m in HEAVY if m in sys.modules]
    return 4242

launch.start_mount = fake_start_mount
import vfs.cli.mount
vfs.cli.mount.start_mount = fake_start_mount
cli.main(args=sys.argv[1:], prog_name="vfs", standalone_mode=False)
print(json.dumps(seen))
""".replace("HEAVY", repr((*FUSE_STACK, "boto3", "botocore", "vfs.mount.fetcher", "rich")))


def test_background_mount_spawns_the_daemon_before_importing_fuse_or_boto3(
    files: dict[str, str], tmp_path: Path
) -> None:
    """``vfs mount`` without ``--foreground`` starts the daemon having imported neither the
    FUSE stack, nor the fetcher, nor boto3 (each costs the answer time of a mount), even for
    an s3:// store and manifest; the daemon's command line still carries every option."""
    (tmp_path / "mnt").mkdir()
    args = ["mount", str(tmp_path / "mnt"), "--manifest", files["manifest"],
            "--manifest", "s3://bucket/m.manifest", "--store", "s3://bucket/root",
            "--cache-dir", files["cache"], "--verify", "strict"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", MOUNT_PROBE, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["loaded"] == []
    argv = seen["argv"]
    assert argv[-1] == "--foreground" or "--foreground" in argv
    assert argv[argv.index("--verify") + 1] == "strict"
    assert argv[argv.index("--store") + 1] == "s3://bucket/root"
    assert "s3://bucket/m.manifest" in argv


def test_mount_option_defaults_are_the_fetch_policy_defaults() -> None:
    """The CLI spells the defaults out (so the background path need not import the
    fetcher); they must stay those of the fetcher and the verifier."""
    import vfs.cli.mount as cli_mount
    from vfs.mount.fetcher import DEFAULT_POLICY
    from vfs.mount.verify import VERIFY_MODES

    assert DEFAULT_POLICY.max_fetches == cli_mount.DEFAULT_MAX_FETCHES
    assert DEFAULT_POLICY.fetch_timeout == cli_mount.DEFAULT_FETCH_TIMEOUT
    assert DEFAULT_POLICY.verify == cli_mount.DEFAULT_VERIFY
    assert cli_mount.VERIFY_MODES == VERIFY_MODES


def test_storage_names_resolve_lazily() -> None:
    """``vfs.storage`` imports each name from its submodule on first use; every exported
    name is mapped to the module that defines it."""
    import vfs.storage as storage

    assert set(storage.__all__) == set(storage._EXPORTS)
    for name in storage.__all__:
        value = getattr(storage, name)
        assert getattr(value, "__module__", None) in (None, f"vfs.storage.{storage._EXPORTS[name]}")
    with pytest.raises(AttributeError):
        _ = storage.no_such_name  # type: ignore[attr-defined]
