"""Paths no stream can encode (lone surrogates) are printed with backslash escapes by every
``vfs`` command, never as a traceback, whatever the locale: UTF-8 (``LC_ALL=C`` turns on
Python's UTF-8 mode), plain ASCII (``LC_ALL=C`` with ``PYTHONUTF8=0``) or ``C.UTF-8``.

Each case runs ``python -m vfs`` in a subprocess with ``PYTHONIOENCODING`` unset, so the
streams are configured exactly as a user's shell would configure them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vfs.cli.common import setup_logging

H = "0123456789abcdef0123456789abcdef"
LOCALES = {
    "utf8-mode": {"LC_ALL": "C"},
    "ascii": {"LC_ALL": "C", "PYTHONUTF8": "0"},
    "c-utf8": {"LC_ALL": "C.UTF-8"},
}


def run(env: dict[str, str], *args: str | bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LANG")}
    base.pop("LC_CTYPE", None)
    return subprocess.run(
        [sys.executable, "-m", "vfs", *args],
        capture_output=True,
        env={**base, **env},
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.fixture
def surrogate_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "s.manifest"
    entries = [{"hash": H, "mtime": 1, "path": p, "size": 3} for p in ("\ud800", "d\u00e9j\u00e0")]
    doc = {"hashAlg": "xxh128", "manifestVersion": "2023-03-03", "paths": entries}
    path.write_text(json.dumps({**doc, "totalSize": 6}))
    return path


@pytest.mark.parametrize("locale", LOCALES)
def test_show_and_diff_escape_lone_surrogates(
    locale: str, surrogate_manifest: Path, tmp_path: Path
) -> None:
    env = LOCALES[locale]
    root = tmp_path / "root"
    root.mkdir()
    (root / "plain").write_bytes(b"new")
    with open(os.fsencode(root) + b"/caf\xe9", "wb") as f:  # a name that is not UTF-8
        f.write(b"x")

    shown = run(env, "manifest", "show", str(surrogate_manifest), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr.decode(errors="replace")
    assert b"Traceback" not in shown.stderr
    assert b" \\ud800\n" in shown.stdout
    assert "d\u00e9j\u00e0".encode() in shown.stdout  # encodable text stays as it is

    diffed = run(
        env, "manifest", "diff", "--manifest", str(surrogate_manifest), "--root", str(root),
        "--no-hash-cache", cwd=tmp_path,
    )  # fmt: skip
    assert diffed.returncode == 0, diffed.stderr.decode(errors="replace")
    assert b"Traceback" not in diffed.stderr
    lines = diffed.stdout.splitlines()
    assert b"- \\ud800" in lines
    assert "- d\u00e9j\u00e0".encode() in lines and b"+ plain" in lines
    assert b"+ caf\\udce9" in lines or b"+ caf\\xe9" in lines


@pytest.mark.parametrize("locale", LOCALES)
def test_errors_naming_unencodable_paths_are_escaped(locale: str, tmp_path: Path) -> None:
    missing = os.fsencode(tmp_path) + b"/gone-\xff.manifest"
    result = run(LOCALES[locale], "manifest", "show", missing, cwd=tmp_path)
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    assert b"gone-" in result.stderr and b"\\udcff" in result.stderr


def test_log_file_escapes_lone_surrogates(tmp_path: Path) -> None:
    log = tmp_path / "vfs.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(1, str(log))
        logging.getLogger("vfs.test").info("skipped %s", "bad\ud800name")
        for handler in root.handlers:
            handler.close()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert "skipped bad\\ud800name" in log.read_text(encoding="utf-8")
