"""nnU-Net v2 trained models as ``model=``: a training's output directory
(``Dataset001_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres``, its folds an ensemble, as
nnU-Net predicts with every fold it finds), one fold of it (``.../fold_0``), or one of a
fold's checkpoints (``.../fold_0/checkpoint_best.pth``, as nnU-Net's ``-chk``: an
unfinished training's).

Read from the fold's ``checkpoint_final.pth`` (or the checkpoint given) and the
directory's ``plans.json`` and ``dataset.json``, as nnU-Net's own predictor reads them:

- the network: the configuration's architecture (``dynamic_network_architectures``'
  ``PlainConvUNet`` or ``ResidualEncoderUNet``, from the plans of nnU-Net 2.4 on or the
  earlier plans' ``UNet_class_name``) with the checkpoint's weights, without deep
  supervision, traced to TorchScript here (the ``nnunet`` extra installs the package that
  builds it); the plans' ``transpose_forward`` is part of the traced program, so tiles,
  patch size and spacing are in the image's own axis order (a 2D network on planes
  across y or x: a 3D model of tiles one plane thick across it);
- the input's channels (``channel_names``: ``channel_files``, a case's files
  ``case_0000``, ``case_0001``, ... its channels, ``data.channels``) and 2D/3D (the patch
  size's), the patch size as
  the default tile (``patch_size``), any multiple of the network's strides along each
  axis taken (``tile_steps``);
- the crop to each image's nonzero box (``nonzero``: ``box``, or ``mask`` where the plans
  normalize within the nonzero region itself, ``use_mask_for_norm``: ``data.nonzero``);
- the normalization: ``CTNormalization`` (clipped to the foreground's 0.5 and 99.5
  percentiles, less the foreground's mean, over its deviation: fixed values),
  ``ZScoreNormalization`` (the image's own mean and deviation per channel, of its nonzero
  box or region), ``RescaleTo01Normalization`` (its minimum and maximum),
  ``RGBTo01Normalization`` (/255) or ``NoNormalization``: one for all channels, or each
  channel its own (``normalize``'s ``channels``: a PET/CT's CT- and Z-score-normalized
  channels, as nnU-Net plans a channel named CT beside the others);
- the axes the training mirrored (``inference_allowed_mirroring_axes``), which
  ``tta=true`` flips, as nnU-Net's test-time augmentation does;
- the classes (``labels``, background first) with a softmax, and the spacing as the pixel
  the model was trained at (``pixel_size`` in millimetres, for images nnU-Net reads as
  medical images), which ``resample=true`` reads the image at, as the plans resample
  (``resampling``: their orders for the images and the probabilities, and their rule for
  the axis resampled apart: ``resampled.nnunet_kinds``);
- a region-based training's regions instead (``labels`` of several values, as BraTS'
  trainings name theirs), each output a sigmoid, and its ``regions_class_order``: the
  label each region paints where it passes 0.5, later over earlier (``region_labels``:
  ``finalize.mode=labels`` gives nnU-Net's label map).

- a cascade's second stage (``3d_cascade_fullres``): its input, the image's channels,
  then one per foreground label of the first stage's label map (``previous_labels``),
  which ``previous=`` gives (``data.previous``).

Channels normalized within the nonzero region beside channels of fixed normalizations (a
CT's), which keep their voxels outside it (``nonzero_kept``), run as nnU-Net's.

Not run: channels normalized within the nonzero region beside channels measured over the
box (``RescaleTo01Normalization``), other architectures.
"""

from __future__ import annotations

import hashlib
import io
import json
import pydoc
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from raysegment.errors import ModelLoadError

__all__ = [
    "CHECKPOINT",
    "build_network",
    "dataset_classes",
    "dataset_regions",
    "fold_checkpoint",
    "is_nnunet_fold",
    "is_nnunet_training",
    "nnunet_folds",
    "normalization_meta",
    "read_nnunet",
    "trainings_within",
    "unet_architecture",
    "unfinished_training",
]

