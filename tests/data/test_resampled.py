"""Images read at another pixel size (``resample=true``): against torch's antialiased
resizing of the whole image, block by block, from the right pyramid level, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy.ndimage import zoom

from raysegment.config import InferConfig, load_config
from raysegment.data.resampled import ResampledSource, resampled_to
from raysegment.data.sources import MemorySource, open_source
from raysegment.errors import ConfigError, InputImageError
from tests.conftest import random_image, whole_image_prediction


def _torch_resized(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The oracle: (C, Z, Y, X) ``image`` at the (Z, Y, X) ``shape``, torch's bilinear
    resizing with antialiasing on (y, x), then on (z, x) (x already at its size: the
    identity there), align_corners=False."""
    x = torch.from_numpy(image.astype(np.float32))
    c, z = x.shape[:2]
    planes = torch.nn.functional.interpolate(
        x.reshape(c * z, 1, *x.shape[2:]), size=shape[1:], mode="bilinear", antialias=True
    ).reshape(c, z, *shape[1:])
    if shape[0] == z:
        return planes.numpy()
    sideways = planes.permute(0, 2, 1, 3).reshape(c * shape[1], 1, z, shape[2])
    out = torch.nn.functional.interpolate(
        sideways, size=(shape[0], shape[2]), mode="bilinear", antialias=True
    )
    return out.reshape(c, shape[1], shape[0], shape[2]).permute(0, 2, 1, 3).numpy()


@pytest.mark.parametrize(
    ("shape", "to"),
    [
        ((1, 100, 130), (1, 77, 200)),  # shrunk in y, grown in x
        ((1, 64, 64), (1, 20, 31)),  # shrunk 3x and 2x: several pixels under each
        ((12, 40, 30), (7, 40, 45)),  # a volume: z shrunk, y kept, x grown
    ],
)
def test_a_resampled_image_is_torchs_antialiased_resize_in_any_block(shape, to) -> None:
    rng = np.random.default_rng(0)
    data = rng.random((1, 2, *shape)).astype(np.float32)
    source = ResampledSource(MemorySource(data, "mem", "mem"), to, {}, {}, {})
    assert source.info.shape == (1, 2, *to)
    whole = source.read(0, (0, 1), tuple((0, n) for n in to))
    np.testing.assert_allclose(whole, _torch_resized(data[0], to), atol=2e-5)
    # Any region reads what the whole image has there: blocks agree at their seams.
    for region in (((0, to[0]), (3, to[1] - 2), (5, 9)), ((to[0] - 1, to[0]), (0, 1), (0, to[2]))):
        part = source.read(0, (1,), region)
        np.testing.assert_array_equal(part[0], whole[1][tuple(slice(a, b) for a, b in region)])


def test_integer_images_stay_integer_rounded() -> None:
    data = np.array([[[[[0, 1000, 65535, 65535]]]]], np.uint16)
    source = ResampledSource(MemorySource(data, "mem", "mem"), (1, 1, 7), {}, {}, {})
    got = source.read(0, (0,), ((0, 1), (0, 1), (0, 7)))
    assert got.dtype == np.uint16
    want = _torch_resized(data[0].astype(np.float32), (1, 1, 7))
    np.testing.assert_array_equal(got, np.clip(np.rint(want), 0, 65535))


def _spaced(spacing: tuple[float, ...]):
    """``Physical`` of an image in memory at the (z, y, x) ``spacing``."""
    return lambda source: (dict(zip("zyx", spacing, strict=True)), {}, {})


_NNUNET = {"data": [3, 0], "probabilities": [1, 0], "force_separate_z": None, "anisotropy": 3.0}
"""nnU-Net's default resampling (its plans' kwargs), as an nnU-Net training records it."""


