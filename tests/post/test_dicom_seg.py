"""Outputs as DICOM SEGs, streamed a chunk at a time: a slide's and a series', binary or
label maps, the same frames, functional groups and header highdicom writes given the whole
output at once; a slide's read back by highdicom and by raysegment's own SEG labels, of the
level the output was made at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr

from raysegment.data.dicom_labels import DicomSegLabels, segment_targets, segmentation_header
from raysegment.data.sources import open_source
from raysegment.errors import OutputError
from raysegment.post import dicom_seg
from raysegment.post.dicom_seg import write_slide_seg
from tests.data.test_dicom import _rgb, write_slide
from tests.data.test_dicom_labels import _slide_masks, write_seg

highdicom = pytest.importorskip("highdicom")

SHAPE = (300, 400)
"""The test slide's pixel matrix: 3 x 4 tiles of 128^2, the last row and column partial."""


def _output(path: Path, array: np.ndarray, chunk: int) -> str:
    """``array`` (c, y, x) as an output's level 0 in ``chunk``-square chunks."""
    level = zarr.create_array(
        str(path), shape=array.shape, chunks=(array.shape[0], chunk, chunk), dtype=array.dtype
    )
    level[:] = array
    return str(path)


def _attributes(ds: pydicom.Dataset) -> set[str]:
    """The top-level attributes of ``ds`` (but its pixels and frames' groups)."""
    return {e.keyword for e in ds} - {"PixelData", "PerFrameFunctionalGroupsSequence"}


@pytest.mark.parametrize(
    ("mode", "chosen", "chunk", "labelmap"),
    [
        ("mask", [0, 1], 100, False),  # chunks across the tiles' edges: whole tiles read
        ("mask", [1], 256, False),  # one segment: highdicom identifies it in shared groups
        ("labels", [1, 2], 128, False),
        ("labels", [1, 2], 100, True),  # a label map: a frame a tile holding any segment
    ],
)
def test_a_slides_output_is_the_seg_highdicom_writes_of_it_whole(
    tmp_path, mode, chosen, chunk, labelmap
) -> None:
    """Streamed a chunk at a time, the SEG's frames (tiles holding a segment, each
    segment's in row order; a label map's: any segment), their functional groups
    (positions on the slide, dimension indices) and its header's attributes are those
    highdicom gives the whole mask at once; highdicom and raysegment's labels read each
    segment's pixels back."""
    write_slide(tmp_path / "slide", [_rgb(SHAPE)], tile=128, label=False)
    masks = _slide_masks()  # (y, x, 2): overlapping segments
    if mode == "mask":
        output = np.moveaxis(masks, -1, 0).astype(np.uint8)
    else:  # labels: the second segment over the first, neither overlapping
        output = np.where(masks[..., 1], 2, np.where(masks[..., 0], 1, 0)).astype(np.uint8)[None]
    wanted = (
        [output[c] != 0 for c in chosen] if mode == "mask" else [output[0] == v for v in chosen]
    )
    want = np.stack(wanted, axis=-1)
    names = ["Tumor", "Stroma"][: len(chosen)]
    level0 = tmp_path / "slide" / "level0.dcm"
    array = _output(tmp_path / "out.zarr", output, chunk)
    location = str(tmp_path / "ours.seg.dcm")
    write_slide_seg(array, [str(level0)], mode, chosen, names, location, labelmap=labelmap)

    write_seg(
        tmp_path / "theirs.seg.dcm",
        [pydicom.dcmread(level0)],
        want[None],
        names,
        kind="LABELMAP" if labelmap else "BINARY",
        tile_pixel_array=True,
        dimension_organization_type="TILED_SPARSE",
        series_description=f"raysegment {mode}",
    )
    ours, theirs = (pydicom.dcmread(tmp_path / f"{w}.seg.dcm") for w in ("ours", "theirs"))
    assert _attributes(ours) == _attributes(theirs)
    # Empty tiles left out.
    assert ours.NumberOfFrames == theirs.NumberOfFrames < 12 * (1 if labelmap else len(chosen))
    assert ours.SOPClassUID == theirs.SOPClassUID
    assert (
        ours.SegmentsOverlap
        == theirs.SegmentsOverlap
        == ("YES" if len(chosen) > 1 and mode == "mask" else "NO")
    )
    assert ours.PerFrameFunctionalGroupsSequence == theirs.PerFrameFunctionalGroupsSequence
    assert ours.PixelData == theirs.PixelData
    dimensions = [
        [(d.DimensionIndexPointer, d.FunctionalGroupPointer) for d in ds.DimensionIndexSequence]
        for ds in (ours, theirs)
    ]
    assert dimensions[0] == dimensions[1]
    assert ours.ReferencedSeriesSequence == theirs.ReferencedSeriesSequence
    assert (
        ours.SourceImageSequence[0].ReferencedSOPInstanceUID
        == pydicom.dcmread(level0).SOPInstanceUID
    )

    read = highdicom.seg.segread(tmp_path / "ours.seg.dcm")
    pixels = read.get_total_pixel_matrix(combine_segments=False)
    np.testing.assert_array_equal(pixels.astype(bool), want)
    header = segmentation_header(str(tmp_path / "ours.seg.dcm"))
    _, (targets,) = segment_targets([header], "multilabel", None)
    labels = DicomSegLabels(
        header, open_source(str(tmp_path / "slide")), "multilabel", targets, len(names)
    )
    got = labels.read(0, tuple(range(len(names))), ((0, 1), (0, SHAPE[0]), (0, SHAPE[1])))[:, 0]
    np.testing.assert_array_equal(np.moveaxis(got, 0, -1).astype(bool), want)
    # Nothing left beside it: no partial file, no spooled frames.
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".raysegment-seg-*"))


