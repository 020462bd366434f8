"""Instances, statistics and isotropic labels written by ``raysegment infer``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from skimage.measure import regionprops

from raysegment.config import InstanceMethod, InstancesConfig
from raysegment.infer import infer
from raysegment.post.instances import segment
from raysegment.post.resample import isotropic_shape, source_indices
from tests.conftest import save_torchscript
from tests.post.test_instances import blobs, same_partition
from tests.post.test_stats import covered

pytestmark = pytest.mark.usefixtures("ray_session")


def identity(dims: int) -> torch.nn.Module:
    """A 1x1 convolution that passes its input through: the input is the logit map."""
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    return conv.eval()


def _run(
    tmp_path: Path,
    image: np.ndarray,
    chunk: int,
    module: torch.nn.Module | None = None,
    origin: list[float] | None = None,
    **extra: object,
):
    """``image`` segmented by ``module`` (default: ``identity``, the image as logits);
    ``origin``: the image an OME-Zarr placed there (its ``translation``, in pixels)."""
    dims = image.ndim
    model = save_torchscript(module or identity(dims), tmp_path / "model.pth", dims, 1)
    if origin is None:
        zarr.create_array(str(tmp_path / "img.zarr"), data=image, chunks=(chunk,) * dims)
    else:
        group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w")
        group.create_array("0", data=image, chunks=(chunk,) * dims)
        transforms = [
            {"type": "scale", "scale": [1.0] * dims},
            {"type": "translation", "translation": origin},
        ]
        axes = [{"name": a, "type": "space"} for a in "zyx"[3 - dims :]]
        datasets = [{"path": "0", "coordinateTransformations": transforms}]
        group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    settings = {
        "finalize": {"mode": "probabilities", "activation": "sigmoid"},
        "quicklook": False,
        **extra,
    }
    return infer(
        input=str(tmp_path / "img.zarr"),
        model=str(model),
        output=str(tmp_path / "out"),
        axes="zyx"[3 - dims :],
        chunks=[chunk],
        block=[chunk * 2],
        tile={"size": [chunk], "blend": "crop"},
        progress=False,
        **settings,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_instances_labels_image_and_statistics_2d(tmp_path: Path) -> None:
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    logits = (blobs((190, 170), count=45) * 12 - 6).astype(np.float32)
    cfg = {"threshold": 0.3, "seed_threshold": 0.9, "min_size": 8}
    instances = cfg | {"method": "watershed", "geojson": True}
    _run(tmp_path, logits, 32, instances=instances, levels=2, voxel_size=[0.5, 0.5])
    out = tmp_path / "out" / "img.ome.zarr"
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["raysegment"]["status"] == "complete"
    Labels.from_zarr(group["labels"])  # valid labels group listing the image
    ImageLabel.from_zarr(group["labels/instances"])  # valid image-label metadata
    assert group["labels"].attrs["ome"]["labels"] == ["instances"]
    meta = group["labels/instances"].attrs["ome"]
    assert meta["image-label"]["source"] == {"image": "../../"}
    assert [d["path"] for d in meta["multiscales"][0]["datasets"]] == ["0", "1"]
    labels = np.asarray(group["labels/instances/0"][0])
    np.testing.assert_array_equal(group["labels/instances/1"][0], labels[::2, ::2])

    # The same method on the whole probability map at once: the same objects.
    prob = np.asarray(group["0"][0])
    whole = segment(prob, InstancesConfig(method=InstanceMethod.watershed, **cfg))
    assert same_partition(labels, whole) and labels.max() > 10
    assert group.attrs["raysegment"]["objects"] == [int(labels.max())]

    # Statistics == regionprops on the whole image (input intensities, 0.5 um pixels).
    rows = {int(r["label"]): r for r in _rows(tmp_path / "out" / "img_instances.csv")}
    props = regionprops(labels, intensity_image=logits)
    assert sorted(rows) == [p.label for p in props]
    for p in props:
        row = rows[p.label]
        assert int(row["pixels"]) == p.area
        assert float(row["volume_micrometer^2"]) == pytest.approx(p.area * 0.25)
        assert float(row["centroid_y"]) == pytest.approx(p.centroid[0], abs=1e-4)
        assert float(row["centroid_x_micrometer"]) == pytest.approx(p.centroid[1] * 0.5, abs=1e-4)
        assert (int(row["bbox_y_min"]), int(row["bbox_x_min"])) == p.bbox[:2]
        assert (int(row["bbox_y_max"]) + 1, int(row["bbox_x_max"]) + 1) == p.bbox[2:]
        assert float(row["mean_intensity"]) == pytest.approx(p.intensity_mean, abs=1e-4)
        circularity = 4 * math.pi * p.area / p.perimeter**2
        assert float(row["circularity"]) == pytest.approx(circularity, abs=1e-4)
    # Outlines: one feature per object, holding exactly its pixels' centres.
    collection = json.loads((tmp_path / "out" / "img_instances.geojson").read_text())
    features = {f["properties"]["label"]: f for f in collection["features"]}
    assert sorted(features) == [p.label for p in props]
    for label, feature in features.items():
        row = rows[label]
        assert feature["properties"] == {
            "objectType": "detection",
            "label": label,
            "t": 0,
            "measurements": {  # the CSV's, for QuPath's tables
                "pixels": int(row["pixels"]),
                "area_micrometer^2": float(row["volume_micrometer^2"]),
                "circularity": float(row["circularity"]),
                "mean_intensity": float(row["mean_intensity"]),
            },
        }
        np.testing.assert_array_equal(covered(feature["geometry"], labels.shape), labels == label)
    assert not (tmp_path / "out" / "img.ome.zarr" / ".raysegment" / "outlines").exists()
    [image] = _rows(tmp_path / "out" / "img_instances_image.csv")
    assert int(image["pixels"]) == labels.size and int(image["objects"]) == len(props)
    assert float(image["filling_ratio"]) == pytest.approx((labels > 0).mean())
    assert float(image["labelled_volume_micrometer^2"]) == pytest.approx((labels > 0).sum() / 4)


def _instances_at_level_1(image: Path, model: Path, written: dict[str, bool]) -> None:
    """``image``'s second level segmented by ``model`` (its output the logits) into
    ``out/`` beside it, its connected components found and ``written`` as asked."""
    infer(
        input=str(image),
        model=str(model),
        output=str(image.parent / "out"),
        input_level=1,
        chunks=[32],
        block=[64],
        tile={"size": [32], "blend": "crop"},
        progress=False,
        quicklook=False,
        finalize={"mode": "probabilities", "activation": "sigmoid"},
        instances={"method": "connected_components", **written},
    )


def test_outlines_of_a_reduced_level_are_in_the_full_resolutions_pixels(tmp_path: Path) -> None:
    """``input_level=1`` of a pyramidal OME-TIFF: the labels at the level's size, their
    outlines in the whole image's pixel coordinates (twice the level's), as QuPath
    overlays them on the slide."""
    import tifffile

    logits = (blobs((192, 160), count=20) * 12 - 6).astype(np.float32)
    full = np.repeat(np.repeat(logits, 2, 0), 2, 1)
    with tifffile.TiffWriter(tmp_path / "slide.ome.tif", bigtiff=True) as tif:
        tif.write(full, subifds=1, tile=(64, 64), metadata={"axes": "YX"})
        tif.write(logits, subfiletype=1, tile=(64, 64))
    model = save_torchscript(identity(2), tmp_path / "id.pth", 2, 1)
    _instances_at_level_1(tmp_path / "slide.ome.tif", model, {"geojson": True})
    labels = np.asarray(zarr.open_array(str(tmp_path / "out/slide.ome.zarr/labels/instances/0"))[0])
    assert labels.shape == (192, 160) and labels.max() > 5
    collection = json.loads((tmp_path / "out" / "slide_instances.geojson").read_text())
    for feature in collection["features"]:
        geometry = feature["geometry"]
        halved = json.loads(json.dumps(geometry), parse_float=lambda v: float(v) / 2)
        label = feature["properties"]["label"]
        np.testing.assert_array_equal(covered(halved, labels.shape), labels == label)
    assert len(collection["features"]) == labels.max()


def test_voronoi_otsu_3d_voxel_size_and_isotropic_labels(tmp_path: Path) -> None:
    """A volume placed away from 0 (an OME-Zarr's translation, 10 / 20 / 30 pixels): its
    outputs, labels and physical centroids keep it, in the voxel size given."""
    logits = (blobs((24, 60, 56), count=12, seed=3) * 12 - 6).astype(np.float32)
    cfg = {"spot_sigma": 2.0, "outline_sigma": 1.0}
    instances = cfg | {"method": "voronoi_otsu", "isotropic": True}
    origin = [10.0, 20.0, 30.0]
    _run(tmp_path, logits, 16, instances=instances, voxel_size=[2.0, 0.5, 0.5], origin=origin)
    group = zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r")
    scale = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale[0]["scale"] == [1.0, 2.0, 0.5, 0.5]  # c z y x, from voxel_size
    placed = {"type": "translation", "translation": [0.0, 20.0, 10.0, 15.0]}  # in micrometres
    assert scale[1] == placed
    assert (
        group["labels/instances"].attrs["ome"]["multiscales"][0]["datasets"][0][
            "coordinateTransformations"
        ][1]
        == placed
    )
    labels = np.asarray(group["labels/instances/0"][0])
    method = InstancesConfig(method=InstanceMethod.voronoi_otsu, **cfg)
    whole = segment(np.asarray(group["0"][0]), method)
    assert same_partition(labels, whole) and labels.max() >= 5

    iso = group["labels/instances_isotropic"]
    assert group["labels"].attrs["ome"]["labels"] == ["instances", "instances_isotropic"]
    shape = isotropic_shape(labels.shape, (2.0, 0.5, 0.5))
    assert shape == (96, 60, 56) and iso["0"].shape == (1, *shape)
    iso_scale = iso.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert iso_scale == [{"type": "scale", "scale": [1.0, 0.5, 0.5, 0.5]}, placed]
    picks = [source_indices(o, i, 0, o) for o, i in zip(shape, labels.shape, strict=True)]
    np.testing.assert_array_equal(iso["0"][0], labels[np.ix_(*picks)])

    rows = _rows(tmp_path / "out" / "img_instances.csv")
    assert len(rows) == labels.max()
    for row in rows:  # physical centroids where the output is placed
        for axis, size, at in zip("zyx", (2.0, 0.5, 0.5), (20.0, 10.0, 15.0), strict=True):
            physical = float(row[f"centroid_{axis}_micrometer"])
            assert physical == pytest.approx(at + float(row[f"centroid_{axis}"]) * size, abs=1e-3)
    big = max(rows, key=lambda r: int(r["pixels"]))
    assert 0.5 < float(big["sphericity"]) <= 1.05  # roundish blobs (anisotropic voxels)


def test_blocks_the_model_skipped_are_background_for_one_minus_channel_0(tmp_path: Path) -> None:
    """A softmax model's background channel, 1 - which is the foreground by default:
    blocks that kept the fill value (constant input: every channel 0, which no softmax
    gives) are background, not one object spanning them."""
    image = np.zeros((256, 256), np.float32)  # the left half constant: empty blocks
    image[:, 128:] = -5.0
    image[40:60, 160:180] = image[150:170, 200:230] = 5.0
    conv = torch.nn.Conv2d(1, 2, 1)  # logits (-x, x): background, foreground
    with torch.no_grad():
        conv.weight[:] = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1)
        conv.bias.zero_()
    summary = _run(
        tmp_path,
        image,
        32,
        conv.eval(),
        finalize={"mode": "probabilities", "activation": "softmax"},
        instances={"method": "connected_components", "stats": False},
    )
    assert summary.empty_blocks == 4
    out = zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r")
    assert out.attrs["raysegment"]["objects"] == [2]
    labels = np.asarray(out["labels/instances/0"][0])
    assert labels[:, :128].max() == 0 and len(np.unique(labels)) == 3


def test_statistics_of_each_time_point_are_its_own(tmp_path: Path) -> None:
    """A time series: every time point labelled, then each one measured on its own labels
    (the object counts, the rows' time points and pixels, one image row a time point)."""
    logits = np.stack(
        [(blobs((96, 80), count=n, seed=n) * 12 - 6).astype(np.float32) for n in (4, 20)]
    )
    model = save_torchscript(identity(2), tmp_path / "model.pth", 2, 1)
    zarr.create_array(str(tmp_path / "img.zarr"), data=logits, chunks=(1, 32, 32))
    infer(
        input=str(tmp_path / "img.zarr"),
        model=str(model),
        output=str(tmp_path / "out"),
        axes="tyx",
        chunks=[32],
        block=[64],
        tile={"size": [32], "blend": "crop"},
        finalize={"mode": "probabilities", "activation": "sigmoid"},
        instances={"method": "connected_components", "threshold": 0.5, "min_size": 1},
        quicklook=False,
        progress=False,
    )
    group = zarr.open_group(str(tmp_path / "out" / "img.ome.zarr"), mode="r")
    labels = np.asarray(group["labels/instances/0"])
    rows = _rows(tmp_path / "out" / "img_instances.csv")
    images = _rows(tmp_path / "out" / "img_instances_image.csv")
    counts = [int(labels[t].max()) for t in range(2)]
    assert group.attrs["raysegment"]["objects"] == counts and counts[0] < counts[1]
    assert len(images) == 2
    for t in range(2):
        frame = labels[t].reshape(labels.shape[-2:])
        props = regionprops(frame)
        mine = {int(r["label"]): int(r["pixels"]) for r in rows if int(r["t"]) == t}
        assert props and mine == {p.label: int(p.area) for p in props}
        assert int(images[t]["objects"]) == len(props)


def test_a_multilabel_model_names_the_class_to_cut_instances_of(tmp_path: Path, make_model) -> None:
    """A model trained multilabel (sigmoid, as its ``raysegment.json`` says) has no
    background channel: 1 - its channel 0 is no foreground, so instances without
    ``instances.channel`` are refused before the run, in one line naming the key."""
    import tifffile

    from raysegment.errors import ConfigError

    tifffile.imwrite(tmp_path / "img.tif", blobs((64, 64), 4).astype(np.float32))
    model, _ = make_model(out_ch=3)
    (tmp_path / "multilabel").mkdir()
    model = model.rename(tmp_path / "multilabel" / "model.pth").parent
    (model / "raysegment.json").write_text(json.dumps({"activation": "sigmoid"}))
    run = dict(input=str(tmp_path / "img.tif"), model=str(model), progress=False)
    with pytest.raises(ConfigError, match=r"multilabel\), none .* instances.channel=0..2$"):
        infer(**run, output=str(tmp_path / "out"), instances={"method": "connected_components"})
    assert not (tmp_path / "out").exists()


def test_a_dicom_slides_instances_are_written_as_dicom_annotations(tmp_path: Path) -> None:
    """``instances.dicom_ann=true``: a Microscopy Bulk Simple Annotations object of the
    slide's full resolution (the run at its second level), a polygon an object, its
    points the GeoJSON outline's (without the closing point), its area the statistics'."""
    highdicom = pytest.importorskip("highdicom")
    import pydicom

    from tests.data.test_dicom import write_fluorescence

    prob = blobs((192, 160), 6)  # objects above 0.5
    full = (prob * 200).astype(np.uint8)[..., None]
    write_fluorescence(tmp_path / "slide", [full, full[::2, ::2]], ["DAPI"], tile=64)
    conv = torch.nn.Conv2d(1, 1, 1)  # logits: the pixel over 100, a tenth
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.bias.fill_(-10.0)
    model = save_torchscript(conv.eval(), tmp_path / "model.pth", 2, 1)
    _instances_at_level_1(tmp_path / "slide", model, {"geojson": True, "dicom_ann": True})
    features = json.loads((tmp_path / "out" / "slide_instances.geojson").read_text())["features"]
    assert len(features) > 3
    ann = highdicom.ann.annread(tmp_path / "out" / "slide_instances.ann.dcm")
    level0 = pydicom.dcmread(tmp_path / "slide" / "0_DAPI.dcm", stop_before_pixels=True)
    assert (
        ann.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == level0.SOPInstanceUID
    )
    (group,) = ann.get_annotation_groups()
    assert group.graphic_type.value == "POLYGON" and group.label == "class_0"
    polygons = group.get_graphic_data(coordinate_type="2D")
    assert len(polygons) == len(features)
    for polygon, feature in zip(polygons, features, strict=True):
        ring = np.asarray(feature["geometry"]["coordinates"][0], np.float32)
        np.testing.assert_array_equal(polygon, ring[:-1])  # in level 0's pixels
    names, values, units = group.get_measurements()
    assert names[0].meaning == "Area" and units[0].value == "um2"
    areas = [f["properties"]["measurements"]["area_micrometer^2"] for f in features]
    np.testing.assert_allclose(values[:, 0], areas, rtol=1e-6)


def test_dicom_annotations_are_refused_before_the_run_for_other_inputs(tmp_path: Path) -> None:
    from raysegment.errors import ConfigError

    model = save_torchscript(identity(2), tmp_path / "model.pth", 2, 1)
    zarr.create_array(str(tmp_path / "img.zarr"), data=np.zeros((32, 32), np.float32))
    run = dict(
        input=str(tmp_path / "img.zarr"),
        model=str(model),
        output=str(tmp_path / "out"),
        axes="yx",
        progress=False,
    )
    with pytest.raises(ConfigError, match=r"instances.dicom_ann=true writes the outlines"):
        infer(**run, instances={"dicom_ann": True})
    with pytest.raises(ConfigError, match=r"img.zarr is no DICOM slide .*instances.geojson=true"):
        infer(**run, instances={"method": "connected_components", "dicom_ann": True})
    assert not (tmp_path / "out").exists()


def test_an_objects_annotation_is_its_largest_parts_outer_ring(tmp_path: Path) -> None:
    """A polygon holds no hole and no second part: an object in two parts is annotated by
    its larger part's outer ring; no objects, no annotation group."""
    highdicom = pytest.importorskip("highdicom")
    from raysegment.post.dicom_ann import write_dicom_ann
    from tests.data.test_dicom import write_fluorescence

    write_fluorescence(tmp_path / "slide", [np.zeros((64, 64, 1), np.uint8)], ["DAPI"])
    small = [[[1, 1], [3, 1], [3, 3], [1, 3], [1, 1]]]
    large = [
        [[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]],
        [[15, 15], [15, 20], [20, 20], [15, 15]],
    ]
    feature = {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": [small, large]},
        "properties": {"measurements": {"area_micrometer^2": 2.5}},
    }
    (tmp_path / "part.jsonl").write_text(json.dumps(feature) + "\n")
    files = [str(tmp_path / "slide" / "0_DAPI.dcm")]
    location = str(tmp_path / "one.ann.dcm")
    write_dicom_ann(
        location, files, [str(tmp_path / "part.jsonl")], ("Nucleus", None), "micrometer"
    )
    (group,) = highdicom.ann.annread(location).get_annotation_groups()
    (polygon,) = group.get_graphic_data(coordinate_type="2D")
    np.testing.assert_array_equal(polygon, np.asarray(large[0][:-1], np.float32))
    assert group.label == "Nucleus"
    write_dicom_ann(str(tmp_path / "none.ann.dcm"), files, [], ("Nucleus", None), "micrometer")
    assert highdicom.ann.annread(tmp_path / "none.ann.dcm").get_annotation_groups() == []
