"""DICOM series: a directory of CT slices read as one volume, in slice order, rescaled;
DICOM whole-slide images (a file a pyramid level, tiles as frames) read as slides."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
import torch
import zarr
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    generate_uid,
)

from raysegment.data import slides
from raysegment.data.dicom import WHOLE_SLIDE
from raysegment.data.inputs import resolve_inputs
from raysegment.data.sources import open_sources
from raysegment.errors import InputImageError
from tests.conftest import random_image, raw_output, volume_output, whole_image_prediction

CODED = [
    {
        "category": ["123037004", "SCT", "Anatomical Structure"],
        "type": ["10200004", "SCT", "Liver"],
    },
    {
        "category": ["49755003", "SCT", "Morphologically Altered Structure"],
        "type": ["108369006", "SCT", "Neoplasm"],
    },
]
"""SNOMED CT's codes of a liver and a tumour in it, as DICOM SEGs code their segments."""
SPACING = (2.5, 0.7, 0.8)
"""The test CT's slice spacing and pixel spacing (row, column), millimetres."""
ORIGIN = (-120.0, 30.5, 11.25)
"""Its first slice's position (x, y, z), millimetres."""


def _patient(ds: Dataset, study: str, frame_of_reference: str) -> None:
    """The patient, study and equipment attributes every CT file carries (a DICOM SEG
    copies them)."""
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame_of_reference
    ds.PatientName, ds.PatientID = "Test^Phantom", "P1"
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20261205", "120000", ""
    ds.ReferringPhysicianName, ds.Manufacturer = "", "scanner"


