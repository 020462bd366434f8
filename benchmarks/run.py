"""raysegment benchmarks: end-to-end throughput and memory against the model-only ceiling,
MONAI's sliding-window inference, a plain I/O copy, and 1 vs 2 actors; training speed.

Every comparison is paired in the same run (ratios hold on noisy machines, absolute times
do not). Writes results.json, results.md and results.png into --out.

    python benchmarks/run.py                # 8192^2 and 32768^2, as in the README
    python benchmarks/run.py --quick        # 2048^2 and 4096^2, to check it works
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tifffile
import torch
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.segment_slide import NucleiNet, make_slide  # noqa: E402
from raysegment.compute import choose_layout, slow_precision  # noqa: E402
from raysegment.data.sources import image_stem  # noqa: E402
from raysegment.data.tiling import AxisTiling  # noqa: E402
from raysegment.infer.predictor import Streams, freeze  # noqa: E402
from raysegment.runtime import TORCH_WORKER_ENV  # noqa: E402

TILE = 512
OVERLAP = 0.25
BATCH = 1  # measured fastest per tile on CPU for this model; GPUs take 8
TINY = 512  # the fixed-cost run's image: one tile


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import ray

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # The same "AMD EPYC" name has come with AVX2 only and with AVX-512 and bfloat16
        # (2-3x a Unet tile's speed): the vector unit the kernels used goes with the figures.
        "isa": torch.backends.cpu.get_cpu_capability(),
        "bf16_kernels": not slow_precision(torch.device("cpu"), "bfloat16"),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
    }


def _pss(pid: int) -> int:
    """Proportional set size of one process (Linux smaps_rollup; RSS elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


class PeakMemory:
    """Peak proportional set size (shared pages split between the processes that map
    them, so Ray's object store counts once) of a process and all its descendants,
    sampled every second."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                pids = [root.pid, *(p.pid for p in root.children(recursive=True))]
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, sum(_pss(pid) for pid in pids))
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _product_env() -> dict[str, str]:
    """The environment of a raysegment command: a private local Ray, and the allocator
    settings raysegment chooses for itself (this process runs with them, see ``main``)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCH_WORKER_ENV}
    env.pop("RAY_ADDRESS", None)
    return env | {"PYTHONWARNINGS": "ignore"}


SIMULATED_GPU_NODE = "16,1"
"""CPUs and GPUs of the node the GPU-path memory runs simulate on a machine without a GPU
(``simulated_node.py``): session 19's H100 node's cores."""


def raysegment_command(node: str = "") -> list[str]:
    """The ``raysegment`` command line with this interpreter; ``node``: "CPUS,GPUS", on a
    simulated node of those (``simulated_node.py``)."""
    if node:
        simulated = str(Path(__file__).with_name("simulated_node.py"))
        return [sys.executable, simulated, *node.split(",")]
    return [sys.executable, "-m", "raysegment.cli"]


