"""Model files and the contract probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raysegment.compute import argmax
from raysegment.config import FinalizeMode
from raysegment.errors import ModelContractError, ModelLoadError
from raysegment.infer.finalize import FINALIZERS
from raysegment.infer.model import describe_model, load_model, probe_model, read_model_file
from raysegment.infer.plan import labels_dtype, output_dtype
from tests.conftest import conv_model, save_torchscript


class Downsample(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 2)


class TinyUNet(torch.nn.Module):
    """Pool + upsample + skip: needs spatial sizes divisible by 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = torch.nn.functional.max_pool2d(self.conv(x), 2)
        return torch.nn.functional.interpolate(down, scale_factor=2.0) + x


class IntOutput(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) > 0).long()


def _spec(path: Path):
    mf = read_model_file(str(path))
    module = load_model(mf)
    return mf, module, describe_model(mf, module)


def test_torchscript_file_and_directory(tmp_path: Path) -> None:
    path = save_torchscript(conv_model(3, in_ch=2, out_ch=4), tmp_path / "m.pt", 3, 2)
    mf, module, spec = _spec(path)
    assert (spec.in_channels, spec.spatial_dims) == (2, 3)
    spec = probe_model(mf, module, spec, (16, 16, 16))
    assert spec.out_channels == 4
    d = tmp_path / "dir"
    d.mkdir()
    path.rename(d / "model.pth")
    assert read_model_file(str(d)).sha256 == mf.sha256


def test_export_program_static_shape(tmp_path: Path) -> None:
    program = torch.export.export(conv_model(), (torch.zeros(2, 1, 48, 40),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    mf, module, spec = _spec(tmp_path / "m.pt2")
    assert spec.static_tile == (48, 40) and spec.static_batch == 2 and spec.in_channels == 1
    with pytest.raises(ModelContractError, match=r"tile.size=\[48, 40\]"):
        probe_model(mf, module, spec, (64, 64))


@pytest.mark.parametrize(
    "module,tile,match",
    [
        (Downsample(), (64, 64), "keep the batch and spatial size"),
        (TinyUNet(), (63, 63), "failed on a|keep the batch and spatial size"),
        (IntOutput(), (32, 32), "floating-point"),
    ],
)
def test_probe_rejects_contract_violations(tmp_path: Path, module, tile, match) -> None:
    path = tmp_path / "m.pth"
    torch.jit.save(torch.jit.trace(module, torch.zeros(1, 1, 32, 32)), str(path))
    mf = read_model_file(str(path))
    loaded = load_model(mf)
    spec = describe_model(mf, torch.jit.load(str(path))) if list(loaded.parameters()) else None
    if spec is None:
        (tmp_path / "d").mkdir()
        path.rename(tmp_path / "d" / "model.pth")
        (tmp_path / "d" / "raysegment.json").write_text('{"in_channels": 1, "spatial_dims": 2}')
        mf = read_model_file(str(tmp_path / "d"))
        spec = describe_model(mf, loaded)
    with pytest.raises(ModelContractError, match=match):
        probe_model(mf, loaded, spec, tile)


def test_region_labels_name_a_label_per_output_channel(tmp_path: Path) -> None:
    """``region_labels`` in ``raysegment.json``: a label from 1 on per output channel;
    other values, or another count than the model's channels, one error naming the fix."""
    (tmp_path / "d").mkdir()
    save_torchscript(conv_model(2, 1, 3), tmp_path / "d" / "model.pth", 2, 1)
    meta = tmp_path / "d" / "raysegment.json"
    meta.write_text('{"activation": "sigmoid", "region_labels": [1, 2, 4]}')
    mf, module, spec = _spec(tmp_path / "d")
    assert probe_model(mf, module, spec, (16, 16)).region_labels == (1, 2, 4)
    meta.write_text('{"region_labels": [1, 2]}')
    mf, module, spec = _spec(tmp_path / "d")
    with pytest.raises(ModelContractError, match=r"name 2 channels, the model returns 3"):
        probe_model(mf, module, spec, (16, 16))
    for given in ("[0, 1, 2]", '"1,2,3"', "[]", "[1, 2.5, 3]", "[true, 2, 3]"):
        meta.write_text(f'{{"region_labels": {given}}}')
        with pytest.raises(ModelContractError, match=r"give one label from 1 on per output"):
            _spec(tmp_path / "d")


def test_a_normalization_per_channel_names_one_a_channel(tmp_path: Path) -> None:
    """``normalize.channels`` (each channel its own normalization): one a channel of the
    model's input, else one error naming the fix."""
    (tmp_path / "d").mkdir()
    save_torchscript(conv_model(2, 2, 1), tmp_path / "d" / "model.pth", 2, 2)
    meta = tmp_path / "d" / "raysegment.json"
    meta.write_text('{"normalize": {"channels": [{"mean": [1], "std": [2]}, {"moments": true}]}}')
    assert _spec(tmp_path / "d")[2].normalize["channels"][1] == {"moments": True}
    meta.write_text('{"normalize": {"channels": [{"mean": [1], "std": [2]}]}}')
    with pytest.raises(ModelContractError, match=r"normalize.channels gives 1 channel\(s\)'"):
        _spec(tmp_path / "d")


def test_parameterless_model_without_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.jit.save(torch.jit.trace(Downsample(), torch.zeros(1, 1, 8, 8)), str(path))
    mf = read_model_file(str(path))
    with pytest.raises(ModelContractError, match="raysegment.json"):
        describe_model(mf, load_model(mf))


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda p: p / "missing.pth", "model not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no model.pth"),
        (lambda p: (p / "t.pth").write_text("not a model") and p / "t.pth", "TorchScript archive"),
        (
            lambda p: torch.save({"w": torch.zeros(2)}, str(p / "sd.pth")) or p / "sd.pth",
            "TorchScript archive",
        ),
        (lambda p: (p / "x.pt2").write_bytes(b"PK\x03\x04junk") and p / "x.pt2", "torch.export"),
    ],
)
def test_bad_model_files(tmp_path: Path, setup, match) -> None:
    path = setup(tmp_path)
    with pytest.raises(ModelLoadError, match=match):
        load_model(read_model_file(str(path)))


