"""NIfTI files (``.nii``, ``.nii.gz``): CT and MRI volumes as medical image segmentation
keeps them (dcm2niix's output, nnU-Net's and MONAI's datasets), through nibabel (``pip
install 'raysegment[nifti]'``).

A ``.nii`` is memory-mapped: a region read touches only its own bytes. gzip cannot seek:
its bytes are decompressed from the file's start. So a process keeps a ``.nii.gz`` open
(``_Stream``), with the decompressor's state copied every few MiB on the way through
(``_Gunzip``): a read behind goes on from the checkpoint before it, not from the start (a
training patch anywhere in a volume). And it is read a slab at a time: the whole planes
(x, y) of a region's z range, kept by the process, which serves every region of the same
z range from it (a run's blocks of a z range are read one after another).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import zlib
from collections import OrderedDict
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
            raise self._broken(e) from e
        return data.astype(self.dtype, copy=False)

    def _broken(self, e: Exception) -> InputImageError:
        return InputImageError(
            f"{self.path}: cannot read its voxels ({type(e).__name__}: {e}); the file is "
            f"truncated or corrupt: copy or export it again"
        )


SLAB_BYTES = 256 * 2**20
"""The most decompressed bytes of a ``.nii.gz`` a process keeps: one slab (a CT's 160
planes of 512^2 int16: 80 MiB). A region whose slab is larger is decompressed in pieces of
at most this size (planes over it: rows), its own voxels copied out of each."""
_STREAMS_KEPT = 16
"""``.nii.gz`` files a process keeps open (with their checkpoints: ~0.5% of their
bytes), one slab among them all."""
_CHECKPOINT = 8 * 2**20
"""Decompressed bytes between a ``_Gunzip``'s checkpoints (a zlib state copy of ~40 KB
each): a read seeks by decompressing at most this much before it."""
_INPUT = 2**16
"""Compressed bytes fed to the decompressor at a time."""


class _Gunzip:
    """A gzip file's decompressed bytes read at any offset: decompressed forward, with a
    checkpoint (the file's position, the decompressor's state copied) every
    ``_CHECKPOINT`` bytes, so a read behind the last goes on from the checkpoint before
    it, not from the file's start; the last output kept for the read after it. Files of
    several gzip members (concatenated) read as one."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "rb")  # kept open: the process's stream
        self.checkpoints: list[tuple[int, int, Any]] = [(0, 0, zlib.decompressobj(31))]
        """(decompressed offset, file offset, decompressor), one every ``_CHECKPOINT``"""
        self._seek(0)

    def _seek(self, k: int) -> None:
        """Go on from checkpoint ``k``."""
        self.at, offset, state = self.checkpoints[k]
        self.inflate = state.copy()
        self.file.seek(offset)
        self.output = b""  # the decompressed bytes up to self.at

    def _more(self) -> None:
        """Decompress the next input, checkpointing where a ``_CHECKPOINT`` is passed."""
        if self.inflate.eof:  # the next member of a file of several
            data = self.inflate.unused_data or self.file.read(_INPUT)
            self.inflate = zlib.decompressobj(31)
        else:
            data = self.file.read(_INPUT)
        if not data:
            raise EOFError(f"the decompressed file ends at byte {self.at}")
        self.output = self.inflate.decompress(data)
        self.at += len(self.output)
        if self.at >= self.checkpoints[-1][0] + _CHECKPOINT and not self.inflate.eof:
            self.checkpoints.append((self.at, self.file.tell(), self.inflate.copy()))

    def readinto(self, start: int, out: memoryview) -> None:
        """The decompressed bytes from ``start`` into ``out``, whole."""
        if start < self.at - len(self.output) or start >= self.at + _CHECKPOINT:
            k = max(i for i, (at, _, _) in enumerate(self.checkpoints) if at <= start)
            if not self.checkpoints[k][0] <= self.at <= start:  # else decompressing on
                self._seek(k)
        done, end = 0, start + len(out)
        while done < len(out):
            first = self.at - len(self.output)
            if first <= start + done < self.at:
                piece = self.output[start + done - first : end - first]
                out[done : done + len(piece)] = piece
                done += len(piece)
            if done < len(out):
                self._more()


class _Stream:
    """An open ``.nii.gz`` (``_Gunzip``) and the slab last decompressed from it: whole units
    of the slab axis (the planes of a z range), at one position of the axes after it (time
    point, component). Kept by the process across the sources and tasks that read the
    file; one slab among all the process's streams."""

    def __init__(self, path: str) -> None:
        self.file = _Gunzip(path)
        self.lock = threading.Lock()
        self.slab: tuple[int, tuple[int, ...], int, int, np.ndarray] | None = None
        """(the slab axis, positions on the axes after it, first unit, end unit, the units'
        values)"""

    def read(self, start: int, count: int, dtype: np.dtype) -> np.ndarray:
        """``count`` values of ``dtype`` from byte ``start`` of the decompressed file."""
        out = np.empty(count, dtype)
        self.file.readinto(start, out.data.cast("B"))
        return out

    def keep(self, slab: tuple[int, tuple[int, ...], int, int, np.ndarray]) -> None:
        """Keep ``slab``, the process's one: the other streams' are let go."""
        with _streams_lock:
            for other in _streams.values():
                if other is not self:
                    other.slab = None
        self.slab = slab


