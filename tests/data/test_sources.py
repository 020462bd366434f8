"""Image sources: every format read region-wise into the (t, c, z, y, x) view."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from raysegment.data import sources
from raysegment.data.inputs import resolve_inputs
from raysegment.data.sources import _TiffPlanes, image_stem, open_source, open_sources
from raysegment.errors import InputImageError
from tests.conftest import random_image, write_czi, write_wells


def _labelled(t: int, c: int, z: int, y: int, x: int) -> np.ndarray:
    """Every (t, c, z) plane holds a distinct value, so any axis mix-up shows."""
    data = np.zeros((t, c, z, y, x), np.uint16)
    for ti, ci, zi in np.ndindex(t, c, z):
        data[ti, ci, zi] = 100 * ti + 10 * ci + zi
    data[..., :, :] += np.arange(x, dtype=np.uint16) % 7
    return data


@pytest.mark.parametrize("tile", [(64, 64), None], ids=["tiled", "striped"])
def test_ome_tiff_regions(tmp_path: Path, tile) -> None:
    image = random_image((300, 250))
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(
        path,
        image,
        ome=True,
        tile=tile,
        metadata={
            "axes": "YX",
            "PhysicalSizeX": 0.65,
            "PhysicalSizeY": 0.65,
            "PhysicalSizeXUnit": "µm",
        },
    )
    src = open_source(path)
    assert src.kind == "ome-tiff"
    assert src.info.shape == (1, 1, 1, 300, 250)
    assert src.info.scale["x"] == pytest.approx(0.65)
    assert src.info.units["x"] == "micrometer"
    got = src.read(0, (0,), ((0, 1), (17, 230), (5, 201)))
    np.testing.assert_array_equal(got[0, 0], image[17:230, 5:201])


def test_ome_tiff_tczyx_axis_order(tmp_path: Path) -> None:
    data = _labelled(2, 3, 4, 30, 40)
    path = tmp_path / "five.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCZYX", "PhysicalSizeZ": 2.0})
    src = open_source(path)
    assert src.info.shape == (2, 3, 4, 30, 40)
    assert src.info.scale["z"] == 2.0
    got = src.read(1, (2, 0), ((1, 3), (5, 20), (3, 33)))
    np.testing.assert_array_equal(got, data[1][[2, 0], 1:3, 5:20, 3:33])


_LAYOUTS = {
    # name: (tifffile.imwrite arguments, whether pages are read segment by segment)
    "tiles-zlib": ({"tile": (48, 32), "compression": "zlib"}, True),
    "tiles-lzw-predictor": ({"tile": (32, 64), "compression": "lzw", "predictor": True}, True),
    "tiles-jpeg": ({"tile": (32, 32), "compression": "jpeg"}, True),
    "strips-uneven": ({"rowsperstrip": 7}, True),
    "one-strip": ({}, True),
    "one-strip-big-endian": ({"byteorder": ">"}, True),
    "strips-zlib": ({"rowsperstrip": 9, "compression": "zlib"}, True),
    "rgb-samples": ({"photometric": "rgb", "tile": (32, 32)}, True),
    "rgb-jpeg": ({"photometric": "rgb", "tile": (32, 32), "compression": "jpeg"}, True),
    "rgb-strips-uneven": ({"photometric": "rgb", "rowsperstrip": 7}, True),
    "rgb-strips-zlib": ({"photometric": "rgb", "rowsperstrip": 9, "compression": "zlib"}, True),
}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_ome_tiff_regions_read_segment_by_segment_equal_the_whole_image(
    tmp_path: Path, layout: str
) -> None:
    """Regions that start and end inside tiles or strips, at the image's ragged edges and
    across planes of another dimension order, equal tifffile's whole-image read."""
    kwargs, planes = _LAYOUTS[layout]
    rng = np.random.default_rng(3)
    if layout.startswith("rgb"):
        data, axes = rng.integers(0, 255, (1, 2, 1, 150, 130, 3), np.uint8), "TZCYXS"
    else:
        dtype = np.uint8 if layout == "tiles-jpeg" else np.uint16
        data = rng.integers(0, 250, (2, 2, 3, 150, 130)).astype(dtype)  # T, Z, C, Y, X
        axes = "TZCYX"
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": axes}, **kwargs)
    truth = tifffile.imread(path)  # what tifffile decodes (JPEG is lossy)
    src = open_source(path)
    assert src.kind == "ome-tiff"
    assert isinstance(src.handle, _TiffPlanes) is planes
    regions = [
        ((0, 1), (0, 150), (0, 130)),
        ((1, 2), (5, 149), (31, 97)),
        ((0, 2), (100, 150), (129, 130)),
    ]
    for t in (0, 1) if not layout.startswith("rgb") else (0,):
        for region in regions:
            (z0, z1), (y0, y1), (x0, x1) = region
            if layout.startswith("rgb"):
                got = src.read(t, (2, 0), ((z0, z0 + 1), (y0, y1), (x0, x1)))
                want = np.moveaxis(truth[z0 : z0 + 1, y0:y1, x0:x1][..., [2, 0]], -1, 0)
            else:
                got = src.read(t, (2, 0), region)
                want = truth[t, z0:z1][:, [2, 0], y0:y1, x0:x1].swapaxes(0, 1)
            np.testing.assert_array_equal(got, want)


