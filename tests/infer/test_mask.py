"""``mask``: segment only where a mask image (any resolution of the input's field of view)
is nonzero; blocks and tiles outside skip the model, the output is 0 outside."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from raysegment.data.sources import open_source, open_sources
from raysegment.errors import InputImageError
from raysegment.infer import infer
from raysegment.infer.mask import Mask, open_mask
from raysegment.infer.stages import EMPTY, OUTSIDE, read_stage, write_stage
from tests.conftest import (
    driver_plan,
    random_image,
    whole_image_prediction,
    work_row,
    write_czi,
    write_wells,
)


def _nearest(n: int, m: int, a: int, b: int) -> np.ndarray:
    """The oracle: the mask index (of m) nearest the centre of image pixels a..b (of n)."""
    return np.minimum(np.floor((np.arange(a, b) + 0.5) * m / n).astype(int), m - 1)


def _inside(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2D mask as one value per pixel of an image of ``shape`` (the oracle's mapping)."""
    (n, m), (k, j) = zip(shape, mask.shape, strict=True)
    return mask[np.ix_(_nearest(n, m, 0, n), _nearest(k, j, 0, k))] != 0


@pytest.mark.parametrize("mask_shape", [(13, 9), (100, 70), (250, 175)])
def test_each_pixel_takes_the_mask_pixel_nearest_its_centre(tmp_path, mask_shape) -> None:
    """Coarser (not a whole factor), equal and finer masks: each image pixel of a region
    takes the mask pixel nearest its centre."""
    tifffile.imwrite(tmp_path / "img.tif", random_image((100, 70)))
    values = np.random.default_rng(1).integers(0, 3, mask_shape).astype("uint8")
    tifffile.imwrite(tmp_path / "mask.tif", values)
    mask = open_mask(str(tmp_path / "mask.tif"), open_source(tmp_path / "img.tif"))
    my, mx = mask_shape
    for (y0, y1), (x0, x1) in [((0, 100), (0, 70)), ((17, 61), (5, 44)), ((99, 100), (69, 70))]:
        region = ((0, 1), (y0, y1), (x0, x1))
        got = mask.expand(mask.read(0, region), region)
        want = values[np.ix_(_nearest(100, my, y0, y1), _nearest(70, mx, x0, x1))] != 0
        np.testing.assert_array_equal(got[0], want)


def test_a_box_narrows_a_mask_and_alone_is_one(tmp_path) -> None:
    """A box (an nnU-Net training's crop to the image's nonzero box): the pixels of the
    mask inside it; without a mask image, the box's pixels."""
    tifffile.imwrite(tmp_path / "img.tif", random_image((100, 70)))
    values = np.random.default_rng(1).integers(0, 3, (13, 9)).astype("uint8")
    tifffile.imwrite(tmp_path / "mask.tif", values)
    mask = open_mask(str(tmp_path / "mask.tif"), open_source(tmp_path / "img.tif"))
    box = ((0, 1), (20, 75), (9, 70))
    boxed, alone = replace(mask, box=box), Mask(None, (1, 100, 70), box)
    within = np.zeros((1, 100, 70), bool)
    within[:, 20:75, 9:70] = True
    region = ((0, 1), (17, 61), (5, 44))
    cut = (slice(None), slice(17, 61), slice(5, 44))
    got = boxed.expand(boxed.read(0, region), region)
    np.testing.assert_array_equal(got, mask.expand(mask.read(0, region), region) & within[cut])
    np.testing.assert_array_equal(alone.expand(alone.read(0, region), region), within[cut])
    assert alone.key() != mask.key() != boxed.key()


REGIONS = {
    "type": "FeatureCollection",
    "features": [
        {  # a square annotation with a square hole (QuPath's export of an annotation)
            "type": "Feature",
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[10, 20], [60, 20], [60, 80], [10, 80], [10, 20]],
                    [[25, 35], [45, 35], [45, 55], [25, 55], [25, 35]],
                ],
            },
        },
        {  # a triangle and a sliver in one
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [[[5.5, 90.2], [66.7, 93.1], [30.4, 99.9], [5.5, 90.2]]],
                    [[[0, 0], [70, 0], [70, 1.5], [0, 1.5], [0, 0]]],
                ],
            },
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}},  # left out
    ],
}


