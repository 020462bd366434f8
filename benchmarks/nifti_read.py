"""Reading a CT as NIfTI: the same volume as ``.nii`` (memory-mapped) and ``.nii.gz``,
and as a DICOM series.

    python benchmarks/nifti_read.py [OUT] [--infer]

Writes a 300 x 512 x 512 int16 volume (a CT's size) as ``OUT/ct.nii`` and
``OUT/ct.nii.gz``, then reads each through ``NiftiSource`` in the twelve 128 x 256 x 256
regions of a run's blocks, in order, and prints the seconds (the first round, and the best
of two). A gzipped file is read a slab of whole planes at a time from the checkpoints of
its decompression (``NiftiSource``), also with the regions shuffled, and through nibabel's
own proxy (each region decompressed from the file's start, or from indexed_gzip's nearest
index point where it is installed). Then training's random patches from five copies of
it, against nibabel's proxy. The same values as a
DICOM series (``OUT/ct_dicom/``: 300 files of one slice, uint16 with an intercept of
-1024, as ``tests/data/test_dicom.py`` writes series), and as one enhanced CT file of 300
frames (``OUT/ct_enhanced/``, ``write_enhanced``), read alike. With ``--infer``, then
``raysegment infer`` of each file (``shards.py``'s small 3D network, 64^3 tiles, a mask
with ``finalize.nifti=true``): its wall time, and whether the NIfTI copy has the input's
affine and the OME-Zarr's voxels; and of the DICOM series with ``finalize.dicom_seg=true``:
its wall time, the DICOM SEG's size and frames checked against the mask, and the time of
writing the SEG alone (again, from the mask written).
"""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import time
from pathlib import Path

import nibabel
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysegment.data.sources import open_sources  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPE = (300, 512, 512)
BLOCK = (128, 256, 256)