def test_uncompressed_strips_read_only_the_rows_asked(tmp_path: Path, monkeypatch) -> None:
    """ImageJ/Fiji write a plane as one uncompressed strip: a region reads its rows, not
    the plane; a strip the writer left out (byte count 0) reads as the fill value 0."""
    image = np.random.default_rng(4).integers(0, 4000, (3, 120, 100), np.uint16)
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, image, imagej=True, metadata={"axes": "ZYX"})
    asked: list[int] = []
    real = tifffile.FileHandle.read_segments

    def counting(self, offsets, bytecounts, *args, **kwargs):
        asked.extend(bytecounts)
        return real(self, offsets, bytecounts, *args, **kwargs)

    monkeypatch.setattr(tifffile.FileHandle, "read_segments", counting)
    src = open_source(path)
    got = src.read(0, (0,), ((1, 3), (30, 40), (20, 70)))
    np.testing.assert_array_equal(got[0], image[1:3, 30:40, 20:70])
    assert asked == [10 * 100 * 2] * 2  # ten rows of each of two planes
    monkeypatch.undo()

    striped = tmp_path / "sparse.tif"
    tifffile.imwrite(striped, image[0], rowsperstrip=16)
    with tifffile.TiffFile(striped, mode="r+b") as tif:
        counts = list(tif.pages[0].databytecounts)
        counts[2] = 0  # rows 32-47 never written
        tif.pages[0].tags["StripByteCounts"].overwrite(counts)
    got = open_source(striped).read(0, (0,), ((0, 1), (20, 60), (0, 100)))[0, 0]
    want = image[0, 20:60].copy()
    want[32 - 20 : 48 - 20] = 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "zstd"])
def test_corrupt_tile_met_in_a_read_is_one_input_error(tmp_path: Path, compression) -> None:
    """A tile whose bytes are garbage (bit rot, a bad copy) fails the region that needs
    it with one error naming the file, not a codec's traceback; other regions still read."""
    image = np.random.default_rng(2).integers(0, 4000, (256, 256), np.uint16)
    path = tmp_path / "c.ome.tif"
    tifffile.imwrite(
        path, image, ome=True, tile=(64, 64), compression=compression, metadata={"axes": "YX"}
    )
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\x55" * count  # tile (1, 1): rows 64-127, cols 64-127
    path.write_bytes(bytes(raw))
    src = open_source(path)
    with pytest.raises(InputImageError, match="c.ome.tif: cannot read region .* corrupt"):
        src.read(0, (0,), ((0, 1), (100, 140), (0, 256)))
    got = src.read(0, (0,), ((0, 1), (0, 64), (0, 256)))[0, 0]
    np.testing.assert_array_equal(got, image[:64])


def test_threads_reading_one_source_get_their_own_regions(tmp_path: Path) -> None:
    """Threads of a process share a source's open file: each region read must be whole
    (a read is a seek then a read per tile)."""
    from concurrent.futures import ThreadPoolExecutor

    image = np.random.default_rng(5).integers(0, 60000, (512, 512), np.uint16)
    path = tmp_path / "t.ome.tif"
    tifffile.imwrite(path, image, ome=True, tile=(32, 32), metadata={"axes": "YX"})
    src = open_source(path)
    corners = [(y, x) for y in range(0, 448, 37) for x in range(0, 448, 53)]

    def read(corner: tuple[int, int]) -> bool:
        y, x = corner
        got = src.read(0, (0,), ((0, 1), (y, y + 64), (x, x + 64)))[0, 0]
        return bool(np.array_equal(got, image[y : y + 64, x : x + 64]))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read, corners * 4))


def test_ome_tiff_physical_sizes_units_and_channel_names(tmp_path: Path) -> None:
    path = tmp_path / "n.ome.tif"
    metadata = {
        "axes": "CZYX",
        "PhysicalSizeX": 250.0,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.25,
        "PhysicalSizeZ": 1.5,
        "Channel": {"Name": ["DAPI", "GFP"]},
    }
    tifffile.imwrite(path, np.zeros((2, 3, 20, 30), np.uint16), ome=True, metadata=metadata)
    info = open_source(path).info
    assert info.shape == (1, 2, 3, 20, 30)
    assert info.scale == {"x": 250.0, "y": 0.25, "z": 1.5}
    assert info.units == {"x": "nanometer", "y": "micrometer", "z": "micrometer"}
    assert info.channel_names == ("DAPI", "GFP")


def test_plain_tiff_single_page_stack_and_rgb(tmp_path: Path) -> None:
    image = random_image((50, 60))
    tifffile.imwrite(tmp_path / "p.tif", image)
    src = open_source(tmp_path / "p.tif")
    assert src.kind == "tiff" and src.info.shape == (1, 1, 1, 50, 60)
    np.testing.assert_array_equal(src.read(0, (0,), ((0, 1), (3, 40), (0, 60)))[0, 0], image[3:40])
    stack = random_image((6, 20, 30))
    tifffile.imwrite(tmp_path / "s.tif", stack)
    src = open_source(tmp_path / "s.tif")
    assert src.info.shape == (1, 1, 6, 20, 30)
    np.testing.assert_array_equal(src.read(0, (0,), ((2, 5), (0, 20), (0, 30)))[0], stack[2:5])
    rgb = random_image((20, 30, 3), dtype="uint8")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    src = open_source(tmp_path / "rgb.tif")
    assert src.info.shape == (1, 3, 1, 20, 30)
    np.testing.assert_array_equal(src.read(0, (2,), ((0, 1), (0, 20), (0, 30)))[0, 0], rgb[..., 2])


PYRAMIDS = [
    ("YXS", (300, 200, 3), {"photometric": "rgb", "compression": "jpeg"}),
    ("YX", (300, 200), {"compression": "zlib"}),
]
"""Pyramidal slides: RGB in JPEG tiles (brightfield), one channel in zlib tiles."""


