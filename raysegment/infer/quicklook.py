"""A quick-look PNG per output: the input in grey with the segmentation overlaid in colour,
downsampled so that its longer side is at most ``MAX_SIDE`` pixels.

Read region by region at a stride, so memory stays bounded for any image size; for a
z-stack the middle plane is shown, for a time series the first time point.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import zarr

from raysegment import storage
from raysegment.data.sources import ImageSource
from raysegment.storage import Location

__all__ = ["MAX_SIDE", "quicklook", "write_png"]

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


def quicklook(
    source: ImageSource,
    channel: int,
    output: Location,
    axes: str,
    kind: str,
    png: Location,
    max_side: int = MAX_SIDE,
) -> tuple[int, int]:
    """Write ``png`` for the output array ``output`` (``<name>.ome.zarr/0``) of ``source``.

    Args:
        channel: the input channel shown in grey.
        axes: the output array's axes ([t] c [z] y x).
        kind: the output's finalize mode (raw, probabilities, mask, labels).

    Returns:
        The PNG's (height, width).
    """
    _, _, z, y, x = source.info.shape
    step = max(1, -(-max(y, x) // max_side))
    array = zarr.open_array(str(output), mode="r")
    plane = z // 2
    grey, classes = [], []
    for y0 in range(0, y, _BAND):
        y1 = min(y0 + _BAND, y)
        rows = slice(y0 + (-y0) % step, y1, step)
        region = ((plane, plane + 1), (y0, y1), (0, x))
        image = source.read(0, (channel,), region)[0, 0][(-y0) % step :: step, ::step]
        pick: dict[str, int | slice] = {"t": 0, "c": slice(None), "z": plane, "y": rows}
        pick["x"] = slice(0, x, step)
        index = tuple(pick[axis] for axis in axes)
        seg = np.asarray(array[index])
        grey.append(image.astype(np.float32))
        classes.append(_foreground(seg, kind))
    g = np.concatenate(grey)
    lo, hi = np.percentile(g, (1, 99.5)) if g.size else (0.0, 1.0)
    g = np.clip((g - lo) / max(float(hi - lo), 1e-6), 0, 1)[..., None] * 255
    c = np.concatenate(classes)
    colour = _PALETTE[(np.maximum(c, 1) - 1) % len(_PALETTE)]
    rgb = np.where((c > 0)[..., None], 0.55 * g + 0.45 * colour, g)
    write_png(png, rgb.round().astype(np.uint8))
    return int(rgb.shape[0]), int(rgb.shape[1])
