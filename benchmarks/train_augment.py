"""Training augmentations: what each scheme costs a patch, and what nnU-Net's buys on
images unlike the training's.

    python benchmarks/train_augment.py [--size 128] [--rounds 3]

Cost: ``read_patches`` of 64 random patches from OME-TIFFs on disk (the Ray Data task's
work, in this process), ``augment=false``, ``true`` and ``nnunet``: 2D patches of --size x 2
from 2048^2 images, 3D patches of (--size / 4, --size, --size) from volumes of 4 x that;
best of --rounds, in milliseconds a patch.

Effect: ``raysegment train`` (SMP Unet resnet18, --size patches, 8 a step, 128 an epoch,
up to 30 epochs, early stopping on the training images' own kind) on four 512^2 images of
bright discs, once with ``augment=true`` and once with ``augment=nnunet``; then
``raysegment infer`` of images the training never met: the same kind (``same``); other
acquisitions: dimmer, of lower contrast and blurred (``dim``), fainter still (``faint``:
150 over 150 where training had 900 over 100), brighter on a bright background
(``bright``), five times as noisy (``noisy``); discs 1.6 x as large (``large``) and half
as large (``small``). The masks' IoU against the truth. Writes ``train_augment.json`` into --out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, infer_cli, machine, train_cli, write_result  # noqa: E402

from raysegment.config import TrainConfig, load_config  # noqa: E402
from raysegment.train.data import prepare, read_patches  # noqa: E402

SCHEMES: tuple[bool | str, ...] = (False, True, "nnunet")


def discs(
    shape: tuple[int, ...], rng: np.random.Generator, count: int, radius: tuple[float, float]
) -> np.ndarray:
    """A mask of ``count`` discs (balls in 3D) of radii in ``radius``."""
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    mask = np.zeros(shape, bool)
    for _ in range(count):
        r = rng.uniform(*radius)
        centre = [rng.uniform(0, s) for s in shape]
        mask |= sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= r * r
    return mask


def acquired(
    mask: np.ndarray,
    rng: np.random.Generator,
    fg: float = 1000,
    bg: float = 100,
    noise: float = 30,
    blur: float = 0,
) -> np.ndarray:
    """The mask imaged: ``fg`` over ``bg``, blurred by ``blur`` pixels, in noise."""
    image = np.where(mask, fg, bg).astype(np.float32)
    if blur:
        image = ndimage.gaussian_filter(image, blur)
    return np.clip(image + rng.normal(0, noise, mask.shape), 0, 65535).astype(np.uint16)


def cost(work: Path, size: int, rounds: int) -> dict[str, Any]:
    """Milliseconds a patch of ``read_patches`` under each scheme, 2D and 3D."""
    rng = np.random.default_rng(1)
    result: dict[str, Any] = {}
    for name, shape, patch in (
        ("2d", (2048, 2048), [2 * size, 2 * size]),
        ("3d", (size, 4 * size, 4 * size), [size // 4, size, size]),
    ):
        root = work / f"cost_{name}"
        for d in ("img", "lbl"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            mask = discs(shape, rng, 200 if name == "2d" else 60, (6, 14))
            axes = {"axes": "YX" if name == "2d" else "ZYX"}
            image, labels = acquired(mask, rng), mask.astype(np.uint8)
            tifffile.imwrite(root / "img" / f"a{i}.ome.tif", image, tile=(256, 256), metadata=axes)
            tifffile.imwrite(root / "lbl" / f"a{i}.tif", labels, tile=(256, 256), metadata=axes)
        cfg = load_config(
            TrainConfig,
            (),
            [
                f"images.dir={root / 'img'}",
                f"labels.dir={root / 'lbl'}",
                f"output={root / 'out'}",
                f"patch_size={patch}",
                "train_fraction=0.5",
            ],
        )
        data = prepare(cfg)
        specs = data.train_specs(64, seed=0)
        batch = {k: np.array([s[k] for s in specs]) for k in specs[0]}
        times = {}
        for scheme in SCHEMES:
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                read_patches(batch, data, augment=scheme)
                best = min(best, time.perf_counter() - start)
            times[str(scheme).lower()] = 1000 * best / len(specs)
        result[name] = {"patch": patch, "ms_per_patch": times}
        print(f"   {name} patch {patch}: {times}", flush=True)
    return result


def effect(work: Path, size: int) -> dict[str, Any]:
    """Masks' IoU on unseen kinds of image, trained with each scheme."""
    rng = np.random.default_rng(2)
    root = work / "effect"
    for d in ("img", "lbl"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        mask = discs((512, 512), rng, 60, (5, 10))
        tifffile.imwrite(root / "img" / f"t{i}.tif", acquired(mask, rng))
        tifffile.imwrite(root / "lbl" / f"t{i}.tif", mask.astype(np.uint8))
    kinds = {
        "same": ((5, 10), 160, {}),
        "dim": ((5, 10), 160, {"fg": 520, "bg": 160, "blur": 1.5}),
        "faint": ((5, 10), 160, {"fg": 300, "bg": 150}),
        "bright": ((5, 10), 160, {"fg": 1300, "bg": 600}),
        "noisy": ((5, 10), 160, {"noise": 150}),
        "large": ((8, 16), 160, {}),
        "small": ((3, 5), 300, {}),
    }
    truths = {}
    for kind, (radius, count, look) in kinds.items():
        (root / "test").mkdir(parents=True, exist_ok=True)
        mask = discs((1024, 1024), rng, count, radius)
        tifffile.imwrite(root / "test" / f"{kind}.tif", acquired(mask, rng, **look))
        truths[kind] = mask
    result: dict[str, Any] = {}
    for scheme in ("true", "nnunet"):
        model = root / f"model_{scheme}"
        wall, history = train_cli(
            root / "img",
            root / "lbl",
            model,
            f"augment={scheme}",
            f"patch_size=[{size}]",
            "patches_per_epoch=128",
            "val_patches=32",
            "batch_size=8",
            "max_epochs=30",
            "patience=4",
            "device=cpu",
        )
        ious = {}
        out = root / f"out_{scheme}"
        infer_cli(root / "test", model, out, "finalize.mode=mask")  # every kind's image
        for kind in kinds:
            pred = zarr.open_array(str(out / f"{kind}.ome.zarr" / "0"), mode="r")[0] > 0
            truth = truths[kind]
            ious[kind] = float((pred & truth).sum() / (pred | truth).sum())
        result[scheme] = {
            "epochs": len(history),
            "train_wall_seconds": wall,
            "last_validation_iou": float(history[-1]["iou"]),
            "iou": ious,
        }
        print(f"   augment={scheme}: {result[scheme]}", flush=True)
    return result


def main() -> None:
    args = bench_args(__doc__ or "", size=128, rounds=3)
    work = args.work / "train_augment"
    result = {
        "machine": machine(),
        "cost": cost(work, int(args.size), int(args.rounds)),
        "effect": effect(work, int(args.size)),
    }
    write_result(args.out, "train_augment.json", result)


if __name__ == "__main__":
    main()
