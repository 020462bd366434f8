"""ONNX models: run by ONNX Runtime as the same model in TorchScript runs, described by
their input's shape."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from raysegment.errors import ModelLoadError
from raysegment.infer.model import describe_model, load_model, read_model_file
from tests.conftest import conv_model, random_image, raw_output, whole_image_prediction

pytest.importorskip("onnxruntime", reason="needs the onnx extra")

pytestmark = pytest.mark.usefixtures("ray_session")


def save_onnx(module: torch.nn.Module, path: Path, dims: int = 2, in_ch: int = 1) -> Path:
    """``module`` as ONNX, of any batch and spatial size unless ``fixed``."""
    axes = {0: "batch", **{2 + i: f"s{i}" for i in range(dims)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, in_ch, *[16] * dims),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": axes, "y": axes},
        )
    return path


@pytest.mark.parametrize("dims", [2, 3])
def test_an_onnx_model_gives_the_whole_image_prediction(tmp_path: Path, ome_tiff, dims) -> None:
    """Tiled (crop-blended: the tiles' centres) and written: the model on the whole
    image at once (the oracle, in torch)."""
    module = conv_model(dims, 1, 2)
    model = save_onnx(module, tmp_path / "model.onnx", dims)
    shape = (70, 90) if dims == 2 else (20, 40, 36)
    image = random_image(shape)
    tile = [32] * dims
    got = raw_output(
        tmp_path,
        ome_tiff(image, axes="YX" if dims == 2 else "ZYX"),
        model,
        tile={"size": tile, "blend": "crop"},
    )
    np.testing.assert_allclose(got, whole_image_prediction(module, image), atol=1e-5)


def test_an_onnx_model_is_described_by_its_input(tmp_path: Path) -> None:
    """Channels and 2D from its input's shape; a directory's model.onnx; a fixed size
    and batch as the model's only ones."""
    (tmp_path / "dir").mkdir()
    save_onnx(conv_model(2, 3, 2), tmp_path / "dir" / "model.onnx", 2, 3)
    model = read_model_file(str(tmp_path / "dir"))
    spec = describe_model(model, load_model(model))
    assert (model.kind, spec.in_channels, spec.spatial_dims) == ("onnx", 3, 2)
    assert spec.static_tile is None and spec.static_batch is None
    fixed = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(conv_model(), (torch.zeros(2, 1, 48, 64),), str(fixed), dynamo=False)
    model = read_model_file(str(fixed))
    spec = describe_model(model, load_model(model))
    assert (spec.static_batch, spec.static_tile) == (2, (48, 64))


def test_a_file_that_is_no_onnx_model_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"model.onnx: cannot load the model .* an ONNX model"):
        load_model(read_model_file(str(bad)))
