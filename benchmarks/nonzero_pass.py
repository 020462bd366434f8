"""The pass over a scan that finds nnU-Net's nonzero region (``data.nonzero``): what an
nnU-Net training's run adds before its first block, while Ray starts.

    python benchmarks/nonzero_pass.py [--repeats 3]

A 300 x 512^2 int16 CT (random Hounsfield units, 1 voxel in 2000 of 0 as water's,
the box the whole scan) held in memory, as a CT training needs it: the box alone
(``resample=false``), with each plane's range (``resample=true``), and with a Z-score's
moments; and a 160 x 256^2 two-channel uint16 brain MR (an ellipsoid of values, 0 around
it) normalized within its region, its holes filled. Prints each one's least and greatest
wall time of ``repeats`` (CPU-bound numpy: the pass reads each slab once).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from raysegment.data.nonzero import Nonzero, nonzero_region
from raysegment.data.sources import MemorySource


def _timed(find: Callable[[], Nonzero], repeats: int) -> tuple[float, float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        find()
        seconds.append(time.perf_counter() - start)
    return min(seconds), max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ct = (rng.random((300, 512, 512)) * 2000 - 1000).astype(np.int16)
    scan = MemorySource(ct[None, None], "ct", "ct")
    z, y, x = np.ogrid[:160, :256, :256]
    brain = ((z - 80) / 70) ** 2 + ((y - 128) / 110) ** 2 + ((x - 128) / 90) ** 2 < 1
    values = (rng.random((2, 160, 256, 256)) * 1000 + 1).astype(np.uint16)
    mri = MemorySource(np.where(brain, values, 0)[None], "mri", "mri")
    runs = {
        "CT, the box": lambda: nonzero_region(scan, (0,), False, False, False),
        "CT, the box and each plane's range": lambda: nonzero_region(scan, (0,), False, False),
        "CT, the box, ranges and moments": lambda: nonzero_region(scan, (0,), False),
        "MR of 2 channels, within its region": lambda: nonzero_region(mri, (0, 1), True),
    }
    for name, find in runs.items():
        low, high = _timed(find, args.repeats)
        print(f"{name:<40} {low:.2f}-{high:.2f} s", flush=True)


if __name__ == "__main__":
    main()
