"""DICOM Segmentations (SEG) as training labels: the segments of a SEG object over the
DICOM series or slide it labels, as 3D Slicer, OHIF, dcmqi, highdicom and
``finalize.dicom_seg`` write them and the NCI Imaging Data Commons keeps them beside its
CT and MR series and its slides (its nuclei segmentations of TCGA's slides).

A series' SEG's frames are matched to its slices by position (``ImagePositionPatient``
along the slice normal), on the series' pixel grid; a slide's SEG's frames are tiles of
its total pixel matrix (their positions given, TILED_SPARSE, or implied, TILED_FULL), over
the image of that size; binary, fractional (on where over half
the maximum) and label-map SEGs are read, a region's frames alone: uncompressed ones by
their byte ranges (as ``DicomSlideSource`` reads tiles), compressed ones through pydicom.
Segments are classes by their names (``SegmentLabel``, matched to ``class_names`` without
regard to case) or their coded types (``SegmentedPropertyTypeCodeSequence`` and its
modifier), so SEGs that number or name the same organs differently label alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.data.annotations import is_geojson
from raysegment.data.dicom import (
    DicomSeriesSource,
    _frame_table,
    _Frames,
    _Indirect,
    first_header,
    is_segmentation,
)
from raysegment.data.sources import ImageInfo, ImageSource, reader_module
from raysegment.errors import ConfigError, InputImageError

__all__ = [
    "DicomSegLabels",
    "referenced_series",
    "segment_codes",
    "segment_names",
    "segment_targets",
    "segmentation_header",
]

_LABEL_MAP = "1.2.840.10008.5.1.4.1.1.66.7"
_NATIVE = "1.2.840.10008.1.2.1"
"""Uncompressed explicit little endian: frames read by their byte ranges."""


def segmentation_header(path: str) -> Any | None:
    """The header of the DICOM Segmentation ``path`` (a ``.dcm`` file, or a directory of a
    SEG series' file, as the Imaging Data Commons stores a series); None where ``path``
    is no SEG (another image; GeoJSON annotations, without asking a store about them)."""
    if is_geojson(path):
        return None
    header = first_header(path)
    return header if header is not None and is_segmentation(header) else None


def referenced_series(header: Any) -> list[str]:
    """The series a SEG labels (``ReferencedSeriesSequence``)."""
    return [str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", [])]


def _segments(header: Any) -> Iterator[tuple[int, str, Any]]:
    """A SEG's segments: number, name (``SegmentLabel``, else ``segment_<number>``) and
    description; a label map's segment 0, its background, is none."""
    for item in header.get("SegmentSequence", []):
        number = int(item.SegmentNumber)
        if number > 0:
            yield number, str(item.get("SegmentLabel") or f"segment_{number}"), item


def segment_names(header: Any) -> dict[int, str]:
    """A SEG's segments' names by segment number."""
    return {number: name for number, name, _ in _segments(header)}


def _code(item: Any, key: str) -> list[str] | None:
    """A coded concept's [value, scheme, meaning] (``key``: its sequence's)."""
    found = item.get(key)
    if not found:
        return None
    concept = found[0]
    value = concept.get("CodeValue") or concept.get("LongCodeValue") or concept.get("URNCodeValue")
    scheme = concept.get("CodingSchemeDesignator")
    return (
        [str(value), str(scheme), str(concept.get("CodeMeaning", ""))] if value and scheme else None
    )


_MODIFIER = "SegmentedPropertyTypeModifierCodeSequence"


def _kind(item: Any) -> tuple[str, ...] | None:
    """What a segment is, coded: its segmented property type's scheme and value, and its
    modifier's (a left or a right kidney); None without a type code."""
    kind = _code(item, "SegmentedPropertyTypeCodeSequence")
    if kind is None:
        return None
    modifier = _code(item.SegmentedPropertyTypeCodeSequence[0], _MODIFIER)
    return (kind[1], kind[0], *((modifier[1], modifier[0]) if modifier else ()))


class _Classes:
    """The SEGs' segments grouped into classes: segments are one class where their names
    (case aside) or their coded types (``_kind``) are the same, so SEGs that name an organ
    differently but code it alike (SNOMED CT's ``Liver``) label alike. A coded type that
    segments of different names share in one SEG tells them apart from nothing (3D
    Slicer's and OHIF's default ``Tissue``) and joins none. A class is named by the first
    name met of it."""

    def __init__(self, headers: list[Any]) -> None:
        self.parent: list[int] = []
        self.keys: dict[Any, int] = {}  # a name (casefolded) or a coded type -> its node
        self.segments: list[dict[int, int]] = []  # per SEG: segment number -> its node
        self.first: dict[int, str] = {}  # node -> the first name met of it
        self.items: list[tuple[int, Any]] = []  # (node, segment's item), in order met
        met = [[(*segment, _kind(segment[2])) for segment in _segments(h)] for h in headers]
        generic = set()
        for segments in met:
            named: dict[tuple[str, ...], set[str]] = {}
            for _, name, _, kind in segments:
                named.setdefault(kind or (), set()).add(name.casefold())
            generic |= {kind for kind, names in named.items() if len(names) > 1}
        for segments in met:
            numbers = {}
            for number, name, item, kind in segments:
                node = self._node(name.casefold())
                if kind is not None and kind not in generic:
                    self._join(node, self._node(kind))
                numbers[number] = node
                self.first.setdefault(node, name)
                self.items.append((node, item))
            self.segments.append(numbers)

    def _node(self, key: Any) -> int:
        if key not in self.keys:
            self.keys[key] = len(self.parent)
            self.parent.append(len(self.parent))
        return self.keys[key]

    def root(self, node: int) -> int:
        while self.parent[node] != node:
            node = self.parent[node]
        return node

    def _join(self, a: int, b: int) -> None:
        a, b = self.root(a), self.root(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the earlier node stands for both

    def names(self) -> dict[int, str]:
        """Each class (its root) and its name, in the order first met."""
        out: dict[int, str] = {}
        for node, name in self.first.items():
            out.setdefault(self.root(node), name)
        return out

    def of_name(self, name: str) -> int | None:
        """The class a segment of ``name`` (case aside) is of; None where no SEG has one."""
        node = self.keys.get(name.casefold())
        return None if node is None else self.root(node)


def segment_codes(headers: list[Any]) -> dict[str, dict[str, list[str]]]:
    """What the SEGs' segments are, by name (case aside): their segmented property's
    category and type codes (``{"category": [value, scheme, meaning], "type": [...]}``,
    SNOMED CT's ``Organ`` and ``Liver``), those of the class's first segment to have both
    (``_Classes``), for every name of the class; names of classes without codes are left
    out."""
    classes = _Classes(headers)
    coded: dict[int, dict[str, list[str]]] = {}
    for node, item in classes.items:
        category = _code(item, "SegmentedPropertyCategoryCodeSequence")
        kind = _code(item, "SegmentedPropertyTypeCodeSequence")
        if category and kind:
            coded.setdefault(classes.root(node), {"category": category, "type": kind})
    return {
        key: coded[classes.root(node)]
        for key, node in classes.keys.items()
        if isinstance(key, str) and classes.root(node) in coded
    }


def segment_targets(
    headers: list[Any], mode: str, class_names: list[str] | None
) -> tuple[list[str], list[dict[int, int]]]:
    """The classes SEGs label (``headers``), and for each SEG what its segments draw, by
    segment number: their class's value (binary, multiclass) or channel (multilabel).
    Segments are classes by name (case aside) or coded type (``_Classes``), matched to
    ``class_names`` by the names of their class; segments it does not name draw nothing
    (background), so a SEG of a hundred organs trains on the ones named. Without
    ``class_names``, the classes' names in the order first met (multiclass: after
    ``background``; binary: every segment is the foreground, named after its class where
    the SEGs have one).

    Raises:
        ConfigError: ``class_names`` names a class no SEG has a segment of, or one class
            twice.
    """
    grouped = _Classes(headers)
    found = grouped.names()
    if class_names:
        classes = list(class_names)
        named = classes[1:] if mode == "multiclass" else classes
        missing = [n for n in named if grouped.of_name(n) is None]
        if missing:
            raise ConfigError(
                f"class_names={classes}: {missing} is a segment of no DICOM SEG label (their "
                f"segments: {list(found.values())[:12]}); name classes after the SEGs' "
                f"segment labels"
            )
        index: dict[int, int] = {}
        drawing = classes[:1] if mode == "binary" else named  # binary: the first, foreground
        for i, name in enumerate(drawing, len(classes) - len(named)):
            root = grouped.of_name(name)
            assert root is not None
            if root in index:
                raise ConfigError(
                    f"class_names={classes}: {classes[index[root]]!r} and {name!r} are one "
                    f"class of the DICOM SEG labels (the same segment name or coded type); "
                    f"name it once"
                )
            index[root] = i
    elif mode == "binary":
        classes = list(found.values()) if len(found) == 1 else ["foreground"]
        index = dict.fromkeys(found, 1)
    else:
        first = int(mode == "multiclass")  # after the background
        classes = ["background"] * first + list(found.values())
        index = {root: i for i, root in enumerate(found, first)}
    value = 1 if mode == "binary" else None  # binary: every class drawn is the foreground
    targets = []
    for numbers in grouped.segments:
        drawn = {k: index.get(grouped.root(n)) for k, n in numbers.items()}
        targets.append({k: value or v for k, v in drawn.items() if v is not None})
    return classes, targets


def _groups(header: Any) -> tuple[list[Any], Any]:
    """A SEG's per-frame functional groups, and its shared ones (None where it has none)."""
    shared = (header.get("SharedFunctionalGroupsSequence") or [None])[0]
    return list(header.get("PerFrameFunctionalGroupsSequence") or []), shared


def _value(own: Any, shared: Any, group: str, key: str) -> Any:
    """Attribute ``key`` of a frame's functional ``group``: its own, else the shared one;
    None where neither has it. (Only what is asked is read: a SEG may have thousands of
    frames.)"""
    for item in (own, shared):
        found = item.get(group) if item is not None else None
        if found and key in found[0]:
            return found[0].get(key)
    return None


def _frame_attributes(header: Any) -> list[tuple[Any, Any, Any]]:
    """Each frame's (position, orientation, segment number) in the patient's space."""
    frames, shared = _groups(header)
    return [
        (
            _value(own, shared, "PlanePositionSequence", "ImagePositionPatient"),
            _value(own, shared, "PlaneOrientationSequence", "ImageOrientationPatient"),
            _value(own, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber"),
        )
        for own in frames
    ]


def _tiles(header: Any, label_map: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tiled SEG's (of a slide) frames: each one's top and left pixel in its total pixel
    matrix, and its segment number (a label map's: 0): given frame by frame (TILED_SPARSE),
    else in TILED_FULL's order (row by row, segment after segment)."""
    frames, shared = _groups(header)
    where = "PlanePositionSlideSequence"
    tops = [_value(f, None, where, "RowPositionInTotalImagePixelMatrix") for f in frames]
    lefts = [_value(f, None, where, "ColumnPositionInTotalImagePixelMatrix") for f in frames]
    numbers = [
        _value(f, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        for f in frames
    ]
    count = int(header.get("NumberOfFrames", 1) or 1)
    if frames and None not in tops and None not in lefts:
        tops_, lefts_ = np.array(tops, np.int64) - 1, np.array(lefts, np.int64) - 1
    else:  # TILED_FULL: row-major tiles, one round a segment
        rows, columns = int(header.Rows), int(header.Columns)
        down = -(-int(header.TotalPixelMatrixRows) // rows)
        across = -(-int(header.TotalPixelMatrixColumns) // columns)
        tile = np.arange(count) % (down * across)
        tops_, lefts_ = tile // across * rows, tile % across * columns
        if not label_map and (not frames or None in numbers):
            order = sorted(segment_names(header))
            numbers = [order[min(i // (down * across), len(order) - 1)] for i in range(count)]
    if label_map:
        return tops_, lefts_, np.zeros(count, np.int64)
    if None in numbers:
        raise InputImageError(
            f"{header.filename}: a frame names no segment (SegmentIdentificationSequence); "
            f"export the SEG again"
        )
    return tops_, lefts_, np.array(numbers, np.int64)


class DicomSegLabels(ImageSource):
    """Training labels of a DICOM SEG (``header``, read by ``segmentation_header``) over
    its ``image``: a DICOM series (each frame on the slice at its position), or a slide's
    image of the SEG's total pixel matrix (each frame a tile of it); a frame draws its
    segment's ``targets`` value (0 elsewhere; where segments overlap, the higher-numbered
    one's), or in ``mode`` multilabel a 1 in its channel of ``channels``.

    Raises:
        InputImageError: a series' SEG over no DICOM series of slice positions, or its
            frames off the slices or their pixel grid (a SEG of another series); a slide's
            SEG over an image of another size.
    """

    kind = "dicom-seg"

    def __init__(
        self, header: Any, image: ImageSource, mode: str, targets: dict[int, int], channels: int
    ) -> None:
        path = str(header.filename)
        self.mode = mode
        self.image_shape = image.info.shape
        self.channels = channels if mode == "multilabel" else 1
        self.label_map = str(header.SOPClassUID) == _LABEL_MAP
        kind = "LABELMAP" if self.label_map else str(header.get("SegmentationType", "BINARY"))
        self.fractional = kind.upper() == "FRACTIONAL"
        self.top = int(header.get("MaximumFractionalValue", 1) or 1)
        self.rows, self.columns = int(header.Rows), int(header.Columns)
        self.bits = int(header.BitsAllocated)
        _, _, planes, height, width = image.info.shape
        if "TotalPixelMatrixRows" in header:  # a slide's: tiles of its pixel matrix
            matrix = int(header.TotalPixelMatrixRows), int(header.TotalPixelMatrixColumns)
            if matrix != (height, width) or planes != 1:
                found = f"{height} x {width}" + (f" in {planes} planes" if planes > 1 else "")
                raise InputImageError(
                    f"{path}: a SEG of a {matrix[0]} x {matrix[1]} slide; its image "
                    f"{image.where} is {found}: pair it with the slide it segments (at the "
                    f"resolution it was drawn at)"
                )
            self.tops, self.lefts, self.segments = _tiles(header, self.label_map)
            self.slices = np.zeros(len(self.segments), np.int64)
        else:  # a series': a slice a frame
            self.slices, self.segments = self._place(path, header, image)
            self.tops = self.lefts = np.zeros(len(self.segments), np.int64)
        numbers = [*segment_names(header), *targets, *self.segments.tolist(), 0]
        self.lut = np.full(max(numbers) + 1, -1, np.int64)
        """What each segment number draws (-1: nothing)."""
        for number, target in targets.items():
            self.lut[number] = target
        self.table: np.ndarray | None = None
        """The frames' byte ranges where they are uncompressed (``_Frames``' table)."""
        size, count = self.rows * self.columns * self.bits, len(self.slices)
        syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
        if syntax == _NATIVE and count:
            try:
                self.table, _ = _frame_table(path, count, size)
            except _Indirect:
                pass
            # The bit each frame begins at in its first byte (bit-packed frames need not
            # end on a byte).
            self.skips = size * np.arange(count, dtype=np.int64) % 8
        super().__init__(path, name=image.name)

    def _place(self, path: str, header: Any, image: ImageSource) -> tuple[np.ndarray, np.ndarray]:
        """Each frame's slice of ``image``, and its segment number (a label map's: 0)."""
        if not isinstance(image, DicomSeriesSource) or image.positions is None:
            what = f"a {image.kind} image"
            if isinstance(image, DicomSeriesSource):
                what = "a DICOM series without slice positions"
            raise InputImageError(
                f"{path}: a DICOM SEG labels the slices of the DICOM series it segments, by "
                f"their positions; its image {image.path} is {what}: pair it with the series "
                f"it references"
            )
        ours, theirs = str(header.get("FrameOfReferenceUID", "")), image.frame_of_reference
        if ours and theirs and ours != theirs:
            raise InputImageError(
                f"{path}: lies in another frame of reference than its image {image.path} "
                f"(a SEG of another scan?); pair it with the series it references"
            )
        _, _, _, height, width = image.info.shape
        if (self.rows, self.columns) != (height, width):
            raise InputImageError(
                f"{path}: its frames are {self.rows} x {self.columns}, the slices of "
                f"{image.path} {height} x {width}; a SEG labels on its series' pixel grid "
                f"(resample it to the series, e.g. in 3D Slicer)"
            )
        frames = _frame_attributes(header)
        if any(position is None for position, _, _ in frames):
            raise InputImageError(
                f"{path}: its frames have no position (PlanePositionSequence); raysegment "
                f"places a SEG's frames on its series' slices by their positions"
            )
        where = np.array([[float(v) for v in p] for p, _, _ in frames], float).reshape(-1, 3)
        orientation = np.array(image.orientation or [1, 0, 0, 0, 1, 0], float)
        for _, theirs_o, _ in frames:
            turned = np.asarray(theirs_o if theirs_o is not None else orientation, float)
            if not np.allclose(turned, orientation, atol=1e-4):
                raise InputImageError(
                    f"{path}: its frames are oriented {turned.round(4).tolist()}, the slices "
                    f"of {image.path} {orientation.round(4).tolist()}; a SEG labels on its "
                    f"series' pixel grid"
                )
        normal = np.cross(orientation[:3], orientation[3:])
        depths = image.positions @ normal
        index = np.abs((where @ normal)[:, None] - depths[None, :]).argmin(axis=1)
        scale = image.info.scale
        off = where - image.positions[index]
        steps = np.stack(
            [
                np.abs(off @ normal) / float(scale.get("z") or 1.0),
                np.abs(off @ orientation[3:]) / float(scale.get("y") or 1.0),
                np.abs(off @ orientation[:3]) / float(scale.get("x") or 1.0),
            ],
            axis=1,
        )
        bad = np.flatnonzero((steps > 0.1).any(axis=1))
        if len(bad):
            raise InputImageError(
                f"{path}: frame {int(bad[0]) + 1} lies at {where[bad[0]].round(3).tolist()} "
                f"mm, on no voxel grid point of {image.path}'s slices; pair the SEG with the "
                f"series it references, or resample it to this one"
            )
        if self.label_map:
            segments = np.zeros(len(frames), np.int64)
        elif any(number is None for _, _, number in frames):
            raise InputImageError(
                f"{path}: a frame names no segment (SegmentIdentificationSequence); export "
                f"the SEG again"
            )
        else:
            segments = np.array([int(number) for _, _, number in frames], np.int64)
        return index.astype(np.int64), segments

    def values(self) -> set[int]:
        """The values the labels may hold: 0, and those of the segments they draw."""
        numbers = np.arange(len(self.lut)) if self.label_map else np.unique(self.segments)
        drawn = {int(v) for v in self.lut[numbers] if v >= 0}
        return {0} | ({1} if drawn else set()) if self.mode == "multilabel" else {0} | drawn

    def _inspect(self) -> ImageInfo:
        _, _, z, y, x = self.image_shape
        return ImageInfo((1, self.channels, z, y, x), np.dtype(np.uint16))

    def _open(self) -> Any:
        if self.table is not None:
            return _Frames(self.path, self.table, encapsulated=False)
        return reader_module(self.path, "pydicom", "DICOM", "dicom")

    def _pixels(self, indices: list[int]) -> list[np.ndarray]:
        """Frames ``indices`` as (rows, columns) arrays of their stored values."""
        if self.table is None:
            pydicom = self.handle
            with storage.open_read(self.path) as f:
                return list(pydicom.pixels.iter_pixels(f, indices=indices))
        count = self.rows * self.columns
        pixels = []
        for index, data in zip(indices, self.handle.read(indices), strict=True):
            if self.bits == 1:
                bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
                flat = bits[self.skips[index] : self.skips[index] + count]
            else:
                flat = np.frombuffer(data, f"<u{self.bits // 8}")
            pixels.append(flat.reshape(self.rows, self.columns))
        return pixels

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = region
        out = np.zeros((len(channels), z1 - z0, y1 - y0, x1 - x0), np.uint16)
        drawn = self.label_map | (self.lut[self.segments] >= 0)
        bottoms, rights = self.tops + self.rows, self.lefts + self.columns
        inside = (self.tops < y1) & (bottoms > y0) & (self.lefts < x1) & (rights > x0)
        chosen = np.flatnonzero((self.slices >= z0) & (self.slices < z1) & inside & drawn)
        chosen = chosen[np.argsort(self.segments[chosen], kind="stable")]  # higher on top
        if not len(chosen):
            return out
        for i, frame in zip(chosen, self._pixels(chosen.tolist()), strict=True):
            top, left = int(self.tops[i]), int(self.lefts[i])
            ya, yb = max(y0, top), min(y1, top + self.rows)
            xa, xb = max(x0, left), min(x1, left + self.columns)
            part, plane = (
                frame[ya - top : yb - top, xa - left : xb - left],
                int(self.slices[i]) - z0,
            )
            at = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
            if self.label_map:  # each pixel's segment number
                known = part < len(self.lut)  # numbers past the SEG's segments: none
                targets = np.where(known, self.lut[np.where(known, part, 0)], -1)
                if self.mode == "multilabel":
                    for c, channel in enumerate(channels):
                        out[c, plane][at][targets == channel] = 1
                else:
                    out[0, plane][at] = np.where(targets > 0, targets, out[0, plane][at])
                continue
            on = part.astype(np.int64) * 2 > self.top if self.fractional else part > 0
            target = int(self.lut[self.segments[i]])
            if self.mode != "multilabel":
                out[0, plane][at][on] = target
            elif target in channels:
                out[channels.index(target), plane][at][on] = 1
        return out
