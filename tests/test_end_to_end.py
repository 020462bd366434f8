"""The README's example, and an unchanged command against an existing cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import tifffile

from tests.conftest import conv_model, random_image, save_torchscript

ROOT = Path(__file__).resolve().parents[1]


def test_example_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "segment_slide.py"),
            "--size",
            "1536",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IoU against the ground-truth nuclei" in result.stdout
    assert "raysegment: 1 image(s)" in result.stdout  # the summary
    assert "block/s" in result.stderr or "s/block" in result.stderr  # the progress bar
    assert (tmp_path / "out" / "slide.ome.zarr" / "zarr.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_same_command_runs_on_an_existing_cluster_via_ray_address(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "img.ome.tif", random_image((96, 96)), ome=True, metadata={"axes": "YX"}
    )
    save_torchscript(conv_model(), tmp_path / "model.pth", 2, 1)
    port = _free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--node-ip-address=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while True:  # wait for the head's GCS port
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and head.poll() is None, "ray head did not start"
                time.sleep(0.5)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "raysegment.cli",
                "infer",
                "input=img.ome.tif",
                "model=model.pth",
                "output=out",
                "progress=false",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env=env | {"RAY_ADDRESS": f"127.0.0.1:{port}"},
        )
        assert result.returncode == 0, result.stderr
        assert f":{port}," in result.stdout  # the summary names the cluster that ran it
        assert (tmp_path / "out" / "img.ome.zarr" / "0").is_dir()
    finally:
        os.killpg(head.pid, 15)
        head.wait(timeout=60)
