"""Nearest-neighbour resampling of a labels array to isotropic voxels, chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["isotropic_shape", "resample_region", "source_indices"]


def isotropic_shape(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Spatial shape at the finest spacing on every axis (same physical extent)."""
    target = min(spacing)
    return tuple(max(1, round(n * s / target)) for n, s in zip(shape, spacing, strict=True))


def source_indices(n_out: int, n_in: int, start: int, stop: int) -> np.ndarray:
    """For output pixels ``start:stop`` of ``n_out``, the input pixel (of ``n_in``) whose
    cell holds each output pixel's centre."""
    centres = (np.arange(start, stop) + 0.5) * (n_in / n_out)
    return np.minimum(np.floor(centres).astype(np.int64), n_in - 1)


def resample_region(
    read: Callable[[tuple[slice, ...]], np.ndarray],
    shape_in: tuple[int, ...],
    shape_out: tuple[int, ...],
    region: tuple[slice, ...],
) -> np.ndarray:
    """The output ``region`` (spatial slices) of the resampled array; ``read(slices)``
    returns the input over a spatial region."""
    picks = [
        source_indices(n_out, n_in, s.start, s.stop)
        for s, n_in, n_out in zip(region, shape_in, shape_out, strict=True)
    ]
    box = tuple(slice(int(p[0]), int(p[-1]) + 1) for p in picks)
    data = read(box)
    return data[np.ix_(*[p - b.start for p, b in zip(picks, box, strict=True)])]
