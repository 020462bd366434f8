"""Masks: where to segment. A one-channel image covering the input's field of view at any
resolution (a tissue mask of a slide's thumbnail, a volume's foreground at a coarse
level, a labels image of the input itself): nonzero marks the pixels to segment.

Each input pixel takes the mask pixel nearest its centre (on every axis, the mask's size
over the input's scales the coordinates). Blocks with no pixel inside skip the model and
keep the fill value; tiles of a block that touch no pixel inside are not run; every pixel
outside is 0 in the output, so the output is the unmasked run's inside the mask and 0
outside it, whichever blocks and tiles ran.

``mask=auto`` finds the foreground of a 2D image on a thumbnail of it (``auto_mask``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from raysegment import storage
from raysegment.data.annotations import box, is_geojson, polygons, rasterize, read_geojson
from raysegment.data.sources import ImageSource, MemorySource, Region, open_sources
from raysegment.data.tiling import inside_box, under_centres
from raysegment.errors import InputImageError

__all__ = ["AUTO", "NAME_FIELD", "Mask", "auto_mask", "geojson_mask", "open_mask"]

NAME_FIELD = "{name}"
"""In ``mask=``, stands for each input's name: ``mask=masks/{name}.tif``."""
AUTO = "auto"
"""``mask=auto``: the mask found on the image itself (``auto_mask``)."""
GEOJSON_RASTER = 4096
"""Longer side, at most, of the mask GeoJSON polygons are drawn into."""
THUMBNAIL = 2048
"""Longer side of the thumbnail ``auto_mask`` thresholds, at most."""
MARGIN = 4
"""Thumbnail pixels the found foreground is widened by (a tissue's faint rim)."""


@dataclass(frozen=True)
class Mask:
    """The mask of one input image, of (z, y, x) size ``image``: ``source``'s pixels
    (None: every pixel), and only those of ``box`` where one is given (an nnU-Net
    training's crop to the image's nonzero box: ``data.nonzero``)."""

    source: ImageSource | None
    image: tuple[int, int, int]
    box: Region | None = None
    grid: tuple[tuple[float, float, int] | None, ...] | None = None
    """Per axis where the input's pixels do not span its field of view evenly (a crop
    resampled alone: ``ResampledSource.grid``), the field of view's voxels (offset, step,
    count): pixel i's centre at offset + (i + 1/2) step of them."""

    def _indices(self, region: Region) -> list[np.ndarray]:
        """Per axis, the mask pixel nearest the centre of each input pixel of ``region``:
        floor((i + 1/2) * m / n), in integers (of the ``grid``'s centres where it has one)."""
        assert self.source is not None
        sizes = self.source.info.shape[2:]
        grid = self.grid or (None,) * 3
        out = []
        for (a, b), n, m, axis in zip(region, self.image, sizes, grid, strict=True):
            if axis is None:
                out.append(under_centres(a, b, n, m))
                continue
            offset, step, count = axis
            centres = offset + (np.arange(a, b) + 0.5) * step
            out.append(np.clip(np.floor(centres * m / count), 0, m - 1).astype(np.int64))
        return out

    def read(self, t: int, region: Region) -> np.ndarray:
        """Inside (bool) for the mask pixels the input's (z, y, x) ``region`` at time ``t``
        takes, at the mask's resolution (``expand`` gives them per input pixel); one
        pixel for all without a ``source``."""
        if self.source is None:
            return np.ones((1, 1, 1), bool)
        span = tuple((int(j[0]), int(j[-1]) + 1) for j in self._indices(region))
        at = t if self.source.info.shape[0] > 1 else 0
        return self.source.read(at, (0,), span)[0] != 0

    def expand(self, native: np.ndarray, region: Region) -> np.ndarray:
        """``read``'s mask pixels as one per input pixel of ``region`` (Z, Y, X)."""
        if self.source is None:
            inside = np.broadcast_to(native, tuple(b - a for a, b in region))
        else:
            indices = self._indices(region)
            inside = native[np.ix_(*(j - j[0] for j in indices))]
        return inside if self.box is None else inside & inside_box(region, self.box)

    def key(self) -> list[object]:
        """What identifies the mask in a run's settings (resuming needs the same): a
        file's path and shape, a mask found here by its pixels too; the box."""
        boxed = [f"box {[list(b) for b in self.box]}"] if self.box is not None else []
        if self.source is None:
            return [f"the nonzero box {[list(b) for b in self.box or ()]}"]
        key: list[object] = [self.source.where, list(self.source.info.shape)]
        if isinstance(self.source, MemorySource):
            key.append(hashlib.sha256(self.source.data.tobytes()).hexdigest())
        return key + boxed


