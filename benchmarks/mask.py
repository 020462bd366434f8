"""What a mask saves: ``raysegment infer`` of a slide with and without a tissue mask.

    python benchmarks/mask.py [--size 8192] [--inside 0.3] [--rounds 1]

The benchmark's slide (``run.py``'s, made if absent) and its Unet; the mask is a disc
covering ``--inside`` of the slide, at 1/64 of its resolution (a slide's thumbnail, as a
tissue detector or an annotation tool gives it). Unmasked and masked runs alternate
(``--rounds`` pairs); prints each run's seconds and tiles, the ratio, and how the masked
output agrees with the unmasked one inside the mask (it must be equal there, and 0
outside). Writes ``mask.json`` into --out.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, infer_cli, machine, make_slide, unet, write_result  # noqa: E402

DOWNSAMPLE = 64


def disc_mask(path: Path, size: int, inside: float) -> np.ndarray:
    """A centred disc covering ``inside`` of a ``size``^2 slide, at 1/``DOWNSAMPLE``."""
    side = -(-size // DOWNSAMPLE)
    yy, xx = np.mgrid[:side, :side] + 0.5 - side / 2
    mask = (yy**2 + xx**2 <= inside * side * side / math.pi).astype(np.uint8)
    tifffile.imwrite(path, mask)
    return mask


def tiles(summary: str) -> int:
    """The tile count of a run's summary line."""
    found = re.search(r"(\d+) tile\(s\)", summary)
    assert found, summary
    return int(found.group(1))


def agreement(full: Path, masked: Path, mask: np.ndarray, size: int) -> dict[str, float]:
    """Pixels of the masked output equal to the unmasked one inside the mask, and 0
    outside (fractions), read row band by row band."""
    a = zarr.open_array(str(full), mode="r")
    b = zarr.open_array(str(masked), mode="r")
    side = mask.shape[0]
    cols = np.minimum((2 * np.arange(size) + 1) * side // (2 * size), side - 1)
    same = zero = inside_count = 0
    for y0 in range(0, size, 2048):
        rows = np.minimum(
            (2 * np.arange(y0, min(y0 + 2048, size)) + 1) * side // (2 * size), side - 1
        )
        inside = mask[np.ix_(rows, cols)] != 0
        x, y = a[0, y0 : y0 + 2048], b[0, y0 : y0 + 2048]
        same += int(np.count_nonzero((x == y) & inside))
        zero += int(np.count_nonzero((y == 0) & ~inside))
        inside_count += int(np.count_nonzero(inside))
    return {
        "inside_equal": same / inside_count,
        "outside_zero": zero / (size * size - inside_count),
        "inside_fraction": inside_count / (size * size),
    }


def main() -> int:
    args = bench_args(__doc__ or "", size=8192, inside=0.3)
    work = args.work
    slide = work / f"slide{args.size}.ome.tif"
    if not slide.exists():
        make_slide(slide, work / "t.zarr", args.size)
    model = unet(work / "unet.pth")
    mask = disc_mask(work / f"mask{args.size}.tif", args.size, args.inside)
    keys = ["device=cpu", "finalize.mode=mask"]
    runs: dict[str, list[dict]] = {"unmasked": [], "masked": []}
    for _ in range(args.rounds):
        for name, extra in (("unmasked", []), ("masked", [f"mask={work}/mask{args.size}.tif"])):
            run = infer_cli(slide, model, work / f"m_{name}", *keys, *extra)
            run["tiles"] = tiles(run["summary"])
            runs[name].append(run)
    image = f"{slide.name.split('.')[0]}.ome.zarr/0"
    result = {
        "machine": machine(),
        "size": args.size,
        "mask": f"disc, 1/{DOWNSAMPLE} resolution",
        **agreement(work / "m_unmasked" / image, work / "m_masked" / image, mask, args.size),
        "unmasked_s": [r["seconds"] for r in runs["unmasked"]],
        "masked_s": [r["seconds"] for r in runs["masked"]],
        "unmasked_tiles": runs["unmasked"][0]["tiles"],
        "masked_tiles": runs["masked"][0]["tiles"],
    }
    result["speedup"] = min(result["unmasked_s"]) / min(result["masked_s"])
    write_result(args.out, "mask.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
