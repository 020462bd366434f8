"""Turn blended model output into what is written: raw, probabilities, mask or labels."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from raysegment.compute import argmax
from raysegment.infer.plan import labels_dtype
from raysegment.registry import Registry

__all__ = ["FINALIZERS", "activate", "foreground"]

Regions = tuple[int, ...]
"""A region model's label per output channel (``modeldir.MODEL_META``'s
``region_labels``), or none: labels are the channels' argmax."""
Finalizer = Callable[[torch.Tensor, str, float, Regions], torch.Tensor]
FINALIZERS: Registry[Finalizer] = Registry("finalize.mode")


def _resolved(x: torch.Tensor, activation: str) -> str:
    """``auto`` = sigmoid for one channel, else softmax."""
    if activation == "auto":
        return "sigmoid" if x.shape[0] == 1 else "softmax"
    return activation


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """Sigmoid or softmax over channels (``auto``: sigmoid for one channel); ``none``:
    ``x`` as it is."""
    resolved = _resolved(x, activation)
    if resolved == "none":
        return x
    if resolved == "sigmoid":
        return torch.sigmoid(x)
    return torch.softmax(x, dim=0)


def foreground(x: torch.Tensor, activation: str, threshold: float) -> torch.Tensor:
    """``activate(x) > threshold``. For a sigmoid, the logits are compared with the
    threshold's logit instead: the same pixels, without a pass computing sigmoids."""
    if _resolved(x, activation) == "sigmoid" and 0.0 < threshold < 1.0:
        return x > math.log(threshold / (1.0 - threshold))
    return activate(x, activation) > threshold


@FINALIZERS.register("raw")
def _raw(x: torch.Tensor, activation: str, threshold: float, regions: Regions) -> torch.Tensor:
    return x


@FINALIZERS.register("probabilities")
def _probabilities(
    x: torch.Tensor, activation: str, threshold: float, regions: Regions
) -> torch.Tensor:
    return activate(x, activation)


@FINALIZERS.register("mask")
def _mask(x: torch.Tensor, activation: str, threshold: float, regions: Regions) -> torch.Tensor:
    return foreground(x, activation, threshold).to(torch.uint8)


@FINALIZERS.register("labels")
def _labels(x: torch.Tensor, activation: str, threshold: float, regions: Regions) -> torch.Tensor:
    """The channels' argmax (a one-channel model's mask); a region model's labels: each
    channel's label where it passes ``threshold``, in channel order, later channels over
    earlier (as nnU-Net paints a region-based training's ``regions_class_order``)."""
    if regions:
        labels = torch.zeros((1, *x.shape[1:]), dtype=_TORCH[labels_dtype(x.shape[0], regions)])
        for channel, label in enumerate(regions):
            labels[foreground(x[channel : channel + 1], activation, threshold)] = label
        return labels
    if x.shape[0] == 1:
        return foreground(x, activation, threshold).to(torch.uint8)
    return argmax(x, dim=0, keepdim=True).to(_TORCH[labels_dtype(x.shape[0], regions)])


_TORCH = {"uint8": torch.uint8, "int32": torch.int32}
