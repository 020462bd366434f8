"""HDF5 images: a dataset of an HDF5 file (ilastik's and PlantSeg's files, CREMI's and
other connectomics volumes, Fiji's and synchrotron CT exports) and Imaris files (``.ims``,
HDF5 inside), read region by region through h5py (``pip install 'raysegment[hdf5]'``).

An input names a file (``vol.h5``: its one image dataset) or a dataset in one
(``vol.h5/volumes/raw``, ilastik's notation): the path inside the file follows the file's
name. Files are read where they lie (a local or mounted path), without HDF5's file locks:
the run only reads, and those locks fail on many network file systems.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.data.sources import (
    _UNITS,
    SOURCES,
    ArraySource,
    ImageInfo,
    ImageSource,
    Unstored,
    _axes_to_5d,
    _default_axes,
    image_stem,
    open_file,
    reader_module,
)
from raysegment.errors import InputImageError

__all__ = [
    "HDF5_SUFFIXES",
    "Hdf5Channels",
    "Hdf5Source",
    "ImarisSource",
    "hdf5_parts",
    "hdf5_sources",
]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".ims")
"""Names of HDF5 files (``.ims``: Imaris)."""

_FILE = re.compile(f"({'|'.join(map(re.escape, HDF5_SUFFIXES))})(?=/|$)", re.IGNORECASE)
"""An HDF5 file's name in a path, at its end or before the dataset's path."""

_IMARIS_ROOT = "DataSet"


def hdf5_parts(path: str) -> tuple[str, str] | None:
    """``(file, dataset)`` of a local ``path`` that names an HDF5 file (``vol.h5`` ->
    ``(vol.h5, "")``) or a dataset in one (``vol.h5/volumes/raw`` -> ``(vol.h5,
    "volumes/raw")``); None for any other path."""
    if storage.is_url(path):
        return None
    for match in _FILE.finditer(path):
        head = path[: match.end()]
        if os.path.isfile(head):
            return head, path[match.end() :].strip("/")
    return None


def _opened(path: str) -> Any:
    """``path`` opened read-only (the caller closes it)."""
    h5py = reader_module(path, "h5py", "HDF5 and Imaris files", "hdf5")
    # No file locks: nothing here writes, and flock fails on many network file systems
    # (HDF5's "unable to lock file" on NFS and Lustre).
    return open_file(path, "HDF5 file", lambda p: h5py.File(p, "r", locking=False), (OSError,))


@contextmanager
def _file(path: str) -> Iterator[Any]:
    f = _opened(path)
    try:
        yield f
    finally:
        f.close()


def _is_imaris(f: Any) -> bool:
    group = f.get(_IMARIS_ROOT)
    return group is not None and "ResolutionLevel 0" in group


MIN_PIXELS = 256
"""Fewer values than this make a table (BigDataViewer's ``resolutions``), not an image."""


def _image_datasets(f: Any) -> list[tuple[str, Any]]:
    """Every dataset of ``f`` that can be an image (numeric, 2D to 5D, ``MIN_PIXELS`` at
    least)."""
    import h5py

    found: list[tuple[str, Any]] = []

    def visit(name: str, node: Any) -> None:
        if (
            isinstance(node, h5py.Dataset)
            and 2 <= node.ndim <= 5
            and node.dtype.kind in "uifb"
            and node.size >= MIN_PIXELS
        ):
            found.append((name, node))

    f.visititems(visit)
    return found


def _likely_raw(images: list[tuple[str, Any]]) -> str:
    """The dataset most likely the acquisition (for an example): one named raw (CREMI's
    ``volumes/raw``, PlantSeg's ``raw``), else the largest."""
    for name, _ in images:
        if "raw" in name.rsplit("/", 1)[-1].lower():
            return name
    return max(images, key=lambda item: item[1].size)[0]


def _listed(images: list[tuple[str, Any]], most: int = 8) -> str:
    """``images`` in a message: name, shape and type of each, the first ``most``."""
    named = ", ".join(f"{n} {'x'.join(map(str, d.shape))} {d.dtype}" for n, d in images[:most])
    return named + (f" and {len(images) - most} more" if len(images) > most else "")


def hdf5_sources(
    file: str, dataset: str, axes: str | None = None, level: int = 0
) -> list[ImageSource]:
    """The image of an HDF5 input (``hdf5_parts``): an Imaris file, a BigDataViewer
    file's (``bdv.bdv_sources``), the dataset named, or a file's one image dataset, named
    after the file (``image_stem``: ``vol.h5/volumes/raw`` -> ``vol``).

    Raises:
        InputImageError: h5py missing, an unreadable file, a dataset that is not there,
            a file of no image dataset or of several (they are listed) without one named.
    """
    from raysegment.data.bdv import bdv_sources, is_bdv  # it builds on this module

    name = image_stem(file)
    with _file(file) as f:
        if not dataset and _is_imaris(f):
            return [ImarisSource(file, axes, name=name, level=level)]
        bdv = not dataset and is_bdv(f)
        if not dataset and not bdv:
            images = _image_datasets(f)
            if not images:
                raise InputImageError(
                    f"{file}: an HDF5 file without an image dataset (numeric, 2D to 5D, "
                    f"{MIN_PIXELS} values at least)"
                )
            if len(images) > 1:
                raise InputImageError(
                    f"{file}: holds {len(images)} datasets ({_listed(images)}); give the one to "
                    f"segment after the file's name, e.g. input={file}/{_likely_raw(images)}"
                )
            dataset = images[0][0]
    if bdv:  # its project's reading opens the file itself
        return bdv_sources(file, axes, level)
    return [Hdf5Source(f"{file}/{dataset}", axes, name=name, level=level)]


class _Handle:
    """An open file and its dataset: the file stays open while the dataset is read."""

    def __init__(self, file: Any, node: Any) -> None:
        self.file, self.node = file, node

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.node[index])

    def close(self) -> None:
        self.file.close()


