"""A sparse volume: blocks in chunks never written, against the same volume stored whole.

    python benchmarks/sparse.py [--size 2048] [--rounds 2]

A ``size``^3 uint16 zarr volume of 128^3 chunks holding random data in one 256^3 corner
only (tissue in a corner of its bounding box, as acquisitions and connectomics exports
leave them), stored two ways: ``sparse``, the rest never written (zarr stores no chunk
equal to its fill value), and ``stored``, every chunk written, zeros too. Each is
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


def main() -> int:
    args = bench_args(__doc__ or "", size=2048, rounds=2)
    sources = {
        name: volume(args.work / f"{name}{args.size}.zarr", args.size, name == "stored")
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
        "corner": CORNER,
        "seconds": runs,
        "summary": summaries,
    }
    write_result(args.out, "sparse.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
