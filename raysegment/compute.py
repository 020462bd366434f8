"""How a model runs on a device, for inference and training alike: reduced precision
(autocast, and whether the device has its fast kernels) and the memory layout of its
activations (channels-first or channels-last)."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "argmax",
    "autocast",
    "choose_layout",
    "forward",
    "memory_format",
    "prefers_channels_last",
    "probe_tile",
    "slow_precision",
]


def argmax(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """``torch.argmax`` (the first index where several values are the largest), through
    ``torch.max``: on CPUs ``torch.argmax`` across any dimension but the last is ~35x
    slower (2 or 3 channels of 4096^2 pixels, 2 threads: 3.3-3.5 s against 0.09-0.16 s,
    torch 2.13 and 2.14)."""
    return torch.max(x, dim=dim, keepdim=keepdim).indices


def slow_precision(device: torch.device, precision: str) -> bool:
    """Whether autocast to ``precision`` on ``device`` lacks fast kernels: CPUs whose
    oneDNN has no bfloat16 (it needs AVX-512 or ARM's bf16) or float16 convolutions run
    the reference kernels. A CPU Unet tile took 3.0-3.2 s in bfloat16 against 0.43-0.46 s
    in float32 on an AVX2-only AMD EPYC (2 threads)."""
    if device.type != "cpu" or precision == "float32":
        return False
    check = "_is_mkldnn_bf16_supported" if precision == "bfloat16" else "_is_mkldnn_fp16_supported"
    try:
        return not bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a torch build without the check: assume fast
        return False


def prefers_channels_last(device: torch.device, precision: str) -> bool:
    """Where ``layout=auto`` tries channels-last: on CPUs (oneDNN's channels-last
    convolutions: 1.5x for a float32 Unet on this project's CPU), and on GPUs under
    bfloat16/float16 autocast (tensor-core kernels take NHWC). A rule, not a timing: every
    predictor of a run, and every rerun, takes the same layout, so outputs are
    reproducible bit for bit."""
    return device.type == "cpu" or precision != "float32"


def probe_tile(tile: Sequence[int]) -> tuple[int, ...]:
    """A smaller tile for the layout test: each side divided by the largest of 8, 4, 2
    that keeps every power of two up to 32 it divides by (an encoder's total stride), e.g.
    512 -> 64, 96 -> 96. Channels-last kernels are chosen per op, not per size; a CPU
    Unet's two test forwards took 1.87 s on 512^2 tiles here, 0.11-0.22 s on 64^2."""
    out = []
    for t in tile:
        stride = math.gcd(t, 32)
        k = next(k for k in (8, 4, 2, 1) if t % k == 0 and (t // k) % stride == 0)
        out.append(t // k)
    return tuple(out)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` on ``device`` (matmuls and convolutions in
    bfloat16/float16 where the device supports them), nothing for float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def memory_format(layout: str, dims: int) -> torch.memory_format:
    """The memory format of ``layout`` (``choose_layout``'s name) for a model of ``dims``
    spatial dimensions: channels-last (2D) or its 3D form, else contiguous."""
    if layout != "channels_last":
        return torch.contiguous_format
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def choose_layout(
    module: torch.nn.Module,
    tile_shape: tuple[int, ...],
    device: torch.device,
    layout: str,
    precision: str = "float32",
    batch: int = 1,
) -> str:
    """Put ``module`` in its memory layout for tiles of ``tile_shape`` (C, *spatial) and
    return the layout's name. ``batch``: tiles per forward the test runs (a torch.export
    program with a static batch takes no other).

    ``auto``: channels-last where ``prefers_channels_last``, for models with 2D/3D
    convolution weights that run in that layout and whose output agrees with
    channels-first (float rounding apart) on a random tile: a smaller tile of the same
    strides (``probe_tile``), or the tile itself where the model refuses the smaller one
    (a program exported for one tile size).
    """
    dims = len(tile_shape) - 1
    if layout == "channels_first" or dims not in (2, 3):
        return "channels_first"
    last = memory_format("channels_last", dims)
    if layout == "channels_last":
        module.to(memory_format=last)
        return "channels_last"
    convolutions = any(p.ndim == dims + 2 for p in module.parameters())
    if not (convolutions and prefers_channels_last(device, precision)):
        return "channels_first"
    generator = torch.Generator().manual_seed(0)
    tile = tuple(tile_shape[1:])
    with autocast(device, precision):
        for shape in dict.fromkeys([probe_tile(tile), tile]):
            x = torch.randn((batch, tile_shape[0], *shape), generator=generator).to(device)
            try:
                first = forward(module, x)
                break
            except Exception:
                if shape == tile:
                    raise
        try:
            module.to(memory_format=last)
            other = forward(module, x.contiguous(memory_format=last))
        except RuntimeError:  # an op of the model that cannot take channels-last strides
            module.to(memory_format=torch.contiguous_format)
            return "channels_first"
    scale = float(first.abs().max()) or 1.0
    tolerance = 1e-3 if precision == "float32" else 5e-2
    if torch.allclose(other, first, rtol=tolerance, atol=tolerance * scale):
        return "channels_last"
    module.to(memory_format=torch.contiguous_format)
    return "channels_first"


def forward(module: torch.nn.Module, x: torch.Tensor, flips: Sequence[int] = ()) -> torch.Tensor:
    """Logits for a batch of tiles. With ``flips`` (spatial axes, 0 the first), the mean
    over every combination of flips of those axes (test-time augmentation: 4 of two axes,
    8 of three), each flip undone on its output."""
    spatial = [2 + a for a in flips]
    combos = [axes for r in range(len(spatial) + 1) for axes in itertools.combinations(spatial, r)]
    total: torch.Tensor | None = None
    with torch.inference_mode():
        for axes in combos:
            y = module(torch.flip(x, axes) if axes else x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            y = torch.flip(y.float(), axes) if axes else y.float()
            total = y if total is None else total + y
    assert total is not None
    # Without flips the logits as they are: a division by 1 copied every tile's output
    # (15 ms of a 4096^2 block's 0.33 s with a cheap model, 132 tiles).
    return total / len(combos) if len(combos) > 1 else total
