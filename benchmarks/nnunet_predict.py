"""An nnU-Net training's prediction of a CT: raysegment against nnU-Net's own predictor.

    python benchmarks/nnunet_predict.py OUT [--shape 96 256 256] [--runs 2] [--spacing Z Y X]
        [--sigma S] [--brain] [--regions] [--petct] [--cascade] [--probabilities]

Writes an nnU-Net v2 training (``tests/infer/test_nnunet.py``'s ``write_training``: a
3D ``PlainConvUNet`` of five stages, 16 to 256 features, random weights, one fold, patch
64 x 128 x 128, CT normalization, three classes, 2.5 x 0.8 x 0.8 mm) and a CT of
``shape`` (int16, random Hounsfield units) at that spacing (or ``--spacing``: then
raysegment runs with ``resample=true``, as nnU-Net resamples to its spacing and back) as
a ``.nii.gz``; ``--sigma``: the CT's noise smoothed by a gaussian of that many voxels
(structures larger than a voxel, whose labels survive resampling); ``--brain``: instead a
skull-stripped brain MR (uint16: an ellipsoid of the noise, 0 around it, as BraTS keeps
them) and a training of Z-score normalization within each scan's nonzero region
(``use_mask_for_norm``, as nnU-Net plans such scans), whose crop to the nonzero box both
tools make; ``--regions``: that brain MR through a region-based training of it (BraTS'
nested tumour regions, each output a sigmoid, painted in ``regions_class_order``);
``--petct``: a PET/CT case of two files (the CT as above, a PET of the noise), through a
training of its CT channel CT-normalized and its PET Z-scored (AutoPET's); ``--cascade``:
the CT through a cascade's second stage (``3d_cascade_fullres``), with a first stage's
label map of it (blobs of labels 1 and 2 in the CT's voxels) in a folder both tools are
given (nnU-Net's ``folder_with_segs_from_prev_stage``, raysegment's ``previous=``). Then, in
turn, ``runs`` times, each a new process on the CPU with nnU-Net's settings (tiles of the
patch overlapping by half, gaussian blending, no mirroring):

- nnU-Net's ``nnUNetPredictor.predict_from_files`` of the file to a ``.nii.gz`` of labels
  (one process for preprocessing and one for export);
- ``raysegment infer`` of it (``finalize.mode=labels finalize.nifti=true``: the OME-Zarr
  and a ``.nii.gz`` of labels in the CT's grid; Ray's start included; resampled,
  ``finalize.mode=raw finalize.nifti_labels=true``: the labels of the logits back in the
  CT's voxels, as nnU-Net exports them; ``--probabilities``: of the probabilities back,
  ``finalize.mode=probabilities``).

Prints each run's wall time and peak memory (PSS of the process tree, ``run.py``'s
``PeakMemory``) and the fraction of voxels whose labels agree; with ``--spacing``, also
where they part (``_at_model_voxels``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import PeakMemory, _product_env  # noqa: E402

from tests.conftest import random_image  # noqa: E402
from tests.data.test_nifti import write_nifti  # noqa: E402
from tests.infer.test_nnunet import (  # noqa: E402
    BRATS_REGIONS,
    nnunet_preprocessed,
    write_training,
)

NNUNET = """
import sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
torch.set_num_threads(torch.get_num_threads())
predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                            device=torch.device("cpu"), allow_tqdm=False)
predictor.initialize_from_trained_model_folder(sys.argv[1], use_folds=(0,))
predictor.predict_from_files([sys.argv[2:-1]], [sys.argv[-1]], save_probabilities=False,
                             overwrite=True, num_processes_preprocessing=1,
                             num_processes_segmentation_export=1,
                             folder_with_segs_from_prev_stage=PREVIOUS)
