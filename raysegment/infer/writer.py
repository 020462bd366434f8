"""OME-Zarr (NGFF 0.5, zarr v3) output: create, write blocks, track done blocks, complete.

zarr has no locks: every block writes whole chunks that no other block touches, and a
block is marked done only after its chunks are written, so an interrupted run resumes by
recomputing at most the blocks that were in flight.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import itertools
import threading
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr
from zarr.core.sync import sync

from raysegment import storage
from raysegment.errors import OutputError
from raysegment.infer.pyramid import level_shape
from raysegment.storage import Location

__all__ = [
    "RESUMES",
    "OutputLayout",
    "OutputState",
    "complete_output",
    "create_labels",
    "create_output",
    "done_blocks",
    "inspect_output",
    "mark_done",
    "write_block",
]

_DONE = ".raysegment/done"

RESUMES = "it resumes from the blocks written"
"""What the same command does with an unfinished output (for messages)."""
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@dataclass(frozen=True)
class OutputLayout:
    """Shape and metadata of one output image."""

    axes: str
    """Subset of 'tczyx' in that order; always has c, y and x."""
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    units: dict[str, str]
    channel_names: tuple[str, ...]
    name: str
    levels: int = 1
    """Resolution levels: arrays 0 (full resolution) .. levels - 1."""
    pyramid_axes: str = "yx"
    """Axes each level halves (zyx for 3D models)."""
    block_levels: int = 0
    """Levels past the full resolution each block writes from its own output
    (``pyramid.block_levels``); the driver builds the others region by region."""
    shards: tuple[int, ...] | None = None
    """Full-resolution shard, a block's region: the levels the blocks write are stored a
    shard per block (the others chunk by chunk); None: every level chunk by chunk."""
    translation: tuple[float, ...] | None = None
    """Physical position of the first pixel per axis (the input's origin), written after
    the scale at every level; None: at 0."""


@dataclass(frozen=True)
class OutputState:
    exists: bool
    complete: bool = False
    fingerprint: str | None = None
    ours: bool = False


def inspect_output(path: Location) -> OutputState:
    path = str(path)
    if not storage.exists(path):
        return OutputState(False)
    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        return OutputState(True)
    meta = attrs.get("raysegment")
    if not isinstance(meta, dict):
        return OutputState(True)
    return OutputState(True, meta.get("status") == "complete", meta.get("fingerprint"), True)


def create_output(
    path: Location, layout: OutputLayout, provenance: dict[str, Any], replace: bool = False
) -> bool:
    """Create the group, the full-resolution array and its metadata, marked incomplete.

    Returns:
        False, creating nothing, when ``path`` exists (and ``replace`` is false): jobs that
        split one run (``num_parts``) race to create it, and exactly one wins.
    """
    path = str(path)
    try:
        if replace:
            storage.remove(path)
        if not storage.claim(path):  # atomic: exactly one creator
            return False
        # "a" into the location just claimed (empty but for an object store's claim
        # marker); "w" would clear the store, removing the claim and letting another part
        # claim it as well.
        group = zarr.open_group(path, mode="a", zarr_format=3)
    except OSError as e:
        raise OutputError(
            f"{path}: cannot create the output ({e}); check output= is writable"
        ) from e
    channels = [
        {
            "label": n,
            "active": True,
            "color": "FFFFFF",
            "window": _window(layout.dtype, len(layout.channel_names)),
        }
        for n in layout.channel_names
    ]
    ome = {
        "version": "0.5",
        "multiscales": [_multiscale(group, layout, sharded=True)],
        "omero": {"channels": channels, "rdefs": {"model": "greyscale"}},
    }
    attrs: Any = group.attrs
    attrs.update(
        {
            "ome": ome,
            "raysegment": provenance
            | {
                "status": "incomplete",
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            },
        }
    )
    return True


def _shards(
    layout: OutputLayout, level: int, shape: tuple[int, ...], chunks: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The shard of ``level`` (a block's region there), None where it is not sharded.
    Where a block spans an axis the shard ends at the last chunk: a multiple of it."""
    if layout.shards is None or level > layout.block_levels:
        return None
    return tuple(
        min(s // 2**level if a in layout.pyramid_axes else s, -(-n // c) * c)
        for a, s, n, c in zip(layout.axes, layout.shards, shape, chunks, strict=True)
    )


def _multiscale(group: Any, layout: OutputLayout, sharded: bool = False) -> dict[str, Any]:
    """Create the arrays of every level in ``group`` (``sharded``: as the layout says);
    returns their NGFF multiscale."""
    datasets = []
    for level in range(layout.levels):
        shape = level_shape(layout.shape, layout.axes, layout.pyramid_axes, level)
        chunks = tuple(min(c, n) for c, n in zip(layout.chunks, shape, strict=True))
        group.create_array(
            str(level),
            shape=shape,
            chunks=chunks,
            shards=_shards(layout, level, shape, chunks) if sharded else None,
            dtype=layout.dtype,
            fill_value=0,
            dimension_names=list(layout.axes),
            overwrite=True,
        )
        factor = [2**level if a in layout.pyramid_axes else 1 for a in layout.axes]
        scale = [s * f for s, f in zip(layout.scale, factor, strict=True)]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if layout.translation is not None:
            transforms.append({"type": "translation", "translation": list(layout.translation)})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    axes = []
    for a in layout.axes:
        axis: dict[str, str] = {"name": a, "type": _AXIS_TYPES[a]}
        if a in layout.units:
            axis["unit"] = layout.units[a]
        axes.append(axis)
    return {"name": layout.name, "axes": axes, "datasets": datasets}


def create_labels(path: Location, layout: OutputLayout) -> str:
    """(Re)create the labels image ``labels/<layout.name>`` of the output at ``path``
    (image-label metadata pointing at the output, listed in ``labels``); returns its
    location."""
    root = storage.join(str(path), "labels")
    labels = zarr.open_group(root, mode="a", zarr_format=3)
    names = list(cast(dict, labels.attrs.get("ome", {})).get("labels", []))
    if layout.name not in names:
        names.append(layout.name)
    labels.attrs["ome"] = {"version": "0.5", "labels": names}
    where = storage.join(root, layout.name)
    storage.remove(where)
    group = zarr.open_group(where, mode="a", zarr_format=3)
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [_multiscale(group, layout)],
        "image-label": {"version": "0.5", "source": {"image": "../../"}},
    }
    return where


def _window(dtype: str, channels: int) -> dict[str, float]:
    high = 1.0 if np.dtype(dtype).kind == "f" else float(max(channels, 1))
    return {"start": 0.0, "end": high, "min": 0.0, "max": high}


def done_blocks(path: Location) -> set[str]:
    return set(storage.listdir(storage.join(str(path), _DONE)))


def mark_done(path: Location, key: str) -> None:
    storage.touch(storage.join(str(path), _DONE, key))


_ARRAYS: dict[tuple[str, str, bool, int], Any] = {}
_ARRAYS_LOCK = threading.Lock()


def _array(path: str, version: str, write_empty_chunks: bool = False, level: int = 0) -> Any:
    """An output array (its resolution ``level``), opened once per worker process, output
    version (an output replaced with other settings at the same path is opened anew) and
    empty-chunk rule."""
    key = (path, version, write_empty_chunks, level)
    with _ARRAYS_LOCK:
        if key not in _ARRAYS:
            # An array takes its runtime config when opened (open_array ignores a config
            # argument, and Array.with_config is only in the newest zarr 3.1 releases).
            with zarr.config.set({"array.write_empty_chunks": write_empty_chunks}):
                _ARRAYS[key] = zarr.open_array(storage.join(path, str(level)), mode="r+")
        return _ARRAYS[key]


def write_block(
    path: Location,
    index: tuple[slice | int, ...],
    data: np.ndarray | int,
    version: str = "",
    level: int = 0,
) -> None:
    """Write ``data`` at ``index`` of resolution ``level``; the region must cover whole
    chunks (or end at the edge). ``version``: what identifies the output's layout (the
    plan's fingerprint).

    A scalar (an empty block's fill value) stores no chunk and drops a stale one: the keys
    of the chunks (or shards) it covers are deleted, as zarr does for a chunk it finds
    equal to the fill value, without making and comparing each chunk first (that took
    half of an empty 256^3 block's time in its predictor). An array writes every chunk
    it covers: zarr's test of each chunk against the fill value took 60% of a block's
    write (55 of 90 ms per 4096^2 uint8 mask here), for chunks of a block that the model
    ran on, rarely empty and then a few bytes compressed."""
    pixels = isinstance(data, np.ndarray)
    array = _array(str(path), version, write_empty_chunks=pixels, level=level)
    keys = None if pixels or data != array.fill_value else _covered_keys(array, index)
    if keys is None:
        array[index] = data
    else:
        sync(_delete([array.store_path / key for key in keys]))


def _covered_keys(array: Any, index: tuple[slice | int, ...]) -> list[str] | None:
    """The storage keys of the chunks (shards, where the array has them) that ``index``
    covers whole; None where it covers part of one."""
    grid = array.shards or array.chunks
    ranges = []
    for i, g, n in zip(index, grid, array.shape, strict=True):
        start, stop, _ = (slice(i, i + 1) if isinstance(i, int) else i).indices(n)
        if start % g or (stop % g and stop != n):
            return None
        ranges.append(range(start // g, -(-stop // g)))
    return [array.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]


async def _delete(paths: list[Any]) -> None:
    await asyncio.gather(*(p.delete() for p in paths))


def complete_output(path: Location, summary: dict[str, Any]) -> None:
    """Mark the output complete; called once every block is written."""
    path = str(path)
    group = zarr.open_group(path, mode="r+")
    meta: dict[str, Any] = dict(cast(dict, group.attrs["raysegment"]))
    meta.update(
        summary,
        status="complete",
        completed=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    group.attrs["raysegment"] = meta
    storage.remove(storage.join(path, ".raysegment"))
