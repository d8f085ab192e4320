"""Run a benchmark script under the project's virtualenv python, where vfs, boto3, moto and
deadline are installed: ``$VFS_VENV``, else ``.venv`` at the repository root. Imported by the
``scripts/bench_*.py`` before anything else they import (the script's folder is first on
``sys.path`` when it is run directly)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def reexec_in_venv(script: str) -> None:
    """Replace this process with the virtualenv's python running ``script`` (a path) with
    the same arguments, unless it already runs there or the virtualenv does not exist."""
    root = Path(__file__).resolve().parent.parent
    venv = Path(os.environ.get("VFS_VENV") or root / ".venv")
    python = venv / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(python), [str(python), str(Path(script).resolve()), *sys.argv[1:]])
