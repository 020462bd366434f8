"""``device`` -> predictor pool size and resources, for the cluster Ray reports."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from raysegment.config import InferConfig, load_config
from raysegment.errors import ConfigError
from raysegment.infer import pipeline
from raysegment.infer.attempts import (
    Attempts,
    begin_attempt,
    claim_gpu,
    devices,
    forget,
    register_device,
    start_ledger,
)
from raysegment.infer.pipeline import Pool

REQUIRED = ["input=a", "model=m", "output=o"]


def _pool(monkeypatch, resources: dict[str, float], *overrides: str):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": resources}])
    return pipeline._pool(load_config(InferConfig, (), REQUIRED + list(overrides)))


@pytest.mark.parametrize(
    "device,resources,want",
    [
        ("auto", {"CPU": 2}, Pool(False, 1, 2, 2, reserve=1.0)),  # every core computes
        ("auto", {"CPU": 64, "GPU": 8}, Pool(True, 8, 1)),
        ("cpu", {"CPU": 16, "GPU": 8}, Pool(False, 4, 4, 4, reserve=3.75)),
        ("gpu", {"CPU": 16, "GPU": 8}, Pool(True, 1, 1)),
        ("all", {"CPU": 32, "GPU": 16}, Pool(True, 16, 1)),
        ("1,3,6", {"CPU": 16, "GPU": 3}, Pool(True, 3, 1)),  # a local Ray of those 3 GPUs
    ],
)
def test_device_maps_to_actors(monkeypatch, device, resources, want) -> None:
    assert _pool(monkeypatch, resources, f"device={device}") == want


def test_cpu_threads_and_explicit_actors(monkeypatch) -> None:
    two = _pool(monkeypatch, {"CPU": 16}, "device=cpu", "threads=2")
    assert two == Pool(False, 8, 2, 2, reserve=1.87)
    assert _pool(monkeypatch, {"CPU": 16}, "device=cpu", "actors=2").cpus == 8
    assert _pool(monkeypatch, {"CPU": 3}, "device=cpu").cpus == 3  # one actor, every core


def test_cpu_actors_run_a_tile_per_thread_unless_told(monkeypatch) -> None:
    assert _pool(monkeypatch, {"CPU": 16}, "device=cpu").streams == 4
    assert _pool(monkeypatch, {"CPU": 16}, "device=cpu", "streams=1").streams == 1
    assert _pool(monkeypatch, {"CPU": 16}, "device=cpu", "threads=4", "streams=2").streams == 2
    assert _pool(monkeypatch, {"CPU": 16}, "device=cpu", "threads=2", "streams=8").streams == 2
    assert _pool(monkeypatch, {"CPU": 16, "GPU": 2}, "device=all").streams == 1


def test_no_more_predictors_than_blocks(monkeypatch) -> None:
    """A predictor without a block would only start, load the model and hold a device."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16, "GPU": 8})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 16}}])
    cfg = load_config(InferConfig, (), [*REQUIRED, "device=cpu", "actors=4"])
    assert pipeline._pool(cfg, blocks=2) == Pool(False, 2, 4, 4, reserve=4.0)
    assert pipeline._pool(cfg, blocks=9).actors == 4
    cfg = load_config(InferConfig, (), [*REQUIRED, "device=all"])
    assert pipeline._pool(cfg, blocks=3) == Pool(True, 3, 1)
    assert pipeline._pool(cfg, blocks=0).actors == 1  # a run with nothing left to do


