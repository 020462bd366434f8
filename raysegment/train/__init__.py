"""Training: segmentation-models-pytorch models on Ray Train (needs the ``train`` extra).

``train`` and ``TrainSummary`` load on first use: the tasks that read training patches
import ``raysegment.train.data`` and must not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["TrainSummary", "train"]

if TYPE_CHECKING:
    from raysegment.train.export import TrainSummary
    from raysegment.train.trainer import train


def __getattr__(name: str) -> Any:
    if name == "train":
        from raysegment.train.trainer import train

        return train
    if name == "TrainSummary":
        from raysegment.train.export import TrainSummary

        return TrainSummary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
