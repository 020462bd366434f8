"""TIFF sequences: a directory of files that are one volume's planes or time points."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from raysegment.data import sources
from raysegment.data.sources import natural_key, open_sequence
from raysegment.errors import InputImageError
from tests.conftest import random_image


def _planes(
    directory: Path, volume: np.ndarray, name: str = "s{}.tif", **kwargs: object
) -> list[str]:
    """``volume``'s planes as ImageJ TIFFs (Fiji's "Image Sequence": 0.5 um pixels, 2 um
    apart), named without zero padding so that only a natural sort orders them."""
    directory.mkdir(exist_ok=True)
    meta = {"spacing": 2.0, "unit": "um"}
    for z, plane in enumerate(volume):
        tifffile.imwrite(
            directory / name.format(z),
            plane,
            imagej=True,
            resolution=(2.0, 2.0),
            metadata=meta,
            **kwargs,
        )
    return [str(p) for p in directory.iterdir()]


def _open_files() -> list[str]:
    """The files this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            pass
    return held


def test_natural_order_compares_numbers_as_numbers() -> None:
    names = ["s10.tif", "s2.tif", "S1.tif", "s1b.tif", "s0.tif"]
    assert sorted(names, key=natural_key) == ["s0.tif", "S1.tif", "s1b.tif", "s2.tif", "s10.tif"]


@pytest.mark.parametrize(
    "layout", [{}, {"compression": "zlib", "rowsperstrip": 5}, {"tile": (16, 16)}]
)
def test_planes_of_a_volume_read_as_one_image(tmp_path: Path, layout: dict[str, object]) -> None:
    """12 planes named s0 .. s11 (uncompressed single strips as Fiji writes them, zlib
    strips, tiles): regions across planes, rows and columns equal the volume, with the
    first file's calibration and the z spacing."""
    volume = random_image((12, 40, 35))
    files = _planes(tmp_path / "recon", volume, **layout)
    src = open_sequence(files, "z")
    assert src.kind == "tiff-sequence" and src.name == "recon"
    assert src.info.shape == (1, 1, 12, 40, 35) and src.info.dtype == np.uint16
    assert src.info.scale == {"x": 0.5, "y": 0.5, "z": 2.0}
    assert src.info.units == dict.fromkeys("xyz", "micrometer")
    assert src.where.endswith("(12 files s0.tif .. s11.tif as z)")
    src = pickle.loads(pickle.dumps(src))
    for (z0, z1), (y0, y1), (x0, x1) in [((0, 12), (0, 40), (0, 35)), ((3, 11), (7, 33), (2, 30))]:
        got = src.read(0, (0,), ((z0, z1), (y0, y1), (x0, x1)))
        np.testing.assert_array_equal(got[0], volume[z0:z1, y0:y1, x0:x1])


def test_time_points_of_z_stacks_with_channels(tmp_path: Path) -> None:
    """sequence=t: a file per time point, each an OME-TIFF z-stack of two named channels."""
    series = random_image((3, 4, 2, 20, 24))  # t, z, c, y, x
    for t in range(3):
        meta = {"axes": "ZCYX", "Channel": {"Name": ["dapi", "gfp"]}, "PhysicalSizeZ": 3.0}
        tifffile.imwrite(tmp_path / f"tp{t}.ome.tif", series[t], ome=True, metadata=meta)
    src = open_sequence([str(p) for p in tmp_path.iterdir()], "t")
    assert src.info.shape == (3, 2, 4, 20, 24) and src.info.channel_names == ("dapi", "gfp")
    assert src.info.scale["z"] == 3.0
    got = src.read(2, (1, 0), ((1, 3), (5, 20), (0, 24)))
    np.testing.assert_array_equal(got, series[2][1:3, [1, 0], 5:20].swapaxes(0, 1))


