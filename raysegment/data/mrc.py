"""MRC files: cryo-electron tomograms (IMOD's ``.rec``, AreTomo's and Warp's ``.mrc``),
FIB-SEM volumes and cryo-EM maps, memory-mapped through mrcfile (``pip install
'raysegment[mrc]'``): a region read touches only its own bytes of the file.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

import numpy as np

from raysegment.data.sources import (
    SOURCES,
    ArraySource,
    ImageInfo,
    _axes_to_5d,
    open_file,
    reader_module,
)

__all__ = ["MRC_SUFFIXES", "MrcSource"]

MRC_SUFFIXES = (".mrc", ".rec")
"""Names of MRC files (``.rec``: IMOD's reconstructions)."""

IMOD_STAMP = 1146047817
"""``imodStamp`` (header byte 152): the file uses IMOD's ``imodFlags`` (byte 156)."""
_IMOD_SIGNED_BYTES = 1
"""``imodFlags`` bit: mode-0 bytes are signed. IMOD's files without it hold unsigned
bytes (every file before IMOD 4.2.23), read as int8 they would wrap at 128."""


def _mapped(path: str) -> Any:
    """``path`` memory-mapped read-only (the caller closes it)."""
    mrcfile = reader_module(path, "mrcfile", "MRC", "mrc")
    return open_file(path, "MRC file", mrcfile.mmap, (ValueError, OSError))


def _unsigned_bytes(header: Any) -> bool:
    """Whether mode-0 data are unsigned bytes: IMOD's files without its signed flag."""
    if int(header.mode) != 0:
        return False
    order = "<" if header.mode.dtype.byteorder in "<=|" else ">"
    stamp, flags = np.frombuffer(header.extra2.tobytes()[40:48], dtype=f"{order}i4")
    return int(stamp) == IMOD_STAMP and not int(flags) & _IMOD_SIGNED_BYTES


class _Mapped:
    """The open file and its data (as their pixel type): the map lives while it is read."""

    def __init__(self, mrc: Any) -> None:
        self.mrc = mrc
        data = mrc.data
        self.data = data.view(np.uint8) if _unsigned_bytes(mrc.header) else data

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.array(self.data[index])  # a copy: the block outlives the map

    def close(self) -> None:
        self.mrc.close()


class MrcSource(ArraySource):
    """An MRC file's data: a volume (z, y, x), an image, or a stack of either (t); its axes
    as the header's ``mapc``/``mapr``/``maps`` lay them out (x, y, z by default: stored
    z, y, x), the voxel size from its cell (angstroms), IMOD's unsigned bytes as such."""

    kind = "mrc"

    def _inspect(self) -> ImageInfo:
        if self.level > 0:
            raise self._no_level(1)
        with closing(_mapped(self.path)) as mrc:
            mapped = _Mapped(mrc)
            data, header = mapped.data, mrc.header
            if self.axes is None:
                self.axes = _axes(header, data.ndim)
            _, shape = _axes_to_5d(self.axes, tuple(data.shape), self.path)
            sizes = mrc.voxel_size
            scale = {a: float(sizes[a]) for a in "zyx" if a in self.axes and sizes[a] > 0}
            units = dict.fromkeys(scale, "angstrom")
            return ImageInfo(shape, np.dtype(data.dtype), scale, units)  # type: ignore[arg-type]

    def _open(self) -> Any:
        return _Mapped(_mapped(self.path))


def _axes(header: Any, ndim: int) -> str:
    """The data array's axes: sections, rows, columns as ``maps``, ``mapr``, ``mapc`` name
    them (1: x, 2: y, 3: z; a crystallographic map may order them otherwise), a stack's
    index first."""
    order = [int(header.maps), int(header.mapr), int(header.mapc)]
    letters = "".join("xyz"[m - 1] for m in order) if sorted(order) == [1, 2, 3] else "zyx"
    if ndim == 2:  # rows, columns
        return letters[1:] if set(letters[1:]) == {"x", "y"} else "yx"
    return letters if ndim == 3 else "t" + letters


SOURCES.register("mrc")(MrcSource)
