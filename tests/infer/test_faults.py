"""Processes that die mid-run: a predictor killed once is restarted and its block retried
(output identical); a block that kills every process it meets stops the run, naming it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from raysegment.infer.writer import inspect_output
from tests.conftest import (
    SMALL_BLOCKS,
    cli_command,
    conv_model,
    infer_with,
    random_image,
    save_torchscript,
    whole_image_prediction,
)
from tests.faults import install

# In the predictor's process: the blocks named in RAYSEGMENT_TEST_FAULTS (in every image),
# or about one block in 20 for "every", kill the process that runs the model on them
# (always, or only the first process to try each block: "once"), in the forward or, where
# a CPU predictor reads its own blocks, as it reads the image (RAYSEGMENT_TEST_FAULT_AT).
PATCH = """
import os
from raysegment.data.sources import ImageSource
predict, read, read_image = m.predict_block, m.read_row, ImageSource.read
reading = []  # the block whose pixels the predictor reads

def fault(item, at):
    faults = os.environ["RAYSEGMENT_TEST_FAULTS"].split(",")
    block = f"{item.image}-{item.key}"  # block keys repeat in every image
    if at != os.environ["RAYSEGMENT_TEST_FAULT_AT"]:
        return
    if item.key in faults or (faults == ["every"] and hash(block) % 20 == 0):
        if os.environ["RAYSEGMENT_TEST_FAULT_MODE"] == "always":
            os._exit(1)
        marker = os.path.join(os.environ["RAYSEGMENT_TEST_FAULT_DIR"], block)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            os._exit(1)
        except FileExistsError:
            pass

def dying_predict(module, plan, item, *args, **kwargs):
    fault(item, "forward")
    return predict(module, plan, item, *args, **kwargs)

def read_block(batch, *args, **kwargs):
    reading[:] = [m.row_item(batch, 0)]
    return read(batch, *args, **kwargs)

def dying_read(source, *args, **kwargs):
    if reading:
        fault(reading[0], "read")
    return read_image(source, *args, **kwargs)

m.predict_block = dying_predict
m.read_row = read_block
ImageSource.read = dying_read
"""


def run_with_faults(
    cwd: Path, faults: str, mode: str, *args: str, timeout: float = 300, at: str = "forward"
) -> subprocess.CompletedProcess[str]:
    site = install(cwd / "site", "raysegment.infer.predictor", PATCH)
    (cwd / "faults").mkdir(exist_ok=True)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]),
        "PYTHONWARNINGS": "ignore",
        "PYTHONHASHSEED": "0",
        "RAYSEGMENT_TEST_FAULTS": faults,
        "RAYSEGMENT_TEST_FAULT_MODE": mode,
        "RAYSEGMENT_TEST_FAULT_AT": at,
        "RAYSEGMENT_TEST_FAULT_DIR": str(cwd / "faults"),
    }
    return subprocess.run(
        cli_command("infer", *args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for name, size in (("img", 512), ("small", 256)):
        tifffile.imwrite(
            tmp_path / "images" / f"{name}.ome.tif",
            random_image((size, size)),
            ome=True,
            metadata={"axes": "YX"},
        )
    save_torchscript(conv_model(), tmp_path / "model.pth", 2, 1)
    return tmp_path


@pytest.mark.usefixtures("ray_session")
def test_predictor_killed_mid_run_is_restarted_and_output_identical(files: Path) -> None:
    infer_with(
        f"input={files / 'images'}",
        f"model={files / 'model.pth'}",
        f"output={files / 'reference'}",
        *SMALL_BLOCKS,
    )
    # Both images have a block t0z-1b0_1 and both kill a process once: with
    # max_attempts=2 the retry cap must count per image, not per block position.
    result = run_with_faults(
        files,
        "t0z-1b0_1,t0z-1b3_0",
        "once",
        "input=images",
        "model=model.pth",
        "output=out",
        "max_attempts=2",
        *SMALL_BLOCKS,
    )
    assert result.returncode == 0, result.stderr
    died = sorted(p.name for p in (files / "faults").iterdir())
    assert died == ["0-t0z-1b0_1", "0-t0z-1b3_0", "1-t0z-1b0_1"]
    for name in ("img", "small"):
        got = zarr.open_array(str(files / "out" / f"{name}.ome.zarr" / "0"), mode="r")[:]
        want = zarr.open_array(str(files / "reference" / f"{name}.ome.zarr" / "0"), mode="r")[:]
        np.testing.assert_array_equal(got, want)
        assert inspect_output(files / "out" / f"{name}.ome.zarr").complete
    assert "20 block(s)" in result.stdout


def test_block_that_kills_every_process_fails_the_run_naming_it(files: Path) -> None:
    """Dying as it reads the block (a CPU predictor reads its own): an attempt is counted
    before the block is read, or a block too large to read would be retried forever."""
    result = run_with_faults(
        files,
        "t0z-1b1_2",
        "always",
        "input=images/img.ome.tif",
        "model=model.pth",
        "output=out",
        "max_attempts=2",
        *SMALL_BLOCKS,
        timeout=240,  # a hang fails here
        at="read",
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("raysegment:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert (
        "img.ome.tif: block t=0 y 128:256, x 256:384: the predictor process died 2 time(s)"
        in (lines[0])
    )
    assert "Traceback" not in result.stderr.split(lines[0])[-1]
    group = zarr.open_group(str(files / "out" / "img.ome.zarr"), mode="r")
    assert group.attrs["raysegment"]["status"] == "incomplete"
    assert "t0z-1b1_2" not in os.listdir(files / "out" / "img.ome.zarr" / ".raysegment" / "done")


# In the Ray workers: the output chunk at y 1, x 2 of img's full resolution (the block
# y 128:256, x 256:384 of SMALL_BLOCKS) goes to /dev/full, whose writes fail with the
# kernel's ENOSPC, as a full disk's do.
FULL_DISK = """
put = m._put

