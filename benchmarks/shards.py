"""What ``shards=true`` changes on a volume: files written and wall time.

    python benchmarks/shards.py [--size 512]

A ``size``^3 uint16 zarr volume (random, 128^3 chunks) segmented by a small 3D network
(two 3x3x3 convolutions) with the default 3D chunks (128^3) and blocks (256^3), into
probabilities, without and with shards, alternating (``--rounds`` pairs). Prints the
files of each output's full-resolution array and each run's seconds; writes
``shards.json`` into --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, infer_cli, machine, write_result  # noqa: E402


def small_3d(path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 1, 3, padding=1)
    ).eval()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16)), str(path))
    return path


def volume(path: Path, size: int) -> Path:
    if not path.exists():
        array = zarr.create_array(
            str(path), shape=(size,) * 3, chunks=(128,) * 3, dtype="uint16", fill_value=0
        )
        rng = np.random.default_rng(0)
        for z in range(0, size, 128):
            array[z : z + 128] = rng.integers(0, 1000, (min(128, size - z), size, size), "uint16")
    return path


def main() -> int:
    args = bench_args(__doc__ or "", size=512)
    source = volume(args.work / f"vol{args.size}.zarr", args.size)
    model = small_3d(args.work / "small3d.pth")
    runs: dict[str, list[float]] = {"chunks": [], "shards": []}
    files: dict[str, int] = {}
    for _ in range(args.rounds):
        for name in runs:
            out = args.work / f"s_{name}"
            keys = ["device=cpu", "tile.size=64", f"shards={name == 'shards'}"]
            runs[name].append(infer_cli(source, model, out, *keys)["seconds"])
            array = out / f"vol{args.size}.ome.zarr" / "0" / "c"
            files[name] = sum(1 for p in array.rglob("*") if p.is_file())
    result = {
        "machine": machine(),
        "size": args.size,
        "files": files,
        "seconds": runs,
    }
    write_result(args.out, "shards.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
