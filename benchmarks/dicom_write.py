"""Outputs as DICOM SEGs (``finalize.dicom_seg``): streamed, as raysegment writes them,
against highdicom given the whole output, in time and peak memory, as the input grows;
instances as DICOM annotations (``instances.dicom_ann``), as their number grows.

    python benchmarks/dicom_write.py [OUT] [--sides 8192,16384,32768] [--whole 8192,16384]
    python benchmarks/dicom_write.py [OUT] --series [--slices 100,300,900] [--whole 100,300]
    python benchmarks/dicom_write.py [OUT] --ann [--objects 10000,100000,1000000]
    python benchmarks/dicom_write.py [OUT] --levels [--sides 8192,32768] [--whole 8192,16384]

Slides: for each side N writes (once) ``OUT/<N>/slide/level0.dcm``, an N x N DICOM slide
of 256^2 JPEG tiles (one tile's bytes in every frame: only its header is read), and
``OUT/<N>/mask.zarr``, an output's level 0 as ``raysegment infer`` writes a softmax
model's mask (2 channels, uint8, 1024^2 chunks): nuclei (discs of radius 7, 24 pixels
apart) over tissue in blobs covering about half the slide, none on the glass. The SEG is
of channel 1 (``Nucleus``), its frames the tiles holding a nucleus (TILED_SPARSE).

Series (``--series``): for each number of slices Z, ``OUT/series/<Z>/ct/``, a CT series of
Z 512^2 slices (as ``tests/data/test_dicom.py`` writes them), and ``mask.zarr``, a
20-class sigmoid model's mask over it (20 channels, uint8, 128^3 chunks: as infer writes
a 3D output): an ellipsoid each, 20-80 voxels in radius. The SEG is of all 20 channels,
its frames the slices holding each.

Slide pyramids (``--levels``): the slide with levels a quarter of the last's side each
(down to 1024^2 or over: 32768^2, 8192^2, 2048^2), one pyramid; the SEG of level 0 and a
SEG of each coarser level, the mask sampled to it (``finalize.dicom_seg_levels``), against
highdicom's ``create_segmentation_pyramid`` of the whole mask.

Annotations (``--ann``): N nuclei's outlines (a 24-point ring each, radius 7, anywhere on
a 32768^2 slide) as ``finish_instances`` leaves them (GeoJSON features, a line each, in
files of 2000), written by ``write_dicom_ann`` as one annotation group of the slide.

Each SEG (and annotation object) is written in its own process, which prints its
seconds, the process' resident memory after its imports, and its peak while writing (the
peak reset after the imports): streamed (``write_slide_seg`` / ``write_dicom_seg``: a
chunk read at a time, the frames spooled to disk, the SEG written around them), and
highdicom's ``Segmentation`` of the output read whole into memory, for the sizes given
to ``--whole``; at the smallest, both SEGs' frames and functional groups are checked
equal. Series also as a label map (``finalize.dicom_seg_type=labelmap``: a frame a
slice, where ellipsoids overlap the later class's number).
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
SEGMENTS = 20
"""The series' classes."""


