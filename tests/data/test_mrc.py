"""MRC inputs: tomograms (IMOD's .rec), their voxel size, IMOD's unsigned bytes."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from raysegment.data.inputs import resolve_inputs
from raysegment.data.mrc import IMOD_STAMP
from raysegment.data.sources import open_sources
from raysegment.errors import InputImageError
from tests.conftest import random_image, volume_output, whole_image_prediction


def write_mrc(path: Path, data: np.ndarray, voxel: float | tuple = 13.48, flags: int | None = None):
    """``data`` as an MRC file of ``voxel`` angstroms; ``flags``: IMOD's stamp and these
    ``imodFlags`` in its header (as IMOD writes them)."""
    with mrcfile.new(path, data=data, overwrite=True) as mrc:
        mrc.voxel_size = voxel
        if flags is not None:
            extra = bytearray(mrc.header.extra2.tobytes())
            struct.pack_into("<ii", extra, 40, IMOD_STAMP, flags)
            mrc.header.extra2 = np.void(bytes(extra))


def test_a_tomogram_reads_regions_with_its_voxel_size_in_angstroms(tmp_path) -> None:
    tomogram = random_image((12, 50, 40)).astype(np.float32) - 500
    write_mrc(tmp_path / "TS_01.rec", tomogram, voxel=(13.48, 13.48, 20.0))
    assert resolve_inputs(str(tmp_path)) == [str(tmp_path / "TS_01.rec")]
    (source,) = open_sources(tmp_path / "TS_01.rec")
    assert source.kind == "mrc" and source.name == "TS_01" and source.axes == "zyx"
    assert source.info.shape == (1, 1, 12, 50, 40) and source.info.dtype == np.float32
    assert source.info.scale == pytest.approx({"z": 20.0, "y": 13.48, "x": 13.48})
    assert source.info.units == dict.fromkeys("zyx", "angstrom")
    region = ((2, 11), (7, 50), (0, 33))
    np.testing.assert_array_equal(source.read(0, (0,), region)[0], tomogram[2:11, 7:50, :33])
    (tmp_path / "broken.mrc").write_bytes(b"\0" * 100)
    with pytest.raises(InputImageError, match="broken.mrc: not a readable MRC file"):
        open_sources(tmp_path / "broken.mrc")
    with pytest.raises(InputImageError, match="has 1 resolution level"):
        open_sources(tmp_path / "TS_01.rec", level=1)


@pytest.mark.parametrize(("flags", "want"), [(0, np.uint8), (1, np.int8), (None, np.int8)])
def test_imod_bytes_are_unsigned_unless_its_flag_says_signed(tmp_path, flags, want) -> None:
    """Mode-0 data: IMOD's files hold unsigned bytes unless ``imodFlags`` has bit 1; the
    MRC2014 standard (files without IMOD's stamp) signed ones."""
    values = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    write_mrc(tmp_path / "bytes.mrc", values, flags=flags)
    (source,) = open_sources(tmp_path / "bytes.mrc")
    assert source.info.dtype == want and source.axes == "yx"
    got = source.read(0, (0,), ((0, 1), (0, 16), (0, 16)))[0, 0]
    np.testing.assert_array_equal(got, values.view(want))


def test_a_map_of_permuted_axes_reads_in_its_own_order(tmp_path) -> None:
    """A crystallographic map stores sections along x (``maps`` 1), rows along y,
    columns along z: its array is (x, y, z)."""
    volume = random_image((6, 10, 14)).astype(np.int16)  # z, y, x
    with mrcfile.new(tmp_path / "map.mrc", data=volume.transpose(2, 1, 0).copy()) as mrc:
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 3, 2, 1
    (source,) = open_sources(tmp_path / "map.mrc")
    assert source.axes == "xyz" and source.info.shape == (1, 1, 6, 10, 14)
    np.testing.assert_array_equal(
        source.read(0, (0,), ((1, 5), (0, 10), (3, 14)))[0], volume[1:5, :, 3:14]
    )


def test_without_mrcfile_an_mrc_input_says_what_to_install(tmp_path, monkeypatch) -> None:
    write_mrc(tmp_path / "TS_01.mrc", np.zeros((4, 16, 16), np.float32))
    monkeypatch.setitem(sys.modules, "mrcfile", None)
    with pytest.raises(InputImageError, match=r"needs mrcfile: pip install 'raysegment\[mrc\]'"):
        open_sources(tmp_path / "TS_01.mrc")


@pytest.mark.usefixtures("ray_session")
def test_infer_segments_a_tomogram_into_ome_zarr_in_angstroms(tmp_path, make_model) -> None:
    tomogram = random_image((10, 48, 40)).astype(np.float32)
    write_mrc(tmp_path / "TS_01.rec", tomogram, voxel=13.48)
    model, module = make_model(dims=3, out_ch=1)
    ms, got = volume_output(tmp_path, tmp_path / "TS_01.rec", model)
    assert [a.get("unit") for a in ms["axes"][1:]] == ["angstrom"] * 3
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([1.0, 13.48, 13.48, 13.48])
    np.testing.assert_allclose(got, whole_image_prediction(module, tomogram), rtol=1e-5, atol=1e-4)
