"""The command line: bad input gets one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from tests.conftest import conv_model, random_image, save_torchscript


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "raysegment.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    tifffile.imwrite(
        tmp_path / "img.ome.tif", random_image((64, 64)), ome=True, metadata={"axes": "YX"}
    )
    save_torchscript(conv_model(), tmp_path / "model.pth", 2, 1)
    torch.jit.save(
        torch.jit.trace(torch.nn.AvgPool2d(2), torch.zeros(1, 1, 8, 8)),
        str(tmp_path / "shrinks.pth"),
    )
    (tmp_path / "shrinks").mkdir()
    (tmp_path / "shrinks.pth").rename(tmp_path / "shrinks" / "model.pth")
    (tmp_path / "shrinks" / "raysegment.json").write_text('{"in_channels":1,"spatial_dims":2}')
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 not really")
    (tmp_path / "fake.pth").write_text("not a model")
    zarr.create_array(str(tmp_path / "line.zarr"), data=np.arange(10))
    (tmp_path / "empty").mkdir()
    return tmp_path


OK = ["input=img.ome.tif", "model=model.pth", "output=out"]


def _with(**kv: str) -> list[str]:
    base = dict(a.split("=", 1) for a in OK)
    return [f"{k}={v}" for k, v in (base | kv).items()]


CASES: list[tuple[str, list[str], str]] = [
    ("missing input", _with(input="nope.tif"), "nope.tif: no such file"),
    ("pattern matches nothing", _with(input="empty"), "empty: no entry matches"),
    ("pattern matches nothing 2", _with(input=".", pattern=r".*\.czi"), "no entry matches"),
    ("non-image file", _with(input="notes.txt"), "not a supported image"),
    ("corrupt tiff", _with(input="bad.tif"), "bad.tif: not a readable TIFF"),
    ("1D array", _with(input="line.zarr"), "1D array"),
    ("missing model", _with(model="none.pth"), "none.pth: model not found"),
    ("not a model", _with(model="fake.pth"), "fake.pth: cannot load the model"),
    ("contract violation", _with(model="shrinks"), "keep the batch and spatial size"),
    ("unknown key", OK + ["tile.sise=64"], "unknown config key 'tile.sise'"),
    ("bad choice", OK + ["tile.blend=median"], "expected one of"),
    ("wrong type", OK + ["batch_size=lots"], "batch_size"),
    ("bad range", OK + ["tile.overlap=1"], "tile.overlap"),
    ("bad device", OK + ["device=tpu"], "device='tpu'"),
    ("missing key", ["input=img.ome.tif", "output=out"], "missing required key 'model'"),
    ("not key=value", OK + ["conf/nope.yaml"], "config file not found"),
    ("too many channels", OK + ["channels=[0,1]"], "has 1 channel"),
    ("3D model on 2D", _with(model="m3.pth"), "3D model needs a z-stack"),
    ("block not chunk multiple", OK + ["chunks=32", "block=48"], "multiple of chunks"),
]


@pytest.mark.parametrize("name,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2(files: Path, name: str, args: list[str], message: str) -> None:
    if name == "3D model on 2D":
        save_torchscript(conv_model(3), files / "m3.pth", 3, 1)
    result = run_cli("infer", *args, cwd=files)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("raysegment: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (files / "out" / "img.ome.zarr").exists()


@pytest.mark.usefixtures("ray_session")
def test_complete_output_is_refused_without_overwrite(files: Path) -> None:
    from raysegment.infer import infer

    infer(
        input=str(files / "img.ome.tif"),
        model=str(files / "model.pth"),
        output=str(files / "out"),
        progress=False,
    )
    result = run_cli("infer", *OK, cwd=files)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("set overwrite=true to replace it")


def test_help_version_and_unknown_command(files: Path) -> None:
    assert run_cli("--version", cwd=files).stdout.startswith("raysegment ")
    assert "raysegment infer" in run_cli("--help", cwd=files).stdout
    result = run_cli("segment", cwd=files)
    assert result.returncode == 2 and "unknown command 'segment'" in result.stderr


@pytest.fixture
def train_files(tmp_path: Path) -> Path:
    for d in ("img", "lbl", "img1"):
        (tmp_path / d).mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "img" / f"a{i}.tif", random_image((40, 40)))
        tifffile.imwrite(tmp_path / "lbl" / f"a{i}.tif", np.zeros((40, 40), np.uint8))
    tifffile.imwrite(tmp_path / "img1" / "lonely.tif", random_image((40, 40)))
    return tmp_path


TRAIN_OK = ["images.dir=img", "labels.dir=lbl", "output=model", "patch_size=32"]


def _train_with(**kv: str) -> list[str]:
    base = dict(a.split("=", 1) for a in TRAIN_OK)
    return [f"{k}={v}" for k, v in (base | kv).items()]


TRAIN_CASES: list[tuple[str, list[str], str]] = [
    ("unpaired", _train_with(**{"images.dir": "img1"}), "lonely.tif: no label with key"),
    ("empty", _train_with(**{"labels.dir": "nope"}), "nope: no such file or directory"),
    ("patch too large", _train_with(patch_size="64"), "smaller than patch_size=[64, 64]"),
    ("unknown arch", TRAIN_OK + ["model.arch=UNet3"], "unknown model.arch 'UNet3'"),
    ("loss vs mode", TRAIN_OK + ["loss=SoftCrossEntropyLoss"], "does not support mode=binary"),
    ("sparse optimizer", TRAIN_OK + ["optimizer=SparseAdam"], "needs sparse gradients"),
    ("bad key", TRAIN_OK + ["epochs=3"], "unknown config key 'epochs'"),
    ("bad fraction", TRAIN_OK + ["train_fraction=1.5"], "train_fraction=1.5"),
]


@pytest.mark.parametrize("name,args,message", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input_one_line_exit_2(
    train_files: Path, name: str, args: list[str], message: str
) -> None:
    pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")
    result = run_cli("train", *args, cwd=train_files)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (train_files / "model").exists()  # nothing half-written


@pytest.mark.usefixtures("ray_session")
def test_corrupt_chunk_met_mid_run_fails_in_one_line_and_stays_incomplete(files: Path) -> None:
    data = random_image((256, 256)).astype("float32")
    zarr.create_array(str(files / "vol.zarr"), data=data, chunks=(64, 64))
    bad = sorted((files / "vol.zarr" / "c").glob("*/*"))[5]
    bad.write_bytes(b"garbage")
    result = run_cli(
        "infer",
        "input=vol.zarr",
        "model=model.pth",
        "output=out",
        "chunks=64",
        "block=64",
        "tile.size=64",
        "progress=false",
        cwd=files,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("raysegment:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "vol.zarr: cannot read region" in lines[0], result.stderr
    assert "Traceback" not in result.stderr.split(lines[0])[-1]
    group = zarr.open_group(str(files / "out" / "vol.ome.zarr"), mode="r")
    assert group.attrs["raysegment"]["status"] == "incomplete"