def test_reads_hold_no_file_open_and_parse_each_file_once(tmp_path: Path, monkeypatch) -> None:
    """A volume of thousands of planes must not exhaust a process's file handles: each
    file is open only for its read. What was parsed of it is kept for the next block."""
    directory = tmp_path / "recon"
    files = _planes(directory, random_image((6, 20, 20)))
    src = open_sequence(files, "z")
    parsed = []
    real = tifffile.TiffFile.__init__

    def counting(self, *args, **kwargs):
        parsed.append(args[0])
        real(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", counting)
    for _ in range(3):
        src.read(0, (0,), ((0, 6), (0, 10), (0, 20)))
        assert not [f for f in _open_files() if f.startswith(str(directory))]
    assert len(parsed) == 6  # the first read: each file parsed once (inspected, read)
    monkeypatch.setattr(sources, "PARSED_FILES", 4)
    src.read(0, (0,), ((0, 6), (0, 10), (0, 20)))
    assert len(src._parts) == 4


def test_a_file_unlike_the_first_is_named(tmp_path: Path) -> None:
    files = _planes(tmp_path / "recon", random_image((4, 20, 20)))
    tifffile.imwrite(tmp_path / "recon" / "s4.tif", random_image((20, 21)))
    with pytest.raises(
        InputImageError,
        match=r"s4.tif: \(t, c, z, y, x\) 1x1x1x20x21 uint16, where .*s0.tif is .*1x1x1x20x20",
    ):
        open_sequence([*files, str(tmp_path / "recon" / "s4.tif")], "z")
    stack = tmp_path / "a.tif"  # first in order: its size decides
    tifffile.imwrite(stack, random_image((5, 20, 20)))
    with pytest.raises(
        InputImageError, match="a.tif: .* sequence=z takes files of one plane each: use sequence=t"
    ):
        open_sequence([str(stack), *files], "z")
    with pytest.raises(InputImageError, match="notes.txt: a sequence is made of TIFF files"):
        open_sequence([*files, str(tmp_path / "notes.txt")], "z")


def test_a_file_cut_short_fails_the_opening_and_a_corrupt_one_its_read(tmp_path: Path) -> None:
    files = _planes(tmp_path / "recon", random_image((4, 64, 64)), compression="zlib")
    short = tmp_path / "recon" / "s2.tif"
    whole = short.read_bytes()
    short.write_bytes(whole[: len(whole) // 2] + whole[-200:])  # strips beyond the end
    with pytest.raises(InputImageError, match="s2.tif: truncated"):
        open_sequence(files, "z")
    with tifffile.TiffFile(tmp_path / "recon" / "s1.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    short.write_bytes(whole)
    src = open_sequence(files, "z")
    raw = bytearray((tmp_path / "recon" / "s1.tif").read_bytes())
    raw[offset : offset + count] = b"\x55" * count
    (tmp_path / "recon" / "s1.tif").write_bytes(bytes(raw))
    with pytest.raises(InputImageError, match=r"recon/s1.tif: cannot read region"):
        src.read(0, (0,), ((0, 4), (0, 8), (0, 8)))


def test_planes_of_a_region_are_read_at_once(tmp_path: Path, monkeypatch) -> None:
    """A block's planes are files of their own: their reads wait on storage side by side
    (``PLANE_THREADS`` at a time), the region still whole and in order."""
    import threading
    import time

    volume = random_image((12, 20, 20))
    src = open_sequence(_planes(tmp_path / "recon", volume), "z")
    reading, most, lock = [0], [0], threading.Lock()
    real = sources.TiffSource.read

    def slow(self, *args, **kwargs):
        with lock:
            reading[0] += 1
            most[0] = max(most[0], reading[0])
        time.sleep(0.05)  # storage's latency
        try:
            return real(self, *args, **kwargs)
        finally:
            with lock:
                reading[0] -= 1

    monkeypatch.setattr(sources.TiffSource, "read", slow)
    monkeypatch.setattr(sources, "PLANE_THREADS", 4)
    np.testing.assert_array_equal(src.read(0, (0,), ((0, 12), (0, 20), (0, 20)))[0], volume)
    assert most[0] == 4


def test_planes_at_urls_read_as_their_local_files(tmp_path: Path, http_server: str, s3) -> None:
    """A reconstruction's planes in an S3 bucket and on a web server (Fiji's uncompressed
    strips, zlib tiles): the same image and regions as the local files, every file
    checked when opened (on threads), an odd one among 40 named."""
    import s3fs

    from raysegment.data.inputs import resolve_inputs
    from tests.conftest import BUCKET

    volume = random_image((40, 48, 40))
    _planes(tmp_path / "recon", volume)
    _planes(tmp_path / "tiled", volume, compression="zlib", tile=(16, 16))
    bucket = s3fs.S3FileSystem()
    for directory in ("recon", "tiled"):
        bucket.put(str(tmp_path / directory), f"{BUCKET}/ct/{directory}", recursive=True)
    local = open_sequence([str(p) for p in (tmp_path / "recon").iterdir()], "z")
    for where in (f"s3://{BUCKET}/ct", http_server):
        for directory in ("recon", "tiled"):
            files = [f"{where}/{directory}/s{z}.tif" for z in range(40)]
            if where.startswith("s3"):  # a bucket lists its keys; a web server does not
                assert resolve_inputs(f"{where}/{directory}", r".*\.tif") == sorted(files)
            src = pickle.loads(pickle.dumps(open_sequence(files[::-1], "z")))
            assert src.name == directory and src.info == local.info
            region = ((5, 33), (7, 41), (3, 37))
            got = src.read(0, (0,), region)[0]
            np.testing.assert_array_equal(got, volume[5:33, 7:41, 3:37])
    tifffile.imwrite(tmp_path / "odd.tif", random_image((48, 41)))
    bucket.put(str(tmp_path / "odd.tif"), f"{BUCKET}/ct/recon/s27.tif")
    files = [f"s3://{BUCKET}/ct/recon/s{z}.tif" for z in range(40)]
    with pytest.raises(InputImageError, match=r"recon/s27.tif: .*1x1x1x48x41 uint16, where"):
        open_sequence(files, "z")
