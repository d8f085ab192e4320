"""The unit files in ``systemd/``, run as systemd would run them (without systemd: this
machine has no PID 1 systemd): their commands, environment and ``Type=notify`` readiness."""

from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_read_path import put_local, write_manifest

from vfs.testing.mounts import is_mounted, unmount_path, wait_exit

UNITS = Path(__file__).resolve().parent.parent / "systemd"
VFS = "/usr/local/bin/vfs"


def directives(unit: Path) -> list[tuple[str, str]]:
    """``(key, value)`` of every directive of a unit file, in order."""
    out = []
    for line in unit.read_text().splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def environment(unit: Path, env_file: Path | None) -> dict[str, str]:
    """``Environment=`` then ``EnvironmentFile=`` (whose settings override), as systemd."""
    env: dict[str, str] = {}
    for key, value in directives(unit):
        if key == "Environment":
            env.update(dict(w.split("=", 1) for w in shlex.split(value)))
    if env_file is not None:
        for line in env_file.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k.strip()] = v.strip()
    return env


def command(value: str, env: dict[str, str], instance: str) -> tuple[bool, list[str]]:
    """An ``Exec*=`` line as systemd runs it: ``%f`` is the instance path, ``${VAR}`` one
    word, ``$VAR`` split on whitespace; a leading ``-`` means failure is ignored. ``vfs``
    is this Python's ``-m vfs``."""
    ignore = value.startswith("-")
    words: list[str] = []
    for word in shlex.split(value.lstrip("-").replace("%f", instance)):
        whole = re.fullmatch(r"\$\{(\w+)\}", word)
        split = re.fullmatch(r"\$(\w+)", word)
        if whole:
            words.append(env.get(whole[1], ""))
        elif split:
            words.extend(env.get(split[1], "").split())
        else:
            words.append(word)
    if words[0] == VFS:
        words = [sys.executable, "-m", "vfs", *words[1:]]
    return ignore, words


def commands(
    unit: Path, key: str, env: dict[str, str], instance: str
) -> list[tuple[bool, list[str]]]:
    return [command(v, env, instance) for k, v in directives(unit) if k == key]


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    yield sock, path
    sock.close()


RECEIVED: list[str] = []
"""Every sd_notify datagram the tests received, in order."""


def wait_message(sock: socket.socket, text: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait for the daemon ``proc`` to send ``text`` (failing at once if it exits first)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            RECEIVED.append(sock.recv(4096).decode())
            if text in RECEIVED[-1]:
                return
        except TimeoutError:
            pass
        if text == "READY=1" and proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {proc.returncode} before {text}")
    raise AssertionError(f"no {text} from the daemon")


def test_mount_unit_restarts_after_kill_9_and_stops_cleanly(
    tmp_path: Path, local_store: tuple[Path, str], notify_socket: tuple[socket.socket, str]
) -> None:
    files = {"scene/a.bin": os.urandom(300_000)}
    put_local(local_store[0], files)
    manifest = write_manifest(tmp_path / "m.manifest", files)
    point = tmp_path / "mnt"
    env_file = tmp_path / "instance.env"
    env_file.write_text(
        f"VFS_STORE={local_store[1]}\nVFS_MANIFESTS=--manifest {manifest}\n"
        f"VFS_OPTIONS=-o allow_other\nVFS_CACHE_DIR={tmp_path / 'cache'}\n"
    )
    unit = UNITS / "vfs-mount@.service"
    assert ("Type", "notify") in directives(unit)
    assert any(k == "CacheDirectory" for k, _ in directives(unit))
    env = {**os.environ, **environment(unit, env_file), "NOTIFY_SOCKET": notify_socket[1]}
    sock = notify_socket[0]
    daemon: subprocess.Popen[bytes] | None = None

    def start() -> subprocess.Popen[bytes]:
        for ignore, argv in commands(unit, "ExecStartPre", env, str(point)):
            result = subprocess.run(argv, env=env, capture_output=True, timeout=60)
            assert ignore or result.returncode == 0, result
        ((_, argv),) = commands(unit, "ExecStart", env, str(point))
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        wait_message(sock, "READY=1", proc)
        return proc

    try:
        daemon = start()
        assert (point / "scene/a.bin").read_bytes() == files["scene/a.bin"]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        with pytest.raises(OSError) as info:
            os.stat(point / "never-looked-up")
        assert info.value.errno == errno.ENOTCONN  # the dead mount systemd finds
        daemon = start()  # Restart=on-failure: ExecStartPre cleans up, ExecStart mounts
        assert (point / "scene/a.bin").read_bytes() == files["scene/a.bin"]
        ((_, stop),) = commands(unit, "ExecStop", env, str(point))
        subprocess.run(stop, env=env, check=True, timeout=60)
        wait_message(sock, "STOPPING=1", daemon)
        said = "\n".join(RECEIVED)
        assert "STATUS=loading manifests" in said and "EXTEND_TIMEOUT_USEC=" in said
        assert f"STATUS=serving {point}" in said
        assert daemon.wait(30) == 0
        assert not is_mounted(str(point))
    finally:
        unmount_path(str(point), daemon.pid if daemon else None, None)
        if daemon is not None:
            wait_exit(daemon.pid, 5)


def test_prune_unit_trims_the_cache(tmp_path: Path) -> None:
    service = UNITS / "vfs-cache-prune.service"
    timer = UNITS / "vfs-cache-prune.timer"
    assert ("OnCalendar", "daily") in directives(timer)
    env_file = tmp_path / "prune.env"
    env_file.write_text(f"VFS_CACHE_DIR={tmp_path / 'cache'}\nVFS_PRUNE_TO=1M\n")
    env = {**os.environ, **environment(service, env_file)}
    ((_, argv),) = commands(service, "ExecStart", env, "")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "freed 0 bytes" in result.stdout
    assert (tmp_path / "cache").is_dir()


@pytest.fixture()
def installed_vfs() -> Iterator[Path]:
    """``/usr/local/bin/vfs`` running this checkout (as the README installs it), removed
    afterwards."""
    path = Path(VFS)
    if os.geteuid() != 0:
        pytest.skip("installing /usr/local/bin/vfs needs root")
    if path.exists() or path.is_symlink():
        pytest.skip(f"{path} exists already; not replacing it")
    root = Path(__file__).resolve().parent.parent
    path.write_text(f'#!/bin/sh\nPYTHONPATH={root} exec {sys.executable} -m vfs "$@"\n')
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.unlink()


def test_systemd_analyze_verify_is_clean(tmp_path: Path, installed_vfs: Path) -> None:
    analyze = subprocess.run(["which", "systemd-analyze"], capture_output=True, text=True)
    if analyze.returncode != 0:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    units = []
    for name in ("vfs-mount@.service", "vfs-cache-prune.service", "vfs-cache-prune.timer"):
        dest = tmp_path / (name.replace("@.", "@mnt-assets.") if "@." in name else name)
        dest.write_text((UNITS / name).read_text())
        units.append(str(dest))
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