def _pyramidal_ome_tiff(path: Path, image: np.ndarray, axes: str, **opts: object) -> None:
    """A pyramidal OME-TIFF as slide scanners and bfconvert write it: the full resolution
    with two halvings in its SubIFDs."""
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        meta = {"axes": axes, "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
        tif.write(image, subifds=2, tile=(64, 64), metadata=meta, **opts)
        for step in (2, 4):
            tif.write(image[::step, ::step], subfiletype=1, tile=(64, 64), **opts)


@pytest.mark.parametrize(("axes", "shape", "opts"), PYRAMIDS)
def test_pyramidal_ome_tiff_reads_its_full_resolution(
    tmp_path: Path, axes: str, shape: tuple[int, ...], opts: dict[str, object]
) -> None:
    """RGB brightfield slides come as pyramidal OME-TIFFs of JPEG tiles (read through
    tifffile's zarr view, which sees every level of such a file)."""
    path = tmp_path / "slide.ome.tif"
    _pyramidal_ome_tiff(path, random_image(shape, dtype="uint8"), axes, **opts)
    full = tifffile.imread(path, level=0)  # the decoded pixels, JPEG's losses included
    src = open_source(path)
    assert src.kind == "ome-tiff"
    channels = shape[2] if len(shape) == 3 else 1
    assert src.info.shape == (1, channels, 1, 300, 200)
    assert src.info.scale == {"x": 0.25, "y": 0.25}
    got = src.read(0, tuple(range(channels)), ((0, 1), (37, 290), (5, 133)))[:, 0]
    want = full[37:290, 5:133]
    np.testing.assert_array_equal(got, want.transpose(2, 0, 1) if channels > 1 else want[None])


@pytest.mark.parametrize(("axes", "shape", "opts"), PYRAMIDS)
def test_a_pyramidal_tiff_is_read_at_the_level_asked(
    tmp_path: Path, axes: str, shape: tuple[int, ...], opts: dict[str, object]
) -> None:
    """``input_level``: a reduced level of the pyramid, its pixel size the full
    resolution's times the ratio of the sizes; in a worker too."""
    path = tmp_path / "slide.ome.tif"
    _pyramidal_ome_tiff(path, random_image(shape, dtype="uint8"), axes, **opts)
    channels = shape[2] if len(shape) == 3 else 1
    for level, (y, x) in ((1, (150, 100)), (2, (75, 50))):
        (src,) = open_sources(path, level=level)
        assert src.info.shape == (1, channels, 1, y, x) and src.where == f"{path} (level {level})"
        assert src.info.scale == {"x": 0.25 * 2**level, "y": 0.25 * 2**level}
        assert src.level_scale() == (2**level, 2**level)  # its pixel in full-size pixels
        want = tifffile.imread(path, level=level)[11:y, 3:47]
        want = want.transpose(2, 0, 1) if channels > 1 else want[None]
        for reader in (src, pickle.loads(pickle.dumps(src))):
            got = reader.read(0, tuple(range(channels)), ((0, 1), (11, y), (3, 47)))[:, 0]
            np.testing.assert_array_equal(got, want)
    with pytest.raises(
        InputImageError, match=r"has 3 resolution level\(s\); give input_level= from 0"
    ):
        open_sources(path, level=3)


def test_the_level_nearest_a_models_pixel_is_picked(tmp_path: Path) -> None:
    """Of a pyramid of 0.25, 0.5 and 1 um pixels: the level nearest the pixel asked, in
    ratio, in any length unit (the finer of two as near); full resolution where the unit
    or a pixel size is unknown."""
    from raysegment.data.sources import nearest_level

    path = tmp_path / "slide.ome.tif"
    axes, shape, opts = PYRAMIDS[0]
    _pyramidal_ome_tiff(path, random_image(shape, dtype="uint8"), axes, **opts)
    (full,) = open_sources(path)
    for size, unit, level in [
        (0.5, "micrometer", 1),
        (0.9, "micrometer", 2),
        (0.0005, "millimeter", 1),
        (0.1, "micrometer", 0),
        (8.0, "micrometer", 2),
        (0.25 * 2**0.5, "micrometer", 0),  # as near 0.25 as 0.5
        (0.5, "furlong", 0),
    ]:
        picked = nearest_level(full, {"y": size, "x": size}, unit)
        assert picked.level == level, (size, unit)
    tifffile.imwrite(tmp_path / "plain.tif", random_image((64, 64), dtype="uint8"))
    (plain,) = open_sources(tmp_path / "plain.tif")  # no pixel size
    assert nearest_level(plain, {"x": 0.5}, "micrometer") is plain


def test_ome_zarr_is_read_at_the_level_asked(tmp_path: Path) -> None:
    image = random_image((64, 48))
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=3)
    _ngff_image(group, image, {})
    group.create_array("1", data=image[::2, ::2], chunks=(16, 16))
    ome = dict(group.attrs["ome"])
    scale = [{"type": "scale", "scale": [1.0, 1.0]}]
    ome["multiscales"][0]["datasets"].append({"path": "1", "coordinateTransformations": scale})
    group.attrs["ome"] = ome
    (src,) = open_sources(tmp_path / "img.ome.zarr", level=1)
    assert src.info.shape == (1, 1, 1, 32, 24) and src.info.scale == {"y": 1.0, "x": 1.0}
    np.testing.assert_array_equal(
        src.read(0, (0,), ((0, 1), (0, 32), (0, 24)))[0, 0], image[::2, ::2]
    )
    with pytest.raises(InputImageError, match="has 2 resolution level"):
        open_sources(tmp_path / "img.ome.zarr", level=2)
    zarr.create_array(str(tmp_path / "plain.zarr"), data=image)
    with pytest.raises(InputImageError, match="has 1 resolution level"):
        open_sources(tmp_path / "plain.zarr", level=1)


