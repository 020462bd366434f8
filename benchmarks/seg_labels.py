"""Training labels from a DICOM SEG against the same labels as a NIfTI file.

    python benchmarks/seg_labels.py [OUT] [--train | --slide]

Writes a 300 x 512 x 512 CT series (``OUT/ct/``, as ``tests/data/test_dicom.py`` writes
series) and labels of 20 overlapping ellipsoid segments over it, as a binary DICOM SEG
(``OUT/labels.seg.dcm``, through highdicom as ``tests/data/test_dicom_labels.py`` writes
them: uncompressed, frames only where a segment lies) and as the same class map in
``OUT/labels.nii`` (uint8). Then prints:

- opening the SEG as training labels (its header read, its frames placed on the series'
  slices, ``segment_targets`` + ``DicomSegLabels``), and the NIfTI (``NiftiSource``);
- 200 random 256 x 256 patches of each, one slice each, as training reads them (seconds
  for all, best of two rounds), checked equal patch for patch;
- for scale, highdicom decoding the whole SEG into a volume (what reading it without a
  region reader means).

Writing the data (once) peaks at ~16 GiB: highdicom's encoding of the 20 segments.

With ``--slide``, a slide's: an 8192^2 DICOM slide (256^2 JPEG tiles) and its nuclei
(20,000 discs of 17 pixels in 40 clusters) as a binary SEG of 256^2 tiles, only those
holding a nucleus (TILED_SPARSE, as the Imaging Data Commons' nuclei segmentations of
TCGA's slides), and as a tiled TIFF (zlib): the SEG opened as labels, and 200 patches of
each, checked equal, timed.

With ``--train``, the round trip: four 8 x 64^2 CT series of a bright disc (``Liver``) with
a darker one in it (``Tumour``), a SEG of each named by UID (``OUT/train/``); ``raysegment
train`` on them (multiclass, no class names given: the SEGs'), then ``raysegment infer`` of
the held-out series with ``finalize.dicom_seg=true``; prints the model's classes, the
output SEG's segments (with the SNOMED CT codes the training SEGs gave them) and each
one's IoU against the held-out series' own SEG.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nibabel
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysegment.data.dicom_labels import (  # noqa: E402
    DicomSegLabels,
    segment_targets,
    segmentation_header,
)
from raysegment.data.sources import ImageSource, open_source  # noqa: E402

SHAPE = (300, 512, 512)
SEGMENTS = 20
PATCH = 256


def _segments() -> np.ndarray:
    """(z, y, x, segments) bool: ellipsoids of random centres and radii."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    masks = np.zeros((*SHAPE, SEGMENTS), bool)
    for s in range(SEGMENTS):
        cz, cy, cx = (rng.uniform(0.2, 0.8) * n for n in SHAPE)
        rz, ry, rx = rng.uniform(10, 60), rng.uniform(20, 120), rng.uniform(20, 120)
        masks[..., s] = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    return masks


def _write(out: Path) -> None:
    from tests.data.test_dicom import write_series
    from tests.data.test_dicom_labels import write_seg

    stored = np.random.default_rng(1).integers(0, 2000, SHAPE, dtype=np.uint16)
    write_series(out / "ct", stored)
    masks = _segments()
    names = [f"organ_{s}" for s in range(SEGMENTS)]
    write_seg(out / "labels.seg.dcm", out / "ct", masks, names)
    # The class map the SEG gives in multiclass: the higher segment where they overlap.
    classes = (masks * np.arange(1, SEGMENTS + 1)).max(axis=-1).astype(np.uint8)
    affine = np.diag([0.8, 0.7, 2.5, 1.0])  # the series' spacing (x, y, z)
    nibabel.save(nibabel.Nifti1Image(classes.transpose(2, 1, 0), affine), out / "labels.nii")


