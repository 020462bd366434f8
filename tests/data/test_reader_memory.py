"""Reading a large OME-TIFF block by block keeps a reader's memory bounded; read and write
workers hand back what they freed."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import numpy as np
import psutil
import pytest
import tifffile

from raysegment.data.sources import open_source


def test_reading_distinct_blocks_does_not_accumulate_memory(tmp_path) -> None:
    """A worker reads block after block of one slide: its memory must not grow with the
    blocks read (an earlier reader kept every tile it decoded: +1 block per block), even
    where Python's cyclic collector does not run (a read worker allocates few objects: a
    reader freed only by the collector held its tiles until the worker ended)."""
    block = 1024
    image = np.random.default_rng(0).integers(0, 4000, (6 * block, 8 * block), np.uint16)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, image, ome=True, tile=(512, 512), metadata={"axes": "YX"})
    source = open_source(str(path))
    regions = [(i * block, j * block) for i in range(6) for j in range(8)]
    process = psutil.Process()

    def read(some: list[tuple[int, int]]) -> None:
        for y, x in some:
            data = source.read(0, (0,), ((0, 1), (y, y + block), (x, x + block)))
            assert np.array_equal(data[0, 0], image[y : y + block, x : x + block])
            del data

    read(regions[:16])  # the reader's threads and buffers settle
    gc.collect()
    before = process.memory_info().rss
    gc.disable()
    try:
        read(regions[16:])
        grown = process.memory_info().rss - before
    finally:
        gc.enable()
    assert grown < 16 * block * block * 2, f"grew {grown / 2**20:.0f} MiB over 32 blocks"


_CHURN = """
import json, numpy as np, psutil
from raysegment.infer import stages

def churn():
    # ~94 MiB of small heap buffers freed, all but the last: the heap cannot shrink
    # from its top, so without a trim the freed pages stay resident.
    buffers = [np.ones(16384, np.uint8) for _ in range(6000)]
    return buffers[-1:]

rss = lambda: psutil.Process().memory_info().rss
before = rss()
kept = churn()
grown = rss()
kept += stages.returns_free_memory(churn)()
wrapped = stages.read_stage.__wrapped__ and stages.write_stage.__wrapped__
print(json.dumps({"trim": stages._malloc_trim() is not None, "before": before,
                  "grown": grown, "after": rss(), "wrapped": bool(wrapped)}))
"""


def test_read_and_write_stages_hand_the_memory_they_freed_back() -> None:
    """An idle read or write worker must not keep the heap its last block grew (decoders
    and codecs free their buffers into malloc's arenas, which keep them). In a fresh
    process: a test process's heap has free room of its own."""
    result = subprocess.run(
        [sys.executable, "-c", _CHURN], capture_output=True, text=True, check=True
    )
    got = json.loads(result.stdout)
    if not got["trim"]:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    assert got["wrapped"]
    assert got["grown"] - got["before"] > 50 << 20  # the premise: freed heap stays resident
    assert got["after"] < got["grown"] - (50 << 20)