@pytest.mark.parametrize(
    ("shape", "spacing", "new", "kinds", "back"),
    [
        (  # anisotropic: a cubic spline in-plane, the nearest plane along z
            (6, 40, 30),
            (3.0, 0.7, 0.7),
            (2.4, 0.9, 0.5),
            {"z": "nearest", "y": "cubic", "x": "cubic"},
            {"z": "nearest", "y": "linear", "x": "linear"},
        ),
        (  # isotropic: a cubic spline along every axis
            (12, 20, 24),
            (1.0, 1.0, 1.0),
            (1.5, 0.7, 0.8),
            {"z": "cubic", "y": "cubic", "x": "cubic"},
            {"z": "linear", "y": "linear", "x": "linear"},
        ),
    ],
)
def test_an_nnunet_training_reads_images_as_nnunet_resamples_them(
    shape, spacing, new, kinds, back
) -> None:
    """With an nnU-Net training's resampling, the image read is nnU-Net's
    ``resample_data_or_seg_to_shape`` of it, clipped first (its CT normalization's
    range), in any block; the output goes back by its probabilities' orders."""
    from scipy.ndimage import gaussian_filter

    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(2)
    volume = (gaussian_filter(rng.normal(0, 2000, shape), 1.0) + 100).astype(np.float32)
    clip = (-150.0, 400.0)

    source = resampled_to(
        MemorySource(volume[None, None], "mem", "mem"),
        dict(zip("zyx", new, strict=True)),
        "",
        _spaced(spacing),
        pyramid=False,
        scheme=_NNUNET,
        clip={0: clip},
    )
    assert isinstance(source, ResampledSource) and source.kinds == kinds
    assert source.kinds_back() == back and source.info.dtype == np.float32
    target = tuple(int(n) for n in resampling.compute_new_shape(shape, spacing, new))
    assert source.info.shape[2:] == target
    want = resampling.resample_data_or_seg_to_shape(
        np.clip(volume, *clip)[None], target, spacing, new, False, 3, 0, None
    )[0]
    whole = source.read(0, (0,), tuple((0, n) for n in target))[0]
    # nnU-Net's resize clips to each slice's range (here the clip's): the model's
    # normalization clips raysegment's after.
    np.testing.assert_allclose(np.clip(whole, *clip), want, atol=2e-3)
    assert np.abs(whole - want).max() > 1.0  # the spline overshoots where nnU-Net clips
    region = ((1, target[0]), (3, target[1] - 2), (5, 9))
    part = source.read(0, (0,), region)[0]
    np.testing.assert_array_equal(part, whole[tuple(slice(a, b) for a, b in region)])


def test_nnunets_rule_for_the_axis_resampled_apart() -> None:
    """An axis of pixels over three times as long as the others' (the image's, else the
    new) is resampled apart, by the second order; none where two tie; forced either way."""
    from raysegment.data.resampled import nnunet_kinds

    flat = {"z": 1.0, "y": 1.0, "x": 1.0}
    assert nnunet_kinds(_NNUNET, "data", flat, {"z": 3.5, "y": 1.0, "x": 1.0})["z"] == "nearest"
    assert nnunet_kinds(_NNUNET, "data", {"z": 1.0, "y": 3.5, "x": 3.5}, flat) == {
        a: "cubic" for a in "zyx"
    }
    assert nnunet_kinds(_NNUNET, "data", flat, flat) == {a: "cubic" for a in "zyx"}
    forced = {**_NNUNET, "force_separate_z": True}
    assert nnunet_kinds(forced, "data", {"z": 2.0, "y": 1.0, "x": 1.0}, flat)["z"] == "nearest"
    never = {**_NNUNET, "force_separate_z": False}
    assert nnunet_kinds(never, "data", {"z": 5.0, "y": 1.0, "x": 1.0}, flat)["z"] == "cubic"


def _pyramid(path: Path, pixel: float, levels: int = 3) -> np.ndarray:
    """A pyramidal OME-TIFF of ``levels`` halvings at ``pixel`` micrometres; its level 0."""
    image = random_image((256, 256))
    meta = {"axes": "YX", "PhysicalSizeX": pixel, "PhysicalSizeY": pixel}
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=levels - 1, tile=(64, 64), metadata=meta)
        for k in range(1, levels):
            tif.write(image[:: 2**k, :: 2**k], subfiletype=1, tile=(64, 64))
    return image


