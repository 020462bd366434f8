"""A DICOM Segmentation of a DICOM series' or slide's output (``finalize.dicom_seg``): the
output's classes as segments of one binary DICOM SEG object that references the input, so
PACS and slide viewers (OHIF, 3D Slicer, Slim) show it over the scan and keep it with the
patient's study.

Masks give a segment per class channel (of a softmax model's, the classes after the
background, channel 0); labels give a segment per class value after 0 (the background).
Segments are named after the model's classes. Frames holding no segment are left out.

Both are streamed, so a SEG takes the memory of a chunk of the output, not of the output:
its frames (a series' slices, a slide's tiles of its pixel matrix: TILED_SPARSE) are read
from the output a chunk and a channel at a time and spooled to local disk; highdicom
writes the SEG of one frame of the input, every segment on it, whose header this module
sets for all the frames, and whose per-frame functional groups it repeats for each frame
(its position, source and dimension indices). The SEG is the one highdicom writes given
the whole output (tests compare the two), frames in the same order. A slide's SEG may
have a SEG of each of the slide's coarser levels beside it, the output sampled to its
pixels, one pyramid (``finalize.dicom_seg_levels``; highdicom's SEG pyramid, frame for
frame).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from raysegment import storage
from raysegment._version import __version__
from raysegment.data.sources import reader_module
from raysegment.errors import OutputError

__all__ = ["SEG_MODES", "level_location", "segments", "write_dicom_seg", "write_slide_seg"]

SEG_MODES = ("mask", "labels")
"""Finalize modes a DICOM SEG is written of (binary segments)."""


def level_location(location: str, level: int) -> str:
    """Where the SEG of a slide's coarser ``level`` goes, beside the SEG at ``location``
    (``<name>.seg.dcm``): ``<name>.seg.level<level>.dcm``."""
    return location.removesuffix(".seg.dcm") + f".seg.level{level}.dcm"


def segments(
    mode: str, classes: int, softmax: bool, regions: tuple[int, ...] = ()
) -> tuple[list[int], list[int]]:
    """What becomes a segment, and its class (of the model's ``classes``, one an output
    channel): for ``mask``, the output channels kept, after the background of a
    ``softmax`` model's; for ``labels``, the label values past 0 (the background), a
    region model's (``regions``, a label per channel) those its channels paint, each of
    the first channel painting it."""
    if mode == "labels" and regions:
        values = sorted(set(regions))
        return values, [regions.index(v) for v in values]
    if classes == 1:  # a one-channel model: its mask's channel 0, its labels' value 1
        return [0 if mode == "mask" else 1], [0]
    kept = list(range(1 if softmax or mode == "labels" else 0, classes))
    return kept, kept


def raysegment_algorithm(highdicom: Any) -> Any:
    """raysegment, of this version, as the algorithm that made a SEG's segments or an
    ANN's annotations."""
    from pydicom.sr.codedict import codes

    return highdicom.AlgorithmIdentificationSequence(
        name="raysegment", version=__version__, family=codes.DCM.ArtificialIntelligence
    )


def concept(highdicom: Any, code: Any, key: str) -> Any:
    """The ``key`` (category, type) concept of a class ``code`` (``{"category": [value,
    scheme, meaning], "type": [...]}`` or None), else SNOMED CT's ``Tissue``."""
    from pydicom.sr.codedict import codes

    found = (code or {}).get(key)
    return highdicom.sr.CodedConcept(*found) if found else codes.SCT.Tissue


def _descriptions(names: list[str], coded: list[Any] | None = None) -> list[Any]:
    """Segments ``names``, of the property category and type ``coded`` gives each
    (``{"category": [value, scheme, meaning], "type": [...]}``), else SNOMED CT's
    ``Tissue``."""
    import highdicom

    algorithm = raysegment_algorithm(highdicom)
    given = coded or [None] * len(names)
    return [
        highdicom.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=concept(highdicom, code, "category"),
            segmented_property_type=concept(highdicom, code, "type"),
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (name, code) in enumerate(zip(names, given, strict=True), start=1)
    ]