@pytest.mark.parametrize(
    ("mode", "chosen", "chunk", "labelmap"),
    [("mask", [0, 1], 100, False), ("labels", [2], 64, False), ("labels", [1, 2], 100, True)],
)
def test_a_slides_seg_pyramid_is_the_one_highdicom_writes_of_it_whole(
    tmp_path, mode, chosen, chunk, labelmap
) -> None:
    """With the slide's coarser levels, a SEG each, the output sampled to its pixels: the
    frames, functional groups and attributes highdicom's SEG pyramid of the whole mask has
    (its nearest resizing), all in one series and pyramid, numbered from the finest, each
    referencing its level."""
    from raysegment.post.dicom_seg import _descriptions

    image = _rgb(SHAPE)
    write_slide(tmp_path / "slide", [image, image[::2, ::2], image[::4, ::4]], tile=64)
    files = [tmp_path / "slide" / f"level{k}.dcm" for k in range(3)]
    pyramid = highdicom.UID()
    for file in files:  # a pyramid's levels, as scanners' converters mark them
        ds = pydicom.dcmread(file)
        ds.PyramidUID = pyramid
        ds.save_as(file, enforce_file_format=True)
    masks = _slide_masks()
    if mode == "mask":
        output = np.moveaxis(masks, -1, 0).astype(np.uint8)
    else:
        output = np.where(masks[..., 1], 2, np.where(masks[..., 0], 1, 0)).astype(np.uint8)[None]
    wanted = (
        [output[c] != 0 for c in chosen] if mode == "mask" else [output[0] == v for v in chosen]
    )
    names = ["Tumor", "Stroma"][: len(chosen)]
    pixels = np.stack(wanted, axis=-1)[None]
    if labelmap:  # each pixel's segment number
        pixels = (pixels * np.arange(1, len(chosen) + 1)).max(axis=-1).astype(np.uint8)
    array = _output(tmp_path / "out.zarr", output, chunk)
    ours = [tmp_path / f"ours{k}.seg.dcm" for k in range(3)]
    coarser = [([str(f)], str(at)) for f, at in zip(files[1:], ours[1:], strict=True)]
    write_slide_seg(
        array, [str(files[0])], mode, chosen, names, str(ours[0]), None, labelmap, coarser
    )

    sources = [pydicom.dcmread(f) for f in files]
    theirs = highdicom.seg.create_segmentation_pyramid(
        source_images=sources,
        pixel_arrays=[pixels],
        segmentation_type="LABELMAP" if labelmap else "BINARY",
        segment_descriptions=_descriptions(names, None),
        series_instance_uid=highdicom.UID(),
        series_number=100,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        dimension_organization_type="TILED_SPARSE",
        series_description=f"raysegment {mode}",
    )
    for k, seg in enumerate(theirs):
        seg.save_as(tmp_path / f"theirs{k}.seg.dcm", enforce_file_format=True)
    theirs = [pydicom.dcmread(tmp_path / f"theirs{k}.seg.dcm") for k in range(3)]
    read = [pydicom.dcmread(f) for f in ours]
    assert [ds.InstanceNumber for ds in read] == [1, 2, 3]
    assert len({ds.SeriesInstanceUID for ds in read}) == len({ds.PyramidUID for ds in read}) == 1
    assert len({ds.SOPInstanceUID for ds in read}) == 3
    for ds, theirs_ds, source in zip(read, theirs, sources, strict=True):
        assert _attributes(ds) == _attributes(theirs_ds)
        assert (ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns) == (
            source.TotalPixelMatrixRows,
            source.TotalPixelMatrixColumns,
        )
        assert ds.NumberOfFrames == theirs_ds.NumberOfFrames
        assert ds.PerFrameFunctionalGroupsSequence == theirs_ds.PerFrameFunctionalGroupsSequence
        assert ds.PixelData == theirs_ds.PixelData
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".raysegment-seg-*"))


