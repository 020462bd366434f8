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


# A three-node cluster on this machine: a CPU-only head and two nodes that report 1 and 2
# GPUs (Ray's GPU resource without devices: the predictors fall back to CPU, but Ray
# assigns each one a GPU of its node exactly as it would real ones).
CLUSTER_SCRIPT = """
import json, sys
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
nodes = [cluster.add_node(num_cpus=4, num_gpus=1), cluster.add_node(num_cpus=4, num_gpus=2)]
ray.init(address=cluster.address, logging_level="ERROR")
from raysegment.infer import infer

summary = infer(input=sys.argv[1], model=sys.argv[2], output=sys.argv[3], device="all",
                progress=False, chunks=[64], block=[64], tile={"size": [64]})
print(json.dumps({"actors": summary.actors, "device": summary.device,
                  "devices": summary.devices, "nodes": [n.node_id[:8] for n in nodes]}))
ray.shutdown()
cluster.shutdown()
"""


def test_device_all_takes_every_gpu_of_every_node_once(tmp_path, make_model) -> None:
    import json
    import os
    import subprocess
    import sys

    import tifffile

    from tests.conftest import random_image

    tifffile.imwrite(tmp_path / "img.tif", random_image((256, 256)))
    model, _ = make_model()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CLUSTER_SCRIPT,
            str(tmp_path / "img.tif"),
            str(model),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["device"] == "gpu" and report["actors"] == 3
    held = [d.split() for d in report["devices"]]  # ["node", id, "(ip)", "GPU", ids]
    assert all(d[3] == "GPU" and "," not in d[4] for d in held)  # one GPU per actor
    per_node = {node: sorted(d[4] for d in held if d[1] == node) for node in report["nodes"]}
    assert list(per_node.values()) == [["0"], ["0", "1"]]  # each GPU exactly once
