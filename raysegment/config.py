"""Structured configs: the single source of truth for every option.

YAML files from ``conf/`` and ``key=value`` overrides are merged onto these dataclasses
and checked once, here; the rest of the package only sees the validated dataclasses.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, TypeVar, Union, cast

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from raysegment.errors import ConfigError

__all__ = [
    "Activation",
    "Blend",
    "FinalizeConfig",
    "FinalizeMode",
    "InferConfig",
    "InstanceMethod",
    "InstancesConfig",
    "Layout",
    "NormalizeConfig",
    "PackageConfig",
    "NormalizeMode",
    "Padding",
    "Precision",
    "Schedule",
    "ScheduleConfig",
    "TileConfig",
    "TrainConfig",
    "TrainMode",
    "Unannotated",
    "as_config",
    "config_to_dict",
    "load_config",
]


class Blend(str, enum.Enum):
    """How overlapping tile predictions are combined."""

    gaussian = "gaussian"
    constant = "constant"
    crop = "crop"


class Padding(str, enum.Enum):
    """How a tile longer than the image is filled beyond the image edge."""

    constant = "constant"
    reflect = "reflect"
    edge = "edge"


class FinalizeMode(str, enum.Enum):
    raw = "raw"
    probabilities = "probabilities"
    mask = "mask"
    labels = "labels"


class Activation(str, enum.Enum):
    auto = "auto"
    sigmoid = "sigmoid"
    softmax = "softmax"
    none = "none"
    """The model's output is already what it means (probabilities, scores)."""


class SegType(str, enum.Enum):
    """A DICOM Segmentation's kind (``finalize.dicom_seg_type``)."""

    binary = "binary"
    """A frame a segment and slice (or tile) holding it, a bit a pixel."""
    labelmap = "labelmap"
    """A frame a slice (or tile) holding any segment, each pixel its segment's number."""


class NormalizeMode(str, enum.Enum):
    auto = "auto"
    none = "none"
    fixed = "fixed"
    percentile = "percentile"


@dataclass
class TileConfig:
    size: Optional[List[int]] = None
    """Tile size fed to the model, one value or one per spatial axis; default: the size a
    torch.export program was exported with, else the model directory's, else 512 (2D) /
    128 (3D). Along an axis where an image is shorter, its tile is the image's length, or
    that rounded up to a multiple of 8, 16, 32 or 64: the first the model takes."""
    overlap: float = 0.25
    """Fraction of a tile shared with its neighbour, in [0, 1)."""
    blend: Blend = Blend.gaussian
    """gaussian | constant | crop (keep each tile's centre)."""
    padding: Padding = Padding.constant
    """Fill where a tile extends beyond an image smaller than the tile."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"tile.overlap={self.overlap} must be in [0, 1), e.g. 0.25")
        _check_sizes("tile.size", self.size)


@dataclass
class NormalizeConfig:
    mode: NormalizeMode = NormalizeMode.auto
    """auto (the model directory's normalization, else none) | none | fixed | percentile."""
    mean: List[float] = field(default_factory=lambda: [0.0])
    """fixed: subtracted from every pixel; one value, or one per input channel (an RGB
    model's ImageNet statistics: ``normalize.mean=[123.7,116.3,103.5]``)."""
    std: List[float] = field(default_factory=lambda: [1.0])
    """fixed: pixels are divided by it after subtracting mean; one value, or one per input
    channel."""
    low: float = 1.0
    """percentile: this percentile of the image maps to 0."""
    high: float = 99.8
    """percentile: this percentile of the image maps to 1."""

    def __post_init__(self) -> None:
        for key, values in (("mean", self.mean), ("std", self.std)):
            if not values:
                raise ConfigError(f"normalize.{key}=[]: give one value, or one per channel")
        if min(self.std) <= 0:
            raise ConfigError(f"normalize.std={list(self.std)} must be > 0")
        if not 0 <= self.low < self.high <= 100:
            raise ConfigError(
                f"normalize.low={self.low}, normalize.high={self.high}: need 0 <= low < high <= 100"
            )


@dataclass
class FinalizeConfig:
    mode: FinalizeMode = FinalizeMode.probabilities
    """raw (model output) | probabilities (sigmoid/softmax) | mask (thresholded) | labels
    (argmax, or threshold for one channel)."""
    threshold: Optional[float] = None
    """mask / single-channel labels: probability above which a pixel is foreground;
    default: the model's own (a model package's ``binarize``), else 0.5."""
    activation: Activation = Activation.auto
    """auto (the model's own, else sigmoid for one output channel, else softmax) | sigmoid |
    softmax | none (the output as the model gives it: a model package's without one)."""
    nifti: bool = False
    """NIfTI inputs: also write ``<name>.nii.gz`` (``.nii`` for a ``.nii`` input) beside
    the OME-Zarr, the output's full resolution in the input's voxel grid, header and
    affine (as nnU-Net writes its predictions)."""
    nifti_labels: bool = False
    """With ``mode=probabilities``: the NIfTI copy holds labels, the argmax of the
    probabilities (one channel: above the threshold) once they are back in the input's
    voxels (the OME-Zarr keeps the probabilities); with ``mode=raw``, of the logits once
    back, through the activation, as nnU-Net exports its predictions of a resampled run."""
    postprocessing: Optional[str] = None
    """nnU-Net's ``postprocessing.pkl`` (or ``postprocessing.json``) of the training, as
    ``nnUNetv2_find_best_configuration`` writes it: the NIfTI copy's label map
    postprocessed as ``nnUNetv2_apply_postprocessing`` does (each step's labels keep their
    largest connected component); with ``nifti`` and labels (``nifti_labels``, or
    ``mode=labels``). The OME-Zarr keeps the network's labels."""
    dicom_seg: bool = False
    """DICOM series and slide inputs, masks and labels: also write ``<name>.seg.dcm``
    beside the OME-Zarr, a DICOM Segmentation of the input (a segment per class) that
    PACS and slide viewers show over the scan."""
    dicom_seg_type: SegType = SegType.binary
    """binary (a frame a segment and slice, a bit a pixel; every SEG reader's) | labelmap
    (DICOM's Label Map Segmentation: a frame a slice holding any class, each pixel its
    segment's number; of labels, or of a mask whose classes do not overlap): a many-class
    output's SEG in far fewer frames."""
    dicom_seg_levels: bool = False
    """DICOM slide inputs: also a SEG of each of the slide's coarser levels
    (``<name>.seg.level<k>.dcm``), the output sampled to its pixels, one series and pyramid
    with ``<name>.seg.dcm``, so a viewer zoomed out fetches a coarse level's frames."""

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"finalize.threshold={self.threshold} must be in [0, 1]")
        scores = (FinalizeMode.probabilities, FinalizeMode.raw)
        if self.nifti_labels and (not self.nifti or self.mode not in scores):
            raise ConfigError(
                "finalize.nifti_labels=true: the NIfTI copy's labels come from the "
                "probabilities or the logits; set finalize.nifti=true "
                "finalize.mode=probabilities (or raw: logits back, then labels, as nnU-Net)"
            )
        if self.postprocessing and not (
            self.nifti and (self.nifti_labels or self.mode == FinalizeMode.labels)
        ):
            raise ConfigError(
                f"finalize.postprocessing={self.postprocessing}: nnU-Net's postprocessing is "
                f"of the NIfTI copy's labels; set finalize.nifti=true and "
                f"finalize.nifti_labels=true (or finalize.mode=labels)"
            )
        if self.dicom_seg_levels and not self.dicom_seg:
            raise ConfigError(
                "finalize.dicom_seg_levels=true: the levels are of a slide's DICOM SEG; set "
                "finalize.dicom_seg=true too"
            )


