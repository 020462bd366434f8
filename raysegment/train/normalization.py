"""nnU-Net's normalization of the training images (``normalization=nnunet``), as nnU-Net's
dataset fingerprint and preprocessing normalize them, recorded in the model directory by
the keys an nnU-Net training's import gives (``infer.nnunet``), so that infer normalizes
each image it segments the same way:

- each channel's scheme by ``dataset.json``'s ``channel_names`` (nnU-Net's
  ``get_normalization_scheme``: ``CT``, ``noNorm``, ``zscore``, ``rescale_to_0_1``,
  ``rgb_to_0_1``, any other name a Z-score);
- every image cropped to the box of its nonzero voxels (``data.nonzero``), its Z-scores
  taken within the nonzero region itself where that box leaves the median image under
  3/4 of its voxels (``use_mask_for_norm``: skull-stripped brain MR), every voxel outside
  the region then 0;
- a Z-score of each image's own mean and deviation (of its box, or region); a CT channel
  clipped to its foreground's 0.5 and 99.5 percentiles, less the foreground's mean, over
  its deviation: of the voxels every pair's labels mark past 0 (in the box), sampled as
  nnU-Net samples them (``FOREGROUND_SAMPLES`` over the dataset, shared among the cases,
  with replacement, each case's draws seeded ``SEED``) and summed up as it sums them.

The images are read at nnU-Net's normalization; resampled after it, as nnU-Net resamples
its normalized images (a CT channel's clip applied before, as infer does).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysegment.data.nonzero import SLAB_BYTES, Nonzero, NonzeroSource, nonzero_region
from raysegment.data.sources import ImageSource
from raysegment.errors import ConfigError, InputImageError
from raysegment.infer.nnunet import normalization_meta
from raysegment.infer.plan import clip_of, clipped_before, model_normalization

__all__ = [
    "FOREGROUND_SAMPLES",
    "MASKED_BELOW",
    "SCHEMES",
    "PerImage",
    "channel_schemes",
    "foreground_properties",
    "nnunet_normalization",
]

SCHEMES = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
"""nnU-Net's normalization of a channel by its name (casefolded); others: a Z-score."""
FOREGROUND_SAMPLES = 10**8
"""Foreground voxels drawn over the dataset for a CT channel's statistics (nnU-Net's
``num_foreground_voxels_for_intensitystats``), each case an equal share."""
SEED = 1234
"""nnU-Net's seed of each case's foreground draws."""
MASKED_BELOW = 0.75
"""The median image's share of its voxels in its nonzero box under which Z-scores are
taken within the nonzero region (nnU-Net's)."""
_DRAWS = 2**22
"""Foreground indices drawn at once (the draws equal one call's)."""
_THREADS = 4
"""Images whose nonzero region is found at once (as infer finds them)."""

log = logging.getLogger("raysegment")

Normal = tuple[tuple[float, ...], tuple[float, ...]]
"""Per channel an image's (offset, scale): normalized = (x - offset) / scale."""


@dataclass(frozen=True)
class PerImage:
    """The training images' normalization, measured on each: ``meta``, the model
    directory's keys (``MODEL_META``'s ``normalize``, ``nonzero``, ``nonzero_kept``);
    per image its nonzero region (``regions``) and its (offset, scale) per channel
    (``normals``); per channel the bounds the normalized values are clipped to (``clip``;
    None: none is)."""

    meta: dict[str, Any]
    regions: tuple[Nonzero, ...]
    normals: tuple[Normal, ...]
    clip: tuple[tuple[float, float], ...] | None

    def source(self, k: int, image: ImageSource) -> ImageSource:
        """Image ``k`` (as its region was found) with the voxels outside its region (or
        box) at its offset, 0 once normalized, as nnU-Net leaves and pads them."""
        nonzero = self.regions[k]
        if not nonzero.within and nonzero.whole:
            return image
        return NonzeroSource(image, nonzero, self.normals[k][0])

    def raw_clip(self) -> dict[int, tuple[float, float]] | None:
        """Per image channel the range in the images' own values the normalization
        clips to (a CT channel's, of fixed values), which resampling clips to before, as
        nnU-Net resamples the clipped values (``plan.clipped_before``)."""
        return clipped_before(self.meta.get("normalize"), self.regions[0].channels)


