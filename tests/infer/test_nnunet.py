"""nnU-Net v2 trainings as ``model=``: each run compared with nnU-Net's own predictor
(``nnUNetPredictor``) on the same image, the trainings written here as nnU-Net lays them
out (plans, dataset, a checkpoint a fold) with networks of random weights."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from raysegment.data.sources import open_sources
from raysegment.errors import InputImageError, ModelLoadError
from raysegment.infer.model import read_models
from tests.conftest import random_image
from tests.data.test_nifti import write_nifti

pytest.importorskip("dynamic_network_architectures")

CT_STATS = {
    "max": 3000.0,
    "mean": 150.0,
    "median": 120.0,
    "min": -1000.0,
    "percentile_00_5": -200.0,
    "percentile_99_5": 700.0,
    "std": 230.0,
}


def _configuration(
    dims: int,
    patch: list[int],
    spacing: list[float],
    features: list[int],
    strides: list[list[int]] | None = None,
    **extra: Any,
) -> dict:
    """A configuration of a stage per ``features`` (each after the first halving every
    axis, unless ``strides`` says), in the plans' format of nnU-Net 2.4 on."""
    stages = len(features)
    strides = strides or [[1] * dims] + [[2] * dims] * (stages - 1)
    return {
        "data_identifier": "nnUNetPlans_x",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch,
        "median_image_size_in_voxels": patch,
        "spacing": spacing,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {
            "is_seg": False,
            "order": 3,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_seg_kwargs": {
            "is_seg": True,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": stages,
                "features_per_stage": features,
                "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
                "kernel_sizes": [[3] * dims] * stages,
                "strides": strides,
                "n_conv_per_stage": [2] * stages,
                "n_conv_per_stage_decoder": [2] * (stages - 1),
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
        **extra,
    }


def write_training(
    root: Path,
    configuration: str = "3d_fullres",
    folds: tuple[str, ...] = ("0",),
    channels: tuple[str, ...] = ("CT",),
    labels: tuple[str, ...] | dict[str, Any] = ("background", "liver", "tumour"),
    transpose: tuple[int, int, int] = (0, 1, 2),
    features: tuple[int, ...] = (4, 8, 16),
    patch: tuple[int, ...] | None = None,
    mirrored: tuple[int, ...] | None | str = "all",
    regions: list[int] | None = None,
    zscore: str | None = None,
    ct_first: bool = False,
    **extra: Any,
) -> Path:
    """An nnU-Net training's output directory as nnU-Net v2 writes it: plans, dataset, and
    each fold's final checkpoint (a network of random weights, seeded by the fold; a
    stage per ``features``; ``patch`` in the network's axis order; ``mirrored``: the
    axes its checkpoint allows mirroring along, in the network's order, every one by
    default, as nnU-Net's trainer). ``labels`` as dataset.json's where a dict (a
    region-based training's, ``regions`` its ``regions_class_order``: an output a
    region). ``zscore``: every channel Z-score normalized, over each image's nonzero
    ``"box"`` or within its nonzero ``"region"`` (``use_mask_for_norm``), as nnU-Net plans
    MR, but with ``ct_first`` the first CT-normalized (a PET/CT's, a CT beside an MR);
    else the configuration's normalization (CT's, unless ``extra`` gives one)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    if zscore is not None:
        extra["normalization_schemes"] = ["ZScoreNormalization"] * len(channels)
        extra["use_mask_for_norm"] = [zscore == "region"] * len(channels)
        if ct_first:
            extra["normalization_schemes"][0] = "CTNormalization"
            extra["use_mask_for_norm"][0] = False

    dims = 2 if configuration == "2d" else 3
    patch = patch or ((32, 32) if dims == 2 else (16, 32, 32))
    image = [2.5, 0.8, 0.8]  # z, y, x of the images trained on
    spacing = [image[a] for a in transpose][3 - dims :]  # as nnU-Net transposes it
    config = _configuration(dims, list(patch), spacing, list(features), **extra)
    plans = {
        "dataset_name": "Dataset001_Liver",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [image[a] for a in transpose],
        "original_median_shape_after_transp": [20, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose),
        "transpose_backward": [list(transpose).index(a) for a in range(3)],
        "configurations": {configuration: config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(i): CT_STATS for i in range(len(channels))
        },
    }
    named = labels if isinstance(labels, dict) else {name: i for i, name in enumerate(labels)}
    dataset = {
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": named,
        "numTraining": 10,
        "file_ending": ".nii.gz",
        **({"regions_class_order": regions} if regions else {}),
    }
    outputs = len(regions) if regions else len(labels)
    # A cascade's second stage: a channel per foreground label of the first stage's map.
    inputs = len(channels) + (len(named) - 1 if extra.get("previous_stage") else 0)
    folder = root / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    kwargs = dict(config["architecture"]["arch_kwargs"])  # as nnU-Net builds it
    kwargs["conv_op"] = getattr(torch.nn, f"Conv{dims}d")
    kwargs["norm_op"] = getattr(torch.nn, f"InstanceNorm{dims}d")
    kwargs["nonlin"] = torch.nn.LeakyReLU
    for fold in folds:
        torch.manual_seed(int(fold) if fold.isdigit() else 99)
        net = PlainConvUNet(inputs, num_classes=outputs, deep_supervision=True, **kwargs)
        for m in net.modules():  # weights that make the classes differ, as a trained net's
            if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm):
                torch.nn.init.normal_(m.weight, 1.0, 0.5)
        (folder / f"fold_{fold}").mkdir()
        checkpoint = {
            "network_weights": net.state_dict(),
            "init_args": {
                "plans": plans,
                "configuration": configuration,
                "fold": fold,
                "dataset_json": dataset,
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (
                tuple(range(dims)) if mirrored == "all" else mirrored
            ),
            "current_epoch": 1000,
        }
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def _predictor(folder: Path, folds: tuple, mirror: bool = False) -> Any:
    """nnU-Net's own predictor of the training (CPU; ``mirror``: its test-time
    augmentation)."""
    module = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    predictor = module.nnUNetPredictor(
        use_mirroring=mirror,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    return predictor


def nnunet_preprocessed(
    folder: Path,
    image: np.ndarray,
    spacing: list[float],
    folds: tuple,
    mirror: bool = False,
    previous: np.ndarray | None = None,
    crop: bool = False,
) -> tuple[Any, torch.Tensor]:
    """nnU-Net's predictor of the training's ``folds`` and ``image`` (C, Z, Y, X) at
    ``spacing`` as its preprocessing gives it to the network (transposed, cropped to the
    nonzero box, normalized, resampled; a cascade's with the one-hot channels of the first
    stage's label map ``previous``, Z, Y, X), the crop put back in the image's extent with
    zeros around it (``_uncropped``), or (``crop``) the crop itself: float32."""
    predictor, item = _preprocessed_item(folder, image, spacing, folds, mirror, previous)
    if crop:
        return predictor, item["data"].float()
    return predictor, _uncropped(item["data"].float(), item["data_properties"])


def _preprocessed_item(
    folder: Path,
    image: np.ndarray,
    spacing: list[float],
    folds: tuple,
    mirror: bool = False,
    previous: np.ndarray | None = None,
) -> tuple[Any, dict[str, Any]]:
    """nnU-Net's predictor and its preprocessing's item of ``image`` (``data``, and the
    ``data_properties`` its export takes): ``nnunet_preprocessed``."""
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy

    predictor = _predictor(folder, folds, mirror)
    adapter = PreprocessAdapterFromNpy(
        [image.astype(np.float32)],
        [None if previous is None else previous[None].astype(np.int16)],
        [{"spacing": spacing}],
        [None],
        predictor.plans_manager,
        predictor.dataset_json,
        predictor.configuration_manager,
        num_threads_in_multithreaded=1,
    )
    return predictor, next(adapter)


def _uncropped(data: torch.Tensor, properties: dict) -> torch.Tensor:
    """nnU-Net's preprocessed crop of an image to its nonzero box (C, *spatial) in the
    image's extent, zeros around it (what nnU-Net's normalization within the nonzero
    region leaves outside it), of an image cropped along axes not resampled only."""
    pad = [(0, 0)]
    for (a, b), n, m, now in zip(
        properties["bbox_used_for_cropping"],
        properties["shape_before_cropping"],
        properties["shape_after_cropping_and_before_resampling"],
        data.shape[-3:],
        strict=True,
    ):
        assert (a, b) == (0, n) or now == m, "cropped along an axis it resampled"
        pad.append((a, n - b))
    return torch.from_numpy(np.pad(data.numpy(), pad[-data.ndim :]))


def nnunet_logits(
    folder: Path,
    image: np.ndarray,
    spacing: list[float],
    folds: tuple,
    mirror: bool = False,
    previous: np.ndarray | None = None,
    crop: bool = False,
) -> np.ndarray:
    """The oracle: ``image`` (C, Z, Y, X) at ``spacing`` preprocessed by nnU-Net's own
    preprocessing (its normalization, its transposition), through nnU-Net's own network
    with each fold's weights, whole (2D networks plane by plane), the folds' logits
    averaged and transposed back: (classes, Z, Y, X) float32. ``mirror``: each through
    nnU-Net's test-time augmentation (3D networks); ``previous``: a cascade's first
    stage's label map; ``crop``: of the resampled crop to the nonzero box alone.

    (nnU-Net's sliding window sums its tiles in float16, its output a few 1e-3 off at
    tile centres and more at their edges: the oracle is its model on the whole image,
    as raysegment runs it in one tile.)"""
    predictor, data = nnunet_preprocessed(folder, image, spacing, folds, mirror, previous, crop)
    network, total = predictor.network.eval(), 0
    for params in predictor.list_of_parameters:
        network.load_state_dict(params)
        with torch.no_grad():
            if mirror:
                out = predictor._internal_maybe_mirror_and_predict(data[None])[0]
            elif len(predictor.configuration_manager.patch_size) == 2:
                out = torch.stack([network(data[:, z][None])[0] for z in range(data.shape[1])], 1)
            else:
                out = network(data[None])[0]
        total = total + out
    logits = total / len(predictor.list_of_parameters)
    back = predictor.plans_manager.transpose_backward
    return logits.permute(0, *(1 + a for a in back)).numpy()


def nnunet_exported(folder: Path, image: np.ndarray, spacing: list[float]) -> np.ndarray:
    """nnU-Net's export of fold 0's logits of its resampled crop of ``image`` (C, Z, Y,
    X), its network run on the whole crop (``nnunet_logits``): the logits back in the
    crop's voxels, their labels, background around the crop (Z, Y, X)."""
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape as exported,
    )

    predictor, item = _preprocessed_item(folder, image, spacing, (0,))
    network = predictor.network.eval()
    network.load_state_dict(predictor.list_of_parameters[0])
    with torch.no_grad():
        logits = network(item["data"].float()[None])[0]
    return exported(
        logits,
        predictor.plans_manager,
        predictor.configuration_manager,
        predictor.label_manager,
        item["data_properties"],
    )


