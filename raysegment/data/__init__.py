"""Image sources, input resolution and tile/block geometry (no Ray, no torch)."""

from raysegment.data.inputs import resolve_inputs
from raysegment.data.sources import ImageInfo, ImageSource, image_stem, open_source
from raysegment.data.tiling import AxisTiling, Block, Tiling, block_at, iter_blocks

__all__ = [
    "AxisTiling",
    "Block",
    "ImageInfo",
    "ImageSource",
    "Tiling",
    "block_at",
    "image_stem",
    "iter_blocks",
    "open_source",
    "resolve_inputs",
]
