"""The opt-in fast path (bfloat16 autocast, channels-last) keeps the masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from raysegment.infer import infer
from tests.conftest import random_image

pytestmark = pytest.mark.usefixtures("ray_session")


def test_bfloat16_channels_last_masks_agree_with_float32(tmp_path: Path, make_model, ome_tiff):
    image = ome_tiff(random_image((300, 260)))
    model, _ = make_model()
    masks: list[np.ndarray] = []
    for name, fast in (("f32", {}), ("bf16", {"precision": "bfloat16", "channels_last": True})):
        infer(
            input=str(image),
            model=str(model),
            output=str(tmp_path / name),
            chunks=[128],
            tile={"size": [128]},
            progress=False,
            quicklook=False,
            finalize={"mode": "probabilities"},
            **fast,
        )
        masks.append(np.asarray(zarr.open_array(str(tmp_path / name / "img.ome.zarr" / "0"))[:]))
    assert not np.array_equal(masks[0], masks[1])  # the arithmetic did change
    a, b = (m > 0.5 for m in masks)
    assert a.any() and (a & b).sum() / (a | b).sum() >= 0.99
