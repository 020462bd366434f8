"""``device`` -> predictor pool size and resources, for the cluster Ray reports."""

from __future__ import annotations

import pytest

from raysegment.config import InferConfig, load_config
from raysegment.errors import ConfigError
from raysegment.infer import pipeline

REQUIRED = ["input=a", "model=m", "output=o"]


def _pool(monkeypatch, resources: dict[str, float], *overrides: str):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    return pipeline._pool(load_config(InferConfig, (), REQUIRED + list(overrides)))


@pytest.mark.parametrize(
    "device,resources,want",
    [
        ("auto", {"CPU": 2}, (False, 1, 1)),
        ("auto", {"CPU": 64, "GPU": 8}, (True, 8, 1)),
        ("cpu", {"CPU": 16, "GPU": 8}, (False, 12, 1)),
        ("gpu", {"CPU": 16, "GPU": 8}, (True, 1, 1)),
        ("all", {"CPU": 32, "GPU": 16}, (True, 16, 1)),
        ("1,3,6", {"CPU": 16, "GPU": 3}, (True, 3, 1)),
    ],
)
def test_device_maps_to_actors(monkeypatch, device, resources, want) -> None:
    assert _pool(monkeypatch, resources, f"device={device}") == want


def test_cpu_threads_and_explicit_actors(monkeypatch) -> None:
    assert _pool(monkeypatch, {"CPU": 16}, "device=cpu", "threads=4") == (False, 3, 4)
    assert _pool(monkeypatch, {"CPU": 16}, "device=cpu", "actors=2") == (False, 2, 1)


@pytest.mark.parametrize("device,gpus", [("gpu", 0), ("all", 0), ("0,1,2", 2)])
def test_missing_gpus_fail_with_the_count(monkeypatch, device, gpus) -> None:
    with pytest.raises(ConfigError, match=f"Ray sees {gpus} GPU"):
        _pool(monkeypatch, {"CPU": 4, "GPU": gpus}, f"device={device}")


def test_gpu_indices_are_refused_on_a_remote_cluster(monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    with pytest.raises(ConfigError, match="device=all"):
        pipeline._start_ray("1,3")
