"""A slide's mask as a DICOM SEG: streamed (``finalize.dicom_seg``'s writer) against
highdicom given the whole mask, in time and peak memory (the process' resident set at its peak while writing, the peak
reset after its imports; and what it held after them), as the slide grows.

    python benchmarks/slide_seg.py [OUT] [--sides 8192,16384,32768] [--whole 8192,16384]

For each side N writes (once) ``OUT/<N>/slide/level0.dcm``, an N x N DICOM slide of 256^2
JPEG tiles (one tile's bytes in every frame: only its header is read), and
``OUT/<N>/mask.zarr``, an output's level 0 as ``raysegment infer`` writes a softmax
model's mask (2 channels, uint8, 1024^2 chunks): nuclei (discs of radius 7, 24 pixels
apart) over tissue in blobs covering about half the slide, none on the glass. Then, each
in its own process, prints the seconds and the process' peak resident memory of:

- ``write_slide_seg`` of channel 1 (``Nucleus``): the frames (tiles holding a nucleus) read
  a chunk at a time, spooled, and the SEG written around them;
- highdicom's ``Segmentation`` of the same channel read whole into memory
  (``tile_pixel_array=True``, TILED_SPARSE, empty tiles left out), for the sides given to
  ``--whole``; at the smallest, both SEGs' frames are checked equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TILE = 256
CHUNK = 1024


def _slide(root: Path, side: int) -> Path:
    """An N x N brightfield slide's level 0 of one JPEG tile repeated."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    from tests.data.test_dicom import _slide_level

    path = root / "slide" / "level0.dcm"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = -((-side // TILE) ** 2)
    uids = generate_uid(), generate_uid(), generate_uid()
    ds = _slide_level(JPEGBaseline8Bit, uids, 0, (side, side), TILE, frames, 0.25)
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    tile = np.full((TILE, TILE, 3), 220, np.uint8)
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(tile, level=90)] * frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _mask(root: Path, side: int) -> Path:
    """A softmax model's 2-channel mask of nuclei over tissue, chunk by chunk."""
    import zarr

    path = root / "mask.zarr"
    if (path / "zarr.json").exists():
        return path
    array = zarr.create_array(
        str(path), shape=(2, side, side), chunks=(2, CHUNK, CHUNK), dtype="uint8", overwrite=True
    )
    coarse = side // TILE
    rng = np.random.default_rng(7)
    # Tissue: a smoothed random field over the tiles, above its median.
    field = rng.random((coarse + 8, coarse + 8))
    kernel = np.ones(9) / 9
    for axis in (0, 1):
        field = np.apply_along_axis(np.convolve, axis, field, kernel, mode="valid")
    tissue = field > np.median(field)
    yy, xx = np.mgrid[0:CHUNK, 0:CHUNK]
    nuclei = (yy % 24 - 12) ** 2 + (xx % 24 - 12) ** 2 <= 49
    per = CHUNK // TILE
    for y in range(0, side, CHUNK):
        for x in range(0, side, CHUNK):
            here = tissue[y // TILE : y // TILE + per, x // TILE : x // TILE + per]
            on = nuclei & np.kron(here, np.ones((TILE, TILE), bool))
            array[:, y : y + CHUNK, x : x + CHUNK] = np.stack([~on, on]).astype(np.uint8)
    return path


def _child(kind: str, slide: str, mask: str, location: str) -> None:
    """One SEG written (``kind``: streamed or whole), its seconds and peak memory as JSON."""
    import highdicom
    import pydicom
    import zarr

    from raysegment.post.dicom_seg import _descriptions, write_slide_seg

    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: not the imports'
    start = time.perf_counter()
    if kind == "streamed":
        write_slide_seg(mask, [slide], "mask", [1], ["Nucleus"], location)
    else:
        pixels = np.asarray(zarr.open_array(mask, mode="r")[1])
        seg = highdicom.seg.Segmentation(
            source_images=[pydicom.dcmread(slide, stop_before_pixels=True)],
            pixel_array=pixels[None, ..., None],
            segmentation_type="BINARY",
            segment_descriptions=_descriptions(["Nucleus"]),
            series_instance_uid=highdicom.UID(),
            series_number=1000,
            sop_instance_uid=highdicom.UID(),
            instance_number=1,
            manufacturer="raysegment",
            manufacturer_model_name="raysegment",
            software_versions="1",
            device_serial_number="none",
            tile_pixel_array=True,
            dimension_organization_type="TILED_SPARSE",
        )
        seg.save_as(location, enforce_file_format=True)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": _status("VmHWM"), "imported_mib": before}))


def _status(key: str) -> float:
    """This process' ``key`` of ``/proc/self/status`` (VmRSS, VmHWM: its peak), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**10
    raise KeyError(key)


def _run(kind: str, slide: Path, mask: Path, location: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(slide), str(mask), str(location)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sides(flag: str, default: str) -> list[int]:
    value = sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else default
    return [int(s) for s in value.split(",") if s]


def main() -> None:
    import pydicom

    out = Path(
        sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "bench_slide_seg"
    )
    whole = _sides("--whole", "8192,16384")
    checked = False
    for side in _sides("--sides", "8192,16384,32768"):
        root = out / str(side)
        start = time.perf_counter()
        slide, mask = _slide(root, side), _mask(root, side)
        print(f"{side}^2: slide and mask ready in {time.perf_counter() - start:.0f} s")
        kinds = ["streamed", *(["whole"] if side in whole else [])]
        for kind in kinds:
            location = root / f"{kind}.seg.dcm"
            got = _run(kind, slide, mask, location)
            frames = int(pydicom.dcmread(location, stop_before_pixels=True).NumberOfFrames)
            size = location.stat().st_size / 2**20
            print(
                f"  {kind:8s} {got['seconds']:6.1f} s, peak {got['peak_mib']:6.0f} MiB "
                f"({got['imported_mib']:.0f} MiB after imports); {frames} frames, {size:.0f} MiB"
            )
        if len(kinds) == 2 and not checked:
            ours, theirs = (pydicom.dcmread(root / f"{k}.seg.dcm") for k in kinds)
            assert ours.PixelData == theirs.PixelData
            assert ours.PerFrameFunctionalGroupsSequence == theirs.PerFrameFunctionalGroupsSequence
            print("  the two SEGs' frames and their functional groups are equal")
            checked = True


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(*sys.argv[2:6])
    else:
        main()
