"""Per-object and per-image statistics of a labels image, block by block.

Sums (pixels, coordinates, intensity) and bounding boxes are gathered per block and
added up, so objects crossing block seams are measured whole; shape (perimeter in 2D,
surface area in 3D) is measured on each object's bounding box, by the block where the box
starts. Matches ``skimage.measure.regionprops`` on the whole image (area, centroid, bbox,
intensity_mean, perimeter).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysegment.data.tiling import Grid
from raysegment.post.instances import Mapper, Volume, _serial

__all__ = ["ObjectTable", "measure", "write_csv"]

Intensity = Callable[[tuple[slice, ...]], np.ndarray]
"""Reads the input's intensity over a spatial region of the labels image."""


@dataclass
class ObjectTable:
    """Columns indexed by label (row 0 = background, unused)."""

    pixels: np.ndarray
    coord_sums: np.ndarray
    """(labels, spatial axes)."""
    low: np.ndarray
    high: np.ndarray
    """Bounding box: first and one-past-last pixel per axis."""
    intensity: np.ndarray
    shape: np.ndarray
    """Perimeter (2D, pixels) or surface area (3D, physical units)."""

    @classmethod
    def empty(cls, n: int, dims: int) -> ObjectTable:
        big = np.iinfo(np.int64).max
        return cls(
            np.zeros(n + 1, np.int64),
            np.zeros((n + 1, dims)),
            np.full((n + 1, dims), big, np.int64),
            np.zeros((n + 1, dims), np.int64),
            np.zeros(n + 1),
            np.zeros(n + 1),
        )


def _sums(
    vol: Volume, grid: Grid, index: tuple[int, ...], array: str, n: int, intensity: Intensity
) -> ObjectTable:
    region = grid.inner(index)
    labels = vol.read(array, region).ravel()
    table = ObjectTable.empty(n, len(region))
    if not labels.any():
        return table
    table.pixels = np.bincount(labels, minlength=n + 1)
    coords = np.indices([s.stop - s.start for s in region]).reshape(len(region), -1)
    present = table.pixels > 0
    for axis, s in enumerate(region):
        c = coords[axis] + s.start
        table.coord_sums[:, axis] = np.bincount(labels, weights=c, minlength=n + 1)
        low = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(low, labels, c)
        high = np.zeros(n + 1, np.int64)
        np.maximum.at(high, labels, c + 1)
        table.low[:, axis] = np.where(present, low, table.low[:, axis])
        table.high[:, axis] = high
    values = intensity(region).ravel().astype(np.float64)
    table.intensity = np.bincount(labels, weights=values, minlength=n + 1)
    return table


def _shape_of(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    from skimage import measure

    if mask.ndim == 2:
        return float(measure.perimeter(mask, 4))
    padded = np.pad(mask, 1).astype(np.float32)
    verts, faces, _, _ = measure.marching_cubes(padded, 0.5, spacing=spacing)
    return float(measure.mesh_surface_area(verts, faces))


def _shapes(
    vol: Volume,
    array: str,
    boxes: list[tuple[int, tuple[int, ...], tuple[int, ...]]],
    spacing: tuple[float, ...],
) -> list[tuple[int, float]]:
    out = []
    for label, low, high in boxes:
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        out.append((label, _shape_of(vol.read(array, box) == label, spacing)))
    return out


def measure(
    vol: Volume,
    grid: Grid,
    array: str,
    n: int,
    intensity: Intensity,
    spacing: tuple[float, ...],
    run: Mapper = _serial,
) -> ObjectTable:
    """Statistics of labels 1 .. ``n`` of the zarr array ``array`` (one time point of
    ``vol``). ``spacing``: physical pixel size per spatial axis."""
    indices = list(grid.indices())
    total = ObjectTable.empty(n, len(grid.shape))
    for part in run(_sums, [(vol, grid, i, array, n, intensity) for i in indices]):
        total.pixels += part.pixels
        total.coord_sums += part.coord_sums
        total.low = np.minimum(total.low, part.low)
        total.high = np.maximum(total.high, part.high)
        total.intensity += part.intensity
    owners: dict[tuple[int, ...], list[Any]] = {}
    for label in range(1, n + 1):
        if total.pixels[label]:
            low, high = tuple(total.low[label].tolist()), tuple(total.high[label].tolist())
            owner = tuple(a // b for a, b in zip(low, grid.block, strict=True))
            owners.setdefault(owner, []).append((label, low, high))
    calls = [(vol, array, boxes, spacing) for boxes in owners.values()]
    for measured in run(_shapes, calls):
        for label, value in measured:
            total.shape[label] = value
    return total


def _roundness(pixels: float, shape: float, dims: int, volume: float) -> float:
    """Circularity 4 pi A / P^2 (2D, pixels) or sphericity pi^(1/3) (6 V)^(2/3) / S (3D)."""
    if shape <= 0:
        return float("nan")
    if dims == 2:
        return 4 * math.pi * pixels / shape**2
    return math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / shape


def write_csv(
    table: ObjectTable,
    axes: str,
    spacing: tuple[float, ...],
    unit: str,
    t: int,
    image_pixels: int,
) -> tuple[str, dict[str, float]]:
    """The objects of one time point as CSV rows (with a header) and the image's totals."""
    dims = len(axes)
    voxel = float(np.prod(spacing))
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["t", "label", "pixels", f"volume_{unit}^{dims}"]
    header += [f"centroid_{a}" for a in axes] + [f"centroid_{a}_{unit}" for a in axes]
    header += [f"bbox_{a}_min" for a in axes] + [f"bbox_{a}_max" for a in axes]
    header += ["circularity" if dims == 2 else "sphericity", "mean_intensity"]
    writer.writerow(header)
    labels = np.flatnonzero(table.pixels)
    labels = labels[labels > 0]
    for label in labels.tolist():
        pixels = int(table.pixels[label])
        centroid = table.coord_sums[label] / pixels
        volume = pixels * voxel
        row: list[Any] = [t, label, pixels, round(volume, 6)]
        row += [round(float(c), 4) for c in centroid]
        row += [round(float(c) * s, 6) for c, s in zip(centroid, spacing, strict=True)]
        row += table.low[label].tolist() + (table.high[label] - 1).tolist()
        row += [round(_roundness(pixels, table.shape[label], dims, volume), 6)]
        row += [round(float(table.intensity[label]) / pixels, 6)]
        writer.writerow(row)
    labelled = int(table.pixels[1:].sum())
    totals = {
        "t": t,
        "pixels": image_pixels,
        f"volume_{unit}^{dims}": image_pixels * voxel,
        f"labelled_volume_{unit}^{dims}": labelled * voxel,
        "filling_ratio": labelled / image_pixels if image_pixels else 0.0,
        "objects": len(labels),
    }
    return out.getvalue(), totals
