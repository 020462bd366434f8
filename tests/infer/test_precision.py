"""The opt-in fast path (bfloat16 autocast, channels-last) keeps the masks; the
predictors' choice of memory layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from raysegment.infer import infer
from raysegment.infer.predictor import choose_layout, prefers_channels_last
from tests.conftest import conv_model, random_image


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
