"""BigDataViewer HDF5, N5 and OME-Zarr: light-sheet acquisitions as BigStitcher, Multiview
Reconstruction and Fiji's "Export Current Image as XML/HDF5" save them, an XML project
(``dataset.xml``) beside an HDF5 file (``dataset.h5``) of views, each a pyramid of
``cells`` arrays, beside an N5 directory (``dataset.n5``, BigStitcher's "Resave as N5")
of views ``setup<s>/timepoint<t>/s<level>``, or beside a zarr store (``dataset.ome.zarr``,
BigStitcher's and BigStitcher-Spark's OME-Zarr, image loader ``bdv.multimg.zarr``) of
OME-Zarr images, each view one of them or a channel and time point of one (the XML's
``zgroup`` elements say which).

A view setup is one channel of one tile, angle and illumination; the setups of one tile,
angle and illumination (a fused volume's channels) are one image, its channels in their
``channel`` order. An acquisition of several tiles or angles gives an image each (fuse
them first, BigStitcher's "Fuse", for one volume). Voxel sizes come from the XML, and
an image's origin from its registration where that only scales and shifts it. N5 and
OME-Zarr projects are read from object stores too (the XML and its store at URLs, as
BigStitcher-Spark keeps them); HDF5 from local or mounted paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import numpy as np

from raysegment import storage
from raysegment.data.hdf5 import Hdf5Channels, _file, _filters_readable
from raysegment.data.sources import (
    _UNITS,
    SOURCES,
    ImageInfo,
    ImageSource,
    ZarrSource,
    image_stem,
    kvstore,
    open_tensorstore,
)
from raysegment.errors import InputImageError

__all__ = ["BdvN5Source", "BdvSource", "BdvZarrSource", "bdv_project", "bdv_sources", "is_bdv"]

_SETUP = re.compile(r"s(\d+)")
_TIME = re.compile(r"t(\d{5})")
_N5_SETUP = re.compile(r"setup(\d+)")
_N5_TIME = re.compile(r"timepoint(\d+)")
T = TypeVar("T", int, str)
_LOADERS = {"bdv.hdf5": "hdf5", "bdv.n5": "n5", "bdv.multimg.zarr": "zarr"}
"""The image loaders of BigDataViewer projects read, and the XML element naming where
their images are."""
_PLACES = {"hdf5": "HDF5 file", "n5": "N5 directory", "zarr": "zarr store"}


@dataclass(frozen=True)
class _ZarrView:
    """A view of a zarr project (a ``zgroup``): an OME-Zarr image under the store, and
    which channel and time point of it (its ``indicies``: channel, then time, as
    BigStitcher writes them; none for an image of one of each)."""

    path: str
    indices: tuple[int, ...] = ()


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


@dataclass(frozen=True)
class _Project:
    """A BigDataViewer project: its image loader (``hdf5``, ``n5`` or ``zarr``), where its
    views are (the HDF5 file, the N5 directory, the zarr store), the setups' XML, of a
    zarr project each view by (setup, time point), each view's registration (its
    transforms composed, 4 x 4: pixel to world coordinates), and its images' setups
    (channels in order, found by ``_groups``)."""

    kind: str
    where: str
    setups: dict[int, _Setup] = field(default_factory=dict)
    views: dict[tuple[int, int], _ZarrView] = field(default_factory=dict)
    registrations: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    groups: list[tuple[int, ...]] = field(default_factory=list)

    def origin(self, setup: int, time: int, factor: Sequence[float]) -> dict[str, float]:
        """Where the view of ``setup`` at ``time`` places its first pixel at a level of
        ``factor`` (x, y, z), in the units of its voxel size: its registration's shift,
        where the registration only scales and shifts (a calibration and stitching's
        translations; a reduced level's first pixel lies (factor - 1) / 2 full-resolution
        pixels in, as BigDataViewer's levels do); {} where it rotates or shears (not
        applied: fuse the views first), or where the XML has none."""
        model, voxel = self.registrations.get((setup, time)), self.setups[setup].voxel
        if model is None or voxel is None:
            return {}
        linear, diagonal = model[:3, :3], np.diag(model[:3, :3])
        if np.any(diagonal <= 0) or np.abs(linear - np.diag(diagonal)).max() > 1e-9 * max(diagonal):
            return {}
        unit = np.asarray(voxel) / diagonal  # a world unit in physical units, per axis
        if not np.allclose(unit, unit[0], rtol=1e-6):
            return {}
        at = (model[:3, 3] + diagonal * (np.asarray(factor, float) - 1) / 2) * unit[0]
        return {a: float(o) for a, o in zip("xyz", at, strict=True) if abs(o) > 1e-9}


def _project(xml: str) -> _Project:
    """The image loader an XML project names (``hdf5``, ``n5`` or ``zarr``), where its
    images are (the HDF5 file, the N5 directory, the zarr store), its view setups, of a
    zarr project its views, and its views' registrations."""
    try:
        root = ET.fromstring(storage.read_bytes(xml))
    except (ET.ParseError, OSError) as e:
        raise InputImageError(f"{xml}: not a readable BigDataViewer XML ({e})") from e
    loader = root.find("SequenceDescription/ImageLoader")
    found = loader.get("format", "") if loader is not None else "none"
    kind = next((k for f, k in _LOADERS.items() if found.startswith(f)), None)
    node = loader.find(kind) if loader is not None and kind else None
    if loader is None or kind is None or node is None:
        raise InputImageError(
            f"{xml}: a project whose images are not BigDataViewer HDF5, N5 or OME-Zarr "
            f"(image loader {found}); resave it as one of them, or give its images' own files"
        )
    where = (node.text or "").strip()
    if node.get("type", "relative") == "relative":
        where = _beside(xml, (root.findtext("BasePath") or ".").strip(), where)
    try:
        setups = dict(_setup(node) for node in root.iter("ViewSetup"))
        views = _zarr_views(loader, xml) if kind == "zarr" else {}
        registrations = _registrations(root)
    except ValueError as e:
        raise InputImageError(
            f"{xml}: a view setup, time point or registration that is not a number ({e})"
        ) from e
    return _Project(kind, where, setups, views, registrations)


