"""Training data checks: pairing, label values, shapes, sizes; patches read lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from raysegment.config import TrainConfig, load_config
from raysegment.data.pairs import pair_images
from raysegment.errors import ConfigError, InputImageError
from raysegment.train.data import IGNORE, prepare, read_patches


def _write(root: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
    (root / "img").mkdir(exist_ok=True)
    (root / "lbl").mkdir(exist_ok=True)
    for name, a in images.items():
        tifffile.imwrite(root / "img" / name, a)
    for name, a in labels.items():
        tifffile.imwrite(root / "lbl" / name, a)


def _cfg(root: Path, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        (),
        [
            f"images.dir={root / 'img'}",
            f"labels.dir={root / 'lbl'}",
            "output=o",
            "patch_size=32",
            *overrides,
        ],
    )


def _ok(root: Path, n: int = 3, mode_values: tuple[int, ...] = (0, 1)) -> None:
    rng = np.random.default_rng(1)
    _write(
        root,
        {f"a{i}.tif": rng.integers(0, 999, (48, 64), dtype=np.uint16) for i in range(n)},
        {f"a{i}.tif": rng.choice(mode_values, (48, 64)).astype(np.uint8) for i in range(n)},
    )


def test_pairs_by_stem_or_capture_group(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {"x.ome.tif": np.zeros((4, 4), np.uint8), "y.tif": np.zeros((4, 4), np.uint8)},
        {"x_mask.tif": np.zeros((4, 4), np.uint8), "y_mask.tif": np.zeros((4, 4), np.uint8)},
    )
    pairs = pair_images(str(tmp_path / "img"), None, str(tmp_path / "lbl"), r"(.*)_mask\.tif")
    assert [(Path(a).name, Path(b).name) for (a,), b in pairs] == [
        ("x.ome.tif", "x_mask.tif"),
        ("y.tif", "y_mask.tif"),
    ]
    with pytest.raises(InputImageError, match="x.ome.tif: no label with key 'x'"):
        pair_images(str(tmp_path / "img"), None, str(tmp_path / "lbl"), None)


def test_prepare_splits_measures_and_reads_patches(tmp_path: Path) -> None:
    _ok(tmp_path, n=4)
    data = prepare(_cfg(tmp_path, "train_fraction=0.5"))
    assert len(data.train) == 2 and len(data.val) == 2 and not set(data.train) & set(data.val)
    assert data.classes == 1 and data.patch == (32, 32) and 300 < data.mean[0] < 700
    specs = data.train_specs(5, seed=0)
    assert specs == data.train_specs(5, seed=0) and all(s["pair"] in data.train for s in specs)
    # New patches every epoch, the same for the same epoch (a resumed run's included).
    assert data.train_specs(5, seed=0, epoch=1) == data.train_specs(5, seed=0, epoch=1)
    assert data.train_specs(5, seed=0, epoch=1) != specs != data.train_specs(5, seed=1)
    # Every data-parallel worker its own patches, as many as the others.
    parts = [data.worker_specs(7, 0, 1, rank, 3) for rank in range(3)]
    assert [len(p) for p in parts] == [2, 2, 2]
    assert sum(parts, []) == data.train_specs(6, seed=0, epoch=1)
    assert data.worker_specs(2, 0, 0, 2, 3) == [data.train_specs(3, seed=0)[2]]
    batch = {k: np.array([s[k] for s in specs]) for k in specs[0]}
    out = read_patches(batch, data, augment=True)
    assert out["x"].shape == (5, 1, 32, 32) and out["x"].dtype == np.float32
    assert out["y"].shape == (5, 1, 32, 32) and set(np.unique(out["y"])) <= {0.0, 1.0}
    val = data.val_specs(100)
    assert all(s["pair"] in data.val for s in val) and len(val) == 2 * 2 * 2


def test_3d_patches_are_the_volumes_blocks_flipped_alike_along_every_axis(
    tmp_path: Path,
) -> None:
    """A (z, y, x) patch is its volume's block, normalized, with its labels; augmented,
    image and labels flip alike, along z too; validation tiles the volumes along z."""
    rng = np.random.default_rng(4)
    volumes = {
        f"v{i}.tif": rng.integers(0, 999, (10 + i, 40, 36), dtype=np.uint16) for i in range(3)
    }
    # labels that tell every voxel's place: its image's value above 500
    _write(tmp_path, volumes, {k: (v > 500).astype(np.uint8) for k, v in volumes.items()})
    data = prepare(_cfg(tmp_path, "patch_size=[8,16,16]", "train_fraction=0.67"))
    assert data.patch == (8, 16, 16) and data.sizes == (8, 16, 16) and data.val == (1,)
    val = data.val_specs(100)  # the 11-plane volume: z at 0 and 3 (its last 8 planes)
    assert sorted({s["z"] for s in val}) == [0, 3] and len(val) == 2 * 3 * 3
    stack = [tifffile.imread(tmp_path / "img" / f"v{i}.tif") for i in range(3)]
    batch = {k: np.array([s[k] for s in val]) for k in val[0]}
    out = read_patches(batch, data, augment=False)
    assert out["x"].shape == (18, 1, 8, 16, 16) and out["y"].shape == (18, 1, 8, 16, 16)
    for k, spec in enumerate(val):
        z, y, x = spec["z"], spec["y"], spec["x"]
        block = stack[spec["pair"]][z : z + 8, y : y + 16, x : x + 16]
        np.testing.assert_allclose(out["x"][k, 0], (block - data.mean[0]) / data.std[0], atol=1e-5)
        np.testing.assert_array_equal(out["y"][k, 0], block > 500)
    specs = data.train_specs(64, seed=0)
    batch = {k: np.array([s[k] for s in specs]) for k in specs[0]}
    out = read_patches(batch, data, augment=True)
    # Flipped and turned alike: the labels are where the (rescaled) image is brightest.
    x, y = out["x"][:, 0], out["y"][:, 0]
    for k in range(len(specs)):
        assert x[k][y[k] == 1].min() > x[k][y[k] == 0].max()
    # Along z too: each voxel's label its place (z, y, x), the image's ordered as it.
    from raysegment.train.augment import light

    place = np.arange(8 * 16 * 16).reshape(1, 8, 16, 16)
    flipped = set()
    for seed in range(32):
        x, y = light(place.astype(np.float32), place, np.random.default_rng(seed))
        assert (np.diff(x.ravel()[np.argsort(y.ravel())]) > 0).all()  # the same moves
        flipped.add(bool(y[0, 0, 0, 0] // 256 > y[0, -1, 0, 0] // 256))
    assert flipped == {True, False}


def test_foreground_is_oversampled_as_nnunet_does(tmp_path: Path) -> None:
    """Sparse labels (a small ball of class 1 and a box of class 2 in each 24 x 64^2
    volume): a sample of each label's voxels is kept, every one of them that label's; a
    third of the random patches centre on one of them (a label drawn at random), so hold
    it; with oversample_foreground=0 few patches hold any."""
    rng = np.random.default_rng(5)
    zz, yy, xx = np.mgrid[:24, :64, :64]
    volumes, labels = {}, {}
    for i in range(3):
        c = rng.integers(4, 20), rng.integers(8, 56), rng.integers(8, 56)
        label = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 4).astype(np.uint8)
        label[2:5, 50:60, 2:8] = 2
        labels[f"v{i}.tif"] = label
        volumes[f"v{i}.tif"] = rng.integers(0, 999, label.shape, dtype=np.uint16)
    _write(tmp_path, volumes, labels)
    shares = {}
    for share in (0.33, 0.0):
        data = prepare(
            _cfg(tmp_path, "mode=multiclass", "patch_size=[8,16,16]", "train_fraction=0.67")
            if share
            else _cfg(
                tmp_path,
                "mode=multiclass",
                "patch_size=[8,16,16]",
                "train_fraction=0.67",
                "oversample_foreground=0",
            )
        )
        assert data.oversample == share
        if not share:  # nothing located
            assert data.foreground == (None,) * 3
        for k, found in enumerate(data.foreground if share else ()):
            label = labels[f"v{k}.tif"]
            assert found is not None and sorted(found) == [(0, 1), (0, 2)]
            assert len(found[(0, 2)]) == 10 * 6 * 3  # all of them: fewer than kept at most
            for (_, value), at in found.items():
                assert (label[tuple(at.T)] == value).all()
        specs = data.train_specs(600, seed=0)
        batch = {k: np.array([s[k] for s in specs]) for k in specs[0]}
        y = read_patches(batch, data, augment=False)["y"]
        shares[share] = float((y > 0).any(axis=(1, 2, 3)).mean())
    assert shares[0.33] > 0.33 and shares[0.0] < 0.2, shares


@pytest.mark.parametrize("share", [0.33, 0.5])
def test_foreground_is_oversampled_by_batch_as_nnunets_data_loader(tmp_path: Path, share) -> None:
    """``oversample_by=batch``: the last patches of each batch (in the order the worker
    reads them; the workers' batches together) centre on foreground, as nnU-Net's data
    loader marks them (``_oversample_last_XX_percent``, for batches of 1 to 5); the others
    anywhere."""
    from types import SimpleNamespace

    loader = pytest.importorskip("nnunetv2.training.dataloading.data_loader").nnUNetDataLoader
    rng = np.random.default_rng(6)
    zz, yy, xx = np.mgrid[:24, :64, :64]
    volumes, labels = {}, {}
    for i in range(3):
        c = rng.integers(4, 20), rng.integers(8, 56), rng.integers(8, 56)
        label = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 4).astype(np.uint8)
        labels[f"v{i}.tif"] = label
        volumes[f"v{i}.tif"] = rng.integers(0, 999, label.shape, dtype=np.uint16)
    _write(tmp_path, volumes, labels)
    settings = ["patch_size=[8,16,16]", "train_fraction=0.67", f"oversample_foreground={share}"]
    data = prepare(_cfg(tmp_path, *settings, "oversample_by=batch"))
    for size in range(1, 6):
        theirs = SimpleNamespace(batch_size=size, oversample_foreground_percent=share)
        want = [int(loader._oversample_last_XX_percent(theirs, k)) for k in range(size)]
        specs = data.worker_specs(10 * size, 0, 0, 0, 1, size)
        assert [s["fg"] for s in specs] == want * 10, size
    # Data-parallel workers: their batches together, as nnU-Net shares a batch of 2 out
    # among 2 GPUs (the second's patch on foreground).
    steps = [data.worker_specs(20, 0, 0, rank, 2, 1) for rank in (0, 1)]
    assert [{s["fg"] for s in part} for part in steps] == [{0}, {1}]
    specs = data.worker_specs(400, 0, 0, 0, 1, 2)
    batch = {k: np.array([s[k] for s in specs]) for k in specs[0]}
    held = (read_patches(batch, data, augment=False)["y"] > 0).any(axis=(1, 2, 3, 4))
    assert held[1::2].all() and held[::2].mean() < 0.3  # the second of each batch of 2
    with pytest.raises(ConfigError, match="oversample_by='nnunet'"):
        _cfg(tmp_path, "oversample_by=nnunet")


def _check_patches(data: object, picks: list[tuple[np.ndarray, int, int, int]]) -> None:
    """The 32^2 patch of pair k at ``picks[k]`` (its plane, z, y, x) is that plane's
    pixels normalized, its label the pixels above 500."""
    z, y, x = (np.array([pick[i] for pick in picks]) for i in (1, 2, 3))
    batch = {"pair": np.arange(len(picks)), "z": z, "y": y, "x": x}
    out = read_patches(batch, data, augment=False)  # type: ignore[arg-type]
    for k, (plane, _, y0, x0) in enumerate(picks):
        patch = plane[y0 : y0 + 32, x0 : x0 + 32]
        mean, std = data.mean[0], data.std[0]  # type: ignore[attr-defined]
        np.testing.assert_allclose(out["x"][k, 0], (patch - mean) / std, atol=1e-5)
        np.testing.assert_array_equal(out["y"][k, 0], patch > 500)


def test_czi_images_pair_with_tiff_labels(tmp_path: Path) -> None:
    """Images as the microscope saved them (CZI), labels drawn on them as TIFFs: paired by
    name, patches read from the CZI's pixels."""
    from tests.conftest import write_czi

    rng = np.random.default_rng(2)
    (tmp_path / "img").mkdir()
    images = {f"a{i}": rng.integers(0, 999, (1, 1, 1, 48, 64), dtype=np.uint16) for i in range(2)}
    for name, image in images.items():
        write_czi(tmp_path / "img" / f"{name}.czi", [(image, (-7, 100))], pixel_size=0.3)
    _write(
        tmp_path, {}, {f"{n}.tif": (im[0, 0, 0] > 500).astype(np.uint8) for n, im in images.items()}
    )
    data = prepare(_cfg(tmp_path, "train_fraction=0.5"))
    assert [Path(p.image.path).name for p in data.pairs] == ["a0.czi", "a1.czi"]
    _check_patches(data, [(images["a0"][0, 0, 0], 0, 3, 30), (images["a1"][0, 0, 0], 0, 16, 0)])


def test_folds_validate_every_pair_once(tmp_path: Path) -> None:
    """k-fold: each pair validates in exactly one fold and trains in the others, every
    fold with the same normalization; the same seed gives the same folds."""
    _ok(tmp_path, n=5)
    held, norms = [], set()
    for fold in range(3):
        data = prepare(_cfg(tmp_path, "folds=3", f"fold={fold}"))
        assert sorted(data.train + data.val) == list(range(5))
        held.append(data.val)
        norms.add((data.mean, data.std))
    assert len(norms) == 1  # one normalization: the folds' models make an ensemble
    assert sorted(i for val in held for i in val) == list(range(5))
    assert sorted(map(len, held)) == [1, 2, 2]
    assert prepare(_cfg(tmp_path, "folds=3", "fold=1")).val == held[1]


def test_multiclass_counts_classes_and_targets_are_integers(tmp_path: Path) -> None:
    _ok(tmp_path, mode_values=(0, 1, 2, 3))
    data = prepare(_cfg(tmp_path, "mode=multiclass"))
    assert data.classes == 4
    spec = data.val_specs(1)[0]
    out = read_patches({k: np.array([v]) for k, v in spec.items()}, data, augment=False)
    assert out["y"].dtype == np.int64 and out["y"].shape == (1, 32, 32)


@pytest.mark.parametrize(
    "setup,overrides,match",
    [
        (lambda r: _ok(r, mode_values=(0, 1, 2)), [], "mode=binary needs 0 and one foreground"),
        (
            lambda r: _ok(r, mode_values=(0, 1, 5)),
            ["mode=multiclass", "classes=3"],
            "holds class 5 but classes=3",
        ),
        (lambda r: _ok(r, n=1), [], "training needs at least 2"),
        (lambda r: _ok(r, n=3), ["folds=4"], "folds=4 needs at least 4"),
        (lambda r: _ok(r), ["patch_size=64"], "smaller than patch_size=\\[64, 64\\]"),
        (
            lambda r: _write(
                r,
                {"a.tif": np.zeros((8, 8), np.uint8), "b.tif": np.zeros((8, 8), np.uint8)},
                {"a.tif": np.zeros((8, 9), np.uint8), "b.tif": np.zeros((8, 8), np.uint8)},
            ),
            ["patch_size=8"],
            "differs from its image",
        ),
        (
            lambda r: _write(
                r, {"a.tif": np.zeros((8, 8), np.uint8)}, {"b.tif": np.zeros((8, 8), np.uint8)}
            ),
            [],
            "no label with key 'a'",
        ),
        (lambda r: (r / "img").mkdir() or (r / "lbl").mkdir(), [], "no entry matches"),
        (
            lambda r: _write(
                r,
                {"a.tif": np.zeros((8, 8), np.uint8), "b.tif": np.zeros((8, 8), np.uint8)},
                {"a.tif": np.zeros((8, 8), np.float32), "b.tif": np.zeros((8, 8), np.uint8)},
            ),
            ["patch_size=8"],
            "labels must be integers",
        ),
    ],
)
def test_bad_training_data(tmp_path: Path, setup, overrides, match) -> None:
    setup(tmp_path)
    with pytest.raises(InputImageError, match=match):
        prepare(_cfg(tmp_path, *overrides))


def test_class_names_must_fit_the_labels_before_training(tmp_path: Path) -> None:
    from raysegment.errors import ConfigError

    _ok(tmp_path, mode_values=(0, 1, 2))
    assert prepare(_cfg(tmp_path, "mode=multiclass", "class_names=[bg,a,b]")).classes == 3
    with pytest.raises(ConfigError, match="names 2 class\\(es\\) but the labels"):
        prepare(_cfg(tmp_path, "mode=multiclass", "class_names=[bg,a]"))


def test_em_volumes_in_a_bucket_pair_with_n5_labels_on_disk(tmp_path: Path, s3) -> None:
    """Connectomics' training data: EM volumes (N5) in an S3 bucket, their labels (N5)
    painted on local copies; each plane of a volume is a sample, patches read from the
    bucket."""
    import s3fs

    from tests.conftest import BUCKET
    from tests.data.test_tensorstore import write_n5

    rng = np.random.default_rng(3)
    volumes = {f"v{i}": rng.integers(0, 999, (4, 48, 64), dtype=np.uint16) for i in range(2)}
    for name, volume in volumes.items():
        write_n5(tmp_path / "em" / f"{name}.n5", volume, {}, {"s0": {}})
        write_n5(tmp_path / "lbl" / f"{name}.n5", (volume > 500).astype(np.uint8), {}, {"s0": {}})
    s3fs.S3FileSystem().put(str(tmp_path / "em"), f"{BUCKET}/train/em", recursive=True)
    cfg = _cfg(tmp_path, f"images.dir=s3://{BUCKET}/train/em", "train_fraction=0.5")
    data = prepare(cfg)
    assert [p.image.path for p in data.pairs] == [
        f"s3://{BUCKET}/train/em/v0.n5",
        f"s3://{BUCKET}/train/em/v1.n5",
    ]
    assert [p.planes for p in data.pairs] == [4, 4]
    _check_patches(data, [(volumes["v0"][1], 1, 3, 30), (volumes["v1"][3], 3, 16, 0)])


def _annotations(seed: int) -> dict:
    """A QuPath GeoJSON export of a 96 x 128 image: a tumour with a hole, a stroma
    MultiPolygon overlapping it (drawn after it, so on top), a point (no region)."""
    rng = np.random.default_rng(seed)
    dx, dy = rng.uniform(-6, 6, 2)

    def ring(*corners: tuple[float, float]) -> list[list[float]]:
        points = [[x + dx, y + dy] for x, y in corners]
        return [*points, points[0]]

    def lifted(ring: list[list[float]]) -> list[list[float]]:  # positions may carry altitude
        return [[*point, 12.5] for point in ring]

    def feature(name: str | None, geometry: dict) -> dict:
        properties = {"objectType": "annotation"}
        if name:
            properties["classification"] = {"name": name, "color": [200, 0, 0]}
        return {"type": "Feature", "geometry": geometry, "properties": properties}

    tumour = [
        ring((10.3, 12.2), (70.6, 8.1), (80.2, 60.7), (20.4, 70.3)),
        ring((30.2, 30.3), (50.1, 30.4), (40.3, 50.2)),
    ]
    stroma = [
        [ring((60.2, 40.1), (120.7, 45.3), (100.4, 90.6))],
        [lifted(ring((2.1, 80.3), (15.2, 80.4), (8.3, 94.2)))],
    ]
    return {
        "type": "FeatureCollection",
        "features": [
            feature("Tumor", {"type": "Polygon", "coordinates": tumour}),
            feature("Stroma", {"type": "MultiPolygon", "coordinates": stroma}),
            feature("Tumor", {"type": "Point", "coordinates": [5.0, 5.0]}),
        ],
    }


def _drawn(
    document: dict, classes: dict[str, int], shape: tuple[int, int], fill: int = 0
) -> np.ndarray:
    """The oracle: each pixel's value by whether its centre lies inside each polygon
    (matplotlib's point-in-polygon test), later polygons over earlier ones, ``fill``
    outside them all."""
    from matplotlib.path import Path as Outline

    ys, xs = np.mgrid[: shape[0], : shape[1]]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    out = np.full(shape, fill, np.uint16)
    for feature in document["features"]:
        geometry = feature["geometry"]
        parts = {"Polygon": [geometry["coordinates"]], "MultiPolygon": geometry["coordinates"]}
        for rings in parts.get(geometry["type"], []):
            outer, *holes = (np.asarray(ring)[:, :2] for ring in rings)
            inside = Outline(outer).contains_points(centres)
            for hole in holes:
                inside &= ~Outline(hole).contains_points(centres)
            out.ravel()[inside] = classes[feature["properties"]["classification"]["name"]]
    return out


def test_qupath_geojson_annotations_are_labels_drawn_region_by_region(tmp_path: Path) -> None:
    """Labels as QuPath exports them (GeoJSON polygons by class) pair with their images
    by name and are drawn where a patch needs them, each pixel by whether its centre is
    inside; multiclass by class_names, binary every polygon, multilabel a channel each."""
    import json
    import pickle

    from raysegment.data.annotations import GeoJsonLabels

    rng = np.random.default_rng(4)
    images = {f"s{i}.tif": rng.integers(0, 999, (96, 128), dtype=np.uint16) for i in range(3)}
    _write(tmp_path, images, {})
    documents = {f"s{i}": _annotations(i) for i in range(3)}
    for name, document in documents.items():
        (tmp_path / "lbl" / f"{name}.geojson").write_text(json.dumps(document))
    names = "class_names=[background,Tumor,Stroma]"
    data = prepare(_cfg(tmp_path, "mode=multiclass", names, "train_fraction=0.5"))
    assert data.classes == 3 and all(isinstance(p.label, GeoJsonLabels) for p in data.pairs)
    assert [Path(p.label.path).name for p in data.pairs] == [f"s{i}.geojson" for i in range(3)]
    for k, pair in enumerate(data.pairs):
        want = _drawn(documents[f"s{k}"], {"Tumor": 1, "Stroma": 2}, (96, 128))
        assert set(np.unique(want)) == {0, 1, 2}
        for y0, x0, h, w in ((0, 0, 96, 128), (27, 39, 32, 32), (64, 0, 32, 32), (3, 100, 5, 9)):
            got = pair.label.read(0, (0,), ((0, 1), (y0, y0 + h), (x0, x0 + w)))[0, 0]
            np.testing.assert_array_equal(got, want[y0 : y0 + h, x0 : x0 + w])
    whole = ((0, 1), (0, 96), (0, 128))
    copy = pickle.loads(pickle.dumps(data.pairs[2].label))  # as the workers get it
    np.testing.assert_array_equal(copy.read(0, (0,), whole)[0, 0], want)
    spec = {"pair": np.array([0]), "z": np.array([0]), "y": np.array([40]), "x": np.array([50])}
    target = read_patches(spec, data, augment=False)["y"]
    want = _drawn(documents["s0"], {"Tumor": 1, "Stroma": 2}, (96, 128))
    np.testing.assert_array_equal(target[0], want[40:72, 50:82])
    # Binary: every polygon is foreground; multilabel: a channel per class, overlaps kept.
    binary = prepare(_cfg(tmp_path, "train_fraction=0.5")).pairs[1].label
    both = _drawn(documents["s1"], {"Tumor": 1, "Stroma": 1}, (96, 128))
    np.testing.assert_array_equal(binary.read(0, (0,), whole)[0, 0], both)
    multi = prepare(_cfg(tmp_path, "mode=multilabel", "class_names=[Tumor,Stroma]"))
    label = multi.pairs[2].label
    assert multi.classes == 2 and label.info.shape == (1, 2, 1, 96, 128)
    got = label.read(0, (1, 0), whole)[:, 0]
    for channel, name in ((0, "Stroma"), (1, "Tumor")):
        features = documents["s2"]["features"]
        alone = [f for f in features if f["properties"]["classification"]["name"] == name]
        drawn = _drawn({"features": alone}, {name: 1}, (96, 128))
        np.testing.assert_array_equal(got[channel], drawn)
    assert (got[0] & got[1]).any()  # where stroma overlaps the tumour, both
    # Class names declare classes no annotation holds yet; a class they lack is named.
    more = "class_names=[background,Tumor,Stroma,Necrosis]"
    assert prepare(_cfg(tmp_path, "mode=multiclass", more)).classes == 4
    with pytest.raises(
        InputImageError, match=r"s0.geojson: a polygon of class 'Stroma'.*class_names="
    ):
        prepare(_cfg(tmp_path, "mode=multiclass", "class_names=[background,Tumor]"))
    with pytest.raises(InputImageError, match="a polygon of class 'Tumor'.*after the background"):
        prepare(_cfg(tmp_path, "mode=multiclass"))
    (tmp_path / "lbl" / "s1.geojson").write_text(
        json.dumps({"type": "Point", "coordinates": [1, 2]})
    )
    with pytest.raises(InputImageError, match="s1.geojson: no Polygon or MultiPolygon"):
        prepare(_cfg(tmp_path))


def test_a_third_of_a_slides_patches_are_centred_on_its_annotations(tmp_path: Path) -> None:
    """A large image with one small annotated square: uniform patches would all but never
    meet it (0.2% here); a third of them are centred on a polygon, the rest anywhere."""
    import json

    from raysegment.train.data import ANNOTATED

    rng = np.random.default_rng(6)
    images = {f"s{i}.tif": rng.integers(0, 999, (1024, 1536), dtype=np.uint16) for i in range(2)}
    _write(tmp_path, images, {})
    square = [[700.2, 300.3], [720.1, 300.3], [720.1, 320.4], [700.2, 320.4], [700.2, 300.3]]
    document = {"type": "Polygon", "coordinates": [square]}
    for name in ("s0", "s1"):
        (tmp_path / "lbl" / f"{name}.geojson").write_text(json.dumps(document))
    data = prepare(_cfg(tmp_path, "train_fraction=0.5"))
    specs = data.train_specs(90, seed=0)
    batch = {k: np.array([s[k] for s in specs]) for k in specs[0]}
    met = read_patches(batch, data, augment=False)["y"].reshape(90, -1).any(axis=1)
    assert 0.6 * ANNOTATED * 90 <= met.sum() <= 1.4 * ANNOTATED * 90
    again = read_patches(batch, data, augment=False)["y"].reshape(90, -1).any(axis=1)
    np.testing.assert_array_equal(met, again)  # drawn from each patch's seed
    # Validation: a fixed third of the patches centred on the polygons, the rest the grid.
    val = data.val_specs(9)
    assert val == data.val_specs(9) and len(val) == 9
    assert val[0] == {"pair": data.val[0], "z": 0, "y": 294, "x": 694}
    batch = {k: np.array([s[k] for s in val]) for k in val[0]}
    met = read_patches(batch, data, augment=False)["y"].reshape(9, -1).any(axis=1)
    assert met.tolist() == [True] + [False] * 8
    assert data.val_specs(1) == val[:1]


def _ignore_feature(*corners: tuple[float, float]) -> dict:
    """A polygon of QuPath's class for regions to leave out."""
    ring = [list(c) for c in (*corners, corners[0])]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "Ignore*"}},
    }


