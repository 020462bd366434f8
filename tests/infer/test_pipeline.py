"""End-to-end inference runs through Ray: output format, metadata, axes, resume, overwrite."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from raysegment.config import TileConfig
from raysegment.data.tiling import Tiling
from raysegment.errors import InputImageError, OutputError
from raysegment.infer import infer
from raysegment.infer.stages import HEAP_SLACK
from tests.conftest import (
    conv_model,
    driver_plan,
    random_image,
    read_block,
    whole_image_prediction,
    work_row,
    write_czi,
    write_wells,
)

pytestmark = pytest.mark.usefixtures("ray_session")


def _attrs(path: Path) -> dict:
    return dict(zarr.open_group(str(path), mode="r").attrs)


@pytest.mark.parametrize(
    "mode,dtype,channels",
    [
        ("raw", "float32", 2),
        ("probabilities", "float32", 2),
        ("mask", "uint8", 2),
        ("labels", "uint8", 1),
    ],
)
def test_output_is_valid_ome_zarr_with_input_metadata(
    tmp_path, make_model, ome_tiff, mode, dtype, channels
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    image = random_image((130, 150))
    path = ome_tiff(
        image, PhysicalSizeX=0.5, PhysicalSizeY=0.25, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm"
    )
    model, module = make_model()
    summary = infer(
        input=str(path),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        tile={"size": [64]},
        chunks=[64],
        finalize={"mode": mode},
    )
    out = tmp_path / "out" / "img.ome.zarr"
    assert summary.outputs == [str(out)] and summary.images == 1 and summary.tiles > 0
    group = zarr.open_group(str(out), mode="r")
    Image.from_zarr(group)  # validates NGFF 0.5 metadata
    nodes = list(Reader(parse_url(str(out)))())
    assert nodes and nodes[0].data[0].shape == (channels, 130, 150)
    attrs = _attrs(out)
    ms = attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][1]["unit"] == ms["axes"][2]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.25, 0.5]
    labels = [c["label"] for c in attrs["ome"]["omero"]["channels"]]
    assert labels == (["labels"] if mode == "labels" else ["class_0", "class_1"])
    arr = group["0"]
    assert arr.dtype == np.dtype(dtype)
    prov = attrs["raysegment"]
    assert prov["status"] == "complete"
    assert prov["model"]["sha256"] and prov["version"]
    assert prov["config"]["finalize"]["mode"] == mode
    assert not (out / ".raysegment").exists()
    logits = torch.from_numpy(whole_image_prediction(module, image))
    data = arr[:]
    if mode == "probabilities":
        assert np.allclose(data.sum(0), 1.0, atol=1e-5)  # softmax over 2 channels
    if mode == "labels":
        # away from tile seams gaussian blending equals whole-image inference closely
        want = torch.argmax(logits, 0).numpy()
        assert (data[0] == want).mean() > 0.99
        named = [{"value": 0, "class": "class_0"}, {"value": 1, "class": "class_1"}]
        assert prov["labels"] == named  # each value's class, as the model names them
    else:
        assert "labels" not in prov


def test_channels_and_time_axes(tmp_path, make_model, ome_tiff) -> None:
    data = random_image((2, 3, 70, 90))  # t, c, y, x
    path = ome_tiff(data, axes="TCYX", tile=None)
    model, module = make_model(in_ch=1, out_ch=1)
    infer(
        input=str(path),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        channels=[2],
        tile={"size": [32], "blend": "crop"},
        finalize={"mode": "raw"},
    )
    out = tmp_path / "out" / "img.ome.zarr"
    axes = [a["name"] for a in _attrs(out)["ome"]["multiscales"][0]["axes"]]
    assert axes == ["t", "c", "y", "x"]
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    for t in range(2):
        want = whole_image_prediction(module, data[t, 2])
        np.testing.assert_allclose(got[t], want, rtol=1e-5, atol=1e-4)


def _wells(path: Path) -> tuple[Path, list[np.ndarray], list[float]]:
    """An OME-TIFF of two wells: the file, each image's channel 1, each pixel size."""
    wells = write_wells(path / "plate.ome.tif")
    return path / "plate.ome.tif", [well[1] for well in wells], [0.5, 1.0]


def _scenes(path: Path) -> tuple[Path, list[np.ndarray], list[float]]:
    """A ZEN mosaic of two scenes, two channels, from origins other than (0, 0)."""
    scenes = [random_image((1, 2, 1, 100, 90), seed=3), random_image((1, 2, 1, 40, 130), seed=4)]
    write_czi(path / "scan.czi", [(scenes[0], (-50, 20)), (scenes[1], (400, 0))], 0.345)
    return path / "scan.czi", [scene[0, 1, 0] for scene in scenes], [0.345, 0.345]