CHECKPOINT = "checkpoint_final.pth"
"""The checkpoint of a fold nnU-Net predicts with."""
_UNETS = "dynamic_network_architectures.architectures.unet"
_ARCHITECTURES = {
    "PlainConvUNet": f"{_UNETS}.PlainConvUNet",
    "ResidualEncoderUNet": f"{_UNETS}.ResidualEncoderUNet",
}
"""The earlier plans' ``UNet_class_name`` and their classes."""
_MEDICAL_READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")
"""Readers whose spacing is in millimetres (the images' own, as DICOM and NIfTI keep it)."""


def is_nnunet_training(path: str) -> bool:
    """Whether ``path`` is an nnU-Net training's output directory (plans, dataset and
    fold directories)."""
    p = Path(path)
    return _has_plans(p) and any(p.glob(f"fold_*/{CHECKPOINT}"))


def is_nnunet_fold(path: str) -> bool:
    """Whether ``path`` is one fold of an nnU-Net training (its final checkpoint, the plans
    in the directory above), or a checkpoint of one (``fold_checkpoint``)."""
    return fold_checkpoint(path) is not None


def fold_checkpoint(path: str) -> Path | None:
    """The checkpoint a fold at ``path`` predicts with: a fold directory's
    ``checkpoint_final.pth``, or ``path`` itself, a ``.pth`` file in a fold directory (its
    ``checkpoint_best.pth``, say, as nnU-Net's ``-chk`` picks); None: neither."""
    p = Path(path)
    if p.suffix == ".pth" and p.is_file():
        fold, checkpoint = p.parent, p
    else:
        fold, checkpoint = p, p / CHECKPOINT
    found = fold.name.startswith("fold_") and checkpoint.is_file() and _has_plans(fold.parent)
    return checkpoint if found else None


def _has_plans(p: Path) -> bool:
    return (p / "plans.json").is_file() and (p / "dataset.json").is_file()


def unfinished_training(path: str) -> str | None:
    """Why ``path``, an nnU-Net training's directory (plans and dataset) without a fold
    nnU-Net predicts with, cannot run; None where it is none."""
    p = Path(path)
    if not _has_plans(p) or is_nnunet_training(path):
        return None
    best = sorted(str(f.relative_to(p)) for f in p.glob("fold_*/checkpoint_best.pth"))
    if best:
        return (
            f"{p}: an nnU-Net training with no fold_*/{CHECKPOINT}, the checkpoint nnU-Net "
            f"predicts with ({', '.join(best)} only: its training has not finished); give "
            f"model= a finished training's directory, or its best checkpoints as nnU-Net's "
            f"-chk checkpoint_best.pth takes them: model=[{','.join(str(p / b) for b in best)}]"
        )
    return (
        f"{p}: an nnU-Net training with no fold_*/{CHECKPOINT}, the checkpoint nnU-Net "
        f"predicts with; give a finished training's directory"
    )


def trainings_within(path: str) -> str | None:
    """Why ``path``, a folder of nnU-Net trainings (a dataset's results: one per trainer,
    plans and configuration), cannot run as one model; None where it is none."""
    p = Path(path)
    found = sorted(d.name for d in p.iterdir() if d.is_dir() and is_nnunet_training(str(d)))
    if not found:
        return None
    return (
        f"{p}: a dataset's nnU-Net trainings ({', '.join(found)}), not one; give model= "
        f"one of them, e.g. model={p / found[0]}"
    )


def nnunet_folds(path: str) -> list[str]:
    """The folds of the training at ``path`` that hold a final checkpoint, in order
    (``fold_0`` .. ``fold_4``, ``fold_all``)."""
    found = [p.parent for p in Path(path).glob(f"fold_*/{CHECKPOINT}")]
    return [str(p) for p in sorted(found, key=lambda p: (not p.name[5:].isdigit(), p.name))]


