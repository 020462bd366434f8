"""Training on a GPU worker: skipped where CUDA is not available (CI has no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")

from raysegment.train import train  # noqa: E402
from tests.train.conftest import segment_big  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("ray_session"),
]


def test_float16_training_on_a_gpu_gives_a_model_the_gpu_predictor_runs(
    blob_data: Path, tmp_path: Path
) -> None:
    """float16 autocast with its gradient scaling (a GPU worker's only), then the model
    directory through a GPU predictor on the larger image."""
    out = tmp_path / "unet"
    summary = train(
        images={"dir": str(blob_data / "img")},
        labels={"dir": str(blob_data / "lbl"), "pattern": r"(.*)_mask\.tif"},
        output=str(out),
        patch_size=[64],
        patches_per_epoch=64,
        batch_size=16,
        lr=0.003,
        max_epochs=14,
        folds=3,
        fold=1,
        device="gpu",
        precision="float16",
    )
    assert summary.threads is None  # a GPU worker: no CPU thread count
    assert summary.best_metric > 0.9, summary.history
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == summary.epochs and state["scaler"]["scale"] > 0  # GradScaler's
    result, iou = segment_big(blob_data, out, tmp_path / "pred", device="gpu")
    assert result.device == "gpu" and iou > 0.9, iou
