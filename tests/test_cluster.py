"""cluster/: the launcher config passes Ray's own validation, the KubeRay manifests have
what KubeRay needs, and `ray job submit` runs inference and two-worker training on a real
(local) Ray head started with `ray start`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from raysegment.infer.writer import inspect_output
from tests.conftest import (
    conv_model,
    free_port,
    random_image,
    save_torchscript,
    short_temp_dir,
)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def test_launcher_config_passes_rays_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on anything Ray's schema refuses
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert head["resources"].get("GPU") == 0  # no model runs on the head
    assert any(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers)  # autoscaled
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)  # GPUs
    assert any("/data:/data" in option for option in config["docker"]["run_options"])


def test_nodes_install_every_dependency_the_image_lacks() -> None:
    """The package travels with each job, its dependencies do not: the launcher's nodes
    and a job's runtime environment install each of pyproject's (Ray's image has Ray and
    torch), the training and CZI extras too."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        d
        for extra in ("train", "czi", "tensorstore")
        for d in project["optional-dependencies"][extra]
    ]
    (command,) = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())["setup_commands"]
    job = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["pip"]
    for installed in (re.findall(r'"([^"]+)"', command), job):
        assert sorted(set(wanted) - set(installed)) == [
            "ray[data]>=2.50",
            "ray[train]>=2.50",
            "torch>=2.4",
        ]


def _manifests() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def _check_pod(template: dict[str, Any], gpu: bool, claim: str) -> None:
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    assert spec["containers"], "a pod template needs containers"
    for container in spec["containers"]:
        assert container["name"] and container["image"]
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"volumeMount {mount['name']} has no volume"
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == claim
        limits = container["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == gpu


def _check_cluster_spec(spec: dict[str, Any], claim: str) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    # KubeRay passes rayStartParams to `ray start` as strings and rejects other types.
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert head["rayStartParams"]["num-gpus"] == "0"
    _check_pod(head["template"], gpu=False, claim=claim)
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", group["groupName"])
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
        _check_pod(group["template"], gpu=True, claim=claim)


def test_kuberay_manifests_have_what_kuberay_requires() -> None:
    docs = _manifests()
    assert set(docs) == {"RayCluster", "RayJob", "PersistentVolumeClaim"}
    pvc = docs["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod writes outputs
    claim = pvc["metadata"]["name"]
    for kind in ("RayCluster", "RayJob"):
        doc = docs[kind]
        assert doc["apiVersion"] == "ray.io/v1"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    _check_cluster_spec(docs["RayCluster"]["spec"], claim)
    job = docs["RayJob"]["spec"]
    _check_cluster_spec(job["rayClusterSpec"], claim)
    assert job["entrypoint"].startswith("raysegment infer conf/")
    assert job["shutdownAfterJobFinishes"] is True
    # The entrypoint's config file and keys exist: it parses with the shipped schema.
    from raysegment.config import InferConfig, load_config

    words = job["entrypoint"].split()[2:]
    files = [ROOT / w for w in words if "=" not in w]
    keys = [w.replace("'", "") for w in words if "=" in w]
    load_config(InferConfig, files, keys)
    image = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{job['rayClusterSpec']['rayVersion']}" in dockerfile
    assert image in dockerfile  # the build command names the image the manifests use


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.time() < deadline and process.poll() is None, f"port {port} never opened"
            time.sleep(0.5)


def test_ray_job_submit_runs_infer_and_two_worker_training_on_a_ray_head(
    tmp_path: Path,
) -> None:
    pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")
    from tests.train.conftest import blobs

    data = tmp_path / "data"  # the "shared volume" of both nodes
    for d in ("img", "lbl"):
        (data / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        image, mask = blobs((96, 96), rng, 6)
        tifffile.imwrite(data / "img" / f"im{i}.tif", image)
        tifffile.imwrite(data / "lbl" / f"im{i}.tif", mask)
    tifffile.imwrite(
        data / "slide.ome.tif", random_image((300, 260)), ome=True, metadata={"axes": "YX"}
    )
    save_torchscript(conv_model(), data / "model.pth", 2, 1)

    ray_bin = str(Path(sys.executable).parent / "ray")
    port, dashboard = free_port(), free_port()
    # The test session's own Ray already holds the agents' default ports.
    agent = [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]
    # Job entrypoints run `python` from the PATH of the node that runs them: this one's.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore", "PATH": path}
    # Its own temp dir: `ray start` records its address in <temp dir>/ray_current_cluster,
    # and a record left in /tmp/ray after the head is gone sends every later state API
    # call on this machine (Ray Train's cleaner) to wait for a dead cluster.
    temp = short_temp_dir()
    common = ["--block", "--num-cpus=4", "--disable-usage-stats", f"--temp-dir={temp}"]
    head = subprocess.Popen(
        [ray_bin, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}"]
        + ["--dashboard-host=127.0.0.1", *agent, *common],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    nodes = [head]
    try:
        _wait_for_port(dashboard, head)
        # Dependencies are installed here already: the job needs only the working dir.
        (tmp_path / "env.yaml").write_text(
            yaml.safe_dump(
                {"excludes": yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["excludes"]}
            )
        )

        def submit(*args: str) -> subprocess.CompletedProcess[str]:
            deadline = time.time() + 60
            while True:  # the dashboard answers a little before its job agent does
                result = subprocess.run(
                    [str(CLUSTER / "submit.sh"), f"http://127.0.0.1:{dashboard}", *args],
                    capture_output=True,
                    text=True,
                    timeout=400,
                    env=env | {"RUNTIME_ENV": str(tmp_path / "env.yaml")},
                )
                if "No available agent" not in result.stderr or time.time() > deadline:
                    return result
                time.sleep(2)

        inferred = submit(
            "infer",
            f"input={data / 'slide.ome.tif'}",
            f"model={data / 'model.pth'}",
            f"output={data / 'out'}",
            "progress=false",
            "chunks=128",
        )
        assert inferred.returncode == 0, inferred.stdout + inferred.stderr
        assert f":{port}, " in inferred.stdout, inferred.stdout  # it joined this cluster
        assert inspect_output(data / "out" / "slide.ome.zarr").complete
        assert zarr.open_array(str(data / "out" / "slide.ome.zarr" / "0")).shape == (2, 300, 260)

        trained = submit(
            "train",
            f"images.dir={data / 'img'}",
            f"labels.dir={data / 'lbl'}",
            f"output={data / 'model'}",
            f"storage_path={data / 'checkpoints'}",
            "num_workers=2",
            "device=cpu",
            "patch_size=32",
            "patches_per_epoch=32",
            "val_patches=8",
            "batch_size=8",
            "max_epochs=2",
        )
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert "trained 2 epoch(s)" in trained.stdout
        assert (data / "model" / "model.pth").is_file()
        # Ray Train's storage (the two workers' run) is on the shared volume.
        assert list((data / "checkpoints" / "run").glob("checkpoint_*"))
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
            try:  # `ray start --block` waits ~30 s for some of its processes
                node.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        shutil.rmtree(temp, ignore_errors=True)
