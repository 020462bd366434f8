"""What reading a training patch costs when the images are resampled on the fly: linear
(``resampling=linear``, the default) against nnU-Net's (``resampling=nnunet``: a cubic
spline, labels by their indicators).

    python benchmarks/train_resampling.py [--size 128] [--rounds 3]

A CT-like volume in memory (80 x 320^2 int16 voxels of 2.5 x 0.8^2 mm, its labels 0/1)
read at 2.5 x 0.7^2 mm, as a training at ``resample_size`` reads it: random patches of
(--size / 4, --size, --size), the image and (nnU-Net's) the labels; the linear scheme's
labels are the label under each voxel's centre (``AtLevel``, a selection: not timed). Best
of --rounds of 2 s each, in milliseconds a patch. Writes ``train_resampling.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, machine, write_result  # noqa: E402

from raysegment.data.resampled import (  # noqa: E402
    NNUNET_RESAMPLING,
    ResampledLabels,
    resampled_to,
)
from raysegment.data.sources import ImageSource, MemorySource  # noqa: E402

SPACING = {"z": 2.5, "y": 0.8, "x": 0.8}
TARGET = {"z": 2.5, "y": 0.7, "x": 0.7}


def per_patch(source: ImageSource, patch: tuple[int, int, int], rounds: int) -> float:
    """Best of ``rounds`` of 2 s of random ``patch`` reads of ``source``: ms a patch."""
    rng = np.random.default_rng(0)
    shape = source.info.shape[2:]
    best = float("inf")
    for _ in range(rounds):
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < 2.0:
            corner = [int(rng.integers(0, n - p + 1)) for n, p in zip(shape, patch, strict=True)]
            source.read(0, (0,), tuple((c, c + p) for c, p in zip(corner, patch, strict=True)))
            count += 1
        best = min(best, (time.perf_counter() - start) / count * 1000)
    return best


def main() -> None:
    args = bench_args(__doc__ or "", 128, 3)
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 2000, (80, 320, 320)).astype(np.int16)
    labels = (rng.random(volume.shape) > 0.7).astype(np.uint8)
    patch = (args.size // 4, args.size, args.size)
    result: dict[str, Any] = {"machine": machine(), "patch": list(patch)}
    for name, scheme in (("linear", None), ("nnunet", NNUNET_RESAMPLING)):
        image = resampled_to(
            MemorySource(volume[None, None], "ct", "ct"),
            TARGET,
            "",
            lambda _: (dict(SPACING), {}, {}),
            pyramid=False,
            scheme=scheme,
        )
        times = {"image_ms": round(per_patch(image, patch, args.rounds), 2)}
        if scheme is not None:
            drawn = ResampledLabels(MemorySource(labels[None, None], "lbl", "lbl"), image)  # type: ignore[arg-type]
            times["labels_ms"] = round(per_patch(drawn, patch, args.rounds), 2)
        result[name] = times
    write_result(Path(args.out), "train_resampling.json", result)


if __name__ == "__main__":
    main()
