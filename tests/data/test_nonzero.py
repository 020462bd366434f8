"""nnU-Net's nonzero region of an image (``data.nonzero``), against nnU-Net's own
cropping (``crop_to_nonzero``) and normalization (``ZScoreNormalization``)."""

from __future__ import annotations

import numpy as np
import pytest

from raysegment.data import nonzero
from raysegment.data.nonzero import NonzeroSource, nonzero_region
from raysegment.data.sources import MemorySource

cropping = pytest.importorskip("nnunetv2.preprocessing.cropping.cropping")
schemes = pytest.importorskip("nnunetv2.preprocessing.normalization.default_normalization_schemes")


def _head(seed: int = 0) -> np.ndarray:
    """Two channels (C, Z, Y, X): a ball of values, 0 around it and in a smaller ball
    inside it (a hole), and one voxel 0 in one channel only (in the region still)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:20, :40, :30]
    ball = ((z - 10) / 7) ** 2 + ((y - 20) / 15) ** 2 + ((x - 15) / 11) ** 2 < 1
    hole = ((z - 10) / 2) ** 2 + ((y - 20) / 3) ** 2 + ((x - 15) / 3) ** 2 < 1
    data = np.zeros((2, 20, 40, 30), np.float32)
    data[:, ball] = rng.normal(300, 50, (2, int(ball.sum())))
    data[:, hole] = 0
    data[1, 5, 20, 15] = 0
    return data


@pytest.mark.parametrize("within", [False, True])
def test_the_region_its_box_and_moments_are_nnunets(monkeypatch, within) -> None:
    """Found a slab of 3 planes at a time: the box nnU-Net crops to, and each channel's
    mean and deviation over the box (or over the region, its hole filled, where the
    normalization is within it) as nnU-Net's Z-score takes them."""
    data = _head()
    monkeypatch.setattr(nonzero, "SLAB_BYTES", 4 * 2 * 40 * 30 * 3)
    found = nonzero_region(MemorySource(data[None], "head", "head"), (0, 1), within)
    cropped, seg, box = cropping.crop_to_nonzero(data.copy())
    assert found.box == tuple(map(tuple, box))
    inside = seg[0] >= 0 if within else np.ones(seg[0].shape, bool)
    mean, deviation = found.moments()
    for c in range(2):
        values = cropped[c][inside].astype(np.float64)
        assert mean[c] == pytest.approx(values.mean(), rel=1e-12)
        assert deviation[c] == pytest.approx(values.std(), rel=1e-12)
        low, high = found.range()
        assert (low[c], high[c]) == (values.min(), values.max())
    assert (found.holes is not None) == within
    if within:  # the hole as nnU-Net fills it
        (where, holes), region = found.holes, np.zeros(data.shape[1:], bool)
        region[tuple(slice(a, b) for a, b in where)] = holes
        region |= (data != 0).any(axis=0)
        assert (region[tuple(slice(a, b) for a, b in box)] == inside).all()


def test_read_outside_the_region_each_voxel_is_the_fill() -> None:
    """``NonzeroSource``: a region's voxels as they are (the hole's 0 too), those outside
    it at each channel's fill; of the box where the normalization is not within it."""
    data = _head()
    source = MemorySource(data[None], "head", "head")
    region = ((2, 18), (3, 37), (1, 29))
    cut = (slice(None), *(slice(a, b) for a, b in region))
    _, seg, box = cropping.crop_to_nonzero(data.copy())
    inside = np.zeros(data.shape[1:], bool)
    inside[tuple(slice(a, b) for a, b in box)] = seg[0] >= 0
    for within, where in ((True, inside), (False, np.zeros_like(inside))):
        if not within:
            where[tuple(slice(a, b) for a, b in box)] = True
        found = nonzero_region(source, (0, 1), within)
        got = NonzeroSource(source, found, [-1.0, -2.0]).read(0, (1, 0), region)
        want = np.where(where, data, np.array([-1.0, -2.0])[:, None, None, None])[::-1]
        np.testing.assert_array_equal(got, want[cut])