def _registrations(root: ET.Element) -> dict[tuple[int, int], np.ndarray]:
    """Each view's registration by (setup, time point): its ``ViewTransform`` affines
    (3 x 4, row by row) composed in the order listed, the first applied last."""
    placed = {}
    for node in root.iterfind("ViewRegistrations/ViewRegistration"):
        model = np.eye(4)
        for transform in node.iterfind("ViewTransform"):
            step = np.eye(4)
            step[:3] = np.asarray((transform.findtext("affine") or "").split(), float).reshape(3, 4)
            model = model @ step
        placed[int(node.get("setup", "")), int(node.get("timepoint", ""))] = model
    return placed


def _zarr_views(loader: ET.Element, xml: str) -> dict[tuple[int, int], _ZarrView]:
    """The views of a zarr project's image loader by (setup, time point): its ``zgroup``
    elements, as BigStitcher writes them (``setup``, ``tp``, ``path`` and ``indicies``
    attributes) or as BigDataViewer's first OME-Zarr loader did (``timepoint``, and the
    path as a ``path`` element)."""
    views = {}
    for node in loader.iterfind("zgroups/zgroup"):
        time = node.get("tp", node.get("timepoint"))
        path = (node.get("path") or node.findtext("path") or "").strip()
        if time is None or not path:
            given = ET.tostring(node, encoding="unicode").strip()
            raise InputImageError(f"{xml}: a zgroup without its time point or path: {given}")
        indices = (node.get("indicies") or "").strip("[] ").replace(",", " ").split()
        views[int(node.get("setup", "")), int(time)] = _ZarrView(path, tuple(map(int, indices)))
    return views


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


def _beside(xml: str, *names: str) -> str:
    """``names`` (relative paths) from the folder of ``xml`` (a path or a URL), normalized."""
    if storage.is_url(xml):
        scheme, rest = xml.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), *names))}"
    return os.path.normpath(os.path.join(os.path.dirname(xml), *names))


def _xml_of(path: str) -> str:
    """The XML project of ``path``: itself, or the XML beside an HDF5 file, N5 directory or
    zarr store of the same stem (``dataset.h5``, ``dataset.n5``, ``dataset.ome.zarr`` ->
    ``dataset.xml``)."""
    if path.lower().endswith(".xml"):
        return path
    return _beside(path.rstrip("/"), image_stem(path) + ".xml")


