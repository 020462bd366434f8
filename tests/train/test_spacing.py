"""resample_to=median: the voxel size nnU-Net's planner trains at, and images read at it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from raysegment.config import TrainConfig, load_config
from raysegment.errors import ConfigError, InputImageError
from raysegment.train.data import prepare
from raysegment.train.spacing import target_spacing

CASES = [
    # isotropic-ish MR: the median of each axis
    ([[1.0, 0.9, 0.9], [1.2, 1.0, 1.0], [1.1, 0.8, 0.8]], [[160, 200, 200]] * 3),
    # CT of thick slices, few of them: z's 10th percentile, not its median
    ([[5.0, 0.8, 0.8], [2.5, 0.7, 0.7], [5.0, 0.75, 0.75], [3.0, 0.8, 0.8]], [[40, 512, 512]] * 4),
    # thick slices, but as many as pixels: the median
    ([[5.0, 0.8, 0.8], [2.5, 0.7, 0.7], [5.0, 0.75, 0.75]], [[400, 512, 512]] * 3),
    # the 10th percentile finer than the other axes: kept just coarser
    ([[0.5, 0.6, 0.6], [6.0, 0.6, 0.6], [6.0, 0.6, 0.6]], [[20, 256, 256]] * 3),
    # 2D
    ([[0.5, 0.5], [0.25, 0.25], [0.4, 0.4]], [[1000, 1000]] * 3),
]


@pytest.mark.parametrize("spacings,shapes", CASES)
def test_the_target_spacing_is_nnunets(spacings: list, shapes: list) -> None:
    """As nnU-Net's ``determine_fullres_target_spacing`` finds it for the same spacings
    and shapes."""
    planner = pytest.importorskip(
        "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner"
    )
    stub = SimpleNamespace(
        overwrite_target_spacing=None,
        anisotropy_threshold=3,
        dataset_fingerprint={"spacings": spacings, "shapes_after_crop": shapes},
    )
    want = planner.ExperimentPlanner.determine_fullres_target_spacing(stub)
    np.testing.assert_allclose(target_spacing(spacings, shapes), want)


def _volumes(root: Path, spacings: list[float], depth: int = 10) -> None:
    rng = np.random.default_rng(2)
    (root / "img").mkdir()
    (root / "lbl").mkdir()
    for i, dz in enumerate(spacings):
        image = rng.integers(0, 999, (depth, 48, 48), dtype=np.uint16)
        meta = {"axes": "ZYX", "PhysicalSizeZ": dz, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
        tifffile.imwrite(root / "img" / f"v{i}.ome.tif", image, metadata=meta)
        tifffile.imwrite(root / "lbl" / f"v{i}.tif", (image > 500).astype(np.uint8))


def _cfg(root: Path, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        (),
        [f"images.dir={root / 'img'}", f"labels.dir={root / 'lbl'}", "output=o", *overrides],
    )


def test_volumes_of_several_slice_spacings_train_at_nnunets_voxel(tmp_path: Path) -> None:
    """Slices of 2, 3 and 5 µm, ten of them under 48^2 pixels of 0.5 µm: z is anisotropic,
    so nnU-Net trains at its 10th percentile, 2.2 µm (not the median, 3): each volume read
    at it (10 slices of 3 µm become 14 of 2.14), and the model records it."""
    from raysegment.train.export import model_metadata

    _volumes(tmp_path, [2.0, 3.0, 5.0])
    data = prepare(_cfg(tmp_path, "patch_size=[4,16,16]", "resample_to=median"))
    assert [p.planes for p in data.pairs] == [9, 14, 23]  # round(10 x spacing / 2.2)
    assert [p.size for p in data.pairs] == [(48, 48)] * 3
    # The network is planned for the voxels read (an extent kept: 30 µm in 14 slices).
    assert data.spacing == pytest.approx((2.2, 0.5, 0.5), rel=0.03)
    meta = model_metadata(data)
    assert meta["pixel_size"] == pytest.approx({"z": 2.2, "y": 0.5, "x": 0.5})
    # 2D patches of the same volumes: the planes' pixel only
    flat = prepare(_cfg(tmp_path, "patch_size=[16,16]", "resample_to=median"))
    assert flat.pixel == ({"y": 0.5, "x": 0.5}, "micrometer")
    assert [p.planes for p in flat.pairs] == [10, 10, 10]


def test_resample_to_is_median_alone(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"resample_to='mean': choose median"):
        _cfg(tmp_path, "resample_to=mean")
    with pytest.raises(ConfigError, match=r"give one of them, without input_level"):
        _cfg(tmp_path, "resample_to=median", "resample_size=[0.5]")
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    for i in range(2):
        image = np.zeros((10, 48, 48), np.uint16)
        tifffile.imwrite(tmp_path / "img" / f"v{i}.tif", image, metadata={"axes": "ZYX"})
        tifffile.imwrite(tmp_path / "lbl" / f"v{i}.tif", image.astype(np.uint8))
    with pytest.raises(InputImageError, match=r"v0.tif: no pixel size recorded along z"):
        prepare(_cfg(tmp_path, "patch_size=[4,16,16]", "resample_to=median"))


def test_resampling_nnunet_reads_images_and_labels_as_nnunet_preprocesses_them(
    tmp_path: Path,
) -> None:
    """``resampling=nnunet``: volumes of 4 µm slices of 0.8 µm pixels read at 3 x 0.6 x 0.7
    µm, each image as nnU-Net's ``resample_data_or_seg_to_shape`` resamples it (a cubic
    spline in-plane, the nearest slice along z: nnU-Net clips each slice to its range,
    raysegment keeps the spline's overshoot), its labels exactly as nnU-Net resamples
    segmentations; the model records the scheme, which infer's ``resample=true``
    follows. ``resampling=linear`` (the default) reads otherwise."""
    from scipy.ndimage import gaussian_filter, zoom

    from raysegment.data.resampled import NNUNET_RESAMPLING
    from raysegment.train.export import model_metadata

    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    images, labels = [], []
    for i in range(2):
        image = gaussian_filter(rng.normal(0, 3000, (8, 40, 36)), 1.5) + 3000
        coarse = rng.integers(0, 3, (4, 8, 6))
        label = zoom(coarse, [8 / 4, 40 / 8, 36 / 6], order=0).astype(np.uint8)
        meta = {"axes": "ZYX", "PhysicalSizeZ": 4.0, "PhysicalSizeY": 0.8, "PhysicalSizeX": 0.8}
        tifffile.imwrite(tmp_path / "img" / f"v{i}.ome.tif", image.astype(np.uint16), metadata=meta)
        tifffile.imwrite(tmp_path / "lbl" / f"v{i}.tif", label)
        images.append(image.astype(np.uint16).astype(np.float64))
        labels.append(label)
    settings = ["patch_size=[4,16,16]", "resample_size=[3.0,0.6,0.7]", "mode=multiclass"]
    data = prepare(_cfg(tmp_path, *settings, "resampling=nnunet"))
    spacing, new = (4.0, 0.8, 0.8), (3.0, 0.6, 0.7)
    target = tuple(int(n) for n in resampling.compute_new_shape((8, 40, 36), spacing, new))
    whole = tuple((0, n) for n in target)
    for pair, image, label in zip(data.pairs, images, labels, strict=True):
        assert pair.image.info.shape[2:] == target == pair.label.info.shape[2:]
        want = resampling.resample_data_or_seg_to_shape(
            image[None], target, spacing, new, False, 3, 0, None
        )[0]
        got = pair.image.read(0, (0,), whole)[0]
        low = want.min(axis=(1, 2), keepdims=True)
        high = want.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(np.clip(got, low, high), want, atol=0.05)
        spread = want.max() - want.min()
        assert np.abs(got - want).max() < 0.05 * spread  # the overshoot nnU-Net clips
        want = resampling.resample_data_or_seg_to_shape(
            label[None].astype(np.int16), target, spacing, new, True, 1, 0, None
        )[0]
        np.testing.assert_array_equal(pair.label.read(0, (0,), whole)[0], want)
    first = data.pairs[0].image.read(0, (0,), whole)[0]
    assert data.resampling == NNUNET_RESAMPLING
    assert model_metadata(data, "PlainConvUNet")["resampling"] == NNUNET_RESAMPLING
    linear = prepare(_cfg(tmp_path, *settings))
    assert linear.resampling is None and "resampling" not in model_metadata(linear)
    got = linear.pairs[0].image.read(0, (0,), whole)[0]
    assert np.abs(got - first).max() > 0.05 * spread  # linear along z too: not nnU-Net's


def test_resampling_is_linear_or_nnunet(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"resampling='cubic': choose linear .* or nnunet"):
        _cfg(tmp_path, "resampling=cubic")
