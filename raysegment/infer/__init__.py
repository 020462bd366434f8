"""Tiled inference: model loading, predictor actors, blending, OME-Zarr output.

``infer`` and ``InferSummary`` load on first use: Ray's read and write workers import
submodules of this package and must not pay for torch, which the pipeline imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["InferSummary", "infer"]

if TYPE_CHECKING:
    from raysegment.infer.pipeline import InferSummary, infer


def __getattr__(name: str) -> Any:
    if name in __all__:
        from raysegment.infer import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