"""


def _timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak GiB of ``command`` and its processes."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, env=_product_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    sampler = PeakMemory(proc.pid)
    _, stderr = proc.communicate()
    seconds, peak = time.perf_counter() - start, sampler.stop()
    if proc.returncode:
        raise RuntimeError(f"{command[:3]} failed:\n{stderr.decode()[-3000:]}")
    return seconds, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 256, 256])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.5, 0.8, 0.8])
    parser.add_argument("--sigma", type=float, default=0.0)
    parser.add_argument("--brain", action="store_true")
    parser.add_argument("--regions", action="store_true")
    parser.add_argument("--petct", action="store_true")
    parser.add_argument("--cascade", action="store_true")
    parser.add_argument("--probabilities", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.brain = args.brain or args.regions
    name = "brain" if args.brain else "petct" if args.petct else "ct"
    results = args.out / f"results_{name}{'_regions' if args.regions else ''}"
    configuration = "3d_cascade_fullres" if args.cascade else "3d_fullres"
    results = results.with_name(results.name + ("_cascade" if args.cascade else ""))
    folder = results / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    if not folder.exists():
        mri = {
            "channels": ("FLAIR",),
            "labels": ("background", "edema", "tumour"),
            "zscore": "region",
            **({"labels": BRATS_REGIONS, "regions": [1, 2, 3]} if args.regions else {}),
        }
        petct = {
            "channels": ("CT", "PET"),
            "labels": ("background", "lesion"),
            "zscore": "box",
            "ct_first": True,
        }
        cascade = {"configuration": configuration, "previous_stage": "3d_lowres"}
        write_training(
            results,
            features=(16, 32, 64, 128, 256),
            patch=(64, 128, 128),
            **(mri if args.brain else petct if args.petct else {}),
            **(cascade if args.cascade else {}),
        )
    noise = random_image(tuple(args.shape)).astype(np.float32)
    if args.sigma:
        noise = gaussian_filter(noise, args.sigma)
        noise = (noise - noise.min()) / (np.ptp(noise) or 1.0) * 1000
    if args.brain:
        centred = np.ogrid[tuple(slice(0, n) for n in args.shape)]
        radii = [0.4 * n for n in args.shape]
        axes = zip(centred, args.shape, radii, strict=True)
        inside = sum(((c - n / 2) / r) ** 2 for c, n, r in axes) < 1
        ct = np.where(inside, noise + 1, 0).astype(np.uint16)
    else:
        ct = (noise * 2.5 - 1000).astype(np.int16)
    case = args.out / f"imagesTs_{name}"  # the case's files: raysegment's input
    case.mkdir(exist_ok=True)
    image = case / f"{name}_0000.nii.gz"
    z, y, x = args.spacing
    write_nifti(image, ct, np.diag([x, y, z, 1.0]))
    files = [image]
    if args.petct:  # a second smoothed noise as its PET, in SUVs
        files.append(case / f"{name}_0001.nii.gz")
        pet = random_image(tuple(args.shape), seed=5).astype(np.float32)
        if args.sigma:
            pet = gaussian_filter(pet, args.sigma)
        write_nifti(files[1], (pet - pet.min()) / (np.ptp(pet) or 1.0) * 20, np.diag([x, y, z, 1]))
    previous = None
    if args.cascade:  # the first stage's label map: blobs of labels 1 and 2
        previous = args.out / f"lowres_{name}"
        previous.mkdir(exist_ok=True)
        field = gaussian_filter(random_image(tuple(args.shape), seed=7).astype(np.float32), 6)
        first = np.digitize(field, np.quantile(field, [0.6, 0.85])).astype(np.uint8)
        write_nifti(previous / f"{name}.nii.gz", first, np.diag([x, y, z, 1.0]))
    theirs = args.out / "nnunet" / f"{name}.nii.gz"
    ours = args.out / "raysegment" / f"{name}.nii.gz"  # the case's, as nnU-Net names it
    runs = {
        "nnU-Net": [
            sys.executable,
            "-c",
            NNUNET.replace("PREVIOUS", repr(previous and str(previous))),
            str(folder),
            *map(str, files),
            str(theirs)[:-7],
        ],
        "raysegment": [
            sys.executable,
            "-m",
            "raysegment.cli",
            "infer",
            f"input={case}",
            f"model={folder}",
            f"output={ours.parent}",
            "device=cpu",
            "tile.overlap=0.5",
            "finalize.nifti=true",
            "overwrite=true",
            "progress=false",
            "quicklook=false",
            *([f"previous={previous}"] if previous else []),
            # Resampled: the labels of the logits back in the CT's voxels, as nnU-Net
            # exports them (or of the probabilities back).
            *(
                [
                    "resample=true",
                    f"finalize.mode={'probabilities' if args.probabilities else 'raw'}",
                    "finalize.nifti_labels=true",
                ]
                if args.spacing != [2.5, 0.8, 0.8]
                else ["finalize.mode=labels"]
            ),
        ],
    }
    for run in range(args.runs):
        for name, command in runs.items():
            seconds, peak = _timed(command)
            print(f"run {run + 1}: {name:<10} {seconds:6.1f} s, peak {peak:.2f} GiB", flush=True)
    a, b = (np.asarray(nibabel.load(str(p)).dataobj) for p in (theirs, ours))
    print(f"labels agree in {(a == b).mean():.4%} of {a.size} voxels; classes {np.unique(a)}")
    if args.spacing != [2.5, 0.8, 0.8] and not args.brain:  # a brain's crop: other grids
        first_stage = first if args.cascade else None
        _at_model_voxels(folder, ct, args.spacing, ours, theirs, first_stage)


def _at_model_voxels(
    folder: Path,
    ct: np.ndarray,
    spacing: list[float],
    ours: Path,
    theirs: Path,
    previous: np.ndarray | None = None,
) -> None:
    """Where the labels part: nnU-Net's labels at the model's voxels (its preprocessing,
    its sliding window) against raysegment's OME-Zarr; and nnU-Net's logits put back in
    the CT's voxels by raysegment's interpolation (``nnunet_kinds`` of its probabilities'
    orders) against nnU-Net's own export (``previous``: a cascade's first stage's map)."""
    import zarr

    from raysegment.data.resampled import axis_taps, filtered, nnunet_kinds
    from raysegment.infer.model import read_models

    predictor, data = nnunet_preprocessed(folder, ct[None], spacing, (0,), previous=previous)
    logits = predictor.predict_logits_from_preprocessed_data(data).float()
    stored = ours.parent / f"{ours.name.split('.')[0]}.ome.zarr" / "0"
    mine = zarr.open_array(str(stored), mode="r")[:].argmax(0)
    agree = (logits.argmax(0).numpy() == mine).mean()
    print(f"at the model's voxels {mine.shape}: agree in {agree:.4%}")
    (model,) = read_models([str(folder)])
    trained = model.meta["pixel_size"]
    current = {a: trained[a] for a in "zyx"}
    kinds = nnunet_kinds(
        model.meta["resampling"], "probabilities", current, dict(zip("zyx", spacing, strict=True))
    )
    taps = [
        axis_taps(kinds[a], n, m, 0, m) for a, n, m in zip("zyx", mine.shape, ct.shape, strict=True)
    ]
    back = filtered(logits.numpy(), taps, [0, 0, 0]).argmax(0)
    export = np.asarray(nibabel.load(str(theirs)).dataobj)
    agree = (back == export.transpose(2, 1, 0)).mean()
    print(f"nnU-Net's logits put back by raysegment: agree with its export in {agree:.4%}")


if __name__ == "__main__":
    main()
