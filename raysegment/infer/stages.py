"""Reading and writing a block (``read_row``, ``write_row``: the read and write tasks of a
GPU run, a CPU predictor's own steps) and the rows they pass on.

Each row is one block; rows carry their coordinates, so order never matters. This module
does not import torch: the read and write worker processes stay small and start fast
(``predictor.py`` holds the model stage).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raysegment import errors
from raysegment.data.tiling import Block
from raysegment.errors import BlockFailedError, InputImageError, RaySegmentError
from raysegment.infer.attempts import Attempts, begin_attempt
from raysegment.infer.plan import ImagePlan, WorkItem
from raysegment.infer.pyramid import downsample, level_index
from raysegment.infer.quicklook import preview
from raysegment.infer.writer import RESUMES, mark_done, write_block
from raysegment.storage import storage_error

__all__ = [
    "Batch",
    "HEAP_SLACK",
    "decode_error",
    "encode_error",
    "free_heap",
    "normalization",
    "normalized",
    "passthrough",
    "placeholder",
    "read_row",
    "read_stage",
    "refusal",
    "returns_excess_memory",
    "returns_free_memory",
    "row_item",
    "write_row",
    "write_stage",
]

Batch = dict[str, np.ndarray]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, where the C library has one."""
    return getattr(_libc(), "malloc_trim", None)


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33 and later): the heap's figures in bytes."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    info = getattr(_libc(), "mallinfo2", None)
    if info is not None:
        info.restype = _MallInfo2
    return info


def free_heap() -> int | None:
    """Bytes free in this process's malloc arenas (glibc's ``mallinfo2``); None where the C
    library does not say."""
    info = _mallinfo2()
    return None if info is None else int(info().fordblks)


def _trims_after(stage: Callable[..., Batch], when: Callable[[], bool]) -> Callable[..., Batch]:
    """``stage``, then ``malloc_trim`` where the C library has it and ``when()`` says so."""

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Batch:
        try:
            return stage(*args, **kwargs)
        finally:
            trim = _malloc_trim()
            if trim is not None and when():
                trim(0)

    return run


def returns_free_memory(stage: Callable[..., Batch]) -> Callable[..., Batch]:
    """Run ``stage``, then hand the memory it freed back to the OS (``malloc_trim``).

    A process otherwise keeps, in the malloc arenas of its threads, the heap that decoders
    and codecs grew and freed. Eight 4096^2 uint8 blocks written in one process: 76-79
    MiB of anonymous memory after them, 64-68 MiB with the trim; eight 4608^2 uint16
    OME-TIFF reads: 80-84 vs 74-75 MiB (``python benchmarks/memory.py --stages SLIDE``,
    three runs). A few MiB per task worker, on a node that runs dozens of them.
    """
    return _trims_after(stage, lambda: True)


HEAP_SLACK = 1.25
"""``returns_excess_memory``: how much more free heap than after the first block since the
last trim a process keeps."""


def returns_excess_memory(stage: Callable[..., Batch]) -> Callable[..., Batch]:
    """Run ``stage``, one of the blocks a process runs back to back (a predictor's), then
    hand the freed heap back to the OS (``malloc_trim``) only once more of it is free than
    after the first block since the last trim, by ``HEAP_SLACK``.

    The next block takes the same buffers again: trimmed after every block, each block
    faulted its pages back in (cheap model, 32768^2, two predictors, three alternating
    rounds: 35.2 / 33.2 / 35.3 s trimmed after every block, 32.9 / 28.2 / 29.7 s this way;
    peak 2.56 -> 2.65-2.74 GiB; benchmarks/HISTORY.md). The slack bounds the holes freed
    blocks leave over a long run; a small block (an empty one, an edge) sets a small
    bound, which the next full block passes: it trims and sets the bound anew. Where the
    C library does not report its free heap, after every block (``returns_free_memory``).
    """
    since_trim: list[int] = []  # the free heap after the first block since the last trim

    def when() -> bool:
        free = free_heap()
        if free is None:
            return True
        if not since_trim:
            since_trim.append(free)
            return False
        if free > HEAP_SLACK * since_trim[0]:
            since_trim.clear()
            return True
        return False

    return _trims_after(stage, when)


