"""Models, losses, metrics and optimizers by name, with the checks that make a bad
combination fail at once (before any worker starts) with the reason."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from raysegment.config import TrainConfig
from raysegment.errors import ConfigError
from raysegment.registry import Registry
from raysegment.train.data import IGNORE, TrainingSet

__all__ = [
    "ARCHITECTURES",
    "DeepSupervision",
    "LOSSES",
    "NNUNET_ARCHITECTURES",
    "METRICS",
    "OPTIMIZERS",
    "build_model",
    "check_combination",
    "check_encoder",
    "make_loss",
    "metric_values",
    "model_for",
    "model_name",
    "supervise",
    "unet_topology",
]

ARCHITECTURES = (
    "Unet",
    "UnetPlusPlus",
    "FPN",
    "PSPNet",
    "DeepLabV3",
    "DeepLabV3Plus",
    "Linknet",
    "MAnet",
    "PAN",
    "UPerNet",
    "Segformer",
    "DPT",
)
"""segmentation-models-pytorch's architectures (2D)."""

NNUNET_ARCHITECTURES = ("PlainConvUNet", "ResidualEncoderUNet")
"""nnU-Net's networks (dynamic_network_architectures), 2D or 3D as ``patch_size`` is: its
planners' U-Net and its residual-encoder U-Net (ResEnc M's blocks), the stages' strides
from the patch and its voxels' spacing (``unet_topology``)."""

_MOST_FEATURES = {2: 512, 3: 320}
"""nnU-Net's widest stage, 2D and 3D."""
_RESIDUAL_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6)
"""Residual blocks per encoder stage of nnU-Net's ResEnc M planner."""

LossFactory = Callable[[str, "int | None"], nn.Module]
LOSSES: Registry[tuple[LossFactory, tuple[str, ...]]] = Registry("loss")
"""name -> (factory taking the mode and the target of pixels not labelled, or None where
it cannot leave them out; the modes it supports)."""
ALL_MODES = ("binary", "multilabel", "multiclass")


def _smp() -> Any:
    import segmentation_models_pytorch as smp

    return smp


def _loss(name: str, modes: tuple[str, ...] = ALL_MODES) -> Callable[[LossFactory], LossFactory]:
    def register(factory: LossFactory) -> LossFactory:
        LOSSES.register(name)((factory, modes))
        return factory

    return register


@_loss("JaccardLoss")
def _jaccard(mode: str, ignore: int | None = None) -> nn.Module:
    return _smp().losses.JaccardLoss(mode, ignore_index=ignore)


@_loss("DiceLoss")
def _dice(mode: str, ignore: int | None = None) -> nn.Module:
    return _smp().losses.DiceLoss(mode, ignore_index=ignore)


@_loss("TverskyLoss")
def _tversky(mode: str, ignore: int | None = None) -> nn.Module:
    return _smp().losses.TverskyLoss(mode, ignore_index=ignore)


@_loss("FocalLoss")
def _focal(mode: str, ignore: int | None = None) -> nn.Module:
    if mode == "multilabel" and ignore is not None:
        return _PerChannel(_smp().losses.FocalLoss("binary", ignore_index=ignore), ignore)
    return _smp().losses.FocalLoss(mode, ignore_index=ignore)


@_loss("LovaszLoss")
def _lovasz(mode: str, ignore: int | None = None) -> nn.Module:
    return _smp().losses.LovaszLoss(mode, ignore_index=ignore)


@_loss("SoftBCEWithLogitsLoss", ("binary", "multilabel"))
def _soft_bce(mode: str, ignore: int | None = None) -> nn.Module:
    return _smp().losses.SoftBCEWithLogitsLoss(ignore_index=ignore)


@_loss("SoftCrossEntropyLoss", ("multiclass",))
def _soft_ce(mode: str, ignore: int | None = None) -> nn.Module:
    return _smp().losses.SoftCrossEntropyLoss(smooth_factor=0.0, ignore_index=ignore)