def open_mask(template: str, image: ImageSource) -> Mask:
    """The mask of ``image``: ``template`` with ``{name}`` replaced
    by the image's name, checked to cover it.

    Raises:
        InputImageError: no such mask, one of several channels or images, time points that
            are neither one nor the image's, a z-stack for a 2D image, or y and x scaled
            differently (not the image's field of view).
    """
    path = template.replace(NAME_FIELD, image.name)
    if not storage.exists(storage.resolve(path)):
        hint = f" ({NAME_FIELD} is {image.name})" if NAME_FIELD in template else ""
        raise InputImageError(
            f"mask={path}: no such file or directory for {image.where}{hint}; give a mask "
            f"image (nonzero where to segment) of each input"
        )
    if is_geojson(path):
        return geojson_mask(storage.resolve(path), image)
    sources = open_sources(path)
    if len(sources) > 1:
        raise InputImageError(
            f"mask={path}: holds {len(sources)} images; give a file or zarr of one image"
        )
    source = sources[0]
    t, c, z, y, x = source.info.shape
    it, _, iz, iy, ix = image.info.shape
    *_, oy, ox = image.original.info.shape  # its field of view, as stored
    problem = ""
    if c > 1:
        problem = f"has {c} channels; give a one-channel image (e.g. a labels image)"
    elif t not in (1, it):
        problem = f"has {t} time points, the image {it}; give 1 (for all) or {it}"
    elif z > 1 and iz == 1:
        problem = f"is a stack of {z} planes and the image is 2D; give a 2D mask"
    elif abs(y * ox - x * oy) > ox + oy:
        problem = (
            f"(y {y}, x {x}) is not the field of view of the image (y {oy}, x {ox}): y and x "
            f"scale by {oy / y:.4g} and {ox / x:.4g}; give a mask of the whole image"
        )
    if problem:
        raise InputImageError(f"mask={source.where} for {image.where}: {problem}")
    return Mask(source, (iz, iy, ix))