def _slide(root: Path, side: int, k: int = 0, uids: tuple[str, ...] = ()) -> Path:
    """An N x N brightfield slide's level ``k`` (pixels 4^k times level 0's) of one JPEG
    tile repeated; ``uids``: the study's, series', frame of reference's and pyramid's."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    from tests.data.test_dicom import _slide_level

    path = root / "slide" / f"level{k}.dcm"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    across = -(-side // TILE)
    frames = across * across
    uids = uids or (generate_uid(), generate_uid(), generate_uid())
    ds = _slide_level(JPEGBaseline8Bit, uids[:3], k, (side, side), TILE, frames, 0.25)
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [
        0.25 * 4**k / 1000
    ] * 2
    if len(uids) > 3:
        ds.PyramidUID = uids[3]
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    tile = np.full((TILE, TILE, 3), 220, np.uint8)
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(tile, level=90)] * frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _pyramid(root: Path, side: int) -> list[Path]:
    """A slide of levels each a quarter of the last's side, down to 1024^2 or over, one
    pyramid (``PyramidUID``), as scanners' converters write 40x, 10x, 2.5x."""
    from pydicom.uid import generate_uid

    uids = tuple(generate_uid() for _ in range(4))
    sides = [side // 4**k for k in range(8) if side // 4**k >= 1024]
    return [_slide(root, n, k, uids) for k, n in enumerate(sides)]


def _nuclei(root: Path, side: int) -> Path:
    """A softmax model's 2-channel mask of nuclei over tissue, chunk by chunk."""
    import zarr

    path = root / "mask.zarr"
    if (path / "zarr.json").exists():
        return path
    array = zarr.create_array(
        str(path), shape=(2, side, side), chunks=(1, CHUNK, CHUNK), dtype="uint8", overwrite=True
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


def _series(root: Path, slices: int) -> tuple[Path, Path]:
    """A CT series of ``slices`` 512^2 slices, and a 20-class mask of an ellipsoid each."""
    import zarr

    from tests.data.test_dicom import write_series

    ct, path = root / "ct", root / "mask.zarr"
    if (path / "zarr.json").exists():
        return ct, path
    write_series(ct, np.zeros((slices, 512, 512), np.uint16))
    array = zarr.create_array(
        str(path), shape=(SEGMENTS, slices, 512, 512), chunks=(1, 128, 128, 128), dtype="uint8"
    )
    rng = np.random.default_rng(0)
    zz, yy, xx = np.ogrid[:slices, :512, :512]
    for s in range(SEGMENTS):
        centre = rng.integers([0, 100, 100], [slices, 400, 400])
        radius = rng.integers(20, 80, 3)
        inside = (
            sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radius, strict=True))
            <= 1
        )
        array[s] = inside.astype(np.uint8)
    return ct, path


def _outlines(root: Path, objects: int) -> Path:
    """``objects`` nuclei's outlines as GeoJSON features, a line each, 2000 a file."""
    path = root / "outlines"
    if path.exists():
        return path
    path.mkdir(parents=True)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    rng = np.random.default_rng(0)
    for k in range(0, objects, 2000):
        lines = []
        for i in range(k, min(objects, k + 2000)):
            cx, cy = rng.uniform(8, 32760, 2)
            ring = np.stack([cx + 7 * np.cos(angles), cy + 7 * np.sin(angles)], 1)
            coordinates = [[*ring.round(3).tolist(), ring[0].round(3).tolist()]]
            feature = {
                "type": "Feature",
                "id": f"0-{i + 1}",
                "geometry": {"type": "Polygon", "coordinates": coordinates},
                "properties": {"measurements": {"pixels": 154, "area_micrometer^2": 9.625}},
            }
            lines.append(json.dumps(feature, separators=(",", ":")))
        (path / f"{k:08d}.jsonl").write_text("\n".join(lines) + "\n")
    return path


def _slices(ct: Path) -> list[str]:
    import pydicom

    where = {
        str(f): float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
        for f in ct.iterdir()
    }
    return sorted(where, key=where.__getitem__)


