"""CZI against OME-TIFF: region reads and a whole run, on the same pixels.

    python benchmarks/czi.py [--size 16384] [--rounds 2]

Writes a ``size``^2 uint16 image (seeded: 16-pixel patches of 0-3000 plus noise of 0-200)
as a zlib-tiled OME-TIFF (512^2 tiles, as ``run.py``'s slides) and as a CZI the way ZEN
stores a mosaic (zstd, 2048^2 subblocks), then alternates, ``--rounds`` times: eight
4608^2 region reads of each (``region_read.py``'s: CPU and wall ms per region and a
checksum) and ``raysegment infer`` of each with a small network (two convolutions, masks
out), whose outputs must be equal at every pixel. Writes ``czi.json`` into --out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, infer_cli, machine, write_result  # noqa: E402


def image(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = (rng.random((size // 16, size // 16)) * 3000).astype(np.uint16)
    noise = rng.integers(0, 200, (size, size), dtype=np.uint16)
    return np.repeat(np.repeat(base, 16, 0), 16, 1) + noise


def write_both(work: Path, size: int) -> tuple[Path, Path]:
    from pylibCZIrw import czi as pyczi

    tif, czi = work / f"same{size}.ome.tif", work / f"same{size}.czi"
    if not (tif.exists() and czi.exists()):
        pixels = image(size)
        meta = {"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
        tifffile.imwrite(
            tif, pixels, ome=True, tile=(512, 512), compression="zlib", bigtiff=True, metadata=meta
        )
        zstd = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"
        with pyczi.create_czi(str(czi), exist_ok=True, compression_options=zstd) as out:
            for y in range(0, size, 2048):
                for x in range(0, size, 2048):
                    block = np.ascontiguousarray(pixels[y : y + 2048, x : x + 2048, None])
                    out.write(block, plane={"C": 0}, location=(x, y))
            out.write_metadata(scale_x=0.25e-6, scale_y=0.25e-6)
    return tif, czi


def small(path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1)
    ).eval()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 64, 64)), str(path))
    return path


def region_reads(path: Path) -> str:
    script = Path(__file__).resolve().parent / "region_read.py"
    done = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def main() -> int:
    args = bench_args(__doc__ or "", size=16384, rounds=2)
    files = dict(zip(("ome-tiff", "czi"), write_both(args.work, args.size), strict=True))
    model = small(args.work / "small2d.pth")
    reads: dict[str, list[str]] = {name: [] for name in files}
    seconds: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(args.rounds):
        for name, path in files.items():
            reads[name].append(region_reads(path))
            out = args.work / f"czi_{name}"
            seconds[name].append(infer_cli(path, model, out, "finalize.mode=mask")["seconds"])
    outputs = [
        zarr.open_array(str(args.work / f"czi_{name}" / f"same{args.size}.ome.zarr" / "0"))[:]
        for name in files
    ]
    result = {
        "machine": machine(),
        "size": args.size,
        "region_reads": reads,
        "seconds": seconds,
        "outputs_equal": bool(np.array_equal(*outputs)),
    }
    write_result(args.out, "czi.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
