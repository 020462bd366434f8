"""NIfTI inputs: CT and MRI volumes, their voxel size and origin, scaled values."""

from __future__ import annotations

import gzip
import itertools
import struct
import sys

import nibabel
import numpy as np
import pytest
import tifffile
import zarr

from raysegment.data.inputs import resolve_inputs
from raysegment.data.sources import open_sources
from raysegment.errors import ConfigError, InputImageError
from tests.conftest import random_image, volume_output, whole_image_prediction


def write_nifti(path, volume: np.ndarray, affine: np.ndarray, **header: float) -> None:
    """``volume`` (z, y, x, as raysegment reads it) as a NIfTI file of x, y, z voxels
    (as scanners' converters write them), millimetres, ``header`` fields beside."""
    image = nibabel.Nifti1Image(volume.transpose(2, 1, 0), affine)
    image.header.set_xyzt_units("mm", "sec")
    for key, value in header.items():
        image.header[key] = value
    nibabel.save(image, str(path))


@pytest.mark.parametrize("name", ["case_0000.nii.gz", "case_0000.nii"])
def test_a_ct_volume_reads_regions_with_its_voxel_size_and_origin(tmp_path, name) -> None:
    """A CT as dcm2niix writes it (int16 Hounsfield units, anisotropic voxels): regions
    read in z, y, x; voxel size in millimetres; its origin from the affine."""
    ct = (random_image((9, 40, 36)).astype(np.int16) - 1024).astype(np.int16)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-120.0, 30.5, 11.25]
    write_nifti(tmp_path / name, ct, affine)
    assert resolve_inputs(str(tmp_path)) == [str(tmp_path / name)]
    (source,) = open_sources(tmp_path / name)
    assert source.kind == "nifti" and source.name == "case_0000" and source.axes == "xyz"
    assert source.info.shape == (1, 1, 9, 40, 36) and source.info.dtype == np.int16
    assert source.info.scale == pytest.approx({"z": 2.5, "y": 0.8, "x": 0.7})
    assert source.info.units == dict.fromkeys("zyx", "millimeter")
    assert source.info.origin == pytest.approx({"x": -120.0, "y": 30.5, "z": 11.25})
    region = ((2, 8), (7, 40), (0, 33))
    np.testing.assert_array_equal(source.read(0, (0,), region)[0], ct[2:8, 7:40, :33])
    with pytest.raises(InputImageError, match="has 1 resolution level"):
        open_sources(tmp_path / name, level=1)


def _regions(shape: tuple[int, ...], rng: np.random.Generator, count: int) -> list[tuple]:
    """``count`` random non-empty boxes of an array of ``shape``, as slices."""
    boxes = []
    for _ in range(count):
        ends = [sorted(rng.choice(n + 1, 2, replace=False)) for n in shape]
        boxes.append(tuple(slice(int(a), int(b)) for a, b in ends))
    return boxes


@pytest.mark.parametrize(
    ("shape", "stored", "axes", "scaled"),
    [
        ((17, 23, 9), "<i2", None, False),  # a CT: x, y, z
        ((13, 11, 7, 3), ">f4", None, False),  # big-endian, time points
        ((6, 7, 5, 2, 3), "<u2", None, True),  # time points, components, scaled
        ((31, 29), "u1", None, True),  # an image: y is the slab axis
        ((9, 10, 8), "<i2", "zyx", False),  # axes given: x is the slowest spatial axis
    ],
)
def test_gzipped_regions_read_as_nibabels_own_in_any_order(
    tmp_path, monkeypatch, shape, stored, axes, scaled
) -> None:
    """A ``.nii.gz`` is read a slab of whole planes at a time, kept by the process: every
    region, in any order, in pieces where a slab is over the process's bytes, has the
    values and type nibabel's proxy gives (scaled: float32 of nibabel's scaling)."""
    import raysegment.data.nifti as nifti

    rng = np.random.default_rng(len(shape))
    image = nibabel.Nifti1Image(rng.integers(0, 250, shape).astype(stored), np.eye(4))
    image.set_data_dtype(np.dtype(stored))
    if scaled:
        image.header.set_slope_inter(0.37, -11.5)
    nibabel.save(image, str(tmp_path / "v.nii.gz"))
    (source,) = open_sources(tmp_path / "v.nii.gz", axes=axes)
    proxy = nibabel.load(str(tmp_path / "v.nii.gz")).dataobj
    assert source.info.dtype == (np.float32 if scaled else np.dtype(stored).newbyteorder("="))
    size = np.dtype(stored).itemsize
    for slab in (256 * 2**20, 3 * size * shape[0], 2 * size):  # whole planes, rows, values
        monkeypatch.setattr(nifti, "SLAB_BYTES", slab)
        for index in _regions(shape, rng, 25):
            got, want = source.handle[index], np.asarray(proxy[index]).astype(source.info.dtype)
            assert got.dtype == source.info.dtype
            np.testing.assert_array_equal(got, want, err_msg=str(index))


