"""DICOM series (CT, MR, PET): a directory of single-slice DICOM files, or of an enhanced
(multi-frame) file, each series in it one volume, through pydicom (``pip install
'raysegment[dicom]'``); local, or at a URL (a prefix of ``.dcm`` files). A series of DICOM's
whole-slide images (pathology: a file a pyramid level, tiles as frames) is a slide: read
here frame by frame (``DicomSlideSource``) where its frames lie in row order (TILED_FULL)
in one focal plane, JPEG baseline, JPEG 2000 or uncompressed (grey ones JPEG-LS too), as
most scanners and converters write them: brightfield, a level one file of RGB frames;
fluorescence, a level one file of grey frames of several optical paths or a file a path,
a channel a path. Any other layout (sparse tiling, several focal planes, RGB levels split
over files) is read through OpenSlide (``pip install 'raysegment[openslide]'``), which
composes brightfield slides of any of them.

Slices are ordered by their position along the slice normal (``ImagePositionPatient``
against ``ImageOrientationPatient``), not by file name; the slice spacing is the distance
between neighbours, the pixel spacing ``PixelSpacing`` (millimetres); stored values are
rescaled by ``RescaleSlope`` and ``RescaleIntercept`` (CT's Hounsfield units); an
enhanced file's frames take these from their functional groups. A region read reads the
files (or frames) of its slices only.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.data.sources import SOURCES, ImageInfo, ImageSource, image_stem, reader_module
from raysegment.errors import InputImageError

__all__ = [
    "SEGMENTATIONS",
    "WHOLE_SLIDE",
    "DicomSeriesSource",
    "DicomSlideSource",
    "dicom_file_sources",
    "dicom_sources",
    "first_header",
    "is_dicom_dir",
    "is_segmentation",
    "segmentations_only",
]

WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"
"""SOP class of DICOM's whole-slide images (VL Whole Slide Microscopy Image Storage)."""
SEGMENTATIONS = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
"""SOP classes of DICOM Segmentations (segments as frames; label maps): labels, not
images (``dicom_labels``)."""
_MAGIC = b"DICM"
"""Bytes 128-131 of a DICOM file (Part 10)."""


def _is_dicom_file(path: str) -> bool:
    if path.lower().endswith(".dcm"):
        return True
    if "." in os.path.basename(path) or storage.is_url(path):  # another kind, or unknown
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == _MAGIC
    except OSError:
        return False


def _files(directory: str) -> list[str]:
    paths = [storage.join(directory, n) for n in sorted(storage.listdir(directory))]
    local = not storage.is_url(directory)
    return [p for p in paths if (not local or os.path.isfile(p)) and _is_dicom_file(p)]


def is_dicom_dir(path: str) -> bool:
    """Whether the directory ``path`` holds DICOM files (``.dcm``, or locally files
    without a suffix that begin as DICOM files do): a series to read as one volume, or a
    slide. At a URL (``s3://idc-open-data/<series>/``, as the NCI Imaging Data Commons
    keeps its series), ``.dcm`` files."""
    return storage.is_dir(path) and bool(_files(path))


def _header(path: str) -> Any:
    """The header of the DICOM file ``path`` (all but its pixels), its file name set."""
    pydicom = reader_module(path, "pydicom", "DICOM", "dicom")
    try:
        with storage.open_read(path) as f:  # at a URL: its first block alone
            header = pydicom.dcmread(f, stop_before_pixels=True)
    except Exception as e:  # pydicom's errors have no common base
        raise InputImageError(
            f"{path}: not a readable DICOM file ({type(e).__name__}: {e}); remove it "
            f"from the series' directory or export the series again"
        ) from e
    header.filename = path
    return header


def _series(directory: str) -> list[tuple[str, list[Any]]]:
    """Each series of ``directory``: its UID and its slices' headers, in the order of the
    series' numbers."""
    reader_module(directory, "pydicom", "DICOM", "dicom")  # its error names the directory
    found: dict[str, list[Any]] = defaultdict(list)
    headers = storage.each(_header, _files(directory))
    segmentations = 0
    for header in headers:
        if "Rows" not in header:
            continue  # no image (a DICOMDIR, a structured report)
        if is_segmentation(header):  # labels, beside the series they label
            segmentations += 1
            continue
        found[str(header.get("SeriesInstanceUID", ""))].extend(_frames(header))
    if not found and segmentations:
        raise InputImageError(
            f"{directory}: holds DICOM Segmentations, labels rather than an image; give them "
            f"to training as labels (labels.dir=) and their series as images"
        )
    if not found:
        raise InputImageError(f"{directory}: its DICOM files hold no image")
    return sorted(found.items(), key=lambda item: int(item[1][0].get("SeriesNumber", 0) or 0))


