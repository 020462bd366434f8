"""``lr_schedule``: each epoch's learning rate from the settings, the epoch and the
validation losses before it."""

from __future__ import annotations

import math

import pytest

from raysegment.config import Schedule, ScheduleConfig
from raysegment.train.schedule import learning_rate


def _rates(schedule: ScheduleConfig, epochs: int, losses=(), lr=1.0, min_delta=0.0):
    return [learning_rate(schedule, lr, e, epochs, list(losses), min_delta) for e in range(epochs)]


def test_none_keeps_lr_and_warm_up_rises_to_it() -> None:
    assert _rates(ScheduleConfig(), 4, lr=0.3) == [0.3] * 4
    warm = _rates(ScheduleConfig(warmup_epochs=2), 5, lr=0.3)
    assert warm == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


def test_cosine_falls_from_lr_to_min_lr_after_the_warm_up() -> None:
    rates = _rates(ScheduleConfig(Schedule.cosine, min_lr=0.1), 10)
    assert rates[0] == 1.0 and rates[5] == pytest.approx(0.55)  # half-way: the middle
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert rates[-1] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.9)) / 2)
    warm = _rates(ScheduleConfig(Schedule.cosine, warmup_epochs=2), 10)
    assert warm[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert warm[6] == pytest.approx(0.5)  # 4 of the 8 epochs after the warm-up


def test_poly_is_nnunets() -> None:
    rates = _rates(ScheduleConfig(Schedule.poly), 10, lr=0.01)
    assert rates == pytest.approx([0.01 * (1 - e / 10) ** 0.9 for e in range(10)])
    floored = _rates(ScheduleConfig(Schedule.poly, min_lr=0.004), 10, lr=0.01)
    assert floored[-1] == 0.004 and floored[0] == 0.01


def test_plateau_drops_after_patience_epochs_without_improvement() -> None:
    losses = [1.0, 0.5, 0.6, 0.55, 0.7, 0.4, 0.45, 0.5]
    schedule = ScheduleConfig(Schedule.plateau, factor=0.1, patience=2)
    # Epochs 2 and 3 do not improve on epoch 1's 0.5: the rate drops from epoch 4 on;
    # epoch 5 improves, 6 and 7 do not: it drops again from epoch 8.
    assert _rates(schedule, 9, losses) == pytest.approx([1] * 4 + [0.1] * 4 + [0.01])
    # An improvement smaller than min_delta is none: epoch 1 (0.5) counts as a bad epoch.
    strict = _rates(schedule, 4, [1.0, 0.5, 0.45], min_delta=0.6)
    assert strict == pytest.approx([1, 1, 1, 0.1])
    # The floor holds however many plateaus follow.
    floor = ScheduleConfig(Schedule.plateau, factor=0.1, patience=1, min_lr=0.05)
    assert _rates(floor, 5, [1.0] * 4) == pytest.approx([1, 1, 0.1, 0.05, 0.05])