def test_gzip_reads_anywhere_from_its_checkpoints(tmp_path, monkeypatch) -> None:
    """A gzip file's bytes read at any offset, in any order, across its members (files
    gzipped in parts and joined); a read behind the last goes on from a checkpoint, not
    from the file's start; a read past the end is the error of a short file."""
    import raysegment.data.nifti as nifti

    monkeypatch.setattr(nifti, "_CHECKPOINT", 5000)
    monkeypatch.setattr(nifti, "_INPUT", 700)
    rng = np.random.default_rng(3)
    data = rng.integers(0, 40, 60_000).astype(np.uint8).tobytes()
    (tmp_path / "two.gz").write_bytes(gzip.compress(data[:25_000]) + gzip.compress(data[25_000:]))
    reader = nifti._Gunzip(str(tmp_path / "two.gz"))
    fed: list[int] = []
    read = reader.file.read
    reader.file.read = lambda n: fed.append(n) or read(n)  # type: ignore[method-assign]
    for _ in range(200):
        start = int(rng.integers(0, len(data)))
        count = int(rng.integers(1, min(9000, len(data) - start) + 1))
        out = bytearray(count)
        reader.readinto(start, memoryview(out))
        assert bytes(out) == data[start : start + count], (start, count)
    assert len(reader.checkpoints) >= len(data) // 5000  # one a checkpoint's distance
    fed.clear()
    reader.readinto(len(data) - 10, memoryview(bytearray(10)))
    reader.readinto(100, memoryview(bytearray(10)))  # behind: from the first checkpoint
    assert len(fed) <= 5000 // 700 + 3
    with pytest.raises(EOFError, match="ends at byte 60000"):
        reader.readinto(len(data) - 5, memoryview(bytearray(10)))


def test_a_gzipped_slab_is_decompressed_once_for_its_regions(tmp_path, monkeypatch) -> None:
    """The four (y, x) regions of a z range decompress its planes once, the next z range
    its own; a file written again at the same path is read anew, not from the slab."""
    import raysegment.data.nifti as nifti

    volume = random_image((12, 32, 40)).astype(np.int16)
    write_nifti(tmp_path / "ct.nii.gz", volume, np.eye(4))
    decompressed: list[int] = []
    read = nifti._Stream.read

    def counted(self, start: int, count: int, dtype: np.dtype) -> np.ndarray:
        decompressed.append(count)
        return read(self, start, count, dtype)

    monkeypatch.setattr(nifti._Stream, "read", counted)
    (source,) = open_sources(tmp_path / "ct.nii.gz")
    for z in ((0, 7), (5, 12)):  # blocks' regions overlap by their halo
        for y, x in itertools.product(((0, 20), (12, 32)), ((0, 24), (16, 40))):
            got = source.read(0, (0,), (z, y, x))[0]
            np.testing.assert_array_equal(got, volume[slice(*z), slice(*y), slice(*x)])
    assert decompressed == [7 * 32 * 40, 7 * 32 * 40]
    write_nifti(tmp_path / "ct.nii.gz", volume[::-1].copy(), np.eye(4))
    (again,) = open_sources(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(
        again.read(0, (0,), ((5, 12), (0, 8), (0, 8)))[0], volume[6::-1, :8, :8]
    )


def test_gzipped_files_read_at_once_by_threads_past_the_files_kept(tmp_path) -> None:
    """Threads reading more ``.nii.gz`` files than a process keeps open each get their
    regions' values: a file let go while a thread reads it is not closed under it."""
    from concurrent.futures import ThreadPoolExecutor

    volumes = [random_image((8, 24, 20), seed=k).astype(np.int16) for k in range(5)]
    sources = []
    for k, volume in enumerate(volumes):
        write_nifti(tmp_path / f"v{k}.nii.gz", volume, np.eye(4))
        sources += open_sources(tmp_path / f"v{k}.nii.gz")
    rng = np.random.default_rng(0)
    reads = [(int(rng.integers(5)), int(rng.integers(7))) for _ in range(400)]

    def read(job: tuple[int, int]) -> bool:
        k, z = job
        got = sources[k].read(0, (0,), ((z, z + 2), (3, 21), (0, 20)))[0]
        return np.array_equal(got, volumes[k][z : z + 2, 3:21])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, reads))