def _physical(source):  # the file's own, as infer takes it without voxel_size
    return dict(source.info.scale), dict(source.info.units), dict(source.info.origin)


@pytest.mark.parametrize(
    ("size", "unit", "level", "shape"),
    [
        (0.65, "micrometer", 1, 98),  # between levels 1 (0.5) and 2 (1.0): from 1, resampled
        (0.5, "micrometer", 1, 128),  # level 1 itself, not resampled
        (500.0, "nanometer", 1, 128),  # the same in another unit
        (0.2, "micrometer", 0, 320),  # finer than the full resolution: grown from it
        (4.0, "micrometer", 2, 16),  # past the coarsest level: from it
    ],
)
def test_the_coarsest_level_at_most_the_size_is_read(tmp_path, size, unit, level, shape) -> None:
    _pyramid(tmp_path / "slide.ome.tif", 0.25)
    source = open_source(str(tmp_path / "slide.ome.tif"))
    got = resampled_to(source, {"y": size, "x": size}, unit, _physical, pyramid=True)
    assert got.level == level
    assert got.info.shape[3:] == (shape, shape)
    assert isinstance(got, ResampledSource) == (shape != 256 // 2**level)
    extent = 0.25 * 256  # the slide's, whichever pixel it is read at
    assert got.info.scale["x"] == pytest.approx(extent / shape)
    # Full-resolution pixels per pixel read (GeoJSON polygons are in the former).
    assert got.level_scale() == pytest.approx((256 / shape, 256 / shape))
    if isinstance(got, ResampledSource):  # the first pixel's centre: half its growth on
        assert got.info.origin["x"] == pytest.approx((extent / shape - 0.25 * 2**level) / 2)


def test_images_without_a_pixel_size_or_a_z_axis_are_named(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", random_image((64, 64)))
    plain = open_source(str(tmp_path / "plain.tif"))
    with pytest.raises(InputImageError, match=r"no pixel size recorded along y.*voxel_size="):
        resampled_to(plain, {"y": 0.5, "x": 0.5}, "micrometer", _physical, pyramid=True)
    with pytest.raises(InputImageError, match=r"a 2D image.*resample_size=\[y, x\]"):
        resampled_to(plain, {"z": 1.0, "y": 0.5, "x": 0.5}, "", _physical, pyramid=True)


def _trained_at(tmp_path: Path, make_model, pixel: dict | None) -> tuple[Path, torch.nn.Module]:
    """A model directory recording the ``pixel`` it was trained at (micrometres)."""
    model, module = make_model(out_ch=1)
    directory = tmp_path / "trained"
    directory.mkdir()
    model.rename(directory / "model.pth")
    meta = {"pixel_size": pixel, "pixel_unit": "micrometer"} if pixel else {}
    (directory / "raysegment.json").write_text(json.dumps(meta))
    return directory, module


def _whole(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The 2D image at ``path`` resampled to ``shape`` in one read (torch's resize, as the
    first test shows, rounded to its integers)."""
    source = ResampledSource(open_source(str(path)), (1, *shape), {}, {}, {})
    return source.read(0, (0,), ((0, 1), (0, shape[0]), (0, shape[1])))[0, 0]


@pytest.mark.usefixtures("ray_session")
def test_infer_runs_at_the_models_pixel_and_equals_the_resized_image_run(
    tmp_path, make_model, ome_tiff
) -> None:
    """A 0.325 µm image (a 40x scanner's) and a model trained at 0.5 µm: the run reads it
    at 0.5 µm in blocks of 128^2, and its output is the model on the whole image resampled
    in one read; the output's pixel size and origin say where it lies."""
    from raysegment.infer import infer

    path = ome_tiff(random_image((300, 260)), PhysicalSizeX=0.325, PhysicalSizeY=0.325)
    model, module = _trained_at(tmp_path, make_model, {"y": 0.5, "x": 0.5})
    summary = infer(
        input=str(path),
        model=str(model),
        output=str(tmp_path / "out"),
        resample=True,
        chunks=[64],
        block=[128],
        tile={"size": [64], "blend": "crop"},  # seams cropped: the whole image's pixels
        finalize={"mode": "raw"},
        progress=False,
    )
    shape = (round(300 * 0.325 / 0.5), round(260 * 0.325 / 0.5))  # 195 x 169
    assert summary.levels == "resampled 1 of 1 image(s) to 0.5 x 0.5 micrometer pixels"
    out = tmp_path / "out" / "img.ome.zarr"
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    want = whole_image_prediction(module, _whole(path, shape))
    assert got.shape == (1, *shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    attrs = zarr.open_group(str(out), mode="r").attrs.asdict()
    scale, shift = attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == pytest.approx([1.0, 300 * 0.325 / shape[0], 260 * 0.325 / shape[1]])
    assert shift["translation"] == pytest.approx(
        [0.0, *((s - 0.325) / 2 for s in scale["scale"][1:])]
    )
    source = attrs["raysegment"]["input"]
    assert source["shape_tczyx"] == [1, 1, 1, *shape]
    assert source["resampled"]["from_shape_tczyx"] == [1, 1, 1, 300, 260]


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(("trained", "said"), [(0.5, True), (0.35, False)])
def test_a_run_at_other_pixels_than_the_models_says_so(
    tmp_path, make_model, ome_tiff, trained, said
) -> None:
    """Without ``resample``, an image whose pixel is over 1.2 times apart from the
    model's (in any length unit) is named in the summary with the fix; one near it is
    not."""
    from raysegment.infer import infer

    path = ome_tiff(
        random_image((64, 64)),
        PhysicalSizeX=325,
        PhysicalSizeY=325,
        PhysicalSizeXUnit="nm",
        PhysicalSizeYUnit="nm",
    )
    model, _ = _trained_at(tmp_path, make_model, {"y": trained, "x": trained})
    summary = infer(input=str(path), model=str(model), output=str(tmp_path / "o"), progress=False)
    note = (
        f"1 of 1 image(s) read at other pixels than the model's {trained} x {trained} "
        f"micrometer (e.g. {path}: 325 x 325 nanometer); resample=true reads them at it"
    )
    assert summary.levels == (note if said else "")


@pytest.mark.usefixtures("ray_session")
def test_resample_size_and_voxel_size_give_the_pixels_of_a_file_recording_none(
    tmp_path, make_model
) -> None:
    """A TIFF without a pixel size, ``voxel_size`` its pixel and ``resample_size`` the one
    to read at (a model recording none): shrunk by 2/3 in y and x."""
    from raysegment.infer import infer

    tifffile.imwrite(tmp_path / "plain.tif", random_image((90, 60)))
    model, module = make_model(out_ch=1)
    infer(
        input=str(tmp_path / "plain.tif"),
        model=str(model),
        output=str(tmp_path / "out"),
        resample=True,
        resample_size=[0.3, 0.3],
        voxel_size=[0.2, 0.2],
        tile={"size": [32], "blend": "crop"},
        finalize={"mode": "raw"},
        progress=False,
    )
    got = zarr.open_array(str(tmp_path / "out" / "plain.ome.zarr" / "0"), mode="r")[:]
    want = whole_image_prediction(module, _whole(tmp_path / "plain.tif", (60, 40)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.usefixtures("ray_session")
def test_a_model_recording_no_pixel_is_one_error_naming_the_fix(
    tmp_path, make_model, ome_tiff
) -> None:
    from raysegment.infer import infer

    path = ome_tiff(random_image((64, 64)), PhysicalSizeX=0.5, PhysicalSizeY=0.5)
    model, _ = _trained_at(tmp_path, make_model, None)
    with pytest.raises(ConfigError, match=r"records no pixel size.*resample_size=\[y, x\]"):
        infer(input=str(path), model=str(model), output=str(tmp_path / "o"), resample=True)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["resample_size=[0.5,0.5]"], r"set resample=true"),
        (["resample=true", "resample_size=[0.5]"], r"give 2 \(y x\) or 3"),
        (["resample=true", "finalize.dicom_seg=true"], r"input's own pixel grid"),
        (["resample=true", "input_level=1"], r"drop input_level"),
    ],
)
def test_resample_settings_that_cannot_hold_are_refused(keys, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(InferConfig, (), ["input=a.tif", "model=m.pth", "output=o", *keys])


def test_regions_in_unwritten_chunks_are_told_through_their_filters(tmp_path) -> None:
    """A sparse zarr (a chunk of 16^2 written of four): a region of the resampled image is
    unstored where every input pixel under its filters is."""
    data = np.zeros((32, 32), np.uint16)
    data[:16, :16] = 7
    array = zarr.create_array(
        str(tmp_path / "sparse.zarr"), shape=data.shape, chunks=(16, 16), dtype="uint16"
    )
    array[:16, :16] = data[:16, :16]
    inner = open_source(str(tmp_path / "sparse.zarr"), axes="yx")
    source = ResampledSource(inner, (1, 20, 20), {}, {}, {})  # 1.6 input pixels each
    test = source.unstored()
    assert test is not None
    assert test(0, (0,), ((0, 1), (11, 20), (0, 20)))  # input rows 17.1 on: none written
    assert not test(0, (0,), ((0, 1), (10, 20), (0, 20)))  # row 10's filter takes row 15
    assert (
        ResampledSource(
            MemorySource(data[None, None, None], "m", "m"), (1, 20, 20), {}, {}, {}
        ).unstored()
        is None
    )


@pytest.mark.usefixtures("ray_session")
def test_mask_auto_of_a_resampled_slide_lies_where_its_tissue_is(
    tmp_path, make_model, ome_tiff
) -> None:
    """``mask=auto`` is found on the slide's own pixels and lies over the resampled ones:
    the output is the model's inside the tissue, 0 on the glass around it."""
    from raysegment.infer import infer

    image = random_image((256, 256)) // 20  # faint glass
    image[96:192, 64:160] += 900  # tissue
    path = ome_tiff(image, PhysicalSizeX=0.25, PhysicalSizeY=0.25)
    model, module = _trained_at(tmp_path, make_model, {"y": 0.4, "x": 0.4})
    infer(
        input=str(path),
        model=str(model),
        output=str(tmp_path / "out"),
        resample=True,
        mask="auto",
        tile={"size": [64], "blend": "crop"},
        finalize={"mode": "raw"},
        progress=False,
    )
    got = zarr.open_array(str(tmp_path / "out" / "img.ome.zarr" / "0"), mode="r")[0]
    assert got.shape == (160, 160)
    want = whole_image_prediction(module, _whole(path, (160, 160)))[0]
    tissue = (slice(62, 118), slice(42, 98))  # 98..190 and 66..158 of the slide's pixels
    np.testing.assert_allclose(got[tissue], want[tissue], rtol=1e-5, atol=1e-4)
    assert not got[:50].any() and not got[130:].any()  # the glass, past the mask's margin
    assert not got[:, :30].any() and not got[:, 110:].any()


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    ("size", "shape", "said"),
    [
        (
            0.65,
            98,
            "resampled 1 of 1 image(s) to 0.6531 x 0.6531 micrometer pixels, from "
            "input_level 1 (1 image(s))",
        ),
        (0.5, 128, "resample: every image was at the pixel size asked for already"),
    ],
)
def test_a_pyramid_is_resampled_from_the_level_under_the_models_pixel(
    tmp_path, make_model, size, shape, said
) -> None:
    """A 0.25 µm slide of three levels: a model of 0.65 µm reads level 1 (0.5 µm)
    resampled, one of 0.5 µm level 1 as it is; the summary says which."""
    from raysegment.infer import infer

    _pyramid(tmp_path / "slide.ome.tif", 0.25)
    model, _ = _trained_at(tmp_path, make_model, {"y": size, "x": size})
    summary = infer(
        input=str(tmp_path / "slide.ome.tif"),
        model=str(model),
        output=str(tmp_path / "out"),
        resample=True,
        tile={"size": [64]},
        progress=False,
    )
    assert summary.levels == said
    out = zarr.open_array(str(tmp_path / "out" / "slide.ome.zarr" / "0"), mode="r")
    assert out.shape == (1, shape, shape)


@pytest.mark.usefixtures("ray_session")
def test_a_volume_is_resampled_along_z_too(tmp_path, make_model) -> None:
    """A zarr volume of 1 x 0.5 x 0.5 voxels (``voxel_size``) read at 2 x 0.8 x 0.8 for a
    3D model: each axis shrunk, the output the model on the whole volume resampled."""
    from raysegment.infer import infer

    volume = random_image((20, 40, 48))
    zarr.create_array(str(tmp_path / "vol.zarr"), data=volume, chunks=(8, 16, 16))
    model, module = make_model(dims=3, out_ch=1)
    infer(
        input=str(tmp_path / "vol.zarr"),
        axes="zyx",
        model=str(model),
        output=str(tmp_path / "out"),
        voxel_size=[1.0, 0.5, 0.5],
        resample=True,
        resample_size=[2.0, 0.8, 0.8],
        tile={"size": [8], "overlap": 0.5, "blend": "crop"},
        finalize={"mode": "raw"},
        progress=False,
    )
    got = zarr.open_array(str(tmp_path / "out" / "vol.ome.zarr" / "0"), mode="r")[:]
    shape = (10, 25, 30)
    data = volume[None, None]
    whole = ResampledSource(MemorySource(data, "m", "m"), shape, {}, {}, {})
    want = whole_image_prediction(module, whole.read(0, (0,), tuple((0, n) for n in shape))[0])
    assert got.shape == (1, *shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


LABEL_CASES = [
    ((2.5, 1.0, 1.0), (2.5, 0.5, 0.5)),  # in-plane twice: ties at every edge
    ((4.0, 1.0, 1.0), (2.0, 0.625, 0.625)),  # anisotropic: z the nearest plane apart
    ((4.0, 1.0, 1.0), (2.0, 1.6, 0.625)),  # and shrunk along y
    ((1.0, 1.0, 1.0), (0.8, 1.5, 0.7)),  # isotropic: linear along every axis
]
"""Voxel sizes (z, y, x) label maps are resampled from and to, as nnU-Net resamples them."""


def _blocky(rng: np.random.Generator, values: list[int], shape: tuple, coarse: tuple) -> np.ndarray:
    """A label map of ``shape`` (its leading axes beyond z, y, x kept) of blocks of
    ``values`` drawn on a ``coarse`` grid: labels meet three at a time."""
    drawn = np.asarray(values)[rng.integers(0, len(values), coarse)]
    lead = len(coarse) - 3
    return zoom(
        drawn, [1] * lead + [n / c for n, c in zip(shape, coarse[lead:], strict=True)], order=0
    )


def _resampled_by(scheme: dict, image: np.ndarray, spacing: tuple, new: tuple) -> ResampledSource:
    """``image`` (z, y, x) of voxels ``spacing`` read at ``new`` as ``scheme`` resamples."""
    source = resampled_to(
        MemorySource(image[None, None], "mem", "mem"),
        dict(zip("zyx", new, strict=True)),
        "",
        _spaced(spacing),
        pyramid=False,
        scheme=scheme,
    )
    assert isinstance(source, ResampledSource)
    return source


@pytest.mark.parametrize(("spacing", "new"), LABEL_CASES)
def test_an_earlier_stages_labels_are_resampled_as_nnunet_resamples_segmentations(
    spacing, new
) -> None:
    """A cascade's first stage's label map (labels 0 to 3, meeting three at a time) read
    at the image's resampled voxels: one channel per foreground label of nnU-Net's
    ``resample_data_or_seg_to_shape(..., is_seg=True)`` of it (each label's indicator
    interpolated, each voxel the highest's; ties to the nearest voxel's label where it is
    one of them), in any block."""
    from raysegment.data.previous import PreviousLabelsSource

    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(4)
    shape = (6, 21, 18)
    labels = _blocky(rng, [0, 1, 2, 3], shape, (3, 7, 6))
    image = rng.random(shape, dtype=np.float32) + 1
    resampled = _resampled_by({**_NNUNET, "segmentation": [1, 0]}, image, spacing, new)
    source = PreviousLabelsSource(
        resampled, MemorySource(labels[None, None].astype(np.uint8), "map", "map"), [1, 2, 3]
    )
    target = source.info.shape[2:]
    assert source.info.shape[1] == 4 and source.info.dtype == np.float32
    want = resampling.resample_data_or_seg_to_shape(
        labels[None].astype(np.int16), target, spacing, new, True, 1, 0, None
    )[0]
    whole = tuple((0, n) for n in target)
    got = source.read(0, (1, 2, 3), whole)
    for k, value in enumerate((1, 2, 3)):
        np.testing.assert_array_equal(got[k], want == value, err_msg=f"label {value}")
    np.testing.assert_array_equal(source.read(0, (0,), whole), resampled.read(0, (0,), whole))
    region = ((1, target[0]), (3, target[1] - 2), (5, 9))
    part = source.read(0, (3, 0, 1), region)
    cut = tuple(slice(a, b) for a, b in region)
    np.testing.assert_array_equal(part[0], got[2][cut])
    np.testing.assert_array_equal(part[2], got[0][cut])


@pytest.mark.parametrize(("spacing", "new"), LABEL_CASES)
def test_training_labels_are_resampled_as_nnunet_resamples_segmentations(spacing, new) -> None:
    """A label image (labels 0, 1, 2 and 7, meeting three at a time, two channels) read
    at the voxels of its image resampled by nnU-Net's scheme: nnU-Net's
    ``resample_data_or_seg_to_shape(..., is_seg=True)`` of each channel, in any block, in
    the labels' dtype."""
    from raysegment.data.resampled import NNUNET_RESAMPLING, ResampledLabels

    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(5)
    shape = (6, 21, 18)
    labels = _blocky(rng, [0, 1, 2, 7], shape, (2, 3, 7, 6))
    image = rng.random(shape, dtype=np.float32) + 1
    resampled = _resampled_by(NNUNET_RESAMPLING, image, spacing, new)
    source = ResampledLabels(MemorySource(labels[None].astype(np.uint16), "lbl", "lbl"), resampled)
    target = resampled.info.shape[2:]
    assert source.info.shape == (1, 2, *target) and source.info.dtype == np.uint16
    want = resampling.resample_data_or_seg_to_shape(
        labels.astype(np.int16), target, spacing, new, True, 1, 0, None
    )
    got = source.read(0, (0, 1), tuple((0, n) for n in target))
    np.testing.assert_array_equal(got, want)
    region = ((1, target[0]), (3, target[1] - 2), (5, 9))
    part = source.read(0, (1,), region)[0]
    np.testing.assert_array_equal(part, want[1][tuple(slice(a, b) for a, b in region)])


@pytest.mark.parametrize(("spacing", "new"), [((3.0, 0.7, 0.7), (2.4, 0.9, 0.5)), *LABEL_CASES[2:]])
def test_a_crop_is_resampled_alone_as_nnunet_resamples_its_crop_to_the_nonzero_box(
    spacing, new
) -> None:
    """With a ``crop`` (an image's nonzero box, as nnU-Net crops before it resamples), the
    crop's voxels alone are read at nnU-Net's count of pixels over them
    (``resample_data_or_seg_to_shape`` of the crop, its edge voxels repeated), in any
    block; pixels of the same size cover the rest of the image (at most one past either
    edge) and are the fill; an earlier stage's label map read at them is nnU-Net's
    resampling of the map's crop, background around it; and an output goes back to the
    crop's voxels from the crop's pixels alone, as nnU-Net's export, each voxel around the
    crop from a pixel around it (background there)."""
    import math

    from scipy.ndimage import gaussian_filter

    from raysegment.data.nonzero import nonzero_region
    from raysegment.data.previous import PreviousLabelsSource
    from raysegment.data.resampled import filtered

    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(5)
    shape, crop = (6, 30, 28), ((0, 6), (3, 26), (4, 25))
    cut = tuple(slice(a, b) for a, b in crop)
    volume = np.zeros(shape, np.float32)
    volume[cut] = gaussian_filter(rng.normal(0, 300, shape), 1.0)[cut] + 500
    image = MemorySource(volume[None, None], "mem", "mem")
    nonzero = nonzero_region(image, (0,), False)
    assert nonzero.box == crop
    source = resampled_to(
        image,
        dict(zip("zyx", new, strict=True)),
        "",
        _spaced(spacing),
        pyramid=False,
        scheme={**_NNUNET, "segmentation": [1, 0]},
        nonzero=nonzero,
        crop=nonzero.box,
        fill={0: -7.5},
    )
    assert isinstance(source, ResampledSource) and source.spans is not None
    sizes = [b - a for a, b in crop]
    target = tuple(int(n) for n in resampling.compute_new_shape(sizes, spacing, new))
    core = source.box(nonzero)
    for (a, b), (lo, hi), n, m, count in zip(
        crop, core, shape, source.info.shape[2:], target, strict=True
    ):
        ratio = (b - a) / count  # voxels per pixel
        assert hi - lo == count and lo == math.ceil(a / ratio - 1e-9)
        assert m - hi == math.ceil((n - b) / ratio - 1e-9)
    inside = tuple(slice(a, b) for a, b in core)
    want = resampling.resample_data_or_seg_to_shape(
        volume[cut][None], target, spacing, new, False, 3, 0, None
    )[0]
    whole = source.read(0, (0,), tuple((0, n) for n in source.info.shape[2:]))[0]
    np.testing.assert_allclose(whole[inside], want, atol=2e-3)
    around = np.ones(whole.shape, bool)
    around[inside] = False
    assert around.any() and (whole[around] == -7.5).all()
    region = ((1, whole.shape[0]), (2, whole.shape[1] - 1), (0, 9))  # across the crop's edges
    part = source.read(0, (0,), region)[0]
    np.testing.assert_array_equal(part, whole[tuple(slice(a, b) for a, b in region)])

    # Labels outside the crop too: the crop's alone are resampled, as nnU-Net crops them.
    labels = _blocky(rng, [0, 1, 2], shape, (3, 5, 7)).astype(np.uint8)
    previous = PreviousLabelsSource(source, MemorySource(labels[None, None], "map", "map"), [1, 2])
    seg = resampling.resample_data_or_seg_to_shape(
        labels[cut][None].astype(np.int16), target, spacing, new, True, 1, 0, None
    )[0]
    got = previous.read(0, (1, 2), tuple((0, n) for n in whole.shape))
    for k, value in enumerate((1, 2)):
        np.testing.assert_array_equal(got[k][inside], seg == value, err_msg=f"label {value}")
    assert not got[:, around].any()

    output = rng.random((2, *whole.shape)).astype(np.float32)
    output[:, around] = 0  # the background outside the crop
    back = [source.taps_back(a, 0, n) for a, n in zip("zyx", shape, strict=True)]
    got = filtered(output, back, [0, 0, 0])
    exported = resampling.resample_data_or_seg_to_shape(
        output[(slice(None), *inside)], sizes, new, spacing, False, 1, 0, None
    )
    np.testing.assert_allclose(got[(slice(None), *cut)], exported, atol=1e-5)
    outside = np.ones(shape, bool)
    outside[cut] = False
    assert not got[:, outside].any()