_FRAME_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameContentSequence": ("TemporalPositionIndex",),
    "MREchoSequence": ("EffectiveEchoTime",),
}
"""An enhanced (multi-frame) file's functional groups a slice's header takes its
attributes from, the frame's own or the shared ones."""
_IMAGE_KEYS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "FrameOfReferenceUID",
    "Modality",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "PixelRepresentation",
)


def _frames(header: Any) -> list[Any]:
    """The slices of a DICOM file: itself, or an enhanced CT, MR or PET file's frames,
    each as a header of its own (its position, orientation, spacing and rescaling from
    its functional groups; ``frame``: its index in the file)."""
    count = int(header.get("NumberOfFrames", 1) or 1)
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if count == 1 or not per_frame or len(per_frame) != count or _is_slide(header):
        return [header]  # a slide's frames are its tiles, not slices
    from pydicom.dataset import Dataset

    shared = (header.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    slices = []
    for index, own in enumerate(per_frame):
        frame = Dataset()
        for key in _IMAGE_KEYS:
            if key in header:
                frame[key] = header[key]
        for group, keys in _FRAME_GROUPS.items():
            item = own if group in own else shared
            if group in item and len(item[group].value):
                for key in (k for k in keys if k in item[group][0]):
                    frame[key] = item[group][0][key]
        frame.filename, frame.frame = header.filename, index
        slices.append(frame)
    return slices


def _grouped(headers: list[Any], key: Any) -> list[list[Any]]:
    """``headers`` by their ``key``, in its order."""
    groups: dict[float, list[Any]] = defaultdict(list)
    for header in headers:
        groups[key(header)].append(header)
    return [groups[k] for k in sorted(groups)]


def _number(value: Any) -> float:
    """An attribute's value as a number (0 where empty; the first of several)."""
    return 0.0 if value in (None, "") else float(np.atleast_1d(np.asarray(value, float))[0])


def _time_points(headers: list[Any]) -> list[list[Any]]:
    """A series' slices by time point (DCE-MRI's, perfusion CT's, a 4D CT's phases: the
    classic ``TemporalPositionIdentifier`` or an enhanced frame's
    ``TemporalPositionIndex``), in their order; one where they have none or one."""
    return _grouped(
        headers,
        lambda h: _number(h.get("TemporalPositionIndex", h.get("TemporalPositionIdentifier"))),
    )


def _echoes(headers: list[Any]) -> list[list[Any]]:
    """A time point's slices by echo (a multi-echo MR's: the classic ``EchoNumbers``, else
    the echo time, an enhanced frame's ``EffectiveEchoTime``), in their order; one where
    they have none or one."""
    if all("EchoNumbers" in h for h in headers):
        return _grouped(headers, lambda h: _number(h.EchoNumbers))
    return _grouped(headers, lambda h: _number(h.get("EffectiveEchoTime", h.get("EchoTime"))))


def _echo_name(k: int, header: Any) -> str:
    """Echo ``k``'s channel name (``echo 1 (TE 4.92 ms)``)."""
    time = header.get("EffectiveEchoTime", header.get("EchoTime"))
    return f"echo {k + 1}" + (f" (TE {float(time):g} ms)" if time not in (None, "") else "")


def _where(header: Any) -> np.ndarray:
    """A slice's position (x, y, z, millimetres; 0 where it has none)."""
    return np.asarray(header.get("ImagePositionPatient", [0, 0, 0]), float)


def _normal(header: Any) -> np.ndarray:
    orientation = np.asarray(header.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
    return np.cross(orientation[:3], orientation[3:])


def _ordered(directory: str, headers: list[Any]) -> tuple[list[Any], float | None]:
    """The slices in order along their normal, and the spacing between them (None for one
    slice or slices without positions); unevenly spaced slices are refused."""
    if len(headers) == 1 or any("ImagePositionPatient" not in h for h in headers):
        ordered = sorted(headers, key=lambda h: int(h.get("InstanceNumber", 0) or 0))
        return ordered, None
    normal = _normal(headers[0])
    depth = {
        id(h): float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))) for h in headers
    }
    ordered = sorted(headers, key=lambda h: depth[id(h)])
    steps = np.diff([depth[id(h)] for h in ordered])
    if (steps <= 0).any() or np.ptp(steps) > 0.01 * max(abs(float(steps.mean())), 1e-6):
        raise InputImageError(
            f"{directory}: its slices are not evenly spaced along their normal (steps "
            f"{np.round(steps.min(), 3)} to {np.round(steps.max(), 3)} mm: missing, repeated "
            f"or tilted slices); export the series again or resample it to one volume"
        )
    return ordered, float(steps.mean())


