"""The command line: bad input gets one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from raysegment.infer.writer import inspect_output
from tests.conftest import (
    cli_command,
    conv_model,
    error_lines,
    random_image,
    save_torchscript,
    write_wells,
)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        cli_command(*args),
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
    tifffile.imwrite(
        tmp_path / "cut.ome.tif",
        random_image((512, 512)),
        ome=True,
        tile=(64, 64),
        metadata={"axes": "YX"},
    )
    with open(tmp_path / "cut.ome.tif", "r+b") as f:  # a copy that stopped half-way
        f.truncate((tmp_path / "cut.ome.tif").stat().st_size // 2)
    save_torchscript(conv_model(), tmp_path / "model.pth", 2, 1)
    save_torchscript(conv_model(3), tmp_path / "m3.pth", 3, 1)
    torch.jit.save(
        torch.jit.trace(torch.nn.AvgPool2d(2), torch.zeros(1, 1, 8, 8)),
        str(tmp_path / "shrinks.pth"),
    )
    (tmp_path / "shrinks").mkdir()
    (tmp_path / "shrinks.pth").rename(tmp_path / "shrinks" / "model.pth")
    (tmp_path / "shrinks" / "raysegment.json").write_text('{"in_channels":1,"spatial_dims":2}')
    (tmp_path / "ints").mkdir()
    torch.jit.save(
        torch.jit.trace(_Counts(), torch.zeros(1, 1, 8, 8)), str(tmp_path / "ints" / "model.pth")
    )
    (tmp_path / "ints" / "raysegment.json").write_text('{"in_channels":1,"spatial_dims":2}')
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 not really")
    (tmp_path / "fake.pth").write_text("not a model")
    (tmp_path / "empty.pth").write_bytes(b"")
    zarr.create_array(str(tmp_path / "line.zarr"), data=np.arange(10))
    zarr.create_array(str(tmp_path / "none.zarr"), shape=(0, 64), dtype="uint8")
    zarr.create_array(str(tmp_path / "store.zarr"), data=random_image((64, 64)))
    zarr.create_array(str(tmp_path / "stack.zarr"), data=random_image((3, 64, 64)))
    nan = random_image((128, 128)).astype("float32")
    nan[100, 7] = np.nan
    zarr.create_array(str(tmp_path / "nan.zarr"), data=nan, chunks=(64, 64))
    zarr.create_array(str(tmp_path / "meta.zarr"), data=np.arange(10))
    (tmp_path / "meta.zarr" / "zarr.json").write_text("{ not json")
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken" / "img.ome.zarr").mkdir(parents=True)
    (tmp_path / "taken" / "img.ome.zarr" / "mine.txt").write_text("someone's data")
    for d in ("twins", "plates"):  # inputs that would share an output
        (tmp_path / d).mkdir()
    tifffile.imwrite(tmp_path / "twins" / "a.tif", random_image((64, 64)))
    tifffile.imwrite(tmp_path / "twins" / "a.ome.tif", random_image((64, 64)), ome=True)
    write_wells(tmp_path / "plates" / "plate.ome.tif")  # plate_s0 and plate_s1
    tifffile.imwrite(tmp_path / "plates" / "plate_s1.tif", random_image((64, 64)))
    tifffile.imwrite(tmp_path / "wide.tif", np.ones((8, 16), "uint8"))  # not img's view
    return tmp_path


class _Counts(torch.nn.Module):
    """Returns integer counts instead of floating-point scores."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], dim=1).round().to(torch.int64)