def _infer(out: Path, name: str, model: Path) -> None:
    """``raysegment infer`` of ``out/name`` with a NIfTI copy: wall time, the copy checked."""
    import zarr

    result = out / f"run_{name.replace('.', '_')}"
    command = [
        sys.executable,
        "-m",
        "raysegment.cli",
        "infer",
        f"input={out / name}",
        f"model={model}",
        f"output={result}",
        "tile.size=64",
        "finalize.mode=mask",
        "finalize.nifti=true",
        "progress=false",
        "overwrite=true",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    stem = name.split(".")[0]
    copy = nibabel.load(str(result / (stem + name[len(stem) :])))
    mask = np.asarray(zarr.open_array(str(result / f"{stem}.ome.zarr" / "0"), mode="r"))[0]
    same = np.array_equal(np.asarray(copy.dataobj).transpose(2, 1, 0), mask)
    affine = np.array_equal(copy.affine, nibabel.load(str(out / name)).affine)
    print(f"infer {name}: {seconds:.1f} s; NIfTI copy: voxels equal {same}, affine equal {affine}")


def _infer_dicom(out: Path, model: Path) -> None:
    """``raysegment infer`` of the series with a DICOM SEG: wall time, the SEG checked, and
    the SEG written again from the output (its time alone)."""
    import highdicom
    import pydicom
    import zarr

    from raysegment.data.sources import open_source
    from raysegment.post.dicom_seg import write_dicom_seg

    result = out / "run_dicom"
    command = [sys.executable, "-m", "raysegment.cli", "infer", f"input={out / 'ct_dicom'}"]
    command += [f"model={model}", f"output={result}", "tile.size=64", "finalize.mode=mask"]
    command += ["finalize.dicom_seg=true", "progress=false", "overwrite=true"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    array = result / "ct_dicom.ome.zarr" / "0"
    mask = np.asarray(zarr.open_array(str(array), mode="r"))[0]
    files = open_source(str(out / "ct_dicom")).files  # type: ignore[attr-defined]
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    seg = highdicom.seg.segread(result / "ct_dicom.seg.dcm")
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    same = np.array_equal(frames[..., 0], mask)
    size = (result / "ct_dicom.seg.dcm").stat().st_size / 2**20
    start = time.perf_counter()
    frames: list[int | None] = [None] * len(files)
    again = str(out / "again.dcm")
    write_dicom_seg(str(array), "czyx", files, frames, "mask", [0], ["class_0"], again)
    alone = time.perf_counter() - start
    print(
        f"infer DICOM series with a DICOM SEG: {seconds:.1f} s; SEG {seg.NumberOfFrames} "
        f"frames, {size:.1f} MiB, equal to the mask {same}; written alone in {alone:.1f} s"
    )


def _timed(image: Path, regions: list[tuple[tuple[int, int], ...]]) -> tuple[float, float, float]:
    """Seconds to open ``image`` and to read ``regions`` of it, in order: the second of two
    rounds' opening, the first round's reads, the best of their reads. (A process keeps an
    open ``.nii.gz`` between sources: the second round's reads find it open.)"""
    reads = []
    for _ in range(2):
        start = time.perf_counter()
        (source,) = open_sources(str(image))
        opened = time.perf_counter() - start
        for region in regions:
            source.read(0, (0,), region)
        reads.append(time.perf_counter() - start - opened)
    return opened, reads[0], min(reads)


def _nibabel_reads(image: Path, regions: list[tuple[tuple[int, int], ...]]) -> float:
    """Seconds to read ``regions`` through nibabel's own array proxy (raysegment's reader of
    a ``.nii.gz`` before session 46): each decompressed from the file's start, or from
    indexed_gzip's nearest index point."""
    proxy = nibabel.load(str(image), keep_file_open=True).dataobj
    start = time.perf_counter()
    for (z0, z1), (y0, y1), (x0, x1) in regions:
        np.asarray(proxy[x0:x1, y0:y1, z0:z1])
    return time.perf_counter() - start


def _patches(out: Path) -> None:
    """Training's reads: 40 random 256^2 patches of 1 and of 32 planes, each of one of five
    copies of ``ct.nii.gz`` (a dataset's cases), twice over (the second round finds the
    files open, their checkpoints made), against nibabel's proxy reading the same."""
    cases = []
    for k in range(5):
        case = out / "cases" / f"case_{k}.nii.gz"
        if not case.exists():
            case.parent.mkdir(parents=True, exist_ok=True)
            case.write_bytes((out / "ct.nii.gz").read_bytes())
        cases.append(case)
    sources = [open_sources(str(c))[0] for c in cases]
    proxies = [nibabel.load(str(c)).dataobj for c in cases]
    rng = np.random.default_rng(0)
    for depth in (1, 32):
        picks = [
            (int(rng.integers(5)), int(rng.integers(SHAPE[0] - depth)), *rng.integers(0, 256, 2))
            for _ in range(40)
        ]
        rounds = []
        for _ in range(2):
            start = time.perf_counter()
            for k, z, y, x in picks:
                sources[k].read(0, (0,), ((z, z + depth), (y, y + 256), (x, x + 256)))
            rounds.append((time.perf_counter() - start) / len(picks))
        start = time.perf_counter()
        for k, z, y, x in picks[:10]:
            np.asarray(proxies[k][x : x + 256, y : y + 256, z : z + depth])
        alone = (time.perf_counter() - start) / 10
        print(
            f"training patches of {depth} plane(s) from 5 .nii.gz: {rounds[0] * 1000:.0f} ms "
            f"each, again {rounds[1] * 1000:.0f} ms; nibabel's proxy {alone * 1000:.0f} ms",
            flush=True,
        )


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--infer"]
    out = Path(args[0] if args else "nifti-bench")
    out.mkdir(parents=True, exist_ok=True)
    volume = np.random.default_rng(0).normal(0, 300, SHAPE).astype(np.int16)
    image = nibabel.Nifti1Image(volume.transpose(2, 1, 0), np.diag([0.7, 0.7, 1.0, 1.0]))
    regions = [
        tuple((a, min(a + b, n)) for a, b, n in zip(corner, BLOCK, SHAPE, strict=True))
        for corner in itertools.product(
            *(range(0, n, b) for n, b in zip(SHAPE, BLOCK, strict=True))
        )
    ]
    try:
        import indexed_gzip  # noqa: F401

        seeking = "with indexed_gzip"
    except ImportError:
        seeking = "without indexed_gzip"
    for name in ("ct.nii", "ct.nii.gz"):
        nibabel.save(image, str(out / name))
        _, first, read = _timed(out / name, regions)
        print(f"{name}: {len(regions)} regions in {first:.2f} s, again {read:.2f} s", flush=True)
    shuffled = random.Random(0).sample(regions, len(regions))
    _, first, _ = _timed(out / "ct.nii.gz", shuffled)
    print(f"ct.nii.gz: the regions shuffled {first:.2f} s", flush=True)
    alone = _nibabel_reads(out / "ct.nii.gz", regions)
    print(f"ct.nii.gz: the regions through nibabel's proxy {alone:.2f} s ({seeking})", flush=True)
    _patches(out)
    from tests.data.test_dicom import write_enhanced, write_series

    stored = (volume.astype(np.int32) + 1024).clip(0).astype(np.uint16)
    series, enhanced = out / "ct_dicom", out / "ct_enhanced"
    if not series.exists():
        write_series(series, stored)
    if not enhanced.exists():
        write_enhanced(enhanced / "ct.dcm", stored)
    _, _, read = _timed(series, regions)
    print(f"DICOM series: {len(regions)} regions in {read:.2f} s", flush=True)
    opened, _, read = _timed(enhanced, regions)
    print(f"enhanced CT file: opened in {opened:.2f} s, {len(regions)} regions in {read:.2f} s")
    if "--infer" in sys.argv:
        from shards import small_3d

        model = small_3d(out / "small3d.pth")
        for name in ("ct.nii", "ct.nii.gz"):
            _infer(out, name, model)
        _infer_dicom(out, model)


if __name__ == "__main__":
    main()
