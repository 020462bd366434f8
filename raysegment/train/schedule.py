"""The learning rate of each training epoch (``lr_schedule``).

A function of the settings, the epoch and the validation losses of the epochs before it:
a resumed run (its checkpoint holds the history) and every data-parallel worker (each
holds the same all-reduced losses) take exactly the same rate, with no scheduler state
to save.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from raysegment.config import Schedule, ScheduleConfig

__all__ = ["learning_rate"]


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
        rate, best, bad = lr, math.inf, 0
        for loss in val_losses[:epoch]:
            if loss < best - min_delta:
                best, bad = loss, 0
            else:
                bad += 1
                if bad >= schedule.patience:
                    rate, bad = rate * schedule.factor, 0
    else:
        rate = lr
    return max(rate, schedule.min_lr)