def _instance(sop_class: str, syntax: str) -> Dataset:
    """A new instance of ``sop_class`` (its file meta information: coded in ``syntax``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def write_series(
    directory: Path,
    stored: np.ndarray,
    spacing: tuple[float, float, float] = SPACING,
    origin: tuple[float, float, float] = ORIGIN,
    rescale: tuple[float, float] = (1.0, -1024.0),
    number: int = 3,
    names: list[str] | None = None,
    echo_times: list[float] | None = None,
) -> None:
    """``stored`` (z, y, x, uint16) as a CT series of one file a slice, as scanners export
    them: positions from ``origin`` (x, y, z) ``spacing[0]`` apart along z, pixel spacing
    ``spacing[1:]`` (row, column), files named by ``names`` (default: by a shuffled
    order, so the files' names do not give the slices' order). ``echo_times``: a
    multi-echo MR series, ``stored`` (echoes, z, y, x), an echo each of those times (ms),
    each slice's echoes files of their own."""
    directory.mkdir(parents=True, exist_ok=True)
    series, study, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    echoes = stored if echo_times else stored[None]
    count = echoes.shape[0] * echoes.shape[1]
    order = names or [f"IM{k:04d}.dcm" for k in np.random.default_rng(1).permutation(count)]
    slices = [(e, z, plane) for e, volume in enumerate(echoes) for z, plane in enumerate(volume)]
    for k, (e, z, plane) in enumerate(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(directory / order[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series, number
        _patient(ds, study, frame_of_reference)
        ds.InstanceNumber = count - k  # scanners number in either direction
        if echo_times:
            ds.Modality, ds.EchoNumbers, ds.EchoTime = "MR", e + 1, echo_times[e]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + z * spacing[0]]
        ds.PixelSpacing = list(spacing[1:])
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelData = plane.astype(np.uint16).tobytes()
        ds.save_as(directory / order[k], enforce_file_format=True)


def test_a_ct_series_reads_as_one_volume_in_slice_order(tmp_path) -> None:
    """Files named in no particular order are slices ordered by their position; values
    rescaled to Hounsfield units (float32); spacing and origin in millimetres."""
    stored = random_image((7, 30, 26)).astype(np.uint16)
    write_series(tmp_path / "chest", stored)
    assert resolve_inputs(str(tmp_path / "chest")) == [str(tmp_path / "chest")]
    write_series(tmp_path / "abdomen", stored[:2])  # a directory of series: one each
    assert resolve_inputs(str(tmp_path)) == [str(tmp_path / "abdomen"), str(tmp_path / "chest")]
    (source,) = open_sources(tmp_path / "chest")
    assert source.kind == "dicom" and source.name == "chest"
    assert source.info.shape == (1, 1, 7, 30, 26) and source.info.dtype == np.float32
    assert source.info.scale == pytest.approx({"z": 2.5, "y": 0.7, "x": 0.8})
    assert source.info.units == dict.fromkeys("zyx", "millimeter")
    assert source.info.origin == pytest.approx({"x": -120.0, "y": 30.5, "z": 11.25})
    region = ((1, 6), (4, 30), (0, 20))
    want = stored[1:6, 4:30, :20].astype(np.float32) - 1024
    np.testing.assert_array_equal(source.read(0, (0,), region)[0], want)
    # Without rescaling, the stored type; two series in one directory: an image each.
    write_series(
        tmp_path / "two",
        stored[:3],
        rescale=(1.0, 0.0),
        number=2,
        names=["a.dcm", "b.dcm", "c.dcm"],
    )
    write_series(
        tmp_path / "two",
        stored[3:],
        rescale=(1.0, 0.0),
        number=5,
        names=["d.dcm", "e.dcm", "f.dcm", "g.dcm"],
    )
    first, second = open_sources(tmp_path / "two")
    assert (first.name, second.name) == ("two_s0", "two_s1")
    assert first.info.shape[2] == 3 and second.info.shape[2] == 4
    assert second.info.dtype == np.uint16
    np.testing.assert_array_equal(second.read(0, (0,), ((0, 4), (0, 30), (0, 26)))[0], stored[3:])


def test_a_series_with_a_gap_or_a_bad_file_fails_in_one_line(tmp_path, monkeypatch) -> None:
    stored = random_image((5, 16, 16)).astype(np.uint16)
    write_series(tmp_path / "gap", stored)
    (tmp_path / "gap" / sorted(p.name for p in (tmp_path / "gap").iterdir())[2]).unlink()
    with pytest.raises(InputImageError, match="gap: its slices are not evenly spaced"):
        open_sources(tmp_path / "gap")
    write_series(tmp_path / "bad", stored)
    (tmp_path / "bad" / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(InputImageError, match="junk.dcm: not a readable DICOM file"):
        open_sources(tmp_path / "bad")
    write_series(tmp_path / "enhanced", stored[:1])
    (only,) = (tmp_path / "enhanced").iterdir()
    ds = pydicom.dcmread(only)
    ds.NumberOfFrames = 2
    ds.save_as(only)
    with pytest.raises(InputImageError, match="enhanced: multi-frame .*dcm2niix"):
        open_sources(tmp_path / "enhanced")
    ds.SOPClassUID = WHOLE_SLIDE  # a slide's level without its tiles' layout
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.save_as(only)
    with pytest.raises(InputImageError, match=r"enhanced/IM\d+.dcm: not a readable whole-slide"):
        open_sources(tmp_path / "enhanced")
    write_series(tmp_path / "ok", stored)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(InputImageError, match=r"needs pydicom: pip install 'raysegment\[dicom\]'"):
        open_sources(tmp_path / "ok")


@pytest.mark.usefixtures("ray_session")
def test_infer_segments_a_ct_series_into_ome_zarr_in_millimetres(tmp_path, make_model) -> None:
    stored = random_image((10, 48, 40)).astype(np.uint16)
    write_series(tmp_path / "lung", stored, rescale=(0.5, -100.0))
    model, module = make_model(dims=3, out_ch=1)
    ms, got = volume_output(tmp_path, tmp_path / "lung", model)
    scale, moved = ms["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == pytest.approx([1.0, 2.5, 0.7, 0.8])
    assert moved["translation"] == pytest.approx([0.0, 11.25, 30.5, -120.0])
    hu = stored.astype(np.float32) * 0.5 - 100
    np.testing.assert_allclose(got, whole_image_prediction(module, hu), rtol=1e-5, atol=1e-4)
    assert pydicom.dcmread(next((tmp_path / "lung").iterdir())).Modality == "CT"


CODECS = {  # transfer syntax, photometric interpretation
    "raw": (ExplicitVRLittleEndian, "RGB"),
    "jpeg": (JPEGBaseline8Bit, "YBR_FULL_422"),  # YCbCr, as most scanners store tiles
    "jpeg-rgb": (JPEGBaseline8Bit, "RGB"),  # RGB components (Aperio's SVS, converted)
    "j2k": (JPEG2000Lossless, "YBR_RCT"),  # reversible colour transform
}


def _encoded(frame: np.ndarray, codec: str) -> bytes:
    if codec == "jpeg":
        return imagecodecs.jpeg8_encode(frame, level=90)
    if codec == "jpeg-rgb":
        return imagecodecs.jpeg8_encode(frame, level=90, outcolorspace="RGB")
    return imagecodecs.jpeg2k_encode(frame, codecformat="J2K", reversible=True)


def _tiles(image: np.ndarray, tile: int) -> tuple[np.ndarray, int, int]:
    """``image`` (H, W, ...) in ``tile``-square frames in row order, zero-padded at the
    right and bottom: (frames, tile, tile, ...), and the grid's rows and columns."""
    h, w = image.shape[:2]
    down, across = -(-h // tile), -(-w // tile)
    padded = np.zeros((down * tile, across * tile, *image.shape[2:]), image.dtype)
    padded[:h, :w] = image
    grid = padded.reshape(down, tile, across, tile, *image.shape[2:]).swapaxes(1, 2)
    return grid.reshape(-1, tile, tile, *image.shape[2:]), down, across


def _untiled(frames: np.ndarray, down: int, across: int, shape: tuple[int, ...]) -> np.ndarray:
    """The image (``shape``) ``frames`` in row order tile."""
    tile = frames.shape[1]
    grid = frames.reshape(down, across, tile, tile, *frames.shape[3:]).swapaxes(1, 2)
    return grid.reshape(down * tile, across * tile, *frames.shape[3:])[: shape[0], : shape[1]]


def _slide_level(
    syntax: str,
    uids: tuple[str, str, str],
    k: int,
    shape: tuple[int, ...],
    tile: int,
    frames: int,
    mpp: float,
) -> Dataset:
    """A whole-slide image file's header: level ``k`` (-1: the label image) of ``shape``
    (rows, columns) in ``frames`` ``tile``-square frames (TILED_FULL) coded in ``syntax``,
    of the study, series and frame of reference ``uids``, level 0's pixels ``mpp``
    micrometres."""
    ds = _instance(WHOLE_SLIDE, syntax)
    _patient(ds, uids[0], uids[2])
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = uids[1], "SM", 1
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]  # rows along the slide's -y, as most
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20, 40
    ds.TotalPixelMatrixOriginSequence = [origin]
    kind = ["VOLUME", "NONE" if k == 0 else "RESAMPLED"] if k >= 0 else ["LABEL", "NONE"]
    ds.ImageType = ["ORIGINAL" if k <= 0 else "DERIVED", "PRIMARY", *kind]
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = shape[:2]
    ds.NumberOfFrames, ds.DimensionOrganizationType = frames, "TILED_FULL"
    ds.TotalPixelMatrixFocalPlanes = ds.NumberOfOpticalPaths = 1
    measures = Dataset()
    measures.PixelSpacing = [mpp * 2 ** max(k, 0) / 1000] * 2  # millimetres
    measures.SliceThickness = 0.004  # the section's, millimetres
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    return ds


def write_slide(
    directory: Path,
    levels: list[np.ndarray],
    name: str = "level",
    tile: int = 128,
    codec: str = "raw",
    label: bool = True,
    mpp: float = 0.25,
    missing: frozenset[tuple[int, int]] | None = None,
) -> list[np.ndarray]:
    """A DICOM whole-slide image as scanners and converters write one: a file per level
    of ``levels`` ((H, W, 3) uint8, each half the previous; ``<name><k>.dcm``) in
    ``tile``-square frames in row order (TILED_FULL), coded as ``CODECS`` names, level
    0's pixels ``mpp`` micrometres; with a label image in the series (``label``).
    ``missing``: level 0 is sparsely tiled (TILED_SPARSE: each frame's position given)
    without those (row, column) tiles. Returns the levels as a reader decodes them (a
    JPEG's losses included; missing tiles 0)."""
    directory.mkdir(parents=True, exist_ok=True)
    uids = generate_uid(), generate_uid(), generate_uid()
    stored = []
    images = [(f"{name}{k}", level, k) for k, level in enumerate(levels)]
    for file, image, k in images + ([("label", levels[-1][:64, :96], -1)] if label else []):
        frames, down, across = _tiles(image, tile)
        kept = [(i, j) for i in range(down) for j in range(across)]
        if missing is not None and k == 0:
            kept = [at for at in kept if at not in missing]
            frames = frames[[i * across + j for i, j in kept]]
        syntax, photometric = CODECS[codec]
        ds = _slide_level(syntax, uids, k, image.shape, tile, len(frames), mpp)
        if missing is not None and k == 0:
            ds.DimensionOrganizationType, positions = "TILED_SPARSE", []
            for i, j in kept:
                at = Dataset()
                at.RowPositionInTotalImagePixelMatrix = i * tile + 1
                at.ColumnPositionInTotalImagePixelMatrix = j * tile + 1
                at.XOffsetInSlideCoordinateSystem = at.YOffsetInSlideCoordinateSystem = 0
                at.ZOffsetInSlideCoordinateSystem = 0
                item = Dataset()
                item.PlanePositionSlideSequence = [at]
                positions.append(item)
            ds.PerFrameFunctionalGroupsSequence = positions
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        path = Dataset()
        path.OpticalPathIdentifier = "1"
        ds.OpticalPathSequence = [path]
        if codec == "raw":
            ds.PixelData = frames.tobytes()
        else:
            encoded = [_encoded(f, codec) for f in frames]
            # Frames found by each of the three ways: a basic offset table (JPEG's frames
            # then in two fragments each), an extended one, or none (the items counted).
            if tile >= 128 and codec == "j2k":
                data, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
                    encoded
                )
                ds.PixelData = data
            else:
                split = 2 if tile < 128 and codec != "j2k" else 1
                ds.PixelData = encapsulate(encoded, fragments_per_frame=split, has_bot=tile < 128)
            ds["PixelData"].VR = "OB"
            if codec != "j2k":  # lossless
                decode = {"jpeg": {}, "jpeg-rgb": {"colorspace": "RGB"}}[codec]
                frames = np.stack([imagecodecs.jpeg8_decode(e, **decode) for e in encoded])
        ds.save_as(directory / f"{file}.dcm", enforce_file_format=True)
        if k >= 0:  # the frames as decoded, where they are (missing ones 0)
            placed = np.zeros((down * across, tile, tile, 3), np.uint8)
            placed[[i * across + j for i, j in kept]] = frames
            stored.append(_untiled(placed, down, across, image.shape))
    return stored


GREY_CODECS = {
    "raw": (ExplicitVRLittleEndian, None),
    "jpeg": (JPEGBaseline8Bit, lambda f: imagecodecs.jpeg8_encode(f, level=90)),
    "j2k": (JPEG2000Lossless, lambda f: imagecodecs.jpeg2k_encode(f, reversible=True)),
    "jpegls": (JPEGLSLossless, lambda f: imagecodecs.jpegls_encode(f)),
}
"""Fluorescence frames' codings: transfer syntax, encoder (raw: none)."""


def write_fluorescence(
    directory: Path,
    levels: list[np.ndarray],
    names: list[str],
    tile: int = 64,
    codec: str = "raw",
    one_file: bool = False,
) -> list[np.ndarray]:
    """A fluorescence DICOM whole-slide image: ``levels`` ((H, W, C) grey, uint8 or
    uint16, each half the previous) of an optical path a channel, described as ``names``,
    in ``tile``-square frames in row order (TILED_FULL) coded as ``GREY_CODECS`` names;
    all paths in one file a level (``one_file``, their frames one path after another), or
    a file a path (``<k>_<name>.dcm``: named not in the paths' order). Returns the levels
    as a reader decodes them."""
    directory.mkdir(parents=True, exist_ok=True)
    uids = generate_uid(), generate_uid(), generate_uid()
    syntax, encode = GREY_CODECS[codec]
    stored = []
    for k, image in enumerate(levels):
        paths = [list(range(image.shape[2]))] if one_file else [[c] for c in range(image.shape[2])]
        decoded = []
        for group in paths:
            tiled = [_tiles(image[..., c], tile) for c in group]
            frames = np.concatenate([f for f, _, _ in tiled])
            ds = _slide_level(syntax, uids, k, image.shape, tile, len(frames), 0.5)
            ds.NumberOfOpticalPaths = len(group)
            ds.OpticalPathSequence = []
            for c in group:
                path = Dataset()
                path.OpticalPathIdentifier, path.OpticalPathDescription = str(c + 1), names[c]
                ds.OpticalPathSequence.append(path)
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            bits = image.dtype.itemsize * 8
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
            ds.PixelRepresentation = 0
            if encode is None:
                ds.PixelData = frames.tobytes()
            else:
                encoded = [encode(f) for f in frames]
                ds.PixelData = encapsulate(encoded, has_bot=True)
                ds["PixelData"].VR = "OB"
                if codec == "jpeg":  # lossy
                    frames = np.stack([imagecodecs.jpeg8_decode(e) for e in encoded])
            ds.save_as(directory / f"{k}_{names[group[0]]}.dcm", enforce_file_format=True)
            _, down, across = tiled[0]
            decoded += [
                (c, frames[i * down * across : (i + 1) * down * across])
                for i, c in enumerate(group)
            ]
        planes = [
            _untiled(f, down, across, image.shape) for _, f in sorted(decoded, key=lambda d: d[0])
        ]
        stored.append(np.stack(planes, axis=-1))
    return stored


def _rgb(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return random_image((*shape, 3), "uint8", seed)


def test_a_dicom_whole_slide_image_reads_frame_by_frame(tmp_path) -> None:
    """A slide's directory (its levels and label image, one series) is one image of three
    channels and its levels; a level's file names the same slide; a directory of two
    slides (JPEG tiles, as most are) an image each; its label is not segmented."""
    full = _rgb((300, 420))
    write_slide(tmp_path / "biopsy", [full, full[::2, ::2]])
    assert resolve_inputs(str(tmp_path / "biopsy")) == [str(tmp_path / "biopsy")]
    (source,) = open_sources(tmp_path / "biopsy")
    assert (source.kind, source.name, source.levels) == ("dicom-slide", "biopsy", 2)
    assert source.info.shape == (1, 3, 1, 300, 420) and source.info.dtype == np.uint8
    assert source.info.scale == pytest.approx({"y": 0.25, "x": 0.25})
    assert source.info.units == dict.fromkeys("yx", "micrometer")
    region = ((0, 1), (130, 300), (100, 390))  # across frames' edges, to the image's end
    want = full[130:300, 100:390].transpose(2, 0, 1)
    np.testing.assert_array_equal(source.read(0, (0, 1, 2), region)[:, 0], want)
    np.testing.assert_array_equal(source.read(0, (2,), region)[0, 0], want[2])
    (reduced,) = open_sources(tmp_path / "biopsy", level=1)
    assert reduced.info.shape[-2:] == (150, 210) and reduced.level_scale() == (2.0, 2.0)
    assert reduced.info.scale == pytest.approx({"y": 0.5, "x": 0.5})
    got = reduced.read(0, (2,), ((0, 1), (0, 150), (0, 210)))[0, 0]
    np.testing.assert_array_equal(got, full[::2, ::2, 2])
    unpickled = pickle.loads(pickle.dumps(reduced))  # as a worker receives it
    np.testing.assert_array_equal(unpickled.read(0, (2,), ((0, 1), (0, 150), (0, 210)))[0, 0], got)
    (level,) = open_sources(tmp_path / "biopsy" / "level1.dcm")  # a level: the whole slide
    assert (level.name, level.levels, level.info.shape) == ("level1", 2, source.info.shape)

    two = tmp_path / "two"
    write_slide(two, [_rgb((200, 260), 1)], name="a", label=False)
    (jpeg,) = write_slide(two, [_rgb((230, 180), 2)], name="b", codec="jpeg")
    first, second = sorted(open_sources(two), key=lambda s: s.info.shape)
    assert {first.name, second.name} == {"two_s0", "two_s1"}
    assert second.info.shape[-2:] == (230, 180)
    got = second.read(0, (0, 1, 2), ((0, 1), (0, 230), (0, 180)))[:, 0]
    np.testing.assert_array_equal(got, jpeg.transpose(2, 0, 1))


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("tile", [64, 128])  # frames with an offset table, without
def test_each_coding_of_frames_reads_as_openslide_reads_it(tmp_path, codec, tile) -> None:
    full = _rgb((200, 330))
    (stored,) = write_slide(tmp_path / "s", [full], tile=tile, codec=codec, label=False)
    if codec in ("raw", "j2k"):
        np.testing.assert_array_equal(stored, full)  # lossless
    (source,) = open_sources(tmp_path / "s")
    assert source.kind == "dicom-slide"
    region = ((0, 1), (30, 200), (65, 330))
    got = source.read(0, (0, 1, 2), region)
    np.testing.assert_array_equal(got[:, 0], stored[30:200, 65:330].transpose(2, 0, 1))
    composed = slides.OpenSlideSource(str(tmp_path / "s" / "level0.dcm"))
    np.testing.assert_array_equal(composed.read(0, (0, 1, 2), region), got)


def test_a_sparsely_tiled_slide_reads_through_openslide_its_gaps_white(tmp_path) -> None:
    full = _rgb((256, 256))
    write_slide(tmp_path / "s", [full, full[::2, ::2]], missing=frozenset({(0, 1)}))
    (source,) = open_sources(tmp_path / "s")
    assert (source.kind, source.levels) == ("openslide", 2)
    got = source.read(0, (0, 1, 2), ((0, 1), (0, 256), (0, 256)))[:, 0].transpose(1, 2, 0)
    np.testing.assert_array_equal(got[:128, 128:], 255)  # never imaged: background
    np.testing.assert_array_equal(got[128:], full[128:])


@pytest.mark.parametrize(
    ("codec", "dtype", "one_file"),
    [
        ("raw", "uint16", True),
        ("j2k", "uint16", False),
        ("jpegls", "uint16", False),
        ("jpeg", "uint8", True),
    ],
)
def test_a_fluorescence_slide_reads_an_optical_path_a_channel(
    tmp_path, codec, dtype, one_file
) -> None:
    """Grey frames: a channel per optical path, named after its description, in the paths'
    order whether a level's file holds every path or each path has a file of its own; 8
    or 16 bits; every level; read frame by frame (not through OpenSlide, which reads
    brightfield only)."""
    full = random_image((150, 200, 3), dtype, seed=3)
    names = ["DAPI", "CD3", "PanCK"]
    levels = write_fluorescence(
        tmp_path / "if", [full, full[::2, ::2]], names, codec=codec, one_file=one_file
    )
    (slide,) = open_sources(tmp_path / "if")
    assert slide.kind == "dicom-slide" and slide.levels == 2
    assert slide.info.shape == (1, 3, 1, 150, 200) and slide.info.dtype == np.dtype(dtype)
    assert slide.info.channel_names == tuple(names)
    assert slide.info.scale == pytest.approx({"y": 0.5, "x": 0.5})
    region = ((0, 1), (20, 150), (30, 170))
    want = levels[0][20:150, 30:170, [2, 0]].transpose(2, 0, 1)
    np.testing.assert_array_equal(slide.read(0, (2, 0), region)[:, 0], want)
    if codec != "jpeg":  # lossless: the pixels written
        np.testing.assert_array_equal(levels[0], full)
    level1 = pickle.loads(pickle.dumps(slide.at_level(1)))  # as a worker receives it
    assert level1.info.shape == (1, 3, 1, 75, 100) and level1.info.scale["x"] == pytest.approx(1.0)
    np.testing.assert_array_equal(
        level1.read(0, (1,), ((0, 1), (0, 75), (0, 100)))[0, 0], levels[1][..., 1]
    )


def test_dicom_slide_errors_name_the_file_and_the_fix(tmp_path, monkeypatch) -> None:
    full = _rgb((100, 140))
    write_slide(tmp_path / "slide", [full])
    with pytest.raises(InputImageError, match="label.dcm: a whole-slide image's label"):
        open_sources(tmp_path / "slide" / "label.dcm")
    (tmp_path / "slide" / "level0.dcm").unlink()
    with pytest.raises(InputImageError, match="slide: its DICOM whole-slide files hold no scan"):
        open_sources(tmp_path / "slide")
    write_series(
        tmp_path / "ct", random_image((2, 8, 8)).astype(np.uint16), names=["a.dcm", "b.dcm"]
    )
    with pytest.raises(InputImageError, match=r"a.dcm: one file of a DICOM series; .*input=.*ct"):
        open_sources(tmp_path / "ct" / "a.dcm")
    write_slide(tmp_path / "ok", [full], missing=frozenset({(0, 0)}))  # sparse: OpenSlide's
    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(InputImageError, match=r"DICOM whole-slide images needs openslide: pip"):
        open_sources(tmp_path / "ok")


@pytest.mark.usefixtures("ray_session")
def test_infer_segments_a_dicom_slide_into_ome_zarr_in_micrometres(tmp_path, make_model) -> None:
    full = _rgb((192, 160))
    write_slide(tmp_path / "case", [full, full[::2, ::2]], tile=64)
    model, module = make_model(in_ch=3, out_ch=2)
    got = raw_output(
        tmp_path,
        tmp_path / "case",
        model,
        chunks=[64],
        tile={"size": [64], "overlap": 0.5, "blend": "crop"},
        quicklook=False,
    )
    with torch.inference_mode():
        pixels = torch.from_numpy(full.transpose(2, 0, 1).astype(np.float32))[None]
        want = module(pixels)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    group = zarr.open_group(str(tmp_path / "out" / "case.ome.zarr"), mode="r")
    ms = dict(group.attrs)["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.25, 0.25]


def test_dicom_slides_and_series_read_from_an_object_store(s3, tmp_path) -> None:
    """As the NCI Imaging Data Commons keeps them (a prefix a series): a slide's frames
    fetched in ranged requests, a CT series' files, each listed; a slide of a layout only
    OpenSlide reads (local files only) is one error."""
    import s3fs

    from tests.conftest import BUCKET

    full = _rgb((200, 330))
    level0, _ = write_slide(
        tmp_path / "idc" / "slide", [full, full[::2, ::2]], tile=64, codec="jpeg"
    )
    write_slide(tmp_path / "idc" / "sparse", [full], missing=frozenset({(0, 0)}))
    ct = random_image((4, 20, 24)).astype(np.uint16)
    write_series(tmp_path / "idc" / "ct", ct)
    s3fs.S3FileSystem().put(str(tmp_path / "idc"), f"{BUCKET}/idc", recursive=True)
    url = f"s3://{BUCKET}/idc"
    assert resolve_inputs(url) == [f"{url}/ct", f"{url}/slide", f"{url}/sparse"]

    (slide,) = open_sources(f"{url}/slide")
    assert (slide.kind, slide.name, slide.levels) == ("dicom-slide", "slide", 2)
    region = ((0, 1), (30, 200), (65, 330))
    want = level0[30:200, 65:330].transpose(2, 0, 1)
    np.testing.assert_array_equal(slide.read(0, (0, 1, 2), region)[:, 0], want)
    unpickled = pickle.loads(pickle.dumps(slide))  # as a worker receives it
    np.testing.assert_array_equal(unpickled.read(0, (1,), region)[0, 0], want[1])
    (level,) = open_sources(f"{url}/slide/level1.dcm")
    assert (level.name, level.info.shape) == ("level1", slide.info.shape)

    (series,) = open_sources(f"{url}/ct")
    assert series.kind == "dicom" and series.info.shape == (1, 1, 4, 20, 24)
    got = series.read(0, (0,), ((0, 4), (0, 20), (0, 24)))[0]
    np.testing.assert_array_equal(got, ct.astype(np.float32) - 1024)

    with pytest.raises(InputImageError, match=r"sparse: a DICOM slide .*OpenSlide.*local"):
        open_sources(f"{url}/sparse")


def _seg_frames(seg_path: Path, series: Path, segments: int) -> np.ndarray:
    """The DICOM SEG ``seg_path``'s segments 1..``segments`` over each slice of ``series``
    in slice order (frames it left out, empty): (slices, rows, columns, segments)."""
    import highdicom

    seg = highdicom.seg.segread(seg_path)
    slices = sorted(
        (pydicom.dcmread(f, stop_before_pixels=True) for f in series.iterdir()),
        key=lambda h: float(h.ImagePositionPatient[2]),
    )
    assert seg.SeriesInstanceUID != slices[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == slices[0].StudyInstanceUID  # kept with the study
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == slices[0].SeriesInstanceUID
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[h.SOPInstanceUID for h in slices],
        segment_numbers=list(range(1, segments + 1)),
        assert_missing_frames_are_empty=True,
    )


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("mode", ["mask", "labels"])
def test_a_ct_series_output_is_written_as_a_dicom_seg_of_the_series(
    tmp_path, make_model, mode
) -> None:
    """A softmax model's classes past the background become segments named after them
    (``class_<i>`` where the model names none), coded as the model's metadata codes them
    (else as tissue), each voxel in the segment of its class, frame by frame over the
    input's slices."""
    import json

    import highdicom

    stored = random_image((6, 32, 40)).astype(np.uint16)
    write_series(tmp_path / "ct", stored)
    model, _ = make_model(dims=3, out_ch=3)
    if mode == "labels":  # a model directory naming and coding its classes
        (tmp_path / "coded").mkdir()
        model = model.rename(tmp_path / "coded" / "model.pth").parent
        meta = {"classes": ["background", "Liver", "Tumour"], "class_codes": [None, *CODED]}
        (model / "raysegment.json").write_text(json.dumps(meta))
    _, got = volume_output(
        tmp_path, tmp_path / "ct", model, finalize={"mode": mode, "dicom_seg": True}
    )
    path = tmp_path / "out" / "ct.seg.dcm"
    seg = highdicom.seg.segread(path)
    named = ["Liver", "Tumour"] if mode == "labels" else ["class_1", "class_2"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == named
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence]
    assert types == (["Liver", "Neoplasm"] if mode == "labels" else ["Tissue", "Tissue"])
    category = seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0]
    assert category.CodeValue == ("123037004" if mode == "labels" else "85756007")
    frames = _seg_frames(path, tmp_path / "ct", 2)
    want = got[1:] if mode == "mask" else np.stack([got[0] == 1, got[0] == 2])
    assert want.any() and (want.sum(axis=(1, 2, 3)) > 0).all()  # both classes present
    np.testing.assert_array_equal(frames, np.moveaxis(want, 0, -1).astype(frames.dtype))
    assert not list((tmp_path / "out").glob("*.partial"))


@pytest.mark.usefixtures("ray_session")
def test_a_ct_series_labels_are_written_as_a_label_map_seg(tmp_path, make_model) -> None:
    """``finalize.dicom_seg_type=labelmap``: a Label Map Segmentation, a frame a slice
    holding any class, each voxel its class's segment; a multilabel model's mask, whose
    classes overlap, is refused before the run."""
    import json

    import highdicom

    from raysegment.errors import ConfigError
    from raysegment.infer import infer

    write_series(tmp_path / "ct", random_image((6, 32, 40)).astype(np.uint16))
    model, _ = make_model(dims=3, out_ch=3)
    finalize = {"mode": "labels", "dicom_seg": True, "dicom_seg_type": "labelmap"}
    _, got = volume_output(tmp_path, tmp_path / "ct", model, finalize=finalize)
    seg = highdicom.seg.segread(tmp_path / "out" / "ct.seg.dcm")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation
    assert seg.SegmentationType == "LABELMAP" and int(seg.NumberOfFrames) <= 6
    frames = _seg_frames(tmp_path / "out" / "ct.seg.dcm", tmp_path / "ct", 2)
    want = np.stack([got[0] == 1, got[0] == 2], axis=-1)
    assert want[..., 0].any() and want[..., 1].any()
    np.testing.assert_array_equal(frames.astype(bool), want)

    (tmp_path / "multilabel").mkdir()
    model = model.rename(tmp_path / "multilabel" / "model.pth").parent
    (model / "raysegment.json").write_text(json.dumps({"activation": "sigmoid"}))
    with pytest.raises(ConfigError, match=r"dicom_seg_type=labelmap: the model's 3 classes"):
        infer(
            input=str(tmp_path / "ct"),
            model=str(model),
            output=str(tmp_path / "refused"),
            progress=False,
            finalize=finalize | {"mode": "mask"},
        )
    assert not (tmp_path / "refused").exists()


@pytest.mark.usefixtures("ray_session")
def test_a_multilabel_models_every_class_is_a_segment(tmp_path, make_model) -> None:
    """A model trained multilabel (sigmoid, as its ``raysegment.json`` says) has no
    background channel: with ``finalize.activation`` left auto, each of its channels is a
    segment, the first one too."""
    import json

    import highdicom

    write_series(tmp_path / "ct", random_image((6, 32, 40)).astype(np.uint16))
    model, _ = make_model(dims=3, out_ch=2)
    (tmp_path / "multilabel").mkdir()
    model = model.rename(tmp_path / "multilabel" / "model.pth").parent
    meta = {"classes": ["Liver", "Vessel"], "activation": "sigmoid"}
    (model / "raysegment.json").write_text(json.dumps(meta))
    _, got = volume_output(
        tmp_path, tmp_path / "ct", model, finalize={"mode": "mask", "dicom_seg": True}
    )
    seg = highdicom.seg.segread(tmp_path / "out" / "ct.seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Vessel"]
    frames = _seg_frames(tmp_path / "out" / "ct.seg.dcm", tmp_path / "ct", 2)
    assert (got.sum(axis=0) > 1).any()  # sigmoid channels overlap
    np.testing.assert_array_equal(frames, np.moveaxis(got, 0, -1).astype(frames.dtype))


@pytest.mark.usefixtures("ray_session")
def test_dicom_seg_is_refused_before_the_run_for_what_it_cannot_hold(
    tmp_path, make_model, monkeypatch
) -> None:
    from raysegment.errors import ConfigError
    from raysegment.infer import infer

    write_series(tmp_path / "ct", random_image((3, 16, 16)).astype(np.uint16))
    model, _ = make_model(dims=3)
    run = dict(
        input=str(tmp_path / "ct"), model=str(model), output=str(tmp_path / "out"), progress=False
    )
    with pytest.raises(ConfigError, match=r"finalize.mode=probabilities; .*mask"):
        infer(**run, finalize={"dicom_seg": True})
    nifti = tmp_path / "ct.nii"
    nibabel = pytest.importorskip("nibabel")
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), nifti)
    with pytest.raises(ConfigError, match=r"ct.nii is no DICOM series or slide .*\(nifti\)"):
        infer(**run | {"input": str(nifti)}, finalize={"mode": "mask", "dicom_seg": True})
    seg_levels = {"mode": "mask", "dicom_seg": True, "dicom_seg_levels": True}
    with pytest.raises(ConfigError, match=r"ct is no DICOM slide .*; a SEG's levels are a"):
        infer(**run, finalize=seg_levels)
    with pytest.raises(ConfigError, match=r"dicom_seg_levels=true: .*set finalize.dicom_seg"):
        infer(**run, finalize=seg_levels | {"dicom_seg": False})
    write_series(tmp_path / "xr", random_image((1, 16, 16)).astype(np.uint16))
    (plain,) = (tmp_path / "xr").iterdir()  # a projection radiograph's: no position
    header = pydicom.dcmread(plain)
    del header.ImagePositionPatient
    header.save_as(plain)
    with pytest.raises(ConfigError, match=r"xr's slices have no position \(ImagePositionPatient"):
        infer(**run | {"input": str(tmp_path / "xr")}, finalize={"mode": "mask", "dicom_seg": True})
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(
        InputImageError, match=r"needs highdicom: pip install 'raysegment\[dicom\]'"
    ):
        infer(**run, finalize={"mode": "mask", "dicom_seg": True})
    assert not (tmp_path / "out").exists()


def write_enhanced(
    path: Path, stored: np.ndarray, echo_times: list[float] | None = None
) -> list[int]:
    """``stored`` (z, y, x, uint16) as one enhanced CT file, as recent scanners write them
    (``write_series``' spacing, origin and rescaling): its slices as frames in a shuffled
    order, each frame's position and rescaling in its own functional groups, the
    orientation and spacing shared. ``echo_times``: an enhanced multi-echo MR file,
    ``stored`` (echoes, z, y, x), each frame's echo time (ms) in its own groups. Returns
    each frame's slice (its index in ``stored``'s slices, echo by echo)."""
    spacing, origin = SPACING, ORIGIN
    planes = stored.shape[-3]
    stored = stored.reshape(-1, *stored.shape[-2:])  # echo by echo
    order = [int(z) for z in np.random.default_rng(2).permutation(len(stored))]
    ds = _instance(EnhancedCTImageStorage, ExplicitVRLittleEndian)
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = generate_uid(), "CT", 4
    _patient(ds, generate_uid(), generate_uid())
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.NumberOfFrames = len(stored)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared, measures, orientation = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(spacing[1:]), spacing[0]
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        item, position, values = Dataset(), Dataset(), Dataset()
        e, z = divmod(k, planes)
        position.ImagePositionPatient = [origin[0], origin[1], origin[2] + z * spacing[0]]
        values.RescaleSlope, values.RescaleIntercept = 1.0, -1024.0
        values.RescaleType = "HU"
        item.PlanePositionSequence, item.PixelValueTransformationSequence = [position], [values]
        if echo_times:
            echo = Dataset()
            echo.EffectiveEchoTime = echo_times[e]
            item.MREchoSequence = [echo]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = stored[order].astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return order


@pytest.mark.parametrize("enhanced", [False, True])
def test_a_multi_echo_series_reads_an_echo_a_channel(tmp_path, enhanced) -> None:
    """A multi-echo MR series (each slice's echoes in files of their own, numbered, or an
    enhanced file's frames, each with its echo time): a channel an echo, in their order,
    named after their echo times; a channel read alone; an echo missing a slice is one
    error naming it."""
    stored = random_image((2, 4, 16, 20)).astype(np.uint16)
    stored[1] += 2000  # the second echo tells itself from the first
    if enhanced:
        write_enhanced(tmp_path / "mr" / "scan.dcm", stored, echo_times=[4.92, 9.84])
    else:
        write_series(tmp_path / "mr", stored, echo_times=[4.92, 9.84])
    (source,) = open_sources(tmp_path / "mr")
    assert source.info.shape == (1, 2, 4, 16, 20)
    assert source.info.channel_names == ("echo 1 (TE 4.92 ms)", "echo 2 (TE 9.84 ms)")
    region = ((0, 4), (0, 16), (0, 20))
    want = stored.astype(np.float32) - 1024
    np.testing.assert_array_equal(source.read(0, (0, 1), region), want)
    np.testing.assert_array_equal(
        source.read(0, (1,), ((1, 3), (2, 9), (0, 20))), want[1:, 1:3, 2:9]
    )
    if not enhanced:
        victim = next(
            f
            for f in (tmp_path / "mr").iterdir()
            if pydicom.dcmread(f).InstanceNumber == 1  # echo 2, its last slice
        )
        victim.unlink()
        with pytest.raises(
            InputImageError, match=r"mr: its echo 2 covers other slices .*\(3 against 4\)"
        ):
            open_sources(tmp_path / "mr")


@pytest.mark.usefixtures("ray_session")
def test_a_multi_echo_series_output_is_a_seg_of_its_first_echos_slices(
    tmp_path, make_model
) -> None:
    """A model of two channels segments the echoes together; the SEG references the
    first echo's slices (the echoes lie on the same), each frame its slice's segment."""
    import highdicom

    stored = random_image((2, 6, 32, 40)).astype(np.uint16)
    write_series(tmp_path / "mr", stored, echo_times=[4.92, 9.84])
    model, _ = make_model(dims=3, in_ch=2, out_ch=2)
    _, got = volume_output(
        tmp_path, tmp_path / "mr", model, finalize={"mode": "mask", "dicom_seg": True}
    )
    seg = highdicom.seg.segread(tmp_path / "out" / "mr.seg.dcm")
    first = sorted(
        (h for h in map(pydicom.dcmread, (tmp_path / "mr").iterdir()) if h.EchoNumbers == 1),
        key=lambda h: float(h.ImagePositionPatient[2]),
    )
    (referenced,) = seg.ReferencedSeriesSequence
    uids = [r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence]
    assert sorted(uids) == sorted(h.SOPInstanceUID for h in first)
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[h.SOPInstanceUID for h in first],
        segment_numbers=[1],
        assert_missing_frames_are_empty=True,
    )
    assert got[1].any()
    np.testing.assert_array_equal(frames[..., 0], got[1])


def test_an_enhanced_ct_file_reads_as_a_volume_in_slice_order(tmp_path) -> None:
    """One multi-frame file of shuffled frames: a volume in slice order, each frame read
    alone, values rescaled, spacing and origin from its functional groups."""
    stored = random_image((7, 30, 26)).astype(np.uint16)
    write_enhanced(tmp_path / "scan" / "ct.dcm", stored)
    assert resolve_inputs(str(tmp_path / "scan")) == [str(tmp_path / "scan")]
    (source,) = open_sources(tmp_path / "scan")
    assert source.kind == "dicom" and source.name == "scan"
    assert source.info.shape == (1, 1, 7, 30, 26) and source.info.dtype == np.float32
    assert source.info.scale == pytest.approx({"z": 2.5, "y": 0.7, "x": 0.8})
    assert source.info.origin == pytest.approx({"x": -120.0, "y": 30.5, "z": 11.25})
    got = source.read(0, (0,), ((1, 6), (4, 30), (0, 20)))[0]
    np.testing.assert_array_equal(got, stored[1:6, 4:30, :20].astype(np.float32) - 1024)
    (alone,) = open_sources(tmp_path / "scan" / "ct.dcm")  # the file itself: the volume
    assert (alone.name, alone.info) == ("ct", source.info)
    np.testing.assert_array_equal(alone.read(0, (0,), ((1, 6), (4, 30), (0, 20)))[0], got)


@pytest.mark.usefixtures("ray_session")
def test_an_enhanced_ct_output_is_written_as_a_dicom_seg_of_its_frames(
    tmp_path, make_model
) -> None:
    """The SEG of an enhanced file's output references that file's frames, each frame's
    segment its slice's (the frames stored out of slice order)."""
    import highdicom

    stored = random_image((5, 24, 32)).astype(np.uint16)
    order = write_enhanced(tmp_path / "scan" / "ct.dcm", stored)
    model, _ = make_model(dims=3, out_ch=2)
    _, got = volume_output(
        tmp_path, tmp_path / "scan", model, finalize={"mode": "mask", "dicom_seg": True}
    )
    seg = highdicom.seg.segread(tmp_path / "out" / "scan.seg.dcm")
    source = pydicom.dcmread(tmp_path / "scan" / "ct.dcm", stop_before_pixels=True)
    frames = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID,
        source_frame_numbers=list(range(1, 6)),
        segment_numbers=[1],
        assert_missing_frames_are_empty=True,
    )
    assert got[1].any() and order != sorted(order)
    np.testing.assert_array_equal(frames[..., 0], got[1][order])


