"""Post-processing of finished outputs: instances, statistics, resampling."""

from raysegment.post.instances import METHODS, Volume, segment, segment_blocks

__all__ = ["METHODS", "Volume", "segment", "segment_blocks"]
