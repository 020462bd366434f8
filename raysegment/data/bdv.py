"""BigDataViewer HDF5 and N5: light-sheet acquisitions as BigStitcher, Multiview
Reconstruction and Fiji's "Export Current Image as XML/HDF5" save them, an XML project
(``dataset.xml``) beside an HDF5 file (``dataset.h5``) of views, each a pyramid of
``cells`` arrays, or beside an N5 directory (``dataset.n5``, BigStitcher's "Resave as
N5") of views ``setup<s>/timepoint<t>/s<level>``.

A view setup is one channel of one tile, angle and illumination; the setups of one tile,
angle and illumination (a fused volume's channels) are one image, its channels in their
``channel`` order. An acquisition of several tiles or angles gives an image each (fuse
them first, BigStitcher's "Fuse", for one volume). Voxel sizes come from the XML.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from raysegment import storage
from raysegment.data.hdf5 import Hdf5Channels, _file, _filters_readable
from raysegment.data.sources import (
    _UNITS,
    SOURCES,
    ImageInfo,
    ImageSource,
    image_stem,
    kvstore,
    open_tensorstore,
)
from raysegment.errors import InputImageError

__all__ = ["BdvN5Source", "BdvSource", "bdv_n5_project", "bdv_sources", "is_bdv"]

_SETUP = re.compile(r"s(\d+)")
_TIME = re.compile(r"t(\d{5})")
_N5_SETUP = re.compile(r"setup(\d+)")
_N5_TIME = re.compile(r"timepoint(\d+)")
T = TypeVar("T", int, str)
_LOADERS = ("hdf5", "n5")
"""The image loaders of BigDataViewer projects read (``bdv.hdf5``, ``bdv.n5``)."""


@dataclass(frozen=True)
class _Setup:
    """A view setup as the XML describes it."""

    id: int
    voxel: tuple[float, float, float] | None = None
    """Voxel size (x, y, z)."""
    unit: str | None = None
    channel: int = 0
    view: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """Its other attributes (tile, angle, illumination): setups alike in them are one
    image's channels."""


def _setup_ids(f: Any) -> list[int]:
    """The view setups of the open HDF5 file ``f``: its groups ``s00``, ``s01``, ... that
    hold ``resolutions`` (a dataset of such a name is never read through)."""
    import h5py

    ids = []
    for key in f:
        match = _SETUP.fullmatch(key)
        if match and isinstance(f.get(key), h5py.Group) and "resolutions" in f[key]:
            ids.append(int(match.group(1)))
    return sorted(ids)


def is_bdv(f: Any) -> bool:
    """Whether the open HDF5 file ``f`` has BigDataViewer's layout."""
    return bool(_setup_ids(f)) and any(_TIME.fullmatch(k) for k in f)


def _project(xml: str) -> tuple[str, str, dict[int, _Setup]]:
    """The image loader an XML project names (``hdf5`` or ``n5``), where its images are
    (the HDF5 file, the N5 directory), and its view setups."""
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputImageError(f"{xml}: not a readable BigDataViewer XML ({e})") from e
    loader = root.find("SequenceDescription/ImageLoader")
    found = loader.get("format", "") if loader is not None else "none"
    kind = next((k for k in _LOADERS if found.startswith(f"bdv.{k}")), None)
    node = loader.find(kind) if loader is not None and kind else None
    if kind is None or node is None:
        raise InputImageError(
            f"{xml}: a project whose images are neither BigDataViewer HDF5 nor N5 (image "
            f"loader {found}); resave it as HDF5 or N5, or give its images' own files"
        )
    where = (node.text or "").strip()
    if node.get("type", "relative") == "relative":
        base = root.find("BasePath")
        folder = os.path.join(
            os.path.dirname(xml), (base.text or ".").strip() if base is not None else "."
        )
        where = os.path.normpath(os.path.join(folder, where))
    try:
        setups = dict(_setup(node) for node in root.iter("ViewSetup"))
    except ValueError as e:
        raise InputImageError(f"{xml}: a view setup that is not a number ({e})") from e
    return kind, where, setups


def _setup(node: ET.Element) -> tuple[int, _Setup]:
    """A ``ViewSetup`` element's id and setup."""
    setup_id = int(node.findtext("id", "0"))
    sizes = (node.findtext("voxelSize/size") or "").split()
    voxel = (float(sizes[0]), float(sizes[1]), float(sizes[2])) if len(sizes) == 3 else None
    unit = _UNITS.get((node.findtext("voxelSize/unit") or "").strip())
    attributes = node.find("attributes")
    given = {a.tag: (a.text or "").strip() for a in attributes} if attributes is not None else {}
    channel = int(given.pop("channel", "0") or 0)
    return setup_id, _Setup(setup_id, voxel, unit, channel, tuple(sorted(given.items())))


