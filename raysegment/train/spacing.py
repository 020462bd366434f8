"""The voxel size a training resamples its images to where asked for the data's own
(``resample_to=median``): nnU-Net's planner's target spacing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ANISOTROPY", "target_spacing"]

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