_TILE = (256, 256)
"""A slide SEG's frame where the slide's own tiles would not fill whole bytes."""
_MAX_PIXEL_BYTES = 0xFFFFFFFE
"""Native (uncompressed) pixel data's largest length: its length field has 32 bits."""
_FRAME_CONTENT = 0x00209111
_DERIVATION = 0x00089124
_PLANE_POSITION = 0x00209113  # (patient)
_SLIDE_POSITION = 0x0048021A


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
    labelmap: bool = False,
) -> None:
    """The zarr array ``output`` (``axes``: c, [z,] y, x) of a DICOM series, whose slices
    are ``files`` in the array's plane order (``frames``: each one's frame in an enhanced
    file, else None), as a DICOM SEG at ``location``: segments ``names``, of the channels
    (``mask``) or label values (``labels``) ``chosen``, coded as ``coded`` says (else
    ``Tissue``); frames the slices holding a segment, each segment's in highdicom's order
    (along its normal), read a chunk of slices at a time; a ``labelmap``: a frame a slice
    holding any segment, each pixel its segment's number."""
    import zarr

    pydicom = reader_module(location, "pydicom", "DICOM", "dicom")
    highdicom = reader_module(location, "highdicom", "DICOM Segmentations", "dicom")
    array = zarr.open_array(output, mode="r")
    enhanced = frames[0] is not None
    headers = _headers(files[:1] if enhanced else files, pydicom)
    if enhanced:
        groups = headers[0].PerFrameFunctionalGroupsSequence
        where = [groups[int(k or 0)].PlanePositionSequence[0].ImagePositionPatient for k in frames]
    else:
        where = [h.ImagePositionPatient for h in headers]
    positions = [highdicom.PlanePositionSequence("PATIENT", p) for p in where]
    given_spacing = _source_spacing(headers[0])  # before highdicom sets its own
    rows, columns = (int(n) for n in array.shape[-2:])
    with _spool_directory(location) as spool:
        header, items = _proxy(
            highdicom,
            headers,
            names,
            coded,
            mode,
            pixels=(rows, columns),
            labelmap=labelmap,
            plane_positions=[positions[0]],
        )
        regions = _slices(array, "z" in axes)
        placed, overlap = _spool(
            regions, mode, chosen, rows * columns, spool, _pixel_type(header, labelmap)
        )
        # The header of all the slices, not the proxy's one; its frames in highdicom's
        # order: along its normal (against z's for axial slices).
        measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        orientation = header.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        cosines = [float(v) for v in orientation.ImageOrientationPatient]
        every = np.asarray(where, float)
        spacing, _ = highdicom.spatial.get_volume_positions(every, cosines)
        if not given_spacing:
            measures.pop("SpacingBetweenSlices", None)
            if spacing is not None:
                measures.SpacingBetweenSlices = _ds(spacing)
        normal = highdicom.spatial.get_normal_vector(
            cosines, index_convention=highdicom.spatial.VOLUME_INDEX_CONVENTION
        )
        distance = every @ normal
        rank = np.argsort(np.argsort(distance, kind="stable"), kind="stable")
        included = np.unique(np.concatenate(placed))  # slices holding any segment
        index = np.zeros(len(where), np.int64)
        index[included[np.argsort(rank[included], kind="stable")]] = np.arange(len(included)) + 1
        # One segment (or a label map's one channel) on regularly spaced slices: "3D".
        if (len(chosen) == 1 or labelmap) and len(included) > 1:
            regular, _ = highdicom.spatial.get_volume_positions(
                every[included], cosines, sort=False
            )
            if regular is not None and regular > 0:
                header.DimensionOrganizationType = "3D"

        def parts(z: int) -> tuple[list[int], dict[int, bytes]]:
            position = pydicom.DataElement(_PLANE_POSITION, "SQ", positions[z])
            varying = {_PLANE_POSITION: _encoded(position)}
            if _DERIVATION in items[0]:  # the slice it was made of
                derivation = copy.deepcopy(items[0][_DERIVATION])
                source = derivation.value[0].SourceImageSequence[0]
                if enhanced:
                    source.ReferencedFrameNumber = int(frames[z] or 0) + 1
                else:
                    source.ReferencedSOPInstanceUID = headers[z].SOPInstanceUID
                varying[_DERIVATION] = _encoded(derivation)
            return [int(index[z])], varying

        _finish(
            pydicom, header, items, placed, rank, overlap, rows * columns, spool, parts, location
        )


