"""Oracle tests: tiled + blended output against whole-image computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import zarr

from raysegment.data.tiling import Tiling
from raysegment.infer import infer
from tests.conftest import numpy_blend, random_image, raw_output, whole_image_prediction

pytestmark = pytest.mark.usefixtures("ray_session")


def test_crop_blend_equals_whole_image_2d(tmp_path, make_model, ome_tiff) -> None:
    image = random_image((301, 437))
    path = ome_tiff(image)
    model_path, module = make_model(dims=2)
    got = raw_output(
        tmp_path,
        path,
        model_path,
        tile={"size": [64], "overlap": 0.25, "blend": "crop"},
        chunks=[32],
        block=[96],
    )
    want = whole_image_prediction(module, image)
    assert got.shape == want.shape == (2, 301, 437)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


GPU = pytest.param(
    "gpu",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ],
)


@pytest.mark.parametrize("device", ["cpu", GPU])
def test_crop_blend_equals_whole_image_3d(tmp_path, make_model, device) -> None:
    image = random_image((37, 45, 51))
    path = tmp_path / "vol.zarr"
    zarr.create_array(str(path), data=image, chunks=(16, 16, 16))
    model_path, module = make_model(dims=3, out_ch=1)
    got = raw_output(
        tmp_path,
        path,
        model_path,
        device=device,
        tile={"size": [16], "overlap": 0.5, "blend": "crop"},
        chunks=[16],
        block=[32],
    )
    want = whole_image_prediction(module, image)
    assert got.shape == want.shape == (1, 37, 45, 51)
    # GPUs convolve in TF32 by default (a 10-bit mantissa).
    tolerance = {"rtol": 1e-5, "atol": 1e-4} if device == "cpu" else {"rtol": 1e-4, "atol": 1e-3}
    np.testing.assert_allclose(got, want, **tolerance)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_weighted_blends_equal_numpy_weighted_average(
    tmp_path, make_model, ome_tiff, blend
) -> None:
    image = random_image((150, 203), seed=3)
    path = ome_tiff(image)
    model_path, module = make_model(dims=2)
    got = raw_output(
        tmp_path,
        path,
        model_path,
        tile={"size": [48], "overlap": 0.4, "blend": blend},
        chunks=[32],
        block=[64],
    )
    tiling = Tiling.plan(image.shape, (48, 48), 0.4, blend)
    want = numpy_blend(module, image, tiling)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # blocks split work, never change the result: a single block gives the same output
    single = raw_output(
        tmp_path / "one",
        path,
        model_path,
        tile={"size": [48], "overlap": 0.4, "blend": blend},
        chunks=[32],
        block=[224],
    )
    np.testing.assert_allclose(single, got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "tile", "stride", "fitted"),
    [
        ((20, 27), 32, 1, (20, 27)),  # any size: the image's own
        ((20, 27), 32, 8, (24, 32)),  # multiples of 8: rounded up, the rest padded
        ((6, 40, 36), 16, 1, (6, 16, 16)),  # a z-stack thinner than the tile
        ((6, 40, 36), 16, 4, (8, 16, 16)),
    ],
)
def test_image_shorter_than_the_tile_runs_a_tile_fitted_to_it(
    tmp_path, make_model, shape, tile, stride, fitted
) -> None:
    """Along an axis where the image is shorter than the tile, the tile shrinks to the
    image, rounded up to a size the model takes: the model sees the image as the whole
    image would show it, zero-padded only as far as the model needs."""
    image = random_image(shape)
    zarr.create_array(str(tmp_path / "img.zarr"), data=image)
    model_path, module = make_model(dims=len(shape), stride=stride)
    summary = infer(
        input=str(tmp_path / "img.zarr"),
        model=str(model_path),
        output=str(tmp_path / "out"),
        progress=False,
        finalize={"mode": "raw"},
        tile={"size": [tile], "blend": "crop"},
    )
    configured = [tile] * len(shape)
    assert summary.fitted == (
        f"tile.size {configured} fitted to images shorter than it: {list(fitted)} (1 image(s))"
    )
    got = zarr.open_array(str(tmp_path / "out" / "img.ome.zarr" / "0"), mode="r")[:]
    attrs = dict(zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r").attrs)
    assert attrs["raysegment"]["tile"] == list(fitted)
    grown = np.maximum(fitted, shape)
    padded = np.pad(image, [(0, g - n) for g, n in zip(grown, shape, strict=True)])
    want = whole_image_prediction(module, padded)[(slice(None), *(slice(n) for n in shape))]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dims,shape", [(2, (90, 117)), (3, (21, 30, 27))])
def test_tta_makes_any_model_flip_equivariant(tmp_path, make_model, dims, shape) -> None:
    """With flips averaged on the logits, segmenting a flipped image gives the flipped
    result, even for a model that is not flip-equivariant itself (crop blending keeps the
    tiling out of it)."""
    image = random_image(shape, seed=5)
    model_path, module = make_model(dims=dims, out_ch=1)
    axes = tuple(range(dims))
    for name, data in (("plain", image), ("flipped", np.flip(image, axes))):
        zarr.create_array(
            str(tmp_path / "images" / f"{name}.zarr"),
            data=np.ascontiguousarray(data),
            chunks=(16,) * dims,
        )
    cfg = dict(tile={"size": [16], "overlap": 0.5, "blend": "crop"}, chunks=[16], block=[48])
    outs = {}
    for tta in (False, True):  # both images in one run
        out = tmp_path / f"out_{tta}"
        infer(
            input=str(tmp_path / "images"),
            pattern=r".*\.zarr",
            model=str(model_path),
            output=str(out),
            progress=False,
            finalize={"mode": "raw"},
            tta=tta,
            **cfg,
        )
        for name in ("plain", "flipped"):
            outs[name, tta] = zarr.open_array(str(out / f"{name}.ome.zarr" / "0"), mode="r")[:]
    spatial = tuple(a + 1 for a in axes)
    np.testing.assert_allclose(
        np.flip(outs["flipped", True], spatial), outs["plain", True], rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(
        np.flip(outs["flipped", False], spatial), outs["plain", False], atol=1e-3
    )  # the model alone is not equivariant
    # TTA on the plain image = mean of the model over all flips of the whole image
    want = np.zeros_like(outs["plain", True])
    flips = [c for r in range(dims + 1) for c in itertools.combinations(axes, r)]
    for f in flips:
        pred = whole_image_prediction(module, np.flip(image, f).copy())
        want += np.flip(pred, tuple(a + 1 for a in f))
    np.testing.assert_allclose(outs["plain", True], want / len(flips), rtol=1e-5, atol=1e-4)
