"""The same network as TorchScript and as ONNX (ONNX Runtime), end to end.

    python benchmarks/onnx_models.py OUT [--side 2048] [--runs 2]

Writes an SMP Unet (resnet18, random weights, one input and one output channel) as
TorchScript (``OUT/unet.pt``, traced as ``run.py`` traces it) and as ONNX
(``OUT/unet.onnx``, torch's ONNX export with dynamic batch and spatial sizes), and a
``side``^2 uint16 OME-TIFF; then runs ``raysegment infer`` (``run.py``'s ``infer_cli``: a
new process each, Ray's start included; CPU, raw output) with each model in turn,
``runs`` times, and prints each run's wall time and the largest difference between the
two outputs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import infer_cli  # noqa: E402


def _models(out: Path) -> dict[str, Path]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1).eval()
    x = torch.randn(1, 1, 512, 512)
    paths = {"torchscript": out / "unet.pt", "onnx": out / "unet.onnx"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, x), str(paths["torchscript"]))
        axes = {0: "batch", 2: "y", 3: "x"}
        torch.onnx.export(
            net,
            (x,),
            str(paths["onnx"]),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": axes, "y": axes},
        )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    models = _models(args.out)
    rng = np.random.default_rng(0)
    image = (rng.random((args.side, args.side)) * 4000).astype(np.uint16)
    tiff = args.out / "image.ome.tif"
    tifffile.imwrite(tiff, image, ome=True, tile=(512, 512), metadata={"axes": "YX"})
    outputs = {}
    for run in range(args.runs):
        for kind, model in models.items():
            result = args.out / f"run_{kind}"
            seconds = infer_cli(tiff, model, result, "device=cpu", "finalize.mode=raw")["seconds"]
            print(f"run {run + 1}: {kind:<11} {seconds:6.1f} s", flush=True)
            outputs[kind] = zarr.open_array(str(result / "image.ome.zarr" / "0"), mode="r")[:]
    largest = float(np.abs(outputs["torchscript"] - outputs["onnx"]).max())
    scale = float(np.abs(outputs["torchscript"]).max())
    print(f"largest difference: {largest:.2e} (largest output {scale:.2f})")


if __name__ == "__main__":
    main()