_streams: OrderedDict[tuple[str, int, int, int], _Stream] = OrderedDict()
_streams_lock = threading.Lock()


def _stream(path: str) -> _Stream:
    """This process's open ``path``, the same while the file is (its inode, size and time)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _streams_lock:
        stream = _streams.pop(key, None) or _Stream(path)
        _streams[key] = stream
        while len(_streams) > _STREAMS_KEPT:  # closed once no thread reads it (not here:
            _streams.popitem(last=False)  # another thread may be reading it now)
        return stream


class _Gzipped(_Data):
    """A ``.nii.gz``'s voxels a slab at a time: the region's units of the slab axis (the
    slowest of x, y, z in the file: z of a volume) whole, decompressed once for all the
    regions of the same units (``_Stream``). Values as nibabel scales them."""

    def __init__(self, path: str, image: Any, dtype: np.dtype, axis: int) -> None:
        super().__init__(path, image, dtype)
        self.axis, self.stored, self.scaled = axis, np.dtype(self.proxy.dtype), _scaled(image)
        self.shape, self.offset = tuple(self.proxy.shape), int(self.proxy.offset)
        self.strides = tuple(math.prod(self.shape[:i]) for i in range(len(self.shape)))
        """Values between neighbours of each axis (Fortran order, as NIfTI stores them)."""

    def __getitem__(self, index: Any) -> np.ndarray:
        ranges = [s.indices(n)[:2] for s, n in zip(index, self.shape, strict=True)]
        try:
            data = self._unscaled(ranges)
        except _BROKEN as e:
            raise self._broken(e) from e
        if self.scaled:  # as nibabel's proxy scales a region it reads
            from nibabel.volumeutils import apply_read_scaling

            slope, inter = np.asanyarray(self.proxy.slope), np.asanyarray(self.proxy.inter)
            if np.can_cast(inter, slope.dtype):
                inter = inter.astype(slope.dtype)
            data = apply_read_scaling(data, slope, inter)
        return data.astype(self.dtype, copy=False)

    def _unscaled(self, ranges: list[tuple[int, int]]) -> np.ndarray:
        d, size = self.axis, self.stored.itemsize
        while d > 0 and self.strides[d] * size > SLAB_BYTES:
            d -= 1  # planes over the bytes kept: a slab of rows of one plane
        out = np.empty([b - a for a, b in ranges], self.stored, order="F")
        inner = tuple(slice(a, b) for a, b in ranges[:d])
        first, end = ranges[d]
        per = max(1, SLAB_BYTES // (self.strides[d] * size))  # units of the axis a piece
        stream = _stream(self.path)
        for outer in itertools.product(*(range(a, b) for a, b in ranges[d + 1 :])):
            at = tuple(o - a for o, (a, _) in zip(outer, ranges[d + 1 :], strict=True))
            with stream.lock:
                for a in range(first, end, per):
                    b = min(a + per, end)
                    units = self._units(stream, d, outer, a, b, keep=(a, b) == (first, end))
                    part: tuple[slice | int, ...] = (
                        *[slice(None)] * d,
                        slice(a - first, b - first),
                        *at,
                    )
                    out[part] = units[(*inner, slice(None))]
        return out

    def _units(
        self, stream: _Stream, d: int, outer: tuple[int, ...], a: int, b: int, keep: bool
    ) -> np.ndarray:
        """Units ``a`` to ``b`` of axis ``d`` at ``outer`` (positions on the axes after
        it), whole (F order): from the stream's slab where it holds them, else
        decompressed (and kept, with ``keep``)."""
        if stream.slab is not None:
            axis, at, first, end, held = stream.slab
            if (axis, at) == (d, outer) and first <= a and b <= end:
                return held[..., a - first : b - first]
        start = a * self.strides[d]
        start += sum(o * s for o, s in zip(outer, self.strides[d + 1 :], strict=True))
        count = (b - a) * self.strides[d]
        flat = stream.read(self.offset + start * self.stored.itemsize, count, self.stored)
        units = flat.reshape((*self.shape[:d], b - a), order="F")
        if keep:
            stream.keep((d, outer, a, b, units))
        return units


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
        image = _load(self.path)
        if not self.path.lower().endswith(".gz"):
            return _Data(self.path, image, self.info.dtype)
        axes = self._array_axes()
        axis = max(axes.index(a) for a in "zyx" if a in axes)  # z of a volume
        return _Gzipped(self.path, image, self.info.dtype, axis)


def _origin(image: Any, scale: dict[str, float]) -> dict[str, float]:
    """The first voxel's position (z, y, x) from the image's affine where the affine only
    scales and moves (its voxel axes along x, y, z, none flipped); else none."""
    affine = np.asarray(image.affine, np.float64)
    linear = affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or (np.diag(linear) <= 0).any():
        return {}
    return {a: float(affine[i, 3]) for i, a in enumerate("xyz") if a in scale}


SOURCES.register("nifti")(NiftiSource)
