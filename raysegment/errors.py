"""Errors a user can fix. The CLI prints them as one line and exits with code 2.

Each class also subclasses the builtin a caller would expect, so library users can catch
``ValueError`` / ``FileNotFoundError`` without knowing this hierarchy.
"""

from __future__ import annotations

__all__ = [
    "BlockFailedError",
    "ConfigError",
    "InputImageError",
    "ModelContractError",
    "ModelLoadError",
    "OutputError",
    "RaySegmentError",
    "UnknownNameError",
]


class RaySegmentError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class ConfigError(RaySegmentError, ValueError):
    """A config key is unknown, has the wrong type, or a bad value."""


class UnknownNameError(ConfigError, KeyError):
    """A name looked up in a registry does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InputImageError(RaySegmentError, ValueError):
    """An input path is missing, unreadable, or not an image this package can segment."""


class ModelLoadError(RaySegmentError, ValueError):
    """A model file is missing or is not a TorchScript / torch.export program."""


class ModelContractError(RaySegmentError, ValueError):
    """The model does not take (N, C, *spatial) float32 and return (N, C_out, *spatial)."""


class OutputError(RaySegmentError, ValueError):
    """The output exists, cannot be written, or was made with other settings."""


class BlockFailedError(RaySegmentError, RuntimeError):
    """Every process that ran one block died (out of memory, a native crash)."""