def _filters_readable(node: Any, where: str) -> None:
    """Raise if ``node`` is compressed with an HDF5 filter this installation lacks (LZ4,
    Blosc, Zstandard: plugins), naming it, rather than failing every block's read."""
    import h5py

    plist = node.id.get_create_plist()
    missing = []
    for i in range(plist.get_nfilters()):
        code, _, _, label = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            missing.append((code, label.decode(errors="replace") if label else ""))
    if not missing:
        return
    try:  # registers the common plugins' filters with HDF5, where installed
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    missing = [(code, label) for code, label in missing if not h5py.h5z.filter_avail(code)]
    if missing:
        named = ", ".join(f"{label or 'filter'} ({code})" for code, label in missing)
        raise InputImageError(
            f"{where}: compressed with the HDF5 filter {named}, which this installation "
            f"cannot decode; pip install hdf5plugin (LZ4, Blosc, Zstandard, bitshuffle, ...)"
        )


def _axistags(attrs: Any) -> str | None:
    """Axis order from ilastik's (vigra's) ``axistags`` attribute, e.g. ``zyxc``."""
    tags = attrs.get("axistags")
    if tags is None:
        return None
    try:
        keys = "".join(a["key"] for a in json.loads(_text(tags))["axes"]).lower()
    except (ValueError, KeyError, TypeError):
        return None
    return keys if keys and set(keys) <= set("tczyx") else None


