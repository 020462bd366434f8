"""Quick-look PNGs: a valid PNG, downsampled to at most 1024 px, grey input with the
segmentation coloured exactly where the output says so."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from raysegment.data.sources import open_source
from raysegment.infer import infer, pipeline
from raysegment.infer.quicklook import InputPreview, preview, quicklook, write_png
from tests.conftest import random_image, save_torchscript


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB PNG without filters (what write_png writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_png_round_trips(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_png(tmp_path / "a.png"), rgb)


def test_block_previews_assemble_the_strided_image() -> None:
    """Blocks whose edges fall between the stride's rows and columns, read with a halo,
    give every step-th pixel of the image exactly once."""
    image = np.random.default_rng(0).random((100, 77)).astype(np.float32)
    step, halo = 3, 5
    gathered = InputPreview(100, 77, step)
    for y0, y1 in [(0, 31), (31, 32), (32, 64), (64, 100)]:
        for x0, x1 in [(0, 40), (40, 77)]:
            oy, ox = max(y0 - halo, 0), max(x0 - halo, 0)
            region = image[None, oy : y1 + halo, ox : x1 + halo]
            gathered.add(*preview(region, (oy, ox), ((y0, y1), (x0, x1)), step))
    np.testing.assert_array_equal(gathered.pixels[0], image[::step, ::step])


def _quicklook_of_the_run(
    monkeypatch: pytest.MonkeyPatch,
    run: dict,
    name: str,
    axes: str,
    kind: str,
    channels: tuple[int, ...] = (0,),
) -> None:
    """``run`` (infer's arguments) reads no input pixels for its quick-look, and its PNG
    equals the one made from the input and output on disk."""
    reads: list[tuple] = []

    def counting(source, *args, **kwargs):
        read = type(source).read
        monkeypatch.setattr(type(source), "read", lambda s, *a: reads.append(a) or read(s, *a))
        try:
            return quicklook(source, *args, **kwargs)
        finally:
            monkeypatch.setattr(type(source), "read", read)

    monkeypatch.setattr(pipeline, "quicklook", counting)
    infer(**run, progress=False)
    out = Path(run["output"])
    assert reads == []
    axes_arg = {"axes": run["axes"]} if "axes" in run else {}
    source = open_source(run["input"], **axes_arg)
    array = out / f"{name}.ome.zarr" / "0"
    quicklook(source, channels, str(array), axes, kind, str(out / "from_disk.png"))
    assert (out / f"{name}.png").read_bytes() == (out / "from_disk.png").read_bytes()


@pytest.mark.usefixtures("ray_session")
def test_a_run_takes_its_quicklook_from_the_blocks_it_read(
    tmp_path: Path, make_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grey image comes from the blocks as they were read, not from a second read of
    the whole input at the end (10-11 s of a 32768^2 slide's run here). Blocks of 512 and
    a stride of 3: block edges fall between the stride's rows."""
    image = random_image((2100, 1500))
    image[300:900, 200:700] += 3000
    tifffile.imwrite(tmp_path / "slide.tif", image)
    model, _ = make_model(out_ch=1)
    run = {
        "input": str(tmp_path / "slide.tif"),
        "model": str(model),
        "output": str(tmp_path / "out"),
        "chunks": [256],
        "block": [512],
        "finalize": {"mode": "mask"},
    }
    _quicklook_of_the_run(monkeypatch, run, "slide", "cyx", "mask")


@pytest.mark.usefixtures("ray_session")
def test_an_rgb_slide_shows_in_its_colours(
    tmp_path: Path, ome_tiff, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An 8-bit input of three channels that the model takes (an RGB slide) shows as it
    is, in colour, where the segmentation leaves it; from its blocks as read, as grey ones."""
    rgb = np.random.default_rng(0).integers(0, 256, (3, 1500, 1100), dtype=np.uint8)
    rgb[0, 200:600, 300:700] = 255  # a red object the model responds to
    path = ome_tiff(rgb, axes="CYX", name="he.ome.tif")
    module = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        module.weight[:] = torch.tensor([1.0, -1.0, -1.0]).reshape(1, 3, 1, 1)
        module.bias.fill_(-100.0)
    model = save_torchscript(module, tmp_path / "red.pth", 2, 3)
    run = {
        "input": str(path),
        "model": str(model),
        "output": str(tmp_path / "out"),
        "chunks": [256],
        "block": [512],
        "tile": {"size": [128]},
        "finalize": {"mode": "mask"},
    }
    _quicklook_of_the_run(monkeypatch, run, "he", "cyx", "mask", channels=(0, 1, 2))
    png = read_png(tmp_path / "out" / "he.png")
    mask = zarr.open_array(str(tmp_path / "out" / "he.ome.zarr" / "0"), mode="r")[0, ::2, ::2]
    assert png.shape == (750, 550, 3) and 0 < mask.mean() < 0.5
    shown = np.moveaxis(rgb[:, ::2, ::2], 0, -1)
    np.testing.assert_array_equal(png[mask == 0], shown[mask == 0])


def _coloured(rgb: np.ndarray) -> np.ndarray:
    return ~((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]))


@pytest.mark.usefixtures("ray_session")
def test_quicklook_overlays_the_mask_downsampled(tmp_path: Path, make_model) -> None:
    image = random_image((2100, 1500))
    image[300:900, 200:700] += 3000  # a bright object the model responds to
    tifffile.imwrite(tmp_path / "slide.tif", image)
    model, _ = make_model(out_ch=1)
    infer(
        input=str(tmp_path / "slide.tif"),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        finalize={"mode": "mask"},
    )
    rgb = read_png(tmp_path / "out" / "slide.png")
    assert rgb.shape == (700, 500, 3)  # step 3: 2100 -> 700, 1500 -> 500
    mask = zarr.open_array(str(tmp_path / "out" / "slide.ome.zarr" / "0"), mode="r")[0, ::3, ::3]
    assert 0 < mask.mean() < 1
    np.testing.assert_array_equal(_coloured(rgb), mask > 0)


@pytest.mark.usefixtures("ray_session")
def test_quicklook_of_a_volume_shows_its_middle_plane(tmp_path: Path, make_model) -> None:
    volume = random_image((9, 40, 48)).astype("float32") / 1000 - 0.5
    zarr.create_array(str(tmp_path / "vol.zarr"), data=volume)
    model, _ = make_model(dims=3, out_ch=1)
    infer(
        input=str(tmp_path / "vol.zarr"),
        model=str(model),
        output=str(tmp_path / "out"),
        axes="zyx",
        progress=False,
        tile={"size": [16]},
        finalize={"mode": "probabilities"},
    )
    rgb = read_png(tmp_path / "out" / "vol.png")
    assert rgb.shape == (40, 48, 3)
    probs = zarr.open_array(str(tmp_path / "out" / "vol.ome.zarr" / "0"), mode="r")[0, 4]
    assert 0 < (probs > 0.5).mean() < 1
    np.testing.assert_array_equal(_coloured(rgb), probs > 0.5)


@pytest.mark.usefixtures("ray_session")
def test_a_volume_run_takes_its_middle_plane_from_the_block_that_owns_it(
    tmp_path: Path, make_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = random_image((9, 40, 48)).astype("float32") / 1000 - 0.5
    zarr.create_array(str(tmp_path / "vol.zarr"), data=volume)
    model, _ = make_model(dims=3, out_ch=1)
    run = {
        "input": str(tmp_path / "vol.zarr"),
        "model": str(model),
        "output": str(tmp_path / "out"),
        "axes": "zyx",
        "tile": {"size": [8]},
        "chunks": [2, 16, 16],
        "block": [2, 16, 16],
        "finalize": {"mode": "probabilities"},
    }
    _quicklook_of_the_run(monkeypatch, run, "vol", "czyx", "probabilities")