def read_nnunet(fold: str) -> tuple[bytes, dict[str, Any], str]:
    """The fold's network (of its ``fold_checkpoint``) as a TorchScript program, its
    metadata as ``MODEL_META`` says, and what identifies it (the SHA-256 of its
    checkpoint, plans and dataset files).

    Raises:
        ModelLoadError: the package that builds the network is missing, or the training
            is one raysegment cannot run as nnU-Net does (see the module's notes).
    """
    import torch

    file = fold_checkpoint(fold)
    assert file is not None, fold
    folder = file.parent.parent
    plans, dataset = (_json(folder / name) for name in ("plans.json", "dataset.json"))
    checkpoint = _checkpoint(file)
    name = str(checkpoint.get("init_args", {}).get("configuration") or _configuration(folder))
    config = _resolved(plans, name, folder)
    where = f"{fold} ({name})"
    classes, outputs = _classes(dataset, where)
    names = dataset.get("channel_names") or dataset.get("modality") or {}
    channels = len(names)
    # A cascade's second stage: its input, the image's channels, then one per foreground
    # label of the first stage's label map.
    previous = _foreground_labels(dataset) if config.get("previous_stage") else []
    patch = [int(v) for v in config["patch_size"]]
    dims = len(patch)
    order = [int(a) for a in plans.get("transpose_forward", range(3))]
    # A 2D network on planes across y or x (the axis of the longest voxels, as nnU-Net
    # transposes a sagittal scan): a 3D model of tiles one plane thick across it.
    across = order[0] if dims == 2 and order[0] != 0 else None
    if across is not None:
        patch, dims = [1, *patch], 3
    elif dims == 2:  # on z planes: the in-plane axes' order
        order = [a - 1 for a in order[1:]]
    back = [order.index(a) for a in range(dims)]
    network = build_network(config["architecture"], channels + len(previous), len(classes), where)
    weights = {
        k.removeprefix("module.").removeprefix("_orig_mod."): v
        for k, v in checkpoint["network_weights"].items()
    }
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{where}: the checkpoint's weights do not fit the plans' network "
            f"({str(e).splitlines()[0]}); give the training directory the checkpoint came from"
        ) from e
    # Per stage a stride per axis, or one for every axis.
    given = np.asarray(config["architecture"]["arch_kwargs"]["strides"])
    planar = dims - (across is not None)  # the network's own axes
    strides = np.prod(given if given.ndim == 2 else given[:, None].repeat(planar, 1), axis=0)
    strides = [1] * (across is not None) + [int(v) for v in strides]
    steps = [strides[order.index(a)] for a in range(dims)]  # in the image's axis order
    module = _transposed(network.eval(), order, back, across is not None)
    example = torch.zeros(
        (1, channels + len(previous), *(1 if a == across else 2 * s for a, s in enumerate(steps)))
    )
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, example), buffer)
    # The axes the training mirrored, in nnU-Net's order: its test-time augmentation's
    # (none where the checkpoint records none, as nnU-Net's predictor takes it).
    mirrored = checkpoint.get("inference_allowed_mirroring_axes") or ()
    # The image's axis of each value of the spacing (nnU-Net's order; a 2D network's two).
    if across is not None:
        spaced = ["zyx"[a] for a in order[1:]]
    else:
        spaced = ["zyx"[3 - dims + a] for a in order]
    meta: dict[str, Any] = {
        "in_channels": channels + len(previous),
        "spatial_dims": dims,
        "classes": classes,
        **outputs,
        "patch_size": [patch[order.index(a)] for a in range(dims)],
        "tile_steps": [[1, 0] if a == across else [s, s] for a, s in enumerate(steps)],
        "tta_axes": sorted(order[int(a) + (across is not None)] for a in mirrored),
        "tile_spread": True,
        # Its cases' files: case_0000, case_0001, ... the channels named so.
        "channel_files": [str(names[k]) for k in sorted(names, key=int)],
        **normalization_meta(plans, config, channels, where, len(previous)),
        **_spacing(plans, config, spaced),
        **_resampling(config, where, bool(previous)),
    }
    if previous:
        meta["previous_labels"] = previous
        meta["previous_stage"] = str(config["previous_stage"])
    digest = hashlib.sha256()
    for part in (file, folder / "plans.json", folder / "dataset.json"):
        digest.update(hashlib.sha256(part.read_bytes()).digest())
    return buffer.getvalue(), meta, digest.hexdigest()


