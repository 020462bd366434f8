"""Masks: where to segment. A one-channel image covering the input's field of view at any
resolution (a tissue mask of a slide's thumbnail, a volume's foreground at a coarse
level, a labels image of the input itself): nonzero marks the pixels to segment.

Each input pixel takes the mask pixel nearest its centre (on every axis, the mask's size
over the input's scales the coordinates). Blocks with no pixel inside skip the model and
keep the fill value; tiles of a block that touch no pixel inside are not run; every pixel
outside is 0 in the output, so the output is the unmasked run's inside the mask and 0
outside it, whichever blocks and tiles ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raysegment import storage
from raysegment.data.sources import ImageSource, open_sources
from raysegment.errors import InputImageError

__all__ = ["NAME_FIELD", "Mask", "open_mask"]

NAME_FIELD = "{name}"
"""In ``mask=``, stands for each input's name: ``mask=masks/{name}.tif``."""

Region = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Mask:
    """The mask of one input image, of (z, y, x) size ``image``."""

    source: ImageSource
    image: tuple[int, int, int]

    def _indices(self, region: Region) -> list[np.ndarray]:
        """Per axis, the mask pixel nearest the centre of each input pixel of ``region``:
        floor((i + 1/2) * m / n), in integers."""
        sizes = self.source.info.shape[2:]
        return [
            np.minimum((2 * np.arange(a, b) + 1) * m // (2 * n), m - 1)
            for (a, b), n, m in zip(region, self.image, sizes, strict=True)
        ]

    def read(self, t: int, region: Region) -> np.ndarray:
        """Inside (bool) for the mask pixels the input's (z, y, x) ``region`` at time ``t``
        takes, at the mask's resolution (``expand`` gives them per input pixel)."""
        span = tuple((int(j[0]), int(j[-1]) + 1) for j in self._indices(region))
        at = t if self.source.info.shape[0] > 1 else 0
        return self.source.read(at, (0,), span)[0] != 0

    def expand(self, native: np.ndarray, region: Region) -> np.ndarray:
        """``read``'s mask pixels as one per input pixel of ``region`` (Z, Y, X)."""
        indices = self._indices(region)
        return native[np.ix_(*(j - j[0] for j in indices))]

    def key(self) -> list[object]:
        """What identifies the mask in a run's settings (resuming needs the same)."""
        return [self.source.where, list(self.source.info.shape)]


def open_mask(template: str, image: ImageSource) -> Mask:
    """The mask of ``image``: ``template`` with ``{name}`` replaced
    by the image's name, checked to cover it.

    Raises:
        InputImageError: no such mask, one of several channels or images, time points that
            are neither one nor the image's, a z-stack for a 2D image, or y and x scaled
            differently (not the image's field of view).
    """
    path = template.replace(NAME_FIELD, image.name)
    if not storage.exists(storage.resolve(path)):
        hint = f" ({NAME_FIELD} is {image.name})" if NAME_FIELD in template else ""
        raise InputImageError(
            f"mask={path}: no such file or directory for {image.where}{hint}; give a mask "
            f"image (nonzero where to segment) of each input"
        )
    sources = open_sources(path)
    if len(sources) > 1:
        raise InputImageError(
            f"mask={path}: holds {len(sources)} images; give a file or zarr of one image"
        )
    source = sources[0]
    t, c, z, y, x = source.info.shape
    it, _, iz, iy, ix = image.info.shape
    problem = ""
    if c > 1:
        problem = f"has {c} channels; give a one-channel image (e.g. a labels image)"
    elif t not in (1, it):
        problem = f"has {t} time points, the image {it}; give 1 (for all) or {it}"
    elif z > 1 and iz == 1:
        problem = f"is a stack of {z} planes and the image is 2D; give a 2D mask"
    elif abs(y * ix - x * iy) > ix + iy:
        problem = (
            f"(y {y}, x {x}) is not the field of view of the image (y {iy}, x {ix}): y and x "
            f"scale by {iy / y:.4g} and {ix / x:.4g}; give a mask of the whole image"
        )
    if problem:
        raise InputImageError(f"mask={source.where} for {image.where}: {problem}")
    return Mask(source, (iz, iy, ix))