def nnunet_labels(
    folder: Path,
    image: np.ndarray,
    spacing: list[float],
    folds: tuple,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """nnU-Net's own prediction of ``image`` (C, Z, Y, X): its labels (a cascade's, of the
    first stage's label map ``previous``)."""
    return _predictor(folder, folds).predict_single_npy_array(
        image.astype(np.float32),
        {"spacing": spacing},
        None if previous is None else previous[None].astype(np.int16),
        None,
        False,
    )


def test_a_fold_reads_as_nnunet_plans_say(tmp_path) -> None:
    folder = write_training(tmp_path, folds=("0", "1", "all"))
    models = read_models([str(folder)])
    assert [Path(m.path).name for m in models] == ["fold_0", "fold_1", "fold_all"]
    meta = models[0].meta
    assert meta["classes"] == ["background", "liver", "tumour"] and meta["activation"] == "softmax"
    assert meta["patch_size"] == [16, 32, 32] and meta["tile_steps"] == [[4, 4]] * 3
    assert (
        meta["pixel_size"] == {"z": 2.5, "y": 0.8, "x": 0.8} and meta["pixel_unit"] == "millimeter"
    )
    norm = meta["normalize"]
    assert norm["mean"] == [150.0] and norm["std"] == [230.0]
    assert norm["clip"] == pytest.approx([(-200 - 150) / 230, (700 - 150) / 230])
    assert len({m.sha256 for m in models}) == 3  # each fold its own
    assert read_models([str(folder / "fold_1")])[0].sha256 == models[1].sha256


def _ct(shape: tuple[int, ...], path: Path) -> np.ndarray:
    """A CT of Hounsfield units (int16) at 2.5 x 0.8 x 0.8 mm as a NIfTI file."""
    from tests.data.test_nifti import write_nifti

    ct = (random_image(shape) * 2.5 - 1000).astype(np.int16)
    write_nifti(path, ct, np.diag([0.8, 0.8, 2.5, 1.0]))
    return ct


def _run(tmp_path: Path, image: Path, model: Path, **cfg: Any) -> tuple[Any, np.ndarray]:
    from raysegment.infer import infer

    summary = infer(
        input=str(image),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        quicklook=False,
        **cfg,
    )
    name = re.sub(r"_\d{4}$", "", image.name.split(".")[0])  # a case's channel file
    if image.is_dir() and image.suffix != ".zarr":  # a folder of a case's channel files
        (name,) = {re.sub(r"_\d{4}$", "", f.name.split(".")[0]) for f in image.iterdir()}
    return summary, zarr.open_array(str(tmp_path / "out" / f"{name}.ome.zarr" / "0"), mode="r")[:]


def _agrees_in_one_tile(
    tmp_path: Path,
    folder: Path,
    shape: tuple[int, int, int],
    folds: tuple = (0,),
    name: str = "ct",
    tile: list[int] | None = None,
    mirror: bool = False,
    **cfg: Any,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A CT of ``shape`` at the training's voxels run in one tile (``tile``: else the
    CT's), raw: its logits are nnU-Net's model's (``nnunet_logits``). The run's summary,
    the CT and nnU-Net's logits."""
    ct = _ct(shape, tmp_path / f"{name}.nii.gz")
    size = tile or list(shape)
    summary, got = _run(
        tmp_path,
        tmp_path / f"{name}.nii.gz",
        folder,
        tile={"size": size},
        finalize={"mode": "raw"},
        tta=mirror,
        **cfg,
    )
    want = nnunet_logits(folder, ct[None], [2.5, 0.8, 0.8], folds, mirror)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return summary, ct, want


def _case_agrees(
    tmp_path: Path,
    folder: Path,
    volumes: list[np.ndarray],
    spacing: tuple[float, float, float],
    tile: list[int],
    inside: slice = slice(None),
) -> Any:
    """A case of a file per channel (``volumes``, each Z, Y, X) at ``spacing`` (z, y, x)
    run resampled to the training's voxels in one ``tile``, raw: its logits (over the
    planes ``inside``: its nonzero box) are nnU-Net's model's on the case nnU-Net
    preprocesses. The run's summary."""
    images = tmp_path / "imagesTs"
    images.mkdir()
    z, y, x = spacing
    for c, volume in enumerate(volumes):
        write_nifti(images / f"case_01_{c:04d}.nii.gz", volume, np.diag([x, y, z, 1.0]))
    summary, got = _run(
        tmp_path, images, folder, resample=True, tile={"size": tile}, finalize={"mode": "raw"}
    )
    case = np.stack([v.astype(np.float32) for v in volumes])
    want = nnunet_logits(folder, case, list(spacing), (0,))
    assert got.shape == want.shape and got.shape[1:] == tuple(tile)
    np.testing.assert_allclose(got[:, inside], want[:, inside], rtol=1e-4, atol=1e-4)
    return summary


@pytest.mark.usefixtures("ray_session")
def test_a_ct_training_runs_its_folds_as_nnunet_does(tmp_path) -> None:
    """Two folds, CT normalization, 3D: the logits of the folds' ensemble, in one tile,
    are nnU-Net's model's on the image nnU-Net preprocesses; at the model's spacing
    already, ``resample=true`` reads the CT as it is."""
    folder = write_training(tmp_path / "results", folds=("0", "1"))
    summary, _, _ = _agrees_in_one_tile(
        tmp_path, folder, (24, 48, 40), (0, 1), "liver_007_0000", resample=True
    )
    assert summary.levels == "resample: every image was at the pixel size asked for already"


@pytest.mark.usefixtures("ray_session")
def test_a_ct_of_other_voxels_is_resampled_as_nnunet_preprocesses_it(tmp_path) -> None:
    """A CT of 1.25 x 0.64 x 0.64 mm for a training at 2.5 x 0.8 x 0.8 (anisotropic):
    ``resample=true`` reads it as nnU-Net's preprocessing resamples it (clipped to the
    normalization's range first, a cubic spline in-plane, the nearest plane along z),
    so the logits are nnU-Net's model's on the image nnU-Net preprocesses."""
    folder = write_training(tmp_path / "results")
    (model,) = read_models([str(folder)])
    scheme = model.meta["resampling"]
    assert scheme == {
        "data": [3, 0],
        "probabilities": [1, 0],
        "force_separate_z": None,
        "anisotropy": 3.0,
    }
    ct = (random_image((24, 60, 50)) * 2.5 - 1000).astype(np.int16)
    write_nifti(tmp_path / "ct.nii.gz", ct, np.diag([0.64, 0.64, 1.25, 1.0]))
    summary, got = _run(
        tmp_path,
        tmp_path / "ct.nii.gz",
        folder,
        resample=True,
        tile={"size": [12, 48, 40]},
        finalize={"mode": "raw"},
    )
    assert "resampled 1 of 1" in summary.levels
    want = nnunet_logits(folder, ct[None], [1.25, 0.64, 0.64], (0,))
    assert got.shape == want.shape == (3, 12, 48, 40)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("ray_session")
def test_a_pet_ct_of_channels_normalized_differently_runs_as_nnunet_preprocesses_it(
    tmp_path,
) -> None:
    """A PET/CT training (AutoPET's: its CT channel CT-normalized, its PET channel
    Z-scored, as nnU-Net plans a channel named CT and the others) of a case's two files
    at other voxels: each channel normalized as its scheme says (the CT clipped to its
    range before it is resampled, the PET's moments its own), so the logits are
    nnU-Net's model's on the image nnU-Net preprocesses."""
    folder = write_training(
        tmp_path / "results",
        channels=("CT", "PET"),
        labels=("background", "lesion"),
        zscore="box",
        ct_first=True,
    )
    (model,) = read_models([str(folder)])
    entries = model.meta["normalize"]["channels"]
    assert entries[0]["clip"] and entries[1] == {"moments": True, "eps": 1e-8, "joint": False}
    ct = (random_image((24, 60, 50)) * 2.5 - 1000).astype(np.int16)  # -1000 .. 1500 HU
    pet = random_image((24, 60, 50), seed=3).astype(np.float32) / 40  # SUVs of 0 .. 25
    summary = _case_agrees(tmp_path, folder, [ct, pet], (1.25, 0.64, 0.64), [12, 48, 40])
    assert "resampled 1 of 1" in summary.levels


@pytest.mark.usefixtures("ray_session")
def test_a_resampled_cts_labels_go_back_to_its_voxels_as_nnunet_exports_them(tmp_path) -> None:
    """``finalize.nifti_labels``: the NIfTI copy's labels are the argmax of the
    probabilities put back in the CT's voxels as nnU-Net puts them (linearly in-plane, the
    nearest plane along z), so they agree with nnU-Net's prediction nearly everywhere
    (nnU-Net places its tiles apart from raysegment's and sums them in float16)."""
    folder = write_training(tmp_path / "results")
    ct = (random_image((32, 60, 50)) * 2.5 - 1000).astype(np.int16)
    write_nifti(tmp_path / "ct.nii.gz", ct, np.diag([0.64, 0.64, 1.25, 1.0]))
    _run(
        tmp_path,
        tmp_path / "ct.nii.gz",
        folder,
        resample=True,
        tile={"overlap": 0.5},
        finalize={"mode": "raw", "nifti": True, "nifti_labels": True},
    )
    import nibabel

    copy = nibabel.load(str(tmp_path / "out" / "ct.nii.gz"))
    got = np.asarray(copy.dataobj).transpose(2, 1, 0)
    want = nnunet_labels(folder, ct[None], [1.25, 0.64, 0.64], (0,))
    assert got.shape == want.shape == (32, 60, 50) and got.dtype == np.uint8
    assert len(np.unique(want)) > 1 and (got == want).mean() > 0.98  # 0.85 from labels


@pytest.mark.usefixtures("ray_session")
def test_the_nifti_copy_is_postprocessed_as_nnunet_postprocesses_its_predictions(
    tmp_path,
) -> None:
    """``finalize.postprocessing=`` the training's ``postprocessing.pkl`` (each step's
    labels keep their largest component): the NIfTI copy is nnU-Net's
    ``apply_postprocessing`` of the labels, the OME-Zarr keeps the network's."""
    import pickle

    import nibabel

    module = pytest.importorskip("nnunetv2.postprocessing.remove_connected_components")
    fn = module.remove_all_but_largest_component_from_segmentation
    folder = write_training(tmp_path / "results")
    kwargs = [{"labels_or_regions": 1}, {"labels_or_regions": [1, 2]}]
    pp = folder / "crossval_results_folds_0" / "postprocessing.pkl"
    pp.parent.mkdir()
    pp.write_bytes(pickle.dumps(([fn, fn], kwargs)))
    _ct((24, 48, 40), tmp_path / "ct.nii.gz")
    _, labels = _run(
        tmp_path,
        tmp_path / "ct.nii.gz",
        folder,
        finalize={"mode": "labels", "nifti": True, "postprocessing": str(pp)},
    )
    copy = np.asarray(nibabel.load(str(tmp_path / "out" / "ct.nii.gz")).dataobj).T
    want = module.apply_postprocessing(labels[0], [fn, fn], kwargs)
    np.testing.assert_array_equal(copy, want)
    assert (copy != labels[0]).any()  # the foreground's small components (12 voxels)


@pytest.mark.usefixtures("ray_session")
def test_a_2d_mri_training_of_two_channels_runs_plane_by_plane(tmp_path) -> None:
    """Two MR channels, each normalized by its own mean and deviation over the whole
    volume, a 2D network plane by plane (nnU-Net's ``2d`` configuration)."""
    folder = write_training(
        tmp_path / "results",
        configuration="2d",
        channels=("T2", "ADC"),
        labels=("background", "prostate"),
        zscore="box",
    )
    volume = random_image((2, 5, 32, 48)) + 1  # no zeros: nnU-Net crops to the nonzero box
    volume[1] = volume[1] // 3 + 200
    zarr.create_array(str(tmp_path / "mri.zarr"), data=volume, chunks=(1, 5, 32, 48))
    _, got = _run(
        tmp_path,
        tmp_path / "mri.zarr",
        folder,
        axes="czyx",
        tile={"size": [32, 48]},
        finalize={"mode": "raw"},
    )
    want = nnunet_logits(folder, volume, [3.0, 0.8, 0.8], (0,))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _brain(channels: int, shape: tuple[int, int, int], padding: int = 4) -> np.ndarray:
    """A skull-stripped MR of ``channels`` (uint16, C, Z, Y, X): 0 in ``padding`` planes
    at either end of z and outside an ellipse in each plane between (touching the plane's
    edges: the nonzero box spans y and x), and in a ball inside (a hole of the region)."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    inside = ((y - cy) / (shape[1] / 2)) ** 2 + ((x - cx) / (shape[2] / 2)) ** 2 < 1
    inside &= (z >= padding) & (z < shape[0] - padding)
    cz = (shape[0] - 1) / 2
    inside &= ((z - cz) / 3) ** 2 + ((y - cy) / 5) ** 2 + ((x - cx) / 5) ** 2 >= 1
    mri = np.stack([random_image(shape, seed=c) + 200 + 300 * c for c in range(channels)])
    return np.where(inside, mri, 0).astype(np.uint16)


@pytest.mark.usefixtures("ray_session")
def test_an_mri_normalized_within_its_nonzero_region_runs_as_nnunet_does(tmp_path) -> None:
    """Plans that normalize within each image's nonzero region (``use_mask_for_norm``,
    brain MR): each channel's mean and deviation of the region (its hole filled), every
    voxel outside it 0 once normalized; the logits are nnU-Net's network's on the crop
    nnU-Net preprocesses, within its nonzero box, and 0 outside it."""
    folder = write_training(
        tmp_path / "results",
        channels=("T1", "FLAIR"),
        labels=("background", "tumour"),
        zscore="region",
    )
    (model,) = read_models([str(folder)])
    assert model.meta["nonzero"] == "mask"
    mri = _brain(2, (24, 40, 32))
    zarr.create_array(str(tmp_path / "brain.zarr"), data=mri, chunks=(2, 8, 40, 32))
    summary, got = _run(
        tmp_path,
        tmp_path / "brain.zarr",
        folder,
        axes="czyx",
        tile={"size": [24, 40, 32]},
        chunks=[4, 40, 32],
        block=[4, 40, 32],
        finalize={"mode": "raw"},
    )
    want = nnunet_logits(folder, mri, [2.5, 0.8, 0.8], (0,))
    inside = slice(4, 20)  # the nonzero box: planes 4 to 19
    np.testing.assert_allclose(got[:, inside], want[:, inside], rtol=1e-4, atol=1e-4)
    assert not got[:, :4].any() and not got[:, 20:].any()
    assert "(2 outside the nonzero box)" in str(summary)  # of 6 blocks: planes 0-3, 20-23


@pytest.mark.usefixtures("ray_session")
def test_an_mri_cropped_along_the_axes_it_resamples_is_resampled_as_nnunets_crop(
    tmp_path,
) -> None:
    """nnU-Net crops an image to its nonzero box, normalizes it (here within the nonzero
    region: the voxels outside it 0, which go into the spline so), then resamples the
    crop alone: its voxels to round(voxels x 0.64 / 0.8) pixels over its extent, its edge
    voxels repeated past its ends. So are they here, pixels of the same size around them
    at 0 to the model: the logits over the box are nnU-Net's network's on its resampled
    crop, 0 around it; the box's pixels lie over the box; the NIfTI copy's labels are
    nnU-Net's export of those logits (back in the crop's voxels, their labels, background
    around the crop)."""
    import nibabel

    folder = write_training(
        tmp_path / "results", channels=("FLAIR",), labels=("background", "tumour"), zscore="region"
    )
    mri = np.pad(_brain(1, (24, 50, 40)), ((0, 0), (0, 0), (5, 3), (6, 2)))
    write_nifti(tmp_path / "brain.nii.gz", mri[0], np.diag([0.64, 0.64, 2.5, 1.0]))
    _, got = _run(
        tmp_path,
        tmp_path / "brain.nii.gz",
        folder,
        resample=True,
        tile={"size": [16, 40, 32]},
        finalize={"mode": "raw", "nifti": True, "nifti_labels": True},
    )
    want = nnunet_logits(folder, mri, [2.5, 0.64, 0.64], (0,), crop=True)
    # The box: planes 4-19, rows 5-54, columns 6-45 (50 x 40 voxels: 40 x 32 pixels); 4
    # and 3 pixels of 1.25 voxels cover the 5 and 3 rows around it, 5 and 2 the columns.
    assert want.shape == (2, 16, 40, 32) and got.shape == (2, 24, 47, 39)
    box = (slice(None), slice(4, 20), slice(4, 44), slice(5, 37))
    np.testing.assert_allclose(got[box], want, rtol=1e-4, atol=1e-4)
    assert np.abs(got).sum() == pytest.approx(np.abs(got[box]).sum())
    out = zarr.open_group(str(tmp_path / "out" / "brain.ome.zarr"), mode="r").attrs
    (scale, shift) = out["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    (image,) = open_sources(str(tmp_path / "brain.nii.gz"))
    for k, (a, first) in enumerate({"y": (4, 5), "x": (5, 6)}.items()):
        assert scale["scale"][2 + k] == pytest.approx(0.8)
        # The box's first pixel's centre: half a pixel past the box's first voxel's edge.
        edge = image.info.origin[a] + (first[1] - 0.5) * 0.64
        assert shift["translation"][2 + k] + first[0] * 0.8 == pytest.approx(edge + 0.4)
    crops = out["raysegment"]["input"]["resampled"]["crops"]
    assert crops == {
        "y": {"voxels": [5, 55], "pixels": [4, 44]},
        "x": {"voxels": [6, 46], "pixels": [5, 37]},
    }
    labels = np.asarray(nibabel.load(str(tmp_path / "out" / "brain.nii.gz")).dataobj).T
    want = nnunet_exported(folder, mri, [2.5, 0.64, 0.64])
    assert labels.shape == want.shape == mri.shape[1:] and len(np.unique(want)) > 1
    np.testing.assert_array_equal(labels, want)

    # A mask of the MR's voxels lies over the pixels by their centres: column 36's at
    # 45.375 voxels (-0.25 + 36.5 x 1.25) is outside a mask of the first 45 columns. (The
    # fold's checkpoint file as model=: the same network.)
    inside = np.zeros(mri.shape[1:], np.uint8)
    inside[..., :45] = 1
    write_nifti(tmp_path / "mask.nii.gz", inside, np.diag([0.64, 0.64, 2.5, 1.0]))
    _, masked = _run(
        tmp_path,
        tmp_path / "brain.nii.gz",
        folder / "fold_0" / "checkpoint_final.pth",
        resample=True,
        overwrite=True,
        mask=str(tmp_path / "mask.nii.gz"),
        tile={"size": [16, 40, 32]},
        finalize={"mode": "raw"},
    )
    np.testing.assert_array_equal(masked[..., :36], got[..., :36])
    assert got[box][..., -1].any() and not masked[..., 36:].any()


@pytest.mark.usefixtures("ray_session")
def test_a_ct_beside_an_mri_normalized_within_its_region_keeps_its_voxels_outside_it(
    tmp_path,
) -> None:
    """A CT channel beside an MR channel Z-scored within the nonzero region
    (``use_mask_for_norm`` [False, True], as nnU-Net plans them for scans it crops much):
    the MR's voxels outside the region are 0 once normalized, the CT's keep their values
    (CT-normalized), within the box, before both are resampled; so the logits are
    nnU-Net's network's on its resampled crop."""
    folder = write_training(
        tmp_path / "results",
        channels=("CT", "T1"),
        labels=("background", "tumour"),
        zscore="region",
        ct_first=True,
    )
    (model,) = read_models([str(folder)])
    assert model.meta["nonzero"] == "mask" and model.meta["nonzero_kept"] == [0]
    scan = _brain(2, (24, 50, 40)).astype(np.float32)
    # Tissue of 100 .. 1100 HU: the CT's slices range from its 0s outside the region.
    scan[0] = np.where(scan[0] > 0, scan[0] - 100, 0)
    _case_agrees(tmp_path, folder, list(scan), (2.5, 0.64, 0.64), [24, 40, 32], slice(4, 20))


@pytest.mark.usefixtures("ray_session")
def test_an_mri_padded_with_zeros_is_segmented_within_its_nonzero_box(tmp_path) -> None:
    """A Z-score over the whole image (no ``use_mask_for_norm``) takes the mean and
    deviation of the nonzero box, as nnU-Net crops to it first; the model sees 0 beyond
    the box, as nnU-Net pads its crop, and everything outside it is background. The
    tiles lie over the box as nnU-Net's sliding window lays them (spread evenly), so
    the labels are nnU-Net's prediction's (but where its float16 sums tip a voxel)."""
    folder = write_training(
        tmp_path / "results",
        channels=("T2",),
        labels=("background", "lesion"),
        zscore="box",
    )
    assert read_models([str(folder)])[0].meta["nonzero"] == "box"
    mri = _brain(1, (32, 64, 48), padding=8)
    write_nifti(tmp_path / "brain.nii.gz", mri[0], np.diag([0.8, 0.8, 2.5, 1.0]))
    _, got = _run(
        tmp_path,
        tmp_path / "brain.nii.gz",
        folder,
        tile={"size": [32, 64, 48]},
        finalize={"mode": "raw"},
    )
    want = nnunet_logits(folder, mri, [2.5, 0.8, 0.8], (0,))
    np.testing.assert_allclose(got[:, 8:24], want[:, 8:24], rtol=1e-4, atol=1e-4)
    assert not got[:, :8].any() and not got[:, 24:].any()
    summary, labels = _run(
        tmp_path,
        tmp_path / "brain.nii.gz",
        folder,
        overwrite=True,
        tile={"overlap": 0.5, "size": [16, 32, 32]},
        finalize={"mode": "labels"},
    )
    want = nnunet_labels(folder, mri, [2.5, 0.8, 0.8], (0,))
    assert summary.tiles == 1 * 3 * 2  # nnU-Net's over the 16 x 64 x 48 box
    assert not labels[0, :8].any() and not labels[0, 24:].any()
    assert len(np.unique(want)) > 1 and (labels[0] == want).mean() > 0.999


@pytest.mark.usefixtures("ray_session")
def test_a_ct_thinner_than_the_patch_is_padded_to_it_as_nnunet_pads_it(tmp_path) -> None:
    """10 planes for a patch of 16: one tile of the patch centred on them, 3 planes of 0
    (the normalization's) on either side, as nnU-Net pads a scan to its patch, not a tile
    fitted to the scan; the labels are nnU-Net's prediction's."""
    folder = write_training(tmp_path / "results")
    ct = _ct((10, 48, 40), tmp_path / "ct.nii.gz")
    summary, got = _run(
        tmp_path, tmp_path / "ct.nii.gz", folder, tile={"overlap": 0.5}, finalize={"mode": "labels"}
    )
    want = nnunet_labels(folder, ct[None], [2.5, 0.8, 0.8], (0,))
    assert summary.tiles == 1 * 2 * 2 and not summary.fitted
    assert len(np.unique(want)) > 1 and (got[0] == want).mean() > 0.999


@pytest.mark.usefixtures("ray_session")
def test_a_folder_of_cases_each_a_file_a_channel_runs_as_nnunet_reads_it(tmp_path) -> None:
    """nnU-Net's layout of cases of two modalities (``imagesTs``: ``case_0000.nii.gz``,
    ``case_0001.nii.gz``): each case one image of two channels, named after the case, as
    nnU-Net names its predictions; the logits are nnU-Net's on the two files."""
    from raysegment.infer import infer

    folder = write_training(
        tmp_path / "results",
        channels=("T2", "ADC"),
        labels=("background", "prostate"),
        zscore="box",
    )
    images = tmp_path / "imagesTs"
    images.mkdir()
    cases = {}
    for k, case in enumerate(("prostate_01", "prostate_02")):
        volume = np.stack([random_image((16, 32, 32), seed=2 * k + c) + 1 for c in (0, 1)])
        volume[1] = volume[1] // 4 + 100
        for c in (0, 1):
            write_nifti(images / f"{case}_{c:04d}.nii.gz", volume[c], np.diag([0.8, 0.8, 2.5, 1]))
        cases[case] = volume
    infer(
        input=str(images),
        model=str(folder),
        output=str(tmp_path / "out"),
        tile={"size": [16, 32, 32]},
        finalize={"mode": "raw", "nifti": True},
        progress=False,
        quicklook=False,
    )
    for case, volume in cases.items():
        got = zarr.open_array(str(tmp_path / "out" / f"{case}.ome.zarr" / "0"), mode="r")[:]
        want = nnunet_logits(folder, volume, [2.5, 0.8, 0.8], (0,))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert (tmp_path / "out" / f"{case}.nii.gz").is_file()
        attrs = zarr.open_group(str(tmp_path / "out" / f"{case}.ome.zarr"), mode="r").attrs
        files = attrs["raysegment"]["input"]["channel_files"]
        assert files == [f"{case}_0000.nii.gz", f"{case}_0001.nii.gz"]
    (images / "prostate_02_0001.nii.gz").unlink()
    with pytest.raises(InputImageError, match=r"prostate_02_XXXX: channel files _0000; the"):
        infer(input=str(images), model=str(folder), output=str(tmp_path / "again"))