@_loss("DiceCELoss")
def _dice_ce(mode: str, ignore: int | None = None) -> nn.Module:
    """nnU-Net's loss, as its trainer builds it: its soft Dice (``_BatchDice``) plus
    cross-entropy (binary, multilabel: per-pixel sigmoid, as its region-based trainings),
    at equal weights, each over the labelled pixels (``DC_and_CE_loss``,
    ``DC_and_BCE_loss``); 1 above nnU-Net's (its Dice term is -Dice)."""
    if mode == "multiclass":
        entropy: nn.Module = nn.CrossEntropyLoss(ignore_index=IGNORE if ignore is None else ignore)
    else:
        entropy = _MaskedBCE(ignore)
    return _Summed(_BatchDice(mode, ignore), entropy)


class _BatchDice(nn.Module):
    """nnU-Net's soft Dice loss (``MemoryEfficientSoftDiceLoss`` as its 2D and 3D
    full-resolution trainings configure it): the probabilities (softmax without the
    background; sigmoid: every channel) and the one-hot target, each class's overlap summed
    over the batch and the voxels ("batch Dice"), smoothed by 1e-5, the Dice averaged over
    the classes: 1 - that. Pixels of target ``ignore`` count in no sum. Data-parallel
    workers' steps sum every worker's batch, as nnU-Net's (``_workers_sum``)."""

    def __init__(self, mode: str, ignore: int | None = None) -> None:
        super().__init__()
        self.mode, self.ignore = mode, ignore

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        labelled = None if self.ignore is None else target != self.ignore
        if self.mode == "multiclass":
            probs = logits.softmax(1)[:, 1:]
            labels = target if labelled is None else torch.where(labelled, target, 0)
            truth = nn.functional.one_hot(labels.long(), logits.shape[1]).movedim(-1, 1)[:, 1:]
            weight = None if labelled is None else labelled.unsqueeze(1)
        else:
            probs = logits.sigmoid()
            truth = target if labelled is None else torch.where(labelled, target, 0)
            weight = labelled
        truth = truth.to(probs.dtype)
        if weight is not None:
            truth = truth * weight
            predicted = probs * weight
        else:
            predicted = probs
        axes = [0, *range(2, probs.ndim)]
        sums = torch.stack([(probs * truth).sum(axes), truth.sum(axes), predicted.sum(axes)])
        overlap, truths, predictions = _workers_sum(sums)  # one collective for the three
        total = (truths + predictions + 1e-5).clamp_min(1e-8)
        return 1 - ((2 * overlap + 1e-5) / total).mean()


class _Gathered(torch.autograd.Function):
    """Every data-parallel worker's ``tensor``, stacked (workers first); each worker's
    gradient the sum of every worker's for its own (nnU-Net's ``AllGatherGrad``: with
    the data-parallel mean of the weights' gradients, the whole batch's loss's)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def _workers_sum(sums: torch.Tensor) -> torch.Tensor:
    """``sums`` over every data-parallel worker's batch, as nnU-Net's batch Dice sums
    them, while a step computes gradients (every worker takes as many steps); a
    worker's own otherwise (its validation batches, as many as its share of the grid)."""
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            return _Gathered.apply(sums).sum(0)
    return sums


class _MaskedBCE(nn.Module):
    """Binary cross-entropy of logits as nnU-Net's ``DC_and_BCE_loss`` takes it: the mean
    over every pixel and channel; with pixels not labelled (target ``ignore``), the sum
    over the labelled ones and the channels over the labelled pixels' count (the channels
    of a region-based training's pixel are labelled alike)."""

    def __init__(self, ignore: int | None = None) -> None:
        super().__init__()
        self.ignore = ignore

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ignore is None:
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float())
        labelled = target != self.ignore
        truth = torch.where(labelled, target, 0).float()
        each = nn.functional.binary_cross_entropy_with_logits(
            logits.float(), truth, reduction="none"
        )
        pixels = labelled.sum() / labelled.shape[1]
        return (each * labelled).sum() / pixels.clamp_min(1e-8)


