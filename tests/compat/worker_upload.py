"""Run the worker agent's own output upload script, ``attachment_upload.py``, with this venv's
``deadline``.

Usage: ``python worker_upload.py AGENT_DIR -s3 s3://BUCKET/ROOT -wp PROPERTIES.json``, where
AGENT_DIR is an unpacked ``deadline-cloud-worker-agent`` wheel (scripts/bootstrap puts one
under the venv). The agent runs ``{python} .../scripts/attachment_upload.py -s3 … -wp …``
after each task (reference/job-attachments.md §8.4); here the same file runs unchanged, as
``__main__``, with the same arguments and environment.

Why not install the package: every ``deadline-cloud-worker-agent`` release pins a
``deadline``/``deadline-job-attachments`` other than the ``deadline==0.60.10`` the tests use
(pip finds no resolution), and its ``__init__`` imports the whole agent (openjd, the
installer, the scheduler). The script itself needs only two agent modules, provided here:

* ``deadline_worker_agent.sessions.attachment_models`` is the wheel's own file, loaded as is
  (it imports only ``deadline.job_attachments``): ``WorkerManifestProperties`` and the
  output-manifest name, metadata and path handling are the agent's;
* ``deadline_worker_agent.aws.deadline`` is replaced by no-op telemetry recorders (the four
  names the script imports); telemetry never changes what is uploaded.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import types
from collections.abc import Callable
from typing import Any

SCRIPT = "deadline_worker_agent/sessions/actions/scripts/attachment_upload.py"
MODELS = "deadline_worker_agent/sessions/attachment_models.py"


def _package(name: str) -> None:
    module = types.ModuleType(name)
    module.__path__ = []
    sys.modules[name] = module


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


def _passthrough(**kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return lambda function: function


def main() -> None:
    agent_dir, args = sys.argv[1], sys.argv[2:]
    for name in ("deadline_worker_agent", "deadline_worker_agent.sessions",
                 "deadline_worker_agent.aws"):  # fmt: skip
        _package(name)
    name = "deadline_worker_agent.sessions.attachment_models"
    spec = importlib.util.spec_from_file_location(name, os.path.join(agent_dir, MODELS))
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    sys.modules[name] = models
    spec.loader.exec_module(models)
    telemetry = types.ModuleType("deadline_worker_agent.aws.deadline")
    for fn in ("record_attachment_upload_fail_telemetry_event",
               "record_attachment_upload_latencies_telemetry_event",
               "record_attachment_upload_telemetry_event"):  # fmt: skip
        setattr(telemetry, fn, _no_op)
    telemetry.record_success_fail_telemetry_event = _passthrough  # type: ignore[attr-defined]
    sys.modules[telemetry.__name__] = telemetry
    script = os.path.join(agent_dir, SCRIPT)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
