"""GeoJSON polygons (QuPath's annotation exports, GIS tools): the regions of an inference
mask (``infer.mask.geojson_mask``) and training labels (``GeoJsonLabels``).

Coordinates are the pixel coordinates of an image's full resolution, pixel (0, 0)
covering [0, 1) x [0, 1) (QuPath's); a pixel is inside a polygon when its centre is.
Polygons and MultiPolygons count, alone or as features, with their holes; points and
lines do not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.data.sources import ImageInfo, ImageSource
from raysegment.errors import InputImageError

__all__ = [
    "GEOJSON_SUFFIXES",
    "IGNORED",
    "IGNORE_CLASS",
    "GeoJsonLabels",
    "box",
    "is_geojson",
    "points",
    "polygons",
    "rasterize",
    "read_geojson",
]

GEOJSON_SUFFIXES = (".geojson", ".json")
"""Files of these suffixes are read as GeoJSON polygons."""


def is_geojson(path: str) -> bool:
    return path.lower().endswith(GEOJSON_SUFFIXES)


def read_geojson(path: str, key: str) -> Any:
    """The GeoJSON document at ``path``, given as ``key=`` (for the error)."""
    try:
        return json.loads(storage.read_bytes(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputImageError(f"{key}={path}: not a GeoJSON file ({e})") from e


def polygons(node: Any, name: str | None = None) -> Iterator[tuple[list[Any], str | None]]:
    """Every polygon (its rings: the outer one, then its holes) of a GeoJSON object, of any
    nesting, with the classification of the feature it belongs to (QuPath's
    ``classification.name``), None where it has none."""
    if isinstance(node, list):
        for item in node:
            yield from polygons(item, name)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "Polygon":
        yield node.get("coordinates") or [], name
    elif kind == "MultiPolygon":
        for rings in node.get("coordinates") or []:
            yield rings, name
    elif kind == "GeometryCollection":
        yield from polygons(node.get("geometries"), name)
    elif kind == "Feature":
        classification = (node.get("properties") or {}).get("classification")
        if isinstance(classification, dict):
            classification = classification.get("name")
        label = str(classification) if classification else None
        yield from polygons(node.get("geometry"), label)
    elif kind == "FeatureCollection":
        yield from polygons(node.get("features"), name)


def points(ring: Any) -> np.ndarray:
    """A ring's positions as (n, 2) x, y: a third coordinate (a GIS tool's altitude) is
    dropped."""
    xy = np.asarray(ring, np.float64)
    return xy[:, :2] if xy.ndim == 2 else xy.reshape(-1, 2)


def box(rings: list[Any], scale: tuple[float, float]) -> tuple[float, float, float, float] | None:
    """A polygon's (top, left, bottom, right) at a level of pixels ``scale`` (y, x) times
    the full resolution's, a pixel wider on every side (every pixel whose centre it holds
    lies inside); None for a polygon without points."""
    outer = points(rings[0]) if rings else np.zeros((0, 2))
    if not len(outer):
        return None
    ys, xs = outer[:, 1] / scale[0], outer[:, 0] / scale[1]
    return ys.min() - 1, xs.min() - 1, ys.max() + 1, xs.max() + 1


def rasterize(
    rings: list[Any], scale: tuple[float, float], origin: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """Where a polygon (``rings``, in full-resolution pixels) covers a raster of ``shape``
    whose pixel (0, 0) is pixel ``origin`` of a level of pixels ``scale`` (y, x) times the
    full resolution's: inside its outer ring, outside its holes (bool)."""
    from skimage.draw import polygon as fill

    part = np.zeros(shape, bool)
    for i, ring in enumerate(rings):
        xy = points(ring)
        # Raster pixel j's centre is at full-resolution coordinate (origin + j + 1/2) * scale.
        rows = xy[:, 1] / scale[0] - 0.5 - origin[0]
        cols = xy[:, 0] / scale[1] - 0.5 - origin[1]
        rr, cc = fill(rows, cols, shape)
        part[rr, cc] = i == 0
    return part


IGNORE_CLASS = "Ignore*"
"""QuPath's class for regions to leave out: such polygons are not labelled."""
IGNORED = 65535
"""The label value of pixels not labelled, unless the training's ``ignore_index`` says."""
_ALL = -1
"""A polygon's channel: every channel (a polygon not labelled)."""