def test_an_empty_mask_is_a_seg_of_one_empty_frame(tmp_path) -> None:
    """A DICOM SEG has frames: nothing found is one empty frame of the first segment."""
    write_slide(tmp_path / "slide", [_rgb(SHAPE)], tile=128, label=False)
    array = _output(tmp_path / "out.zarr", np.zeros((2, *SHAPE), np.uint8), 128)
    path = tmp_path / "none.seg.dcm"
    write_slide_seg(
        array, [str(tmp_path / "slide" / "level0.dcm")], "mask", [1], ["Tumor"], str(path)
    )
    assert pydicom.dcmread(path).NumberOfFrames == 1
    pixels = highdicom.seg.segread(path).get_total_pixel_matrix(combine_segments=False)
    assert pixels.shape == (*SHAPE, 1) and not pixels.any()


def test_a_seg_past_native_pixel_datas_length_or_off_its_slide_fails_in_one_line(
    tmp_path, monkeypatch
) -> None:
    write_slide(tmp_path / "slide", [_rgb(SHAPE)], tile=128, label=False)
    level0 = str(tmp_path / "slide" / "level0.dcm")
    array = _output(tmp_path / "out.zarr", np.ones((1, *SHAPE), np.uint8), 128)
    monkeypatch.setattr(dicom_seg, "_MAX_PIXEL_BYTES", 12 * 128 * 128 // 8 - 1)
    with pytest.raises(OutputError, match=r"a.seg.dcm: 12 frames of 2048 bytes, .*input_level="):
        write_slide_seg(array, [level0], "mask", [0], ["Tumor"], str(tmp_path / "a.seg.dcm"))
    assert not list(tmp_path.glob("a.seg.dcm*")) and not list(tmp_path.glob(".raysegment-*"))
    half = _output(tmp_path / "half.zarr", np.ones((1, 150, 200), np.uint8), 128)
    with pytest.raises(OutputError, match=r"half.zarr: 150 x 200, not the 300 x 400 pixels of"):
        write_slide_seg(half, [level0], "mask", [0], ["Tumor"], str(tmp_path / "b.seg.dcm"))


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("level", [0, 1])
def test_infer_writes_a_dicom_slides_mask_as_a_seg_of_the_level_it_read(
    tmp_path, make_model, level
) -> None:
    """``finalize.dicom_seg=true`` of a slide: the SEG references the level the output was
    made at (``input_level``), its pixels are the mask's; with ``dicom_seg_levels``, each
    coarser level's SEG (none past the last) references that level, the mask sampled to
    it, one pyramid with the first."""
    from raysegment.infer import infer

    full = _rgb((192, 160))
    write_slide(tmp_path / "case", [full, full[::2, ::2]], tile=64)
    model, _ = make_model(in_ch=3, out_ch=2)
    infer(
        input=str(tmp_path / "case"),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        quicklook=False,
        input_level=level,
        chunks=[64],
        tile={"size": [32], "overlap": 0.25},
        finalize={"mode": "mask", "dicom_seg": True, "dicom_seg_levels": True},
    )
    mask = np.asarray(zarr.open_array(str(tmp_path / "out" / "case.ome.zarr" / "0"), mode="r")[:])
    assert mask.shape == (2, 192 >> level, 160 >> level) and mask[1].any() and not mask[1].all()
    read = highdicom.seg.segread(tmp_path / "out" / "case.seg.dcm")
    source = pydicom.dcmread(tmp_path / "case" / f"level{level}.dcm", stop_before_pixels=True)
    assert read.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert [s.SegmentLabel for s in read.SegmentSequence] == ["class_1"]
    pixels = read.get_total_pixel_matrix(combine_segments=False)
    np.testing.assert_array_equal(pixels[..., 0], mask[1])
    coarser = sorted(p.name for p in (tmp_path / "out").glob("case.seg.level*.dcm"))
    assert coarser == (["case.seg.level1.dcm"] if level == 0 else [])
    if level == 0:  # level 1 halves level 0: its pixels the mask's at even rows and columns
        half = highdicom.seg.segread(tmp_path / "out" / "case.seg.level1.dcm")
        source = pydicom.dcmread(tmp_path / "case" / "level1.dcm", stop_before_pixels=True)
        assert half.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (half.PyramidUID, half.SeriesInstanceUID, half.InstanceNumber) == (
            read.PyramidUID,
            read.SeriesInstanceUID,
            2,
        )
        pixels = half.get_total_pixel_matrix(combine_segments=False)
        np.testing.assert_array_equal(pixels[..., 0], mask[1, 1::2, 1::2])


def test_a_slides_seg_is_written_to_an_object_store_of_a_slide_there(s3, tmp_path) -> None:
    """The slide's header read from the store, the SEG uploaded whole (its frames spooled
    locally first)."""
    import s3fs

    from tests.conftest import BUCKET

    write_slide(tmp_path / "slide", [_rgb(SHAPE)], tile=128, label=False)
    fs = s3fs.S3FileSystem()
    fs.put(str(tmp_path / "slide" / "level0.dcm"), f"{BUCKET}/slide/level0.dcm")
    masks = _slide_masks()
    array = _output(tmp_path / "out.zarr", np.moveaxis(masks, -1, 0).astype(np.uint8), 128)
    url = f"s3://{BUCKET}/segs/slide.seg.dcm"
    names = ["Tumor", "Stroma"]
    write_slide_seg(array, [f"s3://{BUCKET}/slide/level0.dcm"], "mask", [0, 1], names, url)
    (tmp_path / "back.dcm").write_bytes(fs.cat(url.removeprefix("s3://")))
    read = highdicom.seg.segread(tmp_path / "back.dcm")
    np.testing.assert_array_equal(read.get_total_pixel_matrix(combine_segments=False), masks)


def _series_seg(
    tmp_path: Path,
    masks: np.ndarray,
    enhanced: bool,
    mode: str,
    chosen: list[int],
    labelmap: bool = False,
) -> tuple[pydicom.Dataset, pydicom.Dataset]:
    """``masks`` (slices, rows, columns, segments) as a series' output written as a SEG
    (binary, or a ``labelmap``) by ``write_dicom_seg`` (its chunks 2 slices deep) and by
    highdicom given it whole: (ours, theirs)."""
    from raysegment.post.dicom_seg import write_dicom_seg
    from tests.data.test_dicom import write_enhanced, write_series
    from tests.data.test_dicom_labels import _slices

    shape = masks.shape[:3]
    stored = np.zeros(shape, np.uint16)
    if enhanced:
        order = write_enhanced(tmp_path / "scan" / "ct.dcm", stored)
        files = [str(tmp_path / "scan" / "ct.dcm")] * shape[0]
        frames: list[int | None] = [order.index(z) for z in range(shape[0])]
        sources = [pydicom.dcmread(tmp_path / "scan" / "ct.dcm")]
        theirs_pixels = masks[order]  # highdicom takes the frames in their stored order
    else:
        write_series(tmp_path / "scan", stored)
        sources = _slices(tmp_path / "scan")
        files, frames = [s.filename for s in sources], [None] * shape[0]
        theirs_pixels = masks
    if mode == "mask":
        output = np.moveaxis(masks, -1, 0).astype(np.uint8)
    else:
        output = (masks * np.arange(1, masks.shape[-1] + 1)).max(axis=-1).astype(np.uint8)[None]
    level = zarr.create_array(
        str(tmp_path / "out.zarr"), shape=output.shape, chunks=(1, 2, *shape[1:]), dtype="uint8"
    )
    level[:] = output
    names = ["Liver", "Tumour"][: len(chosen)]
    location = tmp_path / "ours.seg.dcm"
    write_dicom_seg(
        str(tmp_path / "out.zarr"),
        "czyx",
        files,
        frames,
        mode,
        chosen,
        names,
        str(location),
        labelmap=labelmap,
    )
    picked = [c if mode == "mask" else c - 1 for c in chosen]
    write_seg(
        tmp_path / "theirs.seg.dcm",
        sources,
        theirs_pixels[..., picked],
        names,
        kind="LABELMAP" if labelmap else "BINARY",
        series_description=f"raysegment {mode}",
    )
    return pydicom.dcmread(location), pydicom.dcmread(tmp_path / "theirs.seg.dcm")


@pytest.mark.parametrize(
    ("shape", "enhanced", "mode", "chosen", "labelmap"),
    [
        ((6, 32, 40), False, "mask", [0, 1], False),  # overlapping segments
        ((6, 32, 40), False, "labels", [1, 2], False),
        ((6, 32, 40), False, "mask", [0], False),  # one segment: a 3D dimension organization
        ((6, 30, 45), False, "mask", [0, 1], False),  # frames of 1350 bits: they end mid-byte
        ((6, 32, 40), True, "mask", [0, 1], False),  # an enhanced file's frames, shuffled
        ((6, 32, 40), False, "labels", [1, 2], True),  # a label map: a frame a slice
        ((6, 30, 45), True, "mask", [0, 1], True),  # the later of overlapping segments
    ],
)
def test_a_series_output_is_the_seg_highdicom_writes_of_it_whole(
    tmp_path, shape, enhanced, mode, chosen, labelmap
) -> None:
    """Streamed a chunk of slices at a time, the SEG's frames (slices holding a segment;
    a label map's: any segment), their functional groups (the slice each was derived
    from, its position, dimension indices) and its header are those highdicom gives the
    whole output at once."""
    from tests.data.test_dicom_labels import _masks

    masks = _masks(shape)
    if mode == "labels":  # class maps do not overlap: the second segment over the first
        masks[..., 0] &= ~masks[..., 1]
    ours, theirs = _series_seg(tmp_path, masks, enhanced, mode, chosen, labelmap)
    assert _attributes(ours) == _attributes(theirs)
    assert (
        ours.NumberOfFrames == theirs.NumberOfFrames < shape[0] * (1 if labelmap else len(chosen))
    )
    assert ours.SOPClassUID == theirs.SOPClassUID
    assert ours.SegmentsOverlap == theirs.SegmentsOverlap
    assert ours.get("DimensionOrganizationType") == theirs.get("DimensionOrganizationType")
    assert ours.SharedFunctionalGroupsSequence == theirs.SharedFunctionalGroupsSequence
    assert ours.PerFrameFunctionalGroupsSequence == theirs.PerFrameFunctionalGroupsSequence
    # The frames' bits (the byte padding pixel data of an odd length: 0 here, as the
    # standard asks; highdicom's is b"0").
    bits = int(ours.BitsAllocated)
    length = -(-int(ours.NumberOfFrames) * shape[1] * shape[2] * bits // 8)
    assert len(ours.PixelData) == len(theirs.PixelData) == length + length % 2
    assert ours.PixelData[:length] == theirs.PixelData[:length]
    assert ours.ReferencedSeriesSequence == theirs.ReferencedSeriesSequence
    assert ours.SourceImageSequence == theirs.SourceImageSequence


def test_a_region_models_labels_are_a_segment_per_label_its_regions_paint() -> None:
    """Of a region model's labels, a segment per label its channels paint (their values
    in order), each of the class of the first channel painting it; its masks a segment
    per channel, as any sigmoid model's."""
    assert dicom_seg.segments("labels", 3, False, (1, 2, 3)) == ([1, 2, 3], [0, 1, 2])
    assert dicom_seg.segments("labels", 3, False, (4, 2, 4)) == ([2, 4], [1, 0])
    assert dicom_seg.segments("mask", 3, False, (1, 2, 3)) == ([0, 1, 2], [0, 1, 2])
    assert dicom_seg.segments("labels", 3, True) == ([1, 2], [1, 2])  # a softmax's
