"""The opt-in fast path (bfloat16 autocast, channels-last) keeps the masks; the
predictors' choice of memory layout; TorchScript models frozen for inference."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from raysegment.compute import choose_layout, prefers_channels_last, probe_tile, slow_precision
from raysegment.infer import infer
from raysegment.infer.predictor import Predictor, freeze
from tests.conftest import conv_model, driver_plan, random_image


@pytest.mark.usefixtures("ray_session")
def test_bfloat16_channels_last_masks_agree_with_float32(tmp_path: Path, make_model, ome_tiff):
    image = ome_tiff(random_image((300, 260)))
    model, _ = make_model()
    masks: list[np.ndarray] = []
    for name, fast in (("f32", {}), ("bf16", {"precision": "bfloat16", "layout": "channels_last"})):
        infer(
            input=str(image),
            model=str(model),
            output=str(tmp_path / name),
            chunks=[128],
            tile={"size": [128]},
            progress=False,
            quicklook=False,
            finalize={"mode": "probabilities"},
            **fast,
        )
        masks.append(np.asarray(zarr.open_array(str(tmp_path / name / "img.ome.zarr" / "0"))[:]))
    assert not np.array_equal(masks[0], masks[1])  # the arithmetic did change
    a, b = (m > 0.5 for m in masks)
    assert a.any() and (a & b).sum() / (a | b).sum() >= 0.99


def _layout_of(module: torch.nn.Module) -> str:
    weight = next(p for p in module.parameters() if p.ndim == 4 and p.shape[1] > 1)
    if weight.is_contiguous():
        return "channels_first"
    assert weight.is_contiguous(memory_format=torch.channels_last)
    return "channels_last"


CPU = torch.device("cpu")


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_a_layout_asked_for_is_taken(layout: str):
    module = conv_model(2, 1, 4)
    assert choose_layout(module, (1, 32, 32), CPU, layout) == layout
    assert _layout_of(module) == layout


def test_auto_takes_channels_last_on_cpu_for_convolutions():
    module = conv_model(2, 1, 4)
    assert choose_layout(module, (1, 32, 32), CPU, "auto") == "channels_last"
    assert _layout_of(module) == "channels_last"


def test_auto_rule_is_device_and_precision_only():
    """No timing: every predictor of a run (and every rerun) takes the same layout."""
    cuda = torch.device("cuda")
    assert prefers_channels_last(CPU, "float32") and prefers_channels_last(CPU, "bfloat16")
    assert prefers_channels_last(cuda, "float16") and not prefers_channels_last(cuda, "float32")


class _ConvThen(torch.nn.Module):
    """Two convolutions, then ``after`` on their (channels-last or not) activations."""

    def __init__(self, after: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.body = conv_model(2, 1, 4)
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.body(x))


@pytest.mark.parametrize(
    "after",
    [
        lambda y: y + (0.0 if y.is_contiguous() else 1.0),  # another answer channels-last
        lambda y: y.view(y.shape[0], -1).view(y.shape),  # fails on channels-last strides
    ],
    ids=["stride-dependent", "views-activations"],
)
def test_auto_keeps_channels_first_when_channels_last_breaks_the_model(after):
    module = _ConvThen(after)
    assert choose_layout(module, (1, 32, 32), CPU, "auto") == "channels_first"
    assert _layout_of(module) == "channels_first"
    module(torch.zeros(1, 1, 32, 32))  # still runs


class _Sizes(torch.nn.Module):
    """Two convolutions that record the spatial size of every input; with ``only``, they
    refuse any other size (as a program exported for one tile size does)."""

    def __init__(self, only: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.body = conv_model(2, 1, 4)
        self.only = only
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[2:]))
        if self.only is not None and tuple(x.shape[2:]) != self.only:
            raise RuntimeError(f"this program takes {self.only} only")
        return self.body(x)


@pytest.mark.parametrize(
    ("tile", "probe"),
    [((512, 512), (64, 64)), ((64,), (32,)), ((128, 128, 128), (32, 32, 32)), ((96,), (96,))]
    + [((100, 30), (100, 30)), ((256, 320), (32, 160))],
)
def testprobe_tile_keeps_the_strides_the_tile_divides_by(tile, probe):
    assert probe_tile(tile) == probe
    for t, p in zip(tile, probe, strict=True):
        assert t % p == 0 and p % math.gcd(t, 32) == 0


def test_auto_tests_the_layout_on_a_smaller_tile():
    module = _Sizes()
    assert choose_layout(module, (1, 256, 256), CPU, "auto") == "channels_last"
    assert module.seen == [(32, 32), (32, 32)]


def test_auto_tests_on_the_tile_itself_a_model_that_takes_no_other_size():
    module = _Sizes(only=(256, 256))
    assert choose_layout(module, (1, 256, 256), CPU, "auto") == "channels_last"
    assert module.seen == [(32, 32), (256, 256), (256, 256)]
    assert _layout_of(module) == "channels_last"


def test_auto_raises_what_the_model_raises_on_the_tile_itself():
    module = _Sizes(only=(64, 64))
    with pytest.raises(RuntimeError, match="takes"):
        choose_layout(module, (1, 256, 256), CPU, "auto")


def test_auto_leaves_models_without_convolutions_alone():
    module = torch.nn.Sequential(torch.nn.Flatten(0), torch.nn.Identity())
    assert choose_layout(module, (1, 8, 8), CPU, "auto") == "channels_first"


@pytest.mark.usefixtures("ray_session")
def test_static_batch_export_program_runs_in_channels_last(tmp_path: Path, ome_tiff):
    """A torch.export program exported for batches of 2 takes only those, the layout test
    included."""
    program = torch.export.export(conv_model(2, 1, 4), (torch.zeros(2, 1, 32, 32),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    summary = infer(
        input=str(ome_tiff(random_image((100, 90)))),
        model=str(tmp_path / "m.pt2"),
        output=str(tmp_path / "out"),
        chunks=[64],
        progress=False,
        quicklook=False,
        finalize={"mode": "raw"},
    )
    assert summary.tiles > 0 and "[channels-last]" in summary.devices[0]


def _with_batch_norm() -> torch.nn.Module:
    """Convolution, batch norm (non-trivial statistics), ReLU, dropout, convolution."""
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm2d(3)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    layers = [torch.nn.Conv2d(1, 3, 3, padding=1), norm, torch.nn.ReLU(), torch.nn.Dropout()]
    return torch.nn.Sequential(*layers, torch.nn.Conv2d(3, 2, 3, padding=1)).eval()


def _traced(module: torch.nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.trace(module, torch.zeros(1, 1, 32, 32)).eval()


def test_freeze_folds_batch_norms_into_convolutions_of_the_chosen_layout():
    module = _traced(_with_batch_norm())
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        want = module(x)
    assert choose_layout(module, (1, 32, 32), CPU, "auto") == "channels_last"
    frozen = freeze(module)
    before, after = str(module.inlined_graph), str(frozen.inlined_graph)
    assert "aten::batch_norm" in before and "aten::dropout" in before
    assert "aten::batch_norm" not in after and "aten::dropout" not in after
    assert not list(frozen.parameters())  # weights are constants of the graph now
    constants = [n.output().toIValue() for n in frozen.graph.findAllNodes("prim::Constant")]
    weights = [c for c in constants if isinstance(c, torch.Tensor) and c.ndim == 4]
    assert len(weights) == 2
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    with torch.inference_mode():
        got = frozen(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_freeze_leaves_eager_and_training_modules_as_they_are():
    eager = _with_batch_norm()
    assert freeze(eager) is eager
    training = _traced(_with_batch_norm()).train()
    assert freeze(training) is training


@pytest.mark.usefixtures("ray_session")
def test_predictors_run_torchscript_models_frozen(tmp_path: Path, ome_tiff):
    import ray

    path = tmp_path / "bn.pth"
    torch.jit.save(_traced(_with_batch_norm()), str(path))
    image = str(ome_tiff(random_image((40, 50))))
    model, plan = driver_plan({"input": image, "model": str(path), "output": str(tmp_path / "out")})
    predictor = Predictor(
        [ray.put(model)], [ray.put([plan])], False, 1, None, 1, ("raw", "none", 0.5, ())
    )
    assert "aten::batch_norm" not in str(predictor.module.inlined_graph)


@pytest.mark.parametrize(("precision", "check"), [("bfloat16", "bf16"), ("float16", "fp16")])
def test_slow_precision_is_reduced_precision_on_cpus_without_its_kernels(
    monkeypatch, precision, check
):
    name = f"_is_mkldnn_{check}_supported"
    for supported in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, name, lambda s=supported: s)
        assert slow_precision(CPU, precision) is not supported
        assert not slow_precision(CPU, "float32")
        assert not slow_precision(torch.device("cuda"), precision)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("supported", [True, False])
def test_predictors_say_when_their_cpu_runs_bfloat16_slowly(
    tmp_path: Path, ome_tiff, monkeypatch, capsys, supported
):
    import ray

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)
    path = tmp_path / "m.pth"
    torch.jit.save(_traced(conv_model(2, 1, 2)), str(path))
    image = str(ome_tiff(random_image((40, 50))))
    model, plan = driver_plan({"input": image, "model": str(path), "output": str(tmp_path / "out")})
    predictor = Predictor(
        [ray.put(model)],
        [ray.put([plan])],
        False,
        1,
        None,
        1,
        ("raw", "none", 0.5, ()),
        precision="bfloat16",
    )
    warned = "no fast bfloat16 kernels" in capsys.readouterr().err
    assert warned is not supported
    assert ("[bfloat16 without fast kernels" in predictor.notes) is not supported
    assert "[channels-last]" in predictor.notes
