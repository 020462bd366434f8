"""Tile/block geometry, checked exhaustively over many shapes (no Ray, no torch)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raysegment.config import Blend
from raysegment.data.tiling import (
    BLENDS,
    AxisTiling,
    Tiling,
    blend_weights_1d,
    block_at,
    block_grid,
    iter_blocks,
    seam_repeats,
)


@pytest.mark.parametrize("length", [1, 7, 63, 64, 65, 100, 127, 128, 129, 500, 1001])
@pytest.mark.parametrize("tile,overlap", [(64, 0), (64, 16), (64, 31), (32, 8), (16, 15)])
def test_axis_tiles_cover_and_end_flush(length: int, tile: int, overlap: int) -> None:
    axis = AxisTiling.plan(length, tile, overlap)
    assert axis.starts[0] == 0
    assert list(axis.starts) == sorted(set(axis.starts))
    if length >= tile:
        assert axis.starts[-1] + tile == length  # last tile flush with the edge
        assert all(0 <= s and s + tile <= length for s in axis.starts)
    else:
        assert axis.starts == (0,)
    steps = np.diff(axis.starts)
    assert all(steps <= tile - overlap)
    assert all(steps[:-1] == tile - overlap)
    # crop: kept parts cover the axis with no gap; regular neighbours do not overlap.
    covered = np.zeros(length, int)
    for i in range(len(axis.starts)):
        lo, hi = axis.support(i, "crop")
        covered[lo:hi] += 1
    assert covered.min() >= 1
    if len(axis.starts) > 2:
        lo1, hi1 = axis.support(1, "crop")
        assert hi1 - lo1 == tile - overlap


@pytest.mark.parametrize("length", [64, 65, 77, 100, 110, 128, 205, 256, 301, 1001])
@pytest.mark.parametrize("tile", [32, 64, 96])
def test_spread_tiles_are_nnunets_sliding_window(length: int, tile: int) -> None:
    """``spread``: the starts of nnU-Net's sliding window (half-overlapping tiles spread
    evenly from one end to the other), the same count as a step apart."""
    sliding = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    if length < tile:
        return
    spread = AxisTiling.plan(length, tile, tile // 2, spread=True)
    (want,) = sliding.compute_steps_for_sliding_window((length,), (tile,), 0.5)
    assert list(spread.starts) == want
    assert len(spread.starts) == len(AxisTiling.plan(length, tile, tile // 2).starts)


@pytest.mark.parametrize("spread", [False, True])
@pytest.mark.parametrize("blend", ["gaussian", "crop"])
def test_a_window_is_tiled_as_an_image_of_its_own(spread: bool, blend: str) -> None:
    """Tiles over a window of the axis (an nnU-Net crop's box): those of an axis of the
    window's length moved to its start, its ends the edges; no weight outside it, and
    blocks wholly outside run no tile."""
    axis = AxisTiling.plan(300, 64, 16, window=(37, 250), spread=spread)
    alone = AxisTiling.plan(213, 64, 16, spread=spread)
    assert axis.starts == tuple(37 + s for s in alone.starts)
    assert [axis.support(i, blend) for i in range(len(axis.starts))] == [
        tuple(37 + e for e in alone.support(i, blend)) for i in range(len(alone.starts))
    ]
    tiling = Tiling((axis,), blend)
    blocks = {b.inner: b for b in iter_blocks(tiling, (32,))}
    assert blocks[((0, 32),)].num_tiles == 0 and blocks[((256, 288),)].num_tiles == 0
    assert blocks[((32, 64),)].tiles == ((0,),)


def test_a_window_shorter_than_the_tile_takes_one_tile_centred_on_it() -> None:
    assert AxisTiling.plan(300, 64, 16, window=(100, 140)).starts == (88,)
    assert AxisTiling.plan(300, 64, 16, window=(10, 30)).starts == (0,)  # inside the image
    assert AxisTiling.plan(300, 64, 16, window=(10, 30), spread=True).starts == (-12,)
    assert AxisTiling.plan(300, 64, 16, window=(0, 300)).window is None


def test_a_spread_tile_centred_on_a_short_axis_is_padded_on_both_sides() -> None:
    """nnU-Net's padding of a scan shorter than the patch: the block reads the whole axis
    and pads it on both sides; the tile starts at the padded region's start."""
    tiling = Tiling((AxisTiling.plan(10, 16, 8, spread=True),), "gaussian")
    assert tiling.axes[0].starts == (-3,)
    (block,) = iter_blocks(tiling, (16,))
    assert block.outer == ((0, 10),) and block.pad == ((3, 3),) and block.origin == (-3,)
    assert list(block.tile_origins(tiling)) == [((0,), (0,))]


def test_crop_keeps_centre_drops_half_overlap() -> None:
    axis = AxisTiling.plan(1000, 512, 128)
    assert axis.starts == (0, 384, 488)
    assert axis.kept(0) == (0, 448)
    assert axis.kept(1) == (64, 448)
    assert axis.kept(2) == (64, 512)


def test_blend_registry_matches_config_choices() -> None:
    assert set(BLENDS.names()) == {b.value for b in Blend}


def test_gaussian_weights_peak_in_centre_and_are_symmetric() -> None:
    t = Tiling.plan((100, 100), (32, 32), 0.25, "gaussian")
    w = t.weights((0, 0))
    assert w.shape == (32, 32)
    assert np.allclose(w, w[::-1, ::-1]) and np.allclose(w, w.T)
    assert w[15:17, 15:17].min() == w.max()
    assert w.min() > 0


@pytest.mark.parametrize("shape", [(301, 437), (64, 64), (1000, 33), (37, 45, 51)])
@pytest.mark.parametrize("blend", ["gaussian", "constant", "crop"])
def test_blocks_partition_image_and_carry_every_reaching_tile(
    shape: tuple[int, ...], blend: str
) -> None:
    dims = len(shape)
    tile = (32,) * dims
    block = (64,) * dims
    tiling = Tiling.plan(shape, tile, 0.25, blend)
    owner = np.zeros(shape, int)
    blocks = list(iter_blocks(tiling, block))
    assert len(blocks) == int(np.prod(block_grid(tiling, block)))
    for b in blocks:
        owner[tuple(slice(a, c) for a, c in b.inner)] += 1
        # inner edges are block (hence chunk) edges, or the image edge
        for (a, c), size, n in zip(b.inner, block, shape, strict=False):
            assert a % size == 0 and (c % size == 0 or c == n)
        # outer = union of the tiles, clipped; padding only where a tile exceeds the image
        for axis, idx, (lo, hi), (p0, p1) in zip(
            tiling.axes, b.tiles, b.outer, b.pad, strict=False
        ):
            assert lo == axis.starts[idx[0]] and p0 == 0
            assert hi + p1 == axis.starts[idx[-1]] + axis.tile
            assert hi - lo <= max(64 + 2 * 32, 32)  # memory bound: block + 2 tiles
        # every grid tile with weight inside the block is in the block, no other
        for axis, idx, (a, c) in zip(tiling.axes, b.tiles, b.inner, strict=False):
            reach = [
                i
                for i in range(len(axis.starts))
                if axis.support(i, blend)[0] < c and axis.support(i, blend)[1] > a
            ]
            assert list(idx) == reach
        assert block_at(tiling, block, b.index) == b
    assert (owner == 1).all()


def test_blocks_repeat_only_the_tiles_straddling_their_seams() -> None:
    tiling = Tiling.plan((96 * 20 + 32,), (128,), 0.25, "crop")  # step 96, 21 tiles
    blocks = list(iter_blocks(tiling, (192,)))
    seams = len(blocks) - 1
    assert sum(b.num_tiles for b in blocks) <= tiling.num_tiles + seams


def test_tile_weights_are_outer_products() -> None:
    t = Tiling.plan((50, 60, 70), (16, 16, 16), 0.5, "crop")
    for index in itertools.product(*(range(len(a.starts)) for a in t.axes)):
        w = t.weights(index)
        assert w.shape == (16, 16, 16)
        assert set(np.unique(w)) <= {0.0, 1.0}


@pytest.mark.parametrize("blend", ["gaussian", "constant", "crop"])
@pytest.mark.parametrize(
    "length,tile,overlap,halo", [(1000, 96, 24, 12), (300, 64, 20, 5), (50, 64, 16, 8)]
)
def test_a_halo_weighs_nothing_but_at_the_image_edges(length, tile, overlap, halo, blend) -> None:
    """Within ``halo`` of a tile's edges its weight is 0, except where the edge is the
    image's; every pixel keeps a tile weighing it, and ``support`` is where tiles weigh."""
    axis = AxisTiling.plan(length, tile, overlap, halo)
    total = np.zeros(length)
    for i, start in enumerate(axis.starts):
        w = blend_weights_1d(axis, i, blend)
        if start > 0:
            assert not w[:halo].any()
        if start + tile < length:
            assert not w[tile - halo :].any()
        lo, hi = axis.support(i, blend)
        inside = w[: length - start]
        assert (inside[lo - start : hi - start] > 0).all() and not inside[hi - start :].any()
        total[start : start + tile] += inside
    assert (total > 0).all()
    assert blend_weights_1d(axis, 0, blend)[0] > 0  # the image's edge


@pytest.mark.parametrize(
    "bad",
    [
        dict(length=0, tile=4, overlap=0),
        dict(length=10, tile=4, overlap=4),
        dict(length=100, tile=32, overlap=8, halo=5),  # tiles overlap by less than two halos
    ],
)
def test_axis_rejects_bad_geometry(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AxisTiling.plan(**bad)


@pytest.mark.parametrize(
    "shape,tile,block,blend",
    [
        ((8192, 8192), (512, 512), (4096, 4096), "gaussian"),
        ((1000, 700), (64, 64), (256, 128), "crop"),
        ((90, 100, 80), (32, 32, 32), (64, 32, 64), "constant"),
        ((300,), (64,), (512,), "gaussian"),  # one block: nothing repeats
    ],
)
def test_seam_repeats_counts_the_tiles_blocks_run(shape, tile, block, blend) -> None:
    tiling = Tiling.plan(shape, tile, 0.25, blend)
    run = sum(b.num_tiles for b in iter_blocks(tiling, block))
    assert seam_repeats(tiling, block) == pytest.approx(run / tiling.num_tiles)
    assert seam_repeats(tiling, [n for n in shape]) == 1.0
