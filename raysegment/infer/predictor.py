"""The model stage of inference: predictor actors run every tile of a block on their
device and blend the tiles into the block."""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from raysegment.compute import autocast, choose_layout, forward, slow_precision
from raysegment.data.tiling import Block, Tiling, blend_weights_1d
from raysegment.infer.attempts import Attempts, device_label, pin_gpu, register_device
from raysegment.infer.finalize import FINALIZERS
from raysegment.infer.model import ModelFile, load_model
from raysegment.infer.plan import ImagePlan, WorkItem
from raysegment.infer.stages import (
    Batch,
    clip_bounds,
    normalization,
    normalized,
    passthrough,
    placeholder,
    read_row,
    refusal,
    returns_excess_memory,
    row_item,
    write_row,
)

__all__ = [
    "Predictor",
    "Streams",
    "auto_batch_size",
    "blend_profiles",
    "device_input",
    "freeze",
    "predict_block",
]


def auto_batch_size(
    module: torch.nn.Module, tile_shape: tuple[int, ...], device: torch.device, streams: int = 1
) -> int:
    """Tiles per forward: on a GPU from its free memory, measured; on a CPU one (each of
    ``streams`` forward passes runs its own tile). Batches of more tiles ran no faster on
    CPUs and took their activations' memory several times over: an nnU-Net 3D network's
    64 x 128^2 tiles, two streams, 43.8 s at a peak of 7.1 GiB with four tiles a forward
    against 41.4 s at 3.2 GiB with one; an SMP Unet's 512^2 tiles 24.1-24.9 s at 3.0 GiB
    against 24.5-25.1 s at 2.1-2.2 GiB (benchmarks/HISTORY.md, session 48)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            module(torch.zeros((1, *tile_shape), device=device))
        per_tile = max(torch.cuda.max_memory_allocated(device) - base, 1)
        free, _ = torch.cuda.mem_get_info(device)
        return int(np.clip(0.5 * free // per_tile, 1, 64))
    return 1


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` as inference runs it: a TorchScript module in eval mode frozen
    (``torch.jit.freeze``: weights become constants, batch norms fold into the convolutions
    before them, dropout goes); anything else as it is.

    Call after ``choose_layout``: the folded weights keep the layout it chose. Outputs move
    by float rounding (1e-5 of the largest logit of an SMP Unet); a CPU Unet forward ran
    2-24% faster here, 8 of 8 cases (``python benchmarks/forward.py``, two runs).
    """
    if not isinstance(module, torch.jit.ScriptModule) or module.training:
        return module
    try:
        with warnings.catch_warnings():
            # Deprecated with TorchScript itself; TorchScript models are read on purpose.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.freeze(module)
    except RuntimeError:  # a module TorchScript cannot freeze (e.g. mutates attributes)
        return module


T = TypeVar("T")
R = TypeVar("R")


class Streams:
    """Threads that each run forward passes with ``threads`` torch threads of their own:
    a CPU predictor with several cores runs that many tiles at once, one core each,
    rather than one tile at a time over all of them. The intra-op threads of one forward
    wait for each other at every operator; here, with 2 cores, two one-thread streams ran
    a Unet's 512^2 tiles 1.04-1.3x faster than one two-thread loop (six pairs;
    benchmarks/HISTORY.md).
    """

    def __init__(self, count: int, threads: int = 1) -> None:
        self.count = count
        self._pool = (
            ThreadPoolExecutor(
                count,
                thread_name_prefix="raysegment-stream",
                initializer=torch.set_num_threads,
                initargs=(threads,),
            )
            if count > 1
            else None
        )

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]:
        """``(item, fn(item))`` in the items' order, with up to twice ``count`` of them
        running or done ahead of the one the caller takes (so that no stream waits while
        the caller blends a result): the blend adds them up in the same order whatever
        stream finishes first, and the output is the same bit for bit from run to run."""
        if self._pool is None:
            for item in items:
                yield item, fn(item)
            return
        ahead: deque[tuple[T, Future[R]]] = deque()
        try:
            for item in items:
                ahead.append((item, self._pool.submit(fn, item)))
                if len(ahead) >= 2 * self.count:
                    first, done = ahead.popleft()
                    yield first, done.result()
            while ahead:
                first, done = ahead.popleft()
                yield first, done.result()
        finally:
            for _, future in ahead:
                future.cancel()