def _put(path, value, exclusive=False):
    if path.parts[-6:-3] == ("img.ome.zarr", "0", "c") and path.parts[-2:] == ("1", "2"):
        with open("/dev/full", "wb", buffering=0) as f:
            f.write(value.as_buffer_like())
    return put(path, value, exclusive)

m._put = _put
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.usefixtures("ray_session")
def test_a_full_disk_fails_in_one_line_and_the_same_command_resumes(files: Path) -> None:
    site = install(files / "site", "zarr.storage._local", FULL_DISK)
    image = files / "images" / "img.ome.tif"
    args = [
        f"input={image}",
        f"model={files / 'model.pth'}",
        f"output={files / 'out'}",
        "tile.blend=crop",  # the whole image's prediction, tile by tile
        *SMALL_BLOCKS,
    ]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])}
    result = subprocess.run(
        cli_command("infer", *args), env=env, capture_output=True, text=True, timeout=240
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("raysegment:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0] == (
        f"raysegment: error: {files / 'out' / 'img.ome.zarr'}: No space left on device "
        "writing block t=0 y 128:256, x 256:384; free space there or give another output=, "
        "then run the same command again: it resumes from the blocks written"
    )
    out = files / "out" / "img.ome.zarr"
    assert not inspect_output(out).complete
    done = os.listdir(out / ".raysegment" / "done")
    assert "t0z-1b1_2" not in done

    # Space freed (the workers of this process's Ray write normally): the rest, alone.
    resumed = infer_with(*args)
    assert f"({len(done)} already done)" in str(resumed)
    assert inspect_output(out).complete
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    want = whole_image_prediction(conv_model(), tifffile.imread(image))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_soak_200_images_with_a_fault_every_20_blocks(tmp_path: Path) -> None:
    """200 images (800 blocks) in one run; about one block in 20 kills its predictor once.
    Every output must be complete and equal to whole-image inference: none lost, none
    doubled."""
    (tmp_path / "images").mkdir()
    module = conv_model()
    save_torchscript(module, tmp_path / "model.pth", 2, 1)
    images = {}
    for i in range(200):
        images[f"im{i:03d}"] = random_image((256, 256), seed=i)
        tifffile.imwrite(tmp_path / "images" / f"im{i:03d}.tif", images[f"im{i:03d}"])
    result = run_with_faults(
        tmp_path,
        "every",
        "once",
        "input=images",
        "model=model.pth",
        "output=out",
        "tile.blend=crop",
        *SMALL_BLOCKS,
        timeout=3000,
    )
    assert result.returncode == 0, result.stderr
    killed = len(list((tmp_path / "faults").iterdir()))
    summary = [line for line in result.stdout.splitlines() if line.startswith("raysegment:")]
    print(f"soak: 200 images, 800 blocks, {killed} predictor processes killed; {summary}")
    assert killed >= 20
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{name}.ome.zarr" for name in images
    )
    for name, image in images.items():
        out = tmp_path / "out" / f"{name}.ome.zarr"
        assert zarr.open_group(str(out), mode="r").attrs["raysegment"]["status"] == "complete"
        got = zarr.open_array(str(out / "0"), mode="r")[:]
        want = whole_image_prediction(module, image)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=name)