def test_ome_tiff_of_several_images_is_one_source_per_series(tmp_path: Path) -> None:
    path = tmp_path / "plate.ome.tif"
    wells = write_wells(path)
    sources = open_sources(path)
    assert [s.name for s in sources] == ["plate_s0", "plate_s1"]
    assert [s.series for s in sources] == [0, 1]
    assert sources[1].where == f"{path} (series 1)"
    for i, (src, well) in enumerate(zip(sources, wells, strict=True)):
        assert src.kind == "ome-tiff"
        assert src.info.shape == (1, 2, 1, *well.shape[1:])
        assert src.info.scale == {"x": 0.5 * (i + 1), "y": 0.5 * (i + 1)}
        assert src.info.channel_names == (f"DAPI{i}", f"GFP{i}")
        got = src.read(0, (1,), ((0, 1), (3, 25), (7, 40)))[0, 0]
        np.testing.assert_array_equal(got, well[1, 3:25, 7:40])
    # Pickled to a worker, a source still reads its own series.
    again = pickle.loads(pickle.dumps(sources[1]))
    whole = again.read(0, (0,), ((0, 1), (0, 36), (0, 70)))
    np.testing.assert_array_equal(whole[0, 0], wells[1][0])
    with pytest.raises(InputImageError, match="holds 2 images"):
        open_source(path)  # one image per file: training pairs


def _bioformats2raw(path: Path, images: list[np.ndarray]) -> None:
    """The layout bioformats2raw writes (NGFF 0.4, zarr v2): an image group per series."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    for i, image in enumerate(images):
        group = root.create_group(str(i))
        group.create_array("0", data=image[None, None, None], chunks=(1, 1, 1, 16, 16))
        axes = [{"name": a, "type": "space" if a in "zyx" else a} for a in "tczyx"]
        axes[1]["type"], axes[0]["type"] = "channel", "time"
        scale = [1.0, 1.0, 1.0, 0.25 * (i + 1), 0.25 * (i + 1)]
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "axes": axes,
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
            }
        ]
    root.create_group("OME").attrs["series"] = [str(i) for i in range(len(images))]


def test_bioformats2raw_store_is_one_source_per_series(tmp_path: Path) -> None:
    images = [random_image((40, 30), seed=3), random_image((20, 50), seed=4)]
    _bioformats2raw(tmp_path / "slide.zarr", images)
    sources = open_sources(tmp_path / "slide.zarr")
    assert [s.name for s in sources] == ["slide_s0", "slide_s1"]
    for i, (src, image) in enumerate(zip(sources, images, strict=True)):
        assert src.path == str(tmp_path / "slide.zarr" / str(i))
        assert src.info.shape == (1, 1, 1, *image.shape)
        assert src.info.scale["y"] == 0.25 * (i + 1)
        full = ((0, 1), (0, image.shape[0]), (0, image.shape[1]))
        np.testing.assert_array_equal(src.read(0, (0,), full)[0, 0], image)
    # A store of one series (a slide converted alone) keeps the store's name.
    _bioformats2raw(tmp_path / "one.zarr", images[:1])
    (only,) = open_sources(tmp_path / "one.zarr")
    assert only.name == "one" and only.info.shape == (1, 1, 1, 40, 30)


def _ngff_image(group: zarr.Group, image: np.ndarray, ome: dict) -> None:
    """An NGFF 0.5 image (y, x) in ``group``."""
    group.create_array("0", data=image, chunks=(16, 16))
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    scale = [{"type": "scale", "scale": [0.5, 0.5]}]
    ms = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": scale}]}
    group.attrs["ome"] = ome | {"version": "0.5", "multiscales": [ms]}


def test_ome_zarr_plate_is_one_source_per_field_of_every_well(tmp_path: Path) -> None:
    """High-content screening: an NGFF plate's wells hold fields of view, each an image."""
    root = zarr.open_group(str(tmp_path / "screen.ome.zarr"), mode="w", zarr_format=3)
    fields = {"A/1": 2, "B/3": 1}
    images = {}
    for w, (well, count) in enumerate(fields.items()):
        group = root.create_group(well)
        group.attrs["ome"] = {
            "version": "0.5",
            "well": {"images": [{"path": str(f)} for f in range(count)]},
        }
        for f in range(count):
            key = f"{well.replace('/', '')}_f{f}"
            images[key] = random_image((20 + f, 30 + w), seed=f + w)
            _ngff_image(group.create_group(str(f)), images[key], {})
    root.attrs["ome"] = {
        "version": "0.5",
        "plate": {
            "columns": [{"name": "1"}, {"name": "3"}],
            "rows": [{"name": "A"}, {"name": "B"}],
            "wells": [
                {"path": "A/1", "rowIndex": 0, "columnIndex": 0},
                {"path": "B/3", "rowIndex": 1, "columnIndex": 1},
            ],
        },
    }
    sources = open_sources(tmp_path / "screen.ome.zarr")
    assert [s.name for s in sources] == [f"screen_{k}" for k in images]
    for src, image in zip(sources, images.values(), strict=True):
        assert src.info.shape == (1, 1, 1, *image.shape) and src.info.scale == {"x": 0.5, "y": 0.5}
        full = ((0, 1), (0, image.shape[0]), (0, image.shape[1]))
        np.testing.assert_array_equal(src.read(0, (0,), full)[0, 0], image)


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])
def test_imagej_tiff_calibration(tmp_path: Path, unit: str) -> None:
    """Fiji saves a hyperstack's calibration in its resolution tags and description."""
    path = tmp_path / "fiji.tif"
    data = random_image((2, 3, 2, 40, 50))  # t, z, c, y, x
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.325, 1 / 0.325),
        metadata={"axes": "TZCYX", "unit": unit, "spacing": 2.5, "finterval": 1.5},
    )
    src = open_source(path)
    assert src.kind == "tiff" and src.info.shape == (2, 2, 3, 40, 50)
    assert src.info.scale == pytest.approx({"x": 0.325, "y": 0.325, "z": 2.5, "t": 1.5})
    assert src.info.units == {
        "x": "micrometer",
        "y": "micrometer",
        "z": "micrometer",
        "t": "second",
    }
    got = src.read(1, (1,), ((0, 3), (0, 40), (0, 50)))[0]
    np.testing.assert_array_equal(got, data[1, :, 1])