@pytest.mark.parametrize("raster", [4096, 35])
def test_geojson_regions_are_a_mask_of_the_pixels_whose_centres_they_hold(
    tmp_path, monkeypatch, raster
) -> None:
    """``mask=regions.geojson``: QuPath's annotations (or any GeoJSON polygons, holes
    kept, points left out) in the image's pixels; a pixel is inside when its centre is
    inside a polygon. Beyond ``GEOJSON_RASTER`` pixels a side they are drawn at an integer
    fraction of the resolution: then only pixels within that factor of a boundary may
    differ."""
    from raysegment.infer import mask as masks
    from tests.post.test_stats import covered

    monkeypatch.setattr(masks, "GEOJSON_RASTER", raster)  # 35: drawn at 1/3
    tifffile.imwrite(tmp_path / "img.tif", random_image((100, 70)))
    (tmp_path / "regions.geojson").write_text(json.dumps(REGIONS))
    mask = open_mask(str(tmp_path / "regions.geojson"), open_source(tmp_path / "img.tif"))
    region = ((0, 1), (0, 100), (0, 70))
    got = mask.expand(mask.read(0, region), region)[0]
    polygons = [f["geometry"] for f in REGIONS["features"][:2]]
    want = np.logical_or.reduce([covered(g, (100, 70)) for g in polygons])
    assert mask.source.info.shape[3:] == ((100, 70) if raster > 100 else (34, 24))
    if raster > 100:
        np.testing.assert_array_equal(got, want)
    else:
        near = ndimage.binary_dilation(want, iterations=3) & ~ndimage.binary_erosion(
            want, iterations=3
        )
        np.testing.assert_array_equal(got[~near], want[~near])
        assert 0.8 < got.sum() / want.sum() < 1.2
    (tmp_path / "points.geojson").write_text(json.dumps(REGIONS["features"][2]))
    with pytest.raises(InputImageError, match="points.geojson: no Polygon or MultiPolygon"):
        open_mask(str(tmp_path / "points.geojson"), open_source(tmp_path / "img.tif"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputImageError, match="broken.json: not a GeoJSON file"):
        open_mask(str(tmp_path / "broken.json"), open_source(tmp_path / "img.tif"))


def test_geojson_regions_are_in_the_full_resolutions_pixels_at_any_level(tmp_path) -> None:
    """QuPath's coordinates are the whole slide's: read at ``input_level=1`` (half the
    size), the mask is the regions at half their coordinates."""
    from tests.post.test_stats import covered

    image = random_image((200, 140), "uint8")
    with tifffile.TiffWriter(tmp_path / "slide.ome.tif", bigtiff=True) as tif:
        tif.write(image, subifds=1, tile=(64, 64), metadata={"axes": "YX"})
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64))

    def doubled(node: object) -> object:
        if isinstance(node, list):
            return [doubled(v) for v in node]
        return node * 2 if isinstance(node, (int, float)) else node

    regions = json.loads(json.dumps(REGIONS))
    for feature in regions["features"]:
        geometry = feature["geometry"]
        geometry["coordinates"] = doubled(geometry["coordinates"])
    (tmp_path / "regions.geojson").write_text(json.dumps(regions))
    (level,) = open_sources(tmp_path / "slide.ome.tif", level=1)
    mask = open_mask(str(tmp_path / "regions.geojson"), level)
    region = ((0, 1), (0, 100), (0, 70))
    got = mask.expand(mask.read(0, region), region)[0]
    polygons = [f["geometry"] for f in REGIONS["features"][:2]]
    np.testing.assert_array_equal(
        got, np.logical_or.reduce([covered(g, (100, 70)) for g in polygons])
    )


