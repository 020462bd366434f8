"""NIfTI files (``.nii``, ``.nii.gz``): CT and MRI volumes as medical image segmentation
keeps them (dcm2niix's output, nnU-Net's and MONAI's datasets), through nibabel (``pip
install 'raysegment[nifti]'``).

A ``.nii`` is memory-mapped: a region read touches only its own bytes. A ``.nii.gz`` is
decompressed from its start up to each region read (gzip cannot seek; nibabel seeks with
``indexed_gzip`` where it is installed): gunzip a large one first.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from raysegment.data.sources import (
    SOURCES,
    ArraySource,
    ImageInfo,
    _axes_to_5d,
    _ngff_unit,
    open_file,
    reader_module,
)
from raysegment.errors import InputImageError

__all__ = ["NIFTI_SUFFIXES", "NiftiSource"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""Names of NIfTI-1 and NIfTI-2 files, gzipped or not."""

_AXES = {2: "xy", 3: "xyz", 4: "xyzt", 5: "xyztc"}
"""A NIfTI array's axes by its dimensions: x varies fastest on disk; the fifth dimension
holds a voxel's components (channels)."""
_BROKEN = (EOFError, OSError, ValueError, zlib.error)
"""What nibabel raises reading a truncated or corrupt file's data."""


def _load(path: str) -> Any:
    nibabel = reader_module(path, "nibabel", "NIfTI", "nifti")
    image = open_file(path, "NIfTI file", nibabel.load)
    if not isinstance(image, nibabel.Nifti1Image | nibabel.Nifti2Image):
        raise InputImageError(
            f"{path}: a {type(image).__name__}, not a NIfTI image; convert it to NIfTI or OME-Zarr"
        )
    return image


def _scaled(image: Any) -> bool:
    """Whether the file scales its stored values (``scl_slope``, ``scl_inter``, which
    nibabel moves from the header to the data on loading): CT's Hounsfield units stored as
    unsigned integers with an intercept."""
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    return (slope, inter) != (1.0, 0.0)


class _Data:
    """A NIfTI image's voxels as their value type (scaled: float32), sliced in the file's
    axes; a file that fails mid-read is the error naming it."""

    def __init__(self, path: str, image: Any, dtype: np.dtype) -> None:
        self.path, self.proxy, self.dtype = path, image.dataobj, dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            data = np.asarray(self.proxy[index])
        except _BROKEN as e:
            raise InputImageError(
                f"{self.path}: cannot read its voxels ({type(e).__name__}: {e}); the file is "
                f"truncated or corrupt: copy or export it again"
            ) from e
        return data.astype(self.dtype, copy=False)


class NiftiSource(ArraySource):
    """A NIfTI image: a volume (x, y, z on disk), an image, a time series or a volume of
    several components (channels); its voxel size (``pixdim``) in the header's units, and
    its origin where its affine is axis-aligned without flips (else the voxels keep the
    file's order and no origin)."""

    kind = "nifti"

    def _inspect(self) -> ImageInfo:
        if self.level > 0:
            raise self._no_level(1)
        image = _load(self.path)
        header, shape = image.header, tuple(int(n) for n in image.shape)
        if len(shape) not in _AXES:
            raise InputImageError(
                f"{self.path}: a NIfTI image of {len(shape)} dimensions; raysegment reads 2 to 5 "
                f"(x, y, z, time, components)"
            )
        stored = np.dtype(header.get_data_dtype())
        if stored.fields is not None:
            raise InputImageError(
                f"{self.path}: NIfTI voxels of a compound type ({stored}, e.g. RGB); convert "
                f"them to a channel axis (the fifth dimension) or to OME-Zarr"
            )
        dtype = np.dtype(np.float32) if _scaled(image) else stored
        if self.axes is None:
            self.axes = _AXES[len(shape)]
        _, shape5 = _axes_to_5d(self.axes, shape, self.path)
        space, time = header.get_xyzt_units()
        zooms = header.get_zooms()
        scale, units = {}, {}
        for axis, size in zip(self.axes, zooms, strict=False):
            named = time if axis == "t" else space  # nibabel's "mm", "sec", ..., "unknown"
            unit = None if named == "unknown" else _ngff_unit(named)
            if axis in "tzyx" and size > 0:
                scale[axis] = float(size)
                if unit is not None:
                    units[axis] = unit
        origin = _origin(image, scale)
        return ImageInfo(shape5, dtype, scale, units, origin=origin)  # type: ignore[arg-type]

    def _open(self) -> Any:
        return _Data(self.path, _load(self.path), self.info.dtype)


def _origin(image: Any, scale: dict[str, float]) -> dict[str, float]:
    """The first voxel's position (z, y, x) from the image's affine where the affine only
    scales and moves (its voxel axes along x, y, z, none flipped); else none."""
    affine = np.asarray(image.affine, np.float64)
    linear = affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or (np.diag(linear) <= 0).any():
        return {}
    return {a: float(affine[i, 3]) for i, a in enumerate("xyz") if a in scale}


SOURCES.register("nifti")(NiftiSource)
