"""Training from sparse annotations: what is not annotated as unlabelled, against as background.

    python benchmarks/sparse_labels.py [--size 512] [--epochs 15] [--work DIR] [--out DIR]

Writes four ``size``^2 uint16 images of bright discs on noise, and a fifth held out, with
QuPath-style GeoJSON annotations of the four as a pathologist leaves them: a quarter of
an image's discs outlined as ``Tumor`` in a rim of ``Stroma``, three disc-free squares as
``Stroma``, the rest not annotated. Trains ``raysegment train`` (binary,
``class_names=[Tumor]``: Tumor polygons 1, Stroma 0) with the same settings but
``unannotated=background`` (the discs nobody outlined taught as background) and
``unannotated=ignore`` (only what the polygons cover trains and validates), each with
``LOSSES``, then segments the held-out image with each model and measures the IoU,
recall and precision against all its discs. Writes ``sparse_labels.json`` into --out.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, infer_cli, machine, train_cli, write_result  # noqa: E402

IMAGES = 4
DISCS = 40
OUTLINED = 0.25
"""Share of an image's discs outlined as Tumor."""
LOSSES = ("DiceLoss", "SoftBCEWithLogitsLoss")
"""Trained with each: a region loss and a per-pixel one."""
RIM = 8
"""Width of the Stroma annotated about each disc outlined."""


def _discs(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float, float]]]:
    """An image of ``DISCS`` bright discs on noise, its truth, and the discs (y, x, r)."""
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), bool)
    discs = []
    for _ in range(DISCS):
        cy, cx, r = rng.uniform(16, size - 16), rng.uniform(16, size - 16), rng.uniform(6, 14)
        truth |= (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
        discs.append((cy, cx, r))
    image = rng.normal(100, 20, truth.shape) + truth * 400
    return image.clip(0, 65535).astype(np.uint16), truth, discs


def _feature(name: str, rings: list[list[list[float]]]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]] for ring in rings]},
        "properties": {"objectType": "annotation", "classification": {"name": name}},
    }


def _circle(cy: float, cx: float, r: float) -> list[list[float]]:
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    return [[cx + r * np.cos(a), cy + r * np.sin(a)] for a in angles]


def _annotations(
    rng: np.random.Generator, truth: np.ndarray, discs: list[tuple[float, float, float]]
) -> dict[str, Any]:
    """A quarter of the discs outlined as Tumor (32-point rings), each in a ``RIM``-wide
    ring of Stroma (a polygon with the disc as its hole), as an annotator outlines a
    tumour and the tissue about it; the discs outlined are among those with no other disc
    within their rim. Three 40^2 squares of the disc-free background as Stroma too."""
    centres = np.array([d[:2] for d in discs])
    radii = np.array([d[2] for d in discs])
    apart = [
        i
        for i, (c, r) in enumerate(zip(centres, radii, strict=True))
        if all(
            np.hypot(*(c - centres[j])) > r + RIM + radii[j] for j in range(len(discs)) if j != i
        )
    ]
    outlined = rng.choice(apart, min(len(apart), round(OUTLINED * len(discs))), replace=False)
    features = []
    for i in sorted(outlined):
        cy, cx, r = discs[i]
        features.append(_feature("Tumor", [_circle(cy, cx, r)]))
        features.append(_feature("Stroma", [_circle(cy, cx, r + RIM), _circle(cy, cx, r)]))
    squares = 0
    while squares < 3:
        y, x = rng.integers(0, truth.shape[0] - 40, 2)
        if not truth[y : y + 40, x : x + 40].any():
            corners = [[x, y], [x + 40, y], [x + 40, y + 40], [x, y + 40]]
            features.append(_feature("Stroma", [[[float(a), float(b)] for a, b in corners]]))
            squares += 1
    return {"type": "FeatureCollection", "features": features}


def _train(work: Path, unannotated: str, epochs: int, loss: str) -> dict[str, Any]:
    output = work / f"model_{loss}_{unannotated}"
    keys = [
        "class_names=[Tumor]",
        f"unannotated={unannotated}",
        f"loss={loss}",
        "patch_size=[64]",
        "patches_per_epoch=64",
        "val_patches=16",
        "batch_size=8",
        f"max_epochs={epochs}",
        "patience=5",
        "device=cpu",
    ]
    wall, history = train_cli(work / "img", work / "lbl", output, *keys)
    best = min(history, key=lambda h: float(h["val_loss"]))
    return {
        "keys": keys,
        "wall_seconds": wall,
        "epochs": len(history),
        "best_epoch": int(best["epoch"]),
        "val_iou_at_best": float(best["iou"]),
        "model": output,
    }


def main() -> int:
    args = bench_args(__doc__, 512, epochs=15)
    work, size, epochs = args.work / "sparse_labels", args.size, int(args.epochs)
    rng = np.random.default_rng(0)
    for d in ("img", "lbl"):
        (work / d).mkdir(parents=True, exist_ok=True)
    outlined = 0
    for i in range(IMAGES):
        image, truth, discs = _discs(rng, size)
        tifffile.imwrite(work / "img" / f"im{i}.tif", image)
        document = _annotations(rng, truth, discs)
        outlined += sum(
            f["properties"]["classification"]["name"] == "Tumor" for f in document["features"]
        )
        (work / "lbl" / f"im{i}.geojson").write_text(json.dumps(document))
    held, truth, _ = _discs(rng, size)
    tifffile.imwrite(work / "test.tif", held)
    runs: dict[str, dict[str, Any]] = {}
    for loss, unannotated in itertools.product(LOSSES, ("background", "ignore")):
        print(f"train, loss={loss} unannotated={unannotated}", flush=True)
        run = _train(work, unannotated, epochs, loss)
        out = work / f"out_{loss}_{unannotated}"
        infer_cli(work / "test.tif", run.pop("model"), out, "finalize.mode=mask", "device=cpu")
        mask = zarr.open_array(str(out / "test.ome.zarr" / "0"), mode="r")
        said = np.squeeze(np.asarray(mask)) > 0
        run["test_iou"] = float((said & truth).sum() / max((said | truth).sum(), 1))
        run["test_recall"] = float((said & truth).sum() / truth.sum())
        run["test_precision"] = float((said & truth).sum() / max(said.sum(), 1))
        runs[f"{loss} {unannotated}"] = run
        print(f"    held-out IoU {run['test_iou']:.3f}", flush=True)
    result = {
        "machine": machine(),
        "images": f"{IMAGES} of {size}^2 uint16, {DISCS} discs each, {outlined} outlined",
        "runs": runs,
    }
    write_result(args.out, "sparse_labels.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
