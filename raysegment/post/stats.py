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
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.data.tiling import Grid
from raysegment.post.instances import Mapper, Volume, _serial

__all__ = ["ObjectTable", "measure", "outline", "write_csv"]

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
    outlines: list[str] = field(default_factory=list)
    """Files of the objects' GeoJSON features (``measure``'s ``outlines``), in block order."""

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


def outline(
    mask: np.ndarray, low: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)
) -> list[list[list[list[float]]]]:
    """The outline of a 2D object (``mask``, its bounding box from pixel ``low``) as
    GeoJSON polygon coordinates, [x, y] in pixels of the whole image (pixel (0, 0) covers
    [0, 1) x [0, 1)), times ``scale`` (y, x): one polygon per part, each its outer ring
    then its holes, closed.
    The rings run between pixel centres inside and outside (marching squares at 0.5,
    diagonal neighbours inside joined), so a pixel's centre lies inside exactly when the
    pixel is the object's; outer rings run counter-clockwise, holes clockwise (y up)."""
    from skimage import measure

    padded = np.pad(mask, 1).astype(np.float32)
    rings = []
    for contour in measure.find_contours(padded, 0.5, fully_connected="high"):
        # (row, column) of the padded box -> (x, y) of the image, at pixel centres + 0.5.
        xy = _corners(contour[:, ::-1] + (low[1] - 0.5, low[0] - 0.5))
        x, y = xy[:, 0], xy[:, 1]
        area = 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
        rings.append((area, xy))
    # Around the object the rings turn one way in image coordinates (y down), around its
    # holes the other; the object's own turn is its largest ring's.
    sign = np.sign(max(rings, key=lambda r: abs(r[0]))[0]) if rings else 1.0
    outer = sorted(((abs(a), xy) for a, xy in rings if np.sign(a) == sign), key=lambda r: r[0])
    holes = [xy for area, xy in rings if np.sign(area) != sign]
    polygons: list[list[np.ndarray]] = [[xy] for _, xy in outer]
    for hole in holes:
        # The smallest outer ring around it: a part of the object inside another part's
        # hole may have holes of its own.
        for polygon in polygons:
            if measure.points_in_poly(hole[:1], polygon[0])[0]:
                polygon.append(hole)
                break
    # With y down, a ring whose shoelace area is positive runs clockwise with y up: outer
    # rings turned the other way, holes this way.
    to_image = np.asarray([scale[1], scale[0]])
    return [
        [((ring[::-1] if sign > 0 else ring) * to_image).round(3).tolist() for ring in p]
        for p in polygons
    ]


def _corners(ring: np.ndarray) -> np.ndarray:
    """A closed ring without the points on straight runs between its corners (marching
    squares puts one at every pixel edge; the coordinates are multiples of 0.5, exact)."""
    points = ring[:-1]
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    kept = points[turn != 0]
    return np.concatenate([kept, kept[:1]])


def _feature(label: int, t: int, measurements: dict[str, float], polygons: list[Any]) -> str:
    """One object as a GeoJSON feature: QuPath reads ``objectType`` and shows
    ``measurements`` in its tables."""
    geometry = (
        {"type": "Polygon", "coordinates": polygons[0]}
        if len(polygons) == 1
        else {"type": "MultiPolygon", "coordinates": polygons}
    )
    properties = {"objectType": "detection", "label": label, "t": t, "measurements": measurements}
    feature = {"type": "Feature", "id": f"{t}-{label}", "geometry": geometry}
    return json.dumps(feature | {"properties": properties}, separators=(",", ":"))


Box = tuple[int, tuple[int, ...], tuple[int, ...], int, float]
"""An object to measure: label, bounding box (low, high), pixels, mean intensity."""


def _shapes(
    vol: Volume,
    array: str,
    boxes: list[Box],
    spacing: tuple[float, ...],
    outlines: str | None = None,
    unit: str = "pixel",
    scale: tuple[float, float] = (1.0, 1.0),
) -> list[tuple[int, float]]:
    """The shape measure of each object of ``boxes`` and, with ``outlines`` (2D), their
    GeoJSON features written there, one per line, with the CSV's measurements (area in
    ``unit``)."""
    out, features = [], []
    for label, low, high, pixels, mean in boxes:
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        mask = vol.read(array, box) == label
        shape = _shape_of(mask, spacing)
        out.append((label, shape))
        if outlines is not None:
            area = pixels * float(np.prod(spacing))
            measurements = {
                "pixels": pixels,
                f"area_{unit}^2": round(area, 6),
                "circularity": round(_roundness(pixels, shape, 2, area), 6),
                "mean_intensity": round(mean, 6),
            }
            polygons = outline(mask, (low[0], low[1]), scale)
            features.append(_feature(label, vol.t, measurements, polygons))
    if outlines is not None:
        storage.write_bytes(outlines, "".join(f + "\n" for f in features).encode())
    return out


def measure(
    vol: Volume,
    grid: Grid,
    array: str,
    n: int,
    intensity: Intensity,
    spacing: tuple[float, ...],
    run: Mapper = _serial,
    outlines: str | None = None,
    unit: str = "pixel",
    scale: tuple[float, float] = (1.0, 1.0),
    void: frozenset[tuple[int, ...]] = frozenset(),
) -> ObjectTable:
    """Statistics of labels 1 .. ``n`` of the zarr array ``array`` (one time point of
    ``vol``). ``spacing``: physical pixel size per spatial axis. ``outlines`` (2D): a
    directory that gets the objects' GeoJSON features, a file per block that owns some
    (``<block>.jsonl``, one feature a line; listed in the table's ``outlines``), areas in
    ``unit``, coordinates times ``scale`` (y, x: a reduced level's in the full
    resolution's pixels); ``void``: blocks without labels, not read."""
    indices = [i for i in grid.indices() if i not in void]
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
            pixels = int(total.pixels[label])
            mean = float(total.intensity[label]) / pixels
            owners.setdefault(owner, []).append((label, low, high, pixels, mean))
    calls = []
    for owner, boxes in sorted(owners.items()):
        found = outlines and storage.join(outlines, "_".join(map(str, owner)) + ".jsonl")
        calls.append((vol, array, boxes, spacing, found, unit, scale))
        total.outlines += [found] if found else []
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
    origin: tuple[float, ...] | None = None,
) -> tuple[str, dict[str, float]]:
    """The objects of one time point as CSV rows (with a header) and the image's totals;
    physical centroids from the image's ``origin`` (per axis; 0 by default), as the
    output's translation places it."""
    dims = len(axes)
    origin = origin or (0.0,) * dims
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
        row += [
            round(o + float(c) * s, 6) for c, s, o in zip(centroid, spacing, origin, strict=True)
        ]
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
