"""The fault hook kills its process once per armed file, at its point and for its name only; the
Ray executor retries a task whose worker died, not one whose code or worker's ``__init__`` failed;
a build's summary line counts the faults an executor survived."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from galleryvis.build import faults
from galleryvis.build.faults import Faults

REACH = "import sys; from galleryvis.build.faults import checkpoint; checkpoint(sys.argv[1], sys.argv[2:])"


def _reach(folder, point: str, *names: str) -> int:
    """A fresh process reaching ``point`` with ``names``: its return code (-9: killed)."""
    env = {"GALLERYVIS_FAULTS": str(folder), "PYTHONPATH": ":".join(sys.path)}
    return subprocess.run([sys.executable, "-c", REACH, point, *names], env=env, timeout=60).returncode


def test_an_armed_point_kills_the_first_process_that_reaches_it_for_its_name_once(tmp_path):
    (tmp_path / "start-0").write_text("coffee")
    (tmp_path / "load").write_text("")
    assert _reach(tmp_path, "start", "resnet18", "cat") == 0  # another image: not armed for it
    assert _reach(tmp_path, "end", "resnet18", "coffee") == 0  # another point
    assert _reach(tmp_path, "start", "resnet18", "coffee") == -signal.SIGKILL
    assert _reach(tmp_path, "start", "resnet18", "coffee") == 0  # once
    assert _reach(tmp_path, "load", "resnet18") == -signal.SIGKILL  # no text: any name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["load.fired", "start-0.fired"]


def test_without_the_variable_or_with_an_unknown_point_nothing_is_killed(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.checkpoint("start", ["cat"])
    monkeypatch.setenv(faults.ENV, str(tmp_path))
    with pytest.raises(ValueError, match="unknown fault point 'begin'"):
        faults.checkpoint("begin", ["cat"])


def test_the_summary_line_counts_restarts_and_retries_only_for_an_executor_with_workers():
    from galleryvis.build.pipeline import Summary

    assert "restarted" not in Summary(computed=4).line()
    line = Summary(computed=4, faults=Faults(restarted=1, retried=2)).line()
    assert line.startswith("4 computed, 0 cached, 0 failed, 1 worker restarted, 2 tasks retried in ")
    assert Faults(2, 1).to_json() == {"workers_restarted": 2, "tasks_retried": 1}


def test_a_dead_or_unreachable_worker_is_retried_a_failing_task_or_init_is_not():
    ray = pytest.importorskip("ray")
    from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayTaskError

    from galleryvis.build.cluster import _retryable

    task_error = RayTaskError("compute", "Traceback ...", RuntimeError("boom"))
    assert _retryable(ray, ActorDiedError())  # killed: a new worker gets the task
    assert _retryable(ray, ActorUnavailableError("unreachable", None))
    assert _retryable(ray, ObjectLostError("00" * 28, "", ""))  # its node lost with the result
    assert not _retryable(ray, ActorDiedError(task_error))  # its __init__ raised: a new one would too
    assert not _retryable(ray, task_error)  # the task's own error
