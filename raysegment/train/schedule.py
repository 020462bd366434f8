"""What each training epoch's validation loss decides: early stopping, and the learning
rate of the epochs after it (``lr_schedule``).

The rate is a function of the settings, the epoch and the validation losses of the epochs
before it: a resumed run (its checkpoint holds the history) and every data-parallel worker
(each holds the same all-reduced losses) take exactly the same rate, with no scheduler
state to save.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raysegment.config import Schedule, ScheduleConfig

__all__ = ["EarlyStopping", "learning_rate"]


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved by ``min_delta`` for ``patience``
    epochs in a row."""

    patience: int
    min_delta: float
    best: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, loss: float, epoch: int) -> tuple[bool, bool]:
        """Record an epoch's loss; returns (improved, stop)."""
        improved = loss < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = loss, epoch, 0
        else:
            self.bad_epochs += 1
        return improved, self.stopped

    @property
    def stopped(self) -> bool:
        """Whether ``patience`` epochs in a row have not improved."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


def learning_rate(
    schedule: ScheduleConfig,
    lr: float,
    epoch: int,
    max_epochs: int,
    val_losses: Sequence[float],
    min_delta: float,
) -> float:
    """The rate of ``epoch`` (0-based) given the validation losses of epochs 0 .. epoch-1.

    Warm-up (any schedule): epochs 0 .. W-1 rise linearly, ``lr * (e + 1) / (W + 1)``.
    After it, over the remaining ``max_epochs - W`` epochs: ``cosine`` falls from ``lr``
    to ``min_lr`` along half a cosine; ``poly`` is nnU-Net's ``lr * (1 - t) ** 0.9``;
    ``plateau`` multiplies the rate by ``factor`` each time ``patience`` epochs in a row
    have not improved the best validation loss by ``min_delta`` (early stopping's rule).
    Never below ``min_lr``.
    """
    warm = schedule.warmup_epochs
    if epoch < warm:
        return lr * (epoch + 1) / (warm + 1)
    t = (epoch - warm) / max(max_epochs - warm, 1)  # 0 at the first epoch after warm-up
    if schedule.name == Schedule.cosine:
        rate = schedule.min_lr + (lr - schedule.min_lr) * (1 + math.cos(math.pi * t)) / 2
    elif schedule.name == Schedule.poly:
        rate = lr * (1 - t) ** 0.9
    elif schedule.name == Schedule.plateau:
        rate, plateau = lr, EarlyStopping(schedule.patience, min_delta)
        for e, loss in enumerate(val_losses[:epoch]):
            if plateau.update(loss, e)[1]:
                rate, plateau.bad_epochs = rate * schedule.factor, 0
    else:
        rate = lr
    return max(rate, schedule.min_lr)
