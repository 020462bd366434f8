"""What ``normalization=nnunet`` adds to a training's start: each image's nonzero region
(one pass over it) and a CT channel's foreground statistics (a pass over the labelled
slabs, then nnU-Net's 10^8 draws), against nnU-Net's own fingerprint of the same cases
(``crop_to_nonzero`` and ``collect_foreground_intensities``, as its
``DatasetFingerprintExtractor.analyze_case`` runs them, one process).

    python benchmarks/train_normalization.py [--cases 4] [--planes 200]

Synthetic int16 CTs of ``planes`` x 512^2 (air at -1000: the box is the whole scan, as a
CT's), a liver-sized ellipsoid of labels (~3% of the voxels), held in memory. Prints the
wall times and the statistics both give (they agree to float rounding).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from raysegment.data.sources import MemorySource
from raysegment.train.normalization import FOREGROUND_SAMPLES, nnunet_normalization


def _ct(planes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:planes, :512, :512]
    body = ((y - 256) / 200) ** 2 + ((x - 256) / 230) ** 2 < 1
    liver = ((z - planes / 2) / (planes / 4)) ** 2 + ((y - 230) / 80) ** 2 + (
        (x - 180) / 90
    ) ** 2 < 1
    image = np.full((planes, 512, 512), -1000, np.int16)
    image[np.broadcast_to(body, image.shape)] = 40
    image += rng.integers(-30, 30, image.shape, dtype=np.int16)
    image[liver] += 60
    return image, liver.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--planes", type=int, default=200)
    args = parser.parse_args()
    cases = [_ct(args.planes, k) for k in range(args.cases)]
    images = [MemorySource(c[None, None], f"ct{k}", f"ct{k}") for k, (c, _) in enumerate(cases)]
    labels = [MemorySource(lb[None, None], f"l{k}", f"l{k}") for k, (_, lb) in enumerate(cases)]
    voxels = sum(c.size for c, _ in cases)
    marked = sum(int(lb.sum()) for _, lb in cases)
    print(
        f"{args.cases} CTs of {args.planes} x 512^2 int16 ({voxels / 1e6:.0f} M voxels, "
        f"{marked / 1e6:.1f} M labelled); {FOREGROUND_SAMPLES:.0e} draws"
    )
    start = time.perf_counter()
    ours = nnunet_normalization({"channel_names": {"0": "CT"}}, images, labels, (0,), True)
    took = time.perf_counter() - start
    entry = ours.meta["normalize"]
    (mean,), (std,) = entry["mean"], entry["std"]
    low, high = (v * std + mean for v in entry["clip"])
    print(
        f"raysegment: {took:.1f} s ({took / args.cases:.2f} s a case): mean {mean}, std {std}, "
        f"percentiles {low} {high}"
    )
    try:
        from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
            DatasetFingerprintExtractor,
        )
        from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    except ImportError:
        print("nnU-Net's fingerprint: not run (pip install nnunetv2)")
        return
    start = time.perf_counter()
    drawn = []
    for image, label in cases:
        data, seg, _ = crop_to_nonzero(image[None].astype(np.float32), label[None].astype(np.int8))
        share = int(FOREGROUND_SAMPLES // args.cases)
        collect = DatasetFingerprintExtractor.collect_foreground_intensities
        got = collect(seg, data, num_samples=share)
        drawn.append(got[0][0])
    values = np.concatenate(drawn)
    mean, std = float(values.mean()), float(values.std())
    low, high = np.percentile(values, (0.5, 99.5))
    took = time.perf_counter() - start
    print(
        f"nnU-Net's fingerprint: {took:.1f} s ({took / args.cases:.2f} s a case): mean {mean}, "
        f"std {std}, percentiles {float(low)} {float(high)}"
    )


if __name__ == "__main__":
    main()
