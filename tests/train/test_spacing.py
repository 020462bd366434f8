"""nnU-Net's planner: the voxel size it trains at (resample_to=median) and images read at
it, and the patch and batch it plans (plan=3d_fullres / 2d)."""

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


def _nnunets_plan(
    arch: str, spacing: list, median: list, voxels: float, classes: int, gpu_gb: float = 8.0
) -> tuple:
    """nnU-Net's planner's (its default one; ResEnc M's for the residual network, L's at
    24 GB) patch and batch size of a configuration of ``spacing`` and ``median`` shape,
    one channel."""
    default = pytest.importorskip(
        "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner"
    )
    from dynamic_network_architectures.architectures import unet
    from nnunetv2.experiment_planning.experiment_planners.residual_unets import (
        residual_encoder_unet_planners as resenc,
    )

    plain, large = arch == "PlainConvUNet", gpu_gb == 24
    cls = default.ExperimentPlanner if plain else resenc.nnUNetPlannerResEncM
    cls = resenc.nnUNetPlannerResEncL if large else cls
    planner = cls.__new__(cls)  # its settings, without a dataset on disk
    references = {"plain": (85, 560), "M": (135, 680), "L": (380, 2100)}
    second, third = references["plain" if plain else "L" if large else "M"]
    vars(planner).update(
        UNet_base_num_features=32,
        UNet_class=unet.PlainConvUNet if plain else unet.ResidualEncoderUNet,
        UNet_reference_val_3d=third * 1_000_000,
        UNet_reference_val_2d=second * 1_000_000,
        UNet_reference_val_corresp_GB=24 if large else 8,
        UNet_vram_target_GB=gpu_gb,
        UNet_reference_val_corresp_bs_2d=12,
        UNet_reference_val_corresp_bs_3d=2,
        UNet_featuremap_min_edge_length=4,
        UNet_blocks_per_stage_encoder=(2,) * 14 if plain else (1, 3, 4, 6, 6, 6, 6, 6, 6, 6),
        UNet_blocks_per_stage_decoder=(2,) * 13 if plain else (1,) * 9,
        UNet_min_batch_size=2,
        UNet_max_features_2d=512,
        UNet_max_features_3d=320,
        max_dataset_covered=1 if large else 0.05,
        dataset_json={"channel_names": {"0": "CT"}, "labels": {str(i): i for i in range(classes)}},
        preprocessor_name="DefaultPreprocessor",
        determine_resampling=lambda: (len, {}, len, {}),
        determine_segmentation_softmax_export_fn=lambda: (len, {}),
        determine_normalization_scheme_and_whether_mask_is_used_for_norm=lambda: (["Z"], [0]),
    )
    plan = planner.get_plans_for_configuration(spacing, median, "id", voxels, {})
    return tuple(int(v) for v in plan["patch_size"]), int(plan["batch_size"])


@pytest.mark.parametrize(
    ("arch", "spacing", "median", "cases", "gpu_gb"),
    [
        ("PlainConvUNet", [2.5, 0.8, 0.8], [120, 512, 512], 40, 8),  # CT: shrunk to fit
        ("PlainConvUNet", [5.0, 0.7, 0.7], [30, 512, 512], 40, 8),  # thick slices
        ("PlainConvUNet", [0.7, 0.7, 3.0], [400, 300, 40], 10, 8),  # the coarse axis last
        ("PlainConvUNet", [1.0, 1.0, 1.0], [60, 70, 64], 300, 8),  # small: batch from memory
        ("PlainConvUNet", [0.8, 0.8], [512, 512], 40, 8),  # 2D
        ("PlainConvUNet", [1.0, 1.0, 1.0], [138, 169, 138], 40, 11),  # another memory
        ("ResidualEncoderUNet", [1.0, 1.0, 1.0], [138, 169, 138], 40, 8),  # ResEnc M
        ("ResidualEncoderUNet", [1.0, 1.0, 1.0], [64, 64, 64], 300, 24),  # L: no 5% cap
    ],
)
def test_the_planned_patch_and_batch_are_nnunets(arch, spacing, median, cases, gpu_gb) -> None:
    """``planned_patch`` gives nnU-Net's planner's patch and batch size for a GPU of that
    memory (its images' axes the coarsest first, as nnU-Net transposes them)."""
    from raysegment.train.components import build_model
    from raysegment.train.spacing import planned_patch

    voxels = float(np.prod(median)) * cases

    def network(patch):
        return build_model(arch, "", 1, 3, "random", patch, 32, tuple(spacing))

    patch, batch = planned_patch(arch, spacing, median, voxels, network, gpu_gb)
    order = [int(np.argmax(spacing)), *(a for a in range(3) if a != np.argmax(spacing))]
    order = order if len(spacing) == 3 else [0, 1]
    their = _nnunets_plan(
        arch, [spacing[a] for a in order], [median[a] for a in order], voxels, 3, gpu_gb
    )
    assert (tuple(patch[a] for a in order), batch) == their


