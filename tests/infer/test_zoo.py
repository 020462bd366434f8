"""BioImage Model Zoo packages as ``model=``: each run compared with bioimageio.core's own
prediction of the package, on packages bioimageio.spec validates."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from raysegment.config import InferConfig, TileConfig
from raysegment.errors import ConfigError, ModelLoadError
from raysegment.infer.model import describe_model, load_model, read_model_file
from raysegment.infer.plan import tile_size
from tests.conftest import conv_model, random_image, raw_output, save_torchscript

pytestmark = pytest.mark.usefixtures("ray_session")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_package(
    root: Path,
    version: str = "0.5",
    channels: int = 1,
    outputs: int = 2,
    pre: list[dict[str, Any]] | None = None,
    post: list[dict[str, Any]] | None = None,
    halo: int = 0,
    size: Any = (64, 16),
    unit: str | None = None,
    weights: dict[str, Any] | None = None,
    dims: int = 2,
    onnx: bool = False,
    config: dict[str, Any] | None = None,
) -> Path:
    """A model package in ``root`` (its rdf.yaml): two convs as TorchScript, taking
    ``channels`` and giving ``outputs``, in format ``version``; ``pre`` / ``post``: its
    processing as that format writes it (0.5's ``id``, 0.4's ``name``); ``size``: each
    space axis' [min, step], or one fixed size; ``dims``: 2D (yx) or 3D (zyx); ``onnx``:
    its weights as ONNX alone; ``config``: its ``config`` field."""
    root.mkdir(parents=True, exist_ok=True)
    module = conv_model(dims, channels, outputs, seed=3)
    save_torchscript(module, root / "weights.pt", dims, channels)
    letters = "zyx"[3 - dims :]
    smallest = size if isinstance(size, int) else size[0]
    x = random_image((1, channels, *[smallest] * dims), "float32")
    np.save(root / "test_input.npy", x)
    with torch.inference_mode():
        np.save(root / "test_output.npy", module(torch.from_numpy(x)).numpy())
    (root / "README.md").write_text("# A test model\n")
    entry = {"source": "weights.pt", "sha256": _sha(root / "weights.pt")}
    if onnx:
        from tests.infer.test_onnx import save_onnx

        save_onnx(module, root / "weights.onnx", dims, channels)
        import onnx as onnx_format

        sha, program = _sha(root / "weights.onnx"), onnx_format.load(root / "weights.onnx")
        opset = max(o.version for o in program.opset_import if o.domain in ("", "ai.onnx"))
        weights = {"onnx": {"source": "weights.onnx", "sha256": sha, "opset_version": opset}}
    rdf: dict[str, Any] = {
        "type": "model",
        "name": "two convs",
        "description": "a test model",
        "authors": [{"name": "raysegment"}],
        "cite": [{"text": "raysegment", "url": "https://example.com"}],
        "license": "MIT",
        "documentation": "README.md",
    }
    names = [f"class {i}" for i in range(outputs)]
    if version == "0.5":
        sized = size if isinstance(size, int) else {"min": size[0], "step": size[1]}
        space = [{"type": "space", "id": a, "size": sized} for a in letters]
        for axis in space:
            if unit:
                axis.update(unit=unit, scale=0.5)
        out_space = [
            {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}} for a in letters
        ]
        for axis in out_space:
            if halo:
                axis["halo"] = halo
            if unit:
                axis.update(unit=unit, scale=0.5)
        tensor = {"source": "test_input.npy", "sha256": _sha(root / "test_input.npy")}
        result = {"source": "test_output.npy", "sha256": _sha(root / "test_output.npy")}
        channel = {"type": "channel", "channel_names": [f"c{i}" for i in range(channels)]}
        rdf |= {
            "format_version": "0.5.4",
            "inputs": [
                {
                    "id": "raw",
                    "axes": [{"type": "batch"}, channel, *space],
                    "test_tensor": tensor,
                    "preprocessing": pre or [],
                }
            ],
            "outputs": [
                {
                    "id": "prob",
                    "axes": [
                        {"type": "batch"},
                        {"type": "channel", "channel_names": names},
                        *out_space,
                    ],
                    "test_tensor": result,
                    "postprocessing": post or [],
                }
            ],
            "weights": weights or {"torchscript": {**entry, "pytorch_version": "2.4"}},
        }
    else:
        shape: Any = (
            [1, channels, *[size] * dims]
            if isinstance(size, int)
            else {"min": [1, channels, *[size[0]] * dims], "step": [0, 0, *[size[1]] * dims]}
        )
        rdf |= {
            "format_version": "0.4.10",
            "timestamp": "2026-01-01T00:00:00",
            "test_inputs": ["test_input.npy"],
            "test_outputs": ["test_output.npy"],
            "inputs": [
                {
                    "name": "raw",
                    "axes": "bc" + letters,
                    "data_type": "float32",
                    "data_range": [float("-inf"), float("inf")],
                    "shape": shape,
                    "preprocessing": pre or [],
                }
            ],
            "outputs": [
                {
                    "name": "prob",
                    "axes": "bc" + letters,
                    "data_type": "float32",
                    "data_range": [float("-inf"), float("inf")],
                    "shape": {
                        "reference_tensor": "raw",
                        "scale": [1] * (dims + 2),
                        "offset": [0] * (dims + 2),
                    },
                    "halo": [0, 0, *[halo] * dims],
                    "postprocessing": post or [],
                }
            ],
            "weights": weights or {"torchscript": entry},
        }
    if config is not None:
        rdf["config"] = config
    for key in ("preprocessing", "postprocessing"):
        for tensor in (*rdf["inputs"], *rdf["outputs"]):
            if not tensor.get(key):
                tensor.pop(key, None)
    path = root / "rdf.yaml"
    path.write_text(yaml.safe_dump(rdf, sort_keys=False))
    return path


def zipped(rdf: Path) -> Path:
    """The package of ``rdf`` as bioimage.io downloads it: its files in a zip."""
    archive = rdf.parent.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for f in rdf.parent.iterdir():
            z.write(f, f.name)
    return archive


def predicted(rdf: Path, image: np.ndarray) -> np.ndarray:
    """bioimageio.core's prediction of the package on ``image`` (C, y, x): (C_out, y, x)."""
    from bioimageio.core import load_description, predict
    from bioimageio.spec import InvalidDescr

    description = load_description(str(rdf), perform_io_checks=True)
    assert not isinstance(description, InvalidDescr), description.validation_summary
    sample = predict(model=description, inputs=image[None].astype(np.float32))
    (tensor,) = sample.members.values()
    return np.asarray(tensor.data)[0]


