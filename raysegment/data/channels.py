"""Images whose channels are files, as nnU-Net keeps a case of several modalities: its
files ``case_0000.nii.gz``, ``case_0001.nii.gz``, ... (a brain MR's T1, T1ce, T2 and
FLAIR; a prostate's T2 and ADC) are the channels of the one image ``case``, in the order
of their four digits, as nnU-Net's predictor reads a folder (``imagesTs``).

``channel_cases`` groups a run's input files so; ``ChannelFilesSource`` reads a case's
files as one image, each region of each file read as the file's own source reads it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from raysegment import storage
from raysegment.data.sources import ImageInfo, ImageSource, Region, WrappedSource, image_stem
from raysegment.errors import InputImageError

__all__ = ["CHANNEL_FILE", "ChannelFilesSource", "channel_cases"]

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""A file's name (without its image suffixes) as a channel of a case: ``case_0001``."""
SAME_SPACING = 1e-3
"""Relative difference of two channel files' pixel sizes taken as the same."""


def channel_cases(
    paths: Sequence[str], channels: Sequence[str] | None = None
) -> list[tuple[str | None, list[str]]]:
    """``paths`` grouped into cases, each its name and its files: the files named
    ``<case>_<four digits>`` of each case in the order of their digits, which must be 0000
    to one less than the model's ``channels`` (its channels' names; None: as many as the
    case of the most has, each case alike: a training's); every other file alone, in its
    place, without a case's name.

    Raises:
        InputImageError: a case of other channel files than the model (or the others)
            takes.
    """
    cases: dict[str, dict[int, str]] = {}
    names: dict[str, str] = {}
    order: list[str | tuple[str]] = []
    for path in paths:
        found = CHANNEL_FILE.match(image_stem(path))
        if found is None:
            order.append((path,))
            continue
        key = storage.join(storage.parent(path), found["case"])
        if key not in cases:
            cases[key], names[key] = {}, found["case"]
            order.append(key)
        cases[key][int(found["channel"])] = path
    count = len(channels) if channels is not None else max(map(max, cases.values()), default=-1) + 1
    out: list[tuple[str | None, list[str]]] = []
    for item in order:
        if isinstance(item, tuple):
            out.append((None, [item[0]]))
            continue
        files = cases[item]
        if sorted(files) != list(range(count)):
            have = ", ".join(f"_{c:04d}" for c in sorted(files))
            if channels is None:
                want = ", ".join(f"_{c:04d}" for c in range(count))
                takes = f"the cases have {count} channel(s)"
            else:
                want = ", ".join(f"_{c:04d} ({name})" for c, name in enumerate(channels))
                takes = f"the model takes {count} channel(s)"
            raise InputImageError(
                f"{item}_XXXX: channel files {have}; {takes}, one file each: give {want}"
            )
        out.append((names[item], [files[c] for c in range(count)]))
    return out


class ChannelFilesSource(WrappedSource):
    """One image whose channels are the channels of ``parts`` (each a file's image, the
    same shape and pixel size), in order, named ``name``: nnU-Net's case of several
    files. Its path, header and pixel size are the first file's (as nnU-Net takes a
    case's properties from its first file); values in the type all parts' fit in."""

    def __init__(self, parts: Sequence[ImageSource], name: str) -> None:
        super().__init__(parts, name)

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The first file's kind (``nifti`` for NIfTI files)."""
        return self.parts[0].kind

    @property
    def where(self) -> str:
        return f"{self.parts[0].where} and its {len(self.parts) - 1} other channel file(s)"

    def _inspect(self) -> ImageInfo:
        first = self.parts[0].info
        t, _, z, y, x = first.shape
        for part in self.parts[1:]:
            pt, _, pz, py, px = part.info.shape
            problem = ""
            if (pt, pz, py, px) != (t, z, y, x):
                problem = f"its shape {part.info.shape} (t, c, z, y, x) is not {first.shape}'s"
            elif any(
                abs(part.info.scale.get(a, 1.0) - s) > SAME_SPACING * abs(s)
                for a, s in first.scale.items()
            ):
                problem = f"its pixel size {part.info.scale} is not {first.scale}'s"
            if problem:
                raise InputImageError(
                    f"{part.where}: a channel of {self.parts[0].where}, but {problem}; give "
                    f"a case's channel files on the same voxels (resample them alike)"
                )
        count = sum(p.info.shape[1] for p in self.parts)
        names = [n for p in self.parts for n in (p.info.channel_names or [p.name])]
        return replace(
            first,
            shape=(t, count, z, y, x),
            dtype=np.result_type(*(p.info.dtype for p in self.parts)),
            channel_names=tuple(names) if len(names) == count else None,
        )

    def _channels(self) -> list[tuple[int, int]]:
        """Per channel of the image, its part and its channel in the part."""
        return [(k, c) for k, p in enumerate(self.parts) for c in range(p.info.shape[1])]

    def at_level(self, level: int) -> ImageSource:
        return ChannelFilesSource([p.at_level(level) for p in self.parts], self.name)

    @property
    def original(self) -> ImageSource:
        return self  # the case, of every file

    def _read(self, t: int, channels: tuple[int, ...], region: Region) -> np.ndarray:
        where = self._channels()
        out = np.empty((len(channels), *(b - a for a, b in region)), self.info.dtype)
        for k, part in enumerate(self.parts):
            wanted = [(i, where[c][1]) for i, c in enumerate(channels) if where[c][0] == k]
            if wanted:
                data = part.read(t, tuple(c for _, c in wanted), region)
                out[[i for i, _ in wanted]] = data
        return out