def geojson_mask(path: str, image: ImageSource) -> Mask:
    """The polygons of a GeoJSON file (``data.annotations``: a QuPath or GIS export), in
    the pixel coordinates of the image's full resolution whichever level is read, as a
    mask: inside where a pixel's centre is inside a polygon. Drawn at the image's
    resolution up to ``GEOJSON_RASTER`` pixels a side, at an integer fraction of it beyond
    (a boundary then within that factor's pixels).

    Raises:
        InputImageError: not JSON, or no polygon in it.
    """
    found = [rings for rings, _ in polygons(read_geojson(path, "mask"))]
    if not found:
        raise InputImageError(
            f"mask={path}: no Polygon or MultiPolygon in it; give the regions to segment "
            f"as polygons (e.g. QuPath annotations exported as GeoJSON)"
        )
    _, _, z, y, x = image.info.shape
    sy, sx = image.level_scale()  # the polygons are in the full resolution's pixels
    factor = max(1, -(-max(y, x) // GEOJSON_RASTER))
    shape = (-(-y // factor), -(-x // factor))
    scale = (sy * y / shape[0], sx * x / shape[1])  # full-resolution pixels per mask pixel
    inside = np.zeros(shape, bool)
    for rings in found:
        bounds = box(rings, scale)
        if bounds is None:
            continue
        # Drawn in its box only: a file of thousands of small regions, not a whole raster each.
        top, left = max(0, math.floor(bounds[0])), max(0, math.floor(bounds[1]))
        bottom, right = min(shape[0], math.ceil(bounds[2])), min(shape[1], math.ceil(bounds[3]))
        if bottom > top and right > left:
            window = (bottom - top, right - left)
            inside[top:bottom, left:right] |= rasterize(rings, scale, (top, left), window)
    source = MemorySource(inside.astype(np.uint8)[None, None, None], path, image.name)
    return Mask(source, (z, y, x))


def auto_mask(image: ImageSource, channels: tuple[int, ...]) -> tuple[Mask, np.ndarray]:
    """The foreground of a 2D ``image`` as its mask, and that mask (bool, thumbnail size).

    On a thumbnail of at most ``THUMBNAIL`` pixels a side (the coarsest level of the
    image's pyramid that has as many, else the full resolution's maximum over windows, so
    that an object smaller than a window still shows), Otsu's threshold (``_otsu``) of:
    the saturation where ``channels`` are the three of an 8-bit RGB image (a stained
    tissue against white glass), else the log intensity of the first channel (signal
    brighter than the background); then widened by ``MARGIN`` pixels.

    Raises:
        InputImageError: a z-stack or a time series (no one plane tells their foreground).
    """
    from scipy import ndimage

    t, _, z, y, x = image.info.shape
    if t > 1 or z > 1:
        raise InputImageError(
            f"mask=auto: {image.where} has {t} time point(s) and {z} plane(s); it finds the "
            f"foreground of 2D images: give a mask image (mask=...)"
        )
    rgb = len(channels) == 3 and image.info.dtype == np.uint8
    shown = channels if rgb else channels[:1]
    stored = image.original  # a resampled image's thumbnail from its own pixels or pyramid
    if rgb:
        # Saturation per pixel before any window's maximum: of each pixel's own colour.
        def saturation(pixels: np.ndarray) -> np.ndarray:
            high, low = pixels.max(axis=0), pixels.min(axis=0).astype(np.float32)
            return ((high - low) / np.maximum(high, 1))[None]

        value = _thumbnail(stored, shown, saturation)[0]
    else:
        thumb = _thumbnail(stored, shown)
        # The log: a bright few (debris, a saturated cell) leave the threshold below the
        # dim many; shifted only where values go below 0.
        value = np.log1p(thumb[0] - min(float(thumb[0].min()), 0.0))
    found = np.ones(value.shape, bool)  # a uniform image: nothing to tell apart, all in
    if value.max() > value.min():
        found = ndimage.binary_dilation(value > _otsu(value), iterations=MARGIN)
    data = found.astype(np.uint8)[None, None, None]
    source = MemorySource(data, f"mask=auto of {image.where}", f"{image.name}_mask")
    return Mask(source, (z, y, x)), found


def _otsu(value: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``value``: where the between-class variance of its histogram is
    largest, in the middle of the range where it is (two classes apart by a gap: the
    middle of the gap, not its lower edge, where the top of the lower class lies)."""
    counts, edges = np.histogram(value, bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = counts.sum() - w0
    m0 = np.cumsum(counts * centers)[:-1]
    m1 = (counts * centers).sum() - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.nan_to_num(w0 * w1 * (m0 / w0 - m1 / w1) ** 2)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def _thumbnail(
    image: ImageSource,
    channels: tuple[int, ...],
    per_pixel: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """``channels`` of ``image`` (2D; ``per_pixel`` of them, (C, Y, X) -> (C', Y, X)) at
    most ``THUMBNAIL`` pixels a side, float32: a pyramid level's pixels, or each window's
    maximum."""
    level = image
    stored = image.levels if image.stored_levels else 1  # levels read, not computed
    for k in range(stored - 1, 0, -1):  # the coarsest level that is large enough
        reduced = image.at_level(k)
        if max(reduced.info.shape[3:]) >= THUMBNAIL // 2:
            level = reduced
            break
    y, x = level.info.shape[3:]
    step = max(1, -(-max(y, x) // THUMBNAIL))
    band = step * max(1, 1024 // step)  # rows read at a time, a multiple of the window
    rows = []
    for y0 in range(0, y, band):
        pixels = level.read(0, channels, ((0, 1), (y0, min(y0 + band, y)), (0, x)))[:, 0]
        pixels = per_pixel(pixels) if per_pixel else pixels.astype(np.float32)
        c, h, w = pixels.shape
        pad = ((0, 0), (0, -h % step), (0, -w % step))
        pixels = np.pad(pixels, pad, mode="edge")  # the last window's maximum unchanged
        rows.append(pixels.reshape(c, -(-h // step), step, -(-w // step), step).max(axis=(2, 4)))
    return np.concatenate(rows, axis=1)