class _Summed(nn.Module):
    """The sum of two losses of the same logits and targets."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.first(logits, target) + self.second(logits, target)  # type: ignore[no-any-return]


class _OnProbabilities(nn.Module):
    """Feeds sigmoid probabilities to a loss that expects them (the model gives logits)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(torch.sigmoid(logits), target)


@_loss("MCCLoss", ("binary",))
def _mcc(mode: str, ignore: int | None = None) -> nn.Module:
    if ignore is not None:
        raise ConfigError(
            "loss=MCCLoss cannot leave out pixels not labelled (ignore_index, "
            "unannotated=ignore, Ignore* annotations); choose DiceLoss or FocalLoss"
        )
    return _OnProbabilities(_smp().losses.MCCLoss())


class _PerChannel(nn.Module):
    """A binary loss per channel of multilabel targets, averaged over the channels that
    hold a labelled pixel (segmentation-models-pytorch's multilabel FocalLoss cannot leave
    pixels out: it indexes each channel with the whole target's mask)."""

    def __init__(self, loss: nn.Module, ignore: int) -> None:
        super().__init__()
        self.loss, self.ignore = loss, ignore

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = [
            self.loss(logits[:, c], target[:, c])
            for c in range(target.shape[1])
            if (target[:, c] != self.ignore).any()
        ]
        return torch.stack(losses).mean()


class _Labelled(nn.Module):
    """A loss that leaves out pixels not labelled, and gives 0 (with a gradient of zeros)
    for a batch without a labelled pixel: a sparsely labelled image's patch may hold none,
    where FocalLoss would give NaN and LovaszLoss no scalar."""

    def __init__(self, loss: nn.Module, ignore: int) -> None:
        super().__init__()
        self.loss, self.ignore = loss, ignore

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore).any():
            return (logits * 0.0).sum()
        return self.loss(logits, target)  # type: ignore[no-any-return]


def make_loss(name: str, mode: str, ignores: bool = False) -> nn.Module:
    """Loss ``name`` for ``mode``; with ``ignores``, one leaving out the targets ``IGNORE``
    (pixels not labelled)."""
    factory, _ = LOSSES.get(name)
    if not ignores:
        return factory(mode, None)
    return _Labelled(factory(mode, IGNORE), IGNORE)


class DeepSupervision(nn.Module):
    """nnU-Net's deep supervision loss: the loss of each decoder stage's logits (full
    resolution first) against the target downsampled to them (nearest), weighted 1, 1/2,
    1/4, ..., the coarsest 0, the weights summing to 1. Logits of one tensor (validation,
    a network without it): the loss alone."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(
        self, logits: torch.Tensor | list[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.loss(logits, target)  # type: ignore[no-any-return]
        weights = [0.5**i for i in range(len(logits))]
        if len(weights) > 1:
            weights[-1] = 0.0  # kept in the graph: every parameter gets its (zero) gradient
        total = sum(weights)
        loss = sum(
            w / total * self.loss(out, _downsampled(target, out.shape[2:]))
            for w, out in zip(weights, logits, strict=True)
        )
        return loss  # type: ignore[return-value]


def _downsampled(target: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``target`` (N, C, *spatial) float or (N, *spatial) class indices at ``size``,
    nearest (``IGNORE`` kept), as nnU-Net downsamples its deep supervision targets."""
    indices = not target.dtype.is_floating_point
    channelled = target[:, None] if indices else target
    if channelled.shape[2:] == size:
        return target
    scaled = nn.functional.interpolate(channelled.float(), size=tuple(size), mode="nearest-exact")
    return scaled[:, 0].to(target.dtype) if indices else scaled