def test_sparse_annotations_label_only_what_they_cover(tmp_path: Path) -> None:
    """unannotated=ignore: pixels outside every polygon are not labelled (their targets
    IGNORE, left out of the loss and the metrics); polygons of QuPath's class Ignore* are
    not labelled either way; binary with class_names makes its class's polygons 1 and the
    others' 0; multilabel labels every channel under a polygon."""
    import json

    from raysegment.data.annotations import IGNORED

    rng = np.random.default_rng(4)
    images = {f"s{i}.tif": rng.integers(0, 999, (96, 128), dtype=np.uint16) for i in range(3)}
    _write(tmp_path, images, {})
    documents = {f"s{i}": _annotations(i) for i in range(3)}
    for name, document in documents.items():
        document["features"].append(_ignore_feature((50, 20), (64, 20), (64, 60), (50, 60)))
        background = _ignore_feature((100, 70), (126, 70), (126, 94), (100, 94))
        background["properties"]["classification"]["name"] = "background"
        document["features"].append(background)  # the background's class annotated: 0
        (tmp_path / "lbl" / f"{name}.geojson").write_text(json.dumps(document))
    whole = ((0, 1), (0, 96), (0, 128))
    names = "class_names=[background,Tumor,Stroma]"
    sparse = prepare(_cfg(tmp_path, "mode=multiclass", names, "unannotated=ignore"))
    assert sparse.ignore == IGNORED and sparse.classes == 3
    classes = {"background": 0, "Tumor": 1, "Stroma": 2, "Ignore*": IGNORED}
    for k, pair in enumerate(sparse.pairs):
        want = _drawn(documents[f"s{k}"], classes, (96, 128), fill=IGNORED)
        assert {0, 1, 2, IGNORED} <= set(np.unique(want))
        np.testing.assert_array_equal(pair.label.read(0, (0,), whole)[0, 0], want)
    spec = {"pair": np.array([0]), "z": np.array([0]), "y": np.array([40]), "x": np.array([50])}
    target = read_patches(spec, sparse, augment=False)["y"][0]
    want = _drawn(documents["s0"], classes, (96, 128), fill=IGNORED)[40:72, 50:82]
    np.testing.assert_array_equal(target, np.where(want == IGNORED, IGNORE, want.astype(int)))
    assert (target == IGNORE).any() and (target >= 0).any()
    # Unannotated as background (the default): only the Ignore* polygon is not labelled;
    # binary by its one class name: Tumor 1, Stroma annotated as background.
    binary = prepare(_cfg(tmp_path, "class_names=[Tumor]", "ignore_index=300"))
    assert binary.ignore == 300 and binary.classes == 1
    got = binary.pairs[1].label.read(0, (0,), whole)[0, 0]
    binary_classes = {"Tumor": 1, "Stroma": 0, "Ignore*": 300, "background": 0}
    want = _drawn(documents["s1"], binary_classes, (96, 128))
    np.testing.assert_array_equal(got, want)
    assert {0, 1, 300} <= set(np.unique(got))
    # Multilabel: a polygon labels every channel where it lies, 1 in its class's.
    multi = prepare(
        _cfg(
            tmp_path,
            "mode=multilabel",
            "class_names=[Tumor,Stroma,background]",
            "unannotated=ignore",
        )
    )
    got = multi.pairs[2].label.read(0, (0, 1), whole)[:, 0]
    document = documents["s2"]
    marks = {"Tumor": 1, "Stroma": 1, "Ignore*": 0, "background": 1}
    labelled = _drawn(document, marks, (96, 128), fill=0) == 1
    for channel, name in ((0, "Tumor"), (1, "Stroma")):
        alone = {
            "features": [
                f for f in document["features"] if f["properties"]["classification"]["name"] == name
            ]
        }
        drawn = _drawn(alone, {name: 1}, (96, 128)).astype(bool)
        assert (got[channel][drawn & labelled] == 1).all()
        assert (got[channel][labelled & ~drawn] == 0).all()
        assert (got[channel][~labelled] == IGNORED).all()
    # Without GeoJSON labels, unannotated=ignore has nothing to act on: one line says so.
    (tmp_path / "images").mkdir()
    _ok(tmp_path / "images")
    with pytest.raises(ConfigError, match="unannotated=ignore: the labels in .* are images"):
        prepare(_cfg(tmp_path / "images", "unannotated=ignore"))


