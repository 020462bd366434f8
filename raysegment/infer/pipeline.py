"""``raysegment infer``: images -> Ray Data blocks -> predictor actors -> OME-Zarr."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysegment import storage
from raysegment._version import __version__
from raysegment.config import InferConfig, as_config, config_to_dict
from raysegment.data.channels import ChannelFilesSource, channel_cases
from raysegment.data.inputs import resolve_inputs
from raysegment.data.nonzero import Nonzero, NonzeroSource, nonzero_region
from raysegment.data.previous import PreviousLabelsSource, resampling_of
from raysegment.data.resampled import resample_sizes, resampled_to
from raysegment.data.sources import (
    MICROMETRES,
    ImageSource,
    Unstored,
    image_stem,
    nearest_level,
    open_sequence,
    open_sources,
    pixel_micrometres,
    reader_module,
)
from raysegment.data.tiling import block_grid, seam_repeats
from raysegment.errors import ConfigError, InputImageError, ModelContractError, OutputError
from raysegment.infer.attempts import devices, forget, start_ledger
from raysegment.infer.mask import AUTO, Mask, auto_mask, open_mask
from raysegment.infer.model import ModelFile, ModelSpec, ensemble_sha256, probe_models, read_models
from raysegment.infer.plan import (
    ImagePlan,
    WorkItem,
    activation_of,
    chunk_block,
    clipped_before,
    image_shapes,
    nonzero_box,
    normalization_offset,
    physical,
    plan_image,
    provenance,
    threshold_of,
    tile_size,
)
from raysegment.infer.pyramid import build_pyramid
from raysegment.infer.quicklook import InputPreview, quicklook, write_png
from raysegment.infer.stages import EMPTY, OUTSIDE, decode_error, read_stage, write_stage
from raysegment.infer.writer import (
    RESUMES,
    OutputState,
    complete_output,
    create_output,
    done_blocks,
    inspect_output,
    mark_done,
)
from raysegment.modeldir import MODEL_META
from raysegment.post.components import read_postprocessing
from raysegment.runtime import (
    RayStart,
    import_ray_data,
    model_runtime_env,
    node_cpus,
    quiet_ray_data,
    start_ray_while,
    stop_ray,
)

__all__ = ["InferSummary", "infer"]

log = logging.getLogger("raysegment")


@dataclass
class InferSummary:
    """What a run did; also printed at the end of ``raysegment infer``."""

    outputs: list[str] = field(default_factory=list)
    images: int = 0
    blocks: int = 0
    resumed_blocks: int = 0
    empty_blocks: int = 0
    """Blocks with constant input, written as fill value without running the model."""
    outside_blocks: int = 0
    """Blocks outside the mask, written as fill value without running the model."""
    outside: str = "the mask"
    """What those blocks lie outside: the mask, or an nnU-Net training's nonzero box."""
    tiles: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    device: str = "cpu"
    actors: int = 0
    cluster: str = ""
    """Address of the Ray cluster that ran the work."""
    devices: list[str] = field(default_factory=list)
    """Node and GPU (or CPU) of each predictor actor."""
    seams: str = ""
    """How many tiles the block seams repeat, and a block size that repeats fewer; "" when
    they repeat under 5%."""
    fitted: str = ""
    """Images shorter than the tile along an axis, and the tiles fitted to them; "" when
    none is."""
    levels: str = ""
    """The pyramid levels read to near the model's training pixel; "" when none was."""

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        resumed = f" ({self.resumed_blocks} already done)" if self.resumed_blocks else ""
        resumed += f" ({self.empty_blocks} empty)" if self.empty_blocks else ""
        if self.outside_blocks:
            resumed += f" ({self.outside_blocks} outside {self.outside})"
        return (
            f"raysegment: {self.images} image(s), {self.blocks} block(s){resumed}, "
            f"{self.tiles} tile(s) on {self.actors} {self.device} actor(s) of Ray cluster "
            f"{self.cluster}, {self.seconds:.1f} s, {self.megapixels_per_second:.2f} MP/s"
        )


def _restrict_gpus(device: str) -> bool:
    """GPU indices (``device=1,3``) restrict the private local Ray about to be started here
    to those GPUs: Ray hands out only the GPUs its raylet sees. Set before anything else
    runs beside Ray's start. Returns whether they were applied that way (else each
    predictor pins its own index, on a cluster joined or a Ray the caller started)."""
    import ray

    if ray.is_initialized() or not device[0].isdigit() or os.environ.get("RAY_ADDRESS"):
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    return True


@dataclass(frozen=True)
class Pool:
    """The predictor actors for ``device``."""

    use_gpu: bool
    actors: int
    cpus: int
    """CPUs (torch threads) per actor."""
    streams: int = 1
    """Tiles each CPU actor runs at once, its threads shared among them."""
    gpu_indices: tuple[int, ...] | None = None
    """GPU indices each node's predictors pin themselves to (``device=1,3,6`` on a
    cluster Ray was not started for); None: the GPUs Ray assigns."""
    reserve: float = 1.0
    """Ray CPUs each predictor reserves: ``cpus``, less where the predictors would take
    every CPU and leave none to the read and write tasks (GPU runs), or to the instance
    tasks of an image that finished while the others run (a silent hang)."""

    def leaving_room(self, total_cpus: float) -> Pool:
        room = max(total_cpus - 1.0, 0.1 * self.actors) / self.actors
        reserve = min(float(self.cpus), math.floor(room * 100) / 100)
        return dataclasses.replace(self, reserve=reserve)


def _pool(cfg: InferConfig, indices_applied: bool = True, blocks: int | None = None) -> Pool:
    """The predictor pool for ``cfg.device`` on the cluster Ray sees, of at most ``blocks``
    actors: one that would get no block still starts a process, imports torch and loads
    the model (4.5 CPU seconds here) while the others start, and holds its GPU."""
    import ray

    resources = ray.cluster_resources()
    pool = _pool_for(cfg, indices_applied, resources, node_cpus())
    if blocks is not None:
        pool = dataclasses.replace(pool, actors=max(1, min(pool.actors, blocks)))
    return pool.leaving_room(resources.get("CPU", 1))


_CPU_THREADS = 4
"""Torch threads per CPU predictor by default: one tile's convolutions scale well to about
4 threads; more cores get more predictors."""


