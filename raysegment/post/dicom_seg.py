"""A DICOM Segmentation of a DICOM series' output (``finalize.dicom_seg``): the output's
classes as segments of one DICOM SEG object (binary, through highdicom) that references the
input series, so PACS viewers (OHIF, 3D Slicer, Horos) show it over the scan and keep it
with the patient's study.

Masks give a segment per class channel (of a softmax model's, the classes after the
background, channel 0); labels give a segment per class value after 0 (the background).
Segments are named after the model's classes. Frames holding no segment are left out.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from raysegment import storage
from raysegment._version import __version__
from raysegment.data.sources import reader_module

__all__ = ["SEG_MODES", "segments", "write_dicom_seg"]

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
    # Locally under another name until whole: a run killed here leaves no file that looks
    # complete (an object store shows an upload only once it is).
    local = not storage.is_url(location)
    target = location + ".partial" if local else location
    with storage.open_write(target) as f:
        seg.save_as(f, enforce_file_format=True)
    if local:
        os.replace(target, location)
