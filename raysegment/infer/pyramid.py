"""Multiscale levels of an output, computed region by region once every block is written.

Level k halves level k-1 along the pyramid axes (y and x; z too for 3D models): integer
outputs (masks, labels) keep every second pixel, so label values stay labels; float
outputs (probabilities, raw scores) average each 2 x 2 (x 2) window, partial windows at
the edges over the pixels they have.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr

from raysegment import storage
from raysegment.data.tiling import Grid
from raysegment.storage import Location

__all__ = ["block_levels", "build_pyramid", "downsample", "level_index", "level_shape"]


def level_shape(
    shape: tuple[int, ...], axes: str, pyramid_axes: str, level: int
) -> tuple[int, ...]:
    """The shape of ``level`` (0 = full resolution)."""
    return tuple(
        math.ceil(n / 2**level) if a in pyramid_axes else n
        for a, n in zip(axes, shape, strict=True)
    )


def block_levels(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    axes: str,
    pyramid_axes: str,
    block: dict[str, int],
    levels: int,
) -> int:
    """How many levels past the full resolution each block writes from its own output:
    level k while a block's region there is whole chunks of that level that no other
    block touches (zarr has no locks): along every pyramid axis the block spans the
    axis, or its size is a multiple of the level's chunk times 2^k. Blocks of 4 chunks:
    levels 1 and 2. The driver builds the levels above from the last of them.

    Args:
        block: the block's size per spatial axis of ``axes``.
    """
    written = 0
    for level in range(1, levels):
        for axis in pyramid_axes:
            i = axes.index(axis)
            n, c, b = shape[i], chunks[i], block[axis]
            if b < n and (math.ceil(n / 2**level) < c or b % (c * 2**level)):
                return written
        written = level
    return written


def level_index(
    index: tuple[slice | int, ...], axes: str, pyramid_axes: str, level: int
) -> tuple[slice | int, ...]:
    """``index`` (a block's region at full resolution, its starts on level chunks, see
    ``block_levels``) at ``level``."""
    f = 2**level
    return tuple(
        slice(i.start // f, -(-i.stop // f)) if a in pyramid_axes and isinstance(i, slice) else i
        for a, i in zip(axes, index, strict=True)
    )


def downsample(data: np.ndarray, halve: tuple[bool, ...]) -> np.ndarray:
    """Halve ``data`` along the axes flagged in ``halve`` (output size: ceil(n / 2)).

    Floats: each window's mean as pairwise means, one axis after the other (a window's
    pixels form a box, so the mean of its rows' means is its mean), an odd axis' last
    pixel kept as it is. Within float rounding of a float64 mean; a NaN-padded float64
    ``nanmean`` took 0.10-0.37 s for a 2048^2 float32 region here, this 0.006 s."""
    if data.dtype.kind != "f":
        return data[tuple(slice(None, None, 2) if h else slice(None) for h in halve)]
    out = data
    for axis, h in enumerate(halve):
        n = out.shape[axis]
        if not h or n < 2:
            continue
        at = (slice(None),) * axis
        pairs = out[(*at, slice(0, n - 1, 2))] + out[(*at, slice(1, n, 2))]
        pairs *= 0.5
        out = np.concatenate([pairs, out[(*at, slice(n - 1, n))]], axis) if n % 2 else pairs
    return out.astype(data.dtype, copy=False)


_THREADS = min(8, os.cpu_count() or 1)
"""Regions of a level written at once, at most."""
_BYTES = 512 << 20
"""Memory the regions in flight may hold (a 2048^2 float32 region ~50 MB; three channels
of a 256^3 one ~600 MB, which then run one at a time)."""


def build_pyramid(
    path: Location, axes: str, pyramid_axes: str, levels: int, first: int = 1
) -> None:
    """Fill arrays ``first`` .. ``levels - 1`` of the OME-Zarr group at ``path``, each
    from the one before.

    Each level's regions run on threads (``_THREADS``): reading, decoding, encoding and
    writing release the GIL, and one after the other a core waited on them."""
    halve = tuple(a in pyramid_axes for a in axes)
    for level in range(first, levels):
        src = zarr.open_array(storage.join(str(path), str(level - 1)), mode="r")
        dst = zarr.open_array(storage.join(str(path), str(level)), mode="r+")
        # Whole channels at a time; every other axis by the destination's chunks, so each
        # destination chunk is written by exactly one region (zarr has no locks).
        steps = tuple(
            n if a == "c" else c for a, n, c in zip(axes, dst.shape, dst.chunks, strict=True)
        )

        def fill(out: tuple[slice, ...], src: Any = src, dst: Any = dst) -> None:
            region = tuple(
                slice(o.start * 2, min(o.stop * 2, n)) if h else o
                for o, h, n in zip(out, halve, src.shape, strict=True)
            )
            dst[out] = downsample(np.asarray(src[region]), halve)

        # A region in flight holds its source, the pairwise means and the result.
        held = 3 * math.prod(2 * n if h else n for n, h in zip(steps, halve, strict=True))
        threads = max(1, min(_THREADS, _BYTES // (held * src.dtype.itemsize)))
        with ThreadPoolExecutor(threads, thread_name_prefix="raysegment-pyramid") as pool:
            list(pool.map(fill, Grid(tuple(dst.shape), steps).regions()))  # raises theirs
