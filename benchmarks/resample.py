"""What reading a slide at the model's pixel size costs, end to end.

    python benchmarks/resample.py OUT [--side 8192] [--runs 2]

Writes a ``side``^2 uint16 OME-TIFF of 0.325 µm pixels (a 40x scanner's; 512^2 tiles),
the same slide already at 0.5 µm (resampled by raysegment's own reader in one read of the
whole image, written as an OME-TIFF of its pixels) and ``run.py``'s cheap model in a
directory recording that it was trained at 0.5 µm. Then runs ``raysegment infer``
(``run.py``'s ``infer_cli``: a new process each, Ray's start included; CPU, two actors of
one thread, masks out) of the 0.325 µm slide with ``resample=true`` and of the 0.5 µm
copy as it is, in turn, ``runs`` times; prints each run's wall time and whether the two
masks are equal (they must be: the run reads each block's pixels as the whole-image read
gives them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import cheap, infer_cli  # noqa: E402

from raysegment.data.resampled import recorded, resampled_to  # noqa: E402
from raysegment.data.sources import open_source  # noqa: E402

SLIDE_PIXEL = 0.325
MODEL_PIXEL = 0.5


def _slides(out: Path, side: int) -> tuple[Path, Path]:
    """The slide at ``SLIDE_PIXEL`` and its copy at ``MODEL_PIXEL``."""
    rng = np.random.default_rng(0)
    image = (rng.random((side, side), dtype=np.float32) * 4000).astype(np.uint16)
    fine = out / "slide.ome.tif"
    meta = {"axes": "YX", "PhysicalSizeX": SLIDE_PIXEL, "PhysicalSizeY": SLIDE_PIXEL}
    tifffile.imwrite(fine, image, ome=True, tile=(512, 512), metadata=meta)
    del image

    size = {"y": MODEL_PIXEL, "x": MODEL_PIXEL}
    source = resampled_to(open_source(str(fine)), size, "micrometer", recorded, pyramid=True)
    _, _, _, y, x = source.info.shape
    pixels = source.read(0, (0,), ((0, 1), (0, y), (0, x)))[0, 0]
    coarse = out / "slide_05.ome.tif"
    pixel = source.info.scale["x"]
    meta = {"axes": "YX", "PhysicalSizeX": pixel, "PhysicalSizeY": pixel}
    tifffile.imwrite(coarse, pixels, ome=True, tile=(512, 512), metadata=meta)
    return fine, coarse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fine, coarse = _slides(args.out, args.side)
    model = args.out / "model"
    model.mkdir(exist_ok=True)
    cheap(model / "model.pth")
    meta = {"pixel_size": {"y": MODEL_PIXEL, "x": MODEL_PIXEL}, "pixel_unit": "micrometer"}
    (model / "raysegment.json").write_text(json.dumps(meta))
    keys = ["device=cpu", "actors=2", "threads=1", "finalize.mode=mask"]
    runs = {"resampled": (fine, ["resample=true"]), "at 0.5 um": (coarse, [])}
    masks = {}
    for run in range(args.runs):
        for kind, (image, extra) in runs.items():
            result = args.out / f"run_{kind.split()[0]}"
            seconds = infer_cli(image, model, result, *keys, *extra)["seconds"]
            print(f"run {run + 1}: {kind:<10} {seconds:6.1f} s", flush=True)
            name = image.name.replace(".ome.tif", ".ome.zarr")
            masks[kind] = zarr.open_array(str(result / name / "0"), mode="r")[:]
    same = np.array_equal(masks["resampled"], masks["at 0.5 um"])
    print(f"masks {masks['resampled'].shape}: {'equal' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
