"""raysegment: segment images larger than memory with PyTorch models on Ray.

Inference: ``from raysegment.infer import infer`` (the CLI's ``raysegment infer``).
"""

from raysegment._version import __version__
from raysegment.config import InferConfig, load_config
from raysegment.errors import (
    ConfigError,
    InputImageError,
    ModelContractError,
    ModelLoadError,
    OutputError,
    RaySegmentError,
)

__all__ = [
    "ConfigError",
    "InferConfig",
    "InputImageError",
    "ModelContractError",
    "ModelLoadError",
    "OutputError",
    "RaySegmentError",
    "__version__",
    "load_config",
]