@pytest.mark.parametrize("write", [_wells, _scenes], ids=["ome-tiff wells", "czi scenes"])
def test_every_image_of_a_file_of_several_gets_its_output(tmp_path, make_model, write) -> None:
    """A plate's or a multi-position scan's OME-TIFF, a slide's CZI of several scenes:
    each image is segmented into ``<stem>_s<series>.ome.zarr`` with its own size and
    physical size; none is left out."""
    path, images, sizes = write(tmp_path)
    model, module = make_model(in_ch=1, out_ch=1)
    summary = infer(
        input=str(path),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        channels=[1],
        tile={"size": [32], "blend": "crop"},
        finalize={"mode": "raw"},
    )
    assert summary.images == 2
    stem = path.name.split(".")[0]
    for i, (image, size) in enumerate(zip(images, sizes, strict=True)):
        out = tmp_path / "out" / f"{stem}_s{i}.ome.zarr"
        attrs = _attrs(out)
        assert attrs["raysegment"]["status"] == "complete"
        assert attrs["raysegment"]["input"]["series"] == i
        multiscale = attrs["ome"]["multiscales"][0]
        scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale == pytest.approx([1.0, size, size])
        assert [a.get("unit") for a in multiscale["axes"][1:]] == ["micrometer"] * 2
        got = zarr.open_array(str(out / "0"), mode="r")[:]
        want = whole_image_prediction(module, image)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        assert (tmp_path / "out" / f"{stem}_s{i}.png").is_file()


def test_2d_model_on_multipage_tiff_stack(tmp_path, make_model) -> None:
    stack = random_image((5, 60, 70))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)  # plain multi-page TIFF, no OME metadata
    model, module = make_model(out_ch=1)
    infer(
        input=str(path),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        tile={"size": [32], "blend": "crop"},
        finalize={"mode": "raw"},
    )
    out = tmp_path / "out" / "stack.ome.zarr"
    axes = [a["name"] for a in _attrs(out)["ome"]["multiscales"][0]["axes"]]
    assert axes == ["c", "z", "y", "x"]
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    for z in range(5):
        np.testing.assert_allclose(
            got[:, z], whole_image_prediction(module, stack[z]), rtol=1e-5, atol=1e-4
        )