_RANGE = {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}
_FIXED = {"axis": "channel", "mean": [400.0, 600.0], "std": [300.0, 200.0]}


@pytest.mark.parametrize(
    ("version", "form", "channels", "pre", "post"),
    [
        (  # percentiles per channel, sigmoid: the package zipped
            "0.5",
            "zip",
            2,
            [
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "scale_range", "kwargs": _RANGE},
            ],
            [{"id": "sigmoid"}],
        ),
        (  # mean and deviation of both channels together, then clipped: a 0.4 description,
            "0.4",  # 32-bit pixels (normalized before they reach torch, unlike 16-bit ones)
            "rdf",
            2,
            [
                {
                    "name": "zero_mean_unit_variance",
                    "kwargs": {"mode": "per_sample", "axes": "cxy"},
                },
                {"name": "clip", "kwargs": {"min": -1.0, "max": 1.5}},
            ],
            [],
        ),
        (  # fixed per channel, a linear scaling after; no activation: the network's output
            "0.5",
            "dir",
            2,
            [
                {"id": "fixed_zero_mean_unit_variance", "kwargs": _FIXED},
                {"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": -0.5}},
                {"id": "clip", "kwargs": {"min": -2.0, "max": 3.0}},
            ],
            [],
        ),
    ],
)
def test_a_package_runs_as_bioimageio_core_predicts_it(
    tmp_path: Path, ome_tiff, version: str, form: str, channels: int, pre: list, post: list
) -> None:
    rdf = write_package(tmp_path / "pkg", version, channels, pre=pre, post=post)
    model = {"zip": zipped(rdf), "rdf": rdf, "dir": rdf.parent}[form]
    image = random_image((channels, 160, 192), "uint32" if version == "0.4" else "uint16", 5)
    image[:, 40:90, 50:120] += 2000  # bright objects: the statistics are not the noise's
    image[-1] = image[-1] * 3 + 500  # channels of other statistics: per channel or together
    tiff = ome_tiff(image, axes="CYX")
    got = raw_output(tmp_path, tiff, model, finalize={"mode": "probabilities"})
    want = predicted(rdf, image)
    assert got.shape == want.shape == (2, 160, 192)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("version", "halo", "blend"),
    [
        # bioimageio.core pads a sample by the halo before it measures it: percentiles
        # other than 0 and 100 then differ from the image's own, so they go without one.
        ("0.5", 0, "crop"),
        ("0.4", 2, "constant"),
    ],
)
def test_a_3d_package_runs_as_bioimageio_core_predicts_it(
    tmp_path: Path, ome_tiff, version: str, halo: int, blend: str
) -> None:
    """A volume's model (bczyx), its percentiles of the whole volume, in tiles of the
    sizes it takes, blended without their edges."""
    pre = {"0.5": {"id": "scale_range", "kwargs": _RANGE | {"axes": ["z", "y", "x"]}}}
    pre["0.4"] = {"name": "scale_range", "kwargs": {"mode": "per_sample", "axes": "zyx"}}
    post = {"0.5": {"id": "sigmoid"}, "0.4": {"name": "sigmoid"}}[version]
    rdf = write_package(
        tmp_path / "pkg", version, pre=[pre[version]], post=[post], halo=halo, size=(16, 8), dims=3
    )
    volume = random_image((40, 48, 56), seed=4)
    volume[10:30, 5:25, 20:50] += 3000
    got = raw_output(
        tmp_path,
        ome_tiff(volume, axes="ZYX"),
        rdf,
        tile={"size": [24, 32, 32], "blend": blend},
        finalize={"mode": "probabilities"},
    )
    want = predicted(rdf, volume[None])
    inner = (slice(None), *[slice(halo, -halo or None)] * 3)
    assert got.shape == want.shape == (2, 40, 48, 56)
    np.testing.assert_allclose(got[inner], want[inner], atol=1e-5)