def test_sparse_annotations_put_every_patch_on_an_annotation(tmp_path: Path) -> None:
    """Where only the annotations label, every random and validation patch is centred on
    a labelling polygon (not on an Ignore* one): none is wholly unlabelled."""
    import json

    rng = np.random.default_rng(6)
    images = {f"s{i}.tif": rng.integers(0, 999, (1024, 1536), dtype=np.uint16) for i in range(2)}
    _write(tmp_path, images, {})
    square = [[700.2, 300.3], [720.1, 300.3], [720.1, 320.4], [700.2, 320.4], [700.2, 300.3]]
    document = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}},
            _ignore_feature((100, 900), (300, 900), (300, 1000), (100, 1000)),
        ],
    }
    for name in ("s0", "s1"):
        (tmp_path / "lbl" / f"{name}.geojson").write_text(json.dumps(document))
    data = prepare(_cfg(tmp_path, "train_fraction=0.5", "unannotated=ignore"))
    specs = data.train_specs(40, seed=0)
    batch = {k: np.array([s[k] for s in specs]) for k in specs[0]}
    labelled = (read_patches(batch, data, augment=False)["y"] != IGNORE).reshape(40, -1)
    assert labelled.any(axis=1).all()
    assert (read_patches(batch, data, augment=False)["y"] == 1).reshape(40, -1).any(axis=1).all()
    val = data.val_specs(9)
    assert val == [{"pair": data.val[0], "z": 0, "y": 294, "x": 694}]


