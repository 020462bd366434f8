"""Instance segmentation of a finished output, block by block, for images of any size.

Three methods, each defined on the whole image by ``segment`` (the reference) and
computed block-wise by ``segment_blocks``:

- ``connected_components``: foreground (probability > ``threshold``) components.
- ``watershed``: seeds are components of probability > ``seed_threshold`` with at least
  ``min_seed_size`` pixels; the foreground is flooded from them over the inverted
  probability.
- ``voronoi_otsu``: the probability blurred with ``outline_sigma`` and cut at its Otsu
  threshold is the foreground; local maxima of the probability blurred with
  ``spot_sigma`` inside it are the seeds (one per blob); the foreground is split between
  them by flooding the inverted spot-blurred probability.

Then objects under ``min_size`` pixels are removed. Connectivity is 1 (faces) throughout.

Block-wise: per-pixel quantities (thresholds, blurs, maxima) are computed with a halo
that makes them exact; components are labelled per block and merged across block faces
with a union-find, so an object crossing seams gets one label and labels are unique in the
image; the Otsu threshold comes from a histogram summed over blocks. Flooding is exact for
objects whose flooding stays within ``halo`` pixels of the block that owns each pixel
(seeds beyond it are not seen).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from raysegment.config import InstancesConfig
from raysegment.data.tiling import Grid
from raysegment.registry import Registry

__all__ = ["METHODS", "Volume", "segment", "segment_blocks"]

_BINS = 256


def _gaussian_radius(sigma: float) -> int:
    return int(4.0 * sigma + 0.5)  # scipy.ndimage.gaussian_filter with truncate=4


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma) if sigma > 0 else x


def _maxima(spots: np.ndarray) -> np.ndarray:
    """Pixels no lower than any neighbour in their 3 x 3 (x 3) window."""
    return spots >= ndimage.maximum_filter(spots, size=3)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask)
    return labels.astype(np.uint32), int(n)


def _keep_sizes(labels: np.ndarray, minimum: int) -> np.ndarray:
    if minimum <= 1:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < minimum
    small[0] = False
    return np.where(small[labels], 0, labels).astype(labels.dtype)


def _flood(elevation: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import watershed

    if not seeds.any():
        return np.zeros(seeds.shape, np.uint32)
    return watershed(elevation, markers=seeds, mask=mask).astype(np.uint32)


def _otsu(counts: np.ndarray, low: float, high: float) -> float:
    from skimage.filters import threshold_otsu

    if high <= low:
        return low
    edges = np.linspace(low, high, _BINS + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    return float(threshold_otsu(hist=(counts, centers)))


def _histogram(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.histogram(x, bins=_BINS, range=(low, high))[0]


# What a method needs per pixel, computable on a region with enough halo:
# (foreground probability, cfg, otsu threshold) -> (mask, seed pixels, flooding elevation)
Pixelwise = Callable[[np.ndarray, InstancesConfig, float], tuple[np.ndarray, Any, Any]]


@dataclass(frozen=True)
class Method:
    pixelwise: Pixelwise
    floods: bool
    """Seeds flood the mask (else the mask's components are the objects)."""
    halo: Callable[[InstancesConfig], int]
    """Pixels of context the per-pixel step needs."""
    otsu: bool = False


METHODS: Registry[Method] = Registry("instances.method")


def _cc(fg: np.ndarray, cfg: InstancesConfig, _: float) -> tuple[np.ndarray, Any, Any]:
    return fg > cfg.threshold, None, None


def _ws(fg: np.ndarray, cfg: InstancesConfig, _: float) -> tuple[np.ndarray, Any, Any]:
    return fg > cfg.threshold, fg > cfg.seed_threshold, -fg


def _vo(fg: np.ndarray, cfg: InstancesConfig, otsu: float) -> tuple[np.ndarray, Any, Any]:
    mask = _blur(fg, cfg.outline_sigma) > otsu
    spots = _blur(fg, cfg.spot_sigma)
    # Flooding the inverted spots (not a flat image, as a pure Voronoi split would): the
    # borders follow the valleys between spots, and no two seeds start level, which would
    # leave the split to the flooding queue's internal order (different in every crop).
    return mask, _maxima(spots) & mask, -spots


METHODS.register("connected_components")(Method(_cc, False, lambda c: 0))
METHODS.register("watershed")(Method(_ws, True, lambda c: 0))
METHODS.register("voronoi_otsu")(
    Method(
        _vo,
        True,
        lambda c: max(_gaussian_radius(c.spot_sigma) + 1, _gaussian_radius(c.outline_sigma)),
        otsu=True,
    )
)


def segment(fg: np.ndarray, cfg: InstancesConfig) -> np.ndarray:
    """The method on a whole image at once: ``fg`` (spatial) foreground probability ->
    uint32 labels (0 = background)."""
    method = METHODS.get(cfg.method.value)
    otsu = 0.0
    if method.otsu:
        blurred = _blur(fg, cfg.outline_sigma)
        low, high = float(blurred.min()), float(blurred.max())
        otsu = _otsu(_histogram(blurred, low, high), low, high)
    mask, seeds, elevation = method.pixelwise(fg, cfg, otsu)
    if not method.floods:
        return _keep_sizes(_components(mask)[0], cfg.min_size)
    markers = _keep_sizes(_components(seeds)[0], cfg.min_seed_size)
    return _keep_sizes(_flood(elevation, markers, mask), cfg.min_size)


class Volume:
    """One time point of an output: reads its foreground probability, reads and writes
    label arrays (level 0 of the labels image, or a scratch array for seeds). The zarr
    arrays are opened in whichever process runs a block."""

    def __init__(self, output: str, axes: str, t: int, channel: int | None, channels: int) -> None:
        self.output, self.axes, self.t = output, axes, t
        self.channel, self.channels = channel, channels

    def _index(self, region: tuple[slice, ...], channel: Any) -> tuple[Any, ...]:
        spatial = iter(region)
        pick = {"t": self.t, "c": channel}
        return tuple(pick[a] if a in pick else next(spatial) for a in self.axes)

    def foreground(self, region: tuple[slice, ...]) -> np.ndarray:
        """Probability of foreground: the chosen channel, or 1 - channel 0 (background),
        0 where every channel is 0: a block the model did not run on (constant input,
        outside the mask) keeps the fill value, which no softmax gives."""
        import zarr

        array = zarr.open_array(f"{self.output}/0", mode="r")
        if self.channel is not None or self.channels == 1:
            c = self.channel or 0
            return np.asarray(array[self._index(region, c)], np.float32)
        background = np.asarray(array[self._index(region, 0)], np.float32)
        unset = background == 0
        if unset.any():
            others = np.asarray(array[self._index(region, slice(1, None))])
            unset &= ~others.any(axis=0)
        return np.where(unset, np.float32(0), 1 - background)

    def read(self, array: str, region: tuple[slice, ...]) -> np.ndarray:
        import zarr

        data = zarr.open_array(array, mode="r")[self._index(region, 0)]
        return np.asarray(data, np.uint32)

    def write(self, array: str, region: tuple[slice, ...], data: np.ndarray) -> None:
        import zarr

        zarr.open_array(array, mode="r+")[self._index(region, 0)] = data


# --- block steps (each runs anywhere; results are small) ---------------------------------


def _extremes(vol: Volume, grid: Grid, index: tuple[int, ...], cfg: InstancesConfig) -> tuple:
    outer, within = grid.outer(index, _gaussian_radius(cfg.outline_sigma))
    blurred = _blur(vol.foreground(outer), cfg.outline_sigma)[within]
    return float(blurred.min()), float(blurred.max())


def _block_histogram(
    vol: Volume, grid: Grid, index: tuple[int, ...], cfg: InstancesConfig, low: float, high: float
) -> np.ndarray:
    outer, within = grid.outer(index, _gaussian_radius(cfg.outline_sigma))
    return _histogram(_blur(vol.foreground(outer), cfg.outline_sigma)[within], low, high)


@dataclass(frozen=True)
class _Local:
    """One block's components: their count and sizes, and their labels on the block's
    faces (low and high along each axis), for merging across seams."""

    index: tuple[int, ...]
    count: int
    sizes: np.ndarray
    faces: list[tuple[np.ndarray, np.ndarray]]


def _label_block(
    vol: Volume, grid: Grid, index: tuple[int, ...], cfg: InstancesConfig, otsu: float, out: str
) -> _Local:
    """Components of the mask (or of the seeds) in one block, written to ``out`` with
    block-local ids."""
    method = METHODS.get(cfg.method.value)
    outer, within = grid.outer(index, method.halo(cfg))
    mask, seeds, _ = method.pixelwise(vol.foreground(outer), cfg, otsu)
    labels, count = _components((seeds if method.floods else mask)[within])
    vol.write(out, grid.inner(index), labels)
    faces = [(np.take(labels, 0, axis=a), np.take(labels, -1, axis=a)) for a in range(labels.ndim)]
    return _Local(index, count, np.bincount(labels.ravel(), minlength=count + 1), faces)


def _relabel_block(
    vol: Volume, grid: Grid, index: tuple[int, ...], table: np.ndarray, array: str
) -> None:
    region = grid.inner(index)
    vol.write(array, region, table[vol.read(array, region)])


def _flood_block(
    vol: Volume,
    grid: Grid,
    index: tuple[int, ...],
    cfg: InstancesConfig,
    otsu: float,
    seeds: str,
    out: str,
) -> dict[int, int]:
    """Flood one block from the (global) seeds within ``cfg.halo`` of it into ``out``;
    returns the block's object sizes by label."""
    method = METHODS.get(cfg.method.value)
    outer, within = grid.outer(index, cfg.halo)
    context, _ = grid.outer(index, cfg.halo + method.halo(cfg))
    # Per-pixel quantities on a larger region, exact on ``outer``.
    crop = tuple(
        slice(o.start - c.start, o.stop - c.start) for o, c in zip(outer, context, strict=True)
    )
    mask, _, elevation = method.pixelwise(vol.foreground(context), cfg, otsu)
    markers = np.where(mask[crop], vol.read(seeds, outer), 0)
    labels = _flood(elevation[crop], markers, mask[crop])[within]
    vol.write(out, grid.inner(index), labels)
    return _sizes(labels)


def _nothing(grid: Grid, index: tuple[int, ...]) -> _Local:
    """What ``_label_block`` finds in a block of foreground 0: no component (its faces
    of zeros shared by every such block of that shape)."""
    shape = tuple(s.stop - s.start for s in grid.inner(index))
    faces = []
    for axis in range(len(shape)):
        face = _zeros(shape[:axis] + shape[axis + 1 :])
        faces.append((face, face))
    return _Local(index, 0, np.array([math.prod(shape)]), faces)


@functools.cache
def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    face = np.zeros(shape, np.uint32)
    face.flags.writeable = False
    return face


def _sizes(labels: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


# --- driver -----------------------------------------------------------------------------


def _find(parent: dict[int, int], a: int) -> int:
    while parent.get(a, a) != a:
        parent[a] = parent.get(parent[a], parent[a])
        a = parent[a]
    return a


def _merge(grid: Grid, blocks: dict[tuple[int, ...], _Local], minimum: int) -> dict:
    """Union block-local components that touch across block faces; returns, per block, a
    table from local id to global id (0 for components under ``minimum`` pixels)."""
    offsets: dict[tuple[int, ...], int] = {}
    total = 0
    for index in grid.indices():
        offsets[index] = total
        total += blocks[index].count
    parent: dict[int, int] = {}
    for index in grid.indices():
        for axis in range(len(grid.shape)):
            nxt = tuple(i + (a == axis) for a, i in enumerate(index))
            if nxt[axis] >= grid.counts[axis]:
                continue
            high = blocks[index].faces[axis][1]
            low = blocks[nxt].faces[axis][0]
            touch = (high > 0) & (low > 0)
            pairs = np.unique(np.stack([high[touch], low[touch]]), axis=1)
            for a, b in pairs.T.tolist():
                ra, rb = _find(parent, offsets[index] + a), _find(parent, offsets[nxt] + b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    sizes: dict[int, int] = {}
    roots: dict[tuple[int, ...], np.ndarray] = {}
    for index in grid.indices():
        local = blocks[index]
        ids = np.array([_find(parent, offsets[index] + i) for i in range(1, local.count + 1)])
        roots[index] = ids
        for root, size in zip(ids.tolist(), local.sizes[1:].tolist(), strict=True):
            sizes[root] = sizes.get(root, 0) + size
    kept = sorted(r for r, s in sizes.items() if s >= max(minimum, 1))
    number = {r: i + 1 for i, r in enumerate(kept)}
    return {
        index: np.array([0] + [number.get(r, 0) for r in ids.tolist()], np.uint32)
        for index, ids in roots.items()
    }


Mapper = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]


def _serial(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in calls]


def halo(cfg: InstancesConfig) -> int:
    """Pixels around a block that any step of ``segment_blocks`` reads for it."""
    return cfg.halo + METHODS.get(cfg.method.value).halo(cfg) + _gaussian_radius(cfg.outline_sigma)


def segment_blocks(
    vol: Volume,
    grid: Grid,
    cfg: InstancesConfig,
    labels: str,
    scratch: str,
    run: Mapper = _serial,
    void: frozenset[tuple[int, ...]] = frozenset(),
) -> int:
    """``segment`` block by block into the zarr array ``labels``; flooding methods keep
    their seeds in ``scratch`` (an array like ``labels``). Both arrays' chunks must tile
    ``grid``'s blocks. ``run(fn, calls)`` runs the block steps (in Ray tasks, or here).
    ``void``: blocks whose foreground is 0 within ``halo`` of them (chunks the output
    never stored: blocks the model skipped), run by no step where a foreground of 0 makes
    no object (their labels stay 0, as the steps would leave them).

    Returns:
        The number of objects (labelled 1 .. n).
    """
    method = METHODS.get(cfg.method.value)
    indices = [i for i in grid.indices() if i not in void]
    otsu = 0.0
    if method.otsu:
        extremes = run(_extremes, [(vol, grid, i, cfg) for i in indices])
        extremes += [(0.0, 0.0)] * bool(void)
        low, high = min(e[0] for e in extremes), max(e[1] for e in extremes)
        counts = run(_block_histogram, [(vol, grid, i, cfg, low, high) for i in indices])
        pixels = sum(math.prod(s.stop - s.start for s in grid.inner(i)) for i in void)
        counts += [_histogram(np.zeros(1, np.float32), low, high) * pixels]
        otsu = _otsu(np.sum(counts, axis=0), low, high)
    zero = np.zeros((1,) * len(grid.shape), np.float32)
    if void and method.pixelwise(zero, cfg, otsu)[0].any():  # a threshold below 0
        indices, void = list(grid.indices()), frozenset()
    first = scratch if method.floods else labels
    locals_ = run(_label_block, [(vol, grid, i, cfg, otsu, first) for i in indices])
    locals_ += [_nothing(grid, i) for i in sorted(void)]
    minimum = cfg.min_seed_size if method.floods else cfg.min_size
    tables = _merge(grid, {b.index: b for b in locals_}, minimum)
    run(_relabel_block, [(vol, grid, i, tables[i], first) for i in indices])
    count = int(max((t.max() for t in tables.values()), default=0))
    if not method.floods:
        return count
    flooded = run(_flood_block, [(vol, grid, i, cfg, otsu, scratch, labels) for i in indices])
    sizes: dict[int, int] = {}
    for block in flooded:
        for label, size in block.items():
            sizes[label] = sizes.get(label, 0) + size
    kept = sorted(k for k, s in sizes.items() if s >= max(cfg.min_size, 1))
    if kept == list(range(1, count + 1)):
        return count  # nothing removed: labels are already 1 .. n
    table = np.zeros(count + 1, np.uint32)
    table[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    run(_relabel_block, [(vol, grid, i, table, labels) for i in indices])
    return len(kept)