BRATS_REGIONS = {
    "background": 0,
    "whole tumour": [1, 2, 3],
    "tumour core": [2, 3],
    "enhancing tumour": 3,
}
"""A BraTS training's regions, as nnU-Net's BraTS datasets name them."""


@pytest.mark.usefixtures("ray_session")
def test_a_region_based_training_paints_its_regions_as_nnunet_predicts(tmp_path) -> None:
    """A region-based training (BraTS': nested tumour regions, each output a sigmoid,
    ``regions_class_order`` the label each paints) of a case's channel files: the
    labels, and the NIfTI copy's labels of the regions' probabilities, agree with
    nnU-Net's prediction; the probabilities are named after the regions."""
    import nibabel

    from raysegment.infer import infer
    from raysegment.infer.model import probe_models

    folder = write_training(
        tmp_path / "results",
        channels=("T1", "FLAIR"),
        labels=BRATS_REGIONS,
        regions=[1, 2, 3],
        zscore="region",
    )
    models = read_models([str(folder)])
    meta = models[0].meta
    assert meta["classes"] == ["whole tumour", "tumour core", "enhancing tumour"]
    assert meta["activation"] == "sigmoid" and meta["region_labels"] == [1, 2, 3]
    spec, _ = probe_models(models, lambda spec: (16, 32, 32))
    assert spec.out_channels == 3 and spec.region_labels == (1, 2, 3)
    mri = _brain(2, (24, 64, 56))
    images = tmp_path / "imagesTs"
    images.mkdir()
    for c in (0, 1):
        write_nifti(images / f"BraTS_001_{c:04d}.nii.gz", mri[c], np.diag([0.8, 0.8, 2.5, 1]))
    want = nnunet_labels(folder, mri, [2.5, 0.8, 0.8], (0,))
    assert set(np.unique(want)) == {0, 1, 2, 3}  # label 3 painted over 2, 2 over 1
    for mode in ("labels", "probabilities"):
        out = tmp_path / mode
        infer(
            input=str(images),
            model=str(folder),
            output=str(out),
            tile={"overlap": 0.5},
            finalize={"mode": mode, "nifti": True, "nifti_labels": mode == "probabilities"},
            progress=False,
            quicklook=False,
        )
        got = zarr.open_array(str(out / "BraTS_001.ome.zarr" / "0"), mode="r")[:]
        copy = np.asarray(nibabel.load(str(out / "BraTS_001.nii.gz")).dataobj).transpose(2, 1, 0)
        assert copy.shape == mri.shape[1:] and copy.dtype == np.uint8
        assert (copy == want).mean() > 0.99
        if mode == "labels":
            assert got.dtype == np.uint8 and (got[0] == want).mean() > 0.99
            attrs = zarr.open_group(str(out / "BraTS_001.ome.zarr"), mode="r").attrs
            assert attrs["raysegment"]["labels"] == [
                {"value": 1, "class": "whole tumour"},
                {"value": 2, "class": "tumour core"},
                {"value": 3, "class": "enhancing tumour"},
            ]
        else:
            assert got.shape == (3, *want.shape) and 0 <= got.min() and got.max() <= 1
            omero = zarr.open_group(str(out / "BraTS_001.ome.zarr"), mode="r").attrs["ome"]
            names = [c["label"] for c in omero["omero"]["channels"]]
            assert names == ["whole tumour", "tumour core", "enhancing tumour"]


