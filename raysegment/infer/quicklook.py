"""A quick-look PNG per output: the input (in grey; an input of three channels in colour,
an RGB slide as it is) with the segmentation overlaid in colour, downsampled so that its
longer side is at most ``MAX_SIDE`` pixels.

Every ``step``-th row and column of the input's middle z plane at t=0 (the first time
point of a series). The read (a GPU run's read task, a CPU predictor) takes those pixels
of each block it reads anyway (``preview``) and the driver gathers them into the input's
image (``InputPreview``); rows that no block of this run brought (a resumed run, another
part of the job) are read from the input here, band by band, so memory stays bounded for
any image size. The input read once more at the end cost 10.1-11.5 s on a 32768^2
OME-TIFF (2 cores), in a run of ~75 s.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import zarr

from raysegment import storage
from raysegment.data.sources import ImageSource
from raysegment.storage import Location

__all__ = ["MAX_SIDE", "InputPreview", "preview", "preview_step", "quicklook", "write_png"]

MAX_SIDE = 1024
_BAND = 2048
"""Rows read at a time (before striding)."""
# Distinct colours for classes / labels 1, 2, ... (class 0 is background, not drawn).
_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ],
    np.float32,
)


def preview_step(y: int, x: int, max_side: int = MAX_SIDE) -> int:
    """The quick-look's stride for a ``y`` x ``x`` image: its longer side at most
    ``max_side`` pixels."""
    return max(1, -(-max(y, x) // max_side))


def preview(
    plane: np.ndarray, origin: tuple[int, int], inner: tuple[tuple[int, int], ...], step: int
) -> tuple[tuple[int, int], np.ndarray]:
    """The quick-look pixels of a block: of ``plane`` (channels of a (Y, X) region of the
    input whose first pixel is ``origin``), those on every ``step``-th row and column of
    the image within ``inner`` (its (y, x) ranges, inside the region). Returns where they
    go in the quick-look (row, column) and the pixels (C, h, w) as float32."""
    starts = [-(-a // step) * step for a, _ in inner]
    thumb = plane[
        (
            slice(None),
            *(
                slice(s - o, b - o, step)
                for s, o, (_, b) in zip(starts, origin, inner, strict=True)
            ),
        )
    ]
    return (starts[0] // step, starts[1] // step), thumb.astype(np.float32)


class InputPreview:
    """The quick-look's input pixels (``channels`` of them) of one image, gathered from its
    blocks' ``preview``; NaN where no block brought them yet."""

    def __init__(self, y: int, x: int, step: int, channels: int = 1) -> None:
        self.step = step
        self.pixels = np.full((channels, -(-y // step), -(-x // step)), np.nan, np.float32)

    def add(self, at: tuple[int, int], thumb: np.ndarray) -> None:
        r, c = at
        self.pixels[:, r : r + thumb.shape[1], c : c + thumb.shape[2]] = thumb


def write_png(path: Location, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG (no imaging library needed)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    storage.write_bytes(str(path), png)


def _foreground(seg: np.ndarray, kind: str) -> np.ndarray:
    """(C, H, W) output -> (H, W) class index to colour, 0 = background (not drawn).

    One channel: above 0.5 (probabilities, mask) or 0 (raw logits). Several: the channel
    with the highest score, channel 0 being background as in multiclass models. Labels:
    the label value.
    """
    if kind == "labels":
        return seg[0].astype(np.int64)
    if seg.shape[0] == 1:
        return (seg[0] > (0.0 if kind == "raw" else 0.5)).astype(np.int64)
    return seg.argmax(axis=0).astype(np.int64)


def _display(pixels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(C, H, W) input pixels (C = 1 or 3) as (H, W, 3) display values 0-255: one channel
    in grey, three in colour, each stretched between its 1st and 99.5th percentile; 8-bit
    colour (an RGB slide) as it is."""
    if len(pixels) == 3 and dtype == np.uint8:
        return np.moveaxis(pixels, 0, -1)
    out = []
    for channel in pixels:
        lo, hi = np.percentile(channel, (1, 99.5)) if channel.size else (0.0, 1.0)
        out.append(np.clip((channel - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255)
    return np.stack(out * 3 if len(out) == 1 else out, axis=-1)


def quicklook(
    source: ImageSource,
    channels: tuple[int, ...],
    output: Location,
    axes: str,
    kind: str,
    png: Location,
    max_side: int = MAX_SIDE,
    gathered: InputPreview | None = None,
) -> tuple[int, int]:
    """Write ``png`` for the output array ``output`` (``<name>.ome.zarr/0``) of ``source``.

    Args:
        channels: the input channels shown: one in grey, three in colour.
        axes: the output array's axes ([t] c [z] y x).
        kind: the output's finalize mode (raw, probabilities, mask, labels).
        gathered: the input pixels the run's blocks brought (``step`` from ``max_side``);
            only bands with pixels missing there are read from ``source``.

    Returns:
        The PNG's (height, width).
    """
    _, _, z, y, x = source.info.shape
    step = preview_step(y, x, max_side)
    if gathered is not None and gathered.step != step:
        raise ValueError(f"input preview at stride {gathered.step}, the quick-look's is {step}")
    known = gathered.pixels if gathered is not None else np.full((0, 0, 0), np.nan, np.float32)
    array = zarr.open_array(str(output), mode="r")
    plane = z // 2
    bands, classes = [], []
    for y0 in range(0, y, _BAND):
        y1 = min(y0 + _BAND, y)
        rows = slice(y0 + (-y0) % step, y1, step)
        band = known[:, rows.start // step : -(-y1 // step)]
        if band.size == 0 or np.isnan(band).any():
            region = ((plane, plane + 1), (y0, y1), (0, x))
            image = source.read(0, channels, region)[:, 0, (-y0) % step :: step, ::step]
            band = image.astype(np.float32)
        pick: dict[str, int | slice] = {"t": 0, "c": slice(None), "z": plane, "y": rows}
        pick["x"] = slice(0, x, step)
        index = tuple(pick[axis] for axis in axes)
        seg = np.asarray(array[index])
        bands.append(band)
        classes.append(_foreground(seg, kind))
    g = _display(np.concatenate(bands, axis=1), source.info.dtype)
    c = np.concatenate(classes)
    colour = _PALETTE[(np.maximum(c, 1) - 1) % len(_PALETTE)]
    rgb = np.where((c > 0)[..., None], 0.55 * g + 0.45 * colour, g)
    write_png(png, rgb.round().astype(np.uint8))
    return int(rgb.shape[0]), int(rgb.shape[1])
