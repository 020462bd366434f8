"""The three Ray Data stages of inference: read (CPU task), predict (actor), write (CPU task).

Each row is one block; rows carry their coordinates, so order never matters.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from raysegment import errors
from raysegment.data.tiling import blend_weights_1d
from raysegment.errors import BlockFailedError, InputImageError, RaySegmentError
from raysegment.infer.attempts import Attempts, begin_attempt, device_label, pin_gpu
from raysegment.infer.finalize import FINALIZERS
from raysegment.infer.model import ModelFile, load_model
from raysegment.infer.plan import ImagePlan, WorkItem
from raysegment.infer.writer import mark_done, write_block

__all__ = ["Predictor", "read_stage", "write_stage", "predict_block", "auto_batch_size"]

Batch = dict[str, np.ndarray]


def _item(batch: Batch, i: int) -> WorkItem:
    return WorkItem(
        int(batch["image"][i]),
        int(batch["t"][i]),
        int(batch["z"][i]),
        tuple(int(v) for v in batch["index"][i]),
    )


def _passthrough(batch: Batch, i: int) -> Batch:
    keys = ("image", "t", "z", "index", "error", "empty")
    return {k: batch[k][i : i + 1] for k in keys if k in batch}


def _failed(batch: Batch, plan: ImagePlan, error: str) -> Batch:
    """A row carrying a user error down the pipeline instead of raising it: Ray wraps a
    raised exception and drops its type, and the driver must report it as one line."""
    return _passthrough(batch, 0) | {
        "data": _dummy(plan),
        "error": np.array([error]),
        "empty": np.array([False]),
    }


def _dummy(plan: ImagePlan) -> np.ndarray:
    """Stands in for block data that a row does not carry (error or empty block)."""
    return np.zeros((1,) * (plan.spatial_dims + 2), plan.layout.dtype)


def _refusal(batch: Batch, plan: ImagePlan, stage: str, attempts: Attempts | None) -> str:
    """Record this attempt at the block in ``stage``; the encoded error once processes
    running it died ``max_attempts`` times, else ""."""
    if attempts is None:
        return ""
    item = _item(batch, 0)
    reason = begin_attempt(attempts, stage, f"{item.image}/{item.key}")  # keys repeat per image
    if reason is None:
        return ""
    return encode_error(BlockFailedError(f"{plan.describe(item)}: {reason}"))


def encode_error(error: RaySegmentError) -> str:
    return f"{type(error).__name__}\t{error}"


def decode_error(text: str) -> RaySegmentError:
    name, _, message = text.partition("\t")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, RaySegmentError)):
        cls = RaySegmentError
    return cls(message)


def _nonfinite(
    plan: ImagePlan, item: WorkItem, data: np.ndarray, region: tuple[tuple[int, int], ...]
) -> InputImageError:
    """The error for NaN/Inf pixels in ``data`` (C, Z, Y, X), read from ``region``."""
    finite = np.isfinite(data)
    _, *first = (int(v) for v in np.argwhere(~finite)[0])
    where = ", ".join(
        f"{axis}={lo + i}" for axis, (lo, _), i in zip("zyx", region, first, strict=True)
    )
    return InputImageError(
        f"{plan.source.path}: {finite.size - np.count_nonzero(finite)} NaN/Inf pixel(s) near "
        f"t={item.t}, {where}; replace them (e.g. numpy.nan_to_num) before segmenting, the "
        f"model would spread them over the tiles around"
    )


def read_stage(batch: Batch, plans: Sequence[ImagePlan], attempts: Attempts | None = None) -> Batch:
    """Read a block's source region, normalize it to float32 and pad it to whole tiles."""
    item = _item(batch, 0)
    plan = plans[item.image]
    refused = _refusal(batch, plan, "read", attempts)
    if refused:
        return _failed(batch, plan, refused)
    block = plan.block_of(item)
    try:
        region = plan.source_region(item, block)
        data = plan.source.read(item.t, plan.channels, region)
    except RaySegmentError as e:  # e.g. a corrupt chunk met mid-run
        return _failed(batch, plan, encode_error(e))
    # One pass for both checks: NaN and Inf show in the extremes.
    floats = data.dtype.kind == "f"
    lo, hi = (data.min(), data.max()) if data.size and (floats or plan.skip_empty) else (0, 1)
    if floats and not (np.isfinite(lo) and np.isfinite(hi)):
        return _failed(batch, plan, encode_error(_nonfinite(plan, item, data, region)))
    if plan.skip_empty and lo == hi:
        # Constant input (slide background, absent zarr chunks): no model, fill value.
        return _passthrough(batch, 0) | {
            "data": _dummy(plan),
            "error": np.array([""]),
            "empty": np.array([True]),
        }
    data = data.astype(np.float32, copy=False)
    if plan.spatial_dims == 2:
        data = data[:, 0]
    if plan.norm is not None:
        offset, scale = (
            np.asarray(v, np.float32).reshape(-1, *[1] * plan.spatial_dims) for v in plan.norm
        )
        data = (data - offset) / scale
    if any(p != (0, 0) for p in block.pad):
        data = np.pad(data, ((0, 0), *block.pad), mode=plan.padding)  # type: ignore[call-overload]
    return _passthrough(batch, 0) | {
        "data": data[None],
        "error": np.array([""]),
        "empty": np.array([False]),
    }