def test_a_package_of_onnx_weights_runs_as_bioimageio_core_predicts_it(
    tmp_path: Path, ome_tiff
) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    pre = [{"id": "scale_range", "kwargs": _RANGE}]
    rdf = write_package(tmp_path / "pkg", pre=pre, post=[{"id": "sigmoid"}], onnx=True)
    assert read_model_file(str(rdf)).kind == "onnx"
    image = random_image((160, 192), seed=7)
    got = raw_output(tmp_path, ome_tiff(image), rdf, finalize={"mode": "probabilities"})
    np.testing.assert_allclose(got, predicted(rdf, image[None]), atol=2e-5)


ARCHITECTURE = """
import torch


class TwoConvs(torch.nn.Module):
    def __init__(self, channels, outputs, width=4):
        super().__init__()
        self.first = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.second = torch.nn.Conv2d(width, outputs, 3, padding=1)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))
"""
"""A package's architecture: its own Python file, as the zoo's state dicts come."""


def _state_dict_package(root: Path, version: str, import_from: str | None = None) -> Path:
    """A package of ``ARCHITECTURE``'s state dict alone (the architecture the package's
    file, or ``import_from`` a module), in format ``version``."""
    root.mkdir(parents=True)
    (root / "two_convs.py").write_text(ARCHITECTURE)
    namespace: dict[str, Any] = {}
    exec(ARCHITECTURE, namespace)
    kwargs = {"channels": 1, "outputs": 2, "width": 5}
    torch.manual_seed(8)
    torch.save(namespace["TwoConvs"](**kwargs).state_dict(), root / "state.pt")
    entry: dict[str, Any] = {"source": "state.pt", "sha256": _sha(root / "state.pt")}
    code = {"source": "two_convs.py", "sha256": _sha(root / "two_convs.py")}
    if version == "0.5":
        found = {"import_from": import_from} if import_from else code
        entry["architecture"] = {**found, "callable": "TwoConvs", "kwargs": kwargs}
        entry["pytorch_version"] = "2.4"
    else:
        entry |= {"architecture": "two_convs.py:TwoConvs", "kwargs": kwargs}
        entry["architecture_sha256"] = code["sha256"]
    return write_package(root, version, weights={"pytorch_state_dict": entry})


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_a_package_of_a_state_dict_runs_its_architecture_as_bioimageio_core_does(
    tmp_path: Path, ome_tiff, version: str
) -> None:
    """Weights as a PyTorch state dict alone: the network built from the package's own
    Python file (its callable and kwargs), the weights loaded into it, in every
    predictor; the output bioimageio.core's prediction of the package; the model's
    identity covers the architecture's code."""
    rdf = _state_dict_package(tmp_path / "pkg", version)
    model = read_model_file(str(rdf))
    assert model.kind == "state_dict" and model.meta["architecture"]["callable"] == "TwoConvs"
    image = random_image((160, 192), seed=9)
    got = raw_output(tmp_path, ome_tiff(image), rdf, finalize={"mode": "raw"})
    np.testing.assert_allclose(got, predicted(rdf, image[None]), atol=2e-5)
    (rdf.parent / "two_convs.py").write_text(ARCHITECTURE.replace("tanh", "relu"))
    with pytest.raises(ModelLoadError, match="two_convs.py does not match the sha256"):
        read_model_file(str(rdf))