@pytest.mark.usefixtures("ray_session")
def test_transposed_plans_run_in_the_images_own_axis_order(tmp_path) -> None:
    """Plans whose ``transpose_forward`` puts x first: the output in the CT's axis order,
    its patch and spacing too."""
    # Strides 2 along x (the network's first axis), 4 along z and y.
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    folder = write_training(tmp_path / "results", transpose=(2, 0, 1), strides=strides)
    (model,) = read_models([str(folder)])
    assert model.meta["patch_size"] == [32, 32, 16]  # z, y, x of [x, z, y] = [16, 32, 32]
    assert model.meta["pixel_size"] == {"z": 2.5, "y": 0.8, "x": 0.8}
    assert model.meta["tile_steps"] == [[4, 4], [4, 4], [2, 2]]
    _agrees_in_one_tile(tmp_path, folder, (24, 48, 40))


@pytest.mark.usefixtures("ray_session")
def test_tta_flips_the_axes_the_training_mirrored_as_nnunet_does(tmp_path) -> None:
    """``tta=true``: the logits averaged over the flips of the axes the checkpoint allows
    mirroring along (a transposed training's first two: the CT's x and z), as nnU-Net's
    test-time augmentation; a training that mirrored none flips none."""
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    folder = write_training(
        tmp_path / "results", transpose=(2, 0, 1), strides=strides, mirrored=(0, 1)
    )
    (model,) = read_models([str(folder)])
    assert model.meta["tta_axes"] == [0, 2]
    _, ct, want = _agrees_in_one_tile(tmp_path, folder, (24, 48, 40), mirror=True)
    plain = nnunet_logits(folder, ct[None], [2.5, 0.8, 0.8], (0,))
    assert np.abs(want - plain).max() > 0.01  # the flips changed the logits
    unmirrored = write_training(tmp_path / "none", mirrored=None)
    (model,) = read_models([str(unmirrored)])
    assert model.meta["tta_axes"] == []