def test_cpu_threads_stay_within_the_largest_node(monkeypatch) -> None:
    """On a cluster of 2-CPU nodes an actor asking for 4 CPUs could never be placed."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2}}] * 4)
    cfg = load_config(InferConfig, (), [*REQUIRED, "device=cpu"])
    assert pipeline._pool(cfg) == Pool(False, 4, 2, 2, reserve=1.75)
    cfg = load_config(InferConfig, (), [*REQUIRED, "device=cpu", "actors=2"])
    assert pipeline._pool(cfg).cpus == 2


@pytest.mark.parametrize(
    "resources,overrides,reserve",
    [
        ({"CPU": 2}, ["device=cpu", "actors=2"], 0.5),  # 2 x 1 CPU would take both
        ({"CPU": 4}, ["device=cpu", "actors=2", "threads=2"], 1.5),
        ({"CPU": 8, "GPU": 8}, ["device=all"], 0.87),
        ({"CPU": 64, "GPU": 8}, ["device=all"], 1.0),
    ],
)
def test_predictors_leave_a_cpu_for_reads_and_writes(monkeypatch, resources, overrides, reserve):
    """Predictors reserving every CPU left the read and write tasks nowhere to run: the
    run hung with every process idle."""
    pool = _pool(monkeypatch, resources, *overrides)
    assert pool.reserve == reserve
    assert resources["CPU"] - pool.actors * pool.reserve >= 1.0


def _nodes(*gpus: int) -> list[dict]:
    return [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": float(g)}} for g in gpus] + [
        {"Alive": True, "Resources": {"CPU": 8.0}},  # a CPU-only head
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}},  # a node that left
    ]


def test_gpu_indices_on_a_running_cluster_take_those_gpus_of_every_node(monkeypatch) -> None:
    import ray

    cfg = load_config(InferConfig, (), [*REQUIRED, "device=1,3,6"])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 24, "GPU": 16})
    monkeypatch.setattr(ray, "nodes", lambda: _nodes(8, 8))
    assert pipeline._pool(cfg, indices_applied=False) == Pool(True, 6, 1, gpu_indices=(1, 3, 6))
    monkeypatch.setattr(ray, "nodes", lambda: _nodes(8, 4))
    with pytest.raises(ConfigError, match=r"have \[4, 8\] GPU\(s\).*needs GPU 6"):
        pipeline._pool(cfg, indices_applied=False)


@pytest.mark.usefixtures("ray_session")
def test_ledger_gives_each_predictor_of_a_node_its_own_index() -> None:
    run = start_ledger(max_attempts=2)
    other = start_ledger(max_attempts=2)

    def claim(actor: str, node: str = "node-a", attempts: Attempts = run) -> int:
        return claim_gpu(attempts, node, actor, [1, 3, 6])

    with ThreadPoolExecutor(3) as pool:  # predictors starting at once
        got = list(pool.map(claim, ["actor0", "actor1", "actor2"]))
    assert sorted(got) == [1, 3, 6]
    assert claim("actor3", "node-b") == 1  # per node
    assert claim("actor1") == got[1]  # restarted: the same
    assert claim("actor9") == 1  # in turn
    assert claim("actor5", attempts=other) == 1  # per run
    forget(run)
    assert claim("actor2") == 1
    forget(run)
    forget(other)


@pytest.mark.usefixtures("ray_session")
def test_ledger_counts_a_blocks_attempts_until_the_cap() -> None:
    run = start_ledger(max_attempts=2)
    assert begin_attempt(run, "read", "0/1") is None
    assert begin_attempt(run, "read", "0/10") is None  # another block, whose key is longer
    assert begin_attempt(run, "predictor", "0/1") is None  # another stage
    assert begin_attempt(run, "read", "0/1") is None
    refused = begin_attempt(run, "read", "0/1")
    assert refused and refused.startswith("the read process died 2 time(s) running it (")
    register_device(run, "node a CPU")
    assert devices(run) == ["node a CPU"]
    forget(run)
    assert devices(run) == [] and begin_attempt(run, "read", "0/1") is None
    forget(run)


@pytest.mark.parametrize("device,gpus", [("gpu", 0), ("all", 0), ("0,1,2", 2)])
def test_missing_gpus_fail_with_the_count(monkeypatch, device, gpus) -> None:
    with pytest.raises(ConfigError, match=f"Ray sees {gpus} GPU"):
        _pool(monkeypatch, {"CPU": 4, "GPU": gpus}, f"device={device}")


# A cluster on this machine: a CPU-only head and nodes that report GPUs (Ray's GPU
# resource without devices: the predictors fall back to CPU, but Ray assigns each one a
# GPU of its node exactly as it would real ones, and CUDA_VISIBLE_DEVICES is set as on
# a GPU node). First nodes with 1 and 2 GPUs and device=all; then those nodes leave, two
# nodes with 3 GPUs join, and device=0,2 runs.
CLUSTER_SCRIPT = """
import json, sys
import ray
import ray.data
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
ray.init(address=cluster.address, logging_level="ERROR")
# Blocks go to the first ready predictor; 16 tiny blocks can finish before a slow node's
# actor is up, and an actor that never started holds no GPU to report. Start them all.
ray.data.DataContext.get_current().wait_for_min_actors_s = 240
from raysegment.infer import infer

report = {}
for device, gpus in (("all", (1, 2)), ("0,2", (3, 3))):
    nodes = [cluster.add_node(num_cpus=2, num_gpus=g) for g in gpus]
    cluster.wait_for_nodes()
    summary = infer(input=sys.argv[1], model=sys.argv[2], output=sys.argv[3] + device,
                    device=device, progress=False, chunks=[64], block=[64],
                    tile={"size": [64]})
    report[device] = {"actors": summary.actors, "device": summary.device,
                      "devices": summary.devices, "nodes": [n.node_id[:8] for n in nodes]}
    for node in nodes:
        cluster.remove_node(node)
print(json.dumps(report))
ray.shutdown()
cluster.shutdown()
"""


def _held(report: dict) -> dict[str, list[str]]:
    """GPU ids each node's predictors hold, from the summary's device lines."""
    held = [d.split() for d in report["devices"]]  # ["node", id, "(ip)", "GPU", ids]
    assert all(d[3] == "GPU" and "," not in d[4] for d in held), held  # one GPU per actor
    return {node: sorted(d[4] for d in held if d[1] == node) for node in report["nodes"]}


def test_device_all_and_indices_across_nodes_of_a_simulated_cluster(tmp_path, make_model) -> None:
    import os
    import subprocess
    import sys

    import tifffile

    from tests.conftest import last_report, random_image

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
    report = last_report(result.stdout)
    every = report["all"]
    assert every["device"] == "gpu" and every["actors"] == 3
    assert list(_held(every).values()) == [["0"], ["0", "1"]]  # each GPU exactly once
    picked = report["0,2"]
    assert picked["device"] == "gpu" and picked["actors"] == 4
    assert list(_held(picked).values()) == [["0", "2"], ["0", "2"]]  # GPU 1 of neither
