"""Image sources: lazy, region-wise readers with a common 5D (t, c, z, y, x) view.

Readers never load a whole image: ``read`` fetches one region. A source is cheap to
pickle (only its path travels); each process opens the file once and keeps the handle.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import importlib
import itertools
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from raysegment import storage
from raysegment.errors import InputImageError
from raysegment.registry import Registry

__all__ = [
    "AXES",
    "SOURCES",
    "CziSource",
    "ImageInfo",
    "ImageSource",
    "MemorySource",
    "Region",
    "Unstored",
    "image_stem",
    "is_zarr",
    "TensorstoreSource",
    "TiffSequenceSource",
    "WrappedSource",
    "kvstore",
    "tensorstore_format",
    "natural_key",
    "nearest_level",
    "open_source",
    "open_sequence",
    "open_sources",
]

T = TypeVar("T")

AXES = "tczyx"
"""The canonical axis order every source presents."""

Region = tuple[tuple[int, int], ...]
"""(start, stop) per spatial axis (z, y, x) of an image."""

Unstored = Callable[[int, tuple[int, ...], Region], bool]
"""``ImageSource.unstored``'s test: whether (t, channels, region) lies in no stored chunk."""

SLIDE_SUFFIXES = (".svs", ".ndpi", ".qptiff")
"""Whole-slide formats that are TIFFs inside (Aperio, Hamamatsu, Akoya/PerkinElmer), read
through tifffile: their first series, the scan at full resolution (thumbnail, label and
macro images are not segmented)."""

OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide")
"""Whole-slide formats read through OpenSlide (``slides.OpenSlideSource``): 3DHISTECH
MIRAX, Hamamatsu VMS/VMU, Leica SCN, Ventana BIF, Sakura SVSlide."""

IMAGE_SUFFIXES = (
    ".ome.tiff",
    ".ome.tif",
    ".ome.zarr",
    ".tiff",
    ".tif",
    ".zarr",
    ".czi",
    ".n5",
    *SLIDE_SUFFIXES,
    *OPENSLIDE_SUFFIXES,
    ".h5",
    ".hdf5",
    ".hdf",
    ".ims",
    ".mrc",
    ".rec",
    ".nii.gz",
    ".nii",
    ".dcm",
)

_UNITS = {
    "µm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "Å": "angstrom",
    "pm": "picometer",
    "s": "second",
    "sec": "second",
    "ms": "millisecond",
    "msec": "millisecond",
    "usec": "microsecond",
    "min": "minute",
    "h": "hour",
}


def _ngff_unit(unit: Any) -> str | None:
    if unit is None:
        return None
    value = getattr(unit, "value", unit)
    return _UNITS.get(str(value), str(value))


def image_stem(path: str) -> str:
    """File name without its image suffixes: ``a/slide.ome.tif`` -> ``slide``; an HDF5
    file's for a dataset in it (``a/sample_A.h5/volumes/raw`` -> ``sample_A``)."""
    from raysegment.data.hdf5 import hdf5_parts  # it builds on this module

    parts = hdf5_parts(path)
    if parts is not None:
        path = parts[0]
    name = storage.basename(path) if storage.is_url(path) else Path(path.rstrip("/")).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_zarr(path: str) -> bool:
    """Whether ``path`` (local or URL) is a zarr array or group, v2 or v3."""
    return any(storage.exists(storage.join(path, f)) for f in ("zarr.json", ".zarray", ".zgroup"))


@dataclass(frozen=True)
class ImageInfo:
    """What is known about an image before reading any pixel."""

    shape: tuple[int, int, int, int, int]
    """Size along (t, c, z, y, x); absent axes have size 1."""
    dtype: np.dtype
    scale: dict[str, float] = field(default_factory=dict)
    """Physical size of one pixel per axis (t, z, y, x) where the file records it."""
    units: dict[str, str] = field(default_factory=dict)
    """NGFF unit name per axis where the file records it (e.g. ``micrometer``)."""
    channel_names: tuple[str, ...] | None = None
    origin: dict[str, float] = field(default_factory=dict)
    """Physical position of the first pixel per axis (t, z, y, x), in the units of
    ``scale``, where the file places the image away from 0: an OME-Zarr's
    ``translation``, a precomputed volume's ``voxel_offset`` (a crop of a larger volume,
    a tile of a mosaic). Outputs keep it, so they overlay their input in viewers."""


class ImageSource:
    """Base class: subclasses implement ``_open`` and ``_read``.

    A file holding several images (an OME-TIFF of several wells or positions) is read as
    one source per image: ``series`` is its index in the file, ``name`` the stem of its
    output (``plate_s1``). ``level``: the resolution level read (0: full resolution; 1:
    the pyramid's next, of a pyramidal TIFF or an OME-Zarr), its shape and pixel size the
    source's. ``where`` names it in messages.
    """

    kind = "image"
    stored_levels = True
    """Whether reduced levels are the file's own (a pyramid's), read as stored."""

    def __init__(
        self,
        path: str,
        axes: str | None = None,
        series: int | None = None,
        name: str | None = None,
        level: int = 0,
    ) -> None:
        self.path = path
        self.axes = axes
        self.series = series
        self.level = level
        self.levels = 1
        """Resolution levels the image has (a pyramid's), known once inspected."""
        self.name = name or image_stem(path)
        self._lock = threading.Lock()
        self._handle: Any = None
        self.info = self._inspect()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        """The image in messages: its path, its series in a file of several, its level."""
        parts = [f"series {self.series}"] * (self.series is not None)
        parts += [f"level {self.level}"] * (self.level > 0)
        return f"{self.path} ({', '.join(parts)})" if parts else self.path

    @property
    def original(self) -> ImageSource:
        """The image as its file holds it: itself (a resampled view's is the image it
        reads, ``resampled.ResampledSource``)."""
        return self

    def at_level(self, level: int) -> ImageSource:
        """The same image read at resolution ``level``."""
        return type(self)(self.path, self.axes, self.series, self.name, level=level)

    def level_scale(self) -> tuple[float, float]:
        """The (y, x) size of this level's pixel in full-resolution pixels: (1, 1) at level
        0; coordinates of the whole slide (QuPath's) are these times the level's."""
        if self.level == 0:
            return 1.0, 1.0
        full = self.at_level(0).info.shape
        return full[3] / self.info.shape[3], full[4] / self.info.shape[4]

    def _no_level(self, levels: int) -> InputImageError:
        """The error for a ``level`` beyond the image's ``levels``."""
        return InputImageError(
            f"{self.where}: the image has {levels} resolution level(s); give input_level= "
            f"from 0 (full resolution) to {levels - 1}"
        )

    @property
    def handle(self) -> Any:
        with self._lock:
            if self._handle is None:
                self._handle = self._open()
            return self._handle

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._close(handle)

    @staticmethod
    def _close(handle: Any) -> None:
        """Release one handle ``_open`` returned."""
        if hasattr(handle, "close"):
            handle.close()

    def read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        """Read timepoint ``t``, ``channels`` and the (z, y, x) ``region`` -> (C, Z, Y, X)."""
        try:
            out = self._read(t, channels, region)
        except InputImageError:
            raise  # a part's own message (a file of a sequence), already naming it
        except (OSError, ValueError, RuntimeError) as e:
            why = "the file may be truncated or corrupt"
            if storage.is_url(self.path):
                why = (
                    "check the network and the credentials, then run the same command "
                    "again (finished blocks are kept), or the file may be corrupt"
                )
            raise InputImageError(
                f"{self.where}: cannot read region {region} ({type(e).__name__}: {e}); {why}"
            ) from e
        want = (len(channels), *(b - a for a, b in region))
        if out.shape != want:
            raise RuntimeError(f"{self.where}: read returned {out.shape}, expected {want}")
        return out

    def unstored(self) -> Unstored | None:
        """A test of whether ``(t, channels, region)`` lies wholly in chunks the store holds
        none of, so that it reads as one constant (a sparse volume's never-written
        chunks), from one listing of the stored chunks; None where the source cannot tell
        that without reading."""
        return None

    def _inspect(self) -> ImageInfo:
        raise NotImplementedError

    def _open(self) -> Any:
        raise NotImplementedError

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        raise NotImplementedError


class WrappedSource(ImageSource):
    """An image of other images' pixels (``parts``: one image resampled or filled, a
    case's files as its channels), named and placed as the first part: each part opens
    and closes its own files; its levels are the parts' read so (none stored)."""

    stored_levels = False

    def __init__(self, parts: Sequence[ImageSource], name: str | None = None) -> None:
        self.parts = tuple(parts)
        first = self.parts[0]
        super().__init__(first.path, first.axes, first.series, name or first.name, first.level)

    @property
    def inner(self) -> ImageSource:
        """The image read (a case's first file)."""
        return self.parts[0]

    @property
    def original(self) -> ImageSource:
        return self.inner.original

    def level_scale(self) -> tuple[float, float]:
        return self.inner.level_scale()

    def _open(self) -> Any:
        return None  # each part opens its own

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _axes_to_5d(axes: str, shape: tuple[int, ...], path: str) -> tuple[str, tuple[int, ...]]:
    """Check that ``axes`` names each of the array's axes once, from t, c, z, y, x."""
    axes = axes.lower()
    if len(axes) != len(shape) or len(set(axes)) != len(axes) or set(axes) - set(AXES):
        raise InputImageError(
            f"{path}: axes {axes!r} do not fit an array of shape {shape}; "
            f"set axes= to one letter per dimension from 'tczyx' (e.g. axes=zyx)"
        )
    if not {"y", "x"} <= set(axes):
        raise InputImageError(f"{path}: axes {axes!r} lack y and x; set axes= (e.g. axes=cyx)")
    full = tuple(shape[axes.index(a)] if a in axes else 1 for a in AXES)
    return axes, full


def _default_axes(ndim: int, path: str) -> str:
    guess = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
    if ndim not in guess:
        raise InputImageError(
            f"{path}: a {ndim}D array is not an image this package can segment; "
            f"2D to 5D arrays with axes from 'tczyx' are supported"
        )
    return guess[ndim]