def test_label_images_mark_pixels_not_labelled_by_ignore_index(tmp_path: Path) -> None:
    """ignore_index names the label value of pixels not labelled: it is no class (binary
    labels hold 0, 1 and it), its targets are IGNORE; a class's value is refused."""
    _ok(tmp_path, mode_values=(0, 1, 255))
    with pytest.raises(InputImageError, match="mode=binary needs 0 and one foreground"):
        prepare(_cfg(tmp_path))
    data = prepare(_cfg(tmp_path, "ignore_index=255"))
    assert data.ignore == 255 and data.classes == 1
    spec = {"pair": np.array([0]), "z": np.array([0]), "y": np.array([5]), "x": np.array([7])}
    label = tifffile.imread(tmp_path / "lbl" / "a0.tif")[5:37, 7:39]
    target = read_patches(spec, data, augment=False)["y"][0, 0]
    np.testing.assert_array_equal(target, np.where(label == 255, IGNORE, label > 0))
    multi = tmp_path / "multi"
    multi.mkdir()
    _ok(multi, mode_values=(0, 1, 2, 9))
    assert prepare(_cfg(multi, "mode=multiclass", "ignore_index=9")).classes == 3
    with pytest.raises(ConfigError, match="ignore_index=2 is one of the classes 0 .. 9"):
        prepare(_cfg(multi, "mode=multiclass", "ignore_index=2"))
    with pytest.raises(ConfigError, match="ignore_index=0 must be in 1 .. 65535"):
        _cfg(multi, "ignore_index=0")