class _DicomSource(ImageSource):
    """A series of a DICOM directory (``series``: its index there, by series number), or
    the series of a file (``path``); its headers, where the caller read them already,
    given as ``headers``."""

    def __init__(self, *args: Any, headers: list[Any] | None = None, **kwargs: Any) -> None:
        self._headers = headers
        super().__init__(*args, **kwargs)

    def _series_headers(self) -> list[Any]:
        """The series' headers, read once: kept out of the pickled source (what reads need
        of them, the source keeps)."""
        headers, self._headers = self._headers, None
        if headers:
            return headers
        if storage.is_dir(self.path):
            return _series(self.path)[self.series or 0][1]
        uid = str(_header(self.path).get("SeriesInstanceUID", ""))
        return dict(_series(storage.parent(self.path)))[uid]


class DicomSeriesSource(_DicomSource):
    """A DICOM series as a volume (z, y, x), or a volume a time point (t, z, y, x: the
    same slices at each of its temporal positions), its echoes (a multi-echo MR's) as
    channels: its pixel spacing and slice spacing in millimetres; rescaled values as
    float32 (the stored type where slope 1 and intercept 0); the first slice's position as
    the origin where the slices are axial (rows along x, columns along y)."""

    kind = "dicom"

    def _inspect(self) -> ImageInfo:
        if self.level > 0:
            raise self._no_level(1)
        times = [
            [_ordered(self.path, e) for e in _echoes(h)]
            for h in _time_points(self._series_headers())
        ]
        (ordered, spacing) = times[0][0]
        placed = [_where(h) for h in ordered]
        for t, echoes in enumerate(times):
            if len(echoes) != len(times[0]):
                raise InputImageError(
                    f"{self.path}: its time point {t + 1} has {len(echoes)} echoes, its "
                    f"first {len(times[0])}; export every echo of every temporal "
                    f"position, or each as a series"
                )
            for e, (others, _) in enumerate(echoes):
                if len(others) != len(ordered) or not np.allclose(
                    [_where(h) for h in others], placed, atol=1e-3
                ):
                    what = [f"echo {e + 1}"] if len(echoes) > 1 else []
                    what += [f"time point {t + 1}"] if len(times) > 1 else []
                    raise InputImageError(
                        f"{self.path}: its {' of '.join(what)} covers other slices than its "
                        f"first ({len(others)} against {len(ordered)}); export every temporal "
                        f"position and echo of the same slices, or each as a series"
                    )
        # t by t, each echo by echo, each in slice order
        every = [h for echoes in times for slices, _ in echoes for h in slices]
        self.files = [h.filename for h in every]
        self.frames = [getattr(h, "frame", None) for h in every]  # an enhanced file's
        first = ordered[0]
        # Where each slice lies (x, y, z, millimetres): DICOM Segmentations' frames are
        # matched to the slices by it (``dicom_labels``).
        self.positions = (
            np.array([[float(v) for v in h.ImagePositionPatient] for h in ordered])
            if all("ImagePositionPatient" in h for h in ordered)
            else None
        )
        self.orientation = [float(v) for v in first.get("ImageOrientationPatient", [])]
        self.frame_of_reference = str(first.get("FrameOfReferenceUID", ""))
        rows, columns = int(first.Rows), int(first.Columns)
        if any((int(h.Rows), int(h.Columns)) != (rows, columns) for h in every):
            raise InputImageError(f"{self.path}: the series' slices differ in size")
        if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in every):
            raise InputImageError(
                f"{self.path}: multi-frame DICOM files without a position for each frame (cine "
                f"loops, old-style multi-frame files); raysegment reads series of one slice a file "
                f"and enhanced CT, MR and PET files: convert it to NIfTI (dcm2niix) or OME-Zarr"
            )
        if int(first.get("SamplesPerPixel", 1)) != 1:
            raise InputImageError(
                f"{self.path}: a colour DICOM series; raysegment reads grey-level series "
                f"(CT, MR, PET)"
            )
        self.rescale = [
            (float(h.get("RescaleSlope", 1) or 1), float(h.get("RescaleIntercept", 0) or 0))
            for h in every
        ]
        signed = int(first.get("PixelRepresentation", 0)) == 1
        bits = int(first.get("BitsAllocated", 16))
        stored = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
        dtype = stored if all(r == (1.0, 0.0) for r in self.rescale) else np.dtype(np.float32)
        scale: dict[str, float] = {}
        if "PixelSpacing" in first:
            row, column = (float(v) for v in first.PixelSpacing)
            scale |= {"y": row, "x": column}
        if spacing is not None:
            scale["z"] = spacing
        elif "SliceThickness" in first and first.SliceThickness:
            scale["z"] = float(first.SliceThickness)
        units = dict.fromkeys(scale, "millimeter")
        origin = {}
        axial = np.allclose(
            np.asarray(first.get("ImageOrientationPatient", []), float), [1, 0, 0, 0, 1, 0]
        )
        if axial and "ImagePositionPatient" in first:
            x, y, z = (float(v) for v in first.ImagePositionPatient)
            origin = {"x": x, "y": y, "z": z}
        shape = (len(times), len(times[0]), len(ordered), rows, columns)
        names = None
        if len(times[0]) > 1:
            names = tuple(_echo_name(k, slices[0]) for k, (slices, _) in enumerate(times[0]))
        return ImageInfo(shape, dtype, scale, units, names, origin)  # type: ignore[arg-type]

    def _open(self) -> Any:
        return reader_module(self.path, "pydicom", "DICOM", "dicom")

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        pydicom = self.handle
        (z0, z1), (y0, y1), (x0, x1) = region
        out = np.empty((len(channels), z1 - z0, y1 - y0, x1 - x0), self.info.dtype)
        echoes, planes = self.info.shape[1:3]
        for (i, c), k in itertools.product(enumerate(channels), range(z1 - z0)):
            z = (t * echoes + c) * planes + z0 + k
            try:
                with storage.open_read(self.files[z]) as f:
                    if self.frames[z] is None:
                        pixels = pydicom.dcmread(f).pixel_array[y0:y1, x0:x1]
                    else:  # that frame of the file alone
                        frame = pydicom.pixels.pixel_array(f, index=self.frames[z])
                        pixels = frame[y0:y1, x0:x1]
            except Exception as e:  # a missing decoder, a truncated file
                raise InputImageError(
                    f"{self.files[z]}: cannot read its pixels ({type(e).__name__}: {e}); "
                    f"compressed series need pydicom's decoders (pip install pylibjpeg "
                    f"pylibjpeg-libjpeg) or a decompressed export"
                ) from e
            slope, inter = self.rescale[z]
            out[i, k] = pixels * slope + inter if out.dtype.kind == "f" else pixels
        return out