def test_a_mask_too_large_to_hold_leaves_the_holes_out(monkeypatch) -> None:
    """Past ``FILL_HOLES_MAX`` voxels the region is the nonzero voxels, with a warning:
    the hole's voxels are outside it."""
    data = _head()
    monkeypatch.setattr(nonzero, "FILL_HOLES_MAX", 1000)
    with pytest.warns(UserWarning, match="the voxels of 0 they enclose left out"):
        found = nonzero_region(MemorySource(data[None], "head", "head"), (0, 1), True)
    assert found.holes is None and not found.filled
    mean, _ = found.moments()
    assert mean[0] == pytest.approx(data[0][(data != 0).any(axis=0)].mean(dtype=np.float64))


@pytest.mark.parametrize("within", [False, True])
@pytest.mark.parametrize("axis", [0, 1, None])
def test_ranges_are_those_of_the_slices_nnunet_resizes(within, axis) -> None:
    """Each plane's least and greatest value across ``axis`` of nnU-Net's crop, normalized
    (within the region: 0 outside it), or of the whole crop: what scikit-image's resize
    clips each slice nnU-Net resamples to; in the image's values, as raysegment
    resamples before it normalizes."""
    data = _head()
    found = nonzero_region(MemorySource(data[None], "head", "head"), (0, 1), within)
    cropped, seg, box = cropping.crop_to_nonzero(data.copy())
    ranges = found.ranges(axis)
    mean, deviation = found.moments()
    for c in range(2):
        scheme = schemes.ZScoreNormalization(use_mask_for_norm=within, intensityproperties={})
        normalized = scheme.run(cropped[c].copy(), seg[0])
        if axis is None:
            want = np.array([[normalized.min()], [normalized.max()]])
        else:
            others = tuple(a for a in range(3) if a != axis)
            want = np.stack([normalized.min(axis=others), normalized.max(axis=others)])
        start, stop = box[axis or 0] if axis is not None else (0, 1)
        got = (np.stack(ranges[c])[:, start:stop] - mean[c]) / deviation[c]
        np.testing.assert_allclose(got, want, atol=1e-5)
        if axis is not None:  # no bound outside the box
            assert np.isinf(ranges[c][0][:start]).all() and np.isinf(ranges[c][1][stop:]).all()


def test_the_box_in_a_resampled_image_holds_the_pixels_centred_in_it() -> None:
    found = nonzero_region(MemorySource(_head()[None], "head", "head"), (0, 1), False)
    assert found.box == ((4, 17), (6, 35), (5, 26))
    assert found.box_at((20, 40, 30)) == found.box
    # Along z and x pixels of 2 centred on the image's pixels 1, 3, ..: 5 .. 15 of the box
    # (of 4 .. 16, and 5 .. 25); along y pixels of 0.5 centred on the image's 6 .. 34.
    assert found.box_at((10, 80, 15)) == ((2, 8), (12, 70), (2, 13))


@pytest.mark.parametrize("shift", [-1000.0, -300.0, 0.0])
def test_moments_and_extremes_of_values_either_side_of_0(monkeypatch, shift) -> None:
    """Values below and above 0 (a CT's), voxels of 0 among them, a slab at a time: the
    moments and extremes of the box's voxels, those of 0 included."""
    data = np.round(_head(seed=3) + shift * (_head(seed=3) != 0)).astype(np.int16)
    data[:, 10, 20, 12:14] = 0  # 0 inside, in every channel
    monkeypatch.setattr(nonzero, "SLAB_BYTES", 4 * 2 * 40 * 30 * 4)
    found = nonzero_region(MemorySource(data[None], "ct", "ct"), (0, 1), False)
    box = tuple(slice(a, b) for a, b in found.box)
    values = data[(slice(None), *box)].reshape(2, -1).astype(np.float64)
    mean, deviation = found.moments()
    np.testing.assert_allclose(mean, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(deviation, values.std(axis=1), rtol=1e-12)
    low, high = found.range()
    np.testing.assert_array_equal(low, values.min(axis=1))
    np.testing.assert_array_equal(high, values.max(axis=1))
