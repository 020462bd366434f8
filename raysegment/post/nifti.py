"""A NIfTI copy of a NIfTI input's output (``finalize.nifti``): the output's full
resolution in the input's voxel grid, header and affine, as nnU-Net writes its
predictions, so a CT's mask overlays the CT in any viewer of medical images.

Written plane slab by plane slab: NIfTI's x, y, z voxels (x fastest) are an OME-Zarr
array's (z, y, x) in C order, so the file is the array's bytes in order, behind the
header; no volume is held whole. An output of another voxel grid than its input's (a run
with ``resample=true``) goes back to the input's: each voxel takes the output's voxel
under its centre.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.data.tiling import under_centres

__all__ = ["nifti_name", "write_nifti"]

_SLAB = 64 << 20
"""Bytes of the output read and written at once."""


def nifti_name(source_path: str) -> str:
    """``.nii.gz`` for a gzipped input, else ``.nii``: the copy is written as its input."""
    return ".nii.gz" if source_path.lower().endswith(".gz") else ".nii"


def write_nifti(
    output: str, axes: str, source_path: str, location: str, grid: tuple[int, ...]
) -> None:
    """The zarr array ``output`` (of ``axes``, a subset of ``tczyx`` holding c, y and x) as
    a NIfTI file at ``location`` with the header and affine of the NIfTI file
    ``source_path``, whose (z, y, x) voxels are ``grid``: dimensions x, y, z, then time
    and channels where the array has more than one (a fifth dimension of components), its
    own value type, unscaled; each voxel the array's nearest its centre where the array
    is of another size (``under_centres``)."""
    import nibabel
    import zarr

    array = zarr.open_array(output, mode="r")
    sizes = dict(zip(axes, array.shape, strict=True))
    held = dict(sizes)  # the array's; ``sizes`` becomes the input's grid
    sizes.update({a: n for a, n in zip("zyx", grid, strict=True) if a in sizes})
    t, c = sizes.get("t", 1), sizes["c"]
    dims = [sizes["x"], sizes["y"]]
    if "z" in sizes or t > 1 or c > 1:
        dims.append(sizes.get("z", 1))
    if t > 1 or c > 1:
        dims.append(t)
    if c > 1:
        dims.append(c)
    header: Any = nibabel.load(source_path).header.copy()  # a Nifti1Header or Nifti2Header
    header.set_data_dtype(np.dtype(array.dtype))
    header.set_data_shape(dims)
    header.set_slope_inter(1.0, 0.0)
    # Per axis, the array's voxel under each of the input's: the identity where the
    # array is in the input's grid.
    picks = {a: under_centres(0, n, n, held[a]) for a, n in sizes.items() if a in "zyx"}
    plane = sizes["y"] * sizes["x"] * np.dtype(array.dtype).itemsize
    depth = sizes.get("z", 1)
    step = max(1, _SLAB // plane)
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
                for z0 in range(0, depth, step):
                    slab_picks = dict(picks)
                    index: dict[str, int | slice] = {"t": ti, "c": ci}
                    if "z" in picks:
                        zs = picks["z"][z0 : z0 + step]
                        index["z"] = slice(int(zs[0]), int(zs[-1]) + 1)
                        slab_picks["z"] = zs - zs[0]
                    slab = np.asarray(array[tuple(index.get(a, slice(None)) for a in axes)])
                    if sizes != held:  # back to the input's voxels
                        slab = slab[np.ix_(*slab_picks.values())]
                    out.write(np.ascontiguousarray(slab).tobytes())
        if out is not raw:
            out.close()
    if local:
        os.replace(target, location)
