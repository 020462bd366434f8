"""Pyramid levels: valid NGFF multiscales, each level the downsampled previous one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from raysegment.infer import infer
from raysegment.infer.pyramid import downsample
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


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("mode", ["mask", "probabilities"])
def test_levels_are_valid_ngff_and_each_halves_the_previous(
    tmp_path: Path, make_model, ome_tiff, mode: str
) -> None:
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
        chunks=[64],
        tile={"size": [64]},
        finalize={"mode": mode},
        quicklook=False,
    )
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
