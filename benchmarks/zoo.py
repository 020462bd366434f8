"""raysegment against bioimageio.core on a BioImage Model Zoo package, on the same image.

    python benchmarks/zoo.py [--size 4096] [--rounds 2] [--work W] [--out O]

Writes a package (format 0.5) of an SMP Unet (resnet18, random weights, TorchScript) whose
preprocessing is the input's 1st to 99.8th percentile (``scale_range``), with a sigmoid
after, a halo of 16 pixels and tiles of 64 + 32n; and a ``size``^2 uint16 OME-TIFF (16-pixel
patches of 0-3000 plus noise). Then, in turn, ``--rounds`` times, each in a process of its
own with its wall time and the peak memory of its process tree:

- bioimageio.core's ``predict`` of the image read whole into memory (as its users call
  it), in blocks of 512^2 (its blocksize parameter 14), the probabilities saved;
- ``raysegment infer`` of the OME-TIFF into OME-Zarr with the package as ``model=``,
  512^2 tiles (Ray's start included).

raysegment runs twice a round: as it tiles by default (a quarter overlap, gaussian
blending), and as bioimageio.core tiles (overlapping by twice the halo, each tile's centre
kept). Each output is compared with bioimageio.core's: the largest difference, and the
share of pixels whose 0.5 masks differ; so is bioimageio.core's own in blocks of 480^2,
which shows what moving the tiles does to the network's output (its receptive field is
larger than its halo). The percentiles raysegment measures on its sample of the image are
given with the image's own. Writes ``zoo.json`` into --out.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import yaml
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PeakMemory, bench_args, infer_cli, machine, write_result  # noqa: E402

_CORE = """
import sys, numpy as np, tifffile
from bioimageio.core import load_description, predict
image = tifffile.imread(sys.argv[2])[None, None].astype(np.float32)
model = load_description(sys.argv[1], perform_io_checks=False)
sample = predict(model=model, inputs=image, blocksize_parameter=int(sys.argv[4]))
(tensor,) = sample.members.values()
np.save(sys.argv[3], np.asarray(tensor.data)[0])
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package(work: Path) -> Path:
    """The package's directory, its rdf.yaml in it."""
    import segmentation_models_pytorch as smp

    root = work / "unet_package"
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1).eval()
    x = torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(net, x), str(root / "weights.pt"))
        np.save(root / "test_input.npy", x.numpy())
        np.save(root / "test_output.npy", torch.sigmoid(net(x)).numpy())
    (root / "README.md").write_text("# A benchmark's Unet\n")
    space = [{"type": "space", "id": a, "size": {"min": 64, "step": 32}} for a in "yx"]
    out_space = [
        {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}, "halo": 16}
        for a in "yx"
    ]
    rdf: dict[str, Any] = {
        "format_version": "0.5.4",
        "type": "model",
        "name": "benchmark unet",
        "description": "random weights",
        "authors": [{"name": "raysegment"}],
        "cite": [{"text": "raysegment", "url": "https://example.com"}],
        "license": "MIT",
        "documentation": "README.md",
        "inputs": [
            {
                "id": "raw",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["raw"]},
                    *space,
                ],
                "test_tensor": {
                    "source": "test_input.npy",
                    "sha256": _sha(root / "test_input.npy"),
                },
                "preprocessing": [
                    {
                        "id": "scale_range",
                        "kwargs": {"axes": ["y", "x"], "min_percentile": 1, "max_percentile": 99.8},
                    }
                ],
            }
        ],
        "outputs": [
            {
                "id": "prob",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["foreground"]},
                    *out_space,
                ],
                "test_tensor": {
                    "source": "test_output.npy",
                    "sha256": _sha(root / "test_output.npy"),
                },
                "postprocessing": [{"id": "sigmoid"}],
            }
        ],
        "weights": {
            "torchscript": {
                "source": "weights.pt",
                "sha256": _sha(root / "weights.pt"),
                "pytorch_version": torch.__version__.split("+")[0],
            }
        },
    }
    (root / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return root


def image(work: Path, size: int) -> Path:
    path = work / f"zoo{size}.ome.tif"
    if not path.exists():
        rng = np.random.default_rng(0)
        base = (rng.random((size // 16, size // 16)) * 3000).astype(np.uint16)
        noise = rng.integers(0, 200, (size, size), dtype=np.uint16)
        pixels = np.repeat(np.repeat(base, 16, 0), 16, 1) + noise
        tifffile.imwrite(path, pixels, ome=True, tile=(512, 512), metadata={"axes": "YX"})
    return path


def core(rdf: Path, tiff: Path, out: Path, n: int = 14) -> dict[str, Any]:
    """bioimageio.core's prediction in a process of its own, in blocks of 64 + 32 ``n``
    pixels: seconds, peak GiB."""
    start = time.perf_counter()
    command = [sys.executable, "-c", _CORE, str(rdf), str(tiff), str(out), str(n)]
    proc = subprocess.Popen(command)
    sampler = PeakMemory(proc.pid)
    proc.wait()
    seconds, peak = time.perf_counter() - start, sampler.stop()
    if proc.returncode:
        raise RuntimeError("bioimageio.core's predict failed")
    return {"seconds": seconds, "peak_gib": peak / 2**30}


RAYSEGMENT = {
    "default": ("device=cpu", "finalize.mode=probabilities"),
    # bioimageio.core's tiling: tiles overlapping by twice the halo, each keeping its centre
    "core_tiling": (
        "device=cpu",
        "finalize.mode=probabilities",
        "tile.overlap=0.0625",
        "tile.blend=crop",
    ),
}


def percentiles(tiff: Path) -> dict[str, list[float]]:
    """The 1st and 99.8th percentiles raysegment normalizes by (of its sample of the
    image), and the image's own (bioimageio.core's)."""
    from raysegment.data.sources import open_sources
    from raysegment.infer.plan import _percentiles

    source = open_sources(str(tiff))[0]
    lo, hi = _percentiles(source, (0,), 1.0, 99.8)
    whole = np.percentile(tifffile.imread(tiff).astype(np.float64), [1.0, 99.8])
    return {"raysegment": [float(lo[0]), float(hi[0])], "image": [float(v) for v in whole]}


def main() -> int:
    args = bench_args(__doc__ or "", size=4096, rounds=2)
    args.work.mkdir(parents=True, exist_ok=True)
    rdf = package(args.work) / "rdf.yaml"
    tiff = image(args.work, args.size)
    runs: dict[str, list[dict[str, Any]]] = {"bioimageio.core": [], **{k: [] for k in RAYSEGMENT}}
    theirs = args.work / "core.npy"
    for round_ in range(args.rounds):
        result = core(rdf, tiff, theirs)
        runs["bioimageio.core"].append(result)
        print(f"round {round_ + 1}: bioimageio.core {result}", flush=True)
        for name, keys in RAYSEGMENT.items():
            result = infer_cli(tiff, rdf, args.work / f"zoo_{name}", *keys, memory=True)
            runs[name].append(result)
            seconds, peak = result["seconds"], result["peak_gib"]
            print(
                f"round {round_ + 1}: raysegment {name} {seconds:.1f} s, {peak:.2f} GiB", flush=True
            )
    b = np.load(theirs)[0]
    # What moving the tiles does to this network's output: bioimageio.core's own in
    # blocks of 480^2 against its blocks of 512^2.
    core(rdf, tiff, args.work / "core480.npy", n=13)
    c = np.load(args.work / "core480.npy")[0]
    compared = {
        "core_480": {
            "largest_difference": float(np.abs(c - b).max()),
            "masks_differ": float(((c > 0.5) != (b > 0.5)).mean()),
        }
    }
    for name in RAYSEGMENT:
        a = zarr.open_array(
            str(args.work / f"zoo_{name}" / f"zoo{args.size}.ome.zarr" / "0"), mode="r"
        )[0]
        compared[name] = {
            "largest_difference": float(np.abs(a - b).max()),
            "masks_differ": float(((a > 0.5) != (b > 0.5)).mean()),
        }
    summary = {
        "machine": machine(),
        "size": args.size,
        "runs": runs,
        "against_core": compared,
        "foreground": float((b > 0.5).mean()),
        "percentiles": percentiles(tiff),
    }
    write_result(args.out, "zoo.json", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
