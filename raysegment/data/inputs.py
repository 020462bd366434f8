"""Resolve ``input`` (+ ``pattern``) to the list of images to process."""

from __future__ import annotations

import re

from raysegment import storage
from raysegment.data.dicom import is_dicom_dir, segmentations_only
from raysegment.data.hdf5 import hdf5_parts
from raysegment.data.sources import is_zarr, tensorstore_format
from raysegment.errors import InputImageError

__all__ = ["DEFAULT_PATTERN", "IMAGE_NAMES", "resolve_inputs"]

IMAGE_NAMES = (
    r"ome\.tiff?|tiff?|ome\.zarr|zarr|n5|svs|ndpi|qptiff|czi|h5|hdf5|hdf|ims|mrc|rec"
    r"|mrxs|vms|vmu|scn|bif|svslide|nii|nii\.gz"
)
"""The suffixes of the images a directory holds, as a regular expression's alternatives."""
DEFAULT_PATTERN = rf".*\.({IMAGE_NAMES})"


def resolve_inputs(
    input: str,
    pattern: str | None = None,
    dataset: str | None = None,
    prefix: str = "",
    labels: bool = False,
) -> list[str]:
    """An image file, zarr path or HDF5 dataset (``vol.h5/volumes/raw``) -> itself; a
    directory -> its entries matching ``pattern`` (a regular expression, full match on the
    name, case-insensitive), sorted. Local paths come back absolute; fsspec URLs
    (``s3://bucket/dir``) as given. ``dataset`` (``volumes/raw``): that dataset of each
    HDF5 file instead (``a.h5`` -> ``a.h5/volumes/raw``); ``prefix``: where the keys
    ``pattern`` and ``dataset`` sit in the config (``images.``), for the errors. Of a
    directory of DICOM series' directories, those of DICOM Segmentations alone (a study's
    SEGs beside its scans) are images' labels: left out unless ``labels``.

    Raises:
        InputImageError: the path is missing, nothing in the directory matches, or
            ``dataset`` is given for a path that is no HDF5 file.
    """
    paths = _matching(input, pattern, prefix, labels)
    return paths if not dataset else [_dataset_of(p, dataset, prefix) for p in paths]


def _dataset_of(path: str, dataset: str, prefix: str) -> str:
    parts = hdf5_parts(path)
    if parts is None:
        raise InputImageError(
            f"{path}: {prefix}dataset={dataset} names a dataset of HDF5 files; this is none "
            f"(narrow {prefix}pattern to the HDF5 files, or unset {prefix}dataset)"
        )
    if parts[1]:
        raise InputImageError(
            f"{path}: names a dataset already; give the file, or unset {prefix}dataset"
        )
    return f"{path}/{dataset.strip('/')}"


def _matching(input: str, pattern: str | None, prefix: str, labels: bool) -> list[str]:
    path = storage.resolve(input)
    if tensorstore_format(path) is not None or hdf5_parts(path) is not None:
        return [path]  # an N5 or precomputed volume, an HDF5 file or a dataset in one
    if not storage.exists(path):
        raise InputImageError(f"{input}: no such file or directory; check the input= path")
    if not storage.is_dir(path) or is_zarr(path):
        return [path]
    regex = re.compile(pattern or DEFAULT_PATTERN, re.IGNORECASE)
    entries = sorted(storage.listdir(path))
    found = [storage.join(path, name) for name in entries if regex.fullmatch(name)]
    if not found:
        # A DICOM series' directory (a volume a series, or a slide), or a directory of such.
        if is_dicom_dir(path):
            return [path]
        found = [storage.join(path, n) for n in entries if is_dicom_dir(storage.join(path, n))]
        if not labels:  # a header of each, 16 at a time at a URL
            segs = storage.each(segmentations_only, found)
            found = [p for p, seg in zip(found, segs, strict=True) if not seg]
    if not found:
        names = entries[:5]
        seen = f"; it holds e.g. {names}" if names else "; it is empty"
        raise InputImageError(
            f"{path}: no entry matches {prefix}pattern={pattern or DEFAULT_PATTERN!r}{seen}; "
            f"set {prefix}pattern to a regular expression matching the image names"
        )
    return found