def test_a_state_dict_of_an_architecture_not_installed_is_one_error(tmp_path: Path) -> None:
    rdf = _state_dict_package(tmp_path / "pkg", "0.5", import_from="no_such_library.nets")
    model = read_model_file(str(rdf))
    with pytest.raises(ModelLoadError, match="comes from no_such_library.nets, which is not"):
        load_model(model)


def test_a_package_that_binarizes_gives_its_mask(tmp_path: Path, ome_tiff) -> None:
    """Its ``binarize`` threshold is the mask's (``finalize.threshold`` unset): 0.3 here,
    whose mask differs from 0.5's."""
    sigmoid = [{"id": "sigmoid"}]
    post = [*sigmoid, {"id": "binarize", "kwargs": {"threshold": 0.3}}]
    rdf = write_package(tmp_path / "pkg", post=post)
    image = random_image((160, 192), seed=6)
    got = raw_output(tmp_path, ome_tiff(image), rdf, finalize={"mode": "mask"})
    want = predicted(rdf, image[None]) > 0
    assert got.dtype == np.uint8 and np.array_equal(got > 0, want)
    probabilities = predicted(write_package(tmp_path / "plain", post=sigmoid), image[None])
    assert ((probabilities > 0.5) != want).any()


def test_a_halo_weighs_nothing_where_tiles_meet(tmp_path: Path, ome_tiff) -> None:
    """With constant blending, tiles averaged where they overlap: the pixels within a
    tile's halo of its edges would mix in what the tile's zero padding makes of them.
    Left out, every pixel is as the whole image in one pass gives it."""
    rdf = write_package(tmp_path / "pkg", post=[{"id": "sigmoid"}], halo=4)
    image = random_image((304, 256), seed=2)  # sizes the package takes whole
    got = raw_output(
        tmp_path,
        ome_tiff(image),
        rdf.parent,
        tile={"size": [96, 96], "overlap": 0.25, "blend": "constant"},
        finalize={"mode": "probabilities"},
    )
    want = predicted(rdf, image[None])
    inner = (slice(None), slice(4, -4), slice(4, -4))  # bioimageio.core pads the image's edges
    np.testing.assert_allclose(got[inner], want[inner], atol=1e-5)
    rdf_plain = write_package(tmp_path / "plain", post=[{"id": "sigmoid"}])
    seams = raw_output(
        tmp_path / "w",
        ome_tiff(image, name="plain.ome.tif"),
        rdf_plain,
        tile={"size": [96, 96], "overlap": 0.25, "blend": "constant"},
        finalize={"mode": "probabilities"},
    )
    assert np.abs(seams[inner] - want[inner]).max() > 1e-3  # what the halo is for


