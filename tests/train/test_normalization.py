"""``normalization=nnunet``: the training images cropped and normalized as nnU-Net's
fingerprint and preprocessing crop and normalize them (against nnunetv2's own code), and
the model directory's keys that make infer do the same."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import zarr

from raysegment.config import TrainConfig, load_config
from raysegment.data.nonzero import nonzero_region
from raysegment.data.sources import MemorySource
from raysegment.errors import ConfigError, InputImageError
from raysegment.train import normalization
from raysegment.train.data import prepare, read_patches
from raysegment.train.export import model_metadata

cropping = pytest.importorskip("nnunetv2.preprocessing.cropping.cropping")
fingerprint = pytest.importorskip(
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor"
)
preprocessing = pytest.importorskip("nnunetv2.preprocessing.preprocessors.default_preprocessor")


def _case(seed: int, shape: tuple[int, int, int], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Two channels (C, Z, Y, X) of a head in air of 0: a CT's (integers around 40, a
    lesion at 90) and an MR's (``scale`` times a case's own brightness); a hole of 0 in
    both; labels 1 on the lesion, 2 on a smaller ball in it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    c = [n / 2 for n in shape]
    head = sum(((a - m) / (0.33 * n)) ** 2 for a, m, n in zip((z, y, x), c, shape, strict=True)) < 1
    hole = sum(((a - m) / 1.6) ** 2 for a, m in zip((z, y, x), c, strict=True)) < 1
    lesion = ((z - c[0]) ** 2 + (y - c[1] - 4) ** 2 + (x - c[2]) ** 2 < 9) & ~hole
    data = np.zeros((2, *shape), np.float32)
    data[0][head] = np.rint(rng.normal(40, 30, int(head.sum())))
    data[0][lesion] = np.rint(rng.normal(90, 10, int(lesion.sum())))
    data[1][head] = rng.normal(300, 50, int(head.sum())) * scale
    data[:, hole] = 0
    labels = lesion.astype(np.uint8) + (lesion & (abs(y - c[1] - 4) < 1)).astype(np.uint8)
    return data, labels


_SHAPES = ((20, 30, 26), (22, 28, 30), (18, 32, 28))


def _nnunets_properties(cases: list[tuple[np.ndarray, np.ndarray]], samples: int) -> dict:
    """nnU-Net's dataset fingerprint's foreground statistics of ``cases``, as its
    ``DatasetFingerprintExtractor.run`` sums up ``analyze_case``'s samples."""
    extractor = fingerprint.DatasetFingerprintExtractor
    drawn = []
    for data, labels in cases:
        cropped, seg, _ = cropping.crop_to_nonzero(data.copy(), labels[None].astype(np.int8))
        drawn.append(
            extractor.collect_foreground_intensities(seg, cropped, num_samples=samples // 3)[0]
        )
    out = {}
    for c in range(2):
        values = np.concatenate([d[c] for d in drawn])
        low, median, high = np.percentile(values, (0.5, 50.0, 99.5))
        out[str(c)] = {
            "mean": float(np.mean(values)),
            "median": float(median),
            "std": float(np.std(values)),
            "min": float(np.min(values)),
            "max": float(np.max(values)),
            "percentile_99_5": float(high),
            "percentile_00_5": float(low),
        }
    return out


def test_a_ct_channels_foreground_statistics_are_nnunets_fingerprints() -> None:
    """Drawn as nnU-Net draws each case's foreground (a third of the samples each, with
    replacement, seeded alike), counted per voxel: the statistics of nnU-Net's draws."""
    cases = [_case(k, s, 1.0 + k) for k, s in enumerate(_SHAPES)]
    images = [MemorySource(d[None], f"case{k}", f"case{k}") for k, (d, _) in enumerate(cases)]
    labels = [MemorySource(lb[None, None], f"l{k}", f"l{k}") for k, (_, lb) in enumerate(cases)]
    boxes = [nonzero_region(im, (0, 1), False).box for im in images]
    got = normalization.foreground_properties(images, labels, boxes, (0, 1), 30_000)
    want = _nnunets_properties(cases, 30_000)
    assert got.keys() == want.keys()
    for c in want:
        assert got[c] == pytest.approx(want[c], rel=1e-6), c
    # More draws than voxels, fewer: each its own statistics still.
    again = normalization.foreground_properties(images, labels, boxes, (0, 1), 300)
    assert again["1"] == pytest.approx(_nnunets_properties(cases, 300)["1"], rel=1e-6)
    assert again["1"]["mean"] != pytest.approx(got["1"]["mean"], rel=1e-6)


def _dataset(root: Path, names: dict[str, str] | None, border: bool) -> list:
    """An nnU-Net dataset of the three cases (channel files ``case_000c.tif``, labels
    ``case.tif``, ``dataset.json`` naming the channels ``names``); without ``border``,
    each image cropped to its head's box first (no air around: no crop)."""
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    cases = []
    for k, shape in enumerate(_SHAPES):
        data, labels = _case(k, shape, 1.0 + k)
        if not border:
            _, _, box = cropping.crop_to_nonzero(data.copy())
            cut = tuple(slice(a, b) for a, b in box)
            data, labels = data[(slice(None), *cut)] + 1.0, labels[cut]
        for c in range(2):
            tifffile.imwrite(root / "imagesTr" / f"case{k}_{c:04d}.tif", data[c].astype(np.int16))
        tifffile.imwrite(root / "labelsTr" / f"case{k}.tif", labels)
        cases.append((data.astype(np.int16).astype(np.float32), labels))
    described = {"labels": {"background": 0, "lesion": 1, "core": 2}}
    if names is not None:
        described["channel_names"] = names
    (root / "dataset.json").write_text(json.dumps(described))
    return cases


def _cfg(root: Path, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        (),
        [
            f"images.dir={root / 'imagesTr'}",
            f"labels.dir={root / 'labelsTr'}",
            "output=o",
            "mode=multiclass",
            "patch_size=[8,16,16]",
            "normalization=nnunet",
            *overrides,
        ],
    )


@pytest.mark.parametrize(
    ("names", "border", "schemes", "masked"),
    [
        # A PET/CT-like pair in air: the CT's clipped foreground normalization, the other
        # channel a Z-score within the head (its box is under 3/4 of each image).
        ({"0": "CT", "1": "T2"}, True, ["CTNormalization", "ZScoreNormalization"], [False, True]),
        # Both Z-scores, of the box (no air around the heads).
        ({"0": "T1", "1": "zscore"}, False, ["ZScoreNormalization"] * 2, [False, False]),
    ],
)
def test_training_images_are_cropped_and_normalized_as_nnunet_preprocesses(
    tmp_path: Path, monkeypatch, caplog, names, border, schemes, masked
) -> None:
    """Each pair as nnU-Net's preprocessing leaves it (before resampling, at the voxels it
    already has): cropped to its nonzero box (the shape nnU-Net's planner plans for), each
    channel normalized by its scheme (``DefaultPreprocessor._normalize`` with the
    fingerprint's statistics), the labels cropped alike (-1 outside the region: nnU-Net's
    training reads it as background); the log says how; the model directory records what
    infer needs."""
    monkeypatch.setattr(normalization, "FOREGROUND_SAMPLES", 3_000)
    cases = _dataset(tmp_path, names, border)
    with caplog.at_level(logging.WARNING, logger="raysegment"):
        data = prepare(_cfg(tmp_path))
    said = "channel 1 each image's Z-score" + (" within its nonzero region" if any(masked) else ";")
    assert said in caplog.text
    assert ("channel 0 CT, clipped to [" in caplog.text) == (schemes[0] == "CTNormalization")
    properties = _nnunets_properties(cases, 3_000)
    plans = SimpleNamespace(normalization_schemes=schemes, use_mask_for_norm=masked)
    for k, (image, labels) in enumerate(cases):
        cropped, seg, _ = cropping.crop_to_nonzero(image.copy(), labels[None].astype(np.int8))
        want = preprocessing.DefaultPreprocessor()._normalize(cropped, seg, plans, properties)
        pair = data.pairs[k]
        assert pair.image.info.shape[2:] == want.shape[1:]
        assert pair.label.info.shape[2:] == want.shape[1:]
        corners = [(0, 0, 0), tuple(n - p for n, p in zip(want.shape[1:], data.patch, strict=True))]
        batch = {
            "pair": np.array([k, k]),
            **{a: np.array([c[i] for c in corners]) for i, a in enumerate("zyx")},
        }
        out = read_patches(batch, data, augment=False)
        for j, corner in enumerate(corners):
            cut = tuple(slice(c, c + p) for c, p in zip(corner, data.patch, strict=True))
            np.testing.assert_allclose(out["x"][j], want[(slice(None), *cut)], atol=2e-5)
            np.testing.assert_array_equal(out["y"][j], np.maximum(seg[0][cut], 0))
    meta = model_metadata(data, "PlainConvUNet")
    assert meta["nonzero"] == ("mask" if any(masked) else "box")
    if any(masked):  # the CT's voxels outside the head keep their (clipped) values
        assert meta["nonzero_kept"] == [0]
        ct = properties["0"]
        entry = meta["normalize"]["channels"][0]
        assert entry["mean"] == pytest.approx([ct["mean"]], rel=1e-6)
        assert entry["clip"][1] == pytest.approx(
            (ct["percentile_99_5"] - ct["mean"]) / ct["std"], rel=1e-5
        )
        assert meta["normalize"]["channels"][1] == {"moments": True, "eps": 1e-8, "joint": False}
    else:
        assert meta["normalize"] == {"moments": True, "eps": 1e-8, "joint": False}
        assert "nonzero_kept" not in meta


def test_an_nnunet_normalization_refuses_what_it_cannot_measure(tmp_path: Path) -> None:
    """A CT channel whose labels mark no foreground (its statistics are the foreground's),
    an image that is 0 everywhere, a rescaling over the box beside Z-scores within the
    region, an unknown normalization, input_level: one error each."""
    cases = _dataset(tmp_path, {"0": "CT", "1": "T2"}, True)
    for k in range(len(cases)):
        tifffile.imwrite(tmp_path / "labelsTr" / f"case{k}.tif", np.zeros_like(cases[k][1]))
    with pytest.raises(InputImageError, match="mark no voxel past 0: a CT channel"):
        prepare(_cfg(tmp_path))
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "a": 1}, "channel_names": {"0": "rescale_to_0_1"}})
    )
    with pytest.raises(ConfigError, match="rescale_to_0_1 are rescaled over the box"):
        prepare(_cfg(tmp_path))  # beside a Z-score within the heads' region (under 3/4)
    tifffile.imwrite(tmp_path / "imagesTr" / "case1_0000.tif", np.zeros(_SHAPES[1], np.int16))
    tifffile.imwrite(tmp_path / "imagesTr" / "case1_0001.tif", np.zeros(_SHAPES[1], np.int16))
    with pytest.raises(InputImageError, match="case1_0000.tif.*0 at every voxel"):
        prepare(_cfg(tmp_path))
    with pytest.raises(ConfigError, match="normalization='z'"):
        _cfg(tmp_path, "normalization=z")
    with pytest.raises(ConfigError, match="normalization=nnunet with input_level=1"):
        _cfg(tmp_path, "input_level=1")