@pytest.mark.usefixtures("ray_session")
def test_labels_in_tiles_of_the_patch_agree_with_nnunets_prediction(tmp_path) -> None:
    """The default run (tiles of the patch size, overlapping by half, gaussian blending:
    nnU-Net's settings) against nnU-Net's whole prediction: the labels agree nearly
    everywhere (nnU-Net places its tiles apart from raysegment's and sums them in
    float16)."""
    folder = write_training(tmp_path / "results")
    ct = _ct((24, 64, 56), tmp_path / "ct.nii.gz")
    summary, got = _run(
        tmp_path, tmp_path / "ct.nii.gz", folder, tile={"overlap": 0.5}, finalize={"mode": "labels"}
    )
    assert summary.tiles > 1
    want = nnunet_labels(folder, ct[None], [2.5, 0.8, 0.8], (0,))
    assert got.shape == (1, *want.shape) and len(np.unique(want)) > 1
    assert (got[0] == want).mean() > 0.99
    labels = zarr.open_group(str(tmp_path / "out" / "ct.ome.zarr"), mode="r").attrs["raysegment"]
    assert [(v["value"], v["class"]) for v in labels["labels"]] == [
        (0, "background"),
        (1, "liver"),
        (2, "tumour"),
    ]


def test_earlier_plans_build_the_same_network(tmp_path) -> None:
    """Plans of nnU-Net before 2.4 (``UNet_class_name`` and its sizes): the network and
    its output as from the architecture nnU-Net 2.4 writes."""
    from raysegment.infer.model import load_model

    now = write_training(tmp_path / "now")
    earlier = write_training(tmp_path / "earlier")
    plans = json.loads((earlier / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    del config["architecture"]
    config |= {
        "UNet_class_name": "PlainConvUNet",
        "UNet_base_num_features": 4,
        "unet_max_num_features": 16,
        "n_conv_per_stage_encoder": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "num_pool_per_axis": [2, 2, 2],
        "pool_op_kernel_sizes": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "conv_kernel_sizes": [[3, 3, 3]] * 3,
    }
    (earlier / "plans.json").write_text(json.dumps(plans))
    x = torch.from_numpy(random_image((1, 1, 16, 32, 32)).astype(np.float32) / 500)
    with torch.no_grad():
        outs = [load_model(read_models([str(f)])[0])(x) for f in (now, earlier)]
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"labels": {"background": 0, "whole": [1, 2], "core": 2}},
            r"region-based training of 2 regions \(whole, core\) with regions_class_order None",
        ),
        (
            {
                "normalization_schemes": ["ZScoreNormalization", "RescaleTo01Normalization"],
                "use_mask_for_norm": [True, False],
            },
            r"some channels within each image's nonzero region and others by their values",
        ),
        ({"normalization_schemes": ["MyNormalization"]}, "normalization MyNormalization"),
        (
            {"resampling_fn_data_kwargs": {"order": 5, "order_z": 0}},
            r"resamples its data with spline order \[5, 0\]",
        ),
    ],
)
def test_trainings_raysegment_cannot_run_as_nnunet_does_are_one_error(
    tmp_path, change, message
) -> None:
    folder = write_training(tmp_path / "results")
    key = "dataset.json" if "labels" in change else "plans.json"
    content = json.loads((folder / key).read_text())
    if key == "plans.json":
        content["configurations"]["3d_fullres"] |= change
    else:
        content |= change
    (folder / key).write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=message) as caught:
        read_models([str(folder)])
    assert "\n" not in str(caught.value) and str(folder / "fold_0") in str(caught.value)