def _text(value: Any) -> str:
    """An attribute as text: str, bytes, or Imaris's array of one-byte strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    array = np.asarray(value)
    if array.dtype.kind == "S":
        return b"".join(array.ravel().tolist()).decode(errors="replace")
    return str(array.ravel()[0]) if array.size == 1 else str(value)


class Hdf5Source(ArraySource):
    """A dataset of an HDF5 file; ``path`` is the file's, then the dataset's in it. Axes
    from ``axes=``, else ilastik's ``axistags``, else guessed from the dimensions (as a
    zarr array's); the pixel size from ``element_size_um`` (micrometres: vigra's, Fiji's
    and PlantSeg's attribute) or ``resolution`` (CREMI's; its unit from ``unit`` where
    given), along the spatial axes in the dataset's order. Chunks never written read as
    the fill value: a sparse volume's are told from HDF5's chunk index (``unstored``)."""

    kind = "hdf5"

    def _parts(self) -> tuple[str, str]:
        parts = hdf5_parts(self.path)
        if parts is None:  # a node lacks the file
            raise InputImageError(f"{self.path}: no such file (removed, or not on this node)")
        return parts

    def _node(self, f: Any) -> Any:
        import h5py

        file, dataset = self._parts()
        node = f.get(dataset) if dataset else None
        if not isinstance(node, h5py.Dataset):
            what = "a group" if node is not None else "no such dataset"
            listed = _listed(_image_datasets(f)) or "none"
            raise InputImageError(f"{self.path}: {what} in {file}; its image datasets: {listed}")
        return node

    def _inspect(self) -> ImageInfo:
        if self.level > 0:
            raise self._no_level(1)
        file, _ = self._parts()
        with _file(file) as f:
            node = self._node(f)
            _filters_readable(node, self.path)
            attrs = node.attrs
            if self.axes is None:
                self.axes = _axistags(attrs) or _default_axes(node.ndim, self.path)
            _, shape = _axes_to_5d(self.axes, tuple(node.shape), self.path)
            scale, units = _calibration(attrs, self.axes)
            return ImageInfo(shape, np.dtype(node.dtype), scale, units)  # type: ignore[arg-type]

    def _open(self) -> Any:
        file, _ = self._parts()
        f = _opened(file)
        try:
            return _Handle(f, self._node(f))
        except BaseException:
            f.close()
            raise

    def unstored(self) -> Unstored | None:
        """The chunks HDF5 allocated, from its chunk index (no pixel read)."""
        node = self.handle.node
        if node.chunks is None or not self._listing_tells(node.fillvalue):
            return None  # contiguous: allocated whole, or not at all
        chunks = tuple(node.chunks)
        cells: list[tuple[slice, ...]] = []

        def add(info: Any) -> None:
            offset = info.chunk_offset
            cells.append(
                tuple(slice(o // c, o // c + 1) for o, c in zip(offset, chunks, strict=True))
            )

        dsid = node.id
        if hasattr(dsid, "chunk_iter"):
            dsid.chunk_iter(add)
        else:  # HDF5 before 1.12.3: one call per chunk
            for i in range(dsid.get_num_chunks()):
                add(dsid.get_chunk_info(i))
        return self._outside(node.shape, chunks, cells)


def _calibration(attrs: Any, axes: str) -> tuple[dict[str, float], dict[str, str]]:
    """Pixel size and unit per spatial axis from ``element_size_um`` or ``resolution``,
    given in the dataset's axis order for its spatial axes (or for every axis)."""
    spatial = [a for a in axes if a in "zyx"]
    for key, unit in (("element_size_um", "micrometer"), ("resolution", None)):
        if key not in attrs:
            continue
        try:
            values = np.asarray(attrs[key], dtype=np.float64).ravel()
        except (ValueError, TypeError):
            continue  # not numbers (a note, a unit): no pixel size from it
        if len(values) == len(axes):
            values = values[[axes.index(a) for a in spatial]]
        if len(values) != len(spatial) or not np.all(values > 0):
            continue
        if unit is None:
            given = _text(attrs["unit"]) if "unit" in attrs else ""
            unit = _UNITS.get(given.strip(), None)
        scale = {a: float(v) for a, v in zip(spatial, values, strict=True)}
        return scale, (dict.fromkeys(scale, unit) if unit else {})
    return {}, {}