def _child(kind: str, source: str, mask: str, location: str) -> None:
    """One SEG written (``kind``: streamed or whole, of a slide's level file or a series'
    directory ``source``), its seconds and memory as JSON."""
    import highdicom
    import pydicom
    import zarr

    from raysegment.post.dicom_ann import write_dicom_ann
    from raysegment.post.dicom_seg import (
        _descriptions,
        level_location,
        write_dicom_seg,
        write_slide_seg,
    )

    if kind == "ann":  # ``mask``: the outlines' directory
        parts = sorted(str(p) for p in Path(mask).glob("*.jsonl"))
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        start = time.perf_counter()
        write_dicom_ann(location, [source], parts, ("Nucleus", None), "micrometer")
        seconds = time.perf_counter() - start
        print(
            json.dumps({"seconds": seconds, "peak_mib": _status("VmHWM"), "imported_mib": before})
        )
        return
    series = Path(source).is_dir()
    files = _slices(Path(source)) if series else [source]
    segments = SEGMENTS if series else 1
    names = [f"Organ {s}" for s in range(segments)] if series else ["Nucleus"]
    chosen = list(range(segments)) if series else [1]
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: not the imports'
    start = time.perf_counter()
    labelmap = kind == "labelmap"
    theirs = {  # highdicom's SEGs of the whole mask: their identity
        "segment_descriptions": _descriptions(names),
        "series_instance_uid": highdicom.UID(),
        "series_number": 1000,
        "manufacturer": "raysegment",
        "manufacturer_model_name": "raysegment",
        "software_versions": "1",
        "device_serial_number": "none",
    }
    if kind != "whole" and series:
        frames = [None] * len(files)
        write_dicom_seg(
            mask, "czyx", files, frames, "mask", chosen, names, location, None, labelmap
        )
    elif kind == "levels":  # ``source``: level 0, its coarser levels beside it
        coarser = [
            ([str(f)], level_location(location, k))
            for k, f in enumerate(sorted(Path(source).parent.glob("level*.dcm"))[1:], 1)
        ]
        write_slide_seg(mask, files, "mask", chosen, names, location, coarser=coarser)
    elif kind == "whole-levels":  # highdicom's pyramid of the whole mask
        levels = sorted(Path(source).parent.glob("level*.dcm"))
        output = zarr.open_array(mask, mode="r")
        pixels = np.moveaxis(np.asarray(output[chosen]), 0, -1)[None]
        segs = highdicom.seg.create_segmentation_pyramid(
            source_images=[pydicom.dcmread(f, stop_before_pixels=True) for f in levels],
            pixel_arrays=[pixels],
            segmentation_type="BINARY",
            dimension_organization_type="TILED_SPARSE",
            **theirs,
        )
        for k, seg in enumerate(segs):
            seg.save_as(level_location(location, k) if k else location, enforce_file_format=True)
    elif kind != "whole":
        write_slide_seg(mask, files, "mask", chosen, names, location, None, labelmap)
    else:
        output = zarr.open_array(mask, mode="r")
        pixels = np.moveaxis(np.asarray(output[chosen]), 0, -1)
        options = {} if series else {"tile_pixel_array": True}
        seg = highdicom.seg.Segmentation(
            source_images=[pydicom.dcmread(f, stop_before_pixels=True) for f in files],
            pixel_array=pixels if series else pixels[None],
            segmentation_type="BINARY",
            sop_instance_uid=highdicom.UID(),
            instance_number=1,
            dimension_organization_type=None if series else "TILED_SPARSE",
            **theirs,
            **options,
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


def _run(kind: str, source: Path, mask: Path, location: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(source), str(mask), str(location)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sizes(flag: str, default: str) -> list[int]:
    value = sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else default
    return [int(s) for s in value.split(",") if s]


def _levels(out: Path, sizes: list[int], whole: list[int]) -> None:
    """``--levels``: a slide's SEG with one of each coarser level (``dicom_seg_levels``),
    streamed, against highdicom's pyramid of the whole mask; at the smallest, every level's
    frames and functional groups checked equal."""
    import pydicom

    from raysegment.post.dicom_seg import level_location

    def segs(kind: str, count: int) -> list[Path]:
        """The SEGs of ``kind`` of a slide of ``count`` levels, the finest first."""
        first = str(root / f"{kind}.seg.dcm")
        return [Path(level_location(first, k) if k else first) for k in range(count)]

    checked = False
    for size in sizes:
        root = out / f"{size}-levels"
        start = time.perf_counter()
        levels, mask = _pyramid(root, size), _nuclei(root, size)
        print(f"{size}^2, {len(levels)} levels: ready in {time.perf_counter() - start:.0f} s")
        kinds = ["levels", *(["whole-levels"] if size in whole else [])]
        for kind in kinds:
            location = root / f"{kind}.seg.dcm"
            got = _run(kind, levels[0], mask, location)
            files = segs(kind, len(levels))
            frames = [
                int(pydicom.dcmread(f, stop_before_pixels=True).NumberOfFrames) for f in files
            ]
            mib = sum(f.stat().st_size for f in files) / 2**20
            print(
                f"  {kind:12s} {got['seconds']:6.1f} s, peak {got['peak_mib']:6.0f} MiB "
                f"({got['imported_mib']:.0f} MiB after imports); frames {frames}, {mib:.0f} MiB"
            )
        if len(kinds) == 2 and not checked:
            for ours_file, theirs_file in zip(*(segs(k, len(levels)) for k in kinds), strict=True):
                ours, theirs = pydicom.dcmread(ours_file), pydicom.dcmread(theirs_file)
                assert ours.PixelData == theirs.PixelData
                assert (
                    ours.PerFrameFunctionalGroupsSequence == theirs.PerFrameFunctionalGroupsSequence
                )
            print("  every level's frames and functional groups are equal")
            checked = True


def main() -> None:
    import pydicom

    given = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else None
    out = Path(given or "bench_dicom_write")
    if "--ann" in sys.argv:
        slide = _slide(out / "32768", 32768)
        for objects in _sizes("--objects", "10000,100000,1000000"):
            root = out / "ann" / str(objects)
            outlines = _outlines(root, objects)
            location = root / "nuclei.ann.dcm"
            got = _run("ann", slide, outlines, location)
            mib = location.stat().st_size / 2**20
            print(
                f"{objects} objects: {got['seconds']:.1f} s, peak {got['peak_mib']:.0f} MiB "
                f"({got['imported_mib']:.0f} MiB after imports); {mib:.0f} MiB"
            )
        return
    if "--levels" in sys.argv:
        _levels(out, _sizes("--sides", "8192,32768"), _sizes("--whole", "8192,16384"))
        return
    series = "--series" in sys.argv
    if series:
        sizes = _sizes("--slices", "100,300,900")
        whole = _sizes("--whole", "100,300")
    else:
        sizes = _sizes("--sides", "8192,16384,32768")
        whole = _sizes("--whole", "8192,16384")
    checked = False
    for size in sizes:
        start = time.perf_counter()
        if series:
            root = out / "series" / str(size)
            source, mask = _series(root, size)
            name = f"{size} x 512^2, {SEGMENTS} classes"
        else:
            root = out / str(size)
            source, mask = _slide(root, size), _nuclei(root, size)
            name = f"{size}^2"
        print(f"{name}: input and mask ready in {time.perf_counter() - start:.0f} s")
        kinds = ["streamed", *(["whole"] if size in whole else [])]
        if series:
            kinds.append("labelmap")
        for kind in kinds:
            location = root / f"{kind}.seg.dcm"
            got = _run(kind, source, mask, location)
            frames = int(pydicom.dcmread(location, stop_before_pixels=True).NumberOfFrames)
            mib = location.stat().st_size / 2**20
            print(
                f"  {kind:8s} {got['seconds']:6.1f} s, peak {got['peak_mib']:6.0f} MiB "
                f"({got['imported_mib']:.0f} MiB after imports); {frames} frames, {mib:.0f} MiB"
            )
        if "whole" in kinds and not checked:
            ours, theirs = (pydicom.dcmread(root / f"{k}.seg.dcm") for k in kinds[:2])
            assert ours.PixelData == theirs.PixelData
            assert ours.PerFrameFunctionalGroupsSequence == theirs.PerFrameFunctionalGroupsSequence
            print("  the two SEGs' frames and their functional groups are equal")
            checked = True


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(*sys.argv[2:6])
    else:
        main()
