"""nnU-Net's postprocessing of a label map, slab by slab: each step keeps the largest
connected component of its labels (nnU-Net's ``remove_all_but_largest_component_from_
segmentation``, the steps ``nnUNetv2_find_best_configuration`` chose and saved as
``postprocessing.pkl`` and ``postprocessing.json``), the voxels of its other components
set to background (0), as ``nnUNetv2_apply_postprocessing`` applies them to nnU-Net's
predictions.

A step's components are found over the whole volume without holding it: each slab of
planes is labelled alone (full connectivity: faces, edges and corners, as scikit-image's
``label`` connects them by default), the labels of neighbouring slabs joined where their
voxels touch across the planes between them, and the joined components' sizes summed;
then every component of the largest size (several where they tie, as nnU-Net keeps
them) stays. The steps run in order, each a pass over the map the ones before left,
which is kept between passes compressed in a temporary file (``_Store``: in memory while
small), each slab labelled once a step.
"""

from __future__ import annotations

import io
import json
import pickle
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raysegment.errors import ConfigError

__all__ = ["LARGEST", "largest_components", "read_postprocessing"]

LARGEST = "remove_all_but_largest_component_from_segmentation"
"""nnU-Net's postprocessing function raysegment runs (its only one)."""

_FULL = np.ones((3, 3, 3), bool)
"""Every neighbour of a voxel: faces, edges and corners."""


def read_postprocessing(path: str) -> list[tuple[int, ...]]:
    """The steps of nnU-Net's ``postprocessing.pkl`` (or ``postprocessing.json``) at
    ``path``: per step the labels whose largest component it keeps (a list of labels or
    regions is their union, as nnU-Net's mask of them). The pickle is read without
    running code: only nnU-Net's function and plain values are taken.

    Raises:
        ConfigError: no such file, one of neither kind, or a step of another function.
    """
    p = Path(path)
    fix = (
        "give nnU-Net's postprocessing.pkl or postprocessing.json (of "
        "nnUNetv2_find_best_configuration)"
    )
    if not p.is_file():
        raise ConfigError(f"finalize.postprocessing={path}: no such file; {fix}")
    try:
        if p.suffix == ".json":
            found = json.loads(p.read_text())
            names, kwargs = found["postprocessing_fns"], found["postprocessing_kwargs"]
        else:
            names, kwargs = _Steps(io.BytesIO(p.read_bytes()), path).load()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"finalize.postprocessing={path}: unreadable ({e}); {fix}") from e
    steps = []
    for name, given in zip(names, kwargs, strict=True):
        if name != LARGEST:
            raise ConfigError(
                f"finalize.postprocessing={path}: a step of {name}, which raysegment does not "
                f"run (only nnU-Net's {LARGEST}); apply it with nnUNetv2_apply_postprocessing"
            )
        if set(given) - {"labels_or_regions", "background_label"} or given.get(
            "background_label", 0
        ):
            raise ConfigError(
                f"finalize.postprocessing={path}: a step with {given}: raysegment runs the "
                f"largest component of labels_or_regions to background 0 only"
            )
        steps.append(tuple(sorted(set(_flat(given["labels_or_regions"])))))
    return steps


def _flat(labels: Any) -> list[int]:
    """A label, a region (labels) or a list of either, as the labels in it."""
    if isinstance(labels, (list, tuple)):
        return [v for item in labels for v in _flat(item)]
    return [int(labels)]


