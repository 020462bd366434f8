"""Training data: checked image/label pairs, normalization, lazily read random patches.

Patches are read region by region from images of any size; nothing loads a whole image
except the label scan, which reads each label region by region too.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from raysegment import storage
from raysegment.config import TrainConfig, Unannotated
from raysegment.data.annotations import IGNORED, GeoJsonLabels, is_geojson
from raysegment.data.channels import CHANNEL_FILE, ChannelFilesSource
from raysegment.data.dicom_labels import (
    DicomSegLabels,
    segment_codes,
    segment_targets,
    segmentation_header,
)
from raysegment.data.nonzero import Nonzero
from raysegment.data.pairs import pair_images
from raysegment.data.resampled import (
    NNUNET_RESAMPLING,
    ResampledLabels,
    ResampledSource,
    recorded,
    resampled_to,
)
from raysegment.data.sources import (
    MICROMETRES,
    ImageInfo,
    ImageSource,
    Region,
    WrappedSource,
    image_stem,
    open_source,
    pixel_micrometres,
)
from raysegment.data.tiling import under_centres
from raysegment.errors import ConfigError, InputImageError
from raysegment.infer.nnunet import dataset_classes, dataset_regions
from raysegment.train import augment as augment_
from raysegment.train.normalization import PerImage, nnunet_normalization
from raysegment.train.spacing import planned_patch, target_spacing

__all__ = ["IGNORE", "AtLevel", "Pair", "TrainingSet", "prepare", "read_patches"]

IGNORE = -1
"""The target of a pixel not labelled (``TrainingSet.ignore``): the losses and the metrics
leave it out."""

log = logging.getLogger("raysegment")

_SCAN = 1024
_STAT_SAMPLES = 16

MIXED = 1.05
"""Ratio of the training images' largest pixel to their smallest past which they are said
to differ (where no ``resample_size`` reads them at one)."""


@dataclass(frozen=True)
class Pair:
    image: ImageSource
    label: ImageSource

    @property
    def planes(self) -> int:
        return self.image.info.shape[2]

    @property
    def size(self) -> tuple[int, int]:
        return self.image.info.shape[3], self.image.info.shape[4]


@dataclass(frozen=True)
class TrainingSet:
    pairs: tuple[Pair, ...]
    train: tuple[int, ...]
    val: tuple[int, ...]
    channels: tuple[int, ...]
    mode: str
    classes: int
    """Output channels of the model: 1 (binary), the label channels (multilabel) or the
    number of classes (multiclass)."""
    patch: tuple[int, ...]
    """(y, x), or (z, y, x): a 3D network's."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ignore: int | None = None
    """The label value of pixels not labelled (``ignore_index``, or GeoJSON labels'
    ``IGNORED``); None where every pixel is labelled."""
    class_names: tuple[str, ...] | None = None
    """The classes' names: ``class_names``, else the DICOM SEG labels' segments'."""
    class_codes: tuple[dict[str, list[str]] | None, ...] | None = None
    """Each class's coded meaning, where DICOM SEG labels give one (``segment_codes``):
    ``finalize.dicom_seg`` writes it with the class's segment."""
    pixel: tuple[dict[str, float], str] | None = None
    """The pixel size (y and x; z too where given) every image was read at
    (``resample_size``) and its unit; None where each image is read as stored."""
    channel_files: tuple[str, ...] | None = None
    """Where each image is a case's channel files, every one a channel: the channels'
    names (``MODEL_META``'s ``channel_files``)."""
    regions: tuple[tuple[int, ...], ...] | None = None
    """mode=multilabel of a label image of classes: each output's label values
    (``TrainConfig.regions``); None: the labels' channels."""
    region_labels: tuple[int, ...] | None = None
    """The label each region paints (``TrainConfig.region_order``)."""
    spacing: tuple[float, ...] | None = None
    """The voxels' size along the patch's axes, in micrometres: the training images' median
    (what nnU-Net's planner shapes its networks by); None where an image does not say."""
    foreground: tuple[Foreground | None, ...] = ()
    """Each pair's labels' foreground voxels (``_scan_labels``): where oversampled patches
    centre."""
    oversample: float = 0.0
    """The share of random patches centred on a foreground voxel (``oversample_foreground``)."""
    oversample_batch: bool = False
    """Whether the last of each batch's patches are those (``oversample_by=batch``); else
    each patch with that probability."""
    resampling: dict[str, Any] | None = None
    """nnU-Net's resampling scheme the images were read at ``pixel`` by (``resampling``,
    ``resampled.NNUNET_RESAMPLING``); None: antialiased linear, or not resampled."""
    batch: int | None = None
    """The batch (of every worker's patches together) nnU-Net's planner gave with the
    patch (``plan``); None: not planned."""
    per_image: PerImage | None = None
    """Each image's own normalization (``normalization=nnunet``; ``mean`` and ``std`` are
    then the images' medians); None: ``mean`` and ``std`` normalize every image."""

    def normal(self, k: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Pair ``k``'s (offset, scale) per channel: normalized = (x - offset) / scale."""
        return self.per_image.normals[k] if self.per_image else (self.mean, self.std)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """The patch's (z, y, x): one plane thick in 2D."""
        return (1, *self.patch)[-3:]  # type: ignore[return-value]

    def train_specs(self, count: int, seed: int, epoch: int = 0) -> list[dict[str, int]]:
        """``count`` random patches of an epoch, images drawn in proportion to their
        area: new ones every epoch, the same for the same ``seed`` and ``epoch`` (a
        resumed run draws what an uninterrupted one would)."""
        rng = np.random.default_rng((seed, epoch))
        area = np.array([self.pairs[i].planes * np.prod(self.pairs[i].size) for i in self.train])
        picks = rng.choice(self.train, size=count, p=area / area.sum())
        return [{"pair": int(i), "seed": int(rng.integers(2**31))} for i in picks]

    def worker_specs(
        self, count: int, seed: int, epoch: int, rank: int, world: int, batch: int = 1
    ) -> list[dict[str, int]]:
        """Worker ``rank`` of ``world``'s part of an epoch's ``count`` random patches: as
        many for every worker (data-parallel workers step together; at least one each),
        no patch on two workers; with ``oversample_batch``, the step's batch (``batch`` of
        each worker's, in order, the workers' in their ranks' order) has its last patches
        marked to centre on foreground (``fg``), as nnU-Net's data loader picks them (and
        shares them out among its GPUs)."""
        share = max(count // world, 1)
        specs = self.train_specs(share * world, seed, epoch)[rank * share : (rank + 1) * share]
        if self.oversample_batch:
            first = round(batch * world * (1 - self.oversample))
            for k, spec in enumerate(specs):
                spec["fg"] = int(rank * batch + k % batch >= first)
        return specs

    def val_specs(self, count: int) -> list[dict[str, int]]:
        """A fixed grid of patches over the validation images, evenly thinned to ``count``;
        where images are labelled by GeoJSON annotations, a share ``ANNOTATED`` of them
        centred on their polygons instead (a slide's glass alone tells little), all of
        them where the annotations alone label (``sparse``)."""
        grid, centred = [], []
        pz, ph, pw = self.sizes
        for i in self.val:
            pair = self.pairs[i]
            (h, w), planes = pair.size, pair.planes
            label = pair.label
            if isinstance(label, GeoJsonLabels):
                for top, left, bottom, right in label.labelled:
                    y, x = _centred_at((top + bottom) / 2, (left + right) / 2, (h, w), (ph, pw))
                    centred += [{"pair": i, "z": z, "y": y, "x": x} for z in range(planes)]
                if label.sparse:
                    continue
            zs = sorted({*range(0, planes - pz + 1, pz), planes - pz})
            ys = sorted({*range(0, h - ph + 1, ph), h - ph})
            xs = sorted({*range(0, w - pw + 1, pw), w - pw})
            for z, y, x in itertools.product(zs, ys, xs):
                grid.append({"pair": i, "z": z, "y": y, "x": x})
        if not centred or not grid:
            return _thinned(grid or centred, count)
        share = min(len(centred), max(1, round(count * ANNOTATED)))
        return _thinned(centred, share) + _thinned(grid, count - share)


def _thinned(specs: list[dict[str, int]], count: int) -> list[dict[str, int]]:
    """``specs`` evenly thinned to ``count`` at most."""
    if len(specs) <= count:
        return specs
    keep = np.linspace(0, len(specs) - 1, count).round().astype(int)
    return [specs[k] for k in keep]


class AtLevel(ImageSource):
    """Labels drawn at an image's full resolution (``labels``), read at the level of it
    that trains (of ``shape``): each pixel takes the label under its centre (labels are
    classes, never averaged); a region reads the full-resolution region under it."""

    kind = "labels-at-level"

    def __init__(self, labels: ImageSource, shape: tuple[int, ...]) -> None:
        self.labels = labels
        self.shape = (*labels.info.shape[:2], *shape[2:])
        super().__init__(labels.path, name=labels.name)

    def _inspect(self) -> ImageInfo:
        return ImageInfo(self.shape, self.labels.info.dtype)  # type: ignore[arg-type]

    def _open(self) -> Any:
        return None

    def _read(
        self, t: int, channels: tuple[int, ...], region: tuple[tuple[int, int], ...]
    ) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = region
        (_, _, depth, height, width), level = self.labels.info.shape, self.shape
        planes = under_centres(z0, z1, level[2], depth)
        rows = under_centres(y0, y1, level[3], height)
        columns = under_centres(x0, x1, level[4], width)
        under = tuple((int(a[0]), int(a[-1]) + 1) for a in (planes, rows, columns))
        full = self.labels.read(t, channels, under)  # type: ignore[arg-type]
        return full[:, planes - planes[0]][:, :, rows - rows[0]][:, :, :, columns - columns[0]]


def _at_level(label: ImageSource, image: ImageSource, full: ImageSource) -> ImageSource:
    """``label`` as ``image`` reads: itself, or, drawn at the size of the image's ``full``
    resolution where it is read at a reduced level, ``AtLevel``; where it is resampled by
    nnU-Net's scheme, as nnU-Net resamples labels (``ResampledLabels``)."""
    size = label.info.shape[2:]
    if size == image.info.shape[2:] or size != full.info.shape[2:]:
        return label
    if isinstance(image, ResampledSource) and image.scheme:
        return ResampledLabels(label, image)
    return AtLevel(label, image.info.shape)


def _check_pair(
    image: ImageSource, label: ImageSource, patch: tuple[int, ...], mode: str, regions: bool
) -> None:
    ti, _, zi, yi, xi = image.info.shape
    tl, cl, zl, yl, xl = label.info.shape
    if (zi, yi, xi) != (zl, yl, xl) or tl != ti:
        raise InputImageError(
            f"{label.path}: label shape (t,z,y,x)={(tl, zl, yl, xl)} differs from its image "
            f"{image.where} {(ti, zi, yi, xi)}; each label must cover its image pixel for pixel "
            f"(at input_level > 0, the level's pixels or the full resolution's; with "
            f"resample_size, the full resolution's)"
        )
    if ti > 1:
        raise InputImageError(f"{image.path}: has {ti} time points; train on single time points")
    if yi < patch[-2] or xi < patch[-1]:
        raise InputImageError(
            f"{image.path}: image of {yi} x {xi} is smaller than patch_size={list(patch)}; "
            f"choose patch_size <= the smallest image (a multiple of 32 for most encoders)"
        )
    if len(patch) == 3 and zi < patch[0]:
        raise InputImageError(
            f"{image.path}: image of {zi} plane(s) is thinner than patch_size={list(patch)}; "
            f"choose the patch's z <= the thinnest image's planes"
        )
    if regions and cl != 1:
        raise InputImageError(
            f"{label.path}: label has {cl} channels; regions= are of one label channel of "
            f"classes (a label image, each pixel its class)"
        )
    if mode != "multilabel" and cl != 1:
        raise InputImageError(
            f"{label.path}: label has {cl} channels; mode={mode} needs one label channel "
            f"(use mode=multilabel for one binary channel per class)"
        )


Foreground = dict[tuple[int, int], np.ndarray]
"""A label image's foreground voxels, a sample of them (``_SAMPLED`` at most) for each
(channel, label value) past 0 it holds: (k, 3) of their (z, y, x)."""

_SAMPLED = 4096
"""Foreground voxels kept of each label of an image (``Foreground``)."""


def _scan_labels(
    label: ImageSource, ignore: int | None, locate: bool
) -> tuple[set[int], Foreground | None]:
    """Distinct values of a label image, read region by region (GeoJSON labels and DICOM
    SEGs: their polygons' and segments'), and with ``locate`` a seeded sample of the
    voxels of each label past 0 but ``ignore`` (None for GeoJSON labels, whose polygons
    centre patches, and without ``locate``)."""
    drawn = label.labels if isinstance(label, AtLevel) else label
    if isinstance(drawn, GeoJsonLabels) or (isinstance(drawn, DicomSegLabels) and not locate):
        return drawn.values(), None
    _, c, z, y, x = label.info.shape
    if label.info.dtype.kind == "f":
        raise InputImageError(
            f"{label.path}: label pixels are {label.info.dtype}; labels must be integers"
        )
    values: set[int] = set()
    rng, found = np.random.default_rng(0), dict[tuple[int, int], list[np.ndarray]]()
    for zz, y0, x0 in itertools.product(range(z), range(0, y, _SCAN), range(0, x, _SCAN)):
        region = ((zz, zz + 1), (y0, min(y0 + _SCAN, y)), (x0, min(x0 + _SCAN, x)))
        data = label.read(0, tuple(range(c)), region)[:, 0]
        here = {int(v) for v in np.unique(data)}
        values |= here
        if len(values) > 4096:
            break
        labelled = here - {0, ignore} if locate else set()
        for channel, value in itertools.product(range(c), labelled):
            at = np.argwhere(data[channel] == value)
            if len(at):
                keep = at[rng.choice(len(at), min(len(at), 256), replace=False)]
                place = np.column_stack([np.full(len(keep), zz), keep + (y0, x0)])
                found.setdefault((channel, value), []).append(place)
    samples: Foreground = {}
    for key, parts in sorted(found.items()):
        at = np.concatenate(parts)
        keep = rng.choice(len(at), min(len(at), _SAMPLED), replace=False)
        samples[key] = at[np.sort(keep)].astype(np.int32)
    if isinstance(drawn, DicomSegLabels):
        values = drawn.values()
    return values, samples if locate else None


def _classes(
    cfg: TrainConfig,
    pairs: list[Pair],
    held: list[set[int]],
    ignore: int | None,
    class_names: list[str] | None,
    described: bool = False,
) -> int:
    """The model's output channels from the labels' values (``held``: each pair's;
    ``ignore`` left out) and the classes' names (``cfg.class_names``, or the DICOM SEG
    labels'); ``described``: an nnU-Net dataset's ``dataset.json`` describes regions (named
    in the errors)."""
    mode = cfg.mode.value
    unlabelled = {ignore} if ignore is not None else set()
    if cfg.regions is not None:
        allowed = {0, *itertools.chain(*cfg.regions)} | unlabelled
        for p, values in zip(pairs, held, strict=True):
            bad = sorted(values - allowed)
            if bad:
                raise InputImageError(
                    f"{p.label.path}: has values {bad[:5]}, in no region of regions="
                    f"{cfg.regions}; add them to a region, or give ignore_index= for the value "
                    f"of pixels not labelled"
                )
        return len(cfg.regions)
    if mode == "multilabel":
        counts = {p.label.info.shape[1] for p in pairs}
        if len(counts) != 1:
            raise InputImageError(f"labels have differing channel counts {sorted(counts)}")
        for p, values in zip(pairs, held, strict=True):
            bad = sorted(values - {0, 1} - unlabelled)
            if bad:
                raise InputImageError(
                    f"{p.label.path}: has values {bad[:5]}; mode=multilabel needs 0/1 per channel"
                    + ("" if ignore is not None else " (and ignore_index= where not labelled)")
                )
        return counts.pop()
    seen: dict[int, str] = {}
    for p, found in zip(pairs, held, strict=True):
        values = (found - unlabelled) or {0}
        if min(values) < 0:
            raise InputImageError(f"{p.label.path}: has negative label values")
        if mode == "binary" and len(values - {0}) > 1:
            raise InputImageError(
                f"{p.label.path}: has values {sorted(values)[:6]}; mode=binary needs 0 and one "
                f"foreground value (use mode=multiclass for several classes, "
                + ("mode=multilabel for the regions dataset.json describes, " if described else "")
                + "ignore_index= for the value of pixels not labelled)"
            )
        seen |= {v: p.label.path for v in values}
    if mode == "binary":
        return 1
    top = max(seen)
    # Classes no label holds yet still count when class_names names them.
    classes = cfg.classes or max(top + 1, len(class_names or ()))
    if top >= classes:
        raise InputImageError(
            f"{seen[top]}: holds class {top} but classes={classes}; raise classes= or fix the "
            f"labels (classes are 0 .. classes-1)"
        )
    classes = max(classes, 2)
    if cfg.ignore_index is not None and cfg.ignore_index < classes:
        raise ConfigError(
            f"ignore_index={cfg.ignore_index} is one of the classes 0 .. {classes - 1}; choose a "
            f"value no class takes (e.g. 255)"
        )
    return classes


def _stats(
    pairs: list[Pair], ids: tuple[int, ...], channels: tuple[int, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std from a fixed sample of regions of the training images."""
    rng = np.random.default_rng(0)
    samples = []
    for k in range(_STAT_SAMPLES):
        pair = pairs[ids[k % len(ids)]]
        (h, w), z = pair.size, pair.planes
        sy, sx = min(h, 256), min(w, 256)
        y0, x0 = int(rng.integers(0, h - sy + 1)), int(rng.integers(0, w - sx + 1))
        zz = int(rng.integers(0, z))
        data = pair.image.read(0, channels, ((zz, zz + 1), (y0, y0 + sy), (x0, x0 + sx)))
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise InputImageError(
                f"{pair.image.path}: has NaN or infinite pixels; replace them (e.g. "
                f"numpy.nan_to_num) or leave the image out"
            )
        samples.append(data.reshape(len(channels), -1).astype(np.float64))
    data = np.concatenate(samples, axis=1)
    std = data.std(axis=1)
    return tuple(map(float, data.mean(axis=1))), tuple(float(s) if s > 0 else 1.0 for s in std)


def _read_at(
    full: ImageSource,
    size: dict[str, float],
    unit: str,
    scheme: dict[str, Any] | None,
    clip: dict[int, tuple[float, float]] | None = None,
    nonzero: Nonzero | None = None,
) -> ImageSource:
    """The image ``full`` (at full resolution) read at the pixel ``size`` (y and x, or z,
    y and x) in ``unit`` ("": its own units): antialiased linear from a pyramid's level,
    or resampled by nnU-Net's ``scheme`` from the full resolution, as nnU-Net reads (its
    channels first clipped to ``clip``, its slices to the ranges of its ``nonzero``
    region: ``resampled_to``)."""
    return resampled_to(
        full,
        size,
        unit,
        recorded,
        pyramid=scheme is None,
        fix="record it in the image (an OME-TIFF's PhysicalSizeX/Y, an OME-Zarr's scale), or "
        "train without resample_size",
        scheme=scheme,
        clip=clip,
        nonzero=nonzero,
    )


def _median_voxel(images: list[ImageSource], dims: int) -> dict[str, float]:
    """nnU-Net's target voxel size of ``images`` (``target_spacing``) along their last
    ``dims`` axes, in the first image's unit.

    Raises:
        InputImageError: an image records no size along one of those axes.
    """
    axes = "zyx"[-dims:]
    spacings = []
    for image in images:
        sizes = _voxel(image, dims)
        if min(sizes) <= 0:
            missing = axes[int(np.argmin(sizes))]
            raise InputImageError(
                f"{image.where}: no pixel size recorded along {missing}; resample_to=median "
                f"needs every image's (an OME-TIFF's PhysicalSize{missing.upper()}, a NIfTI "
                f"header's): record it, or give resample_size="
            )
        spacings.append(sizes)
    shapes = [image.info.shape[5 - dims :] for image in images]
    per = MICROMETRES[_length_unit(images[0])]
    target = target_spacing(spacings, shapes)
    return {a: v / per for a, v in zip(axes, target, strict=True)}


def _voxel(image: ImageSource, dims: int) -> list[float]:
    """``image``'s voxel size in micrometres along its last ``dims`` axes (0 where unknown)."""
    info = image.info
    return [pixel_micrometres(info.scale, info.units, a) for a in "zyx"[-dims:]]


def _length_unit(source: ImageSource) -> str:
    """``source``'s unit along x where it is a length this package converts, else ""."""
    unit = source.info.units.get("x", "")
    return unit if unit in MICROMETRES else ""


def _warn_mixed(pairs: list[Pair]) -> None:
    """Say so where the training images' pixel sizes differ (those recording a length):
    the model records the first's, and objects are of other sizes in the others."""
    infos = {p.image.where: p.image.info for p in pairs}
    found = {where: pixel_micrometres(info.scale, info.units) for where, info in infos.items()}
    sizes = {where: size for where, size in found.items() if size > 0}
    if len(sizes) < 2 or max(sizes.values()) <= MIXED * min(sizes.values()):
        return
    small, large = min(sizes, key=sizes.__getitem__), max(sizes, key=sizes.__getitem__)
    log.warning(
        "raysegment: the training images' pixel sizes differ, from %.4g µm (%s) to %.4g µm "
        "(%s); the model records the first image's; give resample_size= to train at one",
        sizes[small],
        small,
        sizes[large],
        large,
    )


def _split(cfg: TrainConfig, count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The pairs that train and those that validate: seeded, by ``train_fraction`` or,
    with ``folds``, part ``fold`` of the pairs in ``folds`` (parts differ by one at most).

    Raises:
        InputImageError: fewer pairs than folds.
    """
    order = np.random.default_rng(cfg.seed).permutation(count)
    if cfg.folds > 1:
        if count < cfg.folds:
            raise InputImageError(
                f"{cfg.images.dir}: found {count} image/label pairs; folds={cfg.folds} needs "
                f"at least {cfg.folds} (one to validate in each fold)"
            )
        held = set(np.array_split(order, cfg.folds)[cfg.fold].tolist())
    else:
        n_train = min(max(1, round(cfg.train_fraction * count)), count - 1)
        held = set(order[n_train:].tolist())
    train = tuple(i for i in range(count) if i not in held)
    return train, tuple(sorted(held))


def _open_image(files: tuple[str, ...], level: int = 0) -> ImageSource:
    """A pair's image: its file's, or a case's channel files as one image of their
    channels (``channels.ChannelFilesSource``), named after the case."""
    if len(files) == 1:
        return open_source(files[0], level=level)
    found = CHANNEL_FILE.match(image_stem(files[0]))
    assert found is not None  # as pair_images groups them
    return ChannelFilesSource([open_source(f, level=level) for f in files], found["case"])


def prepare(cfg: TrainConfig) -> TrainingSet:
    """Pair, open and check every image/label, split them, and measure normalization.

    An nnU-Net dataset's ``dataset.json`` beside the images' directory says what ``cfg``
    does not (``_as_described``).

    Raises:
        InputImageError: unpaired files, shape mismatches, label values that do not fit
            ``mode``, patches larger than an image, fewer than two pairs.
    """
    dataset = _dataset_json(cfg.images.dir)
    cfg = _as_described(cfg, dataset)
    found = pair_images(
        cfg.images.dir,
        cfg.images.pattern,
        cfg.labels.dir,
        cfg.labels.pattern,
        cfg.images.dataset,
        cfg.labels.dataset,
    )
    if len(found) < 2:
        raise InputImageError(
            f"{cfg.images.dir}: found {len(found)} image/label pair(s); training needs at least "
            f"2 (one to train on, one to validate with)"
        )
    patch = None if cfg.plan else cfg.patch()  # planned from the images read
    pairs: list[Pair] = []
    sparse = cfg.unannotated == Unannotated.ignore
    if sparse and not any(is_geojson(label) for _, label in found):
        raise ConfigError(
            f"unannotated=ignore: the labels in {cfg.labels.dir} are images, not GeoJSON "
            f"annotations; mark their pixels not labelled with a value and give it as "
            f"ignore_index="
        )
    drawn = cfg.ignore_index if cfg.ignore_index is not None else IGNORED
    mode = str(cfg.mode.value)
    labels = [label for _, label in found]
    headers = dict(zip(labels, storage.each(segmentation_header, labels), strict=True))
    segmentations = [h for h in headers.values() if h is not None]
    class_names = cfg.class_names
    class_codes = None
    if segmentations:  # their segments are classes by name
        class_names, targets = segment_targets(segmentations, mode, cfg.class_names)
        drawing = dict(zip((id(h) for h in segmentations), targets, strict=True))
        codes = segment_codes(segmentations)
        class_codes = tuple(codes.get(name.casefold()) for name in class_names)
    resample = cfg.resample_size
    target, opened = None, None
    scheme = dict(NNUNET_RESAMPLING) if cfg.resampling == "nnunet" else None
    if resample is not None:
        sizes = list(resample) * 2 if len(resample) == 1 else list(resample)  # y and x alike
        target = {a: float(v) for a, v in zip("zyx"[-len(sizes) :], sizes, strict=True)}
    elif cfg.resample_to is not None:
        opened = [_open_image(files) for files, _ in found]
        target = _median_voxel(opened, cfg.dims())
    unit = ""
    read: list[tuple[ImageSource, ImageSource]] = []  # as read before resampling; in full
    for k, (image_files, _) in enumerate(found):
        if target is None:
            image = _open_image(image_files, cfg.input_level)
            read.append((image, image.at_level(0) if image.level else image))
        else:  # the first image's unit is the size's; the others' are converted to it
            full = opened[k] if opened else _open_image(image_files)
            unit = unit if read else _length_unit(full)
            read.append((full, full))
    counts = {image.info.shape[1] for image, _ in read}
    if cfg.channels is None and len(counts) != 1:
        raise InputImageError(
            f"images have differing channel counts {sorted(counts)}; set channels="
        )
    channels = tuple(cfg.channels) if cfg.channels is not None else tuple(range(counts.pop()))
    if max(channels) >= min(image.info.shape[1] for image, _ in read):
        raise ConfigError(f"channels={list(channels)}: an image has fewer channels")

    def label_of(
        k: int, image: ImageSource, full: ImageSource, box: Region | None = None
    ) -> ImageSource:
        """Pair ``k``'s labels as ``image`` (of its ``full`` resolution; cropped to ``box``
        of it where given) reads."""
        label_path = found[k][1]
        header = headers[label_path]
        if header is not None:  # drawn on the image's full resolution
            label: ImageSource = DicomSegLabels(
                header, full, mode, drawing[id(header)], len(class_names or ())
            )
        elif is_geojson(label_path):  # in full-resolution coordinates, drawn at the level
            label = GeoJsonLabels(label_path, image, mode, cfg.class_names, drawn, sparse)
        else:
            label = open_source(label_path)
        if box is not None:
            label, full = Cropped(label, box), Cropped(full, box)
        return _at_level(label, image, full)

    per_image = None
    if cfg.normalization == "nnunet":  # measured before resampling, as nnU-Net measures
        if any(is_geojson(label) for _, label in found):
            raise ConfigError(
                f"normalization=nnunet: the labels in {cfg.labels.dir} are GeoJSON "
                f"annotations, which nnU-Net's crop to each image's nonzero box would move; "
                f"train with normalization=dataset"
            )
        per_image = nnunet_normalization(
            dataset,
            [image for image, _ in read],
            [label_of(k, *at) for k, at in enumerate(read)],
            channels,
            planes=target is not None and scheme is not None,
        )
    files = _channel_names(dataset, [image for image, _ in read], channels)
    for k, (image, full) in enumerate(read):
        box, clip, region = None, None, None
        if per_image is not None:  # cropped to the nonzero box, then resampled: nnU-Net's
            region = per_image.regions[k]
            image, clip = per_image.source(k, image), per_image.raw_clip()
            if not region.whole:
                box, region = region.box, region.cropped()
                image = Cropped(image, box)  # type: ignore[arg-type]
        if target is not None:
            image = _read_at(image, target, unit, scheme, clip, region)
        pairs.append(Pair(image, label_of(k, image, full, box)))
    if target is None:
        _warn_mixed(pairs)
    ignore = cfg.ignore_index
    if any(isinstance(p.label, GeoJsonLabels) and p.label.ignores for p in pairs):
        ignore = drawn
    scans = [_scan_labels(p.label, ignore, cfg.oversample_foreground > 0) for p in pairs]
    held = [values for values, _ in scans]
    described = _described_regions(dataset) is not None
    classes = _classes(cfg, pairs, held, ignore, class_names, described)
    if class_names is not None and len(class_names) != classes:
        raise ConfigError(
            f"class_names={class_names} names {len(class_names)} class(es) but the "
            f"labels ({cfg.mode.value}) give the model {classes} output channel(s)"
        )
    batch = None
    if patch is None:
        patch, batch = _plan(cfg, pairs, len(channels), classes, target)
    train, val = _split(cfg, len(pairs))
    # The folds of a cross-validation share one normalization, from every pair (as
    # nnU-Net's dataset fingerprint): their models then take the same input, an ensemble.
    measured = tuple(range(len(pairs))) if cfg.folds > 1 else train
    if per_image is None:
        mean, std = _stats(pairs, measured, channels)
    else:  # each image's own: here the images' median
        mean, std = (
            tuple(map(float, np.median(v, axis=0))) for v in zip(*per_image.normals, strict=True)
        )
    if batch is not None:  # nnU-Net's planned patch may be larger than some images
        for k, pair in enumerate(pairs):
            offset = per_image.normals[k][0] if per_image else mean
            pairs[k], shift = _padded(pair, patch, channels, offset)
            spots = scans[k][1]
            if spots and any(shift):
                scans[k] = (scans[k][0], {key: at + shift for key, at in spots.items()})
    for pair in pairs:
        _check_pair(pair.image, pair.label, patch, mode, cfg.regions is not None)
    if class_names is None and mode == "multiclass":
        class_names = _described_classes(dataset, classes)
    names = tuple(class_names) if class_names else None
    coded = class_codes if class_codes and any(class_codes) else None
    pixel = None if target is None else (target, unit)
    return TrainingSet(
        tuple(pairs),
        train,
        val,
        channels,
        mode,
        classes,
        patch,
        mean,
        std,
        ignore,
        names,
        coded,
        pixel,
        files,
        tuple(tuple(r) for r in cfg.regions) if cfg.regions else None,
        tuple(cfg.region_order()) if cfg.regions else None,
        _spacing([pairs[i] for i in train], len(patch)),
        tuple(found for _, found in scans),
        cfg.oversample_foreground,
        cfg.oversample_by == "batch",
        scheme if target is not None else None,
        batch,
        per_image,
    )


class Padded(WrappedSource):
    """``inner`` within a (z, y, x) ``shape`` at least its own, at ``offset``, the voxels
    around it ``fill`` (a value for each of its channels; 0 where not given)."""

    kind = "padded"

    def __init__(
        self,
        inner: ImageSource,
        shape: tuple[int, int, int],
        offset: tuple[int, int, int],
        fill: dict[int, float] | None = None,
    ) -> None:
        self.shape, self.offset, self.fill = shape, offset, dict(fill or {})
        super().__init__([inner])

    @property
    def where(self) -> str:
        return f"{self.inner.where} padded to {list(self.shape)}"

    def _inspect(self) -> ImageInfo:
        info = self.inner.info
        return replace(info, shape=(*info.shape[:2], *self.shape))  # type: ignore[arg-type]

    def at_level(self, level: int) -> ImageSource:
        if level:
            raise self._no_level(1)
        return self

    def _read(self, t: int, channels: tuple[int, ...], region: Region) -> np.ndarray:
        dtype = self.info.dtype
        out = np.empty((len(channels), *(b - a for a, b in region)), dtype)
        for k, c in enumerate(channels):
            value = self.fill.get(c, 0)
            out[k] = np.rint(value) if dtype.kind in "ui" else value
        sizes = self.inner.info.shape[2:]
        inside = [
            (max(a - o, 0), min(b - o, n))
            for (a, b), o, n in zip(region, self.offset, sizes, strict=True)
        ]
        if all(lo < hi for lo, hi in inside):
            at = tuple(
                slice(lo + o - a, hi + o - a)
                for (lo, hi), o, (a, _) in zip(inside, self.offset, region, strict=True)
            )
            out[(slice(None), *at)] = self.inner.read(t, channels, tuple(inside))
        return out


class Cropped(Padded):
    """``inner``'s ``box`` (a region of its (z, y, x) voxels)."""

    kind = "cropped"

    def __init__(self, inner: ImageSource, box: Region) -> None:
        shape = tuple(b - a for a, b in box)
        super().__init__(inner, shape, tuple(-a for a, _ in box))  # type: ignore[arg-type]

    @property
    def where(self) -> str:
        box = [[-o, n - o] for o, n in zip(self.offset, self.shape, strict=True)]
        return f"{self.inner.where} cropped to its nonzero box {box}"


def _padded(
    pair: Pair, patch: tuple[int, ...], channels: tuple[int, ...], mean: tuple[float, ...]
) -> tuple[Pair, np.ndarray]:
    """``pair`` padded to ``patch`` along each axis it is shorter along, as nnU-Net pads its
    images (centred; the image at its normalization's mean, 0 once normalized, the labels
    background), and the shift of its voxels (z, y, x); itself where none is, or where
    GeoJSON annotations label it (their polygons place its patches: ``_check_pair`` names
    the image smaller than the patch)."""
    sizes = pair.image.info.shape[2:]
    wanted = (1, *patch)[-3:]
    shape = tuple(max(n, p) for n, p in zip(sizes, wanted, strict=True))
    shift = np.asarray([(m - n) // 2 for m, n in zip(shape, sizes, strict=True)])
    if shape == sizes or isinstance(pair.label, GeoJsonLabels):
        return pair, np.zeros(3, np.int64)
    at = tuple(int(v) for v in shift)
    fill = dict(zip(channels, mean, strict=True))
    image = Padded(pair.image, shape, at, fill)  # type: ignore[arg-type]
    return Pair(image, Padded(pair.label, shape, at)), shift  # type: ignore[arg-type]


def _plan(
    cfg: TrainConfig,
    pairs: list[Pair],
    channels: int,
    classes: int,
    target: dict[str, float] | None,
) -> tuple[tuple[int, ...], int]:
    """The patch and batch nnU-Net's planner gives ``cfg.plan`` of ``pairs``' images (as
    read: at ``target``, the voxel they were resampled to, where given; else at their
    median voxel, else at cubes) for a network taking ``channels`` and giving ``classes``
    (``spacing.planned_patch``)."""
    dims = cfg.dims()
    axes = "zyx"[-dims:]
    spacing = tuple(target[a] for a in axes) if target else _spacing(pairs, dims)
    spacing = spacing or (1.0,) * dims
    shapes = np.asarray([p.image.info.shape[2:] for p in pairs], np.float64)
    median = np.median(shapes, axis=0)
    voxels = float(np.prod(median)) * len(pairs)  # nnU-Net's: the volumes' even for 2D
    shape = [int(v) for v in median[-dims:]]

    def network(patch: tuple[int, ...]) -> Any:
        from raysegment.train.components import build_model

        arch, features = cfg.model.arch, cfg.model.features
        return build_model(arch, "", channels, classes, "random", patch, features, spacing)

    patch, batch = planned_patch(cfg.model.arch, spacing, shape, voxels, network, cfg.plan_gpu_gb)
    log.warning(
        "raysegment: plan=%s: patch_size=%s, batch of %d (nnU-Net's planner for a %g GB GPU; "
        "the images' median shape %s at voxels of %s)",
        cfg.plan,
        list(patch),
        batch,
        cfg.plan_gpu_gb,
        shape,
        [round(v, 4) for v in spacing],
    )
    return patch, batch


def _spacing(pairs: list[Pair], dims: int) -> tuple[float, ...] | None:
    """The median voxel size (micrometres) of ``pairs``' images along their last ``dims``
    axes; None where one of them does not give it in a length unit."""
    sizes = [_voxel(p.image, dims) for p in pairs]
    if not sizes or min(map(min, sizes)) <= 0:
        return None
    return tuple(float(v) for v in np.median(np.asarray(sizes), axis=0))


def _channel_names(
    dataset: dict[str, Any], images: list[ImageSource], channels: tuple[int, ...]
) -> tuple[str, ...] | None:
    """Where every image is a case's channel files, and the model takes each of them,
    the channels' names: the ``channel_names`` of nnU-Net's ``dataset``, else
    ``channel_<i>``; else None."""
    if not all(isinstance(image, ChannelFilesSource) for image in images):
        return None
    if channels != tuple(range(images[0].info.shape[1])):
        return None
    names = {str(c): f"channel_{c}" for c in channels}
    given = dataset.get("channel_names") or {}
    names |= {k: str(v) for k, v in given.items() if k in names}
    return tuple(names[str(c)] for c in channels)


def _dataset_json(images: str) -> dict[str, Any]:
    """The ``dataset.json`` of an nnU-Net dataset whose ``imagesTr`` is ``images``: beside
    it, where there is one; else empty.

    Raises:
        InputImageError: a file that is not JSON.
    """
    described = storage.join(storage.parent(storage.resolve(images)), "dataset.json")
    if not storage.exists(described):
        return {}
    try:
        return dict(json.loads(storage.read_bytes(described)))
    except ValueError as e:
        raise InputImageError(f"{described}: unreadable ({e}); fix or remove it") from e


def _as_described(cfg: TrainConfig, dataset: dict[str, Any]) -> TrainConfig:
    """``cfg`` with what an nnU-Net ``dataset`` says where it says nothing: the ignore
    label (``ignore_index``), and with ``mode=multilabel`` a region-based dataset's
    regions (its ``labels`` of several values), their ``regions_class_order`` and names,
    as nnU-Net trains them."""
    changes: dict[str, Any] = {}
    ignore = (dataset.get("labels") or {}).get("ignore")
    if cfg.ignore_index is None and isinstance(ignore, int) and ignore >= 1:
        changes["ignore_index"] = ignore
    described = _described_regions(dataset)
    if cfg.mode.value == "multilabel" and cfg.regions is None and described is not None:
        regions, order = described
        changes |= {"regions": list(regions.values()), "region_labels": order}
        if cfg.class_names is None:
            changes["class_names"] = list(regions)
    if changes:
        log.info("raysegment train: from dataset.json, %s", changes)
        cfg = dataclasses.replace(cfg, **changes)
    return cfg


def _described_regions(
    dataset: dict[str, Any],
) -> tuple[dict[str, list[int]], list[int]] | None:
    """A region-based nnU-Net ``dataset``'s regions (``nnunet.dataset_regions``) and their
    ``regions_class_order``; None where it describes none."""
    regions = dataset_regions(dataset)
    given = dataset.get("regions_class_order")
    if regions is None or not isinstance(given, list):
        return None
    return regions, [int(v) for v in given]


def _described_classes(dataset: dict[str, Any], classes: int) -> list[str] | None:
    """The names of ``classes`` classes, 0 .. classes-1, of an nnU-Net ``dataset``'s
    labels (``nnunet.dataset_classes``), where it names each; else None."""
    names = dataset_classes(dataset)
    return names if names is not None and len(names) == classes else None


ANNOTATED = 1 / 3
"""Share of a GeoJSON-labelled image's random patches centred on one of its polygons (as
nnU-Net oversamples foreground): a slide's few annotations are met, not only its glass.
Where the annotations alone label (``sparse``), every patch is."""


def _at_annotation(
    label: GeoJsonLabels, rng: np.random.Generator, size: tuple[int, int], patch: tuple[int, int]
) -> tuple[int, int]:
    """The corner of a patch centred at a random point of a random polygon's box."""
    top, left, bottom, right = label.labelled[int(rng.integers(len(label.labelled)))]
    return _centred_at(rng.uniform(top, bottom), rng.uniform(left, right), size, patch)


def _centred_at(
    cy: float, cx: float, size: tuple[int, int], patch: tuple[int, int]
) -> tuple[int, int]:
    """The corner of the patch centred at (``cy``, ``cx``), kept inside an image of ``size``."""
    y0 = int(np.clip(round(cy - patch[0] / 2), 0, size[0] - patch[0]))
    x0 = int(np.clip(round(cx - patch[1] / 2), 0, size[1] - patch[1]))
    return y0, x0


def _read(
    pair: Pair,
    data: TrainingSet,
    corner: tuple[int, int, int],
    augment: bool | str,
    rng: np.random.Generator | None,
    normal: Normal,
) -> tuple[np.ndarray, np.ndarray]:
    """The patch at ``corner`` of a pair: x (C, *patch) normalized by ``normal`` (the
    channels' offset and scale, and the bounds they are clipped to after, shaped to it),
    its labels (C', *patch); augmented (``augment``) where ``rng`` draws a random crop's."""
    planar = len(data.patch) == 2
    mean, std, bounds = normal
    label_channels = tuple(range(pair.label.info.shape[1]))

    def read(region: augment_.Region) -> tuple[np.ndarray, np.ndarray]:
        x = pair.image.read(0, data.channels, region)[:, 0 if planar else slice(None)]
        y = pair.label.read(0, label_channels, region)[:, 0 if planar else slice(None)]
        x = (x.astype(np.float32) - mean) / std
        return (x if bounds is None else np.clip(x, *bounds)), y

    if augment == augment_.NNUNET and rng is not None:
        fill = 0 if data.ignore is None else data.ignore
        image = (pair.planes, *pair.size)
        return augment_.nnunet(read, corner, data.sizes, image, planar, fill, rng)  # type: ignore[arg-type]
    x, y = read(tuple((c, c + s) for c, s in zip(corner, data.sizes, strict=True)))  # type: ignore[arg-type]
    if augment and rng is not None:
        x, y = augment_.light(x, y, rng)
    return x, y


Normal = tuple[np.ndarray, np.ndarray, "tuple[np.ndarray, np.ndarray] | None"]
"""A pair's normalization, shaped to its patches: offset, scale, and the bounds clipped to
after (None: none are)."""


def read_patches(
    batch: dict[str, np.ndarray], data: TrainingSet, augment: bool | str
) -> dict[str, np.ndarray]:
    """Read the patches a batch of specs names: x (N, C, h, w) float32 normalized, y as the
    loss wants it: (N, 1, h, w) float32 binary, (N, C, h, w) float32 multilabel (of
    ``regions``, a channel a region), (N, h, w) int64 multiclass, ``IGNORE`` where not
    labelled; a 3D patch's with its z before h. Specs with a ``seed`` are random crops;
    others name their corner."""
    xs, ys = [], []
    pz, ph, pw = data.sizes
    shape = (-1, *[1] * len(data.patch))
    clip = data.per_image.clip if data.per_image else None
    bounds = (
        None
        if clip is None
        else tuple(np.asarray(b, np.float32).reshape(shape) for b in zip(*clip, strict=True))
    )
    normals: dict[int, Normal] = {}  # per pair
    for k in range(len(batch["pair"])):
        index = int(batch["pair"][k])
        pair = data.pairs[index]
        (h, w), planes = pair.size, pair.planes
        if "seed" in batch:
            rng = np.random.default_rng(int(batch["seed"][k]))
            z, y0, x0 = (
                int(rng.integers(planes - pz + 1)),
                int(rng.integers(0, h - ph + 1)),
                int(rng.integers(0, w - pw + 1)),
            )
            label = pair.label
            found = data.foreground[index] if data.oversample else None
            if isinstance(label, GeoJsonLabels) and len(label.labelled):
                if label.sparse or rng.random() < ANNOTATED:
                    y0, x0 = _at_annotation(label, rng, (h, w), (ph, pw))
            elif found and (
                bool(batch["fg"][k]) if "fg" in batch else rng.random() < data.oversample
            ):
                # a random label's random voxel, as nnU-Net oversamples its foreground
                where = found[sorted(found)[int(rng.integers(len(found)))]]
                at = where[int(rng.integers(len(where)))]
                z, y0, x0 = (
                    int(np.clip(c - p // 2, 0, n - p))
                    for c, p, n in zip(at, (pz, ph, pw), (planes, h, w), strict=True)
                )
        else:
            rng = None
            z, y0, x0 = (int(batch[a][k]) for a in ("z", "y", "x"))
        if index not in normals:
            offset, scale = data.normal(index)
            normals[index] = (
                np.asarray(offset, np.float32).reshape(shape),
                np.asarray(scale, np.float32).reshape(shape),
                bounds,  # type: ignore[assignment]
            )
        x, y = _read(pair, data, (z, y0, x0), augment, rng, normals[index])
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y))
    y = np.stack(ys)
    if data.mode == "multiclass":
        y = y[:, 0]
        target = y.astype(np.int64)
    elif data.regions:  # a channel a region: the pixels of its values
        target = np.concatenate([np.isin(y, r) for r in data.regions], 1).astype(np.float32)
        y = np.repeat(y, len(data.regions), 1)
    else:
        target = (y > 0).astype(np.float32)
    if data.ignore is not None:
        target[y == data.ignore] = IGNORE
    return {"x": np.stack(xs), "y": target}
