"""Whole-slide formats that are no plain TIFFs, through OpenSlide (``pip install
'raysegment[openslide]'``, which brings the library's own wheel): 3DHISTECH MIRAX
(``.mrxs``), Hamamatsu VMS/VMU, Leica SCN, Ventana BIF, Sakura SVSlide and DICOM
whole-slide images (their series found by ``dicom.dicom_sources``). OpenSlide
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
    Region,
    Unstored,
    open_file,
    reader_module,
)
from raysegment.errors import InputImageError

__all__ = ["OPENSLIDE_SUFFIXES", "OpenSlideSource"]

BAND = 1 << 22
"""Pixels OpenSlide composes at a time (16 MiB of RGBA): a block is read in bands of rows."""

_WHAT = "MIRAX, Hamamatsu VMS, Leica SCN, Ventana BIF, Sakura and DICOM whole-slide images"


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


def composite(
    rgba: np.ndarray, channels: tuple[int, ...], background: tuple[int, ...], out: np.ndarray
) -> None:
    """``out[i]``: channel ``channels[i]`` (0 R, 1 G, 2 B) of OpenSlide's RGBA over the
    slide's ``background`` colour. Regions the scanner did not image (a MIRAX slide's
    skipped camera fields) are transparent, drawn as OpenSlide's own thumbnails draw
    them; a field placed between pixels has edges of partial alpha."""
    alpha = rgba[..., 3]
    lo, hi = alpha.min(), alpha.max()
    transparent = partial = None
    if lo < 255 and hi > 0:  # neither wholly scanned nor wholly outside
        transparent = alpha == 0 if lo == 0 else None
        edges = (alpha - 1) < 254  # 1-254: uint8 0 and 255 wrap past it
        partial = np.nonzero(edges) if edges.any() else None
    a = alpha[partial].astype(np.float32) / 255 if partial is not None else np.ones(0)
    for i, c in enumerate(channels):
        if hi == 0:  # wholly outside the scan
            out[i] = background[c]
            continue
        out[i] = rgba[..., c]
        if transparent is not None:
            np.copyto(out[i], background[c], where=transparent)
        if partial is not None:
            mixed = rgba[..., c][partial] * a + background[c] * (1 - a)
            out[i][partial] = np.rint(mixed).astype(np.uint8)


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
            # The scanned area's bounding box (y, x, height, width), in level 0's pixels.
            box = [properties.get(f"openslide.bounds-{k}") for k in ("y", "x", "height", "width")]
            self.bounds = tuple(int(v) for v in box) if all(box) else None
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

    def unstored(self) -> Unstored | None:
        """Regions wholly outside the scanned area's bounding box (``openslide.bounds-*``)
        hold no scanner field: they read as the background colour, one constant where it
        is grey (white on most scanners). A reduced level's images there, concatenated
        from fields the scanner did not image, hold the scanner's fill colour, which is
        the background colour too."""
        if self.bounds is None or len(set(self.background)) > 1:
            return None
        top, left, height, width = self.bounds
        ds = self.downsample

        def outside(t: int, channels: tuple[int, ...], region: Region) -> bool:
            (y0, y1), (x0, x1) = region[-2:]
            rows = y1 * ds <= top or y0 * ds >= top + height
            return rows or x1 * ds <= left or x0 * ds >= left + width

        return outside

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
            composite(np.asarray(image), channels, self.background, out[:, 0, r0 - y0 : r1 - y0])
        return out


SOURCES.register("openslide")(OpenSlideSource)
