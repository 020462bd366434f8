"""A sparse volume: blocks in chunks never written, against the same volume stored whole.

    python benchmarks/sparse.py [--size 2048] [--rounds 2] [--format zarr|precomputed|hdf5]

A ``size``^3 uint16 zarr volume of 128^3 chunks holding random data in one 256^3 corner
only (tissue in a corner of its bounding box, as acquisitions and connectomics exports
leave them), stored two ways: ``sparse``, the rest never written (zarr stores no chunk
equal to its fill value), and ``stored``, every chunk written, zeros too. With
``--format precomputed`` the volume is a sharded Neuroglancer precomputed scale instead
(``SHARDING``: shards of 4 x 4 x 4 chunks, as igneous lays image volumes out), ``sparse``
only (the one shard holding the corner: tensorstore writes no chunk of zeros into a
shard, ``store_data_equal_to_fill_value`` or not); the code before and after a change is
compared by running it at each. With ``--format hdf5`` it is a dataset of an HDF5 file
(gzip level 1, 128^3 chunks), ``sparse`` (HDF5 allocates no chunk never written) and
``stored`` (every chunk written, zeros too). Each is
segmented by a small 3D network (``shards.py``'s) with 64^3 tiles, default chunks and
blocks (256^3), masks out, alternating (``--rounds`` pairs). ``sparse`` blocks of
unwritten chunks are found from one listing of the store and never read; ``stored`` ones
are read, found constant and written as the fill value by the predictor. Writes
``sparse.json`` into --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, infer_cli, machine, write_result  # noqa: E402
from shards import small_3d  # noqa: E402

CORNER = 256
SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "hash": "identity",
    "preshift_bits": 3,
    "minishard_bits": 3,
    "shard_bits": 15,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}
"""Spatial shards (the identity hash) of 64 chunks (Morton codes: 3 bits of 2 x 2 x 2
chunks a minishard's, 3 of 8 minishards a shard's)."""


def precomputed(path: Path, size: int) -> Path:
    """The sparse volume as a sharded precomputed scale (x, y, z, channel)."""
    import tensorstore as ts

    if not path.exists():
        spec = {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(path)},
            "multiscale_metadata": {"type": "image", "data_type": "uint16", "num_channels": 1},
            "scale_metadata": {
                "size": [size] * 3,
                "encoding": "raw",
                "chunk_size": [128] * 3,
                "resolution": [8, 8, 8],
                "sharding": SHARDING,
            },
        }
        store = ts.open(spec, create=True).result()
        data = np.random.default_rng(0).integers(1, 1000, (CORNER,) * 3, "uint16")
        store[:CORNER, :CORNER, :CORNER, 0] = data.T
    return path


def volume(path: Path, size: int, stored: bool) -> Path:
    if not path.exists():
        with zarr.config.set({"array.write_empty_chunks": stored}):
            array = zarr.create_array(
                str(path), shape=(size,) * 3, chunks=(128,) * 3, dtype="uint16", fill_value=0
            )
            data = np.random.default_rng(0).integers(1, 1000, (CORNER,) * 3, "uint16")
            array[:CORNER, :CORNER, :CORNER] = data
            if stored:
                for z in range(0, size, 128):
                    for y in range(0, size, 128):
                        for x in range(0, size, 128):
                            if max(z, y, x) >= CORNER:
                                array[z : z + 128, y : y + 128, x : x + 128] = 0
    return path


def hdf5_volume(path: Path, size: int, stored: bool) -> Path:
    """The volume as the dataset ``raw`` of an HDF5 file: its input path."""
    import h5py

    if not path.exists():
        with h5py.File(path, "w") as f:
            array = f.create_dataset(
                "raw",
                shape=(size,) * 3,
                chunks=(128,) * 3,
                dtype="uint16",
                fillvalue=0,
                compression="gzip",
                compression_opts=1,
            )
            data = np.random.default_rng(0).integers(1, 1000, (CORNER,) * 3, "uint16")
            array[:CORNER, :CORNER, :CORNER] = data
            if stored:
                zeros = np.zeros((128,) * 3, "uint16")
                for z in range(0, size, 128):
                    for y in range(0, size, 128):
                        for x in range(0, size, 128):
                            if max(z, y, x) >= CORNER:
                                array[z : z + 128, y : y + 128, x : x + 128] = zeros
    return Path(f"{path}/raw")


def main() -> int:
    args = bench_args(
        __doc__ or "", size=2048, rounds=2, choices={"format": ("zarr", "precomputed", "hdf5")}
    )
    if args.format == "precomputed":
        sources = {"sparse": precomputed(args.work / f"sparse{args.size}.precomputed", args.size)}
    else:
        make, suffix = (volume, "zarr") if args.format == "zarr" else (hdf5_volume, "h5")
        sources = {
            name: make(args.work / f"{name}{args.size}.{suffix}", args.size, name == "stored")
            for name in ("sparse", "stored")
        }
    model = small_3d(args.work / "small3d.pth")
    runs: dict[str, list[float]] = {name: [] for name in sources}
    summaries: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, source in sources.items():
            keys = ["device=cpu", "tile.size=64", "finalize.mode=mask"]
            run = infer_cli(source, model, args.work / f"sparse_{name}", *keys)
            runs[name].append(run["seconds"])
            summaries[name] = run["summary"]
    result = {
        "machine": machine(),
        "size": args.size,
        "format": args.format,
        "corner": CORNER,
        "seconds": runs,
        "summary": summaries,
    }
    name = "sparse.json" if args.format == "zarr" else f"sparse_{args.format}.json"
    write_result(args.out, name, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
