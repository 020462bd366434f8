"""Turn blended model output into what is written: raw, probabilities, mask or labels."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from raysegment.compute import argmax
from raysegment.registry import Registry

__all__ = ["FINALIZERS", "activate", "foreground"]

Finalizer = Callable[[torch.Tensor, str, float], torch.Tensor]
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
def _raw(x: torch.Tensor, activation: str, threshold: float) -> torch.Tensor:
    return x


@FINALIZERS.register("probabilities")
def _probabilities(x: torch.Tensor, activation: str, threshold: float) -> torch.Tensor:
    return activate(x, activation)


@FINALIZERS.register("mask")
def _mask(x: torch.Tensor, activation: str, threshold: float) -> torch.Tensor:
    return foreground(x, activation, threshold).to(torch.uint8)


@FINALIZERS.register("labels")
def _labels(x: torch.Tensor, activation: str, threshold: float) -> torch.Tensor:
    if x.shape[0] == 1:
        return foreground(x, activation, threshold).to(torch.uint8)
    dtype = torch.uint8 if x.shape[0] <= 256 else torch.int32
    return argmax(x, dim=0, keepdim=True).to(dtype)