def supervise(model: nn.Module, on: bool) -> bool:
    """Turn the deep supervision of nnU-Net's network ``model`` on (its decoder returns
    every stage's logits, full resolution first) or off (the full resolution's alone);
    returns whether the model has it. Its weights are the same either way: every stage's
    output convolution exists in both."""
    decoders = [
        m for m in model.modules() if hasattr(m, "deep_supervision") and hasattr(m, "seg_layers")
    ]
    for decoder in decoders:
        setattr(decoder, "deep_supervision", on)  # noqa: B010  (a plain attribute, not a module)
    return bool(decoders)


OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


def _optimizer(cls: type[torch.optim.Optimizer]) -> OptimizerFactory:
    return lambda params, lr: cls(params, lr=lr)  # type: ignore[call-arg]


for _name in (
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "SparseAdam",
    "Adamax",
    "ASGD",
    "LBFGS",
    "RMSprop",
    "Rprop",
    "SGD",
):
    OPTIMIZERS.register(_name)(_optimizer(getattr(torch.optim, _name)))


@OPTIMIZERS.register("nnUNetSGD")
def _nnunet_sgd(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """nnU-Net's optimizer: SGD with Nesterov momentum 0.99 and weight decay 3e-5 (with
    its rate of 0.01 and the poly schedule, conf/nnunet.yaml)."""
    return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=3e-5)


METRICS: Registry[str] = Registry("metric")
"""name -> the segmentation_models_pytorch.metrics function computing it."""
for _name, _fn in (
    ("iou", "iou_score"),
    ("fscore", "f1_score"),
    ("accuracy", "accuracy"),
    ("recall", "recall"),
    ("precision", "precision"),
):
    METRICS.register(_name)(_fn)


def metric_values(stats: torch.Tensor) -> dict[str, float]:
    """Every metric from summed (tp, fp, fn, tn) per class, shape (4, C), micro-averaged."""
    tp, fp, fn, tn = (s[None].long() for s in stats)
    functions = _smp().metrics
    return {
        name: float(getattr(functions, METRICS.get(name))(tp, fp, fn, tn, reduction="micro"))
        for name in METRICS.names()
    }


