"""DICOM series: a directory of CT slices read as one volume, in slice order, rescaled."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from raysegment.data.dicom import WHOLE_SLIDE
from raysegment.data.inputs import resolve_inputs
from raysegment.data.sources import open_sources
from raysegment.errors import InputImageError
from tests.conftest import random_image, volume_output, whole_image_prediction


def write_series(
    directory: Path,
    stored: np.ndarray,
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.8),
    origin: tuple[float, float, float] = (-120.0, 30.5, 11.25),
    rescale: tuple[float, float] = (1.0, -1024.0),
    number: int = 3,
    names: list[str] | None = None,
) -> None:
    """``stored`` (z, y, x, uint16) as a CT series of one file a slice, as scanners export
    them: positions from ``origin`` (x, y, z) ``spacing[0]`` apart along z, pixel spacing
    ``spacing[1:]`` (row, column), files named by ``names`` (default: by a shuffled
    order, so the files' names do not give the slices' order)."""
    directory.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    order = names or [f"IM{k:04d}.dcm" for k in np.random.default_rng(1).permutation(len(stored))]
    for z, plane in enumerate(stored):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(directory / order[z]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series, number
        ds.InstanceNumber = len(stored) - z  # scanners number in either direction
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + z * spacing[0]]
        ds.PixelSpacing = list(spacing[1:])
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelData = plane.astype(np.uint16).tobytes()
        ds.save_as(directory / order[z], enforce_file_format=True)


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
    ds.SOPClassUID = WHOLE_SLIDE  # a slide's level: tiles as frames
    ds.save_as(only)
    with pytest.raises(InputImageError, match="enhanced: a DICOM whole-slide image; .*TIFF"):
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
