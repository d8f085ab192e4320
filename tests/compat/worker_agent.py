"""Run the worker agent's own job-attachment code with this venv's ``deadline``.

Usage:

* ``python worker_agent.py AGENT_DIR download -s3 URI -wp PROPERTIES.json``: the agent's
  ``sessions/actions/scripts/attachment_download.py``, unchanged, as ``__main__``;
* ``python worker_agent.py AGENT_DIR upload -s3 URI -wp PROPERTIES.json``: likewise
  ``attachment_upload.py``, which the agent runs after each task (reference/
  job-attachments.md §8.4), with the same arguments and environment;
* ``python worker_agent.py AGENT_DIR models PROPERTIES.json``: for each entry of the file,
  the agent's ``WorkerManifestProperties`` methods, printed as one JSON list of
  ``{"to_dict", "as_output_metadata", "to_path_mapping_rule", "get_hashed_source_path",
  "local_output_relative_directories"}``.

AGENT_DIR is an unpacked ``deadline-cloud-worker-agent`` wheel (scripts/bootstrap puts one
under the venv). Why not install the package: every release pins a
``deadline``/``deadline-job-attachments`` other than the ``deadline==0.60.10`` the tests use
(pip finds no resolution), and its ``__init__`` imports the whole agent (openjd, the
installer, the scheduler). The scripts need only two agent modules, provided here: the
wheel's own ``sessions/attachment_models.py``, loaded as is (``WorkerManifestProperties`` and
the output-manifest name, metadata and path handling are the agent's), and
``aws.deadline``, replaced by no-op telemetry recorders, which never change what is
transferred.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import runpy
import sys
import types
from collections.abc import Callable
from typing import Any

SCRIPTS = {
    "download": "deadline_worker_agent/sessions/actions/scripts/attachment_download.py",
    "upload": "deadline_worker_agent/sessions/actions/scripts/attachment_upload.py",
}
MODELS = "deadline_worker_agent/sessions/attachment_models.py"
TELEMETRY = [
    f"record_attachment_{step}_{what}"
    for step in ("download", "upload")
    for what in ("fail_telemetry_event", "latencies_telemetry_event", "telemetry_event")
]


def _package(name: str) -> None:
    module = types.ModuleType(name)
    module.__path__ = []
    sys.modules[name] = module


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


def _passthrough(**kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return lambda function: function


def _load(agent_dir: str) -> types.ModuleType:
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
    for fn in TELEMETRY:
        setattr(telemetry, fn, _no_op)
    telemetry.record_success_fail_telemetry_event = _passthrough  # type: ignore[attr-defined]
    sys.modules[telemetry.__name__] = telemetry
    return models


def _models(models: types.ModuleType, path: str) -> None:
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    out = []
    for entry in entries:
        props = models.WorkerManifestProperties.from_dict(entry)
        out.append(
            {
                "to_dict": props.to_dict(),
                "as_output_metadata": props.as_output_metadata(),
                "to_path_mapping_rule": dataclasses.asdict(props.to_path_mapping_rule()),
                "get_hashed_source_path": props.get_hashed_source_path(),
                "local_output_relative_directories": props.local_output_relative_directories(),
            }
        )
    sys.stdout.write(json.dumps(out) + "\n")


def main() -> None:
    agent_dir, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    models = _load(agent_dir)
    if command == "models":
        _models(models, args[0])
        return
    script = os.path.join(agent_dir, SCRIPTS[command])
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