def infer_cli(
    image: Path, model: Path, out: Path, *keys: str, memory: bool = False, node: str = ""
) -> dict[str, Any]:
    """``raysegment infer`` in a fresh process (Ray start-up included): wall time and,
    with ``memory``, the process tree's peak memory (sampling it reads every process's
    smaps once a second: ~5% of a core, so only the memory runs pay for it); ``node``:
    "CPUS,GPUS" of a simulated node to run on (``raysegment_command``)."""
    command = [
        *raysegment_command(node),
        "infer",
        f"input={image}",
        f"model={model}",
        f"output={out}",
        "progress=false",
        "quicklook=false",
        "overwrite=true",
        f"tile.size={TILE}",
        f"tile.overlap={OVERLAP}",
        *keys,
    ]
    env = _product_env() | {"RAY_DEDUP_LOGS": "0"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = PeakMemory(proc.pid) if memory else None
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    peak = sampler.stop() if sampler else None
    if proc.returncode != 0:
        raise RuntimeError(f"raysegment infer failed:\n{stderr.decode()[-3000:]}")
    lines = stdout.decode().strip().splitlines()
    print("   ", lines[0], flush=True)
    # "predictors on: node ... CPU [channels-last]": the layout the predictors took.
    layout = "channels_last" if "channels-last" in " ".join(lines[1:2]) else "channels_first"
    gib = peak / 2**30 if peak is not None else None
    return {
        "seconds": seconds,
        "summary": lines[0],
        "peak_gib": gib,
        "keys": list(keys),
        "layout": layout,
        "node": node,
    }


def bench_args(
    doc: str,
    size: int,
    rounds: int = 1,
    choices: dict[str, tuple[str, ...]] | None = None,
    **floats: float,
) -> argparse.Namespace:
    """The options of a benchmark beside this one: --size, --rounds, --work (created: its
    images and models) and --out (its JSON), ``choices`` as --name options of those
    values (the first the default), and ``floats`` as --name options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--rounds", type=int, default=rounds)
    for name, values in (choices or {}).items():
        parser.add_argument(f"--{name}", choices=values, default=values[0])
    for name, default in floats.items():
        parser.add_argument(f"--{name}", type=float, default=default)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def write_result(out: Path, name: str, result: dict[str, Any]) -> None:
    """``result`` as ``<out>/<name>`` (JSON), and printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def unet(path: Path) -> Path:
    """SMP Unet with a resnet18 encoder (random weights), traced to TorchScript."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1).eval()
    traced = torch.jit.trace(model, torch.zeros(1, 1, TILE, TILE))
    torch.jit.save(traced, str(path))
    return path


def cheap(path: Path) -> Path:
    torch.jit.save(torch.jit.trace(NucleiNet().eval(), torch.zeros(1, 1, 64, 64)), str(path))
    return path


def read_image(path: Path) -> np.ndarray:
    return tifffile.imread(path)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DEVICE_BATCH = BATCH if DEVICE.type == "cpu" else 8  # tiles per forward on DEVICE


def _load(
    model: Path, layout: str, as_run: bool = True, tile: tuple[int, ...] = (TILE, TILE)
) -> torch.nn.Module:
    """The model in ``layout``, and, ``as_run``, frozen as raysegment's predictors run it."""
    module = torch.jit.load(str(model), map_location=DEVICE).eval()
    choose_layout(module, (1, *tile), DEVICE, layout)
    return freeze(module) if as_run else module


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def model_only(
    model: Path,
    image: np.ndarray,
    threads: int,
    layout: str,
    streams: int = 1,
    tile: int = TILE,
    batch: int = DEVICE_BATCH,
) -> float:
    """Forward passes over the run's tiles (``tile`` a side, 2D or 3D as ``image``), held
    in memory, in the memory layout the run's predictors chose: the ceiling. A plain loop
    on ``threads`` torch threads, or with ``streams``, that many tiles at once on one
    thread each, as a CPU predictor runs them (``raysegment.infer.predictor.Streams``)."""
    torch.set_num_threads(threads)
    module = _load(model, layout, tile=(tile,) * image.ndim)
    starts = [AxisTiling.plan(n, tile, int(tile * OVERLAP)).starts for n in image.shape]
    tiles = [
        torch.from_numpy(image[tuple(slice(s, s + tile) for s in at)].astype(np.float32))[None].to(
            DEVICE
        )
        for at in itertools.product(*starts)
    ]
    pool = Streams(streams, max(1, threads // streams))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    batches = (torch.stack(tiles[i : i + batch]) for i in range(0, len(tiles), batch))
    list(pool.map(run, [tiles[0][None]] * streams))  # warm-up, as the actors' probe
    _sync()
    start = time.perf_counter()
    for _ in pool.map(run, batches):
        pass
    _sync()
    return time.perf_counter() - start


def monai_sliding_window(
    model: Path,
    image: np.ndarray,
    threads: int,
    layout: str,
    tile: int = TILE,
    batch: int = DEVICE_BATCH,
) -> float:
    """MONAI on the image (2D or 3D) in RAM: as users run it (``channels_first``: the
    model as saved), and, for comparison, with the model as raysegment's predictors run it
    in ``layout``."""
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(threads)
    roi = (tile,) * image.ndim
    module = _load(model, layout, as_run=layout != "channels_first", tile=roi)
    x = torch.from_numpy(image.astype(np.float32))[None, None].to(DEVICE)
    with torch.inference_mode():
        corner: tuple[Any, ...] = (..., *(slice(0, t) for t in roi))
        module(x[corner])
        _sync()
        start = time.perf_counter()
        sliding_window_inference(x, roi, batch, module, overlap=OVERLAP, mode="gaussian")
        _sync()
        return time.perf_counter() - start


def copy_io(image_path: Path, out: Path) -> float:
    """One process: read the OME-TIFF tile row by tile row, threshold, write an OME-Zarr
    array with the chunks and codec raysegment writes: the I/O ceiling of one process."""
    start = time.perf_counter()
    with tifffile.TiffFile(image_path) as tif:
        store = tif.series[0].aszarr()
        source = zarr.open(store, mode="r")
        h, w = source.shape
        target = zarr.create_array(
            str(out), shape=(1, h, w), chunks=(1, 1024, 1024), dtype="uint8", overwrite=True
        )
        for y0 in range(0, h, 1024):
            target[0, y0 : y0 + 1024] = (np.asarray(source[y0 : y0 + 1024]) > 500).astype(np.uint8)
        store.close()
    return time.perf_counter() - start


def iou(a: Path, b: Path) -> float:
    x = zarr.open_array(str(a / "0"), mode="r")
    y = zarr.open_array(str(b / "0"), mode="r")
    inter = union = 0
    for y0 in range(0, x.shape[1], 2048):
        p, q = np.asarray(x[0, y0 : y0 + 2048]) > 0, np.asarray(y[0, y0 : y0 + 2048]) > 0
        inter += int((p & q).sum())
        union += int((p | q).sum())
    return inter / max(union, 1)


def train_cli(
    images: Path, labels: Path, output: Path, *keys: str
) -> tuple[float, list[dict[str, str]]]:
    """``raysegment train`` in a fresh process (Ray's start included), ``keys`` beside the
    directories: its wall time and ``metrics.csv``'s rows (its summary line printed)."""
    command = [
        *raysegment_command(),
        "train",
        f"images.dir={images}",
        f"labels.dir={labels}",
        f"output={output}",
        "overwrite=true",
        *keys,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, env=_product_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"raysegment train failed:\n{result.stderr[-3000:]}")
    rows = (output / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    print("   ", result.stdout.strip().splitlines()[-1], flush=True)
    return wall, [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]


def training(work: Path, *overrides: str) -> dict[str, Any]:
    """A synthetic binary task (bright discs), SMP Unet resnet18 on one worker (the GPU
    where there is one), with early stopping: images (patches) per second per worker, and
    time to stop. ``overrides``: more ``key=value`` settings of the command."""
    rng = np.random.default_rng(0)
    for d in ("img", "lbl"):
        (work / d).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:256, :256]
    for i in range(8):
        mask = np.zeros((256, 256), bool)
        for _ in range(20):
            cy, cx, r = rng.integers(0, 256), rng.integers(0, 256), rng.integers(5, 14)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = rng.normal(100, 20, mask.shape) + mask * 400
        tifffile.imwrite(work / "img" / f"im{i}.tif", image.astype(np.uint16))
        tifffile.imwrite(work / "lbl" / f"im{i}.tif", mask.astype(np.uint8))
    patches, batch = 64, 8
    wall, history = train_cli(
        work / "img",
        work / "lbl",
        work / "model",
        "patch_size=[128]",
        f"patches_per_epoch={patches}",
        "val_patches=32",
        f"batch_size={batch}",
        "max_epochs=30",
        "patience=2",
        "min_delta=0.002",
        "device=gpu" if DEVICE.type == "cuda" else "device=cpu",
        *overrides,
    )
    epochs = len(history)
    seconds = sum(float(h.get("seconds", "nan")) for h in history)
    return {
        "epochs": epochs,
        "wall_seconds": wall,
        "epoch_seconds": seconds,
        "images_per_second_per_worker": epochs * patches / seconds if seconds else None,
        "final_iou": float(history[-1].get("iou", "nan")),
        "device": DEVICE.type,
    }


class Steps:
    """Runs the benchmark's steps in order, printing each one's wall time, and keeps what
    they return in ``done``, written to ``path`` after each step: a run cut short keeps
    its measurements so far."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.done: dict[str, Any] = {}

    def __call__(self, key: str | None, name: str, fn: Callable[[], Any]) -> Any:
        print(f"-- {name}", flush=True)
        start = time.perf_counter()
        value = fn()
        print(f"   {time.perf_counter() - start:.1f} s", flush=True)
        if key is not None:
            self.done[key] = value
            self.path.write_text(json.dumps(self.header | {"raw": self.done}, indent=2))
        return value


def _make_slide(path: Path, size: int) -> None:
    truth = path.with_name(f".{path.name}.truth.zarr")
    make_slide(path, truth, size)
    shutil.rmtree(truth, ignore_errors=True)


def make_slides(slides: list[tuple[Path, int]], step: Steps) -> None:
    """The slides not yet in --work, each made in a process of its own, as many at once as
    there are cores (the largest, which takes longest, first)."""
    missing = sorted({(p, s) for p, s in slides if not p.exists()}, key=lambda m: -m[1])
    if not missing:
        return

    def make() -> None:
        workers = min(len(missing), os.cpu_count() or 1)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for done in [pool.submit(_make_slide, p, s) for p, s in missing]:
                done.result()

    sizes = ", ".join(f"{s}^2" for _, s in missing)
    step(None, f"make the {sizes} slide{'s' if len(missing) > 1 else ''}", make)


def main() -> int:
    if any(os.environ.get(k) != v for k, v in TORCH_WORKER_ENV.items()):
        # The model-only loop and MONAI run here, with the allocator settings raysegment's
        # predictors get (glibc reads them at process start): the comparisons measure the
        # pipelines, not the allocator (it speeds a CPU Unet forward ~25% here).
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | TORCH_WORKER_ENV)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--big", type=int, default=32768)
    parser.add_argument(
        "--large", type=int, default=16384, help="efficiency on a larger image (0: skip)"
    )
    parser.add_argument("--quick", action="store_true", help="2048^2 and 4096^2")
    parser.add_argument("--slides-only", action="store_true", help="make the slides, then stop")
    parser.add_argument(
        "--report",
        type=Path,
        help="write the results from a partial.json (runs cut short, or steps run apart)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()
    if args.quick:
        args.size, args.big, args.large = 2048, 4096, 0
    if args.report:
        args.out.mkdir(parents=True, exist_ok=True)
        return report(json.loads(args.report.read_text()), args.out)
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    gpu = torch.cuda.is_available()
    device = ["device=gpu", "actors=1", f"batch_size={DEVICE_BATCH}"] if gpu else ["device=cpu"]
    results: dict[str, Any] = {
        "machine": machine(),
        "size": args.size,
        "big": args.big,
        "large": args.large,
    }
    print(json.dumps(results["machine"]), flush=True)
    step = Steps(out / "partial.json", results)

    small, big = work / f"slide{args.size}.ome.tif", work / f"slide{args.big}.ome.tif"
    large, tiny = work / f"slide{args.large}.ome.tif", work / f"slide{TINY}.ome.tif"
    sizes = [(small, args.size), (big, args.big), (tiny, TINY)]
    make_slides(sizes + ([(large, args.large)] if args.large else []), step)
    if args.slides_only:
        return 0
    heavy, light = unet(work / "unet.pth"), cheap(work / "cheap.pth")
    image = read_image(small)

    two = ["actors=2", "threads=1", f"batch_size={BATCH}"] if not gpu else device
    r = step.done
    # One image on one machine: one block, one predictor using every core (blocks re-run
    # the tiles that straddle their seams: ~10% more tiles with 4096-pixel blocks).
    one = device if gpu else ["actors=1", f"threads={cores}", f"batch_size={BATCH}"]
    whole = device if gpu else [f"block=[{args.size}]", *one]
    step(
        "e2e",
        "end to end, Unet",
        lambda: infer_cli(small, heavy, work / "o1", *whole, "finalize.mode=mask"),
    )
    layout = r["e2e"]["layout"]
    step("model_only_s", f"model only ({layout})", lambda: model_only(heavy, image, cores, layout))
    if not gpu and cores > 1:
        # The same tiles as the predictor runs them on CPU: a tile per core at once.
        step(
            "model_only_streams_s",
            f"model only, {cores} tiles at once",
            lambda: model_only(heavy, image, cores, layout, streams=cores),
        )
    # What every run pays whatever the image: Python and Ray start-up, the predictors'
    # start (torch import, model load), the first read and last write, Ray shut-down.
    step(
        "startup",
        f"end to end, Unet, {TINY}^2 (fixed cost)",
        lambda: infer_cli(tiny, heavy, work / "o0", *one, "finalize.mode=mask"),
    )
    if args.large:
        big_image = read_image(large)
        step(
            "model_only_large_s",
            f"model only, {args.large}^2",
            lambda: model_only(heavy, big_image, cores, layout),
        )
        del big_image
        one_block = device if gpu else [f"block=[{args.large}]", *one]
        step(
            "e2e_large",
            f"end to end, Unet, {args.large}^2",
            lambda: infer_cli(large, heavy, work / "o7", *one_block, "finalize.mode=mask"),
        )
    step(
        "monai_s",
        "MONAI sliding_window_inference",
        lambda: monai_sliding_window(heavy, image, cores, "channels_first"),
    )
    step(
        "monai_cl_s",
        "MONAI sliding_window_inference, model as the predictors run it",
        lambda: monai_sliding_window(heavy, image, cores, "channels_last"),
    )
    if slow_precision(DEVICE, "bfloat16"):
        # Without oneDNN's bfloat16 kernels (AVX2-only CPUs) autocast runs the reference
        # kernels, ~7x float32's time per Unet tile: no fast path there, and ~23 minutes
        # of this run at 8192^2. The table says why the rows are missing.
        r["fast_skipped"] = "this CPU has no fast bfloat16 kernels (oneDNN): not run"
        print(f"    bfloat16 fast path: {r['fast_skipped']}", flush=True)
    else:
        fast = ["precision=bfloat16"]
        step(
            "e2e_fast",
            "end to end, Unet, bfloat16",
            lambda: infer_cli(small, heavy, work / "o2", *whole, *fast, "finalize.mode=mask"),
        )
        name = f"{image_stem(str(small))}.ome.zarr"
        r["fast_iou"] = iou(work / "o1" / name, work / "o2" / name)
    if not gpu:
        # Four blocks at any size (at 8192^2 the default block): a run starts no more
        # predictors than it has blocks.
        four = f"block=[{max(args.size // 2, 1024)}]"
        single = ["actors=1", "threads=1", f"batch_size={BATCH}", "finalize.mode=mask", four]
        step(
            "e2e_one_actor",
            "end to end, Unet, 1 actor",
            lambda: infer_cli(small, heavy, work / "o3", *single),
        )
        step(
            "e2e_two_actors",
            "end to end, Unet, 2 actors",
            lambda: infer_cli(small, heavy, work / "o6", *two, four, "finalize.mode=mask"),
        )
    cheap_keys = [*two, "finalize.mode=mask"]
    step(
        "cheap_small",
        "end to end, cheap model",
        lambda: infer_cli(small, light, work / "o4", *cheap_keys, memory=True),
    )
    step("copy_small_s", "I/O copy", lambda: copy_io(small, work / "copy.zarr"))
    # The cheap model's own forward passes over the same tiles (two one-thread actors
    # share the cores): what the model alone takes next to the copy.
    step(
        "cheap_model_only_s",
        "model only, cheap model",
        lambda: model_only(light, image, 1 if not gpu else cores, layout),
    )
    step(
        "cheap_big",
        f"end to end, cheap model, {args.big}^2",
        lambda: infer_cli(big, light, work / "o5", *cheap_keys, memory=True),
    )
    step("copy_big_s", f"I/O copy, {args.big}^2", lambda: copy_io(big, work / "copy_big.zarr"))
    if args.large:
        # Where memory stops growing: the 4-block --size run ends before the pipeline's
        # steady state (a read and a write worker at once, more of the object store used).
        step(
            "cheap_large",
            f"end to end, cheap model, {args.large}^2",
            lambda: infer_cli(large, light, work / "o8", *cheap_keys, memory=True),
        )
    if not gpu:
        # A GPU node's read and write tasks, worker processes and object store, simulated
        # where there is no GPU (its predictor computes on the CPU): where a GPU run's
        # memory went with the image's size (session 19's H100).
        sim = ["device=gpu", "actors=1", "batch_size=8", "finalize.mode=mask"]
        for key, path, size in (
            ("sim_gpu_small", small, args.size),
            ("sim_gpu_big", big, args.big),
        ):
            step(
                key,
                f"end to end, cheap model, {size}^2, simulated GPU node {SIMULATED_GPU_NODE}",
                lambda p=path: infer_cli(
                    p, light, work / "o9", *sim, memory=True, node=SIMULATED_GPU_NODE
                ),
            )
    try:
        step("training", "training", lambda: training(work / "train"))
    except RuntimeError as e:  # the command failed: the inference figures still stand
        r["training_failed"] = str(e)[-2000:]
        print(f"    training failed; the report goes on without it:\n{e}", flush=True)
    results["raw"] = r
    return report(results, out)


def report(results: dict[str, Any], out: Path) -> int:
    """results.json, results.md and results.png from what ``main`` measured (``raw``)."""
    r = results["raw"]
    gpu = results["machine"]["gpu"] is not None
    cores = results["machine"]["cores"]
    size, big, large = results["size"], results["big"], results["large"]
    pixels = size * size
    e2e = r["e2e"]["seconds"]
    goal = 0.90 if not gpu else 0.80
    fast_rows = (
        [
            ("ours fast path / MONAI fp32", r["monai_s"] / r["e2e_fast"]["seconds"], 1.3),
            ("fast path mask IoU vs fp32", r["fast_iou"], 0.99),
        ]
        if "e2e_fast" in r
        else []
    )
    streams_rows = (
        [
            (
                f"efficiency against the model-only loop on {cores} tiles at once (as predictors)",
                r["model_only_streams_s"] / e2e,
                goal,
            )
        ]
        if "model_only_streams_s" in r
        else []
    )
    figures = [
        ("efficiency (model-only / end-to-end), Unet r18 fp32", r["model_only_s"] / e2e, goal),
        *streams_rows,
        ("ours / MONAI throughput, fp32", r["monai_s"] / e2e, 1.0),
        (
            "ours / MONAI with the model as the predictors run it (channels-last, frozen), fp32",
            r["monai_cl_s"] / e2e,
            1.0,
        ),
        *fast_rows,
        (
            f"memory {big}^2 / {size}^2 (peak PSS)",
            r["cheap_big"]["peak_gib"] / r["cheap_small"]["peak_gib"],
            1.1,
        ),
        (
            f"I/O: ours / one-process copy, {size}^2",
            r["copy_small_s"] / r["cheap_small"]["seconds"],
            1.0,
        ),
        (
            f"I/O: ours / one-process copy, {big}^2",
            r["copy_big_s"] / r["cheap_big"]["seconds"],
            1.0,
        ),
    ]
    if large:
        figures.insert(
            1,
            (
                f"efficiency, {large}^2",
                r["model_only_large_s"] / r["e2e_large"]["seconds"],
                goal,
            ),
        )
    if large:
        figures.append(
            (
                f"memory {big}^2 / {large}^2 (peak PSS)",
                r["cheap_big"]["peak_gib"] / r["cheap_large"]["peak_gib"],
                1.1,
            )
        )
    if not gpu:
        cpus, gpus = SIMULATED_GPU_NODE.split(",")
        figures.append(
            (
                f"memory {big}^2 / {size}^2, GPU path on a simulated node "
                f"({cpus} CPUs, {gpus} GPU)",
                r["sim_gpu_big"]["peak_gib"] / r["sim_gpu_small"]["peak_gib"],
                1.1,
            )
        )
        pair = r["e2e_one_actor"]["seconds"] / r["e2e_two_actors"]["seconds"]
        figures.append(("2 actors / 1 actor, Unet (4 blocks)", pair, 1.7))
        figures.insert(
            1,
            (
                "efficiency, 2 one-thread actors, 4 blocks",
                r["model_only_s"] / r["e2e_two_actors"]["seconds"],
                0.90,
            ),
        )
    results["figures"] = [
        {
            "figure": name,
            "value": round(value, 3),
            "target": target,
            "met": value <= target if "memory" in name else value >= target,
        }
        for name, value, target in figures
    ]
    results["throughput_mpx_s"] = {
        "model_only": pixels / r["model_only_s"] / 1e6,
        "end_to_end": pixels / e2e / 1e6,
        "monai": pixels / r["monai_s"] / 1e6,
    }
    if "e2e_fast" in r:
        results["throughput_mpx_s"]["end_to_end_fast"] = pixels / r["e2e_fast"]["seconds"] / 1e6
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, out / "results.md")
    plot(results, out / "results.png")
    print((out / "results.md").read_text())
    return 0


def _isa(m: dict[str, Any]) -> str:
    """The CPU's vector unit as torch's kernels saw it (``machine``)."""
    return f"{m['isa']}, " + ("bfloat16 kernels" if m["bf16_kernels"] else "no bfloat16 kernels")


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']} ({_isa(m)}), {m['cores']} cores, {m['ram_gib']} GiB RAM, "
        f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Ray {m['ray']}. "
        f"Image {results['size']}^2 uint16 OME-TIFF (memory also "
        f"{' and '.join(f'{s}^2' for s in (results.get('large'), results['big']) if s)}).",
        "",
        "| figure | value | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for f in results["figures"]:
        op = "<=" if "memory" in f["figure"] else ">="
        lines.append(
            f"| {f['figure']} | {f['value']} | {op} {f['target']} | {'yes' if f['met'] else 'no'} |"
        )
    raw = results["raw"]
    if "fast_skipped" in raw:
        lines.append(
            f"| ours fast path (bfloat16) / MONAI fp32, mask IoU | {raw['fast_skipped']} "
            "| >= 1.3, >= 0.99 | not measured |"
        )
    lines += [
        "",
        "| run | seconds | peak memory (GiB) |",
        "| --- | --- | --- |",
        f"| model only (in-memory tiles, {raw['e2e']['layout']}) | {raw['model_only_s']:.1f} | |",
        *(
            [
                f"| same, {results['machine']['cores']} tiles at once "
                f"| {raw['model_only_streams_s']:.1f} | |"
            ]
            if "model_only_streams_s" in raw
            else []
        ),
        f"| MONAI sliding_window_inference (image in RAM) | {raw['monai_s']:.1f} | |",
        f"| same, model as the predictors run it | {raw['monai_cl_s']:.1f} | |",
    ]
    runs = (
        ("e2e", results["size"]),
        ("e2e_fast", results["size"]),
        ("e2e_one_actor", results["size"]),
        ("e2e_two_actors", results["size"]),
        ("startup", TINY),
        ("e2e_large", results.get("large")),
        ("cheap_small", results["size"]),
        ("cheap_large", results.get("large")),
        ("cheap_big", results["big"]),
        ("sim_gpu_small", results["size"]),
        ("sim_gpu_big", results["big"]),
    )
    for key, size in runs:
        if key in raw:
            run = raw[key]
            node = f" (simulated node: {run['node']} CPUs,GPUs)" if run.get("node") else ""
            keys = " ".join(run["keys"]) + node
            peak = f"{run['peak_gib']:.2f}" if run["peak_gib"] is not None else "not sampled"
            lines.append(
                f"| raysegment infer {size}^2 {keys} ({run['layout']}) | {run['seconds']:.1f} "
                f"| {peak} |"
            )
    if "model_only_large_s" in raw:
        lines.append(f"| model only {results['large']}^2 | {raw['model_only_large_s']:.1f} | |")
    lines.append(f"| model only, cheap model | {raw['cheap_model_only_s']:.2f} | |")
    lines.append(f"| one-process copy {results['size']}^2 | {raw['copy_small_s']:.2f} | |")
    lines.append(f"| one-process copy {results['big']}^2 | {raw['copy_big_s']:.1f} | |")
    t = raw.get("training")
    if t is None:
        failure = raw.get("training_failed", "not run").strip().splitlines()[-1]
        lines += ["", f"Training: failed ({failure})."]
    else:
        lines += [
            "",
            f"Training (Unet resnet18, 128^2 patches, batch 8, 1 "
            f"{'GPU' if t.get('device') == 'cuda' else 'CPU'} worker): "
            f"{t['images_per_second_per_worker']:.1f} patches/s per worker; early stop after "
            f"{t['epochs']} epochs, {t['wall_seconds']:.0f} s wall (Ray Train start-up "
            f"included), val IoU {t['final_iou']:.3f}.",
        ]
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = results["figures"]
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * len(figures)))
    names = [f["figure"] for f in figures]
    ax.barh(
        names,
        [f["value"] for f in figures],
        color=["tab:green" if f["met"] else "tab:red" for f in figures],
    )
    for i, f in enumerate(figures):
        ax.plot([f["target"]] * 2, [i - 0.4, i + 0.4], color="black")
    ax.invert_yaxis()
    ax.set_xlabel("ratio (black: target)")
    m = results["machine"]
    # Over the whole figure: over the axes alone, the long row names push it off the left.
    fig.suptitle(
        f"raysegment benchmarks: {m['cpu']} ({_isa(m)}), {m['cores']} cores, "
        f"GPU {m['gpu'] or 'none'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