def test_what_a_package_says_of_its_model(tmp_path: Path) -> None:
    """Channels, 2D, tile sizes, halo, channel names, activation and the pixel trained at,
    from both formats; tiles the model takes by default, and a given one it does not take
    named with one it does."""
    rdf = write_package(tmp_path / "a", halo=8, unit="micrometer", post=[{"id": "softmax"}])
    model = read_model_file(str(rdf.parent))
    spec = describe_model(model, load_model(model))
    assert (spec.in_channels, spec.spatial_dims, spec.halo) == (1, 2, (8, 8))
    assert spec.tile_steps == ((64, 16), (64, 16))
    assert (spec.classes, spec.activation) == (("class 0", "class 1"), "softmax")
    assert model.meta["pixel_size"] == {"y": 0.5, "x": 0.5}
    assert model.meta["pixel_unit"] == "micrometer"
    assert tile_size(InferConfig(), spec) == (512, 512)
    given = r"tile.size=\[200, 90\]: .*64 \+ 16n.*tile.size=\[192, 80\]"
    with pytest.raises(ConfigError, match=given):
        tile_size(InferConfig(tile=TileConfig(size=[200, 90])), spec)
    old = read_model_file(str(write_package(tmp_path / "b", "0.4", size=128, halo=2)))
    spec = describe_model(old, load_model(old))
    assert (spec.static_tile, spec.halo, spec.activation) == ((128, 128), (2, 2), "none")
    assert tile_size(InferConfig(), spec) == (128, 128)
    assert model.sha256 == _sha(rdf.parent / "weights.pt")  # as the package lists it


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_what_raysegment_package_keeps_in_its_config_is_read_back(
    tmp_path: Path, version: str
) -> None:
    """``config: raysegment:`` (what ``raysegment package`` writes beyond the description):
    the training's patch is infer's default tile, as the model directory's (fitted to the
    sizes the package declares); the classes' codes; nnU-Net's resampling scheme; a bad
    patch or scheme is one error."""
    codes = [None, {"category": ["T-D0050", "SCT", "Tissue"]}]
    kept = {"version": "1", "patch_size": [96, 80], "class_codes": codes}
    rdf = write_package(tmp_path / "a", version, config={"raysegment": kept, "other": {"x": 1}})
    model = read_model_file(str(zipped(rdf)))
    spec = describe_model(model, load_model(model))
    assert spec.patch == (96, 80) and model.meta["class_codes"] == codes
    # The codes go with the output's channel names, which format 0.4 does not give.
    assert spec.class_codes == (tuple(codes) if version == "0.5" else None)
    assert tile_size(InferConfig(), spec) == (96, 80)  # 64 + 16n, as the package says
    assert tile_size(InferConfig(tile=TileConfig(size=[128, 128])), spec) == (128, 128)
    bare = read_model_file(str(write_package(tmp_path / "b", version)))
    assert tile_size(InferConfig(), describe_model(bare, load_model(bare))) == (512, 512)
    for patch in ([96], [96, 0], "96"):
        bad = write_package(
            tmp_path / f"c{patch}", version, config={"raysegment": {**kept, "patch_size": patch}}
        )
        with pytest.raises(ModelLoadError, match=r"config.raysegment.patch_size is .*2 positive"):
            read_model_file(str(bad))
    # A training resampled as nnU-Net resamples: infer's resample=true follows it.
    scheme = {"data": [3, 0], "probabilities": [1, 0], "anisotropy": 3.0}
    nnunet = write_package(tmp_path / "d", version, config={"raysegment": {"resampling": scheme}})
    assert read_model_file(str(nnunet)).meta["resampling"] == scheme
    wrongs = ({"data": [3, 0]}, {"data": [2, 0], "probabilities": [1, 0]}, "cubic")
    for k, wrong in enumerate(wrongs):
        bad = write_package(
            tmp_path / f"e{k}", version, config={"raysegment": {"resampling": wrong}}
        )
        with pytest.raises(ModelLoadError, match=r"config.raysegment.resampling is .*mend it"):
            read_model_file(str(bad))