def test_scaled_values_flipped_axes_time_and_components(tmp_path) -> None:
    """Stored values with a slope and an intercept read as float32 values; an affine that
    flips axes (radiological order) keeps the file's voxel order and gives no origin; a
    fourth dimension is time, a fifth a voxel's components (channels)."""
    stored = random_image((5, 12, 10)).astype(np.uint16)
    write_nifti(tmp_path / "hu.nii", stored, np.diag([-0.5, -0.5, 1.0, 1.0]))
    with open(tmp_path / "hu.nii", "r+b") as f:  # scl_slope, scl_inter: header bytes 112-119
        f.seek(112)
        f.write(struct.pack("<ff", 0.5, -1024.0))
    (source,) = open_sources(tmp_path / "hu.nii")
    assert source.info.dtype == np.float32 and source.info.origin == {}
    got = source.read(0, (0,), ((0, 5), (0, 12), (0, 10)))[0]
    np.testing.assert_array_equal(got, stored.astype(np.float32) * 0.5 - 1024)
    series = random_image((3, 2, 6, 8, 7)).astype(np.float32)  # t, c, z, y, x
    nibabel.save(
        nibabel.Nifti1Image(series.transpose(4, 3, 2, 0, 1), np.eye(4)),
        str(tmp_path / "dwi.nii.gz"),
    )
    (source,) = open_sources(tmp_path / "dwi.nii.gz")
    assert source.axes == "xyztc" and source.info.shape == (3, 2, 6, 8, 7)
    got = source.read(2, (1,), ((1, 5), (0, 8), (2, 7)))
    np.testing.assert_array_equal(got[0], series[2, 1, 1:5, :, 2:7])


def test_broken_and_unreadable_files_and_a_missing_package_fail_in_one_line(
    tmp_path, monkeypatch
) -> None:
    volume = random_image((4, 16, 16)).astype(np.int16)
    write_nifti(tmp_path / "whole.nii.gz", volume, np.eye(4))
    data = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(gzip.decompress(data)[:600]))
    (source,) = open_sources(tmp_path / "cut.nii.gz")
    with pytest.raises(InputImageError, match="cut.nii.gz: cannot read its voxels"):
        source.read(0, (0,), ((0, 4), (0, 16), (0, 16)))
    (tmp_path / "junk.nii").write_bytes(b"\0" * 100)
    with pytest.raises(InputImageError, match="junk.nii: not a readable NIfTI file"):
        open_sources(tmp_path / "junk.nii")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(InputImageError, match=r"needs nibabel: pip install 'raysegment\[nifti\]'"):
        open_sources(tmp_path / "whole.nii.gz")


@pytest.mark.usefixtures("ray_session")
def test_infer_segments_a_ct_into_ome_zarr_in_millimetres(tmp_path, make_model) -> None:
    from raysegment.infer import infer

    ct = random_image((10, 48, 40)).astype(np.float32)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [5.0, 6.0, 7.0]
    write_nifti(tmp_path / "lung_001.nii.gz", ct, affine)
    model, module = make_model(dims=3, out_ch=1)
    image = tmp_path / "lung_001.nii.gz"
    ms, got = volume_output(tmp_path, image, model, finalize={"nifti": True})
    assert [a.get("unit") for a in ms["axes"][1:]] == ["millimeter"] * 3
    scale, moved = ms["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == pytest.approx([1.0, 2.5, 0.7, 0.7])
    assert moved["translation"] == pytest.approx([0.0, 7.0, 6.0, 5.0])
    np.testing.assert_allclose(got, whole_image_prediction(module, ct), rtol=1e-5, atol=1e-4)
    # The NIfTI copy: the same voxels in the input's grid, header and affine.
    copy = nibabel.load(str(tmp_path / "out" / "lung_001.nii.gz"))
    np.testing.assert_array_equal(
        copy.affine, nibabel.load(str(tmp_path / "lung_001.nii.gz")).affine
    )
    assert copy.header.get_xyzt_units() == ("mm", "sec") and copy.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(copy.dataobj).transpose(2, 1, 0), got[0])
    tifffile.imwrite(tmp_path / "slice.tif", ct[0])
    with pytest.raises(ConfigError, match="finalize.nifti=true: .*slice.tif is no NIfTI image"):
        infer(
            input=str(tmp_path / "slice.tif"),
            model=str(model),
            output=str(tmp_path / "out2"),
            finalize={"nifti": True},
            progress=False,
        )