class Hdf5Channels(ImageSource):
    """A source whose channels, at each time point, are z, y, x datasets of one HDF5 file
    (``_dataset``), read into one block."""

    def _hdf5_file(self) -> str:
        return self.path

    def _dataset(self, f: Any, t: int, c: int) -> Any:
        raise NotImplementedError

    def _open(self) -> Any:
        return _opened(self._hdf5_file())

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        f = self.handle
        index = tuple(slice(a, b) for a, b in region)
        out = np.empty((len(channels), *(b - a for a, b in region)), self.info.dtype)
        for i, c in enumerate(channels):
            data = self._dataset(f, t, c)
            data.read_direct(out[i].view(data.dtype), index)  # the stored bits, as read
        return out


class ImarisSource(Hdf5Channels):
    """An Imaris file (``.ims``: Imaris, ImarisConvert, ImarisWriter, the microscopes
    that save it): ``DataSet/ResolutionLevel r/TimePoint t/Channel c/Data``, each a
    z, y, x array (its stored size padded past the image's, which each channel's
    ``ImageSizeX/Y/Z`` give). Every resolution level is a level of the file's own for
    ``input_level``; the pixel size is the extent (``ExtMin`` to ``ExtMax``) over the
    image's size, in the file's ``Unit``; channel names from ``DataSetInfo``."""

    kind = "imaris"

    def _dataset(self, f: Any, t: int, c: int) -> Any:
        return f[f"{_IMARIS_ROOT}/ResolutionLevel {self.level}/TimePoint {t}/Channel {c}/Data"]

    def _inspect(self) -> ImageInfo:
        with _file(self.path) as f:
            root = f[_IMARIS_ROOT]
            self.levels = _count(root, "ResolutionLevel")
            if self.level >= self.levels:
                raise self._no_level(self.levels)
            full = root["ResolutionLevel 0"]
            times = _count(full, "TimePoint")
            channels = _count(full["TimePoint 0"], "Channel")
            size = _size(root[f"ResolutionLevel {self.level}/TimePoint 0/Channel 0"])
            data = self._dataset(f, 0, 0)
            _filters_readable(data, self.where)
            info = f.get("DataSetInfo")
            scale: dict[str, float] = {}
            units: dict[str, str] = {}
            names = None
            if info is not None and "Image" in info:
                scale, units = _imaris_scale(info["Image"].attrs, size)
                names = tuple(
                    _text(info[f"Channel {c}"].attrs.get("Name", f"Channel {c}"))
                    if f"Channel {c}" in info
                    else f"Channel {c}"
                    for c in range(channels)
                )
            return ImageInfo((times, channels, *size), np.dtype(data.dtype), scale, units, names)


def _count(group: Any, prefix: str) -> int:
    """How many of ``<prefix> 0``, ``<prefix> 1``, ... ``group`` holds in a row."""
    n = 0
    while f"{prefix} {n}" in group:
        n += 1
    return n


def _size(channel: Any) -> tuple[int, int, int]:
    """A channel's image size (z, y, x): its ``ImageSize`` attributes, else its data's."""
    attrs = channel.attrs
    try:
        return tuple(int(float(_text(attrs[f"ImageSize{a}"]))) for a in "ZYX")  # type: ignore[return-value]
    except KeyError:
        return tuple(channel["Data"].shape)  # type: ignore[no-any-return]


def _imaris_scale(
    attrs: Any, size: tuple[int, int, int]
) -> tuple[dict[str, float], dict[str, str]]:
    """A level's pixel size (z, y, x): the image's extent along each axis (``ExtMin0`` to
    ``ExtMax0`` is x's) over the level's size along it."""
    scale: dict[str, float] = {}
    for axis, i, n in zip("zyx", (2, 1, 0), size, strict=True):
        try:
            extent = float(_text(attrs[f"ExtMax{i}"])) - float(_text(attrs[f"ExtMin{i}"]))
        except (KeyError, ValueError):
            continue
        if extent > 0 and n > 0:
            scale[axis] = extent / n
    unit = _UNITS.get(_text(attrs["Unit"]).strip()) if "Unit" in attrs else None
    return scale, (dict.fromkeys(scale, unit) if unit else {})


SOURCES.register("hdf5")(Hdf5Source)
SOURCES.register("imaris")(ImarisSource)