class _Steps(pickle.Unpickler):
    """nnU-Net's ``(pp_fns, pp_fn_kwargs)`` pickle: its function as its name, numbers as
    numbers, nothing else."""

    def __init__(self, file: io.BytesIO, path: str) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if name == LARGEST and module.startswith("nnunetv2."):
            return LARGEST  # the function, by its name (it is not called)
        if module.split(".")[0] == "numpy" and name in ("scalar", "dtype", "_reconstruct"):
            return super().find_class(module, name)
        raise ConfigError(
            f"finalize.postprocessing={self.path}: holds {module}.{name}, not a step of "
            f"nnU-Net's {LARGEST}; apply it with nnUNetv2_apply_postprocessing"
        )


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The components of ``mask`` (full connectivity), numbered from 1, in the smallest
    unsigned type that holds them."""
    from scipy import ndimage

    local, n = ndimage.label(mask, structure=_FULL)
    return local.astype(np.min_scalar_type(n), copy=False), int(n)


class _Store:
    """Arrays kept compressed in a temporary file (in memory up to ``SPOOL`` bytes), by
    key: a label map's slabs between passes, without holding the map."""

    SPOOL = 256 << 20

    def __init__(self) -> None:
        from numcodecs import Blosc

        self.file = tempfile.SpooledTemporaryFile(max_size=self.SPOOL)
        self.where: dict[Any, tuple[int, int, np.dtype, tuple[int, ...]]] = {}
        # Fast (threaded lz4 of the bits): a label map's bits are long runs.
        self.codec = Blosc(cname="lz4", clevel=1, shuffle=Blosc.BITSHUFFLE)

    def put(self, key: Any, array: np.ndarray) -> None:
        data = self.codec.encode(np.ascontiguousarray(array))
        self.file.seek(0, io.SEEK_END)
        self.where[key] = (self.file.tell(), len(data), array.dtype, array.shape)
        self.file.write(data)

    def get(self, key: Any) -> np.ndarray:
        at, size, dtype, shape = self.where[key]
        self.file.seek(at)
        return np.frombuffer(self.codec.decode(self.file.read(size)), dtype).reshape(shape)


def largest_components(
    slabs: Callable[[], Iterator[np.ndarray]], steps: Sequence[tuple[int, ...]]
) -> Callable[[int], np.ndarray]:
    """A label map postprocessed: ``slabs`` gives its slabs of planes (Z, Y, X each, in
    order), ``steps`` the labels of each step in order (``read_postprocessing``). Each
    step is a pass over the slabs as the steps before left them (kept compressed,
    ``_Store``), labelling each once; returns slab k once every step is applied."""
    store = _Store()
    count = 0
    for k, slab in enumerate(slabs()):
        store.put(("map", k), slab)
        count = k + 1
    for values in steps:
        _step(store, count, np.asarray(values))
    return lambda k: store.get(("map", k))


def _step(store: _Store, count: int, values: np.ndarray) -> None:
    """One step over the ``count`` slabs of ``store``'s map: the components of
    ``values``, all but the largest (every one of that size) set to 0."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets: list[int] = []
    sizes: list[np.ndarray] = [np.zeros(1, np.int64)]  # number 0: background
    pairs: list[np.ndarray] = []
    total, last = 1, None
    for k in range(count):
        local, n = _label(np.isin(store.get(("map", k)), values))
        store.put(("local", k), local)
        offsets.append(total - 1)
        sizes.append(np.bincount(local.ravel(), minlength=n + 1)[1:])
        if last is not None:
            first = np.where(local[0] > 0, local[0].astype(np.int64) + offsets[-1], 0)
            pairs.append(_touching(last, first))
        last = np.where(local[-1] > 0, local[-1].astype(np.int64) + offsets[-1], 0)
        total += n
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(total, total))
    _, joined = connected_components(graph, directed=False)
    size = np.bincount(joined, weights=np.concatenate(sizes))
    size[joined[0]] = 0  # background's
    keep = size[joined] == size.max() if size.max() > 0 else np.zeros(total, bool)
    keep[0] = True  # background stays as it is
    for k in range(count):
        local = store.get(("local", k))
        # Per number of the slab's own (0: the rest, which stays), whether it stays.
        table = keep[offsets[k] : offsets[k] + len(sizes[k + 1]) + 1].copy()
        table[0] = True
        gone = ~table[local]
        if gone.any():
            slab = store.get(("map", k)).copy()
            slab[gone] = 0
            store.put(("map", k), slab)


def _touching(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The pairs of component numbers of two neighbouring planes (Y, X; 0 none) whose
    voxels touch: each voxel with the 3 x 3 voxels across from it."""
    found = []
    h, w = before.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            a = before[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
            b = after[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
            both = (a > 0) & (b > 0)
            found.append(np.stack([a[both], b[both]], axis=1))
    return np.unique(np.concatenate(found), axis=0).astype(np.int64)
