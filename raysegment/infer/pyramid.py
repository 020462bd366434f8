"""Multiscale levels of an output, computed region by region once every block is written.

Level k halves level k-1 along the pyramid axes (y and x; z too for 3D models): integer
outputs (masks, labels) keep every second pixel, so label values stay labels; float
outputs (probabilities, raw scores) average each 2 x 2 (x 2) window, partial windows at
the edges over the pixels they have.
"""

from __future__ import annotations

import math

import numpy as np
import zarr

from raysegment import storage
from raysegment.data.tiling import Grid
from raysegment.storage import Location

__all__ = ["build_pyramid", "downsample", "level_shape"]


def level_shape(
    shape: tuple[int, ...], axes: str, pyramid_axes: str, level: int
) -> tuple[int, ...]:
    """The shape of ``level`` (0 = full resolution)."""
    return tuple(
        math.ceil(n / 2**level) if a in pyramid_axes else n
        for a, n in zip(axes, shape, strict=True)
    )


def downsample(data: np.ndarray, halve: tuple[bool, ...]) -> np.ndarray:
    """Halve ``data`` along the axes flagged in ``halve`` (output size: ceil(n / 2))."""
    if data.dtype.kind != "f":
        return data[tuple(slice(None, None, 2) if h else slice(None) for h in halve)]
    pad = [(0, n % 2) if h else (0, 0) for n, h in zip(data.shape, halve, strict=True)]
    padded = np.pad(data.astype(np.float64), pad, constant_values=np.nan)
    shape: list[int] = []
    pairs: list[int] = []
    for n, h in zip(padded.shape, halve, strict=True):
        if h:
            pairs.append(len(shape) + 1)
            shape += [n // 2, 2]
        else:
            shape.append(n)
    return np.nanmean(padded.reshape(shape), axis=tuple(pairs)).astype(data.dtype)


def build_pyramid(path: Location, axes: str, pyramid_axes: str, levels: int) -> None:
    """Fill arrays ``1`` .. ``levels - 1`` of the OME-Zarr group at ``path`` from ``0``."""
    halve = tuple(a in pyramid_axes for a in axes)
    for level in range(1, levels):
        src = zarr.open_array(storage.join(str(path), str(level - 1)), mode="r")
        dst = zarr.open_array(storage.join(str(path), str(level)), mode="r+")
        # Whole channels at a time; every other axis by the destination's chunks, so each
        # destination chunk is written by exactly one region (zarr has no locks).
        steps = tuple(
            n if a == "c" else c for a, n, c in zip(axes, dst.shape, dst.chunks, strict=True)
        )
        for out in Grid(tuple(dst.shape), steps).regions():
            region = tuple(
                slice(o.start * 2, min(o.stop * 2, n)) if h else o
                for o, h, n in zip(out, halve, src.shape, strict=True)
            )
            dst[out] = downsample(np.asarray(src[region]), halve)
