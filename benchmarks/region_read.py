"""CPU and wall time of the image reader per block-sized region.

    python benchmarks/region_read.py SLIDE [SPAN]

Reads eight SPAN^2 regions (default 4608: a 4096 block with its tile halo) at seeded
random places of channel 0, plane 0, after one small warm-up read, and prints the mean
CPU (user + system) and wall time per region with a checksum of the pixels read, so two
versions of the reader (e.g. ``PYTHONPATH=<other checkout>``) can be compared on one file.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from raysegment.data.sources import open_source


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    path = sys.argv[1]
    span = int(sys.argv[2]) if len(sys.argv) > 2 else 4608
    source = open_source(path)
    height, width = source.info.shape[-2:]
    rng = np.random.default_rng(1)
    corners = rng.integers(0, [height - span + 1, width - span + 1], (8, 2)) // 64 * 64
    source.read(0, (0,), ((0, 1), (0, 512), (0, 512)))
    cpu, wall, checksum = _cpu(), time.perf_counter(), 0
    for y, x in corners.tolist():
        data = source.read(0, (0,), ((0, 1), (y, y + span), (x, x + span)))
        checksum += int(data[0, 0, ::97, ::89].sum())
    cpu, wall = (_cpu() - cpu) / len(corners), (time.perf_counter() - wall) / len(corners)
    print(
        f"{source.kind} {span}^2 region: {1000 * cpu:.0f} ms CPU, {1000 * wall:.0f} ms wall "
        f"(checksum {checksum})"
    )


if __name__ == "__main__":
    main()
