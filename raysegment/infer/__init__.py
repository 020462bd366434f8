"""Tiled inference: model loading, predictor actors, blending, OME-Zarr output."""

from raysegment.infer.pipeline import InferSummary, infer

__all__ = ["InferSummary", "infer"]
