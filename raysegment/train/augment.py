"""Training patches' augmentations.

Two schemes (``augment``): ``true``, light: flips, quarter turns of square patches and an
intensity jitter; ``nnunet``, nnU-Net's default training augmentations (its
``get_training_transforms``, same probabilities and ranges): rotation and scaling about the
patch's centre, read from the image around it (what the rotated patch's corners reach lies
in the image, not in padding, wherever the image goes on), Gaussian noise and blur,
brightness, contrast, simulated low resolution, gamma (inverted too), mirroring.

Every draw comes from the patch's own generator, so a patch is the same whenever its spec
is read (a resumed run, another worker).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["NNUNET", "Scheme", "light", "nnunet"]

NNUNET = "nnunet"
"""``augment``'s value choosing nnU-Net's scheme."""

ANISOTROPIC = 3.0
"""A 3D patch whose largest axis is more than this many times its z augments as a stack of
2D slices (nnU-Net's ``ANISO_THRESHOLD``: its "dummy 2D" augmentation): rotated and scaled
in plane only, its z left at full resolution by the low-resolution simulation."""

Region = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
Reader = Callable[[Region], tuple[np.ndarray, np.ndarray]]
"""Reads a (z, y, x) region of the image: (x normalized (C, *patch axes), labels
(C', *patch axes)); the region lies inside the image."""


@dataclass(frozen=True, slots=True)
class Scheme:
    """nnU-Net's spatial augmentation for a patch (its
    ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``)."""

    rotation: float
    """Largest angle, radians, about each rotated axis: 180 degrees in 2D (15 for a patch
    over 1.5 times longer than wide) and in-plane 3D, 30 about each axis in 3D."""
    in_plane: bool
    """A 3D patch augmented as 2D slices (``ANISOTROPIC``)."""

    @classmethod
    def of(cls, patch: tuple[int, ...]) -> Scheme:
        if len(patch) == 2:
            return cls(np.deg2rad(15.0 if max(patch) / min(patch) > 1.5 else 180.0), False)
        if max(patch) / patch[0] > ANISOTROPIC:
            return cls(np.pi, True)
        return cls(np.deg2rad(30.0), False)


def light(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips, quarter turns where the patch is square, a 3D patch's z flip, and a brightness
    scale and shift; ``x`` (C, [z,] h, w) and ``y`` alike."""
    if rng.random() < 0.5:
        x, y = x[..., ::-1], y[..., ::-1]
    if rng.random() < 0.5:
        x, y = x[..., ::-1, :], y[..., ::-1, :]
    if x.shape[-1] == x.shape[-2]:
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
    if x.ndim == 4 and rng.random() < 0.5:  # a 3D patch (C, z, y, x): along z too
        x, y = x[..., ::-1, :, :], y[..., ::-1, :, :]
    x = x * rng.uniform(0.9, 1.1) + rng.normal(0.0, 0.05)
    return x, y


def nnunet(
    read: Reader,
    corner: tuple[int, int, int],
    sizes: tuple[int, int, int],
    image: tuple[int, int, int],
    planar: bool,
    fill: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A random patch of (z, y, x) ``sizes`` at ``corner`` of an ``image`` of (planes, h, w),
    augmented as nnU-Net augments its training patches: x (C, *patch) float32, labels
    (C', *patch) (nearest, ``fill`` where the transformed patch leaves the image)."""
    patch = sizes[1:] if planar else sizes
    scheme = Scheme.of(patch)
    matrix = _affine(len(patch), scheme, rng)
    if matrix is None:
        x, y = read(tuple((c, c + s) for c, s in zip(corner, sizes, strict=True)))  # type: ignore[arg-type]
    else:
        x, y = _transformed(read, corner, sizes, image, planar, matrix, fill)
    x = _intensity(x.astype(np.float32, copy=False), scheme, rng)
    for axis in range(1, x.ndim):  # mirrored along every axis, as nnU-Net's training
        if rng.random() < 0.5:
            x, y = np.flip(x, axis), np.flip(y, axis)
    return x, y


def _affine(dims: int, scheme: Scheme, rng: np.random.Generator) -> np.ndarray | None:
    """A patch offset's source offset (dims x dims, in voxels), or None: unmoved. Rotated
    with probability 0.2, scaled by one factor in [0.7, 1.4] with 0.2 (over 1 the patch
    covers more of the image: its objects shrink)."""
    rotate, scale = rng.random() < 0.2, rng.random() < 0.2
    if not (rotate or scale):
        return None
    turns = 1 if dims == 2 or scheme.in_plane else 3
    angles = rng.uniform(-scheme.rotation, scheme.rotation, turns) if rotate else np.zeros(turns)
    factor = rng.uniform(0.7, 1.4) if scale else 1.0
    spatial = 2 if scheme.in_plane else dims
    matrix = np.eye(spatial)
    # About z (turning y into x) first, then about y and about x where a 3D patch turns.
    for angle, (a, b) in zip(angles, [(-2, -1), (0, 2), (0, 1)], strict=False):
        turn = np.eye(spatial)
        cos, sin = np.cos(angle), np.sin(angle)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = cos, -sin, sin, cos
        matrix = matrix @ turn
    matrix = matrix * factor
    if spatial < dims:  # in plane: z unmoved
        matrix = np.block([[np.eye(1), np.zeros((1, 2))], [np.zeros((2, 1)), matrix]])
    return matrix


def _transformed(
    read: Reader,
    corner: tuple[int, int, int],
    sizes: tuple[int, int, int],
    image: tuple[int, int, int],
    planar: bool,
    matrix: np.ndarray,
    fill: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Read the region the transformed patch covers (clipped to the image) and resample it
    at the patch's voxels: the image linearly, the labels nearest; where a voxel's source
    lies off the image, 0 (the normalized mean) and ``fill``."""
    axes = slice(1, None) if planar else slice(None)
    shape = np.array(sizes[axes])
    centre = np.array([c + (s - 1) / 2 for c, s in zip(corner, sizes, strict=True)])[axes]
    # The patch's corner voxels' sources bound every voxel's (the map is affine).
    corners = np.array(list(itertools.product(*[(0, s - 1) for s in shape]))).T
    reach = centre[:, None] + matrix @ (corners - (shape[:, None] - 1) / 2)
    size = np.array(image[axes])
    # A voxel's margin: the voxels' sources are computed apart from the corners' (rounding).
    lo = np.clip(np.floor(reach.min(axis=1)).astype(int) - 1, 0, size - 1)
    hi = np.clip(np.ceil(reach.max(axis=1)).astype(int) + 2, lo + 1, size)
    if planar:
        region = ((corner[0], corner[0] + 1), *zip(lo.tolist(), hi.tolist(), strict=True))
    else:
        region = tuple(zip(lo.tolist(), hi.tolist(), strict=True))
    x, y = read(region)  # type: ignore[arg-type]
    if y.dtype == bool:
        y = y.view(np.uint8)
    # A patch voxel i reads the region at matrix @ i + offset.
    offset = centre - lo - matrix @ ((shape - 1) / 2)
    out = tuple(shape.tolist())

    def resampled(a: np.ndarray, order: int, cval: float) -> np.ndarray:
        return ndimage.affine_transform(
            a, matrix, offset, output_shape=out, order=order, mode="constant", cval=cval
        )

    return (
        np.stack([resampled(c, 1, 0.0) for c in x]),
        np.stack([resampled(c, 0, fill) for c in y]),
    )


def _intensity(x: np.ndarray, scheme: Scheme, rng: np.random.Generator) -> np.ndarray:
    """nnU-Net's intensity augmentations in its order, each with its probability."""
    channels, spatial = x.shape[0], x.ndim - 1
    if rng.random() < 0.1:  # Gaussian noise, one variance for every channel
        x = x + rng.normal(0.0, np.sqrt(rng.uniform(0.0, 0.1)), x.shape).astype(np.float32)
    if rng.random() < 0.2:  # Gaussian blur: each channel with 0.5, a sigma an axis
        for c in range(channels):
            if rng.random() < 0.5:
                x[c] = ndimage.gaussian_filter(x[c], rng.uniform(0.5, 1.0, spatial))
    if rng.random() < 0.15:  # brightness: a factor a channel
        x = x * np.array([_contrast_factor(rng) for _ in range(channels)], np.float32).reshape(
            -1, *[1] * spatial
        )
    if rng.random() < 0.15:  # contrast about the mean, within the channel's range
        for c in range(channels):
            mean, low, high = x[c].mean(), x[c].min(), x[c].max()
            x[c] = np.clip((x[c] - mean) * _contrast_factor(rng) + mean, low, high)
    if rng.random() < 0.25:  # simulated low resolution: each channel with 0.5
        for c in range(channels):
            if rng.random() < 0.5:
                x[c] = _low_resolution(x[c], rng.uniform(0.5, 1.0), scheme.in_plane)
    for invert, p in ((True, 0.1), (False, 0.3)):
        if rng.random() < p:
            for c in range(channels):
                x[c] = _gamma(x[c], _contrast_factor(rng, 0.7, 1.5), invert)
    return x


def _contrast_factor(rng: np.random.Generator, low: float = 0.75, high: float = 1.25) -> float:
    """A factor below 1 or above it with even odds (nnU-Net's ``BGContrast``)."""
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1.0))
    return float(rng.uniform(max(low, 1.0), high))


def _low_resolution(plane: np.ndarray, scale: float, in_plane: bool) -> np.ndarray:
    """Downsampled by ``scale`` (nearest) and back (linear); z kept where ``in_plane``."""
    small = [
        s if (in_plane and axis == 0) else max(1, round(s * scale))
        for axis, s in enumerate(plane.shape)
    ]
    down = ndimage.zoom(
        plane,
        [n / s for n, s in zip(small, plane.shape, strict=True)],
        order=0,
        mode="nearest",
        grid_mode=True,
    )
    return ndimage.zoom(
        down,
        [s / n for s, n in zip(plane.shape, down.shape, strict=True)],
        order=1,
        mode="nearest",
        grid_mode=True,
    )


def _gamma(values: np.ndarray, gamma: float, invert: bool) -> np.ndarray:
    """``values`` scaled to [0, 1], raised to ``gamma`` and back, keeping their mean and
    deviation (nnU-Net's retained statistics); ``invert``: of the negated values."""
    v = -values if invert else values
    mean, std = v.mean(), v.std()
    low, span = v.min(), max(float(v.max() - v.min()), 1e-7)
    v = ((v - low) / span) ** gamma * span + low
    v = (v - v.mean()) / max(float(v.std()), 1e-7) * std + mean
    return -v if invert else v
