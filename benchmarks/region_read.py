"""CPU and wall time of the image reader per block-sized region.

    python benchmarks/region_read.py IMAGE [SPAN] [--depth D] [--sequence z|t] [--cold]
        [--serve [--latency MS] [--one-by-one]] [--resample [Z] SIZE [--nnunet]]

Reads eight SPAN^2 regions (default 4608: a 4096 block with its tile halo), D planes deep
(default 1), at seeded random places of channel 0, after one small warm-up read, and
prints the mean CPU (user + system) and wall time per region with a checksum of the
pixels read, so two versions of the reader (e.g. ``PYTHONPATH=<other checkout>``) can be
compared on one image. IMAGE with ``--sequence``: a directory of TIFFs, one image's planes
(z) or time points (t), as ``sequence=`` reads it. ``--cold``: each region read with the
image's files dropped from the page cache first (``posix_fadvise``), as a first read of
data on disk. ``--serve``: IMAGE (a TIFF) read over HTTP from a web server on 127.0.0.1
(another process, answering byte ranges, each answer ``--latency`` ms late: an object
store's time to first byte), as a file at a URL is read; with
``--one-by-one`` its tiles are fetched one request each through the cached file (what
tifffile alone does with a remote file) instead of together. ``--resample SIZE``: the
image read at a pixel of SIZE in y and x, its own units (``resample=true
resample_size=[SIZE,SIZE]``; ``--resample Z SIZE``: Z along z too), SPAN^2 regions of it;
with ``--nnunet``, as an nnU-Net training's default plans resample (a cubic spline, the
nearest plane along an axis of voxels over three times as long as the others').
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np

from raysegment.data.sources import ImageSource, open_source


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _drop_from_cache(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _serve(directory: Path, latency: float) -> str:
    """``directory`` served over HTTP by a child process (its CPU is not this one's);
    its URL."""
    import multiprocessing

    from tests.conftest import RangeHandler, WebServer

    RangeHandler.latency = latency
    server = WebServer(directory)
    multiprocessing.get_context("fork").Process(target=server.serve_forever, daemon=True).start()
    return server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("span", type=int, nargs="?", default=4608)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--sequence", choices=("z", "t"))
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--one-by-one", action="store_true")
    parser.add_argument("--resample", type=float, nargs="+")
    parser.add_argument("--nnunet", action="store_true")
    args = parser.parse_args()
    source: ImageSource
    if args.serve:
        url = _serve(args.image.parent, args.latency / 1000)
        source = open_source(f"{url}/{args.image.name}")
        if args.one_by_one:
            source.handle.url = None  # type: ignore[attr-defined]
        files = [args.image]
    elif args.sequence:
        from raysegment.data.sources import open_sequence  # a checkout of before it: no

        files = sorted(p for p in args.image.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        source = open_sequence([str(f) for f in files], args.sequence)
    else:
        source = open_source(args.image)
        files = [args.image] if args.image.is_file() else list(args.image.rglob("*"))
        files = [p for p in files if p.is_file()]
    if args.resample:
        from raysegment.data.resampled import recorded, resampled_to

        *z, yx = args.resample
        size = {"y": yx, "x": yx, **({"z": z[0]} if z else {})}
        scheme = None
        if args.nnunet:
            scheme = {"data": [3, 0], "probabilities": [1, 0], "force_separate_z": None}
        source = resampled_to(source, size, "", recorded, pyramid=True, scheme=scheme)
    depth, height, width = source.info.shape[-3:]
    span = min(args.span, height, width)
    rng = np.random.default_rng(1)
    low = [depth - args.depth + 1, height - span + 1, width - span + 1]
    corners = rng.integers(0, low, (8, 3)) // [1, 64, 64] * [1, 64, 64]
    source.read(0, (0,), ((0, 1), (0, 64), (0, 64)))
    cpu = wall = 0.0
    checksum = 0
    for z, y, x in corners.tolist():
        if args.cold:
            _drop_from_cache(files)
        c0, w0 = _cpu(), time.perf_counter()
        data = source.read(0, (0,), ((z, z + args.depth), (y, y + span), (x, x + span)))
        cpu, wall = cpu + _cpu() - c0, wall + time.perf_counter() - w0
        checksum += int(data[0, :, ::97, ::89].sum())
    cpu, wall = cpu / len(corners), wall / len(corners)
    print(
        f"{source.kind} {args.depth}x{span}^2 region{' (cold)' * args.cold}: {1000 * cpu:.0f} "
        f"ms CPU, {1000 * wall:.0f} ms wall (checksum {checksum})"
    )


if __name__ == "__main__":
    main()