def _is_file(location: str) -> bool:
    return storage.exists(location) if storage.is_url(location) else os.path.isfile(location)


def _same(a: str, b: str) -> bool:
    """Whether the paths (or URLs) ``a`` and ``b`` name one file or directory."""
    if storage.is_url(a) or storage.is_url(b):
        return storage.resolve(a) == storage.resolve(b)
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def _groups(path: str) -> _Project:
    """The project of ``path`` (an XML project, an HDF5 file, or an N5 directory or zarr
    store with its project beside it): an HDF5 file of another project's, or of none,
    is a project of its own setups."""
    xml = _xml_of(path)
    project = _Project("hdf5", path)
    if _is_file(xml):
        project = _project(xml)
        if not path.lower().endswith(".xml") and not _same(project.where, path):
            project = _Project("hdf5", path)  # a project of another file
    kind, where = project.kind, project.where
    _reachable(kind, where, xml)
    if kind == "hdf5":
        with _file(where) as f:
            present = _setup_ids(f)
    elif kind == "n5":
        present = _n5_setup_ids(where, xml)
    else:
        present = sorted({s for s, _ in project.views})
    described = project.setups
    setups = [described.get(i, _Setup(i, view=(("setup", str(i)),))) for i in present]
    alike: dict[tuple[tuple[str, str], ...], list[_Setup]] = {}
    for setup in setups:
        alike.setdefault(setup.view, []).append(setup)
    groups = [
        tuple(s.id for s in sorted(v, key=lambda s: (s.channel, s.id))) for v in alike.values()
    ]
    if not groups:
        raise InputImageError(f"{xml}: a project without views (its <zgroups> lists none)")
    return replace(project, setups={s.id: s for s in setups}, groups=groups)


def _reachable(kind: str, where: str, xml: str) -> None:
    """Refuse a project whose HDF5 file is at a URL (N5 and zarr are read from object
    stores too), or whose local N5 directory or zarr store is missing."""
    place = _PLACES[kind]
    if kind == "hdf5" and storage.is_url(where):
        raise InputImageError(
            f"{xml}: its {place} is at {where}; HDF5 is read from local or mounted paths: "
            f"copy or mount the project, or resave it as N5 or OME-Zarr"
        )
    if kind != "hdf5" and not storage.is_url(where) and not os.path.isdir(where):
        raise InputImageError(
            f"{xml}: its {place} {where} does not exist; keep the project beside it, or fix "
            f"the XML's <{kind}> path"
        )


def _n5_setup_ids(n5: str, xml: str) -> list[int]:
    """The view setups of a BigDataViewer N5 directory: ``setup0``, ``setup1``, ... (each
    with its ``attributes.json``)."""
    ids = sorted(
        int(m.group(1))
        for m in map(_N5_SETUP.fullmatch, storage.listdir(n5))
        if m and storage.exists(storage.join(n5, m.group(0), "attributes.json"))
    )
    if not ids:
        raise InputImageError(f"{n5}: no view setups (setup0, setup1, ...) in this N5 of {xml}")
    return ids


def bdv_project(path: str) -> bool:
    """Whether ``path`` is a BigDataViewer N5 directory or zarr store (``dataset.n5``,
    ``dataset.ome.zarr``; local or in an object store) whose XML project (``dataset.xml``)
    is beside it, read through that project."""
    stem = path.rstrip("/")
    if not stem.lower().endswith((".n5", ".zarr")) or not _is_file(xml := _xml_of(stem)):
        return False
    with contextlib.suppress(InputImageError):
        project = _project(xml)
        return project.kind != "hdf5" and _same(project.where, stem)
    return False


