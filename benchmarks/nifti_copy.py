"""What putting a resampled run's output back in its CT's voxels costs (``finalize.nifti``).

    python benchmarks/nifti_copy.py OUT [--shape 300 512 512] [--classes 5] [--runs 2]

Writes a CT's header (a ``.nii`` of ``shape``, z y x, int16 zeros: only its grid and
affine are read) and two outputs of labels of ``classes`` classes (nested spheres, as
organs' masks): one in the CT's grid, one at half its voxels along each axis (a run with
``resample=true`` at twice the CT's voxel size). Then, in turn, ``runs`` times, times
``write_nifti`` of each into a ``.nii`` beside (a new ``.nii`` each, the page cache warm):
the copy of an output in the CT's grid (its bytes in order), and of the resampled one
interpolated back (each class's indicator, ``classes=True``). Prints the seconds and the
CPU seconds of each, and the fraction of the CT's voxels whose labels differ from the
labels of the CT's grid (what the interpolation cannot give back at boundaries), against
that of the class under each voxel's centre (the copy before session 49).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raysegment.data.tiling import under_centres  # noqa: E402
from raysegment.post.nifti import write_nifti  # noqa: E402


def _labels(shape: tuple[int, ...], classes: int) -> np.ndarray:
    """Nested spheres about the centre, class k inside radius (1 - k / classes) of the
    half-extent: (1, z, y, x) uint8."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    radius = sum(((g + 0.5) / n - 0.5) ** 2 for g, n in zip(grids, shape, strict=True)) ** 0.5
    out = np.zeros(shape, np.uint8)
    for k in range(1, classes):
        out[radius < 0.5 * (1 - k / classes)] = k
    return out[None]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512])
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    half = tuple(n // 2 for n in shape)
    ct = args.out / "ct.nii"
    image = nibabel.Nifti1Image(np.zeros(shape[::-1], np.int16), np.diag([0.7, 0.7, 1.5, 1.0]))
    nibabel.save(image, str(ct))
    full = _labels(shape, args.classes)
    arrays = {}
    coarse = _labels(half, args.classes)
    under = np.ix_(*(under_centres(0, n, n, m) for n, m in zip(shape, half, strict=True)))
    nearest = (coarse[0][under] != full[0]).mean()
    print(f"the class under each voxel's centre: {nearest:.3%} differing from the CT grid's")
    for name, labels in (("same grid", full), ("resampled", coarse)):
        path = args.out / f"{name.replace(' ', '_')}.zarr"
        chunks = (1, 64, *labels.shape[2:])
        zarr.create_array(str(path), data=labels, chunks=chunks, overwrite=True)
        arrays[name] = path
    for run in range(args.runs):
        for name, path in arrays.items():
            copy = args.out / f"{path.stem}_{run}.nii"
            start, cpu = time.perf_counter(), _cpu()
            write_nifti(str(path), "czyx", str(ct), str(copy), shape, classes=True)
            seconds, cpu = time.perf_counter() - start, _cpu() - cpu
            got = np.asarray(nibabel.load(str(copy)).dataobj).transpose(2, 1, 0)
            differ = (got != full[0]).mean()
            print(
                f"run {run + 1}: {name:<9} {seconds:6.2f} s ({cpu:.2f} CPU-s), "
                f"labels differing from the CT grid's {differ:.3%}",
                flush=True,
            )
            copy.unlink()


if __name__ == "__main__":
    main()