def run_main(*args: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The CLI in this process (the tables below would spend minutes on interpreter and
    torch start-up as subprocesses); returns (exit code, stderr)."""
    from raysegment.cli import main

    here = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(list(args))
    finally:
        os.chdir(here)
    return code, capsys.readouterr().err


OK = ["input=img.ome.tif", "model=model.pth", "output=out", "progress=false"]


def _with(**kv: str) -> list[str]:
    base = dict(a.split("=", 1) for a in OK)
    return [f"{k}={v}" for k, v in (base | kv).items()]


# One row per bad input: (name, arguments, what the one stderr line must say).
CASES: list[tuple[str, list[str], str]] = [
    ("missing input", _with(input="nope.tif"), "nope.tif: no such file"),
    ("pattern matches nothing", _with(input="empty"), "empty: no entry matches"),
    ("pattern matches nothing 2", _with(input=".", pattern=r".*\.czi"), "no entry matches"),
    ("non-image file", _with(input="notes.txt"), "not a supported image"),
    ("corrupt tiff", _with(input="bad.tif"), "bad.tif: not a readable TIFF"),
    ("truncated tiff", _with(input="cut.ome.tif"), "cut.ome.tif: truncated: 32 strip(s)/tile(s)"),
    ("corrupt zarr metadata", _with(input="meta.zarr"), "meta.zarr: not a readable zarr"),
    ("1D array", _with(input="line.zarr"), "1D array"),
    ("zero-size image", _with(input="none.zarr"), "none.zarr: image has zero size"),
    (
        "NaN pixels",
        _with(input="nan.zarr") + ["chunks=64", "block=64", "tile.size=64"],
        "nan.zarr: 1 NaN/Inf pixel(s) near t=0, z=0, y=100, x=7",
    ),
    ("missing model", _with(model="none.pth"), "none.pth: model not found"),
    ("not a model", _with(model="fake.pth"), "fake.pth: cannot load the model"),
    ("empty model file", _with(model="empty.pth"), "empty.pth: cannot load the model"),
    ("wrong output shape", _with(model="shrinks"), "keep the batch and spatial size"),
    ("wrong output dtype", _with(model="ints"), "returned dtype torch.int64"),
    ("3D model on 2D", _with(model="m3.pth"), "3D model needs a z-stack"),
    ("huge tile", OK + ["tile.size=100000"], "tile.size=[100000, 100000]"),
    ("unknown key", OK + ["tile.sise=64"], "unknown config key 'tile.sise'"),
    ("bad choice", OK + ["tile.blend=median"], "expected one of"),
    ("wrong type", OK + ["batch_size=lots"], "batch_size"),
    ("bad range", OK + ["tile.overlap=1"], "tile.overlap"),
    ("bad device", OK + ["device=tpu"], "device='tpu'"),
    ("missing key", ["input=img.ome.tif", "output=out"], "missing required key 'model'"),
    ("not key=value", OK + ["conf/nope.yaml"], "config file not found"),
    ("too many channels", OK + ["channels=[0,1]"], "has 1 channel"),
    ("block not chunk multiple", OK + ["chunks=32", "block=48"], "multiple of chunks"),
    ("output inside input", _with(input="store.zarr", output="store.zarr/seg"), "inside the input"),
    ("output is input dir", _with(input=".", pattern="img.ome.tif", output="."), "input directory"),
    ("output not writable", _with(output="notes.txt/out"), "cannot create the output"),
    ("output exists", _with(output="taken"), "is not a raysegment output"),
    ("two inputs one name", _with(input="twins"), "several inputs would write a.ome.zarr"),
    ("series named like a file", _with(input="plates"), "would write plate_s1.ome.zarr"),
    ("unlike ensemble", _with(model="[model.pth,m3.pth]"), "m3.pth: spatial_dims is 3, 2 for"),
    ("empty ensemble", _with(model="[]"), "model=[]: give a model"),
    ("level beyond the pyramid", OK + ["input_level=1"], "has 1 resolution level(s)"),
    ("missing mask", OK + ["mask=masks/{name}.tif"], "mask=masks/img.tif: no such file"),
    ("mask of another view", OK + ["mask=wide.tif"], "not the field of view of the image"),
    (
        "outlines without instances",
        OK + ["instances.geojson=true"],
        "instances.geojson=true writes the outlines of instances: set instances.method",
    ),
    (
        "outlines of a volume",
        _with(input="stack.zarr") + ["instances.method=watershed", "instances.geojson=true"],
        "stack.zarr is segmented as a volume (3 planes)",
    ),
    ("part beyond parts", OK + ["part_id=3", "num_parts=3"], "part_id counts from 0"),
    ("overwrite with parts", OK + ["num_parts=2", "overwrite=true"], "delete each other's"),
]


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("name,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2(
    files: Path, capsys: pytest.CaptureFixture[str], name: str, args: list[str], message: str
) -> None:
    code, err = run_main("infer", *args, cwd=files, capsys=capsys)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("raysegment: error: ") and message in lines[0], lines[0]
    for out in ("out/img.ome.zarr", "out/nan.ome.zarr", "taken/img.ome.zarr"):
        assert not inspect_output(files / out).complete  # nothing looks complete
    if name != "NaN pixels":  # refused before anything was written
        assert not (files / "out").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (_with(input="nope.tif"), "nope.tif: no such file"),
        # Met while Ray starts (the model is loaded meanwhile): Ray is shut down quietly.
        (_with(model="fake.pth"), "fake.pth: cannot load the model"),
    ],
    ids=["before Ray starts", "while Ray starts"],
)
def test_the_real_process_exits_2_without_traceback(
    files: Path, args: list[str], message: str
) -> None:
    result = run_cli("infer", *args, cwd=files)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"raysegment: error: {message}"), result.stderr


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
    assert error_lines(result.stderr)[-1].endswith("set overwrite=true to replace it")


def test_help_version_and_unknown_command(files: Path) -> None:
    assert run_cli("--version", cwd=files).stdout.startswith("raysegment ")
    assert "raysegment package" in run_cli("--help", cwd=files).stdout
    result = run_cli("segment", cwd=files)
    assert result.returncode == 2 and "unknown command 'segment'" in result.stderr


@pytest.fixture
def train_files(tmp_path: Path) -> Path:
    def pairs(name: str, image: np.ndarray, label: np.ndarray) -> None:
        for d in (f"{name}_img", f"{name}_lbl"):
            (tmp_path / d).mkdir()
        for i in range(3):
            tifffile.imwrite(tmp_path / f"{name}_img" / f"a{i}.tif", image)
            tifffile.imwrite(tmp_path / f"{name}_lbl" / f"a{i}.tif", label)

    image, label = random_image((40, 40)), np.zeros((40, 40), np.uint8)
    pairs("ok", image, label)
    pairs("shape", image, label[:, :30])
    pairs("multi", image, (np.arange(1600).reshape(40, 40) % 3).astype(np.uint8))
    pairs("float", image, label.astype("float32"))
    nan = image.astype("float32")
    nan[3, 3] = np.inf
    pairs("nan", nan, label)
    (tmp_path / "lonely").mkdir()
    tifffile.imwrite(tmp_path / "lonely" / "lonely.tif", image)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "thesis.docx").write_text("keep me")
    return tmp_path


TRAIN_OK = ["images.dir=ok_img", "labels.dir=ok_lbl", "output=model", "patch_size=32"]


def _train_with(**kv: str) -> list[str]:
    base = dict(a.split("=", 1) for a in TRAIN_OK)
    return [f"{k}={v}" for k, v in (base | kv).items()]


def _data(name: str) -> list[str]:
    return _train_with(**{"images.dir": f"{name}_img", "labels.dir": f"{name}_lbl"})


TRAIN_CASES: list[tuple[str, list[str], str]] = [
    ("unpaired", _train_with(**{"images.dir": "lonely"}), "lonely.tif: no label with key"),
    ("missing dir", _train_with(**{"labels.dir": "nope"}), "nope: no such file or directory"),
    ("label shape", _data("shape"), "differs from its image"),
    ("binary with 3 values", _data("multi"), "mode=binary needs 0 and one foreground value"),
    ("float labels", _data("float"), "labels must be integers"),
    ("NaN/Inf pixels", _data("nan"), "a0.tif: has NaN or infinite pixels"),
    ("patch too large", _train_with(patch_size="64"), "smaller than patch_size=[64, 64]"),
    ("unknown arch", TRAIN_OK + ["model.arch=UNet3"], "unknown model.arch 'UNet3'"),
    ("unknown encoder", TRAIN_OK + ["model.encoder=resnet19"], "not a segmentation-models"),
    ("loss vs mode", TRAIN_OK + ["loss=SoftCrossEntropyLoss"], "does not support mode=binary"),
    ("sparse optimizer", TRAIN_OK + ["optimizer=SparseAdam"], "needs sparse gradients"),
    ("bad key", TRAIN_OK + ["epochs=3"], "unknown config key 'epochs'"),
    ("bad fraction", TRAIN_OK + ["train_fraction=1.5"], "train_fraction=1.5"),
    ("fold beyond folds", TRAIN_OK + ["folds=3", "fold=3"], "fold counts from 0 to folds-1"),
    ("existing output", _train_with(output="used"), "used: exists and is not empty"),
]


@pytest.mark.parametrize("name,args,message", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input_one_line_exit_2(
    train_files: Path, capsys: pytest.CaptureFixture[str], name: str, args: list[str], message: str
) -> None:
    pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")
    code, err = run_main("train", *args, cwd=train_files, capsys=capsys)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert not (train_files / "model").exists()  # nothing half-written
    assert os.listdir(train_files / "used") == ["thesis.docx"]


PACKAGE_CASES: list[tuple[str, list[str], str]] = [
    (
        "not a model",
        ["model=ok_img", "output=m.zip", "authors=A"],
        "ok_img: no model.pth; give model= a directory",
    ),
    ("no authors", ["model=ok_img", "output=m.zip"], "names its authors"),
    ("missing key", ["output=m.zip", "authors=A"], "missing required key 'model'"),
]


@pytest.mark.parametrize("name,args,message", PACKAGE_CASES, ids=[c[0] for c in PACKAGE_CASES])
def test_package_bad_input_one_line_exit_2(
    train_files: Path, capsys: pytest.CaptureFixture[str], name: str, args: list[str], message: str
) -> None:
    (train_files / "ok_img" / "model.pth").write_bytes(b"")  # model.json and the rest missing
    (train_files / "ok_img" / "raysegment.json").write_text("{}")
    (train_files / "ok_img" / "model.json").write_text("{}")
    if name == "not a model":
        (train_files / "ok_img" / "model.pth").unlink()
    code, err = run_main("package", *args, cwd=train_files, capsys=capsys)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert not (train_files / "m.zip").exists()


@pytest.mark.usefixtures("ray_session")
def test_corrupt_chunk_met_mid_run_fails_in_one_line_and_stays_incomplete(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = random_image((256, 256)).astype("float32")
    zarr.create_array(str(files / "vol.zarr"), data=data, chunks=(64, 64))
    bad = sorted((files / "vol.zarr" / "c").glob("*/*"))[5]
    bad.write_bytes(b"garbage")
    args = ["input=vol.zarr", "model=model.pth", "output=out", "chunks=64", "block=64"]
    code, err = run_main("infer", *args, "tile.size=64", "progress=false", cwd=files, capsys=capsys)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and "vol.zarr: cannot read region" in lines[0], err
    group = zarr.open_group(str(files / "out" / "vol.ome.zarr"), mode="r")
    assert group.attrs["raysegment"]["status"] == "incomplete"


def test_train_refuses_an_output_it_may_not_write_before_ray_starts(
    train_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished model, another run's unfinished one, or foreign files: refused at once,
    not after Ray's start (~5 s here), and left as they were."""
    pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")
    import json

    from raysegment.errors import OutputError
    from raysegment.train import trainer

    def no_ray(setup: object) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(trainer, "start_ray_while", no_ray)
    settings = {
        "images": {"dir": str(train_files / "ok_img")},
        "labels": {"dir": str(train_files / "ok_lbl")},
        "patch_size": [32],
    }
    model = train_files / "model"
    (model / ".raysegment").mkdir(parents=True)
    for state, message in (
        ({"status": "complete"}, "a finished model exists"),
        ({"status": "training", "fingerprint": "other"}, "unfinished training run with other"),
    ):
        (model / ".raysegment" / "train.json").write_text(json.dumps(state))
        with pytest.raises(OutputError, match=message):
            trainer.train(settings | {"output": str(model)})
        assert json.loads((model / ".raysegment" / "train.json").read_text()) == state
    with pytest.raises(OutputError, match="exists and is not empty"):
        trainer.train(settings | {"output": str(train_files / "used")})
    assert os.listdir(train_files / "used") == ["thesis.docx"]