def _pool_for(
    cfg: InferConfig, indices_applied: bool, resources: dict[str, float], node_cpus: int = 0
) -> Pool:
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    node_cpus = min(node_cpus or cpus, cpus)  # the largest node's CPUs: an actor's ceiling
    device = cfg.device
    if device == "auto":
        device = "all" if gpus else "cpu"
    if device == "cpu":
        # Every core computes: reads and writes take little CPU next to a model (8192^2
        # Unet on 2 cores: 1 actor x 2 threads 90 s, 2 x 1 92 s, 1 x 1 leaving a core to
        # I/O 126 s; benchmarks/HISTORY.md).
        if cfg.threads:
            threads = cfg.threads
        elif cfg.actors:
            threads = max(1, min(node_cpus, cpus // cfg.actors))
        else:
            threads = max(1, min(_CPU_THREADS, node_cpus))
        streams = min(cfg.streams or threads, threads)
        return Pool(False, cfg.actors or max(1, cpus // threads), threads, streams)
    wanted = {"gpu": 1, "all": gpus}.get(device, len(device.split(",")))
    if gpus < 1 or wanted > gpus:
        raise ConfigError(
            f"device={cfg.device}: Ray sees {gpus} GPU(s); use device=cpu, or a cluster with GPUs"
        )
    if device[0].isdigit() and not indices_applied:
        return _pinned_pool(cfg, tuple(int(i) for i in device.split(",")))
    return Pool(True, cfg.actors or wanted, 1)


def _pinned_pool(cfg: InferConfig, indices: tuple[int, ...]) -> Pool:
    """``device=1,3,6`` on a running cluster: those GPUs of every GPU node."""
    import ray

    counts = [
        int(n["Resources"].get("GPU", 0))
        for n in ray.nodes()
        if n.get("Alive") and n["Resources"].get("GPU", 0) > 0
    ]
    if min(counts) <= max(indices):
        raise ConfigError(
            f"device={cfg.device}: the cluster's GPU nodes have {sorted(set(counts))} GPU(s), "
            f"and every one needs GPU {max(indices)}; choose indices below {min(counts)}, "
            f"or device=all"
        )
    return Pool(True, cfg.actors or len(indices) * len(counts), 1, gpu_indices=indices)


def _check_output_location(output: str, input: str, paths: list[str]) -> None:
    """Refuse outputs written into an input (a zarr store, a file) or beside the inputs of
    a directory, where the next run would read them as inputs."""
    for path in paths:
        if output == path or output.startswith(path.rstrip("/") + "/"):
            raise OutputError(f"output={output} lies inside the input {path}; write elsewhere")
    if output == input and storage.is_dir(input):
        raise OutputError(
            f"output={output} is the input directory: its results would be read as inputs "
            f"next time; write into another directory (a subdirectory is fine)"
        )


def _prepare_outputs(
    cfg: InferConfig,
    plans: list[ImagePlan],
    config: dict[str, Any],
    models: tuple[ModelFile, ...],
) -> dict[int, set[str]]:
    """Create, resume or refuse each output; return the blocks already done per image."""
    done: dict[int, set[str]] = {}
    for plan in plans:
        out = plan.output
        state = inspect_output(out)
        if not state.exists or cfg.overwrite:
            if state.exists and not state.ours and not storage.is_dir(out):
                raise OutputError(f"{out}: exists and is not a directory; remove it")
            meta = provenance(plan, config, models, __version__)
            if create_output(out, plan.layout, meta, replace=cfg.overwrite):
                done[plan.id] = set()
                continue
            state = _wait_for_output(out)  # another part of the run created it first
        if not state.ours:
            raise OutputError(
                f"{out}: exists and is not a raysegment output; remove it, choose another "
                f"output=, or set overwrite=true"
            )
        if state.fingerprint != plan.fingerprint:
            raise OutputError(
                f"{out}: {'a ' if state.complete else 'an in'}complete output from a run with "
                f"other settings exists; rerun with the same settings to resume, or set "
                f"overwrite=true to replace it"
            )
        if state.complete:
            if cfg.num_parts == 1:
                raise OutputError(
                    f"{out}: a complete output already exists; set overwrite=true to replace it"
                )
            done[plan.id] = {w.key for w in plan.work()}  # the other parts finished it
            continue
        done[plan.id] = done_blocks(out)
    return done


def _wait_for_output(out: str, timeout: float = 120.0) -> OutputState:
    """The state of an output another part is creating, once its metadata is written."""
    deadline = time.monotonic() + timeout
    while True:
        state = inspect_output(out)
        if state.ours or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def _refuse_shared_outputs(input: str, names: list[str]) -> None:
    """Refuse a run in which two images would write one output (``<name>.ome.zarr``)."""
    clash = [n for n, k in Counter(names).items() if k > 1]
    if clash:
        raise ConfigError(
            f"{input}: several inputs would write {clash[0]}.ome.zarr; narrow pattern="
        )


def _resumable(
    cfg: InferConfig,
    make: Callable[..., ImagePlan],
    tile: tuple[int, ...] | None,
) -> ImagePlan:
    """The plan ``make(cfg, tile=tile)`` makes (``tile``: fitted to an image shorter than
    the configured tile, or None); where the output was begun by an earlier version,
    otherwise the same run, the plan it was begun with, so that the run resumes: with the
    configured tile (before tiles were fitted), and, where ``block`` is not given, with
    the default block before it held ``BLOCK_TILES`` tiles (``chunk_block``: 2 chunks a
    side in 3D)."""
    plan = make(cfg, tile=tile)
    if cfg.overwrite:
        return plan
    dims = plan.spatial_dims
    earlier = [(cfg, None)] if tile is not None else []
    if cfg.block is None:
        block = chunk_block(plan.tiling.shape, plan.layout.chunks[-dims:])
        if tile is not None or block != plan.block:
            earlier.append((dataclasses.replace(cfg, block=list(block)), None))
    if not earlier:
        return plan
    state = inspect_output(plan.output)
    if not state.ours or state.fingerprint in (None, plan.fingerprint):
        return plan
    for begun in (make(c, tile=t) for c, t in earlier):
        if begun.fingerprint == state.fingerprint:
            return begun
    return plan


def _prepare(
    cfg: InferConfig, paths: list[str], output: str, models: tuple[ModelFile, ...]
) -> tuple[ModelSpec, list[ImagePlan], dict[int, set[str]], dict[int, Unstored]]:
    """Open the images, load and probe the model (each of an ensemble), plan each image
    and create, resume or refuse its output: the model's description, the plans, the
    blocks already done, and per image whose store tells them (``ImageSource.unstored``)
    the test of regions it holds no chunk of.

    Runs while Ray starts (``start_ray_while``), so the driver's heavy imports happen here,
    beside Ray's booting processes: torch with the model, and Ray Data (pandas with it).
    """
    import_ray_data()

    sources, regions = _open_images(cfg, paths, models)
    _refuse_shared_outputs(cfg.input, [s.name for s in sources])  # series named alike
    if cfg.finalize.nifti:
        _only_of(
            sources,
            ("nifti",),
            "finalize.nifti=true",
            "NIfTI image",
            "NIfTI copies are written of NIfTI inputs only: narrow pattern= or drop the key",
        )
    if cfg.finalize.dicom_seg:
        _check_dicom_seg(cfg, sources)
    if cfg.instances.dicom_ann:
        _check_dicom_ann(cfg, sources)
    spec, fitted = probe_models(
        models, lambda spec: tile_size(cfg, spec), lambda spec: image_shapes(spec, sources)
    )
    _check_classes(cfg, spec)
    if spec.static_batch and cfg.batch_size not in (None, spec.static_batch):
        raise ConfigError(
            f"batch_size={cfg.batch_size}: {models[0].path} takes batches of "
            f"{spec.static_batch} only (as exported, or as its package says); drop "
            f"batch_size, or export with a dynamic batch dimension"
        )
    sha256 = ensemble_sha256(models)
    masks = [_mask_of(cfg, src, nz) for src, nz in zip(sources, regions, strict=True)]
    plans = [
        _resumable(
            cfg,
            functools.partial(
                plan_image,
                i,
                src,
                storage.join(output, f"{src.name}.ome.zarr"),
                spec=spec,
                model_sha256=sha256,
                mask=mask,
                nonzero=nz,
            ),
            tile,
        )
        for i, (src, (mask, _), tile, nz) in enumerate(
            zip(sources, masks, fitted, regions, strict=True)
        )
    ]
    done = _prepare_outputs(cfg, plans, config_to_dict(cfg), models)
    for src, (_, found) in zip(sources, masks, strict=True):
        if found is not None:  # for a look at what mask=auto found
            white = np.repeat(found[..., None], 3, axis=-1).astype(np.uint8) * 255
            write_png(storage.join(output, f"{src.name}_mask.png"), white)
    # A masked image's blocks outside the mask are found by the mask (and counted so).
    # Stores listed 16 at a time: a bucket's directory of many volumes, a request each.
    listed = [p for p in plans if cfg.skip_empty and p.mask is None]
    with concurrent.futures.ThreadPoolExecutor(_LISTING_THREADS) as pool:
        tests = zip(listed, pool.map(lambda p: p.source.unstored(), listed), strict=True)
    return spec, plans, done, {p.id: test for p, test in tests if test is not None}


def _unstored_blocks(
    plans: list[ImagePlan], pending: list[WorkItem], unstored: dict[int, Unstored]
) -> set[WorkItem]:
    """The ``pending`` blocks whose input region, with its halo, lies in chunks the image's
    store holds none of: constant input (``skip_empty``) known without reading it. They
    are marked done here (no Ray task reads, runs or writes them; their output chunks
    stay unwritten, the fill value, as an empty block's are: a new output has none, and
    a resumed one none from the same input)."""
    found = set()
    for w in pending:
        test = unstored.get(w.image)
        if test is not None:
            plan = plans[w.image]
            if test(w.t, plan.channels, plan.source_region(w, plan.block_of(w))):
                found.add(w)
    with concurrent.futures.ThreadPoolExecutor(_MARKING_THREADS) as pool:
        list(pool.map(lambda w: mark_done(plans[w.image].output, w.key), found))
    return found


_LISTING_THREADS = 16
"""Images' stores listed at once for their unwritten chunks (``ImageSource.unstored``)."""
_MARKING_THREADS = 16
"""Done markers written at once for blocks found empty by the driver (a request each on
an object store)."""


def _open_images(
    cfg: InferConfig, paths: list[str], models: tuple[ModelFile, ...]
) -> tuple[list[ImageSource], list[Nonzero | None]]:
    """The images of ``paths``: each file's (``open_sources``), or with ``sequence`` the
    files as one image's planes or time points; at ``input_level``, or by default each at
    the level nearest the pixel the model was trained at (``nearest_level``); and each
    one's nonzero region where the model crops to it (``_nonzero_regions``)."""
    level = cfg.input_level or 0
    named = models[0].meta.get("channel_files")  # an nnU-Net training's channels
    if cfg.sequence:
        sources: list[ImageSource] = [open_sequence(paths, cfg.sequence, cfg.axes, level)]
    elif named:
        cases = channel_cases(paths, named)
        sources = [s for name, files in cases for s in _case(cfg, name, files, level)]
    else:
        sources = [s for p in paths for s in open_sources(p, cfg.axes, level)]
    trained = models[0].meta.get("pixel_size")
    if not (cfg.resample or cfg.sequence or cfg.input_level is not None) and isinstance(
        trained, dict
    ):
        unit = str(models[0].meta.get("pixel_unit", ""))
        sources = [nearest_level(s, trained, unit) for s in sources]
    sources, found = _nonzero_regions(cfg, sources, models[0].meta)
    if cfg.resample:
        sources = [_resampled(cfg, s, models, nz) for s, nz in zip(sources, found, strict=True)]
    if cfg.previous or models[0].meta.get("previous_labels"):
        pairs = zip(sources, found, strict=True)
        sources = [_with_previous(cfg, s, nz, models[0]) for s, nz in pairs]
    return sources, found


def _with_previous(
    cfg: InferConfig, source: ImageSource, nonzero: Nonzero | None, model: ModelFile
) -> ImageSource:
    """``source`` with its earlier stage's labels as further channels (``previous``), as
    a cascade's second stage takes it (``PreviousLabelsSource``).

    Raises:
        ConfigError: ``previous`` for a model that takes none, or none for one that does;
            with ``channels``.
        ModelContractError: ``previous_labels`` other than labels from 1 on.
        InputImageError: no label map of the image, or several.
    """
    values = model.meta.get("previous_labels")
    if values is not None and (
        not isinstance(values, list)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise ModelContractError(
            f"{model.path}: previous_labels {values!r}; give the labels (from 1 on) of the "
            f"earlier stage's map whose indicators are its last input channels, one each "
            f'(e.g. "previous_labels": [1, 2])'
        )
    if not values:
        raise ConfigError(
            f"previous={cfg.previous}: {model.path} takes the image alone, not an earlier "
            f"stage's labels (it is no cascade's second stage): drop previous="
        )
    stage = model.meta.get("previous_stage", "its first stage")
    if not cfg.previous:
        raise ConfigError(
            f"{model.path}: a cascade's second stage, which takes the labels {stage} found "
            f"in each image: run {stage} first, then give previous= its label maps (a folder "
            f"of <name>.nii.gz in the images' voxels: nnU-Net's output, or raysegment's with "
            f"finalize.nifti=true finalize.nifti_labels=true)"
        )
    if cfg.channels:
        raise ConfigError(
            f"channels={list(cfg.channels)}: a cascade's second stage takes every channel of "
            f"the image, then the earlier stage's labels; drop channels="
        )
    path = _previous_file(cfg.previous, source.name)
    opened = open_sources(path, None, 0)
    if len(opened) != 1:
        raise InputImageError(
            f"{path}: holds {len(opened)} images; the earlier stage's label map of "
            f"{source.name} is one"
        )
    box = nonzero.box if nonzero is not None and not nonzero.whole else None
    return PreviousLabelsSource(source, opened[0], values, box)


def _previous_file(previous: str, name: str) -> str:
    """The earlier stage's label map of the image ``name``: ``previous`` with ``{name}``
    in it, else the one file of the folder ``previous`` named ``name`` (whatever its
    image suffixes; of a run's output folder, its NIfTI copy, not its OME-Zarr)."""
    if "{name}" in previous:
        path = previous.replace("{name}", name)
        if not storage.exists(path):
            raise InputImageError(
                f"{path}: no such file, the earlier stage's label map of {name} (previous="
                f"{previous}); run the first stage on {name}, or give previous= its maps"
            )
        return path
    if not storage.is_dir(previous):
        raise InputImageError(
            f"previous={previous}: no such folder; give the folder of the earlier stage's "
            f"label maps, or a path with {{name}} for each image's name"
        )
    found = [
        storage.join(previous, f)
        for f in storage.listdir(previous)
        if image_stem(f) == name and not f.rstrip("/").endswith(".zarr")
    ]
    if len(found) != 1:
        what = "none" if not found else ", ".join(storage.basename(f) for f in sorted(found))
        raise InputImageError(
            f"{previous}: the earlier stage's label map of {name} should be one file named "
            f"{name} (e.g. {name}.nii.gz); found {what}: run the first stage on {name}, or "
            f"give previous= a path with {{name}}"
        )
    return found[0]


def _case(cfg: InferConfig, name: str | None, files: list[str], level: int) -> list[ImageSource]:
    """The images of a case ``name``'s channel files (``channels.channel_cases``): a file
    not named as a channel (no ``name``), its own; a case's files, one image of their
    channels named after the case (``ChannelFilesSource``), as nnU-Net names its
    predictions.

    Raises:
        InputImageError: a channel file of several images.
    """
    if name is None:
        return open_sources(files[0], cfg.axes, level)
    parts = []
    for file in files:
        opened = open_sources(file, cfg.axes, level)
        if len(opened) > 1:
            raise InputImageError(
                f"{file}: holds {len(opened)} images; a channel file holds one (narrow "
                f"pattern= to a case's files, case_0000, case_0001, ...)"
            )
        parts.append(opened[0])
    if len(parts) == 1:
        parts[0].name = name
        return parts
    return [ChannelFilesSource(parts, name)]


def _nonzero_regions(
    cfg: InferConfig, sources: list[ImageSource], meta: Mapping[str, Any]
) -> tuple[list[ImageSource], list[Nonzero | None]]:
    """Where the model crops each image to its nonzero region (``nonzero``: an nnU-Net
    training's), each one's region over the channels it takes (read whole, 4 images at
    once), and each image read with the voxels outside the region (``nonzero: mask``: a
    normalization within it) or its box at the normalization's mean (``NonzeroSource``):
    0 to the model, as nnU-Net leaves them and pads its crop of the box; of the run's
    normalization (``normalize.mode`` overrides the model's: ``normalization_offset``)."""
    crop = meta.get("nonzero")
    if not crop:
        return sources, [None] * len(sources)
    norm = meta.get("normalize") or {}
    measured = any(e.get("moments") or "percentile" in e for e in norm.get("channels", [norm]))

    def region(source: ImageSource) -> Nonzero | None:
        count = source.info.shape[1]
        channels = tuple(cfg.channels) if cfg.channels else tuple(range(count))
        if any(c >= count for c in channels):
            return None  # refused by the plan, naming the channels
        found = nonzero_region(source, channels, crop == "mask", measured, cfg.resample)
        # The model's channels that keep their voxels outside the region, as the image's.
        kept = tuple(channels[k] for k in meta.get("nonzero_kept", ()) if k < len(channels))
        return dataclasses.replace(found, kept=kept) if kept else found

    with concurrent.futures.ThreadPoolExecutor(min(_REGION_THREADS, len(sources))) as pool:
        found = list(pool.map(region, sources))
    out = []
    for source, nz in zip(sources, found, strict=True):
        if nz is not None and (nz.within or not nz.whole):
            source = NonzeroSource(source, nz, normalization_offset(cfg, norm, source, nz))
        out.append(source)
    return out, found


_REGION_THREADS = 4
"""Images whose nonzero region is found at once (``_nonzero_regions``)."""


def _resampled(
    cfg: InferConfig,
    source: ImageSource,
    models: tuple[ModelFile, ...],
    nonzero: Nonzero | None = None,
) -> ImageSource:
    """``source`` read at ``resample_size``, else at the model's pixel size (``nonzero``:
    its nonzero region, whose ranges an nnU-Net training's resampling clips to).

    Raises:
        ConfigError: neither is known.
    """
    sizes = resample_sizes(cfg.resample_size, models[0].meta)
    if sizes is None:
        raise ConfigError(
            f"resample=true: {models[0].path} records no pixel size it was trained at; give "
            f'resample_size=[y, x] (the input\'s units), or add "pixel_size": {{"y": .., '
            f'"x": ..}} and "pixel_unit" to its {MODEL_META}'
        )
    # With voxel_size (the full resolution's pixel), the pyramid's levels are not told.
    pyramid = cfg.voxel_size is None
    scheme = models[0].meta.get("resampling")  # an nnU-Net training's
    # A crop to the nonzero box is resampled alone, as nnU-Net crops, then resamples.
    filled = isinstance(source, NonzeroSource)
    crop = nonzero.box if filled and nonzero is not None and not nonzero.whole else None
    return resampled_to(
        source,
        *sizes,
        lambda s: physical(cfg, s, "tzyx"),
        pyramid,
        scheme=scheme,
        clip=clipped_before(models[0].meta.get("normalize"), cfg.channels) if scheme else None,
        nonzero=nonzero,
        crop=crop,
        fill=source.fill if isinstance(source, NonzeroSource) else None,
    )


def _levels_picked(cfg: InferConfig, plans: list[ImagePlan], models: tuple[ModelFile, ...]) -> str:
    """The levels images were read at to near the model's pixel, with how many images
    each; "" where every image ran at full resolution or ``input_level`` was given."""
    if cfg.resample:
        return _resamples(plans)
    off = _off_pixel(cfg, plans, models)
    levels = Counter(p.source.level for p in plans if p.source.level > 0)
    if cfg.input_level is not None or not levels:
        return off
    meta = models[0].meta
    trained = f"{meta['pixel_size'].get('x')} {meta.get('pixel_unit', '')}".strip()
    shown = ", ".join(f"{k} ({n} image(s))" for k, n in sorted(levels.items()))
    picked = (
        f"input_level {shown}: the level nearest the model's pixel, {trained}, of each "
        f"(set input_level= to choose one)"
    )
    return f"{picked}; {off}" if off else picked


OFF_PIXEL = 1.2
"""Ratio of an image's pixel to the model's past which the summary says it is read at
another pixel size than the model was trained at (and ``resample=true`` would not)."""


def _off_pixel(cfg: InferConfig, plans: list[ImagePlan], models: tuple[ModelFile, ...]) -> str:
    """The images read at pixels over ``OFF_PIXEL`` times apart from the model's (along
    any axis it records, in any length unit), with the fix; "" where none is, or the
    model records no pixel size."""
    sizes = resample_sizes(None, models[0].meta)
    if sizes is None:
        return ""
    trained, unit = sizes
    off = []
    for plan in plans:
        pixel, units, _ = physical(cfg, plan.source, "tzyx")
        for axis, size in trained.items():
            mine = pixel.get(axis) or 0.0
            if unit:  # both in micrometres, where both units are lengths
                mine = pixel_micrometres(pixel, units, axis)
                size *= MICROMETRES.get(unit, 0.0)
            if mine and size and max(mine / size, size / mine) > OFF_PIXEL:
                off.append(plan)
                break
    if not off:
        return ""
    shown = " x ".join(f"{v:.4g}" for v in trained.values())
    first = off[0].source
    pixel, units, _ = physical(cfg, first, "tzyx")
    theirs = " x ".join(f"{pixel[a]:.4g}" for a in trained if a in pixel)
    return (
        f"{len(off)} of {len(plans)} image(s) read at other pixels than the model's "
        f"{shown} {unit} (e.g. {first.where}: {theirs} {units.get('x', '')}); resample=true "
        f"reads them at it"
    ).replace("  ", " ")


def _resamples(plans: list[ImagePlan]) -> str:
    """The images ``resample`` read resampled, and the levels they were read from."""
    done = [r for r in (resampling_of(p.source) for p in plans) if r is not None]
    if not done:
        return "resample: every image was at the pixel size asked for already"
    levels = Counter(s.inner.level for s in done if s.inner.level > 0)
    unit = done[0].info.units.get("x", "")
    sizes = sorted({" x ".join(f"{s.info.scale[a]:.4g}" for a in s.resampled) for s in done})
    coarse = ", ".join(f"{k} ({n} image(s))" for k, n in sorted(levels.items()))
    return (
        f"resampled {len(done)} of {len(plans)} image(s) to {', '.join(sizes)} {unit} pixels"
        + (f", from input_level {coarse}" if coarse else "")
    ).replace("  ", " ")


def _mask_of(
    cfg: InferConfig, source: ImageSource, nonzero: Nonzero | None
) -> tuple[Mask | None, np.ndarray | None]:
    """The mask of ``source`` (``mask``), only within its nonzero box where the model
    crops to it (``nonzero``), and with ``mask=auto`` what it found (bool)."""
    mask, found = None, None
    if cfg.mask == AUTO:
        channels = tuple(cfg.channels) if cfg.channels else tuple(range(source.info.shape[1]))
        mask, found = auto_mask(source, channels)
    elif cfg.mask:
        mask = open_mask(cfg.mask, source)
    resampling = resampling_of(source)
    if mask is not None and resampling is not None and resampling.spans:
        mask = dataclasses.replace(mask, grid=resampling.grid())  # a crop's pixels
    if nonzero is not None:
        box = nonzero_box(source, nonzero)
        image = source.info.shape[2:]
        mask = dataclasses.replace(mask, box=box) if mask else Mask(None, image, box)  # type: ignore[arg-type]
    return mask, found


def infer(config: InferConfig | Mapping[str, Any] | None = None, **overrides: Any) -> InferSummary:
    """Segment every input image into ``<output>/<name>.ome.zarr``.

    Args:
        config: an ``InferConfig``, or a mapping of config keys (nested or dotted).
        **overrides: config keys to set on top, e.g. ``tile={"blend": "crop"}``.

    Raises:
        RaySegmentError: bad input, model, config or output (nothing written that looks
            complete).
    """
    import ray

    cfg = as_config(InferConfig, config, overrides)
    start = time.perf_counter()
    # Workers may run elsewhere (another cwd, another node with the same mounts): every
    # path they see is absolute.
    paths = resolve_inputs(cfg.input, cfg.pattern, cfg.dataset)
    if not cfg.sequence:  # before Ray starts
        _refuse_shared_outputs(cfg.input, [image_stem(p) for p in paths])
    output = storage.resolve(cfg.output)
    _check_output_location(output, storage.resolve(cfg.input), paths)
    models = read_models(cfg.model)
    if cfg.finalize.postprocessing:  # its errors before Ray starts
        read_postprocessing(cfg.finalize.postprocessing)

    # Ray starts while the images are opened, the model probed and the outputs created.
    indices_applied = _restrict_gpus(cfg.device)
    started, (spec, plans, done, unstored) = start_ray_while(
        lambda: _prepare(cfg, paths, output, models)
    )
    try:
        summary_seams = _seams(plans)
        fitted = _fitted(plans, tile_size(cfg, spec))
        # Part k of n takes every n-th block of the run (spread over every image and region).
        mine = [w for p in plans for w in p.work()][cfg.part_id :: cfg.num_parts]
        pending = [w for w in mine if w.key not in done[w.image]]
        resumed = len(mine) - len(pending)
        unwritten = _unstored_blocks(plans, pending, unstored)
        pending = [w for w in pending if w not in unwritten]
        remaining = Counter(w.image for w in pending)
        _warn_of_space(plans, remaining, output, cfg.finalize.mode.value)
        summary = InferSummary(
            images=len(plans),
            resumed_blocks=resumed,
            empty_blocks=len(unwritten),
            seams=summary_seams,
            fitted=fitted,
            levels=_levels_picked(cfg, plans, models),
            outside="the mask" if cfg.mask else "the nonzero box",
        )
        share = Counter(w.image for w in mine)  # this part's fraction of each image
        for plan in plans:
            pixels = float(np.prod(plan.source.info.shape[2:])) * plan.source.info.shape[0]
            summary.megapixels += pixels / 1e6 * share[plan.id] / plan.num_blocks
        pool = _pool(cfg, indices_applied, len(pending))
        summary.device, summary.actors = ("gpu" if pool.use_gpu else "cpu"), pool.actors
        summary.cluster = ray.get_runtime_context().gcs_address
        for plan in plans:
            if remaining[plan.id] == 0:
                _complete(plan, cfg)
        if pending:
            _run(cfg, models, spec, plans, pending, remaining, pool, summary, started)
    finally:
        stop_ray(started)
    summary.blocks = len(mine)
    summary.outputs = [p.output for p in plans]
    summary.seconds = time.perf_counter() - start
    if not summary.tiles:  # every block done before, or empty: no tile ran, none twice
        summary.seams = ""
    return summary


def _fitted(plans: list[ImagePlan], tile: tuple[int, ...]) -> str:
    """The tiles images shorter than ``tile`` ran instead (``fitted_tile``), with how many
    images ran each (the three most common); "" when every image ran ``tile``."""
    sizes = Counter(p.tiling.tile for p in plans if p.tiling.tile != tuple(tile))
    if not sizes:
        return ""
    shown = ", ".join(f"{list(t)} ({n} image(s))" for t, n in sizes.most_common(3))
    more = f", {len(sizes) - 3} other sizes" if len(sizes) > 3 else ""
    return f"tile.size {list(tile)} fitted to images shorter than it: {shown}{more}"


def _warn_of_space(plans: list[ImagePlan], remaining: Counter[int], output: str, mode: str) -> None:
    """Warn before the run where the output pixels still to write, uncompressed, take more
    than the disk under ``output`` has free. Compression often makes them fit, a mask's
    above all; float32 probabilities, the default, take 4 bytes a pixel and channel: a
    500 GB uint8 volume through a 2-class model, 4 TB before compression."""
    if storage.is_url(output) or not os.path.isdir(output):
        return
    need = sum(
        math.prod(p.layout.shape)
        * np.dtype(p.layout.dtype).itemsize
        # each level past the full resolution: half as many pixels along each axis it halves
        * sum(0.5 ** (len(p.layout.pyramid_axes) * k) for k in range(p.layout.levels))
        * remaining[p.id]
        / p.num_blocks
        for p in plans
    )
    free = shutil.disk_usage(output).free
    if need > free:
        floats = mode in ("raw", "probabilities")
        hint = " (finalize.mode=mask writes a byte a pixel)" if floats else ""
        log.warning(
            "raysegment: %s has %.3g GB free; the output pixels still to write take %.3g GB "
            "before compression%s: should the disk fill up, the run stops and the same "
            "command resumes",
            output,
            free / 1e9,
            need / 1e9,
            hint,
        )


def _seams(plans: list[ImagePlan]) -> str:
    """Tiles whose blending weight straddles a block seam run in both blocks: what share
    of the run that is, and what doubling the block would leave (at 4x its memory in
    2D). "" under 5%."""
    # Each plane (time point, z of a 2D model) runs the image's grid once.
    weights = [
        p.tiling.num_tiles * p.num_blocks / math.prod(block_grid(p.tiling, p.block)) for p in plans
    ]
    total = sum(weights)

    def repeats(scale: int) -> float:
        return (
            sum(
                w * seam_repeats(p.tiling, [b * scale for b in p.block])
                for w, p in zip(weights, plans, strict=True)
            )
            / total
        )

    now = repeats(1)
    if now < 1.05:
        return ""
    first = plans[0]
    bigger = [2 * b if b < n else b for b, n in zip(first.block, first.tiling.shape, strict=True)]
    growth = math.prod(b2 // b for b2, b in zip(bigger, first.block, strict=True))
    return (
        f"tiles straddling them ran twice, {now - 1:.0%} more tiles than the image's grid; "
        f"block={bigger} would repeat {repeats(2) - 1:.0%} ({growth}x the memory per block)"
    )


def _complete(
    plan: ImagePlan,
    cfg: InferConfig,
    gathered: InputPreview | None = None,
    say: Callable[[str], None] = lambda step: None,
) -> None:
    """Mark the output complete once every block is done (by this job or other parts),
    after its pyramid levels and quick-look PNG (so a complete output has them; ``gathered``:
    the quick-look pixels this job's blocks brought). ``say``: each step as it starts (the
    progress bar's, which stands at its end meanwhile)."""
    out = plan.output
    if inspect_output(out).complete or len(done_blocks(out)) < plan.num_blocks:
        return
    layout = plan.layout

    def step(what: str) -> None:
        say(f"finishing {layout.name}: {what}")

    # A full disk here, say, is one line; the same command then does only this step again.
    with storage.storage_errors(out, "its levels, quick-look and metadata", RESUMES):
        step("pyramid levels")
        build_pyramid(out, layout.axes, layout.pyramid_axes, layout.levels, plan.block_levels + 1)
        extra: dict[str, Any] = {}
        if cfg.instances.method.value != "none":
            from raysegment.post.finish import finish_instances  # imports this package

            step(f"instances ({cfg.instances.method.value})")
            named = _instance_class(plan, cfg.instances.channel)
            extra = finish_instances(
                out, layout, cfg.instances, plan.source, plan.channels[0], named=named
            )
        if cfg.finalize.nifti:
            from raysegment.post.nifti import labels_of, nifti_name, write_nifti

            copy = storage.join(storage.parent(out), layout.name + nifti_name(plan.source.path))
            step("NIfTI copy")
            # A resampled run's output goes back to the input's voxels, interpolated.
            original = plan.source.original
            classes = cfg.finalize.mode.value in ("mask", "labels")
            # Labels of the probabilities once back in the input's voxels.
            labels = None
            if cfg.finalize.nifti_labels:  # of raw logits: through the activation, once back
                activation = plan.activation if cfg.finalize.mode.value == "raw" else None
                labels = labels_of(plan.threshold, plan.regions, activation)
            resampled = resampling_of(plan.source)
            given = cfg.finalize.postprocessing
            write_nifti(
                storage.join(out, "0"),
                layout.axes,
                plan.source.path,
                copy,
                original.info.shape[2:],
                classes,
                resampled.taps_back if resampled is not None else None,
                labels,
                read_postprocessing(given) if given else (),
            )
        if cfg.finalize.dicom_seg:
            step("DICOM SEG")
            _write_dicom_seg(plan, cfg)
        if cfg.quicklook:
            step("quick-look")
            png = storage.join(storage.parent(out), f"{layout.name}.png")
            mode = cfg.finalize.mode.value
            array = storage.join(out, "0")
            shown = plan.preview_channels
            quicklook(plan.source, shown, array, layout.axes, mode, png, gathered=gathered)
        complete_output(out, {"blocks_done": plan.num_blocks, **extra})


def _instance_class(plan: ImagePlan, channel: int | None) -> tuple[str, Any]:
    """The class instances are cut from and its code (or None): ``channel``'s, else the
    one channel's, else the one class past a softmax model's background; else all but the
    background, ``foreground``."""
    classes = len(plan.classes)
    if channel is None:
        channel = 0 if classes == 1 else 1 if classes == 2 else None
    if channel is None or channel >= classes:
        return "foreground", None
    return plan.classes[channel], plan.class_codes[channel] if plan.class_codes else None


def _only_of(
    sources: list[ImageSource], kinds: tuple[str, ...], key: str, what: str, why: str
) -> None:
    """Refuse ``key`` before the run where an image is of none of ``kinds`` (``what`` names
    them in the message); ``why``: what the key writes, of which images, and the fix."""
    other = next((s.original for s in sources if s.original.kind not in kinds), None)
    if other is not None:
        raise ConfigError(f"{key}: {other.path} is no {what} ({other.kind}); {why}")


def _check_dicom_ann(cfg: InferConfig, sources: list[ImageSource]) -> None:
    """``instances.dicom_ann=true`` of DICOM slides read frame by frame, highdicom at hand."""
    _only_of(
        sources,
        ("dicom-slide",),
        "instances.dicom_ann=true",
        "DICOM slide read frame by frame",
        "DICOM annotations are written of DICOM whole-slide images: narrow pattern=, or write "
        "instances.geojson=true instead",
    )
    reader_module(sources[0].path, "highdicom", "DICOM annotations", "dicom")


def _check_dicom_seg(cfg: InferConfig, sources: list[ImageSource]) -> None:
    """``finalize.dicom_seg=true`` of DICOM series or slides with masks or labels, highdicom
    at hand."""
    from raysegment.post.dicom_seg import SEG_MODES

    key = "finalize.dicom_seg=true"
    _only_of(
        sources,
        ("dicom", "dicom-slide"),
        key,
        "DICOM series or slide read frame by frame",
        "DICOM Segmentations are written of DICOM series (CT, MR, PET) and whole-slide images "
        "only: narrow pattern= or drop the key",
    )
    mode = cfg.finalize.mode.value
    if mode not in SEG_MODES:
        raise ConfigError(
            f"{key}: finalize.mode={mode}; a DICOM Segmentation holds binary segments: set "
            f"finalize.mode=mask (a segment per class channel) or labels"
        )
    unplaced = next(
        (s for s in sources if s.kind == "dicom" and getattr(s, "positions", 0) is None), None
    )
    if unplaced is not None:
        raise ConfigError(
            f"{key}: {unplaced.path}'s slices have no position (ImagePositionPatient), which "
            f"a DICOM Segmentation places its frames by: drop the key (the OME-Zarr holds it)"
        )
    if cfg.finalize.dicom_seg_levels:
        _only_of(
            sources,
            ("dicom-slide",),
            "finalize.dicom_seg_levels=true",
            "DICOM slide read frame by frame",
            "a SEG's levels are a slide's pyramid's: narrow pattern= or drop the key",
        )
    timed = next((s for s in sources if s.info.shape[0] > 1), None)
    if timed is not None:
        raise ConfigError(
            f"{key}: {timed.path} has {timed.info.shape[0]} time points; DICOM Segmentations "
            f"are written of a series of one: drop the key (the OME-Zarr holds them all)"
        )
    reader_module(sources[0].path, "highdicom", "DICOM Segmentations", "dicom")


def _check_classes(cfg: InferConfig, spec: ModelSpec) -> None:
    """What a multilabel model's classes (sigmoid's, with no background) cannot give: a
    label map SEG of its mask (a pixel may be in several classes; a label map holds one),
    or instances of 1 - its channel 0 (``instances.channel`` unset)."""
    activation = activation_of(cfg, spec)
    if activation not in ("sigmoid", "none") or spec.out_channels == 1:
        return
    what = f"the model's {spec.out_channels} classes are {activation}'s (multilabel)"
    if (
        cfg.finalize.dicom_seg
        and cfg.finalize.dicom_seg_type.value == "labelmap"
        and cfg.finalize.mode.value == "mask"
    ):
        raise ConfigError(
            f"finalize.dicom_seg_type=labelmap: {what}, a pixel may be in several, and a "
            f"label map holds one: set finalize.dicom_seg_type=binary"
        )
    if cfg.instances.method.value != "none" and cfg.instances.channel is None:
        raise ConfigError(
            f"instances.method={cfg.instances.method.value}: {what}, none of them a "
            f"background to cut the objects of the others out of: name the class with "
            f"instances.channel=0..{spec.out_channels - 1}"
        )


def _write_dicom_seg(plan: ImagePlan, cfg: InferConfig) -> None:
    """``<name>.seg.dcm`` beside the output: its classes as segments of the input series,
    or of the input slide's level it was made of."""
    from raysegment.post.dicom_seg import (
        level_location,
        segments,
        write_dicom_seg,
        write_slide_seg,
    )

    layout, mode = plan.layout, cfg.finalize.mode.value
    activation = plan.activation  # the model's own where finalize.activation is auto
    channels = layout.shape[layout.axes.index("c")]
    softmax = activation == "softmax" or (activation == "auto" and channels > 1)
    chosen, kept = segments(mode, len(plan.classes), softmax, plan.regions)
    names = [plan.classes[i] for i in kept]
    coded = [plan.class_codes[i] for i in kept] if plan.class_codes else None
    labelmap = cfg.finalize.dicom_seg_type.value == "labelmap"
    location = storage.join(storage.parent(plan.output), f"{layout.name}.seg.dcm")
    source: Any = plan.source  # a DicomSeriesSource or DicomSlideSource
    array = storage.join(plan.output, "0")
    if source.kind == "dicom-slide":
        files = list(source.layout.paths)
        levels = enumerate(source.level_files) if cfg.finalize.dicom_seg_levels else ()
        coarser = [(f, level_location(location, k)) for k, f in levels if k > source.level]
        segs = (mode, chosen, names, location, coded, labelmap)
        write_slide_seg(array, files, *segs, coarser=coarser)
        return
    planes = layout.shape[layout.axes.index("z")] if "z" in layout.axes else 1
    # The first echo's slices (a multi-echo series' echoes lie on the same ones).
    files, frames = list(source.files)[:planes], list(source.frames)[:planes]
    write_dicom_seg(
        array, layout.axes, files, frames, mode, chosen, names, location, coded, labelmap
    )


_IO_TASKS = 4
"""Read tasks, and write tasks, running at once per GPU predictor by default: each runs in
a worker process that Ray keeps once started (180-230 MiB), and uncapped, Ray Data runs
as many as half-CPU tasks fit on the node (~30 on 16 cores), which only an image of
enough blocks reaches: a GPU run's memory grew with the image (H100 node, cheap model:
3.48 GiB at 8192^2, 9.68 GiB at 32768^2). Four keep a GPU's next block read while reads
take up to four times its forward: a 4096^2 uint16 OME-TIFF block took 0.12-0.15 s to read
on the development machine, about what an H100 takes for a Unet's 121 tiles over it
(~1,000 tiles/s; benchmarks/HISTORY.md)."""


def _io_tasks(cfg: InferConfig, pool: Pool, inputs: int) -> int:
    """Read (and write) tasks a GPU run has running at once: ``io_tasks`` per predictor, and
    no more than the dataset's ``inputs`` (Ray Data warns of a cap above them)."""
    return min((cfg.io_tasks or _IO_TASKS) * pool.actors, inputs)


_WORKER_BYTES = 320 << 20
"""A read or write worker process (Ray, zarr and the readers imported; no torch) before
any data: 180-230 MiB measured, and Ray Data asks for a quarter more than it sees used."""


def _block_bytes(plan: ImagePlan) -> int:
    """Memory of one block with its tile halo, as read (the read stage holds about twice
    that at its peak: the reader's buffer and the block)."""
    outer = [b + t for b, t in zip(plan.block, plan.tiling.tile, strict=True)]
    return int(np.prod(outer)) * len(plan.channels) * plan.source.info.dtype.itemsize


@contextlib.contextmanager
def _read_ahead_bounded() -> Iterator[None]:
    """While this run's blocks stream: a stage holds at most twice the blocks the next one
    has in flight from its first block on.

    Ray Data's downstream-capacity policy applies that bound only once a stage has used half
    of its object-store budget, a share of the object store (itself 30% of the node's RAM):
    reads ahead of a slow model queued blocks until then, so memory grew with the image and
    the node's RAM (one Unet predictor, 32768^2 slide, 23.5 GiB machine: 0.63-0.68 GiB of
    queued blocks; 0.24 GiB bounded; benchmarks/HISTORY.md). Read tasks run ahead of GPU
    predictors only (a CPU predictor reads its own blocks). The policy reads its threshold
    at every scheduling step of this process's executor; other datasets of the process get
    it back afterwards. A Ray release without that policy keeps its own default."""
    try:
        from ray.data._internal.execution.backpressure_policy import (
            DownstreamCapacityBackpressurePolicy as policy,
        )

        before = policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD
    except (ImportError, AttributeError):
        yield
        return
    policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD = 0.0
    try:
        yield
    finally:
        policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD = before


def _run(
    cfg: InferConfig,
    models: tuple[ModelFile, ...],
    spec: ModelSpec,
    plans: list[ImagePlan],
    pending: list[Any],
    remaining: Counter[int],
    pool: Pool,
    summary: InferSummary,
    started: RayStart,
) -> None:
    import ray
    from tqdm import tqdm

    from raysegment.infer.predictor import Predictor

    quiet_ray_data()
    items = [{"image": w.image, "t": w.t, "z": w.z, "index": np.asarray(w.index)} for w in pending]
    # The model's own activation and threshold unless finalize gives them.
    finalize = (
        cfg.finalize.mode.value,
        activation_of(cfg, spec),
        threshold_of(cfg, spec),
        spec.region_labels or (),
    )
    # Ray retries a block whose process died without limit: the ledger caps it.
    attempts = start_ledger(cfg.max_attempts)
    inputs = min(len(items), 1000)
    ds: Any = ray.data.from_items(items, override_num_blocks=inputs)
    # A GPU predictor leaves its blocks' reads and writes to tasks: it takes the next block
    # while a task writes the last and another reads the one after, so the GPU never waits
    # for a decode or an encode. A CPU predictor reads and writes its own blocks: decode and
    # encode take the same cores either way, and no block then crosses the object store or
    # waits there read ahead, nor does a read or write worker run beside the predictors
    # (the figures: README "How it works").
    own_io = not pool.use_gpu
    # Reads and writes are mostly I/O: half a CPU each; a read reserves its block's memory.
    # That request also keeps Ray Data from fusing the read into the predictor actor (it
    # fuses stages whose resource requests are equal), which would stall the model.
    io_task: dict[str, Any] = {
        "batch_size": 1,
        "batch_format": "numpy",
        "fn_kwargs": {"plans": plans, "attempts": attempts},
        "num_cpus": 0.5,
        "compute": ray.data.TaskPoolStrategy(size=_io_tasks(cfg, pool, inputs)),
    }
    if not own_io:
        memory = _WORKER_BYTES + 2 * max(_block_bytes(p) for p in plans)
        ds = ds.map_batches(read_stage, memory=memory, **io_task)
    ds = ds.map_batches(
        Predictor,
        batch_size=1,
        batch_format="numpy",
        # A block is minutes of CPU work (seconds on a GPU): queueing several on one actor
        # while another starts up or idles left the run waiting on the busiest actor.
        # On GPUs a second block in flight hides its transfer behind the current one.
        compute=ray.data.ActorPoolStrategy(
            size=pool.actors, max_tasks_in_flight_per_actor=2 if pool.use_gpu else 1
        ),
        fn_constructor_kwargs={
            "models": [ray.put(models)],
            "plans": [ray.put(plans)],
            "use_gpu": pool.use_gpu,
            "batch_size": cfg.batch_size,
            "static_batch": spec.static_batch,
            "threads": pool.cpus,
            "finalize": finalize,
            "flips": spec.flips() if cfg.tta else (),
            "attempts": attempts,
            "gpu_indices": pool.gpu_indices,
            "precision": cfg.precision.value,
            "layout": cfg.layout.value,
            "reads": own_io,
            "writes": own_io,
            "streams": pool.streams,
        },
        num_gpus=1 if pool.use_gpu else 0,
        num_cpus=pool.reserve,
        runtime_env=model_runtime_env(started),
    )
    if not own_io:
        ds = ds.map_batches(write_stage, **io_task)
    # Per image, the quick-look's input pixels as its blocks bring them (``quicklook``).
    previews: dict[int, InputPreview] = {}
    bar = tqdm(
        total=len(pending),
        unit="block",
        disable=not cfg.progress,
        file=sys.stderr,
        desc="raysegment infer",
        dynamic_ncols=True,
    )
    try:
        with bar, _read_ahead_bounded():
            for row in ds.iter_rows():
                if row["error"]:
                    # The block's user error (a corrupt chunk met mid-run, a block that
                    # keeps killing its process): finished blocks stay done, so the same
                    # command resumes once the cause is fixed.
                    raise decode_error(str(row["error"]))
                image = int(row["image"])
                if row["preview"].size:
                    plan = plans[image]
                    if image not in previews:
                        previews[image] = InputPreview(
                            *plan.source.info.shape[3:],
                            plan.preview,
                            len(plan.preview_channels),
                        )
                    previews[image].add(tuple(row["preview_at"]), row["preview"])
                summary.tiles += int(row["tiles"])
                summary.empty_blocks += int(row["empty"] == EMPTY)
                summary.outside_blocks += int(row["empty"] == OUTSIDE)
                remaining[image] -= 1
                bar.update(1)
                bar.set_postfix(tiles=summary.tiles, refresh=False)
                if remaining[image] == 0:
                    say = functools.partial(bar.set_postfix_str, refresh=True)
                    _complete(plans[image], cfg, previews.pop(image, None), say)
                    bar.set_postfix(tiles=summary.tiles)
        summary.devices = devices(attempts)
    finally:
        forget(attempts)
