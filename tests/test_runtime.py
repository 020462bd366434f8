"""The environment raysegment gives the Ray processes that run models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raysegment.runtime import TORCH_WORKER_ENV, torch_worker_runtime_env

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
def test_start_ray_sets_worker_priority_only_on_the_ray_it_starts(monkeypatch, address) -> None:
    import ray

    from raysegment import runtime

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runtime.start_ray()
    (kw,) = calls
    assert kw["address"] == (address or "local")
    assert kw.get("_system_config") == (None if address else {"worker_niceness": 0})


# A fresh process: the suite's own Ray session is already started.
_STARTS_RAY = """
import logging, ray
from raysegment.runtime import start_ray
logging.basicConfig(level=logging.INFO)
root = logging.getLogger()
before = (root.level, list(root.handlers))
start_ray()

@ray.remote(num_cpus=0)
def worker_levels():
    import logging
    return logging.getLogger().level, logging.getLogger("ray").level

print(before == (root.level, list(root.handlers)), *ray.get(worker_levels.remote()))
ray.shutdown()
"""


def test_ray_quiet_in_workers_while_the_callers_logging_is_untouched(tmp_path) -> None:
    """Ray's loggers in the job's workers run at ERROR (Ray Train's placement-group cleaner
    warned every second without a dashboard); the logging of the process calling
    ``start_ray`` (a user's program, when raysegment is a library) stays as it was."""
    import logging
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", _STARTS_RAY],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env | {"PYTHONPATH": os.getcwd()},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    kept, root_level, ray_level = out.stdout.split()
    assert kept == "True"
    assert int(root_level) == int(ray_level) == logging.ERROR
