"""3D training: nnU-Net's networks on (z, y, x) patches of volumes, a model directory that
infer runs on a larger volume in 3D tiles."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")
pytest.importorskip("dynamic_network_architectures", reason="needs the train extra")

from raysegment.errors import ConfigError, InputImageError  # noqa: E402
from raysegment.train import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_session")


def spheres(
    shape: tuple[int, int, int], rng: np.random.Generator, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bright balls on a noisy background, and their mask."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, bool)
    for _ in range(count):
        c, r = [rng.integers(0, s) for s in shape], rng.integers(3, 7)
        mask |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    image = rng.normal(100, 20, shape) + mask * 300
    return image.astype(np.uint16), mask.astype(np.uint8)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 volume/label pairs (ZYX OME-TIFF stacks of 2 x 0.5^2 µm voxels, of different
    depths; the labels plain TIFFs) and a larger volume with its truth."""
    root = tmp_path_factory.mktemp("volumes")
    (root / "img").mkdir()
    (root / "lbl").mkdir()
    rng = np.random.default_rng(3)
    voxel = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
    for i in range(5):
        image, mask = spheres((20 + 2 * i, 48, 48), rng, 10)
        tifffile.imwrite(root / "img" / f"v{i}.ome.tif", image, ome=True, metadata=voxel)
        tifffile.imwrite(root / "lbl" / f"v{i}_mask.tif", mask, metadata={"axes": "ZYX"})
    image, mask = spheres((40, 96, 80), rng, 40)
    tifffile.imwrite(root / "big.ome.tif", image, ome=True, metadata=voxel)
    np.save(root / "big_truth.npy", mask)
    return root


def _cfg(data: Path, out: Path, **extra: object) -> dict:
    return {
        "images": {"dir": str(data / "img")},
        "labels": {"dir": str(data / "lbl"), "pattern": r"(.*)_mask\.tif"},
        "output": str(out),
        "model": {"arch": "PlainConvUNet", "features": 4},
        "patch_size": [16, 32, 32],
        "patches_per_epoch": 64,
        "val_patches": 8,
        "batch_size": 4,  # 16 steps an epoch: validation IoU 0.89 after 8
        "lr": 0.01,
        "max_epochs": 8,
        "device": "cpu",
        "threads": 1,  # the suite runs up to 4 test processes on 2 cores
    } | extra


