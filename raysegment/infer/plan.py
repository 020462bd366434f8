"""Per-image plans: which axes the model sees, the tile grid, blocks, output layout."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raysegment.config import InferConfig, NormalizeMode, config_to_dict
from raysegment.data.channels import ChannelFilesSource
from raysegment.data.nonzero import Nonzero
from raysegment.data.previous import PreviousLabelsSource, resampling_of
from raysegment.data.sources import ImageSource, Region, TiffSequenceSource
from raysegment.data.tiling import Block, Tiling, block_at, block_grid, overlap_pixels
from raysegment.errors import ConfigError, InputImageError
from raysegment.infer.mask import Mask
from raysegment.infer.model import ensemble_sha256
from raysegment.infer.pyramid import block_levels
from raysegment.infer.quicklook import preview_step
from raysegment.infer.writer import OutputLayout

if TYPE_CHECKING:
    from raysegment.infer.model import ModelFile, ModelSpec

__all__ = [
    "ImagePlan",
    "WorkItem",
    "activation_of",
    "threshold_of",
    "chunk_block",
    "default_block",
    "fitted_tile",
    "image_shapes",
    "model_normalization",
    "normalization_offset",
    "physical",
    "plan_image",
    "tile_size",
]

DEFAULT_TILE = {2: 512, 3: 128}
DEFAULT_CHUNK = {2: 1024, 3: 128}
DEFAULT_BLOCK_CHUNKS = {2: 4, 3: 2}
BLOCK_TILES = 4
"""Tiles per block edge the default block holds at least: a tile whose blending weight
straddles a block seam runs in both blocks, each seam adding a layer of tiles: 128^3 tiles
(overlap 0.25) on an 8192^3 volume run 2.54x the grid's tiles in 256^3 blocks, 1.63x in
512^3 (``seam_repeats``)."""
MAX_DEFAULT_BLOCK_BYTES = 2 << 30
"""A default block's float32 input and output sums at most (a 512^3 block of one input
channel and up to three output channels): where ``BLOCK_TILES`` would need more, the axes
with the most tiles per block give way first, never below ``DEFAULT_BLOCK_CHUNKS``."""
_PERCENTILE_SAMPLES = 16
_PERCENTILE_REGION = 256


@dataclass(frozen=True)
class WorkItem:
    """One Ray Data row: a block of one timepoint (and z plane, for a 2D model on a stack)."""

    image: int
    t: int
    z: int
    """z plane for a 2D model on a z-stack, else -1."""
    index: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"t{self.t}z{self.z}b" + "_".join(map(str, self.index))


@dataclass(frozen=True)
class ImagePlan:
    id: int
    source: ImageSource
    output: str
    channels: tuple[int, ...]
    spatial_dims: int
    tiling: Tiling
    block: tuple[int, ...]
    layout: OutputLayout
    padding: str
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None
    """Per-channel (offset, scale): the model sees (pixel - offset) / scale."""
    skip_empty: bool
    """Constant-input blocks skip the model and keep the fill value."""
    fingerprint: str
    preview: int = 0
    """The quick-look's stride (``quicklook.preview_step``); 0: no quick-look."""
    mask: Mask | None = None
    """Where to segment (``mask``); None: everywhere."""
    classes: tuple[str, ...] = ()
    """The model's class names, one an output channel (``class_<i>`` where it names none):
    a DICOM SEG's segments."""
    class_codes: tuple[Any, ...] = ()
    """Their coded meanings where the model gives them (a DICOM SEG's segments' codes)."""
    activation: str = "auto"
    """The output's activation: ``finalize.activation``, else the model's own (its
    ``raysegment.json``), else auto (sigmoid for one channel, else softmax)."""
    clip: tuple[tuple[float, float], ...] | None = None
    """Per channel, the bounds the normalized input is clipped to (a model package's
    ``clip``, an nnU-Net CT channel's; infinite for a channel not clipped)."""
    threshold: float = 0.5
    """The probability above which a pixel is foreground (``threshold_of``)."""
    regions: tuple[int, ...] = ()
    """A region model's label per output channel (``ModelSpec.region_labels``), or none."""

    @property
    def block_levels(self) -> int:
        """Pyramid levels past the full resolution each block writes itself
        (``pyramid.block_levels``)."""
        return self.layout.block_levels

    @property
    def preview_channels(self) -> tuple[int, ...]:
        """The input channels the quick-look shows: the model's three in colour (an RGB
        slide, a three-colour stain), else its first in grey."""
        return self.channels if len(self.channels) == 3 else self.channels[:1]

    @property
    def iterates_z(self) -> bool:
        return self.spatial_dims == 2 and self.source.info.shape[2] > 1

    def work(self) -> Iterator[WorkItem]:
        t_count, _, z_count = self.source.info.shape[:3]
        planes = range(z_count) if self.iterates_z else [-1]
        grid = block_grid(self.tiling, self.block)
        for t, z in itertools.product(range(t_count), planes):
            for index in itertools.product(*(range(n) for n in grid)):
                yield WorkItem(self.id, t, z, index)

    def block_of(self, item: WorkItem) -> Block:
        return block_at(self.tiling, self.block, item.index)

    def describe(self, item: WorkItem) -> str:
        """Where a block lies, for messages: the image, t (and z plane) and pixel ranges."""
        return f"{self.source.where}: {self.block_label(item)}"

    def block_label(self, item: WorkItem) -> str:
        """A block's t (and z plane) and pixel ranges: ``block t=0 y 0:4096, x 4096:8192``."""
        axes = "zyx"[3 - self.spatial_dims :]
        ranges = zip(axes, self.block_of(item).inner, strict=True)
        where = ", ".join(f"{axis} {lo}:{hi}" for axis, (lo, hi) in ranges)
        plane = f" z={item.z}" if item.z >= 0 else ""
        return f"block t={item.t}{plane} {where}"

    def source_region(self, item: WorkItem, block: Block) -> tuple[tuple[int, int], ...]:
        """(z, y, x) region of the source to read for ``block``."""
        return self._zyx(item, block.outer)

    def inner_region(self, item: WorkItem, block: Block) -> tuple[tuple[int, int], ...]:
        """(z, y, x) region of the image that ``block`` owns in the output."""
        return self._zyx(item, block.inner)

    def _zyx(
        self, item: WorkItem, ranges: tuple[tuple[int, int], ...]
    ) -> tuple[tuple[int, int], ...]:
        """A block's model-axis ``ranges`` as a (z, y, x) region: a 2D model's plane added."""
        if self.spatial_dims == 3:
            return ranges
        z = max(item.z, 0)
        return ((z, z + 1), *ranges)

    def output_index(self, item: WorkItem, block: Block) -> tuple[slice | int, ...]:
        index: list[slice | int] = []
        spatial = iter(block.inner)
        for axis in self.layout.axes:
            if axis == "t":
                index.append(item.t)
            elif axis == "c":
                index.append(slice(None))
            elif axis == "z" and self.spatial_dims == 2:
                index.append(max(item.z, 0))
            else:
                a, b = next(spatial)
                index.append(slice(a, b))
        return tuple(index)

    @property
    def num_blocks(self) -> int:
        t_count, _, z_count = self.source.info.shape[:3]
        planes = z_count if self.iterates_z else 1
        return t_count * planes * int(np.prod(block_grid(self.tiling, self.block)))

    @property
    def num_tiles(self) -> int:
        t_count, _, z_count = self.source.info.shape[:3]
        return t_count * (z_count if self.iterates_z else 1) * self.tiling.num_tiles