def test_an_unfinished_training_is_one_error_naming_its_checkpoints(tmp_path) -> None:
    """A training without final checkpoints is one error naming its best ones and how to
    run them (``model=`` the checkpoint files, as nnU-Net's ``-chk``), which then read as
    their folds: the same network and settings, as the same weights did as final ones."""
    folder = write_training(tmp_path / "results", folds=("0", "1"))
    final = read_models([str(folder)])
    for fold in ("0", "1"):
        checkpoint = folder / f"fold_{fold}" / "checkpoint_final.pth"
        checkpoint.rename(checkpoint.with_name("checkpoint_best.pth"))
    best = [str(folder / f"fold_{fold}" / "checkpoint_best.pth") for fold in ("0", "1")]
    with pytest.raises(
        ModelLoadError, match=r"fold_0/checkpoint_best.pth, fold_1/checkpoint_best.pth only"
    ) as raised:
        read_models([str(folder)])
    assert f"model=[{','.join(best)}]" in str(raised.value)
    models = read_models(best)
    assert [m.path for m in models] == best
    assert [(m.sha256, m.meta) for m in models] == [(m.sha256, m.meta) for m in final]


def test_a_datasets_folder_of_trainings_is_one_error_naming_them(tmp_path) -> None:
    """``model=`` a dataset's results (nnU-Net's ``nnUNet_results/Dataset001_Liver``, a
    training per configuration): one error naming them, and how to give one."""
    results = tmp_path / "Dataset001_Liver"
    write_training(results, configuration="3d_fullres")
    write_training(results, configuration="2d")
    with pytest.raises(ModelLoadError) as caught:
        read_models([str(results)])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{results}: a dataset's nnU-Net trainings")
    assert "(nnUNetTrainer__nnUNetPlans__2d, nnUNetTrainer__nnUNetPlans__3d_fullres)" in message
    assert f"model={results / 'nnUNetTrainer__nnUNetPlans__2d'}" in message


