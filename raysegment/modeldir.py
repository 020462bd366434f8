"""The model directory contract shared by ``raysegment train`` (writer) and
``raysegment infer`` (reader)."""

from __future__ import annotations

__all__ = ["MODEL_META"]

MODEL_META = "raysegment.json"
"""Optional metadata next to model.pth: in_channels, spatial_dims, classes, class_codes
(each class's coded meaning, or null: {"category": [value, scheme, meaning], "type": [...]},
as DICOM SEGs code their segments), tile_size, normalize ({"mean": m, "std": s}, per
channel or one value), activation, pixel_size ({"y": s, "x": s}, in pixel_unit: the pixel
trained at, which infer's default input_level nears), region_labels (a model of
overlapping regions, each output channel a sigmoid: the label each channel paints where it
passes the threshold, later channels over earlier, in ``finalize.mode=labels``; an
nnU-Net region-based training's ``regions_class_order``).

A BioImage Model Zoo package's description gives the same keys (``infer.zoo``), and
these: tile_steps (per spatial axis [min, step]: tiles of min + n * step), halo (per
spatial axis), static_batch (1: a tile at a time), normalize's measured forms
({"percentile": [low, high]} or {"moments": true}, with "eps" and "joint": the channels
together), its "gain" and "offset" after, and "clip": [min, max], or "channels": a list
of these, one a channel (each channel normalized its own way); activation "none". An
nnU-Net training's (``infer.nnunet``) gives patch_size: the default tile, not the only one,
tta_axes: the spatial axes (0 the first) ``tta`` flips, its training's mirror axes, and
resampling: how its images were resampled ({"data": [order, order_z], "probabilities":
[...], "force_separate_z", "anisotropy"}: ``data.resampled.nnunet_kinds``), and nonzero:
"box" (each image cropped to the box of its nonzero voxels, whose statistics a measured
normalization takes, the tiles over the box only) or "mask" (and normalized within the
nonzero region itself: ``data.nonzero``; nonzero_kept: the channels that keep their
voxels outside the region, of fixed normalizations beside the Z-scores within it), and
(a ``raysegment train`` of ``normalization=nnunet`` records its normalize and nonzero so:
``train.normalization``), tile_spread: true (tiles spread evenly over
each axis, as nnU-Net's sliding window lays them), and channel_files: its channels' names,
a case's files ``case_0000``, ``case_0001``, ... its channels (``data.channels``). A
cascade's second stage's (any model's that takes an earlier stage's labels) gives
previous_labels: the label values of the earlier stage's map each of its last input
channels is the indicator of, after the image's (``previous=`` gives the maps:
``data.previous``), previous_stage (the earlier stage's name, for its errors) and
resampling's "segmentation" orders (how the map is resampled)."""
