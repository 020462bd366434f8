"""nnU-Net's planner: the voxel size a training resamples its images to where asked for
the data's own (``resample_to=median``: its target spacing), and the patch and batch size
it plans for a GPU's memory (``plan``: ``planned_patch``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ANISOTROPY", "planned_patch", "target_spacing"]

ANISOTROPY = 3.0
"""nnU-Net's ``anisotropy_threshold``: an axis whose median voxel is over this many times
the others' largest, and which is this many times shorter in voxels, is anisotropic."""


def target_spacing(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]
) -> tuple[float, ...]:
    """The voxel size to train at for images of ``spacings`` and ``shapes`` (each (z, y,
    x), or (y, x)): each axis's median, as nnU-Net's ``determine_fullres_target_spacing``;
    along an anisotropic axis (CT slices of 5 mm under pixels of 0.8 mm, a few dozen
    slices) its 10th percentile, kept coarser than the other axes, so that the thin
    volumes are not resampled from few slices to many."""
    spacing = np.asarray(spacings, np.float64)
    target = np.percentile(spacing, 50, axis=0)
    size = np.percentile(np.asarray(shapes, np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    if not others:
        return tuple(float(v) for v in target)
    finest = max(target[i] for i in others)
    if target[worst] > ANISOTROPY * finest and size[worst] * ANISOTROPY < min(
        size[i] for i in others
    ):
        along = float(np.percentile(spacing[:, worst], 10))
        if along < finest:
            along = max(finest, along) + 1e-5
        target[worst] = along
    return tuple(float(v) for v in target)


_PRESETS = {
    "PlainConvUNet": ((8.0, 85_000_000, 560_000_000, 0.05),),
    "ResidualEncoderUNet": (
        (8.0, 135_000_000, 680_000_000, 0.05),
        (24.0, 380_000_000, 2_100_000_000, 1.0),
        (40.0, 560_000_000, 3_600_000_000, 1.0),
    ),
}
"""nnU-Net's planners of each architecture (its default one; ResEnc M, L and XL): the GPU
memory (GB) each is made for, the feature maps' size (2D, 3D) of its reference network,
which fit that memory at ``_REFERENCE_BATCH``, and the most of the training voxels one
batch may hold."""
_REFERENCE_GB = 8.0
"""nnU-Net's default GPU memory target."""
_REFERENCE_BATCH = {2: 12, 3: 2}
_REFERENCE_EDGE = {2: 2048, 3: 256}
"""The patch nnU-Net plans down from: as many voxels as 2048^2 or 256^3, shaped by the
voxels' size (clipped to the images' median shape)."""
_SMALLEST_BATCH = 2


def planned_patch(
    arch: str,
    spacing: Sequence[float],
    median_shape: Sequence[int],
    voxels: float,
    network: Any,
    gpu_gb: float = _REFERENCE_GB,
) -> tuple[tuple[int, ...], int]:
    """The patch and batch size nnU-Net's planner gives a network ``arch`` trained on
    images of ``median_shape`` voxels of ``spacing`` (each (z, y, x), or (y, x)), of
    ``voxels`` in all, on a GPU of ``gpu_gb`` (``get_plans_for_configuration``; its default
    planner's for PlainConvUNet; for ResidualEncoderUNet the ResEnc preset of the largest
    memory up to ``gpu_gb``: M's of 8 GB under 24, L's, XL's from 40): a patch of the
    voxels' aspect as large as 256^3 (2048^2), at most the median shape, each axis a
    multiple of what the network halves it by (``components.unet_topology``), shrunk
    along the axis largest against the median shape until the network's feature maps
    (``network(patch)``: one built for it, ``compute_conv_feature_map_size``) fit the GPU
    as the planner's reference network fits its memory; the batch what the memory left
    holds, at least 2, at most 5% of the voxels (the default planner's and M's). A 3D
    plan runs with the coarsest axis first, as nnU-Net transposes its images (ties: the
    axes' order)."""
    from raysegment.train.components import padded_patch

    dims = len(spacing)
    order = list(range(dims))
    if dims == 3:
        coarsest = int(np.argmax(spacing))
        order = [coarsest, *(a for a in range(3) if a != coarsest)]
    space = [float(spacing[a]) for a in order]
    median = [int(median_shape[a]) for a in order]

    def padded(patch: Sequence[int]) -> tuple[list[int], list[int]]:
        return padded_patch(patch, space)

    estimates: dict[tuple[int, ...], float] = {}

    def estimate(patch: list[int]) -> float:
        key = tuple(patch)
        if key not in estimates:
            back = [patch[order.index(a)] for a in range(dims)]
            estimates[key] = float(network(tuple(back)).compute_conv_feature_map_size(back))
        return estimates[key]

    inverse = 1 / np.asarray(space)
    scale = (_REFERENCE_EDGE[dims] ** dims / np.prod(inverse)) ** (1 / dims)
    start = [min(round(v), m) for v, m in zip(inverse * scale, median, strict=True)]
    patch, multiple = padded(start)
    presets = _PRESETS[arch]
    made_for, *references, covering = ([p for p in presets if p[0] <= gpu_gb] or presets)[-1]
    reference = references[dims - 2] * gpu_gb / made_for
    batch = _REFERENCE_BATCH[dims]
    # nnU-Net's default planner fits its reference batch's share; ResEnc's, one patch.
    share = batch / 2 if arch == "PlainConvUNet" else 1.0
    while estimate(patch) / share > reference:
        axis = int(np.argsort([p / m for p, m in zip(patch, median, strict=True)])[-1])
        trial = list(patch)
        trial[axis] -= multiple[axis]
        _, multiple = padded(trial)
        patch[axis] -= multiple[axis]
        patch, multiple = padded(patch)
    size = round(reference / estimate(patch) * batch)
    covered = round(voxels * covering / np.prod(patch, dtype=np.float64))
    planned = tuple(patch[order.index(a)] for a in range(dims))
    return planned, max(min(size, covered), _SMALLEST_BATCH)