def _values(label: Any) -> list[int]:
    """A ``dataset.json`` label's values: a class's one, a region's several."""
    return [int(v) for v in label] if isinstance(label, (list, tuple)) else [int(label)]


def _labelled(dataset: dict[str, Any]) -> dict[str, list[int]]:
    """A ``dataset.json``'s labels, each its values by name, but the ignore label (what
    training left out: the network has no output for it)."""
    return {k: _values(v) for k, v in dataset.get("labels", {}).items() if k != "ignore"}


def _foreground_labels(dataset: dict[str, Any]) -> list[int]:
    """The dataset's label values but the background (0) and the ignore label, ascending:
    the labels of a first stage's map a cascade's second stage takes a channel each of
    (nnU-Net's ``LabelManager.foreground_labels``)."""
    return sorted({v for values in _labelled(dataset).values() for v in values} - {0})


def dataset_regions(dataset: dict[str, Any]) -> dict[str, list[int]] | None:
    """A region-based nnU-Net dataset's regions, each its label values by name (its
    ``labels`` where one holds several; background and the ignore label none), as
    nnU-Net's ``LabelManager`` reads them; None for a dataset of classes."""
    labels = _labelled(dataset)
    if not any(len(v) > 1 for v in labels.values()):
        return None
    return {k: v for k, v in labels.items() if set(v) != {0}}


def dataset_classes(dataset: dict[str, Any]) -> list[str] | None:
    """A dataset of classes' names, by value (background first), where they are numbered
    0, 1, 2, ... as nnU-Net trains them (the ignore label none); else None."""
    labels = _labelled(dataset)
    if any(len(v) != 1 for v in labels.values()):
        return None
    names = {v[0]: k for k, v in labels.items()}
    return [names[c] for c in range(len(names))] if set(names) == set(range(len(names))) else None


def _classes(dataset: dict[str, Any], where: str) -> tuple[list[str], dict[str, Any]]:
    """The network's outputs' names, and their ``MODEL_META`` keys: the labels (background
    first) of a softmax; a region-based training's regions (``dataset_regions``), each
    output a sigmoid, its ``regions_class_order`` the label each paints
    (``region_labels``), as nnU-Net's ``LabelManager`` reads them.

    Raises:
        ModelLoadError: labels not numbered 0, 1, 2, ...; regions without their order.
    """
    regions = dataset_regions(dataset)
    if regions is not None:
        order = dataset.get("regions_class_order")
        if not isinstance(order, list) or len(order) != len(regions):
            raise ModelLoadError(
                f"{where}: a region-based training of {len(regions)} regions "
                f"({', '.join(regions)}) with regions_class_order {order}; nnU-Net needs one "
                f"label per region in dataset.json's regions_class_order: give the training "
                f"directory as nnU-Net wrote it"
            )
        return list(regions), {"activation": "sigmoid", "region_labels": [int(v) for v in order]}
    classes = dataset_classes(dataset)
    if classes is None:
        labels = {k: v for k, v in dataset.get("labels", {}).items() if k != "ignore"}
        raise ModelLoadError(
            f"{where}: labels {labels} are not numbered 0, 1, 2, ...; nnU-Net trains them so"
        )
    return classes, {"activation": "softmax"}


def _transposed(network: Any, order: list[int], back: list[int], planes: bool = False) -> Any:
    """``network`` on a tile's spatial axes in nnU-Net's order (``order``: the plans'
    ``transpose_forward``), its output back in the tile's (``back``); ``planes``: a 2D
    network on a tile one plane thick across nnU-Net's first axis."""
    import torch

    class Transposed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.order = [0, 1, *(2 + a for a in order)]
            self.back = [0, 1, *(2 + a for a in back)]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(self.order)
            y = self.network(x.squeeze(2)).unsqueeze(2) if planes else self.network(x)
            return y.permute(self.back).contiguous()

    return Transposed()


def _json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"{path}: unreadable ({e}); give an nnU-Net training's directory"
        ) from e