def bdv_sources(path: str, axes: str | None = None, level: int = 0) -> list[ImageSource]:
    """Every image of a BigDataViewer project (``dataset.xml``), HDF5 file, or N5 directory or
    zarr store (its project beside it): one per tile, angle and illumination, named after
    the file (``<stem>_s<i>`` where there are several)."""
    project = _groups(path)
    groups = project.groups
    stem = image_stem(path[:-4] if path.lower().endswith(".xml") else path)
    cls: type[ImageSource] = {"n5": BdvN5Source, "zarr": BdvZarrSource}.get(project.kind, BdvSource)
    _READ[path] = project  # its images inspect it as read here, not each reading the XML
    try:
        if len(groups) == 1:
            return [cls(path, axes, name=stem, level=level)]
        series = range(len(groups))
        return [cls(path, axes, series=i, name=f"{stem}_s{i}", level=level) for i in series]
    finally:
        _READ.pop(path, None)


_READ: dict[str, _Project] = {}
"""The projects ``bdv_sources`` is making images of, by path: a project of a thousand
tiles is read once, not once per tile."""


def _project_of(path: str) -> _Project:
    """The project of ``path``: as ``bdv_sources`` read it, else read now (``_groups``)."""
    return _READ.get(path) or _groups(path)


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
    project: _Project,
    image: tuple[int, ...],
    factor: Sequence[float],
    times: Sequence[int],
    shapes: set[tuple[int, int, int]],
    dtype: np.dtype[Any],
) -> ImageInfo:
    """The image of the setups ``image`` (its channels) at a level, over the time points
    ``times``: ``shapes``, the z, y, x size of each channel's view, must agree; the pixel
    size is the XML's voxel size times the level's ``factor`` (x, y, z); the origin, its
    first view's registration's (``_Project.origin``)."""
    setups = project.setups
    if len(shapes) > 1:
        raise InputImageError(
            f"{where}: its channels' sizes differ ({sorted(shapes)}); give the XML project, "
            f"whose setups say which channels go together"
        )
    first = setups[image[0]]
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if first.voxel is not None:
        scale = {a: first.voxel[i] * float(factor[i]) for i, a in enumerate("xyz")}
        units = dict.fromkeys(scale, first.unit) if first.unit else {}
    names = tuple(f"channel {setups[s].channel}" for s in image)
    origin = project.origin(image[0], times[0], factor)
    shape = (len(times), len(image), *shapes.pop())
    return ImageInfo(shape, dtype, scale, units, names, origin)


