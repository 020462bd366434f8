"""Block-wise statistics == regionprops on the whole image; sphericity of known shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage
from skimage.measure import regionprops

from raysegment.data.tiling import Grid
from raysegment.post.instances import Volume
from raysegment.post.stats import _shape_of, measure, write_csv


def test_3d_objects_across_seams_match_regionprops(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels, _ = ndimage.label(ndimage.gaussian_filter(rng.random((30, 41, 37)), 2) > 0.52)
    labels = labels.astype(np.uint32)
    intensity = rng.random(labels.shape).astype(np.float32)
    path = str(tmp_path / "labels.zarr")
    zarr.create_array(path, data=labels[None], chunks=(1, 8, 8, 8))
    grid = Grid(labels.shape, (8, 8, 8))
    vol = Volume("", "czyx", 0, None, 1)
    n = int(labels.max())
    table = measure(vol, grid, path, n, lambda r: intensity[r], (2.0, 1.0, 1.0))
    props = regionprops(labels, intensity_image=intensity)
    assert n > 5 and any(p.bbox[3] - p.bbox[0] > 8 for p in props)  # some cross seams
    for p in props:
        assert table.pixels[p.label] == p.area
        np.testing.assert_allclose(table.coord_sums[p.label] / p.area, p.centroid)
        assert tuple(table.low[p.label]) + tuple(table.high[p.label]) == p.bbox
        assert table.intensity[p.label] / p.area == pytest.approx(p.intensity_mean, rel=1e-5)
    text, image = write_csv(table, "zyx", (2.0, 1.0, 1.0), "micrometer", 0, labels.size)
    assert len(text.strip().splitlines()) == n + 1
    assert image["objects"] == n and image["volume_micrometer^3"] == labels.size * 2.0


def test_sphericity_of_a_ball_and_a_rod() -> None:
    z, y, x = np.indices((31, 31, 31)) - 15
    ball = z**2 + y**2 + x**2 <= 12**2
    rod = np.zeros((31, 31, 31), bool)
    rod[2:29, 14:17, 14:17] = True
    roundness = []
    for mask in (ball, rod):
        area = _shape_of(mask, (1.0, 1.0, 1.0))
        volume = float(mask.sum())
        roundness.append(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area)
    assert roundness[0] > 0.9 and roundness[1] < 0.7  # a 27 x 3 x 3 cuboid: 0.55
