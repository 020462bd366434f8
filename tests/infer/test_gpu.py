"""GPU runs: skipped where CUDA is not available (CI has no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from raysegment.data.tiling import Tiling
from raysegment.infer import infer
from tests.conftest import numpy_blend, random_image, whole_image_prediction

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("ray_session"),
]


def test_gpu_actor_equals_whole_image_inference(tmp_path, make_model, ome_tiff) -> None:
    image = random_image((700, 900))
    path = ome_tiff(image)
    model, module = make_model()
    summary = infer(
        input=str(path),
        model=str(model),
        output=str(tmp_path / "out"),
        device="gpu",
        progress=False,
        tile={"size": [256], "blend": "crop"},
        chunks=[128],
        finalize={"mode": "raw"},
    )
    assert summary.device == "gpu" and summary.actors == 1
    got = zarr.open_array(str(tmp_path / "out" / "img.ome.zarr" / "0"), mode="r")[:]
    np.testing.assert_allclose(got, whole_image_prediction(module, image), rtol=1e-4, atol=1e-3)


def test_gpu_blocks_blend_as_the_numpy_weighted_average(tmp_path, make_model, ome_tiff) -> None:
    """Many blocks through one GPU predictor (read and write tasks around it, tiles on the
    block seams run in both blocks): the gaussian blend of every tile, as in numpy."""
    image = random_image((300, 437), seed=3)
    model, module = make_model()
    summary = infer(
        input=str(ome_tiff(image)),
        model=str(model),
        output=str(tmp_path / "out"),
        device="gpu",
        progress=False,
        tile={"size": [48], "overlap": 0.4, "blend": "gaussian"},
        chunks=[32],
        block=[64],
        finalize={"mode": "raw"},
    )
    assert summary.blocks == 35 and summary.actors == 1
    assert summary.devices and all(" GPU " in d for d in summary.devices), summary.devices
    got = np.asarray(zarr.open_array(str(tmp_path / "out" / "img.ome.zarr" / "0"), mode="r")[:])
    want = numpy_blend(module, image, Tiling.plan(image.shape, (48, 48), 0.4, "gaussian"))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_gpu_half_precision_keeps_the_masks(tmp_path, make_model, ome_tiff, precision) -> None:
    path = ome_tiff(random_image((300, 260)))
    model, _ = make_model()
    probabilities: list[np.ndarray] = []
    for name, keys in (("f32", {}), ("half", {"precision": precision})):
        infer(
            input=str(path),
            model=str(model),
            output=str(tmp_path / name),
            device="gpu",
            chunks=[128],
            tile={"size": [128]},
            progress=False,
            quicklook=False,
            finalize={"mode": "probabilities"},
            **keys,
        )
        out = zarr.open_array(str(tmp_path / name / "img.ome.zarr" / "0"), mode="r")
        probabilities.append(np.asarray(out[:]))
    full, half = probabilities
    assert not np.array_equal(full, half)  # the arithmetic did change
    a, b = full > 0.5, half > 0.5
    assert a.any() and (a & b).sum() / (a | b).sum() >= 0.99