def _compare(seg: ImageSource, other: ImageSource, name: str, shape: tuple[int, ...]) -> None:
    """200 random ``PATCH``-square patches of a plane of ``shape`` (z, y, x), read from the
    SEG's labels and the ``other`` labels: equal, and each reader's time (best of two)."""
    rng = np.random.default_rng(2)
    regions = [
        ((z, z + 1), (y, y + PATCH), (x, x + PATCH))
        for z, y, x in zip(
            rng.integers(0, shape[0], 200),
            rng.integers(0, shape[1] - PATCH, 200),
            rng.integers(0, shape[2] - PATCH, 200),
            strict=True,
        )
    ]
    labelled = 0
    for region in regions:
        a, b = seg.read(0, (0,), region), other.read(0, (0,), region)
        if not np.array_equal(a, b):
            raise SystemExit(f"SEG and {name} labels differ in region {region}")
        labelled += bool(a.any())
    print(f"200 patches equal in both; {labelled} hold a segment")
    for reader, source in (("SEG", seg), (name, other)):
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            for region in regions:
                source.read(0, (0,), region)
            best = min(best, time.perf_counter() - start)
        print(f"{reader}: 200 patches in {best:.3f} s ({best / 200 * 1000:.2f} ms each)")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench_seg_labels")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "labels.nii").exists():
        start = time.perf_counter()
        _write(out)
        print(f"wrote the series, SEG and NIfTI in {time.perf_counter() - start:.1f} s")
    seg_path = out / "labels.seg.dcm"
    print(f"SEG: {seg_path.stat().st_size / 2**20:.1f} MiB")

    start = time.perf_counter()
    image = open_source(str(out / "ct"))
    opened_image = time.perf_counter() - start
    start = time.perf_counter()
    header = segmentation_header(str(seg_path))
    names, (targets,) = segment_targets([header], "multiclass", None)
    seg = DicomSegLabels(header, image, "multiclass", targets, len(names))
    opened_seg = time.perf_counter() - start
    start = time.perf_counter()
    nifti = open_source(str(out / "labels.nii"))
    opened_nifti = time.perf_counter() - start
    print(
        f"opened: the series {opened_image:.2f} s; the SEG as labels ({len(seg.slices)} "
        f"frames) {opened_seg:.2f} s; the NIfTI {opened_nifti:.3f} s"
    )

    _compare(seg, nifti, "NIfTI", SHAPE)

    import highdicom

    start = time.perf_counter()
    volume = highdicom.seg.segread(seg_path).get_volume()
    print(
        f"highdicom: the whole SEG decoded in {time.perf_counter() - start:.1f} s "
        f"({volume.array.nbytes / 2**20:.0f} MiB)"
    )


SLIDE = 8192
"""The slide's side, pixels."""


