"""BigDataViewer HDF5: light-sheet acquisitions as BigStitcher, Multiview Reconstruction
and Fiji's "Export Current Image as XML/HDF5" save them, an XML project (``dataset.xml``)
beside an HDF5 file (``dataset.h5``) of views, each a pyramid of ``cells`` arrays.

A view setup is one channel of one tile, angle and illumination; the setups of one tile,
angle and illumination (a fused volume's channels) are one image, its channels in their
``channel`` order. An acquisition of several tiles or angles gives an image each (fuse
them first, BigStitcher's "Fuse", for one volume). Voxel sizes come from the XML.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysegment.data.hdf5 import Hdf5Channels, _file, _filters_readable
from raysegment.data.sources import _UNITS, SOURCES, ImageInfo, ImageSource, image_stem
from raysegment.errors import InputImageError

__all__ = ["BdvSource", "bdv_sources", "is_bdv"]

_SETUP = re.compile(r"s(\d+)")
_TIME = re.compile(r"t(\d{5})")


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


def _project(xml: str) -> tuple[str, dict[int, _Setup]]:
    """The HDF5 file an XML project names, and its view setups."""
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputImageError(f"{xml}: not a readable BigDataViewer XML ({e})") from e
    loader = root.find("SequenceDescription/ImageLoader")
    hdf5 = loader.find("hdf5") if loader is not None else None
    if loader is None or not loader.get("format", "").startswith("bdv.hdf5") or hdf5 is None:
        found = loader.get("format") if loader is not None else "none"
        raise InputImageError(
            f"{xml}: a project whose images are not in BigDataViewer HDF5 (image loader "
            f"{found}); export it as XML/HDF5, or give its images' own files"
        )
    where = (hdf5.text or "").strip()
    if hdf5.get("type", "relative") == "relative":
        base = root.find("BasePath")
        folder = os.path.join(
            os.path.dirname(xml), (base.text or ".").strip() if base is not None else "."
        )
        where = os.path.normpath(os.path.join(folder, where))
    try:
        setups = dict(_setup(node) for node in root.iter("ViewSetup"))
    except ValueError as e:
        raise InputImageError(f"{xml}: a view setup that is not a number ({e})") from e
    return where, setups


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


def _groups(path: str) -> tuple[str, list[tuple[int, ...]], dict[int, _Setup]]:
    """The HDF5 file of ``path`` (an XML project or the HDF5 file, its project beside it
    where there is one), its images' setups (channels in order), and the setups' XML."""
    xml = path if path.lower().endswith(".xml") else os.path.splitext(path)[0] + ".xml"
    h5, described = path, dict[int, _Setup]()
    if os.path.isfile(xml):
        h5, described = _project(xml)
        if not path.lower().endswith(".xml") and not (
            os.path.isfile(h5) and os.path.samefile(h5, path)
        ):
            h5, described = path, {}  # a project of another file
    with _file(h5) as f:
        present = _setup_ids(f)
    setups = [described.get(i, _Setup(i, view=(("setup", str(i)),))) for i in present]
    views: dict[tuple[tuple[str, str], ...], list[_Setup]] = {}
    for setup in setups:
        views.setdefault(setup.view, []).append(setup)
    groups = [
        tuple(s.id for s in sorted(v, key=lambda s: (s.channel, s.id))) for v in views.values()
    ]
    return h5, groups, {s.id: s for s in setups}


def bdv_sources(path: str, axes: str | None = None, level: int = 0) -> list[ImageSource]:
    """Every image of a BigDataViewer project (``dataset.xml``) or HDF5 file: one per tile,
    angle and illumination, named after the file (``<stem>_s<i>`` where there are
    several)."""
    _, groups, _ = _groups(path)
    stem = image_stem(path[:-4] if path.lower().endswith(".xml") else path)
    if len(groups) == 1:
        return [BdvSource(path, axes, name=stem, level=level)]
    return [
        BdvSource(path, axes, series=i, name=f"{stem}_s{i}", level=level)
        for i in range(len(groups))
    ]


class BdvSource(Hdf5Channels):
    """The image of one tile, angle and illumination of a BigDataViewer HDF5 file
    (``series``: which, where there are several): its setups as channels, its time points
    (``t00000``, ...), every pyramid level for ``input_level`` (``resolutions`` gives the
    pixel size's factors). 16-bit data, stored signed (Java has no unsigned type) as
    BigDataViewer writes them, read as the unsigned values they are."""

    kind = "bdv"

    def _inspect(self) -> ImageInfo:
        h5, groups, setups = _groups(self.path)
        self.file = h5
        self.setups = groups[self.series or 0]
        first = setups[self.setups[0]]
        with _file(h5) as f:
            factors = np.asarray(f[f"s{first.id:02d}/resolutions"], dtype=np.float64)
            self.levels = len(factors)
            if self.level >= self.levels:
                raise self._no_level(self.levels)
            self.times = sorted(k for k in f if _TIME.fullmatch(k))
            shapes = set()
            for setup in self.setups:
                cells = f[self._cells(self.times[0], setup)]
                _filters_readable(cells, self.where)
                shapes.add(cells.shape)
                stored = cells.dtype
            if len(shapes) > 1:
                raise InputImageError(
                    f"{self.where}: its channels' sizes differ ({sorted(shapes)}); give the XML "
                    f"project, whose setups say which channels go together"
                )
        dtype = np.dtype(np.uint16) if stored == np.int16 else np.dtype(stored)
        scale: dict[str, float] = {}
        units: dict[str, str] = {}
        if first.voxel is not None:
            step = factors[self.level]
            scale = {a: first.voxel[i] * step[i] for i, a in enumerate("xyz")}
            units = dict.fromkeys(scale, first.unit) if first.unit else {}
        size = shapes.pop()
        names = tuple(f"channel {setups[s].channel}" for s in self.setups)
        return ImageInfo((len(self.times), len(self.setups), *size), dtype, scale, units, names)

    def _cells(self, time: str, setup: int) -> str:
        return f"{time}/s{setup:02d}/{self.level}/cells"

    def _hdf5_file(self) -> str:
        return self.file

    def _dataset(self, f: Any, t: int, c: int) -> Any:
        return f[self._cells(self.times[t], self.setups[c])]


SOURCES.register("bdv")(BdvSource)