_ON_DEVICE = frozenset(
    np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "float16", "float32")
)
"""Pixel types a block crosses to the device in as read: their float32 values are exact,
and numpy computes ``normalized`` on them in float32 as torch does."""


def device_input(
    data: np.ndarray, plan: ImagePlan, block: Block, device: torch.device
) -> torch.Tensor:
    """``normalized`` of a block as read (C, *spatial), made on ``device``: the block
    crosses as read (16-bit pixels in half the bytes of float32 ones) and is converted,
    normalized and padded there, off the one thread that feeds a GPU (on the host, numpy
    took 24 ms per 4608^2 uint16 block, 46 ms padded at an image edge, 240 ms for a
    block's fresh pages, then the copy moved twice the bytes). The same float32 values as
    ``normalized``: the same operations in the same order. Other pixel types, and
    ``reflect`` / ``edge`` padding, go through ``normalized``."""
    padded = any(p != (0, 0) for p in block.pad)
    if data.dtype not in _ON_DEVICE or (padded and plan.padding != "constant"):
        return torch.from_numpy(normalized(data, plan, block)).to(device)
    with warnings.catch_warnings():
        # A block from Ray's object store is read-only; nothing here writes to it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        # torch's uint16 lacks most operations: its bits cross as int16.
        raw = torch.from_numpy(data.view(np.int16) if data.dtype == np.uint16 else data)
    x = raw.to(device)
    if data.dtype == np.uint16:
        x = x.to(torch.int32).bitwise_and_(0xFFFF)
    x = x.to(torch.float32)
    norm = normalization(plan)
    if norm is not None:
        offset, scale = (torch.from_numpy(v).to(device) for v in norm)
        x = (x - offset).div_(scale)
    bounds = clip_bounds(plan)
    if bounds is not None:  # not in place: without a normalization x may be the block
        x = x.clamp(*(torch.from_numpy(b).to(device) for b in bounds))
    if padded:  # zeros beyond the image (constant padding)
        sizes = list(zip(x.shape[1:], block.pad, strict=True))
        out = x.new_zeros((x.shape[0], *(n + lo + hi for n, (lo, hi) in sizes)))
        out[(slice(None), *(slice(lo, lo + n) for n, (lo, _) in sizes))] = x
        x = out
    return x