def write_slide_seg(
    output: str,
    files: list[str],
    mode: str,
    chosen: list[int],
    names: list[str],
    location: str,
    coded: list[Any] | None = None,
    labelmap: bool = False,
    coarser: Sequence[tuple[list[str], str]] = (),
) -> None:
    """The zarr array ``output`` (c, y, x) of a DICOM slide's pyramid level, whose files are
    ``files`` (one, or one an optical path), as a DICOM SEG at ``location``: segments
    ``names``, of the channels (``mask``) or label values (``labels``) ``chosen``, coded as
    ``coded`` says (else ``Tissue``); frames the tiles (the slide's tile size) holding a
    segment, each segment's in row order (TILED_SPARSE), read a chunk at a time; a
    ``labelmap``: a frame a tile holding any segment, each pixel its segment's number.

    ``coarser``: the slide's coarser levels' files and their SEGs' locations, a SEG each
    of the output sampled to the level's pixels (each the output's pixel under its centre:
    highdicom's pyramids' nearest resizing), all in one series and pyramid (PyramidUID),
    numbered from the finest, so a viewer zoomed out fetches the level it shows."""
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
    segs = (mode, chosen, names, coded, labelmap)
    if not coarser:
        _slide_level(pydicom, highdicom, array, sources, False, segs, location, {})
        return
    now = datetime.datetime.now()  # the series' date and time, its levels' alike
    pyramid = {"series_instance_uid": highdicom.UID(), "pyramid_uid": highdicom.UID()}
    pyramid |= {"series_date": now.date(), "series_time": now.time()}
    levels = [(sources, location), *((_headers(f, pydicom), at) for f, at in coarser)]
    for number, (level, at) in enumerate(levels, 1):
        instance = pyramid | {"instance_number": number}
        _slide_level(pydicom, highdicom, array, level, number > 1, segs, at, instance)