def auto_batch_size(
    module: torch.nn.Module, tile_shape: tuple[int, ...], device: torch.device
) -> int:
    """Tiles per forward from free memory: measured on GPU, estimated on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            module(torch.zeros((1, *tile_shape), device=device))
        per_tile = max(torch.cuda.max_memory_allocated(device) - base, 1)
        free, _ = torch.cuda.mem_get_info(device)
        return int(np.clip(0.5 * free // per_tile, 1, 64))
    import psutil

    # On CPU larger batches barely speed up; stay small, and within a quarter of free RAM
    # assuming activations of ~64 float32 values per input value.
    per_tile = 64 * 4 * int(np.prod(tile_shape))
    return int(np.clip(psutil.virtual_memory().available // 4 // per_tile, 1, 4))


def forward(module: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Logits for a batch of tiles. With ``tta``, the mean over every combination of flips
    of the spatial axes (4 in 2D, 8 in 3D), each flip undone on its output."""
    spatial = range(2, x.ndim)
    combos = (
        [()]
        if not tta
        else [axes for r in range(len(spatial) + 1) for axes in itertools.combinations(spatial, r)]
    )
    total: torch.Tensor | None = None
    with torch.inference_mode():
        for axes in combos:
            y = module(torch.flip(x, axes) if axes else x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            y = torch.flip(y.float(), axes) if axes else y.float()
            total = y if total is None else total + y
    assert total is not None
    return total / len(combos)


def predict_block(
    module: torch.nn.Module,
    plan: ImagePlan,
    item: WorkItem,
    data: torch.Tensor,
    batch_size: int,
    weights: Sequence[torch.Tensor],
    fixed_batch: bool = False,
    tta: bool = False,
) -> tuple[torch.Tensor, int]:
    """Run every tile of the block and blend them over the block's own region.

    ``data`` is the padded source region (C_in, *outer); ``weights[axis][i]`` the 1D
    blending profile of grid tile ``i``; ``fixed_batch``: the model takes exactly
    ``batch_size`` tiles (a torch.export program with a static batch), so the last batch
    is filled up with zero tiles; ``tta``: average the logits over flips (see ``forward``).
    Returns the blended raw output (C_out, *inner) and the number of tiles run.
    """
    block = plan.block_of(item)
    tile = plan.tiling.tile
    inner = [(a - o, b - o) for (a, b), (o, _) in zip(block.inner, block.outer, strict=False)]
    origins = list(block.tile_origins(plan.tiling))
    num: torch.Tensor | None = None
    den = torch.zeros([b - a for a, b in inner], device=data.device)
    for first in range(0, len(origins), batch_size):
        chunk = origins[first : first + batch_size]
        x = torch.stack(
            [
                data[(slice(None), *(slice(s, s + t) for s, t in zip(start, tile, strict=False)))]
                for _, start in chunk
            ]
        )
        if fixed_batch and len(chunk) < batch_size:
            x = torch.cat([x, x.new_zeros((batch_size - len(chunk), *x.shape[1:]))])
        y = forward(module, x, tta)
        if num is None:
            num = torch.zeros((y.shape[1], *den.shape), device=data.device)
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
            num[(slice(None), *dst)] += pred[(slice(None), *src)] * w
            den[tuple(dst)] += w
    assert num is not None
    if bool((den == 0).any()):
        raise RuntimeError(f"block {item} has pixels no tile covers: tiling bug")
    return num / den, len(origins)


class Predictor:
    """Actor: holds the model on its device; turns read blocks into finalized blocks."""

    def __init__(
        self,
        model: list[Any],
        plans: list[Any],
        use_gpu: bool,
        batch_size: int | None,
        static_batch: int | None,
        threads: int,
        finalize: tuple[str, str, float],
        tta: bool = False,
        attempts: Attempts | None = None,
        gpu_indices: tuple[int, ...] | None = None,
        precision: str = "float32",
        channels_last: bool = False,
    ) -> None:
        self.threads = threads
        gpu = pin_gpu(attempts, gpu_indices) if attempts and gpu_indices else None
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        # Model and plans arrive as [ObjectRef]: put once by the driver, fetched by each
        # actor (a bare ref would be resolved into a large constructor argument).
        import ray

        program: ModelFile = ray.get(model[0])
        self.plans: Sequence[ImagePlan] = ray.get(plans[0])
        self.module = load_model(program, self.device)
        if channels_last:
            dims = len(self.plans[0].tiling.tile)
            layout = torch.channels_last if dims == 2 else torch.channels_last_3d
            self.module = self.module.to(memory_format=layout)
        # Matmuls and convolutions in bfloat16/float16 where the device supports them;
        # blending, finalizing and everything written stay float32.
        self.autocast = (
            torch.autocast(self.device.type, dtype=getattr(torch, precision))
            if precision != "float32"
            else contextlib.nullcontext()
        )
        self.finalize = finalize
        self.tta = tta
        self.attempts = attempts
        if attempts is not None:
            attempts.ledger.register.remote(attempts.run, device_label(gpu))
        first = self.plans[0]
        tile_shape = (len(first.channels), *first.tiling.tile)
        self.fixed_batch = static_batch is not None
        self.batch_size = (
            static_batch or batch_size or auto_batch_size(self.module, tile_shape, self.device)
        )
        self._weights: dict[int, list[torch.Tensor]] = {}

    def weights(self, plan: ImagePlan) -> list[torch.Tensor]:
        if plan.id not in self._weights:
            self._weights[plan.id] = [
                torch.from_numpy(
                    np.stack(
                        [
                            blend_weights_1d(axis, i, plan.tiling.blend)
                            for i in range(len(axis.starts))
                        ]
                    )
                ).to(self.device)
                for axis in plan.tiling.axes
            ]
        return self._weights[plan.id]

    def __call__(self, batch: Batch) -> Batch:
        # Ray Data calls this from its own thread, and Ray sets OMP_NUM_THREADS from the
        # CPUs the actor reserves: set torch's threads in the thread that runs the model
        # (set in __init__ only, a 2-thread actor ran at 1.3 threads' speed).
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        item = _item(batch, 0)
        plan = self.plans[item.image]
        if not (batch["error"][0] or batch["empty"][0]):
            refused = _refusal(batch, plan, "predictor", self.attempts)
            batch = batch | {"error": np.array([refused])} if refused else batch
        if batch["error"][0] or batch["empty"][0]:
            return _passthrough(batch, 0) | {
                "data": _dummy(plan),
                "tiles": np.array([0]),
                "seconds": np.array([0.0]),
            }
        start = time.perf_counter()
        data = torch.from_numpy(np.require(batch["data"][0], requirements=["C", "W"])).to(
            self.device
        )
        with self.autocast:
            blended, tiles = predict_block(
                self.module,
                plan,
                item,
                data,
                self.batch_size,
                self.weights(plan),
                self.fixed_batch,
                self.tta,
            )
        mode, activation, threshold = self.finalize
        out = FINALIZERS.get(mode)(blended, activation, threshold).cpu().numpy()
        return _passthrough(batch, 0) | {
            "data": out[None],
            "tiles": np.array([tiles]),
            "seconds": np.array([time.perf_counter() - start]),
        }


def write_stage(
    batch: Batch, plans: Sequence[ImagePlan], attempts: Attempts | None = None
) -> Batch:
    """Write a finalized block into its chunks, then mark it done."""
    item = _item(batch, 0)
    plan = plans[item.image]
    if not batch["error"][0]:
        refused = _refusal(batch, plan, "write", attempts)
        batch = batch | {"error": np.array([refused])} if refused else batch
    if batch["error"][0]:
        return _written(batch, tiles=0, seconds=0.0, pixels=0)
    block = plan.block_of(item)
    data: Any = batch["data"][0]
    index = plan.output_index(item, block)
    # Integer indices (t, or z for a 2D model) drop axes the block does not have. An empty
    # block writes the fill value: zarr stores no chunk for it (and drops a stale one).
    value = 0 if batch["empty"][0] else data.astype(plan.layout.dtype, copy=False)
    write_block(plan.output, index, value, plan.fingerprint)
    mark_done(plan.output, item.key)
    pixels = int(np.prod([b - a for a, b in block.inner]))
    return _written(batch, int(batch["tiles"][0]), float(batch["seconds"][0]), pixels)


def _written(batch: Batch, tiles: int, seconds: float, pixels: int) -> Batch:
    """The row the driver receives for a block."""
    return {
        "image": batch["image"][:1],
        "tiles": np.array([tiles]),
        "seconds": np.array([seconds]),
        "pixels": np.array([pixels]),
        "error": batch["error"][:1],
        "empty": batch["empty"][:1],
    }
