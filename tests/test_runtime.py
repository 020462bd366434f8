"""The environment raysegment gives the Ray processes that run models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raysegment.runtime import TORCH_WORKER_ENV, model_runtime_env, torch_worker_runtime_env

pytestmark = pytest.mark.usefixtures("ray_session")


def test_model_processes_start_with_the_allocator_settings() -> None:
    """glibc reads its malloc settings once, from the environment the process started
    with: they must be in /proc/self/environ, not set later in os.environ."""
    import ray

    @ray.remote(num_cpus=0, runtime_env=torch_worker_runtime_env())
    class Probe:
        def environ(self) -> bytes:
            return Path("/proc/self/environ").read_bytes()

    probe = Probe.remote()  # type: ignore[attr-defined]
    start_env = dict(
        entry.decode().split("=", 1)
        for entry in ray.get(probe.environ.remote()).split(b"\0")
        if entry
    )
    ray.kill(probe)
    assert {k: start_env.get(k) for k in TORCH_WORKER_ENV} == TORCH_WORKER_ENV


def test_workers_of_a_private_local_ray_run_at_the_drivers_priority() -> None:
    """Ray's default nice 15 let every wake-up of its own processes preempt a model
    thread; the session here is started with the settings ``start_ray`` uses."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    # Ray adds its niceness to the raylet's, which has this process's (a run under
    # `nice` keeps that); by default the task would be 15 nicer than this process.
    assert ray.get(niceness.remote()) == os.nice(0)


@pytest.mark.parametrize("address", [None, "10.0.0.1:6379"])
def test_start_ray_sets_worker_priority_and_idle_time_only_on_the_ray_it_starts(
    monkeypatch, address
) -> None:
    import ray

    from raysegment import runtime

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runtime.start_ray() == ("cluster" if address else "local")
    (kw,) = calls
    assert kw["address"] == (address or "local")
    # Workers at the driver's priority, kept 10 s idle (a training run's reading tasks
    # serve every epoch in the same processes).
    local = {"worker_niceness": 0, "idle_worker_killing_time_threshold_ms": 10000}
    assert kw.get("_system_config") == (None if address else local)


# A fresh process: the suite's own Ray session is already started.
_STARTS_RAY = """
import json, logging, os, pathlib, psutil, ray
from raysegment.runtime import _is_monitor, model_runtime_env, start_ray, stop_ray
logging.basicConfig(level=logging.INFO)
root = logging.getLogger()
before = (root.level, list(root.handlers))
started = start_ray()

@ray.remote(num_cpus=0)
def worker_levels():
    import logging
    return logging.getLogger().level, logging.getLogger("ray").level

@ray.remote(num_cpus=0)
class Asks:
    def about_itself(self):
        # What Ray Train's placement-group cleaner asks about its controller every second.
        import time
        from ray.util.state import get_actor
        from ray.util.state.exception import RayStateApiException
        start = time.monotonic()
        try:
            answer = repr(get_actor(ray.get_runtime_context().get_actor_id(), timeout=10))
        except RayStateApiException:
            answer = "no state API"
        except Exception as e:  # the stale record's cluster: "waiting for GCS"
            answer = f"{type(e).__name__}: {e}"[:200]
        return answer, time.monotonic() - start

@ray.remote(num_cpus=0, runtime_env=model_runtime_env(started))
def model_process_environment():
    raw = pathlib.Path("/proc/self/environ").read_bytes().split(b"\\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)

def children():
    return [" ".join(c.cmdline()) for c in psutil.Process().children()]

monitors = [c for c in psutil.Process().children() if any(map(_is_monitor, c.cmdline()))]
report = {
    "started": started,
    "callers_logging_kept": before == (root.level, list(root.handlers)),
    "worker_levels": ray.get(worker_levels.remote()),
    "state_api": ray.get(Asks.remote().about_itself.remote()),
    "drivers_environment": "RAY_API_SERVER_ADDRESS" in os.environ,
    "model_runtime_env": model_runtime_env(started),
    "model_process_environment": ray.get(model_process_environment.remote()),
    "monitors": len(monitors),
}
shutdown = ray.shutdown

def watched_shutdown():  # whether the monitor still runs when Ray's shutdown begins
    report["monitor_running_at_shutdown"] = any(
        m.is_running() and m.status() != psutil.STATUS_ZOMBIE for m in monitors
    )
    shutdown()

ray.shutdown = watched_shutdown
stop_ray(started)
report["left"] = children()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def private_ray(tmp_path_factory) -> dict:
    """What a private Ray started by ``start_ray`` in a fresh process reports, on a machine
    whose Ray temp dir records a cluster that is gone (left by a ``ray start`` that did
    not stop cleanly)."""
    import os
    import shutil

    from tests.conftest import last_report, short_temp_dir

    temp = short_temp_dir()
    (Path(temp) / "ray").mkdir()
    (Path(temp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
    # Without the suite's own Ray Train setting (tests/conftest.py): the private Ray sets it.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    }
    try:
        out = subprocess.run(
            [sys.executable, "-c", _STARTS_RAY],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path_factory.mktemp("private"),
            env=env | {"PYTHONPATH": os.getcwd(), "RAY_TMPDIR": temp},
        )
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return last_report(out.stdout)


def test_ray_quiet_in_workers_while_the_callers_logging_is_untouched(private_ray) -> None:
    """Ray's loggers in the job's workers run at ERROR (Ray Train's placement-group cleaner
    warned every second without a dashboard); the logging of the process calling
    ``start_ray`` (a user's program, when raysegment is a library) stays as it was."""
    import logging

    assert private_ray["callers_logging_kept"]
    assert private_ray["worker_levels"] == [logging.ERROR, logging.ERROR]


def test_workers_of_a_private_ray_never_ask_another_cluster_for_its_state(private_ray) -> None:
    """Ray Train's placement-group cleaner asks the state API about its controller every
    second. A private Ray has none: the question must fail at once, not go to the cluster
    a stale record names (each question waited 40 s there, and a training run's end 12 s)
    or to another Ray on the machine (which reports the controller missing: the cleaner
    then removes the run's placement group). The caller's environment is left as it was."""
    answer, seconds = private_ray["state_api"]
    assert answer == "no state API"
    assert seconds < 5
    assert not private_ray["drivers_environment"]


def test_model_processes_of_a_private_ray_need_no_runtime_environment(private_ray) -> None:
    """Every process of the private Ray starts with the allocator settings, so its
    predictors and training workers start as plain workers (a runtime environment costs
    a process start through Ray's runtime-env agent)."""
    assert private_ray["started"] == "local"
    assert private_ray["model_runtime_env"] is None
    environment = private_ray["model_process_environment"]
    assert {k: environment.get(k) for k in TORCH_WORKER_ENV} == TORCH_WORKER_ENV
    assert model_runtime_env("cluster") == model_runtime_env("") == torch_worker_runtime_env()


def test_ray_train_of_a_private_ray_polls_its_workers_every_half_second(private_ray) -> None:
    """Ray Train's controller learns that the workers finished at its next poll of them:
    every 2 s by default, up to 2 s at the end of every training command."""
    environment = private_ray["model_process_environment"]
    assert environment.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S") == "0.5"


def test_stopping_a_private_ray_stops_its_monitor_first_and_leaves_no_process(private_ray) -> None:
    """``stop_ray`` finds the private Ray's autoscaler monitor (Ray waited 1 s for it to
    answer its stop, then killed it) and leaves none of the Ray's processes behind."""
    assert private_ray["monitors"] == 1
    assert private_ray["monitor_running_at_shutdown"] is False
    assert private_ray["left"] == []