def row_item(batch: Batch, i: int) -> WorkItem:
    return WorkItem(
        int(batch["image"][i]),
        int(batch["t"][i]),
        int(batch["z"][i]),
        tuple(int(v) for v in batch["index"][i]),
    )


_PREVIEW_KEYS = ("preview", "preview_at")


def passthrough(batch: Batch, i: int) -> Batch:
    keys = ("image", "t", "z", "index", "error", "empty", *_PREVIEW_KEYS)
    return {k: batch[k][i : i + 1] for k in keys if k in batch}


def _no_preview() -> Batch:
    return {"preview": np.zeros((1, 0, 0, 0), np.float32), "preview_at": np.array([[-1, -1]])}


def _preview_plane(plan: ImagePlan, item: WorkItem, block: Block) -> int | None:
    """The z plane of the quick-look (the middle one, at t=0) where ``block`` owns it and
    a quick-look is made, else None."""
    plane = plan.source.info.shape[2] // 2
    z_inner = plan.inner_region(item, block)[0]
    if not plan.preview or item.t != 0 or not z_inner[0] <= plane < z_inner[1]:
        return None
    return plane


def _preview(
    plan: ImagePlan,
    item: WorkItem,
    block: Block,
    region: tuple[tuple[int, int], ...],
    data: np.ndarray,
) -> Batch:
    """The block's quick-look pixels (``quicklook.preview``) as the row's columns: of its
    ``preview_channels``, in the middle z plane at t=0, where the block owns that plane
    (``data``: channels read from the (z, y, x) ``region``, those first)."""
    plane = _preview_plane(plan, item, block)
    if plane is None:
        return _no_preview()
    origin = (region[1][0], region[2][0])
    shown = data[: len(plan.preview_channels), plane - region[0][0]]
    at, thumb = preview(shown, origin, block.inner[-2:], plan.preview)
    return {"preview": thumb[None], "preview_at": np.array([at])}


EMPTY, OUTSIDE = 1, 2
"""The ``empty`` column of a block that did not run the model: its input was constant
(``skip_empty``), or it lies outside the mask; 0: it ran."""


def _no_mask() -> np.ndarray:
    """The ``mask`` column of a block inside the mask throughout, or of a run without."""
    return np.zeros((1, 0, 0, 0), np.bool_)


def _without_data(row: Batch, plan: ImagePlan, empty: int = 0, error: str = "") -> Batch:
    """``row`` as a block that keeps the fill value without the model (``empty``: why),
    or that failed (``error``)."""
    return row | {
        "data": placeholder(plan),
        "error": np.array([error]),
        "empty": np.array([empty], np.int8),
        "mask": _no_mask(),
    }


def _outside(batch: Batch, plan: ImagePlan, item: WorkItem, block: Block) -> Batch:
    """The row of a block outside the mask: of its input, only what the quick-look shows
    is read (its channels of one plane)."""
    row = passthrough(batch, 0) | _no_preview()
    plane = _preview_plane(plan, item, block)
    if plane is not None:
        region = ((plane, plane + 1), *block.inner[-2:])
        data = plan.source.read(item.t, plan.preview_channels, region)
        row |= _preview(plan, item, block, region, data)
    return _without_data(row, plan, OUTSIDE)


def _failed(batch: Batch, plan: ImagePlan, error: str) -> Batch:
    """A row carrying a user error down the pipeline instead of raising it: Ray wraps a
    raised exception and drops its type, and the driver must report it as one line."""
    return _without_data(passthrough(batch, 0) | _no_preview(), plan, error=error)


