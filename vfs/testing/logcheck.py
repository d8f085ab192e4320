"""Checks of mount logs: every warning, error and traceback must be one a test expected.

The idea of S3QL's ``pytest_checklogs``: a test that passes while the daemon logged an error
it did not expect has found a bug nobody looked at.

``vfs`` logs ``YYYY-MM-DD HH:MM:SS,mmm LEVEL logger: message``; the lines after such a line
that do not start with a timestamp (a traceback) belong to the same record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ ")
_STAMPED_LEVEL = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")
_BARE_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
_TRACEBACK = "Traceback (most recent call last)"


def records(text: str) -> list[str]:
    """The records of a log text: a timestamped line with the lines that follow it up to the
    next timestamped line (a line before any timestamp is a record of its own)."""
    out: list[str] = []
    for line in text.splitlines():
        if out and not _STAMP.match(line) and _STAMP.match(out[-1]):
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def is_flagged(record: str) -> bool:
    """True for a record at WARNING, ERROR or CRITICAL level, or one with a traceback."""
    first = record.split("\n", 1)[0]
    level = _STAMPED_LEVEL if _STAMP.match(first) else _BARE_LEVEL
    return bool(level.search(first)) or _TRACEBACK in record


def unexpected_records(text: str, allowed: Iterable[str | re.Pattern[str]] = ()) -> list[str]:
    """The flagged records of a log text that no regex of ``allowed`` finds (``re.search``
    on the whole record, traceback included)."""
    patterns = [re.compile(p) if isinstance(p, str) else p for p in allowed]
    return [r for r in records(text) if is_flagged(r) and not any(p.search(r) for p in patterns)]


def unexpected_log_lines(
    log: str | Path, allowed: Iterable[str | re.Pattern[str]] = ()
) -> list[str]:
    """The WARNING/ERROR/CRITICAL/Traceback records of the log file ``log`` that no regex of
    ``allowed`` matches (see :func:`unexpected_records`). A missing log file has none."""
    path = Path(log)
    if not path.exists():
        return []
    return unexpected_records(path.read_text(errors="replace"), allowed)
