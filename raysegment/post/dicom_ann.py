"""A DICOM slide's instances as a DICOM Microscopy Bulk Simple Annotations object
(``instances.dicom_ann``): each object's outline a polygon in the slide's full-resolution
pixel matrix, and its area, in one annotation group named after the objects' class, so
DICOMweb slide viewers (Slim) show them over the slide, as the Imaging Data Commons keeps
its nuclei annotations beside TCGA's slides.

The outlines are the GeoJSON features ``instances.geojson`` writes (``stats.outline``): an
object's largest ring (its outer boundary; holes and smaller parts, which a polygon of
this object cannot hold, left out), without its closing point. Their coordinates (column,
row; pixel (0, 0) covers [0, 1) x [0, 1)) are the annotation's own. They are gathered into
one array of points and one of indices, as the object stores them, not an array each.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.data.sources import reader_module
from raysegment.post.dicom_seg import (
    _encoded,
    _headers,
    _written,
    concept,
    new_instance,
    raysegment_algorithm,
)

__all__ = ["write_dicom_ann"]


def _rings(parts: list[str]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The outlines of the features in ``parts`` (files of one feature a line): their
    points' (column, row) as float32 bytes, one polygon after another (a file's joined as
    it is read: a million objects are not a million arrays), each polygon's first point's
    index (from 0) and each object's area (NaN where not measured in micrometres)."""
    points, starts, areas = [], [], []
    count = 0
    for part in parts:
        rings = []
        for line in storage.read_bytes(part).splitlines():
            feature = json.loads(line)
            geometry = feature["geometry"]
            polygons = (
                [geometry["coordinates"]]
                if geometry["type"] == "Polygon"
                else geometry["coordinates"]
            )
            outer = [np.asarray(polygon[0], np.float32)[:-1] for polygon in polygons]
            rings.append(max(outer, key=_area))  # the outer boundary of its largest part
            measured = feature["properties"]["measurements"]
            areas.append(float(measured.get("area_micrometer^2", np.nan)))
        if rings:
            sizes = np.asarray([len(r) for r in rings], np.int64)
            starts.append(count + np.concatenate([[0], np.cumsum(sizes)[:-1]]))
            count += int(sizes.sum())
            points.append(np.concatenate(rings).tobytes())
    if not starts:
        return points, np.zeros(0, np.int64), np.zeros(0)
    return points, np.concatenate(starts), np.asarray(areas)


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return abs(0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def write_dicom_ann(
    location: str, files: list[str], parts: list[str], named: tuple[str, Any], unit: str
) -> None:
    """The objects' outlines of ``parts`` (GeoJSON features, a line each) as a DICOM
    Microscopy Bulk Simple Annotations object at ``location`` of the slide level whose
    files are ``files`` (the full resolution's, whose pixels the outlines are in): one
    group of polygons (2D image coordinates) named and coded after the objects' class
    ``named`` (a name, and ``{"category": [...], "type": [...]}`` or None: tissue), each
    object's area where the pixels are micrometres (``unit``)."""
    pydicom = reader_module(location, "pydicom", "DICOM", "dicom")
    highdicom = reader_module(location, "highdicom", "DICOM annotations", "dicom")
    from pydicom.sr.codedict import codes

    points, starts, areas = _rings(parts)
    name, code = named

    algorithm = raysegment_algorithm(highdicom)
    measured = unit == "micrometer" and len(starts) > 0
    groups = []
    if len(starts):
        # highdicom checks and encodes a list of arrays, one an object: given one triangle,
        # its group's arrays are set here to all the objects', built once.
        group = highdicom.ann.AnnotationGroup(
            number=1,
            uid=highdicom.UID(),
            label=name[:64],
            annotated_property_category=concept(highdicom, code, "category"),
            annotated_property_type=concept(highdicom, code, "type"),
            graphic_type=highdicom.ann.GraphicTypeValues.POLYGON,
            graphic_data=[np.asarray([[0, 0], [1, 0], [0, 1]], np.float32)],
            algorithm_type=highdicom.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        group.NumberOfAnnotations = len(starts)
        group.PointCoordinatesData = b""  # written from ``points`` (``_save``)
        # Each polygon's first value's place (from 1) among the points' values (2 a point).
        group.LongPrimitivePointIndexList = (starts * 2 + 1).astype(np.int32).tobytes()
        if measured:
            area = highdicom.ann.Measurements(codes.SCT.Area, areas, codes.UCUM.SquareMicrometer)
            group.MeasurementsSequence = [area]
        groups.append(group)
    sources = _headers(files, pydicom)
    annotations = highdicom.ann.MicroscopyBulkSimpleAnnotations(
        source_images=sources,
        annotation_coordinate_type="2D",
        annotation_groups=groups,
        **new_instance(highdicom, sources[0], 2000),
        content_description=f"raysegment instances: {name}"[:64],
    )
    with _written(location) as f:
        _save(f, annotations, points, pydicom)


_GROUPS = 0x006A0002  # Annotation Group Sequence
_POINTS = 0x00660016  # Point Coordinates Data


def _save(f: Any, dataset: Any, points: list[bytes], pydicom: Any) -> None:
    """``dataset`` written to ``f``, its annotation group's points those of ``points``
    (bytes one after another): pydicom writes an element of a sequence's item through a
    buffer of its own, holding a million objects' points three times over; here they, and
    the sequence around them, are written as they are."""
    head = pydicom.Dataset()
    head.file_meta = dataset.file_meta
    for element in dataset:
        if element.tag < _GROUPS:
            head.add(element)
    pydicom.dcmwrite(f, head, enforce_file_format=True)
    if _GROUPS in dataset:
        f.write(struct.pack("<HH2sHI", 0x006A, 0x0002, b"SQ", 0, 0xFFFFFFFF))
        for group in dataset[_GROUPS].value:
            f.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
            for element in group:
                if element.tag == _POINTS:
                    length = sum(len(p) for p in points)
                    f.write(struct.pack("<HH2sHI", 0x0066, 0x0016, b"OF", 0, length))
                    for part in points:
                        f.write(part)
                else:
                    f.write(_encoded(element))
            f.write(struct.pack("<HHI", 0xFFFE, 0xE00D, 0))
        f.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    for element in dataset:
        if element.tag > _GROUPS:
            f.write(_encoded(element))