@pytest.mark.usefixtures("ray_session")
def test_a_run_masked_by_geojson_regions(tmp_path, make_model, ome_tiff) -> None:
    """End to end: the prediction where a pixel's centre is inside the regions, 0 outside."""
    from tests.post.test_stats import covered

    model, module = make_model(out_ch=1)
    image = random_image((100, 70))
    ome_tiff(image, name="img.ome.tif")
    (tmp_path / "regions.geojson").write_text(json.dumps(REGIONS))
    infer(
        input=str(tmp_path / "img.ome.tif"),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        chunks=[32],
        tile={"size": [32], "blend": "crop"},
        finalize={"mode": "raw"},
        mask=str(tmp_path / "regions.geojson"),
    )
    polygons = [f["geometry"] for f in REGIONS["features"][:2]]
    inside = np.logical_or.reduce([covered(g, (100, 70)) for g in polygons])
    got = zarr.open_array(str(tmp_path / "out" / "img.ome.zarr" / "0"), mode="r")[:]
    want = np.where(inside, whole_image_prediction(module, image), 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    attrs = dict(zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r").attrs)
    assert attrs["raysegment"]["mask"] == str(tmp_path / "regions.geojson")


def test_a_2d_mask_covers_every_plane_and_a_series_each_time_point(tmp_path) -> None:
    """A volume's 2D mask applies to each of its planes; a mask of one frame per time point
    to its own time point."""
    tifffile.imwrite(tmp_path / "vol.tif", random_image((4, 40, 30)))  # z y x
    plane = np.zeros((20, 15), "uint8")
    plane[5:9, 2:11] = 1
    tifffile.imwrite(tmp_path / "plane.tif", plane)
    mask = open_mask(str(tmp_path / "plane.tif"), open_source(tmp_path / "vol.tif"))
    region = ((0, 4), (0, 40), (0, 30))
    got = mask.expand(mask.read(0, region), region)
    assert got.shape == (4, 40, 30)
    for z in range(4):
        np.testing.assert_array_equal(got[z], _inside(plane, (40, 30)))

    tifffile.imwrite(
        tmp_path / "movie.tif", random_image((2, 40, 30)), imagej=True, metadata={"axes": "TYX"}
    )
    frames = np.stack([plane, 1 - plane])
    tifffile.imwrite(tmp_path / "frames.tif", frames, imagej=True, metadata={"axes": "TYX"})
    mask = open_mask(str(tmp_path / "frames.tif"), open_source(tmp_path / "movie.tif"))
    region = ((0, 1), (0, 40), (0, 30))
    for t in range(2):
        got = mask.expand(mask.read(t, region), region)
        np.testing.assert_array_equal(got[0], _inside(frames[t], (40, 30)))


def _mask_file(tmp_path: Path, name: str) -> str:
    """Masks that do not fit img.tif (100 x 70), by name."""
    path = tmp_path / f"{name}.tif"
    if name == "rgb":
        tifffile.imwrite(path, np.ones((3, 25, 17), "uint8"), ome=True, metadata={"axes": "CYX"})
    elif name == "frames":
        tifffile.imwrite(path, np.ones((2, 25, 17), "uint8"), imagej=True, metadata={"axes": "TYX"})
    elif name == "stack":
        tifffile.imwrite(path, np.ones((3, 25, 17), "uint8"), photometric="minisblack")
    elif name == "square":
        tifffile.imwrite(path, np.ones((25, 25), "uint8"))
    elif name == "wells":
        write_wells(path)
    return str(path)


@pytest.mark.parametrize(
    "name,message",
    [
        ("rgb", "has 3 channels; give a one-channel image"),
        ("frames", "has 2 time points, the image 1"),
        ("stack", "is a stack of 3 planes and the image is 2D"),
        ("square", "(y 25, x 25) is not the field of view of the image (y 100, x 70)"),
        ("wells", "holds 2 images"),
        ("absent", "no such file or directory for"),
    ],
)
def test_a_mask_that_does_not_fit_is_refused_naming_it(tmp_path, name, message) -> None:
    tifffile.imwrite(tmp_path / "img.tif", random_image((100, 70)))
    with pytest.raises(InputImageError, match="^mask=") as e:
        open_mask(_mask_file(tmp_path, name), open_source(tmp_path / "img.tif"))
    assert message in str(e.value)


def test_a_mask_per_input_names_it_with_its_name(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "img.tif", random_image((100, 70)))
    with pytest.raises(InputImageError, match=r"masks/img\.tif: .*\(\{name\} is img\)"):
        open_mask(str(tmp_path / "masks" / "{name}.tif"), open_source(tmp_path / "img.tif"))


@pytest.mark.usefixtures("ray_session")
def test_masked_run_is_the_whole_image_prediction_inside_and_zero_outside(
    tmp_path, make_model, ome_tiff
) -> None:
    """Two inputs, each with its own mask (``{name}``) at a quarter of its resolution: the
    output is the model's prediction inside the mask and 0 outside; blocks with nothing
    inside are counted and run no tile, and tiles touching nothing inside do not run."""
    model, module = make_model(out_ch=1)
    images = {"a": random_image((300, 400)), "b": random_image((200, 200), seed=1)}
    masks = {"a": np.zeros((75, 100), "uint8"), "b": np.zeros((50, 50), "uint8")}
    yy, xx = np.mgrid[:75, :100]
    masks["a"][(yy - 30) ** 2 + (xx - 40) ** 2 < 20**2] = 1  # a disc
    masks["b"][5:20, 30:48] = 7  # any nonzero value is inside
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    for name, image in images.items():
        ome_tiff(image, name=f"in/{name}.ome.tif")
        tifffile.imwrite(tmp_path / "masks" / f"{name}.tif", masks[name])
    settings = {
        "input": str(tmp_path / "in"),
        "model": str(model),
        "output": str(tmp_path / "out"),
        "progress": False,
        "chunks": [64],
        "block": [64],
        "tile": {"size": [32], "blend": "crop"},  # crop: each pixel as the whole image's
        "finalize": {"mode": "raw"},
    }
    summary = infer(settings, mask=str(tmp_path / "masks/{name}.tif"))
    outside = unmasked_tiles = 0
    for name, image in images.items():
        _, plan = driver_plan(settings | {"input": str(tmp_path / "in" / f"{name}.ome.tif")})
        unmasked_tiles += sum(plan.block_of(w).num_tiles for w in plan.work())
        inside = _inside(masks[name], image.shape)
        out = tmp_path / "out" / f"{name}.ome.zarr"
        got = zarr.open_array(str(out / "0"), mode="r")[:]
        want = np.where(inside, whole_image_prediction(module, image), 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        assert np.all(got[:, ~inside] == 0)
        attrs = dict(zarr.open_group(str(out), mode="r").attrs)["raysegment"]
        assert attrs["status"] == "complete"
        assert attrs["mask"] == str(tmp_path / "masks" / f"{name}.tif")
        assert (tmp_path / "out" / f"{name}.png").is_file()
        blocks = [
            inside[y : y + 64, x : x + 64]
            for y in range(0, image.shape[0], 64)
            for x in range(0, image.shape[1], 64)
        ]
        outside += sum(not b.any() for b in blocks)
    assert outside > 0 and summary.outside_blocks == outside
    assert summary.blocks == 5 * 7 + 4 * 4 and summary.tiles < unmasked_tiles - outside * 9
    assert "outside the mask" in str(summary)


def _plan(tmp_path: Path, make_model, ome_tiff, mask: np.ndarray | None, **settings):
    """The model and the plan of a 200 x 150 image (one block) with ``mask`` (or none)."""
    model_path, _ = make_model(out_ch=1)
    ome_tiff(random_image((200, 150)))
    name = f"mask{0 if mask is None else mask.size}.tif"
    if mask is not None:
        tifffile.imwrite(tmp_path / name, mask)
    return driver_plan(
        {
            "input": str(tmp_path / "img.ome.tif"),
            "model": str(model_path),
            "output": str(tmp_path / "out"),
            "tile": {"size": [32]},
            "finalize": {"mode": "probabilities"},
            **({"mask": str(tmp_path / name)} if mask is not None else {}),
            **settings,
        }
    )


@pytest.mark.usefixtures("ray_session")
def test_gpu_stages_carry_the_mask_from_read_to_write(tmp_path, make_model, ome_tiff) -> None:
    """A GPU run's read task finds the block in part inside, the predictor runs only the
    tiles touching the inside and zeroes the rest, the write task writes that."""
    import ray

    from raysegment.infer.predictor import Predictor
    from raysegment.infer.writer import create_output

    half = np.zeros((20, 15), "uint8")
    half[:, :6] = 1  # the left 60 of 150 columns
    model, plan = _plan(tmp_path, make_model, ome_tiff, half)
    _, unmasked = _plan(tmp_path, make_model, ome_tiff, None)
    create_output(plan.output, plan.layout, {"fingerprint": plan.fingerprint})
    finalize = ("probabilities", "auto", 0.5, ())

    def predict(plan):
        predictor = Predictor([ray.put(model)], [ray.put([plan])], False, 4, None, 1, finalize)
        row = read_stage(work_row(plan), [plan])
        return row, predictor(row)

    row, predicted = predict(plan)
    assert row["empty"][0] == 0 and row["mask"][0].shape == (1, 20, 15)
    _, whole = predict(unmasked)
    assert 0 < predicted["tiles"][0] < whole["tiles"][0]
    got = predicted["data"][0]
    np.testing.assert_allclose(got[:, :, :60], whole["data"][0][:, :, :60], rtol=1e-5, atol=1e-5)
    assert np.all(got[:, :, 60:] == 0) and got[:, :, :60].min() > 0
    write_stage(predicted, [plan])
    np.testing.assert_array_equal(zarr.open_array(f"{plan.output}/0", mode="r")[:], got)


@pytest.mark.parametrize("quicklook", [True, False])
def test_a_block_outside_reads_only_what_the_quicklook_shows(
    tmp_path, make_model, ome_tiff, monkeypatch, quicklook
) -> None:
    """Nothing of the input is read for a block outside the mask, but the quick-look's
    plane of one channel where the block brings quick-look pixels."""
    nothing = np.zeros((20, 15), "uint8")
    _, plan = _plan(tmp_path, make_model, ome_tiff, nothing, quicklook=quicklook)
    reads = []
    read = plan.source.read
    monkeypatch.setattr(plan.source, "read", lambda *a: reads.append(a) or read(*a))
    row = read_stage(work_row(plan), [plan])
    assert row["empty"][0] == OUTSIDE and row["data"][0].size == 1
    if quicklook:
        region = ((0, 1), (0, 200), (0, 150))
        assert reads == [(0, (0,), region)]
        np.testing.assert_array_equal(row["preview"][0], read(0, (0,), region)[:, 0])
    else:
        assert reads == [] and row["preview"][0].size == 0


def test_a_constant_block_inside_is_empty_not_outside(tmp_path, make_model, ome_tiff) -> None:
    model_path, _ = make_model(out_ch=1)
    ome_tiff(np.full((200, 150), 7, "uint16"), name="flat.ome.tif")
    tifffile.imwrite(tmp_path / "all.tif", np.ones((20, 15), "uint8"))
    _, plan = driver_plan(
        {
            "input": str(tmp_path / "flat.ome.tif"),
            "model": str(model_path),
            "output": str(tmp_path / "out"),
            "mask": str(tmp_path / "all.tif"),
        }
    )
    assert read_stage(work_row(plan), [plan])["empty"][0] == EMPTY


def test_another_mask_is_another_run(tmp_path, make_model, ome_tiff) -> None:
    """An unfinished output resumes only with the mask it began with (or none)."""
    masks = [None, np.ones((20, 15), "uint8"), np.ones((40, 30), "uint8")]
    prints = {_plan(tmp_path, make_model, ome_tiff, m)[1].fingerprint for m in masks}
    assert len(prints) == 3


def _stained_slide(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A pyramidal 8-bit RGB slide (levels 1/2, 1/4): pink tissue, a disc, on white glass.
    Returns where the tissue is."""
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    tissue = (yy - h // 3) ** 2 + (xx - w // 3) ** 2 < (h // 4) ** 2
    rgb = np.where(tissue[..., None], [200, 90, 170], [242, 242, 240]).astype(float)
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(rgb, subifds=2, tile=(64, 64), photometric="rgb", metadata={"axes": "YXS"})
        for step in (2, 4):
            tif.write(rgb[::step, ::step], subfiletype=1, tile=(64, 64), photometric="rgb")
    return tissue


def test_auto_mask_finds_stained_tissue_on_a_pyramid_level(tmp_path, monkeypatch) -> None:
    """``mask=auto`` on an RGB slide: the saturation's Otsu threshold on the coarsest
    level with enough pixels; the tissue all inside, little glass."""
    from raysegment.infer import mask as masks

    monkeypatch.setattr(masks, "THUMBNAIL", 256)  # levels 300 x 240 and 150 x 120: the latter
    tissue = _stained_slide(tmp_path / "slide.ome.tif", (600, 480))
    (image,) = open_sources(tmp_path / "slide.ome.tif")
    mask, found = masks.auto_mask(image, (0, 1, 2))
    assert found.shape == (150, 120) and image.levels == 3
    region = ((0, 1), (0, 600), (0, 480))
    inside = mask.expand(mask.read(0, region), region)[0]
    assert inside[tissue].all()
    assert inside[~tissue].mean() < 0.15  # the margin's ring of glass, no more


@pytest.mark.parametrize("suffix", [".tif", ".czi"])
def test_auto_mask_finds_bright_signal_in_strided_reads(tmp_path, monkeypatch, suffix) -> None:
    """On the full resolution, where the file stores no smaller level: a CZI's levels
    (means computed on reading, 1/2 to 1/8 here) would hide a speck."""
    from raysegment.data import sources
    from raysegment.infer import mask as masks

    monkeypatch.setattr(masks, "THUMBNAIL", 128)
    monkeypatch.setattr(sources, "CZI_THUMBNAIL", 64)
    image = random_image((500, 300)) // 10 + 100  # background 100-200 counts
    image[100:300, 50:150] += 3000  # cells
    image[401, 201] += 3000  # one more, smaller than the thumbnail's window: still found
    if suffix == ".czi":
        write_czi(tmp_path / "cells.czi", [(image[None, None, None], (0, 0))])
    else:
        tifffile.imwrite(tmp_path / "cells.tif", image)
    source = open_source(tmp_path / f"cells{suffix}")
    assert source.levels == (4 if suffix == ".czi" else 1)
    mask, found = masks.auto_mask(source, (0,))
    assert found.shape == (125, 75)  # the maximum of each 4 x 4 window of the full resolution
    region = ((0, 1), (0, 500), (0, 300))
    inside = mask.expand(mask.read(0, region), region)[0]
    assert inside[100:300, 50:150].all()
    # The cells and the margin of 4 windows of 4 around them; no speck of background.
    assert inside[401, 201] and inside[380:420, 180:220].mean() < 1
    assert not inside[:80].any() and not inside[320:380].any() and not inside[:, 230:].any()
    flat = np.full((64, 64), 7, "uint16")
    tifffile.imwrite(tmp_path / "flat.tif", flat)
    _, found = masks.auto_mask(open_source(tmp_path / "flat.tif"), (0,))
    assert found.all()  # nothing to tell apart: everything is segmented
    tifffile.imwrite(tmp_path / "stack.tif", random_image((6, 40, 30)))
    with pytest.raises(InputImageError, match="mask=auto: .*6 plane\\(s\\); it finds"):
        masks.auto_mask(open_source(tmp_path / "stack.tif"), (0,))


@pytest.mark.usefixtures("ray_session")
def test_a_run_with_mask_auto_skips_the_glass(tmp_path, monkeypatch) -> None:
    """End to end: blocks of glass only are not run; the mask found is shown as a PNG."""
    import torch

    from raysegment.infer import mask as masks
    from tests.conftest import save_torchscript

    monkeypatch.setattr(masks, "THUMBNAIL", 256)
    tissue = _stained_slide(tmp_path / "slide.ome.tif", (600, 480))
    model = save_torchscript(torch.nn.Conv2d(3, 1, 1), tmp_path / "m.pth", 2, 3)
    summary = infer(
        input=str(tmp_path / "slide.ome.tif"),
        model=str(model),
        output=str(tmp_path / "out"),
        mask="auto",
        progress=False,
        chunks=[64],
        block=[64],
        tile={"size": [64]},
        finalize={"mode": "raw"},
    )
    assert summary.outside_blocks > 0
    got = zarr.open_array(str(tmp_path / "out" / "slide.ome.zarr" / "0"), mode="r")[0]
    assert np.all(got[tissue] != 0) and (got == 0).mean() > 0.5
    assert (tmp_path / "out" / "slide_mask.png").read_bytes()[:4] == b"\x89PNG"
