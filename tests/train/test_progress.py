"""The one line a training epoch prints."""

from __future__ import annotations

from raysegment.train.progress import epoch_line

METRICS = {
    "epoch": 3,
    "train_loss": 0.41234,
    "val_loss": 0.38812,
    "iou": 0.7123,
    "lr": 0.001,
    "best_epoch": 2,
    "seconds": 3.21,
    "stopped": False,
}


def test_epoch_line_is_short_and_says_when_training_stops_early() -> None:
    line = epoch_line(METRICS, 50)
    assert line == (
        "raysegment train: epoch 3/50: train loss 0.4123, val loss 0.3881, iou 0.712, "
        "lr 0.001, best epoch 2, 3.2 s"
    )
    assert epoch_line(METRICS | {"stopped": True}, 50).endswith("; stopping early")
    # A wait for patches over a tenth of the epoch: the readers fall behind the steps.
    assert epoch_line(METRICS | {"wait_seconds": 0.3}, 50).endswith(", 3.2 s")
    assert epoch_line(METRICS | {"wait_seconds": 1.25}, 50).endswith(
        ", 3.2 s (1.2 s of it waiting for patches)"
    )
    assert "early" not in epoch_line(METRICS | {"epoch": 50, "stopped": True}, 50)
