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


def covered(geometry: dict, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of a (y, x) image whose centres lie inside a GeoJSON polygon or
    multipolygon (inside its outer ring, outside its holes)."""
    from skimage.measure import points_in_poly

    y, x = np.indices(shape)
    centres = np.stack([x.ravel() + 0.5, y.ravel() + 0.5], axis=1)
    polygons = geometry["coordinates"]
    polygons = [polygons] if geometry["type"] == "Polygon" else polygons
    inside = np.zeros(len(centres), bool)
    for outer, *holes in polygons:
        part = points_in_poly(centres, np.asarray(outer))
        for hole in holes:
            part &= ~points_in_poly(centres, np.asarray(hole))
        inside |= part
    return inside.reshape(shape)


def _turn(ring: list[list[float]]) -> float:
    """Twice the signed area of a ring with y up: > 0 counter-clockwise."""
    x, y = np.asarray(ring).T
    return float(np.dot(x[:-1], -y[1:]) - np.dot(x[1:], -y[:-1]))


def test_outlines_hold_exactly_their_objects_pixel_centres() -> None:
    """Each object's polygons: its pixels' centres inside, every other centre outside,
    holes and parts included; rings closed, outer ones counter-clockwise, holes clockwise
    (GeoJSON's rule, y up)."""
    from raysegment.post.stats import outline

    rng = np.random.default_rng(3)
    labels, n = ndimage.label(ndimage.gaussian_filter(rng.random((60, 70)), 1.5) > 0.53)
    labels[0:9, 40:49] = n + 1  # a ring, its hole a 3 x 3 square, at the image's edge
    labels[3:6, 43:46] = 0
    labels[30, 5], labels[31, 6] = n + 2, n + 2  # two pixels touching at a corner
    labels[50:53, 60:63], labels[56:58, 66:69] = n + 3, n + 3  # one object in two parts
    labels[45, 0] = n + 4  # a single pixel
    labels[40:59, 20:39] = n + 5  # a ring around an island that has a hole of its own
    labels[43:56, 23:36] = 0
    labels[46:53, 26:33] = n + 5
    labels[49, 29] = 0
    for label in range(1, n + 6):
        ys, xs = np.nonzero(labels == label)
        if not len(ys):
            continue
        low, high = (ys.min(), xs.min()), (ys.max() + 1, xs.max() + 1)
        mask = labels[low[0] : high[0], low[1] : high[1]] == label
        polygons = outline(mask, low)
        geometry = {"type": "MultiPolygon", "coordinates": polygons}
        np.testing.assert_array_equal(covered(geometry, labels.shape), labels == label)
        for outer, *holes in polygons:
            assert all(ring[0] == ring[-1] for ring in [outer, *holes])
            assert _turn(outer) > 0 and all(_turn(hole) < 0 for hole in holes)
    # The square ring and its hole: 8 corners each (cut at 45 degrees), closed; no point
    # on their straight runs.
    assert [len(r) for p in outline(labels[0:9, 40:49] == n + 1, (0, 40)) for r in p] == [9, 9]
    assert len(outline(labels[50:58, 60:69] == n + 3, (50, 60))) == 2  # the two parts
    assert len(outline(labels[30:32, 5:7] == n + 2, (30, 5))) == 1  # one, at the corner
    # A reduced level's outline in the full resolution's pixels: its coordinates scaled.
    scaled = outline(labels[40:59, 20:39] == n + 5, (40, 20), (2.0, 3.0))
    plain = outline(labels[40:59, 20:39] == n + 5, (40, 20))
    assert scaled == [[[[3 * x, 2 * y] for x, y in r] for r in p] for p in plain]
    nested = outline(labels[40:59, 20:39] == n + 5, (40, 20))
    assert sorted(len(polygon) for polygon in nested) == [2, 2]  # each part its own hole