def channel_schemes(dataset: dict[str, Any], channels: Sequence[int]) -> list[str]:
    """nnU-Net's normalization scheme of each of the images' ``channels``, by the name
    ``dataset`` (an nnU-Net ``dataset.json``; may be empty) gives it."""
    names = dataset.get("channel_names") or dataset.get("modality") or {}
    zscore = "ZScoreNormalization"
    return [SCHEMES.get(str(names.get(str(c), "")).casefold(), zscore) for c in channels]


def nnunet_normalization(
    dataset: dict[str, Any],
    images: Sequence[ImageSource],
    labels: Sequence[ImageSource],
    channels: tuple[int, ...],
    planes: bool,
    samples: int | None = None,
) -> PerImage:
    """nnU-Net's normalization of ``images`` (as read before any resampling; ``labels``
    on their pixels) over ``channels``; ``planes``: each region's planes' ranges, which
    nnU-Net's resampling clips to, are found too; ``samples``: the foreground voxels
    drawn for a CT channel's statistics (default ``FOREGROUND_SAMPLES``).

    Raises:
        InputImageError: an image whose channels are 0 at every voxel, a CT channel whose
            labels mark no foreground.
        ConfigError: Z-scores within the nonzero region beside a rescaling to [0, 1],
            which nnU-Net measures over the box.
    """
    schemes = channel_schemes(dataset, channels)
    log.info("raysegment: normalization=nnunet: the nonzero regions of %d images", len(images))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(min(_THREADS, len(images))) as pool:
            regions = list(
                pool.map(lambda im: nonzero_region(im, channels, True, True, planes), images)
            )
    for image, region in zip(images, regions, strict=True):
        if region.box is None:
            raise InputImageError(
                f"{image.where}: channels {list(channels)} are 0 at every voxel; leave the "
                f"image out of the training"
            )
    boxes = [r.box for r in regions if r.box is not None]
    shares = [
        math.prod(b - a for a, b in box) / math.prod(r.shape)
        for box, r in zip(boxes, regions, strict=True)
    ]
    masked = float(np.median(shares)) < MASKED_BELOW
    within = [masked and s == "ZScoreNormalization" for s in schemes]
    if any(within) and "RescaleTo01Normalization" in schemes:
        raise ConfigError(
            f"normalization=nnunet: {images[0].where} and the others are normalized within "
            f"their nonzero region (under {MASKED_BELOW} of their voxels in its box) but "
            f"channel(s) named rescale_to_0_1 are rescaled over the box; name them zscore "
            f"in dataset.json's channel_names"
        )
    if any(within):
        for message in caught:
            warnings.warn(message.message, stacklevel=2)
    stats = {}
    if "CTNormalization" in schemes:
        stats = foreground_properties(images, labels, boxes, channels, samples)
        absent = [c for c, s in zip(channels, schemes, strict=True) if s == "CTNormalization"]
        if not stats:
            raise InputImageError(
                f"{labels[0].path} and the other labels mark no voxel past 0: a CT channel "
                f"({absent}) is normalized by its foreground's values; give labels of "
                f"foreground, or name the channel zscore in dataset.json's channel_names"
            )
    meta = normalization_meta(
        {"foreground_intensity_properties_per_channel": stats},
        {"normalization_schemes": schemes, "use_mask_for_norm": within},
        len(channels),
        "normalization=nnunet",
    )
    log.warning(
        "raysegment: normalization=nnunet: %s; each image cropped to its nonzero box (the "
        "median box %.0f%% of its image)",
        "; ".join(_described(channels, schemes, within, stats)),
        100 * float(np.median(shares)),
    )
    kept = tuple(channels[k] for k in meta.get("nonzero_kept", ()))
    regions = [dataclasses.replace(r, within=any(within), kept=kept) for r in regions]
    norm = meta.get("normalize")
    normals = [
        model_normalization(norm, image, channels, region)
        if norm
        else ((0.0,) * len(channels), (1.0,) * len(channels))
        for image, region in zip(images, regions, strict=True)
    ]
    return PerImage(meta, tuple(regions), tuple(normals), clip_of(norm, len(channels)))


