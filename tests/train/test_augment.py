"""Training augmentations: nnU-Net's scheme (rotation and scaling read around the patch,
intensity changes, mirroring) against geometry computed here, and through read_patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from raysegment.config import TrainConfig, load_config
from raysegment.errors import ConfigError
from raysegment.train import augment
from raysegment.train.data import prepare, read_patches

# A linear ramp (linear interpolation reproduces it exactly) and labels numbering 8 x 8
# cells: a patch resampled anywhere is known at every voxel.
RAMP = np.add.outer(3.0 * np.arange(200), 5.0 * np.arange(300))[None].astype(np.float32)
CELLS = np.add.outer(np.arange(200) // 8 * 100, np.arange(300) // 8)[None].astype(np.int32)


def _reader(image: np.ndarray, labels: np.ndarray) -> augment.Reader:
    """Reads regions of 2D arrays (C, h, w), checking each lies in them."""

    def read(region: augment.Region) -> tuple[np.ndarray, np.ndarray]:
        (_, _), (y0, y1), (x0, x1) = region
        assert 0 <= y0 < y1 <= image.shape[1] and 0 <= x0 < x1 <= image.shape[2]
        return image[:, y0:y1, x0:x1].copy(), labels[:, y0:y1, x0:x1].copy()

    return read


def _turned(angle: float, scale: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]]) * scale


@pytest.mark.parametrize("angle,scale", [(0.3, 1.2), (-2.5, 0.7), (np.pi / 2, 1.0)])
def test_a_turned_scaled_patch_is_read_where_its_voxels_come_from(
    angle: float, scale: float
) -> None:
    """Each voxel of the patch is the image at its source point: the centre plus the turned,
    scaled offset (linearly), and the label at the nearest voxel."""
    matrix = _turned(angle, scale)
    x, y = augment._transformed(
        _reader(RAMP, CELLS), (0, 80, 100), (1, 32, 48), (1, 200, 300), True, matrix, -5
    )
    assert x.shape == (1, 32, 48) and y.shape == (1, 32, 48)
    offsets = np.stack(np.meshgrid(np.arange(32) - 15.5, np.arange(48) - 23.5, indexing="ij"))
    source = np.array([95.5, 123.5])[:, None, None] + np.einsum("ij,jkl->ikl", matrix, offsets)
    np.testing.assert_allclose(x[0], 3 * source[0] + 5 * source[1], atol=1e-3)
    nearest = np.round(source).astype(int)
    np.testing.assert_array_equal(y[0], CELLS[0][nearest[0], nearest[1]])


def test_where_a_turned_patch_leaves_the_image_it_is_zero_and_its_labels_the_fill() -> None:
    matrix = _turned(np.pi / 4, 1.0)
    x, y = augment._transformed(
        _reader(RAMP + 1, CELLS + 1), (0, 0, 0), (1, 32, 32), (1, 200, 300), True, matrix, -5
    )
    offsets = np.stack(np.meshgrid(np.arange(32) - 15.5, np.arange(32) - 15.5, indexing="ij"))
    source = np.array([15.5, 15.5])[:, None, None] + np.einsum("ij,jkl->ikl", matrix, offsets)
    outside = (source < 0).any(axis=0)  # past the first voxel's centre
    clear = (np.abs(source) > 1e-6).all(axis=0)
    assert 0.1 < outside.mean() < 0.3  # the corners a 45-degree turn takes off the image
    np.testing.assert_array_equal((y[0] == -5)[clear], outside[clear])
    assert (x[0][outside & clear] == 0).all() and (x[0][~outside] > 0).all()


def test_a_3d_patch_turns_about_every_axis_or_in_plane_as_nnunet_configures_it() -> None:
    assert augment.Scheme.of((256, 256)) == augment.Scheme(np.pi, False)
    assert augment.Scheme.of((256, 128)) == augment.Scheme(np.deg2rad(15), False)
    assert augment.Scheme.of((64, 128, 128)) == augment.Scheme(np.deg2rad(30), False)
    assert augment.Scheme.of((16, 64, 80)) == augment.Scheme(np.pi, True)  # 80 / 16 > 3
    rng = np.random.default_rng(0)
    for patch in ((32, 32), (64, 128, 128), (16, 64, 80)):
        scheme = augment.Scheme.of(patch)
        moved = [augment._affine(len(patch), scheme, rng) for _ in range(2000)]
        # Turned with 0.2, scaled with 0.2: unmoved 0.8 x 0.8 of the time.
        assert 0.60 < sum(m is None for m in moved) / 2000 < 0.68
        for m in (m for m in moved if m is not None):
            scale = abs(np.linalg.det(m)) ** (1 / len(patch))
            if scheme.in_plane:  # z unmoved, (y, x) turned and scaled
                np.testing.assert_allclose(m[0], [1, 0, 0])
                np.testing.assert_allclose(m[:, 0], [1, 0, 0])
                scale = abs(np.linalg.det(m[1:, 1:])) ** 0.5
                rotation = m[1:, 1:] / scale
            else:
                rotation = m / scale
            assert 0.7 - 1e-9 <= scale <= 1.4 + 1e-9
            np.testing.assert_allclose(rotation @ rotation.T, np.eye(len(rotation)), atol=1e-9)
            if len(patch) == 3 and not scheme.in_plane:  # at most 30 degrees about each axis
                assert np.arccos(np.clip(np.diag(rotation), -1, 1)).max() < np.deg2rad(60)


def test_low_resolution_keeps_an_in_plane_patch_s_planes() -> None:
    planes = np.broadcast_to(np.arange(8.0)[:, None, None], (8, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(augment._low_resolution(planes, 0.5, True), planes, atol=1e-6)
    assert not np.allclose(augment._low_resolution(planes, 0.5, False), planes, atol=0.1)
    checker = (np.indices((32, 32)).sum(0) % 2).astype(np.float32)
    low = augment._low_resolution(checker, 0.5, False)
    assert low.shape == (32, 32) and low.std() < checker.std()


def test_gamma_keeps_the_mean_and_deviation() -> None:
    values = np.random.default_rng(0).normal(2.0, 3.0, (16, 16)).astype(np.float32)
    for invert in (False, True):
        out = augment._gamma(values, 1.4, invert)
        assert out.mean() == pytest.approx(values.mean(), abs=1e-4)
        assert out.std() == pytest.approx(values.std(), rel=1e-4)
        assert not np.allclose(out, values, atol=0.01)


def _blobs(root: Path, volume: bool = False) -> None:
    """Bright discs (balls) on a dark noisy field; labels where they are."""
    rng = np.random.default_rng(5)
    (root / "img").mkdir()
    (root / "lbl").mkdir()
    shape = (12, 96, 96) if volume else (160, 160)
    for i in range(3):
        grid = np.indices(shape)
        inside = np.zeros(shape, bool)
        for _ in range(12):
            centre = rng.uniform(0, shape)[(slice(None),) + (None,) * len(shape)]
            spread = np.array([2.0, 1.0, 1.0][-len(shape) :])[(slice(None),) + (None,) * len(shape)]
            inside |= (((grid - centre) / spread) ** 2).sum(0) < 8**2
        image = np.where(inside, 1000, 100) + rng.normal(0, 30, shape)
        tifffile.imwrite(root / "img" / f"b{i}.tif", image.astype(np.uint16))
        tifffile.imwrite(root / "lbl" / f"b{i}.tif", inside.astype(np.uint8))


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    """Chance that a labelled voxel is brighter than an unlabelled one."""
    order = np.argsort(x.ravel(), kind="stable")
    ranks = np.empty(order.size)
    ranks[order] = np.arange(order.size)
    pos = y.ravel() > 0
    n, m = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n * (n - 1) / 2) / (n * m))


@pytest.mark.parametrize("patch", ["[48,48]", "[8,32,32]"])
def test_nnunet_augmented_patches_keep_images_and_labels_together(
    tmp_path: Path, patch: str
) -> None:
    """Through read_patches: patches turned, scaled, mirrored and their intensities changed,
    the labels still where the discs are, the same every time a spec is read."""
    _blobs(tmp_path, volume=patch.count(",") == 2)
    cfg = load_config(
        TrainConfig,
        (),
        [
            f"images.dir={tmp_path / 'img'}",
            f"labels.dir={tmp_path / 'lbl'}",
            "output=o",
            f"patch_size={patch}",
            "augment=nnunet",
            "train_fraction=0.67",
        ],
    )
    data = prepare(cfg)
    specs = data.train_specs(96, seed=0)
    batch = {k: np.array([s[k] for s in specs]) for k in specs[0]}
    out = read_patches(batch, data, augment="nnunet")
    plain = read_patches(batch, data, augment=False)
    assert out["x"].shape == plain["x"].shape and out["x"].dtype == np.float32
    np.testing.assert_array_equal(read_patches(batch, data, augment="nnunet")["x"], out["x"])
    changed = [not np.array_equal(a, b) for a, b in zip(out["y"], plain["y"], strict=True)]
    assert 0.3 < np.mean(changed) < 0.95  # moved: mirrored (7/8 or 3/4 of them), turned, scaled
    both = [k for k in range(96) if 0.05 < out["y"][k].mean() < 0.95]
    assert len(both) > 20
    # Noise and blur soften the edges; misplaced labels would sink this to chance (0.5).
    assert np.median([_auc(out["x"][k], out["y"][k]) for k in both]) > 0.97
    assert min(_auc(out["x"][k], out["y"][k]) for k in both) > 0.8


def test_augment_takes_true_false_or_nnunet(tmp_path: Path) -> None:
    base = [f"images.dir={tmp_path}", f"labels.dir={tmp_path}", "output=o"]
    for value, want in (("true", True), ("false", False), ("nnunet", "nnunet")):
        assert load_config(TrainConfig, (), [*base, f"augment={value}"]).augment == want
    with pytest.raises(ConfigError, match="augment='nnUNet'.*choose true.*nnunet.*false"):
        load_config(TrainConfig, (), [*base, "augment=nnUNet"])