def test_tiff_resolution_in_centimetres_is_a_pixel_size_and_in_inches_is_not(
    tmp_path: Path,
) -> None:
    image = random_image((30, 40))
    tifffile.imwrite(
        tmp_path / "cm.tif", image, resolution=(1e4 / 0.46, 1e4 / 0.23), resolutionunit="CENTIMETER"
    )
    src = open_source(tmp_path / "cm.tif")
    assert src.info.scale == pytest.approx({"x": 0.46, "y": 0.23})
    assert src.info.units == {"x": "micrometer", "y": "micrometer"}
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert open_source(tmp_path / "dpi.tif").info.scale == {}


def _aperio_svs(path: Path, image: np.ndarray, mpp: float) -> None:
    """The layout of an Aperio SVS: the tiled baseline (its description carries the pixel
    size), a stripped thumbnail, a tiled reduced level, then label and macro images."""
    description = (
        f"Aperio Image Library v12.0.15 \r\n{image.shape[1]}x{image.shape[0]} "
        f"[0,0 {image.shape[1]}x{image.shape[0]}] (64x64) JPEG/RGB Q=70|AppMag = 20|"
        f"MPP = {mpp}"
    )
    rgb = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), compression="jpeg", description=description, **rgb)
        tif.write(image[::8, ::8], description="Aperio Image Library thumbnail", **rgb)
        tif.write(image[::4, ::4], tile=(64, 64), compression="jpeg", **rgb)
        tif.write(image[:32, :48], subfiletype=1, description="Aperio label", **rgb)
        tif.write(image[:40, :40], subfiletype=9, description="Aperio macro", **rgb)


def test_aperio_svs_reads_its_scan_at_full_resolution_with_its_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "case 7.svs"
    _aperio_svs(path, random_image((300, 260, 3), dtype="uint8"), 0.502)
    assert [s.name for s in tifffile.TiffFile(path).series] == [
        "Baseline",
        "Thumbnail",
        "Label",
        "Macro",
    ]
    full = tifffile.imread(path)  # the baseline, decoded
    (src,) = open_sources(path)  # thumbnail, label and macro are not images to segment
    assert src.name == "case 7" and src.info.shape == (1, 3, 1, 300, 260)
    assert src.info.scale == {"x": 0.502, "y": 0.502}
    assert src.info.units == {"x": "micrometer", "y": "micrometer"}
    got = src.read(0, (0, 1, 2), ((0, 1), (70, 290), (3, 200)))[:, 0]
    np.testing.assert_array_equal(got, full.reshape(300, 260, 3)[70:290, 3:200].transpose(2, 0, 1))
    assert resolve_inputs(str(tmp_path)) == [str(path)]  # the default pattern takes slides
    (reduced,) = open_sources(path, level=1)  # the scan's reduced level (1/4), at 2.008 µm
    assert reduced.info.shape == (1, 3, 1, 75, 65)
    assert reduced.info.scale == {"x": 0.502 * 4, "y": 0.502 * 4}
    level = tifffile.imread(path, level=1).reshape(75, 65, 3)
    got = reduced.read(0, (0, 1, 2), ((0, 1), (0, 75), (0, 65)))[:, 0]
    np.testing.assert_array_equal(got, level.transpose(2, 0, 1))


def test_czi_mosaic_regions_pixel_size_and_channel_names(tmp_path: Path) -> None:
    """A ZEN mosaic: subblocks of 64 pixels from an origin other than (0, 0), two
    channels, three planes; a region across subblocks reads the image's pixels."""
    image = random_image((1, 2, 3, 150, 200))
    path = tmp_path / "stack.czi"
    write_czi(path, [(image, (1000, -300))], pixel_size=0.25, names=["DAPI", "GFP"])
    (src,) = open_sources(path)
    assert (src.kind, src.name, src.series) == ("czi", "stack", None)
    assert src.info.shape == (1, 2, 3, 150, 200) and src.info.dtype == np.uint16
    assert src.info.scale == pytest.approx({"x": 0.25, "y": 0.25, "z": 0.25})
    assert src.info.units == {"x": "micrometer", "y": "micrometer", "z": "micrometer"}
    assert src.info.channel_names == ("DAPI", "GFP")
    got = src.read(0, (1, 0), ((1, 3), (30, 140), (50, 199)))
    np.testing.assert_array_equal(got, image[0, [1, 0], 1:3, 30:140, 50:199])
    clone = pickle.loads(pickle.dumps(src))  # travels without its reader
    assert clone._handle is None
    np.testing.assert_array_equal(
        clone.read(0, (0,), ((0, 1), (0, 150), (0, 200))), image[0, :1, :1]
    )
    assert resolve_inputs(str(tmp_path)) == [str(path)]  # the default pattern takes CZI


