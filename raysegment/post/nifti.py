"""A NIfTI copy of a NIfTI input's output (``finalize.nifti``): the output's full
resolution in the input's voxel grid, header and affine, as nnU-Net writes its
predictions, so a CT's mask overlays the CT in any viewer of medical images.

Written plane slab by plane slab: NIfTI's x, y, z voxels (x fastest) are an OME-Zarr
array's (z, y, x) in C order, so the file is the array's bytes in order, behind the
header; no volume is held whole. An output of another voxel grid than its input's (a run
with ``resample=true``) goes back to the input's as nnU-Net's predictions do, by linear
interpolation (antialiased where it shrinks: ``resampled.filter_taps``): probabilities
and logits interpolated, classes (labels, masks) each voxel the class whose indicator
interpolates highest (nnU-Net's resampling of segmentations), so boundaries run between
the output's voxels rather than in steps of them; an nnU-Net training's output by its
plans' orders for probabilities (``ResampledSource.kinds_back``), and with
``finalize.nifti_labels`` the labels of the probabilities once back (of the logits once
back, through the activation, with ``finalize.mode=raw``: as nnU-Net exports).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.data.resampled import Taps, as_type, axis_taps, filtered
from raysegment.errors import ConfigError
from raysegment.post.components import largest_components

__all__ = ["labels_of", "nifti_name", "write_nifti"]

_SLAB = 64 << 20
"""Bytes of the output read and written at once."""


def nifti_name(source_path: str) -> str:
    """``.nii.gz`` for a gzipped input, else ``.nii``: the copy is written as its input."""
    return ".nii.gz" if source_path.lower().endswith(".gz") else ".nii"


def labels_of(
    threshold: float, regions: tuple[int, ...] = (), activation: str | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Labels of probabilities (C, ...) as ``finalize.mode=labels`` gives them, (1, ...):
    the channels' argmax (the first of a tie), or one channel above ``threshold``; a
    region model's (``regions``, a label per channel), each channel's label where it is
    above ``threshold``, later channels over earlier. ``activation``: of logits, through
    it first (``finalize.activate``)."""
    from raysegment.infer.plan import labels_dtype

    def labels(probabilities: np.ndarray) -> np.ndarray:
        if activation is not None:
            import torch

            from raysegment.infer.finalize import activate

            scores = torch.from_numpy(np.asarray(probabilities, np.float32))
            probabilities = activate(scores, activation).numpy()
        dtype = labels_dtype(probabilities.shape[0], regions)
        if regions:
            painted = np.zeros((1, *probabilities.shape[1:]), dtype)
            for channel, label in enumerate(regions):
                painted[0][probabilities[channel] > threshold] = label
            return painted
        if probabilities.shape[0] == 1:
            return (probabilities > threshold).astype(np.uint8)
        return np.argmax(probabilities, axis=0)[None].astype(dtype)

    return labels