def test_tiles_must_overlap_by_twice_the_halo(tmp_path: Path, ome_tiff) -> None:
    from raysegment.infer import infer

    rdf = write_package(tmp_path / "pkg", halo=40)
    with pytest.raises(ConfigError, match=r"halo of \[40, 40\] .* tile.overlap=0.63 or more$"):
        infer(
            input=str(ome_tiff(random_image((300, 300)))),
            model=str(rdf),
            output=str(tmp_path / "out"),
            tile={"size": [128, 128]},
            progress=False,
        )


_TENSORFLOW = {"tensorflow_saved_model_bundle": {"source": "model.zip", "sha256": "0" * 64}}
_DAMAGED = {"torchscript": {"source": "weights.pt", "sha256": "0" * 64, "pytorch_version": "2.4"}}
_REMOTE = {"torchscript": {"source": "https://zenodo.org/w.pt", "pytorch_version": "2.4"}}
_OTHER = {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "reference_tensor": "other"}}
_CLIPPED = [
    {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}},
    {"id": "scale_linear", "kwargs": {"gain": 2.0}},
]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"weights": _TENSORFLOW},
            r"tensorflow_saved_model_bundle weights and no torchscript, onnx or "
            r"pytorch_state_dict weights",
        ),
        ({"weights": _DAMAGED}, r"weights.pt does not match the sha256 .* download it again$"),
        ({"weights": _REMOTE}, r"no files from the internet .* give model= that$"),
        ({"pre": [_OTHER]}, r"preprocessing scale_range \(mode per_sample, statistics of another"),
        ({"pre": _CLIPPED}, r"preprocessing scale_linear \(after a clip\)"),
        ({"post": [{"id": "scale_range"}]}, r"postprocessing scale_range \(not an activation\)"),
    ],
)
def test_a_package_raysegment_cannot_run_as_described_is_one_error(
    tmp_path: Path, change: dict[str, Any], match: str
) -> None:
    rdf = write_package(tmp_path / "pkg", **change)
    with pytest.raises(ModelLoadError, match=match) as error:
        read_model_file(str(rdf))
    assert str(error.value).startswith(str(rdf))


def test_a_package_of_one_tile_a_batch_takes_batches_of_one(tmp_path: Path) -> None:
    rdf = write_package(tmp_path / "pkg")
    text = yaml.safe_load(rdf.read_text())
    text["inputs"][0]["axes"][0]["size"] = 1
    rdf.write_text(yaml.safe_dump(text))
    model = read_model_file(str(rdf))
    assert describe_model(model, load_model(model)).static_batch == 1


def test_a_package_of_other_axes_or_sizes_or_several_inputs_is_one_error(tmp_path: Path) -> None:
    rdf = write_package(tmp_path / "new")
    text = yaml.safe_load(rdf.read_text())
    text["outputs"][0]["axes"][2]["size"]["offset"] = -8  # the model crops its output
    rdf.write_text(yaml.safe_dump(text))
    with pytest.raises(ModelLoadError, match=r"output's y axis is not the input's size"):
        read_model_file(str(rdf))
    rdf = write_package(tmp_path / "pkg", "0.4")
    text = yaml.safe_load(rdf.read_text())
    text["outputs"][0]["shape"]["scale"] = [1, 1, 0.5, 0.5]  # at half the input's pixels
    rdf.write_text(yaml.safe_dump(text))
    with pytest.raises(ModelLoadError, match=r"output's y axis is not the input's size"):
        read_model_file(str(rdf))
    text["outputs"][0]["shape"]["scale"] = [1, 1, 1, 1]
    text["inputs"][0]["axes"] = "byxc"
    rdf.write_text(yaml.safe_dump(text))
    with pytest.raises(ModelLoadError, match=r"input has axes byxc; .*\(bcyx, bczyx\)$"):
        read_model_file(str(zipped(rdf)))
    text["inputs"] = [text["inputs"][0]] * 2
    rdf.write_text(yaml.safe_dump(text))
    with pytest.raises(ModelLoadError, match=r"has 2 inputs; .* one input image and one output$"):
        read_model_file(str(rdf))