def _per_axis(key: str, values: list[int] | None, dims: int, default: int) -> tuple[int, ...]:
    if values is None:
        return (default,) * dims
    if len(values) == 1:
        return tuple(values) * dims
    if len(values) != dims:
        raise ConfigError(f"{key}={values}: give one value or {dims} (one per spatial axis)")
    return tuple(values)


MAX_TILE_BYTES = 2**30
"""Largest float32 model input per tile: beyond it one forward pass needs many GB."""


def tile_size(cfg: InferConfig, spec: ModelSpec) -> tuple[int, ...]:
    """The tile per spatial axis.

    Raises:
        ConfigError: a tile whose float32 input alone exceeds ``MAX_TILE_BYTES``.
    """
    dims = spec.spatial_dims
    if cfg.tile.size is None and spec.static_tile is not None:
        return tuple(spec.static_tile)
    tile = _per_axis("tile.size", cfg.tile.size, dims, DEFAULT_TILE[dims])
    if cfg.tile.size is None and spec.patch is not None:
        tile = spec.patch
    if spec.tile_steps:
        tile = _stepped(tile, spec.tile_steps, given=cfg.tile.size is not None)
    size = 4 * spec.in_channels * int(np.prod(tile))
    if size > MAX_TILE_BYTES:
        raise ConfigError(
            f"tile.size={list(tile)}: one tile is {size / 2**30:.0f} GiB of float32 input, "
            f"more than a forward pass can hold; choose a smaller tile.size (e.g. "
            f"{DEFAULT_TILE[dims]}); images smaller than a tile need no large tile"
        )
    return tile