class GeoJsonLabels(ImageSource):
    """Training labels drawn from an image's GeoJSON annotations, region by region (a
    slide's are never drawn whole): a pixel takes the value of the last polygon covering
    it; where none does, 0, or ``ignore`` where the labels are ``sparse`` (only the
    annotations label). ``mode`` binary: every polygon is 1, or with ``class_names`` (one:
    the foreground's) its class's are 1 and the others' 0; multiclass: a polygon's
    classification is its index in ``class_names`` (0 the background's); multilabel:
    channel ``class_names.index(classification)`` is 1 where it lies, the others 0 (or as
    earlier polygons drew them). Polygons of QuPath's class ``Ignore*`` are ``ignore``
    unless ``class_names`` names it. Every plane of a volume takes the same polygons."""

    kind = "geojson"

    def __init__(
        self,
        path: str,
        image: ImageSource,
        mode: str,
        class_names: list[str] | None,
        ignore: int = IGNORED,
        sparse: bool = False,
    ) -> None:
        self.image_shape = image.info.shape
        self.scale = image.level_scale()
        self.mode = mode
        self.class_names = list(class_names or [])
        self.ignore = ignore
        self.sparse = sparse
        shapes = self._shapes(path)
        self.shapes = [(value, channel, rings) for value, channel, rings, _ in shapes]
        """(value, channel, rings) of each polygon, in the file's order."""
        self.boxes = np.array([box for *_, box in shapes], np.float64).reshape(-1, 4)
        """Each polygon's (top, left, bottom, right) in the image's pixels, a pixel wider:
        a region's polygons are found among a slide's thousands at once."""
        labelled = [i for i, (value, *_) in enumerate(self.shapes) if value != ignore]
        self.labelled = self.boxes[labelled]
        """The boxes of the polygons that label (not ``Ignore*``): patches centre on them."""
        super().__init__(path, name=image.name)

    def _shapes(self, path: str) -> list[tuple[int, int, list[Any], tuple[float, ...]]]:
        found = list(polygons(read_geojson(path, "labels")))
        if not found:
            raise InputImageError(
                f"{path}: no Polygon or MultiPolygon in it; give the labelled regions as "
                f"polygons (e.g. QuPath annotations exported as GeoJSON)"
            )
        shapes: list[tuple[int, int, list[Any], tuple[float, ...]]] = []
        for found_rings, name in found:
            # As arrays: a slide's thousands of outlines travel to the workers compactly.
            rings = [points(ring) for ring in found_rings]
            bounds = box(rings, self.scale)
            if bounds is not None:
                value, channel = self._value(path, name)
                shapes.append((value, channel, rings, bounds))
        return shapes

    def _value(self, path: str, name: str | None) -> tuple[int, int]:
        """A polygon's (value, channel) for its classification ``name``."""
        if name == IGNORE_CLASS and name not in self.class_names:
            return self.ignore, _ALL
        if self.mode == "binary":
            return int(not self.class_names or name == self.class_names[0]), 0
        if name not in self.class_names:
            which = f"class {name!r}" if name else "no class"
            raise InputImageError(
                f"{path}: a polygon of {which}; mode={self.mode} draws GeoJSON labels by "
                f"their classification: give class_names= listing it"
                + (" after the background's name (class 0)" if self.mode == "multiclass" else "")
                + (f" (now {self.class_names})" if self.class_names else "")
            )
        index = self.class_names.index(name)
        return (index, 0) if self.mode == "multiclass" else (1, index)

    def values(self) -> set[int]:
        """The values the labels hold: each polygon's, and 0 or ``ignore`` elsewhere."""
        return {self.ignore if self.sparse else 0} | {value for value, _, _ in self.shapes}

    @property
    def ignores(self) -> bool:
        """Whether any pixel may be not labelled."""
        return self.sparse or len(self.labelled) < len(self.shapes)

    def _inspect(self) -> ImageInfo:
        _, _, z, y, x = self.image_shape
        channels = len(self.class_names) if self.mode == "multilabel" else 1
        return ImageInfo((1, channels, z, y, x), np.dtype(np.uint16))

    def _open(self) -> Any:
        return None

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = region
        fill = self.ignore if self.sparse else 0
        planes = np.full((len(channels), y1 - y0, x1 - x0), fill, np.uint16)
        top, left, bottom, right = self.boxes.T
        near = (bottom >= y0) & (top <= y1) & (right >= x0) & (left <= x1)
        for i in np.flatnonzero(near):  # in the file's order: later polygons on top
            value, channel, rings = self.shapes[i]
            if channel != _ALL and channel not in channels and self.mode != "multilabel":
                continue
            inside = rasterize(rings, self.scale, (y0, x0), planes.shape[1:])
            if channel == _ALL:
                planes[:, inside] = value
            elif self.mode == "multilabel":  # labelled in every channel, 1 in its own
                covered = planes[:, inside]
                covered[covered == self.ignore] = 0
                planes[:, inside] = covered
                if channel in channels:
                    planes[channels.index(channel)][inside] = 1
            else:
                planes[channels.index(channel)][inside] = value
        return np.repeat(planes[:, None], z1 - z0, axis=1)
