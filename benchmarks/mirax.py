"""Reading MIRAX and DICOM slides through OpenSlide against the same pixels as an SVS
through tifffile.

    python benchmarks/mirax.py [OUT]

Writes (once) an 8192^2 RGB slide as MIRAX (``OUT/slide.mrxs``: 1024^2 JPEG camera fields,
quality 90, five levels, as ``tests/data/test_openslide.py`` writes slides), as an SVS
of 256^2 JPEG tiles of the same quality (``OUT/slide.svs``), as a DICOM whole-slide image
of the same tiles and levels (``OUT/dicom/``, as ``tests/data/test_dicom.py`` writes
them), and a MIRAX slide of which only the left half was imaged (``OUT/half.mrxs``). Then
runs ``region_read.py`` on the three full slides (eight 4608^2 regions of channel 0 each),
times a 4608 x 4096 read of the half slide's glass against
``OpenSlideSource.unstored`` telling it without a read, and reads the DICOM slide's eight
regions through OpenSlide against raysegment's own frame reader (``DicomSlideSource``),
alternately, twice.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysegment.data.slides import OpenSlideSource  # noqa: E402
from raysegment.data.sources import ImageSource, open_source, open_sources  # noqa: E402
from tests.data.test_dicom import write_slide  # noqa: E402
from tests.data.test_openslide import _halved, write_mrxs  # noqa: E402

SIDE = 8192
FIELD = 1024


def _pixels() -> np.ndarray:
    """Smooth colour (JPEG compresses it as it does stained tissue) with grain."""
    rng = np.random.default_rng(0)
    coarse = rng.random((SIDE // 64, SIDE // 64, 3)).astype(np.float32)
    smooth = ndi.zoom(coarse, (64, 64, 1), order=1)
    return (smooth * 200 + rng.random(smooth.shape) * 40).clip(0, 255).astype(np.uint8)


def _levels(image: np.ndarray) -> list[np.ndarray]:
    levels = [image]
    while levels[-1].shape[0] > 512:
        levels.append(_halved(levels[-1]))
    return levels


def _cpu_per_region(source: ImageSource, corners: list[tuple[int, int]]) -> float:
    """CPU seconds per 4608^2 region of channel 0 at ``corners``, after a warm-up read."""
    source.read(0, (0,), ((0, 1), (0, 64), (0, 64)))
    start = time.process_time()
    for y, x in corners:
        source.read(0, (0,), ((0, 1), (y, y + 4608), (x, x + 4608)))
    return (time.process_time() - start) / len(corners)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "mirax-bench")
    out.mkdir(parents=True, exist_ok=True)
    image = _pixels()
    if not (out / "dicom").exists():
        write_slide(out / "dicom", _levels(image), tile=256, codec="jpeg")
    if not (out / "half.mrxs").exists():
        write_mrxs(out / "slide.mrxs", _levels(image), field=FIELD, codec="JPEG")
        tifffile.imwrite(
            out / "slide.svs",
            image,
            tile=(256, 256),
            photometric="rgb",
            compression="jpeg",
            compressionargs={"level": 90},
            description=f"Aperio Image Library\n{SIDE}x{SIDE} (256x256) JPEG/RGB Q=90|MPP = 0.25",
        )
        fields = SIDE // FIELD
        glass = frozenset((i, j) for i in range(fields) for j in range(fields // 2, fields))
        write_mrxs(out / "half.mrxs", [image], field=FIELD, codec="JPEG", skipped=glass)
    for slide in ("slide.mrxs", "dicom", "slide.svs"):
        subprocess.run([sys.executable, str(ROOT / "benchmarks/region_read.py"), str(out / slide)])
    (half,) = open_sources(out / "half.mrxs")
    region = ((0, 1), (1000, 5608), (SIDE // 2, SIDE))
    for _ in range(3):
        start = time.perf_counter()
        pixels = half.read(0, (0, 1, 2), region)
        read = time.perf_counter() - start
        start = time.perf_counter()
        empty = half.unstored()(0, (0, 1, 2), region)  # type: ignore[misc]
        told = time.perf_counter() - start
        assert empty and (pixels == 255).all()
        print(f"glass 4608 x 4096: read {1000 * read:.0f} ms, told empty in {1e6 * told:.0f} us")
    rng = np.random.default_rng(0)
    corners = [
        (int(rng.integers(0, SIDE - 4608)), int(rng.integers(0, SIDE - 4608))) for _ in range(8)
    ]
    frames, composed = (
        open_source(out / "dicom"),
        OpenSlideSource(str(out / "dicom" / "level0.dcm")),
    )
    for source in (composed, frames, composed, frames):
        cpu = _cpu_per_region(source, corners)
        print(f"DICOM slide, {source.kind}: {1000 * cpu:.0f} ms CPU per 4608^2 region")


if __name__ == "__main__":
    main()