@pytest.fixture(scope="module")
def trained3d(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("model3d") / "unet"
    return out, train(_cfg(volumes, out, augment="nnunet"))  # nnU-Net's augmentations


def test_a_3d_network_trains_on_volumes_and_infer_segments_a_larger_one(
    trained3d, volumes, tmp_path
) -> None:
    from raysegment.infer import infer

    out, summary = trained3d
    assert summary.best_metric > 0.85, summary.history
    meta = json.loads((out / "raysegment.json").read_text())
    # As nnU-Net plans the 2 x 0.5^2 µm voxels: y and x halved until they are within 2x
    # of z, then all three; kernels of 1 along z until then. Tiles: multiples of 2, 8, 8.
    assert meta["spatial_dims"] == 3 and meta["patch_size"] == [16, 32, 32]
    assert meta["tile_steps"] == [[2, 2], [8, 8], [8, 8]]
    info = json.loads((out / "model.json").read_text())
    assert info["strides"] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert info["kernels"] == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert info["spacing"] == [2.0, 0.5, 0.5] and info["features"] == 4
    traced = torch.jit.load(str(out / "model.pth"))
    assert traced(torch.zeros(1, 1, 8, 16, 24)).shape == (1, 1, 8, 16, 24)

    summary = infer(
        input=str(volumes / "big.ome.tif"),
        model=str(out),
        output=str(tmp_path),
        progress=False,
        chunks=[32],
        finalize={"mode": "mask"},
    )
    pred = zarr.open_array(str(tmp_path / "big.ome.zarr" / "0"), mode="r")[:]
    assert pred.shape == (1, 40, 96, 80)  # c, z, y, x
    pred, truth = pred[0] > 0, np.load(volumes / "big_truth.npy") > 0
    iou = float((pred & truth).sum() / (pred | truth).sum())
    assert iou > 0.9, iou


def test_data_parallel_workers_train_nnunets_network_without_deep_supervision(
    volumes, tmp_path
) -> None:
    """Without deep supervision the decoder's coarser output convolutions take no part:
    DistributedDataParallel, told so, steps; else its second step raised. nnU-Net's loss
    gathers the workers' batch Dice in their steps, not in their validations (of unequal
    batches: a collective there would wait forever)."""
    summary = train(
        _cfg(
            volumes,
            tmp_path / "out",
            model={"arch": "PlainConvUNet", "features": 4, "deep_supervision": False},
            loss="DiceCELoss",
            oversample_by="batch",  # each worker's batches' last patches on foreground
            num_workers=2,
            threads=None,
            patches_per_epoch=8,
            val_patches=4,
            batch_size=2,
            max_epochs=2,
        )
    )
    assert summary.epochs == 2


def test_a_3d_patch_refuses_2d_networks_and_thin_volumes(volumes, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"trains a 3D network and model.arch=Unet is 2D"):
        train(_cfg(volumes, tmp_path / "a", model={"arch": "Unet"}))
    with pytest.raises(InputImageError, match=r"v0.ome.tif: image of 20 plane\(s\) is thinner"):
        train(_cfg(volumes, tmp_path / "b", patch_size=[24, 32, 32]))
    with pytest.raises(ConfigError, match=r"patch_size=\[4, 4, 6\]: too small for"):
        train(_cfg(volumes, tmp_path / "c", patch_size=[4, 4, 6]))
    with pytest.raises(
        ConfigError, match=r"halves it \[1, 3, 3\] times .* patch_size=\[18, 32, 32\]$"
    ):
        train(_cfg(volumes, tmp_path / "d", patch_size=[17, 32, 32]))
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_pretrained_3d_weights_need_the_same_network(trained3d, volumes, tmp_path) -> None:
    out, _ = trained3d
    with pytest.raises(ConfigError, match=r"is a PlainConvUNet of 4 features; set .*features=4"):
        train(
            _cfg(
                volumes,
                tmp_path / "a",
                pretrained=str(out),
                model={"arch": "PlainConvUNet"},
                max_epochs=9,
            )
        )
    with pytest.raises(
        ConfigError, match=r"trained on patches of \[16, 32, 32\] .*give patch_size="
    ):
        train(
            _cfg(
                volumes, tmp_path / "b", pretrained=str(out), patch_size=[16, 16, 16], max_epochs=9
            )
        )
    # Its 8 epochs go on: max_epochs=8 would add none (a traceback after Ray's start before).
    with pytest.raises(ConfigError, match=r"trained 8 epoch\(s\) and max_epochs=8 adds none"):
        train(_cfg(volumes, tmp_path / "c", pretrained=str(out)))


def test_a_3d_model_packaged_for_the_bioimage_model_zoo(trained3d, volumes, tmp_path) -> None:
    """``raysegment package`` of a 3D model: a package bioimageio.core tests as the zoo does
    (its test output reproduced, the sizes it declares run: multiples of the network's
    strides along z, y and x), which infer runs as the model directory, to the same mask:
    in tiles of the training's patch by default, as the package records it (the network's
    instance norms make its output depend on the tile)."""
    from raysegment.infer import infer
    from tests.train.conftest import zoo_package

    out, _ = trained3d
    archive = tmp_path / "m.zip"
    rdf, files = zoo_package(out, archive)
    assert np.load(io.BytesIO(files["test_input.npy"])).shape == (1, 1, 16, 32, 32)
    assert "PlainConvUNet (3D, 4 features, strides [[1, 1, 1], [1, 2, 2]," in (
        files["README.md"].decode()
    )
    assert rdf["description"].startswith("PlainConvUNet (3D, 4 features; nnU-Net's network)")
    axes = rdf["inputs"][0]["axes"]
    assert [a.get("id") for a in axes] == [None, None, "z", "y", "x"]
    assert [a["size"] for a in axes[2:]] == [
        {"min": 2, "step": 2},
        {"min": 8, "step": 8},
        {"min": 8, "step": 8},
    ]
    assert "3d" in rdf["tags"] and rdf["cite"][0]["doi"] == "10.1038/s41592-020-01008-z"
    assert rdf["config"]["raysegment"]["patch_size"] == [16, 32, 32]  # infer's default tile
    masks = []
    for model, where in ((out, "dir"), (archive, "zip")):
        infer(
            input=str(volumes / "big.ome.tif"),
            model=str(model),
            output=str(tmp_path / where),
            progress=False,
            chunks=[32],
            finalize={"mode": "mask"},
        )
        masks.append(zarr.open_array(str(tmp_path / where / "big.ome.zarr" / "0"), mode="r")[:])
    assert (masks[0] != masks[1]).mean() < 1e-4  # bioimage.io adds 1e-6 to the deviation


def test_unfinished_runs_begun_before_the_newer_keys_still_resume() -> None:
    """A run's settings' fingerprint (what a rerun must match to resume): a
    segmentation-models-pytorch model's leaves out ``model.features``, which it does not
    use, and ``oversample_foreground`` at its default, so it is the one raysegment wrote
    before those keys (at ccc21f6); an nnU-Net network's counts its features, and leaves
    out ``model.deep_supervision`` at its default (as written at b41b426)."""
    from raysegment.config import TrainConfig, load_config
    from raysegment.train.trainer import _fingerprint

    need = ["images.dir=img", "labels.dir=lbl", "output=out", "patch_size=64"]
    cfg = load_config(TrainConfig, (), need)
    assert _fingerprint(cfg) == "e2fc52baa52d7bb2d2b95494d1714884d1c8e24f6ff6626829fe970b87bb2254"
    assert _fingerprint(load_config(TrainConfig, (), [*need, "model.features=8"])) == (
        _fingerprint(cfg)
    )
    # Foreground oversampling (since then): at its default too; another share is another run.
    assert _fingerprint(load_config(TrainConfig, (), [*need, "oversample_foreground=0"])) != (
        _fingerprint(cfg)
    )
    nnunet = [*need, "model.arch=PlainConvUNet"]
    assert _fingerprint(load_config(TrainConfig, (), [*nnunet, "model.features=8"])) != (
        _fingerprint(load_config(TrainConfig, (), nnunet))
    )
    # Deep supervision (since b41b426): at its default, an nnU-Net network's is the one
    # written then; off, another run; an SMP model's leaves it out.
    assert _fingerprint(load_config(TrainConfig, (), nnunet)) == (
        "014066cf6ab79092856e72777b665743fff5f7e053848da7c22610d6a0b6aae7"
    )
    off = "model.deep_supervision=false"
    assert _fingerprint(load_config(TrainConfig, (), [*nnunet, off])) != (
        _fingerprint(load_config(TrainConfig, (), nnunet))
    )
    assert _fingerprint(load_config(TrainConfig, (), [*need, off])) == _fingerprint(cfg)


def test_nnunets_planned_patch_and_normalization_train_end_to_end(volumes, tmp_path) -> None:
    """``plan=3d_fullres patch_size=null``: the volumes' median shape (24 x 48^2 of 2 x
    0.5^2 µm voxels) is the patch nnU-Net plans; the thinner volumes are padded to it; the
    model directory records it (infer's default tile). An epoch of ``steps_per_epoch``
    steps of the planned batch, as nnU-Net counts its epochs. ``normalization=nnunet``:
    each volume a Z-score of its own values (no voxel is 0: the box is the whole volume);
    the model directory says so, and infer measures each image it segments: the large
    volume at 3 times its brightness segments as it does (a model of the training images'
    fixed values would not); a package refuses it."""
    from raysegment.errors import ModelLoadError
    from raysegment.infer import infer
    from raysegment.train.package import package

    out = tmp_path / "planned"
    summary = train(
        _cfg(
            volumes,
            out,
            plan="3d_fullres",
            patch_size=None,
            batch_size=None,
            steps_per_epoch=2,
            val_patches=2,
            max_epochs=1,
            normalization="nnunet",
        )
    )
    assert summary.epochs == 1
    assert summary.history[0]["patches"] == 2 * 2  # 2 steps of the planned batch of 2
    assert json.loads((out / "model.json").read_text())["patch_size"] == [24, 48, 48]
    meta = json.loads((out / "raysegment.json").read_text())
    assert meta["patch_size"] == [24, 48, 48]
    assert meta["normalize"] == {"moments": True, "eps": 1e-8, "joint": False}
    assert meta["nonzero"] == "box"
    image = tifffile.imread(volumes / "big.ome.tif")
    voxel = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
    (tmp_path / "in").mkdir()
    for name, scale in (("big", 1), ("bright", 3)):
        tifffile.imwrite(
            tmp_path / "in" / f"{name}.ome.tif", image * scale, ome=True, metadata=voxel
        )
    infer(
        input=str(tmp_path / "in"),
        model=str(out),
        output=str(tmp_path / "out"),
        progress=False,
        chunks=[32],
        finalize={"mode": "probabilities"},
    )
    got = {
        name: zarr.open_array(str(tmp_path / "out" / f"{name}.ome.zarr" / "0"), mode="r")[:]
        for name in ("big", "bright")
    }
    assert got["big"].std() > 0.01  # not one value everywhere
    np.testing.assert_allclose(got["bright"], got["big"], atol=2e-3)
    with pytest.raises(ModelLoadError, match="normalization=nnunet"):
        package(model=str(out), output=str(tmp_path / "m.zip"), authors=["A. Name"])