class BdvSource(Hdf5Channels):
    """The image of one tile, angle and illumination of a BigDataViewer HDF5 file
    (``series``: which, where there are several): its setups as channels, its time points
    (``t00000``, ...), every pyramid level for ``input_level`` (``resolutions`` gives the
    pixel size's factors). 16-bit data, stored signed (Java has no unsigned type) as
    BigDataViewer writes them, read as the unsigned values they are."""

    kind = "bdv"

    def _inspect(self) -> ImageInfo:
        project = _project_of(self.path)
        self.file = h5 = project.where
        self.setups = project.groups[self.series or 0]
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
        times = [int(t[1:]) for t in self.times]  # t00000 -> 0
        factor = factors[self.level]
        return _image_info(self.where, project, self.setups, factor, times, shapes, dtype)

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
        project = _project_of(self.path)
        self.root = project.where
        self.setups = project.groups[self.series or 0]
        attrs = self._json(f"setup{self.setups[0]}/attributes.json")
        factors = np.asarray(attrs.get("downsamplingFactors", [[1, 1, 1]]), dtype=np.float64)
        self.levels = len(factors)
        if self.level >= self.levels:
            raise self._no_level(self.levels)
        held = [
            {
                int(m.group(1))
                for m in map(
                    _N5_TIME.fullmatch, storage.listdir(storage.join(self.root, f"setup{s}"))
                )
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
        factor = factors[self.level]
        return _image_info(self.where, project, self.setups, factor, self.times, shapes, dtype)

    def _json(self, key: str) -> dict[str, Any]:
        try:
            return cast(
                dict[str, Any], json.loads(storage.read_bytes(storage.join(self.root, key)))
            )
        except (OSError, ValueError) as e:
            raise InputImageError(f"{self.where}: cannot read {key} of {self.root} ({e})") from e

    def _dataset(self, t: int, setup: int) -> str:
        return f"setup{setup}/timepoint{self.times[t]}/s{self.level}"

    def _store(self, dataset: str) -> Any:
        """The view's N5 dataset opened through tensorstore."""
        where = storage.join(self.root, dataset)
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


class BdvZarrSource(ImageSource):
    """The image of one tile, angle and illumination of a BigDataViewer OME-Zarr project
    (image loader ``bdv.multimg.zarr``: BigStitcher's and BigStitcher-Spark's OME-Zarr):
    its setups as channels, each view an OME-Zarr image under the project's store (the
    XML's ``zgroup``: its path, and which channel and time point of a 4D / 5D image, as
    ``indicies``), read as ``ZarrSource`` reads OME-Zarr; its time points those every
    setup has a view at, its levels the views' ``datasets`` (their ``scale`` against the
    first's gives a level's factors), the voxel size from the XML."""

    kind = "bdv-zarr"

    def _inspect(self) -> ImageInfo:
        project = _project_of(self.path)
        self.setups = project.groups[self.series or 0]
        held = [{t for s, t in project.views if s == setup} for setup in self.setups]
        self.times = _common_times(self.where, self.setups, held, f"zgroups of {self.path}")
        self.views = {
            (t, c): project.views[setup, time]
            for t, time in enumerate(self.times)
            for c, setup in enumerate(self.setups)
        }
        self.root = project.where
        full = self._view(0, 0, 0)[0]
        self.levels = full.levels
        if self.level >= self.levels:
            raise self._no_level(self.levels)
        shapes = set()
        for c in range(len(self.setups)):
            view = self._view(0, c)[0]
            shapes.add(view.info.shape[2:])
            dtype = view.info.dtype
        at, size = view.info, full.info.shape
        factor = [
            at.scale[a] / full.info.scale[a]
            if at.scale.get(a) and full.info.scale.get(a)
            else round(size[i] / at.shape[i])
            for a, i in (("x", 4), ("y", 3), ("z", 2))
        ]
        return _image_info(self.where, project, self.setups, factor, self.times, shapes, dtype)

    def _view(self, t: int, c: int, level: int | None = None) -> tuple[ZarrSource, int, int]:
        """Channel ``c`` at time point ``t`` (this image's): the OME-Zarr image holding it,
        at ``level`` (this source's by default), and its time point and channel there;
        opened once per process."""
        level = self.level if level is None else level
        opened = self.handle
        if (t, c, level) in opened:
            return cast(tuple[ZarrSource, int, int], opened[t, c, level])
        view = self.views[t, c]
        where = f"{self.path}: the view of setup {self.setups[c]} at time point {self.times[t]}"
        if (view.path, level) not in opened:  # one image may hold every view (5D)
            try:
                opened[view.path, level] = ZarrSource(
                    storage.join(self.root, view.path), level=level
                )
            except InputImageError as e:
                raise InputImageError(f"{where} ({view.path}): {e}") from e
        source = cast(ZarrSource, opened[view.path, level])
        sizes = dict(zip("tc", source.info.shape[:2], strict=True))
        # Indices past the image's axes (a 3D image's "0 0") pick nothing, as in BigStitcher.
        present = [a for a in "ct" if a in (source.axes or "")]
        given = dict(zip(present, view.indices, strict=False))
        for axis, size in sizes.items():
            index = given.get(axis, 0)
            if not 0 <= index < size or (size > 1 and axis not in given):
                name = {"c": "channels", "t": "time points"}[axis]
                raise InputImageError(
                    f"{where}: {view.path} holds {size} {name}, and its zgroup's indicies "
                    f"{list(view.indices)} do not pick one (channel, then time point); fix "
                    f"the XML's zgroup"
                )
        opened[t, c, level] = source, given.get("t", 0), given.get("c", 0)
        return cast(tuple[ZarrSource, int, int], opened[t, c, level])

    def _open(self) -> Any:
        return {}  # each view's image and indices, opened on its first read in this process

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        out = np.empty((len(channels), *(b - a for a, b in region)), self.info.dtype)
        for i, c in enumerate(channels):
            source, time, channel = self._view(t, c)
            out[i] = source.read(time, (channel,), region)[0]
        return out


SOURCES.register("bdv")(BdvSource)
SOURCES.register("bdv-n5")(BdvN5Source)
SOURCES.register("bdv-zarr")(BdvZarrSource)