def unet_topology(
    patch: tuple[int, ...], spacing: tuple[float, ...] | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Each stage's strides and convolution kernels along each axis of an nnU-Net network
    trained on ``patch`` of voxels of ``spacing`` (any unit; None: isotropic), as nnU-Net's
    planner gives them (``get_pool_and_conv_props``, maps of 4 at least): stage after
    stage, every axis at least 8 long whose spacing is within 2x of the finest is halved
    (a lone one only from 12 on), its spacing doubling; a kernel is 1 along an axis until
    its spacing is within 2x of the finest, then 3.

    Raises:
        ConfigError: the patch is not a multiple of what its network halves it by along
            each axis (nnU-Net pads its planned patch to one: named), or too small to halve.
    """
    strides, kernels, pools = _planned(patch, spacing)
    padded, multiple = padded_patch(patch, spacing)
    if len(strides) < 2 or list(patch) != padded:
        why = (
            f"too small to halve; give at least 8 along an axis, e.g. {[max(p, 16) for p in patch]}"
            if len(strides) < 2
            else f"nnU-Net's network halves it {pools} times along its axes; give a multiple "
            f"of {multiple}, e.g. patch_size={padded}"
        )
        raise ConfigError(f"patch_size={list(patch)}: {why}")
    return strides, kernels


def padded_patch(
    patch: Sequence[int], spacing: Sequence[float] | None = None
) -> tuple[list[int], list[int]]:
    """``patch`` rounded up along each axis to a multiple of what the nnU-Net network it
    plans (``unet_topology``) halves that axis by, as nnU-Net pads its planned patches, and
    those multiples."""
    pools = _planned(tuple(int(v) for v in patch), tuple(spacing) if spacing else None)[2]
    multiple = [2**n for n in pools]
    return [-(-int(v) // m) * m for v, m in zip(patch, multiple, strict=True)], multiple


def _planned(
    patch: tuple[int, ...], spacing: tuple[float, ...] | None
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """``unet_topology``'s strides and kernels, and the halvings along each axis."""
    dims = len(patch)
    size = [float(s) for s in patch]
    space = [float(s) for s in spacing] if spacing else [1.0] * dims
    strides, kernels, pools, kernel = [[1] * dims], [], [0] * dims, [1] * dims
    while True:
        axes = [d for d in range(dims) if size[d] >= 8]
        finest = min((space[d] for d in axes), default=0.0)
        axes = [d for d in axes if space[d] / finest < 2]
        if not axes or (len(axes) == 1 and size[axes[0]] < 12):
            break
        kernel = [3 if k == 3 or space[d] / min(space) < 2 else 1 for d, k in enumerate(kernel)]
        for d in axes:
            pools[d] += 1
            space[d] *= 2
            size[d] = float(np.ceil(size[d] / 2))
        strides.append([2 if d in axes else 1 for d in range(dims)])
        kernels.append(list(kernel))
    kernels.append([3] * dims)
    return strides, kernels, pools


def _nnunet_model(
    arch: str,
    patch: tuple[int, ...],
    in_channels: int,
    classes: int,
    features: int,
    spacing: tuple[float, ...] | None,
) -> nn.Module:
    from raysegment.infer.nnunet import build_network, unet_architecture

    strides, kernels = unet_topology(patch, spacing)
    stages, dims = len(strides), len(patch)
    widths = [min(features * 2**i, _MOST_FEATURES[dims]) for i in range(stages)]
    blocks = [2] * stages if arch == "PlainConvUNet" else list(_RESIDUAL_BLOCKS[:stages])
    decoder = [2 if arch == "PlainConvUNet" else 1] * (stages - 1)
    architecture = unet_architecture(arch, widths, kernels, strides, blocks, decoder)
    return build_network(architecture, in_channels, classes, f"model.arch={arch}")  # type: ignore[no-any-return]


def model_for(cfg: TrainConfig, data: TrainingSet, weights: bool = True) -> nn.Module:
    """The model ``cfg`` names for ``data``'s channels, classes, patch and spacing; from
    ``model.weights`` where ``weights``, else randomly initialised."""
    return build_model(
        cfg.model.arch,
        cfg.model.encoder,
        len(data.channels),
        data.classes,
        cfg.model.weights if weights else "random",
        data.patch,
        cfg.model.features,
        data.spacing,
    )


def model_name(arch: str, encoder: str, features: int) -> str:
    """How the errors name a model: its architecture with its encoder, or its width."""
    if arch in NNUNET_ARCHITECTURES:
        return f"{arch} of {features} features"
    return f"{arch} with {encoder}"


def check_encoder(name: str) -> None:
    """``name`` is an encoder of segmentation-models-pytorch, or ``tu-`` and a timm model
    (imports segmentation-models-pytorch or timm: seconds); ConfigError otherwise."""
    if name.startswith("tu-"):
        import timm

        if not timm.list_models(name[3:]):
            raise ConfigError(
                f"model.encoder={name!r}: timm has no model {name[3:]!r}; see timm.list_models()"
            )
        return
    names = _smp().encoders.get_encoder_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        hint = f"did you mean {close}? " if close else ""
        raise ConfigError(
            f"model.encoder={name!r} is not a segmentation-models-pytorch encoder; {hint}"
            f"choose from {len(names)} names such as resnet18, resnet34, efficientnet-b0, "
            f"mobilenet_v2, or tu-<timm model>"
        )


def check_combination(cfg: TrainConfig) -> None:
    """Names exist and fit together; raises ConfigError with the reason otherwise. The
    encoder's name is ``check_encoder``'s, which imports the model library."""
    arch, known = cfg.model.arch, (*ARCHITECTURES, *NNUNET_ARCHITECTURES)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model.arch {arch!r}{hint}; choose from {list(known)}")
    if cfg.plan is not None and arch not in NNUNET_ARCHITECTURES:
        raise ConfigError(
            f"plan={cfg.plan} plans nnU-Net's networks and model.arch={arch} is "
            f"segmentation-models-pytorch's; choose model.arch=PlainConvUNet or "
            f"ResidualEncoderUNet, or give patch_size= instead"
        )
    if cfg.plan is None and len(cfg.patch()) == 3 and arch not in NNUNET_ARCHITECTURES:
        raise ConfigError(
            f"patch_size={cfg.patch_size} trains a 3D network and model.arch={arch} is 2D "
            f"(segmentation-models-pytorch); choose model.arch=PlainConvUNet or "
            f"ResidualEncoderUNet (nnU-Net's), or a 2D patch_size"
        )
    # Too small at any spacing: isotropic voxels halve the most axes.
    small = cfg.plan is None and len(_planned(cfg.patch(), None)[0]) < 2
    if arch in NNUNET_ARCHITECTURES and small:
        raise ConfigError(
            f"patch_size={cfg.patch_size}: too small for {arch}, which halves axes of 8 or "
            f"more (a lone one of 12 or more); nnU-Net's 3D patches are e.g. [64,128,128]"
        )
    OPTIMIZERS.get(cfg.optimizer)
    METRICS.get(cfg.metric)
    _, modes = LOSSES.get(cfg.loss)
    mode = cfg.mode.value
    if mode not in modes:
        raise ConfigError(
            f"loss={cfg.loss} does not support mode={mode} (it supports {list(modes)}); "
            f"choose another loss, e.g. DiceLoss"
        )
    if cfg.optimizer == "SparseAdam":
        raise ConfigError(
            "optimizer=SparseAdam needs sparse gradients, and segmentation networks have "
            "dense ones; choose Adam or AdamW"
        )
    if cfg.optimizer == "LBFGS" and cfg.precision.value == "float16":
        raise ConfigError(
            "optimizer=LBFGS evaluates the loss again inside its step, which float16's "
            "gradient scaling cannot follow; choose precision=bfloat16 or float32"
        )
    if cfg.model.weights != "random" and not Path(cfg.model.weights).is_file():
        raise ConfigError(
            f"model.weights={cfg.model.weights!r}: no such file; give random or a local "
            f"state-dict file (nothing is downloaded)"
        )


def build_model(
    arch: str,
    encoder: str,
    in_channels: int,
    classes: int,
    weights: str = "random",
    patch: tuple[int, ...] = (),
    features: int = 32,
    spacing: tuple[float, ...] | None = None,
) -> nn.Module:
    """A segmentation-models-pytorch model (``arch`` with ``encoder``), or nnU-Net's network
    ``arch`` for patches of ``patch`` (2D or 3D) of voxels of ``spacing`` and ``features``
    in its first stage; randomly initialised or from a local file.

    Raises:
        ConfigError: the architecture does not take this encoder or patch, or the weights
            file does not fit the model.
    """
    if arch in NNUNET_ARCHITECTURES:
        model = _nnunet_model(arch, patch, in_channels, classes, features, spacing)
    else:
        try:
            model = _smp().create_model(
                arch,
                encoder_name=encoder,
                encoder_weights=None,
                in_channels=in_channels,
                classes=classes,
            )
        except Exception as e:
            raise ConfigError(
                f"model.arch={arch} cannot be built with model.encoder={encoder} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); choose another encoder"
            ) from e
    if weights != "random":
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        target: nn.Module = model
        if not set(state) <= set(model.state_dict()):
            target = model.encoder  # type: ignore[assignment]  # an encoder-only state dict
        own = set(target.state_dict())
        unexpected, missing = set(state) - own, own - set(state)
        if unexpected or missing == own:
            raise ConfigError(
                f"model.weights={weights}: the state dict does not fit "
                f"{model_name(arch, encoder, features)} "
                f"({len(unexpected)} unexpected, {len(missing)} missing keys)"
            )
        target.load_state_dict(state, strict=False)
    return model
