"""A DICOM Segmentation of a DICOM series' or slide's output (``finalize.dicom_seg``): the
output's classes as segments of one binary DICOM SEG object that references the input, so
PACS and slide viewers (OHIF, 3D Slicer, Slim) show it over the scan and keep it with the
patient's study.

Masks give a segment per class channel (of a softmax model's, the classes after the
background, channel 0); labels give a segment per class value after 0 (the background).
Segments are named after the model's classes. Frames holding no segment are left out.

A series' SEG is made by highdicom from the whole output. A slide's is streamed: its
frames are tiles of the slide's pixel matrix (TILED_SPARSE), read from the output a chunk
at a time and spooled to disk, and highdicom writes the header of a one-tile SEG of the
slide that this module scales up to the whole matrix, so a 100k x 100k slide's SEG takes
the memory of one output chunk.
"""

from __future__ import annotations

import contextlib
import copy
import os
import struct
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from raysegment import storage
from raysegment._version import __version__
from raysegment.data.sources import reader_module
from raysegment.errors import OutputError

__all__ = ["SEG_MODES", "segments", "write_dicom_seg", "write_slide_seg"]

SEG_MODES = ("mask", "labels")
"""Finalize modes a DICOM SEG is written of (binary segments)."""


def segments(mode: str, classes: int, softmax: bool) -> tuple[list[int], list[int]]:
    """What becomes a segment, and its class (of the model's ``classes``, one an output
    channel): for ``mask``, the output channels kept, after the background of a
    ``softmax`` model's; for ``labels``, the label values past 0 (the background)."""
    if classes == 1:  # a one-channel model: its mask's channel 0, its labels' value 1
        return [0 if mode == "mask" else 1], [0]
    kept = list(range(1 if softmax or mode == "labels" else 0, classes))
    return kept, kept


def _descriptions(names: list[str], coded: list[Any] | None = None) -> list[Any]:
    """Segments ``names``, of the property category and type ``coded`` gives each
    (``{"category": [value, scheme, meaning], "type": [...]}``), else SNOMED CT's
    ``Tissue``."""
    import highdicom
    from pydicom.sr.codedict import codes

    algorithm = highdicom.AlgorithmIdentificationSequence(
        name="raysegment", version=__version__, family=codes.DCM.ArtificialIntelligence
    )

    def concept(code: Any, key: str) -> Any:
        found = (code or {}).get(key)
        return highdicom.sr.CodedConcept(*found) if found else codes.SCT.Tissue

    given = coded or [None] * len(names)
    return [
        highdicom.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=concept(code, "category"),
            segmented_property_type=concept(code, "type"),
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (name, code) in enumerate(zip(names, given, strict=True), start=1)
    ]


def write_dicom_seg(
    output: str,
    axes: str,
    files: list[str],
    frames: list[int | None],
    mode: str,
    chosen: list[int],
    names: list[str],
    location: str,
    coded: list[Any] | None = None,
) -> None:
    """The zarr array ``output`` (``axes``: c, [z,] y, x) of a DICOM series, whose slices
    are ``files`` in the array's plane order (``frames``: each one's frame in an enhanced
    file, else None), as a DICOM SEG at ``location``: segments ``names``, of the channels
    (``mask``) or label values (``labels``) ``chosen``, coded as ``coded`` says (else
    ``Tissue``)."""
    import zarr

    pydicom = reader_module(location, "pydicom", "DICOM", "dicom")
    highdicom = reader_module(location, "highdicom", "DICOM Segmentations", "dicom")
    array = np.asarray(zarr.open_array(output, mode="r")[:])
    if "z" not in axes:
        array = array[:, None]  # one slice: one frame
    if mode == "mask":  # (frames, rows, columns, segments) of 0 and 1
        pixels = np.moveaxis(array[chosen], 0, -1).astype(np.uint8)
    else:  # a label map: each pixel's segment number, the class values past the chosen
        labels = array[0]
        pixels = np.where(labels <= max(chosen), labels, 0).astype(np.uint16)
    if frames[0] is not None:  # an enhanced file: its frames in their stored order
        files = files[:1]
        stored = np.zeros_like(pixels)
        stored[[int(f or 0) for f in frames]] = pixels
        pixels = stored
    sources = []
    for path in files:
        with storage.open_read(path) as f:
            sources.append(pydicom.dcmread(f, stop_before_pixels=True))
    first = sources[0]
    seg = highdicom.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(names, coded),
        series_instance_uid=highdicom.UID(),
        series_number=int(first.get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer="raysegment",
        manufacturer_model_name="raysegment",
        software_versions=__version__,
        device_serial_number="none",
        series_description=f"raysegment {mode}"[:64],
    )
    with _written(location) as f:
        seg.save_as(f, enforce_file_format=True)


