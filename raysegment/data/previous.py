"""An image with an earlier stage's labels as further channels: the input of a cascade's
second stage (nnU-Net's ``3d_cascade_fullres``), which segments the image at full
resolution seeing what its first stage (``3d_lowres``) found.

The network takes the image's channels, then one channel per foreground label of the
first stage's label map (``previous_labels``): 1 where the map holds that label, else 0.
The map is the first stage's prediction in the image's own voxels (nnU-Net's output
``case.nii.gz``, or raysegment's NIfTI copy of it). Read at another pixel size, it is
resampled as nnU-Net resamples segmentations: each label's indicator interpolated
(``resampled.nnunet_kinds`` of the scheme's ``segmentation`` orders: linear in-plane, the
nearest plane along an axis of long voxels), each voxel taking the label of the highest
(ties: the nearest voxel's label where it is one of them, else the lowest), as
batchgenerators 0.25.5's ``resize_segmentation`` (earlier versions set each label where
its indicator reaches 0.5, the highest last: they differ where labels meet).

Outside the image's nonzero box every label channel is 0, as nnU-Net crops both to it.
nnU-Net marks the voxels of the box outside the nonzero region apart from the background
(-1); here they are background, which can change a voxel only where a foreground label,
the background and that outside meet within one voxel of the first stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from raysegment.data.resampled import ResampledSource, resampled_labels
from raysegment.data.sources import ImageInfo, ImageSource, Region, WrappedSource
from raysegment.data.tiling import inside_box
from raysegment.errors import InputImageError

__all__ = ["PreviousLabelsSource", "resampling_of"]


def resampling_of(source: ImageSource) -> ResampledSource | None:
    """The resampling ``source`` reads its image through (itself, or under an earlier
    stage's labels), None where it reads the image at its own pixel size."""
    while not isinstance(source, ResampledSource):
        if not isinstance(source, PreviousLabelsSource):
            return None
        source = source.inner
    return source


class PreviousLabelsSource(WrappedSource):
    """``image``'s channels, then one per label of ``values`` from ``labels`` (an earlier
    stage's label map of the voxels ``image`` was read from: its ``original``'s, or the
    level it was resampled from), as floats 0 and 1, at ``image``'s voxels; 0 outside
    ``box`` (the image's nonzero box in the map's voxels; None: none is cut)."""

    kind = "previous"

    def __init__(
        self,
        image: ImageSource,
        labels: ImageSource,
        values: Sequence[int],
        box: Region | None = None,
    ) -> None:
        self.values = tuple(int(v) for v in values)
        self.box = box
        self.resampling = resampling_of(image)
        grid = (self.resampling.inner if self.resampling else image).info.shape[2:]
        found = labels.info.shape
        if found[1] != 1:
            raise InputImageError(
                f"{labels.where}: {found[1]} channels (probabilities?) for the earlier "
                f"stage's label map of {image.where}; give its labels, one channel (run the "
                f"stage with finalize.mode=labels, or finalize.nifti_labels=true)"
            )
        if found[2:] != grid:
            raise InputImageError(
                f"{labels.where}: the earlier stage's label map is {found[2:]} (z, y, x) "
                f"voxels; the image {image.where} is {grid}: give the earlier stage's map "
                f"of this image, in its own voxels"
            )
        super().__init__([image, labels])

    @property
    def labels(self) -> ImageSource:
        return self.parts[1]

    @property
    def where(self) -> str:
        return f"{self.inner.where} with the earlier stage's labels {self.labels.where}"

    def _inspect(self) -> ImageInfo:
        info = self.inner.info
        t, c, *spatial = info.shape
        shape = (t, c + len(self.values), *spatial)
        return replace(info, shape=shape, dtype=np.dtype(np.float32))  # type: ignore[arg-type]

    def at_level(self, level: int) -> ImageSource:
        if level != self.level:
            raise self._no_level(self.level + 1)
        return self

    def _read(self, t: int, channels: tuple[int, ...], region: Region) -> np.ndarray:
        count = self.inner.info.shape[1]
        out = np.empty((len(channels), *(b - a for a, b in region)), np.float32)
        mine = [i for i, c in enumerate(channels) if c < count]
        if mine:
            own = tuple(channels[i] for i in mine)
            out[mine] = self.inner.read(t, own, region).astype(np.float32, copy=False)
        if len(mine) < len(channels):
            winner = self._winner(t, region)
            for i, c in enumerate(channels):
                if c >= count:
                    out[i] = winner == self.values[c - count]
        return out

    def _winner(self, t: int, region: Region) -> np.ndarray:
        """The label of each voxel of ``region`` (in ``image``'s voxels): the map's, or,
        resampled, the label whose interpolated indicator is highest; background beyond
        the crop a resampling takes alone (``ResampledSource.spans``)."""
        resampling = self.resampling
        if resampling is not None and resampling.core(region) != region:
            background = np.zeros((1, 1, 1), np.int64)
            return resampling.around(region, lambda r: self._winner(t, r), background)
        if self.resampling is None:
            taps: list[Any] = [None] * 3
            boxes = region
        else:
            taps = self._taps(region)
            boxes = self.resampling.source_region(region, taps)
        read = self.labels.read(t, (0,), boxes)[0]
        read = (np.rint(read) if read.dtype.kind == "f" else read).astype(np.int64)
        if self.box is not None:
            read[~inside_box(boxes, self.box)] = 0
        if all(found is None for found in taps):
            return read
        starts = [a for a, _ in boxes]
        read[~np.isin(read, self.values)] = 0  # the other labels are background
        # Background and each foreground label, in order: the lowest wins a tie.
        near = self._taps(region, "nearest")
        return resampled_labels(read, (0, *self.values), taps, near, starts)

    def _taps(self, region: Region, kind: str | None = None) -> list[Any]:
        """Per axis of ``region``, the taps of the labels' interpolation (None: an axis
        not resampled): ``kind`` (of ``resampled.KINDS``), else as the image's
        resampling's scheme resamples segmentations, else linear."""
        resampling = self.resampling
        assert resampling is not None
        kinds = dict.fromkeys("zyx", kind or "linear")
        if kind is None and "segmentation" in (resampling.scheme or {}):
            kinds.update(resampling.kinds_forward("segmentation"))
        return [
            resampling.taps(k, kinds[a], lo, hi)
            for k, (a, (lo, hi)) in enumerate(zip("zyx", region, strict=True))
        ]