def write_nifti(
    output: str,
    axes: str,
    source_path: str,
    location: str,
    grid: tuple[int, ...],
    classes: bool = False,
    back: Callable[[str, int, int], Taps | None] | None = None,
    labels: Callable[[np.ndarray], np.ndarray] | None = None,
    postprocessing: Sequence[tuple[int, ...]] = (),
) -> None:
    """The zarr array ``output`` (of ``axes``, a subset of ``tczyx`` holding c, y and x) as
    a NIfTI file at ``location`` with the header and affine of the NIfTI file
    ``source_path``, whose (z, y, x) voxels are ``grid``: dimensions x, y, z, then time
    and channels where the array has more than one (a fifth dimension of components), its
    own value type, unscaled. Where the array is of another size, interpolated to the
    grid: linearly, or, for ``classes`` (its values are classes, in each channel), each
    voxel the class whose indicator interpolates highest (ties to the higher class);
    ``back``: the array's voxels and weights for the grid's ``start:stop`` along an axis
    (``ResampledSource.taps_back``: an nnU-Net training's as it resamples its output back;
    antialiased linear over the same extent by default); ``labels``: the
    file holds one channel, ``labels`` of each slab's channels (C, z, y, x) once in the
    grid (of probabilities: their argmax, as nnU-Net exports its predictions);
    ``postprocessing``: of a label map, each step's labels keep their largest connected
    component (``components.largest_components``: nnU-Net's postprocessing), a pass over
    the slabs each before the file is written.

    Raises:
        ConfigError: ``postprocessing`` of an array of several channels or time points.
    """
    import nibabel
    import zarr

    array = zarr.open_array(output, mode="r")
    sizes = dict(zip(axes, array.shape, strict=True))
    held = dict(sizes)  # the array's; ``sizes`` becomes the input's grid
    sizes.update({a: n for a, n in zip("zyx", grid, strict=True) if a in sizes})
    t, c = sizes.get("t", 1), 1 if labels else sizes["c"]
    dtype = np.dtype(array.dtype)
    if labels is not None:
        dtype = labels(np.zeros((sizes["c"], 1, 1, 1), np.float32)).dtype
    dims = [sizes["x"], sizes["y"]]
    if "z" in sizes or t > 1 or c > 1:
        dims.append(sizes.get("z", 1))
    if t > 1 or c > 1:
        dims.append(t)
    if c > 1:
        dims.append(c)
    header: Any = nibabel.load(source_path).header.copy()  # a Nifti1Header or Nifti2Header
    header.set_data_dtype(dtype)
    header.set_data_shape(dims)
    header.set_slope_inter(1.0, 0.0)
    spatial = [a for a in axes if a in "zyx"]

    def taps(axis: str, start: int, stop: int) -> Taps | None:
        """The array's voxels and weights for the grid's ``start:stop`` along ``axis``;
        None where the array is in the grid along it."""
        if back is not None:
            return back(axis, start, stop)
        if held[axis] == sizes[axis]:
            return None
        return axis_taps("antialiased", held[axis], sizes[axis], start, stop)

    planes = {a: taps(a, 0, sizes[a]) for a in spatial if a != "z"}
    resampled = any(v is not None for v in planes.values()) or (
        "z" in spatial and taps("z", 0, 1) is not None
    )
    itemsize = 4 if resampled else np.dtype(array.dtype).itemsize  # interpolated in float32
    plane = sizes["y"] * sizes["x"] * itemsize * (sizes["c"] if labels else 1)
    depth = sizes.get("z", 1)
    step = max(1, _SLAB // plane)

    def slab_at(ci: int, ti: int, z0: int) -> np.ndarray:
        """The file's planes ``z0`` on of channel ``ci`` at time ``ti``."""
        found = [taps("z", z0, min(z0 + step, depth)) if a == "z" else planes[a] for a in spatial]
        index: dict[str, int | slice] = {"t": ti, "c": slice(None) if labels else ci}
        if "z" in spatial:
            zs = found[0][0] if found[0] is not None else np.arange(z0, z0 + step)
            index["z"] = slice(int(zs.min()), min(int(zs.max()) + 1, held["z"]))
        slab = np.asarray(array[tuple(index.get(a, slice(None)) for a in axes)])
        if resampled:  # back to the input's voxels
            starts = [index["z"].start if a == "z" else 0 for a in spatial]  # type: ignore[union-attr]
            slab = _interpolated(slab, found, starts, classes)
        return slab if labels is None else labels(slab)[0]

    cleaned = None
    if postprocessing:
        if c > 1 or t > 1:
            raise ConfigError(
                f"finalize.postprocessing: {output} holds {c} channel(s) and {t} time "
                f"point(s); nnU-Net's postprocessing is of one label map"
            )

        def every() -> Iterator[np.ndarray]:
            for z0 in range(0, depth, step):
                found = slab_at(0, 0, z0)
                yield found.reshape((-1, *found.shape[-2:]))  # (Z, Y, X)

        cleaned = largest_components(every, postprocessing)
    # Locally under another name until whole (an object store shows an upload only then):
    # a run killed here leaves no file that looks complete.
    local = not storage.is_url(location)
    target = location + ".partial" if local else location
    with storage.open_write(target) as raw:
        gzipped = location.endswith(".gz")
        out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) if gzipped else raw
        header.write_to(out)
        out.write(b"\0" * max(0, int(header.get_data_offset()) - out.tell()))
        # NIfTI's order: x, y, z, then t, then c (slowest): channels outermost.
        for ci in range(c):
            for ti in range(t):
                for k, z0 in enumerate(range(0, depth, step)):
                    slab = slab_at(ci, ti, z0) if cleaned is None else cleaned(k)
                    out.write(np.ascontiguousarray(slab, dtype=dtype).tobytes())
        if out is not raw:
            out.close()
    if local:
        os.replace(target, location)


def _interpolated(
    slab: np.ndarray, found: list[Taps | None], starts: list[int], classes: bool
) -> np.ndarray:
    """``slab`` filtered by ``found`` (``filtered``), in its own type; of ``classes``:
    each voxel the value whose indicator filters highest (ties to the higher value)."""
    if not classes:
        return as_type(filtered(slab.astype(np.float32), found, starts), slab.dtype)
    best: np.ndarray | None = None
    chosen: np.ndarray | None = None
    for value in np.unique(slab):  # in order: a later value takes a tie
        weight = filtered((slab == value).astype(np.float32), found, starts)
        if best is None or chosen is None:
            best, chosen = weight, np.full(weight.shape, value, slab.dtype)
            continue
        taken = weight >= best
        chosen[taken] = value
        np.maximum(best, weight, out=best)
    assert chosen is not None
    return chosen