def test_regions_of_a_label_image_are_a_target_channel_each(tmp_path: Path) -> None:
    """regions= (BraTS' nested tumour regions, nnU-Net's region-based training): a target
    channel a region, 1 where the label is one of its values, ``IGNORE`` where not
    labelled in every channel; the model paints each region's label, by default its one
    value no later region holds. Labels of values in no region, and regions without such
    a value, are one error naming the fix."""
    from raysegment.train.export import model_metadata

    _ok(tmp_path, mode_values=(0, 1, 2, 3, 255))
    regions = ["mode=multilabel", "regions=[[1,2,3],[2,3],[3]]", "ignore_index=255"]
    data = prepare(_cfg(tmp_path, *regions))
    assert data.classes == 3 and data.region_labels == (1, 2, 3)
    spec = {"pair": np.array([1]), "z": np.array([0]), "y": np.array([5]), "x": np.array([7])}
    label = tifffile.imread(tmp_path / "lbl" / "a1.tif")[5:37, 7:39]
    target = read_patches(spec, data, augment=False)["y"][0]
    assert target.shape == (3, 32, 32)
    for channel, values in enumerate(([1, 2, 3], [2, 3], [3])):
        want = np.where(label == 255, IGNORE, np.isin(label, values))
        np.testing.assert_array_equal(target[channel], want)
    meta = model_metadata(data)
    assert meta["region_labels"] == [1, 2, 3] and meta["activation"] == "sigmoid"
    assert meta["classes"] == ["region_1+2+3", "region_2+3", "region_3"]
    given = prepare(_cfg(tmp_path, *regions, "region_labels=[4,5,6]", "class_names=[w,c,e]"))
    assert given.region_labels == (4, 5, 6) and model_metadata(given)["classes"] == ["w", "c", "e"]
    with pytest.raises(InputImageError, match=r"has values \[255\], in no region of regions="):
        prepare(_cfg(tmp_path, *regions[:2]))
    with pytest.raises(ConfigError, match=r"region 0 holds \[1, 2\] value\(s\) no later"):
        _cfg(tmp_path, "mode=multilabel", "regions=[[1,2,3],[3]]")
    with pytest.raises(ConfigError, match=r"regions=\[\[1\]\]: a sigmoid output a region; set"):
        _cfg(tmp_path, "regions=[[1]]")
    with pytest.raises(ConfigError, match=r"give a label from 1 on for each of the 2 regions"):
        _cfg(tmp_path, "mode=multilabel", "regions=[[1,2],[2]]", "region_labels=[1]")
    with pytest.raises(ConfigError, match=r"region_labels=\[1\]: the labels of regions"):
        _cfg(tmp_path, "region_labels=[1]")


