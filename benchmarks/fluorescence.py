"""Reading a fluorescence DICOM slide frame by frame against the same tiles as an
OME-TIFF.

    python benchmarks/fluorescence.py [OUT]

Writes (once) a 4096^2 slide of four 16-bit channels (smooth signal with grain, as
multiplexed immunofluorescence looks) as a DICOM whole-slide image of 256^2 JPEG 2000
lossless frames, a file an optical path (``OUT/dicom/``, as ``tests/data/test_dicom.py``'s
``write_fluorescence`` writes them), and as an OME-TIFF of the same tiles and coding
(``OUT/slide.ome.tif``). Then reads eight 1024^2 regions of all four channels from each,
alternately, twice, checks them equal, and prints the CPU seconds per region.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysegment.data.sources import ImageSource, open_source, open_sources  # noqa: E402
from tests.data.test_dicom import write_fluorescence  # noqa: E402

SIDE = 4096
CHANNELS = ("DAPI", "CD3", "CD8", "PanCK")
REGION = 1024


def _pixels() -> np.ndarray:
    """(SIDE, SIDE, channels) uint16: smooth signal with grain."""
    rng = np.random.default_rng(0)
    coarse = rng.random((SIDE // 32, SIDE // 32, len(CHANNELS))).astype(np.float32)
    smooth = ndi.zoom(coarse, (32, 32, 1), order=1) ** 3
    grain = rng.random(smooth.shape, dtype=np.float32) * 400
    return (smooth * 20000 + grain).astype(np.uint16)


def _write(out: Path) -> None:
    image = _pixels()
    start = time.perf_counter()
    write_fluorescence(out / "dicom", [image], list(CHANNELS), tile=256, codec="j2k")
    tifffile.imwrite(
        out / "slide.ome.tif",
        image.transpose(2, 0, 1),
        tile=(256, 256),
        compression="jpeg2000",
        compressionargs={"reversible": True},
        metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)}},
        ome=True,
    )
    print(f"wrote the DICOM slide and the OME-TIFF in {time.perf_counter() - start:.0f} s")


def _cpu(source: ImageSource, corners: list[tuple[int, int]]) -> tuple[float, list[np.ndarray]]:
    """CPU seconds per region of all channels at ``corners``, and the regions."""
    channels = tuple(range(len(CHANNELS)))
    start = time.process_time()
    regions = [
        source.read(0, channels, ((0, 1), (y, y + REGION), (x, x + REGION))) for y, x in corners
    ]
    return (time.process_time() - start) / len(corners), regions


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench_fluorescence")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "slide.ome.tif").exists():
        _write(out)
    (dicom,) = open_sources(out / "dicom")
    tiff = open_source(str(out / "slide.ome.tif"))
    assert dicom.kind == "dicom-slide" and dicom.info.channel_names == CHANNELS
    assert dicom.info.shape == tiff.info.shape, (dicom.info.shape, tiff.info.shape)
    rng = np.random.default_rng(1)
    corners = [(int(y), int(x)) for y, x in rng.integers(0, SIDE - REGION, (8, 2))]
    for source in (dicom, tiff):  # warm: the file's pages cached, the decoders loaded
        source.read(0, (0,), ((0, 1), (0, 64), (0, 64)))
    times: dict[str, list[float]] = {"DICOM frames": [], "OME-TIFF tiles": []}
    for _ in range(2):
        (a, first), (b, second) = _cpu(dicom, corners), _cpu(tiff, corners)
        if not all(np.array_equal(p, q) for p, q in zip(first, second, strict=True)):
            raise SystemExit("the DICOM slide and the OME-TIFF read differently")
        times["DICOM frames"].append(a)
        times["OME-TIFF tiles"].append(b)
    print(f"{len(CHANNELS)} x {SIDE}^2 uint16, 256^2 JPEG 2000 lossless tiles; regions equal")
    for name, seconds in times.items():
        spread = "-".join(f"{s * 1000:.0f}" for s in sorted(seconds))
        print(f"{name}: {spread} ms of CPU per {REGION}^2 region of {len(CHANNELS)} channels")


if __name__ == "__main__":
    main()
