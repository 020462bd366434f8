"""The environment raysegment gives the Ray processes that run models."""

from __future__ import annotations

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