class ArraySource(ImageSource):
    """A source backed by an array-like with numpy slicing and known axes."""

    def _array_axes(self) -> str:
        """The array's axes (``axes``, which ``_inspect`` sets), letters of ``AXES``."""
        assert self.axes is not None
        return self.axes

    def _listing_tells(self, fill: Any) -> bool:
        """Whether a listing of the store tells its unwritten chunks (``unstored``): on a
        local disk or in an object store (a web server's listing is no full one), with a
        finite fill value (NaN fill reads as the NaN error)."""
        if storage.is_url(self.path) and self.path.split("://", 1)[0] not in LISTED_SCHEMES:
            return False
        return fill is not None and bool(np.all(np.isfinite(np.asarray(fill, np.float64))))

    def _outside(
        self,
        shape: Sequence[int],
        grid: Sequence[int],
        cells: Iterable[tuple[slice, ...] | None],
    ) -> Unstored | None:
        """``unstored``'s test of an array of ``shape`` (in the source's axes) chunked by
        ``grid``, whose store holds the chunks at ``cells`` (on the chunk grid); None
        where a cell is None (a key that is no chunk: a layout not understood)."""
        stored = np.zeros([-(-n // g) for n, g in zip(shape, grid, strict=True)], bool)
        for cell in cells:
            if cell is None:
                return None
            stored[cell] = True  # a stale chunk past the array's edge marks nothing
        return self._occupancy(stored, grid)

    def _occupancy(self, stored: np.ndarray, grid: Sequence[int]) -> Unstored:
        """``unstored``'s test from ``stored``: per chunk of ``grid`` (in the source's
        axes), whether the store may hold it."""
        axes = self._array_axes()

        def test(t: int, channels: tuple[int, ...], region: Region) -> bool:
            bounds = {"t": (t, t + 1), "c": (min(channels), max(channels) + 1)}
            bounds |= dict(zip("zyx", region, strict=True))
            spans = [bounds[a] for a in axes]
            index = tuple(slice(a // g, -(-b // g)) for (a, b), g in zip(spans, grid, strict=True))
            return not stored[index].any()

        return test

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        arr = self.handle
        axes = self._array_axes()
        c0, c1 = min(channels), max(channels) + 1
        bounds = {"t": (t, t + 1), "c": (c0, c1)} | dict(zip("zyx", region, strict=False))
        index = tuple(slice(*bounds[a]) for a in axes)
        data = np.asarray(arr[index])
        # Bring to (t, c, z, y, x) order, absent axes added with size 1.
        present = [a for a in AXES if a in axes]
        data = np.transpose(data, [axes.index(a) for a in present])
        data = data.reshape([data.shape[present.index(a)] if a in present else 1 for a in AXES])
        if channels == tuple(range(c0, c1)):
            return data[0]  # every channel read: no copy
        return data[0, [c - c0 for c in channels]]


class _TiffPlanes:
    """Pixels of a TIFF series whose pages are 2D planes, of one sample (OME-TIFF's layout,
    and most stacks) or of interleaved samples (RGB slides: SVS, NDPI, brightfield
    OME-TIFFs), read segment by segment: a region reads and decodes only the tiles or
    strips it touches, each once, straight into its output. 4608^2 uint16 regions of a
    zlib-tiled slide (``python benchmarks/region_read.py SLIDE``): 187-221 ms CPU and wall
    each; bfio's tensorstore reader, the reader before, 410-452 ms CPU (240-305 ms wall
    on its own threads)."""

    def __init__(self, series: Any, axes: str, url: str | None = None) -> None:
        self.pages = series.pages
        self.dtype = series.keyframe.dtype
        self.samples = series.keyframe.samplesperpixel
        """Interleaved samples of a pixel (the channels, where more than one)."""
        spatial = 2 if self.samples == 1 else 3  # "yx", or "yxc" of interleaved samples
        self.lead = axes[:-spatial]  # the axes that select a page, e.g. "tcz"
        self.lead_shape = tuple(series.shape[:-spatial])
        # Threads of one process share the file handles, and a read is a seek then a read.
        self._lock = threading.RLock()
        self.url = url
        """The file's URL where it lies in an object store or on a web server: a plane's
        segments are fetched there in concurrent ranged requests."""

    @staticmethod
    def fits(series: Any, axes: str) -> bool:
        key = series.keyframe
        if key.samplesperpixel == 1:
            spatial = 2
            layout = axes.endswith("yx") and series.axes.endswith("YX")
        else:  # interleaved samples, the channels
            spatial = 3
            layout = axes.endswith("yxc") and series.axes.endswith("YXS") and key.planarconfig == 1
        return bool(
            layout
            and key.imagedepth == 1
            and tuple(key.shaped[2:4]) == tuple(series.shape[-spatial:][:2])
            and len(series.pages) == math.prod(series.shape[:-spatial])
        )

    def read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = region
        out = np.empty((len(channels), z1 - z0, y1 - y0, x1 - x0), self.dtype)
        # The pages' channel and where their pixels go, and the samples read of each.
        if self.samples > 1:  # one page holds every channel as its samples
            per_page, samples = [(0, slice(None))], list(channels)
        else:  # a page per channel
            per_page, samples = [(c, slice(ci, ci + 1)) for ci, c in enumerate(channels)], [0]
        planes = []  # (page, its segments, where its pixels go)
        for c, into in per_page:
            for zi, z in enumerate(range(z0, z1)):
                at = {"t": t, "c": c, "z": z}
                page = self.pages[
                    int(np.ravel_multi_index([at[a] for a in self.lead], self.lead_shape))
                    if self.lead
                    else 0
                ]
                segments = [] if page is None else self._wanted(page, y0, y1, x0, x1)
                planes.append((page, segments, out[into, zi]))
        fetched = None
        if self.url is not None:  # every plane's segments in one batch of requests
            ranges = sorted({(a, n) for _, wanted, _ in planes for _, a, n in wanted if n})
            got = storage.read_ranges(self.url, [a for a, _ in ranges], [a + n for a, n in ranges])
            fetched = dict(zip(ranges, got, strict=True))
        for page, wanted, plane in planes:
            if page is None:  # a plane in a file of a multi-file set that is missing
                plane[...] = 0
                continue
            self._decode(page, self._segments(page, wanted, fetched), region[1:], plane, samples)
        return out

    def _wanted(self, page: Any, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int, int]]:
        """(segment index, file offset, byte count) of what rows y0:y1, x0:x1 of ``page``
        need: the tiles or strips they touch (a count of 0: one the writer left out), or
        of uncompressed strips only the rows' bytes (``_rows``)."""
        key = page.keyframe
        offsets, counts = page.dataoffsets, page.databytecounts
        th, tw = _segment_size(key)
        if not key.is_tiled and _raw_rows(key):
            return self._rows(page, th, y0, y1)
        across = -(-key.imagewidth // tw)
        return [
            (i, offsets[i], counts[i])
            for ty in range(y0 // th, -(-y1 // th))
            for tx in range(x0 // tw, -(-x1 // tw))
            for i in [ty * across + tx]
        ]

    def _rows(self, page: Any, th: int, y0: int, y1: int) -> list[tuple[int, int, int]]:
        """Rows y0:y1 of uncompressed strips, read alone: ImageJ/Fiji and most writers of
        uncompressed TIFFs store a plane as one strip, which a region would otherwise read
        whole (a 512^2 region of a 2048^2 plane: 16 times the bytes). A strip's segment
        is the bytes of its rows in y0:y1 (none where the writer left the strip out)."""
        key = page.keyframe
        row = key.imagewidth * key.samplesperpixel * np.dtype(key.dtype).itemsize
        offsets, counts = page.dataoffsets, page.databytecounts
        wanted = []
        for s in range(y0 // th, -(-y1 // th)):
            ya, yb = max(y0, s * th), min(y1, s * th + th)
            present = bool(counts[s])
            wanted.append((s, offsets[s] + (ya - s * th) * row, (yb - ya) * row * present))
        return wanted

    def _segments(
        self,
        page: Any,
        wanted: list[tuple[int, int, int]],
        fetched: dict[tuple[int, int], bytes] | None,
    ) -> Iterator[tuple[bytes | None, tuple[int, int, int]]]:
        """The bytes of each of ``wanted`` (None for one of no bytes), from ``fetched`` (a
        file at a URL) or read from the file."""
        if fetched is not None:
            for i, a, n in wanted:
                yield (fetched[a, n] if n else None), (i, a, n)
            return
        read = [k for k, (_, _, n) in enumerate(wanted) if n]
        for k, (_, _, n) in enumerate(wanted):
            if not n:
                yield None, wanted[k]
        for data, k in page.parent.filehandle.read_segments(
            [wanted[k][1] for k in read], [wanted[k][2] for k in read], read, lock=self._lock
        ):
            yield data, wanted[k]

    def _decode(
        self,
        page: Any,
        segments: Iterator[tuple[bytes | None, tuple[int, int, int]]],
        box: tuple[tuple[int, int], ...],
        out: np.ndarray,
        samples: list[int],
    ) -> None:
        """``segments`` of ``page`` (their bytes, None where the writer left one out)
        decoded into their parts of ``out`` (channels, the rows and columns of ``box``):
        each segment's ``samples``, one per channel."""
        (y0, y1), (x0, x1) = box
        key = page.keyframe
        th, tw = _segment_size(key)
        if not key.is_tiled and _raw_rows(key):  # rows of uncompressed strips (``_rows``)
            dtype = np.dtype(key.dtype).newbyteorder(page.parent.byteorder)
            for data, (i, _, _) in segments:
                ya, yb = max(y0, i * th), min(y1, i * th + th)
                if data is None:  # a strip the writer left out: fill value
                    out[:, ya - y0 : yb - y0] = 0
                    continue
                rows = np.frombuffer(data, dtype).reshape(yb - ya, key.imagewidth, -1)
                out[:, ya - y0 : yb - y0] = np.moveaxis(rows[:, x0:x1, samples], -1, 0)
            return
        args: dict[str, Any] = {"_fullsize": key.is_tiled}
        if key.compression in {6, 7, 34892, 33007}:  # JPEG
            args |= {"jpegtables": page.jpegtables, "jpegheader": key.jpegheader}
        for data, (i, _, _) in segments:
            tile, (_, _, ty, tx, _), _ = key.decode(data, i, **args)
            ya, yb, xa, xb = max(y0, ty), min(y1, ty + th), max(x0, tx), min(x1, tx + tw)
            target = out[:, ya - y0 : yb - y0, xa - x0 : xb - x0]
            if tile is None:  # a segment the writer left out: fill value
                target[...] = 0
            elif len(samples) == 1:
                target[0] = tile[0, ya - ty : yb - ty, xa - tx : xb - tx, samples[0]]
            else:
                part = tile[0, ya - ty : yb - ty, xa - tx : xb - tx]
                target[...] = np.moveaxis(part[..., samples], -1, 0)


def _segment_size(key: Any) -> tuple[int, int]:
    """The rows and columns of a page's tiles, or of its strips (whole rows)."""
    if key.is_tiled:
        return key.tilelength, key.tilewidth
    return min(key.rowsperstrip, key.imagelength), key.imagewidth


def _raw_rows(key: Any) -> bool:
    """Whether a striped page's rows lie in its strips as plain samples, each row at a
    fixed place (no compression, predictor or bit packing)."""
    return bool(
        key.compression == 1
        and key.predictor == 1
        and key.fillorder == 1
        and key.bitspersample == 8 * np.dtype(key.dtype).itemsize
    )


class TiffSource(ArraySource):
    """TIFF, striped or tiled, single page or multi-page stack (tifffile)."""

    kind = "tiff"
    _TIFF_AXES = {"S": "c", "C": "c", "Z": "z", "Y": "y", "X": "x", "T": "t"}

    def __init__(
        self,
        *args: Any,
        tif: Any = None,
        block: int = storage.READ_BLOCK,
        keep: bool = False,
        **kwargs: Any,
    ) -> None:
        # ``tif``: the file ``open_sources`` opened, inspected by each of its series in
        # turn (opening a file of N images parses all N series, once per series otherwise).
        # ``keep``: the file parsed to inspect it is the one read next (a sequence's
        # file, inspected where it is read: parsed once, not twice).
        self._opened = tif
        self._keep = keep
        self.block = block
        """A file at a URL: the bytes its directories are fetched (and kept) in."""
        super().__init__(*args, **kwargs)
        if not keep:
            self._opened = None

    def _series(self) -> Any:
        """The file (the one ``open_sources`` shares while inspecting, else opened here)
        and this source's series of it."""
        remote = storage.is_url(self.path)
        if self._opened is None and not remote and not Path(self.path).is_file():
            # A node lacks it.
            raise InputImageError(f"{self.path}: no such file (removed, or not on this node)")
        try:
            tif = _open_tiff(self.path, self.block) if self._opened is None else self._opened
            return tif, tif.series[self.series or 0]
        except Exception as e:
            raise _unreadable_tiff(self.path, e) from e

    def _level(self, series: Any) -> Any:
        """``series`` at this source's resolution level."""
        self.levels = len(series.levels)
        if self.level >= len(series.levels):
            raise self._no_level(len(series.levels))
        return series.levels[self.level]

    def _inspect(self) -> ImageInfo:
        tif, full = self._series()
        try:
            series = self._level(full)
            if self.axes:
                axes = self.axes.lower()
            else:
                axes = ""
                for letter in series.axes:
                    mapped = self._TIFF_AXES.get(letter)
                    if mapped is None and letter in "QIP" and "z" not in axes:
                        mapped = "z"  # generic page axis of a multi-page stack
                    if mapped is None or mapped in axes:
                        raise InputImageError(
                            f"{self.where}: TIFF axes {series.axes!r} cannot be mapped to "
                            f"tczyx; set axes= with one letter per dimension"
                        )
                    axes += mapped
            self.axes = axes
            _, shape = _axes_to_5d(axes, tuple(series.shape), self.where)
            info = self._info(tif, shape, np.dtype(series.dtype))
            # The calibration is the full resolution's: a level's pixels are larger by
            # the ratio of the sizes.
            _, whole = _axes_to_5d(axes, tuple(full.shape), self.where)
            ratio = dict(zip("zyx", np.divide(whole[2:], shape[2:]), strict=True))
            scale = {a: s * float(ratio.get(a, 1.0)) for a, s in info.scale.items()}
            return replace(info, scale=scale)
        finally:
            if self._opened is None and self._keep:  # opened here, for the reads next
                self._opened = tif
            elif self._opened is None:  # opened here
                tif.close()

    def _info(self, tif: Any, shape: tuple[int, ...], dtype: np.dtype) -> ImageInfo:
        """What a plain TIFF records: shape and type, and its calibration where it has
        one (``_tiff_calibration``)."""
        scale, units = _tiff_calibration(tif, tif.series[self.series or 0].keyframe)
        return ImageInfo(shape, dtype, scale, units)  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # An open file does not travel; the receiver reopens it.
        state["_tif"] = state["_opened"] = None
        return state

    def _open(self) -> Any:
        """Planes read segment by segment where the layout allows (``_TiffPlanes``), else
        tifffile's zarr view of the series (RGB samples, 3D tiles, ...): of its full
        resolution level, for a pyramidal file (a slide scanner's, QuPath's or
        bfconvert's export) is otherwise seen as a group of every level."""
        import zarr

        tif, series = self._series()
        self._tif, self._opened = tif, None  # (a kept file is this handle's now)
        level = self._level(series)
        if _TiffPlanes.fits(level, self._array_axes()):
            url = self.path if storage.is_url(self.path) else None
            return _TiffPlanes(level, self._array_axes(), url)
        return zarr.open(series.aszarr(level=self.level), mode="r")

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        handle = self.handle
        if isinstance(handle, _TiffPlanes):
            return handle.read(t, channels, region)
        return super()._read(t, channels, region)

    def close(self) -> None:
        super().close()
        if getattr(self, "_tif", None) is not None:
            self._tif.close()
            self._tif = None

    @contextlib.contextmanager
    def opened(self) -> Iterator[TiffSource]:
        """This source with its file open for the reads inside, closed after them; what
        was parsed of the file (its directories, where each strip lies) is kept, and the
        next ``opened`` opens the file again without parsing it."""
        _ = self.handle  # parsed (and opened) once
        handle = self._tif.filehandle
        handle.open()
        try:
            yield self
        finally:
            handle.close()


_LENGTHS = {"angstrom", "nanometer", "micrometer", "millimeter", "centimeter", "meter"}


def _tiff_calibration(tif: Any, page: Any) -> tuple[dict[str, float], dict[str, str]]:
    """Physical pixel sizes of a plain TIFF, as the writers of microscopy TIFFs record them:
    ImageJ/Fiji (the resolution tags in its ``unit``, z ``spacing``, ``finterval`` in
    seconds), Aperio SVS (``MPP`` in the description), and resolution tags in centimetres
    (NDPI, QPTIFF, microscope software). Tags in inches are left out: desktop software
    writes 72 or 300 dots per inch, which say nothing of a pixel's size."""
    import tifffile

    def size(name: str) -> float | None:
        tag = page.tags.get(name)
        num, den = tag.value if tag is not None else (0, 0)
        return den / num if num and den else None

    x, y = size("XResolution"), size("YResolution")
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    imagej = tif.imagej_metadata or {}
    if imagej:
        unit = str(imagej.get("unit", "")).replace("\\u00B5", "µ").replace("\\u00b5", "µ")
        length = _ngff_unit(unit)
        if length in _LENGTHS and x and y:
            scale |= {"x": x, "y": y}
            units |= {"x": length, "y": length}
            if imagej.get("spacing"):
                scale["z"], units["z"] = float(imagej["spacing"]), length
        if imagej.get("finterval"):
            scale["t"], units["t"] = float(imagej["finterval"]), "second"
        return scale, units
    if page.is_svs:
        try:
            mpp = tifffile.tifffile.svs_description_metadata(page.description).get("MPP")
        except ValueError:
            mpp = None
        if isinstance(mpp, (int, float)) and mpp > 0:
            return {"x": float(mpp), "y": float(mpp)}, {"x": "micrometer", "y": "micrometer"}
    unit = page.tags.get("ResolutionUnit")
    if unit is not None and int(unit.value) == 3 and x and y:  # centimetre
        return {"x": x * 1e4, "y": y * 1e4}, {"x": "micrometer", "y": "micrometer"}
    return scale, units


class OmeTiffSource(TiffSource):
    """OME-TIFF, tiled or striped, any dimension order: pixels through tifffile (as a
    TIFF), physical sizes and channel names from its OME-XML. (bfio, the reader before,
    took 1.7-1.9 s to import in every process that read a pixel, and twice the CPU per
    region.)"""

    kind = "ome-tiff"

    def _info(self, tif: Any, shape: tuple[int, ...], dtype: np.dtype) -> ImageInfo:

        image = _ome_images(tif.ome_metadata or "")
        # tifffile makes a series of each OME Image, in the XML's order.
        image = image[self.series or 0] if (self.series or 0) < len(image) else {}
        pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
        scale, units = {}, {}
        for axis in "xyz":
            size = pixels.get(f"PhysicalSize{axis.upper()}")
            if size is not None:
                scale[axis] = float(size)
                units[axis] = _ngff_unit(pixels.get(f"PhysicalSize{axis.upper()}Unit")) or (
                    "micrometer"  # OME's default unit of physical sizes
                )
        channel = pixels.get("Channel", [])
        channel = channel if isinstance(channel, list) else [channel]
        names = tuple(str(c.get("Name") or "") for c in channel if isinstance(c, dict))
        named = len(names) == shape[1] and all(names)
        return ImageInfo(shape, dtype, scale, units, names if named else None)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=2)
def _ome_images(xml: str) -> list[Any]:
    """The Image elements of an OME-XML document, parsed once for all of a file's series."""
    import tifffile

    try:
        image = tifffile.xml2dict(xml).get("OME", {}).get("Image", [])
    except Exception:  # unparsable XML: the pixels are still readable
        return []
    return image if isinstance(image, list) else [image]


class ZarrSource(ArraySource):
    """A zarr array (v2 or v3), or a resolution level of an OME-Zarr image (its
    ``datasets``; the full resolution by default)."""

    kind = "zarr"

    def _inspect(self) -> ImageInfo:
        import zarr

        try:
            node: Any = zarr.open(self.path, mode="r")
        except Exception as e:
            raise InputImageError(
                f"{self.path}: not a readable zarr store ({type(e).__name__}: {e})"
            ) from e
        scale: dict[str, float] = {}
        units: dict[str, str] = {}
        origin: dict[str, float] = {}
        names = None
        self.array_path = ""
        if isinstance(node, zarr.Group):
            attrs: dict[str, Any] = dict(node.attrs)
            ome = attrs.get("ome", attrs)
            multiscales = ome.get("multiscales")
            if not multiscales:
                raise InputImageError(
                    f"{self.path}: zarr group without OME-Zarr 'multiscales' metadata; "
                    f"give the path of an array or of an OME-Zarr image{_images_in(node)}"
                )
            ms = multiscales[0]
            axes_meta = ms["axes"]
            axis_names = [a["name"] if isinstance(a, dict) else a for a in axes_meta]
            self.levels = len(ms["datasets"])
            if self.level >= self.levels:
                raise self._no_level(self.levels)
            dataset = ms["datasets"][self.level]
            self.array_path = dataset["path"]
            # Pixel i lies at factors * i + offsets: the dataset's transforms, then the
            # multiscale's, each a scale or a translation in turn.
            factors, offsets = np.ones(len(axis_names)), np.zeros(len(axis_names))
            for transforms in (
                dataset.get("coordinateTransformations", []),
                ms.get("coordinateTransformations", []),
            ):
                for tr in transforms:
                    if tr.get("type") == "scale" and "scale" in tr:
                        factors = factors * np.asarray(tr["scale"], dtype=float)
                        offsets = offsets * np.asarray(tr["scale"], dtype=float)
                    elif tr.get("type") == "translation" and "translation" in tr:
                        offsets = offsets + np.asarray(tr["translation"], dtype=float)
            for name, meta, f, o in zip(axis_names, axes_meta, factors, offsets, strict=False):
                if name in "tzyx":
                    scale[name] = float(f)
                    if o:
                        origin[name] = float(o)
                    if isinstance(meta, dict) and meta.get("unit"):
                        units[name] = meta["unit"]
            channels = (ome.get("omero") or {}).get("channels")
            if channels:
                names = tuple(str(c.get("label", i)) for i, c in enumerate(channels))
            if self.axes is None:
                self.axes = "".join(axis_names).lower()
            node = node[self.array_path]
        elif self.level > 0:
            raise self._no_level(1)  # a plain array
        if self.axes is None:
            self.axes = _default_axes(node.ndim, self.path)
        _, shape = _axes_to_5d(self.axes, tuple(node.shape), self.path)
        if names is not None and len(names) != shape[1]:
            names = None
        return ImageInfo(shape, np.dtype(node.dtype), scale, units, names, origin)  # type: ignore[arg-type]

    def _open(self) -> Any:
        import zarr

        node: Any = zarr.open(self.path, mode="r")
        return node[self.array_path] if self.array_path else node

    def unstored(self) -> Unstored | None:
        """Chunks (shards) named by their position, read back through the array's own
        ``encode_chunk_key``."""
        from zarr.core.sync import sync

        arr = self.handle
        if not self._listing_tells(arr.fill_value):
            return None
        prefix = f"{arr.path}/" if arr.path else ""
        try:
            keys = sync(_listed(arr.store, prefix))
        except OSError:  # a bucket that lets its objects be read, not listed
            return None
        grid = arr.shards or arr.chunks
        names = (key[len(prefix) :] for key in keys)
        encode = arr.metadata.encode_chunk_key
        cells = (_chunk_at(n, encode, len(grid)) for n in names if n not in _ZARR_METADATA)
        return self._outside(arr.shape, grid, cells)


def _images_in(group: Any) -> str:
    """What the error naming a zarr group says of the OME-Zarr images it holds (the first
    50 groups looked at): a clause naming a few of them, or "" for none."""
    names = []
    for name, child in itertools.islice(group.groups(), 50):
        attrs: dict[str, Any] = dict(child.attrs)
        if attrs.get("ome", attrs).get("multiscales"):
            names.append(name)
    if not names:
        return ""
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    return (
        f" (it holds the OME-Zarr images {shown}: give one, or the BigDataViewer project "
        f"that lists them, its .xml)"
    )


LISTED_SCHEMES = ("s3", "gs", "gcs")
"""URL schemes whose listings name every stored object (object stores): a zarr there
tells its unwritten chunks without reading them."""


async def _listed(store: Any, prefix: str) -> list[str]:
    return [key async for key in store.list_prefix(prefix)]


_ZARR_METADATA = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def _chunk_at(
    key: str, encode: Callable[[tuple[int, ...]], str], dims: int
) -> tuple[slice, ...] | None:
    """The grid cell of the chunk (shard) stored under ``key`` (``c/1/0/2``, ``1.0.2``,
    ...: read back through the array's own ``encode``), None for any other key."""
    parts = re.split(r"[./]", key)
    parts = parts[1:] if parts[:1] == ["c"] else parts
    if len(parts) != dims or not all(p.isdigit() for p in parts):
        return None
    at = tuple(int(p) for p in parts)
    return tuple(slice(i, i + 1) for i in at) if encode(at) == key else None


N5_UNITS_DEFAULT = "micrometer"
"""The unit of an N5 ``pixelResolution``/``resolution`` that names none (BigStitcher's)."""


def tensorstore_format(path: str) -> str | None:
    """``"precomputed"`` for a Neuroglancer precomputed volume (its ``info`` says so),
    ``"n5"`` for an N5 dataset or group (``attributes.json``), else None. A URL (``s3://``,
    ``gs://``, ``http(s)://``) is asked through tensorstore: never one without it. A name
    of another format (``slide.ome.tif``, ``a.zarr``) is not asked (at a URL, two
    requests an image of a directory of hundreds)."""
    if storage.basename(path).lower().endswith(tuple(set(IMAGE_SUFFIXES) - {".n5"})):
        return None
    info = _key(path, "info")
    if info is not None:
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(info).get("@type") == "neuroglancer_multiscale_volume":
                return "precomputed"
    return "n5" if _key(path, "attributes.json") is not None else None


REMOTE_TIMEOUT_S = 120.0
"""How long a tensorstore request to a URL may take before the read fails naming it (an
endpoint that does not answer otherwise retries without end)."""


def kvstore(location: str) -> dict[str, Any]:
    """tensorstore's key-value store of the directory ``location``: a local path, or an
    ``s3://`` (the endpoint and region of ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` where
    set: MinIO, Ceph, a local S3), ``gs://`` or ``http(s)://`` URL."""
    if not storage.is_url(location):
        return {"driver": "file", "path": location.rstrip("/") + "/"}
    scheme, rest = location.split("://", 1)
    if scheme == "s3":
        bucket, _, path = rest.partition("/")
        spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": path.rstrip("/") + "/"}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if endpoint:
            spec["endpoint"] = endpoint
            region = region or "us-east-1"  # tensorstore asks AWS for it otherwise
        if region:
            spec["aws_region"] = region
        return spec
    if scheme not in ("gs", "http", "https"):
        raise InputImageError(
            f"{location}: N5 and Neuroglancer precomputed volumes are read from local paths "
            f"and s3://, gs://, http(s):// URLs"
        )
    ts = _tensorstore(location)
    return cast(dict[str, Any], ts.KvStore.Spec(location.rstrip("/") + "/").to_json())


def _tensorstore(location: str) -> Any:
    try:
        import tensorstore as ts
    except ImportError as e:
        raise InputImageError(
            f"{location}: reading N5 and Neuroglancer precomputed needs tensorstore: "
            f"pip install 'raysegment[tensorstore]'"
        ) from e
    return ts


def open_tensorstore(spec: dict[str, Any], location: str, what: str) -> Any:
    """The tensorstore ``spec`` opened for reading; a store that does not open, or does not
    answer within ``REMOTE_TIMEOUT_S``, as the error naming ``location`` (a ``what``)."""
    ts = _tensorstore(location)
    try:
        return ts.open(spec, read=True).result(timeout=REMOTE_TIMEOUT_S)
    except TimeoutError as e:
        raise _no_answer(location, REMOTE_TIMEOUT_S) from e
    except Exception as e:
        why = str(e).split(" [tensorstore_spec=")[0]  # without the spec it was given
        raise InputImageError(
            f"{location}: not a readable {what} ({type(e).__name__}: {why})"
        ) from e


def _key(location: str, key: str) -> bytes | None:
    """The bytes of ``key`` under the directory ``location``; None where it is absent (or,
    for a URL, where tensorstore is not installed)."""
    if not storage.is_url(location):
        path = Path(location, key)
        return path.read_bytes() if path.is_file() else None
    try:
        import tensorstore as ts
    except ImportError:
        return None
    try:
        store = ts.KvStore.open(kvstore(location)).result(timeout=REMOTE_TIMEOUT_S)
        found = store.read(key).result(timeout=REMOTE_TIMEOUT_S)
    except InputImageError:
        return None  # a scheme tensorstore does not read
    except TimeoutError as e:
        raise _no_answer(location, REMOTE_TIMEOUT_S) from e
    except Exception as e:
        raise InputImageError(
            f"{location}: cannot read {key} ({type(e).__name__}: {e}); check the URL and the "
            f"credentials (AWS_*, GOOGLE_APPLICATION_CREDENTIALS)"
        ) from e
    return bytes(found.value) if found.state == "value" else None


class TensorstoreSource(ArraySource):
    """Neuroglancer precomputed volumes (connectomics: CloudVolume's, igneous', the
    sharded and unsharded formats; every scale a resolution level) and N5 (BigStitcher,
    n5-viewer, Fiji's N5 export: a dataset, or a group of datasets ``s0``, ``s1``, ... as
    levels), read region by region through tensorstore (``pip install
    'raysegment[tensorstore]'``). A precomputed volume's axes are x, y, z and channel,
    its voxel size in nanometres per scale, its ``voxel_offset`` read as the origin; an
    N5 dataset's axes are its ``axes`` attribute, else x, y, z (N5 lists the fastest
    first), its pixel size from ``pixelResolution`` or ``resolution`` times the level's
    ``downsamplingFactors``."""

    kind = "tensorstore"
    precomputed = False
    """Neuroglancer precomputed (else N5), told once by ``_inspect``."""
    dataset = ""
    """An N5 level's dataset under the path (``s<level>``, or "" for a dataset given
    alone), found once by ``_inspect``: the processes that read it ask nothing again."""

    def _spec(self) -> dict[str, Any]:
        if self.precomputed:
            return {
                "driver": "neuroglancer_precomputed",
                "kvstore": kvstore(self.path),
                "scale_index": self.level,
            }
        return {"driver": "n5", "kvstore": kvstore(storage.join(self.path, self.dataset))}

    def _n5_dataset(self) -> str:
        """The N5 dataset of this level, relative to the path: itself, or ``s<level>``."""
        attrs = _json(self.path, "attributes.json")
        if "dimensions" in attrs:
            self.levels = 1
            if self.level:
                raise self._no_level(1)
            return ""
        self.levels = 0
        while _key(self.path, f"s{self.levels}/attributes.json") is not None:
            self.levels += 1
        if not self.levels and _key(self.path, "setup0/attributes.json") is not None:
            stem = self.path.rstrip("/")
            raise InputImageError(
                f"{self.path}: a BigDataViewer N5 (views setup<s>/timepoint<t>) without its "
                f"XML project beside it (<name>.xml); give the project (input=<its .xml>), "
                f"or one view ({stem}/setup0/timepoint0)"
            )
        if not self.levels:
            raise InputImageError(
                f"{self.path}: an N5 group without datasets s0, s1, ...; give the path of a "
                f"dataset (a directory whose attributes.json has dimensions)"
            )
        if self.level >= self.levels:
            raise self._no_level(self.levels)
        return f"s{self.level}"

    def _open(self) -> Any:
        store = open_tensorstore(self._spec(), self.path, self._format())
        # A precomputed volume's voxel_offset: the origin.
        return _Reads(store.translate_to[0], self.path)

    def _format(self) -> str:
        return "Neuroglancer precomputed volume" if self.precomputed else "N5 dataset"

    def unstored(self) -> Unstored | None:
        """An N5 dataset's chunks (``1/0/2``: its position) and an unsharded precomputed
        scale's (``x0-x1_y0-y1_z0-z1``: its voxels), on disk or in an S3 / GCS bucket; a
        sharded scale's chunks by their shard (``1f.shard``: an absent shard holds none of
        its chunks), where its shards are spatial (the ``identity`` hash; ``murmurhash3``
        scatters every region's chunks over the shards: no answer)."""
        store = self.handle.store
        if not self._listing_tells(0 if store.fill_value is None else store.fill_value):
            return None  # (no fill value: zeros)
        scale = _json(self.path, "info")["scales"][self.level] if self.precomputed else {}
        if scale.get("sharding") and scale["sharding"].get("hash") != "identity":
            return None
        if self.precomputed:
            where, origin = storage.join(self.path, scale["key"]), scale.get("voxel_offset")
        else:
            where, origin = storage.join(self.path, self.dataset), None
        ts = _tensorstore(self.path)
        try:
            keys = ts.KvStore.open(kvstore(where)).result(timeout=REMOTE_TIMEOUT_S)
            listed = keys.list().result(timeout=REMOTE_TIMEOUT_S)
        except (OSError, ValueError, TimeoutError):  # not listable, or no answer in time
            return None
        if scale.get("sharding"):
            return self._unstored_shards(scale, [raw.decode(errors="replace") for raw in listed])
        grid = store.chunk_layout.read_chunk.shape

        def cell(key: str) -> tuple[slice, ...] | None:
            box = _precomputed_box(key, origin) if self.precomputed else _n5_box(key, grid)
            if box is None or len(box) > len(grid):
                return None
            # A precomputed chunk holds every channel: its box leaves that axis whole.
            at = zip(box, grid[: len(box)], strict=True)
            return tuple(slice(a // g, -(-b // g)) for (a, b), g in at)

        names = (raw.decode(errors="replace") for raw in listed)
        cells = (cell(n) for n in names if n != "attributes.json")
        return self._outside(store.shape, grid, cells)

    def _unstored_shards(self, scale: dict[str, Any], names: list[str]) -> Unstored | None:
        """``unstored`` of a sharded precomputed scale whose shard files are ``names``:
        each chunk's shard from its position (Neuroglancer's sharded format: the
        compressed Morton code of its grid position, shifted right ``preshift_bits``, its
        bits past the ``minishard_bits`` the shard), stored where that shard is."""
        shards = set()
        for name in names:
            found = _SHARD_FILE.fullmatch(name)
            if found is None:
                return None  # a key that is no shard: a layout not understood
            shards.add(int(found.group(1), 16))
        sharding = scale["sharding"]
        chunk = [int(c) for c in scale["chunk_sizes"][0]]
        grid = [-(-int(n) // c) for n, c in zip(scale["size"], chunk, strict=True)]
        shift = np.uint64(int(sharding.get("preshift_bits", 0)) + int(sharding["minishard_bits"]))
        mask = np.uint64((1 << int(sharding["shard_bits"])) - 1)
        # The shard's bits of each axis' share of the code (the axes' bits are disjoint),
        # a plane of chunks at a time: 8-byte codes for every chunk at once would take 8
        # times the occupancy grid's memory.
        sx, sy, sz = ((code >> shift) & mask for code in _morton_axes(grid))
        wanted = np.array(sorted(shards), np.uint64)
        stored = np.empty((*grid, 1), bool)  # x, y, z, and the channels, in every chunk
        for x, code in enumerate(sx):
            stored[x, ..., 0] = np.isin(code | sy[:, None] | sz[None, :], wanted)
        return self._occupancy(stored, (*chunk, int(self.handle.store.shape[3])))

    def _inspect(self) -> ImageInfo:
        self.precomputed = tensorstore_format(self.path) == "precomputed"
        if self.precomputed:
            info = _json(self.path, "info")
            self.levels = len(info.get("scales", []))
            if self.level >= self.levels:
                raise self._no_level(self.levels)
        else:
            self.dataset = self._n5_dataset()
        store = self._open().store
        names = [str(label or "") for label in store.domain.labels]
        origin: dict[str, float] = {}
        if self.precomputed:
            axes = "xyzc"
            level = info["scales"][self.level]
            scale = dict(zip("xyz", map(float, level.get("resolution", [])), strict=False))
            units = dict.fromkeys(scale, "nanometer")
            offset = zip("xyz", level.get("voxel_offset", []), strict=False)
            origin = {a: float(v) * scale.get(a, 1.0) for a, v in offset if v}
        else:
            attrs = self._n5_attrs()
            given = [str(a).lower() for a in attrs.get("axes", [])]
            given = ["c" if a in ("c", "ch", "channel") else a for a in given]
            axes = "".join(given) if len(given) == len(names) else "xyzct"[: len(names)]
            scale, units = self._n5_scale(attrs, axes)
        if self.axes:
            axes = self.axes.lower()
        self.axes = axes
        _, shape = _axes_to_5d(axes, tuple(store.shape), self.where)
        dtype = np.dtype(store.dtype.numpy_dtype)
        return ImageInfo(shape, dtype, scale, units, origin=origin)  # type: ignore[arg-type]

    def _n5_attrs(self) -> dict[str, Any]:
        """The group's attributes (a multiscale's) under the level's dataset's own."""
        root = _json(self.path, "attributes.json")
        own = _json(self.path, f"{self.dataset}/attributes.json") if self.dataset else {}
        return root | own

    def _n5_scale(
        self, attrs: dict[str, Any], axes: str
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Pixel size per axis of the level: ``pixelResolution`` (n5-viewer, Fiji:
        ``{"dimensions": [...], "unit": "um"}``) or ``resolution`` (BigStitcher), times
        the level's ``downsamplingFactors`` (or the group's ``scales[level]``)."""
        pixel = attrs.get("pixelResolution")
        unit = pixel.get("unit") if isinstance(pixel, dict) else None
        sizes = pixel.get("dimensions") if isinstance(pixel, dict) else pixel
        if not isinstance(sizes, list):
            sizes = attrs.get("resolution")
        if not isinstance(sizes, list) or len(sizes) > len(axes):
            return {}, {}
        if unit is None and isinstance(attrs.get("units"), list) and attrs["units"]:
            unit = attrs["units"][0]
        factors = attrs.get("downsamplingFactors")
        scales = attrs.get("scales")
        if factors is None and isinstance(scales, list) and self.level < len(scales):
            factors = scales[self.level]
        if not isinstance(factors, list) or len(factors) != len(sizes):
            factors = [1] * len(sizes)
        length = _ngff_unit(unit) or N5_UNITS_DEFAULT
        scale = {
            a: float(v) * float(f)
            for a, v, f in zip(axes, sizes, factors, strict=False)
            if a in "zyx"
        }
        return scale, dict.fromkeys(scale, length)


def _n5_box(key: str, chunk: Sequence[int]) -> list[tuple[int, int]] | None:
    """The elements of the N5 chunk stored under ``key`` (``1/0/2``), None for another key."""
    parts = key.split("/")
    if len(parts) != len(chunk) or not all(p.isdigit() for p in parts):
        return None
    return [(int(p) * c, (int(p) + 1) * c) for p, c in zip(parts, chunk, strict=True)]


_PRECOMPUTED_CHUNK = re.compile(r"(\d+)-(\d+)_(\d+)-(\d+)_(\d+)-(\d+)")
_SHARD_FILE = re.compile(r"([0-9a-f]+)\.shard")


def _morton_axes(grid: Sequence[int]) -> list[np.ndarray]:
    """Neuroglancer's compressed Morton code of a chunk ``grid``'s positions (x, y, z: the
    positions' bits interleaved x, y, z from the lowest, each axis giving only the bits
    its length needs, ``ceil(log2(length))``), per axis: each position's bits along it,
    which a chunk's code ORs together."""
    bits = [int(n - 1).bit_length() for n in grid]
    codes = [np.zeros(n, np.uint64) for n in grid]
    j = 0
    for i in range(max(bits, default=0)):
        for axis, n in enumerate(grid):
            if i < bits[axis]:
                bit = (np.arange(n, dtype=np.uint64) >> np.uint64(i)) & np.uint64(1)
                codes[axis] |= bit << np.uint64(j)
                j += 1
    return codes


def _precomputed_box(key: str, offset: Sequence[int] | None) -> list[tuple[int, int]] | None:
    """The voxels (x, y, z, from the scale's ``voxel_offset``) of the unsharded precomputed
    chunk stored under ``key`` (``x0-x1_y0-y1_z0-z1``), None for another key."""
    found = _PRECOMPUTED_CHUNK.fullmatch(key)
    if found is None:
        return None
    bounds = [int(v) for v in found.groups()]
    return [(bounds[2 * i] - o, bounds[2 * i + 1] - o) for i, o in enumerate(offset or (0, 0, 0))]


READ_TIMEOUT_S = 600.0
"""How long one region's read may take: a store that stops answering mid-run (a server
gone) fails the block naming it rather than holding the run without end."""


class _Reads:
    """A tensorstore array read with numpy indexing (``ArraySource._read``)."""

    def __init__(self, store: Any, path: str) -> None:
        self.store = store
        self.path = path

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return np.asarray(self.store[index].read().result(timeout=READ_TIMEOUT_S))
        except TimeoutError as e:
            raise _no_answer(self.path, READ_TIMEOUT_S) from e


def _no_answer(path: str, seconds: float) -> InputImageError:
    return InputImageError(
        f"{path}: no answer in {seconds:.0f} s; check the URL, the network and the "
        f"credentials, then run the same command again (finished blocks are kept)"
    )


def _json(location: str, key: str) -> dict[str, Any]:
    """The JSON object ``key`` under the directory ``location`` ({} for another value)."""
    where = storage.join(location, key)
    try:
        data = _key(location, key)
        if data is None:
            raise FileNotFoundError("no such file")
        value = json.loads(data)
    except (OSError, ValueError) as e:
        raise InputImageError(f"{where}: unreadable ({type(e).__name__}: {e})") from e
    return value if isinstance(value, dict) else {}


class MemorySource(ImageSource):
    """An image held in memory, (t, c, z, y, x) ``data`` (a mask this package made); it
    travels to the workers with the plans."""

    kind = "memory"

    def __init__(self, data: np.ndarray, where: str, name: str) -> None:
        self.data = data
        super().__init__(where, name=name)

    def _inspect(self) -> ImageInfo:
        return ImageInfo(self.data.shape, self.data.dtype)  # type: ignore[arg-type]

    def _open(self) -> Any:
        return self.data

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = region
        return self.data[t, list(channels), z0:z1, y0:y1, x0:x1]


_CZI_PIXELS = {
    "Gray8": ("uint8", 1),
    "Gray16": ("uint16", 1),
    "Gray32Float": ("float32", 1),
    "Bgr24": ("uint8", 3),
    "Bgr48": ("uint16", 3),
    "Bgr96Float": ("float32", 3),
}
"""CZI pixel types: numpy type and samples per pixel (colour ones stored blue first)."""
CZI_THUMBNAIL = 1024
"""A CZI's coarsest level: the first halving whose longer side is at most this."""
CZI_BAND = 1 << 25
"""Full-resolution pixels a CZI's reduced level is read in at a time, at most."""


def reader_module(path: str, module: str, what: str, extra: str) -> Any:
    """``module``, the optional package that reads ``what`` files, imported; else the error
    naming ``path`` and the extra that installs it."""
    package = module.split(".")[0]
    try:
        # The package first: marked absent, it hides a submodule imported before.
        importlib.import_module(package)
        return importlib.import_module(module)
    except ImportError as e:
        raise InputImageError(
            f"{path}: reading {what} needs {package}: pip install 'raysegment[{extra}]'"
        ) from e


def open_file(
    path: str,
    what: str,
    opener: Callable[[str], T],
    errors: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """``opener(path)`` (a local file): one a node lacks, or one ``opener`` fails on with
    ``errors``, as the error saying so."""
    if not os.path.isfile(path):  # a node lacks it
        raise InputImageError(f"{path}: no such file (removed, or not on this node)")
    try:
        return opener(path)
    except errors as e:
        raise InputImageError(
            f"{path}: not a readable {what} ({type(e).__name__}: {e}); check the file is "
            f"complete (copy or export it again)"
        ) from e


def _czi_reader(path: str) -> Any:
    """``path`` opened with pylibCZIrw (the caller closes it)."""
    pyczi = reader_module(path, "pylibCZIrw.czi", "CZI", "czi")
    return open_file(path, "CZI", pyczi.CziReader)


def _czi_scenes(path: str) -> list[int | None]:
    """The scenes of a CZI to segment, each an image: None for a file of one (or none)."""
    reader = _czi_reader(path)
    try:
        scenes = sorted(reader.scenes_bounding_rectangle_no_pyramid)
    finally:
        reader.close()
    return list(scenes) if len(scenes) > 1 else [None]


class CziSource(ImageSource):
    """Zeiss CZI (ZEN: Axioscan slides, LSM and Celldiscoverer stacks, mosaics of any
    origin) through pylibCZIrw, which composes a region from the subblocks it touches. A
    file of several scenes (the tissue sections of a slide, a plate's wells) is one source
    per scene (``series``), each its own bounding rectangle; colour pixels (BGR in the
    file) are three channels in RGB order; the pixel size from ``Scaling`` (metres in the
    file), channel names from its channels' ``Name``.

    ``level`` k is the image at 1/2^k in y and x, each pixel the mean of 2^k x 2^k at full
    resolution. The file's pyramid layers are not read: libCZI's zoomed reads of a region
    depend on where the region starts (a seam's column differs), so neighbouring blocks
    would disagree. The levels halve down to the first whose longer side is at most
    ``CZI_THUMBNAIL``."""

    kind = "czi"
    stored_levels = False

    def _open(self) -> Any:
        return _czi_reader(self.path)

    def _inspect(self) -> ImageInfo:
        reader = _czi_reader(self.path)
        try:
            box = reader.total_bounding_box
            # The full resolution's extent: a scanner's pyramid tiles may reach beyond it.
            if self.series is None:
                rect = reader.total_bounding_rectangle_no_pyramid
            else:
                rect = reader.scenes_bounding_rectangle_no_pyramid[self.series]
            types = sorted(set(reader.pixel_types.values()))
            metadata = reader.metadata.get("ImageDocument", {}).get("Metadata", {}) or {}
        finally:
            reader.close()
        if len(types) != 1 or types[0] not in _CZI_PIXELS:
            raise InputImageError(
                f"{self.where}: CZI channels of pixel type(s) {types}; this package reads "
                f"files whose channels share one of {sorted(_CZI_PIXELS)}: export the "
                f"channels to separate files or to OME-TIFF"
            )
        self.pixel_type = types[0]
        dtype, self.samples = _CZI_PIXELS[self.pixel_type]
        self.origin = (int(rect.y), int(rect.x))
        self.axes = "tczyx"
        self.levels = 1 + max(0, math.ceil(math.log2(max(rect.h, rect.w) / CZI_THUMBNAIL)))
        if self.level >= self.levels:
            raise self._no_level(self.levels)
        factor = 2**self.level
        t, c, z = (box[a][1] - box[a][0] for a in "TCZ")
        shape = (t, c * self.samples, z, int(rect.h) // factor, int(rect.w) // factor)
        scale: dict[str, float] = {}
        for distance in _as_list((metadata.get("Scaling") or {}).get("Items", {}).get("Distance")):
            axis, value = str(distance.get("@Id", "")).lower(), distance.get("Value")
            if axis in ("x", "y", "z") and value is not None and float(value) > 0:
                # Metres in the file; a level's pixels 2^k times as large in y and x.
                scale[axis] = float(value) * 1e6 * (factor if axis in "yx" else 1)
        units = {a: "micrometer" for a in scale}
        channels = (
            ((metadata.get("Information") or {}).get("Image") or {}).get("Dimensions") or {}
        ).get("Channels") or {}
        names = tuple(str(ch.get("@Name") or "") for ch in _as_list(channels.get("Channel")))
        named = self.samples == 1 and len(names) == c and all(names)
        return ImageInfo(shape, np.dtype(dtype), scale, units, names if named else None)  # type: ignore[arg-type]

    def level_scale(self) -> tuple[float, float]:
        return float(2**self.level), float(2**self.level)

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = region
        f = 2**self.level  # a level's pixel: the mean of f x f at full resolution
        # Rows of the level read at a time: a band of the full resolution of at most
        # CZI_BAND pixels (a level's block is f^2 as many at full resolution).
        rows = max(1, CZI_BAND // ((x1 - x0) * f * f))
        out = np.empty((len(channels), z1 - z0, y1 - y0, x1 - x0), self.info.dtype)
        for c in sorted({k // self.samples for k in channels}):
            for zi, z in enumerate(range(z0, z1)):
                for r0 in range(y0, y1, rows):
                    r1 = min(r0 + rows, y1)
                    roi = (self.origin[1] + x0 * f, self.origin[0] + r0 * f)
                    reader = self.handle
                    with self._lock:  # one reader per process, its calls one at a time
                        plane = reader.read(
                            roi=(*roi, (x1 - x0) * f, (r1 - r0) * f),
                            plane={"T": t, "C": c, "Z": z},
                            scene=self.series,
                            pixel_type=self.pixel_type,
                        )
                    if f > 1:
                        windows = plane.reshape(r1 - r0, f, x1 - x0, f, self.samples)
                        plane = windows.mean(axis=(1, 3), dtype=np.float64)
                        if self.info.dtype.kind in "ui":
                            plane = np.rint(plane)
                    for i, k in enumerate(channels):
                        if k // self.samples == c:  # colour: the file's samples are BGR
                            band = plane[..., self.samples - 1 - k % self.samples]
                            out[i, zi, r0 - y0 : r1 - y0] = band
        return out


def _as_list(value: Any) -> list[Any]:
    """An XML element that may occur once or many times, as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


SOURCES: Registry[type[ImageSource]] = Registry("image source")
SOURCES.register("ome-tiff")(OmeTiffSource)
SOURCES.register("tiff")(TiffSource)
SOURCES.register("zarr")(ZarrSource)
SOURCES.register("czi")(CziSource)
SOURCES.register("tensorstore")(TensorstoreSource)

SEQUENCE_AXES = ("z", "t")

PARSED_FILES = 1024
"""Files of a sequence a process keeps parsed (not open): a block's planes and more."""
PLANE_THREADS = 8
"""Files of a sequence one read reads at once."""

INSPECT_THREADS = 16
"""Files of a sequence at URLs checked at once when it is opened (2,000 files at 20 ms a
round trip: 80 s one by one)."""

PART_BLOCK = 2**16
"""The bytes a sequence's file at a URL has its directory fetched in: what a process
keeps of each of the ``PARSED_FILES`` files it parsed (its pixels come by ranged
requests)."""


def natural_key(name: str) -> list[Any]:
    """Sort key comparing the numbers in names as numbers: ``z2.tif`` before ``z10.tif``."""
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


class TiffSequenceSource(ImageSource):
    """One image whose parts are TIFF files: the planes of a volume (``axis="z"``: a CT
    reconstruction, a FIB-SEM or light-sheet stack exported one plane a file, Fiji's
    "Image Sequence"), or its time points (``axis="t"``: one file, 2D or a z-stack, a time
    point). ``files`` in order; each is read region by region as a TIFF of its own
    (``TiffSource``, ``OmeTiffSource``), opened for a read and closed after it, so a
    volume of thousands of planes holds no file open. Physical sizes and channel names
    come from the first file."""

    kind = "tiff-sequence"

    def __init__(
        self,
        path: str,
        files: list[str],
        axis: str,
        axes: str | None = None,
        name: str | None = None,
        level: int = 0,
    ) -> None:
        if axis not in SEQUENCE_AXES:
            raise ValueError(f"axis {axis!r}: give one of {SEQUENCE_AXES}")
        self.files = tuple(files)
        self.axis = axis
        self.part_axes = axes
        self.part_kind = "tiff"
        self._parts: collections.OrderedDict[int, tuple[TiffSource, threading.Lock]] | None = None
        super().__init__(path, axes, None, name, level)

    @property
    def where(self) -> str:
        first, last = (storage.basename(f) for f in (self.files[0], self.files[-1]))
        level = f", level {self.level}" if self.level else ""
        return f"{self.path} ({len(self.files)} files {first} .. {last} as {self.axis}{level})"

    def at_level(self, level: int) -> ImageSource:
        return type(self)(self.path, list(self.files), self.axis, self.part_axes, self.name, level)

    def _part(self, i: int, tif: Any = None, keep: bool = False) -> TiffSource:
        cls = cast(type[TiffSource], SOURCES.get(self.part_kind))
        return cls(
            self.files[i], self.part_axes, level=self.level, tif=tif, block=PART_BLOCK, keep=keep
        )

    def _inspected(self, i: int) -> TiffSource:
        """File ``i`` checked whole (a short copy fails now) and inspected."""
        tif = _inspect_tiff(self.files[i], PART_BLOCK)
        with tif:
            if i == 0:
                self.part_kind = "ome-tiff" if tif.is_ome and self.part_axes is None else "tiff"
            return self._part(i, tif)

    def _inspect(self) -> ImageInfo:
        first = self._inspected(0)
        self.levels = first.levels
        self._check_first(first)
        info = first.info
        # Files at URLs on threads: each costs round trips (its size, its directory). The
        # first odd file in order is named; the files after it are not checked.
        threads = INSPECT_THREADS if storage.is_url(self.files[0]) else 1
        pool = concurrent.futures.ThreadPoolExecutor(threads)
        try:
            for i, part in enumerate(pool.map(self._inspected, range(1, len(self.files))), 1):
                if (part.info.shape, part.info.dtype) != (info.shape, info.dtype):
                    raise InputImageError(
                        f"{self.files[i]}: {_size(part.info)}, where {self.files[0]} is "
                        f"{_size(info)}; the files of a sequence must match: remove it or "
                        f"narrow pattern="
                    )
        finally:
            pool.shutdown(cancel_futures=True)
        n = len(self.files)
        shape = (n, *info.shape[1:]) if self.axis == "t" else (1, info.shape[1], n, *info.shape[3:])
        return replace(info, shape=shape)  # type: ignore[arg-type]

    def _check_first(self, part: TiffSource) -> None:
        t, _, z = part.info.shape[:3]
        if self.axis == "z" and (t, z) != (1, 1):
            raise InputImageError(
                f"{part.where}: {_size(part.info)}; sequence=z takes files of one plane each: "
                f"use sequence=t for a file per time point, or give the files one at a time"
            )
        if self.axis == "t" and t != 1:
            raise InputImageError(
                f"{part.where}: {t} time points; sequence=t takes files of one time point each"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_parts"] = None  # parsed files stay in their process
        return state

    def _open(self) -> Any:
        return None  # each read opens the files it needs

    def close(self) -> None:
        super().close()
        with self._lock:
            parts, self._parts = self._parts, None
        for part, lock in (parts or {}).values():
            with lock:
                part.close()

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        if self.axis == "t":
            return self._part_read(t, channels, region)
        (z0, z1), *plane = region
        out = np.empty((len(channels), z1 - z0, *(b - a for a, b in plane)), self.info.dtype)

        def read(z: int) -> None:
            out[:, z - z0] = self._part_read(z, channels, ((0, 1), *plane))[:, 0]

        # Planes on threads: a file's open and read wait on storage, its decode releases
        # the GIL.
        with concurrent.futures.ThreadPoolExecutor(min(PLANE_THREADS, z1 - z0)) as pool:
            list(pool.map(read, range(z0, z1)))
        return out

    def _part_read(
        self, i: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        # The files parsed last stay parsed (a block's neighbour reads the same planes),
        # each open only for its read, one read of a file at a time. A file is parsed
        # outside the lock, so that the threads of a read open files side by side.
        with self._lock:
            entry = self._parts.get(i) if self._parts is not None else None
        if entry is None:
            entry = (self._part(i, keep=True), threading.Lock())
        evicted = []
        with self._lock:
            if self._parts is None:
                self._parts = collections.OrderedDict()
            entry = self._parts.setdefault(i, entry)  # a file parsed twice at once: one kept
            self._parts.move_to_end(i)
            while len(self._parts) > PARSED_FILES:
                evicted.append(self._parts.popitem(last=False)[1])
        for old, lock in evicted:
            with lock:
                old.close()
        part, lock = entry
        with lock, part.opened():
            return part.read(0, channels, region)


def _size(info: ImageInfo) -> str:
    """An image's size and type in messages: ``(t, c, z, y, x) 1x1x1x2048x2048 uint16``."""
    return f"(t, c, z, y, x) {'x'.join(map(str, info.shape))} {info.dtype}"


def open_sequence(
    paths: list[str], axis: str, axes: str | None = None, level: int = 0, name: str | None = None
) -> TiffSequenceSource:
    """The TIFF files ``paths`` as one image along ``axis`` (``TiffSequenceSource``), in
    the natural order of their names (``z2`` before ``z10``), named ``name`` or after
    their directory.

    Raises:
        InputImageError: a file that is not a TIFF, unreadable, cut short, or unlike the
            first.
    """
    files = sorted(
        (storage.resolve(p) for p in paths), key=lambda f: natural_key(storage.basename(f))
    )
    for file in files:
        if not file.lower().endswith((".tif", ".tiff")):
            raise InputImageError(
                f"{file}: a sequence is made of TIFF files (.tif, .tiff); narrow pattern= to them"
            )
    directory = storage.parent(files[0])
    return TiffSequenceSource(
        directory, files, axis, axes, name or storage.basename(directory) or "sequence", level
    )


def _unreadable_tiff(path: str | Path, e: Exception) -> InputImageError:
    return InputImageError(
        f"{path}: not a readable TIFF ({type(e).__name__}: {e}); "
        f"check the file is complete and is a TIFF"
    )


def _tiff_images(tif: Any) -> list[Any]:
    """The series of a TIFF that are images to segment: an OME-TIFF's every one, a plain
    TIFF's first (others are thumbnails, labels, macro images)."""
    return list(tif.series if tif.is_ome else tif.series[:1])


def _open_tiff(path: str, block: int = storage.READ_BLOCK) -> Any:
    """The TIFF ``path`` opened with tifffile; one at a URL through an fsspec file (its
    directories read in cached blocks of ``block`` bytes; ``_TiffPlanes`` fetches its
    pixels itself)."""
    import tifffile

    if not storage.is_url(path):
        return tifffile.TiffFile(path)
    # tifffile leaves a file object it was given open; fsspec's holds no descriptor
    # (its connections are the filesystem's), so it goes with the TiffFile.
    return tifffile.TiffFile(storage.open_read(path, block), name=storage.basename(path))


def _inspect_tiff(path: str, block: int = storage.READ_BLOCK) -> Any:
    """``path`` opened with tifffile (the caller closes it), after checking every strip or
    tile of its images lies inside the file (a copy cut short fails here, not hours into a
    run)."""
    tif = None
    try:
        tif = _open_tiff(path, block)
        size = storage.size(path)
        series = _tiff_images(tif)
        # A writer that streams tiles writes the directory after them: stopped early, the
        # file has an empty one (no size, no pixels; tifffile reads shape ()).
        empty = bool(series) and not series[0].shape
        pages = [p for s in series for p in s.pages if p is not None]
        beyond = sum(
            1
            for page in pages
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False)
            if offset + count > size
        )
    except Exception as e:
        if tif is not None:
            tif.close()
        raise _unreadable_tiff(path, e) from e
    if empty or beyond:
        tif.close()
    if empty:
        raise InputImageError(
            f"{path}: no image in the TIFF (its first directory is empty: a file whose "
            f"writing stopped early?); copy or export the file again"
        )
    if beyond:
        raise InputImageError(
            f"{path}: truncated: {beyond} strip(s)/tile(s) lie beyond the end of the file "
            f"({size} bytes); copy or export the file again"
        )
    return tif


def _zarr_images(path: str) -> list[tuple[str, str]] | None:
    """The images of a zarr store that holds several, as (group path, output name
    suffix): an NGFF plate (high-content screening: ``A/1/0`` -> ``A1_f0``, every field of
    every well) and a bioformats2raw store (one OME-Zarr image per series, groups ``0``,
    ``1``, ... that its ``OME`` group may list -> ``s0``, ``s1``, ...). None for any other
    path."""
    import zarr

    try:
        node: Any = zarr.open(path, mode="r")
    except Exception:
        return None  # ZarrSource says what is wrong with it
    if not isinstance(node, zarr.Group):
        return None
    attrs: dict[str, Any] = dict(node.attrs)
    attrs = attrs.get("ome", attrs)
    if "plate" in attrs:
        images = []
        for well in attrs["plate"].get("wells", []):
            try:
                meta: dict[str, Any] = dict(node[well["path"]].attrs)
            except KeyError:
                continue  # a well listed but never written
            fields = meta.get("ome", meta).get("well", {}).get("images", [])
            label = well["path"].replace("/", "")
            images += [(f"{well['path']}/{f['path']}", f"{label}_f{f['path']}") for f in fields]
        if not images:
            raise InputImageError(f"{path}: an OME-Zarr plate without images in its wells")
        return images
    if "bioformats2raw.layout" not in attrs:
        return None
    listed: Any = None
    if "OME" in node:
        ome: dict[str, Any] = dict(node["OME"].attrs)
        listed = ome.get("ome", ome).get("series")
    groups: list[str] = [str(g) for g in listed] if listed else []
    while not listed and str(len(groups)) in node:
        groups.append(str(len(groups)))
    if not groups:
        raise InputImageError(
            f"{path}: a bioformats2raw store without image groups (0, 1, ...); convert the "
            f"image again"
        )
    return [(g, f"s{i}") for i, g in enumerate(groups)]


MICROMETRES = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
"""Micrometres in each NGFF length unit."""


def pixel_micrometres(
    scale: Mapping[str, float], units: Mapping[str, str], axis: str = "x"
) -> float:
    """The pixel along ``axis`` in micrometres; 0 where its size or length unit is
    unknown."""
    return float(scale.get(axis, 0.0)) * MICROMETRES.get(units.get(axis, ""), 0.0)


def nearest_level(source: ImageSource, size: Mapping[str, float], unit: str) -> ImageSource:
    """``source`` (at full resolution) at the pyramid level whose pixel (along x) is
    nearest ``size`` in ``unit`` (``{"y": 0.5, "x": 0.5}``, micrometer: a model's training
    pixel), in ratio, the finer of two as near; itself where either pixel size or unit is
    unknown."""
    wanted = float(size.get("x", 0.0)) * MICROMETRES.get(unit, 0.0)

    def pixel(level: ImageSource) -> float:
        return pixel_micrometres(level.info.scale, level.info.units)

    if wanted <= 0 or pixel(source) <= 0:
        return source
    best, gap = source, abs(math.log(pixel(source) / wanted))
    for k in range(1, source.levels):
        if pixel(best) >= wanted:
            break  # the levels only coarsen: none further is nearer
        level = source.at_level(k)
        here = pixel(level)
        if here > 0 and abs(math.log(here / wanted)) < gap - 1e-9:
            best, gap = level, abs(math.log(here / wanted))
    return best


def open_sources(
    path: str | os.PathLike[str], axes: str | None = None, level: int = 0
) -> list[ImageSource]:
    """Every image of ``path``: one for most files (an HDF5 file's dataset: ``vol.h5`` or
    ``vol.h5/volumes/raw``, ``hdf5.hdf5_sources``), one per series of an OME-TIFF of
    several images (wells, positions, scenes) and of a bioformats2raw store, one per field
    of an OME-Zarr plate. Images of a file of several are named ``<stem>_s<series>`` or
    ``<stem>_<well>_f<field>`` (their outputs ``<stem>_s0.ome.zarr``, ...). ``level``: the
    resolution level each is read at (0: full resolution).

    Raises:
        InputImageError: missing path, unknown format, unreadable or corrupt file.
    """
    # These build on this module.
    from raysegment.data.bdv import bdv_project, bdv_sources
    from raysegment.data.dicom import dicom_file_sources, dicom_sources, is_dicom_dir
    from raysegment.data.hdf5 import hdf5_parts, hdf5_sources
    from raysegment.data.mrc import MRC_SUFFIXES, MrcSource
    from raysegment.data.nifti import NIFTI_SUFFIXES, NiftiSource
    from raysegment.data.slides import OpenSlideSource

    p = storage.resolve(path)
    parts = hdf5_parts(p)  # a file, or a dataset in one: a path that is no file itself
    if parts is not None:
        return _checked(hdf5_sources(*parts, axes=axes, level=level))
    if bdv_project(p):  # a BigDataViewer N5 or zarr store with its XML beside it
        return _checked(bdv_sources(p, axes, level))
    volume = tensorstore_format(p)  # first: an https:// or gs:// volume has no fsspec listing
    if volume is None and not storage.exists(p):
        raise InputImageError(f"{p}: no such file or directory; check the input= path")
    name = storage.basename(p).lower()
    tif: Any = None  # a TIFF, open while its sources inspect it
    images: list[tuple[str, str]] | None = None
    scenes: list[int | None] | None = None  # a CZI's
    if volume is not None:
        kind = "tensorstore"
    elif is_zarr(p):
        kind = "zarr"
        images = _zarr_images(p)
    elif name.endswith(".xml") and (storage.is_url(p) or os.path.isfile(p)):
        return _checked(bdv_sources(p, axes, level))  # a BigDataViewer project
    elif name.endswith((".tif", ".tiff", *SLIDE_SUFFIXES)) and (
        storage.is_url(p) or os.path.isfile(p)
    ):
        tif = _inspect_tiff(p)
        kind = "ome-tiff" if tif.is_ome and axes is None else "tiff"
    elif is_dicom_dir(p):
        return _checked(dicom_sources(p, level))
    elif name.endswith(".dcm") and (storage.is_url(p) or os.path.isfile(p)):
        return _checked(dicom_file_sources(p, level))  # a level of a DICOM whole-slide image
    elif storage.is_url(p):
        raise InputImageError(
            f"{p}: only zarr, OME-Zarr, TIFF (OME-TIFF, SVS, NDPI, QPTIFF), DICOM, N5, "
            f"Neuroglancer precomputed and BigDataViewer N5 / OME-Zarr projects (.xml) are "
            f"read from URLs (N5 and precomputed with pip install 'raysegment[tensorstore]'); "
            f"copy the file (CZI, HDF5, Imaris, MRC, NIfTI, MIRAX and other OpenSlide formats) "
            f"to a local or mounted path, or convert it to OME-Zarr"
        )
    elif os.path.isfile(p) and name.endswith(".czi"):
        scenes = _czi_scenes(p)
        kind = "czi"
    elif os.path.isfile(p) and name.endswith(MRC_SUFFIXES):
        return _checked([MrcSource(p, axes, level=level)])
    elif os.path.isfile(p) and name.endswith(NIFTI_SUFFIXES):
        return _checked([NiftiSource(p, axes, level=level)])
    elif os.path.isfile(p) and name.endswith(OPENSLIDE_SUFFIXES):
        return _checked([OpenSlideSource(p, level=level)])
    else:
        raise InputImageError(
            f"{p}: not a supported image; give an OME-TIFF, TIFF (or SVS, NDPI, QPTIFF), "
            f"MIRAX (.mrxs) or other OpenSlide slide (.vms, .vmu, .scn, .bif, .svslide), "
            f"CZI, HDF5 (.h5, .hdf5, .hdf), Imaris (.ims), MRC (.mrc, .rec) or NIfTI "
            f"(.nii, .nii.gz) file, a directory of a DICOM series or whole-slide image, "
            f"BigDataViewer project (.xml), zarr array, OME-Zarr, N5 or Neuroglancer "
            f"precomputed volume"
        )
    cls = SOURCES.get(kind)
    stem = image_stem(p)
    if images is not None:
        # A store of one series (a slide converted alone) keeps the store's name.
        one = len(images) == 1 and images[0][1] == "s0"
        sources = [
            cls(storage.join(p, group), axes, name=stem if one else f"{stem}_{suffix}", level=level)
            for group, suffix in images
        ]
    elif scenes is not None:
        sources = [
            cls(p, series=i, name=None if i is None else f"{stem}_s{i}", level=level)
            for i in scenes
        ]
    elif tif is None:  # a zarr array or OME-Zarr image
        sources = [cls(p, axes, level=level)]
    else:
        tiff = cast(type[TiffSource], cls)
        with tif:
            count = len(_tiff_images(tif))
            series = range(count) if count > 1 else [None]
            sources = [
                tiff(
                    p,
                    axes,
                    series=i,
                    name=None if i is None else f"{stem}_s{i}",
                    level=level,
                    tif=tif,
                )
                for i in series
            ]
    return _checked(sources)


def _checked(sources: list[ImageSource]) -> list[ImageSource]:
    """``sources``, each of a size and a pixel type a model can take."""
    for source in sources:
        if math.prod(source.info.shape) == 0:
            raise InputImageError(f"{source.where}: image has zero size {source.info.shape}")
        if source.info.dtype.kind not in "uif" and source.info.dtype != np.bool_:
            raise InputImageError(f"{source.where}: pixel type {source.info.dtype} is not numeric")
    return sources


def open_source(
    path: str | os.PathLike[str], axes: str | None = None, level: int = 0
) -> ImageSource:
    """The one image of ``path`` (``open_sources``), read at resolution ``level``.

    Raises:
        InputImageError: as ``open_sources``, and for a file of several images.
    """
    sources = open_sources(path, axes, level)
    if len(sources) > 1:
        raise InputImageError(
            f"{storage.resolve(path)}: holds {len(sources)} images (series); training takes "
            f"one image per file: export each series to a file of its own"
        )
    return sources[0]
