"""What nnU-Net's postprocessing of a NIfTI copy costs (``finalize.postprocessing``).

    python benchmarks/nnunet_postprocess.py OUT [--shape 300 512 512] [--runs 2]

Writes a CT's header (a ``.nii`` of ``shape``, z y x, int16 zeros: only its grid and
affine are read) and an output of labels 0-2 in its grid: smoothed noise cut at two
levels (organ-like blobs, many of them apart, as a network's labels with stray
components). Then, in turn, ``runs`` times: ``write_nifti`` of it into a ``.nii`` as it
is, and with nnU-Net's usual steps (the foreground's largest component, then each
label's: ``post.components``, slab by slab); and nnU-Net's own ``apply_postprocessing``
of the whole array in memory (its ``remove_all_but_largest_component_from_segmentation``,
the array read whole first). Prints each one's seconds and peak resident memory added
(``ru_maxrss`` of a child process each), and whether the postprocessed files equal
nnU-Net's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
import zarr
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raysegment.post.nifti import write_nifti  # noqa: E402

STEPS = [(1, 2), (1,), (2,)]
"""nnU-Net's usual postprocessing: the foreground's largest component, then each label's."""


def _ours(out: Path, steps: list) -> None:
    write_nifti(
        str(out / "labels.zarr"),
        "czyx",
        str(out / "ct.nii"),
        str(out / "copy.nii"),
        _shape(out),
        True,
        postprocessing=steps,
    )


def _nnunet(out: Path) -> None:
    from nnunetv2.postprocessing.remove_connected_components import (
        apply_postprocessing,
    )
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as fn,
    )

    seg = zarr.open_array(str(out / "labels.zarr"), mode="r")[0]
    kwargs = [{"labels_or_regions": list(s) if len(s) > 1 else s[0]} for s in STEPS]
    done = apply_postprocessing(seg, [fn] * len(STEPS), kwargs)
    np.save(out / "nnunet.npy", done)


def _shape(out: Path) -> tuple[int, ...]:
    return tuple(zarr.open_array(str(out / "labels.zarr"), mode="r").shape[1:])


def _measured(target, *args) -> tuple[float, float]:
    """Seconds and peak resident GiB of ``target(*args)`` in a new process."""
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        peak = pool.submit(_child, target, args).result()
    return time.perf_counter() - start, peak / 2**20


def _child(target, args) -> int:
    target(*args)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    nibabel.save(
        nibabel.Nifti1Image(np.zeros(shape[::-1], np.int16), np.eye(4)), str(args.out / "ct.nii")
    )
    rng = np.random.default_rng(0)
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 6)
    labels = np.digitize(field, np.quantile(field, [0.8, 0.93])).astype(np.uint8)[None]
    zarr.create_array(
        str(args.out / "labels.zarr"), data=labels, chunks=(1, 64, 256, 256), overwrite=True
    )
    print(f"labels {shape}: {np.bincount(labels.ravel())} voxels of 0, 1, 2", flush=True)
    for run in range(args.runs):
        for name, target, extra in (
            ("as it is", _ours, ([],)),
            ("postprocessed", _ours, (STEPS,)),
            ("nnU-Net", _nnunet, ()),
        ):
            seconds, peak = _measured(target, args.out, *extra)
            print(f"run {run + 1}: {name:<14} {seconds:6.1f} s (peak {peak:.2f} GiB)")
            if name == "postprocessed":
                ours = np.asarray(nibabel.load(str(args.out / "copy.nii")).dataobj).T
    theirs = np.load(args.out / "nnunet.npy")
    print(
        f"equal to nnU-Net's: {np.array_equal(ours, theirs)}; voxels removed: "
        f"{int((ours != labels[0]).sum())}"
    )


if __name__ == "__main__":
    main()