def test_an_nnunet_datasets_json_names_its_classes_regions_and_ignore_label(
    tmp_path: Path,
) -> None:
    """nnU-Net's ``dataset.json`` beside the images' directory says what the command
    does not: the classes' names, the ignore label, and with mode=multilabel a
    region-based dataset's regions and their order; what the command says stands."""
    import json

    from raysegment.train.export import model_metadata

    _ok(tmp_path, mode_values=(0, 1, 2, 3, 255))
    described = tmp_path / "dataset.json"  # beside img/, as beside imagesTr/
    classes = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3, "ignore": 255}
    described.write_text(json.dumps({"labels": classes}))
    data = prepare(_cfg(tmp_path, "mode=multiclass"))
    assert data.ignore == 255 and data.classes == 4
    assert data.class_names == ("background", "edema", "necrosis", "enhancing")
    assert prepare(_cfg(tmp_path, "mode=multiclass", "class_names=[a,b,c,d]")).class_names == (
        "a",
        "b",
        "c",
        "d",
    )
    regions = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
    described.write_text(
        json.dumps({"labels": {**regions, "ignore": 255}, "regions_class_order": [1, 2, 3]})
    )
    data = prepare(_cfg(tmp_path, "mode=multilabel"))
    assert data.regions == ((1, 2, 3), (2, 3), (3,)) and data.region_labels == (1, 2, 3)
    assert data.class_names == ("whole", "core", "enhancing") and data.ignore == 255
    assert model_metadata(data)["region_labels"] == [1, 2, 3]
    data = prepare(
        _cfg(tmp_path, "mode=multilabel", "regions=[[1,2,3],[3]]", "region_labels=[1,3]")
    )
    assert data.regions == ((1, 2, 3), (3,)) and data.class_names is None
    with pytest.raises(InputImageError, match="mode=multilabel for the regions dataset.json"):
        prepare(_cfg(tmp_path))  # regions train with mode=multilabel only


