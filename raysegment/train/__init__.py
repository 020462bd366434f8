"""Training: segmentation-models-pytorch models on Ray Train (needs the ``train`` extra)."""

from raysegment.train.export import TrainSummary
from raysegment.train.trainer import train

__all__ = ["TrainSummary", "train"]
