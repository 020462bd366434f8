"""Tile and block geometry: plain numpy, no Ray, no torch.

One global tile grid is laid over the whole image; every block (the unit of work, one
chunk-aligned output region) takes the grid tiles whose blending weight reaches into its
region. The blended value of a pixel therefore does not depend on the block size: blocks
change how the work is split, never the result.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from raysegment.registry import Registry

__all__ = [
    "BLENDS",
    "AxisTiling",
    "Block",
    "Grid",
    "Tiling",
    "blend_weights_1d",
    "block_at",
    "block_grid",
    "iter_blocks",
    "overlap_pixels",
    "under_centres",
]


def under_centres(start: int, stop: int, size: int, other: int) -> np.ndarray:
    """Of an axis of ``other`` pixels over the same extent as one of ``size``, the pixel
    under the centre of each of ``start`` .. ``stop``: floor((i + 1/2) * other / size), in
    integers (a mask's or a full resolution's pixel for an image's, nearest)."""
    return np.minimum((2 * np.arange(start, stop) + 1) * other // (2 * size), other - 1)


def inside_box(region: Sequence[tuple[int, int]], box: Sequence[tuple[int, int]]) -> np.ndarray:
    """Whether each pixel of ``region`` (per axis [start, stop)) lies in ``box``: bool, of
    the region's shape."""
    axes = [
        (np.arange(a, b) >= lo) & (np.arange(a, b) < hi)
        for (a, b), (lo, hi) in zip(region, box, strict=True)
    ]
    inside = axes[0]
    for along in axes[1:]:
        inside = np.logical_and.outer(inside, along)
    return inside


GAUSSIAN_SIGMA = 0.125
"""Gaussian sigma as a fraction of the tile size (as in nnU-Net and MONAI)."""
GAUSSIAN_FLOOR = 1e-3
"""Smallest 1D gaussian weight, so every covered pixel keeps a usable weight."""


@dataclass(frozen=True, slots=True)
class AxisTiling:
    """Tiles along one spatial axis."""

    length: int
    """Image length along this axis, in pixels."""
    tile: int
    """Tile length fed to the model."""
    overlap: int
    """Pixels shared by two neighbouring tiles (the flush last tile may share more)."""
    starts: tuple[int, ...]
    """First pixel of each tile; the last tile ends flush with the image edge."""
    halo: int = 0
    """Pixels at a tile's edges that the model cannot compute (a BioImage Model Zoo
    model's ``halo``): they weigh nothing, except at the image's edges, where no tile
    computes them better."""
    window: tuple[int, int] | None = None
    """The part of the axis the tiles cover (an nnU-Net training's crop to the image's
    nonzero box), its ends the edges; None: the whole axis. Pixels outside it take no
    tile's weight."""

    @classmethod
    def plan(
        cls,
        length: int,
        tile: int,
        overlap: int,
        halo: int = 0,
        window: tuple[int, int] | None = None,
        spread: bool = False,
    ) -> AxisTiling:
        """Tiles over the axis (or its ``window``): every ``tile - overlap`` pixels from
        its start and the last flush with its end, or (``spread``) as many spread evenly
        between the two ends (nnU-Net's sliding window: neighbours share at least
        ``overlap`` pixels, all alike to a pixel). A window (or an axis) shorter than the
        tile takes one tile centred on it: spread, as nnU-Net pads its crop to the tile,
        beyond the image where it reaches (``Block.pad`` on both sides); else inside the
        image where it can."""
        if length < 1 or tile < 1:
            raise ValueError(f"length {length} and tile {tile} must be positive")
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap {overlap} must be in [0, tile {tile})")
        if not 0 <= 2 * halo <= overlap and length > tile:
            raise ValueError(f"overlap {overlap} must be at least twice the halo {halo}")
        low, high = window or (0, length)
        extent, step = high - low, tile - overlap
        if extent < tile and spread:  # one tile centred on it, padded beyond the image
            starts = [low - (tile - extent) // 2]
        elif extent < tile:  # one tile, centred on the window, inside the image if it can
            starts = [min(max(low - (tile - extent) // 2, 0), max(length - tile, 0))]
        elif spread:
            count = -(-(extent - tile) // step) + 1
            gap = (extent - tile) / max(count - 1, 1)
            starts = [low + int(np.round(gap * i)) for i in range(count)]
        else:
            starts = [low + s for s in range(0, extent - tile, step)] or [low]
            if starts[-1] + tile < high:
                starts.append(high - tile)
        kept = None if window is None or tuple(window) == (0, length) else (low, high)
        return cls(length, tile, overlap, tuple(starts), halo, kept)

    @property
    def ends(self) -> tuple[int, int]:
        """Where the tiles' edges are the image's: the window's ends, else the axis'."""
        return self.window or (0, self.length)

    def computed(self, i: int) -> tuple[int, int]:
        """Part of tile ``i`` (relative to its start) outside its halo: all of it but
        ``halo`` pixels at each edge inside the image."""
        start, (first, last) = self.starts[i], self.ends
        lo = self.halo if start > first else 0
        hi = self.tile - self.halo if start + self.tile < last else self.tile
        return lo, hi

    def kept(self, i: int) -> tuple[int, int]:
        """Part of tile ``i`` (relative to its start) that ``crop`` blending keeps.

        Drops ``overlap // 2`` before and the rest of the overlap after, except where the
        tile touches the image edge, so the kept parts cover the axis without gaps.
        """
        start, (first, last) = self.starts[i], self.ends
        lo = 0 if start <= first else self.overlap // 2
        hi = (
            self.tile
            if start + self.tile >= last
            else self.tile - (self.overlap - self.overlap // 2)
        )
        return lo, hi

    def support(self, i: int, blend: str) -> tuple[int, int]:
        """Absolute pixel range where tile ``i`` has non-zero weight, clipped to the image
        (to the window)."""
        lo, hi = self.kept(i) if blend == "crop" else self.computed(i)
        start, (first, last) = self.starts[i], self.ends
        return max(start + lo, first), min(start + hi, last)


BLENDS: Registry[Callable[[AxisTiling, int], np.ndarray]] = Registry("tile.blend")


@BLENDS.register("gaussian")
def _gaussian(axis: AxisTiling, i: int) -> np.ndarray:
    x = np.arange(axis.tile, dtype=np.float64) - (axis.tile - 1) / 2
    w = np.exp(-0.5 * (x / (GAUSSIAN_SIGMA * axis.tile)) ** 2)
    return np.maximum(w, GAUSSIAN_FLOOR).astype(np.float32)


@BLENDS.register("constant")
def _constant(axis: AxisTiling, i: int) -> np.ndarray:
    return np.ones(axis.tile, dtype=np.float32)


@BLENDS.register("crop")
def _crop(axis: AxisTiling, i: int) -> np.ndarray:
    w = np.zeros(axis.tile, dtype=np.float32)
    lo, hi = axis.kept(i)
    w[lo:hi] = 1.0
    return w


def blend_weights_1d(axis: AxisTiling, i: int, blend: str) -> np.ndarray:
    """Weight profile of tile ``i`` along one axis; a tile's weight is the outer product.
    Nothing outside ``axis.computed(i)`` (the halo)."""
    w = BLENDS.get(blend)(axis, i)
    if axis.halo:
        lo, hi = axis.computed(i)
        w[:lo] = 0.0
        w[hi:] = 0.0
    return w


def overlap_pixels(overlap: float, tile: int) -> int:
    """Pixels two neighbouring tiles of ``tile`` share at ``overlap`` (a fraction)."""
    return min(int(round(overlap * tile)), tile - 1)


@dataclass(frozen=True, slots=True)
class Tiling:
    """The global tile grid over an image's spatial axes."""

    axes: tuple[AxisTiling, ...]
    blend: str

    @classmethod
    def plan(
        cls,
        shape: Sequence[int],
        tile: Sequence[int],
        overlap: float,
        blend: str,
        halo: Sequence[int] | None = None,
        window: Sequence[tuple[int, int]] | None = None,
        spread: bool = False,
    ) -> Tiling:
        """Lay tiles of ``tile`` pixels sharing ``overlap`` (a fraction) of their length;
        ``halo``: per axis, the pixels at a tile's edges that weigh nothing
        (``AxisTiling.halo``); ``window``: per axis, the part the tiles cover, ``spread``:
        spread evenly over it (``AxisTiling.plan``)."""
        BLENDS.get(blend)
        if len(shape) != len(tile):
            raise ValueError(f"shape {tuple(shape)} and tile {tuple(tile)} differ in length")
        windows: Sequence[tuple[int, int] | None] = window or [None] * len(tile)
        axes = tuple(
            AxisTiling.plan(n, t, overlap_pixels(overlap, t), h, w, spread)
            for n, t, h, w in zip(shape, tile, halo or [0] * len(tile), windows, strict=True)
        )
        return cls(axes, blend)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.length for a in self.axes)

    @property
    def tile(self) -> tuple[int, ...]:
        return tuple(a.tile for a in self.axes)

    @property
    def num_tiles(self) -> int:
        return math.prod(len(a.starts) for a in self.axes)

    def weights(self, index: Sequence[int]) -> np.ndarray:
        """Blending weight of the tile with per-axis indices ``index`` (tile-shaped)."""
        w = np.ones((), dtype=np.float32)
        for axis, i in zip(self.axes, index, strict=False):
            w = np.multiply.outer(w, blend_weights_1d(axis, i, self.blend))
        return w

    def tiles_reaching(self, region: Sequence[tuple[int, int]]) -> tuple[tuple[int, ...], ...]:
        """Per axis, the indices of tiles whose weight is non-zero inside ``region``."""
        out = []
        for axis, (a, b) in zip(self.axes, region, strict=False):
            idx = []
            for i in range(len(axis.starts)):
                lo, hi = axis.support(i, self.blend)
                if lo < b and hi > a:
                    idx.append(i)
            out.append(tuple(idx))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Block:
    """One unit of work: an output region, the source region it needs, and its tiles."""

    index: tuple[int, ...]
    """Position of the block in the block grid."""
    inner: tuple[tuple[int, int], ...]
    """Output region this block owns (absolute, half-open); its edges are chunk edges."""
    outer: tuple[tuple[int, int], ...]
    """Source region read for it: the union of its tiles, clipped to the image."""
    pad: tuple[tuple[int, int], ...]
    """Padding after reading, where a tile reaches beyond the image (before its start:
    a tile centred on a scan shorter than it)."""
    tiles: tuple[tuple[int, ...], ...]
    """Per axis, indices into the global grid of the tiles this block runs."""

    @property
    def num_tiles(self) -> int:
        return math.prod(len(t) for t in self.tiles)

    @property
    def origin(self) -> tuple[int, ...]:
        """Per axis, the image pixel the padded source region begins at (``outer``'s
        start, less the padding before it)."""
        return tuple(o - p for (o, _), (p, _) in zip(self.outer, self.pad, strict=True))

    def tile_origins(self, tiling: Tiling) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Yield (grid index, start in the padded source region) for every tile of the
        block."""
        for index in itertools.product(*self.tiles):
            start = tuple(
                ax.starts[i] - o for ax, i, o in zip(tiling.axes, index, self.origin, strict=False)
            )
            yield index, start


def block_grid(tiling: Tiling, block: Sequence[int]) -> tuple[int, ...]:
    """Number of blocks of ``block`` pixels along each axis."""
    return tuple(-(-n // b) for n, b in zip(tiling.shape, block, strict=False))


def block_at(tiling: Tiling, block: Sequence[int], index: Sequence[int]) -> Block:
    """The block at grid position ``index`` when the image is split into ``block`` pixels.

    The block lists the grid tiles reaching its region; the source region to read is
    their union. Tiles whose weight straddles a seam run in both neighbouring blocks:
    with ``crop`` one per seam, with ``gaussian``/``constant`` about tile/step per seam.
    """
    inner = tuple(
        (i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, tiling.shape, strict=False)
    )
    tiles = tiling.tiles_reaching(inner)
    outer, pad = [], []
    for axis, idx, (a, _) in zip(tiling.axes, tiles, inner, strict=False):
        if not idx:  # outside the tiles' window: nothing to read or run
            outer.append((a, a))
            pad.append((0, 0))
            continue
        lo = axis.starts[idx[0]]
        hi = axis.starts[idx[-1]] + axis.tile
        outer.append((max(lo, 0), min(hi, axis.length)))
        pad.append((max(-lo, 0), max(hi - axis.length, 0)))
    return Block(tuple(index), inner, tuple(outer), tuple(pad), tiles)


def seam_repeats(tiling: Tiling, block: Sequence[int]) -> float:
    """Tiles run per tile of the grid when the image is split into blocks of ``block``
    pixels: 1.0 for one block; every seam adds the tiles whose weight straddles it."""
    run = 1
    for axis, b in zip(tiling.axes, block, strict=False):
        line = Tiling((axis,), tiling.blend)  # per axis: tiles_reaching is separable
        run *= sum(
            len(line.tiles_reaching([(a, min(a + b, axis.length))])[0])
            for a in range(0, axis.length, b)
        )
    return run / tiling.num_tiles


def iter_blocks(tiling: Tiling, block: Sequence[int]) -> Iterator[Block]:
    """All blocks of ``block`` pixels (a multiple of the output chunks), in C order."""
    for index in itertools.product(*(range(n) for n in block_grid(tiling, block))):
        yield block_at(tiling, block, index)


@dataclass(frozen=True)
class Grid:
    """A regular grid of ``block``-sized regions over ``shape`` (the last ones clipped):
    post-processing blocks, or the chunks that each get exactly one writer."""

    shape: tuple[int, ...]
    block: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block, strict=True))

    def indices(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.counts))

    def inner(self, index: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(
            slice(i * b, min((i + 1) * b, n))
            for i, b, n in zip(index, self.block, self.shape, strict=True)
        )

    def outer(
        self, index: tuple[int, ...], halo: int
    ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The block grown by ``halo`` (clipped to the image), and the block within it."""
        inner = self.inner(index)
        outer = tuple(
            slice(max(s.start - halo, 0), min(s.stop + halo, n))
            for s, n in zip(inner, self.shape, strict=True)
        )
        within = tuple(
            slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True)
        )
        return outer, within

    def regions(self) -> list[tuple[slice, ...]]:
        return [self.inner(index) for index in self.indices()]
