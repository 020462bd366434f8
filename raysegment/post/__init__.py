"""Post-processing of finished outputs: instances, statistics, resampling."""

from raysegment.post.instances import METHODS, Grid, Volume, segment, segment_blocks

__all__ = ["METHODS", "Grid", "Volume", "segment", "segment_blocks"]
