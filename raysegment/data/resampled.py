"""An image read at another pixel size: the pixel a model was trained at.

A model sees objects at the pixel size it was trained at: a nucleus of 20 pixels at 0.5 µm
is 31 at 0.325 µm, and a network trained on the one misses the other. A pyramid's levels
halve; ``ResampledSource`` reads any pixel size, region by region, interpolating from the
image (or its coarsest stored level whose pixel is at most that size) as it reads: no
resampled copy is written.

The interpolation is linear, antialiased where it shrinks (a triangle filter as wide as
an output pixel, as Pillow's and torch's ``antialias=True`` resizing), on each resampled
axis in turn. Each output pixel depends only on the input pixels under its filter, so a
region reads the same pixels whichever block it is part of: neighbouring blocks agree at
their seams, and a run equals one over the whole image resampled at once.

A model trained on images resampled otherwise reads them as it was trained: an nnU-Net
training's ``resampling`` (``nnunet_kinds``: a cubic spline, nearest along an axis of
voxels over three times as long as the others', the image clipped to the normalization's
range first, as nnU-Net preprocesses), each axis by its ``KINDS``: ``cubic`` is the
cubic B-spline interpolation of scipy's ``zoom`` and scikit-image's ``resize`` (no
antialiasing), as a filter of the cardinal spline's taps (``SPLINE_REACH`` pixels each
side: within 1e-6 of theirs), so it too is local to each region. Where the training
cropped each image to its nonzero box before it resampled it, as nnU-Net does, the box
alone is resampled (``Span``: its own pixel count over its extent, its edge voxels
repeated past its faces), and pixels of the same size and phase around it read as the
fill, so the box's pixels are those of nnU-Net's resampled crop. A label image read at
such an image's voxels (``ResampledLabels``: a training's labels) is resampled as nnU-Net
resamples segmentations (``resampled_labels``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from raysegment.data.nonzero import Nonzero
from raysegment.data.sources import (
    MICROMETRES,
    ImageInfo,
    ImageSource,
    Region,
    Unstored,
    WrappedSource,
)
from raysegment.errors import InputImageError

__all__ = [
    "KINDS",
    "NNUNET_RESAMPLING",
    "ORDERS",
    "ResampledLabels",
    "ResampledSource",
    "Span",
    "as_type",
    "axis_taps",
    "filter_taps",
    "filtered",
    "nnunet_kinds",
    "recorded",
    "resample_sizes",
    "resampled_labels",
    "resampled_to",
]

SAME = 1e-3
"""Relative difference of pixel sizes taken as none: the image is read as it is."""

KINDS = ("antialiased", "linear", "cubic", "nearest")
"""How an axis is resampled: linear, antialiased where it shrinks (raysegment's); linear
without antialiasing (nnU-Net's order 1); a cubic spline (order 3); the nearest pixel
(order 0)."""

SPLINE_REACH = 10
"""Input pixels each side of an output pixel's position that its cubic spline takes."""

Taps = tuple[np.ndarray, np.ndarray]


def filter_taps(
    n_in: int, n_out: int, start: int, stop: int, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """For output pixels ``start:stop`` of an axis of ``n_out`` over the extent of
    ``n_in`` input pixels, the input pixels each takes and their weights: (n, K) indices
    and (n, K) weights summing to 1 per output pixel. A triangle filter centred on the
    output pixel's centre, of half-width one input pixel, or (``antialias``) one output
    pixel where it shrinks (torch's ``interpolate(..., antialias=True)`` weights, pixel
    for pixel)."""
    scale = n_in / n_out
    support = max(scale, 1.0) if antialias else 1.0
    centre = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale
    low = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    high = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    width = int((high - low).max())
    taps = low[:, None] + np.arange(width)
    weights = np.clip(1.0 - np.abs((taps - centre[:, None] + 0.5) / support), 0.0, None)
    weights *= taps < high[:, None]
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(taps, n_in - 1), weights


def _positions(n_in: int, n_out: int, start: int, stop: int) -> np.ndarray:
    """Output pixels' centres in input pixels (0: the first input pixel's centre)."""
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def nearest_taps(n_in: int, n_out: int, start: int, stop: int) -> Taps:
    """``filter_taps`` of the input pixel nearest each output pixel's centre (halfway:
    the later one, as scipy's order-0 ``map_coordinates``)."""
    index = np.clip(np.floor(_positions(n_in, n_out, start, stop) + 0.5), 0, n_in - 1)
    return index.astype(np.int64)[:, None], np.ones((stop - start, 1))


def _cardinal_coefficients() -> np.ndarray:
    """The cubic B-spline prefilter's impulse response (the cardinal spline's coefficients
    on B-splines), at offsets -SPLINE_REACH - 2 .. SPLINE_REACH + 2."""
    pole = np.sqrt(3.0) - 2.0
    offsets = np.arange(-SPLINE_REACH - 2, SPLINE_REACH + 3)
    return -6.0 * pole / (1.0 - pole * pole) * pole ** np.abs(offsets)


_CARDINAL = _cardinal_coefficients()


def _bspline(x: np.ndarray) -> np.ndarray:
    """The cubic B-spline at ``x``."""
    x = np.abs(x)
    near = 2.0 / 3.0 - x**2 + x**3 / 2.0
    return np.where(x < 1.0, near, np.where(x < 2.0, (2.0 - x) ** 3 / 6.0, 0.0))


def spline_taps(n_in: int, n_out: int, start: int, stop: int) -> Taps:
    """``filter_taps`` of cubic spline interpolation: the cardinal cubic spline at each
    output pixel's centre (no antialiasing), the axis extended by its edge pixels, as
    scipy's ``zoom(..., order=3, mode="nearest", grid_mode=True)`` and scikit-image's
    ``resize(..., order=3, mode="edge", anti_aliasing=False)``."""
    position = _positions(n_in, n_out, start, stop)
    taps = np.floor(position).astype(np.int64)[:, None] + np.arange(-SPLINE_REACH, SPLINE_REACH + 2)
    offsets = np.arange(-SPLINE_REACH - 2, SPLINE_REACH + 3)
    distance = position[:, None] - taps
    weights = np.zeros(taps.shape)
    for k, coefficient in zip(offsets, _CARDINAL, strict=True):  # the cardinal kernel
        weights += coefficient * _bspline(distance - k)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(taps, 0, n_in - 1), weights


def axis_taps(kind: str, n_in: int, n_out: int, start: int, stop: int) -> Taps:
    """``filter_taps`` of an axis resampled by ``kind`` (of ``KINDS``)."""
    if kind == "cubic":
        return spline_taps(n_in, n_out, start, stop)
    if kind == "nearest":
        return nearest_taps(n_in, n_out, start, stop)
    return filter_taps(n_in, n_out, start, stop, antialias=kind == "antialiased")


@dataclass(frozen=True)
class Span:
    """An axis resampled over a crop of the image alone, as nnU-Net resamples the crop of
    an image to its nonzero box: the crop's voxels ``start:stop`` become the pixels
    ``before:before + count`` (their taps the crop's, its edge voxels repeated past its
    ends); the other pixels, of the same size and phase, lie over the rest of the image
    (the last of them at most one pixel past each edge) and read as the fill."""

    start: int
    stop: int
    before: int
    count: int

    @property
    def core(self) -> tuple[int, int]:
        """The pixels over the crop."""
        return self.before, self.before + self.count

    @property
    def ratio(self) -> float:
        """The image's voxels per pixel."""
        return (self.stop - self.start) / self.count


class ResampledSource(WrappedSource):
    """``inner`` read at the (z, y, x) ``shape``: each resampled axis over the same extent
    at another pixel count, so its pixel size is the extent over the count. ``info`` is
    ``inner``'s with that shape, ``scale`` (the physical pixel size per axis, in the units
    of ``units``: the input's or ``voxel_size``'s) and ``origin`` (its first pixel's
    centre: ``resampled_to``). Integer images stay integer (rounded; float32 with a
    ``scheme``). ``kinds``: how each axis is resampled (``KINDS``; default antialiased);
    ``clip``: the range the pixels are clipped to before (the model's normalization's,
    where nnU-Net clips first); ``scheme``: the nnU-Net resampling ``kinds`` come from,
    which ``kinds_back`` takes; ``ranges``: per channel the bounds of each plane across an
    axis (``Nonzero.ranges``: the axis resampled apart, filtered after the others) or of
    the image (axis None), which the output is clipped to, as nnU-Net's resizing clips
    each slice it resizes (or the image) to its range; ``spans``: per axis of zyx, where
    only a crop of the image is resampled (``Span``; None: the whole axis), and ``fill``
    the value per channel of the pixels outside the crop (0 where none is given)."""

    kind = "resampled"

    def __init__(
        self,
        inner: ImageSource,
        shape: tuple[int, int, int],
        scale: Mapping[str, float],
        units: Mapping[str, str],
        origin: Mapping[str, float],
        kinds: Mapping[str, str] | None = None,
        clip: Mapping[int, tuple[float, float]] | None = None,
        scheme: Mapping[str, Any] | None = None,
        ranges: tuple[int | None, dict[int, tuple[np.ndarray, np.ndarray]]] | None = None,
        spans: tuple[Span | None, ...] | None = None,
        fill: Mapping[int, float] | None = None,
    ) -> None:
        self._target = (shape, dict(scale), dict(units), dict(origin))
        self.kinds = dict(kinds or {})
        self.clip = dict(clip) if clip else None
        self.scheme = dict(scheme) if scheme else None
        self.ranges = ranges
        self.spans = spans if spans and any(spans) else None
        self.fill = dict(fill or {})
        super().__init__([inner])

    @property
    def where(self) -> str:
        size = " x ".join(f"{self.info.scale[a]:.4g}" for a in "zyx" if a in self.resampled)
        unit = self.info.units.get("x", "")
        how = ", ".join(
            f"{k} along {''.join(a for a in self.resampled if self.kinds.get(a) == k)}"
            for k in KINDS[1:]
            if any(self.kinds.get(a) == k for a in self.resampled)
        )
        several = self.inner.info.shape[1] > 1
        clipped = "".join(
            f", {f'channel {c} ' if several else ''}clipped to {low:.4g} .. {high:.4g} first"
            for c, (low, high) in (self.clip or {}).items()
        )
        how = f" ({how}{clipped})" if how or clipped else ""
        return f"{self.inner.where} resampled to {size} {unit} pixels{how}".replace("  ", " ")

    def kinds_back(self) -> dict[str, str]:
        """How each axis of an output read from this goes back to the image's own grid
        (``original``): as the ``scheme`` resamples its output (``nnunet_kinds``), else
        antialiased linear (no entry)."""
        if self.scheme is None:
            return {}
        current, new = self._spacings(self.original)
        return nnunet_kinds(self.scheme, "probabilities", current, new)

    def kinds_forward(self, which: str) -> dict[str, str]:
        """How the ``scheme`` resamples its ``which`` (``segmentation``: a cascade's first
        stage's label map) of ``inner``'s voxels to these (``nnunet_kinds``)."""
        if self.scheme is None:
            return {}
        new, current = self._spacings(self.inner)
        return nnunet_kinds(self.scheme, which, current, new)

    def _spacings(self, other: ImageSource) -> tuple[dict[str, float], dict[str, float]]:
        """The pixel sizes of this image and of ``other`` (of its extent, another pixel
        count) per axis of more than one pixel."""
        pairs = zip("zyx", self.info.shape[2:], other.info.shape[2:], strict=True)
        mine = {a: self.info.scale[a] for a, n, _ in pairs if n > 1 and self.info.scale.get(a)}
        theirs = dict(zip("zyx", other.info.shape[2:], strict=True))
        inner = dict(zip("zyx", self.inner.info.shape[2:], strict=True))
        return mine, {
            a: s / self.ratio("zyx".index(a)) * inner[a] / theirs[a] for a, s in mine.items()
        }

    def ratio(self, axis: int) -> float:
        """``inner``'s voxels per pixel along ``axis`` (0, 1, 2: z, y, x)."""
        span = self.spans[axis] if self.spans else None
        if span is not None:
            return span.ratio
        return self.inner.info.shape[2 + axis] / self.info.shape[2 + axis]

    @property
    def resampled(self) -> str:
        """The axes read at another pixel count than the input's, of zyx."""
        pairs = zip("zyx", self.info.shape[2:], self.inner.info.shape[2:], strict=True)
        spans = self.spans or (None,) * 3
        return "".join(a for (a, n, m), s in zip(pairs, spans, strict=True) if n != m or s)

    def core(self, region: Region) -> Region | None:
        """The pixels of ``region`` over the crop the ``spans`` resample (``region`` where
        the whole image is resampled); None: none is."""
        if self.spans is None:
            return region
        out = tuple(
            box if s is None else (max(box[0], s.before), min(box[1], s.before + s.count))
            for box, s in zip(region, self.spans, strict=True)
        )
        return out if all(b > a for a, b in out) else None

    def box(self, nonzero: Nonzero) -> Region:
        """The pixels over ``nonzero``'s box (of ``inner``): the ``spans``' crops, else the
        pixels whose centres lie in it (``Nonzero.box_at``)."""
        found = nonzero.box_at(self.info.shape[2:])
        spans = self.spans or (None,) * 3
        return tuple(b if s is None else s.core for b, s in zip(found, spans, strict=True))

    def grid(self) -> tuple[tuple[float, float, int] | None, ...] | None:
        """Per axis a ``Span`` crops, where the pixels lie over ``inner``'s voxels (the
        field of view): the voxel-edge offset of the first pixel, the voxels per pixel,
        and the voxels (``infer.mask.Mask.grid``); None: every axis spans it evenly."""
        if self.spans is None:
            return None
        sizes = self.inner.info.shape[2:]
        return tuple(
            None if s is None else (s.start - s.before * s.ratio, s.ratio, n)
            for s, n in zip(self.spans, sizes, strict=True)
        )

    def taps(self, axis: int, kind: str, start: int, stop: int) -> Taps | None:
        """``axis_taps`` of ``kind`` for the pixels ``start:stop`` along ``axis`` (0, 1, 2:
        z, y, x; over the crop where a ``Span`` crops it), in ``inner``'s voxels; None
        where the axis is not resampled."""
        span = self.spans[axis] if self.spans else None
        if span is None:
            n, m = self.inner.info.shape[2 + axis], self.info.shape[2 + axis]
            return None if n == m else axis_taps(kind, n, m, start, stop)
        size, first = span.stop - span.start, span.before
        index, weight = axis_taps(kind, size, span.count, start - first, stop - first)
        return index + span.start, weight

    def taps_back(self, axis: str, start: int, stop: int) -> Taps | None:
        """For the voxels ``start:stop`` of the ``original`` (``inner``'s where a ``Span``
        crops) along ``axis`` (of zyx), the pixels of an output read from this and their
        weights, as the output goes back to the image's voxels (``kinds_back``, else
        antialiased linear); a span's crop from its own pixels alone (its edge pixels
        repeated), each voxel outside it the pixel outside the crop nearest it. None: the
        axis is in the original's voxels."""
        k = "zyx".index(axis)
        kind = self.kinds_back().get(axis, "antialiased")
        span = self.spans[k] if self.spans else None
        if span is None:
            n, m = self.info.shape[2 + k], self.original.info.shape[2 + k]
            return None if n == m else axis_taps(kind, n, m, start, stop)
        voxels = np.arange(start, stop)
        inside = (voxels >= span.start) & (voxels < span.stop)
        size = span.stop - span.start
        index = np.where(voxels < span.start, span.before - 1, span.before + span.count)
        index, weight = index[:, None], np.ones((stop - start, 1))
        if inside.any():
            first, last = int(voxels[inside][0]), int(voxels[inside][-1]) + 1
            found, weights = axis_taps(
                kind, span.count, size, first - span.start, last - span.start
            )
            width = found.shape[1]
            index = np.repeat(index, width, axis=1)
            weight = np.pad(weight, ((0, 0), (0, width - 1)))
            index[inside], weight[inside] = found + span.before, weights
        return index, weight

    def _inspect(self) -> ImageInfo:
        shape, scale, units, origin = self._target
        info = self.inner.info
        return replace(
            info,
            shape=(*info.shape[:2], *shape),  # type: ignore[arg-type]
            # nnU-Net resamples its images in floating point (normalized already).
            dtype=np.dtype(np.float32) if self.scheme else info.dtype,
            scale=scale,
            units=units,
            origin=origin,
        )

    def at_level(self, level: int) -> ImageSource:
        if level:
            raise self._no_level(1)
        return self

    def level_scale(self) -> tuple[float, float]:
        sy, sx = self.inner.level_scale()
        return sy * self.ratio(1), sx * self.ratio(2)

    def _taps(self, region: Region) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per axis of ``region`` (over the crop, where ``spans`` crop), ``filter_taps`` of
        its pixels, or None where the axis is not resampled."""
        return [
            self.taps(k, self.kinds.get(axis, "antialiased"), a, b)
            for k, (axis, (a, b)) in enumerate(zip("zyx", region, strict=True))
        ]

    def source_region(self, region: Region, taps: list[Any] | None = None) -> Region:
        """The region of ``inner`` under ``region``'s pixels (over the crop, where ``spans``
        crop) and their filters (``taps``: ``_taps`` of it, where the caller has them)."""
        return tuple(
            box if found is None else (int(found[0].min()), int(found[0].max()) + 1)
            for box, found in zip(region, taps or self._taps(region), strict=True)
        )

    def unstored(self) -> Unstored | None:
        test = self.inner.unstored()
        if test is None:
            return None

        def unstored(t: int, channels: tuple[int, ...], region: Region) -> bool:
            core = self.core(region)  # none: the fill, which is no stored pixel's
            return core is not None and test(t, channels, self.source_region(core))

        return unstored

    def around(
        self, region: Region, part: Callable[[Region], np.ndarray], fill: np.ndarray
    ) -> np.ndarray:
        """``part`` of ``region``, where it lies over the crop the ``spans`` resample;
        else ``fill`` (its last three axes of one pixel, broadcast over ``region``) with
        ``part`` of the pixels over the crop (``core``) in their place."""
        core = self.core(region)
        if core == region:
            return part(region)
        out = np.empty((*fill.shape[:-3], *(b - a for a, b in region)), fill.dtype)
        out[...] = fill
        if core is not None:
            lead: list[slice] = [slice(None)] * (out.ndim - 3)
            at = [slice(a - r, b - r) for (a, b), (r, _) in zip(core, region, strict=True)]
            out[tuple(lead + at)] = part(core)
        return out

    def _read(self, t: int, channels: tuple[int, ...], region: Region) -> np.ndarray:
        if self.spans is None:
            return self._resampled(t, channels, region)
        # Beyond the crop: the fill (0 to the model, as nnU-Net pads its crop).
        fill = np.array([self.fill.get(c, 0.0) for c in channels], np.float32)
        read = self.around(
            region, lambda r: self._resampled(t, channels, r), fill.reshape(-1, 1, 1, 1)
        )
        return as_type(read, self.info.dtype)

    def _resampled(self, t: int, channels: tuple[int, ...], region: Region) -> np.ndarray:
        """The pixels of ``region`` (over the crop, where ``spans`` crop), resampled."""
        taps = self._taps(region)
        boxes = self.source_region(region, taps)
        data = self.inner.read(t, channels, boxes).astype(np.float32)
        if self.clip is not None:
            inf = (-np.inf, np.inf)
            low, high = (
                np.array([self.clip.get(c, inf)[k] for c in channels], np.float32).reshape(
                    -1, 1, 1, 1
                )
                for k in (0, 1)
            )
            np.clip(data, low, high, out=data)
        starts = [a for a, _ in boxes]
        if self.ranges is None:
            return as_type(filtered(data, taps, starts), self.info.dtype)
        axis, ranges = self.ranges
        shape: tuple[int, ...] = (len(channels), 1, 1, 1)
        if axis is None:  # the image's range, after every axis
            out = filtered(data, taps, starts)
            cut = slice(None)
        else:  # each plane's range across ``axis``, then that axis
            out = filtered(data, [None if k == axis else f for k, f in enumerate(taps)], starts)
            cut = slice(*boxes[axis])
            shape = (len(channels), *[cut.stop - cut.start if k == axis else 1 for k in range(3)])
        low = np.full(shape, -np.inf, np.float32)
        high = np.full(shape, np.inf, np.float32)
        for i, c in enumerate(channels):
            if c in ranges:
                low[i], high[i] = (bound[cut].reshape(shape[1:]) for bound in ranges[c])
        np.clip(out, low, high, out=out)
        if axis is not None:
            out = filtered(out, [f if k == axis else None for k, f in enumerate(taps)], starts)
        return as_type(out, self.info.dtype)


def filtered(
    data: np.ndarray, taps: Sequence[tuple[np.ndarray, np.ndarray] | None], starts: Sequence[int]
) -> np.ndarray:
    """``data`` (float32, or float64 kept so) filtered along its last ``len(taps)`` axes
    by each one's ``filter_taps`` (None: an axis left as it is), whose indices count from
    ``starts`` (the pixel of the axis ``data`` begins at)."""
    first = data.ndim - len(taps)
    for axis, (found, start) in enumerate(zip(taps, starts, strict=True), first):
        if found is None:
            continue
        index, weight = found
        along = [1] * data.ndim  # the weights broadcast along this axis
        along[axis] = -1
        out: np.ndarray | None = None
        for k in range(index.shape[1]):  # one tap of every output pixel at a time
            tap = np.take(data, index[:, k] - start, axis=axis)
            tap *= weight[:, k].astype(data.dtype).reshape(along)
            out = tap if out is None else np.add(out, tap, out=out)
        data = cast(np.ndarray, out)
    return data


def as_type(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Filtered ``data`` (float32) in ``dtype``: integers rounded and clipped to it."""
    if dtype.kind in "ui":
        limits = np.iinfo(dtype)
        data = np.clip(np.rint(data), limits.min, limits.max)
    return data.astype(dtype, copy=False)


def _micrometres(unit: str, what: str, fix: str) -> float:
    """Micrometres in ``unit``, the unit of ``what``'s pixel size."""
    factor = MICROMETRES.get(unit)
    if not factor:
        raise InputImageError(
            f"{what}: pixel size in unit {unit!r}, which is no length this package knows "
            f"({', '.join(MICROMETRES)}); {fix}"
        )
    return factor


Physical = Callable[[ImageSource], tuple[dict[str, float], dict[str, str], dict[str, float]]]
"""A source's pixel size, unit and origin per axis: its own, or ``voxel_size``'s."""


def recorded(source: ImageSource) -> tuple[dict[str, float], dict[str, str], dict[str, float]]:
    """``Physical`` as the source's file records it."""
    return dict(source.info.scale), dict(source.info.units), dict(source.info.origin)


def resampled_to(
    source: ImageSource,
    size: Mapping[str, float],
    unit: str,
    physical: Physical,
    pyramid: bool,
    fix: str = "give voxel_size= (the input's pixel size)",
    scheme: Mapping[str, Any] | None = None,
    clip: Mapping[int, tuple[float, float]] | None = None,
    nonzero: Nonzero | None = None,
    crop: Region | None = None,
    fill: Mapping[int, float] | None = None,
) -> ImageSource:
    """``source`` (full resolution) read at the pixel ``size`` (per axis of zyx it names,
    in ``unit``; "": in the source's units): with ``pyramid``, from its coarsest level
    whose pixel is at most that size (the levels only coarsen); resampled along each axis
    whose pixel is not already that size; ``source`` (or the level) itself where none is.
    ``physical`` gives a source's pixel size, unit and origin; ``fix``: how to give a
    source one where it has none (in the error). ``scheme``: how the model's training
    resampled its images (an nnU-Net training's ``resampling``: ``nnunet_kinds``; else
    antialiased linear), ``clip``: per channel the range to clip its pixels to before; ``nonzero``:
    the source's nonzero region (with a ``scheme``: the ranges nnU-Net's resizing clips
    its slices to, ``Nonzero.ranges``); ``crop``: the box (of ``source``'s voxels) that
    alone is resampled, as nnU-Net resamples its crop of an image to the nonzero box
    (``Span``; the pixels around it of ``fill`` per channel, the pixel value the model
    takes as 0).

    A resampled axis keeps the image's extent: n pixels of size s become round(n s / size)
    of n s / count each. Its origin (the first pixel's centre, as OME-Zarr viewers place
    pixels) moves by half the difference of the pixels, so the output overlays the input.
    With a ``crop``, the crop's n voxels along it become round(n s / size) pixels over its
    extent, and pixels of the same size and phase cover the rest of the image, the first
    and the last at most a pixel past its edges.

    Raises:
        InputImageError: the source has no pixel size or no length unit along an axis
            ``size`` names, or the axis is absent (a 2D image for a 3D size).
    """
    axes = [a for a in "zyx" if a in size]
    if "z" in axes and source.info.shape[2] == 1:
        raise InputImageError(
            f"{source.where}: a 2D image; resampling to a pixel of {dict(size)} {unit} needs "
            f"a z axis: give a 2D pixel size (resample_size=[y, x])"
        )
    pixel, units, _ = physical(source)
    wanted: dict[str, float] = {}
    for a in axes:
        if not pixel.get(a):
            raise InputImageError(
                f"{source.where}: no pixel size recorded along {a}, which resampling to "
                f"{size[a]} {unit} needs; {fix}"
            )
        wanted[a] = size[a]  # in the source's unit along this axis
        if unit:
            mine = _micrometres(units.get(a, ""), source.where, fix)
            model = f"the model's pixel size {dict(size)}"
            theirs = _micrometres(unit, model, "give resample_size= in the input's units")
            wanted[a] *= theirs / mine
    level = source
    if pyramid and "x" in wanted:
        level = _level_at_most(source, wanted["x"] / pixel["x"])
    pixel, units, origin = physical(level)
    shape: list[int] = []
    scale, moved = dict(pixel), dict(origin)
    if crop is not None and (nonzero is None or nonzero.shape != level.info.shape[2:]):
        crop = None  # a level's voxels: the crop is the full resolution's
    spans: list[Span | None] = []
    for k, (a, n) in enumerate(zip("zyx", level.info.shape[2:], strict=True)):
        spans.append(None)
        if a not in wanted or abs(pixel[a] / wanted[a] - 1.0) <= SAME:
            shape.append(n)
            continue
        start, stop = crop[k] if crop is not None else (0, n)
        count = max(1, round((stop - start) * pixel[a] / wanted[a]))
        scale[a] = (stop - start) * pixel[a] / count
        ratio = scale[a] / pixel[a]  # voxels per pixel
        # Whole pixels before and after the crop, to cover the image's edges.
        before, after = (math.ceil(v / ratio - 1e-9) for v in (start, n - stop))
        if (start, stop) != (0, n):
            spans[k] = Span(start, stop, before, count)
        shape.append(before + count + after)
        moved[a] = origin.get(a, 0.0) + (start - 0.5 + (0.5 - before) * ratio) * pixel[a]
    if tuple(shape) == level.info.shape[2:] and not any(spans):
        return level
    kinds: dict[str, str] = {}
    ranges = None
    if scheme is not None:
        spatial = [a for a, n in zip("zyx", level.info.shape[2:], strict=True) if n > 1]
        current = {a: pixel[a] for a in spatial if pixel.get(a)}
        new = {a: wanted.get(a, s) for a, s in current.items()}
        kinds = nnunet_kinds(scheme, "data", current, new)
        if nonzero is not None and nonzero.shape == level.info.shape[2:]:
            apart = separate_axis(scheme, current, new)
            axis = None if apart is None else "zyx".index(apart)
            ranges = (axis, nonzero.ranges(axis, clip))
    target = (tuple(shape), scale, units, moved)
    return ResampledSource(
        level,
        *target,  # type: ignore[arg-type]
        kinds,
        clip,
        scheme,
        ranges,
        tuple(spans),
        fill,
    )


ORDERS = {0: "nearest", 1: "linear", 3: "cubic"}
"""The interpolation orders of nnU-Net's resampling raysegment runs, as ``KINDS``."""

NNUNET_RESAMPLING: dict[str, Any] = {
    "data": [3, 0],
    "probabilities": [1, 0],
    "segmentation": [1, 0],
    "force_separate_z": None,
    "anisotropy": 3.0,
}
"""nnU-Net's default resampling (its plans' ``resampling_fn_*_kwargs``), as a model's
``resampling`` records it: the images a cubic spline, the output back and the labels
linear (each label's indicator), the nearest plane along an axis of voxels over 3 times
as long as the others'."""


def nnunet_kinds(
    scheme: Mapping[str, Any],
    which: str,
    current: Mapping[str, float],
    new: Mapping[str, float],
) -> dict[str, str]:
    """How nnU-Net resamples each axis of an image of pixel sizes ``current`` (per axis of
    zyx) to ``new``: ``scheme``'s ``which`` orders (``data``: the images, ``probabilities``:
    the output back), the first in-plane, the second (nearest, mostly) along the axis of
    voxels over ``anisotropy`` times as long as the others' (the current's, else the
    new's; none where two axes tie), unless ``force_separate_z`` says (nnU-Net's
    ``determine_do_sep_z_and_axis``)."""
    order, order_z = (ORDERS[int(v)] for v in scheme[which])
    lowres = separate_axis(scheme, current, new)
    return {a: order_z if a == lowres else order for a in current}


def separate_axis(
    scheme: Mapping[str, Any], current: Mapping[str, float], new: Mapping[str, float]
) -> str | None:
    """The axis nnU-Net resamples apart (after the others, slice by slice) of an image of
    pixel sizes ``current`` resampled to ``new`` (``nnunet_kinds``); None: none."""
    force, threshold = scheme.get("force_separate_z"), float(scheme.get("anisotropy", 3.0))
    if force is not None:
        return _lowres(current) if force else None
    for spacing in (current, new):
        if spacing and max(spacing.values()) / min(spacing.values()) > threshold:
            return _lowres(spacing)
    return None


def _lowres(spacing: Mapping[str, float]) -> str | None:
    """The one axis of the longest pixels; None where several tie."""
    top = max(spacing.values())
    found = [a for a, s in spacing.items() if s == top]
    return found[0] if len(found) == 1 else None


def _level_at_most(source: ImageSource, factor: float) -> ImageSource:
    """The coarsest pyramid level of ``source`` (full resolution) whose x pixel is at most
    ``factor`` full-resolution pixels, stored levels only (computed ones cost a read of
    the full resolution under them, as resampling from it does)."""
    best = source
    if not source.stored_levels:
        return best
    x = source.info.shape[4]
    for k in range(1, source.levels):
        level = source.at_level(k)
        if x / level.info.shape[4] > factor * (1 + SAME):
            break
        best = level
    return best


def resample_sizes(
    given: Sequence[float] | None, meta: Mapping[str, Any]
) -> tuple[dict[str, float], str] | None:
    """The pixel size to resample to and its unit: ``resample_size`` ((z) y x, the
    input's unit: returned with unit ""), else the model's own (``pixel_size`` and
    ``pixel_unit``); None where the model records none."""
    if given is not None:
        return dict(zip("zyx"[3 - len(given) :], (float(v) for v in given), strict=True)), ""
    size = meta.get("pixel_size")
    if not isinstance(size, dict) or not size:
        return None
    unit = str(meta.get("pixel_unit") or "")
    return {str(a): float(v) for a, v in size.items() if a in "zyx"}, unit


def resampled_labels(
    read: np.ndarray,
    values: Sequence[int],
    taps: Sequence[Taps | None],
    nearest: Sequence[Taps | None],
    starts: Sequence[int],
) -> np.ndarray:
    """The label map ``read`` (integers, each one of ``values``: the region under the
    taps, from the pixel ``starts``) resampled as nnU-Net resamples segmentations
    (batchgenerators 0.25.5's ``resize_segmentation``): each value's indicator filtered
    by ``taps``, each voxel the value whose is highest; where several tie, the value of
    the nearest voxel (``nearest``: ``nearest_taps``, within ``taps``' reach) where it is
    one of them, else the first of them in ``values``."""
    near = np.rint(filtered(read.astype(np.float64)[None], nearest, starts)[0])
    near = near.astype(read.dtype)
    best: np.ndarray | None = None
    winner = np.empty(near.shape, read.dtype)
    near_score = np.zeros(near.shape)
    for value in values:
        score = filtered((read == value).astype(np.float64)[None], taps, starts)[0]
        if best is None:
            best = score
            winner[...] = value
        else:
            winner[score > best] = value
            np.maximum(best, score, out=best)
        mine = near == value
        near_score[mine] = score[mine]
    # The nearest voxel's value where its score is the highest (won or tied for).
    return np.where(near_score == best, near, winner)


class ResampledLabels(WrappedSource):
    """A label image ``inner``, of the voxels ``image`` (a ``ResampledSource`` of a
    ``scheme``) is resampled from, read at ``image``'s voxels as the scheme resamples
    segmentations: its ``segmentation`` orders (``nnunet_kinds``: linear in-plane, the
    nearest plane along an axis of long voxels), each channel's labels by
    ``resampled_labels``; in ``inner``'s dtype. A training's labels, as nnU-Net resamples
    them beside their image."""

    kind = "resampled-labels"

    def __init__(self, inner: ImageSource, image: ResampledSource) -> None:
        self.image = image
        scheme = image.scheme or {}
        self.kinds = image.kinds_forward("segmentation") if "segmentation" in scheme else {}
        super().__init__([inner])

    @property
    def where(self) -> str:
        return f"{self.inner.where} at the voxels of {self.image.where}"

    def _inspect(self) -> ImageInfo:
        mine, info = self.image.info, self.inner.info
        return replace(
            info,
            shape=(*info.shape[:2], *mine.shape[2:]),  # type: ignore[arg-type]
            scale=mine.scale,
            units=mine.units,
            origin=mine.origin,
        )

    def at_level(self, level: int) -> ImageSource:
        if level:
            raise self._no_level(1)
        return self

    def level_scale(self) -> tuple[float, float]:
        return self.image.level_scale()

    def _taps(self, region: Region, kind: str | None = None) -> list[Taps | None]:
        """Per axis of ``region``, the taps of ``kind`` (default: the scheme's, else
        linear); None where the axis is not resampled."""
        return [
            self.image.taps(k, kind or self.kinds.get(a, "linear"), lo, hi)
            for k, (a, (lo, hi)) in enumerate(zip("zyx", region, strict=True))
        ]

    def _read(self, t: int, channels: tuple[int, ...], region: Region) -> np.ndarray:
        taps, nearest = self._taps(region), self._taps(region, "nearest")
        boxes = tuple(
            box if found is None else (int(found[0].min()), int(found[0].max()) + 1)
            for box, found in zip(region, taps, strict=True)
        )
        read = self.inner.read(t, channels, boxes)
        read = (np.rint(read) if read.dtype.kind == "f" else read).astype(np.int64)
        starts = [a for a, _ in boxes]
        out = [resampled_labels(c, np.unique(c).tolist(), taps, nearest, starts) for c in read]
        return np.stack(out).astype(self.info.dtype)