def test_plan_3d_fullres_trains_at_the_patch_and_batch_nnunet_plans(tmp_path: Path) -> None:
    """``plan=3d_fullres patch_size=null``: the patch and batch nnU-Net's planner gives
    the training images' median shape at the voxel they are read at; a plan beside a
    patch, a plan of an SMP model, a plan nnU-Net has not, no patch at all: one error."""
    from dataclasses import replace

    from raysegment.train.components import check_combination
    from raysegment.train.trainer import _epoch_patches, _worker_batch

    _volumes(tmp_path, [2.0, 2.0, 3.0], depth=20)
    settings = ["plan=3d_fullres", "patch_size=null", "model.arch=PlainConvUNet"]
    data = prepare(_cfg(tmp_path, *settings, "resample_to=median"))
    assert [p.image.info.shape[2:] for p in data.pairs] == [(20, 48, 48)] * 2 + [(30, 48, 48)]
    spacing = list(data.pixel[0].values())
    assert spacing == pytest.approx([2.0, 0.5, 0.5])
    their = _nnunets_plan("PlainConvUNet", spacing, [20, 48, 48], 20 * 48 * 48 * 3.0, 2)
    assert (data.patch, data.batch) == their == ((20, 48, 48), 2)
    # The planned batch is the step's: each of 2 workers takes half, 3 of 5 rounded up.
    two = _cfg(tmp_path, *settings, "num_workers=2")
    assert _worker_batch(two, data, False) == 1
    assert _worker_batch(two, replace(data, batch=5), False) == 3
    assert _worker_batch(_cfg(tmp_path, *settings, "batch_size=4"), data, False) == 4
    # An epoch of nnU-Net's steps: 250 of each worker's batch, whatever the batch.
    steps = _cfg(tmp_path, *settings, "num_workers=2", "steps_per_epoch=250")
    assert _epoch_patches(steps, _worker_batch(steps, replace(data, batch=5), False)) == 1500
    assert _epoch_patches(two, 3) == two.patches_per_epoch == 256
    with pytest.raises(ConfigError, match=r"steps_per_epoch=0 must be >= 1"):
        _cfg(tmp_path, *settings, "steps_per_epoch=0")
    flat = ["plan=2d", "patch_size=null", "model.arch=PlainConvUNet"]
    assert prepare(_cfg(tmp_path, *flat)).patch == (48, 48)
    with pytest.raises(ConfigError, match=r"plan=3d_fullres plans the patch, and patch_size"):
        _cfg(tmp_path, "plan=3d_fullres")
    with pytest.raises(ConfigError, match=r"plan='3d': choose 3d_fullres or 2d"):
        _cfg(tmp_path, "plan=3d", "patch_size=null")
    with pytest.raises(ConfigError, match=r"patch_size=null: give a patch .* or plan=3d_fullres"):
        _cfg(tmp_path, "patch_size=null")
    with pytest.raises(ConfigError, match=r"plan=3d_fullres plans nnU-Net's networks"):
        check_combination(_cfg(tmp_path, "plan=3d_fullres", "patch_size=null"))


def test_images_smaller_than_the_planned_patch_are_padded_as_nnunet_pads_them(
    tmp_path: Path,
) -> None:
    """Small volumes (a hippocampus dataset's: ~36 x 50 x 35 voxels) plan a patch larger
    than each of them along some axis (nnU-Net rounds it up to what its network halves it
    by); each is padded to it around its centre, as nnU-Net pads: the image at its
    normalization's mean (0 normalized), the labels background, the sampled foreground
    voxels moved with them; patches read at the patch's size."""
    from raysegment.train.data import read_patches

    rng = np.random.default_rng(4)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    shapes = [(36, 50, 35), (30, 44, 40), (40, 52, 33)]
    images, labels = [], []
    for i, shape in enumerate(shapes):
        image = rng.integers(100, 900, shape, dtype=np.uint16)
        label = (image > 700).astype(np.uint8) + (image > 850)
        meta = {"axes": "ZYX", "PhysicalSizeZ": 1.0, "PhysicalSizeY": 1.0, "PhysicalSizeX": 1.0}
        tifffile.imwrite(tmp_path / "img" / f"h{i}.ome.tif", image, metadata=meta)
        tifffile.imwrite(tmp_path / "lbl" / f"h{i}.tif", label)
        images.append(image)
        labels.append(label)
    settings = ["plan=3d_fullres", "patch_size=null", "model.arch=PlainConvUNet"]
    data = prepare(_cfg(tmp_path, *settings, "mode=multiclass", "train_fraction=0.67"))
    median = [int(v) for v in np.median(shapes, axis=0)]
    their = _nnunets_plan("PlainConvUNet", [1.0] * 3, median, np.prod(median) * 3.0, 3)
    assert (data.patch, data.batch) == their
    assert data.patch == (40, 56, 40)  # over every image along some axis
    for pair, image, label in zip(data.pairs, images, labels, strict=True):
        shape = tuple(max(n, p) for n, p in zip(image.shape, data.patch, strict=True))
        assert pair.image.info.shape[2:] == shape == pair.label.info.shape[2:]
        at = [(m - n) // 2 for m, n in zip(shape, image.shape, strict=True)]
        inside = tuple(slice(a, a + n) for a, n in zip(at, image.shape, strict=True))
        whole = tuple((0, n) for n in shape)
        read, drawn = pair.image.read(0, (0,), whole)[0], pair.label.read(0, (0,), whole)[0]
        np.testing.assert_array_equal(read[inside], image)
        np.testing.assert_array_equal(drawn[inside], label)
        outside = np.ones(shape, bool)
        outside[inside] = False
        assert (np.abs(read[outside] - data.mean[0]) <= 0.5).all() and not drawn[outside].any()
    for k, spots in enumerate(data.foreground):
        for (_, value), at in spots.items():
            drawn = data.pairs[k].label.read(
                0, (0,), tuple((0, n) for n in data.pairs[k].image.info.shape[2:])
            )[0]
            assert (drawn[tuple(at.T)] == value).all()
    specs = data.train_specs(4, seed=0)
    batch = read_patches({k: np.array([s[k] for s in specs]) for k in specs[0]}, data, "nnunet")
    assert batch["x"].shape == (4, 1, *data.patch) and batch["y"].shape == (4, *data.patch)
