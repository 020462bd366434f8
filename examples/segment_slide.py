"""End-to-end example: a synthetic fluorescence slide segmented with a TorchScript model.

Makes everything it needs in examples/data/ (nothing is downloaded):
  * slide.ome.tif: an N x N uint16 tiled OME-TIFF (default 8192 x 8192, 0.325 µm pixels)
    of bright nuclei on a noisy background, written strip by strip (never whole in memory
    when it is large) with its ground-truth mask kept alongside;
  * nuclei_model/model.pth: a TorchScript network (gaussian smoothing and a logistic
    read-out, weights set by hand) with raysegment.json naming its class;
then runs `raysegment infer` on it with local Ray and reports the IoU against the truth.

    python examples/segment_slide.py [--size 8192] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

HERE = Path(__file__).resolve().parent
STRIP = 512
"""Rows generated at a time; also the OME-TIFF tile size."""
PIXEL_UM = 0.325


def make_slide(path: Path, truth_path: Path, size: int, seed: int = 0) -> None:
    """Nuclei (discs of radius 6-14 px) at ~1 per 40x40 px, background 200 +- 30 counts."""
    rng = np.random.default_rng(seed)
    count = size * size // 1600
    centres = rng.integers(0, size, (count, 2))
    radii = rng.integers(6, 15, count)
    brightness = rng.integers(900, 2500, count)
    truth = zarr.create_array(
        str(truth_path), shape=(size, size), chunks=(STRIP, STRIP), dtype="uint8", overwrite=True
    )

    def strips():
        for y0 in range(0, size, STRIP):
            y1 = min(y0 + STRIP, size)
            img = rng.normal(200, 30, (y1 - y0, size)).astype(np.float32)
            mask = np.zeros((y1 - y0, size), np.uint8)
            near = np.abs(centres[:, 0] - (y0 + y1) / 2) < (y1 - y0) / 2 + 15
            for (cy, cx), r, b in zip(centres[near], radii[near], brightness[near], strict=False):
                ya, yb = max(cy - r, y0), min(cy + r + 1, y1)
                xa, xb = max(cx - r, 0), min(cx + r + 1, size)
                if ya >= yb or xa >= xb:
                    continue
                yy, xx = np.ogrid[ya:yb, xa:xb]
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                img[ya - y0 : yb - y0, xa:xb][disc] += b
                mask[ya - y0 : yb - y0, xa:xb] |= disc
            truth[y0:y1] = mask
            strip = np.clip(img, 0, 65535).astype(np.uint16)
            for x0 in range(0, size, STRIP):  # tifffile takes a tiled image tile by tile
                yield strip[:, x0 : x0 + STRIP]

    # Written beside, then renamed: a run stopped mid-write leaves no half slide at
    # ``path`` for a later run (benchmarks/run.py reuses slides) to take as whole.
    part = path.with_name(f".{path.name}.part")
    try:
        tifffile.imwrite(
            part,
            strips(),
            shape=(size, size),
            dtype=np.uint16,
            tile=(STRIP, STRIP),
            compression="zlib",
            ome=True,
            metadata={
                "axes": "YX",
                "PhysicalSizeX": PIXEL_UM,
                "PhysicalSizeY": PIXEL_UM,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeYUnit": "µm",
            },
        )
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(path)


class NucleiNet(torch.nn.Module):
    """Gaussian smoothing then a logistic read-out (logit = (smoothed - 500) / 60)."""

    def __init__(self) -> None:
        super().__init__()
        x = torch.arange(5, dtype=torch.float32) - 2
        g = torch.exp(-0.5 * x**2)
        kernel = torch.outer(g, g)
        self.smooth = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False)
        self.readout = torch.nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.smooth.weight.copy_((kernel / kernel.sum())[None, None])
            self.readout.weight.fill_(1 / 60.0)
            self.readout.bias.fill_(-500 / 60.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.smooth(x))


def make_model(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    traced = torch.jit.trace(NucleiNet().eval(), torch.zeros(1, 1, 64, 64))
    torch.jit.save(traced, str(directory / "model.pth"))
    (directory / "raysegment.json").write_text(
        json.dumps({"in_channels": 1, "spatial_dims": 2, "classes": ["nuclei"]})
    )


def iou(result: Path, truth: Path) -> float:
    pred = zarr.open_array(str(result / "0"), mode="r")
    gt = zarr.open_array(str(truth), mode="r")
    inter = union = 0
    for y0 in range(0, gt.shape[0], STRIP):
        p = pred[0, y0 : y0 + STRIP] > 0
        g = gt[y0 : y0 + STRIP] > 0
        inter += int(np.count_nonzero(p & g))
        union += int(np.count_nonzero(p | g))
    return inter / max(union, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="slide side in pixels")
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu | all | 0,1")
    parser.add_argument("--workdir", type=Path, default=HERE)
    args = parser.parse_args()

    data, out = args.workdir / "data", args.workdir / "out"
    slide, truth = data / "slide.ome.tif", data / "slide_truth.zarr"
    data.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    make_slide(slide, truth, args.size)
    make_model(data / "nuclei_model")
    print(
        f"made a {args.size} x {args.size} slide and a TorchScript model in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )

    command = [
        sys.executable,
        "-m",
        "raysegment.cli",
        "infer",
        f"input={slide}",
        f"model={data / 'nuclei_model'}",
        f"output={out}",
        f"device={args.device}",
        "finalize.mode=mask",
        "tile.size=512",
        "overwrite=true",
    ]
    print("$ raysegment " + " ".join(command[3:]), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        return result.returncode
    score = iou(out / "slide.ome.zarr", truth)
    print(f"IoU against the ground-truth nuclei: {score:.3f}")
    return 0 if score > 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
