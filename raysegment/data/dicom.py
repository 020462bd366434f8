"""DICOM series (CT, MR, PET): a directory of single-slice DICOM files, each series in it
one volume, through pydicom (``pip install 'raysegment[dicom]'``). A series of DICOM's
whole-slide images (pathology: a file a pyramid level, tiles as frames) is a slide read
through OpenSlide (``pip install 'raysegment[dicom,openslide]'``), which composes its
tiles, JPEG, JPEG 2000 or uncompressed, fully or sparsely tiled.

Slices are ordered by their position along the slice normal (``ImagePositionPatient``
against ``ImageOrientationPatient``), not by file name; the slice spacing is the distance
between neighbours, the pixel spacing ``PixelSpacing`` (millimetres); stored values are
rescaled by ``RescaleSlope`` and ``RescaleIntercept`` (CT's Hounsfield units). A region
read reads the files of its slices only.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

from raysegment.data.sources import SOURCES, ImageInfo, ImageSource, reader_module
from raysegment.errors import InputImageError

__all__ = [
    "WHOLE_SLIDE",
    "DicomSeriesSource",
    "dicom_file_sources",
    "dicom_sources",
    "is_dicom_dir",
]

WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"
"""SOP class of DICOM's whole-slide images (VL Whole Slide Microscopy Image Storage)."""
_MAGIC = b"DICM"
"""Bytes 128-131 of a DICOM file (Part 10)."""


def _is_dicom_file(path: str) -> bool:
    if path.lower().endswith(".dcm"):
        return True
    if "." in os.path.basename(path):  # a named file of another kind
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == _MAGIC
    except OSError:
        return False


def _files(directory: str) -> list[str]:
    names = sorted(os.listdir(directory))
    paths = [os.path.join(directory, n) for n in names]
    return [p for p in paths if os.path.isfile(p) and _is_dicom_file(p)]


def is_dicom_dir(path: str) -> bool:
    """Whether the local directory ``path`` holds DICOM files (``.dcm``, or files without
    a suffix that begin as DICOM files do): a series to read as one volume."""
    return os.path.isdir(path) and bool(_files(path))


def _header(path: str) -> Any:
    """The header of the DICOM file ``path`` (all but its pixels), its file name set."""
    pydicom = reader_module(path, "pydicom", "DICOM", "dicom")
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
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
    for path in _files(directory):
        header = _header(path)
        if "Rows" not in header:
            continue  # no image (a DICOMDIR, a structured report)
        found[str(header.get("SeriesInstanceUID", ""))].append(header)
    if not found:
        raise InputImageError(f"{directory}: its DICOM files hold no image")
    return sorted(found.items(), key=lambda item: int(item[1][0].get("SeriesNumber", 0) or 0))


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


