"""kill -9 of a running ``raysegment infer``, then the same command: it resumes and the
result is bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from tests.conftest import (
    SMALL_BLOCKS,
    cli_command,
    conv_model,
    infer_with,
    random_image,
    save_torchscript,
)


def _cli(out: str) -> list[str]:
    return cli_command(
        "infer", "input=img.ome.tif", "model=model.pth", f"output={out}", *SMALL_BLOCKS
    )


@pytest.mark.usefixtures("ray_session")
def test_kill_dash_9_then_same_command_resumes_bit_identical(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "img.ome.tif",
        random_image((768, 768)),
        ome=True,
        tile=(256, 256),
        metadata={"axes": "YX"},
    )
    save_torchscript(conv_model(), tmp_path / "model.pth", 2, 1)
    infer_with(
        f"input={tmp_path / 'img.ome.tif'}",
        f"model={tmp_path / 'model.pth'}",
        f"output={tmp_path / 'reference'}",
        *SMALL_BLOCKS,
    )

    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    log = tmp_path / "killed.log"  # what the run said, should it end on its own
    with open(log, "w") as out:
        run = subprocess.Popen(
            _cli("out"),
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    done_dir = tmp_path / "out" / "img.ome.zarr" / ".raysegment" / "done"
    deadline = time.time() + 180
    while not (done_dir.is_dir() and len(list(done_dir.iterdir())) >= 5):
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no block finished in time"
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = len(list(done_dir.iterdir()))
    assert finished < 36
    group = zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r")
    assert group.attrs["raysegment"]["status"] == "incomplete"  # nothing looks complete

    result = subprocess.run(
        _cli("out"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    resumed = int(result.stdout.split("block(s) (")[1].split(" already done")[0])
    assert resumed >= finished  # every block marked done before the kill was kept
    got = zarr.open_array(str(tmp_path / "out" / "img.ome.zarr" / "0"), mode="r")[:]
    want = zarr.open_array(str(tmp_path / "reference" / "img.ome.zarr" / "0"), mode="r")[:]
    np.testing.assert_array_equal(got, want)
    group = zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r")
    assert group.attrs["raysegment"]["status"] == "complete"
