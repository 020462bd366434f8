"""Pair training images with their labels by name."""

from __future__ import annotations

import re

from raysegment import storage
from raysegment.data.annotations import is_geojson
from raysegment.data.channels import CHANNEL_FILE, channel_cases
from raysegment.data.dicom import first_header, is_segmentation
from raysegment.data.dicom_labels import referenced_series, segmentation_header
from raysegment.data.inputs import IMAGE_NAMES, resolve_inputs
from raysegment.data.sources import image_stem
from raysegment.errors import InputImageError

__all__ = ["LABELS_PATTERN", "pair_images"]

LABELS_PATTERN = rf".*\.({IMAGE_NAMES}|geojson|dcm)"
"""Labels a directory holds by default: images, GeoJSON annotations (QuPath's) and DICOM
Segmentations (``.dcm``; or directories of one, as series are kept)."""


def _stem(path: str) -> str:
    """The name an image or label pairs by: without its image or GeoJSON suffix, or a
    DICOM Segmentation's ``.seg.dcm`` (as ``finalize.dicom_seg`` names it)."""
    name = storage.basename(path)
    if is_geojson(name):
        return name.rsplit(".", 1)[0]
    stem = image_stem(path)
    return stem[: -len(".seg")] if name.lower().endswith(".seg.dcm") else stem


def _by_reference(images: dict[str, str], labels: dict[str, str]) -> dict[str, str]:
    """``labels`` without the ``images`` (one directory given as both: a study's, its scans
    beside their Segmentations), each DICOM Segmentation no image shares a name with keyed
    by the image of the series it references (a DICOM series' directory, by its first
    file's series); Segmentations among the ``images`` are dropped from them."""
    read = storage.each(segmentation_header, list(labels.values()))
    segmentations = dict(zip(labels, read, strict=True))
    series: dict[str, str] = {}
    if any(read):  # else no DICOM header of an image is read
        firsts = storage.each(first_header, list(images.values()))
        for key, header in zip(list(images), firsts, strict=True):
            if header is not None and is_segmentation(header):
                del images[key]  # a label beside its series
            elif header is not None:
                series.setdefault(str(header.get("SeriesInstanceUID", "")), key)
    scans = set(images.values())
    keyed: dict[str, str] = {}
    for key, path in labels.items():
        header = segmentations[key]
        if path in scans:
            continue
        if header is not None and key not in images:
            found = [series[uid] for uid in referenced_series(header) if uid in series]
            key = found[0] if found else key
        if key in keyed:
            raise InputImageError(
                f"{path}: labels {storage.basename(keyed[key])} label the same image {key!r}; "
                f"keep one DICOM SEG a series"
            )
        keyed[key] = path
    return keyed


def _keyed(
    directory: str,
    pattern: str | None,
    what: str,
    dataset: str | None = None,
    default: str | None = None,
) -> dict[str, str]:
    paths = resolve_inputs(directory, pattern or default, dataset, f"{what}.", what == "labels")
    regex = re.compile(pattern, re.IGNORECASE) if pattern else None
    keyed: dict[str, str] = {}
    for path in paths:
        match = regex.fullmatch(storage.basename(path)) if regex else None
        key = match.group(1) if match and match.re.groups else _stem(path)
        if key in keyed:
            raise InputImageError(
                f"{path}: {what} {storage.basename(keyed[key])} has the same pairing key {key!r}; "
                f"narrow {what}.pattern or rename one of them"
            )
        keyed[key] = path
    return keyed


def pair_images(
    images_dir: str,
    images_pattern: str | None,
    labels_dir: str,
    labels_pattern: str | None,
    images_dataset: str | None = None,
    labels_dataset: str | None = None,
) -> list[tuple[tuple[str, ...], str]]:
    """Match each image with the label of the same key, sorted by key: its files (one; a
    case's channel files) and the label's.

    The key is the pattern's first capture group when it has one (``(.*)_mask\\.tif``), else
    the file name without image suffixes; a DICOM Segmentation no image shares a name with
    pairs with the DICOM series it references (a series' directory: images and labels may
    be one study's directory). Labels are images, or GeoJSON annotations
    (``slide.geojson``, QuPath's export) by default. ``*_dataset``: the dataset read from
    each HDF5 file (``volumes/raw``), so that one file may hold an image and its label.
    Images named as a case's channel files (nnU-Net's ``imagesTr``: ``case_0000.nii.gz``,
    ``case_0001.nii.gz``, ...) whose labels are named after the cases (``labelsTr``:
    ``case.nii.gz``) are each case's files, in the order of their digits
    (``_channel_files``).

    Raises:
        InputImageError: a directory matches nothing, an image or label has no partner, or
            a case lacks a channel file the others have.
    """
    images = _keyed(images_dir, images_pattern, "images", images_dataset)
    labels = _keyed(labels_dir, labels_pattern, "labels", labels_dataset, LABELS_PATTERN)
    labels = _by_reference(images, labels)
    cases = _channel_files(images, labels)
    if cases is not None:
        images = {key: files[0] for key, files in cases.items()}
    for key, path in images.items():
        if key not in labels:
            raise InputImageError(
                f"{path}: no label with key {key!r} in {labels_dir}; labels pair with images "
                f"by name (set labels.pattern with a capture group, e.g. '(.*)_mask\\.tif')"
            )
    for key, path in labels.items():
        if key not in images:
            raise InputImageError(
                f"{path}: no image with key {key!r} in {images_dir}; remove it or fix "
                f"labels.pattern / images.pattern"
            )
    files = cases or {key: (path,) for key, path in images.items()}
    return [(files[k], labels[k]) for k in sorted(images)]


def _channel_files(
    images: dict[str, str], labels: dict[str, str]
) -> dict[str, tuple[str, ...]] | None:
    """Each case's channel files (``channels.channel_cases``), keyed by the case, where
    every image is named as a channel file and none pairs with a label by its own name;
    else None.

    Raises:
        InputImageError: a case without every channel file the cases have.
    """
    named = all(CHANNEL_FILE.match(key) for key in images)
    if not images or not named or images.keys() & labels.keys():
        return None
    cases = channel_cases(list(images.values()))
    if any(case is None for case, _ in cases):  # a key of a pattern's, not the file's name
        return None
    return {str(case): tuple(files) for case, files in cases}