def test_czi_scenes_are_one_source_each_and_colour_is_rgb(tmp_path: Path) -> None:
    """An Axioscan slide: brightfield (BGR in the file) in two scenes, the tissue sections,
    each its own image of its own size."""
    sections = [
        random_image((90, 130, 3), "uint8", seed=1),
        random_image((70, 60, 3), "uint8", seed=2),
    ]
    path = tmp_path / "slide 3.czi"
    write_czi(path, [(sections[0], (0, 0)), (sections[1], (5000, 800))], pixel_size=0.22)
    sources = open_sources(path)
    assert [(s.name, s.series) for s in sources] == [("slide 3_s0", 0), ("slide 3_s1", 1)]
    for src, section in zip(sources, sections, strict=True):
        y, x = section.shape[:2]
        assert src.info.shape == (1, 3, 1, y, x) and src.info.dtype == np.uint8
        assert src.info.channel_names is None  # the samples of one colour channel
        got = src.read(0, (0, 1, 2), ((0, 1), (0, y), (0, x)))[:, 0]
        np.testing.assert_array_equal(got, section.transpose(2, 0, 1))
    blue = sources[1].read(0, (2,), ((0, 1), (10, 70), (3, 60)))
    np.testing.assert_array_equal(blue[0, 0], sections[1][10:70, 3:60, 2])


def test_czi_is_read_at_the_level_asked(tmp_path: Path, monkeypatch) -> None:
    """Level k of a CZI: each pixel the mean of 2^k x 2^k from the scene's origin, the
    same whichever region reads it (in bands of the full resolution), the pixel size 2^k
    times; the levels halve down to a longer side of at most 1024."""
    image = random_image((1, 1, 1, 1500, 2600), "uint8", seed=5)
    path = tmp_path / "scan.czi"
    write_czi(path, [(image, (-301, 77))], pixel_size=0.22, tile=512)
    (full,) = open_sources(path)
    assert full.levels == 3  # 2600, 1300, 650 pixels wide
    (reduced,) = open_sources(path, level=2)
    assert reduced.where == f"{path} (level 2)"
    assert reduced.info.shape == (1, 1, 1, 375, 650)
    assert reduced.info.scale == pytest.approx({"x": 0.88, "y": 0.88, "z": 0.22})
    assert reduced.level_scale() == (4.0, 4.0) and full.level_scale() == (1.0, 1.0)
    want = np.rint(image[0, 0, 0].reshape(375, 4, 650, 4).mean(axis=(1, 3)))
    got = reduced.read(0, (0,), ((0, 1), (0, 375), (0, 650)))[0, 0]
    np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(sources, "CZI_BAND", 2 * 567 * 16)  # 2 rows of this region a read
    part = reduced.read(0, (0,), ((0, 1), (101, 258), (33, 600)))[0, 0]
    np.testing.assert_array_equal(part, want[101:258, 33:600])
    with pytest.raises(InputImageError, match="has 3 resolution level"):
        open_sources(path, level=3)


def test_unreadable_czi_is_one_input_error(tmp_path: Path, monkeypatch) -> None:
    good = tmp_path / "good.czi"
    write_czi(good, [(random_image((1, 1, 1, 64, 64)), (0, 0))])
    cut = tmp_path / "cut.czi"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(InputImageError, match="cut.czi: not a readable CZI .* check the file"):
        open_sources(cut)
    with pytest.raises(InputImageError, match=r"\(level 1\): the image has 1 resolution level"):
        open_sources(good, level=1)
    monkeypatch.setitem(__import__("sys").modules, "pylibCZIrw", None)  # not installed
    with pytest.raises(InputImageError, match=r"needs pylibCZIrw: pip install 'raysegment\[czi\]'"):
        open_sources(good)


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_arrays_default_and_explicit_axes(tmp_path: Path, fmt: int) -> None:
    vol = random_image((10, 20, 30))
    path = tmp_path / "v.zarr"
    zarr.create_array(str(path), data=vol, chunks=(5, 10, 10), zarr_format=fmt)
    src = open_source(path)
    assert src.info.shape == (1, 1, 10, 20, 30)
    np.testing.assert_array_equal(src.read(0, (0,), ((1, 4), (2, 9), (0, 30)))[0], vol[1:4, 2:9])
    src = open_source(path, axes="cyx")
    assert src.info.shape == (1, 10, 1, 20, 30)
    with pytest.raises(InputImageError, match="axes"):
        open_source(path, axes="yx")


