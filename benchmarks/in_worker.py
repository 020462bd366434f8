"""One block's tiles (``predict_block``, as a CPU predictor runs them: the model loaded,
laid out and frozen as the predictor does, 2 one-thread streams, blending on a thread of
one torch thread) in a plain process, on a thread of a Ray driver, and in a Ray task's
worker process, alternating: what a Ray worker's process costs a block, with each
thread's CPU seconds and involuntary context switches in the last round.

    python benchmarks/in_worker.py SLIDE MODEL [plain|driver|task ...]

SLIDE is read as one block (its size a multiple of the 512 tiles, e.g. a 4096^2
``run.py`` slide); each mode times three rounds of the block. The process takes the model
processes' allocator settings (``TORCH_WORKER_ENV``) before torch is imported.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysegment.runtime import TORCH_WORKER_ENV  # noqa: E402

ROUNDS = 3


def _threads() -> dict[int, tuple[str, float, int]]:
    """This process's threads: name, CPU seconds, involuntary context switches."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        switches = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / ticks, switches)
    return out


def measure(model: Any, plan: Any) -> dict[str, Any]:
    """Seconds per round of the block, and per thread (CPU s >= 0.05 in the last round)."""
    import numpy as np
    import torch

    from raysegment.compute import choose_layout
    from raysegment.infer.predictor import (
        Streams,
        blend_profiles,
        freeze,
        load_model,
        predict_block,
    )
    from raysegment.infer.stages import normalized, read_stage

    result: dict[str, Any] = {"rounds": []}

    def run() -> None:
        # As Predictor: one torch thread on the thread that blends beside 2 streams.
        torch.set_num_threads(1)
        device = torch.device("cpu")
        module = load_model(model, device)
        choose_layout(module, (len(plan.channels), *plan.tiling.tile), device, "auto", "float32", 1)
        module = freeze(module)
        streams = Streams(2, 1)
        (item,) = plan.work()
        row = {"image": [item.image], "t": [item.t], "z": [item.z], "index": [item.index]}
        batch = read_stage({k: np.array(v) for k, v in row.items()}, [plan])
        for r in range(ROUNDS):
            before = _threads() if r == ROUNDS - 1 else {}
            data = torch.from_numpy(normalized(batch["data"][0], plan, plan.block_of(item)))
            start = time.perf_counter()
            predict_block(
                module, plan, item, data, 1, blend_profiles(plan, device), streams=streams
            )
            result["rounds"].append(round(time.perf_counter() - start, 2))
        me = threading.get_native_id()
        result["threads"] = []
        for tid, (name, cpu, switches) in _threads().items():
            _, cpu0, switches0 = before.get(tid, (name, 0.0, 0))
            if cpu - cpu0 >= 0.05:
                label = "blend" if tid == me else name
                result["threads"].append((label, round(cpu - cpu0, 2), switches - switches0))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result


def main(slide: str, model_path: str, modes: list[str]) -> None:
    from raysegment.config import InferConfig, as_config
    from raysegment.data.sources import open_source
    from raysegment.infer.model import describe_model, load_model, probe_model, read_model_file
    from raysegment.infer.plan import plan_image, tile_size

    source = open_source(slide)
    span = max(source.info.shape[-2:])
    settings = {
        "input": slide,
        "model": model_path,
        "output": "/tmp/in_worker",
        "block": [span],
        "tile": {"size": [512], "overlap": 0.25},
        "finalize": {"mode": "mask"},
    }
    cfg = as_config(InferConfig, settings, {})
    model = read_model_file(model_path)
    module = load_model(model)
    spec = describe_model(model, module)
    spec = probe_model(model, module, spec, tile_size(cfg, spec))
    plan = plan_image(0, source, cfg.output, cfg, spec, model.sha256)
    for mode in modes:
        if mode == "plain":
            print(mode, measure(model, plan), flush=True)
            continue
        import ray

        from raysegment.runtime import start_ray, stop_ray

        started = start_ray()
        try:
            if mode == "driver":
                print(mode, measure(model, plan), flush=True)
            else:
                task = ray.remote(num_cpus=os.cpu_count())(measure)
                print(mode, ray.get(task.remote(model, plan)), flush=True)
        finally:
            stop_ray(started)


if __name__ == "__main__":
    if any(os.environ.get(k) != v for k, v in TORCH_WORKER_ENV.items()):
        # glibc reads its settings once, at start: run again with them.
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | TORCH_WORKER_ENV)
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or ["plain", "task", "plain", "task"])
