"""One line per training epoch on the command's output, from Ray Train's controller."""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

__all__ = ["EpochLines", "epoch_line"]


def epoch_line(metrics: dict[str, Any], max_epochs: int) -> str:
    """``raysegment train: epoch 3/50: train loss 0.4123, val loss 0.3881, iou 0.712, lr
    0.001, best epoch 2, 3.2 s`` from the metrics a training epoch reports; with the wait
    for patches where it is over a tenth of the epoch."""
    line = (
        f"raysegment train: epoch {metrics['epoch']}/{max_epochs}: "
        f"train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
        f"iou {metrics['iou']:.3f}, lr {metrics['lr']:.3g}, best epoch {metrics['best_epoch']}, "
        f"{metrics['seconds']:.1f} s"
    )
    wait = float(metrics.get("wait_seconds", 0.0))
    if wait > 0.1 * metrics["seconds"]:  # the readers behind the steps
        line += f" ({wait:.1f} s of it waiting for patches)"
    if metrics["stopped"] and metrics["epoch"] < max_epochs:
        line += "; stopping early"
    return line


class EpochLines(UserCallback):  # type: ignore[misc]
    """Prints ``epoch_line`` once every worker has reported an epoch (Ray Train's own
    per-report lines, a few hundred characters each, are turned off)."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        if metrics and not metrics[0].get("again"):  # a finished run's resume: printed
            print(epoch_line(metrics[0], self.max_epochs), flush=True)