def test_the_ignore_label_is_no_class(tmp_path) -> None:
    """A training with an ignore label (sparse annotations): the network has no output
    for it, nor do the classes."""
    folder = write_training(tmp_path / "results")
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"]["ignore"] = 3
    (folder / "dataset.json").write_text(json.dumps(dataset))
    assert read_models([str(folder)])[0].meta["classes"] == ["background", "liver", "tumour"]


def test_strides_one_for_every_axis_give_the_same_tiles(tmp_path) -> None:
    folder = write_training(tmp_path / "results")
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"] = [1, 2, 2]
    (folder / "plans.json").write_text(json.dumps(plans))
    assert read_models([str(folder)])[0].meta["tile_steps"] == [[4, 4]] * 3


@pytest.mark.usefixtures("ray_session")
def test_a_2d_training_on_planes_across_x_runs_plane_by_plane_as_nnunet_does(tmp_path) -> None:
    """A 2D training whose plans put x first (``transpose_forward`` [2, 0, 1]: a sagittal
    scan's, its longest voxels along x): its network on each x plane, as a 3D model of
    tiles one plane thick; the logits are nnU-Net's network's plane by plane on the image
    nnU-Net preprocesses, its mirror axes and spacing the planes' (z, y)."""
    folder = write_training(tmp_path / "results", configuration="2d", transpose=(2, 0, 1))
    (model,) = read_models([str(folder)])
    meta = model.meta
    assert meta["spatial_dims"] == 3 and meta["patch_size"] == [32, 32, 1]
    assert meta["tile_steps"] == [[4, 4], [4, 4], [1, 0]] and meta["tta_axes"] == [0, 1]
    assert meta["pixel_size"] == {"z": 2.5, "y": 0.8}
    summary, ct, _ = _agrees_in_one_tile(
        tmp_path, folder, (24, 48, 20), name="knee", tile=[24, 48, 1]
    )
    assert summary.tiles == 20  # a tile a plane across x
    # Its own tiles (the patch's, spread over each plane, overlapping by half): the labels
    # nnU-Net's prediction gives.
    (tmp_path / "out").rename(tmp_path / "whole")
    _, got = _run(
        tmp_path,
        tmp_path / "knee.nii.gz",
        folder,
        tile={"overlap": 0.5},
        finalize={"mode": "labels"},
    )
    labels = nnunet_labels(folder, ct[None], [2.5, 0.8, 0.8], (0,))
    assert len(np.unique(labels)) > 1 and (got[0] == labels).mean() > 0.99


def test_a_missing_network_package_is_named(tmp_path, monkeypatch) -> None:
    import sys

    folder = write_training(tmp_path / "results")
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    with pytest.raises(ModelLoadError, match=r"pip install 'raysegment\[nnunet\]'"):
        read_models([str(folder / "fold_0")])


