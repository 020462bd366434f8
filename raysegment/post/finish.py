"""Post-processing of one finished output, before it is marked complete: instances into
``labels/<name>`` (with its pyramid), statistics CSVs, isotropic labels.

Block steps run as Ray tasks when Ray is running, so they spread over the cluster; every
step writes whole chunks that no other step writes (zarr has no locks).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr

from raysegment import storage
from raysegment.config import InstancesConfig
from raysegment.data.sources import ImageSource, Unstored, open_source
from raysegment.data.tiling import Grid
from raysegment.infer.pyramid import build_pyramid
from raysegment.infer.writer import OutputLayout, create_labels
from raysegment.post.instances import Volume, halo, segment_blocks
from raysegment.post.resample import isotropic_shape, resample_region
from raysegment.post.stats import measure, write_csv

__all__ = ["finish_instances", "ray_map"]


def ray_map(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    """``[fn(*args) for args in calls]`` as Ray tasks, results in order."""
    import ray

    if not ray.is_initialized() or len(calls) < 2:
        return [fn(*args) for args in calls]
    remote = ray.remote(num_cpus=1)(fn)
    return ray.get([remote.remote(*args) for args in calls])


@dataclasses.dataclass(frozen=True)
class SourceIntensity:
    """The input's intensity (one channel, one time point) over a spatial region of the
    output (whose spatial axes are ``axes``)."""

    source: ImageSource
    channel: int
    t: int
    axes: str

    def __call__(self, region: tuple[slice, ...]) -> np.ndarray:
        spatial = dict(zip(self.axes, region, strict=True))
        z = spatial.get("z", slice(0, 1))
        zyx = tuple((s.start, s.stop) for s in (z, spatial["y"], spatial["x"]))
        data = self.source.read(self.t, (self.channel,), zyx)[0]
        return data if "z" in self.axes else data[0]


def _labels_layout(layout: OutputLayout, name: str) -> OutputLayout:
    shape = tuple(1 if a == "c" else n for a, n in zip(layout.axes, layout.shape, strict=True))
    return dataclasses.replace(
        layout, shape=shape, dtype="uint32", channel_names=("labels",), name=name
    )


def finish_instances(
    output: str,
    layout: OutputLayout,
    cfg: InstancesConfig,
    source: ImageSource,
    channel: int,
    run: Callable[..., list[Any]] = ray_map,
    named: tuple[str, Any] = ("foreground", None),
) -> dict[str, Any]:
    """Segment instances of the output at ``output`` into ``labels/<cfg.name>``, measure
    them (``<output dir>/<layout.name>_<cfg.name>.csv`` and ``..._image.csv``) and, with
    ``cfg.isotropic``, resample them. ``channel``: the input channel measured; ``named``:
    the objects' class and its code (or None), which a DICOM ANN names them by.

    Returns:
        Counts for the output's summary: objects per time point.
    """
    labels_layout = _labels_layout(layout, cfg.name)
    where = create_labels(output, labels_layout)
    spatial = "".join(a for a in layout.axes if a in "zyx")
    pick = [layout.axes.index(a) for a in spatial]
    grid = Grid(tuple(layout.shape[i] for i in pick), tuple(layout.chunks[i] for i in pick))
    scratch = storage.join(output, ".raysegment", "seeds")
    zarr.create_array(
        scratch,
        shape=labels_layout.shape,
        chunks=labels_layout.chunks,
        dtype="uint32",
        fill_value=0,
        overwrite=True,
    )
    spacing = tuple(layout.scale[i] for i in pick)
    origin = tuple(layout.translation[i] for i in pick) if layout.translation else None
    unit = layout.units.get(spatial[-1], "pixel")
    channels = layout.shape[layout.axes.index("c")]
    times = layout.shape[0] if layout.axes[0] == "t" else 1
    outlines = storage.join(output, ".raysegment", "outlines")
    scale = source.level_scale()  # outlines in the full resolution's pixels
    storage.remove(outlines)  # an earlier try's, cut short
    objects, rows, totals, features = [], [], [], []
    unstored = open_source(output).unstored()  # the blocks the model skipped, unwritten
    volumes = [Volume(output, layout.axes, t, cfg.channel, channels) for t in range(times)]
    for t, vol in enumerate(volumes):
        void = _void(grid, unstored, t, channels, halo(cfg))  # foreground 0: no step runs
        objects.append(segment_blocks(vol, grid, cfg, f"{where}/0", scratch, run, void))
    drawn = cfg.geojson or cfg.dicom_ann  # the objects' outlines wanted
    if cfg.stats or drawn:
        # Blocks without a stored chunk of labels hold no object (whatever the method
        # skipped or found empty): not read. One listing, every time point labelled.
        labelled = open_source(where).unstored()
        for t, vol in enumerate(volumes):
            intensity = SourceIntensity(source, channel, t, spatial)
            found = storage.join(outlines, str(t)) if drawn else None
            table = measure(
                vol,
                grid,
                f"{where}/0",
                objects[t],
                intensity,
                spacing,
                run,
                found,
                unit,
                scale,
                _void(grid, labelled, t, 1, 0),
            )
            pixels = int(np.prod(grid.shape))
            text, image = write_csv(table, spatial, spacing, unit, t, pixels, origin)
            rows.append(text if t == 0 else text.split("\n", 1)[1])
            totals.append(image)
            features += table.outlines
    storage.remove(scratch)
    build_pyramid(where, labels_layout.axes, labels_layout.pyramid_axes, labels_layout.levels)
    folder = storage.parent(output)
    if cfg.geojson:
        _geojson(storage.join(folder, f"{layout.name}_{cfg.name}.geojson"), features)
    if cfg.dicom_ann:
        from raysegment.post.dicom_ann import write_dicom_ann

        files = list(source.at_level(0).layout.paths)  # type: ignore[attr-defined]
        location = storage.join(folder, f"{layout.name}_{cfg.name}.ann.dcm")
        write_dicom_ann(location, files, features, named, unit)
    if drawn:
        storage.remove(outlines)
    if cfg.stats:
        storage.write_bytes(
            storage.join(folder, f"{layout.name}_{cfg.name}.csv"), "".join(rows).encode()
        )
        summary = io.StringIO()
        writer = csv.DictWriter(summary, fieldnames=list(totals[0]))
        writer.writeheader()
        writer.writerows(totals)
        storage.write_bytes(
            storage.join(folder, f"{layout.name}_{cfg.name}_image.csv"),
            summary.getvalue().encode(),
        )
    if cfg.isotropic:
        _isotropic(output, where, labels_layout, spatial, spacing, run)
    return {"objects": objects}


def _void(
    grid: Grid, unstored: Unstored | None, t: int, channels: int, halo: int
) -> frozenset[tuple[int, ...]]:
    """The blocks of ``grid`` (spatial, an image's) with no stored chunk of the image
    (``unstored``: of its ``channels``) at time point ``t`` within ``halo`` of them."""
    if unstored is None:
        return frozenset()
    void = set()
    for index in grid.indices():
        outer, _ = grid.outer(index, halo)
        zyx = [(s.start, s.stop) for s in outer]
        region = tuple(zyx if len(zyx) == 3 else [(0, 1), *zyx])
        if unstored(t, tuple(range(channels)), region):
            void.add(index)
    return frozenset(void)


def _geojson(location: str, parts: list[str]) -> None:
    """A FeatureCollection at ``location`` of the features in ``parts`` (files of one
    feature a line), written piece by piece: a slide's million outlines never in memory
    at once."""
    with storage.open_write(location) as out:
        out.write(b'{"type":"FeatureCollection","features":[\n')
        first = True
        for part in parts:
            for line in storage.read_bytes(part).splitlines():
                out.write(line if first else b",\n" + line)
                first = False
        out.write(b"\n]}\n")


def _isotropic(
    output: str,
    labels: str,
    layout: OutputLayout,
    spatial: str,
    spacing: tuple[float, ...],
    run: Callable[..., list[Any]],
) -> None:
    """``labels/<name>_isotropic``: level 0 of ``labels`` at the finest spacing."""
    pick = [layout.axes.index(a) for a in spatial]
    shape_in = tuple(layout.shape[i] for i in pick)
    shape_out = isotropic_shape(shape_in, spacing)
    target = min(spacing)
    sizes = dict(zip(spatial, shape_out, strict=True))
    iso = dataclasses.replace(
        layout,
        shape=tuple(sizes.get(a, n) for a, n in zip(layout.axes, layout.shape, strict=True)),
        scale=tuple(
            target if a in spatial else s for a, s in zip(layout.axes, layout.scale, strict=True)
        ),
        name=f"{layout.name}_isotropic",
        levels=1,
    )
    where = create_labels(output, iso)
    chunks = tuple(iso.chunks[i] for i in pick)
    times = layout.shape[0] if layout.axes[0] == "t" else 1
    calls = [
        (f"{labels}/0", f"{where}/0", layout.axes, t, shape_in, shape_out, region)
        for t in range(times)
        for region in Grid(shape_out, chunks).regions()
    ]
    run(_resample_chunk, calls)


def _resample_chunk(
    source: str,
    target: str,
    axes: str,
    t: int,
    shape_in: tuple[int, ...],
    shape_out: tuple[int, ...],
    region: tuple[slice, ...],
) -> None:
    vol = Volume("", axes, t, None, 1)
    data = resample_region(lambda box: vol.read(source, box), shape_in, shape_out, region)
    vol.write(target, region, data)
