"""3D volumes: `raysegment infer` on a zarr volume with a 3D U-Net against the model-only
loop over the same tiles and MONAI's ``sliding_window_inference`` on the volume in RAM.

    python benchmarks/volume.py [--size 512] [--tile 128] [--rounds 1] [--block 256]

A ``size``^3 uint16 zarr volume (bright blobs on noise, 128^3 chunks) and MONAI's 3D
``UNet`` (channels 16-256, two residual units a level: a connectomics / CT network's
shape; random weights), traced to TorchScript. Paired in each round: the command (Ray
start-up included, OME-Zarr mask out, one predictor on every core, the tile's overlap
0.25, gaussian blending), the plain loop of forward passes over the same tiles on every
core (the issue's model-only ceiling) and with a tile per core at once (as a CPU predictor
runs them), and MONAI (gaussian, the model as saved); with ``--block``, the command again
with blocks of that size (e.g. 256: the 3D default before blocks held 4 tiles a side).
Writes ``volume.json`` into --out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    DEVICE,
    bench_args,
    infer_cli,
    machine,
    model_only,
    monai_sliding_window,
    write_result,
)

from raysegment.runtime import TORCH_WORKER_ENV  # noqa: E402


def unet3d(path: Path) -> Path:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2).eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(1, 1, 64, 64, 64))
    torch.jit.save(traced, str(path))
    return path


def volume(path: Path, size: int) -> Path:
    """Blobs (bright gaussian spheres, one per 32^3 on average) on noise, slab by slab."""
    if path.exists():
        return path
    array = zarr.create_array(
        str(path), shape=(size,) * 3, chunks=(128,) * 3, dtype="uint16", fill_value=0
    )
    rng = np.random.default_rng(0)
    r = 12
    axis = np.arange(-r, r + 1, dtype=np.float32)
    d2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    blob = 800 * np.exp(-d2 / (2 * 4.0**2))
    centres = rng.integers(0, size, (max(8, size**3 // 32**3), 3))
    for z0 in range(0, size, 128):
        z1 = min(size, z0 + 128)
        slab = np.pad(rng.normal(200, 30, (z1 - z0, size, size)).astype(np.float32), r)
        for cz, cy, cx in centres[np.abs(centres[:, 0] - (z0 + z1) / 2) <= (z1 - z0) / 2 + r]:
            a, b = cz - z0, cz - z0 + 2 * r + 1  # the blob's planes in the padded slab
            lo, hi = max(a, 0), min(b, slab.shape[0])
            slab[lo:hi, cy : cy + 2 * r + 1, cx : cx + 2 * r + 1] += blob[lo - a : hi - a]
        inner = slab[r:-r, r:-r, r:-r]
        array[z0:z1] = np.clip(inner, 0, 65535).astype(np.uint16)
    return path


def main() -> int:
    if any(os.environ.get(k) != v for k, v in TORCH_WORKER_ENV.items()):
        # The loops run with the allocator settings raysegment's predictors get (run.py).
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | TORCH_WORKER_ENV)
    args = bench_args(__doc__ or "", size=512, tile=128.0, block=0.0)
    tile = int(args.tile)
    source = volume(args.work / f"blobs{args.size}.zarr", args.size)
    model = unet3d(args.work / "unet3d.pth")
    image = np.asarray(zarr.open_array(str(source), mode="r")[:])
    cores = os.cpu_count() or 1
    # The command on the device the loops run on (run.py's DEVICE: the GPU where there is one).
    device = "device=gpu" if DEVICE.type == "cuda" else "device=cpu"
    keys = [device, "actors=1", f"threads={cores}", "batch_size=1", "finalize.mode=mask"]
    runs: dict[str, list[float]] = {"e2e": [], "model_only": [], "streams": [], "monai": []}
    if args.block:
        runs["e2e_block"] = []
    layout, summaries = "channels_first", {}
    for _ in range(args.rounds):
        e2e = infer_cli(source, model, args.work / "v_out", f"tile.size={tile}", *keys)
        layout, summaries["e2e"] = e2e["layout"], e2e["summary"]
        runs["e2e"].append(e2e["seconds"])
        if args.block:
            block = f"block=[{int(args.block)}]"
            other = infer_cli(source, model, args.work / "v_out", f"tile.size={tile}", *keys, block)
            runs["e2e_block"].append(other["seconds"])
            summaries["e2e_block"] = other["summary"]
        # One tile a forward, as the command's CPU predictor (batch_size=1).
        one = {"tile": tile, "batch": 1}
        runs["model_only"].append(model_only(model, image, cores, layout, **one))
        runs["streams"].append(model_only(model, image, cores, layout, cores, **one))
        runs["monai"].append(monai_sliding_window(model, image, cores, "channels_first", **one))
        print({k: round(v[-1], 2) for k, v in runs.items()}, flush=True)
    best = {k: min(v) for k, v in runs.items()}
    result = {
        "machine": machine(),
        "size": args.size,
        "tile": tile,
        "layout": layout,
        "block": int(args.block) or None,
        "summaries": summaries,
        "seconds": runs,
        "efficiency": best["model_only"] / best["e2e"],
        "efficiency_streams": best["streams"] / best["e2e"],
        "ours_over_monai": best["monai"] / best["e2e"],
    }
    if args.block:
        result["default_over_block"] = best["e2e_block"] / best["e2e"]
    write_result(args.out, "volume.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
