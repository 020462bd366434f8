"""A GPU run's read and write tasks: at most ``io_tasks`` of each per predictor at once,
whatever the number of blocks and cores (each runs in a worker process Ray keeps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr

from raysegment.data.tiling import Tiling
from raysegment.infer.writer import inspect_output
from tests.conftest import last_report, numpy_blend, random_image
from tests.faults import install

# In every Ray worker that runs a read or write task: its start and end appended to a log,
# the read slowed down so that uncapped, reads would pile up beside the predictor.
PATCH = """
import os, time
read, write = m.read_row, m.write_row

def logged(stage, run, pause):
    def wrapped(*args, **kwargs):
        start = time.time()
        time.sleep(pause)
        try:
            return run(*args, **kwargs)
        finally:
            line = f"{stage} {os.getpid()} {start} {time.time()}\\n"
            with open(os.environ["RAYSEGMENT_TEST_IO_LOG"], "a") as log:
                log.write(line)
    return wrapped

m.read_row = logged("read", read, 0.3)
m.write_row = logged("write", write, 0.1)
"""

# A node of 8 CPUs and a GPU that Ray reports (no device: the predictor computes on the
# CPU, the read and write tasks run as on a GPU node): room for 16 half-CPU tasks at once.
SCRIPT = """
import json, sys
import ray
ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, logging_level="ERROR")
from raysegment.infer import infer

summary = infer(input=sys.argv[1], model=sys.argv[2], output=sys.argv[3], device="gpu",
                io_tasks=int(sys.argv[4]), progress=False, quicklook=False, chunks=[64],
                block=[64], tile={"size": [64]}, finalize={"mode": "raw"})
print(json.dumps({"device": summary.device, "blocks": summary.blocks, "out": summary.outputs}))
ray.shutdown()
"""


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_most_at_once() -> None:
    assert most_at_once([(0, 2), (1, 3), (2, 4)]) == 2
    assert most_at_once([(0, 5), (1, 2), (1.5, 3)]) == 3
    assert most_at_once([]) == 0


def test_io_tasks_per_predictor_and_never_above_the_inputs() -> None:
    """``io_tasks`` per GPU predictor; no more than the dataset's inputs (a cap above them
    has Ray Data warn that the operator got fewer inputs than its limit)."""
    from raysegment.config import InferConfig, load_config
    from raysegment.infer.pipeline import Pool, _io_tasks

    default = load_config(InferConfig, (), ["input=a", "model=m", "output=o"])
    four = Pool(True, 4, 1)
    assert _io_tasks(default, four, inputs=1000) == 16
    assert _io_tasks(default, four, inputs=3) == 3
    chosen = load_config(InferConfig, (), ["input=a", "model=m", "output=o", "io_tasks=1"])
    assert _io_tasks(chosen, four, inputs=1000) == 4


def test_gpu_run_caps_its_read_and_write_tasks(tmp_path: Path, make_model) -> None:
    # 16 blocks; 16-bit pixels over the whole range (the predictor converts them itself).
    image = (random_image((256, 256)).astype(np.uint32) * 65).astype(np.uint16)
    assert image.max() > 60000
    tifffile.imwrite(tmp_path / "img.tif", image)
    model, module = make_model()
    site = install(tmp_path / "site", "raysegment.infer.stages", PATCH)
    log = tmp_path / "io.log"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "img.tif"), str(model)]
        + [str(tmp_path / "out"), "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ
        | {
            "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]),
            "PYTHONWARNINGS": "ignore",
            "RAYSEGMENT_TEST_IO_LOG": str(log),
        },
    )
    assert result.returncode == 0, result.stderr
    report = last_report(result.stdout)
    assert report["device"] == "gpu" and report["blocks"] == 16
    assert inspect_output(report["out"][0]).complete
    # The blocks' output: the whole image's weighted average of the grid's tiles (inputs
    # up to 65,000 leave float32 sums a few 1e-4 apart in the model's two convolutions).
    got = zarr.open_array(str(Path(report["out"][0]) / "0"), mode="r")[:]
    want = numpy_blend(module, image, Tiling.plan(image.shape, (64, 64), 0.25, "gaussian"))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    rows = [line.split() for line in log.read_text().splitlines()]
    for stage in ("read", "write"):
        spans = [(float(s), float(e)) for name, _, s, e in rows if name == stage]
        assert len(spans) == 16, stage
        assert most_at_once(spans) <= 2, stage