def test_the_nifti_copy_of_several_channels_is_a_fifth_dimension(tmp_path) -> None:
    """Probabilities of two classes: x, y, z, a time point, two components; the input's
    flipped affine kept as it is; a .nii input gets a .nii copy."""
    from raysegment.post.nifti import nifti_name
    from raysegment.post.nifti import write_nifti as write_copy

    volume = random_image((6, 20, 16)).astype(np.int16)
    flipped = np.diag([-0.5, -0.5, 1.5, 1.0])
    write_nifti(tmp_path / "in.nii", volume, flipped)
    probabilities = np.random.default_rng(0).random((2, 6, 20, 16)).astype(np.float32)
    zarr.create_array(str(tmp_path / "p.zarr"), data=probabilities, chunks=(1, 2, 20, 16))
    assert nifti_name(str(tmp_path / "in.nii")) == ".nii"
    write_copy(
        str(tmp_path / "p.zarr"),
        "czyx",
        str(tmp_path / "in.nii"),
        str(tmp_path / "p.nii"),
        (6, 20, 16),
    )
    copy = nibabel.load(str(tmp_path / "p.nii"))
    assert copy.shape == (16, 20, 6, 1, 2) and not (tmp_path / "p.nii.partial").exists()
    np.testing.assert_array_equal(copy.affine, flipped)
    np.testing.assert_array_equal(
        np.asarray(copy.dataobj)[:, :, :, 0].transpose(3, 2, 1, 0), probabilities
    )