def predict_block(
    module: torch.nn.Module,
    plan: ImagePlan,
    item: WorkItem,
    data: torch.Tensor,
    batch_size: int,
    weights: Sequence[torch.Tensor],
    fixed_batch: bool = False,
    flips: Sequence[int] = (),
    streams: Streams | None = None,
    precision: str = "float32",
    inside: np.ndarray | None = None,
) -> tuple[torch.Tensor, int]:
    """Run every tile of the block and blend them over the block's own region.

    ``data`` is the padded source region (C_in, *outer); ``weights[axis][i]`` the 1D
    blending profile of grid tile ``i``; ``fixed_batch``: the model takes exactly
    ``batch_size`` tiles (a torch.export program with a static batch), so the last batch
    is filled up with zero tiles; ``flips``: average the logits over flips of these spatial
    axes (test-time augmentation, see ``forward``);
    ``streams``: run the batches on those threads, several at once; ``precision``: autocast
    the forward passes to it; ``inside``: the pixels of the block's own region (a mask's)
    whose values count, tiles that touch none of them not run (the others' sums of weights
    miss theirs: only for pixels not inside). Returns the blended raw output
    (C_out, *inner) and the number of tiles run.
    """
    block = plan.block_of(item)
    tile = plan.tiling.tile
    inner = [(a - o, b - o) for (a, b), o in zip(block.inner, block.origin, strict=False)]
    origins = list(block.tile_origins(plan.tiling))
    if inside is not None:
        origins = [o for o in origins if _touches(inside, o[1], tile, inner)]

    def batches() -> Iterator[tuple[list[Any], torch.Tensor]]:
        for first in range(0, len(origins), batch_size):
            chunk = origins[first : first + batch_size]
            x = torch.stack(
                [
                    data[
                        (slice(None), *(slice(s, s + t) for s, t in zip(start, tile, strict=False)))
                    ]
                    for _, start in chunk
                ]
            )
            if fixed_batch and len(chunk) < batch_size:
                x = torch.cat([x, x.new_zeros((batch_size - len(chunk), *x.shape[1:]))])
            yield chunk, x

    def run(x: torch.Tensor) -> torch.Tensor:
        # Autocast is per thread: entered on the thread that runs the model.
        with autocast(data.device, precision):
            return forward(module, x, flips)

    num: torch.Tensor | None = None
    for (chunk, _), y in (streams or Streams(1)).map(lambda b: run(b[1]), batches()):
        if num is None:
            num = torch.zeros((y.shape[1], *(b - a for a, b in inner)), device=data.device)
        for (grid, start), pred in zip(chunk, y, strict=False):
            src, dst = [], []
            for s, t, (a, b) in zip(start, tile, inner, strict=False):
                lo, hi = max(s, a), min(s + t, b)
                src.append(slice(lo - s, hi - s))
                dst.append(slice(lo - a, hi - a))
            if any(sl.start >= sl.stop for sl in src):
                continue
            w = weights[0][grid[0]][src[0]]
            for axis in range(1, len(tile)):
                w = w.unsqueeze(-1) * weights[axis][grid[axis]][src[axis]]
            num[(slice(None), *dst)].addcmul_(pred[(slice(None), *src)], w)
    assert num is not None
    # A tile's weight is the outer product of its axes' profiles and the block runs every
    # combination of its per-axis tiles, so the sum of weights is the outer product of the
    # per-axis sums: divide by each axis' sum instead of accumulating a full-size sum.
    for axis, total in enumerate(_weight_sums(block, plan.tiling, weights, inner, item)):
        shape = [1] * num.ndim
        shape[axis + 1] = -1
        num.div_(total.reshape(shape))
    return num, len(origins)


def _touches(
    inside: np.ndarray,
    start: tuple[int, ...],
    tile: tuple[int, ...],
    inner: Sequence[tuple[int, int]],
) -> bool:
    """Whether the tile at ``start`` (in the block's read region) covers a pixel of
    ``inside`` (over the block's own region, from ``inner[axis][0]``)."""
    index = tuple(
        slice(max(s, a) - a, max(min(s + t, b), a) - a)
        for s, t, (a, b) in zip(start, tile, inner, strict=True)
    )
    return bool(inside[index].any())


def blend_profiles(plan: ImagePlan, device: torch.device) -> list[torch.Tensor]:
    """Per axis, the 1D blending profiles of the image's grid tiles (``predict_block``'s
    ``weights``)."""
    return [
        torch.from_numpy(
            np.stack(
                [blend_weights_1d(axis, i, plan.tiling.blend) for i in range(len(axis.starts))]
            )
        ).to(device)
        for axis in plan.tiling.axes
    ]


