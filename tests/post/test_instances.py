"""Block-wise instances == the same method on the whole image at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

from raysegment.config import InstanceMethod, InstancesConfig
from raysegment.data.tiling import Grid
from raysegment.post.instances import Volume, segment, segment_blocks


def blobs(shape: tuple[int, ...], count: int, seed: int = 0) -> np.ndarray:
    """A probability map of touching round objects, some across block seams, and a long
    thin object crossing many blocks."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    prob = np.zeros(shape, np.float32)
    for _ in range(count):
        centre = rng.uniform(0, shape)
        radius = rng.uniform(3, 7)
        d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        prob = np.maximum(prob, np.exp(-d2 / (2 * radius**2)))
    snake = np.zeros(shape, bool)
    snake[(shape[0] // 2,) * (len(shape) - 1) + (slice(None),)] = True
    prob[ndimage.binary_dilation(snake, iterations=1)] = 0.8
    return prob.astype(np.float32)  # what outputs hold


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal background, and a one-to-one map between the labels of a and b."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


def _run(tmp_path: Path, prob: np.ndarray, cfg: InstancesConfig, block: int) -> np.ndarray:
    root = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="w")
    root.create_array("0", data=prob[None], chunks=(1,) + (block,) * prob.ndim)
    for name in ("labels", "seeds"):
        root.create_array(
            name,
            shape=(1, *prob.shape),
            chunks=(1,) + (block,) * prob.ndim,
            dtype="uint32",
            fill_value=0,
        )
    vol = Volume(str(tmp_path / "out.ome.zarr"), "c" + "zyx"[3 - prob.ndim :], 0, None, 1)
    grid = Grid(prob.shape, (block,) * prob.ndim)
    out = str(tmp_path / "out.ome.zarr")
    n = segment_blocks(vol, grid, cfg, f"{out}/labels", f"{out}/seeds")
    labels = np.asarray(root["labels"][0])
    assert set(np.unique(labels)) == set(range(n + 1))  # labels 1..n, each present
    return labels


CASES = [
    InstancesConfig(method=InstanceMethod.connected_components, threshold=0.5, min_size=5),
    InstancesConfig(
        method=InstanceMethod.watershed,
        threshold=0.3,
        seed_threshold=0.9,
        min_seed_size=2,
        min_size=10,
    ),
    InstancesConfig(method=InstanceMethod.voronoi_otsu, spot_sigma=2.0, outline_sigma=1.0),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: c.method.value)
@pytest.mark.parametrize("shape,block", [((150, 130), 32), ((40, 52, 44), 16)], ids=["2d", "3d"])
def test_blockwise_equals_whole_image(tmp_path: Path, cfg, shape, block) -> None:
    prob = blobs(shape, count=40 if len(shape) == 2 else 25)
    whole = segment(prob, cfg)
    got = _run(tmp_path, prob, cfg, block)
    assert whole.max() > 5
    assert same_partition(got, whole)
    # Objects crossing seams kept one label: some label spans several blocks.
    spans = [
        len({tuple(c // block for c in np.argwhere(got == label)[i]) for i in (0, -1)})
        for label in range(1, int(got.max()) + 1)
    ]
    assert max(spans) > 1


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: c.method.value)
def test_blocks_far_from_stored_chunks_are_run_by_no_step(tmp_path: Path, cfg) -> None:
    """Objects in one corner of a map whose other chunks were never stored (blocks the
    model skipped): blocks with no stored chunk within the steps' halo are read by no
    step, and the labels are still the whole image's."""
    from raysegment.data.sources import open_source
    from raysegment.post.finish import _void
    from raysegment.post.instances import _serial, halo

    cfg = dataclasses.replace(cfg, halo=32)
    prob = np.zeros((192, 192), np.float32)
    prob[:64, :64] = blobs((64, 64), count=8)
    root = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="w")
    root.create_array("0", data=prob[None], chunks=(1, 32, 32))  # zeros not stored
    for name in ("labels", "seeds"):
        root.create_array(name, shape=(1, 192, 192), chunks=(1, 32, 32), dtype="uint32")
    grid = Grid(prob.shape, (32, 32))
    unstored = open_source(tmp_path / "out.ome.zarr" / "0", axes="cyx").unstored()
    void = _void(grid, unstored, 0, 1, halo(cfg))
    assert len(void) == 36 - 16  # the blocks from 128 on, in y or x
    runs: list[int] = []

    def counted(fn, calls):
        runs.append(len(calls))
        return _serial(fn, calls)

    vol = Volume(str(tmp_path / "out.ome.zarr"), "cyx", 0, None, 1)
    out = str(tmp_path / "out.ome.zarr")
    n = segment_blocks(vol, grid, cfg, f"{out}/labels", f"{out}/seeds", counted, void)
    assert runs and max(runs) == 16
    labels = np.asarray(root["labels"][0])
    assert n > 3 and same_partition(labels, segment(prob, cfg))