def test_resampled_images_are_normalized_first_and_cropped_as_resampled(
    tmp_path: Path, monkeypatch
) -> None:
    """``resample_size`` with nnU-Net's resampling: each image normalized as measured at its
    own voxels (the CT clipped before the cubic spline, the region's outside at its mean),
    then resampled, then cropped to its box as resampled: no voxel outside the head but 0
    in the MR channel, whose Z-score stays near 0 mean and 1 deviation within it; the
    labels resampled alike. The model names the case's channel files still (infer reads
    imagesTs' cases so)."""
    monkeypatch.setattr(normalization, "FOREGROUND_SAMPLES", 3_000)
    cases = _dataset(tmp_path, {"0": "CT", "1": "T2"}, True)
    for k, (data, _) in enumerate(cases):  # of 2 x 1 x 1 mm voxels
        for c in range(2):
            tifffile.imwrite(
                tmp_path / "imagesTr" / f"case{k}_{c:04d}.tif",
                data[c].astype(np.int16),
                ome=True,
                metadata={
                    "axes": "ZYX",
                    "PhysicalSizeZ": 2.0,
                    "PhysicalSizeX": 1.0,
                    "PhysicalSizeY": 1.0,
                    "PhysicalSizeZUnit": "mm",
                    "PhysicalSizeYUnit": "mm",
                    "PhysicalSizeXUnit": "mm",
                },
            )
    data = prepare(
        _cfg(tmp_path, "resample_size=[1.5,0.75,0.75]", "resampling=nnunet", "patch_size=[8,16,16]")
    )
    assert data.per_image.meta["nonzero"] == "mask" and data.resampling is not None
    assert data.channel_files == ("CT", "T2")  # of the case's files, resampled or not
    # Each channel over each whole pair against nnU-Net's: cropped, normalized, resampled.
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape,
        resample_data_or_seg_to_shape,
    )

    plans = SimpleNamespace(
        normalization_schemes=["CTNormalization", "ZScoreNormalization"],
        use_mask_for_norm=[False, True],
    )
    properties = _nnunets_properties(cases, 3_000)
    for k, (image, labels) in enumerate(cases):
        cropped, seg, _ = cropping.crop_to_nonzero(image.copy(), labels[None].astype(np.int8))
        normal = preprocessing.DefaultPreprocessor()._normalize(cropped, seg, plans, properties)
        pair = data.pairs[k]
        shape = pair.image.info.shape[2:]  # nnU-Net's of the crop
        assert shape == tuple(compute_new_shape(cropped.shape[1:], [2, 1, 1], [1.5, 0.75, 0.75]))
        want = resample_data_or_seg_to_shape(
            normal, shape, [2.0, 1.0, 1.0], [1.5, 0.75, 0.75], False, 3, 0, None
        )
        got = pair.image.read(0, (0, 1), tuple((0, n) for n in shape))
        offset, scale = data.normal(k)
        for c in range(2):
            ours = (got[c] - offset[c]) / scale[c]
            if c == 0:
                ours = np.clip(ours, *data.per_image.clip[0])
            np.testing.assert_allclose(ours, want[c], atol=2e-5)
        labels = pair.label.read(0, (0,), tuple((0, n) for n in shape))[0]
        seg = resample_data_or_seg_to_shape(
            seg, shape, [2.0, 1.0, 1.0], [1.5, 0.75, 0.75], True, 1, 0, None
        )
        np.testing.assert_array_equal(labels, np.maximum(seg[0], 0))


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    ("normalize", "outside"),
    [
        ({}, 0.0),  # the model's own: each image's Z-score within its region
        ({"mode": "fixed", "mean": [100.0], "std": [2.0]}, 0.0),
        ({"mode": "none"}, 0.0),
    ],
)
def test_a_model_that_crops_to_its_nonzero_region_reads_0_outside_it_whatever_normalizes(
    tmp_path: Path, normalize, outside
) -> None:
    """A model directory of ``normalization=nnunet``'s keys (``nonzero: mask``): the voxels
    of its box outside each image's region reach the model as 0, with the model's
    normalization or one ``normalize.mode`` gives in its place (the fill is the run's
    normalization's offset, not the model's); inside, the normalization given."""
    import torch

    from raysegment.infer import infer

    model = tmp_path / "model"
    model.mkdir()
    conv = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    torch.jit.save(torch.jit.trace(conv, torch.zeros(1, 1, 8, 16, 16)), str(model / "model.pth"))
    meta = {
        "in_channels": 1,
        "spatial_dims": 3,
        "normalize": {"moments": True, "eps": 1e-8, "joint": False},
        "nonzero": "mask",
        "activation": "none",
    }
    (model / "raysegment.json").write_text(json.dumps(meta))
    data, _ = _case(0, (20, 30, 26), 1.0)
    image = data[1].astype(np.int16)
    tifffile.imwrite(tmp_path / "head.tif", image)
    infer(
        input=str(tmp_path / "head.tif"),
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        tile={"size": [8, 16, 16]},
        finalize={"mode": "raw"},
        normalize=normalize,
    )
    got = zarr.open_array(str(tmp_path / "out" / "head.ome.zarr" / "0"), mode="r")[0]
    _, seg, box = cropping.crop_to_nonzero(
        image[None].astype(np.float32), np.zeros_like(image)[None]
    )
    inside = np.zeros(image.shape, bool)
    inside[tuple(slice(a, b) for a, b in box)] = seg[0] >= 0
    region = image.astype(np.float64)[inside]
    if not normalize:
        want = (region - region.mean()) / region.std()
    elif normalize["mode"] == "fixed":
        want = (region - 100.0) / 2.0
    else:
        want = region
    np.testing.assert_allclose(got[inside], want, rtol=1e-4, atol=1e-3)
    in_box = np.zeros(image.shape, bool)
    in_box[tuple(slice(a, b) for a, b in box)] = True
    np.testing.assert_allclose(got[in_box & ~inside], outside, atol=1e-5)