def placeholder(plan: ImagePlan) -> np.ndarray:
    """Stands in for block data that a row does not carry (error or empty block)."""
    return np.zeros((1,) * (plan.spatial_dims + 2), plan.layout.dtype)


def refusal(batch: Batch, plan: ImagePlan, stage: str, attempts: Attempts | None) -> str:
    """Record this attempt at the block in ``stage``; the encoded error once processes
    running it died ``max_attempts`` times, else ""."""
    if attempts is None:
        return ""
    item = row_item(batch, 0)
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
        f"{plan.source.where}: {finite.size - np.count_nonzero(finite)} NaN/Inf pixel(s) near "
        f"t={item.t}, {where}; replace them (e.g. numpy.nan_to_num) before segmenting, the "
        f"model would spread them over the tiles around"
    )


def read_row(
    batch: Batch, plans: Sequence[ImagePlan], attempts: Attempts | None, stage: str = "read"
) -> Batch:
    """This process's attempt at the block recorded (as ``stage``), then the block's source
    region read as stored (its dtype: half the bytes of float32 for uint16 through the
    object store); ``normalized`` makes the model's input of it. Run by the read stage, or
    by a CPU predictor for its own blocks."""
    item = row_item(batch, 0)
    plan = plans[item.image]
    refused = refusal(batch, plan, stage, attempts)
    if refused:
        return _failed(batch, plan, refused)
    block = plan.block_of(item)
    mask = _no_mask()
    if not block.num_tiles:  # outside the tiles' window (an nnU-Net crop's box)
        return _outside(batch, plan, item, block)
    try:
        if plan.mask is not None:
            inner = plan.inner_region(item, block)
            native = plan.mask.read(item.t, inner)
            inside = plan.mask.expand(native, inner)
            if not inside.any():
                return _outside(batch, plan, item, block)
            if not inside.all():
                mask = native[None]  # the predictor expands it again: a few bytes to carry
        region = plan.source_region(item, block)
        data = plan.source.read(item.t, plan.channels, region)
    except RaySegmentError as e:  # e.g. a corrupt chunk met mid-run
        return _failed(batch, plan, encode_error(e))
    # One pass for both checks: NaN and Inf show in the extremes.
    floats = data.dtype.kind == "f"
    lo, hi = (data.min(), data.max()) if data.size and (floats or plan.skip_empty) else (0, 1)
    if floats and not (np.isfinite(lo) and np.isfinite(hi)):
        return _failed(batch, plan, encode_error(_nonfinite(plan, item, data, region)))
    row = passthrough(batch, 0) | _preview(plan, item, block, region, data)
    if plan.skip_empty and lo == hi:
        # Constant input (slide background, absent zarr chunks): no model, fill value.
        return _without_data(row, plan, EMPTY)
    if plan.spatial_dims == 2:
        data = data[:, 0]
    return row | {
        "data": data[None],
        "error": np.array([""]),
        "empty": np.array([0], np.int8),
        "mask": mask,
    }


@returns_free_memory
def read_stage(batch: Batch, plans: Sequence[ImagePlan], attempts: Attempts | None = None) -> Batch:
    """The read task (GPU runs): ``read_row``."""
    return read_row(batch, plans, attempts)


def normalization(plan: ImagePlan) -> tuple[np.ndarray, np.ndarray] | None:
    """The plan's normalization as float32 offsets and scales shaped (C, 1, ...) to
    broadcast over a block (C, *spatial); None without one."""
    if plan.norm is None:
        return None
    offset, scale = (
        np.asarray(v, np.float32).reshape(-1, *[1] * plan.spatial_dims) for v in plan.norm
    )
    return offset, scale


def clip_bounds(plan: ImagePlan) -> tuple[np.ndarray, np.ndarray] | None:
    """The bounds the normalized input is clipped to (``plan.clip``) as float32 lows and
    highs shaped (C, 1, ...), infinite for a channel not clipped; None without any."""
    if plan.clip is None:
        return None
    shape = (-1, *[1] * plan.spatial_dims)
    low, high = (np.asarray([c[k] for c in plan.clip], np.float32).reshape(shape) for k in (0, 1))
    return low, high


