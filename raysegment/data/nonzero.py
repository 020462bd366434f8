"""nnU-Net's nonzero region of an image: the voxels where any channel a model takes is not
0, with the holes in them filled (the voxels of 0 they enclose, as
``scipy.ndimage.binary_fill_holes`` fills them), and the box around them.

nnU-Net crops every image to that box before it normalizes and resamples it: a Z-score
normalization takes its mean and deviation over the box, or over the region itself where
the plans normalize within it (``use_mask_for_norm``: brain MR with the skull stripped
away), which then leaves every voxel outside the region at 0; its prediction is
background outside the box.

``nonzero_region`` finds the region in one pass over the image, a slab of planes at a
time; ``NonzeroSource`` reads an image with the voxels outside the region (or the box) at
the normalization's offset, 0 once normalized, as nnU-Net leaves them (and pads its crop),
before any resampling, as nnU-Net normalizes before it resamples; ``Nonzero.ranges`` are
the bounds nnU-Net's resampling clips each slice to.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from raysegment.data.sources import ImageInfo, ImageSource, Region, Unstored, WrappedSource
from raysegment.data.tiling import inside_box, under_centres

__all__ = ["FILL_HOLES_MAX", "Nonzero", "NonzeroSource", "nonzero_region"]

FILL_HOLES_MAX = 2**30
"""Voxels, at most, of an image whose region's holes are filled (its mask is held whole:
a byte a voxel); a larger image's region is its nonzero voxels only, with a warning."""
SLAB_BYTES = 64 * 2**20
"""Bytes of float32 pixels read at once while the region is found."""


@dataclass(frozen=True)
class Nonzero:
    """The nonzero region of an image of (z, y, x) ``shape``, found over its ``channels``:
    the ``box`` around it (None: no voxel is nonzero); ``within``: the region is the
    normalization's (holes filled), else the box is; per channel the count, mean and
    sum of squared deviations of the nonzero voxels' values (``counted``); ``holes``:
    where the region's holes are, as a box and a mask in it (None: none, or not looked
    for: ``filled``); ``kept``: channels whose voxels outside the region keep their
    values, within the box (``within``: a normalization that ignores the region, beside
    Z-scores within it, as nnU-Net's CT normalization beside them)."""

    shape: tuple[int, int, int]
    channels: tuple[int, ...]
    box: Region | None
    within: bool
    counted: tuple[int, tuple[float, ...], tuple[float, ...]]
    holes: tuple[Region, np.ndarray] | None
    filled: bool
    planes: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    """Per axis (z; and y, x where found for ``ranges``), per plane across it: the count
    of nonzero voxels, and per channel their least and greatest value (C, planes)."""
    kept: tuple[int, ...] = ()

    @property
    def voxels(self) -> int:
        """Voxels of the box, or of the region where ``within``."""
        if self.box is None:
            return 0
        if self.within:
            return self.counted[0] + (int(self.holes[1].sum()) if self.holes else 0)
        return math.prod(b - a for a, b in self.box)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel the mean and the deviation of the voxels of the box (or the region):
        the nonzero voxels' with the zeros among them."""
        n, mean, squares = self.counted
        total = max(self.voxels, 1)
        zeros = total - n
        # Chan's pairwise combination with ``zeros`` voxels of 0.
        m = np.asarray(mean) * n / total
        m2 = np.asarray(squares) + np.asarray(mean) ** 2 * n * zeros / total
        return m, np.sqrt(m2 / total)

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel the least and the greatest value of the box (or the region)."""
        _, planes_low, planes_high = self.planes[0]
        low, high = planes_low.min(axis=1), planes_high.max(axis=1)
        if self.voxels > self.counted[0]:  # zeros among them
            low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
        return low, high

    def ranges(
        self, axis: int | None, clip: Mapping[int, tuple[float, float]] | None = None
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per channel the least and the greatest value of each plane of the box across
        ``axis`` (a value for the box where None), as nnU-Net's resampling clips each
        slice (or the image) it resizes to its range (scikit-image's ``resize``): of the
        values ``clip`` (per channel: an nnU-Net CT's first clip) leaves and, where
        ``within``, those outside the region at its mean (``NonzeroSource``'s). Planes
        outside the box take no bound (infinite)."""
        along = 0 if axis is None else axis  # the image's: of its planes across z
        counted, low, high = (np.array(v, np.float64) for v in self.planes[along])
        if self.box is not None:
            sizes = [b - a for a, b in self.box]
            area = math.prod(sizes) // sizes[along]
            holes = np.zeros_like(counted)
            if self.holes is not None and self.within:
                where, inside = self.holes
                others = tuple(k for k in range(3) if k != along)
                first = where[along][0]
                holes[first : first + inside.shape[along]] = inside.sum(axis=others)
            start, stop = self.box[along]
            rest = np.zeros_like(counted, bool)  # planes of the box with voxels of neither
            rest[start:stop] = counted[start:stop] + holes[start:stop] < area
            # Per channel, whether its voxels of 0 outside the region stay (the box is the
            # normalization's, or the channel keeps them); else they are the region's mean.
            own = np.array([not self.within or c in self.kept for c in self.channels])[:, None]
            zeros = (holes > 0) | (rest & own)  # planes with voxels of 0
            low = np.where(zeros, np.minimum(low, 0), low)
            high = np.where(zeros, np.maximum(high, 0), high)
            if self.within:
                mean = self.moments()[0][:, None]
                low = np.where(rest & ~own, np.minimum(low, mean), low)
                high = np.where(rest & ~own, np.maximum(high, mean), high)
        for i, c in enumerate(self.channels):
            if clip and c in clip:
                low[i], high[i] = np.clip(low[i], *clip[c]), np.clip(high[i], *clip[c])
        if axis is None:
            low, high = low.min(axis=1, keepdims=True), high.max(axis=1, keepdims=True)
        unbound = low > high
        low[unbound], high[unbound] = -np.inf, np.inf
        return {c: (low[i], high[i]) for i, c in enumerate(self.channels)}

    def box_at(self, shape: tuple[int, ...]) -> Region:
        """The box in an image of (z, y, x) ``shape`` over the same field of view (a
        resampled one): its pixels whose centres lie in the box (``under_centres``)."""
        box = self.box or ((0, 0),) * 3
        out = []
        for (a, b), n, m in zip(box, self.shape, shape, strict=True):
            under = under_centres(0, m, m, n)
            (inside,) = np.nonzero((under >= a) & (under < b))
            out.append((int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0))
        return tuple(out)

    def inside(self, data: np.ndarray, region: Region) -> np.ndarray:
        """Whether each voxel of ``data`` (C, Z, Y, X), read of ``region``, is in the
        region (``within``: nonzero in a channel, or in a hole), else in the box."""
        if not self.within:
            return inside_box(region, self.box or ((0, 0),) * 3)
        inside = (data != 0).any(axis=0)
        if self.holes is not None:
            where, holes = self.holes
            cut = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(region, where, strict=True)]
            if all(a < b for a, b in cut):
                ours = tuple(
                    slice(a - r, b - r) for (a, b), (r, _) in zip(cut, region, strict=True)
                )
                theirs = tuple(
                    slice(a - w, b - w) for (a, b), (w, _) in zip(cut, where, strict=True)
                )
                inside[ours] |= holes[theirs]
        return inside

    def cropped(self) -> Nonzero:
        """The region of the image cropped to the box (places from the box's corner), as
        nnU-Net resamples the crop: its planes' ranges those of the box's planes."""
        if self.box is None:
            return self
        start = [a for a, _ in self.box]
        planes = tuple(
            (n[a:b], low[:, a:b], high[:, a:b])
            for (n, low, high), (a, b) in zip(self.planes, self.box, strict=False)
        )
        holes = None
        if self.holes is not None:
            where, inside = self.holes
            moved = tuple((a - s, b - s) for (a, b), s in zip(where, start, strict=True))
            holes = (moved, inside)
        return replace(
            self,
            shape=tuple(b - a for a, b in self.box),  # type: ignore[arg-type]
            box=tuple((0, b - a) for a, b in self.box),
            holes=holes,
            planes=planes,
        )

    @property
    def whole(self) -> bool:
        """Whether the box is the whole image."""
        return self.box == tuple((0, n) for n in self.shape)