def test_tiff_sequence_is_one_volume(tmp_path, make_model, request) -> None:
    """sequence=z: a CT reconstruction's planes, a file each (Fiji's Image Sequence, no
    zero padding, a note beside them), segmented as one volume with its calibration
    (sequence=t, a file per time point, is read as tests/data/test_sequence.py shows)."""
    volume = random_image((20, 40, 36))
    recon = tmp_path / "recon"
    recon.mkdir()
    for z, plane in enumerate(volume):
        meta = {"spacing": 2.0, "unit": "um"}
        tifffile.imwrite(
            recon / f"rec{z}.tif", plane, imagej=True, resolution=(2, 2), metadata=meta
        )
    (recon / "notes.txt").write_text("scan settings")
    model, module = make_model(dims=3, out_ch=1)
    settings = {"progress": False, "finalize": {"mode": "raw"}, "quicklook": False}
    tile = {"size": [16], "overlap": 0.5, "blend": "crop"}
    common = {"model": str(model), "tile": tile, "chunks": [8], "block": [8, 16, 16]}
    summary = infer(
        input=str(recon),
        sequence="z",
        model=str(model),
        output=str(tmp_path / "z"),
        tile=tile,
        chunks=[8],
        block=[8, 16, 16],
        **settings,
    )
    out = tmp_path / "z" / "recon.ome.zarr"
    assert summary.outputs == [str(out)] and summary.blocks == 3 * 3 * 3
    ms = _attrs(out)["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.5, 0.5]
    assert _attrs(out)["raysegment"]["input"]["path"] == str(recon)
    sequence = {"axis": "z", "files": 20, "first": "rec0.tif", "last": "rec19.tif"}
    assert _attrs(out)["raysegment"]["input"]["sequence"] == sequence
    # The same volume as one multi-page TIFF, segmented with the same settings: the
    # same output, value for value.
    tifffile.imwrite(tmp_path / "stack.tif", volume, imagej=True, metadata={"axes": "ZYX"})
    infer(
        input=str(tmp_path / "stack.tif"),
        model=str(model),
        output=str(tmp_path / "one"),
        tile=tile,
        chunks=[8],
        block=[8, 16, 16],
        **settings,
    )
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    np.testing.assert_array_equal(got, zarr.open_array(str(tmp_path / "one/stack.ome.zarr/0"))[:])
    np.testing.assert_allclose(got, whole_image_prediction(module, volume), rtol=1e-5, atol=1e-4)
    # The planes on a web server (the workers fetch them): the same output.
    served = f"{request.getfixturevalue('http_server')}/recon"
    infer(input=served, sequence="z", output=str(tmp_path / "web"), **settings | common)
    web = zarr.open_array(str(tmp_path / "web/recon.ome.zarr/0"), mode="r")[:]
    np.testing.assert_array_equal(web, got)


@pytest.mark.parametrize("served", [False, True])
def test_precomputed_em_volume_at_its_second_scale(tmp_path, make_model, served, request) -> None:
    """A connectomics volume (Neuroglancer precomputed, offset in space) segmented at its
    second scale, from disk or from a web server (the workers read it over HTTP): the
    output has that scale's voxel size in nanometres."""
    from tests.data.test_tensorstore import write_precomputed

    volume = random_image((20, 64, 48))
    write_precomputed(tmp_path / "em", volume, offset=(512, 512, 100))
    model, module = make_model(dims=3, out_ch=1)
    where = str(tmp_path / "em")
    if served:
        where = f"precomputed://{request.getfixturevalue('http_server')}/em"
    infer(
        input=where,
        model=str(model),
        output=str(tmp_path / "out"),
        input_level=1,
        tile={"size": [16], "overlap": 0.5, "blend": "crop"},
        finalize={"mode": "raw"},
        progress=False,
    )
    out = tmp_path / "out" / "em.ome.zarr"
    ms = _attrs(out)["ome"]["multiscales"][0]
    assert ms["axes"][1]["unit"] == "nanometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 40.0, 16.0, 16.0]
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    want = whole_image_prediction(module, volume[:, ::2, ::2])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("level", "served", "picked"), [(0, False, False), (1, False, True), (1, True, False)]
)
def test_ome_zarr_05_volume_keeps_anisotropic_scale(
    tmp_path, make_model, level, served, picked, request
) -> None:
    """Its full resolution, or (``input_level=1``) its second dataset, halved in y and x
    only (connectomics' mip levels), from disk or from a web server (as public OME-Zarr
    images are served): the output at that level with its voxel size, and where the input
    places it (its multiscale's translation, the level's own half-pixel shift on top).
    ``picked``: no ``input_level``; the model records the pixel it was trained at (15 nm),
    and the level nearest it (16 nm, not 8) is read."""
    vol = random_image((20, 40, 40)).astype("uint8")
    path = tmp_path / "vol.ome.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("s0", data=vol, chunks=(10, 20, 20))
    g.create_array("s1", data=vol[:, ::2, ::2], chunks=(10, 20, 20))
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
                "datasets": [
                    {
                        "path": f"s{i}",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [40.0, 8.0 * 2**i, 8.0 * 2**i]},
                            {"type": "translation", "translation": [0.0, 4.0 * i, 4.0 * i]},
                        ],
                    }
                    for i in range(2)
                ],
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, 1.0, 1.0]},
                    {"type": "translation", "translation": [400.0, 800.0, 1600.0]},
                ],
            }
        ],
    }
    model, module = make_model(dims=3, out_ch=1)
    if picked:  # a model directory recording its training pixel
        (tmp_path / "trained").mkdir()
        model = model.rename(tmp_path / "trained" / "model.pth").parent
        meta = {"pixel_size": {"y": 15.0, "x": 15.0}, "pixel_unit": "nanometer"}
        (model / "raysegment.json").write_text(json.dumps(meta))
    where = str(path)
    if served:
        where = f"{request.getfixturevalue('http_server')}/vol.ome.zarr"
    summary = infer(
        input=where,
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        **({} if picked else {"input_level": level}),
        tile={"size": [16], "overlap": 0.5, "blend": "crop"},
        finalize={"mode": "raw"},
    )
    assert summary.levels.startswith("input_level 1 (1 image(s)): ") == picked
    out = tmp_path / "out" / "vol.ome.zarr"
    ms = _attrs(out)["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][1]["unit"] == "nanometer"
    xy = 8.0 * 2**level
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 40.0, xy, xy]},
        {"type": "translation", "translation": [0.0, 400.0, 800.0 + 4 * level, 1600.0 + 4 * level]},
    ]
    assert _attrs(out)["raysegment"]["input"].get("level", 0) == level
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    want = whole_image_prediction(module, vol[:, :: 2**level, :: 2**level])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_directory_with_pattern_and_export_program(tmp_path, ome_tiff) -> None:
    for name in ("a.ome.tif", "b.ome.tif", "skip.png"):
        if name.endswith(".tif"):
            ome_tiff(random_image((40, 50)), name=name, tile=None)
        else:
            (tmp_path / name).write_bytes(b"x")
    module = conv_model(out_ch=1)
    program = torch.export.export(module, (torch.zeros(1, 1, 32, 32),))
    model = tmp_path / "model.pt2"
    torch.export.save(program, str(model))
    summary = infer(
        input=str(tmp_path),
        pattern=r".*\.ome\.tif",
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        finalize={"mode": "raw"},
        tile={"blend": "crop"},
    )
    assert sorted(Path(p).name for p in summary.outputs) == ["a.ome.zarr", "b.ome.zarr"]
    prov = _attrs(tmp_path / "out" / "a.ome.zarr")["raysegment"]
    assert prov["config"]["tile"]["size"] is None  # came from the exported 32x32 program
    with pytest.raises(InputImageError, match="no entry matches"):
        infer(
            input=str(tmp_path),
            pattern=r".*\.czi",
            model=str(model),
            output=str(tmp_path / "out2"),
            progress=False,
        )


