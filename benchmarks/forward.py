"""Per-tile time of a CPU Unet forward (SMP Unet resnet18 traced to TorchScript as in
``run.py``, 512^2, channels-last, 2 threads, on a non-main thread as Ray Data runs
predictors), as traced and frozen as the predictors run it: with glibc's default
allocator and with the settings raysegment gives model processes, and with another process
taking a share of one core (as Ray's own processes do during a run).

    python benchmarks/forward.py            # prints one line per case
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysegment.runtime import TORCH_WORKER_ENV  # noqa: E402

TILES = 16
ROUNDS = 4


def measure() -> dict[str, float]:
    """In this process, on a non-main thread: seconds and kernel seconds per tile of the
    model as traced, and seconds per tile of it frozen as the predictors run it
    (``raysegment.infer.predictor.freeze``), alternating between the two."""
    import segmentation_models_pytorch as smp
    import torch

    from raysegment.infer.predictor import freeze

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1).eval()
    x = torch.randn(1, 1, 512, 512)
    traced = torch.jit.trace(model, x).eval().to(memory_format=torch.channels_last)
    frozen = freeze(torch.jit.trace(model, x).eval().to(memory_format=torch.channels_last))
    x = x.contiguous(memory_format=torch.channels_last)  # as benchmarked
    times: dict[str, float] = {"traced": 0.0, "frozen": 0.0, "kernel": 0.0}
    out: dict[str, float] = {}

    def loop() -> None:
        torch.set_num_threads(2)
        with torch.inference_mode():
            for module in (traced, frozen, traced, frozen):  # profiling runs
                module(x)
            for _ in range(ROUNDS):
                for name, module in (("traced", traced), ("frozen", frozen)):
                    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                    for _ in range(TILES // ROUNDS):
                        module(x)
                    times[name] += time.perf_counter() - start
                    if name == "traced":
                        after = resource.getrusage(resource.RUSAGE_SELF)
                        times["kernel"] += after.ru_stime - before.ru_stime
            want = traced(x)
            out["frozen_max_error"] = float((frozen(x) - want).abs().max() / want.abs().max())
        out["s_per_tile"] = times["traced"] / TILES
        out["kernel_s_per_tile"] = times["kernel"] / TILES
        out["frozen_s_per_tile"] = times["frozen"] / TILES

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    return out


def busy(share: float) -> None:
    """Take ``share`` of one core in 10 ms periods until killed."""
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < 0.01 * share:
            pass
        time.sleep(0.01 * (1 - share))


def case(allocator: bool, share: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in TORCH_WORKER_ENV}
    env |= (TORCH_WORKER_ENV if allocator else {}) | {"PYTHONWARNINGS": "ignore"}
    load = None
    if share:
        load = subprocess.Popen([sys.executable, __file__, "--busy", str(share)])
    try:
        result = subprocess.run(
            [sys.executable, __file__, "--measure"], env=env, capture_output=True, text=True
        )
    finally:
        if load is not None:
            load.kill()
            load.wait()
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure()))
        return 0
    if sys.argv[1:2] == ["--busy"]:
        busy(float(sys.argv[2]))
        return 0
    for allocator, share in ((False, 0.0), (True, 0.0), (True, 0.1), (True, 0.2)):
        r = case(allocator, share)
        print(
            f"allocator {'raysegment' if allocator else 'default   '}, another process "
            f"{share:.0%} of a core: {r['s_per_tile']:.3f} s/tile, "
            f"{r['kernel_s_per_tile']:.3f} s/tile in the kernel; frozen "
            f"{r['frozen_s_per_tile']:.3f} s/tile (outputs within "
            f"{r['frozen_max_error']:.0e} of their largest)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