def _weight_sums(
    block: Block,
    tiling: Tiling,
    weights: Sequence[torch.Tensor],
    inner: Sequence[tuple[int, int]],
    item: WorkItem,
) -> list[torch.Tensor]:
    """Per axis, the sum of the block's tile profiles over its own region (relative to
    the padded source region, ``Block.origin``)."""
    totals = []
    for axis, (ax, tiles, o, (a, b)) in enumerate(
        zip(tiling.axes, block.tiles, block.origin, inner, strict=False)
    ):
        total = torch.zeros(b - a, device=weights[axis].device)
        for i in tiles:
            s = ax.starts[i] - o
            lo, hi = max(s, a), min(s + ax.tile, b)
            if lo < hi:
                total[lo - a : hi - a] += weights[axis][i][lo - s : hi - s]
        first, last = (e - o for e in ax.ends)  # outside the tiles' window: no output
        outside = torch.ones_like(total, dtype=torch.bool)
        outside[max(first - a, 0) : max(last - a, 0)] = False
        if bool(((total == 0) & ~outside).any()):
            raise RuntimeError(f"block {item} has pixels no tile covers: tiling bug")
        totals.append(torch.where(outside, torch.ones_like(total), total))
    return totals


class Ensemble(torch.nn.Module):
    """Models whose logits are averaged, tile by tile (as nnU-Net ensembles its folds)."""

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for member in self.members:
            y = member(x)
            y = (y[0] if isinstance(y, (tuple, list)) else y).float()
            total = y if total is None else total + y
        assert total is not None
        return total / len(self.members)