class Precision(str, enum.Enum):
    """Arithmetic of the model's matmuls and convolutions."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Layout(str, enum.Enum):
    """Memory layout of the model's activations."""

    auto = "auto"
    """Channels-last on CPUs and under reduced precision on GPUs, where the model runs in
    it and agrees with channels-first; else channels-first."""
    channels_first = "channels_first"
    channels_last = "channels_last"


class InstanceMethod(str, enum.Enum):
    """How objects are cut out of the foreground probability."""

    none = "none"
    connected_components = "connected_components"
    watershed = "watershed"
    voronoi_otsu = "voronoi_otsu"


@dataclass
class InstancesConfig:
    method: InstanceMethod = InstanceMethod.none
    """none | connected_components | watershed (seeded) | voronoi_otsu; written as the
    labels image labels/<name> of each output, with per-object statistics."""
    name: str = "instances"
    """Name of the labels image (labels/<name>) and of the statistics CSV."""
    channel: Optional[int] = None
    """Output channel holding the foreground probability; default: the only channel, or
    1 - channel 0 (background) for several (a multilabel model's, none a background: give
    one)."""
    threshold: float = 0.5
    """connected_components / watershed: foreground is probability above this."""
    seed_threshold: float = 0.9
    """watershed: seeds are components of probability above this."""
    min_seed_size: int = 1
    """watershed: seeds with fewer pixels are dropped."""
    min_size: int = 0
    """Objects with fewer pixels are removed."""
    spot_sigma: float = 2.0
    """voronoi_otsu: blur (pixels) before finding one seed per object at local maxima."""
    outline_sigma: float = 2.0
    """voronoi_otsu: blur (pixels) before the Otsu threshold that outlines objects."""
    halo: int = 64
    """watershed / voronoi_otsu: pixels of context around each block when flooding; the
    result equals the whole-image one where no object floods farther than this."""
    stats: bool = True
    """Write <output>/<name>_<instances.name>.csv: per-object and per-image statistics."""
    isotropic: bool = False
    """Also write labels/<name>_isotropic, resampled (nearest) to the finest voxel size."""
    geojson: bool = False
    """2D: also write <output>/<name>_<instances.name>.geojson, each object's outline as a
    polygon in the pixel coordinates of the input's full resolution (QuPath, napari, GIS
    tools read it)."""
    dicom_ann: bool = False
    """DICOM slide inputs: also write <output>/<name>_<instances.name>.ann.dcm, the
    objects' outlines as a DICOM Microscopy Bulk Simple Annotations object (a polygon and
    an area each, in the slide's full-resolution pixel matrix) of the slide (Slim and other
    DICOMweb slide viewers show it over the slide)."""

    def __post_init__(self) -> None:
        for key in ("threshold", "seed_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"instances.{key}={getattr(self, key)} must be in [0, 1]")
        for key in ("spot_sigma", "outline_sigma", "halo", "min_size", "min_seed_size"):
            if getattr(self, key) < 0:
                raise ConfigError(f"instances.{key}={getattr(self, key)} must be >= 0")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"instances.name={self.name!r}: use letters, digits, '_', '.' or '-'")


_DEVICE = re.compile(r"^(auto|cpu|gpu|all|\d+(,\d+)*)$")


