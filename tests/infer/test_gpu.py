"""GPU runs: skipped where CUDA is not available (CI has no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from raysegment.infer import infer
from tests.conftest import random_image, whole_image_prediction

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