def slide(out: Path) -> None:
    """A slide's nuclei as a SEG of sparse tiles (as the Imaging Data Commons keeps its
    nuclei segmentations of TCGA's slides) against the same mask as a tiled TIFF."""
    import pydicom
    import tifffile

    from tests.data.test_dicom import write_slide
    from tests.data.test_dicom_labels import write_seg

    root = out / "slide"
    if not (root / "nuclei.tif").exists():
        start = time.perf_counter()
        rng = np.random.default_rng(3)
        pixels = rng.integers(150, 250, (SLIDE // 8, SLIDE // 8, 3), dtype=np.uint8)
        write_slide(
            root / "he",
            [np.kron(pixels, np.ones((8, 8, 1), np.uint8))],
            tile=256,
            codec="jpeg",
            label=False,
        )
        mask = np.zeros((SLIDE, SLIDE), bool)
        yy, xx = np.mgrid[-8:9, -8:9]
        disc = yy**2 + xx**2 <= 64
        # Nuclei in clusters (tissue), none in a third of the tiles (glass).
        for cy, cx in rng.integers(0, SLIDE - 1024, (40, 2)):
            for y, x in rng.integers(0, 1024 - 17, (500, 2)):
                mask[cy + y : cy + y + 17, cx + x : cx + x + 17] |= disc
        level0 = pydicom.dcmread(root / "he" / "level0.dcm")
        write_seg(
            root / "nuclei.seg.dcm",
            [level0],
            mask[None, ..., None],
            ["Nucleus"],
            tile_pixel_array=True,
        )
        tifffile.imwrite(
            root / "nuclei.tif", mask.astype(np.uint8), tile=(256, 256), compression="zlib"
        )
        print(f"wrote the slide, its SEG and the TIFF in {time.perf_counter() - start:.0f} s")
    image = open_source(str(root / "he"))
    start = time.perf_counter()
    header = segmentation_header(str(root / "nuclei.seg.dcm"))
    names, (targets,) = segment_targets([header], "binary", None)
    seg = DicomSegLabels(header, image, "binary", targets, 1)
    opened = time.perf_counter() - start
    size = (root / "nuclei.seg.dcm").stat().st_size / 2**20
    print(f"the slide's SEG ({len(seg.segments)} frames, {size:.1f} MiB) opened in {opened:.2f} s")
    _compare(seg, open_source(str(root / "nuclei.tif")), "TIFF", (1, SLIDE, SLIDE))


def _cases(root: Path) -> None:
    """Four CT series of a disc with a darker disc in it, and a SEG of each, by UID."""
    import pydicom

    from tests.data.test_dicom import CODED, write_series
    from tests.data.test_dicom_labels import write_seg

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for k in range(4):
        volume = rng.normal(1000, 30, (8, 64, 64))
        masks = np.zeros((8, 64, 64, 2), bool)
        cy, cx = rng.integers(20, 44, 2)
        masks[1:7, ..., 0] = (yy - cy) ** 2 + (xx - cx) ** 2 < 15**2
        masks[2:6, ..., 1] = (yy - cy - 3) ** 2 + (xx - cx + 2) ** 2 < 5**2
        volume[masks[..., 0]] += 300
        volume[masks[..., 1]] -= 200
        series = root / "ct" / f"case_{k}"
        write_series(series, volume.astype(np.uint16))
        uid = pydicom.uid.generate_uid()
        write_seg(root / "seg" / f"{uid}.dcm", series, masks, ["Liver", "Tumour"], coded=CODED)


def round_trip(out: Path) -> None:
    """SEG labels -> ``raysegment train`` -> ``raysegment infer`` -> a SEG, checked."""
    import json

    import pydicom

    root = out / "train"
    if not (root / "seg").exists():
        _cases(root)
    run = [sys.executable, "-m", "raysegment.cli"]
    start = time.perf_counter()
    train = [
        *("train", f"images.dir={root / 'ct'}", f"labels.dir={root / 'seg'}"),
        *(f"output={root / 'model'}", "mode=multiclass", "patch_size=32", "max_epochs=20"),
        *("patience=20", "patches_per_epoch=64", "val_patches=16", "batch_size=8", "lr=0.003"),
        *("loss=SoftCrossEntropyLoss", "overwrite=true"),
    ]
    subprocess.run([*run, *train], check=True, capture_output=True)
    trained = time.perf_counter() - start
    classes = json.loads((root / "model" / "raysegment.json").read_text())["classes"]
    held = json.loads((root / "model" / "model.json").read_text())["split"]["validation"][0]
    name = Path(held).name
    infer = [
        *("infer", f"input={held}", f"model={root / 'model'}", f"output={root / 'out'}"),
        *("finalize.mode=labels", "finalize.dicom_seg=true", "overwrite=true", "progress=false"),
    ]
    subprocess.run([*run, *infer], check=True, capture_output=True)
    print(f"trained in {trained:.0f} s; the model's classes {classes}")
    ours = segmentation_header(str(root / "out" / f"{name}.seg.dcm"))
    uid = str(pydicom.dcmread(next(Path(held).iterdir())).SeriesInstanceUID)
    (truth,) = (
        h
        for h in map(segmentation_header, map(str, (root / "seg").iterdir()))
        if str(h.ReferencedSeriesSequence[0].SeriesInstanceUID) == uid
    )
    names, targets = segment_targets([truth, ours], "multiclass", None)
    image = open_source(held)
    whole = ((0, 8), (0, 64), (0, 64))
    a, b = (
        DicomSegLabels(h, image, "multiclass", t, len(names)).read(0, (0,), whole)[0]
        for h, t in zip((truth, ours), targets, strict=True)
    )
    for item in ours.SegmentSequence:
        code = item.SegmentedPropertyTypeCodeSequence[0]
        print(f"{name}.seg.dcm: segment {item.SegmentLabel!r}, type {code.CodeMeaning!r} ", end="")
        print(f"({code.CodingSchemeDesignator} {code.CodeValue})")
    for c in range(1, len(names)):
        iou = ((a == c) & (b == c)).sum() / max(((a == c) | (b == c)).sum(), 1)
        print(f"{names[c]}: IoU {iou:.3f} against {name}'s own SEG")


if __name__ == "__main__":
    modes = {"--train": round_trip, "--slide": slide}
    chosen = [modes[a] for a in sys.argv[1:] if a in modes]
    sys.argv = [a for a in sys.argv if a not in modes]
    if chosen:
        chosen[0](Path(sys.argv[1] if len(sys.argv) > 1 else "bench_seg_labels"))
    else:
        main()
