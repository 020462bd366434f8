"""Whole-slide formats that are no plain TIFFs, through OpenSlide (``pip install
'raysegment[openslide]'``, which brings the library's own wheel): 3DHISTECH MIRAX
(``.mrxs``), Hamamatsu VMS/VMU, Leica SCN, Ventana BIF and Sakura SVSlide. OpenSlide
composes a region from the scanner's tiles (MIRAX's camera images, BIF's overlapping
tiles), which a TIFF reader cannot; SVS, NDPI and QPTIFF stay with tifffile.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from raysegment.data.sources import (
    OPENSLIDE_SUFFIXES,
    SOURCES,
    ImageInfo,
    ImageSource,
    open_file,
    reader_module,
)
from raysegment.errors import InputImageError

__all__ = ["OPENSLIDE_SUFFIXES", "OpenSlideSource"]

BAND = 1 << 22
"""Pixels OpenSlide composes at a time (16 MiB of RGBA): a block is read in bands of rows."""

_WHAT = "MIRAX, Hamamatsu VMS, Leica SCN, Ventana BIF and Sakura slides"


def _opened(path: str) -> Any:
    """``path`` opened with OpenSlide (the caller closes it)."""
    # The binding without its library (openslide-bin) fails to import, as without both.
    openslide = reader_module(path, "openslide", _WHAT, "openslide")
    if path.lower().endswith(".mrxs"):
        folder = os.path.splitext(path)[0]
        if os.path.isfile(path) and not os.path.isfile(os.path.join(folder, "Slidedat.ini")):
            raise InputImageError(
                f"{path}: its data folder {folder} (Slidedat.ini, Index.dat, Data*.dat) is "
                f"missing; a MIRAX slide is the .mrxs file and that folder beside it: copy both"
            )
    return open_file(path, "whole-slide image", openslide.OpenSlide, (openslide.OpenSlideError,))


def _composited(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """OpenSlide's RGBA over the slide's background colour -> RGB: regions the scanner did
    not image (a MIRAX slide's skipped camera fields) are transparent, drawn as
    OpenSlide's own thumbnails draw them."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if alpha.min() == 255:
        return rgb
    a = alpha.astype(np.float32) / 255
    mixed = rgb * a + np.asarray(background, np.float32) * (1 - a)
    return np.rint(mixed).astype(np.uint8)


class OpenSlideSource(ImageSource):
    """A slide's scan (its associated label, macro and thumbnail images are not segmented)
    as three channels, R, G and B, of 8 bits; regions the scanner skipped are the slide's
    background colour. The pixel size from ``openslide.mpp-x`` / ``-y`` (micrometres),
    the levels OpenSlide's (``input_level``), a level's pixel its downsample times
    level 0's."""

    kind = "openslide"

    def _inspect(self) -> ImageInfo:
        slide = _opened(self.path)
        try:
            self.levels = int(slide.level_count)
            if self.level >= self.levels:
                raise self._no_level(self.levels)
            width, height = slide.level_dimensions[self.level]
            self.downsample = float(slide.level_downsamples[self.level])
            properties = slide.properties
            colour = str(properties.get("openslide.background-color") or "ffffff")
            self.background = tuple(bytes.fromhex(colour))
            scale: dict[str, float] = {}
            for axis in "yx":
                mpp = float(properties.get(f"openslide.mpp-{axis}") or 0)
                if mpp > 0:
                    scale[axis] = mpp * self.downsample
        finally:
            slide.close()
        shape = (1, 3, 1, int(height), int(width))
        units = dict.fromkeys(scale, "micrometer")
        return ImageInfo(shape, np.dtype(np.uint8), scale, units)  # type: ignore[arg-type]

    def level_scale(self) -> tuple[float, float]:
        return self.downsample, self.downsample

    def _open(self) -> Any:
        return _opened(self.path)

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        from openslide import OpenSlideError

        (z0, z1), (y0, y1), (x0, x1) = region
        out = np.empty((len(channels), z1 - z0, y1 - y0, x1 - x0), np.uint8)
        rows = max(1, BAND // (x1 - x0))
        slide = self.handle
        for r0 in range(y0, y1, rows):
            r1 = min(r0 + rows, y1)
            # Where the level's pixel lies at level 0, which OpenSlide takes regions by.
            at = (round(x0 * self.downsample), round(r0 * self.downsample))
            try:
                image = slide.read_region(at, self.level, (x1 - x0, r1 - r0))
            except OpenSlideError as e:  # a corrupt tile; the handle is of no further use
                self.close()
                raise OSError(str(e)) from e
            rgb = _composited(np.asarray(image), self.background)  # type: ignore[arg-type]
            for i, c in enumerate(channels):
                out[i, :, r0 - y0 : r1 - y0] = rgb[..., c]
        return out


SOURCES.register("openslide")(OpenSlideSource)