_JPEG = "1.2.840.10008.1.2.4.50"
_JPEG2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_RAW = "1.2.840.10008.1.2.1"
"""Transfer syntaxes read here: JPEG baseline, JPEG 2000 (lossless and lossy), JPEG-LS
(grey frames; lossless and near-lossless) and uncompressed little endian (explicit VR)."""
_ITEM, _END = 0xE000FFFE, 0xE0DDFFFE
"""Item and sequence delimitation tags of encapsulated pixel data, as read little endian."""


class _Indirect(Exception):
    """A slide this reader does not take: OpenSlide reads it."""


@dataclass(frozen=True)
class _Level:
    paths: tuple[str, ...]  # its files: one (RGB, or grey of several optical paths), or one a path
    height: int
    width: int
    tile: tuple[int, int]
    frames: tuple[int, ...]  # each file's
    syntax: str
    photometric: str
    spacing: float | None  # a pixel's side, micrometres
    channels: tuple[tuple[int, int], ...] = ()
    """Fluorescence: each optical path's (file, first frame), a channel each; RGB: none
    (its channels are a frame's samples)."""
    bits: int = 8
    names: tuple[str, ...] | None = None  # the optical paths'

    @property
    def grey(self) -> bool:
        return bool(self.channels)


_GREY_SYNTAXES = (_JPEG, *_JPEG2000, *_JPEG_LS, _RAW)


