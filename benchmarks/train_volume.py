"""3D training: what the data pipeline costs against the network's own steps, and the
model it gives on a volume it never saw.

    python benchmarks/train_volume.py [--size 64] [--features 16] [--depth 16]
        [--augment true|nnunet] [--loss DiceLoss|DiceCELoss]

Eight synthetic volumes (``--depth`` x 2 planes of ``--size`` x 2 pixels each, bright
balls in noise, 2 x 0.5^2 µm voxels: nnU-Net's planner halves y and x first) train
``raysegment train model.arch=PlainConvUNet`` on one worker (the GPU where there is one)
with (``--depth``, ``--size``, ``--size``) patches, 8 a step, 64 an epoch and 16
validating, until early stopping (``patience=2``) or 20 epochs, in a fresh process (Ray's
start included). Against it, an epoch's model work alone: the same network, loss and
optimizer (``train_step``) on one batch of patches held in memory, as many steps as an
epoch and as many forward passes as its validation, timed after a warm-up step: the
ceiling of patches a second. Then ``raysegment infer`` of a larger volume (4 x the depth,
6 x the size a side) with the trained model: its time and the mask's IoU against the
truth. Also the time the steps waited for their patches and the steps' own time
(``metrics.csv``'s ``wait_seconds``, ``step_seconds``: the steps' patches a second in the
run against those alone), with ``--augment`` (the training's ``augment``) and ``--loss``
(its ``loss``: the default's, or nnU-Net's). Writes ``train_volume.json`` into --out.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, infer_cli, machine, train_cli, write_result  # noqa: E402

from raysegment.compute import memory_format  # noqa: E402
from raysegment.runtime import TORCH_WORKER_ENV  # noqa: E402
from raysegment.train.components import (  # noqa: E402
    OPTIMIZERS,
    DeepSupervision,
    build_model,
    make_loss,
    supervise,
)
from raysegment.train.loop import forward, place, train_step  # noqa: E402

VOXEL = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
PATCHES, BATCH, VALIDATION = 64, 8, 16


def spheres(
    shape: tuple[int, ...], rng: np.random.Generator, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bright balls (radius 3-8 pixels along y and x, a quarter of that along z, whose
    voxels are 4x as long) on a noisy background, and their mask."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, bool)
    for _ in range(count):
        c, r = [rng.integers(0, s) for s in shape], float(rng.integers(3, 9))
        mask |= (4 * (zz - c[0])) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    image = rng.normal(100, 20, shape) + mask * 300
    return image.astype(np.uint16), mask.astype(np.uint8)


def steps_alone(
    patch: tuple[int, ...], features: int, device: torch.device, loss: str
) -> tuple[float, float]:
    """Patches a second of an epoch's model work alone, on one batch held in memory: its
    training steps (deep supervision, as the training's default) and its validation
    patches' forward passes; and of its training steps alone."""
    spacing = (2.0, 0.5, 0.5)
    model = build_model("PlainConvUNet", "", 1, 1, patch=patch, features=features, spacing=spacing)
    layout = place(model, (1, *patch), device, "auto", "float32")
    memory = memory_format(layout, len(patch))
    optimizer = OPTIMIZERS.get("Adam")(model.train().parameters(), 0.01)
    loss_fn = DeepSupervision(make_loss(loss, "binary"))  # deep supervision: the default
    x = torch.randn(BATCH, 1, *patch, device=device).contiguous(memory_format=memory)
    y = (x > 1).float()
    supervise(model, True)
    train_step(model, optimizer, loss_fn, x, y, "float32", None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(PATCHES // BATCH):
        train_step(model, optimizer, loss_fn, x, y, "float32", None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    stepped = time.perf_counter() - start
    model.eval()
    supervise(model, False)
    with torch.no_grad():
        for _ in range(VALIDATION // BATCH):
            loss_fn(forward(model, x, "float32"), y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return PATCHES / (time.perf_counter() - start), PATCHES / stepped


def main() -> None:
    if any(os.environ.get(k) != v for k, v in TORCH_WORKER_ENV.items()):
        # The steps alone run here with the allocator settings raysegment's training
        # workers get (glibc reads them at process start), as run.py's model-only loop.
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | TORCH_WORKER_ENV)
    args = bench_args(
        __doc__ or "",
        size=64,
        choices={"augment": ("true", "nnunet"), "loss": ("DiceLoss", "DiceCELoss")},
        features=16,
        depth=16,
    )
    size, depth, features = int(args.size), int(args.depth), int(args.features)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = args.work / "train_volume"
    rng = np.random.default_rng(0)
    for d in ("img", "lbl"):
        (work / d).mkdir(parents=True, exist_ok=True)
    for i in range(8):
        image, mask = spheres((2 * depth, 2 * size, 2 * size), rng, 12)
        tifffile.imwrite(work / "img" / f"v{i}.ome.tif", image, ome=True, metadata=VOXEL)
        tifffile.imwrite(work / "lbl" / f"v{i}.tif", mask)
    image, mask = spheres((4 * depth, 6 * size, 6 * size), rng, 12 * 9 * 2)
    tifffile.imwrite(work / "big.ome.tif", image, ome=True, metadata=VOXEL)
    patch = (depth, size, size)
    wall, history = train_cli(
        work / "img",
        work / "lbl",
        work / "model",
        "model.arch=PlainConvUNet",
        f"model.features={features}",
        f"patch_size=[{depth},{size},{size}]",
        f"patches_per_epoch={PATCHES}",
        f"val_patches={VALIDATION}",
        f"batch_size={BATCH}",
        "lr=0.01",
        "max_epochs=20",
        "patience=2",
        "min_delta=0.002",
        f"augment={args.augment}",
        f"loss={args.loss}",
        "device=gpu" if device.type == "cuda" else "device=cpu",
    )
    epochs = len(history)
    seconds = sum(float(h["seconds"]) for h in history)
    waited = sum(float(h["wait_seconds"]) for h in history)
    stepped = sum(float(h["step_seconds"]) for h in history)
    piped = epochs * PATCHES / seconds
    alone, steps = steps_alone(patch, features, device, args.loss)
    run = infer_cli(
        work / "big.ome.tif",
        work / "model",
        work / "out",
        "finalize.mode=mask",
        f"tile.size=[{depth},{size},{size}]",  # the model's own (run.py's are 2D)
    )
    pred = zarr.open_array(str(work / "out" / "big.ome.zarr" / "0"), mode="r")[0] > 0
    truth = mask > 0
    result: dict[str, Any] = {
        "machine": machine(),
        "patch": list(patch),
        "features": features,
        "epochs": epochs,
        "train_wall_seconds": wall,
        "epoch_seconds": seconds,
        "augment": args.augment,
        "loss": args.loss,
        "wait_seconds": waited,
        "wait_share": waited / seconds,
        "step_seconds": stepped,
        "steps_in_run_patches_per_second": epochs * PATCHES / stepped,
        "steps_alone_steps_patches_per_second": steps,
        "patches_per_second_per_worker": piped,
        "steps_alone_patches_per_second": alone,
        "pipeline_efficiency": piped / alone,
        "validation_iou": float(history[-1]["iou"]),
        "infer_seconds": run["seconds"],
        "infer_shape": list(image.shape),
        "infer_iou": float((pred & truth).sum() / (pred | truth).sum()),
    }
    write_result(args.out, "train_volume.json", result)


if __name__ == "__main__":
    main()