class Predictor:
    """Actor: holds the model on its device; turns read blocks into finalized blocks, or
    with ``reads`` and ``writes`` (CPU runs), reads its blocks and writes what it made of
    them."""

    def __init__(
        self,
        models: list[Any],
        plans: list[Any],
        use_gpu: bool,
        batch_size: int | None,
        static_batch: int | None,
        threads: int,
        finalize: tuple[str, str, float, tuple[int, ...]],
        flips: Sequence[int] = (),
        attempts: Attempts | None = None,
        gpu_indices: tuple[int, ...] | None = None,
        precision: str = "float32",
        layout: str = "auto",
        reads: bool = False,
        writes: bool = False,
        streams: int = 1,
    ) -> None:
        self.reads = reads
        self.writes = writes
        gpu = pin_gpu(attempts, gpu_indices) if attempts and gpu_indices else None
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        # Models and plans arrive as [ObjectRef]: put once by the driver, fetched by each
        # actor (a bare ref would be resolved into a large constructor argument).
        import ray

        programs: tuple[ModelFile, ...] = ray.get(models[0])
        self.plans: Sequence[ImagePlan] = ray.get(plans[0])
        members = [load_model(program, self.device) for program in programs]
        # Matmuls and convolutions in bfloat16/float16 where the device supports them;
        # blending, finalizing and everything written stay float32.
        self.precision = precision
        # On CPU the actor's threads run ``streams`` tiles at once; every thread that runs
        # torch here (the streams', Ray Data's) takes its share of the threads.
        streams = streams if self.device.type == "cpu" else 1
        self.threads = max(1, threads // streams)
        self.streams = Streams(streams, self.threads)
        # The largest of the images' tiles (an image shorter than the tile has a smaller
        # one) sizes the batches and checks the layout.
        tile_shape = max(
            ((len(p.channels), *p.tiling.tile) for p in self.plans), key=lambda s: math.prod(s)
        )
        # The layout check runs on the one thread Ray's OMP_NUM_THREADS leaves this thread:
        # with the actor's threads set here too it took 0.25 s less, but every tile after
        # ran slower on Ray Data's thread (4096^2 Unet bfloat16 on 2 cores, 3 alternating
        # pairs: 28.3 vs 34.7 s).
        layouts = {
            choose_layout(member, tile_shape, self.device, layout, precision, static_batch or 1)
            for member in members
        }
        self.layout = layouts.pop() if len(layouts) == 1 else "mixed"
        members = [freeze(member) for member in members]
        self.module = members[0] if len(members) == 1 else Ensemble(members)
        self.finalize = finalize
        self.flips = tuple(flips)
        self.attempts = attempts
        notes = [" [channels-last]"] if self.layout == "channels_last" else []
        if len(members) > 1:
            notes.append(f" [ensemble of {len(members)}]")
        if streams > 1:
            notes.append(f" [{streams} tiles at once]")
        if slow_precision(self.device, precision):
            notes.append(f" [{precision} without fast kernels: slower than float32]")
            print(
                f"raysegment: precision={precision}: this CPU has no fast {precision} "
                f"kernels (oneDNN's); float32 runs faster here: precision=float32",
                file=sys.stderr,
                flush=True,
            )
        self.notes = "".join(notes)
        if attempts is not None:
            register_device(attempts, device_label(gpu) + self.notes)
        self.fixed_batch = static_batch is not None
        self.batch_size = (
            static_batch
            or batch_size
            or auto_batch_size(self.module, tile_shape, self.device, self.streams.count)
        )
        self._weights: dict[int, list[torch.Tensor]] = {}

    def weights(self, plan: ImagePlan) -> list[torch.Tensor]:
        if plan.id not in self._weights:
            self._weights[plan.id] = blend_profiles(plan, self.device)
        return self._weights[plan.id]

    # The model processes' malloc keeps freed heap (TORCH_WORKER_ENV: a forward reuses its
    # pages); the next block reuses what a block freed, and once the holes freed blocks
    # leave make that grow by a quarter, it goes back (``returns_excess_memory``). Never
    # handed back, two cheap-model predictors held 1.27-1.38 GiB of anonymous memory at
    # the peak of a 32768^2 run, against 1.09-1.13 at 8192^2 (benchmarks/HISTORY.md).
    @returns_excess_memory
    def __call__(self, batch: Batch) -> Batch:
        """The block (with ``reads``: read here first) predicted and finalized, or with
        ``writes``, written (the row the driver receives)."""
        if self.reads:
            # The attempt is recorded before the read: a read that kills the process counts.
            batch = read_row(batch, self.plans, self.attempts, "predictor")
        elif not (batch["error"][0] or batch["empty"][0]):
            plan = self.plans[row_item(batch, 0).image]
            refused = refusal(batch, plan, "predictor", self.attempts)
            batch = batch | {"error": np.array([refused])} if refused else batch
        predicted = self._predict(batch)
        return write_row(predicted, self.plans) if self.writes else predicted

    def _predict(self, batch: Batch) -> Batch:
        # Ray Data calls this from its own thread, and Ray sets OMP_NUM_THREADS from the
        # CPUs the actor reserves: set torch's threads in the thread that runs the model,
        # or with streams blends beside them (its share of the threads; set in __init__
        # only, a 2-thread actor ran at 1.3 threads' speed).
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        item = row_item(batch, 0)
        plan = self.plans[item.image]
        if batch["error"][0] or batch["empty"][0]:
            return passthrough(batch, 0) | {
                "data": placeholder(plan),
                "tiles": np.array([0]),
                "seconds": np.array([0.0]),
            }
        start = time.perf_counter()
        block = plan.block_of(item)
        inside = None  # where a mask covers the block in part: which pixels
        if plan.mask is not None and batch["mask"][0].size:
            inside = plan.mask.expand(batch["mask"][0], plan.inner_region(item, block))
            inside = inside[0] if plan.spatial_dims == 2 else inside
        if self.reads and self.device.type == "cpu":
            data = torch.from_numpy(normalized(batch["data"][0], plan, block))
        else:  # a GPU's: the block as read, made the model's input on the device
            data = device_input(batch["data"][0], plan, block, self.device)
        blended, tiles = predict_block(
            self.module,
            plan,
            item,
            data,
            self.batch_size,
            self.weights(plan),
            self.fixed_batch,
            self.flips,
            self.streams,
            self.precision,
            inside,
        )
        mode, activation, threshold, regions = self.finalize
        out = FINALIZERS.get(mode)(blended, activation, threshold, regions).cpu().numpy()
        if inside is not None:
            out[:, ~inside] = 0  # the fill value of the blocks outside
        return passthrough(batch, 0) | {
            "data": out[None],
            "tiles": np.array([tiles]),
            "seconds": np.array([time.perf_counter() - start]),
        }