def _first_stage(shape: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    """A first stage's label map of ``shape``: blobs of labels 1 and 2 (uint8)."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 3)
    return np.digitize(field, np.quantile(field, [0.6, 0.85])).astype(np.uint8)


def _cascade(tmp_path: Path, **kwargs: Any) -> Path:
    """A cascade's second stage (``3d_cascade_fullres`` after ``3d_lowres``)."""
    return write_training(
        tmp_path / "results",
        configuration="3d_cascade_fullres",
        previous_stage="3d_lowres",
        **kwargs,
    )


@pytest.mark.usefixtures("ray_session")
def test_a_cascades_second_stage_takes_the_first_stages_labels_as_nnunet_does(tmp_path) -> None:
    """A CT of 1.25 x 0.64 x 0.64 mm and its first stage's label map (labels 1 and 2 in
    the CT's voxels): ``previous=`` their folder; the map is resampled as nnU-Net
    resamples segmentations (each label's indicator linearly in-plane, the nearest plane
    along z, each voxel the highest's label) and given as a channel per label after the
    CT's, so the logits are nnU-Net's model's on the input nnU-Net preprocesses."""
    folder = _cascade(tmp_path)
    (model,) = read_models([str(folder)])
    meta = model.meta
    assert meta["in_channels"] == 3 and meta["previous_labels"] == [1, 2]
    assert meta["previous_stage"] == "3d_lowres" and meta["resampling"]["segmentation"] == [1, 0]
    entries = meta["normalize"]["channels"]
    assert entries[0]["clip"] and entries[1:] == [{}, {}]
    ct = (random_image((24, 60, 50)) * 2.5 - 1000).astype(np.int16)
    affine = np.diag([0.64, 0.64, 1.25, 1.0])
    write_nifti(tmp_path / "ct.nii.gz", ct, affine)
    first = _first_stage(ct.shape)
    (tmp_path / "lowres").mkdir()  # as a run's output folder: its NIfTI copy of labels
    write_nifti(tmp_path / "lowres" / "ct.nii.gz", first, affine)
    (tmp_path / "lowres" / "ct.ome.zarr").mkdir()
    summary, got = _run(
        tmp_path,
        tmp_path / "ct.nii.gz",
        folder,
        resample=True,
        previous=str(tmp_path / "lowres"),
        tile={"size": [12, 48, 40]},
        finalize={"mode": "raw"},
    )
    assert "resampled 1 of 1" in summary.levels
    want = nnunet_logits(folder, ct[None], [1.25, 0.64, 0.64], (0,), previous=first)
    assert got.shape == want.shape == (3, 12, 48, 40)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    attrs = zarr.open_group(str(tmp_path / "out" / "ct.ome.zarr"), mode="r").attrs
    assert attrs["raysegment"]["input"]["previous"] == {
        "file": str(tmp_path / "lowres" / "ct.nii.gz"),
        "labels": [1, 2],
    }


@pytest.mark.usefixtures("ray_session")
def test_a_cascades_first_stage_labels_count_within_the_nonzero_box_only(tmp_path) -> None:
    """An MR padded with zero planes, a first stage's map with labels in them too
    (``previous=`` a path of ``{name}``): nnU-Net crops both to the nonzero box, so the
    labels beyond it are none to the model; the logits are nnU-Net's within the box, 0
    outside it, and the labels of tiles laid as nnU-Net lays them are its prediction's."""
    folder = _cascade(tmp_path, channels=("T2",), labels=("background", "lesion"), zscore="box")
    assert read_models([str(folder)])[0].meta["previous_labels"] == [1]
    mri = _brain(1, (32, 64, 48), padding=8)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    write_nifti(tmp_path / "brain.nii.gz", mri[0], affine)
    first = (_first_stage(mri.shape[1:], seed=2) > 0).astype(np.uint8)
    assert first[:8].any() and first[24:].any()
    write_nifti(tmp_path / "brain_lowres.nii.gz", first, affine)
    previous = str(tmp_path / "{name}_lowres.nii.gz")
    _, got = _run(
        tmp_path,
        tmp_path / "brain.nii.gz",
        folder,
        previous=previous,
        tile={"size": [32, 64, 48]},
        finalize={"mode": "raw"},
    )
    want = nnunet_logits(folder, mri, [2.5, 0.8, 0.8], (0,), previous=first)
    np.testing.assert_allclose(got[:, 8:24], want[:, 8:24], rtol=1e-4, atol=1e-4)
    assert not got[:, :8].any() and not got[:, 24:].any()
    _, labels = _run(
        tmp_path,
        tmp_path / "brain.nii.gz",
        folder,
        previous=previous,
        overwrite=True,
        tile={"overlap": 0.5, "size": [16, 32, 32]},
        finalize={"mode": "labels"},
    )
    want = nnunet_labels(folder, mri, [2.5, 0.8, 0.8], (0,), previous=first)
    # nnU-Net sums its tiles in float16, which tips voxels where the weights are least:
    # the box's first and last planes, its tiles one deep along z (0.998 here).
    assert len(np.unique(want)) > 1 and (labels[0] == want).mean() > 0.995


def test_a_cascade_normalized_within_the_nonzero_region_is_one_error(tmp_path) -> None:
    """nnU-Net's Z-score within the nonzero region of a cascade's second stage takes the
    first stage's foreground outside the region in too (its mask is the cropped map >= 0,
    the region's outside -1 only where the map is 0): not run, one error (it ran before,
    its logits up to 4.4 off nnU-Net's over 94% of the box)."""
    folder = _cascade(tmp_path, channels=("T2",), labels=("background", "lesion"), zscore="region")
    with pytest.raises(ModelLoadError, match=r"a cascade's second stage normalizing within"):
        read_models([str(folder)])


@pytest.mark.usefixtures("ray_session")
def test_a_cascades_first_stage_labels_missing_or_given_in_vain_are_one_error(tmp_path) -> None:
    from raysegment.errors import ConfigError

    cascade = _cascade(tmp_path / "cascade")
    plain = write_training(tmp_path / "plain")
    _ct((8, 32, 32), tmp_path / "ct.nii.gz")
    (tmp_path / "lowres").mkdir()
    with pytest.raises(ConfigError, match="after 3d_lowres|run 3d_lowres first"):
        _run(tmp_path, tmp_path / "ct.nii.gz", cascade)
    with pytest.raises(InputImageError, match="label map of ct should be one file named ct"):
        _run(tmp_path, tmp_path / "ct.nii.gz", cascade, previous=str(tmp_path / "lowres"))
    write_nifti(tmp_path / "lowres" / "ct.nii.gz", np.zeros((8, 32, 16), np.uint8), np.eye(4))
    with pytest.raises(InputImageError, match=r"is \(8, 32, 16\) .* is \(8, 32, 32\)"):
        _run(tmp_path, tmp_path / "ct.nii.gz", cascade, previous=str(tmp_path / "lowres"))
    import nibabel  # a first stage's probabilities: a channel a class

    probabilities = nibabel.Nifti1Image(np.zeros((32, 32, 8, 1, 3), np.float32), np.eye(4))
    nibabel.save(probabilities, str(tmp_path / "lowres" / "ct.nii.gz"))
    with pytest.raises(InputImageError, match="3 channels .*finalize.nifti_labels=true"):
        _run(tmp_path, tmp_path / "ct.nii.gz", cascade, previous=str(tmp_path / "lowres"))
    with pytest.raises(ConfigError, match="not an earlier stage's labels.*drop previous="):
        _run(tmp_path, tmp_path / "ct.nii.gz", plain, previous=str(tmp_path / "lowres"))


@pytest.mark.parametrize("given", [[0, 1], ["1"], 2, [True]])
def test_a_models_previous_labels_other_than_labels_from_1_on_are_one_error(
    tmp_path, given
) -> None:
    """A model directory's ``previous_labels`` (any model may take an earlier stage's
    labels) are labels from 1 on, else one error naming the key and an example."""
    from raysegment.config import InferConfig
    from raysegment.data.sources import MemorySource
    from raysegment.errors import ModelContractError
    from raysegment.infer.model import ModelFile
    from raysegment.infer.pipeline import _with_previous

    model = ModelFile("m/model.pt", "torchscript", b"", {"previous_labels": given}, "0")
    cfg = InferConfig(input="in", model=["m/model.pt"], output="out", previous=str(tmp_path))
    image = MemorySource(np.zeros((1, 1, 2, 4, 4), np.float32), "scan", "scan")
    with pytest.raises(
        ModelContractError, match=r"previous_labels .*\"previous_labels\": \[1, 2\]"
    ):
        _with_previous(cfg, image, None, model)
