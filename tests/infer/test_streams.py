"""CPU predictors run several tiles at once (``streams``), each on its share of the threads,
and blend them in the tiles' order: the same output, bit for bit, as one tile at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from raysegment.infer.predictor import Streams, blend_profiles, predict_block
from tests.conftest import driver_plan, random_image, read_block


def test_streams_run_items_at_once_and_give_them_back_in_order() -> None:
    def work(both: threading.Barrier, i: int) -> int:
        if i < 2:
            both.wait()  # broken unless the first two items run at the same time
        time.sleep(0.05 * (5 - i))  # later items finish first
        return 10 * i

    both = threading.Barrier(2, timeout=20)
    got = list(Streams(2).map(lambda i: work(both, i), range(6)))
    assert got == [(i, 10 * i) for i in range(6)]
    alone = threading.Barrier(2, timeout=1)
    with pytest.raises(threading.BrokenBarrierError):  # one at a time: the first waits alone
        list(Streams(1).map(lambda i: work(alone, i), range(2)))


def test_each_stream_runs_torch_on_its_share_of_the_threads() -> None:
    streams = Streams(2, threads=1)
    assert {n for _, n in streams.map(lambda _: torch.get_num_threads(), range(6))} == {1}
    streams = Streams(2, threads=3)
    assert {n for _, n in streams.map(lambda _: torch.get_num_threads(), range(6))} == {3}


def test_an_error_in_a_stream_reaches_the_caller() -> None:
    def work(i: int) -> int:
        if i == 3:
            raise ValueError("tile 3")
        return i

    with pytest.raises(ValueError, match="tile 3"):
        list(Streams(2).map(work, range(8)))


def _block(tmp_path: Path, make_model, ome_tiff):
    from raysegment.infer.stages import normalized

    model_path, module = make_model(out_ch=2)
    _, plan = driver_plan(
        {
            "input": str(ome_tiff(random_image((300, 260)))),
            "model": str(model_path),
            "output": str(tmp_path / "out"),
            "tile": {"size": [64]},
        }
    )
    (item,) = plan.work()
    data = torch.from_numpy(normalized(read_block(plan)["data"][0], plan, plan.block_of(item)))
    return module, plan, item, data, blend_profiles(plan, torch.device("cpu"))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_block_on_streams_equals_the_block_one_tile_at_a_time(
    tmp_path, make_model, ome_tiff, precision
) -> None:
    """Each tile computed on one thread either way; the streams' results blended in the
    tiles' order; autocast entered on the threads that run the model."""
    module, plan, item, data, weights = _block(tmp_path, make_model, ome_tiff)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone, tiles = predict_block(module, plan, item, data, 2, weights, precision=precision)
        full, _ = predict_block(module, plan, item, data, 2, weights)
    finally:
        torch.set_num_threads(threads)
    streamed, streamed_tiles = predict_block(
        module, plan, item, data, 2, weights, streams=Streams(3, threads=1), precision=precision
    )
    assert tiles == streamed_tiles > 6
    assert torch.equal(streamed, alone)
    if precision != "float32":  # premise: the precision shows in the output
        assert not torch.equal(alone, full)


@pytest.mark.usefixtures("ray_session")
def test_cpu_runs_take_a_tile_per_thread_and_say_so(tmp_path, make_model, ome_tiff) -> None:
    """The test session's Ray has 2 CPUs: one 2-thread predictor running 2 tiles at once,
    or with ``streams=1`` one tile at a time on both threads; the same output either way
    (float rounding apart)."""
    from raysegment.infer import infer

    image = ome_tiff(random_image((300, 420)))
    model_path, _ = make_model(out_ch=2)
    got = {}
    for streams in (None, 1):
        out = tmp_path / f"out{streams}"
        summary = infer(
            input=str(image),
            model=str(model_path),
            output=str(out),
            chunks=[128],
            tile={"size": [64]},
            streams=streams,
            progress=False,
            quicklook=False,
            finalize={"mode": "raw"},
        )
        assert ("[2 tiles at once]" in summary.devices[0]) is (streams is None)
        got[streams] = zarr.open_array(str(out / f"{image.name.split('.')[0]}.ome.zarr" / "0"))[:]
    np.testing.assert_allclose(got[None], got[1], rtol=1e-5, atol=1e-6)


def test_cpu_forwards_take_one_tile_however_much_memory_is_free(monkeypatch) -> None:
    """More tiles a forward ran no faster on CPUs and held their activations several
    times over: a CPU batch is one tile, each stream's own."""
    import psutil

    from raysegment.infer.predictor import auto_batch_size

    free = type("Free", (), {"available": 1 << 40})
    monkeypatch.setattr(psutil, "virtual_memory", lambda: free)
    cpu = torch.device("cpu")
    for streams in (1, 2, 8):
        assert auto_batch_size(torch.nn.Identity(), (1, 256, 256), cpu, streams) == 1