class DicomSeriesSource(ImageSource):
    """A DICOM series as a volume (z, y, x): ``series`` is its index among the directory's
    series (by series number); its pixel spacing and slice spacing in millimetres;
    rescaled values as float32 (the stored type where slope 1 and intercept 0); the first
    slice's position as the origin where the slices are axial (rows along x, columns along
    y)."""

    kind = "dicom"

    def __init__(self, *args: Any, headers: list[Any] | None = None, **kwargs: Any) -> None:
        self._headers = headers  # the series' headers where the caller read them already
        super().__init__(*args, **kwargs)

    def _inspect(self) -> ImageInfo:
        if self.level > 0:
            raise self._no_level(1)
        headers = self._headers or _series(self.path)[self.series or 0][1]
        self._headers = None  # kept out of the pickled source: its files and rescaling say it
        ordered, spacing = _ordered(self.path, headers)
        self.files = [h.filename for h in ordered]
        first = ordered[0]
        rows, columns = int(first.Rows), int(first.Columns)
        if any((int(h.Rows), int(h.Columns)) != (rows, columns) for h in ordered):
            raise InputImageError(f"{self.path}: the series' slices differ in size")
        if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in ordered):
            raise InputImageError(
                f"{self.path}: multi-frame (enhanced) DICOM files; raysegment reads series of "
                f"one slice a file: convert it to NIfTI (dcm2niix) or OME-Zarr"
            )
        if int(first.get("SamplesPerPixel", 1)) != 1:
            raise InputImageError(
                f"{self.path}: a colour DICOM series; raysegment reads grey-level series "
                f"(CT, MR, PET)"
            )
        self.rescale = [
            (float(h.get("RescaleSlope", 1) or 1), float(h.get("RescaleIntercept", 0) or 0))
            for h in ordered
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
        shape = (1, 1, len(ordered), rows, columns)
        return ImageInfo(shape, dtype, scale, units, origin=origin)  # type: ignore[arg-type]

    def _open(self) -> Any:
        return reader_module(self.path, "pydicom", "DICOM", "dicom")

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        pydicom = self.handle
        (z0, z1), (y0, y1), (x0, x1) = region
        out = np.empty((1, z1 - z0, y1 - y0, x1 - x0), self.info.dtype)
        for k, z in enumerate(range(z0, z1)):
            try:
                pixels = pydicom.dcmread(self.files[z]).pixel_array[y0:y1, x0:x1]
            except Exception as e:  # a missing decoder, a truncated file
                raise InputImageError(
                    f"{self.files[z]}: cannot read its pixels ({type(e).__name__}: {e}); "
                    f"compressed series need pydicom's decoders (pip install pylibjpeg "
                    f"pylibjpeg-libjpeg) or a decompressed export"
                ) from e
            slope, inter = self.rescale[z]
            out[0, k] = pixels * slope + inter if out.dtype.kind == "f" else pixels
        return out  # one channel: ``channels`` is (0,)


def _is_slide(header: Any) -> bool:
    return str(header.get("SOPClassUID", "")) == WHOLE_SLIDE


def _scan_file(headers: list[Any]) -> str | None:
    """A file of a whole-slide image's scan (``ImageType`` VOLUME, a pyramid level) among
    its series' ``headers``; None for a series of its label, overview or thumbnail alone."""
    for header in headers:
        if "VOLUME" in [str(v).upper() for v in header.get("ImageType", [])]:
            return str(header.filename)
    return None


def dicom_sources(directory: str, level: int = 0) -> list[ImageSource]:
    """A source per series of ``directory``, named after it (``<dir>_s<number>`` where it
    holds several): a volume per series of slices; a slide (``slides.OpenSlideSource``) per
    whole-slide image, whose label, overview and thumbnail images are not segmented."""
    from raysegment.data.slides import OpenSlideSource
    from raysegment.data.sources import image_stem

    found = [  # every header read once, for all the series: (index, headers, scan file)
        (i, headers, _scan_file(headers) if _is_slide(headers[0]) else None)
        for i, (_, headers) in enumerate(_series(directory))
    ]
    found = [f for f in found if f[2] is not None or not _is_slide(f[1][0])]
    if not found:
        raise InputImageError(
            f"{directory}: its DICOM whole-slide files hold no scan (ImageType VOLUME), only "
            f"label, overview or thumbnail images; add the files of the slide's levels"
        )
    stem = image_stem(directory)
    sources: list[ImageSource] = []
    for k, (series, headers, scan) in enumerate(found):
        name = stem if len(found) == 1 else f"{stem}_s{k}"
        if scan is not None:  # OpenSlide finds the series' other files beside this one
            sources.append(OpenSlideSource(scan, name=name, level=level))
        else:
            source = DicomSeriesSource(
                directory, series=series, name=name, level=level, headers=headers
            )
            sources.append(source)
    return sources


def dicom_file_sources(path: str, level: int = 0) -> list[ImageSource]:
    """The image of a DICOM file: the slide it is a level of (every file of its series in
    its directory), named after the file.

    Raises:
        InputImageError: a file of a series of slices (its directory is the image), or of a
            slide's label, overview or thumbnail alone.
    """
    from raysegment.data.slides import OpenSlideSource

    header = _header(path)
    if not _is_slide(header):
        raise InputImageError(
            f"{path}: one file of a DICOM series; give the series' directory "
            f"(input={os.path.dirname(path) or '.'}), whose files are read as one volume"
        )
    if _scan_file([header]) is None:
        raise InputImageError(
            f"{path}: a whole-slide image's label, overview or thumbnail, not its scan; "
            f"give a file of a pyramid level (ImageType VOLUME) or the slide's directory"
        )
    name = os.path.basename(path)
    stem = name[: -len(".dcm")] if name.lower().endswith(".dcm") else name
    return [OpenSlideSource(path, name=stem, level=level)]


SOURCES.register("dicom")(DicomSeriesSource)