def _level(header: Any) -> _Level:
    """A file of a pyramid level: its layout from its ``header`` (its channels: its optical
    paths' where grey); raises ``_Indirect`` for layouts read through OpenSlide."""
    syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
    photometric = str(header.get("PhotometricInterpretation", ""))
    tiling = str(header.get("DimensionOrganizationType", ""))
    samples, bits = int(header.get("SamplesPerPixel", 0)), int(header.get("BitsAllocated", 0))
    paths = int(header.get("NumberOfOpticalPaths", 1) or 1)
    colour = photometric in ("RGB", "YBR_FULL_422", "YBR_FULL", "YBR_ICT", "YBR_RCT")
    rgb = (
        samples == 3 and bits == 8 and colour and paths == 1 and syntax in (_JPEG, *_JPEG2000, _RAW)
    )
    grey = (
        samples == 1
        and photometric == "MONOCHROME2"
        and (bits == 8 or (bits == 16 and syntax != _JPEG))
        and int(header.get("PixelRepresentation", 0) or 0) == 0
        and syntax in _GREY_SYNTAXES
    )
    if not (
        tiling == "TILED_FULL"
        and int(header.get("TotalPixelMatrixFocalPlanes", 1) or 1) == 1
        and int(header.get("PlanarConfiguration", 0) or 0) == 0
        and (rgb or grey)
    ):
        raise _Indirect(header.filename)
    spacing = None
    try:
        measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        spacing = float(measures.PixelSpacing[1]) * 1000  # millimetres; (row, column)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        pass
    frames = int(header.get("NumberOfFrames", 1) or 1)
    height, width = int(header.TotalPixelMatrixRows), int(header.TotalPixelMatrixColumns)
    tile = (int(header.Rows), int(header.Columns))
    channels: tuple[tuple[int, int], ...] = ()
    names = None
    if grey:  # TILED_FULL: the optical paths' frames one after another
        tiles = -(-height // tile[0]) * -(-width // tile[1])
        channels = tuple((0, p * tiles) for p in range(paths))
        described = list(header.get("OpticalPathSequence", []))[:paths]
        names = tuple(
            str(o.get("OpticalPathDescription") or o.get("OpticalPathIdentifier") or "")
            for o in described
        )
        names = names if len(names) == paths and all(names) else None
    return _Level(
        (str(header.filename),),
        height,
        width,
        tile,
        (frames,),
        syntax,
        photometric,
        spacing,
        channels,
        bits,
        names,
    )


def _joined(files: list[_Level]) -> _Level:
    """One level of grey files of the same size and coding (one or more optical paths
    each), their channels in their optical paths' order; raises ``_Indirect`` for any
    other level of several files (concatenated frames, several focal planes)."""
    first = files[0]
    if len(files) == 1:
        return first
    same = {(f.height, f.width, f.tile, f.syntax, f.bits) for f in files}
    if not all(f.grey for f in files) or len(same) > 1:
        raise _Indirect(first.paths[0])
    channels = tuple((k, start) for k, f in enumerate(files) for _, start in f.channels)
    names = [n for f in files for n in (f.names or ())]
    return _Level(
        tuple(f.paths[0] for f in files),
        first.height,
        first.width,
        first.tile,
        tuple(f.frames[0] for f in files),
        first.syntax,
        first.photometric,
        first.spacing,
        channels,
        first.bits,
        tuple(names) if len(names) == len(channels) else None,
    )


def _levels(headers: list[Any]) -> list[_Level]:
    """The slide's pyramid levels, largest first: one file each, or a grey file per
    optical path (fluorescence), in the order of their paths' identifiers (a level of
    several files otherwise, concatenated or of several focal planes, is read through
    OpenSlide)."""
    files = sorted(
        ((_level(h), _path_key(h)) for h in headers if _is_scan(h)),
        key=lambda found: (-found[0].width, found[1]),
    )
    return [
        _joined([level for level, _ in group])
        for _, group in itertools.groupby(files, key=lambda found: found[0].width)
    ]


def _path_key(header: Any) -> tuple[int, str]:
    """A file's place among its level's: by its first optical path's identifier, numbers
    in their order."""
    paths = header.get("OpticalPathSequence") or [None]
    name = str(paths[0].get("OpticalPathIdentifier", "")) if paths[0] is not None else ""
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def _items(f: Any, at: int, where: str) -> Iterator[tuple[int, int]]:
    """(offset, length) of each item of encapsulated pixel data from the item at ``at`` on
    (its tag's offset, its value's length), to the sequence's end."""
    f.seek(at)
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise InputImageError(f"{where}: its pixel data ends early (a truncated file?)")
        tag, size = struct.unpack("<II", head)
        if tag == _END:
            return
        if tag != _ITEM:
            raise InputImageError(f"{where}: its pixel data is not well formed")
        yield f.tell() - 8, size
        f.seek(size, os.SEEK_CUR)


def _frame_table(path: str, frames: int, bits: int) -> tuple[np.ndarray, bool]:
    """(frames, 2): where each of a file's ``frames`` frames lies in it (offset, length),
    and whether they are encapsulated: then each span is the frame's items (its
    fragments), found from the extended offset table, else the basic one, else by
    counting the items (one a frame; frames of several fragments without a table are
    another reader's: at a URL, counting them reads the whole file); else ``bits`` bits
    each, one after another: each span the bytes holding them (a bit-packed frame may
    begin and end mid-byte: at bit ``bits * k % 8`` of its first). Raises ``_Indirect``
    where the pixel data is not explicit little endian."""
    import pydicom

    with storage.open_read(path) as f:
        header = pydicom.dcmread(f, stop_before_pixels=True)
        start = f.tell()  # at the pixel data's element, where dcmread stopped
        group, element, vr, length = struct.unpack("<HH2s2xI", f.read(12))
        if (group, element) != (0x7FE0, 0x0010) or vr not in (b"OB", b"OW"):
            raise _Indirect(path)
        if length != 0xFFFFFFFF:  # native: frames one after another
            if length * 8 < bits * frames:
                raise InputImageError(f"{path}: its pixel data is shorter than its frames")
            first = bits * np.arange(frames, dtype=np.int64)  # each frame's first bit
            spans = [start + 12 + first // 8, (first % 8 + bits + 7) // 8]
            return np.stack(spans, axis=1), False
        tag, table = struct.unpack("<II", f.read(8))  # the basic offset table's item
        if tag != _ITEM:
            raise _Indirect(path)
        basic = np.frombuffer(f.read(table), "<u4").astype(np.int64)
        first = start + 12 + 8 + table
        if "ExtendedOffsetTable" in header and "ExtendedOffsetTableLengths" in header:
            offsets = np.frombuffer(header.ExtendedOffsetTable, "<u8").astype(np.int64)
            lengths = np.frombuffer(header.ExtendedOffsetTableLengths, "<u8").astype(np.int64)
            if len(offsets) == frames == len(lengths):  # one fragment a frame
                return np.stack([first + offsets, lengths + 8], axis=1), True
        # A basic table's offsets (32 bits) wrap in files over 4 GiB: then items count.
        if len(basic) == frames and (np.diff(basic) > 0).all():
            starts = first + basic
            *_, (last, item) = _items(f, int(starts[-1]), path)  # to the sequence's end
            ends = np.append(starts[1:], last + 8 + item)
            return np.stack([starts, ends - starts], axis=1), True
        items = np.asarray(list(_items(f, first, path)), np.int64).reshape(-1, 2)
    if len(items) != frames:
        raise _Indirect(path)
    return np.stack([items[:, 0], items[:, 1] + 8], axis=1), True


class _Frames:
    """A level's file and its frame table: a process's handle (a local file open)."""

    def __init__(self, path: str, table: np.ndarray, encapsulated: bool) -> None:
        self.path = path
        self.table = table
        self.encapsulated = encapsulated
        self.fd = None if storage.is_url(path) else os.open(path, os.O_RDONLY)

    def read(self, indices: list[int]) -> list[bytes]:
        """The frames ``indices``' bytes, as coded (each one's fragments joined); at a URL
        in one round of concurrent requests, neighbouring frames in one."""
        starts, lengths = self.table[indices].T.tolist()
        if self.fd is not None:
            spans = [os.pread(self.fd, n, at) for at, n in zip(starts, lengths, strict=True)]
        else:
            ends = [at + n for at, n in zip(starts, lengths, strict=True)]
            spans = storage.read_ranges(self.path, starts, ends)
        return [self._frame(i, data, n) for i, data, n in zip(indices, spans, lengths, strict=True)]

    def _frame(self, index: int, data: bytes, length: int) -> bytes:
        if len(data) < length:
            raise OSError(f"frame {index} lies past the file's end (a truncated file?)")
        if not self.encapsulated:
            return data
        parts, at = [], 0
        while at < len(data):
            tag, size = struct.unpack_from("<II", data, at)
            if tag != _ITEM or at + 8 + size > len(data):
                raise OSError(f"frame {index}'s fragments are not well formed")
            parts.append(data[at + 8 : at + 8 + size])
            at += 8 + size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


class DicomSlideSource(_DicomSource):
    """A DICOM whole-slide image read frame by frame (``path``: the slide's directory, or a
    file of one of its levels): brightfield as three channels, R, G and B, of 8 bits;
    fluorescence (grey frames) a channel per optical path, of 8 or 16 bits, named after
    the paths' descriptions; the pixel size from ``PixelSpacing`` (micrometres), the levels
    its files of ``ImageType`` VOLUME, largest first. A region reads and decodes the
    frames it touches, and nothing else."""

    kind = "dicom-slide"

    def _inspect(self) -> ImageInfo:
        levels = _levels(self._series_headers())
        self.levels = len(levels)
        if self.level >= self.levels:
            raise self._no_level(self.levels)
        self.level_files = [list(level.paths) for level in levels]
        """Each level's files, largest first (a DICOM SEG pyramid references them)."""
        self.layout = layout = levels[self.level]
        down, across = (
            -(-n // t) for n, t in zip((layout.height, layout.width), layout.tile, strict=True)
        )
        paths = [sum(k == f for f, _ in layout.channels) or 1 for k in range(len(layout.paths))]
        if any(n != down * across * p for n, p in zip(layout.frames, paths, strict=True)):
            raise _Indirect(layout.paths[0])
        self.grid = (down, across)
        # Made here, once: a slide it cannot tell the frames of goes to OpenSlide.
        rows, columns = layout.tile
        bits = rows * columns * layout.bits * (1 if layout.grey else 3)
        tables = [
            _frame_table(p, n, bits) for p, n in zip(layout.paths, layout.frames, strict=True)
        ]
        self.tables = [table for table, _ in tables]
        self.encapsulated = tables[0][1]
        full = levels[0]
        spacing = layout.spacing
        if spacing is None and full.spacing is not None:
            spacing = full.spacing * full.width / layout.width
        scale = {"y": spacing, "x": spacing} if spacing else {}
        units = dict.fromkeys(scale, "micrometer")
        channels = len(layout.channels) if layout.grey else 3
        shape = (1, channels, 1, layout.height, layout.width)
        dtype = np.dtype(np.uint16 if layout.bits == 16 else np.uint8)
        return ImageInfo(shape, dtype, scale, units, layout.names)  # type: ignore[arg-type]

    def at_level(self, level: int) -> ImageSource:
        return slide_source(self.path, self.series, self.name, level)

    def _open(self) -> Any:
        return [
            _Frames(path, table, self.encapsulated)
            for path, table in zip(self.layout.paths, self.tables, strict=True)
        ]

    @staticmethod
    def _close(handle: Any) -> None:
        for frames in handle:
            frames.close()

    def _decode(self, data: bytes) -> np.ndarray:
        """A frame's pixels: (rows, columns, 3) RGB, or (rows, columns) grey."""
        import imagecodecs

        syntax, photometric, tile = self.layout.syntax, self.layout.photometric, self.layout.tile
        if syntax == _RAW:
            dtype = np.dtype(f"<u{self.layout.bits // 8}")
            return np.frombuffer(data, dtype).reshape(*tile, *(() if self.layout.grey else (3,)))
        if syntax == _JPEG:
            if self.layout.grey:
                return imagecodecs.jpeg8_decode(data)
            # RGB: components stored as they are (no YCbCr transform in the JPEG).
            space = "RGB" if photometric == "RGB" else None
            return imagecodecs.jpeg8_decode(data, colorspace=space, outcolorspace="RGB")
        if syntax in _JPEG_LS:
            return imagecodecs.jpegls_decode(data)
        return imagecodecs.jpeg2k_decode(data)  # its colour transform is in its codestream

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = region
        out = np.empty((len(channels), z1 - z0, y1 - y0, x1 - x0), self.info.dtype)
        (rows, columns), across = self.layout.tile, self.grid[1]
        tiles = [
            (ty, tx)
            for ty in range(y0 // rows, (y1 - 1) // rows + 1)
            for tx in range(x0 // columns, (x1 - 1) // columns + 1)
        ]
        files: list[_Frames] = self.handle
        # Brightfield: each tile's frame once, its samples the channels; fluorescence: each
        # channel's own frames, its optical path's.
        reads = (
            [
                (files[f], start, [i])
                for i, (f, start) in enumerate(self.layout.channels[c] for c in channels)
            ]
            if self.layout.grey
            else [(files[0], 0, list(range(len(channels))))]
        )
        for frames, start, places in reads:
            coded = frames.read([start + ty * across + tx for ty, tx in tiles])
            for (ty, tx), data in zip(tiles, coded, strict=True):
                tile = self._decode(data)
                top, left = ty * rows, tx * columns
                ya, yb = max(y0, top), min(y1, top + rows)
                xa, xb = max(x0, left), min(x1, left + columns)
                part = tile[ya - top : yb - top, xa - left : xb - left]
                for i in places:
                    out[i, 0, ya - y0 : yb - y0, xa - x0 : xb - x0] = (
                        part if self.layout.grey else part[..., channels[i]]
                    )
        return out


def slide_source(
    path: str, series: int | None, name: str, level: int, headers: list[Any] | None = None
) -> ImageSource:
    """The DICOM slide of ``path`` (its directory and ``series``, or a level's file): read
    here where its layout allows, else through OpenSlide (``slides.OpenSlideSource``),
    which finds the series' other files beside the one it opens."""
    from raysegment.data.slides import OpenSlideSource

    try:
        return DicomSlideSource(path, series=series, name=name, level=level, headers=headers)
    except _Indirect as e:
        if storage.is_url(path):
            raise InputImageError(
                f"{path}: a DICOM slide of a layout raysegment reads through OpenSlide "
                f"(sparse tiling, several focal planes, an RGB level over several "
                f"files), which reads local files only: copy the slide's files to a local or "
                f"mounted path"
            ) from e
        return OpenSlideSource(str(e), name=name, level=level)


def _is_slide(header: Any) -> bool:
    return str(header.get("SOPClassUID", "")) == WHOLE_SLIDE


def is_segmentation(header: Any) -> bool:
    """Whether a DICOM file is a DICOM Segmentation (labels, not an image)."""
    return str(header.get("SOPClassUID", "")) in SEGMENTATIONS


def segmentations_only(directory: str) -> bool:
    """Whether the DICOM files of ``directory`` are DICOM Segmentations only (a SEG
    series'), from its first file's header (and the others' where that one is one)."""
    files = _files(directory)
    if not files or not is_segmentation(_header(files[0])):
        return False
    return all(is_segmentation(_header(f)) for f in files[1:])


def first_header(path: str) -> Any | None:
    """The header of the DICOM file ``path`` (``.dcm``), or of the first DICOM file of the
    directory ``path``; None where ``path`` is neither (another kind of image)."""
    if path.lower().endswith(".dcm"):
        return _header(path)
    if image_stem(path) != storage.basename(path).rstrip("/") or not storage.is_dir(path):
        return None  # another image's suffix (an OME-Zarr, an N5 directory), or a file
    files = _files(path)
    return _header(files[0]) if files else None


def _is_scan(header: Any) -> bool:
    """Whether a whole-slide image's file is a level of its scan (``ImageType`` VOLUME),
    not its label, overview or thumbnail."""
    return "VOLUME" in [str(v).upper() for v in header.get("ImageType", [])]


def dicom_sources(directory: str, level: int = 0) -> list[ImageSource]:
    """A source per series of ``directory``, named after it (``<dir>_s<number>`` where it
    holds several): a volume per series of slices; a slide (``slide_source``) per
    whole-slide image, whose label, overview and thumbnail images are not segmented."""
    found = [  # every header read once, for all the series; a slide's label alone is none
        (i, headers, _is_slide(headers[0]))
        for i, (_, headers) in enumerate(_series(directory))
        if not _is_slide(headers[0]) or any(_is_scan(h) for h in headers)
    ]
    if not found:
        raise InputImageError(
            f"{directory}: its DICOM whole-slide files hold no scan (ImageType VOLUME), only "
            f"label, overview or thumbnail images; add the files of the slide's levels"
        )
    stem = image_stem(directory)
    sources: list[ImageSource] = []
    for k, (series, headers, slide) in enumerate(found):
        name = stem if len(found) == 1 else f"{stem}_s{k}"
        if slide:
            sources.append(slide_source(directory, series, name, level, headers))
        else:
            source = DicomSeriesSource(
                directory, series=series, name=name, level=level, headers=headers
            )
            sources.append(source)
    return sources


def dicom_file_sources(path: str, level: int = 0) -> list[ImageSource]:
    """The image of a DICOM file, named after it: the slide it is a level of (every file
    of its series in its directory), or an enhanced file's volume.

    Raises:
        InputImageError: a file of a series of slices (its directory is the image), of a
            slide's label, overview or thumbnail alone, or a DICOM Segmentation.
    """
    header, stem = _header(path), image_stem(path)
    if is_segmentation(header):
        raise InputImageError(
            f"{path}: a DICOM Segmentation, labels rather than an image; give it to training "
            f"as labels (labels.dir=) and its series or slide as images"
        )
    if not _is_slide(header):
        frames = _frames(header)
        if len(frames) > 1:  # an enhanced file: a volume of its own
            return [DicomSeriesSource(path, name=stem, level=level, headers=frames)]
        raise InputImageError(
            f"{path}: one file of a DICOM series; give the series' directory "
            f"(input={storage.parent(path)}), whose files are read as one volume"
        )
    if not _is_scan(header):
        raise InputImageError(
            f"{path}: a whole-slide image's label, overview or thumbnail, not its scan; "
            f"give a file of a pyramid level (ImageType VOLUME) or the slide's directory"
        )
    return [slide_source(path, None, stem, level)]


SOURCES.register("dicom")(DicomSeriesSource)
SOURCES.register("dicom-slide")(DicomSlideSource)