def test_dicom_series_and_slides_pair_with_their_labels_for_training(tmp_path) -> None:
    """A directory of CT series' directories pairs with NIfTI labels of the same names, a
    directory of slides' directories with QuPath's GeoJSON, by name."""
    from raysegment.data.pairs import pair_images

    nibabel = pytest.importorskip("nibabel")
    (tmp_path / "labels").mkdir()
    for case in ("case_01", "case_02"):
        write_series(tmp_path / "ct" / case, random_image((3, 8, 8)).astype(np.uint16))
        label = nibabel.Nifti1Image(np.zeros((8, 8, 3), np.uint8), np.eye(4))
        nibabel.save(label, tmp_path / "labels" / f"{case}.nii.gz")
    pairs = pair_images(str(tmp_path / "ct"), None, str(tmp_path / "labels"), None)
    assert [(Path(i).name, Path(lbl).name) for (i,), lbl in pairs] == [
        ("case_01", "case_01.nii.gz"),
        ("case_02", "case_02.nii.gz"),
    ]
    write_slide(tmp_path / "slides" / "biopsy", [_rgb((64, 64))], tile=64)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "biopsy.geojson").write_text(
        '{"type": "FeatureCollection", "features": []}'
    )
    pairs = pair_images(str(tmp_path / "slides"), None, str(tmp_path / "annotations"), None)
    assert [(Path(i).name, Path(lbl).name) for (i,), lbl in pairs] == [("biopsy", "biopsy.geojson")]


