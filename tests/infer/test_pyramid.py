"""Pyramid levels: valid NGFF multiscales, each level the downsampled previous one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from raysegment.infer import infer, pipeline
from raysegment.infer.pyramid import block_levels, downsample
from tests.conftest import random_image


def test_integer_outputs_keep_every_second_pixel_floats_average_windows() -> None:
    labels = (np.arange(35).reshape(5, 7) % 4).astype(np.uint8)
    np.testing.assert_array_equal(downsample(labels, (True, True)), labels[::2, ::2])
    scores = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    want = [[scores[i : i + 2, j : j + 2].mean() for j in range(0, 7, 2)] for i in range(0, 5, 2)]
    np.testing.assert_allclose(downsample(scores, (True, True)), want, rtol=1e-6)
    assert downsample(np.zeros((3, 5, 7), np.float32), (False, True, True)).shape == (3, 3, 4)
    # A volume with odd sizes: edge windows average the pixels they have.
    vol = np.random.default_rng(1).random((2, 5, 6, 7)).astype(np.float32)
    want = np.empty((2, 3, 3, 4))
    for c, i, j, k in np.ndindex(want.shape):
        want[c, i, j, k] = vol[c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, 2 * k : 2 * k + 2].mean()
    np.testing.assert_allclose(downsample(vol, (False, True, True, True)), want, rtol=1e-6)


@pytest.mark.parametrize(
    "shape,block,want",
    [
        ((1, 4096, 4096), {"y": 4096, "x": 4096}, 4),  # one block: every level
        ((1, 8192, 8192), {"y": 4096, "x": 4096}, 2),  # blocks of 4 chunks: levels 1, 2
        ((1, 8192, 8192), {"y": 2048, "x": 4096}, 1),
        ((1, 8192, 3000), {"y": 4096, "x": 4096}, 2),  # one block across x
        ((1, 5000, 5000), {"y": 4096, "x": 4096}, 2),  # level 3's chunks: the whole level
        ((1, 8192, 8192), {"y": 1024, "x": 1024}, 0),  # a block per chunk
    ],
)
def test_blocks_write_the_levels_whose_chunks_they_alone_cover(shape, block, want) -> None:
    assert block_levels(shape, (1, 1024, 1024), "cyx", "yx", block, 5) == want


def test_volumes_count_z_where_it_is_halved() -> None:
    chunks = (1, 128, 128, 128)
    yx = {"y": 512, "x": 512}
    assert block_levels((1, 256, 1024, 1024), chunks, "czyx", "zyx", yx | {"z": 256}, 5) == 2
    assert block_levels((1, 1024, 1024, 1024), chunks, "czyx", "zyx", yx | {"z": 256}, 5) == 1
    # A 2D model on a z-stack: z is not halved.
    assert block_levels((1, 9, 1024, 1024), chunks, "czyx", "yx", yx, 5) == 2


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    "mode,block,first", [("mask", None, 3), ("probabilities", None, 3), ("probabilities", 64, 2)]
)
def test_levels_are_valid_ngff_and_each_halves_the_previous(
    tmp_path: Path, make_model, ome_tiff, monkeypatch, mode: str, block: int | None, first: int
) -> None:
    """Blocks write the levels whose chunks are theirs (``first`` - 1 of them: all of
    them with blocks of 4 chunks, level 1 only with blocks of 2); the driver the rest."""
    built: list[int] = []
    build = pipeline.build_pyramid

    def recording(path, axes, pyramid_axes, levels, first=1):
        built.append(first)
        build(path, axes, pyramid_axes, levels, first)

    monkeypatch.setattr(pipeline, "build_pyramid", recording)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    path = ome_tiff(random_image((300, 260)), PhysicalSizeX=0.5, PhysicalSizeY=0.5)
    model, _ = make_model()
    infer(
        input=str(path),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        levels=3,
        chunks=[32 if block else 64],
        **({"block": [block]} if block else {}),
        tile={"size": [64]},
        finalize={"mode": mode},
        quicklook=False,
    )
    assert built == [first]
    out = tmp_path / "out" / "img.ome.zarr"
    group = zarr.open_group(str(out), mode="r")
    Image.from_zarr(group)  # NGFF 0.5 multiscales with three datasets
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
    assert scales == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    levels = [np.asarray(group[str(k)][:]) for k in range(3)]
    assert [a.shape for a in levels] == [(2, 300, 260), (2, 150, 130), (2, 75, 65)]
    for k in (1, 2):
        np.testing.assert_allclose(levels[k], downsample(levels[k - 1], (False, True, True)))
    if mode == "mask":
        np.testing.assert_array_equal(levels[2], levels[0][:, ::4, ::4])
    nodes = list(Reader(parse_url(str(out)))())
    assert len(nodes[0].data) == 3