def test_ome_zarr_04(tmp_path: Path) -> None:
    vol = _labelled(1, 2, 3, 16, 16)[0]  # c, z, y, x
    path = tmp_path / "img.ome.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.create_array("0", data=vol, chunks=(1, 1, 16, 16))
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [{"type": "scale", "scale": [1, 3.0, 0.5, 0.5]}],
                }
            ],
        }
    ]
    g.attrs["omero"] = {"channels": [{"label": "dapi"}, {"label": "gfp"}]}
    src = open_source(path)
    assert src.info.shape == (1, 2, 3, 16, 16)
    assert src.info.scale == {"z": 3.0, "y": 0.5, "x": 0.5}
    assert src.info.units["z"] == "micrometer"
    assert src.info.channel_names == ("dapi", "gfp")
    np.testing.assert_array_equal(src.read(0, (1,), ((0, 3), (0, 16), (0, 16)))[0], vol[1])


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "not a readable TIFF"),
        (b"II*\x00garbage that is not a tiff directory", "not a readable TIFF"),
        (b"hello", "not a readable TIFF"),
        # The header written, the directory not yet (a tile-streaming writer stopped).
        (b"II*\x00\x08\x00\x00\x00" + bytes(4096), "no image in the TIFF"),
    ],
)
def test_corrupt_tiffs_raise_input_error(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(InputImageError, match=match):
        open_source(path)


def test_truncated_tiff_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "cut.ome.tif"
    tifffile.imwrite(
        path, random_image((256, 256)), ome=True, tile=(64, 64), metadata={"axes": "YX"}
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError):
        src = open_source(path)
        src.read(0, (0,), ((0, 1), (0, 256), (0, 256)))


@pytest.mark.parametrize("name", ["notes.txt", "x.png"])
def test_unsupported_files(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("x")
    with pytest.raises(InputImageError, match="not a supported image"):
        open_source(tmp_path / name)


def test_missing_and_one_dimensional(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="no such file"):
        open_source(tmp_path / "nope.tif")
    zarr.create_array(str(tmp_path / "line.zarr"), data=np.arange(10))
    with pytest.raises(InputImageError, match="1D array"):
        open_source(tmp_path / "line.zarr")


def test_source_pickles_without_its_handle(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "a.ome.tif"
    image = random_image((40, 40))
    tifffile.imwrite(path, image, ome=True, metadata={"axes": "YX"})
    src = open_source(path)
    clone = pickle.loads(pickle.dumps(src))
    assert clone._handle is None
    np.testing.assert_array_equal(clone.read(0, (0,), ((0, 1), (0, 40), (0, 40)))[0, 0], image)


def test_resolve_inputs_and_stems(tmp_path: Path) -> None:
    for n in ("b.ome.tif", "a.tif", "c.txt"):
        (tmp_path / n).write_bytes(b"")
    assert [Path(p).name for p in resolve_inputs(str(tmp_path))] == ["a.tif", "b.ome.tif"]
    assert [Path(p).name for p in resolve_inputs(str(tmp_path), r"b\..*")] == ["b.ome.tif"]
    with pytest.raises(InputImageError, match="no entry matches"):
        resolve_inputs(str(tmp_path), r".*\.czi")
    assert image_stem("x/slide.ome.tiff") == "slide"
    assert image_stem("x/vol.ome.zarr/") == "vol"


def test_tiffs_at_urls_read_as_their_local_copies(
    tmp_path: Path, http_server: str, s3: dict[str, str], monkeypatch
) -> None:
    """Slides and stacks where labs keep them, on a web server and in an S3 bucket: an
    OME-TIFF of two channels (its sizes and names, both levels of its pyramid), an
    Aperio SVS (RGB JPEG tiles) and a Fiji stack of uncompressed
    strips read as the local files, a plane's tiles fetched together (one request batch a
    plane and channel); a file cut short in the bucket is named."""
    import s3fs

    from raysegment import storage
    from tests.conftest import BUCKET

    image = random_image((2, 300, 260))
    with tifffile.TiffWriter(tmp_path / "slide.ome.tif", bigtiff=True) as tif:
        meta = {"axes": "CYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
        meta |= {"Channel": {"Name": ["DAPI", "CD3"]}}
        tif.write(image, subifds=1, tile=(64, 64), compression="zlib", metadata=meta)
        tif.write(image[:, ::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib")
    _aperio_svs(tmp_path / "case.svs", random_image((300, 260, 3), dtype="uint8"), 0.5)
    stack = random_image((6, 120, 100))
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    bucket = s3fs.S3FileSystem()
    for name in ("slide.ome.tif", "case.svs", "stack.tif"):
        bucket.put(str(tmp_path / name), f"{BUCKET}/tiffs/{name}")
    fetches: list[int] = []
    read_ranges = storage.read_ranges

    def counted(location: str, starts: list[int], ends: list[int]) -> list[bytes]:
        fetches.append(len(starts))
        return read_ranges(location, starts, ends)

    monkeypatch.setattr(storage, "read_ranges", counted)
    probed: list[str] = []  # locations asked whether they are N5 or precomputed volumes
    key = sources._key
    monkeypatch.setattr(sources, "_key", lambda at, name: probed.append(at) or key(at, name))
    region = ((0, 1), (37, 290), (5, 233))
    for where in (http_server, f"s3://{BUCKET}/tiffs"):
        assert resolve_inputs(where + "/", r".*\.(tif|svs)") == [
            f"{where}/{n}" for n in ("case.svs", "slide.ome.tif", "stack.tif")
        ]
        for name, channels, level, tiles in [
            ("slide.ome.tif", (0, 1), 0, 2 * 20),  # a plane a channel, 5 x 4 tiles each
            ("slide.ome.tif", (1,), 1, 9),
            ("case.svs", (0, 1, 2), 0, 20),  # RGB: the channels are a plane's samples
        ]:
            (local,) = open_sources(tmp_path / name, level=level)
            (remote,) = open_sources(f"{where}/{name}", level=level)
            assert remote.name == local.name and remote.info == local.info
            box = tuple(
                (a, min(b, s)) for (a, b), s in zip(region, local.info.shape[2:], strict=True)
            )
            fetches.clear()
            got = remote.read(0, channels, box)
            np.testing.assert_array_equal(got, local.read(0, channels, box))
            assert fetches == [tiles]  # one batch of requests: every tile of every plane
        (remote,) = open_sources(f"{where}/stack.tif")
        assert remote.info.shape == (1, 1, 6, 120, 100)
        fetches.clear()
        box = ((1, 5), (10, 70), (0, 100))
        np.testing.assert_array_equal(remote.read(0, (0,), box)[0], stack[1:5, 10:70])
        assert fetches == [4]  # one batch: each plane's rows alone
    assert not [at for at in probed if at.endswith((".tif", ".svs"))]  # TIFFs by name
    assert open_sources(f"s3://{BUCKET}/tiffs/slide.ome.tif")[0].info.channel_names == (
        "DAPI",
        "CD3",
    )

    data = (tmp_path / "slide.ome.tif").read_bytes()
    bucket.pipe(f"{BUCKET}/tiffs/cut.ome.tif", data[: len(data) // 2])
    with pytest.raises(InputImageError, match=f"s3://{BUCKET}/tiffs/cut.ome.tif: truncated"):
        open_sources(f"s3://{BUCKET}/tiffs/cut.ome.tif")


def test_a_tiff_whose_server_is_gone_mid_run_fails_naming_it(tmp_path: Path, ome_tiff) -> None:
    import threading

    from tests.conftest import WebServer

    ome_tiff(random_image((256, 256)), name="a.ome.tif")
    server = WebServer(tmp_path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (src,) = open_sources(f"{server.url}/a.ome.tif")
    assert src.handle is not None  # opened, as a worker that read a block before
    server.shutdown()
    server.server_close()
    with pytest.raises(InputImageError, match=r"a.ome.tif: cannot read region .* the network"):
        src.read(0, (0,), ((0, 1), (0, 256), (0, 256)))


@pytest.mark.parametrize("layout", ["v3", "v2 nested", "v3 sharded", "ome-zarr tczyx"])
def test_zarr_tells_regions_of_unwritten_chunks_from_one_listing(
    tmp_path: Path, layout: str
) -> None:
    """``unstored``: a region lies in unwritten chunks (shards) or reaches a written one,
    along every axis: t and channels too (those read are the channels' span)."""
    data = np.zeros((2, 3, 8, 32, 32), np.uint16)
    data[1, 2, 4:, 16:, 16:] = 5  # one chunk written: t 1, c 2, z 4:8, y and x 16:32
    path = tmp_path / "v.zarr"
    if layout == "ome-zarr tczyx":
        group = zarr.open_group(str(path), mode="w")
        group.create_array("0", data=data, chunks=(1, 1, 4, 16, 16))
        axes = [
            {"name": a, "type": t}
            for a, t in zip("tczyx", ["time", "channel"] + ["space"] * 3, strict=True)
        ]
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "axes": axes,
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 5}],
                        }
                    ],
                }
            ],
        }
        src = open_source(path)
    else:
        kwargs: dict = {"chunks": (1, 1, 4, 16, 16)}
        if layout == "v2 nested":
            kwargs = kwargs | {
                "zarr_format": 2,
                "chunk_key_encoding": {"name": "v2", "separator": "/"},
            }
        if layout == "v3 sharded":
            kwargs = {"chunks": (1, 1, 2, 8, 8), "shards": (1, 1, 4, 16, 16)}
        zarr.create_array(str(path), data=data, **kwargs)
        src = open_source(path, axes="tczyx")
    test = src.unstored()
    assert test is not None
    whole = ((0, 8), (0, 32), (0, 32))
    assert not test(1, (2,), whole) and not test(1, (0, 2), whole)
    assert test(0, (0, 1, 2), whole) and test(1, (0, 1), whole)
    assert test(1, (2,), ((0, 4), (0, 32), (0, 32)))
    assert test(1, (2,), ((0, 8), (0, 16), (0, 32)))
    assert not test(1, (2,), ((3, 5), (15, 17), (15, 17)))  # a corner reaching it
    np.testing.assert_array_equal(src.read(1, (2,), whole)[0], data[1, 2])


def test_unwritten_chunks_are_not_told_where_a_listing_may_be_partial_or_fill_is_nan(
    tmp_path: Path, http_server: str, s3: dict[str, str], monkeypatch
) -> None:
    """A web server's directory pages are no full listing, NaN fill reads as the NaN
    error, a bucket may forbid listing, and a key that is no chunk's (a note left in the
    array) says the layout is not the one understood: none answers; an S3 bucket's
    listing does."""
    import s3fs

    from tests.conftest import BUCKET

    data = np.zeros((4, 32, 32), np.float32)
    data[:, :16, :16] = 1.0
    zarr.create_array(str(tmp_path / "v.zarr"), data=data, chunks=(4, 16, 16))
    zarr.create_array(str(tmp_path / "nan.zarr"), data=data, chunks=(4, 16, 16), fill_value=np.nan)
    assert open_source(f"{http_server}/v.zarr").unstored() is None
    assert open_source(tmp_path / "nan.zarr").unstored() is None
    s3fs.S3FileSystem().put(str(tmp_path / "v.zarr"), f"{BUCKET}/sparse/v.zarr", recursive=True)
    test = open_source(f"s3://{BUCKET}/sparse/v.zarr").unstored()
    assert test is not None
    assert test(0, (0,), ((0, 4), (16, 32), (0, 32))) and not test(
        0, (0,), ((0, 4), (0, 17), (0, 17))
    )
    assert open_source(tmp_path / "v.zarr").unstored() is not None
    with monkeypatch.context() as m:  # a bucket whose objects may be read, not listed

        async def denied(store, prefix):
            raise PermissionError("Access Denied")

        m.setattr(sources, "_listed", denied)
        assert open_source(f"s3://{BUCKET}/sparse/v.zarr").unstored() is None
    (tmp_path / "v.zarr" / "c" / "notes.txt").write_text("copied from the microscope")
    assert open_source(tmp_path / "v.zarr").unstored() is None