def nonzero_region(
    source: ImageSource,
    channels: tuple[int, ...],
    within: bool,
    moments: bool = True,
    planes: bool = True,
) -> Nonzero:
    """The nonzero region of ``source``'s first time point over ``channels`` (``within``:
    with its holes, for a normalization within it; they are filled where the image has at
    most ``FILL_HOLES_MAX`` voxels, as the whole mask is held); with its voxels' moments
    and extremes (``moments``: of each plane across z; else their count only), and each
    plane's across every axis (``planes``: the ranges a resampling clips to)."""
    from scipy.ndimage import binary_fill_holes

    _, _, z, y, x = source.info.shape
    c = len(channels)
    filled = within and z * y * x <= FILL_HOLES_MAX
    mask = np.zeros((z, y, x), bool) if filled else None
    slab = max(1, SLAB_BYTES // (4 * c * y * x))
    count, mean, m2 = 0, np.zeros(c), np.zeros(c)
    axes = 3 if planes else int(moments)  # the axes whose planes' extremes are found
    spans: list[list[int]] = [[], [], []]  # per axis the least and greatest index found
    per_plane = [
        (np.zeros(n, np.int64), np.full((c, n), np.inf), np.full((c, n), -np.inf))
        for n in (z, y, x)[:axes]
    ]
    for z0 in range(0, z, slab):
        z1 = min(z, z0 + slab)
        data = source.read(0, channels, ((z0, z1), (0, y), (0, x)))
        found = (data != 0).any(axis=0)
        if mask is not None:
            mask[z0:z1] = found
        if axes:
            _per_plane(per_plane, data, found, z0)
        k = int(found.sum())
        if not k:
            continue
        for axis, others in enumerate(((1, 2), (0, 2), (0, 1))):
            (indices,) = np.nonzero(found.any(axis=others))
            shift = z0 if axis == 0 else 0
            spans[axis] += [int(indices[0]) + shift, int(indices[-1]) + shift]
        if moments:
            # Sums over the slab are the nonzero voxels' (the others are 0 in every
            # channel), in float64 without a copy; then Chan's combination with those before.
            flat = data.reshape(c, -1)
            sums = flat.sum(axis=1, dtype=np.float64)
            squares = np.einsum("ij,ij->i", flat, flat, dtype=np.float64)
            part = sums / k
            delta = part - mean
            m2 += squares - sums * part + delta**2 * count * k / (count + k)
            mean += delta * k / (count + k)
        count += k
    box = tuple((min(s), max(s) + 1) for s in spans) if count else None
    holes = None
    if mask is not None and box is not None:
        cut = tuple(slice(a, b) for a, b in box)
        inner = binary_fill_holes(mask[cut]) & ~mask[cut]
        if inner.any():
            where = [np.nonzero(inner.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1))]
            held = tuple(slice(int(w[0]), int(w[-1]) + 1) for w in where)
            holes = (
                tuple((s.start + a, s.stop + a) for s, (a, _) in zip(held, box, strict=True)),
                inner[held].copy(),
            )
    elif within:
        warnings.warn(
            f"{source.where}: {z * y * x} voxels, over {FILL_HOLES_MAX}: the region it is "
            f"normalized within is its nonzero voxels, the voxels of 0 they enclose left out",
            stacklevel=2,
        )
    if not moments:
        mean, m2 = np.full(c, np.nan), np.full(c, np.nan)
    return Nonzero(
        shape=(z, y, x),
        channels=tuple(channels),
        box=box,  # type: ignore[arg-type]
        within=within,
        counted=(count, tuple(map(float, mean)), tuple(map(float, m2))),
        holes=holes,  # type: ignore[arg-type]
        filled=filled,
        planes=tuple(per_plane),
    )