def test_input_level_trains_on_a_pyramid_level_full_resolution_labels_read_at_it(
    tmp_path: Path,
) -> None:
    """``input_level=1``: images read at their pyramid's second level; label images drawn
    at full resolution read at it (each pixel the label under its centre), labels of the
    level's size as they are; the model directory records the level and its pixel size."""
    from raysegment.train.data import AtLevel
    from raysegment.train.export import model_metadata

    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    full_labels = rng.integers(0, 2, (128, 192), dtype=np.uint8)
    for name in ("a", "b"):
        full = rng.integers(0, 999, (128, 192), dtype=np.uint16)
        with tifffile.TiffWriter(tmp_path / "img" / f"{name}.ome.tif") as tif:
            size = {"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
            options = {"tile": (32, 32), "metadata": {"axes": "YX", **size}}
            tif.write(full, subifds=1, **options)
            tif.write(full[::2, ::2], subfiletype=1, tile=(32, 32))
    tifffile.imwrite(tmp_path / "lbl" / "a.tif", full_labels)  # at full resolution
    tifffile.imwrite(tmp_path / "lbl" / "b.tif", full_labels[::2, ::2])  # at the level's
    data = prepare(_cfg(tmp_path, "input_level=1", "train_fraction=0.5"))
    first, second = data.pairs
    assert first.image.level == 1 and first.size == (64, 96)
    assert isinstance(first.label, AtLevel) and first.label.info.shape == (1, 1, 1, 64, 96)
    assert not isinstance(second.label, AtLevel)
    region = ((0, 1), (8, 40), (16, 48))
    np.testing.assert_array_equal(
        first.label.read(0, (0,), region)[0, 0], full_labels[1::2, 1::2][8:40, 16:48]
    )
    np.testing.assert_array_equal(
        second.label.read(0, (0,), region)[0, 0], full_labels[::2, ::2][8:40, 16:48]
    )
    meta = model_metadata(data)  # what infer's default input_level nears
    assert (meta["pixel_size"], meta["pixel_unit"]) == ({"y": 0.5, "x": 0.5}, "micrometer")
    with pytest.raises(ConfigError, match="input_level=-1: give 0"):
        _cfg(tmp_path, "input_level=-1")


def test_resample_size_trains_images_of_several_pixel_sizes_at_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``resample_size``: each image read at that pixel size (linearly, antialiased: torch's
    resizing), in the first image's unit (another's nanometres converted), its labels drawn
    at full resolution read at it (each pixel the label under its centre); the model
    records the size. Without it, images of differing pixel sizes are said to differ."""
    import logging

    import torch

    from raysegment.train.export import model_metadata

    rng = np.random.default_rng(4)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    images, labels = {}, {}
    for name, (h, w), size, unit in (("a", (160, 240), 0.25, "µm"), ("b", (100, 150), 400, "nm")):
        images[name] = rng.integers(0, 4000, (h, w), dtype=np.uint16)
        labels[name] = rng.integers(0, 2, (h, w), dtype=np.uint8)
        meta = {"axes": "YX", "PhysicalSizeX": size, "PhysicalSizeY": size}
        meta |= {"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit}
        tifffile.imwrite(tmp_path / "img" / f"{name}.ome.tif", images[name], metadata=meta)
        tifffile.imwrite(tmp_path / "lbl" / f"{name}.tif", labels[name])
    with caplog.at_level(logging.WARNING, logger="raysegment"):
        plain = prepare(_cfg(tmp_path, "train_fraction=0.5"))
    assert "pixel sizes differ, from 0.25 µm" in caplog.text and "to 0.4 µm" in caplog.text
    assert [p.size for p in plain.pairs] == [(160, 240), (100, 150)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raysegment"):
        data = prepare(_cfg(tmp_path, "train_fraction=0.5", "resample_size=[0.5]"))
    assert "differ" not in caplog.text
    assert [p.size for p in data.pairs] == [(80, 120), (80, 120)]
    for pair, name in zip(data.pairs, "ab", strict=True):
        full = torch.from_numpy(images[name].astype(np.float32))[None, None]
        expected = torch.nn.functional.interpolate(
            full, size=(80, 120), mode="bilinear", antialias=True, align_corners=False
        )[0, 0].numpy()
        region = ((0, 1), (16, 56), (40, 112))
        got = pair.image.read(0, (0,), region)[0, 0]
        assert got.dtype == np.uint16
        np.testing.assert_allclose(got, expected[16:56, 40:112], atol=1.0)
        (height, width) = labels[name].shape
        rows = ((np.arange(80) + 0.5) * height / 80).astype(int)
        columns = ((np.arange(120) + 0.5) * width / 120).astype(int)
        np.testing.assert_array_equal(
            pair.label.read(0, (0,), region)[0, 0], labels[name][rows][:, columns][16:56, 40:112]
        )
    meta = model_metadata(data)  # what infer's resample=true reads at
    assert (meta["pixel_size"], meta["pixel_unit"]) == ({"y": 0.5, "x": 0.5}, "micrometer")
    assert model_metadata(plain)["pixel_size"] == {"y": 0.25, "x": 0.25}
    spec = {"pair": np.array([1]), "z": np.array([0]), "y": np.array([40]), "x": np.array([80])}
    assert read_patches(spec, data, augment=False)["x"].shape == (1, 1, 32, 32)
    tifffile.imwrite(tmp_path / "img" / "b.ome.tif", images["b"])  # no pixel size
    with pytest.raises(
        InputImageError,
        match=r"b.ome.tif.*no pixel size recorded along y.*"
        r"PhysicalSizeX",
    ):
        prepare(_cfg(tmp_path, "resample_size=[0.5]"))
    with pytest.raises(ConfigError, match="with input_level=1: resampling reads"):
        _cfg(tmp_path, "resample_size=[0.5]", "input_level=1")
    with pytest.raises(ConfigError, match=r"resample_size=\[0.0\]: give one pixel size"):
        _cfg(tmp_path, "resample_size=[0]")


def test_resample_size_of_a_voxel_trains_volumes_of_several_slice_spacings_at_one(
    tmp_path: Path,
) -> None:
    """``resample_size=[z, y, x]``: volumes of 2 and 4 µm slices read at 1 µm (linearly
    along z, as torch resizes), their labels each voxel the label under its centre; the
    network is planned for the voxel read and the model records it (infer's
    ``resample=true`` reads at it)."""
    import torch

    from raysegment.train.export import model_metadata

    rng = np.random.default_rng(6)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    images, labels = {}, {}
    for name, depth, dz in (("a", 10, 2.0), ("b", 6, 4.0)):
        images[name] = rng.integers(0, 4000, (depth, 24, 32), dtype=np.uint16)
        labels[name] = rng.integers(0, 3, (depth, 24, 32), dtype=np.uint8)
        meta = {"axes": "ZYX", "PhysicalSizeZ": dz, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
        tifffile.imwrite(tmp_path / "img" / f"{name}.ome.tif", images[name], metadata=meta)
        tifffile.imwrite(tmp_path / "lbl" / f"{name}.tif", labels[name], metadata={"axes": "ZYX"})
    cfg = _cfg(
        tmp_path,
        "patch_size=[8,16,16]",
        "resample_size=[1.0,0.5,0.5]",
        "train_fraction=0.5",
        "model.arch=PlainConvUNet",
        "mode=multiclass",
    )
    data = prepare(cfg)
    assert [p.image.info.shape[2:] for p in data.pairs] == [(20, 24, 32), (24, 24, 32)]
    for pair, name in zip(data.pairs, "ab", strict=True):
        planes = pair.planes
        full = torch.from_numpy(images[name].astype(np.float32))[None, None]
        expected = torch.nn.functional.interpolate(
            full, size=(planes, 24, 32), mode="trilinear", align_corners=False
        )[0, 0].numpy()
        region = ((3, 15), (4, 20), (8, 24))
        np.testing.assert_allclose(
            pair.image.read(0, (0,), region)[0], expected[3:15, 4:20, 8:24], atol=1.0
        )
        under = ((np.arange(planes) + 0.5) * len(images[name]) / planes).astype(int)
        np.testing.assert_array_equal(
            pair.label.read(0, (0,), region)[0], labels[name][under][3:15, 4:20, 8:24]
        )
    assert data.spacing == (1.0, 0.5, 0.5)
    meta = model_metadata(data, "PlainConvUNet")
    assert (meta["pixel_size"], meta["pixel_unit"]) == (
        {"z": 1.0, "y": 0.5, "x": 0.5},
        "micrometer",
    )
    with pytest.raises(ConfigError, match=r"resample_size=\[1.0, 1.0, 1.0, 1.0\]: give one"):
        _cfg(tmp_path, "resample_size=[1,1,1,1]")


def test_resample_size_draws_geojson_annotations_at_the_pixel_size_trained_at(
    tmp_path: Path,
) -> None:
    """QuPath's annotations (in the slide's full-resolution pixels) over images read at
    another pixel size: each pixel read takes the class its centre lies in."""
    import json

    rng = np.random.default_rng(5)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    documents = {f"s{i}": _annotations(i) for i in range(2)}
    for name, document in documents.items():
        meta = {"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
        image = rng.integers(0, 999, (96, 128), dtype=np.uint16)
        tifffile.imwrite(tmp_path / "img" / f"{name}.ome.tif", image, metadata=meta)
        (tmp_path / "lbl" / f"{name}.geojson").write_text(json.dumps(document))
    names = "class_names=[background,Tumor,Stroma]"
    data = prepare(_cfg(tmp_path, "mode=multiclass", names, "resample_size=[0.4]"))

    def shrunk(value: object) -> object:  # coordinates in pixels of 0.4 µm
        if isinstance(value, list) and value and isinstance(value[0], (int, float)):
            return [value[0] / 1.6, value[1] / 1.6, *value[2:]]
        return [shrunk(v) for v in value] if isinstance(value, list) else value

    for pair, (name, document) in zip(data.pairs, documents.items(), strict=True):
        assert pair.size == (60, 80)
        features = []
        for feature in document["features"]:
            geometry = feature["geometry"]
            shape = {**geometry, "coordinates": shrunk(geometry["coordinates"])}
            features.append({**feature, "geometry": shape})
        want = _drawn({"features": features}, {"Tumor": 1, "Stroma": 2}, (60, 80))
        assert set(np.unique(want)) == {0, 1, 2}, name
        got = pair.label.read(0, (0,), ((0, 1), (0, 60), (0, 80)))[0, 0]
        np.testing.assert_array_equal(got, want)


def test_a_planned_patch_larger_than_an_annotated_slide_is_named(tmp_path: Path) -> None:
    """nnU-Net's planned patch pads images smaller than it, but not those GeoJSON
    annotations label (their polygons place the patches): such an image is named."""
    import json

    rng = np.random.default_rng(4)
    shapes = [(96, 128), (96, 128), (64, 128)]
    images = {f"s{i}.tif": rng.integers(0, 999, s, dtype=np.uint16) for i, s in enumerate(shapes)}
    _write(tmp_path, images, {})
    for i in range(3):
        (tmp_path / "lbl" / f"s{i}.geojson").write_text(json.dumps(_annotations(i)))
    planned = ["plan=2d", "patch_size=null", "model.arch=PlainConvUNet"]
    with pytest.raises(InputImageError, match=r"s2.tif: image of 64 x 128 is smaller than"):
        prepare(_cfg(tmp_path, *planned, "mode=multiclass", "class_names=[bg,Tumor,Stroma]"))
