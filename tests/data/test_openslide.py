"""Slides read through OpenSlide: 3DHISTECH MIRAX (``.mrxs``), written here as OpenSlide
reads them (camera images in a data file, an index of them per zoom level)."""

from __future__ import annotations

import pickle
import struct
import sys
import uuid
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
import zarr

from raysegment.data import slides
from raysegment.data.inputs import resolve_inputs
from raysegment.data.sources import open_sources
from raysegment.errors import InputImageError
from tests.conftest import random_image

FIELD = 64
"""Side of a MIRAX camera image here (scanners' are ~1000-2000 pixels)."""


def write_mrxs(
    path: Path,
    levels: list[np.ndarray],
    mpp: float = 0.25,
    fill_bgr: int = 0xFFFFFF,
    skipped: frozenset[tuple[int, int]] = frozenset(),
    field: int = FIELD,
    codec: str = "PNG",
) -> None:
    """A MIRAX slide: ``path`` (.mrxs) and its folder (Slidedat.ini, Index.dat,
    Data0000.dat). ``levels``: (H, W, 3) uint8 images, each half the previous, level 0's
    sides multiples of ``field``; each stored in ``field`` x ``field`` camera images
    (``codec`` PNG: exact; JPEG as scanners store them), level k's each covering
    2^k x 2^k of level 0's, as the scanner concatenates them. ``skipped``: level 0's
    (row, column) camera fields the scanner did not image."""
    folder = path.with_suffix("")
    folder.mkdir(parents=True)
    path.write_bytes(b"")
    rows, columns = (side // field for side in levels[0].shape[:2])
    slide_id = uuid.uuid4().hex
    data = bytearray()
    pages = []  # per level: (image index, offset, length, data file) of each image
    fill = [(fill_bgr >> shift) & 255 for shift in (0, 8, 16)]  # R, G, B
    for k, level in enumerate(levels):
        f, page = 2**k, []
        for y in range(0, rows, f):
            for x in range(0, columns, f):
                fields = [(y + i, x + j) for i in range(f) for j in range(f)]
                if all(at in skipped for at in fields):
                    continue  # nothing imaged under it
                image = np.full((field, field, 3), fill, np.uint8)
                part = level[y // f * field :][:field, x // f * field :][:, :field]
                image[: part.shape[0], : part.shape[1]] = part
                side = field // f  # a level 0 field's part of this image
                for i, j in ((i, j) for i, j in fields if (i, j) in skipped):
                    image[(i - y) * side :][:side, (j - x) * side :][:, :side] = fill
                encoded = (
                    imagecodecs.png_encode(image)
                    if codec == "PNG"
                    else imagecodecs.jpeg8_encode(image, level=90)
                )
                page.append((y * columns + x, len(data), len(encoded), 0))
                data += encoded
        pages.append(page)
    (folder / "Data0000.dat").write_bytes(bytes(data))
    # Index.dat: version, slide id, then pointers: hierarchical root (a table of one list
    # per zoom level), non-hierarchical root; a list: 0, its first page; a page: its
    # record count, the next page (0: none), the records.
    index = bytearray(b"01.02" + slide_id.encode())
    root = len(index)
    index += struct.pack("<ii", root + 12, root + 8) + struct.pack("<i", 0)
    table = len(index)
    index += bytes(4 * len(levels))
    for k, page in enumerate(pages):
        struct.pack_into("<i", index, table + 4 * k, len(index))
        index += struct.pack("<ii", 0, len(index) + 8) + struct.pack("<ii", len(page), 0)
        for record in page:
            index += struct.pack("<iiii", *record)
    (folder / "Index.dat").write_bytes(bytes(index))
    ini = [
        "[GENERAL]",
        "SLIDE_VERSION=1.0",
        f"SLIDE_ID={slide_id}",
        f"IMAGENUMBER_X={columns}",
        f"IMAGENUMBER_Y={rows}",
        "OBJECTIVE_MAGNIFICATION=20",
        "CameraImageDivisionsPerSide=1",
        "[HIERARCHICAL]",
        "HIER_COUNT=1",
        "NONHIER_COUNT=0",
        "INDEXFILE=Index.dat",
        "HIER_0_NAME=Slide zoom level",
        f"HIER_0_COUNT={len(levels)}",
        *(f"HIER_0_VAL_{k}_SECTION=LAYER_0_LEVEL_{k}_SECTION" for k in range(len(levels))),
        "[DATAFILE]",
        "FILE_COUNT=1",
        "FILE_0=Data0000.dat",
    ]
    for k in range(len(levels)):
        ini += [
            f"[LAYER_0_LEVEL_{k}_SECTION]",
            f"IMAGE_CONCAT_FACTOR={int(k > 0)}",
            "OVERLAP_X=0",
            "OVERLAP_Y=0",
            f"MICROMETER_PER_PIXEL_X={mpp * 2**k}",
            f"MICROMETER_PER_PIXEL_Y={mpp * 2**k}",
            f"IMAGE_FILL_COLOR_BGR={fill_bgr}",
            f"DIGITIZER_WIDTH={field}",
            f"DIGITIZER_HEIGHT={field}",
            f"IMAGE_FORMAT={codec}",
        ]
    (folder / "Slidedat.ini").write_text("\n".join(ini) + "\n")


def _halved(image: np.ndarray) -> np.ndarray:
    h, w = (side // 2 for side in image.shape[:2])
    return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean((1, 3)).astype(np.uint8)


def _slide(
    tmp_path: Path,
    fill_bgr: int = 0x102030,
    skipped: frozenset[tuple[int, int]] = frozenset({(2, 3)}),
    columns: int = 4,
) -> tuple[Path, list[np.ndarray]]:
    """A slide of 3 x ``columns`` camera fields (192 x 64 * columns pixels), two levels,
    the ``skipped`` fields not imaged; its path, and what its levels read as: the
    skipped fields in the background colour (the fill colour, R G B)."""
    full = random_image((3 * FIELD, columns * FIELD, 3), dtype="uint8", seed=3)
    full[40:120, 30:200] //= 3  # darker tissue
    path = tmp_path / "slides" / "case.mrxs"
    write_mrxs(path, [full, _halved(full)], fill_bgr=fill_bgr, skipped=skipped)
    fill = [(fill_bgr >> shift) & 255 for shift in (0, 8, 16)]
    expected = [full.copy(), _halved(full)]
    for i, j in skipped:
        for k, level in enumerate(expected):
            side = FIELD >> k
            level[i * side : (i + 1) * side, j * side : (j + 1) * side] = fill
    return path, expected


def test_a_mirax_slide_reads_its_levels_pixel_size_and_background(tmp_path, monkeypatch) -> None:
    path, (full, half) = _slide(tmp_path)
    # The folder beside the .mrxs holds its data, no images of its own.
    assert resolve_inputs(str(path.parent)) == [str(path)]
    (source,) = open_sources(path)
    assert (source.kind, source.name, source.levels) == ("openslide", "case", 2)
    assert source.info.shape == (1, 3, 1, 192, 256) and source.info.dtype == np.uint8
    assert source.info.scale == pytest.approx({"y": 0.25, "x": 0.25})
    assert source.info.units == {"y": "micrometer", "x": "micrometer"}
    region = ((0, 1), (37, 170), (5, 250))  # across camera fields and the skipped one
    got = source.read(0, (0, 1, 2), region)
    np.testing.assert_array_equal(got[:, 0], full[37:170, 5:250].transpose(2, 0, 1))
    np.testing.assert_array_equal(source.read(0, (2, 0), region)[:, 0, -1, -1], [0x10, 0x30])
    copy = pickle.loads(pickle.dumps(source))  # as it travels to a worker: no handle
    np.testing.assert_array_equal(copy.read(0, (1,), region), got[1:2])

    (level,) = open_sources(path, level=1)
    assert level.info.shape == (1, 3, 1, 96, 128) and level.level_scale() == (2.0, 2.0)
    assert level.info.scale == pytest.approx({"y": 0.5, "x": 0.5})
    got = level.read(0, (0, 1, 2), ((0, 1), (15, 95), (30, 101)))
    np.testing.assert_array_equal(got[:, 0], half[15:95, 30:101].transpose(2, 0, 1))
    monkeypatch.setattr(slides, "BAND", 1000)  # a block composed in bands of 14 rows
    np.testing.assert_array_equal(level.read(0, (0, 1, 2), ((0, 1), (15, 95), (30, 101))), got)
    with pytest.raises(InputImageError, match="has 2 resolution level"):
        open_sources(path, level=2)


def test_regions_outside_the_scanned_area_are_known_without_reading(tmp_path) -> None:
    skipped = frozenset((i, j) for i in range(3) for j in (3, 4)) | {(2, 2)}
    path, levels = _slide(tmp_path, 0xFFFFFF, skipped, columns=5)
    for level, (source,) in enumerate(open_sources(path, level=k) for k in (0, 1)):
        edge = 192 >> level  # the scanned area's right edge at this level
        rows = (0, 192 >> level)
        unstored = source.unstored()
        assert unstored(0, (0, 1, 2), ((0, 1), rows, (edge, 320 >> level)))
        assert not unstored(0, (0,), ((0, 1), rows, (edge - 1, 320 >> level)))
        # Field (2, 2) is not imaged, but inside the scanned area's bounding box.
        assert not unstored(0, (0,), ((0, 1), (128 >> level, 192 >> level), (128 >> level, edge)))
        region = ((0, 1), rows, (edge - 7, 320 >> level))
        got = source.read(0, (0, 1, 2), region)[:, 0].transpose(1, 2, 0)
        np.testing.assert_array_equal(got, levels[level][slice(*rows), edge - 7 :])
        assert (got[:, 7:] == 255).all() and (got[:, :7] != 255).any()
    (coloured,) = open_sources(_slide(tmp_path / "b", 0x102030, skipped, columns=5)[0])
    assert coloured.unstored() is None  # not one constant in every channel


def test_transparent_and_partly_covered_pixels_take_the_background_colour() -> None:
    """OpenSlide's RGBA (not premultiplied) over the background: alpha 0 is the colour,
    255 the pixel, between them the mix (a field's edge between pixels)."""
    rgba = random_image((30, 40, 4), dtype="uint8", seed=5)
    rgba[:10, :, :] = 0  # not imaged
    rgba[10:20, :, 3] = 255
    alpha = rgba[..., 3:] / 255
    want = np.rint(rgba[..., :3] * alpha + np.array([16, 32, 48]) * (1 - alpha))
    out = np.empty((2, 30, 40), np.uint8)
    slides.composite(rgba, (2, 0), (16, 32, 48), out)
    np.testing.assert_array_equal(out, want[..., [2, 0]].transpose(2, 0, 1))
    assert (out[:, :10] == [[[48]], [[16]]]).all()
    slides.composite(rgba[:10], (1,), (16, 32, 48), out[:1, :10])
    assert (out[0, :10] == 32).all()


def test_mirax_errors_name_the_slide_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    path, _ = _slide(tmp_path)
    (source,) = open_sources(path)
    data = path.with_suffix("") / "Data0000.dat"
    damaged = bytearray(data.read_bytes())
    damaged[60:400] = bytes(340)  # level 0's first camera image, after its PNG header
    data.write_bytes(bytes(damaged))
    with pytest.raises(InputImageError, match=r"case.mrxs: cannot read region .* corrupt"):
        source.read(0, (0,), ((0, 1), (0, 64), (0, 64)))
    (path.with_suffix("") / "Slidedat.ini").rename(tmp_path / "elsewhere.ini")
    with pytest.raises(InputImageError, match=r"case.mrxs: its data folder .*/case .* copy both"):
        open_sources(path)
    (tmp_path / "elsewhere.ini").write_text("[GENERAL]\nSLIDE_VERSION=1.0\n")
    (tmp_path / "elsewhere.ini").rename(path.with_suffix("") / "Slidedat.ini")
    with pytest.raises(InputImageError, match=r"case.mrxs: not a readable whole-slide image"):
        open_sources(path)
    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(InputImageError, match=r"needs openslide: pip install 'raysegment\["):
        open_sources(path)


@pytest.mark.usefixtures("ray_session")
def test_infer_segments_a_mirax_slide_as_the_model_sees_its_pixels(tmp_path, make_model) -> None:
    from raysegment.config import InferConfig, as_config
    from raysegment.infer import infer
    from raysegment.infer.model import read_models
    from raysegment.infer.pipeline import _prepare, _unstored_blocks

    # Columns 3 and 4 not imaged (white): the blocks of column 4, halo and all, lie
    # outside the scanned area; column 3's reach into it.
    skipped = frozenset((i, j) for i in range(3) for j in (3, 4))
    path, (full, _) = _slide(tmp_path, 0xFFFFFF, skipped, columns=5)
    model, module = make_model(in_ch=3, out_ch=2)
    cfg = dict(
        model=str(model),
        chunks=[64],
        block=[64],
        tile={"size": [64], "overlap": 0.5, "blend": "crop"},
        finalize={"mode": "raw"},
        progress=False,
        quicklook=False,
    )
    summary = infer(input=str(path), output=str(tmp_path / "out"), **cfg)
    assert summary.empty_blocks == 3 and summary.blocks == 15
    out = tmp_path / "out" / "case.ome.zarr"
    ms = dict(zarr.open_group(str(out), mode="r").attrs)["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.25, 0.25]
    with torch.inference_mode():
        pixels = torch.from_numpy(full.transpose(2, 0, 1).astype(np.float32))[None]
        want = module(pixels)[0].numpy()
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    np.testing.assert_allclose(got[..., :256], want[..., :256], rtol=1e-5, atol=1e-4)
    assert not got[..., 256:].any()  # empty blocks: the fill value, as a TIFF's background
    # The driver finds them from the slide's bounds, before any read.
    run = as_config(InferConfig, dict(cfg, input=str(path), output=str(tmp_path / "c")), {})
    _, plans, _, unstored = _prepare(run, [str(path)], str(tmp_path / "c"), read_models(run.model))
    found = _unstored_blocks(plans, list(plans[0].work()), unstored)
    assert sorted(w.index for w in found) == [(0, 4), (1, 4), (2, 4)]