def _per_plane(
    planes: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    data: np.ndarray,
    found: np.ndarray,
    z0: int,
) -> None:
    """Add a slab's nonzero voxels (``found`` of ``data``, planes from ``z0``) to the
    per-plane counts and extremes of each axis of ``planes`` (z, or z, y and x)."""
    cut = slice(z0, z0 + data.shape[1])
    if found.all():  # extremes of the pixels as stored: no copy
        least, most = data, data
    else:
        exact = data.dtype.itemsize <= 2 or data.dtype == np.float32  # in float32
        values = data.astype(np.float32 if exact else np.float64, copy=False)
        least, most = np.where(found, values, np.inf), np.where(found, values, -np.inf)
    for extreme, reduce, pick in ((least, np.min, np.minimum), (most, np.max, np.maximum)):
        rows = reduce(extreme, axis=3)  # (C, planes, Y)
        along = [reduce(rows, axis=2)]
        if len(planes) > 1:
            along += [reduce(rows, axis=1), reduce(extreme, axis=(1, 2))]
        for axis, part in enumerate(along):
            bound = planes[axis][1 if reduce is np.min else 2]
            at = cut if axis == 0 else slice(None)
            pick(bound[:, at], part, out=bound[:, at])
    for axis, others in enumerate(((1, 2), (0, 2), (0, 1))[: len(planes)]):
        planes[axis][0][cut if axis == 0 else slice(None)] += found.sum(axis=others)


class NonzeroSource(WrappedSource):
    """``inner`` with each voxel outside its nonzero region (``nonzero``, of its shape;
    outside its box where the region is not the normalization's) at ``fill``, a value per
    channel of the region's (the normalization's offset: 0 once normalized, as nnU-Net
    leaves the voxels outside the region and pads its crop), float32."""

    kind = "nonzero"

    def __init__(self, inner: ImageSource, nonzero: Nonzero, fill: Sequence[float]) -> None:
        self.nonzero = nonzero
        self.fill = dict(zip(nonzero.channels, map(float, fill), strict=True))
        super().__init__([inner])

    @property
    def where(self) -> str:
        return self.inner.where

    def _inspect(self) -> ImageInfo:
        return replace(self.inner.info, dtype=np.dtype(np.float32))

    def at_level(self, level: int) -> ImageSource:
        if level != self.level:
            raise self._no_level(self.level + 1)
        return self

    def unstored(self) -> Unstored | None:
        return self.inner.unstored()  # outside the region: one value still

    def _read(self, t: int, channels: tuple[int, ...], region: Region) -> np.ndarray:
        data = self.inner.read(t, channels, region).astype(np.float32)
        nonzero = self.nonzero
        outside = ~nonzero.inside(data, region)
        if outside.any():
            beyond = outside  # the box's outside, for the channels keeping their voxels
            if nonzero.within and any(c in nonzero.kept for c in channels):
                beyond = ~inside_box(region, nonzero.box or ((0, 0),) * 3)
            for i, c in enumerate(channels):
                data[i, beyond if c in nonzero.kept else outside] = self.fill.get(c, 0.0)
        return data