@dataclass
class InferConfig:
    input: str = MISSING
    """An image file, a zarr / OME-Zarr path, or a directory of images."""
    pattern: Optional[str] = None
    """Regular expression selecting files in an input directory (full match on the name)."""
    dataset: Optional[str] = None
    """The dataset read from each HDF5 file of the input (``volumes/raw``): for files of
    several datasets (``input=vol.h5/volumes/raw`` names one file's). Default: each file's
    one image dataset."""
    sequence: Optional[str] = None
    """z: the TIFF files of the input directory (those ``pattern`` matches) are the planes
    of one volume, one plane a file (a CT reconstruction, Fiji's "Image Sequence"); t:
    its time points, one a file; in the natural order of their names (2 before 10).
    Default: each file is an image of its own."""
    model: List[str] = MISSING
    """TorchScript file, torch.export program (.pt2), ONNX model (.onnx), a directory
    holding model.pth, or a BioImage Model Zoo package (.zip, directory, rdf.yaml); several
    (``model=[fold0,fold1,fold2]``): an ensemble, their logits averaged."""
    output: str = MISSING
    """Directory receiving one <input name>.ome.zarr per input image."""
    device: str = "auto"
    """auto (GPUs if any, else CPU) | cpu | gpu (one) | all (every GPU) | list like 1,3,6."""
    batch_size: Optional[int] = None
    """Tiles per forward pass; default: on GPUs from their free memory, on CPUs 1 (a tile
    per stream)."""
    actors: Optional[int] = None
    """Predictor actors; default: one per GPU, or on CPU one per ``threads`` cores."""
    threads: Optional[int] = None
    """Torch threads per CPU predictor actor (and CPUs it reserves, less where that would
    leave none for reads and writes); default 4, or every core of a smaller machine (with
    ``actors`` set: the cores divided among them)."""
    streams: Optional[int] = None
    """Tiles a CPU predictor runs at once, its threads shared among them; default: as many
    as its threads (one thread per tile). 1: one tile at a time on all of them."""
    io_tasks: Optional[int] = None
    """Read tasks, and write tasks, each GPU predictor has running at once (a CPU predictor
    reads and writes its own blocks); default 4. Each runs in a worker process of ~200 MiB
    that Ray keeps: uncapped, their number grew with the image's blocks up to the node's
    cores."""
    channels: Optional[List[int]] = None
    """Input channels given to the model, in order; default: all of them."""
    axes: Optional[str] = None
    """Axis names of a plain zarr array or TIFF (e.g. zyx, cyx); default: from metadata."""
    input_level: Optional[int] = None
    """Resolution level of the input to segment: 0 the full resolution, 1 the pyramid's
    next (a pyramidal TIFF's or SVS's, an OME-Zarr's second dataset, a CZI's halving),
    ...: for a model trained at a coarser pixel size. Default: the level whose pixel is
    nearest the one the model was trained at (``raysegment train`` records it), else 0.
    The output is at that level, with its pixel size."""
    resample: bool = False
    """Read each image resampled to the pixel size the model was trained at (its
    ``raysegment.json``'s ``pixel_size``, a model package's), or to ``resample_size``:
    linear interpolation, antialiased where it shrinks, from the coarsest pyramid level
    at or below that size; the output at that pixel size. Default: the pyramid level
    nearest it (``input_level``)."""
    resample_size: Optional[List[float]] = None
    """The pixel size ``resample`` reads at, (z) y x in the input's units (or
    ``voxel_size``'s); default: the model's."""
    chunks: Optional[List[int]] = None
    """Output chunk size per spatial axis; default 1024 (2D) / 128 (3D)."""
    block: Optional[List[int]] = None
    """Block (unit of work) size per spatial axis, a multiple of chunks; default 4 chunks
    (2D) / 2 chunks (3D) per axis, or 4 tiles where that is more and its float32 input
    and outputs fit in 2 GiB (``plan.default_block``)."""
    tile: TileConfig = field(default_factory=TileConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    finalize: FinalizeConfig = field(default_factory=FinalizeConfig)
    instances: InstancesConfig = field(default_factory=InstancesConfig)
    voxel_size: Optional[List[float]] = None
    """Physical pixel size per spatial axis (z y x, or y x), in the input's units (else
    micrometer), replacing what the input records."""
    tta: bool = False
    """Test-time augmentation: average the logits over flips (4 in 2D, 8 in 3D; a model
    recording ``tta_axes``, as an nnU-Net training its mirror axes: flips of those)."""
    precision: Precision = Precision.float32
    """float32 | bfloat16 | float16 (autocast of the model on its device: faster on GPUs
    and on CPUs with bfloat16 units; blending and outputs stay float32)."""
    layout: Layout = Layout.auto
    """auto | channels_first | channels_last: memory layout of the model's convolutions
    (channels-last runs oneDNN's faster kernels on CPUs, tensor cores on GPUs)."""
    mask: Optional[str] = None
    """A one-channel image of where to segment (nonzero), covering the input's field of
    view at any resolution; or a GeoJSON file of polygons in the input's pixels (QuPath's
    annotations); ``{name}`` in it stands for each input's name; ``auto``: the foreground
    found on a thumbnail of each (2D) input. Blocks and tiles outside skip the model; the
    output is 0 outside."""
    previous: Optional[str] = None
    """A cascade's second stage (an nnU-Net ``3d_cascade_fullres`` training): its first
    stage's label map of each input, in the input's own voxels: a folder of them, each
    named after its input (nnU-Net's ``case.nii.gz``, raysegment's ``finalize.nifti``
    copy), or a path in which ``{name}`` stands for each input's name."""
    skip_empty: bool = True
    """Blocks whose input is constant (slide background, absent zarr chunks) skip the model
    and keep the fill value 0."""
    shards: bool = False
    """Store each block's chunks as one zarr v3 shard (a file or object per block and
    level, not per chunk): for filesystems and object stores where the count of files
    matters. Readers must support zarr v3 sharding."""
    levels: int = 1
    """Resolution levels written (1: full resolution only); each further level halves y
    and x (and z for 3D models), computed region by region once every block is done."""
    quicklook: bool = True
    """Write <output>/<name>.png: the input (first time point, middle plane) in grey with
    the segmentation in colour, at most 1024 pixels on its longer side."""
    overwrite: bool = False
    """Replace an existing output instead of refusing (complete) or resuming (incomplete)."""
    part_id: int = 0
    """This job's share of the blocks when num_parts independent jobs split the work."""
    num_parts: int = 1
    """Independent jobs (any cluster, any time) that each run every num_parts-th block of
    the same images into the same outputs; the last to finish marks them complete."""
    max_attempts: int = 3
    """Processes a block may take down (out of memory, a native crash, a lost node) before
    the run stops naming the block; Ray restarts the process and retries until then."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if not _DEVICE.match(self.device.replace(" ", "")):
            raise ConfigError(
                f"device={self.device!r}: choose auto, cpu, gpu, all, or GPU indices like 1,3,6"
            )
        self.device = self.device.replace(" ", "")
        if not self.model:
            raise ConfigError("model=[]: give a model, or several for an ensemble")
        for key in (
            "batch_size",
            "actors",
            "threads",
            "streams",
            "io_tasks",
            "max_attempts",
            "num_parts",
        ):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}={value} must be >= 1")
        if self.channels is not None and (
            not self.channels
            or min(self.channels) < 0
            or len(set(self.channels)) != len(self.channels)
        ):
            raise ConfigError(f"channels={self.channels}: give distinct channel indices >= 0")
        if self.input_level is not None and self.input_level < 0:
            raise ConfigError(f"input_level={self.input_level}: give 0 (full resolution) or more")
        if self.sequence not in (None, "z", "t"):
            raise ConfigError(
                f"sequence={self.sequence}: give z (the files are the planes of one volume) or "
                f"t (its time points), or leave it out (each file an image)"
            )
        if not 1 <= self.levels <= 12:
            raise ConfigError(f"levels={self.levels}: give 1 (no pyramid) to 12")
        if not 0 <= self.part_id < self.num_parts:
            raise ConfigError(
                f"part_id={self.part_id} with num_parts={self.num_parts}: part_id counts "
                f"from 0 to num_parts-1"
            )
        if self.num_parts > 1 and self.overwrite:
            raise ConfigError(
                "overwrite=true with num_parts>1 would let the parts delete each other's "
                "blocks; remove the old outputs first, then run the parts without overwrite"
            )
        for key, on in (
            ("geojson", self.instances.geojson),
            ("dicom_ann", self.instances.dicom_ann),
        ):
            if on and self.instances.method == InstanceMethod.none:
                raise ConfigError(
                    f"instances.{key}=true writes the outlines of instances: set "
                    f"instances.method (e.g. instances.method=watershed)"
                )
        if self.instances.method != InstanceMethod.none and self.finalize.mode in (
            FinalizeMode.raw,
            FinalizeMode.labels,
        ):
            raise ConfigError(
                f"instances.method={self.instances.method.value} needs foreground "
                f"probabilities; set finalize.mode=probabilities (or mask)"
            )
        if self.voxel_size is not None and (
            not 2 <= len(self.voxel_size) <= 3 or min(self.voxel_size) <= 0
        ):
            raise ConfigError(f"voxel_size={self.voxel_size}: give 2 (y x) or 3 (z y x) sizes > 0")
        if self.resample_size is not None and (
            not 2 <= len(self.resample_size) <= 3 or min(self.resample_size) <= 0
        ):
            raise ConfigError(
                f"resample_size={self.resample_size}: give 2 (y x) or 3 (z y x) sizes > 0"
            )
        if self.resample_size is not None and not self.resample:
            raise ConfigError(
                f"resample_size={self.resample_size} is the pixel size resample=true reads "
                f"at: set resample=true"
            )
        native = [
            key
            for key, on in (
                ("finalize.dicom_seg", self.finalize.dicom_seg),
                ("instances.dicom_ann", self.instances.dicom_ann),
            )
            if on
        ]
        if self.resample and native:
            raise ConfigError(
                f"resample=true with {native[0]}=true: that file is written in the input's "
                f"own pixel grid, and a resampled run's output is in another: drop one of them"
            )
        if self.resample and self.input_level is not None:
            raise ConfigError(
                f"resample=true with input_level={self.input_level}: resampling reads from "
                f"the pyramid level it needs; drop input_level"
            )
        if self.dataset and self.sequence:
            raise ConfigError(
                f"dataset={self.dataset} reads HDF5 files, sequence={self.sequence} stacks "
                f"TIFF files: unset one"
            )
        _check_pattern("pattern", self.pattern)
        _check_sizes("chunks", self.chunks)
        _check_sizes("block", self.block)


class TrainMode(str, enum.Enum):
    """What a label pixel means."""

    binary = "binary"
    multilabel = "multilabel"
    multiclass = "multiclass"


class Unannotated(str, enum.Enum):
    """What a GeoJSON label's pixels outside every polygon are."""

    background = "background"
    ignore = "ignore"


class Schedule(str, enum.Enum):
    """How the learning rate changes from epoch to epoch (``raysegment.train.schedule``)."""

    none = "none"
    cosine = "cosine"
    poly = "poly"
    plateau = "plateau"


@dataclass
class ScheduleConfig:
    name: Schedule = Schedule.none
    """none (lr throughout) | cosine (from lr down to min_lr at max_epochs) | poly
    (nnU-Net's lr * (1 - epoch / max_epochs) ** 0.9) | plateau (lr times ``factor`` after
    ``patience`` epochs without a validation-loss improvement of min_delta)."""
    warmup_epochs: int = 0
    """First epochs rising linearly to lr (lr / (W + 1), 2 lr / (W + 1), ...), any schedule."""
    min_lr: float = 0.0
    """Floor of every schedule."""
    factor: float = 0.1
    """plateau: the rate is multiplied by this at each plateau."""
    patience: int = 3
    """plateau: epochs in a row without improvement before the rate drops (below the
    early-stopping patience, or training stops first)."""


@dataclass
class CollectionConfig:
    dir: str = MISSING
    """Directory holding the images (or labels)."""
    pattern: Optional[str] = None
    """Regex selecting files (full match); a capture group, if any, is the pairing key,
    else the name without image suffixes (e.g. labels.pattern='(.*)_mask\\.tif')."""
    dataset: Optional[str] = None
    """The dataset read from each HDF5 file (``volumes/raw``, ``volumes/labels/neuron_ids``:
    CREMI's samples, each one file of raw data and labels); default: a file's one image
    dataset."""


@dataclass
class ModelConfig:
    arch: str = "Unet"
    """segmentation-models-pytorch architecture (Unet, FPN, DeepLabV3Plus, Segformer, ...)."""
    encoder: str = "resnet18"
    """Encoder name as segmentation-models-pytorch spells it."""
    weights: str = "random"
    """random, or a local state-dict file (whole model or encoder); nothing is downloaded."""
    features: int = 32
    """nnU-Net's networks (PlainConvUNet, ResidualEncoderUNet): the first stage's features,
    doubled every stage up to 320 (3D) or 512 (2D), as nnU-Net's planners have them."""
    deep_supervision: bool = True
    """nnU-Net's networks: the loss of every decoder stage's logits against the labels
    downsampled to them, as nnU-Net trains (weights 1, 1/2, 1/4, ..., the coarsest 0);
    validation and the written model use the full resolution's alone."""


PLANS = {"3d_fullres": 3, "2d": 2}
"""nnU-Net's configurations ``plan`` plans, and their patches' dimensions."""


_TRAIN_CHOICES = {
    "resampling": {
        "linear": "antialiased",
        "nnunet": "nnU-Net's: cubic, the nearest plane along a long voxel's axis",
    },
    "oversample_by": {
        "patch": "each patch with the probability oversample_foreground",
        "batch": "the last of each batch, nnU-Net's",
    },
    "keep": {
        "best": "the epoch of the lowest validation loss",
        "last": "the last epoch's weights",
    },
    "normalization": {
        "dataset": "each channel's mean and deviation over the training images",
        "nnunet": "nnU-Net's, each image's own",
    },
}
"""``TrainConfig`` keys of a few values, each value's meaning (their errors name them)."""


@dataclass
class TrainConfig:
    images: CollectionConfig = field(default_factory=CollectionConfig)
    labels: CollectionConfig = field(default_factory=CollectionConfig)
    output: str = MISSING
    """Directory receiving model.pth, weights, checkpoint, metrics.csv, config.yaml, curves."""
    mode: TrainMode = TrainMode.binary
    """binary (0 / one positive value) | multilabel (a binary channel per class) |
    multiclass (integer class per pixel)."""
    classes: Optional[int] = None
    """multiclass: number of classes; default: largest label value + 1."""
    class_names: Optional[List[str]] = None
    """Names written with the model and used as output channel names by infer."""
    regions: Optional[List[List[int]]] = None
    """mode=multilabel of a label image of classes: overlapping regions, each the label
    values it holds, a sigmoid output each, as nnU-Net's region-based trainings (BraTS'
    whole tumour [1, 2, 3], tumour core [2, 3], enhancing tumour [3]). infer's
    ``finalize.mode=labels`` paints each region's ``region_labels`` in order."""
    region_labels: Optional[List[int]] = None
    """The label each region paints where its probability passes the threshold, later
    regions over earlier (nnU-Net's ``regions_class_order``); default: each region's one
    value that no later region holds ([1, 2, 3] for BraTS' regions)."""
    ignore_index: Optional[int] = None
    """A label value meaning "not labelled" (sparse annotations; nnU-Net's ignore label):
    such pixels count in neither the loss nor the metrics, e.g. 255 where only some cells
    were painted. 1 .. 65535, and not a class."""
    unannotated: Unannotated = Unannotated.background
    """GeoJSON labels: what pixels outside every polygon are. background: class 0. ignore:
    not labelled, as QuPath's pixel classifier trains on its annotations alone: only what
    the polygons cover trains and validates, every patch centred on one. Polygons of
    QuPath's class ``Ignore*`` are not labelled either way (unless class_names names it)."""
    channels: Optional[List[int]] = None
    """Image channels fed to the model; default: all."""
    input_level: int = 0
    """Resolution level of the images trained on, as infer's ``input_level``: 0 the full
    resolution, 1 the pyramid's next, ... (a slide's 10x of its 40x). Labels drawn at full
    resolution (label images, DICOM SEGs, GeoJSON) are read at that level, each pixel the
    label under its centre. The model records the pixel size trained at, and infer reads
    each image at the level nearest it."""
    resample_size: Optional[List[float]] = None
    """The pixel size trained at, one value or (y, x), or a voxel's (z, y, x), in the first
    image's units: each image is read resampled to it (linearly, antialiased where it
    shrinks, from its coarsest stored pyramid level at most that size), its labels at it
    too (each pixel the label under its centre), so that images scanned at several pixel
    sizes train alike (volumes of several slice spacings too). The model records it:
    infer's ``resample=true`` reads at it. Default: each image as stored (at
    ``input_level``)."""
    resample_to: Optional[str] = None
    """median: train at the training images' own voxel size, as nnU-Net plans it (each
    axis's median; an anisotropic axis's 10th percentile): every image read resampled to
    it, as ``resample_size`` reads (which it replaces), and recorded likewise."""
    resampling: str = "linear"
    """How ``resample_size`` / ``resample_to`` resample: ``linear`` (antialiased where it
    shrinks, from a pyramid's level nearest; labels: the one under each pixel's centre) or
    ``nnunet``, as nnU-Net preprocesses (from the full resolution): the images a cubic
    spline, the labels each voxel the label of the highest linearly interpolated indicator,
    both the nearest plane along an axis of voxels over 3 times as long as the others'.
    The model records it: infer's ``resample=true`` reads images so, and resamples its
    output back as nnU-Net exports (linear; that axis nearest)."""
    normalization: str = "dataset"
    """How the images are normalized: ``dataset``, each channel less its mean over its
    deviation, both measured on the training images (fixed values the model keeps), or
    ``nnunet``, as nnU-Net's fingerprint and preprocessing normalize (``train.normalization``):
    every image cropped to the box of its nonzero voxels; each channel by its name in
    ``dataset.json``'s ``channel_names``: CT clipped to the training foreground's 0.5 and
    99.5 percentiles, less its mean over its deviation; others each image's own Z-score,
    within the nonzero region where the box leaves the median image under 3/4 of its
    voxels (skull-stripped MR). The model records it: infer measures and crops each image
    it segments alike."""
    train_fraction: float = 0.7
    """Fraction of the image pairs used for training; the rest validates (seeded split)."""
    folds: int = 1
    """k-fold cross-validation, as nnU-Net trains: the pairs in ``folds`` seeded parts,
    part ``fold`` validates and the others train (``train_fraction`` is not used). Train
    each fold (a command each: separate jobs run at once) and give the outputs to infer
    as an ensemble, ``model=[fold0,fold1,...]``."""
    fold: int = 0
    """The part that validates, 0 .. folds - 1."""
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: str = "Adam"
    lr: float = 1e-3
    lr_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: Precision = Precision.float32
    """float32 | bfloat16 (autocast: GPUs, and CPUs with bfloat16 kernels, 2.2-3.2x faster
    steps on this project's AVX-512 CPU) | float16 (GPUs; gradients scaled). Weights,
    optimizer state and losses stay float32."""
    layout: Layout = Layout.auto
    """Memory layout of the model's activations, as infer's ``layout``: auto takes
    channels-last on CPUs and under bfloat16/float16 on GPUs where the model runs in it
    and agrees with channels-first."""
    loss: str = "DiceLoss"
    metric: str = "iou"
    """Primary metric: iou | fscore | accuracy | recall | precision (all are logged)."""
    batch_size: Optional[int] = None
    """Patches per step per worker; default: from free memory."""
    patch_size: Optional[List[int]] = field(default_factory=lambda: [256])
    """Training patch, one value or (y, x) (most encoders need multiples of 32), or (z, y,
    x): a 3D network (``model.arch`` PlainConvUNet or ResidualEncoderUNet); null with
    ``plan``, which plans it."""
    plan: Optional[str] = None
    """nnU-Net's planner (nnU-Net's networks): ``3d_fullres`` (3D patches) or ``2d``
    (patches of planes) plans the patch (``patch_size=null``) and, where ``batch_size`` is
    not given, the batch, as nnU-Net plans that configuration for a GPU of
    ``plan_gpu_gb``: from the training images' median shape and voxel size (as read: at
    ``resample_to=median``, nnU-Net's, where given)."""
    plan_gpu_gb: float = 8.0
    """The GPU memory ``plan`` plans for, in GB (nnU-Net's ``-gpu_memory_target``);
    ResidualEncoderUNet: nnU-Net's ResEnc preset of it (M 8, L 24, XL 40)."""
    patches_per_epoch: int = 256
    """Random training patches drawn anew every epoch (from ``seed`` and the epoch),
    shared out among the workers."""
    steps_per_epoch: Optional[int] = None
    """Steps every worker takes an epoch, as nnU-Net counts its epochs (250): an epoch is
    then that many batches of patches (whatever batch was given or planned), in place of
    ``patches_per_epoch``; None: ``patches_per_epoch``."""
    oversample_foreground: float = 0.33
    """Share of the random patches centred on a labelled voxel (of a label drawn at random
    among an image's), as nnU-Net oversamples foreground: small structures of large
    volumes are met; 0: every patch anywhere."""
    oversample_by: str = "patch"
    """How ``oversample_foreground`` picks the patches centred on foreground: ``patch``,
    each with that probability; ``batch``, the last of each batch's patches, as nnU-Net's
    data loader (those from round(batch x (1 - oversample_foreground)) on: a batch of 2 at
    0.33 its second, half the patches)."""
    val_patches: int = 64
    """Most validation patches (a fixed grid over the validation images)."""
    augment: Union[bool, str] = True
    """Training patches' augmentations: true, flips, 90-degree turns and a brightness
    jitter; nnunet, nnU-Net's default ones (rotation, scaling, noise, blur, brightness,
    contrast, low resolution, gamma, mirroring); false, none."""
    keep: str = "best"
    """The weights the model directory takes: ``best``, the epoch of the lowest validation
    loss; ``last``, the last epoch's (nnU-Net predicts with its final checkpoint's)."""
    max_epochs: int = 100
    patience: int = 10
    """Stop after this many epochs without a validation-loss improvement of min_delta."""
    min_delta: float = 1e-4
    pretrained: Optional[str] = None
    """A previous output directory: resume from its checkpoint (or fine-tune, below)."""
    finetune: bool = False
    """With pretrained: keep only the weights; new optimizer (lr), epochs count from 0."""
    num_workers: int = 1
    """Ray Train workers (data-parallel)."""
    read_tasks: Optional[int] = None
    """Ray Data tasks reading (and augmenting) a worker's patches at once; default: 2 for
    a CPU worker, a GPU worker's share of its node's CPUs less one (at least 2).
    ``metrics.csv``'s ``wait_seconds`` says how long the steps waited for them."""
    threads: Optional[int] = None
    """Torch threads per CPU worker; default: its node's cores shared among the workers
    there (Ray alone gives a worker one thread: a 2-core machine trained on one)."""
    storage_path: Optional[str] = None
    """Where Ray Train keeps the run's checkpoints: a directory every node sees, or a URL
    (s3://, gs://); default <output>/ray_train."""
    device: str = "auto"
    """auto (GPU workers if Ray sees GPUs) | cpu | gpu."""
    max_failures: int = 3
    """Worker failures (a crashed process, a lost node) recovered from the last checkpoint
    before the run fails; -1: no limit."""
    overwrite: bool = False
    """Replace an existing output directory (else a finished one is refused and an
    unfinished one, from the same settings, resumed from its last checkpoint)."""

    def __post_init__(self) -> None:
        if self.max_failures < -1:
            raise ConfigError(f"max_failures={self.max_failures} must be >= -1")
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"train_fraction={self.train_fraction} must be in (0, 1)")
        if self.folds < 1 or not 0 <= self.fold < self.folds:
            raise ConfigError(
                f"fold={self.fold} with folds={self.folds}: folds >= 1, fold counts from 0 "
                f"to folds-1"
            )
        if self.device not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"device={self.device!r}: choose auto, cpu or gpu")
        if self.precision == Precision.float16 and self.device == "cpu":
            raise ConfigError(
                "precision=float16 trains on GPUs (CPUs lack its kernels); with device=cpu "
                "choose precision=bfloat16 or float32"
            )
        for key in ("max_epochs", "patience", "num_workers", "patches_per_epoch", "val_patches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        for key in ("batch_size", "threads", "read_tasks", "steps_per_epoch"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        schedule = self.lr_schedule
        if not 0 <= schedule.warmup_epochs < self.max_epochs:
            raise ConfigError(
                f"lr_schedule.warmup_epochs={schedule.warmup_epochs} must be >= 0 and below "
                f"max_epochs={self.max_epochs}"
            )
        if not 0 <= schedule.min_lr < self.lr:
            raise ConfigError(
                f"lr_schedule.min_lr={schedule.min_lr} must be >= 0 and below lr={self.lr}"
            )
        if not 0 < schedule.factor < 1:
            raise ConfigError(f"lr_schedule.factor={schedule.factor} must be in (0, 1)")
        if schedule.patience < 1:
            raise ConfigError(f"lr_schedule.patience={schedule.patience} must be >= 1")
        if isinstance(self.augment, str) and self.augment != "nnunet":
            raise ConfigError(
                f"augment={self.augment!r}: choose true (flips, turns, brightness), nnunet "
                f"(nnU-Net's augmentations) or false"
            )
        if not 0 <= self.oversample_foreground <= 1:
            raise ConfigError(
                f"oversample_foreground={self.oversample_foreground} must be in [0, 1] (a share "
                f"of the patches; nnU-Net's 0.33)"
            )
        if self.min_delta < 0:
            raise ConfigError(f"min_delta={self.min_delta} must be >= 0")
        if self.ignore_index is not None and not 1 <= self.ignore_index <= 65535:
            raise ConfigError(
                f"ignore_index={self.ignore_index} must be in 1 .. 65535 (0 is the "
                f"background's class); e.g. 255"
            )
        if self.classes is not None and self.classes < 2:
            raise ConfigError(f"classes={self.classes} must be >= 2")
        self._check_regions()
        if self.input_level < 0:
            raise ConfigError(f"input_level={self.input_level}: give 0 (full resolution) or more")
        for key, choices in _TRAIN_CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                said = " or ".join(f"{v} ({why})" for v, why in choices.items())
                raise ConfigError(f"{key}={value!r}: choose {said}")
        if self.normalization == "nnunet" and self.input_level:
            raise ConfigError(
                f"normalization=nnunet with input_level={self.input_level}: nnU-Net crops "
                f"and normalizes each image at its own voxels; drop input_level (resample_size= "
                f"reads the images at another voxel size)"
            )
        if self.resample_to is not None:
            if self.resample_to != "median":
                raise ConfigError(
                    f"resample_to={self.resample_to!r}: choose median (the training images' "
                    f"median voxel size, as nnU-Net plans it), or give resample_size="
                )
            if self.resample_size is not None or self.input_level:
                raise ConfigError(
                    "resample_to=median chooses the pixel size resample_size= gives, from the "
                    "full resolution: give one of them, without input_level"
                )
        if self.resample_size is not None:
            if not 1 <= len(self.resample_size) <= 3 or min(self.resample_size) <= 0:
                raise ConfigError(
                    f"resample_size={self.resample_size}: give one pixel size, (y, x) or "
                    f"(z, y, x), > 0"
                )
            if self.input_level:
                raise ConfigError(
                    f"resample_size={self.resample_size} with input_level={self.input_level}: "
                    f"resampling reads from the pyramid level it needs; drop input_level"
                )
        self._check_plan()
        if self.model.features < 1:
            raise ConfigError(f"model.features={self.model.features} must be >= 1 (e.g. 32)")
        if self.finetune and not self.pretrained:
            raise ConfigError("finetune=true needs pretrained=<a previous output directory>")
        _check_pattern("images.pattern", self.images.pattern)
        _check_pattern("labels.pattern", self.labels.pattern)

    def _check_plan(self) -> None:
        if self.plan is None:
            if self.patch_size is None:
                raise ConfigError(
                    "patch_size=null: give a patch (e.g. [256], or [64,128,128] for 3D) or "
                    "plan=3d_fullres (nnU-Net's planner picks it)"
                )
            _check_sizes("patch_size", self.patch_size)
            return
        if self.plan not in PLANS:
            raise ConfigError(
                f"plan={self.plan!r}: choose {' or '.join(PLANS)} (nnU-Net's configurations)"
            )
        if self.patch_size is not None:
            raise ConfigError(
                f"plan={self.plan} plans the patch, and patch_size={self.patch_size} gives "
                f"one: give patch_size=null (conf/nnunet.yaml does), or plan=null"
            )
        if self.plan_gpu_gb <= 0:
            raise ConfigError(f"plan_gpu_gb={self.plan_gpu_gb}: the GPU's memory, in GB (e.g. 8)")

    def dims(self) -> int:
        """The patch's dimensions: 2 or 3 (``plan``'s, else ``patch_size``'s)."""
        return PLANS[self.plan] if self.plan else len(self.patch())

    def patch(self) -> tuple[int, ...]:
        """The training patch: (y, x), or (z, y, x) (3D); one value is a square.

        Raises:
            ConfigError: none given (``plan`` plans it: ``TrainingSet.patch``).
        """
        if self.patch_size is None:
            raise ConfigError(f"plan={self.plan}: the patch is planned from the images")
        sizes = self.patch_size * 2 if len(self.patch_size) == 1 else self.patch_size
        return tuple(int(s) for s in sizes)

    def _check_regions(self) -> None:
        regions, labels = self.regions, self.region_labels
        if regions is None:
            if labels is not None:
                raise ConfigError(
                    f"region_labels={labels}: the labels of regions; give regions= too"
                )
            return
        if self.mode != TrainMode.multilabel:
            raise ConfigError(f"regions={regions}: a sigmoid output a region; set mode=multilabel")
        if not regions or any(not r or min(r) < 1 for r in regions):
            raise ConfigError(
                f"regions={regions}: give each region its label values, from 1 on (0 is the "
                f"background, in none), e.g. [[1,2,3],[2,3],[3]]"
            )
        if labels is not None and (len(labels) != len(regions) or min(labels) < 1):
            raise ConfigError(
                f"region_labels={labels}: give a label from 1 on for each of the "
                f"{len(regions)} regions"
            )
        self.region_order()

    def region_order(self) -> list[int]:
        """The label each region paints: ``region_labels``, else each region's one value no
        later region holds.

        Raises:
            ConfigError: a region without one such value, and no ``region_labels``.
        """
        assert self.regions is not None
        if self.region_labels is not None:
            return list(self.region_labels)
        order = []
        for i, region in enumerate(self.regions):
            own = set(region).difference(*self.regions[i + 1 :])
            if len(own) != 1:
                raise ConfigError(
                    f"regions={self.regions}: region {i} holds {sorted(own) or 'no'} value(s) no "
                    f"later region holds, not one to paint it with; give region_labels= (a "
                    f"label each region paints, in order)"
                )
            order.append(own.pop())
        return order


@dataclass
class PackageConfig:
    model: str = MISSING
    """A model directory ``raysegment train`` wrote."""
    output: str = MISSING
    """The package written: a ``.zip``, as the BioImage Model Zoo takes and gives them."""
    authors: List[str] = field(default_factory=list)
    """The model's authors, by name (the zoo's packages name one at least)."""
    name: Optional[str] = None
    """The model's name; default: the model directory's."""
    description: Optional[str] = None
    """One sentence; default: its architecture, classes and training images."""
    license: str = "CC-BY-4.0"
    """An SPDX license identifier (the zoo's default, CC-BY-4.0)."""
    test_input: Optional[str] = None
    """An image the package's test input is cut from (its centre, a training patch's
    size); default: the model's first validation image."""
    overwrite: bool = False
    """Replace an existing package at ``output``."""


def _check_pattern(key: str, pattern: str | None) -> None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{key}={pattern!r} is not a regular expression: {e}") from e


def _check_sizes(key: str, sizes: Sequence[int] | None) -> None:
    if sizes is not None and (not 1 <= len(sizes) <= 3 or min(sizes) < 1):
        raise ConfigError(f"{key}={list(sizes)}: give 1 to 3 positive sizes, e.g. {key}=256")


# Keys that take one value or a list; a single value is stored as a one-element list.
_SCALAR_OR_LIST: dict[type, tuple[str, ...]] = {
    InferConfig: (
        "model",
        "chunks",
        "block",
        "tile.size",
        "channels",
        "normalize.mean",
        "normalize.std",
    ),
    TrainConfig: ("patch_size", "channels", "class_names"),
    PackageConfig: ("authors",),
}

C = TypeVar("C")


def _coerce_lists(cfg: DictConfig, keys: Sequence[str]) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not OmegaConf.is_list(value) and not isinstance(value, list):
            OmegaConf.update(cfg, key, [value], merge=False)


def _config_error(e: OmegaConfBaseException, schema: Any) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    if isinstance(e, MissingMandatoryValue):
        return ConfigError(f"missing required key {key!r}; give it as {key}=...")
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        parent, _, _ = key.rpartition(".")
        node = OmegaConf.select(schema, parent) if parent else schema
        valid = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
        where = f" under {parent!r}" if parent else ""
        return ConfigError(f"unknown config key {key!r}; valid keys{where}: {', '.join(valid)}")
    if isinstance(e, ValidationError):
        msg = str(e).splitlines()[0]
        return ConfigError(f"bad value for {key!r}: {msg}")
    return ConfigError(str(e).splitlines()[0])


def _string_keys(schema: type, prefix: str = "") -> set[str]:
    """Dotted keys of str fields: their values are taken verbatim, never parsed as YAML
    (a regex like ``[ab].*\\.tif`` would otherwise become a list)."""
    keys = set()
    for f in dataclasses.fields(schema):
        t = str(f.type)
        if dataclasses.is_dataclass(f.default_factory) if callable(f.default_factory) else False:
            keys |= _string_keys(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif "str" in t and "List" not in t and "bool" not in t:  # augment: true or a name
            keys.add(prefix + f.name)
    return keys


def _parse_overrides(schema: type, overrides: Sequence[str]) -> DictConfig:
    verbatim = _string_keys(schema)
    layer = OmegaConf.create()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. tile.size=256)")
        if key in verbatim:  # but null, as YAML's: a file's key set back to none
            OmegaConf.update(layer, key, None if value == "null" else value, merge=True)
            continue
        try:
            layer = cast(DictConfig, OmegaConf.merge(layer, OmegaConf.from_dotlist([item])))
        except Exception as e:
            raise ConfigError(f"cannot parse {item!r}: {str(e).splitlines()[0]}") from e
    return layer


def load_config(
    schema: type[C],
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> C:
    """Merge YAML ``files``, a mapping of ``values`` and ``key=value`` ``overrides``.

    Later sources win. Returns the validated dataclass.

    Raises:
        ConfigError: unreadable YAML, unknown key, wrong type, bad value, missing key.
    """
    base = OmegaConf.structured(schema)
    layers: list[DictConfig] = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            layer = OmegaConf.load(path)
        except Exception as e:
            raise ConfigError(f"{path}: not a YAML config ({e})") from e
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"{path}: a config file must hold a mapping of keys")
        layers.append(layer)
    if values:
        layers.append(OmegaConf.create(dict(values)))
    layers.append(_parse_overrides(schema, overrides))
    keys = _SCALAR_OR_LIST.get(schema, ())
    try:
        for layer in layers:
            _coerce_lists(layer, keys)
        merged = OmegaConf.merge(base, *layers)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _config_error(e, base) from None
    return obj  # type: ignore[return-value]


def as_config(schema: type[C], config: Any, overrides: Mapping[str, Any]) -> C:
    """The Python API's argument handling: a ``schema`` instance, a mapping of keys, or
    None, with keyword ``overrides`` on top, validated like the command line."""
    if isinstance(config, schema) and not overrides:
        return config
    values = config_to_dict(config) if isinstance(config, schema) else dict(config or {})
    return load_config(schema, values=values | dict(overrides))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data form of a config (enums as their names), for provenance files."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}