def normalized(data: np.ndarray, plan: ImagePlan, block: Block) -> np.ndarray:
    """A block as read (C, *spatial; any dtype) as the model's float32 input: normalized
    in one pass into a new array (and clipped, ``plan.clip``), and padded to whole tiles."""
    out = np.empty(data.shape, np.float32)
    norm = normalization(plan)
    if norm is None:
        out[...] = data
    else:
        offset, scale = norm
        np.subtract(data, offset, out=out, casting="unsafe")
        np.divide(out, scale, out=out)
    bounds = clip_bounds(plan)
    if bounds is not None:
        np.clip(out, *bounds, out=out)
    if any(p != (0, 0) for p in block.pad):
        out = np.pad(out, ((0, 0), *block.pad), mode=plan.padding)  # type: ignore[call-overload]
    return out


def write_row(batch: Batch, plans: Sequence[ImagePlan]) -> Batch:
    """Write a finalized block into its chunks, then mark it done: the row the driver
    receives (an error row passes on). Run by the write stage, or by a CPU predictor
    for its own blocks (its process's attempt at the block is recorded already)."""
    item = row_item(batch, 0)
    plan = plans[item.image]
    if batch["error"][0]:
        return _written(batch, tiles=0, seconds=0.0, pixels=0)
    block = plan.block_of(item)
    data: Any = batch["data"][0]
    index = plan.output_index(item, block)
    # Integer indices (t, or z for a 2D model) drop axes the block does not have. An empty
    # block writes the fill value: zarr stores no chunk for it (and drops a stale one).
    value = 0 if batch["empty"][0] else data.astype(plan.layout.dtype, copy=False)
    try:
        write_block(plan.output, index, value, plan.fingerprint)
        # The first pyramid levels from the block itself (the driver builds the rest).
        layout = plan.layout
        sliced = [a for a, i in zip(layout.axes, index, strict=True) if isinstance(i, slice)]
        halve = tuple(a in layout.pyramid_axes for a in sliced)
        for level in range(1, plan.block_levels + 1):
            value = downsample(value, halve) if isinstance(value, np.ndarray) else value
            at = level_index(index, layout.axes, layout.pyramid_axes, level)
            write_block(plan.output, at, value, plan.fingerprint, level)
        mark_done(plan.output, item.key)
    except OSError as e:  # a full disk, say: the block is not done, its rerun rewrites it
        error = storage_error(e, plan.output, plan.block_label(item), RESUMES)
        if error is None:
            raise
        return _written(batch | {"error": np.array([encode_error(error)])}, 0, 0.0, 0)
    pixels = int(np.prod([b - a for a, b in block.inner]))
    return _written(batch, int(batch["tiles"][0]), float(batch["seconds"][0]), pixels)


@returns_free_memory
def write_stage(
    batch: Batch, plans: Sequence[ImagePlan], attempts: Attempts | None = None
) -> Batch:
    """The write task (GPU runs): this process's attempt at the block recorded, then
    ``write_row``."""
    if not batch["error"][0]:
        refused = refusal(batch, plans[row_item(batch, 0).image], "write", attempts)
        batch = batch | {"error": np.array([refused])} if refused else batch
    return write_row(batch, plans)


def _written(batch: Batch, tiles: int, seconds: float, pixels: int) -> Batch:
    """The row the driver receives for a block (with its quick-look pixels)."""
    return {
        **{k: batch[k][:1] for k in _PREVIEW_KEYS if k in batch},
        "image": batch["image"][:1],
        "tiles": np.array([tiles]),
        "seconds": np.array([seconds]),
        "pixels": np.array([pixels]),
        "error": batch["error"][:1],
        "empty": batch["empty"][:1],
    }
