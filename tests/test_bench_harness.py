"""The benchmarks' shared harness (vfs/testing/bench.py): what the README says of it."""

from __future__ import annotations

import atexit
from collections.abc import Callable
from pathlib import Path

import pytest

from vfs.testing import bench


def test_settle_memory_turns_page_reporting_off_and_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VM with free page reporting (order 9) gets it off for the run, restored at exit."""
    param = tmp_path / "page_reporting_order"
    param.write_text("9\n")
    monkeypatch.setattr(bench, "PAGE_REPORTING_ORDER", str(param))
    at_exit: list[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    notes = bench.settle_memory(margin=1 << 62)  # a margin above MemFree: nothing touched
    assert param.read_text() == "11\n"
    assert len(notes) == 1 and "free page reporting off" in notes[0]
    assert len(at_exit) == 1
    at_exit[0]()
    assert param.read_text() == "9\n"


def test_settle_memory_leaves_other_machines_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No reporting (no parameter, or already off): no change and no note."""
    monkeypatch.setattr(bench, "PAGE_REPORTING_ORDER", str(tmp_path / "absent"))
    assert bench.settle_memory() == []
    param = tmp_path / "page_reporting_order"
    param.write_text("11\n")
    monkeypatch.setattr(bench, "PAGE_REPORTING_ORDER", str(param))
    assert bench.settle_memory() == []
    assert param.read_text() == "11\n"


def test_touching_free_memory_backs_it() -> None:
    """The touch covers MemFree but the margin, in whole pages (here: 64 MiB of it)."""
    free = _mem_free()
    touched = bench._touch_free_memory(max(free - (64 << 20), 0))
    assert 0 < touched <= 64 << 20 and touched % 4096 == 0


def _mem_free() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemFree:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemFree in /proc/meminfo")