def _slide_level(
    pydicom: Any,
    highdicom: Any,
    array: Any,
    sources: list[Any],
    sample: bool,
    segs: tuple[str, list[int], list[str], list[Any] | None, bool],
    location: str,
    instance: dict[str, Any],
) -> None:
    """``write_slide_seg``'s SEG of one level, whose headers are ``sources``: of the output
    as it is, or (``sample``) sampled to the pixel matrix of those (a coarser level's);
    ``instance``: its series, pyramid and number where it is one of a pyramid."""
    mode, chosen, names, coded, labelmap = segs
    first = sources[0]
    height, width = int(first.TotalPixelMatrixRows), int(first.TotalPixelMatrixColumns)
    tile = (int(first.Rows), int(first.Columns))
    tile = tile if tile[0] * tile[1] % 8 == 0 else _TILE  # frames of whole bytes
    rows, columns = tile
    across = -(-width // columns)
    proxies = []
    for source in sources:  # the slide as one tile: highdicom's header, a frame a segment
        proxy = copy.deepcopy(source)
        proxy.TotalPixelMatrixRows, proxy.TotalPixelMatrixColumns = tile
        proxy.Rows, proxy.Columns = tile
        proxy.NumberOfFrames = 1
        proxies.append(proxy)
    regions = _tiles(array, tile, (height, width) if sample else None)
    with _spool_directory(location) as spool:
        header, items = _proxy(
            highdicom,
            proxies,
            names,
            coded,
            mode,
            pixels=tile,
            labelmap=labelmap,
            instance=instance,
            tile_pixel_array=True,
            tile_size=tile,
            dimension_organization_type="TILED_SPARSE",
        )
        placed, overlap = _spool(
            regions, mode, chosen, rows * columns, spool, _pixel_type(header, labelmap)
        )
        header.TotalPixelMatrixRows, header.TotalPixelMatrixColumns = height, width
        origin = items[0][_SLIDE_POSITION].value[0]
        spacing = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        on_slide = highdicom.spatial.PixelToReferenceTransformer(
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

        def parts(k: int) -> tuple[list[int], dict[int, bytes]]:
            i, j = divmod(k, across)
            x, y, z = on_slide(np.array([[j * columns, i * rows]]))[0].tolist()
            position = _sequence(
                _SLIDE_POSITION,
                _element(0x0040072A, b"DS", _ds(x))
                + _element(0x0040073A, b"DS", _ds(y))
                + _element(0x0040074A, b"DS", _ds(z))
                + _element(0x0048021E, b"SL", struct.pack("<i", j * columns + 1))
                + _element(0x0048021F, b"SL", struct.pack("<i", i * rows + 1)),
            )
            indices = [
                int(np.searchsorted(tile_rows, i)) + 1,
                int(np.searchsorted(tile_columns, j)) + 1,
            ]
            return indices, {_SLIDE_POSITION: position}

        order = np.arange(-(-height // rows) * across)  # row by row
        _finish(
            pydicom, header, items, placed, order, overlap, rows * columns, spool, parts, location
        )


def _pixel_type(header: Any, labelmap: bool) -> np.dtype | None:
    """A label map's pixels' type (its header's 8 or 16 bits); None: binary."""
    return np.dtype(f"uint{int(header.BitsAllocated)}") if labelmap else None


def _source_spacing(header: Any) -> bool:
    """Whether a source gives its slices' spacing (highdicom keeps it): an enhanced file in
    its shared pixel measures."""
    try:
        measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    except (AttributeError, IndexError):
        return False
    return "SpacingBetweenSlices" in measures


def _proxy(
    highdicom: Any,
    sources: list[Any],
    names: list[str],
    coded: list[Any] | None,
    mode: str,
    pixels: tuple[int, int],
    labelmap: bool,
    instance: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[Any, list[dict[int, Any]]]:
    """highdicom's SEG of one plane of ``pixels`` (rows, columns) of ``sources``, every
    segment ``names`` on it (a ``labelmap``'s: the first), binary or a label map: its
    header (its patient, study, specimen, equipment, place and segments; its frames to be
    set), and the per-frame functional groups of its frames (binary: one a segment), by
    tag. ``instance``: its series, number and pyramid, where not new_instance's."""
    first = sources[0]
    kinds = highdicom.seg.SegmentationTypeValues
    seg = highdicom.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ones((1, *pixels) if labelmap else (1, *pixels, len(names)), np.uint8),
        segmentation_type=kinds.LABELMAP if labelmap else kinds.BINARY,
        segment_descriptions=_descriptions(names, coded),
        **new_instance(highdicom, first, 1000) | (instance or {}),
        series_description=f"raysegment {mode}"[:64],
        **options,
    )
    items = [{e.tag: e for e in item} for item in seg.PerFrameFunctionalGroupsSequence]
    del seg.PerFrameFunctionalGroupsSequence, seg.PixelData
    return seg, items


Regions = Iterator[tuple[Callable[[int], np.ndarray], np.ndarray]]
"""An output's regions: a function reading a channel's frames there (frames, rows,
columns), and the frames' keys (their slices, or tiles)."""


def _slices(array: Any, volume: bool) -> Regions:
    """``array`` (c, [z,] y, x; ``volume``: with z) a chunk of slices at a time, each slice
    a frame keyed by its index."""
    if not volume:  # one slice
        yield (lambda c: np.asarray(array[c])[None]), np.zeros(1, np.int64)
        return
    depth = array.chunks[1]
    for z0 in range(0, array.shape[1], depth):
        z1 = min(z0 + depth, array.shape[1])

        def read(c: int, z0: int = z0, z1: int = z1) -> np.ndarray:
            return np.asarray(array[c, z0:z1])

        yield read, np.arange(z0, z1)


def _tiles(array: Any, tile: tuple[int, int], shape: tuple[int, int] | None = None) -> Regions:
    """``array`` (c, y, x) a region of whole tiles at a time, covering about a chunk of
    ``array`` (at least a tile), each tile a frame (the matrix's last ones padded with 0)
    keyed by its row-major index. ``shape``: sampled to those rows and columns (a coarser
    level's), each pixel the array's under its centre (Pillow's nearest resizing, as
    highdicom's pyramids)."""
    rows, columns = tile
    source = array.shape[-2:]
    height, width = shape or source
    ys, xs = (
        np.minimum(((np.arange(n) + 0.5) * (m / n)).astype(np.int64), m - 1)
        for n, m in zip((height, width), source, strict=True)
    )
    across = -(-width // columns)
    step_y = -(-array.chunks[-2] * height // source[0] // rows) * rows
    step_x = -(-array.chunks[-1] * width // source[1] // columns) * columns
    for y0 in range(0, height, step_y):
        for x0 in range(0, width, step_x):
            ty = -(-min(step_y, height - y0) // rows)
            tx = -(-min(step_x, width - x0) // columns)

            def read(c: int, y0: int = y0, x0: int = x0, ty: int = ty, tx: int = tx) -> Any:
                y1, x1 = y0 + ty * rows, x0 + tx * columns
                if shape is None:
                    region = np.asarray(array[c, y0:y1, x0:x1])
                else:  # the chunks under the pixels sampled
                    region = np.asarray(array.oindex[c, ys[y0:y1], xs[x0:x1]])
                return _framed(region, ty, tx, tile)

            i, j = np.divmod(np.arange(ty * tx), tx)
            yield read, (y0 // rows + i) * across + x0 // columns + j


def _framed(region: np.ndarray, ty: int, tx: int, tile: tuple[int, int]) -> np.ndarray:
    """A region of ``ty`` x ``tx`` tiles (short at the matrix's last ones: padded with 0)
    as its tiles (frames, rows, columns), in row order."""
    rows, columns = tile
    padded = np.zeros((ty * rows, tx * columns), region.dtype)
    padded[: region.shape[0], : region.shape[1]] = region
    return padded.reshape(ty, rows, tx, columns).swapaxes(1, 2).reshape(-1, rows, columns)


def _spool(
    regions: Regions,
    mode: str,
    chosen: list[int],
    pixels: int,
    spool: str,
    labelmap: np.dtype | None = None,
) -> tuple[list[np.ndarray], bool]:
    """Each segment's frames (of ``pixels`` pixels) holding it, by the keys ``regions``
    gives them: the channels (``mask``) or label values (``labels``) ``chosen``, a channel
    read at a time; their pixels spooled to ``<spool>/<segment>`` in the same order (packed
    8 to a byte where a frame fills whole bytes, else a byte each); whether segments
    overlap. A ``labelmap`` (its pixels' type): one stream of the frames holding any
    segment, each pixel its segment's number (1 on: the later of overlapping ones). Nothing
    found is one empty frame of the first segment, at the first key: a SEG has frames."""
    streams = 1 if labelmap is not None else len(chosen)
    found: list[list[np.ndarray]] = [[] for _ in range(streams)]
    overlap, first = False, None
    outs = [open(os.path.join(spool, str(s)), "wb") for s in range(streams)]  # noqa: SIM115

    def keep(s: int, frames: np.ndarray, keys: np.ndarray) -> None:
        frames = frames.reshape(len(frames), -1)
        if labelmap is not None:
            frames = frames.astype(labelmap.newbyteorder("<"))
        elif pixels % 8 == 0:
            frames = np.packbits(frames, axis=1, bitorder="little")
        else:
            frames = frames.astype(np.uint8)
        outs[s].write(frames.tobytes())
        found[s].append(keys)

    def numbered(read: Callable[[int], np.ndarray], dtype: np.dtype) -> np.ndarray:
        """A region's frames of segment numbers (a label map's, of ``dtype``)."""
        if mode == "labels":
            labels = read(0)
            lut = np.zeros(max(chosen) + 1, dtype)
            lut[chosen] = np.arange(1, len(chosen) + 1)
            return lut[np.where(labels < len(lut), labels, 0)]
        out: np.ndarray | None = None
        for s, channel in enumerate(chosen):
            on = read(channel) != 0
            out = np.zeros(on.shape, dtype) if out is None else out
            out[on] = s + 1
        assert out is not None
        return out

    try:
        for read, keys in regions:
            first = keys[0] if first is None else first
            if labelmap is not None:
                segmented = numbered(read, labelmap)
                (k,) = np.nonzero(segmented.any(axis=(1, 2)))
                if len(k):
                    keep(0, segmented[k], keys[k])
                continue
            if mode == "labels":  # a segment a class value: the frames holding each found first
                labels = read(0)
                top = max(chosen) + 1
                held = np.stack([np.bincount(f.ravel(), minlength=top)[:top] > 0 for f in labels])
                for s, value in enumerate(chosen):
                    (k,) = np.nonzero(held[:, value])
                    if len(k):
                        keep(s, labels[k] == value, keys[k])
                continue
            count = None
            for s, channel in enumerate(chosen):
                plane = read(channel) != 0
                if len(chosen) > 1 and not overlap:
                    count = plane.astype(np.uint8) if count is None else count + plane
                (k,) = np.nonzero(plane.any(axis=(1, 2)))
                if len(k):
                    keep(s, plane[k], keys[k])
            overlap = overlap or bool(count is not None and (count > 1).any())
        if not any(found) and first is not None:
            keep(0, np.zeros((1, pixels), bool), np.array([first]))
    finally:
        for out in outs:
            out.close()
    return [np.concatenate(f) if f else np.zeros(0, np.int64) for f in found], overlap


def _finish(
    pydicom: Any,
    header: Any,
    items: list[dict[int, Any]],
    placed: list[np.ndarray],
    order: np.ndarray,
    overlap: bool,
    bits: int,
    spool: str,
    parts: Any,
    location: str,
) -> None:
    """The SEG at ``location``: ``header`` of its frames' number and overlap, the frames'
    functional groups (``parts``: a plane's spatial dimension indices and groups), the
    frames (of ``bits`` pixels) spooled; each segment's frames in their keys' ``order`` (a
    key's place)."""
    frames = sum(len(p) for p in placed)
    bits *= int(header.BitsAllocated)  # a frame's: a bit a pixel, or a label map's 8 or 16
    length = -(-frames * bits // 8)
    if length > _MAX_PIXEL_BYTES:
        raise OutputError(
            f"{location}: {frames} frames of {bits // 8} bytes, more than a DICOM SEG's "
            f"uncompressed pixel data holds (4 GiB): segment fewer classes, or at a coarser "
            f"level (input_level=), or drop finalize.dicom_seg"
        )
    header.NumberOfFrames = frames
    header.SegmentsOverlap = "YES" if overlap else "NO"
    with _written(location) as f:
        pydicom.dcmwrite(f, header, enforce_file_format=True)
        ordered = [np.argsort(order[keys], kind="stable") for keys in placed]
        # A plane's groups made once for all its segments' frames (a slice of 100 organs).
        shared = functools.cache(parts) if len(placed) > 1 else parts
        _write_frame_groups(f, items, placed, ordered, shared)
        vr = b"OW" if int(header.BitsAllocated) > 8 else b"OB"
        _write_pixel_data(f, spool, ordered, bits, length, vr)


def _ds(value: float) -> bytes:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value)).encode()


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """An element in explicit VR little endian (a VR of a 2-byte length), padded even."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _sequence(tag: int, item: bytes) -> bytes:
    """A sequence of one ``item`` (its encoded elements), lengths defined."""
    head = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, len(item) + 8)
    return head + struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item


def _encoded(element: Any) -> bytes:
    """``element`` in explicit VR little endian, by pydicom."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_data_element(out, element)
    return out.getvalue()


def _write_frame_groups(
    f: Any,
    items: list[dict[int, Any]],
    placed: list[np.ndarray],
    ordered: list[np.ndarray],
    parts: Any,
) -> None:
    """The Per-Frame Functional Groups Sequence (of undefined length, an item a frame, as
    highdicom makes them): each segment's planes ``placed`` in their ``ordered`` order, in
    the form of the segment's ``items``, each plane's groups and spatial dimension indices
    from ``parts``. The segment's groups are encoded once by pydicom, a frame's content
    here: pydicom encodes item by item ~40 times slower."""
    f.write(struct.pack("<HH2sHI", 0x5200, 0x9230, b"SQ", 0, 0xFFFFFFFF))
    for s, (keys, order) in enumerate(zip(placed, ordered, strict=True)):
        template = items[s]
        given = template[_FRAME_CONTENT].value[0].DimensionIndexValues  # one value, or more
        segment = [int(v) for v in np.atleast_1d(np.asarray(given, np.int64))]
        constant = {tag: _encoded(e) for tag, e in template.items() if tag != _FRAME_CONTENT}
        out = bytearray()
        for key in keys[order].tolist():
            spatial, varying = parts(key)
            values = segment[: len(segment) - len(spatial)] + spatial
            content = _element(0x00209157, b"UL", struct.pack(f"<{len(values)}I", *values))
            item = b"".join(
                _sequence(_FRAME_CONTENT, content)
                if tag == _FRAME_CONTENT
                else varying.get(tag, constant.get(tag, b""))
                for tag in sorted(template)
            )
            out += struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
            if len(out) > 1 << 22:
                f.write(out)
                out = bytearray()
        f.write(out)
    f.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


def _write_pixel_data(
    f: Any, spool: str, ordered: list[np.ndarray], bits: int, length: int, vr: bytes
) -> None:
    """The frames spooled, each segment's in its ``ordered`` order, as native pixel data of
    ``length`` bytes: one bit a pixel, frames of whole bytes copied, others packed here
    one after another (a frame may begin mid-byte)."""
    f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, length + length % 2))
    size = bits // 8 if bits % 8 == 0 else bits  # a frame's spooled bytes
    carry = np.zeros(0, np.uint8)
    for s, frames in enumerate(ordered):
        with open(os.path.join(spool, str(s)), "rb") as stored:
            order = frames.tolist()
            for start in range(0, len(order), 256):
                data = b"".join(
                    os.pread(stored.fileno(), size, k * size) for k in order[start : start + 256]
                )
                if bits % 8 == 0:
                    f.write(data)
                    continue
                pending = np.concatenate([carry, np.frombuffer(data, np.uint8)])
                whole = len(pending) // 8 * 8
                f.write(np.packbits(pending[:whole], bitorder="little").tobytes())
                carry = pending[whole:]
    if len(carry):
        f.write(np.packbits(carry, bitorder="little").tobytes())
    if length % 2:
        f.write(b"\0")


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


def new_instance(highdicom: Any, source: Any, series: int) -> dict[str, Any]:
    """highdicom's arguments of a new instance raysegment made of ``source``'s: in a
    series of its own, numbered ``series`` past the source's."""
    return {
        "series_instance_uid": highdicom.UID(),
        "series_number": int(source.get("SeriesNumber", 0) or 0) + series,
        "sop_instance_uid": highdicom.UID(),
        "instance_number": 1,
        "manufacturer": "raysegment",
        "manufacturer_model_name": "raysegment",
        "software_versions": __version__,
        "device_serial_number": "none",
    }


def _spool_directory(location: str) -> Any:
    """A temporary directory for a SEG's frames: beside a local ``location`` (its file
    system has room for the SEG), else the system's."""
    local = not storage.is_url(location)
    parent = storage.parent(location) if local else None
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".raysegment-seg-", dir=parent)


def _headers(files: list[str], pydicom: Any) -> list[Any]:
    """The files' headers (16 at a time at a URL)."""

    def header(path: str) -> Any:
        with storage.open_read(path) as f:
            return pydicom.dcmread(f, stop_before_pixels=True)

    return storage.each(header, files)