def test_model_directory_metadata_names_channels_and_normalizes(tmp_path, ome_tiff) -> None:
    image = random_image((40, 50))
    path = ome_tiff(image, tile=None)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    module = conv_model(out_ch=2)
    torch.jit.save(torch.jit.trace(module, torch.zeros(1, 1, 16, 16)), str(model_dir / "model.pth"))
    (model_dir / "raysegment.json").write_text(
        json.dumps({"classes": ["background", "cell"], "normalize": {"mean": 500.0, "std": 250.0}})
    )
    infer(
        input=str(path),
        model=str(model_dir),
        output=str(tmp_path / "out"),
        progress=False,
        tile={"size": [32], "blend": "crop"},
        finalize={"mode": "raw"},
    )
    out = tmp_path / "out" / "img.ome.zarr"
    labels = [c["label"] for c in _attrs(out)["ome"]["omero"]["channels"]]
    assert labels == ["background", "cell"]
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    want = whole_image_prediction(module, (image.astype(np.float32) - 500.0) / 250.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_existing_outputs_refused_resumed_or_overwritten(tmp_path, make_model, ome_tiff) -> None:
    image = random_image((128, 128))
    path = ome_tiff(image)
    model, _ = make_model()
    out = tmp_path / "out"
    cfg = dict(
        input=str(path),
        model=str(model),
        output=str(out),
        progress=False,
        tile={"size": [32], "blend": "crop"},
        chunks=[32],
        block=[32],
        finalize={"mode": "raw"},
    )
    first = infer(**cfg)
    assert first.blocks == 16
    target = out / "img.ome.zarr"
    reference = zarr.open_array(str(target / "0"), mode="r")[:]
    with pytest.raises(OutputError, match="overwrite=true"):
        infer(**cfg)

    # Make it look interrupted: 14 of 16 blocks done, their pixels replaced by a sentinel.
    group = zarr.open_group(str(target), mode="r+")
    meta = dict(group.attrs["raysegment"])
    group.attrs["raysegment"] = meta | {"status": "incomplete"}
    arr = zarr.open_array(str(target / "0"), mode="r+")
    arr[:] = 7.0
    done = target / ".raysegment" / "done"
    done.mkdir(parents=True)
    keys = [f"t0z-1b{i}_{j}" for i in range(4) for j in range(4)]
    for key in keys[:14]:
        (done / key).touch()
    with pytest.raises(OutputError, match="other settings"):
        infer(**(cfg | {"tile": {"size": [32], "blend": "gaussian"}}))
    resumed = infer(**cfg)
    assert resumed.resumed_blocks == 14
    got = arr[:]
    assert (got[:, :96] == 7.0).all()  # finished blocks were not computed again
    np.testing.assert_array_equal(got[:, 96:, 64:], reference[:, 96:, 64:])
    assert _attrs(target)["raysegment"]["status"] == "complete"

    infer(**(cfg | {"overwrite": True}))
    np.testing.assert_array_equal(zarr.open_array(str(target / "0"), mode="r")[:], reference)


def test_a_run_warns_before_it_starts_when_its_output_may_not_fit(
    tmp_path, make_model, ome_tiff, monkeypatch, caplog
) -> None:
    import shutil
    from collections import Counter

    from raysegment.infer import pipeline

    model, _ = make_model()  # two output channels
    out = tmp_path / "out"
    settings = {"input": str(ome_tiff(random_image((256, 256)))), "model": str(model)}
    _, plan = driver_plan(settings | {"output": str(out), "chunks": [64], "block": [128]})
    out.mkdir()
    need = 2 * 256 * 256 * 4  # float32 probabilities, before compression
    usage = shutil.disk_usage(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=need // 2))
    for left, warned in ((4, True), (2, False)):  # of 4 blocks, the rest of a resumed run
        caplog.clear()
        pipeline._warn_of_space([plan], Counter({plan.id: left}), str(out), "probabilities")
        assert [r.getMessage() for r in caplog.records] == warned * [
            f"raysegment: {out} has 0.000262 GB free; the output pixels still to write take "
            "0.000524 GB before compression (finalize.mode=mask writes a byte a pixel): "
            "should the disk fill up, the run stops and the same command resumes"
        ]


def test_constant_blocks_skip_the_model_and_stay_fill_value(tmp_path, make_model) -> None:
    image = random_image((192, 128)).astype("float32")
    # Background wide enough that the first row of 64x64 blocks, with the tiles reaching
    # into them, sees only zeros: those two blocks are empty.
    image[:128, :] = 0.0
    path = tmp_path / "img.zarr"
    zarr.create_array(str(path), data=image, chunks=(64, 64))
    model, module = make_model(out_ch=1)
    cfg = dict(
        input=str(path),
        model=str(model),
        progress=False,
        chunks=[64],
        block=[64],
        tile={"size": [32], "blend": "crop"},
        finalize={"mode": "raw"},
    )
    skipped = infer(output=str(tmp_path / "skip"), **cfg)
    full = infer(output=str(tmp_path / "full"), skip_empty=False, **cfg)
    assert skipped.empty_blocks == 2 and full.empty_blocks == 0
    assert skipped.tiles < full.tiles and "(2 empty)" in str(skipped)
    got = zarr.open_array(str(tmp_path / "skip" / "img.ome.zarr" / "0"), mode="r")
    want = zarr.open_array(str(tmp_path / "full" / "img.ome.zarr" / "0"), mode="r")[:]
    assert (got[:, :64] == 0).all()  # fill value, and no chunk stored for it
    assert not list((tmp_path / "skip" / "img.ome.zarr" / "0" / "c" / "0" / "0").glob("*"))
    np.testing.assert_array_equal(got[:, 64:], want[:, 64:])
    assert not np.allclose(want[:, :64], 0)  # the model would have said something there
    # 6 blocks of 64 px for 32 px tiles: the summary says how many tiles the seams repeat.
    grid = Tiling.plan((192, 128), (32, 32), TileConfig().overlap, "crop").num_tiles
    assert f"{full.tiles / grid - 1:.0%} more tiles" in full.seams
    assert "block=[128, 128]" in full.seams


def test_blocks_in_unwritten_chunks_are_empty_without_being_read(tmp_path, make_model) -> None:
    """A sparse volume (chunks never written: tissue in a corner of its bounding box):
    blocks whose region, with the tiles' halo, lies in unwritten chunks are found empty
    from the store's listing, before any read; the output is that of the same volume with
    every chunk stored (the zeros read and found constant), and blocks whose halo reaches
    the written chunks run the model."""
    from raysegment.config import InferConfig, as_config
    from raysegment.infer.model import read_models
    from raysegment.infer.pipeline import _prepare, _unstored_blocks

    volume = np.zeros((64, 96, 96), "uint16")
    volume[:32, :32, :32] = random_image((32, 32, 32)) + 1
    sparse, dense = tmp_path / "sparse.zarr", tmp_path / "dense.zarr"
    zarr.create_array(str(sparse), data=volume, chunks=(16, 16, 16))  # zeros not stored
    with zarr.config.set({"array.write_empty_chunks": True}):
        zarr.create_array(str(dense), data=volume, chunks=(16, 16, 16))
    assert len(list(sparse.glob("c/*/*/*"))) == 8 and len(list(dense.glob("c/*/*/*"))) == 144
    model, _ = make_model(dims=3, out_ch=1)
    cfg = dict(
        model=str(model),
        progress=False,
        quicklook=False,
        chunks=[16],
        block=[32],
        tile={"size": [16], "overlap": 0.5},
        finalize={"mode": "raw"},
    )
    # 2 x 3 x 3 blocks of 32^3; the data fills block (0, 0, 0), and the gaussian tiles
    # reaching its 7 neighbours read into it: 10 blocks are empty.
    found = infer(input=str(sparse), output=str(tmp_path / "a"), **cfg)
    read = infer(input=str(dense), output=str(tmp_path / "b"), **cfg)
    assert found.empty_blocks == read.empty_blocks == 10 and found.tiles == read.tiles
    a = zarr.open_array(str(tmp_path / "a" / "sparse.ome.zarr" / "0"), mode="r")[:]
    b = zarr.open_array(str(tmp_path / "b" / "dense.ome.zarr" / "0"), mode="r")[:]
    np.testing.assert_array_equal(a, b)
    assert (a[0, 32:, :32, :32] != 0).any()  # a neighbour's halo saw the data
    assert found.seams  # 16^3 tiles in 32^3 blocks: the seams repeat tiles
    # Nothing written at all: every block found empty, no tile run, none repeated.
    zarr.create_array(
        str(tmp_path / "none.zarr"), shape=volume.shape, chunks=(16,) * 3, dtype="uint16"
    )
    nothing = infer(input=str(tmp_path / "none.zarr"), output=str(tmp_path / "n"), **cfg)
    assert nothing.empty_blocks == 18 and nothing.tiles == 0 and nothing.seams == ""
    # Which blocks the driver found: only the sparse store's listing tells them.
    for path, count in ((sparse, 10), (dense, 0)):
        run = as_config(InferConfig, dict(cfg, input=str(path), output=str(tmp_path / "c")), {})
        models = read_models(run.model)
        _, plans, _, unstored = _prepare(run, [str(path)], str(tmp_path / "c"), models)
        unwritten = _unstored_blocks(plans, list(plans[0].work()), unstored)
        assert len(unwritten) == count
        assert all(max(w.index) == 2 for w in unwritten)  # none beside the data's block


def test_ray_starts_while_the_run_is_prepared(tmp_path, make_model, ome_tiff, monkeypatch) -> None:
    """Ray's start (seconds of its processes booting) overlaps opening the images and
    loading and probing the model; an error met there shuts the Ray started down."""
    import ray

    from raysegment import runtime
    from raysegment.errors import ModelLoadError
    from raysegment.infer import pipeline

    prepared = threading.Event()
    calls: list[tuple[str, bool]] = []

    def start_ray() -> str:
        calls.append(("start", prepared.wait(60)))  # True only if preparing ran meanwhile
        return "cluster"  # stopped by ray.shutdown alone

    def prepare(*args: object) -> None:
        prepared.set()
        raise ModelLoadError("model.pth: cannot load the model")

    monkeypatch.setattr(runtime, "start_ray", start_ray)
    monkeypatch.setattr(pipeline, "_prepare", prepare)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(("shutdown", True)))
    model, _ = make_model()
    with pytest.raises(ModelLoadError):
        infer(input=str(ome_tiff(random_image((64, 64)))), model=str(model), output=str(tmp_path))
    assert calls == [("start", True), ("shutdown", True)]


def test_read_and_write_workers_do_not_import_torch() -> None:
    """Read and write tasks (and training's patch readers) run in their own worker
    processes: importing torch there would cost each one ~0.5 GiB and seconds of start-up
    for nothing (4 patch readers importing it at once held the first epoch 7 s)."""
    code = (
        "import sys, raysegment.infer.stages, raysegment.infer.writer, raysegment.post.finish,"
        " raysegment.train.data;"
        "print(sorted(m for m in ('torch', 'raysegment.infer.pipeline') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_driver_imports_torch_and_ray_data_only_while_ray_starts() -> None:
    """``raysegment infer`` imports the pipeline, then starts Ray while another thread
    loads the model: torch and Ray Data (with pandas; 2.7 + 1.0 s of imports here) load
    there, beside Ray's booting processes, not before Ray starts."""
    code = (
        "import sys, raysegment.cli, raysegment.infer.pipeline;"
        "print(sorted(m for m in ('torch', 'ray.data', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_blocks_travel_as_stored_and_are_normalized_by_the_predictor(
    tmp_path, ome_tiff, make_model
) -> None:
    """The read stage ships a block in the source dtype (uint16: half the object-store
    bytes of float32); the predictor normalizes and pads it in one pass."""
    from raysegment.infer.stages import normalized

    image = random_image((40, 50))
    model_path, _ = make_model(out_ch=1, stride=32)  # sizes of 32s: the image padded to 64
    _, plan = driver_plan(
        {
            "input": str(ome_tiff(image, tile=None)),
            "model": str(model_path),
            "output": str(tmp_path / "out"),
            "tile": {"size": [64], "padding": "reflect"},
            "normalize": {"mode": "fixed", "mean": 500.0, "std": 250.0},
        }
    )
    read = read_block(plan)
    (item,) = plan.work()
    assert read["data"].dtype == np.uint16 and read["data"].shape == (1, 1, 40, 50)
    got = normalized(read["data"][0], plan, plan.block_of(item))
    want = np.pad((image.astype(np.float32) - 500.0) / 250.0, ((0, 24), (0, 14)), "reflect")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0], want, rtol=1e-6)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
            ],
        ),
    ],
)
def test_a_gpu_predictor_makes_the_same_input_on_its_device(device) -> None:
    """A predictor fed by read tasks moves the block as read and normalizes (and clips)
    and pads it on its device: the same float32 values as ``normalized`` for every pixel
    type, with and without normalization, clipping and padding (16-bit pixels above 32767
    included), the block from Ray's object store (read-only) left as it was."""
    from types import SimpleNamespace

    from raysegment.infer.predictor import device_input
    from raysegment.infer.stages import normalized

    rng = np.random.default_rng(0)
    planes = [
        ("constant", ((0, 0), (0, 0))),
        ("constant", ((0, 11), (0, 30))),
        ("reflect", ((0, 11), (0, 30))),
        ("edge", ((0, 5), (0, 0))),
    ]
    volumes = [("constant", ((0, 0),) * 3), ("constant", ((0, 3), (0, 0), (0, 4)))]
    for shape, pads in (((2, 21, 34), planes), ((2, 5, 9, 12), volumes)):
        full = rng.integers(0, 65536, shape).astype(np.float64)
        for dtype, pixels in [
            ("uint8", full // 256),
            ("int8", full // 256 - 128),
            ("uint16", full),
            ("int16", full - 32768),
            ("float16", full / 64),
            ("float32", full * 1.37),
            ("int32", full * 3000),  # through ``normalized`` on the host
            ("float64", full / 7),
        ]:
            data = pixels.astype(dtype)
            data.flags.writeable = False
            for norm, clip, (padding, pad) in itertools.product(
                (None, ((100.0, -3.5), (250.0, 0.3))),
                (None, ((-1.0, 200.0), (-1.0, 200.0)), ((-np.inf, np.inf), (-0.5, 90.0))),
                pads,
            ):
                plan = SimpleNamespace(
                    norm=norm, clip=clip, spatial_dims=len(shape) - 1, padding=padding
                )
                block = SimpleNamespace(pad=pad)
                want = normalized(data, plan, block)  # type: ignore[arg-type]
                got = device_input(data, plan, block, torch.device(device))  # type: ignore[arg-type]
                assert got.device.type == device and got.dtype == torch.float32
                for c, (low, high) in enumerate(clip or ()):  # beyond, made the bounds
                    assert want[c].min() >= low and want[c].max() <= high
                if clip:
                    bounded = [np.isin(want[c], b).any() for c, b in enumerate(clip)]
                    assert any(bounded), (dtype, norm, pad)
                case = (shape, dtype, norm, clip, padding, pad)
                if device == "cpu":
                    np.testing.assert_array_equal(got.numpy(), want, err_msg=str(case))
                else:  # one rounding of a division at most
                    np.testing.assert_allclose(
                        got.cpu().numpy(), want, rtol=1e-6, err_msg=str(case)
                    )
            assert np.array_equal(data, pixels.astype(dtype))


def test_fixed_normalization_per_channel(tmp_path, make_model) -> None:
    """An RGB model trained on ImageNet statistics: one mean and std per input channel."""
    from raysegment.errors import ConfigError
    from raysegment.infer.stages import normalized

    rgb = random_image((40, 50, 3), dtype="uint8")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    model_path, _ = make_model(in_ch=3, out_ch=1)
    settings = {
        "input": str(tmp_path / "rgb.tif"),
        "model": str(model_path),
        "output": str(tmp_path / "out"),
        "tile": {"size": [32]},
        "normalize": {"mode": "fixed", "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]},
    }
    _, plan = driver_plan(settings)
    (item,) = plan.work()
    got = normalized(read_block(plan)["data"][0], plan, plan.block_of(item))
    for c, (mean, std) in enumerate(((123.7, 58.4), (116.3, 57.1), (103.5, 57.4))):
        want = (rgb[..., c].astype(np.float32) - np.float32(mean)) / np.float32(std)
        np.testing.assert_allclose(got[c, :40, :50], want, rtol=1e-6)
    # One value still applies to every channel; a count that fits no channel is refused.
    _, plan = driver_plan(settings | {"normalize": {"mode": "fixed", "mean": 100.0, "std": 2}})
    assert plan.norm == ((100.0,) * 3, (2.0,) * 3)
    with pytest.raises(ConfigError, match=r"normalize.mean=\[1.0, 2.0\]: .*rgb.tif feeds"):
        driver_plan(settings | {"normalize": {"mode": "fixed", "mean": [1, 2]}})


def test_blocks_are_read_ahead_only_as_far_as_the_predictors_need(
    tmp_path, make_model, ome_tiff, monkeypatch
) -> None:
    """While a run's blocks stream, Ray Data's bound on a stage's queued blocks (twice what
    the next stage has in flight) holds from the first block, not once half of an object
    store sized by the machine's RAM is used; the process's other datasets get Ray's
    default back."""
    from ray.data._internal.execution.backpressure_policy import (
        DownstreamCapacityBackpressurePolicy as policy,
    )

    from raysegment.infer import pipeline

    default = policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD
    assert default > 0
    during: list[float] = []
    complete = pipeline._complete

    def recording(plan, cfg, *rest) -> None:  # called as each image's last block arrives
        during.append(policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD)
        complete(plan, cfg, *rest)

    monkeypatch.setattr(pipeline, "_complete", recording)
    model, _ = make_model()
    infer(
        input=str(ome_tiff(random_image((256, 256)))),
        model=str(model),
        output=str(tmp_path),
        progress=False,
        chunks=[64],
        block=[64],
        tile={"size": [64]},
    )
    assert during == [0.0]
    assert policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD == default


@pytest.mark.usefixtures("ray_session")
def test_predictors_keep_freed_heap_for_the_next_block(tmp_path, make_model, ome_tiff) -> None:
    """A predictor's malloc keeps freed heap for speed (the model processes' settings): what
    a block freed serves the next block (handed back, each block would fault its pages in
    anew), and block after block its memory stays within ``HEAP_SLACK`` of that. In a
    process with those settings, as Ray starts a predictor's."""
    import ray

    from raysegment.runtime import torch_worker_runtime_env

    model_path, _ = make_model()
    model, plan = driver_plan(
        {
            "input": str(ome_tiff(random_image((2048, 2048)))),
            "model": str(model_path),
            "output": str(tmp_path / "out"),
            "chunks": [1024],
            "block": [2048],
            "tile": {"size": [256]},
            "finalize": {"mode": "mask"},
        }
    )
    batch = read_block(plan)

    @ray.remote(runtime_env=torch_worker_runtime_env())
    def measure(model, plans, batch):
        import ctypes
        import ctypes.util

        import psutil

        from raysegment.infer.predictor import Predictor

        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
        predictor = Predictor(model, plans, False, 1, None, 1, ("mask", "sigmoid", 0.5, ()))
        trim(0)  # what came before goes back
        before = psutil.Process().memory_info().rss
        kept = []
        for _ in range(4):
            predictor(batch)  # its output dropped: what stays is what the block freed
            kept.append(psutil.Process().memory_info().rss - before)
        return kept

    kept = ray.get(measure.remote([ray.put(model)], [ray.put([plan])], batch))
    assert kept[0] > 48 << 20, f"a block's freed heap went back ({kept[0] >> 20} MiB kept)"
    bound = HEAP_SLACK * kept[0] + (8 << 20)
    assert max(kept[1:]) <= bound, f"grew block after block: {[k >> 20 for k in kept]} MiB"


def test_predictors_hand_back_free_heap_once_it_outgrows_the_first_blocks(monkeypatch) -> None:
    """The decisions of ``returns_excess_memory`` for a sequence of free heap sizes."""
    from raysegment.infer import stages

    def trims_for(frees: list[int | None]) -> list[int]:
        sizes, trimmed, blocks = iter(frees), [], []
        monkeypatch.setattr(stages, "free_heap", lambda: next(sizes))
        monkeypatch.setattr(stages, "_malloc_trim", lambda: lambda pad: trimmed.append(blocks[-1]))
        run = stages.returns_excess_memory(lambda i: blocks.append(i) or {})
        for i in range(len(frees)):
            run(i)
        return trimmed

    # 100 sets the bound (125); 126 passes it; an empty block's 10 sets a small bound, which
    # the next full block passes; then 13 sets it.
    assert trims_for([100, 110, 125, 126, 10, 100, 13, 12]) == [3, 5]
    assert trims_for([None, None]) == [0, 1]  # a C library that does not say: every block


@pytest.mark.usefixtures("ray_session")
def test_cpu_predictors_read_and_write_their_own_blocks(tmp_path, make_model, ome_tiff) -> None:
    """On CPU the predictor reads its block from the input, writes what it finalized and
    marks it done: neither the row it is handed nor the driver's carries pixels (no block
    crosses the object store, no read or write worker runs)."""
    import ray

    from raysegment.infer.predictor import Predictor
    from raysegment.infer.writer import create_output, done_blocks

    model_path, _ = make_model(out_ch=1)
    model, plan = driver_plan(
        {
            "input": str(ome_tiff(random_image((200, 150)))),
            "model": str(model_path),
            "output": str(tmp_path / "out"),
            "tile": {"size": [64]},
            "finalize": {"mode": "mask"},
        }
    )
    create_output(plan.output, plan.layout, {"fingerprint": plan.fingerprint})
    settings = (
        [ray.put(model)],
        [ray.put([plan])],
        False,
        1,
        None,
        1,
        ("mask", "sigmoid", 0.5, ()),
    )
    finalized = Predictor(*settings)(read_block(plan))["data"][0]
    row = Predictor(*settings, reads=True, writes=True)(work_row(plan))
    assert "data" not in row and not row["error"][0]
    assert int(row["pixels"][0]) == 200 * 150 and int(row["tiles"][0]) > 0
    (item,) = plan.work()
    assert done_blocks(plan.output) == {item.key}
    got = zarr.open_array(f"{plan.output}/0", mode="r")[:]
    assert finalized.shape == got.shape == (1, 200, 150) and 0 < got.mean() < 1
    np.testing.assert_array_equal(got, finalized)


def test_cpu_runs_have_no_read_or_write_tasks(tmp_path, make_model, ome_tiff, monkeypatch) -> None:
    """The read and write stages are a GPU run's: on CPU every block is read, predicted and
    written by its predictor (the tasks would take the same cores, with their processes,
    and the blocks read ahead would wait in the object store)."""
    from raysegment.infer import pipeline

    def unused(batch, **kwargs):
        raise AssertionError("a CPU run ran a read or write task")

    monkeypatch.setattr(pipeline, "read_stage", unused)
    monkeypatch.setattr(pipeline, "write_stage", unused)
    image = random_image((200, 150))
    model, module = make_model(out_ch=1)
    summary = infer(
        input=str(ome_tiff(image)),
        model=str(model),
        output=str(tmp_path),
        progress=False,
        device="cpu",
        chunks=[64],
        block=[128],
        tile={"size": [64], "blend": "crop"},
        finalize={"mode": "raw"},
    )
    assert summary.blocks == 4 and summary.device == "cpu"
    (out,) = summary.outputs
    got = zarr.open_array(f"{out}/0", mode="r")[0]
    want = whole_image_prediction(module, image)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_the_progress_bar_names_each_finishing_step(tmp_path, make_model, capfd) -> None:
    """Once an image's blocks are done the bar stands at its end while its pyramid and
    quick-look are made: it says which step runs."""
    path = tmp_path / "img.zarr"
    zarr.create_array(str(path), data=random_image((128, 128)).astype("float32"), chunks=(64, 64))
    model, _ = make_model(out_ch=1)
    infer(input=str(path), model=str(model), output=str(tmp_path / "out"), chunks=[64])
    shown = capfd.readouterr().err
    assert "raysegment infer" in shown
    assert "finishing img: pyramid levels" in shown and "finishing img: quick-look" in shown