def _groups(path: str) -> tuple[str, str, list[tuple[int, ...]], dict[int, _Setup]]:
    """The image loader of ``path`` (``hdf5`` or ``n5``: an XML project, an HDF5 file, or
    an N5 directory, the last two with their project beside them where there is one),
    where its views are (the HDF5 file, the N5 directory), its images' setups (channels
    in order), and the setups' XML."""
    xml = path if path.lower().endswith(".xml") else os.path.splitext(path)[0] + ".xml"
    kind, where, described = "hdf5", path, dict[int, _Setup]()
    if os.path.isfile(xml):
        kind, where, described = _project(xml)
        if not path.lower().endswith(".xml") and not (
            os.path.exists(where) and os.path.samefile(where, path)
        ):
            kind, where, described = "hdf5", path, {}  # a project of another file
    if kind == "n5":
        present = _n5_setup_ids(where, xml)
    else:
        with _file(where) as f:
            present = _setup_ids(f)
    setups = [described.get(i, _Setup(i, view=(("setup", str(i)),))) for i in present]
    views: dict[tuple[tuple[str, str], ...], list[_Setup]] = {}
    for setup in setups:
        views.setdefault(setup.view, []).append(setup)
    groups = [
        tuple(s.id for s in sorted(v, key=lambda s: (s.channel, s.id))) for v in views.values()
    ]
    return kind, where, groups, {s.id: s for s in setups}


def _n5_setup_ids(n5: str, xml: str) -> list[int]:
    """The view setups of a BigDataViewer N5 directory: ``setup0``, ``setup1``, ... (each
    with its ``attributes.json``)."""
    if storage.is_url(n5):
        raise InputImageError(
            f"{xml}: its N5 is at {n5}; BigDataViewer projects are read from local or mounted "
            f"paths: copy or mount the N5, or give one view's N5 group at its URL "
            f"(<n5>/setup0/timepoint0)"
        )
    if not os.path.isdir(n5):
        raise InputImageError(
            f"{xml}: its N5 directory {n5} does not exist; keep the project beside its N5, "
            f"or fix the XML's <n5> path"
        )
    ids = sorted(
        int(m.group(1))
        for m in map(_N5_SETUP.fullmatch, os.listdir(n5))
        if m and os.path.isfile(os.path.join(n5, m.group(0), "attributes.json"))
    )
    if not ids:
        raise InputImageError(f"{n5}: no view setups (setup0, setup1, ...) in this N5 of {xml}")
    return ids


def bdv_n5_project(path: str) -> bool:
    """Whether ``path`` is a local BigDataViewer N5 directory (``dataset.n5``) whose XML
    project (``dataset.xml``) is beside it, read through that project."""
    stem = path.rstrip("/")
    if not stem.lower().endswith(".n5") or not os.path.isdir(stem):
        return False
    xml = stem[:-3] + ".xml"
    if not os.path.isfile(xml):
        return False
    with contextlib.suppress(InputImageError):
        kind, where, _ = _project(xml)
        return kind == "n5" and os.path.isdir(where) and os.path.samefile(where, stem)
    return False


def bdv_sources(path: str, axes: str | None = None, level: int = 0) -> list[ImageSource]:
    """Every image of a BigDataViewer project (``dataset.xml``), HDF5 file or N5 directory
    (its project beside it): one per tile, angle and illumination, named after the file
    (``<stem>_s<i>`` where there are several)."""
    kind, _, groups, _ = _groups(path)
    stem = image_stem(path[:-4] if path.lower().endswith(".xml") else path)
    cls: type[ImageSource] = BdvN5Source if kind == "n5" else BdvSource
    if len(groups) == 1:
        return [cls(path, axes, name=stem, level=level)]
    return [cls(path, axes, series=i, name=f"{stem}_s{i}", level=level) for i in range(len(groups))]


def _common_times(where: str, image: tuple[int, ...], held: list[set[T]], layout: str) -> list[T]:
    """The time points every setup of ``image`` holds a view of (``held``: each setup's;
    a project may miss some views), sorted; refused where there is none."""
    times = sorted(set.intersection(*held))
    if not times:
        raise InputImageError(
            f"{where}: its setups {list(image)} have no time point in common ({layout})"
        )
    return times


def _image_info(
    where: str,
    image: tuple[int, ...],
    setups: dict[int, _Setup],
    factors: np.ndarray,
    level: int,
    times: int,
    shapes: set[tuple[int, int, int]],
    dtype: np.dtype[Any],
) -> ImageInfo:
    """The image of the setups ``image`` (its channels) at ``level``: ``shapes``, the z, y,
    x size of each channel's view, must agree; the pixel size is the XML's voxel size
    times the level's ``factors`` (x, y, z)."""
    if len(shapes) > 1:
        raise InputImageError(
            f"{where}: its channels' sizes differ ({sorted(shapes)}); give the XML project, "
            f"whose setups say which channels go together"
        )
    first = setups[image[0]]
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if first.voxel is not None:
        scale = {a: first.voxel[i] * factors[level][i] for i, a in enumerate("xyz")}
        units = dict.fromkeys(scale, first.unit) if first.unit else {}
    names = tuple(f"channel {setups[s].channel}" for s in image)
    return ImageInfo((times, len(image), *shapes.pop()), dtype, scale, units, names)