@contextlib.contextmanager
def _written(location: str) -> Iterator[Any]:
    """A binary file to write ``location`` through: locally under another name until whole,
    so a run killed while writing leaves no file that looks complete (an object store shows
    an upload only once it is)."""
    local = not storage.is_url(location)
    target = location + ".partial" if local else location
    with storage.open_write(target) as f:
        yield f
    if local:
        os.replace(target, location)


def _headers(files: list[str], pydicom: Any) -> list[Any]:
    headers = []
    for path in files:
        with storage.open_read(path) as f:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
    return headers


_TILE = (256, 256)
"""A slide SEG's frame where the slide's own tiles would not fill whole bytes."""
_MAX_PIXEL_BYTES = 0xFFFFFFFE
"""Native (uncompressed) pixel data's largest length: its length field has 32 bits."""


def write_slide_seg(
    output: str,
    files: list[str],
    mode: str,
    chosen: list[int],
    names: list[str],
    location: str,
    coded: list[Any] | None = None,
) -> None:
    """The zarr array ``output`` (c, y, x) of a DICOM slide's pyramid level, whose files are
    ``files`` (one, or one an optical path), as a DICOM SEG at ``location``: segments
    ``names``, of the channels (``mask``) or label values (``labels``) ``chosen``, coded as
    ``coded`` says (else ``Tissue``); frames the tiles (the slide's tile size) holding a
    segment, each segment's in row order, as highdicom orders them."""
    import zarr

    pydicom = reader_module(location, "pydicom", "DICOM", "dicom")
    highdicom = reader_module(location, "highdicom", "DICOM Segmentations", "dicom")
    array = zarr.open_array(output, mode="r")
    sources = _headers(files, pydicom)
    height, width = (int(n) for n in array.shape[-2:])
    first = sources[0]
    if (int(first.TotalPixelMatrixRows), int(first.TotalPixelMatrixColumns)) != (height, width):
        raise OutputError(
            f"{output}: {height} x {width}, not the {first.TotalPixelMatrixRows} x "
            f"{first.TotalPixelMatrixColumns} pixels of {files[0]}, whose SEG it was to be"
        )
    tile = (int(first.Rows), int(first.Columns))
    tile = tile if tile[0] * tile[1] % 8 == 0 else _TILE  # frames of whole bytes
    with tempfile.TemporaryDirectory(prefix="raysegment-seg-") as spool:
        placed, overlap = _spool_tiles(array, mode, chosen, tile, spool)
        header, items = _slide_header(highdicom, sources, names, coded, tile)
        frame_bytes = tile[0] * tile[1] // 8
        frames = sum(len(p) for p in placed)
        if frames * frame_bytes > _MAX_PIXEL_BYTES:
            raise OutputError(
                f"{location}: {frames} frames of {frame_bytes} bytes, more than a DICOM "
                f"SEG's uncompressed pixel data holds (4 GiB): segment fewer classes, or at a "
                f"coarser level (input_level=), or drop finalize.dicom_seg"
            )
        header.TotalPixelMatrixRows, header.TotalPixelMatrixColumns = height, width
        header.NumberOfFrames = frames
        header.SegmentsOverlap = "YES" if overlap else "NO"
        across = -(-width // tile[1])
        with _written(location) as f:
            pydicom.dcmwrite(f, header, enforce_file_format=True)
            _write_frame_groups(f, highdicom, header, items, placed, tile, across)
            _write_pixel_data(f, spool, placed, frame_bytes)


def _spool_tiles(
    array: Any, mode: str, chosen: list[int], tile: tuple[int, int], spool: str
) -> tuple[list[np.ndarray], bool]:
    """Each segment's tiles holding it (row-major indices), their frames (bit-packed)
    spooled to ``<spool>/<segment>`` in the same order; whether segments overlap. Reads
    ``array`` a region of whole tiles at a time, about a chunk's size."""
    rows, columns = tile
    height, width = array.shape[-2:]
    across = -(-width // columns)
    step_y = -(-array.chunks[-2] // rows) * rows  # whole tiles, a chunk's height or more
    step_x = -(-array.chunks[-1] // columns) * columns
    found: list[list[np.ndarray]] = [[] for _ in chosen]
    overlap = False
    outs = [open(os.path.join(spool, str(s)), "wb") for s in range(len(chosen))]  # noqa: SIM115
    try:
        for y0 in range(0, height, step_y):
            for x0 in range(0, width, step_x):
                block = np.asarray(array[:, y0 : y0 + step_y, x0 : x0 + step_x])
                if mode == "mask":
                    planes = block[chosen] != 0
                    if len(chosen) > 1 and not overlap:
                        overlap = bool((planes.sum(axis=0, dtype=np.uint8) > 1).any())
                else:  # labels: a segment a class value
                    planes = np.stack([block[0] == value for value in chosen])
                ty, tx = -(-planes.shape[1] // rows), -(-planes.shape[2] // columns)
                padded = np.zeros((len(chosen), ty * rows, tx * columns), bool)
                padded[:, : planes.shape[1], : planes.shape[2]] = planes
                tiles = padded.reshape(len(chosen), ty, rows, tx, columns).swapaxes(2, 3)
                held = tiles.any(axis=(3, 4))
                for s, out in enumerate(outs):
                    i, j = np.nonzero(held[s])
                    if len(i):
                        frames = tiles[s, i, j].reshape(len(i), -1)
                        out.write(np.packbits(frames, axis=1, bitorder="little").tobytes())
                        found[s].append((y0 // rows + i) * across + x0 // columns + j)
    finally:
        for out in outs:
            out.close()
    placed = [np.concatenate(f) if f else np.zeros(0, np.int64) for f in found]
    if not any(len(p) for p in placed):  # nothing found: one empty frame (a SEG has frames)
        with open(os.path.join(spool, "0"), "wb") as out:
            out.write(bytes(rows * columns // 8))
        placed[0] = np.zeros(1, np.int64)
    return placed, overlap


def _slide_header(
    highdicom: Any,
    sources: list[Any],
    names: list[str],
    coded: list[Any] | None,
    tile: tuple[int, int],
) -> tuple[Any, list[Any]]:
    """highdicom's SEG of a one-tile slide of ``sources``' place, patient, study and
    specimen, segments ``names`` (each present): its header (no frames yet), and the
    per-frame functional groups of its frames, one a segment, at the matrix's origin."""
    proxies = []
    for source in sources:
        proxy = copy.deepcopy(source)
        proxy.TotalPixelMatrixRows, proxy.TotalPixelMatrixColumns = tile
        proxy.Rows, proxy.Columns = tile
        proxy.NumberOfFrames = 1
        proxies.append(proxy)
    first = sources[0]
    seg = highdicom.seg.Segmentation(
        source_images=proxies,
        pixel_array=np.ones((1, *tile, len(names)), np.uint8),
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(names, coded),
        series_instance_uid=highdicom.UID(),
        series_number=int(first.get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer="raysegment",
        manufacturer_model_name="raysegment",
        software_versions=__version__,
        device_serial_number="none",
        series_description="raysegment",
        tile_pixel_array=True,
        tile_size=tile,
        dimension_organization_type="TILED_SPARSE",
    )
    items = list(seg.PerFrameFunctionalGroupsSequence)
    del seg.PerFrameFunctionalGroupsSequence, seg.PixelData
    return seg, items


_FRAME_CONTENT = 0x00209111
_PLANE_POSITION = 0x0048021A


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """An element in explicit VR little endian (a VR of a 2-byte length), padded even."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _sequence(tag: int, item: bytes) -> bytes:
    """A sequence of one ``item`` (its encoded elements), lengths defined."""
    head = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, len(item) + 8)
    return head + struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item


def _write_frame_groups(
    f: Any,
    highdicom: Any,
    header: Any,
    items: list[Any],
    placed: list[np.ndarray],
    tile: tuple[int, int],
    across: int,
) -> None:
    """The Per-Frame Functional Groups Sequence (of undefined length, an item a frame, as
    highdicom makes them): each segment's tiles ``placed`` in row order, a segment's frames
    in ``items``' form, their positions and dimension indices (of the positions any frame
    has). The items' other groups (the segment's) are encoded once by pydicom; a frame's
    position and indices here, as pydicom encodes them item by item ~40 times slower."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element
    from pydicom.valuerep import format_number_as_ds

    rows, columns = tile
    origin = items[0].PlanePositionSlideSequence[0]
    spacing = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    where = highdicom.spatial.PixelToReferenceTransformer(
        image_position=[
            float(origin.XOffsetInSlideCoordinateSystem),
            float(origin.YOffsetInSlideCoordinateSystem),
            float(origin.ZOffsetInSlideCoordinateSystem),
        ],
        image_orientation=[float(v) for v in header.ImageOrientationSlide],
        pixel_spacing=[float(v) for v in spacing],
    )
    every = np.concatenate(placed)
    tile_rows = np.unique(every // across)  # the dimension indices' values
    tile_columns = np.unique(every % across)

    def encoded(element: Any) -> bytes:
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_data_element(out, element)
        return out.getvalue()

    def ds(value: float) -> bytes:
        return format_number_as_ds(value).encode()

    f.write(struct.pack("<HH2sHI", 0x5200, 0x9230, b"SQ", 0, 0xFFFFFFFF))
    for s, found in enumerate(placed):
        tiles = np.sort(found)
        i, j = tiles // across, tiles % across
        corners = np.stack([j * columns, i * rows], axis=1)  # (column, row), from 0
        positions = where(corners).tolist() if len(tiles) else []
        segment = [int(v) for v in items[s].FrameContentSequence[0].DimensionIndexValues][:-2]
        indices = np.stack(
            [np.searchsorted(tile_rows, i) + 1, np.searchsorted(tile_columns, j) + 1], axis=1
        ).tolist()
        parts = [
            e.tag if e.tag in (_FRAME_CONTENT, _PLANE_POSITION) else encoded(e) for e in items[s]
        ]
        out = bytearray()
        for k in range(len(tiles)):
            x, y, z = positions[k]
            values = struct.pack(f"<{len(segment) + 2}I", *segment, *indices[k])
            content = _sequence(_FRAME_CONTENT, _element(0x00209157, b"UL", values))
            position = _sequence(
                _PLANE_POSITION,
                _element(0x0040072A, b"DS", ds(x))
                + _element(0x0040073A, b"DS", ds(y))
                + _element(0x0040074A, b"DS", ds(z))
                + _element(0x0048021E, b"SL", struct.pack("<i", int(j[k]) * columns + 1))
                + _element(0x0048021F, b"SL", struct.pack("<i", int(i[k]) * rows + 1)),
            )
            item = b"".join(
                content if p == _FRAME_CONTENT else position if p == _PLANE_POSITION else p
                for p in parts
            )
            out += struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
            if len(out) > 1 << 22:
                f.write(out)
                out = bytearray()
        f.write(out)
    f.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


def _write_pixel_data(f: Any, spool: str, placed: list[np.ndarray], frame_bytes: int) -> None:
    """The frames spooled, each segment's in its tiles' row order, as native pixel data."""
    length = frame_bytes * sum(len(p) for p in placed)
    f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length + length % 2))
    for s, tiles in enumerate(placed):
        with open(os.path.join(spool, str(s)), "rb") as stored:
            order = np.argsort(tiles, kind="stable")
            for start in range(0, len(order), 1024):
                frames = order[start : start + 1024].tolist()
                f.write(
                    b"".join(
                        os.pread(stored.fileno(), frame_bytes, k * frame_bytes) for k in frames
                    )
                )
    if length % 2:
        f.write(b"\0")