def _stepped(tile: tuple[int, ...], steps: Sequence[Sequence[int]], given: bool) -> tuple[int, ...]:
    """``tile`` as a model of sizes ``min + n * step`` per axis (``steps``: [min, step],
    step 0 for one size) takes it: the default, each axis' largest such size up to it (at
    least its min); a given tile as it is.

    Raises:
        ConfigError: a given tile the model does not take.
    """
    fits = tuple(
        m if not step or t < m else m + (t - m) // step * step
        for t, (m, step) in zip(tile, steps, strict=True)
    )
    if given and fits != tile:
        sizes = ", ".join(f"{m} + {s}n" if s else str(m) for m, s in steps)
        raise ConfigError(
            f"tile.size={list(tile)}: the model takes tiles of {sizes} pixels (as its package "
            f"says); e.g. tile.size={list(fits)}"
        )
    return fits


def fitted_tile(
    tile: Sequence[int], shape: Sequence[int], multiples: Sequence[int | None]
) -> tuple[int, ...] | None:
    """The tile of an image shorter than ``tile`` along some axis: each such axis the
    image's length rounded up to the model's multiple along it (``multiples``, None: the
    axis keeps the tile), the others as ``tile``; None where that is ``tile``. A 40-plane
    z-stack in 128^3 tiles would run 88 planes of padding in each (3.2x the work), and the
    model would see a padded edge the whole image does not have."""
    fit = tuple(
        t if n >= t or m is None else min(t, -(-n // m) * m)
        for n, t, m in zip(shape, tile, multiples, strict=True)
    )
    return None if fit == tuple(tile) else fit


def image_shapes(spec: ModelSpec, sources: Sequence[ImageSource]) -> list[tuple[int, ...]]:
    """The spatial shape each of ``sources`` is tiled over by a model of ``spec``."""
    return [_spatial_shape(source, spec.spatial_dims) for source in sources]


def chunk_block(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    """``DEFAULT_BLOCK_CHUNKS`` chunks a side, no larger than the image: the default block
    before it held ``BLOCK_TILES`` tiles (outputs begun then resume with it)."""
    per_axis = DEFAULT_BLOCK_CHUNKS[len(shape)]
    return tuple(min(c * per_axis, -(-n // c) * c) for n, c in zip(shape, chunks, strict=True))


def default_block(
    shape: Sequence[int], tile: Sequence[int], chunks: Sequence[int], channels: int
) -> tuple[int, ...]:
    """The unit of work where ``block`` is not given: per axis the chunks' multiple that
    holds ``BLOCK_TILES`` tiles or ``DEFAULT_BLOCK_CHUNKS`` chunks, whichever is more, no
    larger than the image; ``channels``: the model's input and output channels, whose
    float32 values a block holds (``MAX_DEFAULT_BLOCK_BYTES``). A rule of the settings and
    the model, never of the machine: a rerun elsewhere plans the same blocks and resumes."""
    dims = len(shape)
    whole = [-(-n // c) * c for n, c in zip(shape, chunks, strict=True)]
    least = list(chunk_block(shape, chunks))
    block = [
        min(max(b, -(-BLOCK_TILES * t // c) * c), w)
        for b, t, c, w in zip(least, tile, chunks, whole, strict=True)
    ]
    while 4 * channels * math.prod(block) > MAX_DEFAULT_BLOCK_BYTES:
        shrinkable = [a for a in range(dims) if block[a] > least[a]]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: block[a] / tile[a])
        block[axis] -= chunks[axis]
    return tuple(block)


def _select_channels(cfg: InferConfig, source: ImageSource, spec: ModelSpec) -> tuple[int, ...]:
    count = source.info.shape[1]
    if cfg.channels is not None:
        bad = [c for c in cfg.channels if c >= count]
        if bad:
            raise InputImageError(
                f"{source.where}: has {count} channel(s), channels={cfg.channels} asks for {bad}"
            )
        chosen = tuple(cfg.channels)
    else:
        chosen = tuple(range(count))
    if len(chosen) != spec.in_channels:
        raise InputImageError(
            f"{source.where}: the model takes {spec.in_channels} channel(s) but "
            f"{len(chosen)} are selected from the image's {count}; set channels= to "
            f"{spec.in_channels} index(es), e.g. channels={list(range(spec.in_channels))}"
        )
    return chosen


def _spatial_shape(source: ImageSource, dims: int) -> tuple[int, ...]:
    _, _, z, y, x = source.info.shape
    if dims == 3:
        if z == 1:
            raise InputImageError(
                f"{source.where}: a 3D model needs a z-stack but the image is 2D "
                f"(shape {source.info.shape} as t,c,z,y,x); use a 2D model or a 3D image"
            )
        return (z, y, x)
    return (y, x)


def _normalization(
    cfg: InferConfig,
    source: ImageSource,
    norm: dict[str, Any] | None,
    channels: tuple[int, ...],
    nonzero: Nonzero | None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The run's normalization of ``source``'s ``channels`` as per-channel (offset,
    scale): the model's own ``norm`` (``normalize.mode=auto``), the mean and deviation
    given (``fixed``), the image's percentiles (``percentile``); None: none is.

    Raises:
        ConfigError: a mean or deviation given of neither one value nor one a channel.
    """
    mode = cfg.normalize.mode
    n = len(channels)
    if mode == NormalizeMode.auto:
        if not norm:
            return None
        return model_normalization(norm, source, channels, nonzero)
    if mode == NormalizeMode.none:
        return None
    if mode == NormalizeMode.fixed:
        per_channel = []
        for key, values in (("mean", cfg.normalize.mean), ("std", cfg.normalize.std)):
            if len(values) not in (1, n):
                raise ConfigError(
                    f"normalize.{key}={list(values)}: {source.where} feeds the model {n} "
                    f"channel(s); give one value, or one per channel"
                )
            per_channel.append(tuple(float(v) for v in np.broadcast_to(values, (n,))))
        return per_channel[0], per_channel[1]
    lo, hi = _percentiles(source, channels, cfg.normalize.low, cfg.normalize.high)
    scale = np.where(hi > lo, hi - lo, 1.0)
    return tuple(map(float, lo)), tuple(map(float, scale))


def normalization_offset(
    cfg: InferConfig,
    norm: dict[str, Any] | None,
    source: ImageSource,
    nonzero: Nonzero,
) -> tuple[float, ...]:
    """Per channel of ``nonzero``'s, the value the run's normalization (``_normalization``:
    the model's ``norm``, or what ``normalize.mode`` gives in its place) takes to 0: what
    the voxels outside a model's nonzero region read as (``NonzeroSource``'s fill); 0
    where none normalizes."""
    found = _normalization(cfg, source, norm, nonzero.channels, nonzero)
    return found[0] if found else (0.0,) * len(nonzero.channels)


def clipped_before(
    norm: dict[str, Any] | None, channels: Sequence[int] | None = None
) -> dict[int, tuple[float, float]] | None:
    """Per image channel (``channels``: those the model takes, in its order; None: the
    first ones), the range
    in its own values that a model's normalization (``MODEL_META``'s ``normalize``) clips
    it to, where it clips a channel at fixed bounds (an nnU-Net CT's, a CT channel's
    beside a PET's): clipped before resampling, as nnU-Net preprocesses. None: none is."""
    norm = norm or {}
    each = norm["channels"] if "channels" in norm else [norm]
    found = {}
    for i, entry in enumerate(each):
        if not entry.get("clip") or len(entry.get("mean") or ()) != 1 or len(entry["std"]) != 1:
            continue
        (mean,), (std,) = entry["mean"], entry["std"]
        low, high = entry["clip"]
        channel = channels[i] if channels else i
        found[channel] = (float(low) * std + mean, float(high) * std + mean)
    return found or None


def clip_of(norm: dict[str, Any] | None, n: int) -> tuple[tuple[float, float], ...] | None:
    """Per channel of ``n``, the bounds a model's normalization (``MODEL_META``'s
    ``normalize``) clips the normalized input to: its ``clip``, or each channel's of
    ``channels``; infinite where a channel's clips nothing. None: none clips."""
    if not norm:
        return None
    if "channels" not in norm:
        clip = norm.get("clip")
        return None if clip is None else ((float(clip[0]), float(clip[1])),) * n
    each = [entry.get("clip") for entry in norm["channels"]]
    if not any(each):
        return None
    return tuple((float(c[0]), float(c[1])) if c else (-math.inf, math.inf) for c in each)


def _clip_given(norm: dict[str, Any] | None) -> Any:
    """What a normalization says it clips to, as it says it (a run's fingerprint)."""
    if not norm:
        return None
    if "channels" in norm:
        return [entry.get("clip") for entry in norm["channels"]]
    return [float(v) for v in norm["clip"]] if "clip" in norm else None


def model_normalization(
    norm: dict[str, Any],
    source: ImageSource,
    channels: tuple[int, ...],
    nonzero: Nonzero | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A model's own normalization (``modeldir.MODEL_META``'s ``normalize``) as per-channel
    (offset, scale): fixed ``mean`` and ``std``; or ``percentile`` [low, high] or
    ``moments`` of the image's sample, plus ``eps``, over the channels together where
    ``joint``; then ``gain`` and ``offset`` folded in (a model package's ``scale_linear``);
    or ``channels``, each channel's own of these (an nnU-Net training whose channels are
    normalized differently: a CT's and a PET's). With the image's ``nonzero`` region (an
    nnU-Net training's), each channel's moments and extremes ([0, 100] percentiles) are
    those of all its voxels there, as nnU-Net's."""
    n = len(channels)
    if "channels" in norm:  # each channel's, of the channels measured together
        keys = [json.dumps(e, sort_keys=True) for e in norm["channels"]]

        def measured(entry: dict[str, Any]) -> dict[int, tuple[float, float]]:
            # Of the nonzero region's channels (the image's, not a cascade's labels').
            over = channels
            if nonzero is not None and (entry.get("moments") or "percentile" in entry):
                over = tuple(c for c in channels if c in nonzero.channels)
            got = model_normalization(entry, source, over, nonzero)
            return dict(zip(over, zip(*got, strict=True), strict=True))

        # Each normalization once (a sample read once for all its channels).
        found = {k: measured(e) for k, e in zip(keys, norm["channels"], strict=True)}
        each = [found[k][c] for k, c in zip(keys, channels, strict=False)]
        return tuple(o for o, _ in each), tuple(s for _, s in each)
    joint = bool(norm.get("joint"))
    eps = float(norm.get("eps", 0.0))
    whole = nonzero is not None and not joint and nonzero.channels == channels
    if whole and norm.get("percentile") == [0.0, 100.0]:
        lo, hi = nonzero.range()  # type: ignore[union-attr]
        offset, scale = lo, hi - lo + eps
    elif whole and norm.get("moments"):
        offset, deviation = nonzero.moments()  # type: ignore[union-attr]
        scale = deviation + eps
    elif "percentile" in norm:
        low, high = norm["percentile"]
        lo, hi = _percentiles(source, channels, low, high, joint)
        offset, scale = lo, hi - lo + eps
    elif norm.get("moments"):
        data = _sample(source, channels)
        if joint:
            data = data.reshape(1, -1)
        offset = np.broadcast_to(data.mean(axis=1), (n,))
        scale = np.broadcast_to(data.std(axis=1) + eps, (n,))
    else:
        offset = np.broadcast_to(np.asarray(norm.get("mean", 0.0), float), (n,))
        scale = np.broadcast_to(np.asarray(norm.get("std", 1.0), float), (n,))
    if "gain" in norm:  # ((x - o) / s) * g + b  =  (x - (o - b * s / g)) / (s / g)
        gain = np.broadcast_to(np.asarray(norm["gain"], float), (n,))
        shift = np.broadcast_to(np.asarray(norm.get("offset", 0.0), float), (n,))
        offset, scale = offset - shift * scale / gain, scale / gain
    return tuple(map(float, offset)), tuple(map(float, scale))


def _sample(source: ImageSource, channels: tuple[int, ...]) -> np.ndarray:
    """A fixed sample of the image's regions, (channels, pixels) in float64: the whole
    image is never read, unless it is no larger than the sample (then it is the sample)."""
    _, _, z, y, x = source.info.shape
    if z * y * x <= _PERCENTILE_SAMPLES * _PERCENTILE_REGION**2:
        whole = source.read(0, channels, ((0, z), (0, y), (0, x)))
        return whole.reshape(len(channels), -1).astype(np.float64)
    rng = np.random.default_rng(0)
    size = [min(s, _PERCENTILE_REGION) for s in (y, x)]
    samples = []
    for _ in range(_PERCENTILE_SAMPLES):
        zz = int(rng.integers(0, z))
        y0 = int(rng.integers(0, y - size[0] + 1))
        x0 = int(rng.integers(0, x - size[1] + 1))
        region = ((zz, zz + 1), (y0, y0 + size[0]), (x0, x0 + size[1]))
        samples.append(source.read(0, channels, region).reshape(len(channels), -1))
    return np.concatenate(samples, axis=1).astype(np.float64)


def _percentiles(
    source: ImageSource, channels: tuple[int, ...], low: float, high: float, joint: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The ``low`` and ``high`` percentiles of each channel's sample (``_sample``), or of
    the channels' together where ``joint``."""
    data = _sample(source, channels)
    if joint:
        data = data.reshape(1, -1)
    n = len(channels)
    lo = np.broadcast_to(np.percentile(data, low, axis=1), (n,))
    hi = np.broadcast_to(np.percentile(data, high, axis=1), (n,))
    return lo, hi


def plan_image(
    image_id: int,
    source: ImageSource,
    output: str,
    cfg: InferConfig,
    spec: ModelSpec,
    model_sha256: str,
    mask: Mask | None = None,
    tile: tuple[int, ...] | None = None,
    nonzero: Nonzero | None = None,
) -> ImagePlan:
    """Everything needed to segment ``source`` into ``output``, before any pixel is read
    (except the sample a percentile normalization needs). ``nonzero``: the image's
    nonzero region where the model crops to it, whose statistics the model's
    normalization takes. ``tile``: the tile fitted to an
    image shorter than the configured one (``fitted_tile``), which the model was probed
    with; default ``tile_size``."""
    dims = spec.spatial_dims
    shape = _spatial_shape(source, dims)
    channels = _select_channels(cfg, source, spec)
    tile = tile or tile_size(cfg, spec)
    halo = _halo(cfg, spec, tile, shape)
    # An nnU-Net training's tiles over each scan's nonzero box only, spread as its own.
    window = nonzero_box(source, nonzero)[3 - dims :] if nonzero else None
    tiling = Tiling.plan(
        shape, tile, cfg.tile.overlap, cfg.tile.blend.value, halo, window, spec.tile_spread
    )
    chunks = _per_axis("chunks", cfg.chunks, dims, DEFAULT_CHUNK[dims])
    if cfg.chunks is None:
        chunks = tuple(min(c, n) for c, n in zip(chunks, shape, strict=False))
    if cfg.block is None:
        block = default_block(shape, tile, chunks, len(channels) + spec.out_channels)
    else:
        block = _per_axis("block", cfg.block, dims, 0)
        if any(b % c for b, c in zip(block, chunks, strict=False)):
            raise ConfigError(
                f"block={list(block)} must be a multiple of chunks={list(chunks)} on every "
                f"axis (one writer per chunk); e.g. block={[c * 4 for c in chunks]}"
            )
    norm = _normalization(cfg, source, spec.normalize, channels, nonzero)
    given = spec.normalize if cfg.normalize.mode == NormalizeMode.auto else None
    clip = clip_of(given, len(channels))

    info = source.info
    t_count, _, z_count, _, _ = info.shape
    mode = cfg.finalize.mode.value
    out_c = output_channels(mode, spec.out_channels)
    axes = ("t" if t_count > 1 else "") + "c" + ("z" if z_count > 1 or dims == 3 else "") + "yx"
    sizes = {"t": t_count, "c": out_c, "z": z_count, "y": info.shape[3], "x": info.shape[4]}
    spatial_chunks = dict(zip("zyx"[3 - dims :], chunks, strict=False))
    out_chunks = tuple(spatial_chunks.get(a, 1) for a in axes)
    classes = tuple(f"class_{i}" for i in range(spec.out_channels))
    codes: tuple[Any, ...] = ()
    if spec.classes and len(spec.classes) == spec.out_channels:
        classes, codes = spec.classes, spec.class_codes or ()
    names = spec.classes if spec.classes and len(spec.classes) == out_c else None
    if mode == "labels":
        names = ("labels",)
    scale, units, origin = physical(cfg, source, axes)
    shape = tuple(sizes[a] for a in axes)
    spatial_block = dict(zip("zyx"[3 - dims :], block, strict=True))
    pyramid_axes = "zyx" if dims == 3 else "yx"
    written = block_levels(shape, out_chunks, axes, pyramid_axes, spatial_block, cfg.levels)
    # A shard is a block's region: every channel, one time point (and plane of a 2D model).
    shards = tuple(sizes["c"] if a == "c" else spatial_block.get(a, 1) for a in axes)
    if cfg.instances.geojson and "z" in axes:
        raise ConfigError(
            f"instances.geojson=true: {source.where} is segmented as a volume ({sizes['z']} "
            f"planes), its instances in 3D; GeoJSON outlines are 2D: drop instances.geojson"
        )
    layout = OutputLayout(
        axes=axes,
        shape=shape,
        chunks=out_chunks,
        dtype=output_dtype(mode, spec.out_channels, spec.region_labels or ()),
        scale=tuple(1.0 if a == "c" else float(scale.get(a, 1.0)) for a in axes),
        units={a: u for a, u in units.items() if a in axes},
        channel_names=names or tuple(f"class_{i}" for i in range(out_c)),
        name=source.name,
        levels=cfg.levels,
        pyramid_axes=pyramid_axes,
        block_levels=written,
        shards=shards if cfg.shards else None,
        translation=tuple(origin.get(a, 0.0) for a in axes) if origin else None,
    )
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "input": source.where,
                "shape": info.shape,
                "dtype": str(info.dtype),
                "model": model_sha256,
                "channels": channels,
                "tile": tile,
                "overlap": cfg.tile.overlap,
                "blend": cfg.tile.blend.value,
                "padding": cfg.tile.padding.value,
                "block": block,
                "chunks": chunks,
                "shards": cfg.shards,
                "tta": cfg.tta,
                "precision": [cfg.precision.value, cfg.layout.value],
                "voxel_size": cfg.voxel_size,
                "instances": config_to_dict(cfg)["instances"],
                "skip_empty": cfg.skip_empty,
                "mask": mask.key() if mask else None,
                # Blocks write their first pyramid levels themselves: an unfinished run
                # whose done blocks did not (an earlier version's) must not resume.
                "levels": [cfg.levels, "blocks"] if cfg.levels > 1 else cfg.levels,
                "norm": [norm, _clip_given(given)] if clip else norm,
                "activation": activation_of(cfg, spec),
                "finalize": [
                    mode,
                    threshold_of(cfg, spec),
                    cfg.finalize.activation.value,
                    *([spec.region_labels] if spec.region_labels else []),
                ],
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    return ImagePlan(
        id=image_id,
        source=source,
        output=output,
        channels=channels,
        spatial_dims=dims,
        tiling=tiling,
        block=block,
        layout=layout,
        padding=cfg.tile.padding.value,
        norm=norm,
        skip_empty=cfg.skip_empty,
        fingerprint=fingerprint,
        preview=preview_step(info.shape[3], info.shape[4]) if cfg.quicklook else 0,
        mask=mask,
        classes=classes,
        class_codes=codes,
        activation=activation_of(cfg, spec),
        threshold=threshold_of(cfg, spec),
        clip=clip,
        regions=spec.region_labels or (),
    )


def nonzero_box(source: ImageSource, nonzero: Nonzero) -> Region:
    """The pixels of ``source`` over ``nonzero``'s box (found in the image it reads):
    a resampling's (``ResampledSource.box``: its crop's), else ``Nonzero.box_at``."""
    resampling = resampling_of(source)
    if resampling is not None:
        return resampling.box(nonzero)
    return nonzero.box_at(source.info.shape[2:])


def _halo(
    cfg: InferConfig, spec: ModelSpec, tile: tuple[int, ...], shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The model's halo per spatial axis (a model package's), checked against the tiles'
    overlap: where an image is longer than a tile, tiles must overlap by twice the halo to
    cover what their halos leave out.

    Raises:
        ConfigError: ``tile.overlap`` is too small for the halo.
    """
    if not spec.halo:
        return None
    short = [
        (h, t)
        for h, t, n in zip(spec.halo, tile, shape, strict=True)
        if n > t and 2 * h > overlap_pixels(cfg.tile.overlap, t)
    ]
    if short:
        need = max(2 * h / t for h, t in short)
        raise ConfigError(
            f"tile.overlap={cfg.tile.overlap}: the model's output has a halo of "
            f"{list(spec.halo)} pixels, which tiles of {list(tile)} must overlap by twice; set "
            f"tile.overlap={math.ceil(need * 100) / 100} or more"
        )
    return spec.halo


def threshold_of(cfg: InferConfig, spec: ModelSpec) -> float:
    """The mask's threshold: ``finalize.threshold``, else the model's own (a model
    package's ``binarize``), else 0.5."""
    given = cfg.finalize.threshold
    return given if given is not None else spec.threshold if spec.threshold is not None else 0.5


def activation_of(cfg: InferConfig, spec: ModelSpec) -> str:
    """The output's activation: ``finalize.activation``, else the model's own (its
    ``raysegment.json``), else auto (sigmoid for one channel, else softmax)."""
    given = cfg.finalize.activation.value
    return given if given != "auto" else spec.activation or "auto"


def physical(
    cfg: InferConfig, source: ImageSource, axes: str
) -> tuple[dict[str, float], dict[str, str], dict[str, float]]:
    """Pixel size, unit and origin per axis of ``axes``: the input's, or ``voxel_size`` (z
    y x, or y x), which keeps the origin where it is in pixels. A resampled source's are
    its own (``voxel_size`` was its input's)."""
    scale, units = dict(source.info.scale), dict(source.info.units)
    origin = {a: o for a, o in source.info.origin.items() if a in axes}
    if cfg.voxel_size is None or resampling_of(source) is not None:
        return scale, units, origin
    spatial = [a for a in "zyx" if a in axes]
    if len(cfg.voxel_size) > len(spatial) or len(cfg.voxel_size) < len(spatial) - 1:
        raise ConfigError(
            f"voxel_size={list(cfg.voxel_size)}: {source.where} has spatial axes "
            f"{''.join(spatial)}; give one size per axis"
        )
    for axis, size in zip(
        spatial[len(spatial) - len(cfg.voxel_size) :], cfg.voxel_size, strict=True
    ):
        if axis in origin:
            origin[axis] *= float(size) / (scale.get(axis) or 1.0)
        scale[axis] = float(size)
        units.setdefault(axis, "micrometer")
    return scale, units, origin


def provenance(
    plan: ImagePlan, config: dict[str, Any], models: Sequence[ModelFile], version: str
) -> dict[str, Any]:
    """The output's ``raysegment`` attributes: settings, input, model (an ensemble's
    members each with their SHA-256), mask."""
    model: dict[str, Any] = {"path": models[0].path, "sha256": models[0].sha256}
    if len(models) > 1:
        model = {
            "path": [m.path for m in models],
            "sha256": ensemble_sha256(models),
            "members": [{"path": m.path, "sha256": m.sha256} for m in models],
        }
    return {
        "version": version,
        "fingerprint": plan.fingerprint,
        "config": config,
        "input": {
            "path": plan.source.path,
            **({"series": plan.source.series} if plan.source.series is not None else {}),
            **({"level": plan.source.level} if plan.source.level else {}),
            **_sequence_of(plan.source),
            **_channel_files_of(plan.source),
            **_resampled_of(plan.source),
            **_previous_of(plan.source),
            "shape_tczyx": list(plan.source.info.shape),
            "dtype": str(plan.source.info.dtype),
            "channels": list(plan.channels),
        },
        "model": model,
        **_labels_of(plan),
        **({"mask": plan.mask.key()[0]} if plan.mask else {}),
        "blocks": plan.num_blocks,
        "tiles": plan.num_tiles,
        "tile": list(plan.tiling.tile),
    }


def _labels_of(plan: ImagePlan) -> dict[str, Any]:
    """A labels output's values in the provenance, each with its class: the value of each
    class of an argmax (background first, as the model names them), 1 for a one-channel
    model's mask, each region's label of a region model's (by the first region painting
    it); 0 is none."""
    if plan.layout.channel_names != ("labels",):
        return {}
    if plan.regions:
        values = {v: plan.classes[plan.regions.index(v)] for v in sorted(set(plan.regions))}
    elif len(plan.classes) == 1:
        values = {1: plan.classes[0]}
    else:
        values = dict(enumerate(plan.classes))
    return {"labels": [{"value": v, "class": name} for v, name in values.items()]}


def _resampled_of(source: ImageSource) -> dict[str, Any]:
    """A resampled image in the provenance: the shape it was read from (the level's, of
    ``level``) and the pixel size it was read at."""
    resampling = resampling_of(source)
    if resampling is None:
        return {}
    scale = {a: resampling.info.scale[a] for a in resampling.resampled}
    shape = list(resampling.inner.info.shape)
    found: dict[str, Any] = {"from_shape_tczyx": shape, "scale": scale}
    if resampling.spans:  # the crop resampled alone, and where its pixels are
        spans = zip("zyx", resampling.spans, strict=True)
        found["crops"] = {
            a: {"voxels": [s.start, s.stop], "pixels": list(s.core)} for a, s in spans if s
        }
    return {"resampled": found}


def _previous_of(source: ImageSource) -> dict[str, Any]:
    """A cascade's earlier stage's labels in the provenance: the label map's file and the
    labels it gave a channel each."""
    if not isinstance(source, PreviousLabelsSource):
        return {}
    return {"previous": {"file": source.labels.path, "labels": list(source.values)}}


def _channel_files_of(source: ImageSource) -> dict[str, Any]:
    """A case's channel files in the provenance (``channels.ChannelFilesSource``: the
    image under any resampling)."""
    found = source.original
    if not isinstance(found, ChannelFilesSource):
        return {}
    return {"channel_files": [Path(p.path).name for p in found.parts]}


def _sequence_of(source: ImageSource) -> dict[str, Any]:
    """A sequence's files in the provenance: its axis, how many, the first and the last."""
    if not isinstance(source, TiffSequenceSource):
        return {}
    first, last = (Path(f).name for f in (source.files[0], source.files[-1]))
    files = {"axis": source.axis, "files": len(source.files), "first": first, "last": last}
    return {"sequence": files}


def output_channels(mode: str, model_channels: int) -> int:
    return 1 if mode == "labels" else model_channels


def labels_dtype(channels: int, regions: tuple[int, ...] = ()) -> str:
    """The type labels are finalized in: uint8 where they fit in it (an argmax of up to
    256 channels, a region model's labels up to 255), else int32."""
    return "uint8" if (max(regions) if regions else channels - 1) <= 255 else "int32"


def output_dtype(mode: str, model_channels: int, regions: tuple[int, ...] = ()) -> str:
    """float32 for raw/probabilities, uint8 for masks, uint8/uint16 for labels (a region
    model's: as its labels need, ``finalize.labels_dtype``)."""
    if mode in ("raw", "probabilities"):
        return "float32"
    if mode == "labels" and labels_dtype(model_channels, regions) != "uint8":
        return "uint16"
    return "uint8"