def _checkpoint(path: Path) -> dict[str, Any]:
    """The fold's checkpoint: tensors and plain values where it holds only those, else
    unpickled whole (as nnU-Net loads it: a checkpoint runs code, as any model file)."""
    import torch

    try:
        try:
            return dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:
            return dict(torch.load(path, map_location="cpu", weights_only=False))
    except Exception as e:
        raise ModelLoadError(
            f"{path}: cannot load the checkpoint ({type(e).__name__}: {e}); give a fold's "
            f"{CHECKPOINT} as nnU-Net v2 writes it"
        ) from e


def _configuration(folder: Path) -> str:
    """The configuration a training directory's name gives: TRAINER__PLANS__CONFIGURATION."""
    parts = folder.name.split("__")
    if len(parts) != 3:
        raise ModelLoadError(
            f"{folder}: no configuration in its checkpoint nor its name "
            f"(TRAINER__PLANS__CONFIGURATION); give the training's directory as nnU-Net names it"
        )
    return parts[2]


def _resolved(plans: dict[str, Any], name: str, folder: Path) -> dict[str, Any]:
    """Configuration ``name`` of ``plans``, what it inherits filled in, its architecture
    in the plans' format of nnU-Net 2.4 on."""
    configurations = plans.get("configurations", {})
    seen: list[str] = []
    config: dict[str, Any] = {}
    while name not in seen:
        if name not in configurations:
            raise ModelLoadError(
                f"{folder / 'plans.json'}: no configuration {name!r} (it has "
                f"{sorted(configurations)}); give the training directory of these plans"
            )
        seen.append(name)
        config = {**configurations[name], **config}
        name = configurations[name].get("inherits_from", name)
    config.pop("inherits_from", None)
    if "architecture" not in config:
        config["architecture"] = _earlier_architecture(config, folder)
    return config