class BdvSource(Hdf5Channels):
    """The image of one tile, angle and illumination of a BigDataViewer HDF5 file
    (``series``: which, where there are several): its setups as channels, its time points
    (``t00000``, ...), every pyramid level for ``input_level`` (``resolutions`` gives the
    pixel size's factors). 16-bit data, stored signed (Java has no unsigned type) as
    BigDataViewer writes them, read as the unsigned values they are."""

    kind = "bdv"

    def _inspect(self) -> ImageInfo:
        _, h5, groups, setups = _groups(self.path)
        self.file = h5
        self.setups = groups[self.series or 0]
        with _file(h5) as f:
            factors = np.asarray(f[f"s{self.setups[0]:02d}/resolutions"], dtype=np.float64)
            self.levels = len(factors)
            if self.level >= self.levels:
                raise self._no_level(self.levels)
            held = [
                {k for k in f if _TIME.fullmatch(k) and f"{k}/s{s:02d}" in f} for s in self.setups
            ]
            self.times = _common_times(self.where, self.setups, held, f"t<t>/s<s> in {h5}")
            shapes = set()
            for setup in self.setups:
                cells = f[self._cells(self.times[0], setup)]
                _filters_readable(cells, self.where)
                shapes.add(cells.shape)
                stored = cells.dtype
        dtype = np.dtype(np.uint16) if stored == np.int16 else np.dtype(stored)
        return _image_info(
            self.where, self.setups, setups, factors, self.level, len(self.times), shapes, dtype
        )

    def _cells(self, time: str, setup: int) -> str:
        return f"{time}/s{setup:02d}/{self.level}/cells"

    def _hdf5_file(self) -> str:
        return self.file

    def _dataset(self, f: Any, t: int, c: int) -> Any:
        return f[self._cells(self.times[t], self.setups[c])]


class BdvN5Source(ImageSource):
    """The image of one tile, angle and illumination of a BigDataViewer N5 project
    (BigStitcher's "Resave as N5", BigStitcher-Spark): its setups as channels, each view
    ``setup<s>/timepoint<t>/s<level>`` an N5 dataset (x, y, z) read through tensorstore
    (``pip install 'raysegment[tensorstore]'``), its time points those of every setup, its
    levels the setups' ``downsamplingFactors``, the voxel size from the XML."""

    kind = "bdv-n5"

    def _inspect(self) -> ImageInfo:
        _, self.root, groups, setups = _groups(self.path)
        self.setups = groups[self.series or 0]
        attrs = self._json(f"setup{self.setups[0]}/attributes.json")
        factors = np.asarray(attrs.get("downsamplingFactors", [[1, 1, 1]]), dtype=np.float64)
        self.levels = len(factors)
        if self.level >= self.levels:
            raise self._no_level(self.levels)
        held = [
            {
                int(m.group(1))
                for m in map(_N5_TIME.fullmatch, os.listdir(os.path.join(self.root, f"setup{s}")))
                if m
            }
            for s in self.setups
        ]
        where = f"setup<s>/timepoint<t> in {self.root}"
        self.times = _common_times(self.where, self.setups, held, where)
        shapes = set()
        for setup in self.setups:
            store = self._store(self._dataset(0, setup))
            x, y, z = store.shape
            shapes.add((int(z), int(y), int(x)))
            dtype = np.dtype(store.dtype.numpy_dtype)
        return _image_info(
            self.where, self.setups, setups, factors, self.level, len(self.times), shapes, dtype
        )

    def _json(self, key: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.root, key)) as f:
                return cast(dict[str, Any], json.load(f))
        except (OSError, ValueError) as e:
            raise InputImageError(f"{self.where}: cannot read {key} of {self.root} ({e})") from e

    def _dataset(self, t: int, setup: int) -> str:
        return f"setup{setup}/timepoint{self.times[t]}/s{self.level}"

    def _store(self, dataset: str) -> Any:
        """The view's N5 dataset opened through tensorstore."""
        where = os.path.join(self.root, dataset)
        spec = {"driver": "n5", "kvstore": kvstore(where)}
        return open_tensorstore(spec, where, f"N5 dataset of {self.path}")

    def _open(self) -> Any:
        return {}  # each view's dataset, opened on its first read in this process

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = region
        out = np.empty((len(channels), z1 - z0, y1 - y0, x1 - x0), self.info.dtype)
        opened = self.handle
        for i, c in enumerate(channels):
            key = (t, c)
            if key not in opened:
                opened[key] = self._store(self._dataset(t, self.setups[c]))
            view = opened[key][x0:x1, y0:y1, z0:z1].read().result()
            out[i] = np.asarray(view).transpose(2, 1, 0)
        return out


SOURCES.register("bdv")(BdvSource)
SOURCES.register("bdv-n5")(BdvN5Source)