def test_a_dicom_seg_is_written_to_an_object_store(s3, tmp_path) -> None:
    import highdicom
    import s3fs

    from raysegment.post.dicom_seg import write_dicom_seg
    from tests.conftest import BUCKET

    write_series(tmp_path / "ct", random_image((3, 8, 10)).astype(np.uint16))
    files = sorted(
        (str(f) for f in (tmp_path / "ct").iterdir()),
        key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]),
    )
    mask = np.zeros((1, 3, 8, 10), np.uint8)
    mask[0, 1, 2:5, 3:7] = 1
    zarr.save_array(str(tmp_path / "mask.zarr"), mask)
    url = f"s3://{BUCKET}/segs/ct.seg.dcm"
    write_dicom_seg(
        str(tmp_path / "mask.zarr"), "czyx", files, [None] * 3, "mask", [0], ["tumour"], url
    )
    (tmp_path / "back.dcm").write_bytes(s3fs.S3FileSystem().cat(url.removeprefix("s3://")))
    seg = highdicom.seg.segread(tmp_path / "back.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour"]
    frames = _seg_frames(tmp_path / "back.dcm", tmp_path / "ct", 1)
    np.testing.assert_array_equal(frames[..., 0], mask[0])


def test_a_series_of_several_time_points_reads_a_volume_each(tmp_path) -> None:
    """DCE-MRI's, perfusion CT's: the same slices at each temporal position, classic files
    (``TemporalPositionIdentifier``) or an enhanced file's frames (``TemporalPositionIndex``)
    as time points in their order; time points of other slices are one error."""
    from raysegment.infer.pipeline import _check_dicom_seg

    first, second = (random_image((4, 16, 20), seed=k).astype(np.uint16) for k in (1, 2))
    write_series(tmp_path / "dce", first)
    for path in sorted((tmp_path / "dce").iterdir()):
        ds = pydicom.dcmread(path)
        ds.TemporalPositionIdentifier = 1
        ds.save_as(path)
        z = round((float(ds.ImagePositionPatient[2]) - ORIGIN[2]) / SPACING[0])
        ds.SOPInstanceUID, ds.TemporalPositionIdentifier = generate_uid(), 2
        ds.PixelData = second[z].tobytes()
        ds.save_as(path.with_name(f"t2_{path.name}"))
    (series,) = open_sources(tmp_path / "dce")
    assert series.info.shape == (2, 1, 4, 16, 20)
    for t, volume in enumerate((first, second)):
        got = series.read(t, (0,), ((1, 4), (2, 16), (0, 20)))[0]
        np.testing.assert_array_equal(got, volume[1:4, 2:].astype(np.float32) - 1024)

    write_enhanced(tmp_path / "perfusion" / "ct.dcm", np.concatenate([first, second]))
    ds = pydicom.dcmread(tmp_path / "perfusion" / "ct.dcm")
    for item in ds.PerFrameFunctionalGroupsSequence:  # frames 4-7: the slices again, later
        position = item.PlanePositionSequence[0].ImagePositionPatient
        z = round((float(position[2]) - ORIGIN[2]) / SPACING[0])
        position[2] = ORIGIN[2] + (z % 4) * SPACING[0]
        content = Dataset()
        content.TemporalPositionIndex = 1 + z // 4
        item.FrameContentSequence = [content]
    ds.save_as(tmp_path / "perfusion" / "ct.dcm")
    (enhanced,) = open_sources(tmp_path / "perfusion")
    assert enhanced.info.shape == (2, 1, 4, 16, 20)
    np.testing.assert_array_equal(
        enhanced.read(1, (0,), ((0, 4), (0, 16), (0, 20)))[0], second.astype(np.float32) - 1024
    )
    from raysegment.config import InferConfig, load_config
    from raysegment.errors import ConfigError

    cfg = load_config(InferConfig, (), ["input=x", "model=m", "output=o", "finalize.mode=mask"])
    with pytest.raises(ConfigError, match=r"dce has 2 time points; DICOM Segmentations"):
        _check_dicom_seg(cfg, [series])

    (tmp_path / "dce" / f"t2_{sorted(p.name for p in (tmp_path / 'dce').iterdir())[0]}").unlink()
    with pytest.raises(InputImageError, match=r"dce: its time point 2 covers other slices"):
        open_sources(tmp_path / "dce")