def _described(
    channels: Sequence[int],
    schemes: Sequence[str],
    within: Sequence[bool],
    stats: dict[str, dict[str, float]],
) -> list[str]:
    """Each channel's normalization, in words (the training's log)."""
    out = []
    for k, (c, scheme, inside) in enumerate(zip(channels, schemes, within, strict=True)):
        if scheme == "CTNormalization":
            s = stats[str(k)]
            low, high, mean, std = (s["percentile_00_5"], s["percentile_99_5"], s["mean"], s["std"])
            out.append(
                f"channel {c} CT, clipped to [{low:g}, {high:g}], less {mean:g} over {std:g}"
            )
        elif scheme == "ZScoreNormalization":
            where = " within its nonzero region" if inside else ""
            out.append(f"channel {c} each image's Z-score{where}")
        else:
            out.append(f"channel {c} {scheme}")
    return out


def foreground_properties(
    images: Sequence[ImageSource],
    labels: Sequence[ImageSource],
    boxes: Sequence[tuple[tuple[int, int], ...]],
    channels: tuple[int, ...],
    samples: int | None = None,
) -> dict[str, dict[str, float]]:
    """nnU-Net's ``foreground_intensity_properties_per_channel`` (keyed by the channel's
    place in ``channels``) of ``images`` within their ``boxes``: each case's voxels its
    label's first channel marks past 0, ``samples / cases`` of each channel's drawn with
    replacement (one generator a case, seeded ``SEED``, drawing the channels in turn), the
    drawn values' mean, deviation, extremes and 0.5, 50 and 99.5 percentiles over every
    case. A channel no case has foreground of is left out. The draws are counted per
    voxel and the values summed up per distinct value: memory of the foreground's voxels,
    not of the draws."""
    share = int((samples or FOREGROUND_SAMPLES) // len(images))
    values: list[list[np.ndarray]] = [[] for _ in channels]
    counts: list[list[np.ndarray]] = [[] for _ in channels]
    for image, label, box in zip(images, labels, boxes, strict=True):
        pixels = _foreground(image, label, box, channels)
        draws = np.random.RandomState(SEED)
        for i, found in enumerate(pixels):
            if not len(found):
                continue
            drawn = np.zeros(len(found), np.int64)
            for start in range(0, share, _DRAWS):
                at = draws.randint(0, len(found), min(_DRAWS, share - start))
                drawn += np.bincount(at, minlength=len(found))
            distinct, where = np.unique(found, return_inverse=True)
            values[i].append(distinct)
            counts[i].append(np.bincount(where, weights=drawn))
    out = {}
    for i in range(len(channels)):
        if values[i]:
            distinct, where = np.unique(np.concatenate(values[i]), return_inverse=True)
            out[str(i)] = _weighted(distinct, np.bincount(where, weights=np.concatenate(counts[i])))
    return out


def _foreground(
    image: ImageSource,
    label: ImageSource,
    box: tuple[tuple[int, int], ...],
    channels: tuple[int, ...],
) -> list[np.ndarray]:
    """Per channel the values (float32) of the voxels in ``box`` that ``label``'s first
    channel marks past 0, in the box's C order (nnU-Net's)."""
    (z0, z1), (y0, y1), (x0, x1) = box
    slab = max(1, SLAB_BYTES // (4 * len(channels) * (y1 - y0) * (x1 - x0)))
    parts: list[list[np.ndarray]] = [[] for _ in channels]
    for a in range(z0, z1, slab):
        region = ((a, min(z1, a + slab)), (y0, y1), (x0, x1))
        marked = label.read(0, (0,), region)[0] > 0
        if marked.any():
            data = image.read(0, channels, region)
            for i in range(len(channels)):
                parts[i].append(data[i][marked].astype(np.float32))
    return [np.concatenate(p) if p else np.zeros(0, np.float32) for p in parts]


def _weighted(values: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """nnU-Net's statistics of the draws: ``values`` (ascending) each drawn ``counts``
    times; the percentiles numpy's (linear) of the draws sorted."""
    values = values.astype(np.float64)
    total = float(counts.sum())
    mean = float((values * counts).sum() / total)
    ends = np.cumsum(counts)

    def percentile(q: float) -> float:
        at = q / 100 * (total - 1)
        low = math.floor(at)
        t = at - low
        a, b = values[np.searchsorted(ends, [low, min(low + 1, total - 1)], side="right")]
        # numpy's interpolation, from the nearer end
        return float(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))

    return {
        "mean": mean,
        "median": percentile(50.0),
        "std": float(np.sqrt((counts * (values - mean) ** 2).sum() / total)),
        "min": float(values[0]),
        "max": float(values[-1]),
        "percentile_99_5": percentile(99.5),
        "percentile_00_5": percentile(0.5),
    }
