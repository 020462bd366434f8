"""The fixed cost of one ``raysegment infer`` run: a tiny image in a Ray session already
started, where nearly all of the run is its start and end, and which processes spend the
CPU.

    python benchmarks/run_overhead.py [--rounds 3]

A 300 x 260 OME-TIFF and a two-convolution TorchScript model; one run to warm the session
(its worker processes, the imports), then --rounds runs, each timed (wall) and its CPU
(user + system) summed per process by polling every process's counters every 0.1 s (a
process that ends loses its last tenth of a second). Writes ``run_overhead.json``.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run import bench_args, machine, write_result  # noqa: E402

from raysegment.infer import infer  # noqa: E402
from raysegment.runtime import start_ray, stop_ray  # noqa: E402
from tests.conftest import conv_model, random_image, save_torchscript  # noqa: E402


class Counters:
    """Every process's CPU seconds, as last seen, by (pid, start time)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, float], tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            for p in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
                try:
                    times = p.cpu_times()
                except psutil.Error:
                    continue
                words = p.info["cmdline"] or [p.info["name"] or "?"]
                name = next((w for w in words if w.startswith("ray::")), Path(words[0]).name)
                key = (p.info["pid"], p.info["create_time"])
                self.seen[key] = (name, times.user + times.system)
            time.sleep(0.1)

    def snapshot(self) -> dict[tuple[int, float], tuple[str, float]]:
        return dict(self.seen)


def spent(before: dict, after: dict) -> Counter:
    """CPU seconds per process kind between two snapshots (new processes whole)."""
    out: Counter = Counter()
    for key, (name, cpu) in after.items():
        used = cpu - before.get(key, (name, 0.0))[1]
        if used > 0.01:
            kind = name if key in before else f"{name} (new)"
            out[kind] += used
    return out


def main() -> None:
    args = bench_args(__doc__ or "", 0, 3)
    work = Path(tempfile.mkdtemp(prefix="overhead-", dir=args.work))
    tifffile.imwrite(
        work / "a.ome.tif", random_image((300, 260)), ome=True, metadata={"axes": "YX"}
    )
    save_torchscript(conv_model(), work / "m.pth", 2, 1)
    started = start_ray()  # as a command starts its private Ray (every CPU)
    settings = {"input": str(work / "a.ome.tif"), "model": str(work / "m.pth"), "progress": False}
    infer(**settings, output=str(work / "warm"))
    counters = Counters()
    time.sleep(1.0)
    runs: list[dict[str, Any]] = []
    for k in range(args.rounds):
        before, start = counters.snapshot(), time.perf_counter()
        infer(**settings, output=str(work / f"run{k}"))
        wall = time.perf_counter() - start
        time.sleep(1.0)  # the run's processes end, their last counters polled
        used = spent(before, counters.snapshot())
        runs.append(
            {
                "wall_s": round(wall, 2),
                "cpu_s": round(sum(used.values()), 2),
                "by_process": {k: round(v, 2) for k, v in used.most_common(6)},
            }
        )
    counters.stop.set()
    stop_ray(started)
    write_result(Path(args.out), "run_overhead.json", {"machine": machine(), "runs": runs})


if __name__ == "__main__":
    main()
