"""DICOM Segmentations as training labels: a series' SEG's frames placed on its slices by
position, a slide's as tiles of its pixel matrix (at any of its levels), segments as
classes by name, SEGs paired with the series they reference."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest

from raysegment.config import TrainConfig, load_config
from raysegment.data.dicom_labels import DicomSegLabels, segment_targets, segmentation_header
from raysegment.data.inputs import resolve_inputs
from raysegment.data.pairs import pair_images
from raysegment.data.sources import open_source, open_sources
from raysegment.errors import ConfigError, InputImageError
from raysegment.train.data import prepare, read_patches
from tests.conftest import random_image
from tests.data.test_dicom import CODED, ORIGIN, write_series

highdicom = pytest.importorskip("highdicom")

SHAPE = (6, 32, 40)
"""The test CT's (slices, rows, columns): a frame of 1280 bits, whole bytes."""


def _masks(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Two overlapping segments, (slices, rows, columns, 2) bool: a box on slices 1-4, and
    a smaller one on slices 2-3 partly inside it; slices 0 and 5 hold neither."""
    masks = np.zeros((*shape, 2), bool)
    masks[1:5, 4:20, 6:30, 0] = True
    masks[2:4, 14:26, 20:36, 1] = True
    return masks


def _slices(series: Path) -> list[pydicom.Dataset]:
    return sorted(
        (pydicom.dcmread(f) for f in series.iterdir()),
        key=lambda h: float(h.ImagePositionPatient[2]),
    )


def write_seg(
    path: Path,
    series: Path | list[pydicom.Dataset],
    masks: np.ndarray,
    names: list[str],
    kind: str = "BINARY",
    syntax: str = pydicom.uid.ExplicitVRLittleEndian,
    coded: list[dict[str, list[str]]] | None = None,
    **options: object,
) -> None:
    """``masks`` (slices, rows, columns, segments) over ``series``' slices (its directory,
    or its files' datasets, an enhanced file's frames in their stored order) as a DICOM SEG
    of segments ``names`` (numbered from 1, in that order), as highdicom writes it:
    ``kind`` BINARY, FRACTIONAL (``masks`` as fractions) or LABELMAP, its frames in
    transfer ``syntax``, the segments coded as ``coded`` says (else as tissue); ``options``:
    highdicom's others (a slide's tiling)."""
    from raysegment.post.dicom_seg import _descriptions

    pixels = masks.astype(np.float32 if kind == "FRACTIONAL" else np.uint8)
    if kind == "LABELMAP":  # each pixel's segment number
        pixels = (masks * np.arange(1, masks.shape[-1] + 1)).max(axis=-1).astype(np.uint8)
    seg = highdicom.seg.Segmentation(
        source_images=_slices(series) if isinstance(series, Path) else series,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=_descriptions(names, coded),
        series_instance_uid=highdicom.UID(),
        series_number=100,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        transfer_syntax_uid=syntax,
        **options,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path, enforce_file_format=True)


def _labels(seg: Path, series: Path, mode: str, names: list[str] | None = None) -> DicomSegLabels:
    header = segmentation_header(str(seg))
    classes, (targets,) = segment_targets([header], mode, names)
    return DicomSegLabels(header, open_source(str(series)), mode, targets, len(classes))


@pytest.mark.parametrize(
    ("kind", "shape", "syntax"),
    [
        ("BINARY", SHAPE, pydicom.uid.ExplicitVRLittleEndian),
        ("BINARY", (6, 30, 45), pydicom.uid.ExplicitVRLittleEndian),  # frames end mid-byte
        ("FRACTIONAL", SHAPE, pydicom.uid.ExplicitVRLittleEndian),
        ("FRACTIONAL", SHAPE, pydicom.uid.RLELossless),
        ("LABELMAP", SHAPE, pydicom.uid.ExplicitVRLittleEndian),
    ],
)
def test_a_dicom_seg_labels_its_series_slice_by_slice(tmp_path, kind, shape, syntax) -> None:
    """Each frame on the slice at its position: multiclass, a pixel is its segment's class
    (the later segment's where they overlap); multilabel, a channel a segment; any region,
    pickled or not. Uncompressed frames are read by their byte ranges."""
    write_series(tmp_path / "ct", random_image(shape).astype(np.uint16))
    masks = _masks(shape)
    if kind == "FRACTIONAL":  # on where over half: 0.4 is off
        masks = np.where(masks, 1.0, 0.0)
        masks[1, 4:6, 6:30, 0] = 0.4
    write_seg(tmp_path / "ct.seg.dcm", tmp_path / "ct", masks, ["Liver", "Tumour"], kind, syntax)
    on = masks > 0.5
    if kind == "LABELMAP":  # a pixel holds one segment: the later one where they overlap
        on[..., 0] &= ~on[..., 1]

    labels = _labels(tmp_path / "ct.seg.dcm", tmp_path / "ct", "multiclass")
    assert labels.kind == "dicom-seg" and labels.info.shape == (1, 1, *shape)
    assert (labels.table is None) == (syntax == pydicom.uid.RLELossless)
    want = np.where(on[..., 1], 2, np.where(on[..., 0], 1, 0)).astype(np.uint16)
    assert (want == 1).any() and (want == 2).any()
    np.testing.assert_array_equal(
        labels.read(0, (0,), ((0, 6), (0, shape[1]), (0, shape[2])))[0], want
    )
    region = ((2, 5), (9, 23), (15, 33))
    again = pickle.loads(pickle.dumps(labels))  # as a training worker reads it
    np.testing.assert_array_equal(again.read(0, (0,), region)[0], want[2:5, 9:23, 15:33])
    assert labels.values() == {0, 1, 2}

    multi = _labels(tmp_path / "ct.seg.dcm", tmp_path / "ct", "multilabel")
    assert multi.info.shape == (1, 2, *shape) and multi.values() == {0, 1}
    got = multi.read(0, (1, 0), region)
    np.testing.assert_array_equal(got, np.moveaxis(on[2:5, 9:23, 15:33, ::-1], -1, 0))


def test_segments_are_classes_by_name_whatever_their_numbers() -> None:
    """Two SEGs numbering the same organs differently label alike; ``class_names`` picks
    segments by name (case aside), the others draw nothing."""
    from pydicom.dataset import Dataset

    def seg(*names: str) -> Dataset:
        ds = Dataset()
        ds.SegmentSequence = [Dataset() for _ in names]
        for number, (item, name) in enumerate(zip(ds.SegmentSequence, names, strict=True), 1):
            item.SegmentNumber, item.SegmentLabel = number, name
        return ds

    first, second = seg("Liver", "Spleen"), seg("spleen", "Kidney", "liver")
    assert segment_targets([first, second], "multiclass", None) == (
        ["background", "Liver", "Spleen", "Kidney"],
        [{1: 1, 2: 2}, {1: 2, 2: 3, 3: 1}],
    )
    assert segment_targets([first, second], "multilabel", ["kidney", "LIVER"]) == (
        ["kidney", "LIVER"],
        [{1: 1}, {2: 0, 3: 1}],
    )
    assert segment_targets([first, second], "binary", ["Liver"]) == (
        ["Liver"],
        [{1: 1}, {3: 1}],
    )
    assert segment_targets([seg("Tumour"), seg("tumour")], "binary", None) == (
        ["Tumour"],
        [{1: 1}, {1: 1}],
    )
    assert segment_targets([first, second], "binary", None)[0] == ["foreground"]
    with pytest.raises(ConfigError, match=r"\['Lung'\] is a segment of no DICOM SEG label"):
        segment_targets([first, second], "multiclass", ["background", "Liver", "Lung"])


def test_segments_coded_alike_are_one_class_whatever_their_names() -> None:
    """Segments whose coded types (with their modifiers) are the same are one class under
    different names; a code that two segments of one SEG share (a tool's default
    ``Tissue``) joins nothing; ``class_names`` may name a class by any of its names, once."""
    from pydicom.dataset import Dataset

    from raysegment.data.dicom_labels import segment_codes

    def code(value: str, meaning: str, **more: object) -> list[Dataset]:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
        for key, v in more.items():
            setattr(item, key, v)
        return [item]

    liver = code("10200004", "Liver")
    kidney = {
        side: code(
            "64033007", "Kidney", SegmentedPropertyTypeModifierCodeSequence=code(value, side)
        )
        for side, value in (("Right", "24028007"), ("Left", "7771000"))
    }
    tissue = code("85756007", "Tissue")

    def seg(*segments: tuple[str, list[Dataset] | None]) -> Dataset:
        ds = Dataset()
        ds.SegmentSequence = [Dataset() for _ in segments]
        for number, (item, (name, kind)) in enumerate(
            zip(ds.SegmentSequence, segments, strict=True), 1
        ):
            item.SegmentNumber, item.SegmentLabel = number, name
            if kind is not None:
                item.SegmentedPropertyTypeCodeSequence = kind
                item.SegmentedPropertyCategoryCodeSequence = code("123037004", "Structure")
        return ds

    a = seg(("Liver", liver), ("Kidney R", kidney["Right"]))
    b = seg(("liver parenchyma", liver), ("Kidney L", kidney["Left"]), ("Spleen", None))
    c = seg(("Segment_1", tissue), ("Segment_2", tissue))
    names = ["background", "Liver", "Kidney R", "Kidney L", "Spleen", "Segment_1", "Segment_2"]
    assert segment_targets([a, b, c], "multiclass", None) == (
        names,
        [{1: 1, 2: 2}, {1: 1, 2: 3, 3: 4}, {1: 5, 2: 6}],
    )
    assert segment_targets([a, b, c], "multilabel", ["LIVER PARENCHYMA", "kidney r"]) == (
        ["LIVER PARENCHYMA", "kidney r"],
        [{1: 0, 2: 1}, {1: 0}, {}],
    )
    assert segment_targets([a, b], "binary", ["liver parenchyma"])[1] == [{1: 1}, {1: 1}]
    with pytest.raises(ConfigError, match=r"'Liver' and 'liver parenchyma' are one class"):
        segment_targets([a, b], "multiclass", ["background", "Liver", "liver parenchyma"])
    codes = segment_codes([a, b, c])
    assert codes["liver parenchyma"] == codes["liver"]
    assert codes["liver"]["type"] == ["10200004", "SCT", "Liver"]
    assert "spleen" not in codes and codes["kidney l"]["type"][0] == "64033007"


def _study(root: Path) -> dict[str, Path]:
    """Two CT series and a SEG of each, named as the Imaging Data Commons names them (by
    UID, nothing shared with the series' names)."""
    series = {}
    for k, case in enumerate(("case_a", "case_b")):
        write_series(root / "ct" / case, random_image(SHAPE, seed=k).astype(np.uint16))
        series[case] = root / "ct" / case
        uid = pydicom.uid.generate_uid()
        seg = root / "seg" / uid / "1.dcm"
        write_seg(seg, series[case], _masks(), ["Liver", "Tumour"], coded=CODED)
    return series


def test_a_seg_pairs_with_the_series_it_references_or_of_its_name(tmp_path) -> None:
    """SEGs named by UID pair by the series they reference, directories of one SEG or SEG
    files alike; one named as ``finalize.dicom_seg`` names it, by name; a study's directory
    given as both images and labels pairs each series with its SEG, no SEG an image."""
    series = _study(tmp_path)
    referenced = {
        str(segmentation_header(str(d)).ReferencedSeriesSequence[0].SeriesInstanceUID): d.name
        for d in (tmp_path / "seg").iterdir()
    }
    uid = {
        case: str(pydicom.dcmread(next(p.iterdir())).SeriesInstanceUID)
        for case, p in series.items()
    }
    pairs = pair_images(str(tmp_path / "ct"), None, str(tmp_path / "seg"), None)
    assert [(Path(i).name, Path(lbl).name) for (i,), lbl in pairs] == [
        ("case_a", referenced[uid["case_a"]]),
        ("case_b", referenced[uid["case_b"]]),
    ]
    flat = tmp_path / "flat"
    flat.mkdir()
    for d in (tmp_path / "seg").iterdir():
        (d / "1.dcm").rename(flat / f"{d.name}.dcm")
    (flat / f"{referenced[uid['case_b']]}.dcm").rename(flat / "case_b.seg.dcm")
    pairs = pair_images(str(tmp_path / "ct"), None, str(flat), None)
    assert [(Path(i).name, Path(lbl).name) for (i,), lbl in pairs] == [
        ("case_a", f"{referenced[uid['case_a']]}.dcm"),
        ("case_b", "case_b.seg.dcm"),
    ]
    study = tmp_path / "study"  # the scans and their SEGs side by side
    study.mkdir()
    for case, path in series.items():
        path.rename(study / case)
    for seg in flat.iterdir():
        (study / seg.stem).mkdir()
        seg.rename(study / seg.stem / "1.dcm")
    pairs = pair_images(str(study), None, str(study), None)
    assert [(Path(i).name, Path(lbl).name) for (i,), lbl in pairs] == [
        ("case_a", referenced[uid["case_a"]]),
        ("case_b", "case_b.seg"),
    ]
    # To infer, the study's scans: its SEGs are no images to segment.
    assert [Path(p).name for p in resolve_inputs(str(study))] == ["case_a", "case_b"]
    with pytest.raises(InputImageError, match=r"holds DICOM Segmentations, labels rather"):
        open_sources(study / "case_b.seg")
    with pytest.raises(InputImageError, match=r"1.dcm: a DICOM Segmentation, labels rather"):
        open_sources(study / "case_b.seg" / "1.dcm")


def test_training_on_dicom_segs_names_the_classes_after_their_segments(tmp_path) -> None:
    """The SEGs' segment names are the model's classes, coded as the SEGs code them;
    patches' targets are the SEG's classes on the slices the patches are read from."""
    series = _study(tmp_path)
    cfg = load_config(
        TrainConfig,
        (),
        [
            f"images.dir={tmp_path / 'ct'}",
            f"labels.dir={tmp_path / 'seg'}",
            "output=o",
            "patch_size=16",
            "mode=multiclass",
        ],
    )
    data = prepare(cfg)
    assert data.classes == 3 and data.class_names == ("background", "Liver", "Tumour")
    assert data.class_codes == (None, *CODED)  # as the SEGs code the segments
    assert [p.label.kind for p in data.pairs] == ["dicom-seg", "dicom-seg"]
    assert [p.image.path for p in data.pairs] == [str(p) for p in series.values()]
    picks = [(3, 10, 16), (2, 12, 18)]  # (z, y, x): in both segments, their overlap too
    batch = {k: np.array([p[i] for p in picks]) for i, k in enumerate("zyx")}
    batch["pair"] = np.array([0, 1])
    out = read_patches(batch, data, augment=False)
    masks = _masks()
    want = np.where(masks[..., 1], 2, np.where(masks[..., 0], 1, 0))
    for k, (z, y, x) in enumerate(picks):
        np.testing.assert_array_equal(out["y"][k], want[z, y : y + 16, x : x + 16])
    assert set(np.unique(out["y"])) == {0, 1, 2}
    # The model directory's metadata, as infer reads it: the classes and their codes.
    import torch

    from raysegment.infer.model import ModelFile, describe_model
    from raysegment.train.export import model_metadata

    meta = json.loads(json.dumps(model_metadata(data)))
    spec = describe_model(ModelFile("model.pth", "torchscript", b"", meta, ""), torch.nn.Module())
    assert spec.classes == ("background", "Liver", "Tumour")
    assert spec.class_codes == (None, *CODED)


def test_a_seg_off_its_image_fails_in_one_line(tmp_path) -> None:
    write_series(tmp_path / "ct", random_image(SHAPE).astype(np.uint16))
    write_seg(tmp_path / "ct.seg.dcm", tmp_path / "ct", _masks(), ["Liver", "Tumour"])
    seg = tmp_path / "ct.seg.dcm"
    nibabel = pytest.importorskip("nibabel")
    nifti = tmp_path / "ct.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((40, 32, 6), np.int16), np.eye(4)), nifti)
    header = segmentation_header(str(seg))
    with pytest.raises(InputImageError, match=r"ct.seg.dcm: a DICOM SEG labels .* is a nifti"):
        DicomSegLabels(header, open_source(str(nifti)), "multiclass", {1: 1}, 2)
    with pytest.raises(InputImageError, match=r"ct.seg.dcm: lies in another frame of reference"):
        write_series(tmp_path / "other", random_image(SHAPE).astype(np.uint16))
        DicomSegLabels(header, open_source(str(tmp_path / "other")), "multiclass", {1: 1}, 2)

    def scan(name: str, shape: tuple[int, int, int], origin: tuple[float, ...]) -> Path:
        """A series in the SEG's frame of reference."""
        write_series(tmp_path / name, random_image(shape).astype(np.uint16), origin=origin)
        for f in (tmp_path / name).iterdir():
            ds = pydicom.dcmread(f)
            ds.FrameOfReferenceUID = header.FrameOfReferenceUID
            ds.save_as(f)
        return tmp_path / name

    moved = scan("moved", SHAPE, (ORIGIN[0], ORIGIN[1], ORIGIN[2] + 1.25))  # half a slice
    with pytest.raises(InputImageError, match=r"ct.seg.dcm: frame 1 lies at .* on no voxel"):
        DicomSegLabels(header, open_source(str(moved)), "multiclass", {1: 1}, 2)
    small = scan("small", (6, 32, 32), ORIGIN)
    with pytest.raises(InputImageError, match=r"its frames are 32 x 40, the slices .* 32 x 32"):
        DicomSegLabels(header, open_source(str(small)), "multiclass", {1: 1}, 2)


def test_a_study_in_an_object_store_pairs_and_reads_its_segs(s3, tmp_path) -> None:
    """As the Imaging Data Commons keeps a study (a prefix a series): each SEG pairs with
    its series by reference, its frames fetched by ranged requests."""
    import s3fs

    from tests.conftest import BUCKET

    _study(tmp_path)
    for series in [*(tmp_path / "seg").iterdir(), *(tmp_path / "ct").iterdir()]:
        s3fs.S3FileSystem().put(str(series), f"{BUCKET}/study/{series.name}", recursive=True)
    url = f"s3://{BUCKET}/study"
    pairs = pair_images(url, None, url, None)
    assert [i.rsplit("/", 1)[1] for (i,), _ in pairs] == ["case_a", "case_b"]
    header = segmentation_header(pairs[1][1])
    classes, (targets,) = segment_targets([header], "multiclass", None)
    labels = DicomSegLabels(header, open_source(pairs[1][0][0]), "multiclass", targets, 3)
    assert labels.path.startswith(url) and labels.table is not None
    masks = _masks()
    want = np.where(masks[..., 1], 2, np.where(masks[..., 0], 1, 0))
    got = pickle.loads(pickle.dumps(labels)).read(0, (0,), ((1, 5), (0, 32), (0, 40)))[0]
    np.testing.assert_array_equal(got, want[1:5])


def test_a_seg_frame_unplaced_or_turned_fails_in_one_line(tmp_path) -> None:
    write_series(tmp_path / "ct", random_image(SHAPE).astype(np.uint16))
    write_seg(tmp_path / "ct.seg.dcm", tmp_path / "ct", _masks(), ["Liver", "Tumour"])
    image = open_source(str(tmp_path / "ct"))

    def labels(edit: object) -> DicomSegLabels:
        ds = pydicom.dcmread(tmp_path / "ct.seg.dcm")
        edit(ds)  # type: ignore[operator]
        ds.save_as(tmp_path / "edited.dcm")
        return _labels(tmp_path / "edited.dcm", tmp_path / "ct", "multiclass")

    assert labels(lambda ds: None).info.shape == image.info.shape
    frame = "PerFrameFunctionalGroupsSequence"
    with pytest.raises(InputImageError, match=r"edited.dcm: its frames have no position"):
        labels(lambda ds: delattr(ds[frame][2], "PlanePositionSequence"))
    with pytest.raises(InputImageError, match=r"edited.dcm: a frame names no segment"):
        labels(lambda ds: delattr(ds[frame][0], "SegmentIdentificationSequence"))

    def turn(ds: pydicom.Dataset) -> None:
        plane = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        plane.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]

    with pytest.raises(InputImageError, match=r"edited.dcm: its frames are oriented \[0.0, 1.0"):
        labels(turn)


def test_a_seg_of_an_enhanced_ct_file_labels_its_slices(tmp_path) -> None:
    """A SEG of one multi-frame CT file (frames stored shuffled): its frames on the
    volume's slices, in slice order."""
    from tests.data.test_dicom import write_enhanced

    order = write_enhanced(tmp_path / "scan" / "ct.dcm", random_image(SHAPE).astype(np.uint16))
    masks = _masks()
    source = [pydicom.dcmread(tmp_path / "scan" / "ct.dcm")]
    write_seg(tmp_path / "ct.seg.dcm", source, masks[order], ["Liver", "Tumour"])
    labels = _labels(tmp_path / "ct.seg.dcm", tmp_path / "scan", "multiclass")
    want = np.where(masks[..., 1], 2, np.where(masks[..., 0], 1, 0))
    np.testing.assert_array_equal(labels.read(0, (0,), ((0, 6), (0, 32), (0, 40)))[0], want)


def _slide_masks() -> np.ndarray:
    """Two overlapping segments of a 300 x 400 slide, (300, 400, 2) bool, crossing its
    128^2 tiles' edges; tiles (0, 0) and (2, 3) hold neither."""
    masks = np.zeros((300, 400, 2), bool)
    masks[50:200, 140:300, 0] = True
    masks[100:150, 200:350, 1] = True
    return masks


@pytest.mark.parametrize("tiling", ["TILED_SPARSE", "TILED_FULL"])
def test_a_slides_seg_labels_its_pixels_tile_by_tile(tmp_path, tiling) -> None:
    """A slide's SEG (as the Imaging Data Commons' nuclei segmentations are: tiles of the
    slide's pixel matrix, given by position or in TILED_FULL's order): each tile where it
    lies, over the DICOM slide or any image of its size; another size is one error."""
    import tifffile

    from tests.data.test_dicom import _rgb, write_slide

    write_slide(tmp_path / "slide", [_rgb((300, 400))], tile=128, label=False)
    masks = _slide_masks()
    write_seg(
        tmp_path / "slide.seg.dcm",
        [pydicom.dcmread(tmp_path / "slide" / "level0.dcm")],
        masks[None],  # one frame of the slide's whole pixel matrix, cut into tiles
        ["Tumor", "Stroma"],
        tile_pixel_array=True,
        dimension_organization_type=tiling,
        omit_empty_frames=tiling == "TILED_SPARSE",
    )
    header = segmentation_header(str(tmp_path / "slide.seg.dcm"))
    assert header.DimensionOrganizationType == tiling
    assert int(header.NumberOfFrames) == (8 if tiling == "TILED_SPARSE" else 24)
    classes, (targets,) = segment_targets([header], "multiclass", None)
    slide = open_source(str(tmp_path / "slide"))
    labels = DicomSegLabels(header, slide, "multiclass", targets, len(classes))
    want = np.where(masks[..., 1], 2, np.where(masks[..., 0], 1, 0))
    np.testing.assert_array_equal(labels.read(0, (0,), ((0, 1), (0, 300), (0, 400)))[0, 0], want)
    region = ((0, 1), (90, 210), (120, 330))  # across tiles' edges
    again = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(again.read(0, (0,), region)[0, 0], want[90:210, 120:330])
    multi = DicomSegLabels(header, slide, "multilabel", {1: 0, 2: 1}, 2)
    got = multi.read(0, (1, 0), region)[:, 0]
    np.testing.assert_array_equal(got, np.moveaxis(masks[90:210, 120:330, ::-1], -1, 0))

    tifffile.imwrite(tmp_path / "slide.tif", _rgb((300, 400)))  # its pixels, another format
    tiff = DicomSegLabels(
        header, open_source(str(tmp_path / "slide.tif")), "multiclass", targets, 3
    )
    np.testing.assert_array_equal(tiff.read(0, (0,), region)[0, 0], want[90:210, 120:330])
    tifffile.imwrite(tmp_path / "half.tif", _rgb((150, 200)))
    with pytest.raises(InputImageError, match=r"slide.seg.dcm: a SEG of a 300 x 400 slide; .* is"):
        DicomSegLabels(header, open_source(str(tmp_path / "half.tif")), "multiclass", targets, 3)


def test_slides_segs_train_at_a_pyramid_level(tmp_path) -> None:
    """``input_level=1``: each slide read at its second level, its SEG (of the full
    resolution) read at it, each pixel the label under its centre."""
    from tests.data.test_dicom import _rgb, write_slide

    masks = _slide_masks()
    for k, name in enumerate(("biopsy_a", "biopsy_b")):
        full = _rgb((300, 400), seed=k)
        write_slide(tmp_path / "img" / name, [full, full[::2, ::2]], tile=128, label=False)
        level0 = pydicom.dcmread(tmp_path / "img" / name / "level0.dcm")
        write_seg(
            tmp_path / "lbl" / f"{name}.seg.dcm",
            [level0],
            masks[None],
            ["Tumor", "Stroma"],
            tile_pixel_array=True,
        )
    cfg = load_config(
        TrainConfig,
        (),
        [
            f"images.dir={tmp_path / 'img'}",
            f"labels.dir={tmp_path / 'lbl'}",
            *("output=o", "patch_size=32", "mode=multiclass", "input_level=1"),
        ],
    )
    data = prepare(cfg)
    assert data.class_names == ("background", "Tumor", "Stroma")
    (pair, _) = data.pairs
    assert pair.image.level == 1 and pair.label.info.shape == (1, 1, 1, 150, 200)
    want = np.where(masks[..., 1], 2, np.where(masks[..., 0], 1, 0))[1::2, 1::2]
    np.testing.assert_array_equal(
        pair.label.read(0, (0,), ((0, 1), (0, 150), (0, 200)))[0, 0], want
    )