def _classes_back(labels: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The oracle of classes put back in a grid of ``shape``: each class's indicator
    resized by torch's trilinear interpolation, each voxel the class whose is highest
    (ties to the higher), and by how much it leads the next (ties' rounding differs)."""
    import torch

    values = np.unique(labels)
    onehot = torch.from_numpy((labels[None] == values[:, None, None, None]).astype(np.float32))
    weights = torch.nn.functional.interpolate(
        onehot[None], size=shape, mode="trilinear", align_corners=False
    )[0].numpy()
    chosen = len(values) - 1 - np.argmax(weights[::-1], axis=0)
    top = np.sort(weights, axis=0)
    margin = top[-1] - top[-2] if len(values) > 1 else np.ones(shape, np.float32)
    return values[chosen], margin


def test_a_resampled_output_goes_back_to_the_inputs_voxels(tmp_path, monkeypatch) -> None:
    """An output of 3 x 8 x 5 voxels over a 6 x 20 x 16 input (``resample=true``), put
    back in the input's grid slab by slab (two planes each), as nnU-Net's predictions:
    probabilities interpolated linearly (torch's trilinear resizing), labels each voxel
    the class whose indicator interpolates highest (nnU-Net's resizing of segmentations),
    not the class under its centre."""
    import torch

    from raysegment.post import nifti as post_nifti

    write_nifti(tmp_path / "in.nii.gz", random_image((6, 20, 16)), np.diag([0.5, 0.5, 1.5, 1]))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (1, 3, 8, 5)).astype(np.uint8)
    probabilities = rng.random((2, 3, 8, 5), dtype=np.float32)
    monkeypatch.setattr(post_nifti, "_SLAB", 2 * 20 * 16 * 4)
    copies = {}
    for name, data, classes in (("l", labels, True), ("p", probabilities, False)):
        zarr.create_array(str(tmp_path / f"{name}.zarr"), data=data, chunks=(1, 2, 4, 5))
        copy = tmp_path / f"{name}.nii.gz"
        post_nifti.write_nifti(
            str(tmp_path / f"{name}.zarr"),
            "czyx",
            str(tmp_path / "in.nii.gz"),
            str(copy),
            (6, 20, 16),
            classes,
        )
        copies[name] = np.asarray(nibabel.load(str(copy)).dataobj)
    got = copies["l"].transpose(2, 1, 0)
    want, margin = _classes_back(labels[0], (6, 20, 16))
    clear = margin > 1e-4
    assert clear.mean() > 0.95 and got.dtype == np.uint8
    np.testing.assert_array_equal(got[clear], want[clear])
    under = [
        np.minimum((2 * np.arange(n) + 1) * m // (2 * n), m - 1)
        for n, m in ((6, 3), (20, 8), (16, 5))
    ]
    assert (got != labels[0][np.ix_(*under)]).mean() > 0.1  # not the class under its centre
    # A tie (the middle of three voxels over two) goes to the higher class, as nnU-Net's
    # ``>= 0.5`` gives a mask's voxel halfway between in and out.
    write_nifti(tmp_path / "three.nii", np.zeros((1, 1, 3), np.int16), np.eye(4))
    zarr.create_array(str(tmp_path / "two.zarr"), data=np.array([[[[0, 1]]]], np.uint8))
    post_nifti.write_nifti(
        str(tmp_path / "two.zarr"),
        "czyx",
        str(tmp_path / "three.nii"),
        str(tmp_path / "two.nii"),
        (1, 1, 3),
        True,
    )
    assert np.asarray(nibabel.load(str(tmp_path / "two.nii")).dataobj).ravel().tolist() == [0, 1, 1]
    got = copies["p"].transpose(4, 3, 2, 1, 0)[:, 0]  # x, y, z, t, c -> c, z, y, x
    want = torch.nn.functional.interpolate(
        torch.from_numpy(probabilities)[None], size=(6, 20, 16), mode="trilinear"
    )[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Labels of the probabilities once back (``finalize.nifti_labels``): their argmax.
    labelled = tmp_path / "pl.nii.gz"
    post_nifti.write_nifti(
        str(tmp_path / "p.zarr"),
        "czyx",
        str(tmp_path / "in.nii.gz"),
        str(labelled),
        (6, 20, 16),
        labels=post_nifti.labels_of(0.5),
    )
    got = np.asarray(nibabel.load(str(labelled)).dataobj).transpose(2, 1, 0)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want.argmax(0))
    # Of logits once back (``finalize.mode=raw``): through the activation first.
    logits = rng.normal(0, 2, (1, 3, 8, 5)).astype(np.float32)
    got = post_nifti.labels_of(0.7, (), "sigmoid")(logits)
    np.testing.assert_array_equal(got, torch.sigmoid(torch.from_numpy(logits)).numpy() > 0.7)
    assert (got != (logits > 0.7)).any()


@pytest.mark.usefixtures("ray_session")
def test_a_resampled_ct_run_writes_its_nifti_copy_in_the_cts_voxels(tmp_path, make_model) -> None:
    """A CT of 2.5 x 0.7 x 0.7 mm voxels segmented at 5 x 1.4 x 1.4 mm (``resample_size``):
    the OME-Zarr at that voxel size, the NIfTI copy in the CT's own grid and affine, the
    mask interpolated back."""
    ct = random_image((10, 48, 40)).astype(np.int16)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    write_nifti(tmp_path / "ct.nii.gz", ct, affine)
    model, _ = make_model(dims=3, out_ch=1)
    ms, got = volume_output(
        tmp_path,
        tmp_path / "ct.nii.gz",
        model,
        resample=True,
        resample_size=[5.0, 1.4, 1.4],
        finalize={"nifti": True, "mode": "mask"},
    )
    assert got.shape == (1, 5, 24, 20) and got.any() and not got.all()
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx(
        [1.0, 5.0, 1.4, 1.4]
    )
    copy = nibabel.load(str(tmp_path / "out" / "ct.nii.gz"))
    np.testing.assert_array_equal(copy.affine, nibabel.load(str(tmp_path / "ct.nii.gz")).affine)
    assert copy.shape == (40, 48, 10)
    want, margin = _classes_back(got[0], (10, 48, 40))  # interpolated, not in steps of 2
    clear = margin > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(np.asarray(copy.dataobj).transpose(2, 1, 0)[clear], want[clear])


def test_an_nnunet_dataset_pairs_its_images_with_their_labels(tmp_path) -> None:
    """nnU-Net's layout: imagesTr/<case>_0000.nii.gz (the channel's suffix) beside
    labelsTr/<case>.nii.gz pair by the images' capture group; each plane trains."""
    pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")
    from raysegment.config import TrainConfig, load_config
    from raysegment.train.data import prepare, read_patches

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    volumes = {}
    for case in ("lung_001", "lung_002", "lung_003"):
        ct = random_image((4, 40, 48)).astype(np.int16)
        label = (ct > np.median(ct)).astype(np.uint8)
        write_nifti(tmp_path / "imagesTr" / f"{case}_0000.nii.gz", ct, np.eye(4))
        write_nifti(tmp_path / "labelsTr" / f"{case}.nii.gz", label, np.eye(4))
        volumes[case] = label
    cfg = load_config(
        TrainConfig,
        (),
        [
            f"images.dir={tmp_path / 'imagesTr'}",
            r"images.pattern=(.*)_0000\.nii\.gz",
            f"labels.dir={tmp_path / 'labelsTr'}",
            "output=o",
            "patch_size=32",
        ],
    )
    data = prepare(cfg)
    assert [p.label.name for p in data.pairs] == ["lung_001", "lung_002", "lung_003"]
    assert [p.planes for p in data.pairs] == [4, 4, 4]
    spec = {"pair": np.array([1]), "z": np.array([2]), "y": np.array([5]), "x": np.array([9])}
    target = read_patches(spec, data, augment=False)["y"][0, 0]
    np.testing.assert_array_equal(target, volumes["lung_002"][2, 5:37, 9:41])


def test_an_nnunet_dataset_of_channel_files_trains_on_each_cases_files(tmp_path) -> None:
    """nnU-Net's layout of cases of several files: imagesTr/<case>_0000.nii.gz,
    <case>_0001.nii.gz beside labelsTr/<case>.nii.gz pair as one image of the case's
    channels, in the order of their digits; the model's metadata names the channels as
    dataset.json does, so ``raysegment infer`` reads imagesTs' cases so. A case without
    a channel file the others have is one error naming it; images named as channel files
    that pair by their own names stay images."""
    pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")
    import json

    from raysegment.config import TrainConfig, load_config
    from raysegment.data.channels import ChannelFilesSource
    from raysegment.data.pairs import pair_images
    from raysegment.train.data import prepare, read_patches
    from raysegment.train.export import model_metadata

    root = tmp_path / "Dataset002_Brain"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    channels = {"0": "T1", "1": "FLAIR"}
    (root / "dataset.json").write_text(json.dumps({"channel_names": channels}))
    volumes = {}
    for k, case in enumerate(("brain_001", "brain_002", "brain_003")):
        mri = np.stack([random_image((4, 40, 48), seed=2 * k + c) + 300 * c for c in (0, 1)])
        # the second channel (of the case's _0001 file) gives the label
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", (mri[1] % 2).astype(np.uint8), np.eye(4))
        for c in (1, 0):  # listed out of order
            write_nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", mri[c], np.eye(4))
        volumes[case] = mri
    overrides = [
        f"images.dir={root / 'imagesTr'}",
        f"labels.dir={root / 'labelsTr'}",
        "output=o",
        "patch_size=32",
    ]
    data = prepare(load_config(TrainConfig, (), overrides))
    assert [p.label.name for p in data.pairs] == ["brain_001", "brain_002", "brain_003"]
    assert all(isinstance(p.image, ChannelFilesSource) for p in data.pairs)
    assert [p.image.name for p in data.pairs] == ["brain_001", "brain_002", "brain_003"]
    assert data.channels == (0, 1) and data.channel_files == ("T1", "FLAIR")
    assert model_metadata(data)["channel_files"] == ["T1", "FLAIR"]
    spec = {"pair": np.array([1]), "z": np.array([2]), "y": np.array([5]), "x": np.array([9])}
    patch = read_patches(spec, data, augment=False)
    want = (volumes["brain_002"][:, 2, 5:37, 9:41] - np.array(data.mean)[:, None, None]) / np.array(
        data.std
    )[:, None, None]
    np.testing.assert_allclose(patch["x"][0], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(patch["y"][0, 0], volumes["brain_002"][1, 2, 5:37, 9:41] % 2)
    # one channel of the two: no channel files named (infer would want both)
    data = prepare(load_config(TrainConfig, (), [*overrides, "channels=[1]"]))
    assert data.channel_files is None and "channel_files" not in model_metadata(data)
    (root / "imagesTr" / "brain_003_0001.nii.gz").unlink()
    with pytest.raises(InputImageError, match=r"brain_003_XXXX: channel files _0000; the cases"):
        prepare(load_config(TrainConfig, (), overrides))
    # images named so that pair by their own names: each its own image
    for case in ("brain_001_0000", "brain_002_0000"):
        write_nifti(
            root / "labelsTr" / f"{case}.nii.gz", np.zeros((4, 40, 48), np.uint8), np.eye(4)
        )
    named = r"brain_00[12]_0000\.nii\.gz"
    pairs = pair_images(str(root / "imagesTr"), named, str(root / "labelsTr"), named)
    assert [[f.rsplit("/", 1)[1] for f in files] for files, _ in pairs] == [
        ["brain_001_0000.nii.gz"],
        ["brain_002_0000.nii.gz"],
    ]