def _earlier_architecture(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The architecture of plans before nnU-Net 2.4 (``UNet_class_name`` and its sizes),
    as nnU-Net builds it from them."""
    kind = config.get("UNet_class_name")
    if kind not in _ARCHITECTURES:
        raise ModelLoadError(
            f"{folder}: network {kind!r}; raysegment builds {sorted(_ARCHITECTURES)} (nnU-Net's "
            f"own): trace the network to TorchScript and give that file"
        )
    stages = len(config["n_conv_per_stage_encoder"])
    width, most = config["UNet_base_num_features"], config["unet_max_num_features"]
    return unet_architecture(
        kind,
        [min(width * 2**i, most) for i in range(stages)],
        config["conv_kernel_sizes"],
        config["pool_op_kernel_sizes"],
        config["n_conv_per_stage_encoder"],
        config["n_conv_per_stage_decoder"],
    )


def unet_architecture(
    kind: str,
    features: list[int],
    kernels: list[list[int]],
    strides: list[list[int]],
    blocks: list[int],
    decoder: list[int],
) -> dict[str, Any]:
    """A plans' ``architecture`` of nnU-Net's network ``kind`` (PlainConvUNet or
    ResidualEncoderUNet), a stage each entry of ``features``, ``kernels`` and ``strides``
    (per axis; 2D or 3D as many), ``blocks`` (convolutions or residual blocks) per encoder
    stage and ``decoder`` convolutions per decoder stage; instance norms and leaky ReLUs,
    as nnU-Net's planners make it. ``build_network`` builds it."""
    dims = len(kernels[0])
    return {
        "network_class_name": _ARCHITECTURES[kind],
        "arch_kwargs": {
            "n_stages": len(features),
            "features_per_stage": features,
            "conv_op": f"torch.nn.Conv{dims}d",
            "kernel_sizes": kernels,
            "strides": strides,
            "n_conv_per_stage" if kind == "PlainConvUNet" else "n_blocks_per_stage": blocks,
            "n_conv_per_stage_decoder": decoder,
            "conv_bias": True,
            "norm_op": f"torch.nn.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def build_network(architecture: dict[str, Any], channels: int, classes: int, where: str) -> Any:
    """The network a plans' ``architecture`` describes (untrained), as nnU-Net builds it for
    inference."""
    name = str(architecture["network_class_name"])
    if not name.startswith("dynamic_network_architectures."):
        raise ModelLoadError(
            f"{where}: network {name}; raysegment builds dynamic_network_architectures' "
            f"networks (nnU-Net's own): trace the network to TorchScript and give that file"
        )
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(
            f"{where}: nnU-Net models need dynamic_network_architectures: pip install "
            f"'raysegment[nnunet]'"
        ) from e
    # nnU-Net's reading of earlier plans names a module the package no longer has.
    cls = pydoc.locate(name) or pydoc.locate(f"{_UNETS}.{name.rsplit('.', 1)[-1]}")
    if cls is None:
        raise ModelLoadError(
            f"{where}: dynamic_network_architectures has no {name}; pip install a version of "
            f"it that has (the one the model was trained with)"
        )
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(str(kwargs[key]))
    return cls(input_channels=channels, num_classes=classes, deep_supervision=False, **kwargs)  # type: ignore[operator]


def normalization_meta(
    plans: dict[str, Any], config: dict[str, Any], channels: int, where: str, labels: int = 0
) -> dict[str, Any]:
    """The configuration's normalization as ``MODEL_META``'s ``normalize``: one for every
    channel, or each channel's own (``channels``: a CT's and a PET's, as nnU-Net plans a
    channel named CT and the others; ``labels``: a cascade's channels of the first
    stage's labels after the image's, each left as it is), with its crop (``nonzero``,
    ``nonzero_kept``). A ``raysegment train`` of ``normalization=nnunet`` records its own
    so (``train.normalization``)."""
    schemes = list(config.get("normalization_schemes") or ["ZScoreNormalization"] * channels)
    # nnU-Net crops every image to its nonzero box; a Z-score within the nonzero region
    # itself where the plans say (a normalization of other schemes ignores the mask).
    masked = [bool(m) for m in config.get("use_mask_for_norm", [])] or [False] * channels
    within = [m and s == "ZScoreNormalization" for m, s in zip(masked, schemes, strict=False)]
    # Beside Z-scores within the region, channels of fixed normalizations (a CT's) keep
    # their voxels outside it, as nnU-Net leaves them; a measured one (the extremes of the
    # box) is not run.
    kept = [c for c, w in enumerate(within) if not w]
    if any(within) and any(schemes[c] not in _FIXED for c in kept):
        raise ModelLoadError(
            f"{where}: normalizes some channels within each image's nonzero region and others "
            f"by their values over its box (use_mask_for_norm {masked} of {schemes}); "
            f"raysegment measures every channel within the one region or box: segment the "
            f"images with nnU-Net"
        )
    if labels and any(within):
        raise ModelLoadError(
            f"{where}: a cascade's second stage normalizing within each image's nonzero "
            f"region (use_mask_for_norm {masked}), where nnU-Net's Z-score region takes in "
            f"the first stage's foreground too (its mask: the map >= 0 once cropped), which "
            f"raysegment does not: segment the images with nnU-Net"
        )
    crop: dict[str, Any] = {"nonzero": "mask" if any(within) else "box"}
    if any(within) and kept:
        crop["nonzero_kept"] = kept
    if len(schemes) != channels:
        raise ModelLoadError(
            f"{where}: {len(schemes)} normalization_schemes for {channels} channel(s); give "
            f"the plans the training was made with"
        )
    each = [_scheme(s, plans, c, where) for c, s in enumerate(schemes)]
    if labels and any(each):
        return {"normalize": {"channels": each + [{}] * labels}, **crop}
    if len(set(schemes)) > 1 or (schemes[0] == "CTNormalization" and channels > 1):
        return {"normalize": {"channels": each}, **crop}
    (scheme,), (first,) = set(schemes), each[:1]
    if scheme == "NoNormalization":
        return crop
    if scheme == "RGBTo01Normalization":
        return {"normalize": {"mean": [0.0] * channels, "std": [255.0] * channels}, **crop}
    return {"normalize": first, **crop}


_FIXED = ("CTNormalization", "NoNormalization", "RGBTo01Normalization")
"""nnU-Net's normalizations of fixed values, which a channel's nonzero region leaves alone."""


def _scheme(scheme: str, plans: dict[str, Any], channel: int, where: str) -> dict[str, Any]:
    """Normalization ``scheme`` of one ``channel`` as ``MODEL_META``'s ``normalize``."""
    if scheme == "ZScoreNormalization":
        return {"moments": True, "eps": 1e-8, "joint": False}
    if scheme == "RescaleTo01Normalization":
        return {"percentile": [0.0, 100.0], "eps": 1e-8, "joint": False}
    if scheme == "RGBTo01Normalization":
        return {"mean": [0.0], "std": [255.0]}
    if scheme == "NoNormalization":
        return {}
    if scheme != "CTNormalization":
        raise ModelLoadError(
            f"{where}: normalization {scheme}, which raysegment does not know; segment the "
            f"images with nnU-Net"
        )
    stats = plans.get("foreground_intensity_properties_per_channel", {})
    if str(channel) not in stats:
        raise ModelLoadError(
            f"{where}: CTNormalization of channel {channel} without its statistics (the "
            f"plans' foreground_intensity_properties_per_channel has {sorted(stats)}); give "
            f"the plans the training was made with"
        )
    s = stats[str(channel)]
    mean, std = float(s["mean"]), max(float(s["std"]), 1e-8)
    low, high = float(s["percentile_00_5"]), float(s["percentile_99_5"])
    # Clipped, then less the mean over the deviation: the same as clipping after, at the
    # bounds moved alike.
    clip = [(low - mean) / std, (high - mean) / std]
    return {"mean": [mean], "std": [std], "clip": clip}


def _spacing(plans: dict[str, Any], config: dict[str, Any], axes: list[str]) -> dict[str, Any]:
    """The configuration's spacing as the pixel trained at, along the image's ``axes``
    (each of its spacing's, in nnU-Net's order), where nnU-Net reads the images as
    medical ones (millimetres)."""
    spacing = [float(v) for v in config.get("spacing", [])]
    if plans.get("image_reader_writer") not in _MEDICAL_READERS or len(spacing) != len(axes):
        return {}
    sizes = dict(zip(axes, spacing, strict=True))
    return {
        "pixel_size": {a: sizes[a] for a in "zyx" if a in sizes},
        "pixel_unit": "millimeter",
    }


_RESAMPLING = "resample_data_or_seg_to_shape"
"""nnU-Net's own resampling function, which plans name for the images and the output."""


def _resampling(config: dict[str, Any], where: str, labels: bool = False) -> dict[str, Any]:
    """How the configuration resamples the images and the output back, as ``MODEL_META``'s
    ``resampling`` (``resampled.nnunet_kinds``), and with ``labels`` (a cascade's second
    stage) the first stage's label map (``segmentation``); none where it names another
    function than nnU-Net's own.

    Raises:
        ModelLoadError: an interpolation order raysegment does not run (it runs 0, 1, 3).
    """
    from raysegment.data.resampled import ORDERS

    if config.get("resampling_fn_data", _RESAMPLING) != _RESAMPLING:
        return {}
    scheme: dict[str, Any] = {}
    kinds = [("data", "data", 3), ("probabilities", "probabilities", 1)]
    if labels:
        kinds.append(("segmentation", "seg", 1))
    for which, fn, order in kinds:  # and nnU-Net's defaults
        given = config.get(f"resampling_fn_{fn}_kwargs") or {}
        orders = [int(given.get("order", order)), int(given.get("order_z", 0))]
        if any(o not in ORDERS for o in orders):
            raise ModelLoadError(
                f"{where}: resamples its {which} with spline order {orders}; raysegment "
                f"interpolates with orders {sorted(ORDERS)}: segment the images with nnU-Net"
            )
        scheme[which] = orders
        if which == "data":
            scheme["force_separate_z"] = given.get("force_separate_z")
            scheme["anisotropy"] = float(given.get("separate_z_anisotropy_threshold", 3.0))
    return {"resampling": scheme}
