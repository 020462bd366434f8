"""Resolve ``input`` (+ ``pattern``) to the list of images to process."""

from __future__ import annotations

import re
from pathlib import Path

from raysegment.data.sources import is_zarr
from raysegment.errors import InputImageError

__all__ = ["DEFAULT_PATTERN", "resolve_inputs"]

DEFAULT_PATTERN = r".*\.(ome\.tiff?|tiff?|ome\.zarr|zarr)"


def resolve_inputs(input: str, pattern: str | None = None) -> list[Path]:
    """An image file or zarr path -> itself; a directory -> its entries matching ``pattern``
    (a regular expression, full match on the name, case-insensitive), sorted.

    Raises:
        InputImageError: the path is missing, or nothing in the directory matches.
    """
    path = Path(input)
    if not path.exists():
        raise InputImageError(f"{path}: no such file or directory; check the input= path")
    if path.is_file() or is_zarr(path):
        return [path]
    regex = re.compile(pattern or DEFAULT_PATTERN, re.IGNORECASE)
    found = sorted(p for p in path.iterdir() if regex.fullmatch(p.name))
    if not found:
        names = sorted(p.name for p in path.iterdir())[:5]
        seen = f"; it holds e.g. {names}" if names else "; it is empty"
        raise InputImageError(
            f"{path}: no entry matches pattern={pattern or DEFAULT_PATTERN!r}{seen}; "
            f"set pattern= to a regular expression matching the image names"
        )
    return found
