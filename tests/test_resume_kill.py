"""kill -9 of a running ``raysegment infer``, then the same command: it resumes and the
result is bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from tests.conftest import conv_model, random_image, save_torchscript

ARGS = ["chunks=128", "block=128", "tile.size=128", "progress=false", "finalize.mode=raw"]


def _cli(cwd: Path, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "raysegment.cli",
        "infer",
        "input=img.ome.tif",
        "model=model.pth",
        f"output={out}",
        *ARGS,
    ]


@pytest.mark.usefixtures("ray_session")
def test_kill_dash_9_then_same_command_resumes_bit_identical(tmp_path: Path) -> None:
    from raysegment.infer import infer

    tifffile.imwrite(
        tmp_path / "img.ome.tif",
        random_image((768, 768)),
        ome=True,
        tile=(256, 256),
        metadata={"axes": "YX"},
    )
    save_torchscript(conv_model(), tmp_path / "model.pth", 2, 1)
    infer(
        input=str(tmp_path / "img.ome.tif"),
        model=str(tmp_path / "model.pth"),
        output=str(tmp_path / "reference"),
        chunks=[128],
        block=[128],
        tile={"size": [128]},
        progress=False,
        finalize={"mode": "raw"},
    )

    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    run = subprocess.Popen(
        _cli(tmp_path, "out"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    done_dir = tmp_path / "out" / "img.ome.zarr" / ".raysegment" / "done"
    deadline = time.time() + 180
    while not (done_dir.is_dir() and len(list(done_dir.iterdir())) >= 5):
        assert run.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no block finished in time"
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = len(list(done_dir.iterdir()))
    assert finished < 36
    group = zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r")
    assert group.attrs["raysegment"]["status"] == "incomplete"  # nothing looks complete

    result = subprocess.run(
        _cli(tmp_path, "out"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    resumed = int(result.stdout.split("block(s) (")[1].split(" already done")[0])
    assert resumed >= finished  # every block marked done before the kill was kept
    got = zarr.open_array(str(tmp_path / "out" / "img.ome.zarr" / "0"), mode="r")[:]
    want = zarr.open_array(str(tmp_path / "reference" / "img.ome.zarr" / "0"), mode="r")[:]
    np.testing.assert_array_equal(got, want)
    group = zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r")
    assert group.attrs["raysegment"]["status"] == "complete"