def test_finalizers_cover_every_mode_and_dtype() -> None:
    assert set(FINALIZERS.names()) == {m.value for m in FinalizeMode}
    logits = torch.tensor([[[2.0, -1.0]], [[0.0, 3.0]]])  # (C=2, 1, 2)
    assert FINALIZERS.get("labels")(logits, "auto", 0.5, ()).tolist() == [[[0, 1]]]
    probs = FINALIZERS.get("probabilities")(logits, "auto", 0.5, ())
    assert torch.allclose(probs.sum(0), torch.ones(1, 2))
    mask = FINALIZERS.get("mask")(logits[:1], "sigmoid", 0.5, ())
    assert mask.dtype == torch.uint8 and mask.tolist() == [[[1, 0]]]
    assert output_dtype("labels", 300) == "uint16" and output_dtype("raw", 2) == "float32"
    # none: the output as the model gives it (a model package's probabilities)
    given = torch.tensor([[[0.2, 0.7]], [[0.9, 0.1]]])
    assert torch.equal(FINALIZERS.get("probabilities")(given, "none", 0.5, ()), given)
    assert FINALIZERS.get("mask")(given, "none", 0.5, ()).tolist() == [[[0, 1]], [[1, 0]]]


def test_a_region_models_labels_paint_its_regions_in_order() -> None:
    """Each channel's label where its probability passes the threshold, later channels
    over earlier, as nnU-Net's ``convert_probabilities_to_segmentation`` paints a
    region-based training's ``regions_class_order``; the rest 0."""
    nested = torch.zeros(3, 1, 5)  # whole tumour, core, enhancing: each within the one before
    nested[0, 0, 1:], nested[1, 0, 2:4], nested[2, 0, 3] = 1, 1, 1
    logits = torch.where(nested > 0, 4.0, -4.0)
    labels = FINALIZERS.get("labels")(logits, "sigmoid", 0.5, (1, 2, 3))
    assert labels.dtype == torch.uint8 and labels.tolist() == [[[0, 1, 2, 3, 1]]]
    # later over earlier whatever the values; probabilities thresholded as given
    probabilities = torch.tensor([[[0.9, 0.9, 0.2]], [[0.6, 0.4, 0.7]]])
    assert FINALIZERS.get("labels")(probabilities, "none", 0.5, (7, 300)).tolist() == [
        [[300, 7, 300]]
    ]
    assert FINALIZERS.get("labels")(probabilities, "none", 0.65, (7, 300)).tolist() == [
        [[7, 7, 300]]
    ]
    assert labels_dtype(3, (7, 300)) == "int32" and output_dtype("labels", 2, (7, 300)) == "uint16"
    assert output_dtype("labels", 3, (1, 2, 3)) == "uint8"
    # the model's activation: a sigmoid's threshold compared as logits
    got = FINALIZERS.get("labels")(torch.logit(probabilities), "sigmoid", 0.65, (7, 300))
    assert got.tolist() == [[[7, 7, 300]]]


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_argmax_is_torchs_ties_and_nan_included(dim: int) -> None:
    # Integer-valued logits of few values: many pixels whose largest value several
    # channels share (the first of them counts), and a NaN (counted the largest).
    x = torch.randint(0, 3, (3, 5, 40, 40), generator=torch.Generator().manual_seed(1)).float()
    x[1, 2, 3, 4] = float("nan")
    for keepdim in (False, True):
        want = torch.argmax(x, dim=dim, keepdim=keepdim)
        assert torch.equal(argmax(x, dim, keepdim), want)
    labels = FINALIZERS.get("labels")(x[0], "auto", 0.5, ())
    assert torch.equal(labels, torch.argmax(x[0], dim=0, keepdim=True).to(torch.uint8))


@pytest.mark.parametrize("threshold", [0.5, 0.1, 0.93, 0.0, 1.0])
def test_sigmoid_mask_thresholds_logits_as_probabilities(threshold: float) -> None:
    # The mask compares logits with the threshold's logit (no sigmoid pass): the same
    # pixels as thresholding the probabilities, edge thresholds included.
    logits = torch.cat(
        [
            torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(0)) * 8,
            torch.tensor([-200.0, 0.0, 200.0]).reshape(1, 1, 3).expand(1, 64, 3),
        ],
        -1,
    )
    want = (torch.sigmoid(logits) > threshold).to(torch.uint8)
    got = FINALIZERS.get("mask")(logits, "sigmoid", threshold, ())
    assert torch.equal(got, want)
    assert torch.equal(FINALIZERS.get("labels")(logits, "auto", threshold, ()), want)
