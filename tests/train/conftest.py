"""Synthetic training data: bright blobs on a noisy background, labels = the blobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile


def blobs(
    shape: tuple[int, int], rng: np.random.Generator, count: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros(shape, bool)
    for _ in range(count):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, 14)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image = rng.normal(100, 20, shape) + mask * 400
    return image.astype(np.uint16), mask.astype(np.uint8)


@pytest.fixture(scope="session")
def blob_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 image/label pairs of different sizes (labels named <image>_mask.tif), and a
    larger test image with its truth."""
    root = tmp_path_factory.mktemp("blobs")
    (root / "img").mkdir()
    (root / "lbl").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image, mask = blobs((160 + 16 * i, 192), rng, 12)
        tifffile.imwrite(root / "img" / f"im{i}.tif", image)
        tifffile.imwrite(root / "lbl" / f"im{i}_mask.tif", mask)
    image, mask = blobs((600, 700), rng, 120)
    tifffile.imwrite(root / "big.ome.tif", image, ome=True, metadata={"axes": "YX"})
    np.save(root / "big_truth.npy", mask)
    return root


def zoo_package(model: Path, archive: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``raysegment package`` of ``model`` into ``archive``, which bioimageio.core's
    ``test_model`` passes as the zoo tests a package (its format, its test output
    reproduced, every size it declares run): its rdf.yaml and its files."""
    import zipfile

    import yaml
    from bioimageio.core import test_model

    from raysegment.train.package import package

    package(model=str(model), output=str(archive), authors=["A. Tester"])
    summary = test_model(str(archive))
    failed = [(d.name, d.errors) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    with zipfile.ZipFile(archive) as z:
        files = {name: z.read(name) for name in z.namelist()}
    return yaml.safe_load(files["rdf.yaml"]), files


def segment_big(blob_data: Path, model: Path, out: Path, **keys: object) -> tuple[Any, float]:
    """``infer`` of ``blob_data``'s larger image with the trained ``model`` (masks into
    ``out``, ``keys`` beside): its summary, and the mask's IoU against the truth."""
    import zarr

    from raysegment.infer import infer

    summary = infer(
        input=str(blob_data / "big.ome.tif"),
        model=str(model),
        output=str(out),
        progress=False,
        tile={"size": [128]},
        finalize={"mode": "mask"},
        **keys,
    )
    pred = zarr.open_array(str(out / "big.ome.zarr" / "0"), mode="r")[0] > 0
    truth = np.load(blob_data / "big_truth.npy") > 0
    return summary, float((pred & truth).sum() / (pred | truth).sum())
